"""The stack lock lease: _stack_lock."""

from __future__ import annotations

import calendar
import json
import multiprocessing
import os
import socket
import stat
import threading
import time

import pytest

from ansible_collections.safedeploy.compose.plugins.module_utils._stack_lock import (
    StackLockError,
    acquire_stack_lock,
    read_lease,
    release_stack_lock,
)

FORK = multiprocessing.get_context('fork')
PROJECT = 'shop'


def acquire(state_dir, run_id, **kwargs):
    kwargs.setdefault('lock_wait', 0)
    kwargs.setdefault('poll_interval', 0.05)
    return acquire_stack_lock(str(state_dir), PROJECT, run_id, **kwargs)


def release(state_dir, run_id, **kwargs):
    return release_stack_lock(str(state_dir), PROJECT, run_id, **kwargs)


def lease_file(state_dir):
    return state_dir / PROJECT / 'lock.json'


def write_lease(state_dir, run_id, age, ttl=60, owner='ci', host='web9', pid=4242):
    acquired = time.time() - age
    lease = dict(owner=owner, host=host, pid=pid, run_id=run_id, release='old1', ttl=ttl,
                 acquired_at=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(acquired)),
                 expires_at=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(acquired + ttl)))
    (state_dir / PROJECT).mkdir(parents=True, exist_ok=True)
    lease_file(state_dir).write_text(json.dumps(lease))
    return lease


def test_acquire_writes_a_lease_naming_its_holder(tmp_path):
    before = time.time()
    result = acquire(tmp_path, 'run-1', owner='deploy', release='9f2c1ab', ttl=600)
    assert result['changed'] is True and result['acquired'] is True and result['took_over'] is False
    lease = json.loads(lease_file(tmp_path).read_text())
    assert lease == result['lock']
    assert (lease['owner'], lease['host'], lease['pid'], lease['run_id'], lease['release'], lease['ttl']) == (
        'deploy', socket.gethostname(), os.getpid(), 'run-1', '9f2c1ab', 600)
    acquired = calendar.timegm(time.strptime(lease['acquired_at'], '%Y-%m-%dT%H:%M:%SZ'))
    assert before - 2 <= acquired <= time.time() + 1
    assert stat.S_IMODE(os.stat(lease_file(tmp_path)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / PROJECT).st_mode) == 0o700


def test_owner_defaults_to_the_user(tmp_path, monkeypatch):
    monkeypatch.setenv('LOGNAME', 'someone')
    assert acquire(tmp_path, 'run-1')['lock']['owner'] == 'someone'


def test_acquire_again_with_the_same_run_id_changes_nothing(tmp_path):
    first = acquire(tmp_path, 'run-1')
    again = acquire(tmp_path, 'run-1')
    assert again['changed'] is False and again['acquired'] is True
    assert again['lock'] == first['lock']
    assert again['diff']['before'] == again['diff']['after']


def test_second_holder_waits_lock_wait_then_fails_naming_the_first(tmp_path):
    acquire(tmp_path, 'run-1', owner='alice', release='r1')
    started = time.monotonic()
    with pytest.raises(StackLockError) as caught:
        acquire(tmp_path, 'run-2', owner='bob', lock_wait=1, poll_interval=0.1)
    elapsed = time.monotonic() - started
    assert 1 <= elapsed < 4
    message = str(caught.value)
    assert ('held by owner alice on host %s (pid %d), run id run-1, release r1, acquired '
            % (socket.gethostname(), os.getpid())) in message
    assert 's ago, ttl 1800s' in message and 'waiting 1s' in message and 'run_id=run-1' in message
    assert caught.value.holder['run_id'] == 'run-1' and caught.value.waited >= 1
    assert read_lease(str(lease_file(tmp_path)))[0]['run_id'] == 'run-1'


def test_waiter_gets_the_lock_when_the_holder_releases_it(tmp_path):
    acquire(tmp_path, 'run-1')
    timer = threading.Timer(0.5, release, args=(tmp_path, 'run-1'))
    timer.start()
    try:
        result = acquire(tmp_path, 'run-2', lock_wait=10, poll_interval=0.05)
    finally:
        timer.join()
    assert result['acquired'] is True and result['took_over'] is False
    assert 0.4 <= result['waited'] < 5
    assert result['lock']['run_id'] == 'run-2'


