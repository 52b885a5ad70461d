"""safedeploy.compose.disk_reclaim against a real dockerd whose data-root is a 400 MB ext4.

Every size here is measured (df before and after each pull), never assumed: ext4 and overlay2
add metadata of their own, and the images may be rebuilt with other sizes by other tests.
Each test removes what it created from the small engine.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import threading
import time
import uuid

import docker
import pytest

from ansible_collections.safedeploy.compose.plugins.module_utils import _engine as engine
from ansible_collections.safedeploy.compose.plugins.module_utils._release_state import apply_ledger_action
from ansible_collections.safedeploy.compose.plugins.module_utils._stack_lock import acquire_stack_lock, release_stack_lock
from testbed import testbed as testbed_mod

pytestmark = [pytest.mark.xdist_group('small_engine')]

# Seven fit: a pull needs room for the download and the unpacked layer at once, so an eighth fails.
BIG_COUNT = 7
BIG_MB = 40
MB = 1 << 20


def df_used_avail(path):
    """`df`'s own Used and Avail columns, in bytes: the yardstick reclaimed_bytes is held to."""
    out = subprocess.run(['df', '-B1', '--output=used,avail', path], capture_output=True, text=True, check=True)
    used, avail = out.stdout.splitlines()[1].split()
    return int(used), int(avail)


class SmallBed:
    """The small engine as one test uses it: everything it pulls or creates is removed afterwards."""

    def __init__(self, small_engine):
        self.docker_host = small_engine.docker_host
        self.mountpoint = small_engine.mountpoint
        self.client = docker.DockerClient(base_url=small_engine.docker_host, timeout=120)
        self.run_id = uuid.uuid4().hex[:8]
        self.containers = []
        self.volumes = []
        self.images = []
        self.costs = {}  # ref -> bytes df's Used grew by when it was pulled

    def name(self, what):
        return 'sdt-reclaim-%s-%s' % (what, self.run_id)

    def pull(self, ref):
        before = df_used_avail(self.mountpoint)[0]
        image = self.client.images.pull(ref)
        self.costs[ref] = df_used_avail(self.mountpoint)[0] - before
        self.images.append(image.id)
        return image

    def container(self, ref, what, command, detach=True, **kwargs):
        box = self.client.containers.run(ref, name=self.name(what), entrypoint=command, network_mode='none',
                                         detach=True, **kwargs)
        self.containers.append(box.id)
        if not detach:
            assert box.wait(timeout=60)['StatusCode'] == 0
        return box

    def volume(self, what, megabytes, writer_ref, labels=None):
        vol = self.client.volumes.create(self.name(what), labels=labels or {})
        self.volumes.append(vol.name)
        writer = self.container(writer_ref, what + '-writer', ['/bin/dd', 'if=/dev/urandom', 'of=/data/blob', 'bs=1M',
                                                               'count=%d' % megabytes],
                                detach=False, volumes={vol.name: {'bind': '/data', 'mode': 'rw'}})
        writer.remove()
        return vol

    def state(self):
        """What is on the engine, to prove that something was or was not deleted."""
        return dict(images=sorted(image.id for image in self.client.images.list()),
                    containers=sorted(box.id for box in self.client.containers.list(all=True)),
                    volumes=sorted(vol.name for vol in self.client.volumes.list()))

    def image_by_digest(self, ref_with_digest):
        return self.client.images.get(ref_with_digest)

    def cleanup(self):
        for container_id in self.containers:
            try:
                self.client.containers.get(container_id).remove(force=True)
            except docker.errors.NotFound:
                pass
        for name in self.volumes:
            try:
                self.client.volumes.get(name).remove(force=True)
            except docker.errors.NotFound:
                pass
        for image_id in self.images:
            try:
                self.client.images.remove(image_id, force=True)
            except docker.errors.NotFound:
                pass
        self.client.close()


@pytest.fixture(scope='module')
def big_refs(testbed):
    return testbed_mod.ensure_big_images(testbed.client(), BIG_COUNT, BIG_MB)


