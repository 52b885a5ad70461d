"""What a stack's status is made of: _status (drift, health, the last rollout, the record, the table, status_fail_on)."""

from __future__ import annotations

import hashlib
import time

import pytest

from ansible_collections.safedeploy.compose.plugins.module_utils._status import (
    compute_drift,
    container_view,
    failing,
    file_states,
    health_view,
    last_rollout,
    parse_docker_time,
    stack_healthy,
    stack_state,
    status_record,
    status_table,
    table_lines,
)

D1 = 'sha256:' + '1' * 64
D2 = 'sha256:' + '2' * 64
NOW = 1_800_000_000


def inspect(name, service, status='running', health=None, restarts=0, started=NOW - 3600, image_ref='repo/web:v1',
            exit_code=0):
    started_at = time.strftime('%Y-%m-%dT%H:%M:%S.123456789Z', time.gmtime(started))
    state = dict(Status=status, Running=status == 'running', ExitCode=exit_code, StartedAt=started_at)
    if health:
        state['Health'] = dict(Status=health)
    return dict(Id='a' * 64, Name='/' + name, Image='sha256:' + 'f' * 64, RestartCount=restarts, State=state,
                Config=dict(Image=image_ref, Labels={'com.docker.compose.service': service}))


def view(name, service, digest=D1, **kwargs):
    return container_view(inspect(name, service, **kwargs), dict(RepoDigests=['repo/%s@%s' % (service, digest)]), NOW)


def test_container_view_reads_digest_state_uptime_and_restarts():
    box = view('shop-web-1', 'web', health='healthy')
    assert box['digests'] == [D1] and box['state'] == 'running' and box['health'] == 'healthy'
    assert box['uptime_seconds'] == 3600 and box['up'] is True and box['problems'] == []
    assert box['name'] == 'shop-web-1' and box['service'] == 'web' and box['id'] == 'a' * 12
    # A digest in the reference the container was created from counts too (no RepoDigests: a pinned ref).
    pinned = container_view(inspect('w', 'web', image_ref='repo/web:v1@' + D2), {}, NOW)
    assert pinned['digests'] == [D2]


def test_container_view_counts_a_recent_restart_an_exit_and_unhealthy_as_not_up():
    looping = view('w', 'web', restarts=3, started=NOW - 5)
    assert looping['restarting'] is True and looping['up'] is False and looping['problems'] == ['restarting (3 restarts)']
    settled = view('w', 'web', restarts=3, started=NOW - 500)
    assert settled['restarting'] is False and settled['up'] is True
    exited = view('w', 'web', status='exited', exit_code=1)
    assert exited['up'] is False and exited['problems'] == ['exited (code 1)'] and exited['uptime_seconds'] is None
    assert exited['exit_code'] == 1
    sick = view('w', 'web', health='unhealthy')
    assert sick['up'] is False and sick['problems'] == ['unhealthy']
    assert view('w', 'web', status='restarting')['problems'] == ['restarting (0 restarts)']


def test_parse_docker_time_ignores_the_zero_time():
    assert parse_docker_time('0001-01-01T00:00:00Z') is None and parse_docker_time('') is None
    assert parse_docker_time('2027-01-15T08:00:00.999999999Z') == 1800000000


def test_no_drift_when_everything_runs_the_current_release():
    boxes = [view('s-web-1', 'web'), view('s-worker-1', 'worker')]
    files = [dict(path='/srv/s/compose.yaml', state='same')]
    assert compute_drift('ok', {'web': D1, 'worker': D1}, boxes, files, dict(held=False, holder=None)) == []
    assert stack_state(['web', 'worker'], boxes) == 'running' and stack_healthy(['web', 'worker'], boxes) is True


def test_drift_names_digest_missing_extra_files_and_lock():
    boxes = [view('s-web-1', 'web', digest=D2), view('s-debug-1', 'debug')]
    files = [dict(path='/srv/s/compose.yaml', state='changed'), dict(path='/srv/s/.env', state='missing')]
    holder = dict(owner='alice', host='h1', run_id='job-7', release='v9', acquired_at='2027-01-15T08:00:00Z')
    lock = dict(held=True, expired=False, holder=holder)
    drift = compute_drift('ok', {'web': D1, 'worker': D1}, boxes, files, lock)
    assert [(entry['kind'], entry['service'], entry['container']) for entry in drift] == [
        ('digest', 'web', 's-web-1'), ('missing', 'worker', None), ('extra', 'debug', 's-debug-1'),
        ('files', None, None), ('files', None, None), ('lock', None, None)]
    assert drift[0]['detail'] == 'container s-web-1 runs %s, not %s of the current release' % (D2[:19], D1[:19])
    assert '/srv/s/.env was removed' in drift[4]['detail']
    assert drift[5]['detail'] == ('the stack lock is held by owner alice on host h1, run id job-7, release v9, '
                                  'since 2027-01-15T08:00:00Z')
    assert stack_state(['web', 'worker'], boxes) == 'degraded' and stack_healthy(['web', 'worker'], boxes) is False


