"""safedeploy.compose.last_good_tag run as Ansible runs it (a module process per call)."""

from __future__ import annotations

import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import COLLECTIONS

PROJECT = 'shop'


def digest(char):
    return 'sha256:' + char * 64


def services(tag, char):
    return {'web': {'image': '127.0.0.1:5000/shop/web:%s' % tag, 'digest': digest(char)},
            'api': {'image': '127.0.0.1:5000/shop/api:%s' % tag, 'digest': digest('e')}}


@pytest.fixture
def ledger(run_module, tmp_path):
    """Call last_good_tag on a project whose state lives in tmp_path."""
    def call(check=False, diff=False, **args):
        args.setdefault('project', PROJECT)
        args.setdefault('state_dir', str(tmp_path))
        return run_module('last_good_tag', args, check=check, diff=diff)
    call.file = tmp_path / PROJECT / 'releases.json'
    return call


def warnings_of(result):
    """Warning texts (ansible-core 2.19 returns each warning as a structured summary)."""
    return [warning if isinstance(warning, str) else warning['event']['msg'] for warning in result.get('warnings', [])]


def statuses(result):
    return dict((release['id'], release['status']) for release in result['releases'])


def test_record_promote_record_fail_query_gives_the_last_good(ledger):
    assert ledger(action='record', release='r1', services=services('r1', 'a'),
                  source={'commit': 'r1', 'ci_run': 'https://ci.example.com/1'})['changed']
    assert ledger(action='promote', release='r1', health={'passed': True})['changed']
    assert ledger(action='record', release='r2', services=services('r2', 'b'))['changed']
    assert ledger(action='fail', release='r2', reason='health gate failed: web returned 502')['changed']
    result = ledger()
    assert not result.failed and result['changed'] is False
    assert result['last_good']['id'] == 'r1'
    assert result['last_good']['services']['web']['digest'] == digest('a')
    assert result['last_good']['source'] == {'commit': 'r1', 'ci_run': 'https://ci.example.com/1'}
    assert result['current']['id'] == 'r1'
    assert statuses(result) == {'r1': 'good', 'r2': 'failed'}
    assert result['releases'][1]['reason'] == 'health gate failed: web returned 502'
    assert result['serial'] == 4 and result['ledger_file'] == str(ledger.file)


@pytest.mark.parametrize('step', [
    dict(action='record', release='r2', services=services('r2', 'b'), compose_hash='sha256:feed'),
    dict(action='promote', release='r2', health={'passed': True, 'elapsed': 4.2}),
    dict(action='fail', release='r2', reason='gate failed', fail_status='rolled_back'),
])
def test_check_apply_check_apply(ledger, step):
    ledger(action='record', release='r1', services=services('r1', 'a'))
    ledger(action='promote', release='r1')
    if step['action'] != 'record':
        ledger(action='record', release='r2', services=services('r2', 'b'))
    untouched = ledger.file.read_bytes()

    predicted = ledger(check=True, diff=True, **step)
    assert predicted['changed'] is True and not predicted.failed
    assert ledger.file.read_bytes() == untouched  # check mode wrote nothing
    assert predicted['diff']['before'] != predicted['diff']['after']

    applied = ledger(diff=True, **step)
    assert applied['changed'] is True
    assert applied['diff'] == predicted['diff']  # check mode predicted the real result
    assert applied['serial'] == predicted['serial'] == json.loads(untouched)['serial'] + 1

    second_check = ledger(check=True, diff=True, **step)
    second = ledger(diff=True, **step)
    for result in (second_check, second):
        assert result['changed'] is False
        assert result['diff']['before'] == result['diff']['after'] == applied['diff']['after']
        assert result['serial'] == applied['serial']


def test_diff_shows_status_changes(ledger):
    ledger(action='record', release='r1', services=services('r1', 'a'))
    ledger(action='promote', release='r1')
    ledger(action='record', release='r2', services=services('r2', 'b'))
    result = ledger(diff=True, action='promote', release='r2')
    assert result['diff'] == {
        'before': {'current': 'r1', 'releases': {'r1': 'good', 'r2': 'candidate'}},
        'after': {'current': 'r2', 'releases': {'r1': 'superseded', 'r2': 'good'}},
    }
    assert result['previous_good']['id'] == 'r1'
    assert 'diff' not in ledger(action='query')


def test_record_of_an_id_with_other_digests_fails_clearly(ledger):
    ledger(action='record', release='r1', services=services('r1', 'a'))
    result = ledger(action='record', release='r1', services=services('r1', 'c'))
    assert result.failed
    assert 'release r1 is already recorded with other images (services differing: web)' in result['msg']
    assert 'immutable' in result['msg']
    # the same top-level keys on every path
    assert {'last_good', 'previous_good', 'current', 'releases', 'serial', 'changed'} <= set(result)


def test_required_options_per_action(ledger):
    assert 'missing: services' in ledger(action='record', release='r1')['msg']
    assert 'missing: reason' in ledger(action='fail', release='r1')['msg']
    assert 'invalid project name' in ledger(project='../etc')['msg']


def test_concurrent_module_runs_serialize(ledger):
    """2 x 20 module processes recording distinct releases at once: every write survives."""
    ids = ['%s%02d' % (writer, number) for writer in 'ab' for number in range(20)]

    def record(release):
        return ledger(action='record', release=release, services=services(release, 'a'), history_limit=100)

    with ThreadPoolExecutor(max_workers=len(ids)) as pool:
        results = list(pool.map(record, ids))
    assert [result.get('msg') for result in results if result.failed] == []
    final = ledger()
    assert sorted(statuses(final)) == sorted(ids)
    assert final['serial'] == len(ids)  # one write per call, none lost
    assert sorted(result['serial'] for result in results) == list(range(1, len(ids) + 1))


