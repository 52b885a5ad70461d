"""Issue 17 against the real engine and registry: every stack owns its pinned override, and its logs are bounded.

- Two stacks (two compose projects) whose compose files share one directory roll out and back independently:
  each has its own override, compose.<project>.release.yml, pinning its own digests, and neither's
  `up --remove-orphans` ever removes the other's containers (only its own orphans).
- With rollout_log_bound, the services without `logging:` of their own log to json-file with max-size and
  max-file (a chatty service's log file stays capped); without it, the release report warns about them.

Images are the test bed's app images retagged as 127.0.0.1:5000/sdt-shd/<stack>-web:<release>. Projects are named
sdt-shd-<what>-<random>, on loopback ports 18800-18849 (network_mode: host).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import LOCAL_HOST_VARS, ROOT, PortRange, run_playbook, wait_until
from testbed import testbed as testbed_mod

PREFIX = 'sdt-shd'
REPO = '127.0.0.1:5000/' + PREFIX
PORTS = range(18800, 18850)
HEALTH_TIMEOUT = 30
PROJECT_LABEL = 'com.docker.compose.project'
SERVICE_LABEL = 'com.docker.compose.service'
# ~250 kB/s of log lines: enough to pass a 100k bound within a second, little enough for a shared engine
# `$$`: a literal `$` in a compose file (docker-compose v1 rejects a bare `$(`; v2 would interpolate `$line`)
CHATTY = ['sh', '-c', 'line=$$(printf "%0500d" 0); while :; do echo "$$line"; usleep 2000; done']

take_port = PortRange(PORTS).take


@pytest.fixture(scope='module', autouse=True)
def no_leftovers(testbed):
    """Containers of an earlier, interrupted run of this file (only sdt-shd-* projects)."""
    client = testbed.client()
    for item in client.api.containers(all=True, filters={'label': PROJECT_LABEL}):
        if (item.get('Labels') or {}).get(PROJECT_LABEL, '').startswith(PREFIX + '-'):
            client.api.remove_container(item['Id'], force=True)
    yield


class Stack(object):
    """One compose project whose compose file is <src>/compose.<what>.yaml: several may share src."""

    def __init__(self, testbed, src, what, services):
        self.client = testbed.client()
        self.testbed = testbed
        self.src = Path(src)
        self.what = what
        self.project = '%s-%s-%s' % (PREFIX, what, uuid.uuid4().hex[:6])
        self.repo = '%s/%s-web' % (REPO, what)
        self.compose_file = self.src / ('compose.%s.yaml' % what)
        self.state_dir = self.src.parent / 'state'
        self.reports = self.src.parent / 'reports'
        self.port = take_port()
        self.digests = {}
        self.write(services)

    def write(self, services):
        """services: {name: extra keys}; every service runs this stack's image, `web` serves the health check."""
        doc = {}
        for name, extra in services.items():
            spec = {'image': '%s:r1' % self.repo, 'network_mode': 'host', 'restart': 'unless-stopped',
                    'environment': {'APP_PORT': str(self.port)}}
            spec.update(extra)
            doc[name] = spec
        self.compose_file.write_text(yaml.safe_dump({'services': doc}, sort_keys=False))

    def push(self, release, source_tag):
        source = self.client.images.get(self.testbed.images[source_tag]['ref'])
        ref = '%s:%s' % (self.repo, release)
        source.tag(ref)
        self.digests[release] = testbed_mod.push_if_needed(self.client, self.client.images.get(ref), ref)
        return self.digests[release]

    @property
    def override(self):
        return self.src / ('compose.%s.release.yml' % self.project)

    def stack_vars(self, **extra):
        stack = {'name': self.project, 'project_src': str(self.src), 'compose_files': [self.compose_file.name],
                 'repositories': [self.repo],
                 'health_checks': [{'name': 'web health', 'type': 'http', 'json': {'status': 'ok'},
                                    'url': 'http://127.0.0.1:%d/cgi-bin/health' % self.port}]}
        stack.update(extra)
        return stack

    def run(self, playbook, stacks, extra_vars, **host_vars):
        hostvars = dict(LOCAL_HOST_VARS)
        hostvars.update({
            'safedeploy_stacks': [stack.stack_vars() for stack in stacks],
            'rollout_state_dir': str(self.state_dir), 'rollback_state_dir': str(self.state_dir),
            'rollout_health_timeout': HEALTH_TIMEOUT, 'rollout_health_interval': 1,
            'rollback_health_timeout': HEALTH_TIMEOUT, 'rollback_health_interval': 1,
            'safedeploy_report_dir': str(self.reports), 'rollout_download_check': False,
        })
        hostvars.update(host_vars)
        extra = {'stacks': [self.project]}
        extra.update(extra_vars)
        result = run_playbook(ROOT / 'playbooks' / playbook, inventory={'all': {'hosts': {'localhost': hostvars}}},
                              extra_vars=extra)
        assert result.rc == 0, result.output[-4000:]
        return result

    def report(self, release):
        return json.loads((self.reports / release / ('localhost-%s.json' % self.project)).read_text())

    def containers(self):
        return self.client.containers.list(all=True, filters={'label': '%s=%s' % (PROJECT_LABEL, self.project)})

    def running(self):
        """{service: (container id, StartedAt, digest of its pinned Config.Image)}; every container running."""
        found = {}
        for box in self.containers():
            assert box.status == 'running', '%s is %s' % (box.name, box.status)
            service = box.labels[SERVICE_LABEL]
            assert service not in found, 'two containers of %s' % service
            ref = box.attrs['Config']['Image']
            assert '@sha256:' in ref, '%s runs the unpinned %s' % (box.name, ref)
            found[service] = (box.id, box.attrs['State']['StartedAt'], ref.split('@', 1)[1])
        return found

    def pins(self):
        """{service: pinned image} of this stack's override file."""
        return dict((name, spec.get('image')) for name, spec in
                    yaml.safe_load(self.override.read_text())['services'].items())

    def down(self):
        for box in self.containers():
            box.remove(force=True)
        try:
            self.client.images.remove('%s:r1' % self.repo, noprune=True)
            self.client.images.remove('%s:r2' % self.repo, noprune=True)
        except Exception:  # still used, or already gone
            pass


