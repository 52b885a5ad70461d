"""The rollout role over real SSH to 127.0.0.1: the collection works on a remote host, not only with connection: local.

The test bed starts Debian's sshd on 127.0.0.1:2222 with its own config, host key and pid file, and lets root and
a sudo user (testbed.SSH_SUDO_USER, passwordless sudo, not in the docker group) in by the test bed's key only
(testbed.ssh_up()). The inventory reaches localhost through it with ansible_connection ssh; modules run with this
venv's Python (it has PyYAML). Project sdt-rec-ssh-<random>, ports 18701-18702, images
127.0.0.1:5000/sdt-rec/ssh-{web,worker}:<release>.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys

import pytest

from testbed import testbed as testbed_mod

from conftest import ROOT
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


def ssh_inventory(stack, server, **extra):
    host = stack.host_vars(
        ansible_connection='ssh',
        ansible_host=server.host,
        ansible_port=server.port,
        ansible_user=server.user,
        ansible_ssh_private_key_file=server.key_path,
        ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes',
        ansible_python_interpreter=sys.executable,
        **extra
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


# ---------------------------------------------------------------- a deploy user with sudo (become: true)

@pytest.fixture
def controller_without_sudo(tmp_path):
    """The environment of a controller where sudo cannot succeed, and the file that records each attempt.

    `sudo` on the controller's PATH is a stub that notes its arguments and fails. The tests run as root, and Ansible
    skips become from root to root; ANSIBLE_BECOME_ALLOW_SAME_USER makes it escalate anyway, as it would for the
    usual controller user (a laptop's, AWX's), so a controller-side task that escalates is caught. The host's sudo
    is reached over SSH with sshd's own PATH, so the stub never stands in for it.
    """
    bin_dir = tmp_path / 'controller-bin'
    bin_dir.mkdir()
    calls = tmp_path / 'controller-sudo.calls'
    stub = bin_dir / 'sudo'
    stub.write_text('#!/bin/sh\nprintf \'%%s\\n\' "$*" >> %s\nexit 1\n' % shlex.quote(str(calls)))
    stub.chmod(0o755)
    path = os.pathsep.join([str(bin_dir), str(ROOT / '.venv' / 'bin'), os.environ.get('PATH', '')])
    return {'PATH': path, 'ANSIBLE_BECOME_ALLOW_SAME_USER': 'true'}, calls


def sudo_log_entries(since):
    """The commands sudo ran for the test bed's sudo user since byte `since` of its log (sudo's own logfile)."""
    path = testbed_mod.SUDO_LOG
    if not path.exists():
        return []
    with open(path, 'rb') as handle:
        handle.seek(since)
        return [line for line in handle.read().decode('utf-8', 'replace').splitlines()
                if ' : %s : ' % testbed_mod.SSH_SUDO_USER in line]


def sudo_log_size():
    return testbed_mod.SUDO_LOG.stat().st_size if testbed_mod.SUDO_LOG.exists() else 0


def assert_state_is_roots(state_dir):
    """What the modules wrote on the host through sudo: root's, directories 0700 and files 0600."""
    found = 0
    for directory, dirs, files in os.walk(state_dir):
        for name in [''] + dirs + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            want = 0o700 if stat.S_ISDIR(info.st_mode) else 0o600
            assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, want), (path, info)
            found += 1
    assert found > 3, 'nothing in %s' % state_dir


def test_sudo_user_logs_in_by_key_and_reaches_root_through_sudo(ssh_server):
    user = testbed_mod.ssh_sudo_server(ssh_server)
    base = ['ssh', '-p', str(user.port), '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
            '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10']
    by_key = subprocess.run(base + ['-i', user.key_path, '%s@%s' % (user.user, user.host), 'id -u; sudo -n id -u'],
                            capture_output=True, text=True, timeout=30, check=False)
    assert by_key.returncode == 0, by_key.stderr
    uid, root = by_key.stdout.split()
    assert int(uid) != 0 and root == '0'
    no_key = subprocess.run(base + ['-o', 'IdentitiesOnly=yes', '-o', 'IdentityFile=/dev/null',
                                    '%s@%s' % (user.user, user.host), 'true'],
                            capture_output=True, text=True, timeout=30, check=False)
    assert no_key.returncode == 255 and 'Permission denied (publickey)' in no_key.stderr, no_key.stderr
    sudoers = os.stat(testbed_mod.SUDOERS)
    assert (sudoers.st_uid, stat.S_IMODE(sudoers.st_mode)) == (0, 0o440)
    assert subprocess.run(['visudo', '-cf', str(testbed_mod.SUDOERS)], capture_output=True, check=False).returncode == 0


