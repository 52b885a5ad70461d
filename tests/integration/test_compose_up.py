"""compose_up against the real engine, registry and the Compose under test: pull, leftovers, up, and `changed`
read from the engine."""

from __future__ import annotations

import time
import uuid

import pytest

from silent_registry import SilentRegistry
from testbed import testbed as testbed_mod

MODULE = 'compose_up'
pytestmark = pytest.mark.compose_cli  # the up and the leftover names depend on the CLI: also run on the v1 leg


@pytest.fixture
def project(testbed, tmp_path):
    """A one-service project on the test bed's app image (v1, pushed to the local registry), without a network."""
    name = 'sdt-up-%s' % uuid.uuid4().hex[:6]
    src = tmp_path / name
    src.mkdir()
    client = testbed.client()

    def write(tag):
        (src / 'compose.yaml').write_text(
            'services:\n  web:\n    image: %s\n    network_mode: none\n    restart: unless-stopped\n'
            % testbed.images[tag]['ref'])

    write('v1')

    def args(**extra):
        values = dict(project_src=str(src), project_name=name, files=[str(src / 'compose.yaml')],
                      compose_command=testbed_mod.COMPOSE_UNDER_TEST, pull_timeout=120, up_timeout=120)
        values.update(extra)
        return values

    def containers():
        return client.containers.list(all=True, filters={'label': 'com.docker.compose.project=%s' % name})

    project = type('Project', (), {})()
    project.name, project.src, project.args, project.containers, project.write = name, src, args, containers, write
    yield project
    for container in containers():
        container.remove(force=True)


def test_up_creates_then_changes_nothing_and_check_mode_predicts(project, run_module):
    predicted = run_module(MODULE, project.args(), check=True)
    assert not predicted.failed, predicted.get('msg')
    assert predicted['changed'] is True and project.containers() == [], 'check mode starts nothing'

    up = run_module(MODULE, project.args())
    assert not up.failed, up.get('msg')
    assert up['changed'] is True and up['pulled'] is True and up['touched'] is True
    assert up['containers'] == {'web': ['%s-web-1' % project.name]} or up['containers'] == {'web': ['%s_web_1' % project.name]}
    assert [c.status for c in project.containers()] == ['running']

    again = run_module(MODULE, project.args(pull=False))
    assert not again.failed and again['changed'] is False and again['pulled'] is False
    assert run_module(MODULE, project.args(), check=True)['changed'] is False


def test_a_new_image_is_a_change_and_pulled_only_does_not_touch(project, run_module, testbed):
    assert not run_module(MODULE, project.args()).failed
    before = [(c.id, c.attrs['State']['StartedAt']) for c in project.containers()]
    project.write('v2')
    pulled = run_module(MODULE, project.args(state='pulled'))
    assert not pulled.failed and pulled['pulled'] is True and pulled['changed'] is False and pulled['touched'] is False
    assert [(c.id, c.attrs['State']['StartedAt']) for c in project.containers()] == before
    assert run_module(MODULE, project.args(), check=True)['changed'] is True
    up = run_module(MODULE, project.args(pull=False))
    assert not up.failed and up['changed'] is True
    assert [c.attrs['Config']['Image'] for c in project.containers()] == [testbed.images['v2']['ref']]


def test_leftovers_of_an_interrupted_recreate_are_listed_in_check_mode_and_removed_before_up(project, run_module, testbed):
    client = testbed.client()
    assert not run_module(MODULE, project.args()).failed
    labels = {'com.docker.compose.project': project.name, 'com.docker.compose.service': 'web'}
    leftover = client.containers.create(testbed.images['v1']['ref'], name='%s_%s-web-1' % (uuid.uuid4().hex[:12], project.name),
                                        network_mode='none', labels=labels)
    listed = run_module(MODULE, project.args(), check=True)
    assert listed['changed'] is True
    assert listed['leftovers'] == [{'id': leftover.id, 'name': leftover.name, 'status': 'created'}]
    assert leftover.id in [c.id for c in project.containers()], 'check mode removes nothing'
    up = run_module(MODULE, project.args(pull=False))
    assert not up.failed and up['changed'] is True and up['leftovers'][0]['id'] == leftover.id
    assert leftover.id not in [c.id for c in project.containers()]


def test_a_pull_that_fails_touches_nothing_and_says_so(project, run_module, testbed):
    assert not run_module(MODULE, project.args()).failed
    before = [(c.id, c.attrs['State']['StartedAt']) for c in project.containers()]
    (project.src / 'compose.yaml').write_text(
        'services:\n  web:\n    image: %s/sdt-up/never-pushed:%s\n    network_mode: none\n'
        % (testbed.registry, uuid.uuid4().hex[:8]))
    failed = run_module(MODULE, project.args(pull_retries=1))
    assert failed.failed and failed['touched'] is False
    assert 'failed after 2 attempt(s)' in failed['msg'] and 'nothing running was touched' in failed['msg'], failed['msg']
    assert failed['stderr_tail']
    assert [(c.id, c.attrs['State']['StartedAt']) for c in project.containers()] == before