@pytest.fixture
def make_stack(testbed, tmp_path):
    made = []

    def make(src, what, services):
        Path(src).mkdir(parents=True, exist_ok=True)
        stack = Stack(testbed, src, what, services)
        made.append(stack)
        return stack
    yield make
    for stack in made:
        stack.down()


def legacy_override(project):
    return ('# Generated by safedeploy.compose.compose_pin for release r0 of project %s. Do not edit:\n'
            '# every rollout rewrites it. It pins each service to the image digest resolved for the release.\n'
            'services:\n  web:\n    image: "127.0.0.1:5000/nothing:r0@sha256:%s"\n' % (project, 'a' * 64))


@pytest.mark.compose_cli
def test_two_stacks_in_one_directory_roll_out_and_back_independently(make_stack, tmp_path):
    src = tmp_path / 'shared'
    a = make_stack(src, 'a', {'web': {}, 'aux': {'command': ['sleep', '3600']}})
    b = make_stack(src, 'b', {'web': {}})
    for stack in (a, b):
        stack.push('r1', 'v1')
        stack.push('r2', 'v2')
    # the shared override of an earlier release of the collection, last written for b
    legacy = src / 'compose.release.yml'
    legacy.write_text(legacy_override(b.project))

    a.run('rollout.yml', [a, b], {'release': 'r1'})
    b.run('rollout.yml', [a, b], {'release': 'r1'})
    assert a.override != b.override
    assert a.pins() == {'web': '%s:r1@%s' % (a.repo, a.digests['r1']), 'aux': '%s:r1@%s' % (a.repo, a.digests['r1'])}
    assert b.pins() == {'web': '%s:r1@%s' % (b.repo, b.digests['r1'])}
    assert not legacy.exists()  # b's own old override: gone once b pinned into its own file
    b_r1 = b.running()
    assert dict((s, d) for s, (_i, _t, d) in b_r1.items()) == {'web': b.digests['r1']}

    # a drops a service at r2: that container is a's orphan and goes; b's containers are no orphans of a
    a.write({'web': {}})
    a.run('rollout.yml', [a, b], {'release': 'r2'})
    a_r2 = a.running()
    assert sorted(a_r2) == ['web'] and a_r2['web'][2] == a.digests['r2']
    assert b.running() == b_r1, 'the rollout of a touched the containers of b'
    assert b.pins() == {'web': '%s:r1@%s' % (b.repo, b.digests['r1'])}

    b.run('rollout.yml', [a, b], {'release': 'r2'})
    b_r2 = b.running()
    assert b_r2['web'][2] == b.digests['r2']
    assert a.running() == a_r2, 'the rollout of b touched the containers of a'
    assert a.pins() == {'web': '%s:r2@%s' % (a.repo, a.digests['r2'])}

    # a back to r1: its own files come back (aux with them), b stays on r2 with its own pins
    a.run('rollback.yml', [a, b], {'apply': True, 'to': 'r1'})
    back = a.running()
    assert dict((s, d) for s, (_i, _t, d) in back.items()) == {'web': a.digests['r1'], 'aux': a.digests['r1']}
    assert a.pins() == {'web': '%s:r1@%s' % (a.repo, a.digests['r1']), 'aux': '%s:r1@%s' % (a.repo, a.digests['r1'])}
    assert b.running() == b_r2, 'the rollback of a touched the containers of b'
    assert b.pins() == {'web': '%s:r2@%s' % (b.repo, b.digests['r2'])}
    assert not legacy.exists()


