"""health_gate against the real engine: compose stacks (the Compose under test) of the test bed's app images.

Compose projects are named sdt-gate-<case>-<run id>-<random>, containers use network_mode: host with APP_PORT in
18280-18399 (the images with a Docker HEALTHCHECK probe 127.0.0.1:8080 inside the container, so those run
on the default bridge network without published ports). Local HTTP servers and never-answering sockets
live on 127.0.0.1 in the same port range. Every project is taken down by its fixture.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from testbed import testbed as testbed_mod

ROOT = Path(__file__).resolve().parents[2]
APP = '127.0.0.1:5000/safedeploy-test/app'
TOKEN = 'sdt-gate-bearer-' + uuid.uuid4().hex

PORT_HEALTHY = 18280
PORT_SLOW = 18282
PORT_CRASH = 18284
PORT_ERROR500 = 18286
PORT_WRONG = 18288          # the wrongport image listens on 18289
PORT_V1_BASE = 18340        # + the xdist worker number: each worker has its own module-scoped v1 app
PORT_FLAP = 18292
PORT_STARTING = 18294
LOCAL_SERVER_PORTS = range(18360, 18380)
BLACKHOLE_PORTS = range(18300, 18310)
# shared by the xdist workers of one run, so one worker never removes another's stacks as leftovers
RUN_ID = os.environ.get('PYTEST_XDIST_TESTRUNUID', uuid.uuid4().hex)[:6]
WORKER = int(os.environ.get('PYTEST_XDIST_WORKER', 'gw0')[2:] or 0)
PORT_V1 = PORT_V1_BASE + WORKER


def project_name(case):
    return 'sdt-gate-%s-%s-%s' % (case, RUN_ID, uuid.uuid4().hex[:4])


def compose(project, directory, *args, docker_host, check=True, timeout=120):
    env = dict(os.environ, DOCKER_HOST=docker_host)
    return subprocess.run(testbed_mod.compose_argv() + ['-p', project, '-f', str(directory / 'docker-compose.yml')] + list(args),
                          env=env, capture_output=True, text=True, check=check, timeout=timeout)


@pytest.fixture(scope='module', autouse=True)
def no_leftovers(testbed):
    """Remove containers of an earlier, interrupted run of this file (only our sdt-gate-* projects)."""
    client = testbed.client()
    for item in client.api.containers(all=True, filters={'label': 'com.docker.compose.project'}):
        project = (item.get('Labels') or {}).get('com.docker.compose.project', '')
        if project.startswith('sdt-gate-') and '-%s-' % RUN_ID not in project:
            client.api.remove_container(item['Id'], force=True)
    yield


@pytest.fixture
def stack(testbed, tmp_path):
    """stack(case, services_yaml) -> project name; runs `docker-compose up -d`, takes it down afterwards."""
    started = []

    def up(case, services):
        project = project_name(case)
        directory = tmp_path / project
        directory.mkdir()
        (directory / 'docker-compose.yml').write_text('version: "2.4"\nservices:\n' + textwrap.indent(textwrap.dedent(services), '  '))
        started.append((project, directory))
        compose(project, directory, 'up', '-d', docker_host=testbed.docker_host)
        return project

    yield up
    for project, directory in started:
        compose(project, directory, 'down', '-v', '--remove-orphans', '-t', '0', docker_host=testbed.docker_host, check=False)


def container_name(project, service):
    """The name the Compose under test gives the first container of a service (v1: p_s_1, v2: p-s-1)."""
    return ('%s_%s_1' if testbed_mod.COMPOSE_UNDER_TEST == 'v1' else '%s-%s-1') % (project, service)


def service_of(project, container):
    """The service of a container named by either Compose (the module names containers as the engine does)."""
    return re.match(r'^%s[_-](.+)[_-][0-9]+$' % re.escape(project), container).group(1)


def app_service(name, tag, port, restart='unless-stopped', env=None, extra=''):
    """A compose service of the test app on the host network, listening on 127.0.0.1:port."""
    environment = dict(APP_PORT=str(port), **(env or {}))
    lines = ['%s:' % name, '  image: %s:%s' % (APP, tag), '  network_mode: host', '  restart: %s' % restart, '  environment:']
    lines += ['    %s: "%s"' % item for item in sorted(environment.items())]
    return '\n'.join(lines) + '\n' + textwrap.indent(textwrap.dedent(extra), '  ')


def health_url(port):
    return 'http://127.0.0.1:%d/cgi-bin/health' % port


def by_name(result, name):
    return next(check for check in result['checks'] if check['name'] == name)


def warning_texts(result):
    """The module's warnings as text (ansible-core 2.19 returns them as structured events)."""
    return [item['event']['msg'] if isinstance(item, dict) else item for item in result.get('warnings') or []]


