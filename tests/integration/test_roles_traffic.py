"""Zero downtime on the real engine: a routed stack (web behind the collection's HAProxy in blue/green slots, a worker
in the project itself) rolled out, rolled back and canaried through the playbooks, with a bounded client on the public
port all along. Compose v2 only (slots need it). Ports 19400-19499 only; each HAProxy runs from its own files in a
temporary directory and is stopped at the end.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import LOCAL_HOST_VARS, ROOT, PortRange, run_module, run_playbook, wait_until
from test_roles_rollout import push_release

pytestmark = [
    pytest.mark.skipif(not shutil.which('haproxy', path=os.environ.get('PATH', '') + ':/usr/sbin'),
                       reason='HAProxy is not installed (the test bed installs it)'),
]

PORTS = PortRange(range(19400, 19500))
PREFIX = 'sdt-trf'
REPO = '127.0.0.1:5000/' + PREFIX
RELEASES = {  # release -> (web image tag, worker image tag)
    'r1': ('v1', 'v1'),
    'r2': ('v2', 'v2'),
    'r3': ('v1', 'v1'),
    'rcrash': ('v3', 'v2'),      # web crash-loops
    'rwrong': ('wrongport', 'v2'),  # web listens on another port than its route says
    'rbad': ('error500', 'v2'),  # web answers 500 (its container runs; the proxy checks by connecting)
}


@pytest.fixture(scope='module')
def images(testbed):
    client = testbed.client()
    return dict((release, push_release(client, REPO, release, tags)) for release, tags in RELEASES.items())


class Client(object):
    """A bounded client on the public port: `rate` GETs of /cgi-bin/health a second, each on a new connection,
    until stopped or `seconds` passed. Tallies the statuses and the versions that answered."""

    def __init__(self, port, rate=40, seconds=240, watch=None):
        self.port, self.rate, self.seconds, self.watch = port, rate, seconds, watch
        self.ok, self.failures, self.versions, self.stamps = 0, [], {}, []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        start = time.monotonic()
        number = 0
        while not self.stop_event.is_set() and time.monotonic() - start < self.seconds:
            delay = start + number / float(self.rate) - time.monotonic()
            number += 1
            if delay > 0:
                time.sleep(delay)
            conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=10)
            try:
                conn.request('GET', '/cgi-bin/health')
                response = conn.getresponse()
                body = response.read().decode('utf-8', 'replace')
                if response.status == 200:
                    self.ok += 1
                    version = json.loads(body).get('version')
                    self.versions[version] = self.versions.get(version, 0) + 1
                    self.stamps.append((time.monotonic(), version, self.watch() if self.watch else None))
                else:
                    self.failures.append('HTTP %d' % response.status)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.failures.append(repr(exc))
            finally:
                conn.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(30)

    def last_version(self):
        return self.stamps[-1][1] if self.stamps else None

    def first(self, version):
        """(time, version, watched value) of the first answer of `version`."""
        return next((stamp for stamp in self.stamps if stamp[1] == version), None)


class RoutedStack(object):
    """A compose project whose `web` is routed (public port, blue and green slots) and whose `worker` is not."""

    def __init__(self, root, name):
        self.root = Path(root)
        self.project = '%s-%s-%s' % (PREFIX, name, uuid.uuid4().hex[:6])
        self.src, self.state_dir, self.reports = self.root / 'src', self.root / 'state', self.root / 'reports'
        self.proxy_dir = self.root / 'proxy'
        for directory in (self.src, self.proxy_dir):
            directory.mkdir(parents=True)
        self.public, self.worker_port = PORTS.take(), PORTS.take()
        self.slot_ports = [PORTS.take(), PORTS.take()]
        services = {
            'web': {'image': '%s/web:r1' % REPO, 'restart': 'unless-stopped',
                    'environment': {'APP_PORT': '8080', 'APP_BIND': '0.0.0.0'},
                    'ports': ['127.0.0.1:%d:8080' % self.public]},  # in place before it was routed
            'worker': {'image': '%s/worker:r1' % REPO, 'network_mode': 'host', 'restart': 'unless-stopped',
                       'environment': {'APP_PORT': str(self.worker_port)}},
        }
        (self.src / 'compose.yaml').write_text(yaml.safe_dump({'services': services}, sort_keys=False))

    def stack(self, health_path='/cgi-bin/health', **extra):
        route = {'service': 'web', 'port': self.public, 'container_port': 8080, 'bind': '127.0.0.1',
                 'check_interval': 300, 'rise': 1, 'fall': 2, 'slot_ports': self.slot_ports}
        if health_path:
            route['health_path'] = health_path
        stack = {'name': self.project, 'project_src': str(self.src),
                 'repositories': ['%s/web' % REPO, '%s/worker' % REPO],
                 'routes': [route],
                 'health_checks': [
                     {'name': 'web health', 'type': 'http', 'url': 'http://127.0.0.1:%d/cgi-bin/health' % self.public,
                      'json': {'status': 'ok'}},
                     {'name': 'worker health', 'type': 'http',
                      'url': 'http://127.0.0.1:%d/cgi-bin/health' % self.worker_port, 'status': [200]}]}
        stack.update(extra)
        return stack

    def inventory(self, stack=None, **host_vars):
        hostvars = dict(LOCAL_HOST_VARS)
        proxy = self.proxy_dir
        hostvars.update({
            'safedeploy_stacks': [stack or self.stack()],
            'rollout_state_dir': str(self.state_dir), 'rollback_state_dir': str(self.state_dir),
            'rollout_health_timeout': 30, 'rollout_health_interval': 1,
            'rollback_health_timeout': 30, 'rollback_health_interval': 1,
            'safedeploy_report_dir': str(self.reports),
            'traffic_install': False, 'traffic_service_manager': 'process',
            'traffic_config_path': str(proxy / 'haproxy.cfg'), 'traffic_runtime_socket': str(proxy / 'admin.sock'),
            'traffic_pid_file': str(proxy / 'haproxy.pid'), 'traffic_master_socket': str(proxy / 'master.sock'),
            'traffic_server_state_file': str(proxy / 'server-state'), 'traffic_user': '', 'traffic_group': '',
            'rollout_drain_timeout': 10, 'rollback_drain_timeout': 10,
        })
        hostvars.update(host_vars)
        return {'all': {'hosts': {'localhost': hostvars}}}

    def rollout(self, release, stack=None, args=(), **host_vars):
        return run_playbook(ROOT / 'playbooks' / 'rollout.yml', inventory=self.inventory(stack, **host_vars),
                            extra_vars={'release': release}, args=args)

    def promote(self, release, stack=None):
        return run_playbook(ROOT / 'playbooks' / 'promote.yml', inventory=self.inventory(stack),
                            extra_vars={'release': release})

    def rollback(self, to=None, stack=None, **host_vars):
        extra = {'apply': True}
        if to:
            extra['to'] = to
        return run_playbook(ROOT / 'playbooks' / 'rollback.yml', inventory=self.inventory(stack, **host_vars),
                            extra_vars=extra)

    def containers(self, client, project):
        return client.containers.list(all=True, filters={'label': 'com.docker.compose.project=%s' % project})

    def slot_states(self, client):
        """{slot: sorted [(service, status, release label)]} of both slots."""
        return dict((slot, sorted((c.labels.get('com.docker.compose.service'), c.status, c.labels.get('org.safedeploy.release'))
                                  for c in self.containers(client, '%s-%s' % (self.project, slot))))
                    for slot in ('blue', 'green'))

    def ledger(self):
        result = run_module('last_good_tag', {'project': self.project, 'state_dir': str(self.state_dir), 'action': 'query'})
        assert not result.failed, result.get('msg')
        result['status'] = dict((r['id'], r['status']) for r in result['releases'])
        return result

    def report(self, release):
        return json.loads((self.reports / release / ('localhost-%s.json' % self.project)).read_text())

    def down(self, client):
        for project in (self.project, self.project + '-blue', self.project + '-green'):
            for container in self.containers(client, project):
                container.remove(force=True, v=True)
        for network in client.networks.list(filters={'label': 'com.docker.compose.project'}):
            if (network.attrs.get('Labels') or {}).get('com.docker.compose.project', '').startswith(self.project):
                try:
                    network.remove()
                except Exception:
                    pass
        try:
            with open(self.proxy_dir / 'haproxy.pid') as handle:
                os.kill(int(handle.read().split()[0]), signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            pass


def assert_ok(run):
    assert run.rc == 0, run.output[-6000:]


def assert_failed(run):
    assert run.rc != 0, run.output[-6000:]


def answers(port):
    try:
        return version_at(port)
    except (OSError, http.client.HTTPException, ValueError):
        return None


def version_at(port):
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=5)
    try:
        conn.request('GET', '/cgi-bin/health')
        return json.loads(conn.getresponse().read()).get('version')
    finally:
        conn.close()


@pytest.fixture(scope='class')
def chain(testbed, tmp_path_factory, images):
    stack = RoutedStack(tmp_path_factory.mktemp('traffic'), 'chain')
    yield stack
    stack.down(testbed.client())


@pytest.mark.usefixtures('images')
class TestBlueGreen(object):
    """One routed stack through a chain of runs; each test starts where the one before left it."""

    def test_a_stack_that_ran_in_place_moves_behind_the_proxy(self, chain, testbed):
        client = testbed.client()
        up = run_playbook_compose(chain, ['up', '-d'])
        assert up.returncode == 0, up.stderr
        wait_until(lambda: answers(chain.public), 30, 'the in-place web answering')
        assert version_at(chain.public) == 'v1'  # the container publishes the public port itself
        run = chain.rollout('r1')
        assert_ok(run)
        assert version_at(chain.public) == 'v1'  # now through HAProxy, from the blue slot
        main = dict((c.labels['com.docker.compose.service'], c.status) for c in chain.containers(client, chain.project))
        assert main == {'worker': 'running'}, main  # the in-place web is gone; the worker stays in the project
        assert chain.slot_states(client) == {'blue': [('web', 'running', 'r1')], 'green': []}
        ledger = chain.ledger()
        assert ledger['current']['id'] == 'r1'
        assert [r['source'].get('slot') for r in ledger['releases'] if r['id'] == 'r1'] == ['blue']

    def test_a_release_flips_to_green_and_no_request_fails(self, chain, testbed):
        client = testbed.client()
        lock = chain.state_dir / chain.project / 'lock.json'
        with Client(chain.public, watch=lock.exists) as load:
            run = chain.rollout('r2')
            time.sleep(1)
        assert_ok(run)
        assert load.first('v2')[2] is True, 'the flip happened outside the stack lock'
        assert not lock.exists()
        assert load.failures == [], load.failures[:10]
        assert load.versions.get('v1') and load.versions.get('v2'), load.versions
        assert load.last_version() == 'v2'
        assert chain.slot_states(client) == {'blue': [('web', 'exited', 'r1')], 'green': [('web', 'running', 'r2')]}
        report = chain.report('r2')
        assert report['slot'] == 'green' and report['traffic'][-1]['slot'] == 'green', report
        assert chain.ledger()['current']['id'] == 'r2'
        # the status counts the serving slot's containers as the stack's (the kept blue one is not drift)
        status = run_module('stack_status', {'project': chain.project, 'state_dir': str(chain.state_dir), 'disk': False})
        assert not status.failed, status.get('msg')
        assert status['healthy'] is True and status['drift'] == [], (status['msg'], status['drift'])
        assert [box['name'] for box in status['services']['web']['containers']] == ['%s-green-web-1' % chain.project]

    def test_a_crash_looping_release_never_takes_traffic(self, chain, testbed):
        client = testbed.client()
        with Client(chain.public) as load:
            run = chain.rollout('rcrash')
        assert_failed(run)
        assert load.failures == [], load.failures[:10]
        assert set(load.versions) == {'v2'}, load.versions
        states = chain.slot_states(client)
        assert states['green'] == [('web', 'running', 'r2')], states
        # the failed slot was stopped (the run's end says by which task, should this ever fail)
        assert [s for _svc, s, _r in states['blue']] != ['running'], (states, run.output[-8000:])
        ledger = chain.ledger()
        assert ledger['current']['id'] == 'r2' and ledger['status']['rcrash'] == 'failed'

    def test_a_release_on_the_wrong_port_never_takes_traffic(self, chain, testbed):
        with Client(chain.public) as load:
            run = chain.rollout('rwrong')
        assert_failed(run)
        assert load.failures == [], load.failures[:10]
        assert set(load.versions) == {'v2'}, load.versions
        assert chain.ledger()['current']['id'] == 'r2'

    def test_a_rollback_is_a_flip_to_the_slot_that_kept_the_release(self, chain, testbed):
        client = testbed.client()
        # blue last ran a failed release: take it back to r1 through a fresh rollout first (r1 -> blue), then roll back
        with Client(chain.public) as load:
            assert_ok(chain.rollout('r1'))
            time.sleep(0.5)
            assert chain.slot_states(client)['green'] == [('web', 'exited', 'r2')]
            started = time.monotonic()
            run = chain.rollback(to='r2')
            elapsed = time.monotonic() - started
            time.sleep(0.5)
        assert_ok(run)
        assert load.failures == [], load.failures[:10]
        assert load.last_version() == 'v2'
        assert chain.slot_states(client) == {'blue': [('web', 'exited', 'r1')], 'green': [('web', 'running', 'r2')]}
        assert chain.ledger()['current']['id'] == 'r2'
        assert elapsed < 120

    def test_a_rerun_starts_the_proxy_that_died_and_changes_nothing_else(self, chain, testbed):
        client = testbed.client()
        before = chain.slot_states(client)
        with open(chain.proxy_dir / 'haproxy.pid') as handle:
            os.kill(int(handle.read().split()[0]), signal.SIGTERM)
        wait_until(lambda: answers(chain.public) is None, 10, 'the public port going silent')
        run = chain.rollout('r2')
        assert_ok(run)
        assert 'was already running and healthy' in ' '.join(run.output.split()), run.output[-3000:]
        assert version_at(chain.public) == 'v2'  # the proxy runs again, on the slot that served
        assert chain.slot_states(client) == before


def run_playbook_compose(stack, args):
    import subprocess
    return subprocess.run(['docker', 'compose', '-p', stack.project, '-f', str(stack.src / 'compose.yaml')] + list(args),
                          capture_output=True, text=True, timeout=120, check=False)


def test_a_canary_that_answers_errors_is_aborted_and_the_stable_slot_keeps_serving(testbed, tmp_path, images):
    client = testbed.client()
    stack = RoutedStack(tmp_path, 'canary')
    try:
        # the proxy checks by connecting, so the 500s are the canary's to judge; the gate checks only containers
        spec = stack.stack(health_path=None, health_checks=[],
                           canary={'steps': [25], 'interval': 4, 'threshold': 1, 'min_requests': 10})
        assert_ok(stack.rollout('r1', stack=spec))
        with Client(stack.public) as load:
            run = stack.rollout('rbad', stack=spec)
            time.sleep(0.5)
        assert_failed(run)
        assert 'Canary aborted at 25%' in run.output, run.output[-3000:]
        assert load.last_version() == 'v1'
        # the canary's 500s were retried on the stable slot (the route's retry-on): no client saw one, the judge saw
        # them all (its verdict counts the canary's redispatched requests)
        assert load.failures == [] and load.ok > 100, (load.failures, load.ok)
        judged = re.search(r'\((\d+) errors in (\d+) requests\)', ' '.join(run.output.split()))
        assert judged and int(judged.group(1)) > 0.5 * int(judged.group(2)), run.output[-3000:]
        ledger = stack.ledger()
        assert ledger['current']['id'] == 'r1' and ledger['status']['rbad'] == 'failed'
        report = stack.report('rbad')
        assert report['canary'] and report['canary'][0]['share'] == 25, report
        assert stack.slot_states(client)['green'][0][1] != 'running'
    finally:
        stack.down(client)


@pytest.fixture(scope='class')
def held(testbed, tmp_path_factory, images):
    stack = RoutedStack(tmp_path_factory.mktemp('held'), 'held')
    stack.spec = stack.stack(canary={'steps': [25], 'interval': 2, 'threshold': 1, 'min_requests': 5, 'hold': True})
    yield stack
    stack.down(testbed.client())


class TestHeldCanary(object):
    """A canary held at its step for a human: finished by promote.yml, or aborted by rollback.yml."""

    def test_check_mode_shows_the_traffic_plan_and_changes_nothing(self, held, testbed):
        assert_ok(held.rollout('r1', stack=held.spec))
        client = testbed.client()
        before = held.slot_states(client)
        run = held.rollout('r2', stack=held.spec, args=['--check'])
        assert_ok(run)
        shown = ' '.join(run.output.split())
        assert '%s-web: blue (r1) -> green (r2), canary steps 25%%' % held.project in shown, shown[-3000:]
        assert '(check mode: nothing moved)' in shown
        assert held.slot_states(client) == before
        assert version_at(held.public) == 'v1'

    def test_a_held_canary_serves_its_share_until_promote_finishes_it(self, held, testbed):
        client = testbed.client()
        with Client(held.public) as load:
            run = held.rollout('r2', stack=held.spec)
            assert_ok(run)
            assert 'held there: finish it with playbooks/promote.yml' in ' '.join(run.output.split())
            ledger = held.ledger()
            assert ledger['current']['id'] == 'r1' and ledger['status']['r2'] == 'candidate'
            time.sleep(3)
            mixed = dict(load.versions)
            promoted = held.promote('r2', stack=held.spec)
            time.sleep(1)
        assert_ok(promoted)
        assert load.failures == [], load.failures[:10]
        assert mixed.get('v1') and mixed.get('v2'), mixed  # both served while held
        assert load.last_version() == 'v2'
        ledger = held.ledger()
        assert ledger['current']['id'] == 'r2' and ledger['status']['r2'] == 'good'
        assert held.slot_states(client) == {'blue': [('web', 'exited', 'r1')], 'green': [('web', 'running', 'r2')]}
        again = held.promote('r2', stack=held.spec)
        assert_failed(again)
        assert 'is not a held canary' in again.output

    def test_rollback_aborts_a_held_canary(self, held, testbed):
        client = testbed.client()
        with Client(held.public) as load:
            assert_ok(held.rollout('r3', stack=held.spec))  # a new canary, in blue
            assert held.ledger()['status']['r3'] == 'candidate'
            run = held.rollback(stack=held.spec)
            time.sleep(1)
        assert_ok(run)
        assert load.failures == [], load.failures[:10]
        assert load.last_version() == 'v2'
        ledger = held.ledger()
        assert ledger['current']['id'] == 'r2'
        reasons = dict((r['id'], r['reason']) for r in ledger['releases'])
        assert ledger['status']['r3'] == 'failed' and 'canary aborted' in reasons['r3'], ledger['releases']
        assert held.slot_states(client) == {'blue': [('web', 'exited', 'r3')], 'green': [('web', 'running', 'r2')]}
