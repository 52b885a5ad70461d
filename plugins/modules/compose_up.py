#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: compose_up
short_description: Bring the containers of a compose project to its pinned release
version_added: 0.3.0
description:
  - Converges the running containers of one compose project to the files given, usually the compose files and the
    override that M(safedeploy.compose.compose_pin) wrote (its RV(safedeploy.compose.compose_pin#module:files)).
  - With O(state=started), in one module run, it pulls the images (O(pull)), removes the containers an interrupted
    recreate left behind (C(<12 hex>_<name>), which would block C(up) with a name conflict or be adopted by it), and
    runs C(up --detach --remove-orphans).
  - With O(state=pulled) it only pulls, and the running release keeps serving; use it when something (a migration
    hook) must run between the pull and the C(up).
  - Each compose command runs under a deadline (coreutils C(timeout), killed 10 seconds after it); the message of a
    command that ran out of time says so, with its limit.
  - RV(changed) comes from the engine, not from compose's output. It compares the project's containers (id and compose
    config hash) before and after.
  - With O(stack_lock), it renews the run's stack lock before each pull attempt and before it touches a container, and
    stops there when the run no longer holds it.
  - With O(start_first), the services named there are started new-before-old, before the rest of the project comes up.
author:
  - safedeploy.compose contributors (@safedeploy)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - safedeploy.compose._compose_project
  - safedeploy.compose._stack_lock_hold
  - safedeploy.compose._engine
attributes:
  check_mode:
    support: full
    details:
      - Check mode pulls, removes and starts nothing. It reads the configuration (C(compose config)) and the running
        containers and reports C(changed) when a service would be created or recreated (no container, or one running
        another image than the files pin), an orphan would be removed, or a leftover would be removed.
  diff_mode:
    support: none
  idempotent:
    description:
      - A stack already running the pinned images changes nothing and reports C(changed=false).
    support: full
  platform:
    support: full
    platforms: posix
options:
  state:
    description:
      - V(started) pulls (unless O(pull=false)), removes leftovers of an interrupted recreate and runs C(up).
      - V(pulled) only pulls; nothing running is touched.
    type: str
    choices: [started, pulled]
    default: started
  pull:
    description:
      - Pull the images before C(up). Turn it off when they are on the host already (pulled by an earlier
        O(state=pulled), or a rollback to images kept on the host while the registry is down).
    type: bool
    default: true
  registry_auth:
    description:
      - Credentials for the pull, one entry per registry, as in M(safedeploy.compose.compose_pin).
      - Compose pulls with a Docker client configuration made for this pull only (E(DOCKER_CONFIG)), a copy of the
        user's own (C(~/.docker/config.json), so other registries keep their logins) with these credentials added. It
        is written 0600 in the module's private temporary directory and removed as soon as the pull is over. Nothing
        is logged in for good, no C(docker login) runs, and the password is never on a command line, returned or
        logged.
      - A global C(credsStore) of the user's configuration is left out of the copy (it would answer for these
        registries too); registries kept in it are pulled anonymously by this module.
      - Used only when the module pulls.
    type: list
    elements: dict
    suboptions:
      registry:
        description: Registry host (and port), for example C(registry.example.com:5000).
        type: str
        required: true
      username:
        description: User name.
        type: str
        required: true
      password:
        description: Password or token.
        type: str
        required: true
  pull_timeout:
    description:
      - Seconds one C(compose pull) attempt may take before it is stopped (the engine's pull ends with it). The message
        names this option; nothing running was touched.
    type: int
    default: 600
  pull_retries:
    description:
      - Further attempts when a pull fails (a registry hiccup). A pull stopped by O(pull_timeout) is not retried.
    type: int
    default: 3
  up_timeout:
    description:
      - Seconds C(compose up) may take before it is stopped.
      - Also the deadline of C(compose config), which check mode runs to predict RV(changed), and of each service of
        O(start_first) becoming ready.
    type: int
    default: 300
  start_first:
    description:
      - Services whose new containers start next to the running ones, and replace them only once they run (healthy,
        when the image has a C(HEALTHCHECK); otherwise running for 2 seconds without a restart). So a worker never
        stops before its successor works, and a successor that cannot start leaves the old container untouched.
      - Only for services that tolerate two copies for a few seconds (queue consumers, stateless workers), never for
        schedulers, singletons or anything holding a lock on a file. Your call; the collection cannot know it.
      - "For each service named: when its running containers carry another configuration than the files (compose's
        config hash, C(compose config --hash)), C(up --no-deps --no-recreate --scale <service>=<twice the running>)
        starts the new ones, the module waits for them, then stops the old ones (their stop grace period) and removes
        them; the project's C(up) that follows keeps the new ones. A service whose containers are current, or that has
        none running, comes up with the rest."
      - A service with C(container_name) or a published host port is refused before anything is pulled or touched
        (two containers cannot share either). A service on the host's network that listens on a port cannot run twice
        either; its new container fails to bind, is removed, and the old one keeps running.
      - When a new container exits, restarts, is C(unhealthy) or not ready within O(up_timeout), it is removed, the
        old ones keep running and the module fails naming the service; no other service was touched.
    type: list
    elements: str
    default: []
notes:
  - The engine is read for RV(changed) and the leftovers through its API (the Python standard library; no Docker
    SDK needed on the host).
seealso:
  - module: safedeploy.compose.compose_pin
  - module: safedeploy.compose.compose_run
  - module: safedeploy.compose.health_gate
'''

EXAMPLES = r'''
- name: Pin the release
  safedeploy.compose.compose_pin:
    project_src: /srv/shop
    project_name: shop
    tag: 9f2c1ab
  register: pin

- name: Pull it and bring it up
  safedeploy.compose.compose_up:
    project_src: /srv/shop
    project_name: shop
    files: "{{ pin.files }}"

- name: Pull first, run a migration, then bring it up
  block:
    - name: Pull the release (the running one keeps serving)
      safedeploy.compose.compose_up:
        project_src: /srv/shop
        project_name: shop
        files: "{{ pin.files }}"
        state: pulled

    - name: Migrate, in a one-off container of the pulled release (see safedeploy.compose.compose_run)
      safedeploy.compose.compose_run:
        project_src: /srv/shop
        project_name: shop
        files: "{{ pin.files }}"
        service: api
        command: [./manage.py, migrate, --noinput]
        timeout: 600

    - name: Bring it up
      safedeploy.compose.compose_up:
        project_src: /srv/shop
        project_name: shop
        files: "{{ pin.files }}"
        pull: false
'''

RETURN = r'''
started_first:
  description:
    - The services of O(start_first) started new-before-old in this run, in order, each with the containers it
      replaced (C(old)), the ones that replaced them (C(new)) and the seconds from the start of the new ones to the
      removal of the old ones. Empty when none needed it, and in check mode.
  returned: always
  type: list
  elements: dict
  sample: [{service: worker, old: [shop-worker-1], new: [shop-worker-2], seconds: 3.1}]
changed:
  description: Whether a container of the project was created, recreated or removed (read from the engine).
  returned: always
  type: bool
authenticated:
  description: The registries of O(registry_auth) whose credentials the pull used.
  returned: always
  type: list
  elements: str
  sample: [registry.example.com:5000]
pulled:
  description: Whether C(compose pull) ran and succeeded.
  returned: always
  type: bool
  sample: true
touched:
  description:
    - Whether running containers may have been touched. False when the module failed before removing a leftover or
      running C(up) (a failed pull touches nothing), so a caller knows whether the old release still runs untouched.
  returned: always
  type: bool
  sample: false
lease_lost:
  description:
    - Whether the module stopped because the run of O(stack_lock.run_id) no longer holds the stack lock (it then
      touched nothing more).
  returned: always
  type: bool
  sample: false
leftovers:
  description:
    - The containers of an interrupted recreate found (and, unless in check mode, removed), each with C(id), C(name)
      and C(status).
  returned: always
  type: list
  elements: dict
  sample: [{id: 4f1c..., name: 4f1c2a9b8e7d_shop-web-1, status: exited}]
containers:
  description: "The project's containers after the run, as a map of service name to the names of its containers."
  returned: always
  type: dict
  sample: {web: [shop-web-1], worker: [shop-worker-1]}
unbounded_logs:
  description:
    - The services of the project with a container whose logs grow without bound, sorted. A container's logs are
      unbounded when its log driver is C(json-file) and its log options (the service's C(logging), or the engine's
      C(log-opts) from C(daemon.json), which the engine copies into each container it creates) set no C(max-size),
      or set it to C(-1).
    - Read from the engine after the run (the containers found before it in check mode, or with O(state=pulled)).
    - Bound them with the C(log_bound) option of M(safedeploy.compose.compose_pin) (the rollout role's
      C(rollout_log_bound)), or with C(log-opts) in the engine's C(daemon.json).
  returned: always
  type: list
  elements: str
  sample: [worker]
compose_argv:
  description: The compose command line used, without its subcommand.
  returned: always
  type: list
  elements: str
  sample: [docker, compose, -p, shop, --project-directory, /srv/shop, -f, /srv/shop/compose.yaml, -f, /srv/shop/compose.release.yml]
compose_version:
  description: The version of the compose CLI that ran.
  returned: always
  type: str
  sample: 2.40.3
stderr_tail:
  description: The last lines compose printed on a failed command.
  returned: on failure of a compose command
  type: str
'''

import base64
import contextlib
import json
import os
import shutil
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.safedeploy.compose.plugins.module_utils._compose import (
    COMPOSE_PROJECT_ARGUMENT_SPEC,
    CONFIG_HASH_LABEL,
    ONEOFF_LABEL,
    PROJECT_LABEL,
    SERVICE_LABEL,
    ComposeError,
    ComposeTimeout,
    find_interrupted_recreate_leftovers,
    open_project,
    services_of,
    tail_lines,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._atomic_file import write_file_atomic
from ansible_collections.safedeploy.compose.plugins.module_utils._registry import default_docker_config_path
from ansible_collections.safedeploy.compose.plugins.module_utils._stack_lock import (
    STACK_LOCK_HOLD_SPEC,
    LeaseLost,
    hold_stack_lock,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._engine import (
    ENGINE_ARGUMENT_SPEC,
    connect_engine,
    describe_engine_error,
    engine_address,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._log_config import log_config_unbounded

PULL_RETRY_DELAY = 2


class ComposeUp(object):

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self._config = None
        self.result = dict(changed=False, authenticated=[], pulled=False, touched=False, leftovers=[], containers={},
                           compose_argv=[], compose_version='', lease_lost=False, unbounded_logs=[], started_first=[])

    def fail(self, msg, **extra):
        self.result.update(extra)
        self.module.fail_json(msg=msg, **self.result)

    def project(self):
        return open_project(self.module, 'compose_up', self.result, timeout=self.params['up_timeout'])

    def hold_lock(self, before):
        """With stack_lock: still this run's lock? Renew it, or stop before `before`, touching nothing more."""
        lock = self.params['stack_lock']
        if not lock or self.module.check_mode:
            return
        try:
            _lease, warning = hold_stack_lock(lock['state_dir'], lock.get('project') or self.params['project_name'],
                                              lock['run_id'], before)
        except LeaseLost as exc:
            self.fail('compose_up: %s' % exc, lease_lost=True)
        except Exception as exc:  # the lock cannot be read: as good as lost, since nothing says this run holds it
            self.fail('compose_up: cannot check the stack lock before %s: %s' % (before, exc), lease_lost=True)
        if warning:
            self.module.warn(warning)

    def containers(self, client):
        """{container id: (service, config hash, state)} of the project's containers (one-off ones left out)."""
        found = {}
        name = self.params['project_name']
        for entry in client.api.containers(all=True, filters={'label': '%s=%s' % (PROJECT_LABEL, name)}):
            labels = entry.get('Labels') or {}
            if labels.get(ONEOFF_LABEL, 'False') == 'True':
                continue
            found[entry['Id']] = (labels.get(SERVICE_LABEL), labels.get(CONFIG_HASH_LABEL), entry.get('State'),
                                  (entry.get('Names') or ['?'])[0].lstrip('/'), entry.get('Image'))
        return found

    def unbounded_logs(self, client, containers):
        """The services with a container whose json-file logs have no max-size (one inspect per container)."""
        found = set()
        for container_id, (service, _hash, _state, name, _image) in sorted(containers.items()):
            try:
                attrs = client.api.inspect_container(container_id)
            except Exception as exc:  # only a warning is at stake: never fail a stack that is up because of it
                if not (getattr(exc, 'status_code', None) == 404 or type(exc).__name__ == 'NotFound'):
                    self.module.warn('compose_up: cannot tell whether the logs of %s are bounded: %s' % (
                        name, describe_engine_error(exc, engine_address(self.params), 'inspect the container %s' % name,
                                                    self.params['engine_timeout'])))
                continue
            if log_config_unbounded((attrs.get('HostConfig') or {}).get('LogConfig')):
                found.add(service)
        return sorted(found)

    def engine_call(self, what, call):
        try:
            return call()
        except Exception as exc:  # any engine failure: a message, not a traceback
            self.fail(describe_engine_error(exc, engine_address(self.params), what, self.params['engine_timeout']))

    @contextlib.contextmanager
    def pull_credentials(self, project):
        """The compose CLI pulls with a Docker client config made for this pull: the user's own (other registries keep
        working), plus the credentials of registry_auth. It lives in the module's private temporary directory and is
        removed when the pull is over; nothing is logged in for good."""
        entries = self.params['registry_auth'] or []
        if not entries:
            yield
            return
        user_file = default_docker_config_path()
        config = {}
        try:
            with open(user_file) as handle:
                loaded = json.load(handle)
            config = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            pass  # no config, or one the CLI could not read either: ours alone
        auths = config.get('auths') if isinstance(config.get('auths'), dict) else {}
        helpers = config.get('credHelpers') if isinstance(config.get('credHelpers'), dict) else {}
        config.pop('credsStore', None)  # a store would answer for every registry, ours included
        for entry in entries:
            secret = base64.b64encode(('%s:%s' % (entry['username'], entry['password'])).encode('utf-8'))
            auths[entry['registry']] = {'auth': secret.decode('ascii')}
            helpers.pop(entry['registry'], None)
        config['auths'] = auths
        if helpers:
            config['credHelpers'] = helpers
        directory = tempfile.mkdtemp(prefix='docker-config-', dir=self.module.tmpdir)  # 0700
        try:
            write_file_atomic(os.path.join(directory, 'config.json'), json.dumps(config).encode('utf-8'), mode=0o600)
            plugins = os.path.join(os.path.dirname(user_file), 'cli-plugins')
            if os.path.isdir(plugins):  # the docker CLI looks for `docker compose` there too
                os.symlink(plugins, os.path.join(directory, 'cli-plugins'))
            project.runner.environ_update['DOCKER_CONFIG'] = directory
            self.result['authenticated'] = [entry['registry'] for entry in entries]
            yield
        finally:
            project.runner.environ_update.pop('DOCKER_CONFIG', None)
            shutil.rmtree(directory, ignore_errors=True)

    def pull(self, project):
        with self.pull_credentials(project):
            self._pull(project)

    def _pull(self, project):
        params = self.params
        argv = project.pull_argv()
        attempts = params['pull_retries'] + 1
        for attempt in range(1, attempts + 1):
            self.hold_lock('pulling the images of %s (attempt %d)' % (params['project_name'], attempt))
            try:
                rc, out, err = project.runner.run(argv, timeout=params['pull_timeout'], cwd=project.project_dir)
            except ComposeTimeout as exc:
                self.fail('compose_up: pulling the images of %s did not finish within %ss and was stopped; nothing '
                          'running was touched. Check the registry, or raise pull_timeout.'
                          % (params['project_name'], params['pull_timeout']), stderr_tail=tail_lines(exc.stderr))
            if rc == 0:
                self.result['pulled'] = True
                return
            if attempt < attempts:
                time.sleep(PULL_RETRY_DELAY)
        tail = tail_lines(err or out)
        self.fail('compose_up: pulling the images of %s failed after %d attempt(s) (rc=%s); nothing running was '
                  'touched: %s' % (params['project_name'], attempts, rc, tail.splitlines()[-1] if tail else '(no output)'),
                  stderr_tail=tail)

    def up(self, project):
        params = self.params
        try:
            rc, out, err = project.runner.run(project.up_argv(), timeout=params['up_timeout'], cwd=project.project_dir)
        except ComposeTimeout as exc:
            self.fail('compose_up: compose up of %s did not finish within %ss and was stopped; the stack may run a mix '
                      'of releases' % (params['project_name'], params['up_timeout']), stderr_tail=tail_lines(exc.stderr))
        if rc != 0:
            tail = tail_lines(err or out)
            self.fail('compose_up: compose up of %s failed (rc=%s): %s' % (
                params['project_name'], rc, tail.splitlines()[-1] if tail else '(no output)'), stderr_tail=tail)

    def config(self, project):
        """The effective configuration (`compose config`), read once a run."""
        if self._config is None:
            try:
                _text, self._config = project.load_config()
            except ComposeTimeout:
                self.fail('compose_up: reading the configuration of %s (compose config) did not finish within %ss and was '
                          'stopped; nothing was changed. Raise up_timeout.' % (self.params['project_name'], self.params['up_timeout']))
            except ComposeError as exc:
                self.fail('compose_up: the compose files of %s are not valid: %s' % (self.params['project_name'], exc.message))
        return self._config

    def predict(self, project, before):
        """Check mode: would up create, recreate or remove a container?"""
        config = self.config(project)
        wanted = dict((name, spec['image']) for name, spec in services_of(config).items())
        running = {}
        for service, _hash, _state, _name, image in before.values():
            running.setdefault(service, set()).add(image)
        orphans = set(running) - set(wanted)
        stale = [name for name, image in wanted.items() if running.get(name) != set([image])]
        return bool(orphans or stale)

    def check_start_first(self, project):
        """Refuse, before anything is pulled or touched, a start_first service that cannot run twice."""
        services = self.config(project).get('services') or {}
        for name in self.params['start_first']:
            spec = services.get(name)
            if not isinstance(spec, dict):
                self.fail('compose_up: start_first names %s, which is not a service of %s (services: %s); nothing was '
                          'changed' % (name, self.params['project_name'], ', '.join(sorted(services))))
            published = [port for port in spec.get('ports') or [] if isinstance(port, dict) and port.get('published')
                         or isinstance(port, str) and ':' in port]
            if spec.get('container_name') or published:
                self.fail('compose_up: service %s of %s cannot start new-before-old: %s; two containers cannot share it. '
                          'Remove it from start_first (or make it a routed service, which runs in blue/green slots); '
                          'nothing was changed' % (name, self.params['project_name'],
                                                   'it sets container_name' if spec.get('container_name')
                                                   else 'it publishes a host port'))

    def start_first(self, project, client, before):
        """Each start_first service whose running containers are not current: new ones next to them, ready, then the
        old ones stopped and removed. Fails (new ones removed, old ones untouched) when the new ones do not get ready."""
        params = self.params
        hashes = None
        for name in params['start_first']:
            mine = dict((cid, entry) for cid, entry in before.items() if entry[0] == name)
            running = [cid for cid, entry in mine.items() if entry[2] == 'running']
            if not running:
                continue
            if hashes is None:
                try:
                    hashes = project.service_hashes()
                except ComposeError as exc:
                    self.fail('compose_up: %s' % exc.message)
            if all(mine[cid][1] == hashes.get(name) for cid in running):
                continue
            self.hold_lock('starting the new containers of %s next to the old ones' % name)
            self.result['touched'] = True
            started = time.monotonic()
            argv = project.scale_argv(name, len(mine) + len(running))
            try:
                rc, out, err = project.runner.run(argv, timeout=params['up_timeout'], cwd=project.project_dir)
            except ComposeTimeout as exc:
                rc, out, err = None, '', exc.stderr or ''
            now = self.engine_call('list the containers of project %s' % params['project_name'],
                                   lambda: self.containers(client))
            new = sorted(cid for cid, entry in now.items() if entry[0] == name and cid not in mine)
            problem = None
            if rc != 0:
                last = (tail_lines(err or out) or '(no output)').splitlines()[-1]
                problem = 'compose up --scale %s ended with rc=%s: %s' % (name, rc, last)
            elif not new:
                problem = 'compose started no new container'
            else:
                problem = self.wait_ready(client, new, started + params['up_timeout'])
            if problem:
                for cid in new:
                    self.engine_call('remove the new container %s' % now[cid][3],
                                     lambda cid=cid: client.api.remove_container(cid, force=True))
                self.fail('compose_up: the new container(s) of %s (start_first) did not get ready: %s. They were '
                          'removed; the old one(s) (%s) keep running and no other service of %s was touched.'
                          % (name, problem, ', '.join(sorted(mine[cid][3] for cid in running)), params['project_name']))
            for cid in sorted(mine):
                self.engine_call('stop the old container %s' % mine[cid][3],
                                 lambda cid=cid: client.api.stop(cid))
                self.engine_call('remove the old container %s' % mine[cid][3],
                                 lambda cid=cid: client.api.remove_container(cid))
            self.result['started_first'].append({
                'service': name, 'old': sorted(mine[cid][3] for cid in mine), 'new': sorted(now[cid][3] for cid in new),
                'seconds': round(time.monotonic() - started, 2)})

    def wait_ready(self, client, ids, deadline):
        """None once every container runs (healthy with a HEALTHCHECK, else 2 s without a restart); else why not."""
        steady = {}
        while True:
            waiting = []
            for cid in ids:
                attrs = self.engine_call('inspect the new container %s' % cid[:12],
                                         lambda cid=cid: client.api.inspect_container(cid))
                state = attrs.get('State') or {}
                name = (attrs.get('Name') or cid[:12]).lstrip('/')
                health = (state.get('Health') or {}).get('Status')
                if state.get('Status') != 'running' or state.get('Restarting'):
                    return '%s is %s (exit code %s)' % (name, state.get('Status'), state.get('ExitCode'))
                if health == 'unhealthy':
                    return '%s is unhealthy (its HEALTHCHECK failed)' % name
                key = (state.get('StartedAt'), attrs.get('RestartCount'))
                if steady.get(cid, (None, None))[0] != key:
                    steady[cid] = (key, time.monotonic())
                ready = health == 'healthy' if health else time.monotonic() - steady[cid][1] >= 2.0
                if not ready:
                    waiting.append(name)
            if not waiting:
                return None
            if time.monotonic() >= deadline:
                return 'not ready within up_timeout (%ss): %s' % (self.params['up_timeout'], ', '.join(waiting))
            time.sleep(0.5)

    def run(self):
        params = self.params
        project = self.project()
        if params['start_first'] and params['state'] == 'started':
            self.check_start_first(project)
        client = connect_engine(self.module, self.result)
        before = self.engine_call('list the containers of project %s' % params['project_name'],
                                  lambda: self.containers(client))
        leftovers = self.engine_call('list the containers of project %s' % params['project_name'],
                                     lambda: find_interrupted_recreate_leftovers(client, params['project_name']))
        self.result['leftovers'] = leftovers
        if self.module.check_mode:
            self.result['changed'] = bool(leftovers) or (params['state'] == 'started' and self.predict(project, before))
            self.result['containers'] = self.by_service(before)
            self.result['unbounded_logs'] = self.unbounded_logs(client, before)
            return self.result
        if params['pull']:
            self.pull(project)
        if params['state'] == 'pulled':
            self.result['containers'] = self.by_service(before)
            self.result['unbounded_logs'] = self.unbounded_logs(client, before)
            return self.result
        self.hold_lock('bringing up %s' % params['project_name'])
        self.result['touched'] = True
        for leftover in leftovers:
            self.engine_call('remove the leftover container %s' % leftover['name'],
                             lambda leftover=leftover: client.api.remove_container(leftover['id'], force=True))
        if params['start_first']:
            removed = set(leftover['id'] for leftover in leftovers)
            self.start_first(project, client, dict((cid, entry) for cid, entry in before.items() if cid not in removed))
        self.up(project)
        after = self.engine_call('list the containers of project %s' % params['project_name'],
                                 lambda: self.containers(client))
        self.result['changed'] = bool(leftovers) or before != after
        self.result['containers'] = self.by_service(after)
        self.result['unbounded_logs'] = self.unbounded_logs(client, after)
        return self.result

    @staticmethod
    def by_service(containers):
        grouped = {}
        for service, _hash, _state, name, _image in sorted(containers.values(), key=lambda item: (item[0] or '', item[3])):
            grouped.setdefault(service, []).append(name)
        return grouped


def main():
    argument_spec = dict(
        state=dict(type='str', default='started', choices=['started', 'pulled']),
        pull=dict(type='bool', default=True),
        registry_auth=dict(type='list', elements='dict', options=dict(
            registry=dict(type='str', required=True),
            username=dict(type='str', required=True),
            password=dict(type='str', required=True, no_log=True),
        )),
        pull_timeout=dict(type='int', default=600),
        pull_retries=dict(type='int', default=3),
        up_timeout=dict(type='int', default=300),
        start_first=dict(type='list', elements='str', default=[]),
    )
    argument_spec.update(COMPOSE_PROJECT_ARGUMENT_SPEC)
    argument_spec.update(STACK_LOCK_HOLD_SPEC)
    argument_spec.update(ENGINE_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    for name in ('pull_timeout', 'up_timeout'):
        if module.params[name] < 1:
            module.fail_json(msg='compose_up: %s must be at least 1 second, got %s' % (name, module.params[name]))
    if module.params['pull_retries'] < 0:
        module.fail_json(msg='compose_up: pull_retries must be 0 or more, got %s' % module.params['pull_retries'])
    module.exit_json(**ComposeUp(module).run())


if __name__ == '__main__':
    main()
