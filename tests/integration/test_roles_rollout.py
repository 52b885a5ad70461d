"""The rollout and rollback roles against the real engine and registries (issue 5, "Done when").

Every scenario runs the real playbooks (playbooks/rollout.yml, playbooks/rollback.yml) with an
inventory that carries one stack of two services, `web` and `worker`, on loopback ports of this file's
range (18600-18699). Each release is a tag of this file's own repositories
127.0.0.1:5000/sdt-roll/{web,worker}, made from the test bed's app images:

    r1 = v1/v1, r2 = v2/v2, r3 = v1/v1 (a new tag, other digests than r2), r4 = v2/v1,
    rcrash = web v2 (healthy) + worker v3 (crash-loops), rmiss = web v2 + a worker tag never pushed.

A scenario proves what the issue asks and what must NOT happen: running containers keep their ids and
StartedAt, the ledger file keeps its bytes, no mixed versions, no secret in any output.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker
import pytest
import requests
import yaml

from conftest import (COLLECTIONS, LOCAL_HOST_VARS, ROOT, PortRange, on_compose_under_test, run_module, run_playbook,
                      wait_until)
from silent_registry import SilentRegistry
from testbed import testbed as testbed_mod

from ansible_collections.safedeploy.compose.plugins.module_utils._stack_lock import acquire_stack_lock, lease_expired

PREFIX = 'sdt-roll'
REPO = '127.0.0.1:5000/' + PREFIX
PORTS = range(18600, 18700)
RELEASES = {  # release -> (web image tag, worker image tag) of the test bed's app images
    'r1': ('v1', 'v1'),
    'r2': ('v2', 'v2'),
    'r3': ('v1', 'v1'),
    'rcrash': ('v2', 'v3'),
    'r4': ('v2', 'v1'),
}
MISSING = 'rmiss'  # web:rmiss is pushed, worker:rmiss never is
LEFTOVER = re.compile(r'^[0-9a-f]{12}_')
HEALTH_TIMEOUT = 30


take_port = PortRange(PORTS).take  # a port of this file's range that nothing listens on


def unique(name):
    return '%s-%s-%s' % (PREFIX, name, uuid.uuid4().hex[:6])


def health(port, timeout=3):
    """The app's health document on 127.0.0.1:port, or None when it does not answer."""
    try:
        return requests.get('http://127.0.0.1:%d/cgi-bin/health' % port, timeout=timeout).json()
    except (requests.RequestException, ValueError):
        return None


# ---------------------------------------------------------------- images and registries

def push_release(client, repo_prefix, release, tags, auth_config=None):
    """Tag the test bed's app images as <repo_prefix>/{web,worker}:<release> and push them; return {service: digest}."""
    digests = {}
    for service, tag in zip(('web', 'worker'), tags):
        if tag is None:
            continue
        ref = '%s/%s:%s' % (repo_prefix, service, release)
        source = client.images.get('%s:%s' % (testbed_mod.APP_REPO, tag))
        source.tag(ref)
        if auth_config is None and repo_prefix.startswith(testbed_mod.REGISTRY + '/'):
            source.reload()
            digests[service] = testbed_mod.push_if_needed(client, source, ref)
        else:
            testbed_mod.push(client, ref, auth_config=auth_config)
            digests[service] = testbed_mod.registry_digest(
                ref, auth=(auth_config['username'], auth_config['password']) if auth_config else None)
    return digests


def unseen_release(client, name):
    """Push <REPO>/{web,worker}:<name>-<hex>, the v2 app image with a label of its own: a manifest and a config no
    engine has pulled, so a pull of it must ask the registry. Nothing of it stays on the engine; return the tag."""
    tag = '%s-%s' % (name, uuid.uuid4().hex[:8])
    base = '%s:v2' % testbed_mod.APP_REPO
    for service in ('web', 'worker'):
        ref = '%s/%s:%s' % (REPO, service, tag)
        dockerfile = io.BytesIO(('FROM %s\nLABEL org.safedeploy.test.unseen=%s\n' % (base, tag)).encode())
        image, _build_log = client.images.build(fileobj=dockerfile, tag=ref, rm=True, pull=False)
        try:
            testbed_mod.push(client, ref)
        finally:
            client.images.remove(image.id, force=True)
    return tag


@pytest.fixture(scope='module')
def images(testbed):
    """{release: {service: digest}} of this file's releases in the shared no-auth registry."""
    client = testbed.client()
    pushed = {release: push_release(client, REPO, release, tags) for release, tags in RELEASES.items()}
    pushed[MISSING] = push_release(client, REPO, MISSING, ('v2', None))
    resp = requests.head('http://127.0.0.1:5000/v2/%s/worker/manifests/%s' % (PREFIX, MISSING), timeout=10)
    assert resp.status_code == 404, 'worker:%s must never be pushed' % MISSING
    return pushed