@pytest.fixture
def small(small_engine):
    # Tests that fill the small disk must not run at the same time in two processes.
    lock_path = os.path.join(os.path.dirname(small_engine.mountpoint), 'sdt-small-engine.lock')
    with open(lock_path, 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        bed = SmallBed(small_engine)
        try:
            yield bed
        finally:
            bed.cleanup()


def write_ledger(state_dir, project, releases):
    """Record and promote each (release id, image ref, digest) in order: the last is current and good."""
    for release, ref, digest in releases:
        for action in ('record', 'promote'):
            apply_ledger_action(str(state_dir), project, action=action, release=release,
                                services=dict(app=dict(image=ref, digest=digest)))


def digest_ref(ref, digest):
    return '%s@%s' % (ref.rsplit(':', 1)[0], digest)


def removed_ids(result):
    return [item['id'] for stage in result['stages'] for item in stage['removed']]


def test_reclaim_reaches_target_keeping_rollback_and_running_images(small, big_refs, run_module, tmp_path):
    digests = dict((ref, testbed_mod.registry_digest(ref)) for ref in big_refs)
    for ref in big_refs:
        small.pull(ref)
    big = dict((index + 1, ref) for index, ref in enumerate(big_refs))
    # Ledger: releases on big:1, big:2, big:3 promoted in turn: big:3 current, big:2 the good one before,
    # big:1 older than keep_releases (2) reaches back, so not protected.
    project = small.name('proj')
    state_dir = tmp_path / 'state'
    write_ledger(state_dir, project, [('r%d' % n, big[n], digests[big[n]]) for n in (1, 2, 3)])
    running = small.container(big[4], 'running', ['/bin/sleep', '600'])
    stopped = small.container(big[5], 'stopped', ['/bin/true'], detach=False)
    volume = small.volume('vol', 4, big[4])
    volume_bytes = df_volume_bytes(small, volume.name)

    # Which images may go, in the order the module takes them (oldest first); the target sits halfway
    # through the third one, so the run must remove exactly three and stop before the fourth.
    removable = [small.client.images.get(big[n]) for n in (1, 5, 6, 7)]
    created = dict((image.id, engine_created(small, image.id)) for image in removable)
    removable.sort(key=lambda image: (created[image.id], image.id))
    cost = dict((small.client.images.get(ref).id, small.costs[ref]) for ref in big_refs)
    used, avail = df_used_avail(small.mountpoint)
    need = sum(cost[image.id] for image in removable[:2]) + cost[removable[2].id] // 2
    target = round(100.0 * (used - need) / (used + avail), 2)
    percent = 100.0 * used / (used + avail)
    threshold = min(85.0, float(int(percent) - 1))
    assert percent >= threshold > target, 'the fill did not get the disk above threshold (%.1f%%)' % percent
    args = dict(docker_host=small.docker_host, threshold_percent=threshold, target_percent=target,
                protect_releases=dict(state_dir=str(state_dir)))

    before = small.state()
    plan = run_module('disk_reclaim', args, check=True)
    assert not plan.failed, plan['msg']
    assert plan['changed'] is True
    assert small.state() == before, 'check mode deleted something'
    assert plan['reclaimed_bytes'] == 0
    assert plan['usage_before']['path'] == small.client.info()['DockerRootDir']

    df_before = df_used_avail(small.mountpoint)[0]
    result = run_module('disk_reclaim', args)
    df_after = df_used_avail(small.mountpoint)[0]
    assert not result.failed, result['msg']
    assert result['changed'] is True and result['target_reached'] is True
    assert result['usage_after']['percent'] <= target < result['usage_before']['percent']

    # What went: the stopped container, then the three oldest unprotected images; check mode said so.
    assert removed_ids(result) == removed_ids(plan)
    assert [stage['name'] for stage in result['stages']] == ['containers', 'dangling_images', 'build_cache',
                                                             'unused_images']
    assert [item['id'] for item in result['stages'][0]['removed']] == [stopped.id]
    assert [item['id'] for item in result['stages'][3]['removed']] == [image.id for image in removable[:3]]
    assert removable[3].id in small.state()['images'], 'the run did not stop once the target was reached'

    # Measured like df measures, and predicted by check mode.
    df_drop = df_before - df_after
    assert df_drop > 2 * 30 * MB
    assert abs(result['reclaimed_bytes'] - df_drop) <= 0.05 * df_drop
    assert abs(plan['estimated_reclaim_bytes'] - result['reclaimed_bytes']) <= 0.10 * result['reclaimed_bytes']
    assert sum(stage['bytes'] for stage in result['stages']) == result['reclaimed_bytes']

    # What stayed: the current and last good release images and the running container's image, by digest.
    for n in (2, 3, 4):
        kept = small.image_by_digest(digest_ref(big[n], digests[big[n]]))
        assert digest_ref(big[n], digests[big[n]]) in kept.attrs['RepoDigests']
    running.reload()
    assert running.status == 'running'
    with pytest.raises(docker.errors.NotFound):
        small.client.containers.get(stopped.id)
    assert volume.name in small.state()['volumes'] and df_volume_bytes(small, volume.name) == volume_bytes
    protected = dict((entry['ref'], entry) for entry in result['protected'])
    for n in (2, 3):
        entry = protected[digest_ref(big[n], digests[big[n]])]
        assert entry['source'] == 'release ledger of %s' % project
        assert entry['image_ids'] == [small.client.images.get(big[n]).id]
    assert digest_ref(big[1], digests[big[1]]) not in protected

    # Again: below threshold now, nothing to do, in check mode and for real.
    for check in (True, False):
        again = run_module('disk_reclaim', args, check=check)
        assert not again.failed and again['changed'] is False and again['stages'] == []


def engine_created(small, image_id):
    """The Created time /system/df reports (what the module sorts by)."""
    for entry in small.client.api.df()['Images']:
        if entry['Id'] == image_id:
            return entry['Created']
    raise AssertionError('image %s not on the small engine' % image_id)


def df_volume_bytes(small, name):
    for entry in small.client.api.df()['Volumes'] or []:
        if entry['Name'] == name:
            return entry['UsageData']['Size']
    return None


def test_below_threshold_changes_nothing(small, big_refs, run_module, tmp_path):
    small.pull(big_refs[0])
    small.container(big_refs[0], 'stopped', ['/bin/true'], detach=False)
    before = small.state()
    result = run_module('disk_reclaim', dict(docker_host=small.docker_host,
                                             protect_releases=dict(state_dir=str(tmp_path / 'none'))))
    assert not result.failed, result['msg']
    assert result['changed'] is False and result['stages'] == [] and result['reclaimed_bytes'] == 0
    assert result['usage_before']['percent'] < 85 and 'below threshold_percent 85.0%' in result['msg']
    assert small.state() == before


def test_min_free_bytes_reclaims_below_the_threshold_until_that_much_is_free(small, big_refs, run_module, tmp_path):
    pulled = [small.pull(ref) for ref in big_refs[:3]]
    mine = set(image.id for image in pulled)
    used, avail = df_used_avail(small.mountpoint)
    assert 100.0 * used / (used + avail) < 80, 'the small disk is not below the target to begin with'
    # More than one image's worth, less than two: two go, the third stays.
    cost = min(small.costs[ref] for ref in big_refs[:3])
    want = avail + cost + cost // 2
    args = dict(docker_host=small.docker_host, min_free_bytes=want, stages=['unused_images'],
                protect_releases=dict(state_dir=str(tmp_path / 'none')))

    before = small.state()
    plan = run_module('disk_reclaim', args, check=True)
    assert not plan.failed, plan['msg']
    assert small.state() == before, 'check mode deleted something'
    assert plan['changed'] is True and plan['target_reached'] is True
    assert len(removed_ids(plan)) == 2 and set(removed_ids(plan)) <= mine
    assert plan['usage_after'] == plan['usage_before'] and plan['reclaimed_bytes'] == 0

    result = run_module('disk_reclaim', args)
    assert not result.failed, result['msg']
    assert result['changed'] is True and result['target_reached'] is True
    assert removed_ids(result) == removed_ids(plan), 'check mode did not predict the real run'
    assert result['usage_after']['free'] >= want and df_used_avail(small.mountpoint)[1] >= want
    assert len(mine & set(small.state()['images'])) == 1, 'the run did not stop once enough was free'
    assert 'free' in result['msg']

    for check in (True, False):
        again = run_module('disk_reclaim', args, check=check)
        assert not again.failed, again['msg']
        assert again['changed'] is False and again['stages'] == [] and again['target_reached'] is True
        assert 'nothing to do' in again['msg']


def test_volumes_go_only_with_prune_volumes_and_never_a_protected_projects(small, big_refs, run_module, tmp_path):
    small.pull(big_refs[0])
    project = small.name('proj')
    state_dir = tmp_path / 'state'
    write_ledger(state_dir, project, [('r1', big_refs[0], testbed_mod.registry_digest(big_refs[0]))])
    loose = small.volume('loose', 8, big_refs[0])
    kept = small.volume('kept', 2, big_refs[0], labels={engine.PROJECT_LABEL: project})
    args = dict(docker_host=small.docker_host, force=True, target_percent=0, stages=['volumes'],
                protect_releases=dict(state_dir=str(state_dir), projects=[project]))

    refused = run_module('disk_reclaim', args)
    assert refused.failed and 'prune_volumes' in refused['msg']
    everything = run_module('disk_reclaim', dict(args, stages=list(engine.RECLAIM_STAGES[:4])))
    assert not everything.failed, everything['msg']
    assert {loose.name, kept.name} <= set(small.state()['volumes'])

    result = run_module('disk_reclaim', dict(args, prune_volumes=True))
    assert not result.failed, result['msg']
    assert [(stage['name'], [item['id'] for item in stage['removed']]) for stage in result['stages']] == [
        ('volumes', [loose.name])]
    assert loose.name not in small.state()['volumes'] and kept.name in small.state()['volumes']
    assert 7 * MB < result['reclaimed_bytes'] < 10 * MB


def test_unreadable_ledger_refuses_to_remove_anything(small, big_refs, run_module, tmp_path):
    small.pull(big_refs[0])
    small.container(big_refs[0], 'stopped', ['/bin/true'], detach=False)
    project = small.name('proj')
    state_dir = tmp_path / 'state'
    write_ledger(state_dir, project, [('r1', big_refs[0], testbed_mod.registry_digest(big_refs[0]))])
    ledger = state_dir / project / 'releases.json'
    ledger.write_text(ledger.read_text()[:-40])  # torn write
    before = small.state()

    result = run_module('disk_reclaim', dict(docker_host=small.docker_host, force=True, target_percent=0,
                                             protect_releases=dict(state_dir=str(state_dir))))
    assert result.failed
    assert 'refusing to remove anything' in result['msg'] and project in result['msg']
    assert 'Traceback' not in result.stdout + result.stderr
    assert small.state() == before

    quiet = run_module('disk_reclaim', dict(docker_host=small.docker_host, protect_releases=dict(state_dir=str(state_dir))))
    assert not quiet.failed and quiet['changed'] is False
    assert project in json.dumps(quiet.get('warnings'))  # ansible-core 2.19 warnings are structured


def test_unreachable_engine_is_a_clear_message(run_module, tmp_path):
    host = 'unix://%s' % (tmp_path / 'sdt-reclaim-no-engine.sock')
    result = run_module('disk_reclaim', dict(docker_host=host, force=True))
    assert result.failed
    assert result['msg'].startswith('Docker engine at %s failed to answer a ping' % host)
    assert 'Traceback' not in result.stdout + result.stderr
    assert set(['usage_before', 'usage_after', 'reclaimed_bytes', 'stages', 'protected']) - set(result) == set()


def test_layer_model_matches_the_engines_layer_store(small, big_refs):
    """Chain ids and layer sizes computed by the module are the ones the engine keeps on disk."""
    image = small.pull(big_refs[0])
    inventory = engine.read_engine_inventory(small.client)
    layers = inventory.images[image.id]['layers']
    root = small.client.info()['DockerRootDir']
    driver = small.client.info()['Driver']
    assert len(layers) == len(image.attrs['RootFS']['Layers'])
    for chain, size in layers:
        layer_dir = os.path.join(root, 'image', driver, 'layerdb', 'sha256', chain.split(':', 1)[1])
        with open(os.path.join(layer_dir, 'size')) as handle:
            assert int(handle.read()) == size
    assert sum(size for _chain, size in layers) == image.attrs['Size']

    # Without sizes (disk_reclaim below its threshold): the same images, containers and refs, no layer reads.
    calls = []
    inspect = small.client.api.inspect_image
    small.client.api.inspect_image = lambda *args, **kwargs: calls.append(args) or inspect(*args, **kwargs)
    try:
        light = engine.read_engine_inventory(small.client, sizes=False)
    finally:
        small.client.api.inspect_image = inspect
    assert calls == [], 'no image is inspected when sizes are not asked for'
    assert {key: (entry['tags'], entry['digests']) for key, entry in light.images.items()} == \
        {key: (entry['tags'], entry['digests']) for key, entry in inventory.images.items()}
    assert all(entry['layers'] == [] for entry in light.images.values())
    assert set(light.containers) == set(inventory.containers)


@pytest.mark.parametrize('args, words', [
    (dict(threshold_percent=70, target_percent=75), 'target_percent (75.0) is above threshold_percent (70.0)'),
    (dict(threshold_percent=120), 'threshold_percent must be between 0 and 100'),
    (dict(protect_releases=dict(keep_releases=-1)), 'keep_releases must be 0 or more'),
    (dict(min_free_bytes=-1), 'min_free_bytes must be 0 or more'),
])
def test_bad_options_fail_before_the_engine_is_touched(run_module, tmp_path, args, words):
    host = 'unix://%s' % (tmp_path / 'sdt-reclaim-no-engine.sock')
    result = run_module('disk_reclaim', dict(args, docker_host=host))
    assert result.failed and words in result['msg'], result['msg']


def test_a_reclaim_never_runs_inside_another_runs_rollout(small, big_refs, run_module, tmp_path):
    """Another run holds the stack lock of a project (between its pull and its up): the reclaim waits, then removes
    nothing and names it; the run's own reclaim (its run id) and a reclaim once the lock is released do remove."""
    small.pull(big_refs[0])
    stopped = small.container(big_refs[0], 'stopped', ['/bin/true'], detach=False)
    state_dir = tmp_path / 'state'
    acquire_stack_lock(str(state_dir), 'sdt-reclaim-busy', 'sdt-run-busy', owner='ci', release='r7', lock_wait=0)
    before = small.state()
    args = dict(docker_host=small.docker_host, force=True, target_percent=0, stages=['containers'],
                protect_releases=dict(state_dir=str(state_dir), projects=[], lock_wait=1))

    started = time.monotonic()
    blocked = run_module('disk_reclaim', args)
    assert not blocked.failed, blocked['msg']
    assert time.monotonic() - started >= 1 and blocked['waited'] >= 1
    assert blocked['changed'] is False and blocked['stages'] == [] and blocked['reclaimed_bytes'] == 0
    assert [(entry['kind'], entry['project'], entry['run_id'], entry['release']) for entry in blocked['blocked_by']] == [
        ('stack_lock', 'sdt-reclaim-busy', 'sdt-run-busy', 'r7')]
    assert 'removed nothing' in blocked['msg'] and 'while another run is in progress' in blocked['msg']
    assert small.state() == before

    inside = run_module('disk_reclaim', dict(args, protect_releases=dict(args['protect_releases'], run_id='sdt-run-busy')),
                        check=True)
    assert not inside.failed and inside['blocked_by'] == [] and inside['changed'] is True

    release_stack_lock(str(state_dir), 'sdt-reclaim-busy', 'sdt-run-busy')
    done = run_module('disk_reclaim', args)
    assert not done.failed and done['blocked_by'] == [] and done['changed'] is True
    assert stopped.id in removed_ids(done)


def test_the_stopped_containers_of_a_managed_project_and_a_candidates_images_are_kept(
        small, big_refs, run_module, tmp_path):
    """A project with a ledger: its stopped containers (compose carries their anonymous volumes over) and the images
    of a release another run has recorded and may be bringing up stay; the same on an unmanaged project goes."""
    digests = dict((ref, testbed_mod.registry_digest(ref)) for ref in big_refs[:4])
    for ref in big_refs[:4]:
        small.pull(ref)
    current, candidate, used, loose = big_refs[:4]
    project, stranger = small.name('managed'), small.name('stranger')
    state_dir = tmp_path / 'state'
    write_ledger(state_dir, project, [('r1', current, digests[current])])
    apply_ledger_action(str(state_dir), project, action='record', release='r2',
                        services=dict(app=dict(image=candidate, digest=digests[candidate])))
    kept_box = small.container(used, 'managed-stopped', ['/bin/true'], detach=False,
                               labels={'com.docker.compose.project': project, 'com.docker.compose.service': 'app'})
    gone_box = small.container(used, 'stranger-stopped', ['/bin/true'], detach=False,
                               labels={'com.docker.compose.project': stranger, 'com.docker.compose.service': 'app'})
    loose_id = small.client.images.get(loose).id
    args = dict(docker_host=small.docker_host, force=True, target_percent=0, stages=['containers', 'unused_images'],
                protect_releases=dict(state_dir=str(state_dir)))

    result = run_module('disk_reclaim', args)
    assert not result.failed, result['msg']
    assert result['changed'] is True
    assert [item['id'] for item in result['stages'][0]['removed']] == [gone_box.id]
    with pytest.raises(docker.errors.NotFound):
        small.client.containers.get(gone_box.id)
    kept_box.reload()
    assert kept_box.status == 'exited' and kept_box.labels['com.docker.compose.project'] == project

    remaining = small.state()['images']
    for ref in (current, candidate, used):
        assert small.client.images.get(ref).id in remaining, ref
    assert small.image_by_digest(digest_ref(candidate, digests[candidate])).id in remaining
    assert loose_id in removed_ids(result) and loose_id not in remaining
    protected = dict((entry['ref'], entry) for entry in result['protected'])
    assert protected[digest_ref(candidate, digests[candidate])]['source'] == 'release ledger of %s' % project


def test_a_reclaim_that_waited_for_a_run_decides_on_what_that_run_left(small, big_refs, run_module, tmp_path):
    """The reclaim waits for a rollout that then promotes a release on an image no container uses: the reclaim reads
    the ledgers again after waiting and keeps that image (read before the wait, it would have removed it)."""
    digests = dict((ref, testbed_mod.registry_digest(ref)) for ref in big_refs[:2])
    for ref in big_refs[:2]:
        small.pull(ref)
    released, loose = big_refs[:2]
    released_id, loose_id = small.client.images.get(released).id, small.client.images.get(loose).id
    project = small.name('waited')
    state_dir = tmp_path / 'state'
    acquire_stack_lock(str(state_dir), project, 'sdt-run-rolling', owner='ci', release='r1', lock_wait=0)
    args = dict(docker_host=small.docker_host, force=True, target_percent=0, stages=['unused_images'],
                protect_releases=dict(state_dir=str(state_dir), lock_wait=30))
    outcome = {}
    reclaim = threading.Thread(target=lambda: outcome.update(result=run_module('disk_reclaim', args)), daemon=True)
    reclaim.start()
    time.sleep(3)  # the reclaim is waiting for the rollout's lock
    assert reclaim.is_alive()
    write_ledger(state_dir, project, [('r1', released, digests[released])])  # the rollout promotes r1 ...
    release_stack_lock(str(state_dir), project, 'sdt-run-rolling')  # ... and ends
    reclaim.join(60)
    result = outcome['result']
    assert not result.failed, result['msg']
    assert result['blocked_by'] == [] and result['waited'] >= 2
    assert loose_id in removed_ids(result)
    assert released_id not in removed_ids(result) and released_id in small.state()['images']
    assert digest_ref(released, digests[released]) in [entry['ref'] for entry in result['protected']]
