"""The rollout role under a signature policy (rollout_signature_policy, from the stack's `signature_policy` key).

One stack sdt-sig-role-<random> with two services (APP_PORT 19810, 19811), its releases the test bed's app images
pushed to 127.0.0.1:5000/sdt-rec/sig<random>-<service>, signed by the test bed's signer. The tests run in order on the
same stack: an unsigned first release is refused with nothing started, a signed one rolls out and the report and the
ledger name the key, check mode shows the verdicts, and an unsigned next release is refused while the signed one
keeps running untouched.
"""

from __future__ import annotations

import uuid

import pytest

from testbed import cosign_signer as cs
from testbed import testbed as testbed_mod

from role_stack import PLAYBOOKS, RoleStack, remove_leftover_projects

PORTS = {'web': 19810, 'api': 19811}


class SignedStack(RoleStack):
    """A RoleStack named sdt-sig-role-<random> whose stack entry carries a signature policy."""

    def __init__(self, testbed, tmp_path):
        # repositories of their own: a digest signed by an earlier run's key must not be found here
        super(SignedStack, self).__init__(testbed, tmp_path, 'sig%s' % uuid.uuid4().hex[:6], PORTS)
        self.name = 'sdt-sig-role-%s' % uuid.uuid4().hex[:8]
        self.project_src = self.root / 'host' / self.name
        self.key = cs.Key('ecdsa')
        self.signer = cs.Signer(cs.Registry(testbed_mod.REGISTRY))

    def stack_vars(self):
        entry = super(SignedStack, self).stack_vars()
        entry['signature_policy'] = [{'repository': '%s/sdt-rec/sig*' % testbed_mod.REGISTRY,
                                      'keys': [{'name': 'ci-test', 'pem': self.key.pem}]}]
        return entry

    def sign(self, release):
        for service, digest in self.digests[release].items():
            repository = self.repos[service].split('/', 1)[1]
            if service == 'web':
                self.signer.sign_bundle(repository, digest, self.key)
            else:
                self.signer.sign_legacy(repository, digest, self.key)


@pytest.fixture(scope='module')
def stack(testbed, tmp_path_factory):
    remove_leftover_projects(testbed.client(), 'sdt-sig-')
    made = SignedStack(testbed, tmp_path_factory.mktemp('sig'))
    yield made
    made.cleanup()


def override_file(stack):
    return stack.project_src / ('compose.%s.release.yml' % stack.name)


def rollout(run_playbook, stack, release, *args):
    return run_playbook(PLAYBOOKS / 'rollout.yml', stack.inventory(), extra_vars={'release': release}, args=args)


def test_an_unsigned_first_release_is_refused_and_nothing_starts(stack, run_playbook):
    stack.release('v1')
    run = rollout(run_playbook, stack, 'v1')
    assert run.rc != 0, run.output
    report = stack.report('v1')
    assert report['result'] == 'failed'
    assert 'signatures' in report['failed_task']
    failed = sorted(entry['image'] for entry in report['signature_failures'])
    assert failed == sorted('%s:v1@%s' % (stack.repos[service], stack.digests['v1'][service]) for service in PORTS)
    assert all('no signature' in entry['problems'][0] for entry in report['signature_failures'])
    assert stack.containers() == []
    assert not override_file(stack).exists()  # resolved without writing: nothing of the project changed
    assert not (stack.state_dir / stack.name / 'lock.json').exists()


def test_a_signed_release_rolls_out_and_the_key_is_recorded(stack, run_playbook):
    stack.sign('v1')
    run = rollout(run_playbook, stack, 'v1')
    assert run.rc == 0, run.output
    stack.assert_runs('v1')
    report = stack.report('v1')
    assert report['result'] == 'deployed'
    for service in PORTS:
        verdict = report['signatures'][service]
        assert (verdict['verified'], verdict['key'], verdict['keyid'], verdict['digest']) == \
            (True, 'ci-test', stack.key.keyid, stack.digests['v1'][service])
    assert report['signatures']['web']['format'] == 'bundle' and report['signatures']['api']['format'] == 'legacy'
    current = stack.ledger()['current']
    assert current['id'] == 'v1' and current['status'] == 'good'
    assert current['source']['signatures']['web']['key'] == 'ci-test'


def test_check_mode_shows_the_verdicts(stack, run_playbook):
    stack.release('v2')
    run = rollout(run_playbook, stack, 'v2', '--check')
    assert run.rc != 0, run.output  # v2 is not signed: the check mode run says so
    assert 'image_signature' in run.output or 'no valid signature' in run.output
    assert 'no signature' in run.output
    stack.assert_runs('v1')


def test_an_unsigned_next_release_is_refused_and_the_signed_one_keeps_running(stack, run_playbook):
    before = {box.name: box.id for box in stack.containers()}
    written = override_file(stack).stat().st_mtime_ns
    run = rollout(run_playbook, stack, 'v2')
    assert run.rc != 0, run.output
    report = stack.report('v2')
    assert report['result'] == 'failed' and report['running']['release'] == 'v1'
    assert len(report['signature_failures']) == 2
    assert {box.name: box.id for box in stack.containers()} == before
    stack.assert_runs('v1')
    assert override_file(stack).stat().st_mtime_ns == written  # never rewritten, not even put back
    override = override_file(stack).read_text()
    assert stack.digests['v1']['web'] in override and stack.digests['v2']['web'] not in override
    assert not (stack.state_dir / stack.name / 'lock.json').exists()
    assert 'v2' not in stack.statuses()  # refused before the candidate was recorded


def test_the_release_signed_afterwards_rolls_out(stack, run_playbook):
    stack.sign('v2')
    check = rollout(run_playbook, stack, 'v2', '--check')
    assert check.rc == 0, check.output
    assert 'ci-test' in check.output  # the verdicts, shown in check mode
    run = rollout(run_playbook, stack, 'v2')
    assert run.rc == 0, run.output
    stack.assert_runs('v2')
    assert stack.report('v2')['signatures']['api']['key'] == 'ci-test'