def log_config(box):
    box.reload()
    return box.attrs['HostConfig']['LogConfig'], box.attrs['LogPath']


@pytest.mark.compose_cli
def test_log_bound_caps_the_logs_and_unbounded_logs_are_reported(make_stack, tmp_path):
    stack = make_stack(tmp_path / 'src', 'logs', {'web': {}, 'chatty': {'command': CHATTY},
                                                  'quiet': {'command': ['sleep', '3600'],
                                                            'logging': {'driver': 'json-file',
                                                                        'options': {'max-size': '1m'}}}})
    stack.push('r1', 'v1')
    stack.push('r2', 'v2')

    stack.run('rollout.yml', [stack], {'release': 'r1'})
    report = stack.report('r1')
    assert report['result'] == 'deployed'
    assert report['log_bounded'] == []
    assert len(report['warnings']) == 1, report['warnings']
    assert 'chatty, web of %s' % stack.project in report['warnings'][0]  # quiet has its own bound
    assert 'rollout_log_bound' in report['warnings'][0] and 'daemon.json' in report['warnings'][0]
    chatty = [box for box in stack.containers() if box.labels[SERVICE_LABEL] == 'chatty'][0]
    config, _path = log_config(chatty)
    assert config['Type'] == 'json-file' and 'max-size' not in (config.get('Config') or {})

    stack.run('rollout.yml', [stack], {'release': 'r2'}, rollout_log_bound={'max_size': '100k', 'max_file': 2})
    report = stack.report('r2')
    assert report['result'] == 'deployed'
    assert report['log_bounded'] == ['chatty', 'web']
    assert report['warnings'] == []
    override = yaml.safe_load(stack.override.read_text())['services']
    assert override['chatty']['logging'] == {'driver': 'json-file', 'options': {'max-size': '100k', 'max-file': '2'}}
    assert 'logging' not in override['quiet']
    boxes = dict((box.labels[SERVICE_LABEL], box) for box in stack.containers())
    config, path = log_config(boxes['chatty'])
    assert config == {'Type': 'json-file', 'Config': {'max-size': '100k', 'max-file': '2'}}
    assert log_config(boxes['quiet'])[0]['Config'] == {'max-size': '1m'}  # its own logging, untouched
    # the chatty service writes ~250 kB/s: its log rotates and the live file stays within the bound
    wait_until(lambda: os.path.exists(path + '.1'), 30, 'a rotation of the chatty log')
    time.sleep(2)
    sizes = [os.path.getsize(name) for name in (path, path + '.1')]
    assert not os.path.exists(path + '.2'), 'max-file 2 keeps two files'
    assert max(sizes) <= 100 * 1024 + 1024, sizes  # one json line over at most
