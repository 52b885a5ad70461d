"""A compose stack for the role tests (test_roles_*.py): release images, inventory, evidence, cleanup.

Not a test module. One RoleStack is one compose project named sdt-rec-<what>-<random> with services on
network_mode: host (APP_PORT from 18700-18799), whose images are the test bed's app images retagged as
127.0.0.1:5000/sdt-rec/<what>-<service>:<release> on the main engine and pushed. The stack may run on another
engine (the small-disk one): docker_host says where to look for its containers and images.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import uuid
from pathlib import Path

import docker
import requests

from testbed import testbed as testbed_mod

from ansible_collections.safedeploy.compose.plugins.module_utils._release_state import apply_ledger_action

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = ROOT / 'playbooks'
PROJECT_LABEL = 'com.docker.compose.project'
SERVICE_LABEL = 'com.docker.compose.service'


class RoleStack(object):

    def __init__(self, testbed, tmp_path, what, ports, docker_host=None):
        self.testbed = testbed
        self.what = what
        self.ports = dict(ports)  # service -> APP_PORT
        self.name = 'sdt-rec-%s-%s' % (what, uuid.uuid4().hex[:8])
        self.repos = dict((service, '%s/sdt-rec/%s-%s' % (testbed.registry, what, service)) for service in self.ports)
        self.root = Path(tmp_path) / self.name
        self.controller_dir = self.root / 'controller'
        self.project_src = self.root / 'host' / self.name
        self.state_dir = self.root / 'state'
        self.report_dir = self.root / 'reports'
        self.docker_host = docker_host or testbed.docker_host
        self.client = docker.DockerClient(base_url=self.docker_host, timeout=120)
        self.digests = {}  # release -> {service: digest}
        self.local_tags = []  # retags made on the main engine, removed by cleanup()
        self.controller_dir.mkdir(parents=True)
        self.template = self.controller_dir / 'compose.yaml.j2'
        lines = ['# {{ ansible_managed }}', 'services:']
        for service, port in sorted(self.ports.items()):
            lines += ['  %s:' % service,
                      '    image: %s:v1' % self.repos[service],
                      '    network_mode: host',
                      '    restart: unless-stopped',
                      '    environment:',
                      '      APP_PORT: "%d"' % port]
        self.template.write_text('\n'.join(lines) + '\n')

    # ------------------------------------------------------------ releases

    def release(self, release, source_tag=None, image=None):
        """Push release `release` of every service: the test bed's app:<source_tag> retagged, or `image`."""
        client = self.testbed.client()
        source = image or client.images.get(self.testbed.images[source_tag or release]['ref'])
        digests = {}
        for service, repo in self.repos.items():
            ref = '%s:%s' % (repo, release)
            source.tag(repo, release)
            if image is None:
                self.local_tags.append(ref)
            digests[service] = testbed_mod.push_if_needed(client, client.images.get(ref), ref)
        self.digests[release] = digests
        return digests

    def pinned_ref(self, service, release):
        return '%s@%s' % (self.repos[service], self.digests[release][service])

    # ------------------------------------------------------------ inventory

    def stack_vars(self):
        """One entry of safedeploy_stacks, as the playbooks read it."""
        return {
            'name': self.name,
            'project_src': str(self.project_src),
            'compose_templates': [{'src': str(self.template), 'dest': 'compose.yaml'}],
            'repositories': sorted(self.repos.values()),
            'health_checks': [{'name': '%s health' % service, 'type': 'http', 'json': {'status': 'ok'},
                               'url': 'http://127.0.0.1:%d/cgi-bin/health' % port}
                              for service, port in sorted(self.ports.items())],
        }

    def host_vars(self, **extra):
        host = {
            'ansible_connection': 'local',
            'ansible_python_interpreter': sys.executable,
            'safedeploy_stacks': [self.stack_vars()],
            'safedeploy_report_dir': str(self.report_dir),
            'rollout_state_dir': str(self.state_dir),
            'rollback_state_dir': str(self.state_dir),
            'vps_recovery_state_dir': str(self.state_dir),
            'disk_guard_state_dir': str(self.state_dir),
            'status_state_dir': str(self.state_dir),
            'rollout_health_timeout': 30,
            'rollout_health_interval': 1,
            'rollout_lock_wait': 10,
        }
        host.update(extra)
        return host

    def inventory(self, **extra):
        return {'all': {'hosts': {'localhost': self.host_vars(**extra)}}}

    # ------------------------------------------------------------ evidence

    def containers(self, client=None):
        client = client or self.client
        return client.containers.list(all=True, filters={'label': '%s=%s' % (PROJECT_LABEL, self.name)})

    def running_digests(self):
        """service -> (status, the repo digests of the image the container runs)."""
        found = {}
        for box in self.containers():
            image = self.client.images.get(box.attrs['Image'])
            found[box.labels[SERVICE_LABEL]] = (box.status, sorted(image.attrs.get('RepoDigests') or []))
        return found

    def assert_runs(self, release):
        """Every service runs, and runs the image the release pinned (by registry digest)."""
        running = self.running_digests()
        assert sorted(running) == sorted(self.ports), running
        for service in self.ports:
            status, repo_digests = running[service]
            assert status == 'running', (service, status)
            assert self.pinned_ref(service, release) in repo_digests, (service, release, repo_digests)

    def health(self, service):
        return requests.get('http://127.0.0.1:%d/cgi-bin/health' % self.ports[service], timeout=5).json()

    def ledger(self):
        return apply_ledger_action(str(self.state_dir), self.name, action='query')

    def statuses(self):
        return dict((item['id'], item['status']) for item in self.ledger()['releases'])

    def has_image(self, service, release):
        try:
            self.client.images.get(self.pinned_ref(service, release))
            return True
        except docker.errors.ImageNotFound:
            return False

    def report(self, release, host='localhost'):
        path = self.report_dir / release / ('%s-%s.json' % (host, self.name))
        return json.loads(path.read_text())

    # ------------------------------------------------------------ cleanup

    def cleanup(self):
        """Remove the project's containers on its engine (and on the main one, should any have landed there)."""
        clients = [self.client]
        if self.docker_host != self.testbed.docker_host:
            clients.append(self.testbed.client())
        for client in clients:
            for box in self.containers(client):
                try:
                    box.remove(force=True)
                except docker.errors.NotFound:
                    pass
        main = self.testbed.client()
        for ref in self.local_tags:
            try:
                main.images.remove(ref, noprune=True)
            except docker.errors.APIError:
                pass  # still used by a container of another test, or already gone
        self.client.close()