class OwnRegistry(object):
    """A throwaway docker-registry on 127.0.0.1:<port> with its own storage: this file may stop it."""

    def __init__(self, root, port):
        self.root, self.port, self.proc = Path(root), port, None
        self.address = '127.0.0.1:%d' % port

    def start(self):
        (self.root / 'storage').mkdir(parents=True, exist_ok=True)
        config = {'version': 0.1, 'log': {'level': 'warn'},
                  'storage': {'filesystem': {'rootdirectory': str(self.root / 'storage')}, 'delete': {'enabled': True}},
                  'http': {'addr': self.address, 'secret': 'sdt-roll-%d' % self.port}}
        (self.root / 'config.yml').write_text(json.dumps(config))
        self.log = open(self.root / 'registry.log', 'ab')
        self.proc = subprocess.Popen(['docker-registry', 'serve', str(self.root / 'config.yml')], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_until(self.answers, 30, 'own registry on %s' % self.address)

    def answers(self):
        try:
            return requests.get('http://%s/v2/' % self.address, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc:
            self.log.close()
        self.proc = None


class StallingRegistry(object):
    """Answers like the real registry (it proxies 127.0.0.1:5000) to everyone but the Docker engine, whose
    manifest and blob GETs hang: compose_pin resolves the release, `docker pull` stalls."""

    def __init__(self, port, upstream='127.0.0.1:5000', stall_seconds=120):
        self.port, self.upstream, self.stall_seconds = port, upstream, stall_seconds
        self.address = '127.0.0.1:%d' % port
        self.stalled = []
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args):
                pass

            def _handle(self):
                agent = self.headers.get('User-Agent', '')
                if agent.startswith('docker/') and ('/manifests/' in self.path or '/blobs/' in self.path):
                    outer.stalled.append((self.command, self.path))
                    outer.release.wait(outer.stall_seconds)
                    self.close_connection = True
                    return
                headers = dict((k, v) for k, v in self.headers.items() if k.lower() not in ('host', 'connection'))
                resp = requests.request(self.command, 'http://%s%s' % (outer.upstream, self.path), headers=headers,
                                        timeout=30, allow_redirects=False)
                body = b'' if self.command == 'HEAD' else resp.content
                self.send_response(resp.status_code)
                for key, value in resp.headers.items():
                    if key.lower() not in ('connection', 'transfer-encoding', 'content-length', 'keep-alive'):
                        self.send_header(key, value)
                self.send_header('Content-Length', resp.headers.get('Content-Length', str(len(body)))
                                 if self.command == 'HEAD' else str(len(body)))
                self.end_headers()
                if body:
                    self.wfile.write(body)

            do_GET = do_HEAD = _handle

        self.server = ThreadingHTTPServer(('127.0.0.1', port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- one stack of two services

class Stack(object):
    """One compose project of this file: its files, its inventory, its containers and its ledger."""

    def __init__(self, root, name, repo_prefix=REPO, first_release='r1'):
        self.root = Path(root)
        self.project = unique(name)
        self.src = self.root / 'src'
        self.state_dir = self.root / 'state'
        self.reports = self.root / 'reports'
        self.repo_prefix = repo_prefix
        self.ports = {'web': take_port(), 'worker': take_port()}
        self.src.mkdir(parents=True)
        services = {}
        for service, port in self.ports.items():
            services[service] = {'image': '%s/%s:%s' % (repo_prefix, service, first_release), 'network_mode': 'host',
                                 'restart': 'unless-stopped', 'environment': {'APP_PORT': str(port)}}
        (self.src / 'compose.yaml').write_text(yaml.safe_dump({'services': services}, sort_keys=False))
        self.ledger_file = self.state_dir / self.project / 'releases.json'
        self.override = self.src / ('compose.%s.release.yml' % self.project)  # compose_pin's default
        self.lock_file = self.state_dir / self.project / 'lock.json'

    # inventory and runs
    def stack_vars(self, **extra):
        stack = {'name': self.project, 'project_src': str(self.src),
                 'repositories': ['%s/web' % self.repo_prefix, '%s/worker' % self.repo_prefix],
                 'health_checks': [
                     {'name': 'web health', 'type': 'http', 'url': 'http://127.0.0.1:%d/cgi-bin/health' % self.ports['web'],
                      'json': {'status': 'ok'}},
                     {'name': 'worker health', 'type': 'http', 'url': 'http://127.0.0.1:%d/cgi-bin/health' % self.ports['worker'],
                      'status': [200]}]}
        stack.update(extra)
        return stack

    def inventory(self, stack=None, **host_vars):
        hostvars = dict(LOCAL_HOST_VARS)
        hostvars.update({
            'safedeploy_stacks': [stack or self.stack_vars()],
            'rollout_state_dir': str(self.state_dir), 'rollback_state_dir': str(self.state_dir),
            'rollout_health_timeout': HEALTH_TIMEOUT, 'rollout_health_interval': 1,
            'rollback_health_timeout': HEALTH_TIMEOUT, 'rollback_health_interval': 1,
            'safedeploy_report_dir': str(self.reports),
        })
        hostvars.update(host_vars)
        return {'all': {'hosts': {'localhost': hostvars}}}

    def rollout(self, release, args=(), env=None, stack=None, **host_vars):
        return run_playbook(ROOT / 'playbooks' / 'rollout.yml', inventory=self.inventory(stack, **host_vars),
                            extra_vars={'release': release}, args=args, env=env)

    def rollback(self, apply, to=None, args=(), env=None, **host_vars):
        extra = {'apply': apply}
        if to:
            extra['to'] = to
        return run_playbook(ROOT / 'playbooks' / 'rollback.yml', inventory=self.inventory(None, **host_vars),
                            extra_vars=extra, args=args, env=env)

    # what runs
    def containers(self, client):
        return client.containers.list(all=True, filters={'label': 'com.docker.compose.project=%s' % self.project})

    def snapshot(self, client):
        """{container name: (id, StartedAt, Config.Image, status)} of every container of the project."""
        return dict((c.name, (c.id, c.attrs['State']['StartedAt'], c.attrs['Config']['Image'], c.status))
                    for c in self.containers(client))

    def running_digests(self, client):
        """{service: digest} read from each running container: its pinned Config.Image, checked against its image id."""
        found = {}
        for container in self.containers(client):
            service = container.labels['com.docker.compose.service']
            assert container.status == 'running', '%s is %s' % (container.name, container.status)
            assert not LEFTOVER.match(container.name), 'leftover container %s' % container.name
            assert service not in found, 'two containers of %s' % service
            ref = container.attrs['Config']['Image']
            assert '@sha256:' in ref, '%s runs the unpinned %s' % (container.name, ref)
            repo, digest = ref.split('@', 1)
            assert client.images.get('%s@%s' % (repo.rsplit(':', 1)[0], digest)).id == container.attrs['Image']
            found[service] = digest
        return found

    def versions(self):
        return dict((service, (health(port) or {}).get('version')) for service, port in self.ports.items())

    # the ledger
    def ledger_bytes(self):
        return self.ledger_file.read_bytes() if self.ledger_file.exists() else None

    def ledger(self):
        """The ledger through last_good_tag query (which verifies its checksum)."""
        result = run_module('last_good_tag', {'project': self.project, 'state_dir': str(self.state_dir), 'action': 'query'})
        assert not result.failed, result.get('msg')
        assert result['changed'] is False
        result['status'] = dict((r['id'], r['status']) for r in result['releases'])
        return result

    def down(self, client):
        for container in self.containers(client):
            container.remove(force=True)


@pytest.fixture
def make_stack(testbed, tmp_path):
    made = []
    client = testbed.client()

    def make(name, **kwargs):
        stack = Stack(tmp_path / name, name, **kwargs)
        made.append(stack)
        return stack
    yield make
    for stack in made:
        stack.down(client)


class Background(object):
    """ansible-playbook started in the background (its own process group), to be raced or killed."""

    def __init__(self, playbook, inventory, extra_vars, args=(), env=None):
        self.dir = Path(inventory['all']['hosts']['localhost']['rollout_state_dir']).parent / 'runs'
        self.dir.mkdir(exist_ok=True)
        inventory_file = self.dir / ('inventory-%s.yml' % uuid.uuid4().hex[:6])
        inventory_file.write_text(yaml.safe_dump(inventory))
        run_env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / 'ansible.cfg'), ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
                       ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0',
                       PATH=str(ROOT / '.venv' / 'bin') + os.pathsep + os.environ.get('PATH', ''))
        run_env.update(env or {})
        argv = [str(ROOT / '.venv' / 'bin' / 'ansible-playbook'), str(ROOT / 'playbooks' / playbook), '-i', str(inventory_file),
                '-e', json.dumps(on_compose_under_test(extra_vars))] + list(args)
        self.out = open(self.dir / ('playbook-%s.out' % uuid.uuid4().hex[:6]), 'w+')
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, cwd=str(ROOT), env=run_env, stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, text=True)

    def descendants(self):
        """Pids of every process below the playbook (modules, timeout, docker-compose), read from /proc."""
        children = {}
        for entry in os.listdir('/proc'):
            if entry.isdigit():
                try:
                    with open('/proc/%s/stat' % entry) as handle:
                        ppid = int(handle.read().rsplit(')', 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry))
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            for child in children.get(pid, []):
                found.append(child)
                todo.append(child)
        return found

    def kill_all(self):
        """kill -9 the controller and everything it started, as a crashed controller host would leave it.

        The tree is frozen first (SIGSTOP until no new process shows up), so no child escapes by being forked meanwhile.
        """
        frozen = []
        for _round in range(10):
            new = [pid for pid in [self.proc.pid] + self.descendants() if pid not in frozen]
            if not new:
                break
            for pid in new:
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    pass
                frozen.append(pid)
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)

    def wait(self, timeout=300):
        self.proc.wait(timeout)
        self.elapsed = time.monotonic() - self.started
        self.out.seek(0)
        self.output = self.stdout = self.out.read()
        self.out.close()
        self.rc = self.proc.returncode
        return self


def assert_ok(run, changed=None):
    assert run.rc == 0, run.output[-6000:]
    recap = run.recap['localhost']
    assert recap['failed'] == 0 and recap['unreachable'] == 0, recap
    if changed is not None:
        assert recap['changed'] == changed, (recap, run.output[-4000:])
    return recap


def assert_failed(run):
    assert run.rc != 0, run.output[-6000:]
    assert run.recap['localhost']['failed'] >= 1, run.recap
    return run


def failure_message(run):
    """The msg of the play's last failed task (the rollout's summary)."""
    messages = re.findall(r'fatal: \[localhost\]: FAILED! =>.*?(?:\n(?=\S)|\Z)', run.stdout, re.S)
    return messages[-1] if messages else run.output


def file_tree(*roots):
    """{path: (size, mtime_ns, bytes)} of every file under roots: proof that nothing was written."""
    found = {}
    for root in roots:
        for path in sorted(Path(root).rglob('*')) if Path(root).exists() else []:
            if path.is_file():
                stat = path.stat()
                found[str(path)] = (stat.st_size, stat.st_mtime_ns, path.read_bytes())
    return found


def assert_made_by_compose_under_test(stack, client, testbed):
    """The roles ran the Compose under test (safedeploy_compose_command): each container carries its version."""
    made_by = set(c.labels.get('com.docker.compose.version') for c in stack.containers(client))
    assert made_by == {testbed.compose[testbed_mod.COMPOSE_UNDER_TEST]['version']}, made_by


# ---------------------------------------------------------------- one stack, many releases (in file order)

@pytest.fixture(scope='module')
def chain(testbed, images, tmp_path_factory):
    """A stack that rolled out r1 then r2 with the real playbook: r2 is current, r1 the good one before it.

    The tests of TestOneStack run in file order on it; each asserts relative to the state it finds.
    """
    client = testbed.client()
    stack = Stack(tmp_path_factory.mktemp('chain'), 'chain')
    try:
        for release in ('r1', 'r2'):
            assert_ok(stack.rollout(release))
        assert stack.running_digests(client) == images['r2']
        assert_made_by_compose_under_test(stack, client, testbed)
        yield stack
    finally:
        stack.down(client)


