"""Shared pytest plumbing: the collection on sys.path, a module runner, and the test bed fixtures.

Modules run exactly as Ansible runs them on a host: a separate Python process reading
``{"ANSIBLE_MODULE_ARGS": ...}`` from a file, so ``fail_json``/``exit_json`` and no_log
filtering behave as in production.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COLLECTIONS = ROOT / '.build' / 'collections'
# run_playbook's and run_module's own inventory, extra-vars and arguments files in the temporary directory: they hold a test's secrets on purpose
# (registry passwords), so test_secrets.py, which looks for secrets in every new temporary file, leaves them out; a
# test in the other integration process may be writing one while it looks.
HARNESS_PREFIX = 'sdt-harness-'
LINK = COLLECTIONS / 'ansible_collections' / 'safedeploy' / 'compose'


def ensure_collection_link():
    """Expose this checkout as ansible_collections.safedeploy.compose (idempotent)."""
    LINK.parent.mkdir(parents=True, exist_ok=True)
    if not LINK.is_symlink():
        LINK.symlink_to(os.path.relpath(ROOT, LINK.parent))
    return COLLECTIONS


ensure_collection_link()
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))
sys.path.insert(0, str(ROOT / 'tests'))

from testbed import testbed as testbed_mod  # noqa: E402  (needs sys.path above)


def pytest_configure(config):
    config.addinivalue_line('markers', 'engine_free: a test that uses no Docker engine, registry or Compose at all '
                                       '(it may run while the test bed is busy or down)')
    config.addinivalue_line('markers', 'compose_cli: a test whose outcome depends on the Compose CLI; the v1 '
                                       'compatibility leg (make test-compose-v1) runs these with docker-compose v1')


class ModuleResult(dict):
    """A module's JSON result plus the raw process output (for no_log assertions)."""

    stdout = ''
    stderr = ''
    rc = 0

    @property
    def failed(self):
        return bool(self.get('failed'))


def run_module(name, args, check=False, diff=False, env=None, timeout=300):
    """Run plugins/modules/<name>.py as Ansible would and return its parsed result.

    compose_pin runs on the Compose under test (SAFEDEPLOY_TEST_COMPOSE) unless the test chooses one."""
    payload = dict(args)
    if name == 'compose_pin':
        payload.setdefault('compose_command', testbed_mod.COMPOSE_UNDER_TEST)
    payload['_ansible_check_mode'] = check
    payload['_ansible_diff'] = diff
    payload.setdefault('_ansible_remote_tmp', tempfile.gettempdir())
    payload.setdefault('_ansible_tmpdir', tempfile.gettempdir())
    with tempfile.NamedTemporaryFile('w', prefix=HARNESS_PREFIX, suffix='.json', delete=False) as handle:
        json.dump({'ANSIBLE_MODULE_ARGS': payload}, handle)
        args_file = handle.name
    run_env = dict(os.environ)
    run_env['PYTHONPATH'] = os.pathsep.join([str(COLLECTIONS), run_env.get('PYTHONPATH', '')]).rstrip(os.pathsep)
    if env:
        run_env.update(env)
    try:
        proc = subprocess.run(
            [sys.executable, '-m', 'ansible_collections.safedeploy.compose.plugins.modules.%s' % name, args_file],
            capture_output=True, text=True, env=run_env, timeout=timeout, check=False)
    finally:
        os.unlink(args_file)
    try:
        start = proc.stdout.index('{')
        result = ModuleResult(json.loads(proc.stdout[start:]))
    except ValueError:
        raise AssertionError('module %s printed no JSON (rc=%s)\nstdout:\n%s\nstderr:\n%s'
                             % (name, proc.returncode, proc.stdout, proc.stderr))
    result.stdout, result.stderr, result.rc = proc.stdout, proc.stderr, proc.returncode
    return result


@pytest.fixture(name='run_module')
def run_module_fixture():
    return run_module


@pytest.fixture(scope='session')
def testbed():
    """The engine, the two registries and the test images (brought up once, idempotently)."""
    return testbed_mod.up()


