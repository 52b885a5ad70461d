"""The fleet rollout playbook: a canary, then batches; one failing host takes the fleet back to one version.

Three inventory hosts share this machine's engine (connection local), each with its own compose project
and port, so the batching, the fleet-wide restore and the recap are exercised for real.
"""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from conftest import LOCAL_HOST_VARS, ROOT
from testbed import testbed as bed_mod

PORTS = {'fleet1': 18591, 'fleet2': 18592, 'fleet3': 18593}
REPO = '127.0.0.1:5000/sdt-fleet/app'


@pytest.fixture(scope='module')
def fleet(testbed, tmp_path_factory):
    client = testbed.client()
    for release in ('v1', 'v2'):
        image = client.images.get('%s:%s' % (testbed.app_repo, release))
        image.tag(REPO, release)
        bed_mod.push(client, '%s:%s' % (REPO, release))
    root = tmp_path_factory.mktemp('fleet')
    run = uuid.uuid4().hex[:6]
    hosts = {}
    for name, port in PORTS.items():
        project = 'sdt-fleet-%s-%s' % (name, run)
        src = root / project
        src.mkdir()
        (src / 'compose.yaml').write_text(
            'services:\n  app:\n    image: %s:v1\n    network_mode: host\n    restart: unless-stopped\n'
            '    environment:\n      APP_PORT: "%d"\n' % (REPO, port))
        hosts[name] = dict(LOCAL_HOST_VARS, safedeploy_stacks=[{
            'name': project, 'project_src': str(src), 'repositories': [REPO],
            'health_checks': [{'name': 'app health', 'type': 'http', 'url': 'http://127.0.0.1:%d/cgi-bin/health' % port}],
        }])
    inventory = {'all': {'hosts': hosts, 'vars': {
        'rollout_state_dir': str(root / 'state'), 'rollback_state_dir': str(root / 'state'),
        'rollout_health_timeout': 15, 'rollout_health_interval': 1, 'rollback_health_interval': 1,
        'rollout_batches': [1, 1, 1]}}}
    yield inventory, root
    for spec in hosts.values():
        project = spec['safedeploy_stacks'][0]['name']
        ids = subprocess.run(['docker', 'ps', '-aq', '--filter', 'label=com.docker.compose.project=' + project],
                             capture_output=True, text=True, check=False).stdout.split()
        if ids:
            subprocess.run(['docker', 'rm', '-f'] + ids, capture_output=True, check=False)


def ledger(root, project):
    return json.loads((root / 'state' / project / 'releases.json').read_text())


def running_version(port):
    return subprocess.run(['curl', '-s', 'http://127.0.0.1:%d/cgi-bin/health' % port], capture_output=True, text=True,
                          check=False).stdout


def test_a_failing_host_takes_the_moved_hosts_back(fleet, run_playbook):
    inventory, root = fleet
    playbook = ROOT / 'playbooks' / 'rollout.yml'
    first = run_playbook(playbook, inventory, {'release': 'v1'})
    assert first.rc == 0, first.output[-4000:]
    assert all(counts['failed'] == 0 for counts in first.recap.values())

    # v2 breaks on fleet3 only: its probe looks at a port nothing listens on.
    inventory['all']['hosts']['fleet3']['safedeploy_stacks'][0]['health_checks'][0]['url'] = 'http://127.0.0.1:18599/cgi-bin/health'
    second = run_playbook(playbook, inventory, {'release': 'v2'})
    assert second.rc != 0, 'a fleet rollout with a failed host must fail'
    assert second.recap['fleet3']['failed'] == 1
    assert second.recap['fleet1']['failed'] == 0 and second.recap['fleet2']['failed'] == 0
    assert 'failed on fleet3' in second.stdout and 'fleet is on one version again' in second.stdout

    for name, port in PORTS.items():
        project = inventory['all']['hosts'][name]['safedeploy_stacks'][0]['name']
        data = ledger(root, project)
        statuses = dict((record['id'], record['status']) for record in data['releases'])
        assert data['current'] == 'v1', (name, statuses)
        assert statuses['v1'] == 'good'
        assert statuses['v2'] == ('failed' if name == 'fleet3' else 'rolled_back'), (name, statuses)
        assert '"version": "v1"' in running_version(port), name
