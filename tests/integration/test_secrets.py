"""No secret in any output, at -vvv, through ansible-playbook and through ansible-runner (issue 12, item 1).

One chain of runs per engine, on a stack of its own (compose project sdt-sec-<engine>-<random>, one service `web`
with APP_PORT 18001 for ansible-playbook and 18002 for ansible-runner, images
127.0.0.1:5001/sdt-sec/<engine>-web:<release> in the test bed's htpasswd registry); 18019 is this file's webhook
listener. Ports 18000-18019 are this file's.

    s1 (v1, ok) -> s2 (v2, ok) -> s3 (v3 crash-loops: the rollout rolls back to s2 by itself)
    -> s4 (a no_log before_up hook prints the host-side secret and fails: nothing running touched)
    -> local images removed, playbooks/rollback.yml apply=true (s2 -> s1, pulled with the registry credentials)
    -> playbooks/disk_guard.yml with the alert forced (critical at 1%) to a webhook whose URL holds a token

Every run is -vvv --diff. The secrets are made fresh for each run of the file. The health check's bearer token and
secret header and the webhook URL are in the inventory; the registry credentials are in the stack's entry for
ansible-playbook (a vaulted inventory) and the extra var `safedeploy_registry_auth` for ansible-runner (as AWX's
custom credential injects them). A fifth value, a host-side secret in the service's environment (rendered into the
compose file on the host), is printed by `no_log` release hooks, one that passes and one that fails.

None of them may appear in stdout or stderr, ansible-runner's job events and other artifacts, the reports on the
controller, the state dir (ledger, snapshots, lock, disk guard report), root's ~/.docker, ~/.ansible/tmp or
anything new in the temporary directory. The host-side secret is where the user put it, and only there: in the
rendered compose file (0600) and its snapshot in the state dir (0600 in 0700).
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import secrets
import stat
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import COLLECTIONS, HARNESS_PREFIX, LOCAL_HOST_VARS, ROOT, on_compose_under_test, run_playbook
from testbed import testbed as testbed_mod

PREFIX = 'sdt-sec'
PORTS = {'ansible-playbook': 18001, 'ansible-runner': 18002}
WEBHOOK_PORT = 18019
RELEASES = {'s1': 'v1', 's2': 'v2', 's3': 'v3', 's4': 'v1'}  # release -> the test bed's app image (v3 crash-loops)
HEALTH_TIMEOUT = 30


@pytest.fixture(scope='module')
def secret_values(testbed):
    """name -> a value never written anywhere by this file except the inputs of a run."""
    run = secrets.token_hex(6)
    values = {
        'bearer token': 'sdtsec-bearer-%s-%s' % (run, secrets.token_hex(8)),
        'secret header': 'sdtsec-header-%s-%s' % (run, secrets.token_hex(8)),
        'webhook token': 'sdtsec-hook-%s-%s' % (run, secrets.token_hex(8)),
        'registry password': testbed.auth_password,
        # what a Docker config keeps of a login: base64 of user:password
        'registry auth': base64.b64encode(('%s:%s' % (testbed.auth_user, testbed.auth_password)).encode()).decode(),
    }
    assert len(testbed.auth_password) > 8
    return values


@pytest.fixture
def webhook(secret_values):
    calls = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
            calls.append((self.path, json.loads(body)))
            self.send_response(204)
            self.end_headers()

    server = http.server.ThreadingHTTPServer(('127.0.0.1', WEBHOOK_PORT), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield 'http://127.0.0.1:%d/hooks/disk?token=%s' % (WEBHOOK_PORT, secret_values['webhook token']), calls
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- the two engines

class Engine(object):
    """Runs the collection's playbooks as the CLI does (ansible-playbook) or as AWX does (ansible-runner)."""

    def __init__(self, name, root):
        self.name, self.root, self.runs = name, Path(root), []

    def env(self):
        bin_dir = str(ROOT / '.venv' / 'bin')
        return {'ANSIBLE_CONFIG': str(ROOT / 'ansible.cfg'), 'ANSIBLE_COLLECTIONS_PATH': str(COLLECTIONS),
                'ANSIBLE_NOCOLOR': '1', 'ANSIBLE_FORCE_COLOR': '0',
                'PATH': bin_dir + os.pathsep + os.environ.get('PATH', '')}

    def run(self, playbook, inventory, extra_vars):
        """(ok, the text the run showed: stdout, stderr, and for ansible-runner its job events)."""
        extra_vars = on_compose_under_test(extra_vars)
        if self.name == 'ansible-playbook':
            run = run_playbook(ROOT / 'playbooks' / playbook, inventory=inventory, extra_vars=extra_vars,
                               args=['-vvv', '--diff'], env=self.env())
            self.runs.append((playbook, run.rc))
            return run.rc == 0, run.output
        import ansible_runner
        # As AWX lays out a job: the inventory and the extra vars (credentials injected) are files of the job's
        # private data dir; the engine's own output goes to artifacts/.
        private = self.root / ('runner-%d' % len(self.runs))
        (private / 'inventory').mkdir(parents=True)
        (private / 'env').mkdir()
        (private / 'inventory' / 'hosts.yml').write_text(yaml.safe_dump(inventory))
        (private / 'env' / 'extravars').write_text(json.dumps(extra_vars))
        for path in (private / 'inventory' / 'hosts.yml', private / 'env' / 'extravars'):
            path.chmod(0o600)
        env = self.env()
        saved_path = os.environ.get('PATH', '')
        os.environ['PATH'] = env['PATH']  # ansible-runner looks ansible-playbook up on this process's PATH
        try:
            result = ansible_runner.run(private_data_dir=str(private), playbook=str(ROOT / 'playbooks' / playbook),
                                        inventory=str(private / 'inventory' / 'hosts.yml'), verbosity=3,
                                        cmdline='--diff', envvars=env, quiet=True, ident='job')
        finally:
            os.environ['PATH'] = saved_path
        self.runs.append((playbook, result.rc))
        events = list(result.events)
        assert events, 'ansible-runner recorded no job events'
        text = (result.stdout.read() + '\n' + json.dumps(events))
        return result.rc == 0, text

    def artifacts(self):
        """Where the engine keeps what it ran (ansible-runner's artifacts: stdout, job events, fact cache...)."""
        return sorted(self.root.glob('runner-*/artifacts')) if self.name == 'ansible-runner' else []


