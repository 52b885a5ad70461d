#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: stack_status
short_description: Say what runs for a compose project, and where it drifted from its release ledger
version_added: 0.4.0
description:
  - Reads, and only reads, one compose project on one host - its release ledger (the current and the last good
    release), the containers the engine runs for it (found by their C(com.docker.compose.project) label, one-off
    C(compose run) containers left out; for a routed stack also the running containers of the current release in its
    blue or green slot, C(<project>-blue) or C(<project>-green)), the image digest, state, Docker health, restart
    count and uptime of each,
    the holder of its stack lock, and the files of the current release's snapshot as they are on disk now.
  - Returns the drift, every way what runs differs from what the ledger says should run - a container on another
    digest than the current release's, a service of the release without a container, a container of a service the
    release does not have, a file of the release's snapshot changed or removed since, a stack lock held (or left
    expired), a project without a ledger, an unreadable ledger, or a ledger without a current release.
  - Returns the last O(log_lines) log lines of every container that is not up (exited, restarting or Docker
    C(unhealthy)).
  - Never changes anything, so it is safe to run at any time, also while a rollout runs (it takes no lock).
  - Runs no health checks of its own beyond the engine's view; the status role runs the stack's health checks with
    M(safedeploy.compose.health_gate) beside it.
author:
  - safedeploy.compose contributors (@safedeploy)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - safedeploy.compose._engine
attributes:
  check_mode:
    support: full
    details:
      - It only reads, so check mode does exactly what a normal run does.
  diff_mode:
    support: none
  idempotent:
    description:
      - It never changes anything and always reports C(changed=false).
    support: full
  platform:
    support: full
    platforms: posix
options:
  project:
    description:
      - Compose project name (its C(com.docker.compose.project) label) whose ledger and containers are read.
    type: str
    required: true
  state_dir:
    description:
      - Directory holding one sub-directory per compose project with its release ledger and stack lock, as the
        rollout used it. Never created or changed.
    type: path
    default: /var/lib/safedeploy
  log_lines:
    description:
      - How many of the last log lines of each container that is not up to return in RV(logs). V(0) returns none.
    type: int
    default: 10
  restart_window:
    description:
      - Seconds after a restart during which a running container that has restarted at least once counts as
        restarting (a crash loop caught in the second its container runs).
    type: int
    default: 120
  disk:
    description:
      - Measure the filesystem holding the engine's data root (C(DockerRootDir)) into RV(disk).
    type: bool
    default: true
notes:
  - A project without a ledger, or with an unreadable one, is reported (in RV(ledger) and RV(drift)), not a failure.
  - The task fails only when the engine does not answer (or O(project) is not a valid project name).
seealso:
  - module: safedeploy.compose.last_good_tag
  - module: safedeploy.compose.health_gate
  - module: safedeploy.compose.stack_lock
'''

EXAMPLES = r'''
- name: What runs for shop, and how it differs from its ledger
  safedeploy.compose.stack_status:
    project: shop
  register: shop_status

- name: Say it
  ansible.builtin.debug:
    msg: "{{ shop_status.state }}, {{ 'healthy' if shop_status.healthy else 'UNHEALTHY' }}, drift {{ shop_status.drift | map(attribute='kind') | list }}"
'''

RETURN = r'''
project:
  description: The project name.
  returned: always
  type: str
  sample: shop
ledger:
  description: The release ledger as found.
  returned: always
  type: dict
  contains:
    file:
      description: Path of the ledger file.
      type: str
      returned: always
      sample: /var/lib/safedeploy/shop/releases.json
    state:
      description: C(ok), C(missing) (no ledger for this project), or C(unreadable) (see RV(ledger.error)).
      type: str
      returned: always
      sample: ok
    error:
      description: Why the ledger cannot be read; null otherwise.
      type: str
      returned: always
    serial:
      description: The ledger's serial (its write count); null without a readable ledger.
      type: int
      returned: always
      sample: 12
current:
  description:
    - The current release - the one last promoted - as the ledger records it, null when there is none.
    - Its C(snapshot) lists the paths of its files only.
  returned: always
  type: dict
  sample:
    id: 9f2c1ab
    status: good
    promoted_at: "2025-01-31T10:02:40.123456Z"
    services: {web: {image: "registry.example.org/shop/web:9f2c1ab", digest: "sha256:4b1f..."}}