class TestOneStack(object):

    def test_a_rerun_of_the_running_release_is_a_read(self, chain, images, testbed):
        """Issue 15: the lock, the pin's lookup, the ledger, one look; nothing of what changes the host, not even as
        skipped tasks (release.yml is one skipped include), and not a byte of the ledger or the project written."""
        client = testbed.client()
        current = chain.ledger()['current']['id']
        snapshot, ledger = chain.snapshot(client), chain.ledger_bytes()
        run = chain.rollout(current)
        assert_ok(run, changed=0)
        assert 'was already running and healthy' in ' '.join(run.stdout.split()), run.stdout[-3000:]
        tasks = re.findall(r'^TASK \[(.*?)\]', run.stdout, re.M)
        assert any('Check that the running stack is the pinned release and healthy' in task for task in tasks), tasks
        for phase in ('Measure the engine', 'Record as a candidate', 'Pull and bring up', 'Gate on real health',
                      'Promote to the last good release', 'Verify the signatures', 'Read the blue and green slots'):
            assert not any(phase in task for task in tasks), (phase, tasks)
        assert chain.snapshot(client) == snapshot
        assert chain.ledger_bytes() == ledger
        assert not chain.lock_file.exists()

    def test_check_diff_shows_each_service_digest_change_and_changes_nothing(self, chain, images, testbed):
        client = testbed.client()
        before = chain.ledger()
        current = before['current']['id']
        snapshot, files = chain.snapshot(client), file_tree(chain.root)
        run = chain.rollout('r3', args=['--check', '--diff'])
        assert_ok(run)
        for service in ('web', 'worker'):
            old = images[current][service]
            assert old != images['r3'][service]
            assert re.search(r'^-\s+image: "%s/%s:%s@%s"$' % (re.escape(REPO), service, current, old), run.stdout, re.M), run.stdout
            assert re.search(r'^\+\s+image: "%s/%s:r3@%s"$' % (re.escape(REPO), service, images['r3'][service]),
                             run.stdout, re.M), run.stdout
        assert 'would be deployed (check mode' in run.stdout
        assert chain.snapshot(client) == snapshot, 'check mode touched a container'
        assert file_tree(chain.root) == files, 'check mode wrote a file'  # the ledger file among them
        assert chain.ledger()['releases'] == before['releases']
        assert not chain.lock_file.exists()

    def test_missing_image_fails_in_pin_phase_and_touches_nothing(self, chain, images, testbed):
        client = testbed.client()
        snapshot, ledger_bytes = chain.snapshot(client), chain.ledger_bytes()
        override = chain.override.read_bytes()
        run = assert_failed(chain.rollout(MISSING))
        message = failure_message(run)
        assert 'Resolve every image' in message and '%s/worker:%s' % (REPO, MISSING) in message, message
        assert '%s/web:%s' % (REPO, MISSING) not in message.split('not found', 1)[1].split('Push')[0], message
        assert 'Nothing running was touched' in message
        for phase_after_pin in ('Record as a candidate', 'Pull and bring up with the pinned override'):
            assert phase_after_pin not in run.stdout, phase_after_pin
        assert chain.snapshot(client) == snapshot, 'a container was touched'
        assert chain.ledger_bytes() == ledger_bytes, 'the ledger changed'
        assert chain.override.read_bytes() == override
        assert not chain.lock_file.exists()

    @pytest.mark.compose_cli
    def test_rollback_plan_only_then_apply(self, chain, images, testbed):
        client = testbed.client()
        before = chain.ledger()
        current, target = before['current']['id'], before['previous_good']['id']
        assert current != target
        # what an interrupted recreate leaves: the plan lists it and keeps it, the apply removes it before up
        leftover = client.containers.create(
            testbed.images['v1']['ref'], name='%s_%s_web_1' % (uuid.uuid4().hex[:12], chain.project),
            network_mode='none', labels={'com.docker.compose.project': chain.project,
                                         'com.docker.compose.service': 'web'})
        snapshot, ledger_bytes = chain.snapshot(client), chain.ledger_bytes()

        plan = chain.rollback(apply=False)
        assert_ok(plan, changed=0)
        assert chain.snapshot(client) == snapshot and chain.ledger_bytes() == ledger_bytes
        shown = ' '.join(plan.stdout.split())  # the YAML callback folds long messages
        assert '%s: %s -> %s (plan only' % (chain.project, current, target) in shown, plan.stdout
        for service in ('web', 'worker'):
            assert '%s: %s -> %s' % (service, images[current][service], images[target][service]) in shown, shown

        # --check wins over apply=true: the apply's plan is shown, nothing is restored, pulled or started
        files = dict((path, path.read_bytes()) for path in sorted(chain.src.iterdir()) if path.is_file())
        dry = chain.rollback(apply=True, args=['--check'])
        assert_ok(dry, changed=0)
        assert '%s: %s -> %s (plan only, nothing changed; check mode: run without --check to apply)' % (
            chain.project, current, target) in ' '.join(dry.stdout.split()), dry.stdout
        assert chain.snapshot(client) == snapshot and chain.ledger_bytes() == ledger_bytes
        assert dict((path, path.read_bytes()) for path in sorted(chain.src.iterdir()) if path.is_file()) == files
        assert not chain.lock_file.exists()

        applied = chain.rollback(apply=True)
        assert_ok(applied)
        assert applied.recap['localhost']['changed'] >= 1
        assert leftover.id not in [c.id for c in chain.containers(client)], 'compose_up removes the leftover before up'
        assert chain.running_digests(client) == images[target]
        assert set(chain.versions().values()) == {RELEASES[target][0]}
        assert_made_by_compose_under_test(chain, client, testbed)  # the rollback role's own CLI choice
        after = chain.ledger()
        assert after['current']['id'] == target and after['last_good']['id'] == target
        assert after['status'][target] == 'good' and after['status'][current] == 'rolled_back'
        assert after['serial'] > before['serial']

    @pytest.mark.compose_cli
    def test_worker_crash_loop_takes_the_whole_stack_back(self, chain, images, testbed):
        client = testbed.client()
        before = chain.ledger()
        good = before['current']['id']
        ids = dict((c.labels['com.docker.compose.service'], c.id) for c in chain.containers(client))
        run = assert_failed(chain.rollout('rcrash'))
        message = ' '.join(failure_message(run).split())
        assert 'Rolled back to %s' % good in message and 'containers' in message, message
        # both services are back on the good release's digests, web included although it was healthy on rcrash
        assert chain.running_digests(client) == images[good]
        assert len(set(chain.versions().values())) == 1, chain.versions()
        assert_made_by_compose_under_test(chain, client, testbed)  # the automatic rollback passed the choice on
        recreated = dict((c.labels['com.docker.compose.service'], c.id) for c in chain.containers(client))
        if images[good]['web'] != images['rcrash']['web']:
            assert recreated['web'] != ids['web'], 'web was never moved to rcrash'
        after = chain.ledger()
        reason = [r['reason'] for r in after['releases'] if r['id'] == 'rcrash'][0]
        assert after['status']['rcrash'] == 'failed' and 'crash loop' in reason and 'worker' in reason, reason
        assert after['current']['id'] == good and after['status'][good] == 'good'
        assert [r['id'] for r in after['releases'] if r['id'] != 'rcrash'] == [r['id'] for r in before['releases']]
        assert not chain.lock_file.exists()
        report = json.loads((chain.reports / 'rcrash' / ('localhost-%s.json' % chain.project)).read_text())
        assert report['result'] == 'rolled_back' and report['previous'] == good
        assert report['failing_checks'] and 'web health' not in report['failing_checks'], report  # web was healthy

    def test_stalled_pull_times_out_before_up_and_the_old_stack_keeps_serving(self, chain, images, testbed):
        client = testbed.client()
        before = chain.ledger()
        good = before['current']['id']
        snapshot, serving = chain.snapshot(client), chain.versions()
        override = chain.override.read_bytes()
        assert None not in serving.values()
        # the engine keeps every manifest it pulled and asks no registry for it again, whatever the address: the
        # release must be one it has never seen
        tag = unseen_release(client, 'rstall')
        fake = StallingRegistry(take_port())
        try:
            stalled = chain.stack_vars(images=dict(
                (service, '%s/%s/%s:%s' % (fake.address, PREFIX, service, tag)) for service in ('web', 'worker')))
            run = Background('rollout.yml', chain.inventory(stalled, rollout_pull_timeout=5), {'release': 'rstall'})
            wait_until(lambda: fake.stalled, 60, 'the engine asking the stalling registry for the release')
            serving_during_stall = chain.versions()
            run.wait(120)
        finally:
            fake.stop()
        assert run.rc != 0, run.output[-5000:]
        message = ' '.join(failure_message(run).split())
        assert 'Pull and bring up' in message and 'did not finish within 5s and was stopped' in message, message
        assert 'Nothing running was touched' in message, message
        assert run.elapsed < 60, 'the stalled pull was not cut off (%ss)' % run.elapsed
        assert serving_during_stall == serving and chain.versions() == serving
        assert chain.snapshot(client) == snapshot
        assert chain.running_digests(client) == images[good]
        ledger = chain.ledger()
        assert ledger['status'].pop('rstall') == 'failed' and ledger['status'] == before['status']
        assert ledger['current']['id'] == good
        assert 'Pull and bring up' in ledger['releases'][-1]['reason']
        # the pin had written rstall into the override: it is put back, so a manual `compose up` starts the running release
        assert chain.override.read_bytes() == override
        assert not chain.lock_file.exists()

    @pytest.mark.compose_cli
    def test_controller_killed_during_up_next_run_takes_over_and_converges(self, chain, images, testbed):
        """kill -9 of the controller and its children the moment compose makes the first <hex>_<name> container of
        a recreate: v1 renames the old container to it, v2 creates the replacement under it (and renames it at the end)."""
        client = testbed.client()
        before = chain.ledger()
        assert 'r4' not in before['status'] and images[before['current']['id']]['web'] != images['r4']['web']
        killed = threading.Event()
        events = client.events(decode=True, filters={'event': ['rename', 'create'],
                                                     'label': 'com.docker.compose.project=%s' % chain.project})
        # a ttl the timeouts fit in (the role checks that), short enough to test; the lease is aged below, not waited for
        short = dict(rollout_lock_ttl=40, rollout_pull_timeout=30, rollout_up_timeout=20, rollout_health_timeout=15,
                     rollout_registry_timeout=20, rollout_engine_timeout=20)
        run = Background('rollout.yml', chain.inventory(rollout_run_id='sdt-roll-run-killed', **short), {'release': 'r4'})

        def kill_at_first_rename():
            for event in events:
                if not LEFTOVER.match(((event.get('Actor') or {}).get('Attributes') or {}).get('name', '')):
                    continue
                if run.proc.poll() is None:
                    run.kill_all()
                    killed.set()
                return

        watcher = threading.Thread(target=kill_at_first_rename, daemon=True)
        watcher.start()
        try:
            killed.wait(120)
        finally:
            events.close()
        run.wait(60)
        assert killed.is_set(), 'the rollout ended before compose made a <hex>_<name> container: %s' % run.output[-3000:]
        assert run.rc == -signal.SIGKILL

        # what the dead run left: its lease, r4 recorded but unfinished, a renamed <hex>_<name> container
        lease = json.loads(chain.lock_file.read_text())
        assert lease['run_id'] == 'sdt-roll-run-killed'
        assert chain.ledger()['status'] == dict(before['status'], r4='candidate')
        leftovers = [c.name for c in chain.containers(client) if LEFTOVER.match(c.name)]
        if not leftovers:
            # The kill lost its race: compose created, started and removed within the moment between the engine's
            # rename event and SIGKILL reaching it (seen under load). Leave what the kill usually leaves, a renamed
            # container of the project, so the next run still has a leftover to remove.
            web = [c for c in chain.containers(client) if c.labels.get('com.docker.compose.service') == 'web'][0]
            client.containers.create(testbed.images['v1']['ref'], name='%s_%s' % (uuid.uuid4().hex[:12], web.name),
                                     network_mode='none', labels=dict(web.labels))
            leftovers = [c.name for c in chain.containers(client) if LEFTOVER.match(c.name)]
        assert leftovers, [c.name for c in chain.containers(client)]
        assert_made_by_compose_under_test(chain, client, testbed)  # the background run's CLI made the leftover too
        assert not lease_expired(lease, time.time())
        # 40 s pass: the lease's boot-clock deadline is what expiry reads (the wall clock may step)
        lease['expires_boot_clock'] = time.clock_gettime(time.CLOCK_BOOTTIME) - 1
        chain.lock_file.write_text(json.dumps(lease))

        again = chain.rollout('r4', rollout_run_id='sdt-roll-run-next', **short)
        assert_ok(again)
        flat = ' '.join(again.output.split())
        assert 'took over the expired stack lock' in flat and 'run id sdt-roll-run-killed' in flat, again.output[-5000:]
        assert 'stopped before it finished r4' in flat, again.output[-5000:]
        assert chain.running_digests(client) == images['r4']  # also: no <hex>_<name> container is left
        ledger = chain.ledger()
        assert ledger['current']['id'] == 'r4' and ledger['status']['r4'] == 'good'
        assert ledger['status'][before['current']['id']] == 'superseded'
        assert not chain.lock_file.exists()


