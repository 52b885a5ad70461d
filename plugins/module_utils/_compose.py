# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private module_utils of safedeploy.compose: the Docker Compose command line. Not a public API;
# it may change in any release.
#
# - detect_compose() finds the CLI a compose_command choice asks for: auto prefers the v2 plugin
#   (`docker compose`) and falls back to v1 (`docker-compose`); v2 and v1 insist on that major version.
# - ComposeProject builds argv lists (never shell strings) that always carry the project name, the
#   project directory, every -f file and every --env-file, so no command depends on the current
#   directory or on COMPOSE_* variables of whoever runs Ansible.
# - render_config() runs `compose config`: it validates the files and gives the effective
#   configuration. The rendered text may hold secrets from env files: callers keep it to themselves
#   and report only the hash.
# - compose_hash() is the sha256 of the configuration as canonical JSON (keys sorted), so it does not
#   depend on how one compose version prints YAML. with_images() applies an override that only sets
#   `image:` in-process, the way compose merges a last -f file, which spares a second `compose config`
#   (a docker-compose v1 start costs most of a second on a small host).
# - A standalone docker-compose answers `version` slowly (v1 is a Python program); its version is
#   remembered in a small cache keyed by the binary's path, inode, size and mtime, so a replaced
#   binary is asked again. The v2 plugin answers in milliseconds and is always asked.
# - Compose has no timeout of its own. Commands run through coreutils `timeout` (TERM at the
#   deadline, KILL 10 s later, to the whole process group compose starts), via module.run_command;
#   exit codes 124/137 become ComposeTimeout. No command runs without a deadline: one given none (by its
#   caller or its runner) gets DEFAULT_COMMAND_TIMEOUT. A host without `timeout` runs commands unbounded,
#   with a warning.
# - find_interrupted_recreate_leftovers() lists the `<12 hex>_<name>` containers a recreate
#   interrupted half-way leaves behind, with v1 and with v2 (they block the next `up` or get adopted).

from __future__ import annotations

import hashlib
import json
import os
import re

from ansible_collections.safedeploy.compose.plugins.module_utils._atomic_file import write_file_atomic

try:
    import yaml
    HAS_YAML = True
except ImportError:  # pragma: no cover - PyYAML ships with ansible-core on the controller, maybe not on hosts
    yaml = None
    HAS_YAML = False

COMPOSE_FILE_NAMES = ('compose.yaml', 'compose.yml', 'docker-compose.yaml', 'docker-compose.yml')
# The labels Compose puts on what it creates: the one definition every module reads them by.
PROJECT_LABEL = 'com.docker.compose.project'
SERVICE_LABEL = 'com.docker.compose.service'
ONEOFF_LABEL = 'com.docker.compose.oneoff'
VERSION_LABEL = 'com.docker.compose.version'
CONFIG_HASH_LABEL = 'com.docker.compose.config-hash'
LEFTOVER_NAME = re.compile(r'^[0-9a-f]{12}_')
KILL_GRACE_SECONDS = 10
DETECT_TIMEOUT = 30
DEFAULT_COMMAND_TIMEOUT = 300  # a command whose caller gave no deadline (compose config, ps): never unbounded
DEFAULT_CLI_CACHE = '~/.cache/safedeploy/compose-cli.json'
_VERSION = re.compile(r'v?(\d+)\.(\d+)\.(\d+)')


class ComposeError(Exception):
    """A compose command failed or could not run; carries argv, rc and output for the caller's message."""

    def __init__(self, message, argv=None, rc=None, stdout='', stderr=''):
        super(ComposeError, self).__init__(message)
        self.message = message
        self.argv = argv
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr


class ComposeTimeout(ComposeError):
    pass


class ComposeNotFound(ComposeError):
    pass


class ComposeCli(object):
    """The compose command found on this host: argv prefix and version."""

    def __init__(self, argv, version):
        self.argv = list(argv)
        self.version = version
        match = _VERSION.search(version or '')
        self.version_info = tuple(int(part) for part in match.groups()) if match else (0, 0, 0)

    @property
    def major(self):
        return self.version_info[0]

    @property
    def is_v1(self):
        return self.major == 1

    def __repr__(self):
        return 'ComposeCli(%r, %r)' % (self.argv, self.version)