@pytest.fixture(scope='session')
def small_engine(testbed):
    """A second dockerd whose data-root is a small loop-mounted ext4 filesystem (torn down after)."""
    engine = testbed_mod.small_engine_up()
    yield engine
    testbed_mod.small_engine_down()


@pytest.fixture
def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class PlaybookRun(object):
    """The outcome of one ansible-playbook run: rc, output, and the recap counts of each host."""

    def __init__(self, proc, elapsed):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.elapsed = elapsed
        self.recap = {}
        in_recap = False
        for line in proc.stdout.splitlines():
            if line.startswith('PLAY RECAP'):
                in_recap = True
                continue
            if in_recap and ':' in line and '=' in line:
                host, counts = line.split(':', 1)
                self.recap[host.strip()] = dict((key, int(value)) for key, value in
                                                (item.split('=') for item in counts.split()))

    @property
    def output(self):
        return self.stdout + self.stderr


def on_compose_under_test(extra_vars):
    """A playbook's extra vars with safedeploy_compose_command set to the Compose under test (SAFEDEPLOY_TEST_COMPOSE),
    unless they choose one: every role of every test playbook then insists on that CLI."""
    extra_vars = dict(extra_vars or {})
    extra_vars.setdefault('safedeploy_compose_command', testbed_mod.COMPOSE_UNDER_TEST)
    return extra_vars


def run_playbook(playbook, inventory=None, extra_vars=None, args=(), env=None, timeout=900):
    """Run ansible-playbook from this checkout (collection on ANSIBLE_COLLECTIONS_PATH) and return a PlaybookRun.

    inventory: a path, or a dict rendered to a YAML inventory file; extra_vars: a dict passed as JSON.
    Every role runs on the Compose under test (safedeploy_compose_command from SAFEDEPLOY_TEST_COMPOSE) unless
    extra_vars choose one.
    """
    import time
    import yaml
    run_env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / 'ansible.cfg'), ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
                   ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0', PATH=str(ROOT / '.venv' / 'bin') + os.pathsep + os.environ.get('PATH', ''))
    if env:
        run_env.update(env)
    cleanup = []
    argv = [str(ROOT / '.venv' / 'bin' / 'ansible-playbook'), str(playbook)]
    if isinstance(inventory, dict):
        handle = tempfile.NamedTemporaryFile('w', prefix=HARNESS_PREFIX, suffix='.yml', delete=False)
        yaml.safe_dump(inventory, handle)
        handle.close()
        cleanup.append(handle.name)
        inventory = handle.name
    if inventory:
        argv += ['-i', str(inventory)]
    extra_vars = on_compose_under_test(extra_vars)
    if extra_vars:
        handle = tempfile.NamedTemporaryFile('w', prefix=HARNESS_PREFIX, suffix='.json', delete=False)
        json.dump(extra_vars, handle)
        handle.close()
        cleanup.append(handle.name)
        argv += ['-e', '@' + handle.name]
    argv += list(args)
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=str(ROOT), env=run_env, capture_output=True, text=True, timeout=timeout, check=False)
    finally:
        for path in cleanup:
            os.unlink(path)
    return PlaybookRun(proc, time.monotonic() - started)


@pytest.fixture(name='run_playbook')
def run_playbook_fixture():
    return run_playbook


LOCAL_HOST_VARS = {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable}


def wait_until(predicate, timeout, what):
    """predicate()'s first true value, polled every 0.2 s; AssertionError naming `what` after `timeout` seconds."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError('%s did not happen within %ss' % (what, timeout))


class PortRange:
    """The ports of one test file's range: take() hands out one nothing listens on, each once per process."""

    def __init__(self, ports):
        self.ports = ports
        self.taken = set()

    def take(self):
        import socket
        for port in self.ports:
            if port in self.taken:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind(('127.0.0.1', port))
                except OSError:
                    continue
            self.taken.add(port)
            return port
        raise RuntimeError('no free port left in %s-%s' % (self.ports[0], self.ports[-1]))
