"""playbooks/status.yml (the status role, stack_status, health_gate observing) on the real engine.

Projects sdt-rec-st{a,b,none}-<random>, ports 18740-18745, images 127.0.0.1:5000/sdt-rec/st{a,b}-*. Stack A (web,
worker) is rolled out once (v1) and then changed test by test: healthy with no drift, its lock held, a container
recreated by hand on v2 plus an extra container and an edited compose file. Stack B rolls out the crash-looping v3
with the automatic rollback off. A stack without a ledger, and an engine that does not answer, need no rollout.
Stack A's health checks carry a header and a bearer token: they never appear in any output, report or textfile.
"""

from __future__ import annotations

import json
import re
import uuid

import docker
import pytest
from prometheus_client.parser import text_string_to_metric_families

from role_stack import PLAYBOOKS, PROJECT_LABEL, SERVICE_LABEL, RoleStack, remove_leftover_projects

STATUS = PLAYBOOKS / 'status.yml'
API_KEY = 'st-key-%s' % uuid.uuid4().hex  # fresh secrets on every run: found nowhere but in the inventory
TOKEN = 'st-token-%s' % uuid.uuid4().hex


def with_secrets(stack):
    entry = stack.stack_vars()
    for check in entry['health_checks']:
        check['headers'] = {'X-Api-Key': API_KEY}
        check['bearer_token'] = TOKEN
    return entry


def inventory(stack, entries=None, **extra):
    host = stack.host_vars(**extra)
    host['safedeploy_stacks'] = entries if entries is not None else [with_secrets(stack)]
    return {'all': {'hosts': {'localhost': host}}}


def status_report(stack, project=None):
    path = stack.report_dir / 'status' / ('localhost-%s.json' % (project or stack.name))
    return json.loads(path.read_text())


def table_text(run, project):
    """The table line of `project` in the play output (the debug task's list, as the YAML callback prints it)."""
    pattern = re.compile(r"^\s*-?\s*['\"]?(%s\s{2,}\S.*?)['\"]?,?$" % re.escape(project))
    for line in run.stdout.splitlines():
        match = pattern.match(line)
        if match:
            return match.group(1)
    raise AssertionError('no table line for %s in:\n%s' % (project, run.stdout[-3000:]))


def metrics(path):
    """{(name, frozenset(labels)): value} parsed by prometheus_client's text-format parser."""
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


@pytest.fixture(scope='module')
def stack_a(testbed, tmp_path_factory, run_playbook_module):
    remove_leftover_projects(testbed.client(), 'sdt-rec-sta-')
    stack = RoleStack(testbed, tmp_path_factory.mktemp('status-a'), 'sta', {'web': 18740, 'worker': 18741})
    stack.release('v1')
    stack.release('v2')
    run = run_playbook_module(PLAYBOOKS / 'rollout.yml', inventory(stack), extra_vars={'release': 'v1'})
    assert run.rc == 0, run.output[-4000:]
    stack.assert_runs('v1')
    yield stack
    stack.cleanup()


@pytest.fixture(scope='module')
def run_playbook_module():
    from conftest import run_playbook
    return run_playbook


def assert_no_secret(*texts):
    for text in texts:
        assert API_KEY not in text and TOKEN not in text, 'a health check secret leaked'