def test_drift_without_a_ledger_or_a_current_release():
    assert [entry['kind'] for entry in compute_drift('missing', None, [])] == ['no_ledger']
    assert [entry['kind'] for entry in compute_drift('unreadable: checksum', None, [])] == ['ledger']
    assert [entry['kind'] for entry in compute_drift('ok', None, [view('w', 'web')])] == ['no_release']
    expired = dict(held=False, expired=True, holder=dict(owner='bob', host='h', run_id='r', acquired_at='t'))
    assert compute_drift('ok', {}, [], lock=expired)[0]['detail'].startswith('an expired stack lock was left by owner bob')


def test_file_states_compare_the_snapshot_with_the_disk():
    data = {'/a': b'same', '/b': b'edited'}
    snapshot = [dict(path='/a', sha256=hashlib.sha256(b'same').hexdigest()),
                dict(path='/b', sha256=hashlib.sha256(b'original').hexdigest()),
                dict(path='/c', sha256='0' * 64)]
    states = file_states(snapshot, data.get)
    assert [(entry['path'], entry['state']) for entry in states] == [('/a', 'same'), ('/b', 'changed'), ('/c', 'missing')]

    def denied(_path):
        raise PermissionError(13, 'Permission denied')
    assert file_states(snapshot[:1], denied)[0]['state'] == 'unreadable'


def test_stack_state_and_health_of_stopped_and_absent_stacks():
    assert stack_state(['web'], []) == 'absent' and stack_healthy(['web'], []) is False
    stopped = [view('w', 'web', status='exited')]
    assert stack_state(['web'], stopped) == 'stopped' and stack_healthy(['web'], stopped) is False


def test_last_rollout_is_the_record_written_last():
    ledger = dict(releases=[
        dict(id='v1', status='superseded', updated_at='2027-01-15T08:00:00.000000Z'),
        dict(id='v2', status='good', updated_at='2027-01-15T09:00:00.000000Z'),
        dict(id='v3', status='failed', updated_at='2027-01-15T10:00:00.500000Z')])
    assert last_rollout(ledger) == dict(release='v3', status='failed', at='2027-01-15T10:00:00.500000Z',
                                        timestamp=1800007200.5, success=False)
    ledger['releases'].pop()
    assert last_rollout(ledger)['release'] == 'v2' and last_rollout(ledger)['success'] is True
    # A redeploy of the good release whose new configuration failed: the release stays good, the rollout failed.
    ledger['releases'][1]['failed_attempts'] = [dict(failed_at='2027-01-15T09:00:00.000000Z')]
    assert last_rollout(ledger)['success'] is False and last_rollout(ledger)['status'] == 'failed'
    assert last_rollout(dict(releases=[])) is None and last_rollout(None) is None


def status_result(healthy=True, drift=(), boxes=None, current='v1'):
    boxes = boxes if boxes is not None else [view('s-web-1', 'web')]
    return dict(project='shop', ledger=dict(state='ok'), current=dict(id=current) if current else None,
                last_good=dict(id='v1'), last_rollout=None, state='running', healthy=healthy,
                services=dict(web=dict(containers=boxes)), drift=list(drift), files=[], lock=dict(held=False),
                logs={}, disk=dict(percent=42.5, total=10 * 1024 ** 3), checked_at='t', changed=False)


GATE_OK = dict(passed=True, elapsed=0.2, checks=[dict(name='web health', type='http', passed=True, last_status=200,
                                                      last_error=None, unreachable=False, evidence={'body': 'x'})])


def test_health_view_keeps_names_and_verdicts_only():
    seen = health_view(GATE_OK)
    assert seen['checks'] == [dict(name='web health', type='http', passed=True, last_status=200, last_error=None,
                                   unreachable=False)]
    assert health_view(dict(skipped=True)) is None and health_view(None) is None
    rejected = health_view(dict(passed=False, checks=[], msg='checks[0]: url is required'))
    assert rejected['error'] == 'checks[0]: url is required'


def test_status_record_combines_containers_and_health_checks():
    record = status_record(status_result(), GATE_OK, 'web1', 'shop')
    assert record['healthy'] is True and record['unhealthy'] == [] and record['drifted'] == []
    assert record['host'] == 'web1' and 'invocation' not in record and 'changed' not in record
    failed_gate = dict(passed=False, checks=[dict(GATE_OK['checks'][0], passed=False, last_error='HTTP 500')])
    sick = status_record(status_result(), failed_gate, 'web1')
    assert sick['healthy'] is False and sick['containers_healthy'] is True
    assert sick['unhealthy'] == ["health check 'web health' failed: HTTP 500"]
    looping = status_record(status_result(healthy=False, boxes=[view('s-web-1', 'web', restarts=4, started=NOW - 3)]))
    assert looping['unhealthy'] == ['container s-web-1 restarting (4 restarts)']
    with_logs = status_result(healthy=False, boxes=[view('s-web-1', 'web', status='exited', exit_code=1)])
    with_logs['logs'] = {'s-web-1': ['app: starting', 'fatal: no database', '']}
    assert status_record(with_logs)['unhealthy'] == ['container s-web-1 exited (code 1) (last log line: fatal: no database)']


