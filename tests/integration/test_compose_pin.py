"""compose_pin against the test bed's real registries (127.0.0.1:5000 open, 127.0.0.1:5001 htpasswd) and engine.

Every test pushes tags of its own (`127.0.0.1:5000/sdt-pin/<name>-<random>:<random>`, retagged from the test
bed's app images), so runs never collide. Compose projects are named sdt-pin-<random>; containers use
network_mode: host with APP_PORT in 18100-18199. Fixtures take down every project and remove every local tag
they created.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml

from testbed import testbed as testbed_mod

from ansible_collections.safedeploy.compose.plugins.module_utils._compose import find_interrupted_recreate_leftovers

ROOT = Path(__file__).resolve().parents[2]
MODULE = 'compose_pin'
OCI_INDEX = 'application/vnd.oci.image.index.v1+json'
OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json'
ACCEPT = ', '.join([OCI_INDEX, 'application/vnd.docker.distribution.manifest.list.v2+json', OCI_MANIFEST,
                    DOCKER_MANIFEST])
PORT_REPUSH = 18110


def rand():
    return uuid.uuid4().hex[:10]


def compose(project, directory, files, *args, check=True, timeout=120):
    argv = testbed_mod.compose_argv() + ['-p', project, '--project-directory', str(directory)]
    for name in files:
        argv += ['-f', str(directory / name)]
    return subprocess.run(argv + list(args), capture_output=True, text=True, check=check, timeout=timeout)


@pytest.fixture(scope='module', autouse=True)
def no_leftovers(testbed):
    """Remove containers of an earlier, interrupted run of this file (only our sdt-pin-* projects)."""
    client = testbed.client()
    for item in client.api.containers(all=True, filters={'label': 'com.docker.compose.project'}):
        if (item.get('Labels') or {}).get('com.docker.compose.project', '').startswith('sdt-pin-'):
            client.api.remove_container(item['Id'], force=True)
    yield


class Images(object):
    """Tags pushed by one test; every local tag is removed at the end (registry content stays, it is unique)."""

    def __init__(self, testbed):
        self.testbed = testbed
        self.client = testbed.client()
        self.local = []

    def push(self, source_tag, repo, tag, registry=None, auth=None):
        """Retag the test bed image app:<source_tag> as <registry>/<repo>:<tag>, push it, return (ref, digest)."""
        ref = '%s/%s:%s' % (registry or self.testbed.registry, repo, tag)
        self.client.images.get(self.testbed.images[source_tag]['ref']).tag(ref)
        self.local.append(ref)
        auth_config = {'username': auth[0], 'password': auth[1]} if auth else None
        testbed_mod.push(self.client, ref, auth_config=auth_config)
        return ref, testbed_mod.registry_digest(ref, auth=auth)

    def image_id(self, source_tag):
        return self.client.images.get(self.testbed.images[source_tag]['ref']).id

    def cleanup(self):
        for ref in self.local:
            try:
                image = self.client.images.get(ref)
            except Exception:
                continue
            for name in [ref] + [item for item in image.attrs.get('RepoDigests') or [] if '/sdt-pin/' in item]:
                try:
                    self.client.images.remove(name, noprune=True)
                except Exception:
                    pass


@pytest.fixture
def images(testbed):
    pushed = Images(testbed)
    yield pushed
    pushed.cleanup()


class Stack(object):
    """A compose project directory with a compose.yaml of our own; taken down at the end."""

    def __init__(self, directory):
        self.dir = directory
        self.project = 'sdt-pin-' + rand()
        self.started = False

    def write(self, services, name='compose.yaml'):
        path = self.dir / name
        path.write_text(yaml.safe_dump({'services': services}, default_flow_style=False))
        return path

    @property
    def override(self):
        return self.dir / ('compose.%s.release.yml' % self.project)  # the default: one per project

    def args(self, **extra):
        args = dict(project_src=str(self.dir), project_name=self.project)
        args.update(extra)
        return args

    def compose(self, *args, files=None, check=True):
        files = files or ('compose.yaml', self.override.name)
        return compose(self.project, self.dir, files, *args, check=check)

    def down(self):
        self.compose('down', '--remove-orphans', '-t', '1', check=False)


@pytest.fixture
def stack(tmp_path):
    created = Stack(tmp_path)
    yield created
    created.down()


def three_service_stack(stack, repos):
    return stack.write({
        name: {'image': '%s:placeholder' % repo, 'network_mode': 'host', 'environment': {'APP_PORT': str(18100 + i)}}
        for i, (name, repo) in enumerate(sorted(repos.items()))
    })


def assert_secret_absent(result, secret):
    assert secret not in json.dumps(result)
    assert secret not in result.stdout
    assert secret not in result.stderr


# ------------------------------------------------------------------ the main path

@pytest.mark.compose_cli
def test_pin_three_services_check_apply_check_apply(testbed, images, stack, run_module):
    tag = 'r' + rand()
    suffix = rand()
    repos = {'web': 'sdt-pin/web-' + suffix, 'api': 'sdt-pin/api-' + suffix, 'worker': 'sdt-pin/worker-' + suffix}
    digests = {}
    for service, source in (('web', 'v1'), ('api', 'v2'), ('worker', 'hc-v1')):
        _ref, digests[service] = images.push(source, repos[service], tag)
    base = three_service_stack(stack, {svc: '%s/%s' % (testbed.registry, repo) for svc, repo in repos.items()})
    base_bytes = base.read_bytes()
    args = stack.args(tag=tag, repositories=['%s/%s' % (testbed.registry, repo) for repo in repos.values()])

    predicted = run_module(MODULE, args, check=True, diff=True)
    assert not predicted.failed, predicted.get('msg')
    assert predicted['changed'] is True
    assert not stack.override.exists(), 'check mode wrote the override'
    assert predicted['diff']['before'] == ''
    assert all(digest in predicted['diff']['after'] for digest in digests.values())

    applied = run_module(MODULE, args, diff=True)
    assert not applied.failed, applied.get('msg')
    assert applied['changed'] is True
    content = stack.override.read_text()
    assert content == predicted['diff']['after'] == applied['diff']['after']
    assert applied['compose_hash'] == predicted['compose_hash'] and len(applied['compose_hash']) == 64
    assert (stack.override.stat().st_mode & 0o777) == 0o644
    assert content.startswith('# Generated by safedeploy.compose.compose_pin for release %s' % tag)
    assert 'Do not edit' in content
    assert applied['release'] == tag
    assert applied['missing'] == []
    assert applied['override_file'] == str(stack.override)
    assert applied['files'] == [str(base), str(stack.override)]
    assert applied['digests'] == digests
    argv = applied['compose_argv']
    assert argv[:argv.index('-p')] == [shutil.which(testbed_mod.compose_argv()[0])] + testbed_mod.compose_argv()[1:]
    assert argv[argv.index('-p'):] == ['-p', stack.project, '--project-directory', str(stack.dir),
                                       '-f', str(base), '-f', str(stack.override)]
    listed = subprocess.run(applied['compose_argv'] + ['config', '--services'], capture_output=True, text=True,
                            check=True, timeout=60)
    assert sorted(listed.stdout.split()) == ['api', 'web', 'worker']
    for service, repo in repos.items():
        entry = applied['services'][service]
        name = '%s/%s' % (testbed.registry, repo)
        assert entry['digest'] == digests[service]  # what the registry says for the tag
        assert entry == dict(image='%s:%s' % (name, tag), repository=name, tag=tag, digest=digests[service],
                             pinned='%s:%s@%s' % (name, tag, digests[service]), build=False)
    assert base.read_bytes() == base_bytes, 'the user compose file was modified'

    # the compose CLI itself sees the pinned references
    # (as compose_pin reads it: JSON from v2, whose YAML leaves out null keys that its JSON has; YAML from v1)
    if testbed_mod.COMPOSE_UNDER_TEST == 'v2':
        rendered = json.loads(stack.compose('config', '--format', 'json').stdout)
    else:
        rendered = yaml.safe_load(stack.compose('config').stdout)
    assert {svc: spec['image'] for svc, spec in rendered['services'].items()} == \
        {svc: entry['pinned'] for svc, entry in applied['services'].items()}
    # and the hash is the one of the configuration compose renders with the override (canonical JSON): the
    # in-process merge of the override gives what compose's own merge gives
    canonical = json.dumps(rendered, sort_keys=True, separators=(',', ':'), ensure_ascii=True)
    assert applied['compose_hash'] == hashlib.sha256(canonical.encode()).hexdigest()

    mtime = stack.override.stat().st_mtime_ns
    again_check = run_module(MODULE, args, check=True, diff=True)
    assert again_check['changed'] is False
    assert again_check['diff']['before'] == again_check['diff']['after'] == content
    again = run_module(MODULE, args, diff=True)
    assert again['changed'] is False
    assert again['diff']['before'] == again['diff']['after']
    assert again['compose_hash'] == applied['compose_hash']
    assert stack.override.stat().st_mtime_ns == mtime

    # a changed .env changes the compose hash, not the override
    base.write_text(base.read_text().replace("APP_PORT: '18100'", 'APP_PORT: ${API_PORT:-18100}'))
    with_variable = run_module(MODULE, args)
    (stack.dir / '.env').write_text('API_PORT=18150\n')
    with_env = run_module(MODULE, args)
    assert with_variable['changed'] is False and with_env['changed'] is False
    assert with_env['compose_hash'] != with_variable['compose_hash']
    assert yaml.safe_load(stack.compose('config').stdout)['services']['api']['environment']['APP_PORT'] == '18150'


def test_images_option_and_untouched_services(testbed, images, stack, run_module):
    suffix = rand()
    web_ref, web_digest = images.push('v2', 'sdt-pin/web-' + suffix, 'x' + suffix)
    side_ref, side_digest = images.push('v1', 'sdt-pin/side-' + suffix, '1.0')
    stack.write({'web': {'image': '%s/sdt-pin/web-%s:old' % (testbed.registry, suffix)},
                 'side': {'image': side_ref.replace(':1.0', ':${SIDE_TAG}')}})
    (stack.dir / 'prod.env').write_text('SIDE_TAG=1.0\n')
    result = run_module(MODULE, stack.args(release='rel-1', images={'web': web_ref}, env_files=['prod.env']))
    assert not result.failed, result.get('msg')
    assert result['services']['web']['digest'] == web_digest
    # side kept the image of the compose files, with the tag from the env file, and is pinned too
    assert result['services']['side']['pinned'] == '%s@%s' % (side_ref, side_digest)
    assert result['compose_argv'][-2:] == ['--env-file', str(stack.dir / 'prod.env')]
    assert 'release rel-1 ' in stack.override.read_text()
    unknown = run_module(MODULE, stack.args(release='rel-1', images={'nope': web_ref}))
    assert unknown.failed and 'nope' in unknown['msg'] and 'not defined' in unknown['msg']


def test_estimate_download_counts_only_what_the_host_lacks_once(testbed, images, stack, run_module):
    suffix = rand()
    client = testbed.client()
    # web: an image this host holds (it was pushed from here): nothing to download.
    web_ref, _digest = images.push('v1', 'sdt-pin/dl-web-' + suffix, 'd1')
    # inc: the next release of app:v1, one new layer of 300 KB, pushed and then removed from this host, which keeps
    # app:v1 and so every layer of inc but the new one.
    inc_ref = '%s/sdt-pin/dl-inc-%s:d1' % (testbed.registry, suffix)
    testbed_mod.build_increment_image(client, inc_ref, testbed.images['v1']['ref'], 'd1', 300 << 10)
    testbed_mod.push(client, inc_ref)
    client.images.remove(inc_ref)
    manifest = _registry_api(testbed, 'GET', 'sdt-pin/dl-inc-%s/manifests/d1' % suffix,
                             headers={'Accept': DOCKER_MANIFEST}).json()
    new_layer = manifest['config']['size'] + manifest['layers'][-1]['size']
    whole = manifest['config']['size'] + sum(layer['size'] for layer in manifest['layers'])
    assert 300 << 10 < new_layer < whole - (500 << 10), (new_layer, whole)  # busybox alone is over 500 KB

    stack.write({'web': {'image': web_ref}, 'copy': {'image': web_ref}, 'inc': {'image': inc_ref},
                 'inc2': {'image': inc_ref}})
    plain = run_module(MODULE, stack.args(release='d1', images={'web': web_ref}))
    assert not plain.failed and plain['download_bytes'] is None
    estimated = run_module(MODULE, stack.args(release='d1', images={'web': web_ref}, estimate_download=True))
    assert not estimated.failed, estimated.get('msg')
    assert estimated['download_bytes'] == new_layer  # two services, one image: counted once
    assert plain['service_download_bytes'] == {}
    assert estimated['service_download_bytes'] == {'web': 0, 'copy': 0, 'inc': new_layer, 'inc2': new_layer}
    # In check mode too (nothing is written, the estimate is the same).
    checked = run_module(MODULE, stack.args(release='d1', images={'web': web_ref}, estimate_download=True), check=True)
    assert checked['download_bytes'] == new_layer


# ------------------------------------------------------------------ policy failures

def test_two_of_three_missing_lists_both_and_writes_nothing(testbed, images, stack, run_module):
    suffix = rand()
    good = 'g' + rand()
    repos = {svc: '%s/sdt-pin/%s-%s' % (testbed.registry, svc, suffix) for svc in ('web', 'api', 'worker')}
    for svc in repos:
        images.push('v1', repos[svc].split('/', 1)[1], good)
    images.push('v2', repos['web'].split('/', 1)[1], 'half')  # only web has the new release
    three_service_stack(stack, repos)
    assert not run_module(MODULE, stack.args(tag=good, repositories=list(repos.values()))).failed
    before = stack.override.read_bytes()
    stack.compose('up', '-d', '--remove-orphans')
    client = testbed.client()
    label = {'label': 'com.docker.compose.project=%s' % stack.project}
    running = {c.id: c.attrs['State']['StartedAt'] for c in client.containers.list(filters=label)}
    assert len(running) == 3

    result = run_module(MODULE, stack.args(tag='half', repositories=list(repos.values())), diff=True)
    assert result.failed
    assert result['changed'] is False
    assert stack.override.read_bytes() == before, 'a failed pin rewrote the override'
    assert {c.id: c.attrs['State']['StartedAt'] for c in client.containers.list(filters=label)} == running
    missing = sorted(result['missing'], key=lambda entry: entry['image'])
    assert [entry['image'] for entry in missing] == ['%s:half' % repos['api'], '%s:half' % repos['worker']]
    for entry, svc in zip(missing, ('api', 'worker')):
        assert entry['services'] == [svc]
        assert entry['registry'] == testbed.registry
        assert entry['repository'] == 'sdt-pin/%s-%s' % (svc, suffix)
        assert entry['reference'] == 'half'
        assert entry['status'] == 404
        assert '%s:half' % repos[svc] in result['msg']
    assert '2 of 3 images' in result['msg'] and 'nothing was written' in result['msg']
    assert 'HTTP 404' in result['msg']

    fresh = Stack(stack.dir.parent / ('fresh-' + rand()))
    fresh.dir.mkdir()
    three_service_stack(fresh, repos)
    failed = run_module(MODULE, fresh.args(tag='half', repositories=list(repos.values())))
    assert failed.failed and len(failed['missing']) == 2
    assert not fresh.override.exists()


def test_build_without_image_fails_unless_allowed(testbed, images, stack, run_module):
    ref, digest = images.push('v1', 'sdt-pin/web-' + rand(), 'b1')
    (stack.dir / 'builder').mkdir()
    (stack.dir / 'builder' / 'Dockerfile').write_text('FROM scratch\n')
    stack.write({'web': {'image': ref}, 'builder': {'build': './builder'}})
    refused = run_module(MODULE, stack.args(release='b1', images={'web': ref}))
    assert refused.failed
    assert 'service builder has build: and no image' in refused['msg'] and 'allow_build' in refused['msg']
    assert not stack.override.exists()
    allowed = run_module(MODULE, stack.args(release='b1', images={'web': ref}, allow_build=True))
    assert not allowed.failed, allowed.get('msg')
    assert allowed['services']['builder'] == dict(image=None, repository=None, tag=None, digest=None, pinned=None,
                                                  build=True)
    assert allowed['services']['web']['digest'] == digest
    assert 'builder: {}' in stack.override.read_text()
    stack.write({'builder': {'build': './builder'}})
    alone = run_module(MODULE, stack.args(tag='b2', allow_build=True))
    assert not alone.failed, alone.get('msg')  # an override pinning nothing is still a valid compose file
    assert yaml.safe_load(stack.override.read_text()) == {'services': {'builder': {}}}


def test_mutable_tags_cannot_be_pinned(testbed, images, stack, run_module):
    ref, _digest = images.push('v1', 'sdt-pin/web-' + rand(), 'm1')
    stack.write({'web': {'image': ref}, 'cache': {'image': '%s/sdt-pin/cache:latest' % testbed.registry},
                 'queue': {'image': '%s/sdt-pin/queue' % testbed.registry}})
    result = run_module(MODULE, stack.args(tag='m1', repositories=[ref.rsplit(':', 1)[0]]))
    assert result.failed
    assert 'service cache' in result['msg'] and 'mutable tag latest' in result['msg']
    assert 'service queue' in result['msg'] and 'none, meaning latest' in result['msg']
    assert not stack.override.exists()
    latest = run_module(MODULE, stack.args(tag='latest'))
    assert latest.failed and "tag 'latest' is mutable" in latest['msg']


def test_unreachable_registry_fails_within_the_timeout(stack, run_module, free_port):
    stack.write({'web': {'image': '127.0.0.1:%d/sdt-pin/web:v1' % free_port}})
    started = time.monotonic()
    result = run_module(MODULE, stack.args(release='u1', images={'web': '127.0.0.1:%d/sdt-pin/web:u1' % free_port},
                                           timeout=2))
    elapsed = time.monotonic() - started
    assert result.failed
    assert 'did not answer usefully within 2s' in result['msg'] and 'ConnectionError' in result['msg']
    assert result['missing'] == []
    assert elapsed < 15
    assert not stack.override.exists()


def test_without_a_compose_cli_fails_clearly(stack, run_module):
    stack.write({'web': {'image': '127.0.0.1:5000/sdt-pin/web:v1'}})
    result = run_module(MODULE, stack.args(tag='n1'), env={'PATH': str(stack.dir)})
    assert result.failed
    assert 'no Docker Compose CLI for compose_command=' in result['msg'] and 'install' in result['msg']
    assert result['compose_hash'] is None and result['services'] == {}
    assert not stack.override.exists()


def test_compose_command_chooses_the_cli_for_real(testbed, images, stack, run_module):
    """v2 and v1 each render the configuration and name their own CLI in compose_argv; auto takes v2."""
    ref, digest = images.push('v1', 'sdt-pin/choice-' + rand(), 'c1')
    stack.write({'web': {'image': ref, 'network_mode': 'host', 'environment': {'APP_PORT': '18109'}}})
    results = {}
    for choice in ('v2', 'v1', 'auto'):
        results[choice] = run_module(MODULE, stack.args(tag='c1', compose_command=choice))
        assert not results[choice].failed, results[choice].get('msg')
    assert results['v2']['compose_argv'][1] == 'compose'
    assert results['v2']['compose_version'] == testbed.compose['v2']['version']
    assert results['v1']['compose_argv'][0].endswith('/docker-compose')
    assert results['v1']['compose_version'] == testbed.compose['v1']['version']
    assert results['auto']['compose_argv'][:2] == results['v2']['compose_argv'][:2], 'auto did not prefer v2'
    # the hash is of the configuration as each CLI renders it: v2 renders more (name, null command and entrypoint),
    # so the same files hash differently under v1 and v2 (docs/compose_pin.md)
    assert results['auto']['compose_hash'] == results['v2']['compose_hash'] != results['v1']['compose_hash']
    assert results['v1']['digests'] == {'web': digest}
    # the argv each returns really runs that CLI: the containers carry the version of the compose that made them
    for choice in ('v1', 'v2'):
        argv = results[choice]['compose_argv']
        subprocess.run(argv + ['up', '-d', '--remove-orphans'], check=True, capture_output=True, timeout=120)
        made_by = set(c.labels['com.docker.compose.version'] for c in testbed.client().containers.list(
            all=True, filters={'label': 'com.docker.compose.project=%s' % stack.project}))
        assert made_by == {results[choice]['compose_version']}, (choice, made_by)
        subprocess.run(argv + ['down', '-t', '1'], check=True, capture_output=True, timeout=120)


def test_compose_command_missing_cli_fails_naming_the_fix(stack, run_module, tmp_path):
    """Forcing v2 on a host with only v1 (and the reverse) stops before anything is written."""
    stack.write({'web': {'image': '127.0.0.1:5000/sdt-pin/web:v1'}})
    only = tmp_path / 'only-v1'
    only.mkdir()
    (only / 'docker-compose').symlink_to(shutil.which('docker-compose'))
    result = run_module(MODULE, stack.args(tag='n1', compose_command='v2'), env={'PATH': str(only)})
    assert result.failed and not stack.override.exists()
    assert 'compose_command=v2' in result['msg'] and 'answers 1.29' in result['msg'], result['msg']
    assert 'install the docker compose plugin (v2)' in result['msg']
    without_v1 = tmp_path / 'only-docker'
    without_v1.mkdir()
    (without_v1 / 'docker').symlink_to(shutil.which('docker'))
    result = run_module(MODULE, stack.args(tag='n1', compose_command='v1'), env={'PATH': str(without_v1)})
    assert result.failed and not stack.override.exists()
    assert 'docker-compose (not on PATH)' in result['msg'] and 'install docker-compose 1.x' in result['msg']


# ------------------------------------------------------------------ authentication

def test_auth_registry_with_options_docker_config_and_wrong_password(testbed, images, stack, run_module, tmp_path):
    auth = (testbed.auth_user, testbed.auth_password)
    ref, digest = images.push('v1', 'sdt-pin/private-' + rand(), 'a1', registry=testbed.auth_registry, auth=auth)
    stack.write({'web': {'image': ref}})
    args = stack.args(release='a1', images={'web': ref})

    anonymous = run_module(MODULE, dict(args, docker_config=str(tmp_path / 'none')))
    assert anonymous.failed
    assert 'requires credentials' in anonymous['msg'] and testbed.auth_registry in anonymous['msg']

    with_options = run_module(MODULE, dict(args, registry_auth=[
        {'registry': testbed.auth_registry, 'username': auth[0], 'password': auth[1]}]))
    assert not with_options.failed, with_options.get('msg')
    assert with_options['services']['web']['digest'] == digest
    assert_secret_absent(with_options, auth[1])

    config_dir = tmp_path / 'docker-config'
    config_dir.mkdir()
    encoded = base64.b64encode(('%s:%s' % auth).encode()).decode()
    (config_dir / 'config.json').write_text(json.dumps({'auths': {'http://%s' % testbed.auth_registry: {'auth': encoded}}}))
    stack.override.unlink()
    from_config = run_module(MODULE, args, env={'DOCKER_CONFIG': str(config_dir)})
    assert not from_config.failed, from_config.get('msg')
    assert from_config['services']['web']['digest'] == digest
    assert_secret_absent(from_config, auth[1])
    assert_secret_absent(from_config, encoded)

    # a wrong password in a config file (not covered by no_log) must not leak either
    wrong = 'wrong-' + rand()
    wrong_encoded = base64.b64encode(('%s:%s' % (auth[0], wrong)).encode()).decode()
    (config_dir / 'config.json').write_text(json.dumps({'auths': {testbed.auth_registry: {'auth': wrong_encoded}}}))
    refused = run_module(MODULE, args, env={'DOCKER_CONFIG': str(config_dir)})
    assert refused.failed
    assert 'HTTP 401' in refused['msg'] and 'refused the credentials of user %s' % auth[0] in refused['msg']
    assert str(config_dir / 'config.json') in refused['msg']
    assert refused['missing'] == []
    assert_secret_absent(refused, wrong)
    assert_secret_absent(refused, wrong_encoded)

    wrong_option = run_module(MODULE, dict(args, registry_auth=[
        {'registry': testbed.auth_registry, 'username': auth[0], 'password': wrong}]))
    assert wrong_option.failed and 'HTTP 401' in wrong_option['msg'] and 'registry_auth' in wrong_option['msg']
    assert_secret_absent(wrong_option, wrong)


def test_playbook_vvv_does_not_show_the_password(testbed, images, stack, tmp_path):
    auth = (testbed.auth_user, testbed.auth_password)
    ref, digest = images.push('v2', 'sdt-pin/private-' + rand(), 'p1', registry=testbed.auth_registry, auth=auth)
    stack.write({'web': {'image': ref}})
    (tmp_path / 'vars.json').write_text(json.dumps({'pin_password': auth[1], 'pin_wrong': 'wrong-' + auth[1]}))
    (tmp_path / 'inventory.ini').write_text('localhost ansible_connection=local ansible_python_interpreter=%s\n'
                                            % sys.executable)
    (tmp_path / 'play.yml').write_text(textwrap.dedent('''\
        - hosts: localhost
          gather_facts: false
          tasks:
            - name: Pin with credentials
              safedeploy.compose.compose_pin:
                project_src: {src}
                project_name: {project}
                release: p1
                images: {{web: "{ref}"}}
                registry_auth:
                  - registry: "{registry}"
                    username: "{user}"
                    password: "{{{{ pin_password }}}}"
              register: pinned
            - name: Pin with a wrong password
              safedeploy.compose.compose_pin:
                project_src: {src}
                project_name: {project}
                release: p1
                images: {{web: "{ref}"}}
                registry_auth:
                  - registry: "{registry}"
                    username: "{user}"
                    password: "{{{{ pin_wrong }}}}"
              register: refused
              ignore_errors: true
            - name: Show the results
              ansible.builtin.debug:
                var: item
              loop: ["{{{{ pinned }}}}", "{{{{ refused }}}}"]
            - ansible.builtin.assert:
                that:
                  - pinned.services.web.digest == "{digest}"
                  - refused is failed
                  - "'HTTP 401' in refused.msg"
        ''').format(src=stack.dir, project=stack.project, ref=ref, registry=testbed.auth_registry, user=auth[0],
                    digest=digest))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / '.build' / 'collections'), ANSIBLE_NOCOLOR='1',
               ANSIBLE_CONFIG=str(ROOT / 'ansible.cfg'))
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-vvv',
                           '-i', str(tmp_path / 'inventory.ini'), '-e', '@%s' % (tmp_path / 'vars.json'),
                           str(tmp_path / 'play.yml')],
                          capture_output=True, text=True, env=env, timeout=300, cwd=str(tmp_path), check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert digest in output  # the run really resolved through the auth registry
    assert auth[1] not in output
    assert base64.b64encode(('%s:%s' % auth).encode()).decode() not in output


# ------------------------------------------------------------------ multi-arch

def _registry_api(testbed, method, path, **kwargs):
    response = requests.request(method, 'http://%s/v2/%s' % (testbed.registry, path), timeout=30, **kwargs)
    assert response.status_code < 300, '%s %s: HTTP %d %s' % (method, path, response.status_code, response.text)
    return response


def push_oci_index(testbed, repo, tag, platforms):
    """Push an OCI index for `repo:tag` whose entries are OCI manifests made from test bed images (blobs mounted)."""
    source = 'safedeploy-test/app'
    entries = []
    for source_tag, architecture in platforms:
        manifest = _registry_api(testbed, 'GET', '%s/manifests/%s' % (source, source_tag),
                                 headers={'Accept': DOCKER_MANIFEST}).json()
        for blob in [manifest['config']] + manifest['layers']:
            mounted = requests.post('http://%s/v2/%s/blobs/uploads/' % (testbed.registry, repo),
                                    params={'mount': blob['digest'], 'from': source}, timeout=30)
            assert mounted.status_code == 201, mounted.text
        oci = {
            'schemaVersion': 2, 'mediaType': OCI_MANIFEST,
            'config': dict(manifest['config'], mediaType='application/vnd.oci.image.config.v1+json'),
            'layers': [dict(layer, mediaType='application/vnd.oci.image.layer.v1.tar+gzip') for layer in manifest['layers']],
        }
        body = json.dumps(oci, sort_keys=True).encode()
        digest = 'sha256:' + hashlib.sha256(body).hexdigest()
        _registry_api(testbed, 'PUT', '%s/manifests/%s' % (repo, digest), data=body,
                      headers={'Content-Type': OCI_MANIFEST})
        entries.append({'mediaType': OCI_MANIFEST, 'digest': digest, 'size': len(body),
                        'platform': {'architecture': architecture, 'os': 'linux'}})
    index = json.dumps({'schemaVersion': 2, 'mediaType': OCI_INDEX, 'manifests': entries}, sort_keys=True).encode()
    _registry_api(testbed, 'PUT', '%s/manifests/%s' % (repo, tag), data=index, headers={'Content-Type': OCI_INDEX})
    return 'sha256:' + hashlib.sha256(index).hexdigest(), entries


def test_multi_arch_index_pins_to_the_index_digest(testbed, images, stack, run_module):
    repo = 'sdt-pin/multi-' + rand()
    index_digest, entries = push_oci_index(testbed, repo, 'm1', [('v1', 'amd64'), ('v2', 'arm64')])
    head = requests.head('http://%s/v2/%s/manifests/m1' % (testbed.registry, repo), headers={'Accept': ACCEPT}, timeout=10)
    assert head.headers['Docker-Content-Digest'] == index_digest
    assert head.headers['Content-Type'] == OCI_INDEX
    name = '%s/%s' % (testbed.registry, repo)
    stack.write({'web': {'image': name + ':old'}})
    result = run_module(MODULE, stack.args(tag='m1'))
    assert not result.failed, result.get('msg')
    assert result['services']['web']['digest'] == index_digest
    assert index_digest not in [entry['digest'] for entry in entries]
    pinned = result['services']['web']['pinned']
    assert pinned == '%s:m1@%s' % (name, index_digest)
    # the engine pulls the pinned index and gets the linux/amd64 image (made from app:v1)
    client = testbed.client()
    try:
        pulled = client.images.pull(name, tag=index_digest)
        assert pulled.id == images.image_id('v1')
        assert '%s@%s' % (name, index_digest) in pulled.attrs['RepoDigests']
    finally:
        try:
            client.images.remove('%s@%s' % (name, index_digest), noprune=True)
        except Exception:
            pass


# ------------------------------------------------------------------ a re-pushed tag

def test_repushed_tag_keeps_the_first_digest(testbed, images, stack, run_module):
    repo = 'sdt-pin/web-' + rand()
    tag = 'r' + rand()
    _ref, first = images.push('v1', repo, tag)
    name = '%s/%s' % (testbed.registry, repo)
    stack.write({'web': {'image': name + ':old', 'network_mode': 'host',
                         'environment': {'APP_PORT': str(PORT_REPUSH)}}})
    pinned = run_module(MODULE, stack.args(tag=tag))
    assert not pinned.failed, pinned.get('msg')
    assert pinned['services']['web']['digest'] == first
    planned = stack.override.read_text()

    _ref, second = images.push('v2', repo, tag)  # the same tag, now another image (locally too)
    assert second != first
    assert stack.override.read_text() == planned and first in planned

    stack.compose('pull', '--quiet')
    stack.compose('up', '-d', '--remove-orphans')
    client = testbed.client()
    containers = client.containers.list(filters={'label': 'com.docker.compose.project=%s' % stack.project})
    assert len(containers) == 1
    assert containers[0].image.id == images.image_id('v1')
    assert containers[0].image.id != images.image_id('v2')

    # pinning the same release again notices that the tag moved
    again = run_module(MODULE, stack.args(tag=tag), check=True)
    assert again['changed'] is True
    assert again['services']['web']['digest'] == second
    assert 'the tag was pushed again' in json.dumps(again.get('warnings'))  # structured in ansible-core 2.19


# ------------------------------------------------------------------ resolve: local

def test_resolve_local_uses_repo_digests_without_the_registry(testbed, images, stack, run_module):
    repo = 'sdt-pin/local-' + rand()
    ref, digest = images.push('v2', repo, 'l1')
    name = '%s/%s' % (testbed.registry, repo)
    never_pushed = '%s/sdt-pin/never-%s:l1' % (testbed.registry, rand())
    testbed.client().images.get(testbed.images['v1']['ref']).tag(never_pushed)
    images.local.append(never_pushed)
    # the registry loses the manifest: only the host still has the image
    _registry_api(testbed, 'DELETE', '%s/manifests/%s' % (repo, digest))
    stack.write({'web': {'image': name + ':old'}})

    from_registry = run_module(MODULE, stack.args(tag='l1'))
    assert from_registry.failed and from_registry['missing'][0]['status'] == 404

    local = run_module(MODULE, stack.args(tag='l1', resolve='local'))
    assert not local.failed, local.get('msg')
    assert local['services']['web']['digest'] == digest
    assert local['services']['web']['pinned'] == '%s:l1@%s' % (name, digest)
    assert digest in stack.override.read_text()

    absent = run_module(MODULE, stack.args(tag='not-here', resolve='local'))
    assert absent.failed
    assert absent['missing'][0]['status'] is None
    assert 'not present on the Docker host' in absent['msg']

    stack.write({'web': {'image': never_pushed}})
    unpinnable = run_module(MODULE, stack.args(release='l2', images={'web': never_pushed}, resolve='local'))
    assert unpinnable.failed
    assert 'has no registry digest' in unpinnable['msg'] and unpinnable['missing'] == []


# ------------------------------------------------------------------ interrupted recreate leftovers

def test_find_interrupted_recreate_leftovers_by_project_label(testbed):
    client = testbed.client()
    project = 'sdt-pin-' + rand()
    other = 'sdt-pin-' + rand()
    image = testbed.images['v1']['ref']
    created = []
    try:
        def make(name, proj):
            container = client.containers.create(image, name=name, network_mode='none',
                                                 labels={'com.docker.compose.project': proj,
                                                         'com.docker.compose.service': 'web'})
            created.append(container)
            return container

        leftover = make('%s_%s_web_1' % (rand() + 'ab', project), project)
        current = make('%s_web_1' % project, project)
        foreign = make('%s_%s_web_1' % (rand() + 'cd', other), other)
        leftover.start()
        found = find_interrupted_recreate_leftovers(client, project)
        assert found == [{'id': leftover.id, 'name': leftover.name, 'status': 'running'}]
        assert found[0]['name'].endswith('_%s_web_1' % project)
        remaining = {c.id for c in client.containers.list(all=True)}
        assert {leftover.id, current.id, foreign.id} <= remaining, 'finding removes nothing'
        assert [entry['id'] for entry in find_interrupted_recreate_leftovers(client, other)] == [foreign.id]
        leftover.remove(force=True)
        assert find_interrupted_recreate_leftovers(client, project) == []
        # Compose v2's form: the replacement, created as <old short id>_<project>-<service>-1, not started yet
        replacement = make('%s_%s-web-1' % (rand() + 'ef', project), project)
        make('%s-web-1' % project, project)
        assert find_interrupted_recreate_leftovers(client, project) == [
            {'id': replacement.id, 'name': replacement.name, 'status': 'created'}]
    finally:
        for container in created:
            try:
                container.remove(force=True)
            except Exception:
                pass
