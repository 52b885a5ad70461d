"""Proof that the test bed is what the other tests take it for.

- both registries accept a push (the second only with its htpasswd credentials), give the pushed
  manifest's digest back over the Registry HTTP API, and serve it to a pull by digest from which a
  container runs and answers on 127.0.0.1;
- the small engine is a second dockerd on its own ~400 MB filesystem, and filling it makes a pull
  fail with "no space left on device", the failure disk_reclaim exists for.

Pushes go to sdt-reclaim/testbed:proof-<random>; containers use network_mode host with APP_PORT
in 18400-18499. Fixtures delete the pushed manifests and every local tag, container and image.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
import uuid

import docker
import pytest
import requests

from ansible_collections.safedeploy.compose.plugins.module_utils._engine import describe_engine_error, is_no_space_error
from testbed import testbed as testbed_mod

pytestmark = [pytest.mark.xdist_group('small_engine')]

PORTS = range(18400, 18500)
MANIFEST_V2 = 'application/vnd.docker.distribution.manifest.v2+json'
FILL_COUNT = 9  # seven 40 MB images fit the 400 MB disk; an eighth pull must fail


def free_port_in_range():
    for port in PORTS:
        with socket.socket() as sock:
            try:
                sock.bind(('127.0.0.1', port))
            except OSError:
                continue
            return port
    raise AssertionError('no free port in 18400-18499')


def push(api, repo, tag, auth=None):
    """(digest, error) of a push, read from the engine's progress stream."""
    digest = None
    for line in api.push(repo, tag=tag, stream=True, decode=True, auth_config=auth):
        if 'error' in line:
            return None, line['error']
        digest = (line.get('aux') or {}).get('Digest', digest)
    return digest, None


def pull_error(api, repo, tag, auth=None):
    """The error a pull of repo:tag ended with, or None when it worked.

    By tag, because the engine must then ask the registry what the tag points to; a pull by a
    digest whose manifest the engine cached (it does after a push) never reaches the registry.
    """
    try:
        for line in api.pull(repo, tag=tag, stream=True, decode=True, auth_config=auth):
            if 'error' in line:
                return line['error']
    except docker.errors.APIError as exc:
        return str(exc)
    return None


class Scratch:
    """What a registry test creates: pushed manifests, local names, containers (all removed after)."""

    def __init__(self, testbed):
        self.testbed = testbed
        self.client = docker.DockerClient(base_url=testbed.docker_host, timeout=120)
        self.manifests = []   # (registry, repo, digest, auth)
        self.refs = []
        self.containers = []

    def repo(self, registry):
        """One repository per registry, a new tag per run: a registry never forgets a repository's name."""
        return '%s/sdt-reclaim/testbed' % registry, 'proof-%s' % uuid.uuid4().hex[:8]

    def forget_local_names(self, repo, tag, digest):
        """Drop `repo:tag` and `repo@digest` locally: the next pull must come from the registry.

        Returns `repo@digest`, which stays in the cleanup list for the pull to come.
        """
        pinned = '%s@%s' % (repo, digest)
        self.refs.append(pinned)
        for ref in ('%s:%s' % (repo, tag), pinned):
            try:
                self.client.images.remove(ref)
            except docker.errors.NotFound:
                pass
        with pytest.raises(docker.errors.ImageNotFound):
            self.client.images.get(pinned)
        return pinned

    def run_app(self, ref):
        port = free_port_in_range()
        box = self.client.containers.run(ref, name='sdt-reclaim-testbed-%s' % uuid.uuid4().hex[:8], detach=True,
                                         network_mode='host', environment={'APP_PORT': str(port)})
        self.containers.append(box.id)
        deadline = time.monotonic() + 20
        while True:
            try:
                resp = requests.get('http://127.0.0.1:%d/cgi-bin/health' % port, timeout=2)
                if resp.status_code == 200:
                    return resp.json()
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, 'container from %s never answered on 127.0.0.1:%d' % (ref, port)
            time.sleep(0.2)

    def cleanup(self):
        for container_id in self.containers:
            try:
                self.client.containers.get(container_id).remove(force=True)
            except docker.errors.NotFound:
                pass
        for ref in self.refs:
            try:
                self.client.images.remove(ref)  # only a name of ours: untags, never deletes the shared app image
            except docker.errors.NotFound:
                pass
        for registry, repo, digest, auth in self.manifests:
            requests.delete('http://%s/v2/%s/manifests/%s' % (registry, repo.split('/', 1)[1], digest), auth=auth,
                            timeout=10)
        self.client.close()


@pytest.fixture
def scratch(testbed, tmp_path, monkeypatch):
    # An empty client config: no credentials from ~/.docker/config.json may reach the auth registry.
    monkeypatch.setenv('DOCKER_CONFIG', str(tmp_path))
    bed = Scratch(testbed)
    try:
        yield bed
    finally:
        bed.cleanup()


def manifest(registry, repo, reference, auth=None):
    resp = requests.get('http://%s/v2/%s/manifests/%s' % (registry, repo.split('/', 1)[1], reference),
                        headers={'Accept': MANIFEST_V2}, auth=auth, timeout=10)
    return resp