def remove_leftover_projects(client, prefix):
    """Containers of an earlier, interrupted run of a test file (only projects named with `prefix`)."""
    for item in client.api.containers(all=True, filters={'label': PROJECT_LABEL}):
        if (item.get('Labels') or {}).get(PROJECT_LABEL, '').startswith(prefix):
            client.api.remove_container(item['Id'], force=True)


# ---------------------------------------------------------------- the small-disk engine

disk_usage = testbed_mod.disk_usage  # pylint: disable=invalid-name


@contextlib.contextmanager
def holding_small_engine(small_engine):
    """The small engine to oneself: the flock test_disk_reclaim.py takes, and back to how it was found afterwards.

    Whatever appeared on the engine while the lock was held (containers, images, volumes) was made by the
    holder, so it is removed when the lock is given back.
    """
    lock_path = os.path.join(os.path.dirname(small_engine.mountpoint), 'sdt-small-engine.lock')
    client = docker.DockerClient(base_url=small_engine.docker_host, timeout=120)
    with open(lock_path, 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = (set(box.id for box in client.containers.list(all=True)),
                  set(image.id for image in client.images.list(all=True)),
                  set(volume.name for volume in client.volumes.list()))
        try:
            yield client
        finally:
            for box in client.containers.list(all=True):
                if box.id not in before[0]:
                    box.remove(force=True)
            for image in client.images.list(all=True):
                if image.id not in before[1]:
                    try:
                        client.images.remove(image.id, force=True)
                    except docker.errors.NotFound:
                        pass  # went with a child image removed before it
            for volume in client.volumes.list():
                if volume.name not in before[2]:
                    volume.remove(force=True)
            client.close()
