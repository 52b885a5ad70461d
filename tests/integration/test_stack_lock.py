"""safedeploy.compose.stack_lock run as Ansible runs it (a module process per call)."""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

PROJECT = 'shop'


def warnings_of(result):
    """Warning texts (ansible-core 2.19 returns each warning as a structured summary)."""
    return [warning if isinstance(warning, str) else warning['event']['msg'] for warning in result.get('warnings', [])]


@pytest.fixture
def stack_lock(run_module, tmp_path):
    def call(check=False, diff=False, **args):
        args.setdefault('project', PROJECT)
        args.setdefault('state_dir', str(tmp_path))
        return run_module('stack_lock', args, check=check, diff=diff)
    call.file = tmp_path / PROJECT / 'lock.json'
    return call


def test_lock_check_apply_check_apply(stack_lock):
    predicted = stack_lock(check=True, diff=True, run_id='run-1', release='r1')
    assert predicted['changed'] is True and predicted['acquired'] is True
    assert not stack_lock.file.exists()
    assert predicted['diff']['before'] == {} and predicted['diff']['after']['run_id'] == 'run-1'

    applied = stack_lock(diff=True, run_id='run-1', release='r1')
    assert applied['changed'] is True and applied['acquired'] is True
    assert json.loads(stack_lock.file.read_text()) == applied['lock']
    assert applied['lock']['host'] == socket.gethostname() and applied['lock']['release'] == 'r1'
    assert stat.S_IMODE(os.stat(stack_lock.file).st_mode) == 0o600

    for check in (True, False):
        again = stack_lock(check=check, diff=True, run_id='run-1', release='r1')
        assert again['changed'] is False and again['acquired'] is True
        assert again['diff']['before'] == again['diff']['after'] == applied['lock']


def test_unlock_check_apply_check_apply(stack_lock):
    lease = stack_lock(run_id='run-1')['lock']
    predicted = stack_lock(check=True, diff=True, run_id='run-1', state='absent')
    assert predicted['changed'] is True and stack_lock.file.exists()
    assert predicted['diff'] == {'before': lease, 'after': {}}
    applied = stack_lock(diff=True, run_id='run-1', state='absent')
    assert applied['changed'] is True and applied['lock'] is None and applied['previous_lock'] == lease
    assert not stack_lock.file.exists()
    for check in (True, False):
        again = stack_lock(check=check, diff=True, run_id='run-1', state='absent')
        assert again['changed'] is False and again['diff']['before'] == again['diff']['after'] == {}


def test_second_holder_waits_lock_wait_then_fails_naming_the_first(stack_lock):
    first = stack_lock(run_id='awx-17', owner='alice', release='9f2c1ab')['lock']
    started = time.monotonic()
    result = stack_lock(run_id='awx-18', owner='bob', lock_wait=2, poll_interval=0.2)
    elapsed = time.monotonic() - started
    assert result.failed and 2 <= elapsed < 10 and result['waited'] >= 2
    assert ('held by owner alice on host %s (pid %d), run id awx-17, release 9f2c1ab'
            % (first['host'], first['pid'])) in result['msg']
    assert 's ago, ttl 1800s' in result['msg'] and 'state=absent run_id=awx-17' in result['msg']
    assert result['lock'] == first and result['acquired'] is False
    assert json.loads(stack_lock.file.read_text()) == first


def test_expired_lease_is_taken_over_with_a_warning(stack_lock):
    stack_lock(run_id='run-dead', ttl=1)
    time.sleep(2.1)
    result = stack_lock(run_id='run-2')
    assert not result.failed
    assert result['took_over'] is True and result['previous_lock']['run_id'] == 'run-dead'
    assert any(warning.startswith('took over the expired stack lock') and 'run-dead' in warning
               for warning in warnings_of(result))
    assert json.loads(stack_lock.file.read_text())['run_id'] == 'run-2'


def test_unlock_with_a_wrong_run_id_is_refused(stack_lock):
    lease = stack_lock(run_id='run-1', owner='alice')['lock']
    result = stack_lock(run_id='run-2', state='absent')
    assert result.failed and result['changed'] is False
    assert 'refusing to unlock' in result['msg'] and 'run id run-1' in result['msg']
    assert 'not by run id run-2' in result['msg']
    assert json.loads(stack_lock.file.read_text()) == lease
    # the forced unlock quotes the holder's run id
    assert stack_lock(run_id='run-1', state='absent')['changed'] is True


def test_only_one_of_concurrent_runs_gets_the_lock(stack_lock):
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda number: stack_lock(run_id='run-%d' % number, lock_wait=0), range(6)))
    winners = [result['lock']['run_id'] for result in results if not result.failed]
    assert len(winners) == 1
    assert json.loads(stack_lock.file.read_text())['run_id'] == winners[0]
    assert all('is held by' in result['msg'] for result in results if result.failed)


def test_failure_keeps_the_result_keys(stack_lock, tmp_path):
    result = stack_lock(project='bad/name', run_id='run-1')
    assert result.failed and 'invalid project name' in result['msg']
    assert result['lock_file'] is None and result['acquired'] is False and result['lock'] is None
    stack_lock(run_id='run-1')
    refused = stack_lock(run_id='run-2', state='absent')
    assert refused.failed and refused['lock_file'] == str(tmp_path / PROJECT / 'lock.json')


def test_the_lock_is_only_the_lock_a_damaged_ledger_is_not_its_business(stack_lock, tmp_path):
    """The lease guards the stack; reading the ledger is last_good_tag's job (one noun, one job)."""
    (tmp_path / PROJECT).mkdir(mode=0o700)
    (tmp_path / PROJECT / 'releases.json').write_text('{"torn": ')
    taken = stack_lock(run_id='run-1')
    assert not taken.failed and taken['acquired'] is True
    assert 'ledger' not in taken and 'python' not in taken
    assert not stack_lock(run_id='run-1', state='absent').failed
    assert (tmp_path / PROJECT / 'releases.json').read_text() == '{"torn": ', 'the ledger is not touched'
