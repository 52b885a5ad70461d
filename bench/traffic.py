"""Figure 7, zero downtime under load: the same two-service stack changed by the collection's traffic layer and by
plain ``docker compose up -d``, with a bounded client on each stack's public port.

- ``LoadClient``: GETs ``/cgi-bin/health`` on ``127.0.0.1:<port>`` at a fixed rate, a new connection each, until it
  is told to stop or its time is up; keeps every request's send time, latency, status and the version that answered.
- ``RoutedStack``: the collection's side. ``web`` is a routed service (blue and green slots behind a private HAProxy
  on the public port), ``worker`` runs in the project; changed by ``playbooks/rollout.yml`` and ``rollback.yml``.
- ``PlainStack``: the plain side. The same ``web`` publishes the public port itself; changed by ``up -d``.
- ``measure``: what a case did to the client (failed requests, p99 latency over the switch window, time to flip back).

Both stacks run the same images: a release is ``sdb/trf-web`` (the test app's ``v2``, or ``v3`` crash, ``wrongport``,
``error500``) and ``sdb/trf-worker`` (always ``v2``), with APP_VERSION set to the release id.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import signal
import subprocess
import threading
import time
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import yaml

from stacks import COMPOSE, PREFIX, REGISTRY, REPO_PREFIX

WEB_REPO = REPO_PREFIX + 'trf-web'
WORKER_REPO = REPO_PREFIX + 'trf-worker'
CONTAINER_PORT = 8080
LIVENESS_PATH = '/'  # what the proxy and the gate probe: the app's static page, served in every mode but crash and wrongport
CLIENT_PATH = '/cgi-bin/health'  # what the client asks: the app's answer, with its version (500 in mode error500)

Sample = namedtuple('Sample', 'sent latency status version error')


def push_release(pusher, release, web_base='v2'):
    """Push web (from the test app's web_base tag) and worker (v2) as release; returns {service: digest}."""
    return {'web': pusher.push(WEB_REPO, release, service='web', base_tag=web_base),
            'worker': pusher.push(WORKER_REPO, release, service='worker', base_tag='v2')}


def release_refs(release, digests):
    refs = []
    for service, repo in (('web', WEB_REPO), ('worker', WORKER_REPO)):
        refs.append('%s/%s:%s' % (REGISTRY, repo, release))
        if digests.get(service):
            refs.append('%s/%s@%s' % (REGISTRY, repo, digests[service]))
    return refs


# ---------------------------------------------------------------- the client

class LoadClient(object):
    """``rate`` GETs a second of CLIENT_PATH on 127.0.0.1:port, each on a new connection with ``timeout``, for at most
    ``seconds`` or until ``stop()``. A scheduler thread keeps the rate; a pool of workers sends, so one slow answer
    does not delay the requests after it. ``samples`` (sorted by send time once stopped): Sample(sent, latency,
    status, version, error); sent is time.time(), latency in seconds; status None when no HTTP answer came."""

    def __init__(self, port, rate=40, seconds=300, timeout=5.0, workers=32):
        self.port, self.rate, self.seconds, self.timeout = port, float(rate), seconds, timeout
        self.samples = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix='load %d' % port)
        self._thread = threading.Thread(target=self._schedule, daemon=True, name='load %d' % port)

    def _schedule(self):
        start = time.monotonic()
        number = 0
        while number / self.rate < self.seconds:
            delay = start + number / self.rate - time.monotonic()
            if self._stop.wait(max(delay, 0)):
                return
            self._pool.submit(self._request)
            number += 1

    def _request(self):
        sent, began = time.time(), time.monotonic()
        status = version = error = None
        conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=self.timeout)
        try:
            conn.request('GET', CLIENT_PATH)
            response = conn.getresponse()
            body = response.read()
            status = response.status
            if status == 200:
                version = json.loads(body).get('version')
        except (OSError, http.client.HTTPException, ValueError) as exc:
            error = type(exc).__name__
        finally:
            conn.close()
        sample = Sample(sent, time.monotonic() - began, status, version, error)
        with self._lock:
            self.samples.append(sample)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        self._pool.shutdown(wait=True)
        self.samples.sort(key=lambda sample: sample.sent)
        return self.samples

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def first_answer(self, version, after, timeout=60.0):
        """The time the first request sent at or after `after` that `version` answered came back, waiting up to
        `timeout` seconds for one (None if none did)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._lock:
                answered = [sample.sent + sample.latency for sample in self.samples
                            if sample.sent >= after and sample.version == version]
            if answered:
                return min(answered)
            time.sleep(0.02)
        return None


def version_at(port, timeout=2.0):
    """The version answering on 127.0.0.1:port (None when nothing answers 200)."""
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        conn.request('GET', CLIENT_PATH)
        response = conn.getresponse()
        body = response.read()
        return json.loads(body).get('version') if response.status == 200 else None
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def wait_answer(port, version, timeout=60.0):
    """Poll until version answers on port; True when it did within timeout."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if version_at(port) == version:
            return True
        time.sleep(0.1)
    return False


