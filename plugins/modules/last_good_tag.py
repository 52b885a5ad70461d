#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: last_good_tag
short_description: Keep the release ledger of a compose project and tell which release was last good
version_added: 0.1.0
description:
  - Keeps, on the managed host, the ledger of the releases of one compose project in O(state_dir)/O(project)/releases.json.
  - Each release records the digest of every service image and a snapshot of the files of its configuration (compose
    files, env files, the pinned override), so the last good release can be run again exactly, config included.
  - Typical rollout use is O(action=record) before pulling, O(action=promote) after the health gate passed,
    and O(action=fail) when it did not; the RV(last_good) release is then the one to roll back to.
  - The ledger is written atomically with a monotonic serial and a checksum, under an flock so concurrent
    runs never lose an update. The previous good write is kept as C(releases.json.bak).
  - A truncated, hand-edited or otherwise damaged ledger is reported and never reset silently;
    O(recover_from_backup=true) restores the previous good write.
author:
  - safedeploy.compose contributors (@safedeploy)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - safedeploy.compose._state
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The diff shows the current release and the status of every release before and after.
  idempotent:
    description:
      - When run twice with the same options, the second run changes nothing and reports C(changed=false).
    support: full
  platform:
    support: full
    platforms: posix
options:
  action:
    description:
      - V(query) returns the ledger. It takes no lock and writes nothing (unless O(recover_from_backup) repairs a
        damaged ledger), so it answers on a full disk and while another run holds the ledger.
      - V(record) adds O(release) as a C(candidate) with its O(services) and the snapshot of its O(files). Recording
        an existing release with other images fails, because a release id is immutable.
      - "Recording again a release that was good (the current release redeployed, an older one rolled forward to)
        never changes its standing nor the snapshot it was good with. The new configuration is kept as the
        release's pending C(attempt), which V(promote) adopts and V(fail) sets aside among its C(failed_attempts):
        a redeploy that fails its gate leaves the last good release good."
      - V(promote) makes O(release) C(good) and current; the release that was good before becomes C(superseded).
        A promotion whose O(health) says C(rollback=true) keeps the snapshot the release was good with.
      - V(fail) marks O(release) with O(fail_status) and records O(reason).
      - "V(restore) puts the files of O(release)'s snapshot back where they were recorded, byte for byte and with
        their modes, and writes nothing in O(state_dir). Every kept copy is checked against its hash first: a
        damaged one restores nothing. O(only) limits it to some of the files. With C(--check) it lists what
        would change."
    type: str
    choices: [query, record, promote, fail, restore]
    default: query
  release:
    description:
      - Id of the release to act on, usually the image tag (for example a git short SHA).
      - It must be a valid Docker tag.
      - Required with O(action=record), O(action=promote) and O(action=fail).
    type: str
  services:
    description:
      - The images of the release, as a map of service name to C({image, digest}), for example the
        C(services) returned by M(safedeploy.compose.compose_pin). Other keys of each entry are ignored.
      - C(digest) is the image's registry digest, C(sha256:...).
      - Required with O(action=record).
    type: dict
  compose_hash:
    description:
      - Hash of the effective compose configuration of the release, recorded with O(action=record).
    type: str
  files:
    description:
      - Absolute paths of the files that make the release's configuration, kept as its snapshot by
        O(action=record), for example the RV(safedeploy.compose.compose_pin#module:config_files) of its pin.
      - Their contents are kept on the host under O(state_dir)/O(project)/files/ (mode C(0600)), one copy per
        distinct content, and removed when no release in the ledger refers to them any more. Module results list
        only their paths, never their contents or hashes (env files hold secrets).
      - Each must be a regular file of at most 8 MiB.
    type: list
    elements: path
  only:
    description:
      - With O(action=restore), restore only these of the snapshot's files (absolute paths), for example only the
        pinned override.
    type: list
    elements: path
  source:
    description:
      - Free-form description of where the release came from (commit, CI run URL, ...), recorded with O(action=record).
    type: dict
  health:
    description:
      - Health gate summary stored with the release by O(action=promote), for example the result of
        M(safedeploy.compose.health_gate).
      - Promoting the release that is already good and current changes nothing, this summary included.
    type: dict
  reason:
    description:
      - Why the release failed. Required with O(action=fail).
    type: str
  fail_status:
    description:
      - Status O(action=fail) gives the release.
      - V(failed) for a release whose health gate failed, V(rolled_back) for a release that ran and was rolled back from.
    type: str
    choices: [failed, rolled_back]
    default: failed
  history_limit:
    description:
      - Most releases kept in the ledger. Every write evicts releases beyond it, those that never were good (failed,
        rolled back, unfinished candidates) first, oldest first, then the oldest of those that were good.
      - The current release, the last good release, the one good before it and O(release) are never evicted, so
        the ledger may hold a few more. The snapshot files of evicted releases are removed with them.
    type: int
    default: 20
  recover_from_backup:
    description:
      - When the ledger is damaged (truncated, not JSON, checksum mismatch) or missing while its backup exists,
        restore the previous good write from C(releases.json.bak) and carry on; the damaged file is kept
        beside it as C(releases.json.damaged-<time>).
      - Without it, a damaged ledger fails the task and nothing is changed.
      - Has no effect on a healthy ledger.
    type: bool
    default: false
  run_id:
    description:
      - The run that holds the stack lock of O(project) (taken with M(safedeploy.compose.stack_lock) in O(state_dir)).
      - When given, every action but V(query) first checks that this run still holds the lock and renews its lease for
        another ttl; a run whose lease was taken over, released or broken fails with RV(lease_lost=true), naming the
        holder, and the ledger is not written.
      - Not checked in check mode, where the lock is never written.
    type: str
notes:
  - A read-modify-write waits at most 30 seconds for a concurrent one on the same project, then fails naming
    the process (pid, host, since) that holds the ledger.
  - Files are created with mode C(0600) and directories with mode C(0700).
seealso:
  - module: safedeploy.compose.stack_lock
  - module: safedeploy.compose.compose_pin
  - module: safedeploy.compose.health_gate
'''

EXAMPLES = r'''
- name: Record the pinned release as a candidate before pulling it
  safedeploy.compose.last_good_tag:
    project: shop
    action: record
    release: 9f2c1ab
    services: "{{ pin.services }}"
    compose_hash: "{{ pin.compose_hash | default(omit) }}"
    files: "{{ pin.config_files }}"
    source:
      commit: 9f2c1ab
      ci_run: https://ci.example.com/shop/runs/812

- name: Promote it once the health gate passed
  safedeploy.compose.last_good_tag:
    project: shop
    action: promote
    release: 9f2c1ab
    health: "{{ gate }}"

- name: Mark it failed when the gate did not pass
  safedeploy.compose.last_good_tag:
    project: shop
    action: fail
    release: 9f2c1ab
    reason: "health gate failed: {{ gate.msg | default('see the gate result') }}"

- name: Find the release to roll back to
  safedeploy.compose.last_good_tag:
    project: shop
  register: ledger

- name: Show its tag and digests
  ansible.builtin.debug:
    msg: "roll back to {{ ledger.last_good.id }}: {{ ledger.last_good.services }}"
  when: ledger.last_good is not none

- name: Put the files of the last good release back before bringing it up again
  safedeploy.compose.last_good_tag:
    project: shop
    action: restore
    release: "{{ ledger.last_good.id }}"

- name: Restore a damaged ledger from its backup
  safedeploy.compose.last_good_tag:
    project: shop
    recover_from_backup: true
'''

RETURN = r'''
lease_lost:
  description: Whether the action was refused because the run of O(run_id) no longer holds the stack lock.
  returned: always
  type: bool
  sample: false
last_good:
  description:
    - The release that passed its health gate most recently and was not failed since; null when there is none.
    - Its C(id) is the tag to roll back to; its C(services) hold each image and digest.
  returned: always
  type: dict
  sample:
    id: 9f2c1ab
    status: good
    created_at: "2025-01-31T10:02:11.514203Z"
    updated_at: "2025-01-31T10:04:40.088312Z"
    promoted_at: "2025-01-31T10:04:40.088312Z"
    services:
      web:
        image: registry.example.com/shop/web:9f2c1ab
        digest: sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
    compose_hash: sha256:1d0a1cc1c6e2b0f4e0e2cd0c5b3a4e9b5e8b2f5d0a8f4c6b2d3e4f5a6b7c8d9e
    health: {passed: true}
    source: {commit: 9f2c1ab}
    reason: null
  contains:
    id:
      description: Release id (the image tag).
      type: str
      returned: always
      sample: 9f2c1ab
    status:
      description: One of C(candidate), C(good), C(failed), C(rolled_back), C(superseded).
      type: str
      returned: always
      sample: good
    created_at:
      description: When the release was recorded (UTC, ISO 8601).
      type: str
      returned: always
      sample: "2025-01-31T10:02:11.514203Z"
    updated_at:
      description: When the record last changed (UTC, ISO 8601).
      type: str
      returned: always
      sample: "2025-01-31T10:04:40.088312Z"
    promoted_at:
      description: When the release was last promoted (UTC, ISO 8601); null if never.
      type: str
      returned: always
      sample: "2025-01-31T10:04:40.088312Z"
    services:
      description:
        - Map of service name to its C(image) (as recorded), C(digest) and C(pinned), the reference to run it by,
          C(repository:tag@digest) with the recorded digest (an image the compose file pinned by digest keeps only
          the recorded one).
      type: dict
      returned: always
      sample: {web: {image: "registry.example.com/shop/web:9f2c1ab", digest: "sha256:6c3c...",
                     pinned: "registry.example.com/shop/web:9f2c1ab@sha256:6c3c..."}}
    compose_hash:
      description: Hash of the compose configuration given with O(action=record); null if none.
      type: str
      returned: always
      sample: sha256:1d0a1cc1c6e2b0f4e0e2cd0c5b3a4e9b5e8b2f5d0a8f4c6b2d3e4f5a6b7c8d9e
    health:
      description: Health gate summary given with O(action=promote); null if none.
      type: dict
      returned: always
      sample: {passed: true}
    source:
      description: The O(source) given with O(action=record).
      type: dict
      returned: always
      sample: {commit: 9f2c1ab}
    reason:
      description: Why the release failed; null unless failed or rolled back.
      type: str
      returned: always
      sample: "health gate failed: http https://shop.example.com/health returned 502"
    snapshot:
      description:
        - "The files kept for the release, as C({files: [path, ...]}); null for a release recorded without
          O(files) (or by a collection older than 0.3.0)."
      type: dict
      returned: always
      sample: {files: [/srv/shop/compose.yaml, /srv/shop/.env, /srv/shop/compose.release.yml]}
    promoted_serial:
      description:
        - The ledger serial the release was last promoted at; releases are ordered by it, never by the clock.
      type: int
      returned: when the release was promoted
      sample: 7
    revision:
      description: How many configurations the release has been good with (a redeploy that passed adds one).
      type: int
      returned: when a redeploy of the release was promoted
      sample: 2
    attempt:
      description:
        - The pending redeploy of a release that was good, C({compose_hash, snapshot, recorded_at, source}), until
          it is promoted or failed; null otherwise.
      type: dict
      returned: when the release was recorded again after it was good
    failed_attempts:
      description:
        - The last five redeploys of this release that failed, each with C(compose_hash), C(status), C(reason),
          C(recorded_at), C(failed_at) and C(source). The release kept its standing.
      type: list
      elements: dict
      returned: when a redeploy of the release failed
previous_good:
  description:
    - The release that was good before RV(last_good) (status C(good) or C(superseded), most recently promoted);
      null when there is none. The default target of a manual rollback.
    - Same keys as RV(last_good).
  returned: always
  type: dict
  sample: {id: 51be0d2, status: superseded}
current:
  description:
    - The release last promoted, that is the one that should be running; null before the first promotion.
    - Same keys as RV(last_good).
  returned: always
  type: dict
  sample: {id: 9f2c1ab, status: good}
releases:
  description: All releases in the ledger, oldest first, each with the keys of RV(last_good).
  returned: always
  type: list
  elements: dict
  sample: [{id: 51be0d2, status: superseded}, {id: 9f2c1ab, status: good}]
restored:
  description: With O(action=restore), the files that were put back (in check mode, those that would be).
  returned: always
  type: list
  elements: str
  sample: [/srv/shop/.env]
evicted:
  description:
    - Ids of the releases removed by O(history_limit) (in check mode, those that would be). Releases that never were
      good go first; the current, last good and previous good releases are never evicted.
  returned: always
  type: list
  elements: str
  sample: [0a1b2c3]
serial:
  description: Serial of the ledger after this call; it grows by one with every write and never goes back.
  returned: always
  type: int
  sample: 42
ledger_file:
  description: Path of the ledger file.
  returned: always
  type: str
  sample: /var/lib/safedeploy/shop/releases.json
diff:
  description: The current release and the status of every release, before and after.
  returned: when diff mode is enabled
  type: dict
  sample:
    before: {current: 51be0d2, releases: {51be0d2: good, 9f2c1ab: candidate}}
    after: {current: 9f2c1ab, releases: {51be0d2: superseded, 9f2c1ab: good}}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.safedeploy.compose.plugins.module_utils._release_state import (
    STATE_ARGUMENT_SPEC,
    ReleaseStateError,
    apply_ledger_action,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._stack_lock import (
    LeaseLost,
    hold_stack_lock,
)

EMPTY_RESULT = dict(changed=False, last_good=None, previous_good=None, current=None, releases=[], evicted=[],
                    restored=[], serial=None, ledger_file=None, lease_lost=False)


def main():
    argument_spec = dict(
        action=dict(type='str', default='query', choices=['query', 'record', 'promote', 'fail', 'restore']),
        files=dict(type='list', elements='path'),
        only=dict(type='list', elements='path'),
        release=dict(type='str'),
        services=dict(type='dict'),
        compose_hash=dict(type='str'),
        source=dict(type='dict'),
        health=dict(type='dict'),
        reason=dict(type='str'),
        fail_status=dict(type='str', default='failed', choices=['failed', 'rolled_back']),
        history_limit=dict(type='int', default=20),
        recover_from_backup=dict(type='bool', default=False),
        run_id=dict(type='str'),
    )
    argument_spec.update(STATE_ARGUMENT_SPEC)
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_if=[
            ('action', 'record', ['release', 'services']),
            ('action', 'promote', ['release']),
            ('action', 'fail', ['release', 'reason']),
            ('action', 'restore', ['release']),
        ],
        supports_check_mode=True,
    )
    params = module.params
    if params['run_id'] and params['action'] != 'query' and not module.check_mode:
        lost = dict(EMPTY_RESULT)
        lost['lease_lost'] = True
        try:
            _lease, warning = hold_stack_lock(params['state_dir'], params['project'], params['run_id'],
                                              'the ledger action %s' % params['action'])
        except LeaseLost as exc:
            module.fail_json(msg='last_good_tag %s of project %s: %s' % (params['action'], params['project'], exc),
                             **lost)
        except ReleaseStateError as exc:  # a lock that cannot be read is not known to be held
            module.fail_json(msg='last_good_tag %s of project %s: cannot check the stack lock: %s'
                             % (params['action'], params['project'], exc), **lost)
        if warning:
            module.warn(warning)
    try:
        result = apply_ledger_action(
            params['state_dir'], params['project'], action=params['action'], release=params['release'],
            services=params['services'], compose_hash=params['compose_hash'], source=params['source'],
            health=params['health'], reason=params['reason'], fail_status=params['fail_status'],
            history_limit=params['history_limit'], recover_from_backup=params['recover_from_backup'],
            check_mode=module.check_mode, files=params['files'] if params['action'] == 'record' else None,
            only=params['only'])
    except ReleaseStateError as exc:
        module.fail_json(msg='last_good_tag %s of project %s: %s' % (params['action'], params['project'], exc),
                         **EMPTY_RESULT)
    for warning in result.pop('warnings'):
        module.warn(warning)
    if not module._diff:
        result.pop('diff')
    module.exit_json(lease_lost=False, **result)


if __name__ == '__main__':
    main()
