"""The rollout role over real SSH to 127.0.0.1: the collection works on a remote host, not only with connection: local.

The test bed starts Debian's sshd on 127.0.0.1:2222 with its own config, host key and pid file, and lets root in
by the test bed's key only (testbed.ssh_up()). The inventory reaches localhost through it with ansible_connection
ssh; modules run with this venv's Python (it has docker and requests). Project sdt-rec-ssh-<random>, ports
18701-18702, images 127.0.0.1:5000/sdt-rec/ssh-{web,worker}:<release>.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from testbed import testbed as testbed_mod

from role_stack import PLAYBOOKS, RoleStack, remove_leftover_projects

PORTS = {'web': 18701, 'worker': 18702}


@pytest.fixture(scope='module')
def ssh_server(testbed):
    was_up = testbed_mod._ssh_banner(testbed_mod.SSH_PORT)
    server = testbed_mod.ssh_up()
    yield server
    if not was_up:
        testbed_mod.ssh_down()


@pytest.fixture
def stack(testbed, tmp_path):
    remove_leftover_projects(testbed.client(), 'sdt-rec-ssh-')
    stack = RoleStack(testbed, tmp_path, 'ssh', PORTS)
    yield stack
    stack.cleanup()


def ssh_inventory(stack, server):
    host = stack.host_vars(
        ansible_connection='ssh',
        ansible_host=server.host,
        ansible_port=server.port,
        ansible_user=server.user,
        ansible_ssh_private_key_file=server.key_path,
        ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes',
        ansible_python_interpreter=sys.executable,
    )
    return {'all': {'hosts': {'remote': host}}}


def test_ssh_server_takes_the_test_bed_key_only(ssh_server):
    base = ['ssh', '-p', str(ssh_server.port), '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
            '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10']
    by_key = subprocess.run(base + ['-i', ssh_server.key_path, '%s@%s' % (ssh_server.user, ssh_server.host), 'id -u'],
                            capture_output=True, text=True, timeout=30, check=False)
    assert by_key.returncode == 0 and by_key.stdout.strip() == '0', by_key.stderr
    no_key = subprocess.run(base + ['-o', 'IdentitiesOnly=yes', '-o', 'IdentityFile=/dev/null',
                                    '%s@%s' % (ssh_server.user, ssh_server.host), 'true'],
                            capture_output=True, text=True, timeout=30, check=False)
    assert no_key.returncode == 255 and 'Permission denied (publickey)' in no_key.stderr, no_key.stderr
    listening = subprocess.run(['ss', '-Hltn', 'sport = :%d' % ssh_server.port], capture_output=True, text=True,
                               check=True)
    assert [line.split()[3] for line in listening.stdout.splitlines()] == ['127.0.0.1:%d' % ssh_server.port]
    assert testbed_mod.ssh_up() == ssh_server  # idempotent


def test_rollout_over_ssh(stack, ssh_server, run_playbook):
    stack.release('v1')
    stack.release('v2')
    inventory = ssh_inventory(stack, ssh_server)

    first = run_playbook(PLAYBOOKS / 'rollout.yml', inventory, extra_vars={'release': 'v1'})
    assert first.rc == 0, first.output[-4000:]
    stack.assert_runs('v1')

    second = run_playbook(PLAYBOOKS / 'rollout.yml', inventory, extra_vars={'release': 'v2'}, args=['-vvv'])
    assert second.rc == 0, second.output[-4000:]
    assert second.recap['remote']['failed'] == 0 and second.recap['remote']['changed'] > 0, second.recap

    # The connection really was SSH, to the test bed's sshd, as root with its key: every collection module ran
    # through it; only the release report is written on the controller (delegate_to: localhost).
    out = second.output
    assert 'ESTABLISH SSH CONNECTION FOR USER: root' in out
    assert '-o Port=%d' % ssh_server.port in out and 'IdentityFile="%s"' % ssh_server.key_path in out
    modules = re.findall(r'Using module file \S+/safedeploy/compose/plugins/modules/(\w+)\.py\n(?:.*\n)??'
                         r'<([^>]+)> ESTABLISH (\w+) CONNECTION', out)
    assert set(name for name, _host, _kind in modules) >= {'stack_lock', 'disk_reclaim', 'compose_pin', 'last_good_tag',
                                                           'health_gate'}, modules
    assert set((host, kind) for _name, host, kind in modules) == {('127.0.0.1', 'SSH')}, modules
    assert set(re.findall(r'<([^>]+)> ESTABLISH LOCAL CONNECTION', out)) <= {'localhost'}
    log = (testbed_mod.LOGS / 'sshd.log').read_text()
    assert 'Accepted publickey for root from 127.0.0.1' in log

    # The release is live: the containers run v2's pinned digests, the ledger has v2 good over v1.
    stack.assert_runs('v2')
    assert stack.health('web')['version'] == 'v2' and stack.health('worker')['version'] == 'v2'
    ledger = stack.ledger()
    assert ledger['current']['id'] == 'v2' and ledger['current']['status'] == 'good'
    assert ledger['last_good']['id'] == 'v2'
    assert stack.statuses() == {'v1': 'superseded', 'v2': 'good'}
    for service in PORTS:
        assert ledger['current']['services'][service]['digest'] == stack.digests['v2'][service]
    report = stack.report('v2', host='remote')
    assert report['host'] == 'remote' and report['result'] == 'deployed' and report['previous'] == 'v1'
    assert report['digests'] == stack.digests['v2'], report['digests']