# ---------------------------------------------------------------- two stacks of one host

def test_two_stacks_of_one_host_roll_out_in_one_run_checking_python_once(make_stack, images, testbed):
    client = testbed.client()
    first, second = make_stack('pair-a'), make_stack('pair-b')
    second.state_dir = first.state_dir  # one host, one state_dir
    second.ledger_file = first.state_dir / second.project / 'releases.json'
    second.lock_file = first.state_dir / second.project / 'lock.json'
    inventory = first.inventory()
    inventory['all']['hosts']['localhost']['safedeploy_stacks'] = [first.stack_vars(), second.stack_vars()]
    run = run_playbook(ROOT / 'playbooks' / 'rollout.yml', inventory=inventory, extra_vars={'release': 'r1'})
    assert_ok(run)
    for stack in (first, second):
        assert stack.running_digests(client) == images['r1']
        assert stack.ledger()['status'] == {'r1': 'good'}
    # host_python checks the host's Python once per play: the second stack of the host skips it. The lock, taken
    # first, found the interpreter: no ping.
    expected = {'Check that this Python has the libraries the modules import': ['ok', 'skipping'],
                'Let Ansible find the Python': ['skipping', 'skipping']}
    for task, wanted in expected.items():
        outcomes = re.findall(r'TASK \[[^\]]*%s[^\]]*\] \**\n(\w+):' % task, run.stdout)
        assert outcomes == wanted, '%s: %s' % (task, outcomes)
    # one module run pulls, removes leftovers and brings each stack up: no pull task, no leftover task of its own
    ups = re.findall(r'TASK \[[^\]]*Pull and bring up with the pinned override[^\]]*\] \**\n(\w+):', run.stdout)
    assert ups == ['changed', 'changed'], ups
    for stack in (first, second):
        assert not stack.lock_file.exists()


def test_a_stack_already_running_its_release_reports_its_own_check_not_the_stack_before_it(make_stack, images, testbed):
    """The second stack of the host already runs r1 and skips release.yml as a whole: its report must not carry the
    first stack's gate time or warnings (results of release.yml are host variables that outlive a stack)."""
    client = testbed.client()
    first, second = make_stack('own-a'), make_stack('own-b')
    second.state_dir = first.state_dir  # one host, one state_dir
    second.ledger_file = first.state_dir / second.project / 'releases.json'
    inventory = first.inventory()
    inventory['all']['hosts']['localhost']['safedeploy_stacks'] = [second.stack_vars()]
    assert_ok(run_playbook(ROOT / 'playbooks' / 'rollout.yml', inventory=inventory, extra_vars={'release': 'r1'}))
    inventory['all']['hosts']['localhost']['safedeploy_stacks'] = [first.stack_vars(), second.stack_vars()]
    run = run_playbook(ROOT / 'playbooks' / 'rollout.yml', inventory=inventory, extra_vars={'release': 'r1'})
    assert_ok(run)
    for stack in (first, second):
        assert stack.running_digests(client) == images['r1']
    reports = dict((stack.project, json.loads((first.reports / 'r1' / ('localhost-%s.json' % stack.project)).read_text()))
                   for stack in (first, second))
    deployed, unchanged = reports[first.project], reports[second.project]
    assert deployed['result'] == 'deployed' and unchanged['result'] == 'unchanged', reports
    # the first stack's gate needs two passes an interval (1 s here) apart; the second's check is one look
    assert float(deployed['gate_elapsed']) >= 1.0, deployed
    assert float(unchanged['gate_elapsed']) < 1.0, unchanged
    assert unchanged['warnings'] == [], unchanged


def test_a_failing_stack_takes_the_stacks_moved_before_it_on_its_host_back(make_stack, images, testbed):
    """One version per host: pair-b fails r2 after pair-a moved to it in the same run, so pair-a goes back too."""
    client = testbed.client()
    first, second = make_stack('one-a'), make_stack('one-b')
    second.state_dir = first.state_dir  # one host, one state_dir
    second.ledger_file = first.state_dir / second.project / 'releases.json'
    inventory = first.inventory()
    inventory['all']['hosts']['localhost']['safedeploy_stacks'] = [first.stack_vars(), second.stack_vars()]
    assert_ok(run_playbook(ROOT / 'playbooks' / 'rollout.yml', inventory=inventory, extra_vars={'release': 'r1'}))
    broken = second.stack_vars()
    broken['health_checks'][0]['url'] = 'http://127.0.0.1:%d/cgi-bin/health' % take_port()  # nothing answers there
    inventory['all']['hosts']['localhost']['safedeploy_stacks'] = [first.stack_vars(), broken]
    run = assert_failed(run_playbook(ROOT / 'playbooks' / 'rollout.yml', inventory=inventory, extra_vars={'release': 'r2'}))
    assert re.search(r'Return the stacks this run moved on this host.*\n.*included', run.stdout), run.stdout[-3000:]
    for stack in (first, second):
        assert stack.running_digests(client) == images['r1'], stack.project
    assert first.ledger()['status'] == {'r1': 'good', 'r2': 'rolled_back'}
    assert second.ledger()['status'] == {'r1': 'good', 'r2': 'failed'}


@pytest.mark.parametrize('release', ['../../escaped', 'v1\n', 'v1/../../x'])
def test_a_release_id_that_is_no_tag_stops_before_any_path_is_made_of_it(make_stack, release):
    stack = make_stack('badid')
    run = assert_failed(stack.rollout(release))
    message = ' '.join(failure_message(run).split())
    assert 'Invalid release id' in message and 'Nothing was done' in message, message
    made = [str(path) for path in stack.root.parent.rglob('*') if 'escaped' in path.name or path.name == 'x']
    assert made == [], 'a path was made of the release id: %s' % made
    assert not stack.ledger_file.exists() and not stack.lock_file.exists()
    assert not stack.reports.exists() or list(stack.reports.iterdir()) == []


