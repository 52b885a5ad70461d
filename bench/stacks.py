"""The two ways of changing a running compose stack that the benchmark compares, on the same kind of stack.

- ``Stack.floor_rollout``: what a person does by hand - ``docker compose pull`` and ``up -d`` with the new tag,
  then a tight loop on the health endpoints until every one serves the new release. The floor: nothing safer
  can be faster.
- ``gated_rollout``: ``playbooks/rollout.yml`` of this collection on an inventory whose hosts run the stacks
  (``connection: local``), timed from outside and task by task through the ``bench_timeline`` callback
  (``playbook_run`` runs another playbook, ``rollback.yml``, the same way).

Every stack is a compose project ``sdb-<name>`` of busybox-httpd services on the host network, one port
each, in a directory under the bench's work dir; its ledger and stack lock live there too.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / '.venv' / 'bin'
COLLECTIONS = ROOT / '.build' / 'collections'
REGISTRY = '127.0.0.1:5000'
PREFIX = 'sdb-'
REPO_PREFIX = 'sdb/'
COMPOSE = ['docker', 'compose']  # what users run: Compose v2, the plugin the test bed installs


class Stack(object):
    """A compose project of ``services`` app services on ports base_port, base_port+1, ..."""

    def __init__(self, name, services, base_port, workdir):
        self.name = name
        self.project = PREFIX + name
        self.dir = Path(workdir) / self.project
        self.override = self.dir / ('compose.%s.release.yml' % self.project)  # compose_pin's default
        self.services = ['s%02d' % index for index in range(1, services + 1)]
        self.ports = dict((service, base_port + index) for index, service in enumerate(self.services))
        self.repos = dict((service, REPO_PREFIX + '%s-%s' % (name, service)) for service in self.services)
        self.session = requests.Session()
        self.current = None  # the release serving now
        self.good = []       # releases that went live, oldest first
        self.pushed = []     # releases pushed whose local images may still be on the engine
        self.digests = {}    # release -> {service: manifest digest}

    # ------------------------------------------------------------ files

    def write_compose(self, templated):
        """compose.yaml: ``repo:${RELEASE}`` for the floor (templated) or a fixed tag that compose_pin replaces."""
        self.dir.mkdir(parents=True, exist_ok=True)
        services = {}
        for service in self.services:
            tag = '${RELEASE}' if templated else 'unpinned'
            services[service] = {
                'image': '%s/%s:%s' % (REGISTRY, self.repos[service], tag),
                'network_mode': 'host',
                'restart': 'unless-stopped',
                'environment': {'APP_PORT': str(self.ports[service])},
            }
        (self.dir / 'compose.yaml').write_text(yaml.safe_dump({'services': services}, sort_keys=True))

    def urls(self):
        return dict((service, 'http://127.0.0.1:%d/cgi-bin/health' % port) for service, port in self.ports.items())

    def health_checks(self):
        """The checks the gated rollout uses: the same endpoints the floor's loop polls."""
        return [{'name': '%s health' % service, 'type': 'http', 'url': url, 'json': {'status': 'ok'}}
                for service, url in sorted(self.urls().items())]

    def stack_vars(self):
        """One entry of safedeploy_stacks for this stack."""
        return {'name': self.project, 'project_src': str(self.dir),
                'repositories': ['%s/%s' % (REGISTRY, self.repos[service]) for service in self.services],
                'health_checks': self.health_checks()}

    # ------------------------------------------------------------ releases

    def push_release(self, pusher, release, base_tag='v2', env=None):
        self.digests[release] = dict((service, pusher.push(self.repos[service], release, service=service, base_tag=base_tag, env=env))
                                     for service in self.services)

    def image_refs(self, release):
        """The references a release's images may carry locally: by tag (plain pull) and by digest (pinned pull)."""
        refs = []
        for service in self.services:
            repo = '%s/%s' % (REGISTRY, self.repos[service])
            refs.append('%s:%s' % (repo, release))
            if self.digests.get(release, {}).get(service):
                refs.append('%s@%s' % (repo, self.digests[release][service]))
        return refs

    # ------------------------------------------------------------ observation

    def serving(self, release, timeout=0.5):
        """True when every endpoint answers 200 with status ok and version == release."""
        for url in self.urls().values():
            try:
                resp = self.session.get(url, timeout=timeout)
                if resp.status_code != 200:
                    return False
                body = resp.json()
            except (requests.RequestException, ValueError):
                return False
            if body.get('status') != 'ok' or body.get('version') != release:
                return False
        return True

    def wait_serving(self, release, timeout=60, pause=0.01):
        """The floor's health loop: poll every endpoint until all serve release; the time it passed, or None."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.serving(release):
                return time.time()
            time.sleep(pause)
        return None

    def containers(self, client):
        return client.containers.list(all=True, filters={'label': 'com.docker.compose.project=%s' % self.project})

    # ------------------------------------------------------------ the floor

    def compose(self, args, release, check=True):
        env = dict(os.environ, RELEASE=release)
        proc = subprocess.run(COMPOSE + ['-p', self.project, '-f', str(self.dir / 'compose.yaml')] + list(args),
                              cwd=str(self.dir), env=env, capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError('docker compose %s of %s failed: %s' % (' '.join(args), self.project, proc.stderr[-2000:]))
        return proc

    def floor_rollout(self, release, timeout=60):
        """pull + up -d + tight health loop; returns {'total', 'pull', 'up', 'gate', 'ok'} in seconds."""
        started = time.time()
        self.compose(['pull', '--quiet'], release)
        pulled = time.time()
        self.compose(['up', '--detach', '--remove-orphans'], release)
        upped = time.time()
        healthy = self.wait_serving(release, timeout=timeout)
        ended = healthy or time.time()
        return {'total': ended - started, 'pull': pulled - started, 'up': upped - pulled, 'gate': ended - upped,
                'ok': healthy is not None, 'up_done_at': upped, 'healthy_at': healthy}

    def floor_crash(self, bad, good, client, timeout=60):
        """Plain Compose meets a crash-looping release: pull + up -d bad, watch the engine until a container has
        crashed (the earliest anyone can know), then put the good release back with up -d and poll until it serves.
        """
        self.compose(['pull', '--quiet'], bad)
        self.compose(['up', '--detach', '--remove-orphans'], bad)
        upped = time.time()
        crashed = None
        deadline = upped + timeout
        while crashed is None and time.time() < deadline:
            for container in self.containers(client):
                container.reload()
                state = container.attrs.get('State') or {}
                if container.attrs.get('RestartCount') or state.get('Status') in ('restarting', 'exited', 'dead'):
                    crashed = time.time()
                    break
            else:
                time.sleep(0.01)
        restore_started = time.time()
        self.compose(['up', '--detach', '--remove-orphans'], good)
        restored = self.wait_serving(good, timeout=timeout)
        return {'detect': (crashed or time.time()) - upped, 'restore': (restored or time.time()) - restore_started,
                'ok': crashed is not None and restored is not None}

    def down(self):
        subprocess.run(COMPOSE + ['-p', self.project, '-f', str(self.dir / 'compose.yaml')]
                       + (['-f', str(self.override)] if self.override.exists() else [])
                       + ['down', '--remove-orphans', '--timeout', '3'],
                       cwd=str(self.dir), env=dict(os.environ, RELEASE='down'), capture_output=True, check=False)


class Watcher(object):
    """A side thread polling a stack's endpoints as tightly as the floor's loop, noting every change of what serves.

    ``changes`` is a list of ``(time, version)``: the release every endpoint serves (status ok, same version), or
    None while they do not agree (down, starting, mixed releases).
    """

    def __init__(self, stack, pause=0.01):
        self.stack = stack
        self.pause = pause
        self.changes = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name='watch %s' % stack.project)

    def _look(self, session, urls):
        versions = set()
        for url in urls:
            try:
                resp = session.get(url, timeout=0.5)
                body = resp.json() if resp.status_code == 200 else {}
            except (requests.RequestException, ValueError):
                body = {}
            versions.add(body.get('version') if body.get('status') == 'ok' else None)
        return versions.pop() if len(versions) == 1 else None

    def _run(self):
        session = requests.Session()
        urls = list(self.stack.urls().values())
        while not self._stop.is_set():
            state = self._look(session, urls)
            if not self.changes or self.changes[-1][1] != state:
                self.changes.append((time.time(), state))
            time.sleep(self.pause)

    def first_serving(self, version, after=0.0):
        """First moment at or after `after` when every endpoint served version (None if never)."""
        for index, (at, state) in enumerate(self.changes):
            if state != version:
                continue
            ends = self.changes[index + 1][0] if index + 1 < len(self.changes) else float('inf')
            if ends >= after:
                return max(at, after)
        return None

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        return False


class GatedRun(object):
    """One ansible-playbook run (of playbooks/rollout.yml, or rollback.yml) with its timeline."""

    def __init__(self, rc, wall, started, ended, timeline, stdout, stderr, cpu=None):
        self.rc = rc
        self.cpu = cpu  # CPU seconds of ansible-playbook and everything it ran (modules, compose, docker CLI)
        self.wall = wall
        self.started = started
        self.ended = ended
        self.timeline = timeline
        self.stdout = stdout
        self.stderr = stderr

    @property
    def recap(self):
        return self.timeline.get('recap', {})

    @property
    def gates(self):
        return self.timeline.get('gates', [])

    def changed(self):
        return sum(counts.get('changed', 0) for counts in self.recap.values())

    def failed(self):
        return sum(counts.get('failures', 0) for counts in self.recap.values())

    def tail(self, chars=4000):
        """The failure messages of the run (or the end of its output when there are none)."""
        lines = (self.stdout + '\n' + self.stderr).splitlines()
        failures = [line.strip() for index, line in enumerate(lines)
                    if line.startswith(('fatal:', 'failed:', '[ERROR]')) or 'msg:' in line and index and lines[index - 1].startswith('fatal')]
        text = '\n'.join(failures) if failures else '\n'.join(lines)
        return text[-chars:]


def ansible_env(extra=None):
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / 'ansible.cfg'), ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
               ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0',
               ANSIBLE_CALLBACK_PLUGINS=str(ROOT / 'bench' / 'callback_plugins'),
               ANSIBLE_CALLBACKS_ENABLED='bench_timeline',
               PATH=str(BIN) + os.pathsep + os.environ.get('PATH', ''))
    env.update(extra or {})
    return env


def inventory(hosts, common):
    """A YAML inventory dict: hosts {name: [stack, ...]} run locally with this venv's Python."""
    host_vars = {}
    for host, stacks in hosts.items():
        host_vars[host] = {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable,
                           'safedeploy_stacks': [stack.stack_vars() for stack in stacks]}
    return {'all': {'hosts': host_vars, 'vars': dict(common)}}