# ---------------------------------------------------------------- the stack

def push(client, repo, release, auth):
    ref = '%s:%s' % (repo, release)
    client.images.get('%s:%s' % (testbed_mod.APP_REPO, RELEASES[release])).tag(ref)
    testbed_mod.push(client, ref, auth_config=auth)
    return testbed_mod.registry_digest(ref, auth=(auth['username'], auth['password']))


def remove_local(client, repo):
    for image in client.images.list(name=repo):
        for ref in (image.tags or []) + (image.attrs.get('RepoDigests') or []):
            if ref.startswith(repo + ':') or ref.startswith(repo + '@'):
                try:
                    client.images.remove(ref)
                except Exception:  # already gone
                    pass


def running_digest(client, project):
    boxes = client.containers.list(all=True, filters={'label': 'com.docker.compose.project=%s' % project})
    assert len(boxes) == 1, [box.name for box in boxes]
    assert boxes[0].status == 'running', boxes[0].status
    return boxes[0].attrs['Config']['Image'].split('@', 1)[1]


def file_texts(*roots):
    """{path: bytes} of every regular file under roots (or the roots themselves when they are files)."""
    found = {}
    for root in roots:
        root = Path(root)
        paths = [root] if root.is_file() else (sorted(root.rglob('*')) if root.exists() else [])
        for path in paths:
            if path.is_file() and not path.is_symlink():
                found[str(path)] = path.read_bytes()
    return found