def test_every_bad_input_is_named_in_one_message_before_anything_runs(make_stack):
    """The role's own checks (release id, routes, the lock's lifetime) are one task: each problem is named, in one
    message, and nothing is locked, recorded or started."""
    stack = make_stack('inputs')
    run = assert_failed(stack.rollout('v1/../x', stack=stack.stack_vars(routes=[{'service': 'web', 'port': 'eighty'}]),
                                      rollout_lock_ttl=10))
    message = ' '.join(failure_message(run).split())
    assert 'Invalid release id "v1/../x"' in message, message
    assert 'The routes of %s must be a list of {service, port, container_port}' % stack.project in message, message
    assert 'Got routes [{' in message and '"port": "eighty"' in message, message
    assert 'rollout_lock_ttl (10s) must be longer than the longest step' in message, message
    assert re.search(r"a hook'+s timeout", message), message  # the YAML output doubles the quote
    assert message.count('Nothing was done') == 1, message
    assert 'Take the stack lock' not in run.stdout, 'a task ran after the checks failed'
    assert not stack.ledger_file.exists() and not stack.lock_file.exists()


def bare_python(tmp_path, with_yaml):
    """A virtualenv Python with nothing installed, and (with_yaml) only PyYAML added from the system's packages."""
    venv = tmp_path / ('venv-yaml' if with_yaml else 'venv-bare')
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True, timeout=120)
    python = venv / 'bin' / 'python'
    if with_yaml:
        extra = tmp_path / ('%s-site' % venv.name)
        extra.mkdir()
        source = Path(yaml.__file__).resolve().parent
        (extra / 'yaml').symlink_to(source)
        for entry in source.parent.glob('_yaml*'):
            (extra / entry.name).symlink_to(entry)
        site = subprocess.run([str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                              check=True, capture_output=True, text=True, timeout=60).stdout.strip()
        Path(site, 'pyyaml-only.pth').write_text(str(extra) + '\n')
    probe = subprocess.run([str(python), '-c', 'import importlib.util as u; print([n for n in ("yaml", "docker", "requests", '
                            '"urllib3") if u.find_spec(n)])'], check=True, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == ("['yaml']" if with_yaml else '[]'), probe.stdout
    return str(python)


def test_a_python_with_only_the_standard_library_and_pyyaml_runs_the_rollout(make_stack, images, tmp_path):
    """The modules speak to the engine, the registry and the health endpoints with Python's standard library: a host
    Python without the Docker SDK or requests rolls a release out and back, and the Python check installs nothing."""
    python = bare_python(tmp_path, with_yaml=True)
    client = docker.from_env()
    stack = make_stack('stdlib')
    for release in ('r1', 'r2'):
        assert_ok(stack.rollout(release, ansible_python_interpreter=python, rollout_python_deps='none'))
        assert stack.running_digests(client) == images[release]
    assert_ok(stack.rollback(True, ansible_python_interpreter=python, rollback_python_deps='none'))
    assert stack.running_digests(client) == images['r1']
    assert stack.ledger()['status'] == {'r1': 'good', 'r2': 'rolled_back'}


def test_a_python_without_pyyaml_stops_before_anything_with_what_to_do(make_stack, tmp_path):
    stack = make_stack('bare')
    run = stack.rollout('r1', ansible_python_interpreter=bare_python(tmp_path, with_yaml=False), rollout_python_deps='none')
    assert_failed(run)
    message = ' '.join(failure_message(run).split())
    assert 'cannot import yaml' in message and 'No module named yaml' in message, message
    assert 'rollout_python_deps' in message and 'python3-yaml' in message, 'the message must say how to fix it'
    assert not stack.ledger_file.exists() and not stack.lock_file.exists()


# ---------------------------------------------------------------- release hooks

class HookRecorder(object):
    """An HTTP server on 127.0.0.1 that records each path a hook asks for, and whether the stack lock was held then."""

    def __init__(self, port, lock_file):
        self.calls = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the name http.server calls
                recorder.calls.append((self.path, lock_file.exists()))
                self.send_response(200)
                self.send_header('Content-Length', '2')
                self.end_headers()
                self.wfile.write(b'ok')

            def log_message(self, *args):  # pylint: disable=arguments-differ
                pass

        self.server = ThreadingHTTPServer(('127.0.0.1', port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.compose_cli
def test_hooks_run_in_order_under_the_lock_and_a_failing_one_leaves_the_old_release(make_stack, images, testbed, tmp_path):
    """Container hooks run while the service is not running yet (the first release): docker-compose v1 links a one-off
    container to the service's running containers, which host networking refuses (docs/rollout.md, Hooks)."""
    client = testbed.client()
    stack = make_stack('hooks')
    port = take_port()
    recorder = HookRecorder(port, stack.lock_file)

    def task_file(name, tasks):
        path = tmp_path / name
        path.write_text(yaml.safe_dump(tasks, sort_keys=False))
        return str(path)
    marker = tmp_path / 'task-hook.txt'
    write_marker = task_file('marker.yml', [{'name': 'Write a marker', 'ansible.builtin.copy': {
        'content': '{{ rollout_release }}\n', 'dest': str(marker), 'mode': '0644'}}])

    def ask(path):
        return task_file('ask-%s.yml' % path, [{'name': 'Ask the recorder', 'ansible.builtin.uri': {
            'url': 'http://127.0.0.1:%d/%s' % (port, path)}}])
    try:
        in_container = {'service': 'web', 'command': ['wget', '-q', '-O', '/dev/null', 'http://127.0.0.1:%d/before_up' % port]}
        hooks = {'before_up': [in_container, {'tasks': write_marker, 'name': 'marker'}],
                 'after_gate': [{'tasks': ask('after_gate')}]}
        assert_ok(stack.rollout('r1', stack=stack.stack_vars(hooks=hooks)))
        assert [path for path, _locked in recorder.calls] == ['/before_up', '/after_gate']
        assert all(locked for _path, locked in recorder.calls), 'a hook ran without the stack lock: %s' % recorder.calls
        assert marker.read_text() == 'r1\n', 'the task-file hook did not run with the role variables'
        assert stack.running_digests(client) == images['r1']

        before = stack.snapshot(client)
        migrate = task_file('migrate.yml', [{'name': 'Migrate', 'ansible.builtin.fail': {'msg': 'migration failed: no database'}}])
        failing = {'before_up': [{'name': 'migrate', 'tasks': migrate}], 'after_gate': [{'tasks': ask('never')}]}
        run = assert_failed(stack.rollout('r2', stack=stack.stack_vars(hooks=failing)))
        message = ' '.join(failure_message(run).split())
        assert 'migration failed: no database' in message and 'Nothing running was touched' in message, message
        assert stack.snapshot(client) == before, 'a failing before_up hook touched the running release'
        assert '/never' not in [path for path, _locked in recorder.calls]
        ledger = stack.ledger()
        assert ledger['status'] == {'r1': 'good', 'r2': 'failed'} and ledger['current']['id'] == 'r1'
    finally:
        recorder.stop()


def test_a_task_file_hook_past_its_deadline_fails_before_up_and_frees_the_lock(make_stack, images, testbed, tmp_path):
    """A before_up task-file hook that would wait 60 s, with a deadline of 4 s: the rollout fails in well under 60 s,
    naming the hook and its deadline, before `up` (the old release serves on, its containers untouched), the
    candidate is failed in the ledger and the stack lock is released."""
    client = testbed.client()
    stack = make_stack('hookdeadline')
    assert_ok(stack.rollout('r1'))
    before, serving = stack.snapshot(client), stack.versions()
    assert None not in serving.values()
    hang = tmp_path / 'hang.yml'
    hang.write_text(yaml.safe_dump([{'name': 'Wait for a database that never comes', 'ansible.builtin.pause': {'seconds': 60}}]))
    hooks = {'before_up': [{'name': 'slow migration', 'tasks': str(hang), 'timeout': 4}]}
    run = assert_failed(stack.rollout('r2', stack=stack.stack_vars(hooks=hooks)))
    message = ' '.join(failure_message(run).split())
    assert 'before_up hook slow migration' in message and 'deadline of 4s' in message, message
    assert 'Wait for a database that never comes' in message, message
    assert 'Nothing running was touched; r1 still runs' in message, message
    assert run.elapsed < 50, 'the hook was not stopped at its deadline (%.1fs)' % run.elapsed
    assert stack.snapshot(client) == before and stack.versions() == serving
    assert stack.running_digests(client) == images['r1']
    ledger = stack.ledger()
    assert ledger['status'] == {'r1': 'good', 'r2': 'failed'} and ledger['current']['id'] == 'r1'
    assert not stack.lock_file.exists(), 'the stack lock outlived the failed hook'


def test_a_registry_that_never_answers_fails_the_pin_at_its_timeout_and_frees_the_lock(make_stack, images, testbed):
    """The release's images are on a registry that accepts the connection and never answers (with credentials for it):
    the rollout fails at the pin within rollout_registry_timeout, naming the registry and the timeout, the running
    release untouched, no secret shown, and the lock released: the next rollout takes it at once."""
    client = testbed.client()
    stack = make_stack('silent')
    assert_ok(stack.rollout('r1'))
    before, serving = stack.snapshot(client), stack.versions()
    silent = SilentRegistry()
    secret = 'sdt-silent-%s' % uuid.uuid4().hex
    try:
        on_silent = stack.stack_vars(
            images=dict((service, '%s/%s/%s:rsilent' % (silent.address, PREFIX, service)) for service in ('web', 'worker')),
            registry_auth=[{'registry': silent.address, 'username': 'sdt', 'password': secret}])
        run = assert_failed(stack.rollout('rsilent', stack=on_silent, rollout_registry_timeout=3))
    finally:
        silent.close()
    message = ' '.join(failure_message(run).split())
    assert 'Resolve every image' in message, message
    assert 'registry %s did not answer usefully within 3s' % silent.address in message, message
    assert 'rollout_registry_timeout' in message and 'Nothing running was touched; r1 still runs' in message, message
    assert silent.accepted > 0, 'the pin never asked the silent registry: the test proves nothing'
    assert run.elapsed < 60, 'the registry lookup was not cut off (%.1fs)' % run.elapsed
    assert secret not in run.output
    assert stack.snapshot(client) == before and stack.versions() == serving
    assert not stack.lock_file.exists(), 'the stack lock outlived the failed pin'
    # the lock is free: a run that waits at most 1 s for it rolls out the next release
    assert_ok(stack.rollout('r2', rollout_lock_wait=1))
    assert stack.running_digests(client) == images['r2']


def test_a_run_that_lost_its_stack_lock_stops_and_touches_nothing_more(make_stack, images, testbed, tmp_path):
    """Someone breaks the run's stack lock and another run takes it (as after an expiry, or by hand) while the run
    works: before `up` the run stops with the old release untouched; after `up`, promote refuses and no rollback
    runs. Neither writes the ledger nor releases the other run's lock."""
    client = testbed.client()
    stack = make_stack('leaselost')
    take_over = tmp_path / 'take-over.yml'
    take_over.write_text(yaml.safe_dump([
        {'name': 'Break this run\'s stack lock', 'safedeploy.compose.stack_lock': {
            'project': '{{ rollout_project }}', 'state_dir': '{{ rollout_state_dir }}', 'state': 'absent',
            'run_id': '{{ _rollout_run_id }}'}},
        {'name': 'Another run takes it', 'safedeploy.compose.stack_lock': {
            'project': '{{ rollout_project }}', 'state_dir': '{{ rollout_state_dir }}', 'run_id': 'sdt-intruder',
            'owner': 'intruder', 'lock_wait': 0}},
    ], sort_keys=False))
    hook = {'name': 'take-over', 'tasks': str(take_over)}
    assert_ok(stack.rollout('r1'))
    before = stack.snapshot(client)

    run = assert_failed(stack.rollout('r2', stack=stack.stack_vars(hooks={'before_up': [hook]})))
    message = ' '.join(failure_message(run).split())
    assert 'no longer holds the stack lock of project %s' % stack.project in message, message
    assert 'run id sdt-intruder' in message and 'This run lost its stack lock and stopped' in message, message
    assert 'Nothing running was touched' in message, message
    assert stack.snapshot(client) == before
    assert json.loads(stack.lock_file.read_text())['run_id'] == 'sdt-intruder'  # not released by the run that lost it
    assert stack.ledger()['status'] == {'r1': 'good', 'r2': 'candidate'}  # not written after the loss

    stack.lock_file.unlink()  # the intruder is gone
    run = assert_failed(stack.rollout('r3', stack=stack.stack_vars(hooks={'after_gate': [hook]})))
    message = ' '.join(failure_message(run).split())
    assert 'the ledger action promote' in message and 'r3 was brought up and may run, unpromoted' in message, message
    assert stack.running_digests(client) == images['r3']  # no rollback by a run that lost the lock
    ledger = stack.ledger()
    assert ledger['status']['r3'] == 'candidate' and ledger['current']['id'] == 'r1'
    assert json.loads(stack.lock_file.read_text())['run_id'] == 'sdt-intruder'
    stack.lock_file.unlink()


def test_a_run_that_loses_its_stack_lock_during_its_rollback_stops_there(make_stack, images, testbed):
    """The release fails its gate and another run takes the stack lock over meanwhile: the automatic rollback stops
    at its first step (putting back the files), writes no file and no ledger entry, leaves the other run's lock in
    place, and the report is still written, saying the lock was lost."""
    client = testbed.client()
    stack = make_stack('leaselostrb')
    assert_ok(stack.rollout('r1'))
    failing = stack.stack_vars()
    failing['health_checks'] = failing['health_checks'] + [
        {'name': 'never up', 'type': 'tcp', 'host': '127.0.0.1', 'port': take_port()}]
    taken = threading.Event()

    def take_over_once_r2_runs():
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not taken.is_set():
            try:
                if stack.running_digests(client) == images['r2']:
                    stack.lock_file.unlink()
                    acquire_stack_lock(str(stack.state_dir), stack.project, 'sdt-intruder', owner='intruder',
                                       lock_wait=0)
                    taken.set()
                    return
            except (AssertionError, docker.errors.DockerException):
                pass  # containers being recreated
            time.sleep(0.2)

    thread = threading.Thread(target=take_over_once_r2_runs, daemon=True)
    thread.start()
    run = assert_failed(stack.rollout('r2', stack=failing, rollout_health_timeout=12))
    thread.join(5)
    assert taken.is_set(), 'r2 never ran: ' + run.output[-3000:]
    message = ' '.join(failure_message(run).split())
    assert 'lost its stack lock during its rollback to r1 and stopped' in message, message
    assert 'run id sdt-intruder' in message and 'Put back the files of r1' in message, message
    assert stack.running_digests(client) == images['r2']  # the rollback wrote and started nothing
    assert images['r2']['web'] in stack.override.read_text()  # r1's files not put back
    ledger = stack.ledger()
    assert ledger['current']['id'] == 'r1' and ledger['status'] == {'r1': 'good', 'r2': 'candidate'}
    assert json.loads(stack.lock_file.read_text())['run_id'] == 'sdt-intruder'
    report = json.loads((stack.reports / 'r2' / ('localhost-%s.json' % stack.project)).read_text())
    assert report['result'] == 'lease_lost' and 'during its rollback to r1' in report['running']['note'], report
    stack.lock_file.unlink()


@pytest.mark.compose_cli
def test_container_hook_while_the_host_network_service_runs(make_stack, images, testbed, tmp_path):
    """A container hook of a release that replaces a running one (the usual case) on a network_mode: host stack.

    Compose v2 runs it. docker-compose v1 links the one-off container to the running service, which host networking
    refuses: the rollout fails before up with v1's own message and the running release stays (docs/rollout.md)."""
    client = testbed.client()
    stack = make_stack('hookrun')
    port = take_port()
    recorder = HookRecorder(port, stack.lock_file)
    try:
        assert_ok(stack.rollout('r1'))
        before = stack.snapshot(client)
        hook = {'service': 'web', 'command': ['wget', '-q', '-O', '/dev/null', 'http://127.0.0.1:%d/migrate' % port]}
        run = stack.rollout('r2', stack=stack.stack_vars(hooks={'before_up': [hook]}))
        if testbed_mod.COMPOSE_UNDER_TEST == 'v2':
            assert_ok(run)
            assert [path for path, _locked in recorder.calls] == ['/migrate']
            assert stack.running_digests(client) == images['r2']
        else:
            assert_failed(run)
            message = ' '.join(failure_message(run).split())
            assert 'Run in a one-off container the hook before_up' in message, message
            assert 'Nothing running was touched' in message, message
            # v1's reason is an earlier stderr line of the hook task than the one the summary quotes
            assert 'host type networking can\'t be used with links' in run.output, run.output[-5000:]
            assert recorder.calls == []
            assert stack.snapshot(client) == before
    finally:
        recorder.stop()


@pytest.mark.parametrize('pinned_in', ['compose_file', 'images'])
def test_an_image_pinned_by_digest_goes_back_through_a_failed_gate(make_stack, images, testbed, pinned_in):
    """web is pinned by digest (as people pin postgres:16@sha256:...), in the compose file or through `images:`;
    a release whose worker crash-loops goes back to the last good release, web's digest included."""
    client = testbed.client()
    stack = make_stack('digest-' + pinned_in.replace('_', ''))
    web_pinned = '%s/web:r1@%s' % (REPO, images['r1']['web'])
    compose = yaml.safe_load((stack.src / 'compose.yaml').read_text())

    def release_vars(release):
        if pinned_in == 'images':
            return stack.stack_vars(images={'web': web_pinned, 'worker': '%s/worker:%s' % (REPO, release)})
        return stack.stack_vars(repositories=['%s/worker' % REPO])
    if pinned_in == 'compose_file':
        compose['services']['web']['image'] = web_pinned
        (stack.src / 'compose.yaml').write_text(yaml.safe_dump(compose, sort_keys=False))
    for release in ('r1', 'r2'):
        assert_ok(stack.rollout(release, stack=release_vars(release)))
    good = {'web': images['r1']['web'], 'worker': images['r2']['worker']}
    assert stack.running_digests(client) == good

    run = assert_failed(stack.rollout('rcrash', stack=release_vars('rcrash')))
    message = ' '.join(failure_message(run).split())
    assert 'Rolled back to r2' in message, message
    assert stack.running_digests(client) == good
    ledger = stack.ledger()
    assert ledger['current']['id'] == 'r2' and ledger['status']['r2'] == 'good' and ledger['status']['rcrash'] == 'failed'


# ---------------------------------------------------------------- two rollouts at once

def test_concurrent_rollouts_wait_for_the_lock_or_fail_naming_the_holder(make_stack, images, testbed):
    """A holds the lock; B (lock_wait 120) waits and then rolls out after A; C (lock_wait 1) fails naming A.

    A's gate must stay green for 8 s (stable_for), so A surely holds the lock while C starts, waits and gives up.
    """
    client = testbed.client()
    stack = make_stack('lock')
    first = Background('rollout.yml', stack.inventory(rollout_run_id='sdt-roll-run-A', rollout_health_stable_for=8), {'release': 'r1'})
    wait_until(stack.lock_file.exists, 60, 'run A taking the stack lock')
    assert json.loads(stack.lock_file.read_text())['run_id'] == 'sdt-roll-run-A'
    second = Background('rollout.yml', stack.inventory(rollout_run_id='sdt-roll-run-B', rollout_lock_wait=120),
                        {'release': 'r2'}, args=['-v'])
    third = Background('rollout.yml', stack.inventory(rollout_run_id='sdt-roll-run-C', rollout_lock_wait=1),
                       {'release': 'r2'})
    third.wait()
    first.wait(), second.wait()

    assert first.rc == 0, first.output[-5000:]
    assert third.rc != 0, third.output[-5000:]
    message = ' '.join(failure_message(third).split())
    assert 'Take the stack lock' in message and 'held by' in message and 'run id sdt-roll-run-A' in message, message
    assert 'release r1' in message and 'Nothing running was touched' in message, message
    assert 'Record as a candidate' not in third.output

    assert second.rc == 0, second.output[-5000:]
    waited = [float(value) for value in re.findall(r'^\s+waited: ([0-9.]+)$', second.output, re.M)]
    assert waited and waited[0] > 1, 'run B did not wait for the lock: %s' % waited
    assert stack.running_digests(client) == images['r2']
    ledger = stack.ledger()
    assert ledger['status'] == {'r1': 'superseded', 'r2': 'good'} and ledger['current']['id'] == 'r2'
    assert not stack.lock_file.exists()


# ---------------------------------------------------------------- registries that fail

def remove_local_refs(client, repository):
    """Untag every local tag and digest reference of repository (the images stay while other tags use them)."""
    for image in client.images.list(name=repository):
        for ref in (image.tags or []) + (image.attrs.get('RepoDigests') or []):
            name = ref.split('@', 1)[0]
            if '@' not in ref and ':' in name.rsplit('/', 1)[-1]:
                name = name.rsplit(':', 1)[0]
            if name == repository:
                try:
                    client.images.remove(ref)
                except Exception:  # already gone
                    pass


def test_registry_down_during_rollback_uses_local_images_or_fails_loudly(make_stack, testbed, tmp_path):
    client = testbed.client()
    registry = OwnRegistry(tmp_path / 'registry', take_port())
    prefix = '%s/%s' % (registry.address, PREFIX)
    registry.start()
    stack = None
    try:
        digests = dict((release, push_release(client, prefix, release, RELEASES[release])) for release in ('r1', 'r2'))
        stack = make_stack('offline', repo_prefix=prefix)
        assert_ok(stack.rollout('r1'))
        assert_ok(stack.rollout('r2'))
        registry.stop()
        assert not registry.answers()

        back = stack.rollback(apply=True, args=['-v'])
        assert_ok(back)
        up = back.stdout.split('Bring up the target release', 1)[1].split('TASK [', 1)[0]
        assert re.search(r'^\s+pulled: false$', up, re.M), 'the rollback tried to pull: ' + up
        assert stack.running_digests(client) == digests['r1']
        ledger = stack.ledger()
        assert ledger['status'] == {'r1': 'good', 'r2': 'rolled_back'} and ledger['current']['id'] == 'r1'

        # r2's worker image is gone from the host and the registry is down: fail loudly, touch nothing
        remove_local_refs(client, prefix + '/worker')
        snapshot, ledger_bytes = stack.snapshot(client), stack.ledger_bytes()
        override = stack.override.read_bytes()
        refused = assert_failed(stack.rollback(apply=True, to='r2', rollback_registry_timeout=5))
        message = ' '.join(failure_message(refused).split())
        assert 'Cannot roll back %s to r2' % stack.project in message, message
        assert 'on this host:' in message and 'in the registry:' in message, message
        assert '%s/worker:r2@%s' % (prefix, digests['r2']['worker']) in message.split('in the registry:', maxsplit=1)[0], message
        assert '%s did not answer' % registry.address in message and 'Nothing running was touched' in message, message
        assert 'Bring up the target release' not in refused.stdout
        assert stack.snapshot(client) == snapshot
        assert stack.ledger_bytes() == ledger_bytes
        assert stack.override.read_bytes() == override
        assert not stack.lock_file.exists()
    finally:
        registry.stop()
        if stack:
            stack.down(client)
        for service in ('web', 'worker'):
            remove_local_refs(client, '%s/%s' % (prefix, service))


# ---------------------------------------------------------------- registry credentials

def test_registry_credentials_are_used_for_the_pull_only_and_never_show(make_stack, testbed, tmp_path):
    client = testbed.client()
    password, user = testbed.auth_password, testbed.auth_user
    assert len(password) > 8
    prefix = '%s/%s' % (testbed.auth_registry, PREFIX)
    digests = push_release(client, prefix, 'r1', RELEASES['r1'], auth_config={'username': user, 'password': password})
    for service in ('web', 'worker'):  # the rollout must pull them from the auth registry
        remove_local_refs(client, '%s/%s' % (prefix, service))
    shim = tmp_path / 'bin'
    shim.mkdir()
    argv_log = tmp_path / 'docker-argv.log'
    (shim / 'docker').write_text('#!/bin/sh\nprintf "%%s\\n" "$*" >> %s\nexec /usr/bin/docker "$@"\n' % argv_log)
    (shim / 'docker').chmod(0o755)
    docker_config = tmp_path / 'docker-config'  # the user's Docker config in this test, not root's ~/.docker
    docker_config.mkdir()

    seen_in_argv = []
    done = threading.Event()

    def watch_argv():
        needle = password.encode()
        while not done.is_set():
            for entry in os.listdir('/proc'):
                try:
                    with open('/proc/%s/cmdline' % entry, 'rb') as handle:
                        if needle in handle.read():
                            seen_in_argv.append(entry)
                except OSError:
                    pass
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_argv, daemon=True)
    watcher.start()
    stack = make_stack('auth', repo_prefix=prefix)
    try:
        run = stack.rollout('r1', args=['-vvv'], stack=stack.stack_vars(
            registry_auth=[{'registry': testbed.auth_registry, 'username': user, 'password': password}]),
            env={'PATH': '%s:%s:%s' % (shim, ROOT / '.venv' / 'bin', os.environ.get('PATH', '')),
                 'DOCKER_CONFIG': str(docker_config)})
    finally:
        done.set()
        watcher.join(10)
    try:
        assert_ok(run)
        assert stack.running_digests(client) == digests
        assert password not in run.output, 'the registry password appears in the -vvv output'
        assert not seen_in_argv, 'the registry password was in the argv of a process'
        logins = [line for line in argv_log.read_text().splitlines() if line.startswith('login')]
        assert logins == [], 'nothing logs in for good: %s' % logins
        assert password not in argv_log.read_text()
        # the pull used a Docker config of its own, removed after it: the user's has no login of ours
        assert not (docker_config / 'config.json').exists() or testbed.auth_registry not in \
            json.loads((docker_config / 'config.json').read_text()).get('auths', {})
        up_task = run.stdout.split('Pull and bring up with the pinned override', 1)[1].split('TASK [', 1)[0]
        assert re.search(r'authenticated:\s*- %s\n' % re.escape(testbed.auth_registry), up_task), up_task[-3000:]
        assert 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER' in up_task, 'the password option is no_log'
        for path in file_tree(stack.root, docker_config):
            assert password.encode() not in Path(path).read_bytes(), path
    finally:
        stack.down(client)
        for service in ('web', 'worker'):
            remove_local_refs(client, '%s/%s' % (prefix, service))


# ---------------------------------------------------------------- the way back: a release is the whole stack

def write_env(stack, **values):
    (stack.src / '.env').write_text(''.join('%s=%s\n' % item for item in sorted(values.items())))


def use_env_ports(stack):
    """The services take their ports from the project's .env, as real stacks take their configuration."""
    compose = yaml.safe_load((stack.src / 'compose.yaml').read_text())
    for service in ('web', 'worker'):
        compose['services'][service]['environment'] = {'APP_PORT': '${%s_PORT}' % service.upper()}
    (stack.src / 'compose.yaml').write_text(yaml.safe_dump(compose, sort_keys=False))
    write_env(stack, WEB_PORT=stack.ports['web'], WORKER_PORT=stack.ports['worker'])


def config_files(stack):
    return dict((name, (stack.src / name).read_bytes()) for name in ('compose.yaml', '.env', stack.override.name))


@pytest.mark.compose_cli
def test_a_release_broken_by_its_config_or_its_services_goes_back_to_the_exact_old_files(make_stack, images, testbed):
    """r2 moves web to another port in .env (the images are fine); rcrash drops worker and adds a service:
    each time the rollback puts r1's files back, so the old config runs, not old images on new files."""
    client = testbed.client()
    stack = make_stack('config')
    use_env_ports(stack)
    assert_ok(stack.rollout('r1'))
    good = config_files(stack)
    assert stack.versions() == {'web': 'v1', 'worker': 'v1'}

    write_env(stack, WEB_PORT=take_port(), WORKER_PORT=stack.ports['worker'])  # the config that breaks it
    run = assert_failed(stack.rollout('r2'))
    message = ' '.join(failure_message(run).split())
    assert 'web health' in message and 'Rolled back to r1' in message, message
    assert config_files(stack) == good
    assert stack.running_digests(client) == images['r1'] and stack.versions() == {'web': 'v1', 'worker': 'v1'}
    ledger = stack.ledger()
    assert ledger['status'] == {'r1': 'good', 'r2': 'failed'} and ledger['current']['id'] == 'r1'
    kept = [str(stack.src / name) for name in ('compose.yaml', stack.override.name, '.env')]
    assert ledger['current']['snapshot']['files'] == kept

    compose = yaml.safe_load((stack.src / 'compose.yaml').read_text())
    compose['services']['extra'] = dict(compose['services'].pop('worker'), image='%s/worker:r1' % REPO)
    (stack.src / 'compose.yaml').write_text(yaml.safe_dump(compose, sort_keys=False))
    run = assert_failed(stack.rollout('rcrash'))
    assert 'Rolled back to r1' in ' '.join(failure_message(run).split())
    assert config_files(stack) == good
    services = sorted(c.labels['com.docker.compose.service'] for c in stack.containers(client))
    assert services == ['web', 'worker'], services  # extra removed (--remove-orphans), worker back
    assert stack.running_digests(client) == images['r1'] and stack.versions() == {'web': 'v1', 'worker': 'v1'}
    assert stack.ledger()['status'] == {'r1': 'good', 'r2': 'failed', 'rcrash': 'failed'}


def test_the_current_release_redeployed_with_a_failing_config_stays_the_last_good(make_stack, images, testbed):
    """r1 again after a .env edit that breaks it: the stack goes back to r1 as it was good, r1 stays good
    (the attempt is what failed), and the next failing release still has its automatic rollback."""
    client = testbed.client()
    stack = make_stack('redeploy')
    use_env_ports(stack)
    assert_ok(stack.rollout('r1'))
    good = config_files(stack)

    write_env(stack, WEB_PORT=take_port(), WORKER_PORT=stack.ports['worker'])
    run = assert_failed(stack.rollout('r1'))
    assert 'Rolled back to r1' in ' '.join(failure_message(run).split())
    assert config_files(stack) == good and stack.versions() == {'web': 'v1', 'worker': 'v1'}
    ledger = stack.ledger()
    assert ledger['status'] == {'r1': 'good'} and ledger['last_good']['id'] == 'r1'
    attempts = ledger['last_good']['failed_attempts']
    assert len(attempts) == 1 and attempts[0]['status'] == 'failed' and 'web health' in attempts[0]['reason']

    run = assert_failed(stack.rollout('rcrash'))
    assert 'Rolled back to r1' in ' '.join(failure_message(run).split())
    assert stack.running_digests(client) == images['r1'] and config_files(stack) == good
    assert stack.ledger()['status'] == {'r1': 'good', 'rcrash': 'failed'}


def test_a_failed_rollback_says_where_the_stack_is_in_the_message_and_the_report(make_stack, images, testbed):
    """A gate only web v2 passes: rcrash (web v2, worker crash-looping) fails it, and so does r1 on the way
    back. The run must not claim a rollback nor an untouched stack, and the report says what runs."""
    stack = make_stack('rbfail')
    assert_ok(stack.rollout('r1'))
    strict = stack.stack_vars()
    strict['health_checks'].append({'name': 'web is v2', 'type': 'http', 'json': {'version': 'v2'},
                                    'url': 'http://127.0.0.1:%d/cgi-bin/health' % stack.ports['web']})
    run = assert_failed(stack.rollout('rcrash', stack=strict, rollout_health_timeout=10))
    message = ' '.join(failure_message(run).split())
    assert 'The rollback to r1 FAILED' in message and 'web is v2' in message, message
    assert 'Rolled back to' not in message and 'Nothing running was touched' not in message, message
    report_file = stack.reports / 'rcrash' / ('localhost-%s.json' % stack.project)
    report = json.loads(report_file.read_text())
    assert report['result'] == 'rollback_failed' and 'web is v2' in report['rollback_error'], report
    # it quotes the failing containers' logs: private, in a private directory
    assert (report_file.stat().st_mode & 0o777, report_file.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    assert report['running']['healthy'] is False and report['reason'], report
    services = report['running']['services']  # what each service runs, as the rollback's gate saw it
    assert set(services) == {'web', 'worker'} and all(':r1@sha256:' in text for text in services.values()), services
    assert 'now: web: ' in message, message
    assert stack.ledger()['status'] == {'r1': 'good', 'rcrash': 'failed'}  # recorded after the rollback


def test_a_rollback_from_a_private_registry_logs_in_like_the_rollout(make_stack, testbed, tmp_path):
    """r1's images are gone from the host: the rollback pulls them from the auth registry, after its own
    credentials (a fresh DOCKER_CONFIG: no login of the rollout's could help it), password never shown."""
    client = testbed.client()
    password, user = testbed.auth_password, testbed.auth_user
    prefix = '%s/%s-rb' % (testbed.auth_registry, PREFIX)
    auth = {'username': user, 'password': password}
    digests = dict((release, push_release(client, prefix, release, RELEASES[release], auth_config=auth))
                   for release in ('r1', 'r2'))
    stack = make_stack('authback', repo_prefix=prefix)
    login = {'registry': testbed.auth_registry, 'username': user, 'password': password}
    stack_vars = stack.stack_vars(registry_auth=[login])
    base_env = {'PATH': '%s:%s' % (ROOT / '.venv' / 'bin', os.environ.get('PATH', ''))}
    try:
        for release in ('r1', 'r2'):
            config = tmp_path / ('docker-config-' + release)
            config.mkdir()
            run = stack.rollout(release, stack=stack_vars, args=['-v'], env=dict(base_env, DOCKER_CONFIG=str(config)))
            assert_ok(run)
            assert password not in run.output, 'the registry password shows in the -v output of ' + release
        for service in ('web', 'worker'):
            remove_local_refs(client, '%s/%s' % (prefix, service))
        fresh = tmp_path / 'docker-config-rollback'
        fresh.mkdir()
        run = run_playbook(ROOT / 'playbooks' / 'rollback.yml', inventory=stack.inventory(stack_vars),
                           extra_vars={'apply': True}, args=['-v'], env=dict(base_env, DOCKER_CONFIG=str(fresh)))
        assert_ok(run)
        assert stack.running_digests(client) == digests['r1']
        assert not (fresh / 'config.json').exists(), 'the rollback logged in for good'
        assert password not in run.output
        assert stack.ledger()['status'] == {'r1': 'good', 'r2': 'rolled_back'}
    finally:
        stack.down(client)
        for service in ('web', 'worker'):
            remove_local_refs(client, '%s/%s' % (prefix, service))


def test_a_full_disk_during_the_rescue_never_stops_the_rollback(make_stack, images, testbed, tmp_path):
    """The state dir's filesystem fills up after the candidate is recorded (a before_up hook fills it): the
    rescue still takes the stack back to r1 (reading the ledger writes nothing), and the ledger that could not
    be written is reported, not fatal to the way back."""
    client = testbed.client()
    state = tmp_path / 'state-fs'
    state.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=2m,mode=0700', 'sdt-roll-state', str(state)], check=True)
    try:
        stack = make_stack('fullstate')
        stack.state_dir, stack.ledger_file = state, state / stack.project / 'releases.json'
        assert_ok(stack.rollout('r1'))
        fill = tmp_path / 'fill.yml'
        fill.write_text(yaml.safe_dump([{'name': 'Fill the filesystem of the state dir', 'ansible.builtin.command': {
            'argv': ['dd', 'if=/dev/zero', 'of=%s' % (state / 'filler'), 'bs=64k']}, 'failed_when': False}]))
        hooks = {'before_up': [{'name': 'fill the disk', 'tasks': str(fill)}]}
        run = assert_failed(stack.rollout('rcrash', stack=stack.stack_vars(hooks=hooks)))
        message = ' '.join(failure_message(run).split())
        assert 'Rolled back to r1' in message, message
        assert "The ledger could not be updated" in message and "No space left on device" in message, message
        assert stack.running_digests(client) == images['r1'] and stack.versions() == {'web': 'v1', 'worker': 'v1'}
        report = json.loads((stack.reports / 'rcrash' / ('localhost-%s.json' % stack.project)).read_text())
        assert report['result'] == 'rolled_back' and 'No space left' in report['ledger_error'], report
        (state / 'filler').unlink()
        ledger = stack.ledger()  # the write that failed left the ledger whole: r1 current, rcrash as recorded
        assert ledger['current']['id'] == 'r1' and ledger['status'] == {'r1': 'good', 'rcrash': 'candidate'}
    finally:
        subprocess.run(['umount', '-l', str(state)], check=False)