last_good:
  description: The last good release (the way back), with the keys of RV(current); null when there is none.
  returned: always
  type: dict
last_rollout:
  description:
    - The last rollout the ledger remembers - the release record written last - and how it ended; null without
      releases.
  returned: always
  type: dict
  contains:
    release:
      description: Its release id.
      type: str
      returned: always
    status:
      description: Its ledger status (C(good), C(failed), C(rolled_back), C(candidate) while one runs, C(superseded)).
      type: str
      returned: always
    at:
      description: When it was last written (UTC, ISO 8601).
      type: str
      returned: always
    timestamp:
      description: The same, in seconds since the epoch.
      type: float
      returned: always
    success:
      description: Whether it ended with the release promoted.
      type: bool
      returned: always
state:
  description: C(running) (every service runs), C(degraded) (some do), C(stopped) (containers, none running) or C(absent) (no container).
  returned: always
  type: str
  sample: running
healthy:
  description:
    - Whether every service of the current release (or every service found, without one) has a container and every
      container is up - running, not restarting and not Docker C(unhealthy).
  returned: always
  type: bool
services:
  description:
    - By service name, what the release expects and the containers found.
    - A container's C(logs_bounded) is V(false) when its log grows without bound (the C(json-file) driver without
      C(max-size)); the engine's C(daemon.json) log-opts count, they are merged into each container's log configuration.
  returned: always
  type: dict
  sample:
    web:
      expected_digest: "sha256:4b1f..."
      expected_image: "registry.example.org/shop/web:9f2c1ab"
      on_release: true
      containers:
        - name: shop-web-1
          id: 3f2a9c1b7d0e
          service: web
          image: "registry.example.org/shop/web:9f2c1ab@sha256:4b1f..."
          image_id: "sha256:77aa..."
          digests: ["sha256:4b1f..."]
          state: running
          health: healthy
          restart_count: 0
          exit_code: null
          started_at: "2025-01-31T10:02:12.913456789Z"
          uptime_seconds: 86400
          restarting: false
          logs_bounded: true
          up: true
          problems: []
drift:
  description: Each way what runs differs from the ledger, empty when none.
  returned: always
  type: list
  elements: dict
  sample:
    - kind: digest
      service: web
      container: shop-web-1
      detail: "container shop-web-1 runs sha256:9c0e1d2f3a4b, not sha256:4b1f5a6b7c8d of the current release"
  contains:
    kind:
      description: C(no_ledger), C(ledger) (unreadable), C(no_release), C(missing), C(digest), C(extra), C(files) or C(lock).
      type: str
      returned: always
    service:
      description: The service concerned, null when none.
      type: str
      returned: always
    container:
      description: The container concerned, null when none.
      type: str
      returned: always
    detail:
      description: One sentence saying what differs.
      type: str
      returned: always
files:
  description: The files of the current release's snapshot and their state on disk now (C(same), C(changed), C(missing), C(unreadable)).
  returned: always
  type: list
  elements: dict
  sample: [{path: /srv/shop/compose.yaml, state: same}]
lock:
  description: The stack lock.
  returned: always
  type: dict
  contains:
    held:
      description: Whether a live lease is held.
      type: bool
      returned: always
    expired:
      description: Whether a lease is there but expired (its run died without releasing it).
      type: bool
      returned: always
    holder:
      description: The lease (owner, host, pid, run_id, release, acquired_at, renewed_at, ttl, expires_at), null when free.
      type: dict
      returned: always
    file:
      description: Path of the lease file.
      type: str
      returned: always
    error:
      description: Why the lease file could not be read, or how it is damaged; null otherwise.
      type: str
      returned: always
logs:
  description: The last O(log_lines) log lines of each container that is not up, by container name.
  returned: always
  type: dict
  sample: {shop-web-1: ["app v3: mode=crash port=8080", "app v3: fatal: cannot reach database"]}
disk:
  description: The filesystem holding the engine's data root (bytes; percent as C(df) computes it); null when not measured or not on this host.
  returned: always
  type: dict
  sample: {path: /var/lib/docker, total: 41943040000, used: 12582912000, free: 27262976000, percent: 31.58}
checked_at:
  description: When the status was read (UTC, ISO 8601).
  returned: always
  type: str
