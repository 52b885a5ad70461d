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
  - A lease not renewed for O(ttl) seconds is taken over with a warning (its run died without releasing it).
  - The modules that change the stack (M(safedeploy.compose.compose_up), M(safedeploy.compose.compose_run),
    M(safedeploy.compose.last_good_tag)) renew the lease through their C(stack_lock)/O(run_id) options before
    every step and stop, touching nothing more, when it has been taken over. The TTL therefore only has to be
    longer than the longest single step (a pull, an up plus the gate, a hook), not the whole run.
  - Expiry is measured on the host's boot clock (C(CLOCK_BOOTTIME)), so a wall-clock step (NTP, a manual
    C(date)) neither expires a live lease nor keeps a dead one; a lease written before the host's last boot
    is expired.
  - While a M(safedeploy.compose.disk_reclaim) that protects releases runs on the host, taking a lease waits
    for it (within O(lock_wait)); a reclaim in turn never starts while any lease is live.
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
      - Seconds the lease is valid after it was acquired or last renewed. Once they have passed, another run
        takes it over.
      - Choose it longer than the longest single step between two renewals (the rollout role checks it against
        its pull, up, gate and hook timeouts).
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
    renewed_at: "2025-01-31T10:02:11Z"
    ttl: 1800
    expires_at: "2025-01-31T10:32:11Z"
    boot_id: 0f5b3d1e-9a42-4c0e-8b57-3c2f1d6a7e90
    expires_boot_clock: 5012.42
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
    renewed_at:
      description: When the lease was last taken or renewed (UTC, ISO 8601).
      type: str
      returned: always
      sample: "2025-01-31T10:02:11Z"
    ttl:
      description: Seconds the lease is valid after RV(lock.renewed_at).
      type: int
      returned: always
      sample: 1800
    expires_at:
      description: When the lease expires on the wall clock (UTC, ISO 8601), for people; the expiry check uses the boot clock.
      type: str
      returned: always
      sample: "2025-01-31T10:32:11Z"
    boot_id:
      description: The host's boot id when the lease was last renewed; a lease from another boot is expired.
      type: str
      returned: when the kernel tells it (Linux)
      sample: 0f5b3d1e-9a42-4c0e-8b57-3c2f1d6a7e90
    expires_boot_clock:
      description: Seconds on the host's boot clock (C(CLOCK_BOOTTIME)) at which the lease expires.
      type: float
      returned: when the kernel tells it (Linux)
      sample: 5012.42
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
lock_file:
  description: Path of the lease file.
  returned: always
  type: str
  sample: /var/lib/safedeploy/shop/lock.json
diff:
  description: The lease before and after (empty when there is none).
  returned: when diff mode is enabled
  type: dict
  sample:
    before: {}
    after: {run_id: awx-job-1713, owner: deploy, host: web1, acquired_at: "2025-01-31T10:02:11Z", ttl: 1800}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.safedeploy.compose.plugins.module_utils._release_state import (
    STATE_ARGUMENT_SPEC,
    ReleaseStateError,
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


def main():
    argument_spec = dict(
        state=dict(type='str', default='present', choices=['present', 'absent']),
        run_id=dict(type='str', required=True),
        owner=dict(type='str'),
        release=dict(type='str'),
        ttl=dict(type='int', default=DEFAULT_TTL),
        lock_wait=dict(type='int', default=DEFAULT_LOCK_WAIT),
        poll_interval=dict(type='float', default=DEFAULT_POLL_INTERVAL),
    )
    argument_spec.update(STATE_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
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
                         took_over=False, waited=waited, lock_file=lock_file_or_none(params))
    for warning in result.pop('warnings'):
        module.warn(warning)
    if not module._diff:
        result.pop('diff')
    module.exit_json(**result)


if __name__ == '__main__':
    main()