class CommandRunner(object):
    """Runs argv lists through module.run_command, each bounded by a timeout."""

    def __init__(self, module, timeout=None, environ_update=None):
        self.module = module
        self.timeout = timeout
        self.environ_update = dict(environ_update or {})
        self._timeout_bin = module.get_bin_path('timeout')
        self._warned = False

    def run(self, argv, timeout=None, cwd=None, data=None):
        """(rc, stdout, stderr); raises ComposeTimeout when the deadline killed the command.

        The deadline is `timeout`, else the runner's, else DEFAULT_COMMAND_TIMEOUT: a command never runs unbounded."""
        timeout = timeout or self.timeout or DEFAULT_COMMAND_TIMEOUT
        full = list(argv)
        if self._timeout_bin:
            full = [self._timeout_bin, '--kill-after=%ds' % KILL_GRACE_SECONDS, '%ds' % int(timeout)] + full
        elif not self._warned:
            self._warned = True
            self.module.warn('coreutils timeout is not installed on this host: compose commands run without a deadline')
        rc, out, err = self.module.run_command(full, cwd=cwd, data=data, environ_update=self.environ_update)
        # 124: stopped by TERM; 137: by KILL after the grace; -9: timeout signals its whole process group, so at the
        # KILL it goes down with the command (docker-compose v1 outlives TERM while it cleans up a one-off container)
        if self._timeout_bin and rc in (124, 137, -9):
            raise ComposeTimeout('%s did not finish within %ss and was stopped' % (' '.join(argv), timeout),
                                 argv=argv, rc=rc, stdout=out, stderr=err)
        return rc, out, err


# What each choice of the compose_command option looks for, in order, and the major versions it accepts.
COMPOSE_CHOICES = {
    'auto': (('plugin', 'standalone'), None),
    'v2': (('plugin', 'standalone'), 2),  # the v2 plugin, or a standalone docker-compose that is v2
    'v1': (('standalone',), 1),
}


def detect_compose(module, runner=None, choice='auto', cache_path=None):
    """The compose CLI of this host for a compose_command choice (auto, v2 or v1).

    auto: `docker compose` if the plugin answers, else `docker-compose`. v2: the plugin, or a standalone
    docker-compose that answers 2.x or later. v1: a standalone docker-compose that answers 1.x.
    With cache_path, the version a CLI answered is read from and written to that file, keyed on the build of
    every file that decides the answer (see _cli_identity), so `version` runs once per install, not once per
    module run. Raises ComposeNotFound naming what was tried and how to fix it.
    """
    runner = runner or CommandRunner(module)
    prefer, major = COMPOSE_CHOICES[choice]
    tried = []
    for kind in prefer:
        if kind == 'plugin':
            docker = module.get_bin_path('docker')
            if not docker:
                tried.append('docker compose (no docker CLI on PATH)')
                continue
            argv = [docker, 'compose']
        else:
            standalone = module.get_bin_path('docker-compose')
            if not standalone:
                tried.append('docker-compose (not on PATH)')
                continue
            argv = [standalone]
        key, identity = _cli_identity(kind, argv[0])
        version = _cached_version(cache_path, key, identity)
        if version is None:
            try:
                rc, out, err = runner.run(argv + ['version', '--short'], timeout=DETECT_TIMEOUT)
            except ComposeTimeout:
                tried.append('%s (version did not answer within %ss)' % (' '.join(argv), DETECT_TIMEOUT))
                continue
            text = (out or '').strip()
            if rc != 0 or not _VERSION.search(text):
                tried.append('%s (rc=%s: %s)' % (' '.join(argv + ['version']), rc, (err or out or '').strip()[:200]))
                continue
            version = _VERSION.search(text).group(0).lstrip('v')
            _remember_version(cache_path, key, identity, version)
        cli = ComposeCli(argv, version)
        if major is not None and (cli.major < 2 if major == 2 else cli.major != major):
            tried.append('%s (answers %s, not v%s)' % (' '.join(argv), version, major))
            continue
        return cli
    if choice == 'auto':
        fix = 'install the docker compose plugin (v2) or docker-compose (v1)'
    elif choice == 'v2':
        fix = 'install the docker compose plugin (v2), or set compose_command to auto to use what is there'
    else:
        fix = 'install docker-compose 1.x, or set compose_command to auto or v2'
    raise ComposeNotFound('no Docker Compose CLI for compose_command=%s found on this host (tried: %s): %s'
                          % (choice, '; '.join(tried), fix))


