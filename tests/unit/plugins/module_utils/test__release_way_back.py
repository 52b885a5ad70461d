"""The way back in the ledger: snapshots of a release's files, redeploys of a good release, serial order,
retention, and reads that write nothing (_release_state)."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from ansible_collections.safedeploy.compose.plugins.module_utils import _release_state as rs
from ansible_collections.safedeploy.compose.plugins.module_utils._release_state import (
    ReleaseStateError,
    apply_ledger_action,
)

PROJECT = 'shop'


def services(tag, char='a'):
    return {'web': {'image': '127.0.0.1:5000/shop/web:%s' % tag, 'digest': 'sha256:' + char * 64}}


def act(state, action='query', **kwargs):
    return apply_ledger_action(str(state), PROJECT, action=action, **kwargs)


def statuses(result):
    return dict((record['id'], record['status']) for record in result['releases'])


def on_disk(state):
    return json.loads((state / PROJECT / 'releases.json').read_text())


@pytest.fixture
def project(tmp_path):
    """A compose project with a compose file, an env file holding a secret, and the pinned override."""
    src = tmp_path / 'srv'
    src.mkdir()
    (src / 'compose.yaml').write_text('services:\n  web:\n    image: web\n    env_file: [app.env]\n')
    (src / 'app.env').write_text('PORT=8080\nPASSWORD=hunter2\n')
    os.chmod(src / 'app.env', 0o640)
    (src / 'compose.release.yml').write_text('services:\n  web:\n    image: web:r1@sha256:' + 'a' * 64 + '\n')
    return src


def files_of(src):
    return [str(src / name) for name in ('compose.yaml', 'app.env', 'compose.release.yml')]


def test_a_release_comes_back_byte_for_byte_with_its_modes(tmp_path, project):
    state = tmp_path / 'state'
    act(state, 'record', release='r1', services=services('r1'), compose_hash='h1', files=files_of(project))
    act(state, 'promote', release='r1')
    kept = dict((name, (project / name).read_bytes()) for name in ('compose.yaml', 'app.env', 'compose.release.yml'))
    (project / 'app.env').write_text('PORT=9090\n')
    os.chmod(project / 'app.env', 0o644)
    (project / 'compose.yaml').write_text('services:\n  web:\n    image: web\n  extra:\n    image: extra\n')

    preview = act(state, 'restore', release='r1', check_mode=True)
    assert preview['changed'] and sorted(preview['restored']) == sorted(
        [str(project / 'app.env'), str(project / 'compose.yaml')])
    assert (project / 'app.env').read_text() == 'PORT=9090\n'  # check mode wrote nothing

    result = act(state, 'restore', release='r1')
    assert result['changed'] and len(result['restored']) == 2
    for name, data in kept.items():
        assert (project / name).read_bytes() == data
    assert stat.S_IMODE(os.stat(project / 'app.env').st_mode) == 0o640
    assert act(state, 'restore', release='r1')['changed'] is False  # idempotent


def test_the_snapshot_keeps_secrets_on_the_host_only(tmp_path, project):
    state = tmp_path / 'state'
    result = act(state, 'record', release='r1', services=services('r1'), files=files_of(project))
    out = json.dumps(result)
    assert 'hunter2' not in out
    secret_hash = hashlib.sha256((project / 'app.env').read_bytes()).hexdigest()
    assert secret_hash not in out  # a short env file's hash would let the secret be guessed
    assert result['releases'][0]['snapshot'] == {'files': files_of(project)}
    store = state / PROJECT / 'files'
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o700
    for blob in store.iterdir():
        assert stat.S_IMODE(os.stat(blob).st_mode) == 0o600


def test_a_damaged_kept_copy_restores_nothing(tmp_path, project):
    state = tmp_path / 'state'
    act(state, 'record', release='r1', services=services('r1'), files=files_of(project))
    (project / 'compose.yaml').write_text('changed\n')
    (project / 'app.env').write_text('changed\n')
    blob = hashlib.sha256(b'PORT=8080\nPASSWORD=hunter2\n').hexdigest()
    (state / PROJECT / 'files' / blob).write_text('tampered\n')
    with pytest.raises(ReleaseStateError, match='damaged: nothing was restored'):
        act(state, 'restore', release='r1')
    assert (project / 'compose.yaml').read_text() == 'changed\n'  # not even the good file was written


def test_a_release_without_snapshot_restores_nothing_and_says_so(tmp_path):
    state = tmp_path / 'state'
    act(state, 'record', release='r1', services=services('r1'))
    result = act(state, 'restore', release='r1')
    assert result['changed'] is False and result['restored'] == []
    assert 'without a snapshot' in result['warnings'][0]


def test_a_redeploy_of_the_good_release_that_fails_leaves_it_good(tmp_path, project):
    state = tmp_path / 'state'
    act(state, 'record', release='r1', services=services('r1'), compose_hash='h1', files=files_of(project))
    act(state, 'promote', release='r1')
    good_snapshot = on_disk(state)['releases'][0]['snapshot']
    (project / 'app.env').write_text('PORT=9999\n')  # the config that breaks it

    act(state, 'record', release='r1', services=services('r1'), compose_hash='h2', files=files_of(project))
    record = on_disk(state)['releases'][0]
    assert record['status'] == 'good' and record['compose_hash'] == 'h1' and record['snapshot'] == good_snapshot
    assert record['attempt']['compose_hash'] == 'h2'

    # the rollback restores the snapshot it was good with and promotes it as a rollback: no adoption
    act(state, 'promote', release='r1', health={'passed': True, 'rollback': True})
    assert on_disk(state)['releases'][0]['attempt']['compose_hash'] == 'h2'
    result = act(state, 'fail', release='r1', reason='gate failed')
    assert statuses(result) == {'r1': 'good'} and result['last_good']['id'] == 'r1'
    record = on_disk(state)['releases'][0]
    assert record['compose_hash'] == 'h1' and record['snapshot'] == good_snapshot and record['attempt'] is None
    assert [(a['compose_hash'], a['status'], a['reason']) for a in record['failed_attempts']] == [
        ('h2', 'failed', 'gate failed')]
    act(state, 'restore', release='r1')
    assert (project / 'app.env').read_text() == 'PORT=8080\nPASSWORD=hunter2\n'


def test_a_redeploy_that_passes_adopts_the_new_configuration(tmp_path, project):
    state = tmp_path / 'state'
    act(state, 'record', release='r1', services=services('r1'), compose_hash='h1', files=files_of(project))
    act(state, 'promote', release='r1')
    (project / 'app.env').write_text('PORT=8081\n')
    act(state, 'record', release='r1', services=services('r1'), compose_hash='h2', files=files_of(project))
    result = act(state, 'promote', release='r1', health={'passed': True})
    assert result['changed'] and result['current']['compose_hash'] == 'h2' and result['current']['revision'] == 2
    (project / 'app.env').write_text('other\n')
    act(state, 'restore', release='r1')
    assert (project / 'app.env').read_text() == 'PORT=8081\n'
    # the first configuration's kept copy is no longer referenced: pruned
    old = hashlib.sha256(b'PORT=8080\nPASSWORD=hunter2\n').hexdigest()
    assert not (state / PROJECT / 'files' / old).exists()


def test_a_redeploy_of_an_older_good_release_that_fails_keeps_it_superseded(tmp_path):
    state = tmp_path / 'state'
    for release, char in (('r1', 'a'), ('r2', 'b')):
        act(state, 'record', release=release, services=services(release, char))
        act(state, 'promote', release=release)
    act(state, 'record', release='r1', services=services('r1', 'a'), compose_hash='h9')
    result = act(state, 'fail', release='r1', reason='gate failed')
    assert statuses(result) == {'r1': 'superseded', 'r2': 'good'} and result['previous_good']['id'] == 'r1'


def test_releases_are_ordered_by_serial_not_by_the_clock(tmp_path, monkeypatch):
    state = tmp_path / 'state'
    clock = ['2030-01-01T00:00:00.000000Z']
    monkeypatch.setattr(rs, 'utc_now', lambda: clock[0])
    act(state, 'record', release='r1', services=services('r1', 'a'))
    act(state, 'promote', release='r1')
    clock[0] = '2020-01-01T00:00:00.000000Z'  # the clock steps back ten years
    act(state, 'record', release='r2', services=services('r2', 'b'))
    result = act(state, 'promote', release='r2')
    assert result['last_good']['id'] == 'r2' and result['previous_good']['id'] == 'r1'
    act(state, 'record', release='r3', services=services('r3', 'c'))
    clock[0] = '2025-01-01T00:00:00.000000Z'
    result = act(state, 'promote', release='r3')
    assert result['previous_good']['id'] == 'r2'
    assert [record['id'] for record in rs.once_good_releases(on_disk(state))] == ['r3', 'r2', 'r1']


def test_retention_keeps_the_good_releases_when_failures_pile_up(tmp_path):
    state = tmp_path / 'state'
    for release, char in (('r1', 'a'), ('r2', 'b')):
        act(state, 'record', release=release, services=services(release, char), history_limit=3)
        act(state, 'promote', release=release, history_limit=3)
    for number in range(5):
        release = 'bad%d' % number
        act(state, 'record', release=release, services=services(release, 'c'), history_limit=3)
        result = act(state, 'fail', release=release, reason='gate', history_limit=3)
    # the previous good release (the rollback role's default target) survives five failures
    assert statuses(result) == {'r1': 'superseded', 'r2': 'good', 'bad4': 'failed'}
    assert result['previous_good']['id'] == 'r1'


def test_a_query_takes_no_lock_and_writes_nothing(tmp_path):
    state = tmp_path / 'state'
    act(state, 'record', release='r1', services=services('r1'))
    act(state, 'promote', release='r1')
    directory = state / PROJECT
    (directory / '.releases.lock').unlink()
    before = sorted((path.name, path.stat().st_mtime_ns) for path in directory.iterdir())
    result = act(state)
    assert result['current']['id'] == 'r1' and result['changed'] is False
    assert sorted((path.name, path.stat().st_mtime_ns) for path in directory.iterdir()) == before


def test_a_query_answers_while_another_process_holds_the_ledger(tmp_path):
    state = tmp_path / 'state'
    act(state, 'record', release='r1', services=services('r1'))
    lock = str(state / PROJECT / '.releases.lock')
    with rs.exclusive_flock(lock, 'test'):
        result = apply_ledger_action(str(state), PROJECT, flock_timeout=0.1)
    assert statuses(result) == {'r1': 'candidate'}


@pytest.mark.parametrize('image, expected', [
    ('127.0.0.1:5000/shop/web:r1', '127.0.0.1:5000/shop/web:r1@sha256:' + 'a' * 64),
    # pinned by digest in the compose file: the recorded digest replaces that one, never follows it
    ('127.0.0.1:5000/shop/web:r1@sha256:' + 'b' * 64, '127.0.0.1:5000/shop/web:r1@sha256:' + 'a' * 64),
    ('postgres@sha256:' + 'b' * 64, 'postgres@sha256:' + 'a' * 64),
])
def test_the_ledger_says_how_to_run_each_service_by_its_recorded_digest(tmp_path, image, expected):
    state = tmp_path / 'state'
    result = act(state, 'record', release='r1', services={'web': {'image': image, 'digest': 'sha256:' + 'a' * 64}})
    assert result['releases'][0]['services']['web']['pinned'] == expected