def new_temp_files(before, started):
    """Files in the temporary directory (not pytest's, not the test harness's: conftest.HARNESS_PREFIX) and in
    ~/.ansible/tmp made or changed since `started`."""
    roots = [Path.home() / '.ansible' / 'tmp']
    tmp = Path(tempfile.gettempdir())
    roots += [path for path in tmp.iterdir() if path.name not in before
              and not path.name.startswith(('pytest-of-', HARNESS_PREFIX))]
    found = {}
    for root in roots:
        for path, data in file_texts(root).items():
            try:
                if os.stat(path).st_mtime >= started:
                    found[path] = data
            except OSError:
                pass
    return found


def leaks(values, texts):
    """[(secret name, where)] for each secret value found in each text (str or bytes)."""
    found = []
    for where, text in texts.items():
        data = text.encode() if isinstance(text, str) else text
        for name, value in values.items():
            if value.encode() in data:
                found.append((name, where))
    return found


@pytest.mark.parametrize('engine_name', ['ansible-playbook', 'ansible-runner'])
def test_no_secret_in_any_output_of_a_rollout_a_failed_rollout_a_rollback_and_the_disk_guard(
        testbed, secret_values, webhook, tmp_path, engine_name):
    client = testbed.client()
    started = time.time()
    tmp_before = set(path.name for path in Path(tempfile.gettempdir()).iterdir())
    docker_dir = Path.home() / '.docker'
    docker_before = file_texts(docker_dir)
    engine = Engine(engine_name, tmp_path / 'engine')
    engine.root.mkdir()
    host_secret = 'sdtsec-env-%s' % secrets.token_hex(12)  # in the service's environment, on the host only
    shown = dict(secret_values, **{'host-side secret': host_secret})
    url, calls = webhook

    auth = {'username': testbed.auth_user, 'password': testbed.auth_password}
    repo = '%s/%s/%s-web' % (testbed.auth_registry, PREFIX, engine_name.split('-')[-1])
    digests = dict((release, push(client, repo, release, auth)) for release in RELEASES)
    project = '%s-%s-%s' % (PREFIX, engine_name.split('-')[-1], uuid.uuid4().hex[:6])
    port = PORTS[engine_name]
    src, state, reports = tmp_path / 'host' / project, tmp_path / 'state', tmp_path / 'reports'
    template = tmp_path / 'controller' / 'compose.yaml.j2'
    template.parent.mkdir(parents=True)
    template.write_text(yaml.safe_dump({'services': {'web': {
        'image': '%s:s1' % repo, 'network_mode': 'host', 'restart': 'unless-stopped',
        'environment': {'APP_PORT': str(port), 'APP_SECRET': host_secret}}}}, sort_keys=False))
    health_url = 'http://127.0.0.1:%d/cgi-bin/health' % port
    stack = {
        'name': project, 'project_src': str(src), 'repositories': [repo],
        'compose_templates': [{'src': str(template), 'dest': 'compose.yaml'}],
        'health_checks': [{'name': 'web health', 'type': 'http', 'url': health_url, 'json': {'status': 'ok'},
                           'bearer_token': secret_values['bearer token'],
                           'headers': {'X-Api-Key': secret_values['secret header']}}],
        'hooks': {'after_gate': [{'name': 'print the service secret', 'service': 'web', 'no_log': True,
                                  'command': ['sh', '-c', 'echo "the secret is $APP_SECRET"']}]},
    }
    host = dict(LOCAL_HOST_VARS, safedeploy_stacks=[stack], safedeploy_report_dir=str(reports),
                rollout_state_dir=str(state), rollback_state_dir=str(state), disk_guard_state_dir=str(state),
                rollout_health_timeout=HEALTH_TIMEOUT, rollout_health_interval=1,
                rollback_health_timeout=HEALTH_TIMEOUT, rollback_health_interval=1,
                disk_guard_report_path=str(state / 'disk_guard.json'), disk_guard_webhook_url=url,
                disk_guard_threshold_percent=100, disk_guard_target_percent=100, disk_guard_critical_percent=1)
    inventory = {'all': {'hosts': {'localhost': host}}}
    registry_auth = [dict(auth, registry=testbed.auth_registry)]
    if engine_name == 'ansible-runner':
        credentials = {'safedeploy_registry_auth': registry_auth}  # as AWX's credential injects them
    else:
        credentials, stack['registry_auth'] = {}, registry_auth
    failing_hook = {'name': 'migrate', 'service': 'web', 'no_log': True,
                    'command': ['sh', '-c', 'echo "cannot migrate with $APP_SECRET" >&2; exit 3']}
    hooked = {'all': {'hosts': {'localhost': dict(host, safedeploy_stacks=[dict(stack, hooks={'before_up': [failing_hook]})])}}}

    outputs = {}
    try:
        for release in ('s1', 's2'):
            ok, outputs['rollout ' + release] = engine.run('rollout.yml', inventory, dict(credentials, release=release))
            assert ok, outputs['rollout ' + release][-6000:]
            assert running_digest(client, project) == digests[release]

        ok, outputs['rollout s3'] = engine.run('rollout.yml', inventory, dict(credentials, release='s3'))
        assert not ok and 'Rolled back to s2' in outputs['rollout s3'], outputs['rollout s3'][-6000:]
        assert running_digest(client, project) == digests['s2']

        ok, outputs['rollout s4'] = engine.run('rollout.yml', hooked, dict(credentials, release='s4'))
        assert not ok, outputs['rollout s4'][-6000:]
        assert 'migrate failed (exit code 3, or stopped at its timeout); its output is hidden (no_log)' in \
            ' '.join(outputs['rollout s4'].split()), outputs['rollout s4'][-6000:]
        assert 'Nothing running was touched' in ' '.join(outputs['rollout s4'].split()), outputs['rollout s4'][-6000:]
        assert running_digest(client, project) == digests['s2']

        remove_local(client, repo)  # the rollback must pull s1 from the registry, with the credentials
        ok, outputs['rollback'] = engine.run('rollback.yml', inventory, dict(credentials, apply=True))
        assert ok, outputs['rollback'][-6000:]
        assert running_digest(client, project) == digests['s1']

        ok, outputs['disk guard'] = engine.run('disk_guard.yml', inventory, {})
        assert ok, outputs['disk guard'][-6000:]
        assert len(calls) == 1 and calls[0][0].endswith(secret_values['webhook token'])  # the alert went out
    finally:
        for box in client.containers.list(all=True, filters={'label': 'com.docker.compose.project=%s' % project}):
            box.remove(force=True)
        remove_local(client, repo)

    found = leaks(shown, outputs)
    found += leaks(shown, file_texts(*engine.artifacts()))
    found += leaks(shown, file_texts(reports))
    found += leaks(shown, new_temp_files(tmp_before, started))
    found += leaks(shown, dict((path, data) for path, data in file_texts(docker_dir).items()
                               if docker_before.get(path) != data))
    state_files = file_texts(state)
    found += leaks(secret_values, state_files)
    assert not found, 'secrets found: %s' % sorted(set(found))

    # The host-side secret stays where the user put it: the rendered file and its snapshot, private.
    rendered = src / 'compose.yaml'
    assert host_secret.encode() in rendered.read_bytes()
    assert stat.S_IMODE(rendered.stat().st_mode) == 0o600
    holders = [path for path, data in state_files.items() if host_secret.encode() in data]
    assert holders, 'the snapshot of the rendered compose file is in the state dir'
    for path in holders:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700, path
    assert (reports / 's3').is_dir() and (reports / 's4').is_dir(), 'the failed rollouts wrote their reports'
    assert engine.runs == [('rollout.yml', 0), ('rollout.yml', 0), ('rollout.yml', 2), ('rollout.yml', 2),
                           ('rollback.yml', 0), ('disk_guard.yml', 0)], engine.runs
    sys.stdout.write('%s: %d runs checked\n' % (engine_name, len(engine.runs)))