msg:
  description: One line saying the state, health and drift.
  returned: always
  type: str
'''

import errno
import http.client
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.safedeploy.compose.plugins.module_utils._compose import (
    ONEOFF_LABEL,
    PROJECT_LABEL,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._engine_api import EngineAPIError, NotFound
from ansible_collections.safedeploy.compose.plugins.module_utils._engine import (
    ENGINE_ARGUMENT_SPEC,
    connect_engine,
    describe_engine_error,
    engine_address,
    engine_root_dir,
    measure_disk,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._release_state import (
    STATE_ARGUMENT_SPEC,
    LedgerCorruptError,
    ReleaseStateError,
    find_release,
    last_good,
    ledger_path,
    public_record,
    read_ledger,
    utc_now,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._stack_lock import (
    lease_expired,
    lease_path,
    read_lease,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._status import (
    DEFAULT_RESTART_WINDOW,
    clip_log_line,
    compute_drift,
    container_view,
    drift_summary,
    file_states,
    last_rollout,
    stack_healthy,
    stack_state,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._slots import RELEASE_LABEL, SLOTS, slot_project


LEASE_KEYS = ('owner', 'host', 'pid', 'run_id', 'release', 'acquired_at', 'renewed_at', 'ttl', 'expires_at')


def _read_file(path):
    try:
        with open(path, 'rb') as handle:
            return handle.read()
    except (IOError, OSError) as exc:
        if getattr(exc, 'errno', None) == errno.ENOENT:
            return None
        raise


def read_ledger_view(state_dir, project):
    """(ledger or None, {file, state, error, serial})."""
    path = ledger_path(state_dir, project)
    try:
        loaded = read_ledger(state_dir, project)
    except (LedgerCorruptError, ReleaseStateError) as exc:
        return None, dict(file=path, state='unreadable', error=str(exc), serial=None)
    except (IOError, OSError) as exc:
        return None, dict(file=path, state='unreadable', error='cannot read %s: %s' % (path, exc.strerror or exc),
                          serial=None)
    if loaded.raw is None:
        return None, dict(file=path, state='missing', error=None, serial=None)
    return loaded.ledger, dict(file=path, state='ok', error=None, serial=loaded.ledger['serial'])


def read_lock_view(state_dir, project, now):
    path = lease_path(state_dir, project)
    try:
        lease, damage = read_lease(path)
    except (IOError, OSError) as exc:
        return dict(held=False, expired=False, holder=None, file=path,
                    error='cannot read %s: %s' % (path, exc.strerror or exc))
    if lease is None:
        # A damaged lease was left by a process that died while taking it: the next rollout takes it over.
        return dict(held=False, expired=bool(damage), holder=None, file=path, error=damage)
    expired = lease_expired(lease, now)
    holder = dict((key, lease.get(key)) for key in LEASE_KEYS)
    return dict(held=not expired, expired=expired, holder=holder, file=path, error=None)


def read_containers(client, project, now, restart_window, release=None):
    """container_view()s of the project's service containers (one-offs left out), sorted by service and name; with
    `release`, only the running ones of that release (a slot of a routed stack)."""
    views = []
    images = {}
    for entry in client.api.containers(all=True, filters={'label': '%s=%s' % (PROJECT_LABEL, project)}):
        labels = entry.get('Labels') or {}
        if str(labels.get(ONEOFF_LABEL, '')).lower() == 'true':
            continue
        if release is not None and (labels.get(RELEASE_LABEL) != release or entry.get('State') != 'running'):
            continue
        try:
            details = client.api.inspect_container(entry['Id'])
        except NotFound:
            continue  # removed while we looked
        image_id = details.get('Image') or ''
        if image_id not in images:
            try:
                images[image_id] = client.api.inspect_image(image_id)
            except NotFound:
                images[image_id] = {}
        views.append(container_view(details, images[image_id], now, restart_window))
    return sorted(views, key=lambda box: (box['service'], box['name']))


def read_logs(client, containers, lines):
    logs = {}
    if lines <= 0:
        return logs
    for box in containers:
        if box['up']:
            continue
        try:
            raw = client.api.logs(box['id'], stdout=True, stderr=True, tail=lines, timestamps=False)
            if isinstance(raw, bytes):
                raw = raw.decode('utf-8', 'replace')
            logs[box['name']] = [clip_log_line(line.rstrip('\r')) for line in raw.splitlines()][-lines:]
        except Exception as exc:  # evidence only: a log that cannot be read must not hide the status
            logs[box['name']] = ['(logs unavailable: %s)' % str(exc)[:200]]
    return logs


def read_disk(client):
    try:
        return measure_disk(engine_root_dir(client))
    except (OSError, KeyError):
        return None  # the engine runs elsewhere: its data root is not on this host


def services_view(current, containers):
    expected = dict((name, entry) for name, entry in ((current or {}).get('services') or {}).items())
    services = {}
    for name in sorted(set(expected) | set(box['service'] for box in containers)):
        entry = expected.get(name) or {}
        services[name] = dict(expected_image=entry.get('image'), expected_digest=entry.get('digest'),
                              on_release=name in expected,
                              containers=[box for box in containers if box['service'] == name])
    return services


def stack_status(client, params, now=None):
    now = time.time() if now is None else now
    project, state_dir = params['project'], params['state_dir']
    ledger, ledger_view = read_ledger_view(state_dir, project)
    current = find_release(ledger, ledger['current']) if ledger and ledger['current'] else None
    good = last_good(ledger) if ledger else None
    lock = read_lock_view(state_dir, project, now)
    containers = read_containers(client, project, now, params['restart_window'])
    if current:
        # a routed stack's routed services run in the slot that serves: its running containers of the current release
        for slot in SLOTS:
            containers += read_containers(client, slot_project(project, slot), now, params['restart_window'],
                                          release=current['id'])
        containers.sort(key=lambda box: (box['service'], box['name']))
    snapshot = (current or {}).get('snapshot') or {}
    files = file_states(snapshot.get('files') or [], _read_file)
    expected = dict((name, entry['digest']) for name, entry in current['services'].items()) if current else None
    ledger_state = ledger_view['state'] if ledger_view['state'] != 'unreadable' else 'unreadable: %s' % ledger_view['error']
    drift = compute_drift(ledger_state, expected, containers, files, lock)
    expected_services = sorted(expected) if expected else []
    state = stack_state(expected_services, containers)
    healthy = stack_healthy(expected_services, containers)
    result = dict(
        changed=False,
        project=project,
        ledger=ledger_view,
        current=public_record(current),
        last_good=public_record(good),
        last_rollout=last_rollout(ledger),
        state=state,
        healthy=healthy,
        services=services_view(current, containers),
        drift=drift,
        files=[dict(path=entry['path'], state=entry['state']) for entry in files],
        lock=lock,
        logs=read_logs(client, containers, params['log_lines']),
        disk=read_disk(client) if params['disk'] else None,
        checked_at=utc_now(),
    )
    result['msg'] = '%s: %s%s, %s, drift: %s' % (
        project, state, ' on %s' % current['id'] if current else '', 'healthy' if healthy else 'UNHEALTHY',
        drift_summary(drift))
    return result


def main():
    argument_spec = dict(
        log_lines=dict(type='int', default=10),
        restart_window=dict(type='int', default=DEFAULT_RESTART_WINDOW),
        disk=dict(type='bool', default=True),
    )
    argument_spec.update(STATE_ARGUMENT_SPEC)
    argument_spec.update(ENGINE_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    try:
        ledger_path(params['state_dir'], params['project'])
    except ReleaseStateError as exc:
        module.fail_json(msg='stack_status: %s' % exc, changed=False)
    if params['log_lines'] < 0 or params['restart_window'] < 0:
        module.fail_json(msg='stack_status: log_lines and restart_window must be 0 or more', changed=False)
    client = connect_engine(module, dict(changed=False, project=params['project']))
    try:
        result = stack_status(client, params)
    except Exception as exc:  # an engine call that failed half-way: say so, with the engine's address
        if isinstance(exc, (EngineAPIError, OSError, http.client.HTTPException, ValueError)):
            module.fail_json(msg='stack_status of project %s: %s' % (
                params['project'], describe_engine_error(exc, engine_address(params), 'list the project\'s containers')),
                changed=False, project=params['project'])
        raise
    finally:
        client.close()
    module.exit_json(**result)


if __name__ == '__main__':
    main()