def test_bad_input_fails_naming_the_fix(project, run_module):
    missing = run_module(MODULE, project.args(files=[str(project.src / 'nope.yaml')]))
    assert missing.failed and 'nope.yaml not found' in missing['msg']
    nowhere = run_module(MODULE, project.args(docker_host='unix:///nonexistent/docker.sock'))
    assert nowhere.failed and '/nonexistent/docker.sock' in nowhere['msg']
    assert project.containers() == []
    zero = run_module(MODULE, project.args(up_timeout=0))
    assert zero.failed and 'up_timeout must be at least 1' in zero['msg']


def test_registry_auth_is_used_for_the_pull_only_and_a_bad_password_touches_nothing(project, run_module, testbed, tmp_path):
    """The pull runs with a Docker config made for it (the user's, plus registry_auth), removed afterwards: nothing is
    logged in for good, and the user's own config is left as it was."""
    config = tmp_path / 'docker-config'  # the user's Docker config: it must come out unchanged
    config.mkdir()
    (config / 'config.json').write_text('{"auths": {"other.example:5000": {"auth": "b3RoZXI6b3RoZXI="}}}')
    before = (config / 'config.json').read_bytes()
    module_tmp = tmp_path / 'module-tmp'
    module_tmp.mkdir()
    env = {'DOCKER_CONFIG': str(config)}
    login = {'registry': testbed.auth_registry, 'username': testbed.auth_user, 'password': testbed.auth_password}
    private = '%s/sdt-up/private' % testbed.auth_registry
    client = testbed.client()
    source = client.images.get(testbed.images['v1']['ref'])
    source.tag(private, 'v1')
    try:
        client.images.push(private, 'v1', auth_config={'username': login['username'], 'password': login['password']})
        client.images.remove('%s:v1' % private)
        (project.src / 'compose.yaml').write_text(
            'services:\n  web:\n    image: %s:v1\n    network_mode: none\n' % private)

        wrong = dict(login, password='not-%s' % testbed.auth_password)
        refused = run_module(MODULE, project.args(registry_auth=[wrong], _ansible_tmpdir=str(module_tmp)), env=env)
        assert refused.failed and refused['touched'] is False and refused['pulled'] is False
        assert 'nothing running was touched' in refused['msg'], refused['msg']
        assert wrong['password'] not in refused.stdout + refused.stderr

        checked = run_module(MODULE, project.args(registry_auth=[login]), env=env, check=True)
        assert not checked.failed and checked['authenticated'] == [], 'check mode pulls nothing'

        done = run_module(MODULE, project.args(registry_auth=[login], _ansible_tmpdir=str(module_tmp)), env=env)
        assert not done.failed, done.get('msg')
        assert done['authenticated'] == [testbed.auth_registry] and done['pulled'] is True
        assert testbed.auth_password not in done.stdout + done.stderr
        assert [c.attrs['Config']['Image'] for c in project.containers()] == ['%s:v1' % private]
        assert (config / 'config.json').read_bytes() == before, "the user's Docker config changed"
        left = [str(path) for path in module_tmp.rglob('*')]
        assert left == [], 'the pull config outlived the pull: %s' % left
        # nothing was logged in for good: without registry_auth, the same pull is refused by the registry
        anonymous = run_module(MODULE, project.args(pull_retries=0), env=env)
        assert anonymous.failed and anonymous['pulled'] is False, anonymous.get('msg')
    finally:
        for container in project.containers():
            container.remove(force=True)
        for ref in ('%s:v1' % private,):
            try:
                client.images.remove(ref, force=True)
            except Exception:  # pylint: disable=broad-except
                pass


def test_a_registry_that_never_answers_is_cut_off_at_pull_timeout_and_the_engine_lets_go(project, run_module, testbed):
    """The images are pinned to digests on a registry that accepts the connection and never answers: the pull (the
    engine's, through compose) is stopped at pull_timeout with a message naming it, nothing running is touched, and
    the engine holds no connection to the registry afterwards (its own pull was stopped with the CLI)."""
    assert not run_module(MODULE, project.args()).failed
    before = [(c.id, c.attrs['State']['StartedAt']) for c in project.containers()]
    silent = SilentRegistry()
    secret = 'sdt-silent-%s' % uuid.uuid4().hex
    try:
        (project.src / 'compose.yaml').write_text(
            'services:\n  web:\n    image: %s/sdt-up/silent@sha256:%s\n    network_mode: none\n' % (silent.address, 'ab' * 32))
        started = time.monotonic()
        stopped = run_module(MODULE, project.args(pull_timeout=5, pull_retries=2, registry_auth=[
            {'registry': silent.address, 'username': 'sdt', 'password': secret}]))
        elapsed = time.monotonic() - started
        assert stopped.failed and stopped['touched'] is False and stopped['pulled'] is False
        assert 'did not finish within 5s and was stopped' in stopped['msg'], stopped['msg']
        assert 'raise pull_timeout' in stopped['msg'] and 'nothing running was touched' in stopped['msg'], stopped['msg']
        assert elapsed < 5 + 10 + 15, 'the pull outlived pull_timeout and its kill grace (%.1fs)' % elapsed
        assert silent.accepted > 0, 'the engine never asked the silent registry: the test proves nothing'
        assert silent.wait_all_closed(20), 'the engine still waits on the silent registry after the deadline'
        assert secret not in stopped.stdout + stopped.stderr
        assert [(c.id, c.attrs['State']['StartedAt']) for c in project.containers()] == before
    finally:
        silent.close()