def test_open_registry_push_digest_and_run(testbed, scratch):
    source = scratch.client.images.get(testbed.images['v1']['ref'])
    repo, tag = scratch.repo(testbed.registry)
    source.tag(repo, tag)
    scratch.refs.append('%s:%s' % (repo, tag))

    digest, error = push(scratch.client.api, repo, tag)
    assert error is None and digest and digest.startswith('sha256:')
    scratch.manifests.append((testbed.registry, repo, digest, None))
    # Read back over the Registry API: the same digest, and the manifest's config is this very image.
    assert testbed_mod.registry_digest('%s:%s' % (repo, tag)) == digest
    resp = manifest(testbed.registry, repo, tag)
    assert resp.status_code == 200 and resp.json()['config']['digest'] == source.id

    pinned = scratch.forget_local_names(repo, tag, digest)
    assert pull_error(scratch.client.api, repo, tag) is None
    assert scratch.client.images.get(pinned).id == source.id
    health = scratch.run_app(pinned)
    assert health['status'] == 'ok' and health['version'] == 'v1'


def test_auth_registry_needs_credentials_for_push_api_and_pull(testbed, scratch):
    auth = {'username': testbed.auth_user, 'password': testbed.auth_password}
    basic = (testbed.auth_user, testbed.auth_password)
    source = scratch.client.images.get(testbed.images['v2']['ref'])
    repo, tag = scratch.repo(testbed.auth_registry)
    source.tag(repo, tag)
    scratch.refs.append('%s:%s' % (repo, tag))

    digest, error = push(scratch.client.api, repo, tag)
    assert digest is None and ('basic auth' in error or 'unauthorized' in error.lower()), error
    digest, error = push(scratch.client.api, repo, tag, auth=auth)
    assert error is None and digest and digest.startswith('sha256:')
    scratch.manifests.append((testbed.auth_registry, repo, digest, basic))

    assert manifest(testbed.auth_registry, repo, tag).status_code == 401
    assert testbed_mod.registry_digest('%s:%s' % (repo, tag), auth=basic) == digest
    assert manifest(testbed.auth_registry, repo, tag, auth=basic).json()['config']['digest'] == source.id

    pinned = scratch.forget_local_names(repo, tag, digest)
    anonymous = pull_error(scratch.client.api, repo, tag)
    assert anonymous and ('basic auth' in anonymous or 'unauthorized' in anonymous.lower()), anonymous
    assert pull_error(scratch.client.api, repo, tag, auth=auth) is None
    health = scratch.run_app(pinned)
    assert health['status'] == 'ok' and health['version'] == 'v2'


@pytest.fixture
def small(small_engine):
    lock_path = os.path.join(os.path.dirname(small_engine.mountpoint), 'sdt-small-engine.lock')
    with open(lock_path, 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # filling tests must not overlap (see test_disk_reclaim.py)
        client = docker.DockerClient(base_url=small_engine.docker_host, timeout=120)
        before = set(image.id for image in client.images.list())
        try:
            yield small_engine, client
        finally:
            for image in client.images.list():
                if image.id not in before:
                    client.images.remove(image.id, force=True)
            client.close()


def test_small_engine_is_a_second_dockerd_on_its_own_small_filesystem(testbed, small):
    engine, client = small
    info = client.info()
    assert info['DockerRootDir'].startswith(engine.mountpoint + '/')
    assert info['DockerRootDir'] != testbed.client().info()['DockerRootDir']
    assert os.stat(engine.mountpoint).st_dev != os.stat(testbed.client().info()['DockerRootDir']).st_dev
    assert 350 << 20 <= engine.size_bytes <= 420 << 20
    assert info['Driver'] == 'overlay2'


def test_filling_the_small_engine_makes_a_pull_fail_with_no_space(testbed, small):
    engine, client = small
    refs = testbed_mod.ensure_big_images(testbed.client(), FILL_COUNT, 40)
    failure = None
    for count, ref in enumerate(refs, start=1):
        failure = pull_error(client.api, *ref.rsplit(':', 1))
        if failure:
            break
    assert failure, 'pulled %d x 40 MB onto the %d MB disk without running out of space' % (
        len(refs), engine.size_bytes >> 20)
    assert 'no space left on device' in failure
    assert count >= 5, 'the disk was already nearly full before the test: %s' % failure
    stat = os.statvfs(engine.mountpoint)
    assert stat.f_bavail * stat.f_frsize < 100 << 20
    # The message modules give for it names the cause and the way out.
    exc = docker.errors.APIError(failure)
    assert is_no_space_error(exc)
    assert 'disk_reclaim' in describe_engine_error(exc, engine.docker_host, 'pull %s' % ref)
    # The engine survives a full disk: once room is made the same pull works.
    client.images.remove(refs[0], force=True)
    client.images.remove(refs[1], force=True)
    assert pull_error(client.api, *ref.rsplit(':', 1)) is None
