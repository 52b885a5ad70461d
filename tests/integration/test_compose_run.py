"""compose_run against the real engine and the Compose under test: a command in a one-off container of a service,
its output and exit code, check mode, and a command stopped at its deadline (its container removed)."""

from __future__ import annotations

import time
import uuid

import pytest

from testbed import testbed as testbed_mod

MODULE = 'compose_run'
pytestmark = pytest.mark.compose_cli  # `compose run` is the CLI's: also run on the v1 leg


@pytest.fixture
def project(testbed, tmp_path):
    """A one-service project on the test bed's app image, without a network; nothing of it runs."""
    name = 'sdt-run-%s' % uuid.uuid4().hex[:6]
    src = tmp_path / name
    src.mkdir()
    (src / 'compose.yaml').write_text('services:\n  tool:\n    image: %s\n    network_mode: none\n'
                                      % testbed.images['v1']['ref'])
    client = testbed.client()

    def args(**extra):
        values = dict(project_src=str(src), project_name=name, files=[str(src / 'compose.yaml')], service='tool',
                      compose_command=testbed_mod.COMPOSE_UNDER_TEST, timeout=120)
        values.update(extra)
        return values

    def containers():
        return client.containers.list(all=True, filters={'label': 'com.docker.compose.project=%s' % name})

    project = type('Project', (), {})()
    project.name, project.args, project.containers = name, args, containers
    yield project
    for container in containers():
        container.remove(force=True)


def test_a_command_runs_in_the_service_image_and_its_container_goes(project, run_module):
    ran = run_module(MODULE, project.args(command=['sh', '-c', 'echo migrated; echo warned >&2']))
    assert not ran.failed, ran.get('msg')
    assert ran['changed'] is True and ran['rc'] == 0
    assert ran['stdout_tail'] == 'migrated' and 'warned' in ran['stderr_tail']
    assert ran['container_name'].startswith('%s-tool-run-' % project.name)
    assert ran['compose_argv'][-4:] == ['tool', 'sh', '-c', 'echo migrated; echo warned >&2']
    assert project.containers() == [], 'the one-off container is removed'


def test_check_mode_runs_nothing(project, run_module):
    checked = run_module(MODULE, project.args(command=['false']), check=True)
    assert not checked.failed and checked['changed'] is True, checked.get('msg')
    assert 'rc' not in checked, 'nothing ran'


def test_a_failing_command_fails_with_its_exit_code_and_last_line(project, run_module):
    failed = run_module(MODULE, project.args(command=['sh', '-c', 'echo step one; echo no database here >&2; exit 3']))
    assert failed.failed and failed['rc'] == 3
    assert 'failed (rc=3): no database here' in failed['msg'], failed['msg']
    assert 'service tool of project %s' % project.name in failed['msg']
    assert project.containers() == []


def test_a_stalled_command_is_stopped_at_its_deadline_and_its_container_removed(project, run_module):
    started = time.monotonic()
    stalled = run_module(MODULE, project.args(command=['sleep', '300'], timeout=3))
    elapsed = time.monotonic() - started
    assert stalled.failed and 'did not finish within 3s and was stopped' in stalled['msg'], stalled['msg']
    assert 'its container %s was removed' % stalled['container_name'] in stalled['msg'], stalled['msg']
    assert elapsed < 60, 'the deadline did not stop it (%.0fs)' % elapsed
    assert project.containers() == [], 'a stalled hook left its container running'


def test_bad_input_fails_naming_the_fix_and_runs_nothing(project, run_module):
    missing = run_module(MODULE, project.args(files=[str(project.args()['project_src'] + '/nope.yaml')]))
    assert missing.failed and 'nope.yaml not found' in missing['msg']
    zero = run_module(MODULE, project.args(timeout=0))
    assert zero.failed and 'timeout must be at least 1' in zero['msg']
    unknown = run_module(MODULE, project.args(service='nosuch', command=['true']))
    assert unknown.failed and 'nosuch' in unknown['msg'], unknown['msg']
    assert project.containers() == []