def test_a_failed_stack_status_is_a_record_with_its_error():
    record = status_record(dict(msg='Docker engine at tcp://h:1 failed to answer a ping', changed=False, failed=False),
                           dict(skipped=True), 'web1', 'shop')
    assert record['state'] == 'error' and record['project'] == 'shop' and record['healthy'] is False
    assert record['unhealthy'] == ['status could not be read: Docker engine at tcp://h:1 failed to answer a ping']
    assert record['drifted'] == ['Docker engine at tcp://h:1 failed to answer a ping']


def test_failing_follows_status_fail_on():
    drifted = status_record(status_result(drift=[dict(kind='lock', service=None, container=None,
                                                      detail='the stack lock is held by owner alice')]))
    sick = status_record(status_result(healthy=False, boxes=[view('s-web-1', 'web', status='exited', exit_code=3)]))
    assert failing([drifted, sick], 'none') == []
    assert failing([drifted, sick], 'unhealthy') == ['shop: container s-web-1 exited (code 3)']
    assert failing([drifted, sick], 'drift') == ['shop: the stack lock is held by owner alice',
                                                 'shop: container s-web-1 exited (code 3)']
    with pytest.raises(ValueError):
        failing([], 'always')


def test_table_lines_are_fixed_width():
    lines = table_lines('web1', [dict(stack='shop', current='v2', last_good='v2', state='running', health='healthy',
                                      drift=[]),
                                 dict(stack='a-very-long-stack-name-that-does-not-fit', current='v1', last_good='-',
                                      state='degraded', health='UNHEALTHY',
                                      drift=[dict(kind='digest', service='web'), dict(kind='missing', service='db'),
                                             dict(kind='files', service=None), dict(kind='lock', service=None)])],
                        disk=dict(percent=42.5, total=10 * 1024 ** 3))
    assert lines[0] == 'web1  (Docker disk 42.5% used of 10.0 GiB)'
    assert lines[1] == 'STACK                        CURRENT        LAST GOOD      STATE      HEALTH     DRIFT'
    assert lines[2] == 'shop                         v2             v2             running    healthy    none'
    assert lines[3] == ('a-very-long-stack-name-tha~  v1             -              degraded   UNHEALTHY  '
                        'digest:web, missing:db, files +1')
    assert len(set(line.index('CURRENT') if 'CURRENT' in line else 29 for line in lines[1:])) == 1
    assert table_lines('web2', [])[-1] == '(no stacks in safedeploy_stacks for this host)'


def test_status_table_of_records():
    records = [status_record(status_result(), GATE_OK, 'web1'),
               status_record(dict(msg='engine down'), None, 'web1', 'other')]
    lines = status_table(records, 'web1')
    assert lines[0].startswith('web1  (Docker disk 42.5%')
    assert lines[2].split() == ['shop', 'v1', 'v1', 'running', 'healthy', 'none']
    assert lines[3].split() == ['other', '-', '-', 'error', 'unknown', 'error']


def test_a_log_that_grows_without_bound_is_a_warning_not_a_failure():
    details = inspect('s-web-1', 'web')
    details['HostConfig'] = dict(LogConfig=dict(Type='json-file', Config={}))
    unbounded = container_view(details, dict(RepoDigests=['repo/web@' + D1]), NOW)
    assert unbounded['logs_bounded'] is False and unbounded['up'] is True
    details['HostConfig'] = dict(LogConfig=dict(Type='json-file', Config={'max-size': '10m', 'max-file': '3'}))
    assert container_view(details, dict(RepoDigests=['repo/web@' + D1]), NOW)['logs_bounded'] is True
    details['HostConfig'] = dict(LogConfig=dict(Type='json-file', Config={'max-size': '-1'}))
    assert container_view(details, dict(RepoDigests=['repo/web@' + D1]), NOW)['logs_bounded'] is False
    record = status_record(status_result(boxes=[unbounded]), GATE_OK, 'web1', 'shop')
    assert record['healthy'] is True and record['unhealthy'] == [] and record['drifted'] == []
    assert len(record['warnings']) == 1
    assert 'logs of web grow without bound' in record['warnings'][0] and 'rollout_log_bound' in record['warnings'][0]
    assert status_record(status_result(), GATE_OK, 'web1', 'shop')['warnings'] == []