def engine_events(testbed, project_name, since, until):
    """(action, container name) of the project's container events between since and until (engine clock)."""
    client = testbed.client()
    events = client.events(since=since, until=until, decode=True,
                           filters={'type': 'container', 'label': 'com.docker.compose.project=%s' % project_name})
    return [(event.get('status') or event.get('Action'), event['Actor']['Attributes'].get('name')) for event in events]


def test_start_first_runs_the_new_container_before_the_old_one_stops(project, run_module, testbed):
    assert not run_module(MODULE, project.args(start_first=['web'])).failed  # nothing runs yet: an ordinary up
    (old,) = project.containers()
    project.write('v2')
    since = int(time.time()) - 1
    up = run_module(MODULE, project.args(start_first=['web']))
    assert not up.failed, up.get('msg')
    assert up['changed'] is True
    (first,) = up['started_first']
    assert first['service'] == 'web' and first['old'] == [old.name] and len(first['new']) == 1, first
    (new,) = project.containers()
    assert new.name == first['new'][0] and new.attrs['Config']['Image'] == testbed.images['v2']['ref']
    events = engine_events(testbed, project.name, since, int(time.time()) + 1)
    started = events.index(('start', new.name))
    stopped = min(events.index((action, old.name)) for action in ('kill', 'die', 'stop') if (action, old.name) in events)
    assert started < stopped, events  # the new one ran before the old one was told to stop
    # current containers: nothing to start first, nothing changes
    again = run_module(MODULE, project.args(start_first=['web'], pull=False))
    assert not again.failed and again['changed'] is False and again['started_first'] == []
    assert [c.id for c in project.containers()] == [new.id]


def test_start_first_keeps_the_old_container_when_the_new_one_crashes(project, run_module, testbed):
    assert not run_module(MODULE, project.args()).failed
    (old,) = project.containers()
    project.write('v3')  # exits at once
    failed = run_module(MODULE, project.args(start_first=['web'], up_timeout=30))
    assert failed.failed
    assert 'the new container(s) of web (start_first) did not get ready' in failed['msg'], failed['msg']
    assert old.name in failed['msg'] and 'keep running' in failed['msg']
    (still,) = project.containers()  # the crashed one was removed
    assert still.id == old.id and still.status == 'running'
    assert still.attrs['State']['StartedAt'] == old.attrs['State']['StartedAt']  # never restarted


def test_start_first_waits_for_the_healthcheck(project, run_module, testbed):
    assert not run_module(MODULE, project.args()).failed
    project.write('hc-v1')
    up = run_module(MODULE, project.args(start_first=['web']))
    assert not up.failed, up.get('msg')
    (new,) = project.containers()
    assert new.attrs['State']['Health']['Status'] == 'healthy'  # it was healthy before the old one went
    assert up['started_first'][0]['seconds'] >= 1


def test_start_first_refuses_a_service_that_cannot_run_twice_before_touching_anything(project, run_module, testbed):
    assert not run_module(MODULE, project.args()).failed
    (old,) = project.containers()
    (project.src / 'compose.yaml').write_text(
        'services:\n  web:\n    image: %s\n    container_name: %s-fixed\n' % (testbed.images['v2']['ref'], project.name))
    refused = run_module(MODULE, project.args(start_first=['web']))
    assert refused.failed and 'cannot start new-before-old: it sets container_name' in refused['msg'], refused['msg']
    (project.src / 'compose.yaml').write_text(
        'services:\n  web:\n    image: %s\n    ports: ["127.0.0.1:19099:8080"]\n' % testbed.images['v2']['ref'])
    published = run_module(MODULE, project.args(start_first=['web']))
    assert published.failed and 'it publishes a host port' in published['msg'], published['msg']
    unknown = run_module(MODULE, project.args(start_first=['nope']))
    assert unknown.failed and 'start_first names nope, which is not a service' in unknown['msg'], unknown['msg']
    assert [(c.id, c.status) for c in project.containers()] == [(old.id, 'running')]
