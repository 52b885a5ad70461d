"""The release ledger: _release_state."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.safedeploy.compose.plugins.module_utils import _release_state as rs
from ansible_collections.safedeploy.compose.plugins.module_utils._release_state import (
    FlockTimeout,
    LedgerCorruptError,
    ReleaseStateError,
    apply_ledger_action,
    exclusive_flock,
    list_projects,
    protected_images,
    read_ledger,
)

FORK = multiprocessing.get_context('fork')
PROJECT = 'shop'


def digest(char):
    return 'sha256:' + char * 64


def services(tag, char='a'):
    return {
        'web': {'image': '127.0.0.1:5000/shop/web:%s' % tag, 'digest': digest(char)},
        'worker': {'image': 'docker.io/library/redis:7', 'digest': digest('f'), 'pinned': 'ignored'},
    }


def act(state_dir, action='query', **kwargs):
    return apply_ledger_action(str(state_dir), PROJECT, action=action, **kwargs)


def record(state_dir, release, char='a', **kwargs):
    return act(state_dir, 'record', release=release, services=services(release, char), **kwargs)


def ledger_file(state_dir):
    return state_dir / PROJECT / 'releases.json'


def load(state_dir):
    return json.loads(ledger_file(state_dir).read_text())


def statuses(result):
    return dict((release['id'], release['status']) for release in result['releases'])


# --- the life of releases ---------------------------------------------------------------------

def test_record_promote_record_fail_query_gives_the_last_good(tmp_path):
    record(tmp_path, 'r1', 'a')
    act(tmp_path, 'promote', release='r1', health={'passed': True})
    record(tmp_path, 'r2', 'b')
    act(tmp_path, 'fail', release='r2', reason='gate failed: web returned 502')
    result = act(tmp_path)
    assert result['last_good']['id'] == 'r1'
    assert result['last_good']['services']['web'] == {'image': '127.0.0.1:5000/shop/web:r1', 'digest': digest('a'),
                                                      'pinned': '127.0.0.1:5000/shop/web:r1@' + digest('a')}
    assert result['last_good']['health'] == {'passed': True}
    assert result['current']['id'] == 'r1'
    assert statuses(result) == {'r1': 'good', 'r2': 'failed'}
    assert result['releases'][1]['reason'] == 'gate failed: web returned 502'
    assert result['serial'] == 4 and result['changed'] is False


def test_promote_supersedes_the_previous_good_and_names_it_previous_good(tmp_path):
    for release, char in (('r1', 'a'), ('r2', 'b'), ('r3', 'c')):
        record(tmp_path, release, char)
        act(tmp_path, 'promote', release=release)
    result = act(tmp_path)
    assert statuses(result) == {'r1': 'superseded', 'r2': 'superseded', 'r3': 'good'}
    assert result['last_good']['id'] == 'r3'
    assert result['previous_good']['id'] == 'r2'
    assert result['current']['id'] == 'r3'


def test_promoting_an_older_release_again_makes_it_current(tmp_path):
    record(tmp_path, 'r1', 'a')
    act(tmp_path, 'promote', release='r1')
    record(tmp_path, 'r2', 'b')
    act(tmp_path, 'promote', release='r2')
    result = act(tmp_path, 'promote', release='r1')  # a rollback that passed its gate
    assert result['changed'] is True
    assert statuses(result) == {'r1': 'good', 'r2': 'superseded'}
    assert result['current']['id'] == 'r1' and result['previous_good']['id'] == 'r2'


def test_fail_of_the_running_release_as_rolled_back(tmp_path):
    record(tmp_path, 'r1', 'a')
    act(tmp_path, 'promote', release='r1')
    record(tmp_path, 'r2', 'b')
    act(tmp_path, 'promote', release='r2')
    result = act(tmp_path, 'fail', release='r2', reason='errors after release', fail_status='rolled_back')
    assert statuses(result) == {'r1': 'superseded', 'r2': 'rolled_back'}
    assert result['last_good'] is None
    assert result['previous_good']['id'] == 'r1'
    assert act(tmp_path, 'fail', release='r2', reason='errors after release',
               fail_status='rolled_back')['changed'] is False


def test_record_of_same_id_and_digests_changes_nothing(tmp_path):
    first = record(tmp_path, 'r1', 'a', source={'commit': 'r1'})
    again = record(tmp_path, 'r1', 'a', source={'run_id': 'another run'})
    assert first['changed'] is True and again['changed'] is False
    assert again['serial'] == 1
    assert again['releases'][0]['source'] == {'commit': 'r1'}
    # compose_pin's `pinned` is not stored; the ledger returns its own, from the recorded digest
    stored = json.loads(ledger_file(tmp_path).read_text())['releases'][0]['services']['worker']
    assert stored == {'image': 'docker.io/library/redis:7', 'digest': digest('f')}
    assert again['releases'][0]['services']['worker']['pinned'] == 'redis:7@' + digest('f')


def test_record_of_same_id_with_other_digests_fails_naming_the_service(tmp_path):
    record(tmp_path, 'r1', 'a')
    expected = r'release r1 is already recorded with other images \(services differing: web\).*immutable'
    with pytest.raises(ReleaseStateError, match=expected):
        record(tmp_path, 'r1', 'b')
    assert load(tmp_path)['serial'] == 1


def test_record_of_same_images_with_a_new_compose_hash_updates_it(tmp_path):
    record(tmp_path, 'r1', 'a', compose_hash='sha256:one')
    result = record(tmp_path, 'r1', 'a', compose_hash='sha256:two')
    assert result['changed'] is True
    assert result['releases'][0]['compose_hash'] == 'sha256:two'
    assert record(tmp_path, 'r1', 'a', compose_hash='sha256:two')['changed'] is False


def test_promote_or_fail_of_an_unknown_release_says_to_record_it(tmp_path):
    with pytest.raises(ReleaseStateError, match='cannot promote release nope of project shop: it is not in the '
                                                'ledger; record it first'):
        act(tmp_path, 'promote', release='nope')
    with pytest.raises(ReleaseStateError, match='cannot fail release nope'):
        act(tmp_path, 'fail', release='nope', reason='x')


@pytest.mark.parametrize('bad_services, message', [
    ({}, 'non-empty map'),
    ({'web': {'image': 'a:1'}}, 'service web has no valid digest'),
    ({'web': {'image': 'a:1', 'digest': 'latest'}}, 'service web has no valid digest'),
    ({'web': {'digest': digest('a')}}, 'service web has no image'),
])
def test_record_validates_services(tmp_path, bad_services, message):
    with pytest.raises(ReleaseStateError, match=message):
        act(tmp_path, 'record', release='r1', services=bad_services)
    assert not ledger_file(tmp_path).exists()


@pytest.mark.parametrize('name, valid', [
    ('shop', True), ('Shop_2-x', True), ('9lives', True),
    ('../etc', False), ('a/b', False), ('-x', False), ('', False), ('x' * 129, False),
])
def test_project_names(tmp_path, name, valid):
    if valid:
        assert rs.project_dir(str(tmp_path), name) == os.path.join(str(tmp_path), name)
    else:
        with pytest.raises(ReleaseStateError, match='invalid project name'):
            rs.project_dir(str(tmp_path), name)


@pytest.mark.parametrize('release_id', ['.hidden', '-x', 'a b', 'a/b', 'x' * 129])
def test_release_ids_must_be_docker_tags(tmp_path, release_id):
    with pytest.raises(ReleaseStateError, match='must be a valid Docker tag'):
        act(tmp_path, 'record', release=release_id, services=services('x'))


# --- history bound ----------------------------------------------------------------------------

def test_history_limit_evicts_oldest_but_never_the_last_good_or_current(tmp_path):
    record(tmp_path, 'g1', 'a')
    act(tmp_path, 'promote', release='g1')
    evicted = []
    for number in range(1, 7):
        evicted += record(tmp_path, 'c%d' % number, 'b', history_limit=3)['evicted']
    result = act(tmp_path)
    assert [release['id'] for release in result['releases']] == ['g1', 'c5', 'c6']
    assert evicted == ['c1', 'c2', 'c3', 'c4']
    assert result['last_good']['id'] == 'g1' and result['current']['id'] == 'g1'


def test_history_limit_keeps_the_release_acted_on(tmp_path):
    record(tmp_path, 'g1', 'a')
    act(tmp_path, 'promote', release='g1')
    result = record(tmp_path, 'c1', 'b', history_limit=1)
    assert [release['id'] for release in result['releases']] == ['g1', 'c1']


def test_history_limit_must_be_positive(tmp_path):
    with pytest.raises(ReleaseStateError, match='history_limit must be at least 1'):
        record(tmp_path, 'r1', history_limit=0)


# --- the file: checksum, serial, backup, corruption, recovery -----------------------------------

def test_file_carries_format_serial_and_a_checksum_of_its_content(tmp_path):
    record(tmp_path, 'r1')
    act(tmp_path, 'promote', release='r1')
    ledger = load(tmp_path)
    assert ledger['format'] == 1 and ledger['project'] == PROJECT and ledger['serial'] == 2
    assert ledger['checksum'] == rs.ledger_checksum(ledger)
    assert ledger['current'] == 'r1'
    assert set(ledger['releases'][0]) == {'id', 'created_at', 'status', 'services', 'compose_hash', 'health',
                                          'source', 'reason', 'updated_at', 'promoted_at', 'promoted_serial', 'snapshot'}


def test_backup_is_the_previous_write(tmp_path):
    record(tmp_path, 'r1')
    first = ledger_file(tmp_path).read_bytes()
    act(tmp_path, 'promote', release='r1')
    assert (tmp_path / PROJECT / 'releases.json.bak').read_bytes() == first


def test_modes_are_0700_and_0600_whatever_the_umask(tmp_path):
    previous = os.umask(0)
    try:
        state_dir = tmp_path / 'state'
        record(state_dir, 'r1')
        act(state_dir, 'promote', release='r1')
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state_dir / PROJECT).st_mode) == 0o700
    for name in os.listdir(state_dir / PROJECT):
        assert stat.S_IMODE(os.stat(state_dir / PROJECT / name).st_mode) == 0o600, name


def test_existing_project_dir_gets_0700(tmp_path):
    (tmp_path / PROJECT).mkdir(mode=0o755)
    os.chmod(tmp_path / PROJECT, 0o755)
    record(tmp_path, 'r1')
    assert stat.S_IMODE(os.stat(tmp_path / PROJECT).st_mode) == 0o700


def test_truncated_ledger_is_a_clear_error_and_is_left_alone(tmp_path):
    record(tmp_path, 'r1')
    act(tmp_path, 'promote', release='r1')
    path = ledger_file(tmp_path)
    truncated = path.read_bytes()[:70]
    path.write_bytes(truncated)
    with pytest.raises(LedgerCorruptError) as caught:
        record(tmp_path, 'r2', 'b')
    message = str(caught.value)
    assert str(path) in message
    assert 'not valid JSON' in message and 'recover_from_backup: true' in message
    assert path.read_bytes() == truncated


def test_hand_edit_is_detected_by_the_checksum(tmp_path):
    record(tmp_path, 'r1')
    act(tmp_path, 'promote', release='r1')
    path = ledger_file(tmp_path)
    ledger = json.loads(path.read_text())
    ledger['releases'][0]['services']['web']['digest'] = digest('e')
    path.write_text(json.dumps(ledger, indent=2))
    with pytest.raises(LedgerCorruptError, match=r'releases\.json is unreadable: its checksum does not match'):
        act(tmp_path)


def test_recover_from_backup_restores_the_previous_write_and_keeps_the_damaged_file(tmp_path):
    record(tmp_path, 'r1')
    act(tmp_path, 'promote', release='r1')          # serial 2; the backup holds serial 1
    path = ledger_file(tmp_path)
    path.write_bytes(path.read_bytes()[:-40])
    result = act(tmp_path, recover_from_backup=True)
    assert result['changed'] is True
    assert 'restored it from' in result['warnings'][0]
    assert statuses(result) == {'r1': 'candidate'}  # what the previous good write held
    assert result['serial'] > 2                     # the serial never goes back
    restored = load(tmp_path)
    assert restored['serial'] == result['serial'] and restored['checksum'] == rs.ledger_checksum(restored)
    damaged = [name for name in os.listdir(tmp_path / PROJECT) if name.startswith('releases.json.damaged-')]
    assert len(damaged) == 1
    # once restored, the ledger works normally again without the option
    assert act(tmp_path, 'promote', release='r1')['last_good']['id'] == 'r1'


def test_recover_from_backup_in_check_mode_writes_nothing(tmp_path):
    record(tmp_path, 'r1')
    record(tmp_path, 'r2', 'b')
    path = ledger_file(tmp_path)
    path.write_bytes(b'{"format": 1, "proj')
    result = act(tmp_path, recover_from_backup=True, check_mode=True)
    assert result['changed'] is True and 'would restore' in result['warnings'][0]
    assert path.read_bytes() == b'{"format": 1, "proj'


def test_missing_ledger_with_a_backup_is_not_silently_reset(tmp_path):
    record(tmp_path, 'r1')
    record(tmp_path, 'r2', 'b')
    ledger_file(tmp_path).unlink()
    with pytest.raises(LedgerCorruptError, match='is missing but its backup .* exists'):
        record(tmp_path, 'r3', 'c')
    assert [release['id'] for release in act(tmp_path, recover_from_backup=True)['releases']] == ['r1']


def test_damaged_ledger_and_backup_name_both_files(tmp_path):
    record(tmp_path, 'r1')
    record(tmp_path, 'r2', 'b')
    ledger_file(tmp_path).write_bytes(b'')
    (tmp_path / PROJECT / 'releases.json.bak').write_bytes(b'[]')
    expected = r'releases\.json is unreadable \(empty\) and so is its backup .*releases\.json\.bak \(not a JSON object\)'
    with pytest.raises(LedgerCorruptError, match=expected):
        act(tmp_path, recover_from_backup=True)


def test_ledger_of_another_project_or_newer_format_is_refused(tmp_path):
    record(tmp_path, 'r1')
    path = ledger_file(tmp_path)
    ledger = load(tmp_path)
    ledger['project'] = 'other'
    ledger['checksum'] = rs.ledger_checksum(ledger)
    path.write_text(json.dumps(ledger))
    with pytest.raises(LedgerCorruptError, match="belongs to project 'other'"):
        act(tmp_path)
    ledger['format'] = 2
    path.write_text(json.dumps(ledger))
    with pytest.raises(ReleaseStateError, match='format 2, newer than this collection understands'):
        act(tmp_path)


def test_check_mode_writes_nothing_and_predicts_the_change(tmp_path):
    predicted = record(tmp_path, 'r1', check_mode=True)
    assert predicted['changed'] is True and statuses(predicted) == {'r1': 'candidate'}
    assert not (tmp_path / PROJECT).exists()
    applied = record(tmp_path, 'r1')
    assert applied['diff'] == predicted['diff']
    before = ledger_file(tmp_path).read_bytes()
    predicted = act(tmp_path, 'promote', release='r1', check_mode=True)
    assert predicted['changed'] is True and predicted['serial'] == 2
    assert ledger_file(tmp_path).read_bytes() == before


def test_query_of_an_unknown_project_creates_nothing(tmp_path):
    result = act(tmp_path)
    assert result['changed'] is False and result['last_good'] is None and result['releases'] == []
    assert os.listdir(tmp_path) == []


# --- crash between the temp write and the rename ------------------------------------------------

CRASHING_RECORD = textwrap.dedent('''
    import os, signal, sys
    real_replace = os.replace
    def replace(src, dst):
        if dst.endswith(os.sep + 'releases.json'):
            os.kill(os.getpid(), signal.SIGKILL)  # the new ledger is written and fsynced, not renamed
        return real_replace(src, dst)
    os.replace = replace
    from ansible_collections.safedeploy.compose.plugins.module_utils._release_state import apply_ledger_action
    apply_ledger_action(sys.argv[1], 'shop', action='record', release='r2',
                        services={'web': {'image': 'web:r2', 'digest': 'sha256:' + 'b' * 64}})
''')


def test_crash_before_rename_leaves_the_old_ledger_and_the_next_call_cleans_up(tmp_path):
    record(tmp_path, 'r1')
    act(tmp_path, 'promote', release='r1')
    before = ledger_file(tmp_path).read_bytes()
    proc = subprocess.run([sys.executable, '-c', CRASHING_RECORD, str(tmp_path)],
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
                          capture_output=True, text=True, check=False)
    assert proc.returncode == -9, proc.stderr
    assert ledger_file(tmp_path).read_bytes() == before
    temps = [name for name in os.listdir(tmp_path / PROJECT) if name.startswith('.releases.json.tmp-')]
    assert len(temps) == 1
    # a query reads and writes nothing, the leftover included
    result = act(tmp_path)
    assert result['serial'] == 2 and statuses(result) == {'r1': 'good'} and not result['warnings']
    assert [name for name in os.listdir(tmp_path / PROJECT) if '.tmp-' in name] == temps
    # the interrupted record can simply be run again, and its write cleans up
    result = record(tmp_path, 'r2', 'b')
    assert result['serial'] == 3
    assert 'removed 1 stale temporary file' in result['warnings'][0] and temps[0] in result['warnings'][0]
    assert not [name for name in os.listdir(tmp_path / PROJECT) if '.tmp-' in name]


# --- the flock: serialization, bounded wait, close-on-exec ------------------------------------

def _record_many(state_dir, prefix, count):
    for number in range(count):
        apply_ledger_action(state_dir, PROJECT, action='record', release='%s-%02d' % (prefix, number),
                            services=services('x'), history_limit=1000)


def test_concurrent_writers_never_lose_an_update(tmp_path):
    workers = [FORK.Process(target=_record_many, args=(str(tmp_path), name, 25)) for name in ('a', 'b', 'c')]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    ledger = load(tmp_path)
    ids = sorted(release['id'] for release in ledger['releases'])
    assert ids == sorted('%s-%02d' % (name, number) for name in 'abc' for number in range(25))
    assert ledger['serial'] == 75  # one write per record: none overwrote another


def _promote(state_dir, release, start):
    start.wait()
    apply_ledger_action(state_dir, PROJECT, action='promote', release=release)


def test_racing_promotes_serialize_to_one_good_release(tmp_path):
    releases = ['p%d' % number for number in range(8)]
    for release in releases:
        record(tmp_path, release)
    start = FORK.Event()
    workers = [FORK.Process(target=_promote, args=(str(tmp_path), release, start)) for release in releases]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    result = act(tmp_path)
    assert sorted(statuses(result).values()) == ['good'] + ['superseded'] * 7
    assert result['current']['id'] == result['last_good']['id']
    assert result['serial'] == 16


def _hold_flock(lock_path, ready, release):
    with exclusive_flock(lock_path, 'test ledger'):
        ready.set()
        release.wait(30)


def test_flock_wait_is_bounded_and_names_the_holder(tmp_path):
    lock_path = str(tmp_path / '.releases.lock')
    ready, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold_flock, args=(lock_path, ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        started = time.monotonic()
        with pytest.raises(FlockTimeout) as caught:
            with exclusive_flock(lock_path, 'test ledger', timeout=0.5, poll_interval=0.05):
                pass
        assert 0.5 <= time.monotonic() - started < 5
        message = str(caught.value)
        assert 'test ledger is locked by pid %d on host %s since ' % (holder.pid, socket.gethostname()) in message
        assert 'gave up after waiting 0.5s' in message
    finally:
        release.set()
        holder.join(10)
    with exclusive_flock(lock_path, 'test ledger', timeout=1):
        pass  # free again once the holder is gone


def test_ledger_update_waits_for_the_flock_then_fails_clearly(tmp_path):
    record(tmp_path, 'r1')
    ready, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold_flock, args=(str(tmp_path / PROJECT / '.releases.lock'), ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(FlockTimeout, match='release ledger .*releases.json is locked by pid %d' % holder.pid):
            act(tmp_path, 'promote', release='r1', flock_timeout=0.3)
    finally:
        release.set()
        holder.join(10)
    assert load(tmp_path)['serial'] == 1


def test_flock_is_not_inherited_by_child_processes(tmp_path):
    lock_path = str(tmp_path / '.releases.lock')
    with exclusive_flock(lock_path, 'test ledger'):
        # close_fds=False: only close-on-exec keeps the lock out of the child
        child = subprocess.Popen(['sleep', '30'], close_fds=False)
    try:
        child_fds = [os.readlink('/proc/%d/fd/%s' % (child.pid, fd)) for fd in os.listdir('/proc/%d/fd' % child.pid)]
        assert lock_path not in child_fds
        with exclusive_flock(lock_path, 'test ledger', timeout=0.5):
            pass  # the child, still running, does not keep the lock
    finally:
        child.kill()
        child.wait()


def test_flock_holder_note_is_cleared_on_release(tmp_path):
    lock_path = tmp_path / '.releases.lock'
    with exclusive_flock(str(lock_path), 'test ledger'):
        note = json.loads(lock_path.read_text())
        assert note['pid'] == os.getpid() and note['host'] == socket.gethostname()
    assert lock_path.read_bytes() == b''


# --- for disk_reclaim -----------------------------------------------------------------------------

def test_protected_images_are_current_and_last_good_releases(tmp_path):
    for release, char in (('r1', 'a'), ('r2', 'b'), ('r3', 'c')):
        record(tmp_path, release, char)
        act(tmp_path, 'promote', release=release)
    record(tmp_path, 'r4', 'd')
    act(tmp_path, 'fail', release='r4', reason='gate')
    refs = protected_images(str(tmp_path), PROJECT, 2)
    assert '127.0.0.1:5000/shop/web:r3' in refs and '127.0.0.1:5000/shop/web:r2' in refs
    assert '127.0.0.1:5000/shop/web@%s' % digest('c') in refs and digest('b') in refs
    assert 'docker.io/library/redis@%s' % digest('f') in refs
    assert not any(ref.endswith(':r1') or ref.endswith(':r4') for ref in refs)
    assert digest('a') not in refs and digest('d') not in refs
    only_current = protected_images(str(tmp_path), PROJECT, 0)
    assert '127.0.0.1:5000/shop/web:r3' in only_current and digest('b') not in only_current


def test_protected_images_include_a_candidate_another_run_may_be_bringing_up(tmp_path):
    record(tmp_path, 'r1', 'a')
    act(tmp_path, 'promote', release='r1')
    record(tmp_path, 'r2', 'b')  # recorded, pulled, not up yet: a reclaim now would pull the rug
    refs = protected_images(str(tmp_path), PROJECT, 0)
    assert '127.0.0.1:5000/shop/web:r2' in refs and digest('b') in refs
    act(tmp_path, 'fail', release='r2', reason='gate')
    assert digest('b') not in protected_images(str(tmp_path), PROJECT, 0), 'a failed candidate is not protected'


def test_protected_images_refuse_an_unreadable_or_missing_ledger(tmp_path):
    record(tmp_path, 'r1')
    ledger_file(tmp_path).write_bytes(b'{')
    with pytest.raises(LedgerCorruptError, match='Refusing to decide which images of project shop'):
        protected_images(str(tmp_path), PROJECT, 3)
    with pytest.raises(ReleaseStateError, match='project other has no release ledger'):
        protected_images(str(tmp_path), 'other', 3)
    assert protected_images(str(tmp_path), 'other', 3, missing_ok=True) == []


def test_list_projects_lists_projects_with_a_ledger(tmp_path):
    for project in ('beta', 'alpha'):
        apply_ledger_action(str(tmp_path), project, action='record', release='r1', services=services('r1'))
    (tmp_path / 'no-ledger').mkdir()
    (tmp_path / 'only-backup').mkdir()
    (tmp_path / 'only-backup' / 'releases.json.bak').write_text('{}')
    (tmp_path / '.hidden').mkdir()
    assert list_projects(str(tmp_path)) == ['alpha', 'beta', 'only-backup']
    assert list_projects(str(tmp_path / 'absent')) == []


def test_read_ledger_of_a_fresh_project_is_empty(tmp_path):
    loaded = read_ledger(str(tmp_path), PROJECT)
    assert loaded.ledger == rs.empty_ledger(PROJECT) and loaded.raw is None and not loaded.recovered
