"""The compose CLI wrapper (plugins/module_utils/_compose.py).

Detection runs against fake `docker` / `docker-compose` executables on PATH; rendering runs the
host's real compose CLI (it needs no engine for `config`).
"""

from __future__ import annotations

import os
import shutil
import stat
import time

import pytest

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common import warnings
from ansible.module_utils.testing import patch_module_args

from ansible_collections.safedeploy.compose.plugins.module_utils import _compose
from ansible_collections.safedeploy.compose.plugins.module_utils._compose import (
    CommandRunner, ComposeCli, ComposeError, ComposeNotFound, ComposeProject, ComposeTimeout, compose_hash,
    detect_compose, find_default_compose_files, parse_config, services_of, with_images,
)


@pytest.fixture
def module():
    with patch_module_args({}):
        yield AnsibleModule(argument_spec={})


def fake_exe(directory, name, script):
    path = directory / name
    path.write_text('#!/bin/sh\n' + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    directory = tmp_path / 'bin'
    directory.mkdir()
    # only the fakes and coreutils' timeout: the real docker CLIs of /usr/bin must stay out of sight
    shutil.copy(shutil.which('timeout'), str(directory / 'timeout'))
    monkeypatch.setenv('PATH', str(directory))
    return directory


PLUGIN = 'if [ "$1 $2 $3" = "compose version --short" ]; then echo 2.24.6; exit 0; fi\n' \
         'echo "docker: \'compose\' is not a docker command." >&2; exit 1\n'
NO_PLUGIN = 'echo "docker: \'compose\' is not a docker command." >&2; exit 1\n'
V1 = 'if [ "$1 $2" = "version --short" ]; then echo 1.29.2; exit 0; fi\nexit 3\n'


def test_detect_prefers_the_v2_plugin(module, fake_bin):
    docker = fake_exe(fake_bin, 'docker', PLUGIN)
    fake_exe(fake_bin, 'docker-compose', V1)
    cli = detect_compose(module)
    assert cli.argv == [docker, 'compose']
    assert cli.version == '2.24.6' and cli.major == 2 and not cli.is_v1


def test_detect_falls_back_to_docker_compose_v1(module, fake_bin):
    fake_exe(fake_bin, 'docker', NO_PLUGIN)
    standalone = fake_exe(fake_bin, 'docker-compose', V1)
    cli = detect_compose(module)
    assert cli.argv == [standalone]
    assert cli.version_info == (1, 29, 2) and cli.is_v1


def test_detect_without_any_compose_names_what_it_tried(module, fake_bin):
    fake_exe(fake_bin, 'docker', NO_PLUGIN)
    with pytest.raises(ComposeNotFound) as info:
        detect_compose(module)
    message = str(info.value)
    assert 'not a docker command' in message and 'docker-compose (not on PATH)' in message
    assert 'install' in message


def test_detect_v1_choice_skips_the_plugin(module, fake_bin):
    fake_exe(fake_bin, 'docker', PLUGIN)
    standalone = fake_exe(fake_bin, 'docker-compose', V1)
    cli = detect_compose(module, choice='v1')
    assert cli.argv == [standalone] and cli.is_v1


def test_detect_v1_choice_refuses_a_standalone_v2(module, fake_bin):
    fake_exe(fake_bin, 'docker', PLUGIN)
    fake_exe(fake_bin, 'docker-compose', V1.replace('1.29.2', '2.27.0'))
    with pytest.raises(ComposeNotFound) as info:
        detect_compose(module, choice='v1')
    assert 'answers 2.27.0, not v1' in str(info.value)
    assert 'compose_command=v1' in str(info.value) and 'install docker-compose 1.x' in str(info.value)


def test_detect_v2_choice_takes_a_standalone_v2_but_not_v1(module, fake_bin):
    fake_exe(fake_bin, 'docker', NO_PLUGIN)
    standalone = fake_exe(fake_bin, 'docker-compose', V1.replace('1.29.2', '2.27.0'))
    assert detect_compose(module, choice='v2').argv == [standalone]
    fake_exe(fake_bin, 'docker-compose', V1)
    with pytest.raises(ComposeNotFound) as info:
        detect_compose(module, choice='v2')
    message = str(info.value)
    assert 'not a docker command' in message and 'answers 1.29.2, not v2' in message
    assert 'install the docker compose plugin (v2)' in message


def test_detect_v1_choice_checks_a_cached_version_too(module, fake_bin, tmp_path):
    fake_exe(fake_bin, 'docker', NO_PLUGIN)
    calls = tmp_path / 'calls'
    fake_exe(fake_bin, 'docker-compose', 'echo x >> %s\n' % calls + V1.replace('1.29.2', '2.27.0'))
    cache = tmp_path / 'compose-cli.json'
    assert detect_compose(module, cache_path=str(cache), choice='v2').major == 2
    assert cache.exists() and calls.read_text().count('x') == 1
    with pytest.raises(ComposeNotFound) as info:
        detect_compose(module, cache_path=str(cache), choice='v1')
    assert 'answers 2.27.0, not v1' in str(info.value)
    assert calls.read_text().count('x') == 1, 'the cached version was not used'


def test_detect_on_this_host(module):
    cli = detect_compose(module)
    assert cli.major in (1, 2)
    if cli.is_v1:
        assert os.path.basename(cli.argv[0]) == 'docker-compose'
    else:
        assert cli.argv[-1] == 'compose' or os.path.basename(cli.argv[0]) == 'docker-compose'


def test_argv_always_names_project_directory_files_and_env_files(module):
    v1 = ComposeProject(CommandRunner(module), ComposeCli(['/usr/bin/docker-compose'], '1.29.2'), '/srv/shop', 'shop',
                        ['/srv/shop/compose.yaml', '/srv/shop/prod.yaml'], ['/srv/shop/prod.env'])
    common = ['/usr/bin/docker-compose', '-p', 'shop', '--project-directory', '/srv/shop',
              '-f', '/srv/shop/compose.yaml', '-f', '/srv/shop/prod.yaml', '--env-file', '/srv/shop/prod.env']
    assert v1.config_argv() == common + ['config']
    assert v1.config_argv(extra_files=['/srv/shop/compose.release.yml']) == \
        common[:9] + ['-f', '/srv/shop/compose.release.yml'] + common[9:] + ['config']
    assert v1.pull_argv(['web']) == common + ['pull', '--quiet', 'web']
    assert v1.up_argv(no_build=True) == common + ['up', '-d', '--remove-orphans', '--no-build']
    assert v1.ps_argv() == common + ['ps', '--all']
    assert v1.down_argv(stop_timeout=5) == common + ['down', '--remove-orphans', '--timeout', '5']
    assert v1.run_argv('migrate', ['./manage', 'migrate'], environment={'B': '2', 'A': '1'}) == \
        common + ['run', '--rm', '-T', '--no-deps', '-e', 'A=1', '-e', 'B=2', 'migrate', './manage', 'migrate']
    assert v1.run_argv('web', ['true'], name='shop-web-run-1') == \
        common + ['run', '--rm', '-T', '--no-deps', '--name', 'shop-web-run-1', 'web', 'true']
    v2 = ComposeProject(CommandRunner(module), ComposeCli(['/usr/bin/docker', 'compose'], '2.24.6'), '/srv/shop', 'shop',
                        ['/srv/shop/compose.yaml'], ['/srv/shop/a.env', '/srv/shop/b.env'])
    assert v2.config_argv()[-3:] == ['config', '--format', 'json']
    assert v2.config_argv().count('--env-file') == 2


def test_v1_refuses_several_env_files(module):
    with pytest.raises(ComposeError) as info:
        ComposeProject(CommandRunner(module), ComposeCli(['docker-compose'], '1.29.2'), '/srv', 'p', ['/srv/c.yml'],
                       ['/srv/a.env', '/srv/b.env'])
    assert 'single --env-file' in str(info.value)


def test_runner_enforces_the_timeout(module, fake_bin):
    slow = fake_exe(fake_bin, 'slow', 'exec %s 30\n' % shutil.which('sleep', path='/usr/bin:/bin'))
    runner = CommandRunner(module, timeout=1)
    started = time.monotonic()
    with pytest.raises(ComposeTimeout) as info:
        runner.run([slow])
    assert time.monotonic() - started < 10
    assert 'within 1s' in str(info.value)
    assert runner.run(['/bin/sh', '-c', 'echo ok'])[0:2] == (0, 'ok\n')


def test_runner_reports_a_command_that_outlives_term_as_stopped_too(module, fake_bin, monkeypatch):
    """docker-compose v1 ignores TERM while it cleans up: at the KILL, timeout takes its own process group down with
    the command (rc -9 here, not 137). That is still a command stopped at its deadline, not a failure of its own."""
    monkeypatch.setattr(_compose, 'KILL_GRACE_SECONDS', 1)
    stubborn = fake_exe(fake_bin, 'stubborn', "trap '' TERM\nwhile :; do %s 0.1; done\n"
                        % shutil.which('sleep', path='/usr/bin:/bin'))
    runner = CommandRunner(module, timeout=1)
    started = time.monotonic()
    with pytest.raises(ComposeTimeout) as info:
        runner.run([stubborn])
    assert time.monotonic() - started < 10
    assert info.value.rc in (124, 137, -9) and 'within 1s' in str(info.value)


def test_no_command_runs_without_a_deadline(module, fake_bin, monkeypatch):
    """A runner and a project given no timeout (compose config in compose_up's check mode, before the fix) still stop a
    hung command, at DEFAULT_COMMAND_TIMEOUT, with a ComposeTimeout naming the command and the limit."""
    monkeypatch.setattr(_compose, 'DEFAULT_COMMAND_TIMEOUT', 1)
    hung = fake_exe(fake_bin, 'hung', 'exec %s 30\n' % shutil.which('sleep', path='/usr/bin:/bin'))
    runner = CommandRunner(module)
    started = time.monotonic()
    with pytest.raises(ComposeTimeout) as info:
        runner.run([hung])
    assert time.monotonic() - started < 10
    assert 'within 1s' in str(info.value) and hung in str(info.value)
    project = ComposeProject(runner, ComposeCli([hung], '2.24.6'), str(fake_bin), 'p', [str(fake_bin / 'c.yml')])
    started = time.monotonic()
    with pytest.raises(ComposeTimeout):
        project.render_config()
    assert time.monotonic() - started < 10


def test_a_project_deadline_bounds_its_commands_given_none(module, fake_bin, monkeypatch):
    monkeypatch.setattr(_compose, 'DEFAULT_COMMAND_TIMEOUT', 600)
    hung = fake_exe(fake_bin, 'hung', 'exec %s 30\n' % shutil.which('sleep', path='/usr/bin:/bin'))
    project = ComposeProject(CommandRunner(module), ComposeCli([hung], '2.24.6'), str(fake_bin), 'p',
                             [str(fake_bin / 'c.yml')], timeout=1)
    started = time.monotonic()
    with pytest.raises(ComposeTimeout) as info:
        project.render_config()
    assert time.monotonic() - started < 10 and 'within 1s' in str(info.value)


def test_runner_without_coreutils_timeout_warns(module, monkeypatch):
    monkeypatch.setattr(warnings, '_global_warnings', {})
    runner = CommandRunner(module, timeout=5)
    runner._timeout_bin = None  # a host without coreutils (get_bin_path also searches sbin)
    assert runner.run(['/bin/sh', '-c', 'exit 0'])[0] == 0
    assert any('without a deadline' in warning for warning in warnings.get_warning_messages())


def test_find_default_compose_files(tmp_path):
    assert find_default_compose_files(str(tmp_path)) == []
    (tmp_path / 'docker-compose.yml').write_text('services: {}\n')
    assert find_default_compose_files(str(tmp_path)) == [str(tmp_path / 'docker-compose.yml')]
    (tmp_path / 'docker-compose.override.yml').write_text('services: {}\n')
    (tmp_path / 'compose.yaml').write_text('services: {}\n')
    assert find_default_compose_files(str(tmp_path)) == [str(tmp_path / 'compose.yaml')]
    (tmp_path / 'compose.override.yml').write_text('services: {}\n')
    assert find_default_compose_files(str(tmp_path)) == [str(tmp_path / 'compose.yaml'),
                                                         str(tmp_path / 'compose.override.yml')]


def project_in(module, directory, env_files=None):
    runner = CommandRunner(module, timeout=60)
    return ComposeProject(runner, detect_compose(module, runner), str(directory), 'sdt-pin-unit',
                          [str(directory / 'compose.yaml')], env_files, timeout=60)


def test_rendered_config_and_hash_follow_the_env_file(module, tmp_path):
    (tmp_path / 'compose.yaml').write_text(
        'services:\n'
        '  web:\n    image: 127.0.0.1:5000/sdt-pin/web:${TAG}\n'
        '  builder:\n    build: ./builder\n')
    (tmp_path / 'builder').mkdir()
    (tmp_path / 'builder' / 'Dockerfile').write_text('FROM scratch\n')
    (tmp_path / '.env').write_text('TAG=one\n')
    project = project_in(module, tmp_path)
    text, config = project.load_config()
    assert services_of(config) == {'builder': {'image': None, 'build': True},
                                   'web': {'image': '127.0.0.1:5000/sdt-pin/web:one', 'build': False}}
    first = compose_hash(config)
    assert compose_hash(project.load_config()[1]) == first  # stable
    (tmp_path / '.env').write_text('TAG=two\n')
    assert compose_hash(project.load_config()[1]) != first
    (tmp_path / 'other.env').write_text('TAG=three\n')
    text, config = project_in(module, tmp_path, [str(tmp_path / 'other.env')]).load_config()
    assert config['services']['web']['image'].endswith(':three')


def test_invalid_compose_file_is_a_compose_error_with_the_cause(module, tmp_path):
    (tmp_path / 'compose.yaml').write_text('services:\n  web:\n    image: [not, a, string]\n')
    with pytest.raises(ComposeError) as info:
        project_in(module, tmp_path).render_config()
    assert info.value.rc != 0
    assert 'sdt-pin-unit' in str(info.value) and 'image' in str(info.value)


def test_parse_config_reads_json_from_v2_and_yaml_from_v1():
    assert parse_config('{"services": {"a": {"image": "x:1"}}}', ComposeCli(['docker', 'compose'], '2.20.0')) == \
        {'services': {'a': {'image': 'x:1'}}}
    assert parse_config('services:\n  a:\n    image: x:1\n', ComposeCli(['docker-compose'], '1.29.2')) == \
        {'services': {'a': {'image': 'x:1'}}}
    with pytest.raises(ComposeError):
        parse_config('', ComposeCli(['docker-compose'], '1.29.2'))


def test_detect_remembers_a_standalone_version_per_build(module, fake_bin, tmp_path):
    fake_exe(fake_bin, 'docker', NO_PLUGIN)
    calls = tmp_path / 'calls'
    standalone = fake_exe(fake_bin, 'docker-compose', 'echo x >> %s\n' % calls + V1)
    cache = str(tmp_path / 'cache' / 'compose-cli.json')
    assert detect_compose(module, cache_path=cache).version == '1.29.2'
    assert detect_compose(module, cache_path=cache).version == '1.29.2'
    assert calls.read_text().count('x') == 1, 'the second detection asked the binary again'
    # an upgraded binary (other size and mtime) is asked again, and its answer replaces the old one
    fake_exe(fake_bin, 'docker-compose', 'echo x >> %s\n' % calls + V1.replace('1.29.2', '2.27.0') + '# upgraded\n')
    cli = detect_compose(module, cache_path=cache)
    assert cli.version == '2.27.0' and not cli.is_v1 and cli.argv == [standalone]
    assert calls.read_text().count('x') == 2


def test_detect_remembers_the_plugin_version_until_a_file_that_decides_it_changes(
        module, fake_bin, tmp_path, monkeypatch):
    config_dir = tmp_path / 'docker-config'
    monkeypatch.setenv('DOCKER_CONFIG', str(config_dir))
    calls = tmp_path / 'calls'
    cache = str(tmp_path / 'cache' / 'compose-cli.json')
    docker = fake_exe(fake_bin, 'docker', 'echo x >> %s\n' % calls + PLUGIN)

    def asked():
        return calls.read_text().count('x') if calls.exists() else 0

    assert detect_compose(module, cache_path=cache).version == '2.24.6'
    assert detect_compose(module, cache_path=cache).argv == [docker, 'compose']
    assert asked() == 1, 'the second detection asked the plugin again'
    # a plugin installed in the user's plugin dir would now answer: asked again
    (config_dir / 'cli-plugins').mkdir(parents=True)
    (config_dir / 'cli-plugins' / 'docker-compose').write_text('another build')
    assert detect_compose(module, cache_path=cache).version == '2.24.6'
    assert asked() == 2
    # a config.json written (it may name more plugin dirs): asked again
    (config_dir / 'config.json').write_text('{"cliPluginsExtraDirs": ["/opt/plugins"]}')
    detect_compose(module, cache_path=cache)
    assert asked() == 3
    # a plugin dir that config.json adds: a plugin installed or upgraded there is asked again
    extra = tmp_path / 'extra-plugins'
    extra.mkdir()
    (config_dir / 'config.json').write_text('{"cliPluginsExtraDirs": ["%s"]}' % extra)
    detect_compose(module, cache_path=cache)
    assert asked() == 4
    detect_compose(module, cache_path=cache)
    assert asked() == 4, 'nothing changed, yet the plugin was asked again'
    (extra / 'docker-compose').write_text('a build in the extra dir')
    detect_compose(module, cache_path=cache)
    assert asked() == 5
    # an upgraded docker CLI: asked again, and its answer replaces the old one
    fake_exe(fake_bin, 'docker', 'echo x >> %s\n' % calls + PLUGIN.replace('2.24.6', '2.30.1') + '# upgraded\n')
    assert detect_compose(module, cache_path=cache).version == '2.30.1'
    assert detect_compose(module, cache_path=cache).version == '2.30.1'
    assert asked() == 6


def test_detect_never_caches_a_failure(module, fake_bin, tmp_path):
    cache = tmp_path / 'compose-cli.json'
    calls = tmp_path / 'calls'
    fake_exe(fake_bin, 'docker', 'echo x >> %s\n' % calls + NO_PLUGIN)
    fake_exe(fake_bin, 'docker-compose', 'exit 3\n')
    for _attempt in range(2):
        with pytest.raises(ComposeNotFound):
            detect_compose(module, cache_path=str(cache))
    assert calls.read_text().count('x') == 2, 'a failed detection was remembered'
    assert not cache.exists()


def test_unwritable_or_corrupt_cache_only_costs_a_question(module, fake_bin, tmp_path):
    fake_exe(fake_bin, 'docker', NO_PLUGIN)
    fake_exe(fake_bin, 'docker-compose', V1)
    corrupt = tmp_path / 'corrupt.json'
    corrupt.write_text('{not json')
    assert detect_compose(module, cache_path=str(corrupt)).version == '1.29.2'
    blocker = tmp_path / 'file'
    blocker.write_text('')
    assert detect_compose(module, cache_path=str(blocker / 'sub' / 'c.json')).version == '1.29.2'


def test_with_images_merges_like_a_last_override_file():
    config = {'services': {'web': {'image': 'r/web:1', 'ports': ['80:80']}, 'job': {'build': {'context': '.'}}},
              'volumes': {'data': {}}}
    merged = with_images(config, {'web': 'r/web:2@sha256:' + 'a' * 64})
    assert merged == {'services': {'web': {'image': 'r/web:2@sha256:' + 'a' * 64, 'ports': ['80:80']},
                                   'job': {'build': {'context': '.'}}}, 'volumes': {'data': {}}}
    assert config['services']['web']['image'] == 'r/web:1', 'the input was modified'
    assert compose_hash(merged) != compose_hash(config)
    # canonical: key order does not matter, content does
    assert compose_hash({'b': 1, 'a': [1, 2]}) == compose_hash({'a': [1, 2], 'b': 1})
    assert compose_hash({'a': [2, 1]}) != compose_hash({'a': [1, 2]})
