#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: stack_lock
short_description: Take or release the rollout lock of a compose project
version_added: 0.1.0
description:
  - Guards a whole rollout of one compose project, across all its tasks, against a concurrent rollout,
    rollback or recovery of the same project.
  - The lock is a lease, the file O(state_dir)/O(project)/lock.json, created exclusively and naming its holder
    (owner, host, pid, run id, release), when it was acquired and its time to live.
  - Take it first with O(state=present) and release it with O(state=absent) in an C(always) block.
  - A second run waits up to O(lock_wait) seconds for the holder, then fails naming it and the age of its lease.
  - A lease older than its O(ttl) is taken over with a warning (its run died without releasing it).
  - Only the run id that holds the lease can release it. To break a stale lease by hand, quote the
    holder's run id (it is in the failure message and in RV(lock)).
author:
  - safedeploy.compose contributors (@safedeploy)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - safedeploy.compose._state
attributes:
  check_mode:
    support: full
    details:
      - Check mode waits for a held lock like a real run, but never writes the lease.
  diff_mode:
    support: full
    details:
      - The diff shows the lease before and after.
  idempotent:
    description:
      - When run twice with the same options, the second run changes nothing and reports C(changed=false).
    support: full
  platform:
    support: full
    platforms: posix
options:
  state:
    description:
      - V(present) takes the lease for O(run_id), waiting for another holder at most O(lock_wait) seconds.
        Taking it again with the same O(run_id) changes nothing (an expired lease of the same run id is renewed).
      - V(absent) releases the lease held by O(run_id). A lease held by another run id is left in place and the
        task fails naming its holder. Releasing a lock nobody holds changes nothing.
    type: str
    choices: [present, absent]
    default: present
  run_id:
    description:
      - Identifies the run holding the lease, for example the AWX job id or a UUID generated at the start of the play.
      - Use the same value to take and to release the lease.
    type: str
    required: true
  owner:
    description:
      - Who holds the lease, shown to anyone who has to wait for it.
      - Defaults to the name of the user the module runs as on the managed host.
    type: str
  release:
    description:
      - The release being rolled out, shown to anyone who has to wait for the lease.
    type: str
  ttl:
    description:
      - Seconds the lease is valid after it was acquired. Once they have passed, another run takes it over.
      - Choose it longer than the longest rollout.
    type: int
    default: 1800
  lock_wait:
    description:
      - Seconds to wait for a live lease held by another run before failing. V(0) fails at once.
    type: int
    default: 60
  poll_interval:
    description:
      - Seconds between two looks at a held lease while waiting.
    type: float
    default: 1.0
  read_ledger:
    description:
      - With O(state=present), also read the release ledger of O(project) once the lease is held and return it as
        RV(ledger), as C(safedeploy.compose.last_good_tag) with O(safedeploy.compose.last_good_tag#module:action=query)
        would. A rollout needs both first thing; one module run instead of two saves a round trip to the host.
      - When the ledger cannot be read (damaged, unreadable), a lease this task took is released again and the task
        fails with the ledger's error; run C(last_good_tag) with O(safedeploy.compose.last_good_tag#module:recover_from_backup=true)
        to restore it.
    type: bool
    default: false
  python_libs:
    description:
      - Python packages to look up, without importing them, in the interpreter that runs this module;
        RV(python) reports which are missing.
      - The rollout role asks here for C(docker) and C(requests), which the collection's engine and registry
        modules need, so that checking the host's Python costs no round trip of its own. The lookup never fails
        the task.
    type: list
    elements: str
    default: []
notes:
  - The lease outlives the module process on purpose; the short flock that makes checking and changing it
    atomic is held only during the module run and is never inherited by child processes.
  - Files are created with mode C(0600) and directories with mode C(0700).
seealso:
  - module: safedeploy.compose.last_good_tag
'''

EXAMPLES = r'''
- name: Roll out under the stack lock
  vars:
    run_id: "{{ tower_job_id | default(lookup('ansible.builtin.pipe', 'uuidgen')) }}"
  block:
    - name: Take the stack lock
      safedeploy.compose.stack_lock:
        project: shop
        run_id: "{{ run_id }}"
        release: 9f2c1ab
        lock_wait: 300

    - name: Deploy
      ansible.builtin.debug:
        msg: "pin, pull, up, gate, promote ..."
  always:
    - name: Release the stack lock
      safedeploy.compose.stack_lock:
        project: shop
        run_id: "{{ run_id }}"
        state: absent

- name: Break the lease of a rollout that died (quote the run id the failure message named)
  safedeploy.compose.stack_lock:
    project: shop
    run_id: awx-job-1712
    state: absent
'''

RETURN = r'''
lock:
  description:
    - The lease in place after the task; null after O(state=absent).
    - When the task fails because another run holds the lease, that run's lease.
  returned: always
  type: dict
  sample:
    owner: deploy
    host: web1
    pid: 48113
    run_id: awx-job-1713
    release: 9f2c1ab
    acquired_at: "2025-01-31T10:02:11Z"
    ttl: 1800
    expires_at: "2025-01-31T10:32:11Z"
  contains:
    owner:
      description: Who took the lease.
      type: str
      returned: always
      sample: deploy
    host:
      description: Host name of the machine where the lease was taken.
      type: str
      returned: always
      sample: web1
    pid:
      description: Process id of the module run that took the lease (it has exited since; the lease lives on).
      type: int
      returned: always
      sample: 48113
    run_id:
      description: Run id holding the lease; quote it to release the lease.
      type: str
      returned: always
      sample: awx-job-1713
    release:
      description: Release being rolled out by the holder; null if not given.
      type: str
      returned: always
      sample: 9f2c1ab
    acquired_at:
      description: When the lease was taken (UTC, ISO 8601).
      type: str
      returned: always
      sample: "2025-01-31T10:02:11Z"
    ttl:
      description: Seconds the lease is valid after RV(lock.acquired_at).
      type: int
      returned: always
      sample: 1800
    expires_at:
      description: When the lease expires (UTC, ISO 8601).
      type: str
      returned: always
      sample: "2025-01-31T10:32:11Z"
previous_lock:
  description:
    - The lease this task released or took over, with the keys of RV(lock); null otherwise.
  returned: always
  type: dict
  sample: {run_id: awx-job-1712, owner: deploy, host: web1, acquired_at: "2025-01-31T08:00:02Z", ttl: 1800}
acquired:
  description: Whether the run O(run_id) holds the lease after the task (always false for O(state=absent)).
  returned: always
  type: bool
  sample: true
took_over:
  description: Whether an expired or damaged lease of another run was taken over.
  returned: always
  type: bool
  sample: false
waited:
  description: Seconds spent waiting for another holder.
  returned: always
  type: float
  sample: 12.503
ledger:
  description:
    - With O(read_ledger=true) and O(state=present), the release ledger as read under the lease, with the keys
      C(safedeploy.compose.last_good_tag) returns for a query. Null otherwise.
  returned: always
  type: dict
  sample:
    current: {id: 9f2c1ab, status: good}
    last_good: {id: 9f2c1ab, status: good}
    previous_good: {id: 51be0d2, status: superseded}
    releases: [{id: 51be0d2, status: superseded}, {id: 9f2c1ab, status: good}]
    serial: 42
    ledger_file: /var/lib/safedeploy/shop/releases.json
  contains:
    current:
      description: The release last promoted; null before the first promotion.
      type: dict
      returned: always
    last_good:
      description: The newest release with status C(good); null when there is none.
      type: dict
      returned: always
    previous_good:
      description: The release that was good before RV(ledger.last_good); null when there is none.
      type: dict
      returned: always
    releases:
      description: All releases, oldest first.
      type: list
      elements: dict
      returned: always
    serial:
      description: Serial of the ledger (0 when it does not exist yet).
      type: int
      returned: always
    ledger_file:
      description: Path of the ledger file.
      type: str
      returned: always
lock_file:
  description: Path of the lease file.
  returned: always
  type: str
  sample: /var/lib/safedeploy/shop/lock.json
python:
  description:
    - The interpreter that ran the module (C(executable), C(version)) and which of O(python_libs) it lacks
      (C(missing), empty when none).
  returned: always
  type: dict
  sample: {executable: /usr/bin/python3, version: 3.11.2, missing: [docker]}
diff:
  description: The lease before and after (empty when there is none).
  returned: when diff mode is enabled
  type: dict
  sample:
    before: {}
    after: {run_id: awx-job-1713, owner: deploy, host: web1, acquired_at: "2025-01-31T10:02:11Z", ttl: 1800}
'''

import importlib.util
import platform
import sys

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.safedeploy.compose.plugins.module_utils._release_state import (
    STATE_ARGUMENT_SPEC,
    ReleaseStateError,
    apply_ledger_action,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._stack_lock import (
    DEFAULT_LOCK_WAIT,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TTL,
    StackLockError,
    acquire_stack_lock,
    lease_path,
    release_stack_lock,
)


def lock_file_or_none(params):
    try:
        return lease_path(params['state_dir'], params['project'])
    except ReleaseStateError:  # an invalid project name has no lock file
        return None


def python_report(names):
    """This interpreter and which of the packages `names` it lacks (looked up by find_spec: nothing is imported)."""
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken parent package, or an empty name
            found = False
        if not found:
            missing.append(name)
    return dict(executable=sys.executable, version=platform.python_version(), missing=missing)


def main():
    argument_spec = dict(
        state=dict(type='str', default='present', choices=['present', 'absent']),
        run_id=dict(type='str', required=True),
        owner=dict(type='str'),
        release=dict(type='str'),
        ttl=dict(type='int', default=DEFAULT_TTL),
        lock_wait=dict(type='int', default=DEFAULT_LOCK_WAIT),
        poll_interval=dict(type='float', default=DEFAULT_POLL_INTERVAL),
        read_ledger=dict(type='bool', default=False),
        python_libs=dict(type='list', elements='str', default=[]),
    )
    argument_spec.update(STATE_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    python = python_report(params['python_libs'])
    try:
        if params['state'] == 'present':
            result = acquire_stack_lock(
                params['state_dir'], params['project'], params['run_id'], owner=params['owner'],
                release=params['release'], ttl=params['ttl'], lock_wait=params['lock_wait'],
                poll_interval=params['poll_interval'], check_mode=module.check_mode)
        else:
            result = release_stack_lock(params['state_dir'], params['project'], params['run_id'],
                                        check_mode=module.check_mode)
    except ReleaseStateError as exc:
        holder = exc.holder if isinstance(exc, StackLockError) else None
        waited = exc.waited if isinstance(exc, StackLockError) else 0.0
        module.fail_json(msg=str(exc), changed=False, lock=holder, previous_lock=None, acquired=False,
                         took_over=False, waited=waited, ledger=None, lock_file=lock_file_or_none(params),
                         python=python)
    result.update(ledger=None, python=python)
    if params['state'] == 'present' and params['read_ledger']:
        result['ledger'] = read_ledger_under_lease(module, result)
    for warning in result.pop('warnings'):
        module.warn(warning)
    if not module._diff:
        result.pop('diff')
    module.exit_json(**result)


def read_ledger_under_lease(module, result):
    """The ledger as a last_good_tag query returns it; on failure give back a lease this task took, then fail."""
    params = module.params
    try:
        ledger = apply_ledger_action(params['state_dir'], params['project'], action='query', check_mode=module.check_mode)
    except ReleaseStateError as exc:
        released = ''
        if result.get('changed') and not module.check_mode:
            try:
                release_stack_lock(params['state_dir'], params['project'], params['run_id'])
                released = ' The lease this task took was released again.'
            except ReleaseStateError as release_exc:
                released = ' Releasing the lease this task took failed too: %s' % release_exc
        module.fail_json(msg='stack_lock of project %s: the lease is held but the release ledger cannot be read: %s.%s'
                         % (params['project'], exc, released), changed=False, lock=None, previous_lock=None,
                         acquired=False, took_over=False, waited=result.get('waited', 0.0), ledger=None,
                         lock_file=lock_file_or_none(params), python=result['python'])
    for warning in ledger.pop('warnings'):
        module.warn(warning)
    return dict((key, ledger[key]) for key in ('current', 'last_good', 'previous_good', 'releases', 'serial',
                                               'ledger_file'))


if __name__ == '__main__':
    main()
