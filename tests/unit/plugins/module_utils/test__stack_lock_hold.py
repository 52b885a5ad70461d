"""The lease held through a run (renewal and re-check), its clock, and the disk reclaim interlock: _stack_lock."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from ansible_collections.safedeploy.compose.plugins.module_utils import _stack_lock
from ansible_collections.safedeploy.compose.plugins.module_utils._stack_lock import (
    LeaseLost,
    StackLockError,
    acquire_stack_lock,
    hold_stack_lock,
    live_leases,
    read_lease,
    reclaim_interlock,
    release_stack_lock,
)

PROJECT = 'shop'


def acquire(state_dir, run_id, **kwargs):
    kwargs.setdefault('lock_wait', 0)
    kwargs.setdefault('poll_interval', 0.05)
    return acquire_stack_lock(str(state_dir), PROJECT, run_id, **kwargs)['lock']


def on_disk(state_dir, project=PROJECT):
    return read_lease(str(state_dir / project / 'lock.json'))[0]


def rewrite(state_dir, **changes):
    lease = on_disk(state_dir)
    lease.update(changes)
    (state_dir / PROJECT / 'lock.json').write_text(json.dumps(lease))
    return lease


# --- renewal and re-check ------------------------------------------------------------------------

def test_hold_renews_the_lease_of_the_run_that_holds_it(tmp_path):
    taken = acquire(tmp_path, 'run-1', ttl=600)
    rewrite(tmp_path, expires_boot_clock=taken['expires_boot_clock'] - 500)  # as if taken 500 s ago
    lease, warning = hold_stack_lock(str(tmp_path), PROJECT, 'run-1', 'bringing up shop')
    assert warning is None
    assert lease == on_disk(tmp_path)
    assert lease['acquired_at'] == taken['acquired_at'] and lease['run_id'] == 'run-1' and lease['ttl'] == 600
    assert lease['expires_boot_clock'] >= _stack_lock.boot_clock() + 599
    assert lease['renewed_at'] >= taken['acquired_at']


def test_hold_stops_a_run_whose_lease_was_taken_over_and_writes_nothing(tmp_path):
    acquire(tmp_path, 'run-1', ttl=1)
    rewrite(tmp_path, expires_boot_clock=0.0)  # expired
    acquire(tmp_path, 'run-2', owner='bob', release='r9')  # takes it over
    before = (tmp_path / PROJECT / 'lock.json').read_bytes()
    with pytest.raises(LeaseLost) as caught:
        hold_stack_lock(str(tmp_path), PROJECT, 'run-1', 'bringing up shop')
    message = str(caught.value)
    assert message.startswith('run run-1 no longer holds the stack lock of project shop: it is held by owner bob')
    assert 'run id run-2, release r9' in message
    assert 'It stopped before bringing up shop and changes nothing more' in message
    assert 'raise the lock ttl' in message
    assert caught.value.holder['run_id'] == 'run-2'
    assert (tmp_path / PROJECT / 'lock.json').read_bytes() == before


@pytest.mark.parametrize('how', ['released', 'never taken'])
def test_hold_stops_a_run_whose_lock_is_gone(tmp_path, how):
    if how == 'released':
        acquire(tmp_path, 'run-1')
        release_stack_lock(str(tmp_path), PROJECT, 'run-1')
    with pytest.raises(LeaseLost, match='nobody holds it'):
        hold_stack_lock(str(tmp_path), PROJECT, 'run-1')
    assert not (tmp_path / PROJECT / 'lock.json').exists()


def test_hold_renews_an_own_expired_lease_nobody_took_with_a_warning(tmp_path):
    acquire(tmp_path, 'run-1', ttl=5)
    rewrite(tmp_path, expires_boot_clock=1.0)
    lease, warning = hold_stack_lock(str(tmp_path), PROJECT, 'run-1', 'promoting')
    assert 'had expired' in warning and 'nobody took it over' in warning
    assert lease['expires_boot_clock'] > _stack_lock.boot_clock()
    assert not _stack_lock.lease_expired(on_disk(tmp_path), time.time())


def test_an_own_expired_lease_is_lost_when_a_reclaim_started_meanwhile(tmp_path):
    """The lease expired, a reclaim saw no live lease and runs: this run must not pull or start beside it."""
    acquire(tmp_path, 'run-1', ttl=5)
    stale = rewrite(tmp_path, expires_boot_clock=1.0)
    with reclaim_interlock(str(tmp_path)) as status:
        assert status['blocked_by'] == []  # an expired lease does not keep a reclaim out
        with pytest.raises(LeaseLost, match='a disk reclaim is running on this host') as lost:
            hold_stack_lock(str(tmp_path), PROJECT, 'run-1', 'bringing up')
        assert 'stopped before bringing up' in str(lost.value)
        assert on_disk(tmp_path) == stale  # not renewed
    lease, warning = hold_stack_lock(str(tmp_path), PROJECT, 'run-1', 'bringing up')  # the reclaim ended
    assert 'had expired' in warning and lease['run_id'] == 'run-1'


def test_a_full_state_disk_does_not_take_a_live_lease_away(tmp_path, monkeypatch):
    """The renewal cannot be written (ENOSPC): the run still holds its live lease and goes on, with a warning."""
    acquire(tmp_path, 'run-1', ttl=60)
    before = on_disk(tmp_path)

    def full(*_args, **_kwargs):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(_stack_lock, 'write_file_atomic', full)
    lease, warning = hold_stack_lock(str(tmp_path), PROJECT, 'run-1', 'bringing up')
    assert lease['run_id'] == 'run-1' and 'could not renew' in warning and 'No space left' in warning
    assert on_disk(tmp_path) == before
    rewrite(tmp_path, expires_boot_clock=1.0)  # expired and not renewable: not held any more
    with pytest.raises(StackLockError, match='No space left'):
        hold_stack_lock(str(tmp_path), PROJECT, 'run-1', 'bringing up')


def test_runs_taking_leases_at_once_do_not_mistake_each_other_for_a_reclaim(tmp_path):
    results, errors = [], []

    def take(number):
        try:
            results.append(acquire_stack_lock(str(tmp_path), 'p%d' % number, 'run-%d' % number, lock_wait=0))
        except StackLockError as exc:
            errors.append(str(exc))
    threads = [threading.Thread(target=take, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 8


def test_hold_in_check_mode_checks_but_writes_nothing(tmp_path):
    acquire(tmp_path, 'run-1')
    before = (tmp_path / PROJECT / 'lock.json').read_bytes()
    time.sleep(1.1)
    hold_stack_lock(str(tmp_path), PROJECT, 'run-1', check_mode=True)
    assert (tmp_path / PROJECT / 'lock.json').read_bytes() == before
    with pytest.raises(LeaseLost):
        hold_stack_lock(str(tmp_path), PROJECT, 'run-2', check_mode=True)


# --- the clock --------------------------------------------------------------------------------

def test_a_wall_clock_step_forward_does_not_expire_a_live_lease(tmp_path):
    acquire(tmp_path, 'run-1', ttl=600)
    # The wall-clock fields say it expired long ago (as after an NTP step); the boot clock says it has 600 s left.
    rewrite(tmp_path, acquired_at='2020-01-01T00:00:00Z', renewed_at='2020-01-01T00:00:00Z',
            expires_at='2020-01-01T00:10:00Z')
    with pytest.raises(StackLockError, match='run id run-1'):
        acquire(tmp_path, 'run-2')


def test_the_boot_clock_expires_a_lease_whatever_the_wall_clock_says(tmp_path):
    acquire(tmp_path, 'run-1', ttl=600)
    rewrite(tmp_path, expires_boot_clock=_stack_lock.boot_clock() - 1, expires_at='2999-01-01T00:00:00Z')
    assert acquire(tmp_path, 'run-2')['run_id'] == 'run-2'


def test_a_lease_from_an_earlier_boot_is_expired(tmp_path):
    acquire(tmp_path, 'run-1', ttl=600)
    rewrite(tmp_path, boot_id='00000000-0000-0000-0000-000000000000')  # its holder died with that boot
    assert acquire(tmp_path, 'run-2')['run_id'] == 'run-2'


def test_a_lease_without_boot_fields_falls_back_to_the_wall_clock(tmp_path):
    acquire(tmp_path, 'run-1', ttl=60)
    lease = on_disk(tmp_path)
    for key in ('boot_id', 'expires_boot_clock', 'renewed_at'):
        lease.pop(key)
    assert not _stack_lock.lease_expired(lease, time.time())
    assert _stack_lock.lease_expired(lease, time.time() + 120)


def test_new_leases_carry_both_clocks(tmp_path):
    lease = acquire(tmp_path, 'run-1', ttl=300)
    assert lease['boot_id'] == _stack_lock.boot_id()
    assert 299 <= lease['expires_boot_clock'] - _stack_lock.boot_clock() <= 300
    assert lease['renewed_at'] == lease['acquired_at']


# --- the reclaim interlock -------------------------------------------------------------------------

def test_a_reclaim_is_blocked_by_another_runs_live_lease_after_waiting(tmp_path):
    acquire(tmp_path, 'run-1', owner='alice', release='r7')
    started = time.monotonic()
    with reclaim_interlock(str(tmp_path), run_id='disk-guard', wait=1, poll_interval=0.1) as status:
        assert status['blocked_by'][0]['kind'] == 'stack_lock'
        assert (status['blocked_by'][0]['project'], status['blocked_by'][0]['run_id'],
                status['blocked_by'][0]['release']) == ('shop', 'run-1', 'r7')
        assert status['blocked_by'][0]['description'].startswith('the stack lock of project shop is held by owner alice')
    assert 1 <= status['waited'] < 4 and time.monotonic() - started >= 1


def test_a_reclaim_may_run_inside_its_own_run_and_past_expired_leases(tmp_path):
    acquire(tmp_path, 'run-1')
    acquire_stack_lock(str(tmp_path), 'other', 'run-dead', lock_wait=0, ttl=5)
    lease = on_disk(tmp_path, 'other')
    lease['expires_boot_clock'] = 0.0
    (tmp_path / 'other' / 'lock.json').write_text(json.dumps(lease))
    with reclaim_interlock(str(tmp_path), run_id='run-1') as status:
        assert status['blocked_by'] == []
    assert [project for project, _lease in live_leases(str(tmp_path))] == ['shop']


def test_a_reclaim_waits_for_a_run_that_ends(tmp_path):
    acquire(tmp_path, 'run-1')
    timer = threading.Timer(0.5, release_stack_lock, args=(str(tmp_path), PROJECT, 'run-1'))
    timer.start()
    try:
        with reclaim_interlock(str(tmp_path), wait=10, poll_interval=0.05) as status:
            assert status['blocked_by'] == [] and 0.4 <= status['waited'] < 5
    finally:
        timer.join()


def test_no_run_takes_a_new_lease_while_a_reclaim_removes(tmp_path):
    with reclaim_interlock(str(tmp_path)) as status:
        assert status['blocked_by'] == []
        with pytest.raises(StackLockError, match='a disk reclaim is running on this host'):
            acquire(tmp_path, 'run-1', lock_wait=0.3)
        assert not (tmp_path / PROJECT / 'lock.json').exists()
        with reclaim_interlock(str(tmp_path)) as second:  # a second reclaim does not run beside the first
            assert second['blocked_by'][0]['kind'] == 'reclaim'
    assert acquire(tmp_path, 'run-1')['run_id'] == 'run-1'


def test_a_run_waiting_for_a_reclaim_gets_its_lease_when_it_ends(tmp_path):
    done = threading.Event()

    def reclaim():
        with reclaim_interlock(str(tmp_path)):
            done.set()
            time.sleep(0.6)

    worker = threading.Thread(target=reclaim)
    worker.start()
    done.wait(5)
    try:
        started = time.monotonic()
        assert acquire(tmp_path, 'run-1', lock_wait=10)['run_id'] == 'run-1'
        assert time.monotonic() - started >= 0.3
    finally:
        worker.join()


def test_the_interlock_in_check_mode_only_looks(tmp_path):
    state_dir = tmp_path / 'state'
    with reclaim_interlock(str(state_dir), wait=5, check_mode=True) as status:
        assert status == {'blocked_by': [], 'waited': 0.0}
    assert not state_dir.exists()
    acquire(state_dir, 'run-1')
    started = time.monotonic()
    with reclaim_interlock(str(state_dir), wait=5, check_mode=True) as status:
        assert [entry['run_id'] for entry in status['blocked_by']] == ['run-1']
    assert time.monotonic() - started < 1


def test_the_interlock_makes_a_missing_state_dir_0700(tmp_path):
    state_dir = tmp_path / 'state'
    with reclaim_interlock(str(state_dir)) as status:
        assert status['blocked_by'] == []
    assert oct(os.stat(state_dir).st_mode & 0o777) == '0o700'