def unix_time(text):
    """RFC 3339 (Docker's nanoseconds or our microseconds, Z or an offset) -> seconds since the epoch."""
    match = re.match(r'^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$', text.strip())
    assert match, text
    stamp = datetime.strptime(match.group(1), '%Y-%m-%dT%H:%M:%S').replace(tzinfo=timezone.utc).timestamp()
    stamp += float('0.' + (match.group(2) or '0'))
    if match.group(3) != 'Z':
        sign = 1 if match.group(3)[0] == '+' else -1
        stamp -= sign * (int(match.group(3)[1:3]) * 3600 + int(match.group(3)[4:6]) * 60)
    return stamp


def log_line_time(client, project, service, needle):
    """When the first log line containing needle was written by the service's container."""
    containers = client.api.containers(filters={'label': ['com.docker.compose.project=%s' % project,
                                                          'com.docker.compose.service=%s' % service]})
    raw = client.api.logs(containers[0]['Id'], timestamps=True).decode()
    for line in raw.splitlines():
        stamp, _sep, text = line.partition(' ')
        if needle in text:
            return unix_time(stamp)
    raise AssertionError('no log line with %r in:\n%s' % (needle, raw))


def first_healthy_event(client, cid, since):
    """When the engine first reported the container healthy (its health_status event)."""
    events = client.api.events(since=int(since), until=int(time.time()) + 1, filters={'container': cid}, decode=True)
    for event in events:
        if event.get('Action') == 'health_status: healthy':
            return event['timeNano'] / 1e9
    raise AssertionError('the engine never reported %s healthy' % cid[:12])