def test_racing_promotes_leave_one_good_release(ledger):
    ids = ['p%d' % number for number in range(6)]
    for release in ids:
        ledger(action='record', release=release, services=services(release, 'a'))
    with ThreadPoolExecutor(max_workers=len(ids)) as pool:
        results = list(pool.map(lambda release: ledger(action='promote', release=release), ids))
    assert not any(result.failed for result in results)
    final = ledger()
    assert sorted(statuses(final).values()) == ['good'] + ['superseded'] * 5
    assert final['serial'] == 2 * len(ids)


def test_truncated_ledger_gives_a_clear_error_naming_the_file(ledger):
    ledger(action='record', release='r1', services=services('r1', 'a'))
    ledger(action='promote', release='r1')
    ledger.file.write_bytes(ledger.file.read_bytes()[:100])
    result = ledger()
    assert result.failed
    assert str(ledger.file) in result['msg']
    assert 'not valid JSON' in result['msg'] and 'recover_from_backup: true' in result['msg']
    assert result['last_good'] is None


def test_recover_from_backup(ledger):
    ledger(action='record', release='r1', services=services('r1', 'a'))
    ledger(action='promote', release='r1')
    ledger(action='record', release='r2', services=services('r2', 'b'))   # the backup now holds r1 good
    ledger.file.write_bytes(b'{"format": 1, "serial": 3, "relea')
    result = ledger(action='query', recover_from_backup=True)
    assert not result.failed and result['changed'] is True
    assert any('restored it from' in warning for warning in warnings_of(result))
    assert result['last_good']['id'] == 'r1' and statuses(result) == {'r1': 'good'}
    assert result['serial'] == 4
    after = ledger()
    assert after['changed'] is False and after['serial'] == 4 and 'warnings' not in after


def test_hand_edited_ledger_fails_its_checksum(ledger):
    ledger(action='record', release='r1', services=services('r1', 'a'))
    content = json.loads(ledger.file.read_text())
    content['releases'][0]['status'] = 'good'
    ledger.file.write_text(json.dumps(content, indent=2))
    result = ledger(action='promote', release='r1')
    assert result.failed
    assert 'checksum does not match' in result['msg'] and str(ledger.file) in result['msg']


def test_history_bound_keeps_the_last_good(ledger):
    ledger(action='record', release='g1', services=services('g1', 'a'))
    ledger(action='promote', release='g1')
    evicted = []
    for number in range(6):
        evicted += ledger(action='record', release='c%d' % number, services=services('c', 'b'),
                          history_limit=3)['evicted']
    final = ledger()
    assert [release['id'] for release in final['releases']] == ['g1', 'c4', 'c5']
    assert evicted == ['c0', 'c1', 'c2', 'c3']
    assert final['last_good']['id'] == 'g1'


def test_crash_between_temp_write_and_rename(ledger, run_module, tmp_path):
    """SIGKILL the module right before the rename: the ledger stays wholly old, the next call cleans up."""
    ledger(action='record', release='r1', services=services('r1', 'a'))
    ledger(action='promote', release='r1')
    old = ledger.file.read_bytes()
    hook = tmp_path / 'crash-hook'
    hook.mkdir()
    (hook / 'sitecustomize.py').write_text(
        'import os, signal\n'
        'real_replace = os.replace\n'
        'def replace(src, dst):\n'
        '    if str(dst).endswith(os.sep + "releases.json"):\n'
        '        os.kill(os.getpid(), signal.SIGKILL)\n'
        '    return real_replace(src, dst)\n'
        'os.replace = replace\n')
    with pytest.raises(AssertionError, match=r'rc=-9'):
        run_module('last_good_tag', dict(project=PROJECT, state_dir=str(tmp_path), action='record', release='r2',
                                         services=services('r2', 'b')),
                   env={'PYTHONPATH': os.pathsep.join([str(COLLECTIONS), str(hook)])})
    assert ledger.file.read_bytes() == old
    temps = [name for name in os.listdir(ledger.file.parent) if name.startswith('.releases.json.tmp-')]
    assert len(temps) == 1

    result = ledger()  # a query reads, and writes (or removes) nothing
    assert result['serial'] == 2 and statuses(result) == {'r1': 'good'} and not warnings_of(result)
    result = ledger(action='record', release='r2', services=services('r2', 'b'))  # the next write cleans up
    assert result['serial'] == 3 and any(temps[0] in warning for warning in warnings_of(result))
    assert not [name for name in os.listdir(ledger.file.parent) if '.tmp-' in name]


def test_modes(ledger, tmp_path):
    previous = os.umask(0)  # inherited by the module process
    try:
        ledger(state_dir=str(tmp_path / 'fresh'), action='record', release='r1', services=services('r1', 'a'))
        ledger(state_dir=str(tmp_path / 'fresh'), action='promote', release='r1')
    finally:
        os.umask(previous)
    project_dir = tmp_path / 'fresh' / PROJECT
    assert stat.S_IMODE(os.stat(tmp_path / 'fresh').st_mode) == 0o700
    assert stat.S_IMODE(os.stat(project_dir).st_mode) == 0o700
    names = sorted(os.listdir(project_dir))
    assert names == ['.releases.lock', 'releases.json', 'releases.json.bak']
    assert [stat.S_IMODE(os.stat(project_dir / name).st_mode) for name in names] == [0o600] * 3


def test_query_of_a_project_without_state(ledger, tmp_path):
    result = ledger(state_dir=str(tmp_path / 'none'))
    assert result['changed'] is False and result['last_good'] is None and result['releases'] == []
    assert not (tmp_path / 'none').exists()