def failed(sample):
    return sample.status != 200 or sample.version is None


def seen(sample):
    """What the client saw: the version that answered, or None for a failed request."""
    return None if failed(sample) else sample.version


def percentile(values, pct):
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, int(math.ceil(pct / 100.0 * len(ordered))) - 1)]


def measure(samples, operation, old=None, decision=None, margin=1.0):
    """What a case did to its client.

    - ``failed``: requests without a 200 answer carrying a version (an HTTP error, a refused or reset connection, a
      timeout), over the whole time the client ran;
    - ``switch_window``: from the first to the last change of what the client saw (a version, or a failure), widened by
      ``margin`` seconds each side; without any change, the operation (start, end) itself;
    - ``p99``: the 99th percentile latency of the requests sent in that window that got an HTTP answer;
    - ``flip_back`` (with ``decision`` and ``old``): from the decision to the arrival of the answer of ``old`` to the
      first request sent at or after the decision from which on every request was answered by ``old``.
    """
    changes = [after.sent for before, after in zip(samples, samples[1:]) if seen(before) != seen(after)]
    window = (changes[0] - margin, changes[-1] + margin) if changes else tuple(operation)
    latencies = [sample.latency for sample in samples if window[0] <= sample.sent <= window[1] and sample.status is not None]
    kinds = {}
    for sample in samples:
        if failed(sample):
            kind = sample.error or 'HTTP %s' % sample.status
            kinds[kind] = kinds.get(kind, 0) + 1
    versions = {}
    for sample in samples:
        if not failed(sample):
            versions[sample.version] = versions.get(sample.version, 0) + 1
    result = {'requests': len(samples), 'failed': sum(kinds.values()), 'failures': kinds, 'versions': versions,
              'switch_window': [round(window[0] - operation[0], 3), round(window[1] - operation[0], 3)],
              'changes': len(changes), 'p99': percentile(latencies, 99), 'window_requests': len(latencies),
              'operation': round(operation[1] - operation[0], 3), 'flip_back': None, 'back_at': None,
              'decision': round(decision - operation[0], 3) if decision is not None else None}
    if decision is not None:
        last_other = max([sample.sent for sample in samples if seen(sample) != old] or [float('-inf')])
        for sample in samples:
            if sample.sent >= decision and sample.sent > last_other:
                result['back_at'] = round(sample.sent + sample.latency - operation[0], 3)
                result['flip_back'] = sample.sent + sample.latency - decision
                break
    return result


# ---------------------------------------------------------------- the two stacks

class PlainStack(object):
    """``web`` publishes the public port itself (127.0.0.1:public -> 8080), ``worker`` on the host network; both
    images by the tag ``${RELEASE}``: a release goes live by ``docker compose up -d``."""

    def __init__(self, name, public, worker_port, workdir, client):
        self.project = PREFIX + name
        self.dir = Path(workdir) / self.project
        self.public, self.worker_port = public, worker_port
        self.client = client
        self.good = []  # releases that went live, oldest first (a rollback's target goes live again)
        services = {
            'web': {'image': '%s/%s:${RELEASE}' % (REGISTRY, WEB_REPO), 'restart': 'unless-stopped',
                    'environment': {'APP_PORT': str(CONTAINER_PORT), 'APP_BIND': '0.0.0.0'},
                    'ports': ['127.0.0.1:%d:%d' % (public, CONTAINER_PORT)]},
            'worker': {'image': '%s/%s:${RELEASE}' % (REGISTRY, WORKER_REPO), 'network_mode': 'host',
                       'restart': 'unless-stopped', 'environment': {'APP_PORT': str(worker_port)}},
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / 'compose.yaml').write_text(yaml.safe_dump({'services': services}, sort_keys=False))

    def compose(self, args, release):
        proc = subprocess_run(COMPOSE + ['-p', self.project, '-f', str(self.dir / 'compose.yaml')] + list(args),
                              cwd=str(self.dir), env=dict(os.environ, RELEASE=release))
        if proc.returncode != 0:
            raise RuntimeError('docker compose %s of %s (RELEASE=%s) failed: %s'
                               % (' '.join(args), self.project, release, proc.stderr[-2000:]))
        return proc

    def pull(self, release):
        self.compose(['pull', '--quiet'], release)

    def up(self, release):
        """up -d of release; returns when the command returned."""
        self.compose(['up', '--detach', '--remove-orphans'], release)

    def down(self):
        subprocess_run(COMPOSE + ['-p', self.project, '-f', str(self.dir / 'compose.yaml'), 'down', '--remove-orphans',
                                  '--timeout', '3'], cwd=str(self.dir), env=dict(os.environ, RELEASE='down'))


