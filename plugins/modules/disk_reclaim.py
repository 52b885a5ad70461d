#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: disk_reclaim
short_description: Free disk space on a Docker host without deleting the images a rollback needs
version_added: 0.1.0
description:
  - Measures the filesystem holding O(path) (by default the engine's C(DockerRootDir)) and, when its usage is at or
    above O(threshold_percent) or less than O(min_free_bytes) are free, removes what the engine no longer needs, in
    stages, until usage is at or below O(target_percent) and at least O(min_free_bytes) are free.
  - 'The stages always run in this order, each only when listed in O(stages): V(containers) (stopped containers:
    exited, created or dead), V(dangling_images) (images with neither tag nor digest), V(build_cache) (unused
    build cache), V(unused_images) (images no container uses), V(logs) (the C(json-file) logs of running containers
    above O(log_max_bytes), emptied in place), V(volumes) (unused volumes, only with O(prune_volumes=true)).'
  - Within a stage the oldest items go first (in V(logs) the largest), and the module measures the filesystem again after each removal, so it
    stops as soon as the target is reached instead of emptying the whole stage.
  - Never removed are an image any container uses (running or stopped; an image whose stopped containers were all
    removed in the V(containers) stage is no longer used), an image named by O(protect), and the images of the current
    release, of the last O(protect_releases.keep_releases) good releases and of every candidate (a release a run has
    recorded and may be bringing up) of every project in O(protect_releases). An image with several tags or digests
    is removed only when none of them is protected.
  - Never removed either is a stopped container of a project in O(protect_releases) (found by its compose project
    label), because compose carries its anonymous volumes over to the container that replaces it.
  - A reclaim never runs inside another run's rollout, rollback or recovery, between its pull and its C(up)
    (it could remove what that run pulled). Before it removes anything it looks for a live stack lock (see
    M(safedeploy.compose.stack_lock)) of another run in O(protect_releases.state_dir); while there is one it waits up
    to O(protect_releases.lock_wait) seconds, then removes nothing and says so (RV(blocked_by)). While it removes, it
    holds C(.reclaim.lock) in that directory, and no run can take a new stack lock until it is done.
  - Images are removed by id without force, so the engine itself still refuses to delete an image a container started
    using meanwhile; such refusals are reported as skipped, not as failures.
  - Usage is computed as C(df) computes it, so RV(reclaimed_bytes) is the drop of C(df)'s C(Used) column; see RV(usage_before).
  - The V(logs) stage empties a log file in place (truncates it to zero bytes) and never deletes it; the container keeps
    running and keeps writing to the same file, and C(docker logs) shows what it writes from then on. The lines that were
    in the file are gone. It is off unless listed in O(stages). To keep logs from growing in the first place, bound them
    (the rollout role's C(rollout_log_bound), a service's C(logging) in its compose file, or the engine's C(log-opts) in
    C(daemon.json)); RV(accounting.logs) names the containers whose logs nothing bounds.
  - RV(accounting) says where the bytes of the disk are (images in use, protected for a rollback, reclaimable; build
    cache; containers; volumes in use and dangling; container logs, largest first) at the end of the run.
author:
  - safedeploy.compose contributors (@safedeploy)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - safedeploy.compose._engine
attributes:
  check_mode:
    support: full
    details:
      - Nothing is deleted; RV(stages) lists what would be removed and RV(estimated_reclaim_bytes) what that would free,
        computed from the sizes the engine reports (layers shared with kept images are not counted).
  diff_mode:
    support: none
  idempotent:
    description:
      - A second run finds usage below O(threshold_percent) with O(min_free_bytes) free, or nothing left it may
        remove, and reports C(changed=false).
    support: full
  platform:
    support: full
    platforms: posix