def _binary_identity(path):
    """(real path, 'inode:size:mtime') of one build of an executable, or (None, None) if unreadable."""
    try:
        real = os.path.realpath(path)
        info = os.stat(real)
    except OSError:
        return None, None
    return real, '%d:%d:%d' % (info.st_ino, info.st_size, info.st_mtime_ns)


# Where the docker CLI looks for its plugins besides the user's config dir ($DOCKER_CONFIG/cli-plugins, else
# ~/.docker/cli-plugins), first match wins (docs.docker.com, "CLI plugins"; checked with the docker 20.10 CLI).
CLI_PLUGIN_DIRS = ('/usr/local/lib/docker/cli-plugins', '/usr/local/libexec/docker/cli-plugins',
                   '/usr/lib/docker/cli-plugins', '/usr/libexec/docker/cli-plugins')


def _cli_identity(kind, binary):
    """(cache key, identity) of what answers `version` for a CLI: a standalone docker-compose is one file; the plugin
    is the docker CLI, its config.json (which may name more plugin dirs) and the docker-compose file of every plugin
    dir, present or not, so that installing, upgrading or removing a plugin anywhere asks the CLI again."""
    real, identity = _binary_identity(binary)
    if kind == 'standalone' or not real:
        return real, identity
    config_dir = os.environ.get('DOCKER_CONFIG') or os.path.join(os.path.expanduser('~'), '.docker')
    config_file = os.path.join(config_dir, 'config.json')
    directories = [os.path.join(config_dir, 'cli-plugins')] + _extra_plugin_dirs(config_file) + list(CLI_PLUGIN_DIRS)
    parts = [identity]
    for path in [config_file] + [os.path.join(directory, 'docker-compose') for directory in directories]:
        parts.append('%s=%s' % (path, _binary_identity(path)[1] or '-'))
    return real + ' compose', '|'.join(parts)


def _extra_plugin_dirs(config_file):
    """The plugin directories a Docker config.json adds (cliPluginsExtraDirs), searched before the system ones."""
    try:
        with open(config_file) as handle:
            extra = json.load(handle).get('cliPluginsExtraDirs')
    except (IOError, OSError, ValueError, AttributeError):
        return []
    return [os.path.expanduser(item) for item in extra if isinstance(item, str)] if isinstance(extra, list) else []