def test_healthy_stack_has_no_drift_and_check_mode_is_the_same(stack_a, run_playbook, tmp_path):
    textfile = tmp_path / 'status.prom'
    run = run_playbook(STATUS, inventory(stack_a, status_fail_on='drift', status_textfile_path=str(textfile)),
                       args=['-vvv'])
    assert run.rc == 0, run.output[-4000:]
    assert_no_secret(run.output, textfile.read_text())
    line = table_text(run, stack_a.name)
    assert re.match(r'%s\s+v1\s+v1\s+running\s+healthy\s+none$' % re.escape(stack_a.name), line), line

    report = status_report(stack_a)
    assert_no_secret(json.dumps(report))
    assert report['host'] == 'localhost' and report['project'] == stack_a.name
    assert report['healthy'] is True and report['state'] == 'running' and report['drift'] == [] and report['drifted'] == []
    assert report['current']['id'] == 'v1' and report['last_good']['id'] == 'v1' and report['ledger']['state'] == 'ok'
    assert report['last_rollout']['release'] == 'v1' and report['last_rollout']['success'] is True
    for service in ('web', 'worker'):
        entry = report['services'][service]
        assert entry['expected_digest'] == stack_a.digests['v1'][service]
        [box] = entry['containers']
        assert box['state'] == 'running' and box['up'] is True and box['restart_count'] == 0
        assert stack_a.digests['v1'][service] in box['digests'] and box['uptime_seconds'] >= 0
    assert [check['passed'] for check in report['health_checks']['checks']] == [True, True]
    assert report['health_checks']['checks'][0]['name'] == 'web health'
    assert report['logs'] == {} and report['lock']['held'] is False
    # The test engine has no log-opts and the stack no logging: every log grows without bound, a warning only.
    assert all(box['logs_bounded'] is False for entry in report['services'].values() for box in entry['containers'])
    assert len(report['warnings']) == 1 and 'grow without bound' in report['warnings'][0]
    assert all(service in report['warnings'][0] for service in report['services'])
    assert 'grow without bound' in run.output
    assert [entry['state'] for entry in report['files']] and set(entry['state'] for entry in report['files']) == {'same'}
    assert report['disk']['total'] > 0 and 0 < report['disk']['percent'] < 100
    assert oct((stack_a.report_dir / 'status').stat().st_mode & 0o777) == '0o700'

    found = metrics(textfile)
    info = dict((dict(labels)['project'], dict(labels)) for name, labels in found if name == 'safedeploy_stack_info')
    assert info[stack_a.name]['release'] == 'v1' and info[stack_a.name]['last_good'] == 'v1'
    key = frozenset({'project': stack_a.name}.items())
    assert found[('safedeploy_stack_healthy', key)] == 1 and found[('safedeploy_stack_drift', key)] == 0
    assert found[('safedeploy_stack_lock_held', key)] == 0
    assert abs(found[('safedeploy_stack_last_rollout_timestamp_seconds', key)] - report['last_rollout']['timestamp']) < 1
    assert found[('safedeploy_stack_last_rollout_success',
                  frozenset({'project': stack_a.name, 'release': 'v1'}.items()))] == 1
    assert oct(textfile.stat().st_mode & 0o777) == '0o644'

    # Check mode reads the same and writes the same outputs.
    textfile.unlink()
    (stack_a.report_dir / 'status' / ('localhost-%s.json' % stack_a.name)).unlink()
    checked = run_playbook(STATUS, inventory(stack_a, status_fail_on='drift', status_textfile_path=str(textfile)),
                           args=['--check'])
    assert checked.rc == 0, checked.output[-4000:]
    assert table_text(checked, stack_a.name) == line
    again = status_report(stack_a)
    assert again['healthy'] is True and again['drift'] == [] and again['current']['id'] == 'v1'
    assert metrics(textfile)[('safedeploy_stack_healthy', key)] == 1
    assert checked.recap['localhost']['changed'] == 0 and run.recap['localhost']['changed'] == 0


def test_a_held_lock_is_drift_named_by_its_holder_and_fail_on_decides(stack_a, run_playbook, run_module):
    lock = run_module('stack_lock', dict(project=stack_a.name, state_dir=str(stack_a.state_dir),
                                         run_id='sdt-status-holder', owner='alice', release='v9'))
    assert lock.get('acquired') is True, lock
    try:
        lenient = run_playbook(STATUS, inventory(stack_a, status_fail_on='unhealthy'))
        assert lenient.rc == 0, lenient.output[-4000:]
        assert re.search(r'\shealthy\s+lock$', table_text(lenient, stack_a.name)), table_text(lenient, stack_a.name)
        report = status_report(stack_a)
        assert report['healthy'] is True and report['lock']['held'] is True
        assert report['lock']['holder']['run_id'] == 'sdt-status-holder' and report['lock']['holder']['owner'] == 'alice'
        [entry] = report['drift']
        assert entry['kind'] == 'lock' and 'alice' in entry['detail'] and 'sdt-status-holder' in entry['detail']
        assert 'release v9' in entry['detail']

        strict = run_playbook(STATUS, inventory(stack_a, status_fail_on='drift'))
        assert strict.rc != 0 and strict.recap['localhost']['failed'] == 1, strict.output[-4000:]
        message = ' '.join(strict.output.split())
        assert 'status_fail_on: drift' in message and 'the stack lock is held by owner alice' in message
        assert 'sdt-status-holder' in message
        # The table is shown, and the report written, before the host fails.
        assert table_text(strict, stack_a.name)
        assert status_report(stack_a)['lock']['held'] is True
    finally:
        released = run_module('stack_lock', dict(project=stack_a.name, state_dir=str(stack_a.state_dir),
                                                 run_id='sdt-status-holder', state='absent'))
        assert not released.failed, released