options:
  path:
    description:
      - A path on the filesystem to measure.
      - Defaults to the engine's C(DockerRootDir) (from C(docker info)), which must then exist on the host the module
        runs on; set it when the engine runs elsewhere or keeps its data on another filesystem.
    type: path
  threshold_percent:
    description:
      - Act only when the used percentage of the filesystem is at or above this value (or with O(force=true), or when
        less than O(min_free_bytes) are free).
    type: float
    default: 85
  target_percent:
    description:
      - Stop removing as soon as the used percentage is at or below this value.
      - Must not be above O(threshold_percent). Use V(0) with O(force=true) to run every stage completely.
      - With O(min_free_bytes), the run stops only once both are met.
    type: float
    default: 80
  min_free_bytes:
    description:
      - Free space, in bytes (C(df)'s C(Avail)), to make. When less is free the module acts whatever the usage, and it
        stops removing only once at least this much is free (and usage is at or below O(target_percent)).
      - For room a known amount of data needs, for example a pull; V(0) asks for nothing.
      - To reclaim only what that amount needs, set O(threshold_percent) and O(target_percent) to V(100).
    type: int
    default: 0
  force:
    description:
      - Act even when usage is below O(threshold_percent). Removal still stops at O(target_percent) (and
        O(min_free_bytes)).
    type: bool
    default: false
  stages:
    description:
      - The stages that may run. They run in the fixed order given in the description, whatever the order of this list.
      - V(volumes) requires O(prune_volumes=true).
    type: list
    elements: str
    choices: [containers, dangling_images, build_cache, unused_images, logs, volumes]
    default: [containers, dangling_images, build_cache, unused_images]
  log_max_bytes:
    description:
      - In the V(logs) stage, the size above which the C(json-file) log of a running container is emptied (its current
        file, rotated files left alone). Also what RV(accounting.logs) (its C(truncatable_bytes)) counts.
      - Only when O(stages) lists V(logs); the default of O(stages) does not.
    type: int
    default: 104857600
  accounting:
    description:
      - Read the size of every image layer, container, volume and container log to return RV(accounting).
      - V(false) spares those engine calls (two per image, one per container) when only the reclaim matters and usage
        is below the threshold; RV(accounting) is then empty.
    type: bool
    default: true
  prune_volumes:
    description:
      - Also remove unused volumes (referenced by no container, local driver), as a last stage.
      - Volumes hold data that no registry can give back; volumes labelled C(com.docker.compose.project) with a project
        of O(protect_releases.projects) are kept even then.
    type: bool
    default: false
  protect:
    description:
      - Images never to remove, as C(repo:tag), C(repo) (meaning C(repo:latest)), C(repo@sha256:<digest>),
        C(repo:tag@sha256:<digest>) or C(sha256:<image id>) (an id prefix of at least 12 digits is enough).
      - A digest protects every local image with that manifest digest, whatever the repository it came from.
    type: list
    elements: str
    default: []
  protect_releases:
    description:
      - Keep the images of releases recorded by M(safedeploy.compose.last_good_tag).
      - Applies even when not given, with the defaults below; set O(protect_releases.projects) to V([]) to protect
        no project.
      - When a project's ledger cannot be read (damaged, missing, unreadable) the module refuses to remove anything,
        since it cannot tell which images that project needs to roll back.
    type: dict
    default: {}
    suboptions:
      state_dir:
        description:
          - Directory holding one sub-directory per project with its release ledger.
        type: path
        default: /var/lib/safedeploy
      projects:
        description:
          - Projects whose release images are kept. Default is every project with a ledger in O(protect_releases.state_dir).
        type: list
        elements: str
      keep_releases:
        description:
          - How many of the most recently promoted good (or superseded) releases to keep, counting the current release
            when it is good; the current release is kept in any case, so V(0) keeps the current release only.
          - The default, V(2), keeps the current release and the good release before it, the target of a rollback.
        type: int
        default: 2
      run_id:
        description:
          - The run this reclaim is part of (the run id its rollout took the stack lock with); that run's own lock
            does not hold the reclaim back.
        type: str
      lock_wait:
        description:
          - Seconds to wait for the stack locks of other runs to be released before giving up without removing
            anything. V(0) gives up at once (a scheduled guard runs again soon).
        type: int
        default: 0
notes:
  - Sizes of images come from the engine's layer sizes (the sum of the files in each layer). On a filesystem with many
    small files the real space freed can be larger than the estimate; RV(reclaimed_bytes) is always measured.
  - Other processes writing to the same filesystem while the module runs change the measured numbers.
seealso:
  - module: safedeploy.compose.last_good_tag
  - name: docker system df
    description: The engine API endpoint (C(/system/df)) the module reads sizes from.
    link: https://docs.docker.com/reference/cli/docker/system/df/
'''

EXAMPLES = r'''
- name: Make room before a rollout, keeping every project's current and last good images
  safedeploy.compose.disk_reclaim:
    threshold_percent: 85
    target_percent: 75
  become: true
  register: reclaim

- name: Show what went
  ansible.builtin.debug:
    msg: "{{ reclaim.msg }}"

- name: See what a full cleanup would remove, without deleting anything
  safedeploy.compose.disk_reclaim:
    force: true
    target_percent: 0
  check_mode: true

- name: Clean up a host in trouble, keeping three good releases of the shop and a base image
  safedeploy.compose.disk_reclaim:
    threshold_percent: 90
    target_percent: 70
    protect:
      - registry.example.com/base/python:3.12
    protect_releases:
      projects: [shop]
      keep_releases: 3

- name: Make room for a 2 GiB download, removing no more than that needs
  safedeploy.compose.disk_reclaim:
    threshold_percent: 100
    target_percent: 100
    min_free_bytes: 2147483648

- name: On a critical disk, also empty container logs above 200 MiB (the containers keep running)
  safedeploy.compose.disk_reclaim:
    threshold_percent: 95
    target_percent: 85
    stages: [containers, dangling_images, build_cache, unused_images, logs]
    log_max_bytes: 209715200

- name: Say where the bytes are, removing nothing
  safedeploy.compose.disk_reclaim:
    threshold_percent: 100
  register: disk

- name: Show the five largest container logs
  ansible.builtin.debug:
    msg: "{{ disk.accounting.logs.largest[:5] | map(attribute='container') | zip(disk.accounting.logs.largest[:5] | map(attribute='bytes')) }}"

- name: Also remove unused volumes (their data is lost)
  safedeploy.compose.disk_reclaim:
    force: true
    target_percent: 60
    prune_volumes: true
'''

RETURN = r'''
accounting:
  description:
    - Where the bytes of the engine's disk are when the module finishes (after what it removed; in check mode, now),
      from the engine's sizes, each byte counted once, next to the filesystem's own usage.
    - Empty with O(accounting=false).
  returned: always
  type: dict
  contains:
    filesystem:
      description:
        - The usage of the measured filesystem (as RV(usage_after)), C(docker_bytes) the sum of everything below, and
          C(other_bytes) what else uses the filesystem (C(used) minus C(docker_bytes), 0 when the engine's sizes add up
          to more, which happens when files are shared or sparse).
      type: dict
      sample: {path: /var/lib/docker, total: 21003583488, used: 19196297216, free: 1807286272, percent: 91.4,
               docker_bytes: 17809735680, other_bytes: 1386561536}
    images:
      description:
        - Every image layer once. C(in_use_bytes) layers of images containers use; C(protected_bytes) layers of images
          kept for a rollback or by O(protect) and of no image in use; C(reclaimable_bytes) the rest, what the
          V(dangling_images) and V(unused_images) stages can free. C(in_use), C(protected), C(reclaimable) count images.
      type: dict
      sample: {count: 9, bytes: 3221225472, in_use_bytes: 1073741824, protected_bytes: 805306368,
               reclaimable_bytes: 1342177280, in_use: 3, protected: 2, reclaimable: 4}
    build_cache:
      description: C(records), C(bytes) and C(reclaimable_bytes) (records neither in use nor shared).
      type: dict
      sample: {records: 12, bytes: 402653184, reclaimable_bytes: 402653184}
    containers:
      description:
        - Writable layers of running and of stopped containers (their logs are under C(logs)), and the stopped ones kept
          because they belong to a managed project (C(stopped_kept)).
      type: dict
      sample: {running: 5, running_bytes: 52428800, stopped: 2, stopped_bytes: 1048576, stopped_kept: 1,
               stopped_kept_bytes: 4096}
    volumes:
      description:
        - Volumes some container uses (C(in_use)) and dangling ones, with their bytes. A volume whose use or size the
          engine does not report (other drivers) counts as in use, its size as 0.
      type: dict
      sample: {count: 4, in_use: 3, in_use_bytes: 734003200, dangling: 1, dangling_bytes: 1048576}
    logs:
      description:
        - Container logs, C(bytes) in all. C(unbounded) names the containers whose log nothing bounds (C(json-file)
          without C(max-size)); C(truncatable_bytes) what the V(logs) stage may empty (live containers' C(json-file)
          logs above O(log_max_bytes)).
        - C(largest) lists the 20 largest, largest first, each with C(container), C(id), C(state), C(project),
          C(service) (compose labels, empty when none), C(driver), C(bounded), C(bytes) (space on disk, rotated files
          included), C(current_bytes) (its current file, what the V(logs) stage empties) and C(path).
      type: dict
      sample:
        bytes: 3758096384
        containers: 6
        unbounded: [shop-worker-1]
        truncatable_bytes: 3690987520
        largest:
          - container: shop-worker-1
            id: 5d1c3b0a9e8f7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c
            state: running
            project: shop
            service: worker
            driver: json-file
            bounded: false
            bytes: 3690987520
            path: /var/lib/docker/containers/5d1c.../5d1c...-json.log
blocked_by:
  description:
    - What kept the reclaim from removing anything, after waiting O(protect_releases.lock_wait) seconds; empty when
      nothing did. Each entry is a stack lock of another run (C(kind=stack_lock), with its C(project), C(run_id),
      C(release), C(owner) and C(since)) or another reclaim (C(kind=reclaim)), with a C(description).
  returned: always
  type: list
  elements: dict
  sample:
    - kind: stack_lock
      project: shop
      run_id: awx-job-1713
      release: 9f2c1ab
      owner: deploy
      since: "2025-01-31T10:02:11Z"
      description: owner deploy on host web1 (pid 48113), run id awx-job-1713, release 9f2c1ab, acquired ...
waited:
  description: Seconds spent waiting for the stack locks of other runs (or another reclaim) to be released.
  returned: always
  type: float
  sample: 0.0
msg:
  description: One line saying what was done (or would be done in check mode) and the usage before and after.
  returned: always
  type: str
  sample: removed 3 item(s), reclaimed 1.2 GiB on /var/lib/docker (91.4% -> 78.0%, 4.3 GiB free, target 80%)
usage_before:
  description:
    - Usage of the filesystem holding C(path) (the measured path, O(path) or the engine's C(DockerRootDir))
      before anything was removed, in bytes, computed as C(df) does.
    - C(used) is blocks minus free blocks, C(free) what an unprivileged writer may still use (C(df)'s C(Avail)),
      C(percent) is C(used / (used + free)) (C(df)'s C(Use%) before rounding up). Blocks reserved for root are in
      neither C(used) nor C(free).
  returned: always
  type: dict
  sample: {path: /var/lib/docker, total: 21003583488, used: 19196297216, free: 1807286272, percent: 91.4}
usage_after:
  description:
    - Usage measured when the module finished, same keys as RV(usage_before).
    - In check mode nothing was deleted, so it is the same as RV(usage_before); see RV(estimated_reclaim_bytes).
  returned: always
  type: dict
  sample: {path: /var/lib/docker, total: 21003583488, used: 16383557632, free: 4620025856, percent: 78.0}
reclaimed_bytes:
  description: C(usage_before.used - usage_after.used), the space freed as C(df) shows it. V(0) in check mode.
  returned: always
  type: int
  sample: 2812739584
estimated_reclaim_bytes:
  description:
    - What the removals free according to the engine's sizes. In check mode the prediction for the items that would
      be removed; after a real run the sum of the estimates of the items removed, to compare with RV(reclaimed_bytes).
  returned: always
  type: int
  sample: 2790012345
target_reached:
  description:
    - Whether usage ended at or below O(target_percent) with at least O(min_free_bytes) free (predicted in check mode).
    - V(false) after a run means everything left is used, protected or outside O(stages).
  returned: always
  type: bool
  sample: true
stages:
  description:
    - The stages that ran (or would run in check mode), in order. Stages after the one reaching the target do not run.
    - Empty when usage was below O(threshold_percent) with at least O(min_free_bytes) free.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The stage.
      type: str
      sample: unused_images
    removed:
      description:
        - The items removed (would be removed in check mode), oldest first. Each has C(kind) (container, image,
          build_cache, volume, log), C(id), C(name), C(refs) (an image's tags and digests, the build cache records),
          C(estimated_bytes) and C(bytes) (measured drop of used space after removing it, V(0) in check mode).
        - In the V(logs) stage each item is a container (C(kind=log)) whose log was emptied; C(refs) holds its log's path.
      type: list
      elements: dict
      sample:
        - kind: image
          id: sha256:4b1c0a8e2f9d5e6c7b8a9f0e1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c
          name: registry.example.com/shop/web:7d3e9a1
          refs: [registry.example.com/shop/web:7d3e9a1, "registry.example.com/shop/web@sha256:9a8b..."]
          estimated_bytes: 412316860
          bytes: 413097984
    skipped:
      description: Items the engine refused to remove (a container started using the image meanwhile, ...), with C(reason).
      type: list
      elements: dict
      sample: []
    bytes:
      description: Used space the stage freed, measured. V(0) in check mode.
      type: int
      sample: 1236950581
    estimated_bytes:
      description: What the stage's removals free according to the engine's sizes.
      type: int
      sample: 1230000000
protected:
  description:
    - What was kept on purpose, each with C(ref), C(source) (V(protect), C(release ledger of <project>) or
      C(in use by container <names>)) and C(image_ids), the local images it names (empty when none is present).
    - Release references of a project are its images by tag, by digest and as C(repo@digest).
  returned: always
  type: list
  elements: dict
  sample:
    - ref: "registry.example.com/shop/web@sha256:1f2e..."
      source: release ledger of shop
      image_ids: [sha256:77aa0c3c1f5e5b3e1d1c0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d]
'''

import contextlib

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.safedeploy.compose.plugins.module_utils._engine import (
    ENGINE_ARGUMENT_SPEC,
    RECLAIM_STAGES,
    STOPPED_CONTAINER_STATES,
    ImageProtection,
    Reclaimer,
    connect_engine,
    describe_engine_error,
    disk_accounting,
    engine_address,
    engine_root_dir,
    measure_disk,
    read_engine_inventory,
    remove_reclaim_candidate,
    usage_after_freeing,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._stack_lock import reclaim_interlock
from ansible_collections.safedeploy.compose.plugins.module_utils._release_state import (
    ReleaseStateError,
    list_projects,
    protected_images,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._units import human_bytes

DEFAULT_STAGES = ['containers', 'dangling_images', 'build_cache', 'unused_images']


class DiskReclaim:
    """One run: measure, decide, reclaim stage by stage, report."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.client = None
        self.address = engine_address(module.params)
        self.layer_cache = {}
        # No top-level `path` key: AnsibleModule would add that path's file attributes to the result.
        self.result = dict(changed=False, msg='', usage_before={}, usage_after={},
                           reclaimed_bytes=0, estimated_reclaim_bytes=0, target_reached=False, stages=[], protected=[],
                           blocked_by=[], waited=0.0, accounting={})
        self.protection = None

    def fail(self, msg, **extra):
        self.result.update(extra)
        self.result['msg'] = msg
        self.module.fail_json(**self.result)

    def check_options(self):
        threshold, target = self.params['threshold_percent'], self.params['target_percent']
        for name, value in (('threshold_percent', threshold), ('target_percent', target)):
            if not 0 <= value <= 100:
                self.fail('disk_reclaim: %s must be between 0 and 100, got %s' % (name, value))
        if target > threshold:
            self.fail('disk_reclaim: target_percent (%s) is above threshold_percent (%s): the run would stop before '
                      'it started; lower target_percent or raise threshold_percent' % (target, threshold))
        if self.params['log_max_bytes'] < 0:
            self.fail('disk_reclaim: log_max_bytes must be 0 or more, got %s' % self.params['log_max_bytes'])
        if self.params['min_free_bytes'] < 0:
            self.fail('disk_reclaim: min_free_bytes must be 0 or more, got %s' % self.params['min_free_bytes'])
        if self.params['protect_releases']['keep_releases'] < 0:
            self.fail('disk_reclaim: protect_releases.keep_releases must be 0 or more (0 keeps the current release only), '
                      'got %s' % self.params['protect_releases']['keep_releases'])
        stages = set(self.params['stages'])
        if 'volumes' in stages and not self.params['prune_volumes']:
            self.fail('disk_reclaim: stages lists volumes but prune_volumes is false; removing volumes deletes data no '
                      'registry can restore, so it needs prune_volumes: true as well')
        if self.params['prune_volumes']:
            stages.add('volumes')
        return stages

    def engine_call(self, action, func, *args):
        try:
            return func(*args)
        except Exception as exc:  # every engine failure ends the same way: a message, not a traceback
            self.fail(describe_engine_error(exc, self.address, action, self.params['engine_timeout']))

    def measure(self, path):
        try:
            return measure_disk(path)
        except OSError as exc:
            self.fail('disk_reclaim: cannot measure the filesystem holding %s: %s. The module must run on the engine\'s '
                      'host; set path to a directory on the filesystem to watch' % (path, exc.strerror or exc))

    def read_protection(self):
        """The protecting refs; and the errors of ledgers that could not be read."""
        protection = ImageProtection()
        errors = []
        for ref in self.params['protect']:
            try:
                protection.add(ref, 'protect')
            except ValueError as exc:
                self.fail('disk_reclaim: protect entry %s' % exc)
        releases = self.params['protect_releases']
        state_dir = releases['state_dir']
        projects = releases['projects']
        if projects is None:
            try:
                projects = list_projects(state_dir)
            except ReleaseStateError as exc:
                errors.append(str(exc))
                projects = []
        for project in projects:
            protection.projects.add(project)
            try:
                refs = protected_images(state_dir, project, releases['keep_releases'])
            except Exception as exc:  # any unreadable ledger: that project's images cannot be told apart
                errors.append('project %s: %s' % (project, exc))
                continue
            for ref in refs:
                try:
                    protection.add(ref, 'release ledger of %s' % project)
                except ValueError as exc:
                    errors.append('project %s: ledger entry %s' % (project, exc))
        return protection, errors

    def run(self):
        stages = self.check_options()
        self.client = connect_engine(self.module, self.result)
        path = self.params['path'] or self.engine_call('report its DockerRootDir (docker info)', engine_root_dir, self.client)
        usage, protection, inventory, acting = self.survey(path)
        if not acting:
            self.nothing_to_do(path, usage)
        releases = self.params['protect_releases']
        with contextlib.ExitStack() as held:
            try:
                status = held.enter_context(reclaim_interlock(releases['state_dir'], releases['run_id'],
                                                              releases['lock_wait'], check_mode=self.module.check_mode))
            except ReleaseStateError as exc:
                self.fail('disk_reclaim: %s' % exc)
            self.result.update(status)
            if status['blocked_by']:
                self.blocked(path, usage, status, releases['lock_wait'])
            if status['waited'] >= 0.5:  # it slept at least once (polls are a second apart)
                # Another run ended while this one waited: it may have pulled, promoted or freed. Decide on now.
                usage, protection, inventory, acting = self.survey(path)
                if not acting:
                    self.nothing_to_do(path, usage)
            self.reclaim(path, usage, self.params['target_percent'], stages, protection, inventory)

    def survey(self, path):
        """Usage, what is protected, the engine's inventory, and whether a reclaim is due; fails on unreadable ledgers
        when one is due."""
        usage = self.measure(path)
        self.result.update(usage_before=usage, usage_after=usage)
        min_free = self.params['min_free_bytes']
        protection, ledger_errors = self.read_protection()
        acting = self.params['force'] or usage['percent'] >= self.params['threshold_percent'] or usage['free'] < min_free
        # Below the threshold nothing is planned, so the sizes (two engine calls an image) are not read.
        inventory = self.engine_call('list images, containers and volumes (/system/df)', self.read_inventory,
                                     acting or self.params['accounting'])
        self.protection = protection
        self.result['protected'] = protection.report(inventory)
        self.account(inventory, usage)
        if not acting:
            for error in ledger_errors:
                self.module.warn('disk_reclaim: release ledger not readable (a reclaim would refuse to run): %s' % error)
        elif ledger_errors:
            self.fail('disk_reclaim: refusing to remove anything from %s: cannot tell which images the releases need: %s. '
                      'Repair the ledger (safedeploy.compose.last_good_tag with recover_from_backup: true), or leave the '
                      'project out of protect_releases.projects' % (path, '; '.join(ledger_errors)))
        return usage, protection, inventory, acting

    def account(self, inventory, usage):
        if self.params['accounting']:
            self.result['accounting'] = disk_accounting(inventory, self.protection, usage, self.params['log_max_bytes'])

    def logs_hint(self, stages):
        """When logs the stages may not touch hold much: say so, naming the largest."""
        logs = (self.result['accounting'] or {}).get('logs') or {}
        if 'logs' in stages or not logs.get('truncatable_bytes'):
            return ''
        limit = self.params['log_max_bytes']
        # the largest log the logs stage would empty: a live container's json-file log above the limit
        largest = next((entry for entry in logs['largest'] if entry['state'] not in STOPPED_CONTAINER_STATES
                        and entry['driver'] == 'json-file' and entry['current_bytes'] > limit), None)
        named = ''
        if largest:
            named = ' (largest %s, %s%s)' % (largest['container'], human_bytes(largest['current_bytes']),
                                             '' if largest['bounded'] else ', unbounded')
        return ('; container logs above log_max_bytes hold %s%s: add logs to stages to empty them, and bound them'
                % (human_bytes(logs['truncatable_bytes']), named))

    def nothing_to_do(self, path, usage):
        threshold, target, min_free = (self.params['threshold_percent'], self.params['target_percent'],
                                       self.params['min_free_bytes'])
        self.result.update(target_reached=usage['percent'] <= target and usage['free'] >= min_free,
                           msg='usage of %s is %.1f%%, below threshold_percent %s%%%s: nothing to do'
                               % (path, usage['percent'], threshold,
                                  ', with %s free' % human_bytes(usage['free']) if min_free else ''))
        if not self.result['target_reached']:
            self.result['msg'] += self.logs_hint(self.stage_names())
        self.module.exit_json(**self.result)

    def blocked(self, path, usage, status, lock_wait):
        self.result['target_reached'] = (usage['percent'] <= self.params['target_percent']
                                         and usage['free'] >= self.params['min_free_bytes'])
        self.result['msg'] = (
            '%s nothing on %s (%.1f%% used) while another run is in progress, since a reclaim could remove '
            'what it is bringing up: %s; %s'
            % ('would remove' if self.module.check_mode else 'removed', path, usage['percent'],
               '; '.join(entry['description'] for entry in status['blocked_by']),
               'the next reclaim runs once it is done' if lock_wait <= 0 else
               'gave up after waiting %ss (protect_releases.lock_wait)' % int(status['waited'])))
        self.module.exit_json(**self.result)

    def reclaim(self, path, usage, target, stages, protection, inventory):
        check_mode = self.module.check_mode
        min_free = self.params['min_free_bytes']
        reclaimer = Reclaimer(self.read_inventory, protection, target,
                              measure=None if check_mode else (lambda: self.measure(path)),
                              remove=None if check_mode else self.remove, min_free_bytes=min_free,
                              log_max_bytes=self.params['log_max_bytes'])
        try:
            end = reclaimer.run(stages, usage, inventory)
        except Exception as exc:  # report what was already removed along with the cause
            self.result['stages'] = reclaimer.stages
            self.finish(usage, self.measure(path), reclaimer, check_mode)
            self.fail(describe_engine_error(exc, self.address, 'reclaim disk space on %s' % path,
                                            self.params['engine_timeout']))
        self.result['stages'] = reclaimer.stages
        self.finish(usage, end if not check_mode else usage, reclaimer, check_mode)
        self.result['target_reached'] = reclaimer.reached(usage_after_freeing(usage, reclaimer.estimated_bytes)
                                                          if check_mode else self.result['usage_after'])
        if self.result['changed'] and not check_mode and self.params['accounting']:  # say where the bytes are now
            self.account(self.engine_call('list images, containers and volumes (/system/df)', self.read_inventory, True),
                         self.result['usage_after'])
        self.result['msg'] = self.summary(path, self.goal(target, min_free), check_mode)
        if not self.result['target_reached']:
            self.result['msg'] += self.logs_hint(stages)
        self.module.exit_json(**self.result)

    def stage_names(self):
        return set(self.params['stages']) | (set(['volumes']) if self.params['prune_volumes'] else set())

    def read_inventory(self, sizes=True):
        return read_engine_inventory(self.client, self.layer_cache, sizes=sizes)

    def remove(self, candidate):
        return remove_reclaim_candidate(self.client, candidate)

    def finish(self, before, after, reclaimer, check_mode):
        removed = sum(len(stage['removed']) for stage in reclaimer.stages)
        self.result.update(changed=removed > 0, usage_after=after,
                           reclaimed_bytes=0 if check_mode else before['used'] - after['used'],
                           estimated_reclaim_bytes=reclaimer.estimated_bytes)

    @staticmethod
    def goal(target, min_free):
        return 'target %s%%%s' % (target, ', %s free' % human_bytes(min_free) if min_free else '')

    def summary(self, path, goal, check_mode):
        before, after = self.result['usage_before'], self.result['usage_after']
        removed = sum(len(stage['removed']) for stage in self.result['stages'])
        if check_mode:
            predicted = usage_after_freeing(before, self.result['estimated_reclaim_bytes'])
            text = 'would remove %d item(s) freeing about %s on %s (%.1f%% -> about %.1f%%, %s)' % (
                removed, human_bytes(self.result['estimated_reclaim_bytes']), path, before['percent'],
                predicted['percent'], goal)
        else:
            text = 'removed %d item(s), reclaimed %s on %s (%.1f%% -> %.1f%%, %s free, %s)' % (
                removed, human_bytes(self.result['reclaimed_bytes']), path, before['percent'], after['percent'],
                human_bytes(after['free']), goal)
        if not self.result['target_reached']:
            text += '; target not reached: what is left is in use, protected, or in stages not selected'
        return text


def main():
    argument_spec = dict(
        path=dict(type='path'),
        threshold_percent=dict(type='float', default=85),
        target_percent=dict(type='float', default=80),
        min_free_bytes=dict(type='int', default=0),
        force=dict(type='bool', default=False),
        stages=dict(type='list', elements='str', choices=list(RECLAIM_STAGES), default=list(DEFAULT_STAGES)),
        log_max_bytes=dict(type='int', default=104857600),
        accounting=dict(type='bool', default=True),
        prune_volumes=dict(type='bool', default=False),
        protect=dict(type='list', elements='str', default=[]),
        protect_releases=dict(type='dict', default={}, options=dict(
            state_dir=dict(type='path', default='/var/lib/safedeploy'),
            projects=dict(type='list', elements='str'),
            keep_releases=dict(type='int', default=2),
            run_id=dict(type='str'),
            lock_wait=dict(type='int', default=0),
        )),
    )
    argument_spec.update(ENGINE_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    DiskReclaim(module).run()


if __name__ == '__main__':
    main()