class LocalHandler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args):
        pass

    def reply(self, status, body, headers=None):
        data = body.encode()
        self.send_response(status)
        self.send_header('Content-Type', 'text/plain')
        self.send_header('Content-Length', str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        sent = self.headers.get('Authorization', '')
        if self.path == '/private':
            if sent == 'Bearer ' + TOKEN:
                self.reply(200, 'welcome, token holder')
            else:
                self.reply(401, 'no entry')
        elif self.path == '/echo':
            self.reply(500, 'server error; you sent Authorization: %s' % sent)
        elif self.path == '/old-home':
            self.reply(301, 'This page moved to /new-home. Please update your bookmarks.', {'Location': '/new-home'})
        else:
            self.reply(404, 'nothing at %s' % self.path)


@pytest.fixture
def local_server():
    for port in LOCAL_SERVER_PORTS:
        try:
            httpd = ThreadingHTTPServer(('127.0.0.1', port), LocalHandler)
            break
        except OSError:
            continue
    else:
        raise RuntimeError('no free port in %s-%s' % (LOCAL_SERVER_PORTS[0], LOCAL_SERVER_PORTS[-1]))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield 'http://127.0.0.1:%d' % port
    httpd.shutdown()
    httpd.server_close()


# ---------------------------------------------------------------- healthy, slow, crash


def test_healthy_stack_passes_within_one_interval(stack, run_module, testbed):
    project = stack('healthy', app_service('app', 'v1', PORT_HEALTHY))
    result = run_module('health_gate', {
        'timeout': 30, 'interval': 1, 'success_threshold': 1,
        'checks': [
            {'type': 'containers', 'project': project},
            {'name': 'app health', 'type': 'http', 'url': health_url(PORT_HEALTHY), 'json': {'status': 'ok', 'checks.db': 'ok'}},
        ],
    })
    assert result['passed'] and not result.failed and result['changed'] is False, result['msg']
    listening = log_line_time(testbed.client(), project, 'app', 'listening on')
    # green within one interval of the app answering (plus the module's own start-up when it was already up)
    assert unix_time(result['finished_at']) - max(listening, unix_time(result['started_at'])) <= 1.0 + 0.3
    containers = by_name(result, 'containers %s' % project)
    assert containers['passed'] and containers['last_status'] == '1/1 up'
    assert containers['evidence']['containers'][0]['service'] == 'app'
    assert containers['evidence']['containers'][0]['health'] is None   # no HEALTHCHECK: running is enough
    assert by_name(result, 'app health')['evidence']['status'] == 200
    assert result['logs'] == {}


def test_the_default_never_passes_on_one_sample(stack, run_module):
    """Only a containers check, on containers without a HEALTHCHECK: one "running" sample is not enough."""
    project = stack('twosamples', app_service('app', 'v1', PORT_HEALTHY))
    result = run_module('health_gate', {'timeout': 30, 'interval': 1, 'checks': [{'type': 'containers', 'project': project}]})
    assert result['passed'], result['msg']
    check = by_name(result, 'containers %s' % project)
    assert check['passes'] == 2 and result['rounds'] >= 2, (check, result['rounds'])
    assert result['elapsed'] >= 1.0
    assert 'one sample' not in json.dumps(result.get('warnings'))
    once = run_module('health_gate', {'timeout': 30, 'interval': 1, 'success_threshold': 1,
                                      'checks': [{'type': 'containers', 'project': project}]})
    assert once['passed'] and once['rounds'] == 1, once['msg']
    assert 'up on one sample of them running' in json.dumps(once.get('warnings'))
    # running_for: one look at containers that ran an interval already stands for the second sample, no warning
    settled = run_module('health_gate', {'timeout': 30, 'interval': 1, 'success_threshold': 1,
                                         'checks': [{'type': 'containers', 'project': project, 'running_for': 1}]})
    assert settled['passed'] and settled['rounds'] == 1, settled['msg']
    assert 'one sample' not in json.dumps(settled.get('warnings'))
    young = run_module('health_gate', {'timeout': 2, 'interval': 1, 'success_threshold': 1,
                                       'checks': [{'type': 'containers', 'project': project, 'running_for': 3600}]})
    assert not young['passed'] and 'less than running_for 3600s' in young['msg'], young['msg']


def test_slow_stack_passes_when_it_gets_there(stack, run_module, testbed):
    project = stack('slow', app_service('app', 'slow', PORT_SLOW, env={'APP_DELAY': '4'}))
    result = run_module('health_gate', {
        'timeout': 30, 'interval': 1, 'success_threshold': 1,
        'checks': [{'type': 'containers', 'project': project}, {'name': 'slow health', 'type': 'http', 'url': health_url(PORT_SLOW)}],
    })
    assert result['passed'], result['msg']
    check = by_name(result, 'slow health')
    assert check['attempts'] >= 3 and check['unreachable_attempts'] >= 2 and check['passes'] == 1
    assert result['elapsed'] >= 2.5
    listening = log_line_time(testbed.client(), project, 'app', 'listening on')
    became_green = unix_time(result['finished_at'])
    assert 0 <= became_green - listening <= 1.0 + 0.3, (became_green - listening)


def test_crash_loop_fails_fast_with_exit_code_and_logs(stack, run_module):
    project = stack('crash', app_service('app', 'v3', PORT_CRASH))
    started = time.monotonic()
    result = run_module('health_gate', {
        'timeout': 120,
        'checks': [{'type': 'containers', 'project': project}, {'type': 'http', 'url': health_url(PORT_CRASH)}],
    })
    took = time.monotonic() - started
    assert result.failed and not result['passed']
    assert took <= 5 and result['elapsed'] <= 5, (took, result['elapsed'])
    assert result['msg'].startswith('health gate failed fast')
    assert 'crash loop' in result['msg'] and 'exit code 1' in result['msg']
    containers = by_name(result, 'containers %s' % project)
    assert containers['evidence']['containers'][0]['exit_code'] == 1
    assert not containers['unreachable']
    (name, lines), = result['logs'].items()
    assert name.startswith(project)
    assert any('fatal: cannot reach database at db:5432' in line for line in lines)


# ---------------------------------------------------------------- failing at the deadline


def test_error500_and_wrong_port_fail_at_the_deadline_naming_the_checks(stack, run_module):
    project = stack('wrong', app_service('err', 'error500', PORT_ERROR500) + app_service('port', 'wrongport', PORT_WRONG))
    started = time.monotonic()
    result = run_module('health_gate', {
        'timeout': 4, 'interval': 1,
        'checks': [
            {'type': 'containers', 'project': project},
            {'name': 'errors api', 'type': 'http', 'url': health_url(PORT_ERROR500), 'timeout': 2},
            {'name': 'wrong port api', 'type': 'http', 'url': health_url(PORT_WRONG), 'timeout': 2},
        ],
    })
    took = time.monotonic() - started
    assert result.failed and not result['passed']
    assert 4 <= result['elapsed'] <= 5.5 and took < 7
    assert result['msg'].startswith('health gate failed after')
    assert "'errors api': HTTP 500" in result['msg'] and '"status": "error"' in result['msg']
    assert "'wrong port api': could not measure: connection to %s refused" % health_url(PORT_WRONG) in result['msg']
    assert 'containers %s' % project not in result['msg']   # its containers run fine
    errors, wrong = by_name(result, 'errors api'), by_name(result, 'wrong port api')
    assert errors['last_status'] == 500 and not errors['unreachable'] and errors['attempts'] >= 4
    assert wrong['last_status'] is None and wrong['unreachable'] and wrong['unreachable_attempts'] == wrong['attempts']
    # the app answered wrong: the last lines of every watched container are the evidence
    assert sorted(service_of(project, name) for name in result['logs']) == ['err', 'port']
    assert any('listening on 127.0.0.1:%d' % (PORT_WRONG + 1) in line for lines in result['logs'].values() for line in lines)


def test_flapping_service_fails_with_success_threshold_three(stack, run_module):
    stack('flap', app_service('app', 'flap', PORT_FLAP))
    result = run_module('health_gate', {
        'timeout': 4, 'interval': 0.3, 'success_threshold': 3,
        'checks': [{'name': 'flappy', 'type': 'http', 'url': health_url(PORT_FLAP)}],
    })
    assert result.failed and not result['passed'] and result['elapsed'] >= 4
    check = by_name(result, 'flappy')
    assert check['passes'] >= 4 and check['flaps'] >= 2 and check['failures'] >= 2
    assert "'flappy': flapping" in result['msg'] and 'never 3 in a row' in result['msg']


def test_stuck_in_docker_starting_fails_at_the_deadline_with_a_warning(stack, run_module):
    project = stack('starting', app_service('app', 'v1', PORT_STARTING, extra='''\
        healthcheck:
          test: ["CMD", "/bin/wget", "-q", "-O", "/dev/null", "http://127.0.0.1:%d/cgi-bin/health"]
          interval: 300s
          start_period: 300s
          retries: 3
        ''' % PORT_STARTING))
    started = time.monotonic()
    result = run_module('health_gate', {'timeout': 3, 'interval': 1, 'checks': [{'type': 'containers', 'project': project}]})
    took = time.monotonic() - started
    assert result.failed and 3 <= result['elapsed'] <= 4.5 and took < 6
    assert 'health is still starting' in result['msg']
    check = result['checks'][0]
    assert check['evidence']['containers'][0]['health'] == 'starting'
    warnings = warning_texts(result)
    assert len(warnings) == 1 and '1200s' in warnings[0] and 'gate timeout 3s' in warnings[0]
    assert list(result['logs']) == [check['evidence']['containers'][0]['name']]


# ---------------------------------------------------------------- Docker HEALTHCHECK in the image


def test_docker_saying_unhealthy_fails_the_gate_at_once_unless_told_to_wait(stack, run_module):
    """The wrong-port release with an image HEALTHCHECK: Docker calls it unhealthy after its start period and two
    failed probes, about 3 s. The gate fails then, not after its 60 s timeout; told that health may come back, it
    waits to its deadline."""
    project = stack('hcwrong', '''\
        app:
          image: %s:hc-wrongport
          network_mode: bridge
        ''' % APP)
    started = time.monotonic()
    result = run_module('health_gate', {
        'timeout': 60, 'interval': 0.5, 'checks': [{'type': 'containers', 'project': project}]})
    took = time.monotonic() - started
    assert result.failed and not result['passed']
    assert took < 10 and result['elapsed'] < 10, (took, result['elapsed'])
    assert result['msg'].startswith('health gate failed fast'), result['msg']
    assert 'is unhealthy by its own HEALTHCHECK' in result['msg'], result['msg']
    row = by_name(result, 'containers %s' % project)['evidence']['containers'][0]
    assert row['health'] == 'unhealthy'

    patient = run_module('health_gate', {
        'timeout': 6, 'interval': 0.5,
        'checks': [{'type': 'containers', 'project': project, 'unhealthy_is_final': False}]})
    assert patient.failed and patient['elapsed'] >= 5.5, patient['elapsed']
    assert not patient['msg'].startswith('health gate failed fast'), patient['msg']


def test_image_healthcheck_passes_only_once_docker_says_healthy(stack, run_module, testbed):
    # hc-* probe 127.0.0.1:8080 inside their own network namespace: bridge network, nothing published
    project = stack('hc', '''\
        quick:
          image: %s:hc-v1
          network_mode: bridge
        late:
          image: %s:hc-slow
          network_mode: bridge
          environment:
            APP_DELAY: "3"
        ''' % (APP, APP))
    result = run_module('health_gate', {
        'timeout': 30, 'interval': 0.3,
        'checks': [
            {'name': 'quick', 'type': 'containers', 'project': project, 'services': ['quick']},
            # its HEALTHCHECK (1s start period, 2 retries) may call it unhealthy before it listens: told to wait
            {'name': 'late', 'type': 'containers', 'project': project, 'services': ['late'], 'unhealthy_is_final': False},
        ],
    })
    assert result['passed'], result['msg']
    assert warning_texts(result) == []   # 1s start period + 1s x 2 retries fits in 30s
    client = testbed.client()
    gate_start = unix_time(result['started_at'])
    for name in ('quick', 'late'):
        check = by_name(result, name)
        assert check['evidence']['containers'][0]['health'] == 'healthy'
        cid = client.api.containers(filters={'label': ['com.docker.compose.project=%s' % project,
                                                       'com.docker.compose.service=%s' % name]})[0]['Id']
        info = client.api.inspect_container(cid)
        healthy_at = first_healthy_event(client, cid, since=unix_time(info['Created']) - 1)
        green_at = gate_start + check['elapsed']
        assert healthy_at <= green_at + 0.05, (name, healthy_at, green_at)     # never green before Docker said so
        assert green_at - max(healthy_at, gate_start) <= 0.3 + 0.4, (name, green_at - healthy_at)   # and within an interval
        if name == 'late':   # it only listens APP_DELAY=3s after it started, so it cannot have been green earlier
            assert green_at - unix_time(info['State']['StartedAt']) >= 3
            assert check['attempts'] > 1
    assert by_name(result, 'quick')['elapsed'] < by_name(result, 'late')['elapsed']


# ---------------------------------------------------------------- answers worth reading


@pytest.fixture(scope='module')
def v1_project(testbed, tmp_path_factory):
    """One healthy v1 app for the read-only cases below."""
    project = project_name('v1')
    directory = tmp_path_factory.mktemp(project)
    (directory / 'docker-compose.yml').write_text('version: "2.4"\nservices:\n' + textwrap.indent(app_service('app', 'v1', PORT_V1), '  '))
    compose(project, directory, 'up', '-d', docker_host=testbed.docker_host)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(('127.0.0.1', PORT_V1), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    yield project
    compose(project, directory, 'down', '-v', '-t', '0', docker_host=testbed.docker_host, check=False)


def test_openapi_missing_path_fails_naming_it(v1_project, run_module):
    url = 'http://127.0.0.1:%d/openapi.json' % PORT_V1
    present = run_module('health_gate', {'timeout': 5, 'checks': [
        {'type': 'openapi', 'url': url, 'paths': ['GET /api/v1/boards', 'GET /cgi-bin/health']}]}, check=True)
    assert present['passed'] and present['changed'] is False and present['checks'][0]['evidence']['missing'] == []
    result = run_module('health_gate', {'timeout': 2, 'interval': 1, 'checks': [
        {'name': 'api contract', 'type': 'openapi', 'url': url,
         'paths': ['GET /api/v1/boards', 'POST /api/v1/boards', 'GET /api/v1/boards/{id}']}]})
    assert result.failed and not result['passed']
    assert "'api contract': missing from the OpenAPI document: POST /api/v1/boards, GET /api/v1/boards/{id}" in result['msg']
    assert result['checks'][0]['evidence']['missing'] == ['POST /api/v1/boards', 'GET /api/v1/boards/{id}']
    assert not result['checks'][0]['unreachable']


def test_containers_check_the_pinned_digest(v1_project, run_module, testbed):
    good = run_module('health_gate', {'timeout': 3, 'checks': [
        {'type': 'containers', 'project': v1_project, 'digests': {'app': testbed.images['v1']['digest']}}]})
    assert good['passed'], good['msg']
    assert testbed.images['v1']['digest'] in good['checks'][0]['evidence']['containers'][0]['digests']
    pinned_v2 = '%s:v2@%s' % (APP, testbed.images['v2']['digest'])
    wrong = run_module('health_gate', {'timeout': 1, 'checks': [
        {'name': 'pinned', 'type': 'containers', 'project': v1_project, 'digests': {'app': pinned_v2}}]})
    assert wrong.failed
    assert "'pinned': service app container %s runs image %s:v1" % (container_name(v1_project, 'app'), APP) in wrong['msg']
    assert 'not the pinned %s' % testbed.images['v2']['digest'] in wrong['msg']


def test_404_and_301_report_status_and_first_body_bytes(v1_project, local_server, run_module):
    result = run_module('health_gate', {'timeout': 1, 'interval': 1, 'checks': [
        {'name': 'gone', 'type': 'http', 'url': 'http://127.0.0.1:%d/cgi-bin/no-such-thing' % PORT_V1},
        {'name': 'moved', 'type': 'http', 'url': local_server + '/old-home'},
        {'name': 'dir', 'type': 'http', 'url': 'http://127.0.0.1:%d/cgi-bin' % PORT_V1},
    ]})
    assert result.failed
    gone, moved, directory = by_name(result, 'gone'), by_name(result, 'moved'), by_name(result, 'dir')
    assert gone['last_status'] == 404 and gone['evidence']['body'].startswith('<HTML><HEAD><TITLE>404 Not Found')
    assert "'gone': HTTP 404 Not Found (expected 200); body: <HTML><HEAD><TITLE>404 Not Found" in result['msg']
    assert moved['last_status'] == 301 and moved['evidence']['location'] == '/new-home'
    assert moved['evidence']['body'] == 'This page moved to /new-home. Please update your bookmarks.'
    assert "'moved': HTTP 301 Moved Permanently (expected 200), Location: /new-home; body: This page moved" in result['msg']
    assert directory['last_status'] == 302 and directory['evidence']['location'] == '/cgi-bin/'
    followed = run_module('health_gate', {'timeout': 2, 'checks': [
        {'type': 'http', 'url': 'http://127.0.0.1:%d/cgi-bin' % PORT_V1, 'follow_redirects': True, 'status': [403, 404, 200]}]})
    assert followed['checks'][0]['last_status'] != 302


def test_bearer_token_appears_nowhere(local_server, run_module, tmp_path):
    checks = [{'name': 'private', 'type': 'http', 'url': local_server + '/private', 'bearer_token': TOKEN, 'body_contains': 'welcome'}]
    ok = run_module('health_gate', {'timeout': 3, 'checks': checks})
    assert ok['passed'], ok['msg']   # the token was sent...
    echoed = run_module('health_gate', {'timeout': 1, 'checks': [
        {'name': 'echo', 'type': 'http', 'url': local_server + '/echo', 'bearer_token': TOKEN}]})
    assert echoed.failed and 'you sent Authorization: Bearer' in echoed['msg']
    for result in (ok, echoed):          # ...and is nowhere in what came back
        assert TOKEN not in result.stdout + result.stderr

    playbook = tmp_path / 'gate.yml'
    playbook.write_text(textwrap.dedent('''\
        - hosts: localhost
          gather_facts: false
          tasks:
            - name: Gate an endpoint that needs the token
              safedeploy.compose.health_gate:
                timeout: 3
                checks:
                  - name: private
                    type: http
                    url: {url}/private
                    bearer_token: "{token}"
                    body_contains: welcome
              register: gate
            - name: Gate an endpoint that echoes the token back
              safedeploy.compose.health_gate:
                timeout: 1
                checks:
                  - type: http
                    url: {url}/echo
                    bearer_token: "{token}"
              ignore_errors: true
            - name: Show the result
              ansible.builtin.debug:
                var: gate
        ''').format(url=local_server, token=TOKEN))
    (tmp_path / 'hosts').write_text('localhost ansible_connection=local ansible_python_interpreter=%s\n' % sys.executable)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / '.build' / 'collections'), ANSIBLE_NOCOLOR='1',
               ANSIBLE_LOCAL_TEMP=str(tmp_path / 'tmp'), ANSIBLE_HOST_KEY_CHECKING='0', ANSIBLE_CALLBACK_RESULT_FORMAT='json')
    proc = subprocess.run([str(Path(sys.executable).parent / 'ansible-playbook'), '-vvv', '-i', str(tmp_path / 'hosts'), str(playbook)],
                          capture_output=True, text=True, env=env, timeout=120, cwd=str(tmp_path), check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert 'ok=3' in output and 'ignored=1' in output
    assert '"passed": true' in output           # the first gate passed, so the token reached the server
    assert TOKEN not in output


# ---------------------------------------------------------------- many endpoints that never answer


@pytest.fixture
def blackholes():
    """Ten sockets on 127.0.0.1 that listen but never accept or answer."""
    socks = []
    for port in BLACKHOLE_PORTS:
        sock = socket.socket()
        sock.bind(('127.0.0.1', port))
        sock.listen(64)
        socks.append(sock)
    yield list(BLACKHOLE_PORTS)
    for sock in socks:
        sock.close()


def test_ten_unreachable_endpoints_cost_one_timeout_a_round(blackholes, run_module):
    started = time.monotonic()
    result = run_module('health_gate', {
        'timeout': 5, 'interval': 1,
        'checks': [{'type': 'http', 'url': 'http://127.0.0.1:%d/health' % port, 'timeout': 2} for port in blackholes],
    })
    took = time.monotonic() - started
    assert result.failed and len(result['checks']) == 10
    assert all(check['unreachable'] and re.search(r'no answer within [12]s', check['last_error']) for check in result['checks'])
    # rounds at 0s, 2s and 4s (that one cut to the 1s left): ~5s in all; one probe after the other would be 20s a round
    assert result['rounds'] >= 3 and took < 8, (result['rounds'], took)
    assert result['elapsed'] / result['rounds'] <= 2.5
    assert all(check['attempts'] == result['rounds'] for check in result['checks'])


# ---------------------------------------------------------------- bad options


def test_bad_options_fail_before_probing_with_the_same_keys(run_module):
    result = run_module('health_gate', {'checks': [
        {'type': 'http', 'url': 'http://127.0.0.1:%d/' % PORT_V1, 'body_regex': '(unclosed'},
        {'type': 'tcp', 'host': '127.0.0.1', 'port': PORT_V1, 'body_contains': 'x'},
        {'type': 'openapi', 'url': 'http://127.0.0.1:%d/o.json' % PORT_V1, 'paths': ['FETCH /x']},
    ]})
    assert result.failed and result['msg'].startswith('health_gate cannot start')
    assert 'not a valid regular expression' in result['msg'] and 'does not use body_contains' in result['msg']
    assert 'FETCH /x' in result['msg']
    assert set(['passed', 'elapsed', 'rounds', 'checks', 'logs', 'changed', 'started_at', 'finished_at']) <= set(result)
    assert result['passed'] is False and result['checks'] == [] and result['changed'] is False
    missing = run_module('health_gate', {'checks': [{'type': 'tcp', 'host': '127.0.0.1'}]})
    assert missing.failed and 'port' in missing['msg']