def test_a_container_recreated_by_hand_on_another_image_is_named(stack_a, run_playbook, testbed):
    client = docker.DockerClient(base_url=testbed.docker_host, timeout=120)
    [worker] = [box for box in stack_a.containers() if box.labels[SERVICE_LABEL] == 'worker']
    name = worker.name
    worker.remove(force=True)
    labels = {PROJECT_LABEL: stack_a.name, SERVICE_LABEL: 'worker', 'com.docker.compose.oneoff': 'False'}
    client.containers.run(stack_a.pinned_ref('worker', 'v2'), name=name, detach=True, network_mode='host',
                          environment={'APP_PORT': '18741'}, labels=labels)
    client.containers.run(stack_a.pinned_ref('web', 'v1'), name='%s-debug' % stack_a.name, detach=True,
                          network_mode='host', environment={'APP_PORT': '18742'},
                          labels={PROJECT_LABEL: stack_a.name, SERVICE_LABEL: 'debug'})
    compose = stack_a.project_src / 'compose.yaml'
    compose.write_text(compose.read_text() + '# edited by hand\n')
    # A one-off container (compose run) is never counted.
    client.containers.create(stack_a.pinned_ref('web', 'v1'), command=['true'],
                             labels={PROJECT_LABEL: stack_a.name, SERVICE_LABEL: 'web', 'com.docker.compose.oneoff': 'True'})

    lenient = run_playbook(STATUS, inventory(stack_a, status_fail_on='unhealthy'))
    assert lenient.rc == 0, lenient.output[-4000:]
    assert 'digest:worker' in table_text(lenient, stack_a.name)
    report = status_report(stack_a)
    kinds = dict(((entry['kind'], entry['service']), entry) for entry in report['drift'])
    assert set(kinds) == {('digest', 'worker'), ('extra', 'debug'), ('files', None)}, report['drift']
    digest = kinds[('digest', 'worker')]
    assert digest['container'] == name
    assert stack_a.digests['v2']['worker'][:19] in digest['detail'] and stack_a.digests['v1']['worker'][:19] in digest['detail']
    assert str(compose) in kinds[('files', None)]['detail']
    [box] = report['services']['worker']['containers']
    assert stack_a.digests['v2']['worker'] in box['digests'] and stack_a.digests['v1']['worker'] not in box['digests']
    assert report['services']['debug']['on_release'] is False
    assert len(report['services']['web']['containers']) == 1  # the one-off is left out
    assert report['healthy'] is True  # everything runs and answers: drift, not ill health

    strict = run_playbook(STATUS, inventory(stack_a, status_fail_on='drift'))
    assert strict.rc != 0, strict.output[-4000:]
    message = ' '.join(strict.output.split())
    assert 'container %s runs %s' % (name, stack_a.digests['v2']['worker'][:19]) in message


@pytest.fixture
def stack_b(testbed, tmp_path):
    remove_leftover_projects(testbed.client(), 'sdt-rec-stb-')
    stack = RoleStack(testbed, tmp_path, 'stb', {'web': 18743})
    yield stack
    stack.cleanup()