def test_expired_lease_is_taken_over_with_a_warning(tmp_path):
    old = write_lease(tmp_path, 'run-dead', age=120, ttl=60)
    result = acquire(tmp_path, 'run-2')
    assert result['changed'] is True and result['acquired'] is True and result['took_over'] is True
    assert result['previous_lock'] == old
    assert len(result['warnings']) == 1
    assert result['warnings'][0].startswith('took over the expired stack lock')
    assert 'run id run-dead' in result['warnings'][0] and 'host web9' in result['warnings'][0]
    assert json.loads(lease_file(tmp_path).read_text())['run_id'] == 'run-2'


def test_live_lease_is_not_taken_over(tmp_path):
    write_lease(tmp_path, 'run-live', age=50, ttl=60)
    with pytest.raises(StackLockError, match='run id run-live'):
        acquire(tmp_path, 'run-2')


def test_own_expired_lease_is_renewed(tmp_path):
    write_lease(tmp_path, 'run-1', age=120, ttl=60)
    result = acquire(tmp_path, 'run-1', ttl=60)
    assert result['changed'] is True and result['took_over'] is False
    assert 'renewed the expired stack lock' in result['warnings'][0]
    assert read_lease(str(lease_file(tmp_path)))[0]['expires_at'] > result['previous_lock']['expires_at']


def test_empty_lease_left_by_a_crash_is_taken_over(tmp_path):
    (tmp_path / PROJECT).mkdir()
    lease_file(tmp_path).write_bytes(b'')
    result = acquire(tmp_path, 'run-2')
    assert result['took_over'] is True and 'was empty' in result['warnings'][0]
    assert read_lease(str(lease_file(tmp_path)))[0]['run_id'] == 'run-2'


def test_release_with_a_wrong_run_id_is_refused_and_keeps_the_lease(tmp_path):
    acquire(tmp_path, 'run-1', owner='alice')
    with pytest.raises(StackLockError, match=r'refusing to unlock .* held by owner alice .* run id run-1.*'
                                             r'not by run id run-2.*run_id=run-1'):
        release(tmp_path, 'run-2')
    assert read_lease(str(lease_file(tmp_path)))[0]['run_id'] == 'run-1'


def test_release_by_the_holders_run_id(tmp_path):
    lease = acquire(tmp_path, 'run-1')['lock']
    result = release(tmp_path, 'run-1')
    assert result['changed'] is True and result['lock'] is None and result['previous_lock'] == lease
    assert result['diff'] == {'before': lease, 'after': {}}
    assert not lease_file(tmp_path).exists()
    assert release(tmp_path, 'run-1')['changed'] is False


def test_release_of_a_project_never_locked_creates_nothing(tmp_path):
    result = release(tmp_path, 'run-1')
    assert result['changed'] is False and os.listdir(tmp_path) == []


def test_check_mode_writes_nothing(tmp_path):
    predicted = acquire(tmp_path, 'run-1', check_mode=True)
    assert predicted['changed'] is True and predicted['acquired'] is True
    assert not (tmp_path / PROJECT).exists()
    acquire(tmp_path, 'run-1')
    predicted = release(tmp_path, 'run-1', check_mode=True)
    assert predicted['changed'] is True
    assert lease_file(tmp_path).exists()


@pytest.mark.parametrize('kwargs, message', [
    (dict(ttl=0), 'ttl must be at least 1'),
    (dict(lock_wait=-1), 'lock_wait 0 or more'),
    (dict(poll_interval=0), 'poll_interval above 0'),
])
def test_invalid_timing_is_refused(tmp_path, kwargs, message):
    with pytest.raises(StackLockError, match=message):
        acquire(tmp_path, 'run-1', **kwargs)


def _race(state_dir, run_id, start, outcomes):
    start.wait()
    try:
        acquire_stack_lock(state_dir, PROJECT, run_id, lock_wait=0)
        outcomes.put((run_id, 'acquired'))
    except StackLockError:
        outcomes.put((run_id, 'refused'))


def test_exactly_one_of_racing_takers_wins(tmp_path):
    start, outcomes = FORK.Event(), FORK.Queue()
    workers = [FORK.Process(target=_race, args=(str(tmp_path), 'run-%d' % number, start, outcomes))
               for number in range(8)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(30)
    results = dict(outcomes.get(timeout=5) for _worker in workers)
    winners = [run_id for run_id, outcome in results.items() if outcome == 'acquired']
    assert len(winners) == 1
    assert read_lease(str(lease_file(tmp_path)))[0]['run_id'] == winners[0]