class RoutedStack(object):
    """The same stack as a safedeploy_stacks entry whose ``web`` is routed: HAProxy on the public port, the blue and
    green slots on two loopback ports, run from its own files in ``<workdir>/proxy`` (no systemd, no package install,
    nothing of the host's HAProxy)."""

    def __init__(self, name, public, slot_ports, worker_port, workdir, client, health_timeout=10):
        self.project = PREFIX + name
        self.dir = Path(workdir) / self.project
        self.state_dir = Path(workdir) / 'traffic-state'
        self.proxy = Path(workdir) / 'proxy'
        self.public, self.slot_ports, self.worker_port = public, list(slot_ports), worker_port
        self.health_timeout = health_timeout
        self.client = client
        self.good = []  # releases that went live, oldest first (a rollback's target goes live again)
        self.canary = None  # the canary of the next rollout (a mapping), or None for a flip
        self.previous_slot = 'stopped'  # rollout_previous_slot of the next rollout
        services = {
            'web': {'image': '%s/%s:unpinned' % (REGISTRY, WEB_REPO), 'restart': 'unless-stopped',
                    'environment': {'APP_PORT': str(CONTAINER_PORT), 'APP_BIND': '0.0.0.0'},
                    'ports': ['127.0.0.1:%d:%d' % (public, CONTAINER_PORT)]},
            'worker': {'image': '%s/%s:unpinned' % (REGISTRY, WORKER_REPO), 'network_mode': 'host',
                       'restart': 'unless-stopped', 'environment': {'APP_PORT': str(worker_port)}},
        }
        for directory in (self.dir, self.proxy):
            directory.mkdir(parents=True, exist_ok=True)
        (self.dir / 'compose.yaml').write_text(yaml.safe_dump({'services': services}, sort_keys=False))

    def stack_vars(self):
        """The safedeploy_stacks entry (stacks.inventory reads it)."""
        route = {'service': 'web', 'port': self.public, 'container_port': CONTAINER_PORT, 'bind': '127.0.0.1',
                 'health_path': LIVENESS_PATH, 'check_interval': 300, 'rise': 1, 'fall': 2, 'slot_ports': self.slot_ports}
        stack = {'name': self.project, 'project_src': str(self.dir),
                 'repositories': ['%s/%s' % (REGISTRY, WEB_REPO), '%s/%s' % (REGISTRY, WORKER_REPO)],
                 'routes': [route],
                 'health_checks': [
                     {'name': 'web liveness', 'type': 'http', 'url': 'http://127.0.0.1:%d%s' % (self.public, LIVENESS_PATH),
                      'status': [200]},
                     {'name': 'worker health', 'type': 'http',
                      'url': 'http://127.0.0.1:%d/cgi-bin/health' % self.worker_port, 'status': [200]}]}
        if self.canary:
            stack['canary'] = dict(self.canary)
        return stack

    def host_vars(self):
        """The variables of the inventory: the ledger, the gate and the private HAProxy."""
        proxy = self.proxy
        return {
            'rollout_state_dir': str(self.state_dir), 'rollback_state_dir': str(self.state_dir),
            'rollout_health_timeout': self.health_timeout, 'rollout_health_interval': 1,
            'rollback_health_timeout': self.health_timeout, 'rollback_health_interval': 1,
            'safedeploy_report_dir': str(self.state_dir / 'reports'),
            'traffic_install': False, 'traffic_service_manager': 'process',
            'traffic_config_path': str(proxy / 'haproxy.cfg'), 'traffic_runtime_socket': str(proxy / 'admin.sock'),
            'traffic_pid_file': str(proxy / 'haproxy.pid'), 'traffic_master_socket': str(proxy / 'master.sock'),
            'traffic_server_state_file': str(proxy / 'server-state'), 'traffic_user': '', 'traffic_group': '',
            'rollout_drain_timeout': 10, 'rollback_drain_timeout': 10,
            'rollout_previous_slot': self.previous_slot,
        }

    def containers(self, project):
        return self.client.containers.list(all=True, filters={'label': 'com.docker.compose.project=%s' % project})

    def down(self):
        """Remove both slots, the project and their networks, and stop the HAProxy master (and so its workers)."""
        for project in (self.project, self.project + '-blue', self.project + '-green'):
            for container in self.containers(project):
                try:
                    container.remove(force=True, v=True)
                except docker.errors.APIError:
                    pass
        for network in self.client.networks.list(filters={'label': 'com.docker.compose.project'}):
            project = (network.attrs.get('Labels') or {}).get('com.docker.compose.project', '')
            if project in (self.project, self.project + '-blue', self.project + '-green'):
                try:
                    network.remove()
                except docker.errors.APIError:
                    pass
        try:
            os.kill(int((self.proxy / 'haproxy.pid').read_text().split()[0]), signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            pass


def subprocess_run(argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300, **kwargs)