def test_a_crash_looping_service_is_unhealthy_with_its_last_log_line(stack_b, run_playbook):
    stack_b.release('v3')  # crash-loops
    rollout = run_playbook(PLAYBOOKS / 'rollout.yml', inventory(stack_b, rollout_auto_rollback=False),
                           extra_vars={'release': 'v3'})
    assert rollout.rc != 0, rollout.output[-4000:]
    assert stack_b.statuses() == {'v3': 'failed'}

    run = run_playbook(STATUS, inventory(stack_b, status_fail_on='unhealthy', status_health_timeout=3))
    assert run.rc != 0 and run.recap['localhost']['failed'] == 1, run.output[-4000:]
    line = table_text(run, stack_b.name)
    assert 'UNHEALTHY' in line and 'no_release' in line, line
    report = status_report(stack_b)
    assert report['healthy'] is False and report['current'] is None
    assert report['last_rollout']['release'] == 'v3' and report['last_rollout']['success'] is False
    [box] = report['services']['web']['containers']
    assert box['up'] is False and box['restarting'] is True and box['restart_count'] >= 1, box
    [tail] = report['logs'].values()
    assert any('fatal: cannot reach database at db:5432' in text for text in tail), tail
    assert report['health_checks']['passed'] is False
    message = ' '.join(run.output.split())
    assert 'status_fail_on: unhealthy' in message, message[-2000:]
    # The last log lines are shown in the play output (and the failure message quotes the last one).
    shown = run.stdout[run.stdout.index('Show the last log lines of the containers that are not up'):]
    assert 'fatal: cannot reach database at db:5432' in shown.split('TASK [')[0]
    assert '(last log line: app v3: ' in message, message[-2000:]  # mid-cycle, the last line may be its start
    assert 'container %s restarting' % box['name'] in message or 'container %s exited' % box['name'] in message, message[-2000:]


def test_a_host_without_a_ledger_for_a_stack(testbed, run_playbook, tmp_path):
    stack = RoleStack(testbed, tmp_path, 'stnone', {'web': 18744})
    try:
        entry = {'name': stack.name, 'project_src': str(stack.project_src)}
        lenient = run_playbook(STATUS, inventory(stack, entries=[entry], status_fail_on='none'))
        assert lenient.rc == 0, lenient.output[-4000:]
        assert re.match(r'%s\s+no ledger\s+-\s+absent\s+UNHEALTHY\s+no_ledger$' % re.escape(stack.name),
                        table_text(lenient, stack.name)), table_text(lenient, stack.name)
        report = status_report(stack)
        assert report['ledger']['state'] == 'missing' and report['current'] is None and report['healthy'] is False
        assert [entry['kind'] for entry in report['drift']] == ['no_ledger']
        assert report['health_checks'] is None  # the entry has no checks: none ran
        assert not (stack.state_dir / stack.name).exists()  # read-only: nothing created

        strict = run_playbook(STATUS, inventory(stack, entries=[entry], status_fail_on='drift'))
        assert strict.rc != 0 and 'no release ledger for this project' in ' '.join(strict.output.split())
    finally:
        stack.cleanup()


def test_an_engine_that_does_not_answer_is_reported(testbed, run_playbook, tmp_path):
    stack = RoleStack(testbed, tmp_path, 'stnone', {'web': 18745})
    try:
        entry = {'name': stack.name}
        run = run_playbook(STATUS, inventory(stack, entries=[entry], status_docker_host='tcp://127.0.0.1:9',
                                             status_engine_timeout=3))
        assert run.rc != 0, run.output[-4000:]
        assert 'error' in table_text(run, stack.name)
        report = status_report(stack)
        assert report['state'] == 'error' and 'failed to answer a ping' in report['error']
        assert 'tcp://127.0.0.1:9' in ' '.join(run.output.split())
    finally:
        stack.cleanup()


def test_stack_status_reads_a_damaged_ledger_and_changes_nothing(run_module, tmp_path):
    project = 'sdt-rec-stmod-%s' % uuid.uuid4().hex[:8]
    directory = tmp_path / 'state' / project
    directory.mkdir(parents=True)
    (directory / 'releases.json').write_text('{"format": 1, "project": "%s", "serial": 3, "rel' % project)
    before = sorted(path.name for path in directory.iterdir())
    args = dict(project=project, state_dir=str(tmp_path / 'state'))

    result = run_module('stack_status', args)
    assert not result.failed and result['changed'] is False, result
    assert result['ledger']['state'] == 'unreadable' and 'not valid JSON' in result['ledger']['error']
    assert [entry['kind'] for entry in result['drift']] == ['ledger'] and result['state'] == 'absent'
    checked = run_module('stack_status', args, check=True)
    ignore = ('checked_at', 'disk', 'invocation')

    def kept(found):
        return dict((key, value) for key, value in found.items() if key not in ignore)
    assert kept(checked) == kept(result)
    assert sorted(path.name for path in directory.iterdir()) == before  # no backup, no lock, no repair

    invalid = run_module('stack_status', dict(project='../etc', state_dir=str(tmp_path / 'state')))
    assert invalid.failed and 'invalid project name' in invalid['msg']