def gated_rollout(hosts, release, common, forks=10, batches=None, extra_env=None, timeout=1800, root=None, wrap=None):
    """Run playbooks/rollout.yml for release on the hosts; returns a GatedRun."""
    extra = {'release': release}
    if batches is not None:
        extra['rollout_batches'] = batches
    return playbook_run('rollout.yml', hosts, common, extra, forks=forks, extra_env=extra_env, timeout=timeout, root=root,
                        wrap=wrap)


def playbook_run(playbook, hosts, common, extra, forks=10, extra_env=None, timeout=1800, root=None, wrap=None):
    """Run <root>/playbooks/<playbook> (root: this checkout unless given) with the extra vars on the hosts, timed
    with the bench_timeline callback. wrap: an argv prefix the run goes through (a profiler)."""
    with tempfile.TemporaryDirectory(prefix='sdb-run-') as tmp:
        inv = Path(tmp) / 'hosts.yml'
        inv.write_text(yaml.safe_dump(inventory(hosts, common)))
        timeline_path = Path(tmp) / 'timeline.json'
        extra_file = Path(tmp) / 'extra.json'
        extra_file.write_text(json.dumps(extra))
        argv = [str(BIN / 'ansible-playbook'), '-i', str(inv), str(Path(root or ROOT) / 'playbooks' / playbook),
                '-e', '@' + str(extra_file), '--forks', str(forks)]
        argv = list(wrap or []) + argv
        env = ansible_env(dict(extra_env or {}, SAFEDEPLOY_BENCH_TIMELINE=str(timeline_path)))
        cpu_before = children_cpu()
        started = time.time()
        proc = subprocess.run(argv, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=timeout, check=False)
        ended = time.time()
        cpu = children_cpu() - cpu_before
        timeline = json.loads(timeline_path.read_text()) if timeline_path.exists() else {}
    return GatedRun(proc.returncode, ended - started, started, ended, timeline, proc.stdout, proc.stderr, cpu)


def children_cpu():
    """User + system CPU seconds of the finished child processes of this process (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