def test_rollout_over_ssh_as_a_sudo_user(stack, ssh_server, run_playbook, controller_without_sudo):
    """A deploy user with sudo: the host's work is done as root, the controller's (the report) never escalates."""
    env, controller_sudo = controller_without_sudo
    user = testbed_mod.ssh_sudo_server(ssh_server)
    stack.release('v1')
    stack.release('v2')
    stack.release('v3')  # crash-loops
    inventory = ssh_inventory(stack, user)
    as_group_var = dict(inventory, all=dict(inventory['all'], vars={'ansible_become': True}))

    # become from the inventory (group_vars/all does the same): the implicit localhost gets it too
    first = run_playbook(PLAYBOOKS / 'rollout.yml', as_group_var, extra_vars={'release': 'v1'}, env=env)
    assert first.rc == 0, first.output[-4000:]
    assert not controller_sudo.exists(), controller_sudo.read_text()
    stack.assert_runs('v1')

    # become for every play, from the command line (AWX's "privilege escalation")
    sudo_before = sudo_log_size()
    second = run_playbook(PLAYBOOKS / 'rollout.yml', inventory, extra_vars={'release': 'v2'}, env=env,
                          args=['--become', '-vvv'])
    assert second.rc == 0, second.output[-4000:]
    assert not controller_sudo.exists(), controller_sudo.read_text()
    assert second.recap['remote']['failed'] == 0 and second.recap['remote']['changed'] > 0, second.recap
    out = second.output
    assert 'ESTABLISH SSH CONNECTION FOR USER: %s' % user.user in out
    assert 'ESTABLISH SSH CONNECTION FOR USER: root' not in out
    assert 'Accepted publickey for %s from 127.0.0.1' % user.user in (testbed_mod.LOGS / 'sshd.log').read_text()
    # the host side went through the host's sudo, to root, running the modules' Python
    ran = sudo_log_entries(sudo_before)
    assert ran and all('USER=root' in line for line in ran), ran
    assert any(sys.executable in line for line in ran), ran
    stack.assert_runs('v2')
    assert stack.statuses() == {'v1': 'superseded', 'v2': 'good'}
    assert_state_is_roots(stack.state_dir)
    # the report was written on the controller, by the controller's user
    report_file = stack.report_dir / 'v2' / ('remote-%s.json' % stack.name)
    info = report_file.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode), stat.S_IMODE(report_file.parent.stat().st_mode)) == \
        (os.getuid(), 0o600, 0o700)
    report = stack.report('v2', host='remote')
    assert report['result'] == 'deployed' and report['previous'] == 'v1'
    assert report['digests'] == stack.digests['v2'], report['digests']

    # a release that crash-loops goes back to v2 automatically; its report too is the controller's
    third = run_playbook(PLAYBOOKS / 'rollout.yml', as_group_var, extra_vars={'release': 'v3'}, env=env)
    assert third.rc != 0 and third.recap['remote']['failed'] > 0, third.output[-4000:]
    assert 'Rolled back to v2' in third.output, third.output[-4000:]
    assert not controller_sudo.exists(), controller_sudo.read_text()
    stack.assert_runs('v2')
    assert stack.statuses() == {'v1': 'superseded', 'v2': 'good', 'v3': 'failed'}
    assert_state_is_roots(stack.state_dir)
    report = stack.report('v3', host='remote')
    assert report['result'] == 'rolled_back' and report['previous'] == 'v2', report