def _read_cache(cache_path):
    try:
        with open(os.path.expanduser(cache_path)) as handle:
            data = json.load(handle)
    except (IOError, OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cached_version(cache_path, key, identity):
    """The version remembered for key when it was remembered for this identity, or None."""
    if not cache_path or not key:
        return None
    entry = _read_cache(cache_path).get(key)
    if not isinstance(entry, dict) or entry.get('id') != identity:
        return None
    version = entry.get('version')
    return version if isinstance(version, str) and _VERSION.search(version) else None


def _remember_version(cache_path, key, identity, version):
    """Best effort: an unwritable cache only means asking the binary again next time."""
    if not cache_path or not key:
        return
    path = os.path.expanduser(cache_path)
    directory = os.path.dirname(path)
    data = _read_cache(cache_path)
    data[key] = {'id': identity, 'version': version}
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        write_file_atomic(path, json.dumps(data, sort_keys=True).encode('utf-8'), 0o600)
    except (IOError, OSError):
        pass


def find_default_compose_files(project_src):
    """[base file, its .override file if present], the way compose picks files when given no -f.

    The first of compose.yaml, compose.yml, docker-compose.yaml, docker-compose.yml wins; its
    override sibling (compose.override.yaml, ...) comes with it. [] when there is none.
    """
    for name in COMPOSE_FILE_NAMES:
        path = os.path.join(project_src, name)
        if os.path.isfile(path):
            files = [path]
            stem = name.rsplit('.', 1)[0]
            for ext in ('yaml', 'yml'):
                override = os.path.join(project_src, '%s.override.%s' % (stem, ext))
                if os.path.isfile(override):
                    files.append(override)
                    break
            return files
    return []


class ComposeProject(object):
    """One compose project: its name, directory, files and env files, and the argv of each command."""

    def __init__(self, runner, cli, project_dir, project_name, files, env_files=None, timeout=None):
        self.runner = runner
        self.cli = cli
        self.project_dir = project_dir
        self.project_name = project_name
        self.files = list(files)
        self.env_files = list(env_files or [])
        self.timeout = timeout
        if cli.is_v1 and len(self.env_files) > 1:
            raise ComposeError('docker-compose %s accepts a single --env-file, %d were given (%s): merge them into '
                               'one file or install the docker compose plugin (v2)'
                               % (cli.version, len(self.env_files), ', '.join(self.env_files)))

    def global_args(self, extra_files=()):
        args = ['-p', self.project_name, '--project-directory', self.project_dir]
        for path in list(self.files) + list(extra_files):
            args += ['-f', path]
        for path in self.env_files:
            args += ['--env-file', path]
        return args

    def argv(self, subcommand, extra_files=()):
        return self.cli.argv + self.global_args(extra_files) + list(subcommand)

    def config_argv(self, extra_files=()):
        sub = ['config']
        if not self.cli.is_v1:
            sub += ['--format', 'json']
        return self.argv(sub, extra_files)

    def pull_argv(self, services=(), extra_files=(), quiet=True):
        sub = ['pull'] + (['--quiet'] if quiet else [])
        return self.argv(sub + list(services), extra_files)

    def up_argv(self, services=(), extra_files=(), no_build=False, force_recreate=False, extra=()):
        sub = ['up', '-d', '--remove-orphans']
        if no_build:
            sub.append('--no-build')
        if force_recreate:
            sub.append('--force-recreate')
        return self.argv(sub + list(extra) + list(services), extra_files)

    def ps_argv(self, extra_files=(), all_containers=True, quiet=False):
        sub = ['ps']
        if all_containers:
            sub.append('--all')
        if quiet:
            sub.append('--quiet')
        return self.argv(sub, extra_files)

    def down_argv(self, extra_files=(), remove_orphans=True, volumes=False, stop_timeout=None):
        sub = ['down']
        if remove_orphans:
            sub.append('--remove-orphans')
        if volumes:
            sub.append('--volumes')
        if stop_timeout is not None:
            sub += ['--timeout', str(int(stop_timeout))]
        return self.argv(sub, extra_files)

    def run_argv(self, service, command=(), extra_files=(), environment=None, no_deps=True, name=None):
        # -T: modules never have a terminal, and v1 would otherwise try to allocate one
        sub = ['run', '--rm', '-T']
        if no_deps:
            sub.append('--no-deps')
        if name:
            sub += ['--name', name]
        for key in sorted(environment or {}):
            sub += ['-e', '%s=%s' % (key, environment[key])]
        return self.argv(sub + [service] + list(command), extra_files)

    def run(self, argv, timeout=None, action=None):
        """Run one of the argv above in the project directory; raise ComposeError unless rc is 0."""
        rc, out, err = self.runner.run(argv, timeout=self.timeout if timeout is None else timeout, cwd=self.project_dir)
        if rc != 0:
            raise ComposeError('%s for compose project %s failed (rc=%s): %s' % (
                action or 'running %s' % ' '.join(argv), self.project_name, rc, _tail(err or out)),
                argv=argv, rc=rc, stdout=out, stderr=err)
        return out

    def render_config(self, extra_files=()):
        """The effective configuration as compose prints it (text); validates the files on the way."""
        argv = self.config_argv(extra_files)
        return self.run(argv, action='validating the compose files (compose config)')

    def load_config(self, extra_files=()):
        """(rendered text, parsed dict) of the effective configuration."""
        text = self.render_config(extra_files)
        return text, parse_config(text, self.cli)

    def services(self, config):
        return services_of(config)

    def service_hashes(self, extra_files=()):
        """{service: config hash} as compose computes it (`config --hash=*`): the label
        com.docker.compose.config-hash a container of the files would carry, so a container whose label differs is
        one `up` would recreate. Both CLIs have it (checked: v2.40, v1.29)."""
        out = self.run(self.argv(['config', '--hash=*'], extra_files), action='hashing the services (compose config --hash)')
        hashes = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2:
                hashes[parts[0]] = parts[1]
        return hashes

    def scale_argv(self, service, count, extra_files=()):
        """`up` of one service to `count` containers, keeping the ones that run (new ones get the files' config)."""
        return self.argv(['up', '-d', '--no-deps', '--no-recreate', '--scale', '%s=%d' % (service, count), service],
                         extra_files)


# The arguments of a module that runs commands of one compose project (doc fragment _compose_project).
COMPOSE_PROJECT_ARGUMENT_SPEC = dict(
    project_src=dict(type='path', required=True),
    project_name=dict(type='str', required=True),
    files=dict(type='list', elements='path', required=True),
    env_files=dict(type='list', elements='path'),
    compose_command=dict(type='str', default='auto', choices=['auto', 'v2', 'v1']),
)


def open_project(module, who, result, timeout=None):
    """The ComposeProject of a module's COMPOSE_PROJECT_ARGUMENT_SPEC arguments (and its docker_host), on the compose
    CLI found on this host; or fail the module (named `who` in messages) saying what is missing, with `result`'s
    keys. Sets result's compose_argv and compose_version. `timeout` is the deadline of the project's commands that
    are given none of their own (compose config); without it they get DEFAULT_COMMAND_TIMEOUT."""
    params = module.params
    src = os.path.abspath(params['project_src'])
    if not os.path.isdir(src):
        module.fail_json(msg='%s: project_src %s is not a directory' % (who, src), **result)
    files = [path if os.path.isabs(path) else os.path.join(src, path) for path in params['files']]
    env_files = [path if os.path.isabs(path) else os.path.join(src, path) for path in params['env_files'] or []]
    absent = [path for path in files + env_files if not os.path.isfile(path)]
    if absent:
        module.fail_json(msg='%s: %s not found: give the files compose_pin returned (files) and the env files'
                         % (who, ', '.join(absent)), **result)
    environ = {'DOCKER_HOST': params['docker_host']} if params.get('docker_host') else {}
    runner = CommandRunner(module, environ_update=environ)
    try:
        cli = detect_compose(module, runner, choice=params['compose_command'], cache_path=DEFAULT_CLI_CACHE)
        project = ComposeProject(runner, cli, src, params['project_name'], files, env_files, timeout=timeout)
    except ComposeError as exc:
        module.fail_json(msg='%s: %s' % (who, exc.message), **result)
    result.update(compose_argv=project.argv([]), compose_version=cli.version)
    return project


def parse_config(text, cli):
    if not cli.is_v1:
        try:
            return json.loads(text)
        except ValueError:
            pass  # older v2 releases without --format json print YAML
    if not HAS_YAML:
        raise ComposeError('reading the output of compose config needs the Python library PyYAML on this host')
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ComposeError('compose config printed something that is not YAML: %s' % exc)
    if not isinstance(data, dict):
        raise ComposeError('compose config printed no configuration')
    return data


def services_of(config):
    """{service: {'image': str or None, 'build': bool}} from a rendered configuration."""
    found = {}
    for name, spec in sorted((config.get('services') or {}).items()):
        spec = spec or {}
        found[name] = {'image': spec.get('image') or None, 'build': bool(spec.get('build'))}
    return found


def with_images(config, images, logging=None, scale=None):
    """A copy of a parsed configuration with services' `image` replaced, as an override that sets only
    `image:` and comes last among the -f files merges (compose gives the last file the last word).
    `logging` ({service: logging mapping}) sets `logging:` too, for services that have none of their own, and `scale`
    ({service: n}) sets `scale:` (the routed services compose_slot runs, scaled to 0 in the project)."""
    merged = json.loads(json.dumps(config))
    services = merged.setdefault('services', {})
    for key, values in (('image', images), ('logging', logging or {}), ('scale', scale or {})):
        for service, value in values.items():
            spec = services.get(service)
            if not isinstance(spec, dict):
                spec = services[service] = {}
            spec[key] = json.loads(json.dumps(value))
    return merged


def compose_hash(config):
    """sha256 (hex) of a parsed configuration as canonical JSON: any change of files, env files or
    interpolated environment shows, independent of how the compose version formats its output."""
    canonical = json.dumps(config, sort_keys=True, separators=(',', ':'), ensure_ascii=True)
    return hashlib.sha256(canonical.encode('utf-8')).hexdigest()


def _env_file_paths(compose_file):
    """The `env_file:` paths the services of one compose file name, absolute (relative ones are taken from the
    file's directory, as compose does). Paths with a variable in them are left out: compose resolves those."""
    if not HAS_YAML:
        return []
    try:
        with open(compose_file, 'rb') as handle:
            data = yaml.safe_load(handle)
    except (IOError, OSError, yaml.YAMLError):
        return []  # compose config already read it: a file it cannot parse fails there, with compose's words
    found = []
    services = data.get('services') if isinstance(data, dict) else None
    for spec in (services or {}).values():
        entries = spec.get('env_file') if isinstance(spec, dict) else None
        if isinstance(entries, (str, dict)):
            entries = [entries]
        for entry in entries or []:
            path = entry.get('path') if isinstance(entry, dict) else entry
            if isinstance(path, str) and path and '$' not in path:
                found.append(os.path.normpath(os.path.join(os.path.dirname(compose_file), path)))
    return found


def config_files(project, config, extra_files=()):
    """Every file the configuration of `project` is made of, absolute and in a stable order: its compose files,
    `extra_files` (the pinned override), its env files (or the project directory's `.env`, which compose reads
    when given none), the services' `env_file:` entries and the files of `configs:` and `secrets:`. Files that do
    not exist (an optional env file) are left out. This is what a release snapshot keeps."""
    paths = list(project.files) + list(extra_files)
    if project.env_files:
        paths += project.env_files
    else:
        paths.append(os.path.join(project.project_dir, '.env'))
    for compose_file in project.files:
        paths += _env_file_paths(compose_file)
    for section in ('configs', 'secrets'):
        for spec in (config.get(section) or {}).values():
            path = spec.get('file') if isinstance(spec, dict) else None
            if isinstance(path, str) and path:
                paths.append(os.path.normpath(os.path.join(project.project_dir, path)))
    found = []
    for path in paths:
        path = os.path.abspath(path)
        if path not in found and os.path.isfile(path):
            found.append(path)
    return found


def find_interrupted_recreate_leftovers(client, project):
    """The `<12 hex>_<name>` containers of a compose project, as {id, name, status}; nothing is changed.

    docker-compose v1 recreates by renaming the old container to `<its short id>_<name>`, creating the new
    one and removing the old one; Compose v2 creates the replacement as `<old short id>_<name>`, removes the
    old container and renames the replacement last. A run killed in between leaves the `<hex>_<name>`
    container behind (v1: the old release, v2: the new one, not started), and the next `up` then fails or
    adopts it (the roles remove what this finds, right before `up`). The project is found by label
    (container names differ between compose v1 and v2): one engine call.
    """
    found = []
    for entry in client.api.containers(all=True, filters={'label': '%s=%s' % (PROJECT_LABEL, project)}):
        names = [name.lstrip('/') for name in entry.get('Names') or []]
        name = next((name for name in names if LEFTOVER_NAME.match(name)), None)
        if name is not None:
            found.append({'id': entry['Id'], 'name': name, 'status': entry.get('State') or ''})
    return found


def tail_lines(text, lines=15):
    """The last `lines` non-blank lines of a command's output ('' when it printed nothing)."""
    kept = [line for line in (text or '').strip().splitlines() if line.strip()]
    return '\n'.join(kept[-lines:])


def _tail(text, lines=15):
    return tail_lines(text, lines) or '(no output)'
