"""vps_recovery and the rollout's disk handling on the small-disk engine (a dockerd on a 400 MB ext4).

The playbooks run with DOCKER_HOST pointing at the small engine: the modules, the docker CLI and docker-compose
all take the engine from it, so every container of these stacks must be on the small engine and none on the
main one. The disk is filled with unused big images (pulled from the test bed registry) and topped up with a
stopped container's writes, measured with statvfs as disk_reclaim measures it. Each test holds the small
engine's flock (the one test_disk_reclaim.py takes) and leaves the engine as it found it.
Projects sdt-rec-{rec,full,inc,room}-<random>, ports 18710-18725, images 127.0.0.1:5000/sdt-rec/{rec,full,inc,room}-*.
"""

from __future__ import annotations

import json
import re

import pytest

from testbed import testbed as testbed_mod

from role_stack import PLAYBOOKS, RoleStack, disk_usage, holding_small_engine

from ansible_collections.safedeploy.compose.plugins.module_utils._release_state import apply_ledger_action

pytestmark = [pytest.mark.xdist_group('small_engine')]

BIG_COUNT, BIG_MB = 7, 40  # the same big images test_disk_reclaim.py uses (other sizes would rebuild them)
MB = 1 << 20


def fill(client, root, big_refs, filler_image, free_bytes):
    """Fill the small disk until `free_bytes` are left: big images while a pull still fits, then a stopped
    container's writable layer for the rest. Everything added is unused, so disk_reclaim may take it."""
    testbed_mod.pull_while_room(client, root, big_refs, BIG_MB)
    free = disk_usage(root)[1]
    assert (free - free_bytes) // MB > 0, 'the big images alone left only %d MB free' % (free // MB)
    return testbed_mod.write_filler(client, root, filler_image, free_bytes, label='sdt-rec-filler')


def fill_with_volume(client, root, filler_image, free_bytes, name):
    """Fill the small disk until `free_bytes` are left with a volume's data: used space that no reclaim of the rollout
    takes (volumes go only with prune_volumes). The engine's lock holder removes the volume afterwards."""
    volume = client.volumes.create(name)
    megabytes = (disk_usage(root)[1] - free_bytes) >> 20
    assert megabytes > 0, 'already less than %d MB free' % (free_bytes // MB)
    writer = client.containers.run(filler_image, entrypoint=['/bin/dd', 'if=/dev/zero', 'of=/data/fill', 'bs=1M',
                                                             'count=%d' % megabytes],
                                   network_mode='none', detach=True, volumes={volume.name: {'bind': '/data', 'mode': 'rw'}})
    try:
        assert writer.wait(timeout=300)['StatusCode'] == 0, writer.logs()[-500:]
    finally:
        writer.remove()
    return disk_usage(root)


def task_output(run, name):
    """What ansible-playbook printed for the task `name` (up to the next task)."""
    match = re.search(r'TASK \[[^\]]*%s[^\]]*\][^\n]*\n(.*?)(?=\nTASK \[|\nPLAY RECAP)' % re.escape(name), run.stdout, re.S)
    assert match, 'task %r not in the output' % name
    return match.group(1)


def refusal(run):
    """(bytes needed, bytes available) from the rollout's refusal of a download that does not fit."""
    text = ' '.join(run.output.split())
    match = re.search(r'needs (\d+) bytes free .*? has (\d+) bytes \(.*?\) available after reclaiming', text)
    assert match, text[-3000:]
    return int(match.group(1)), int(match.group(2))


def ghost_stack(stack, tmp_path):
    """A stack whose ledger's last good release v1 names an image that exists nowhere (collected from the registry)."""
    name = stack.name + '-ghost'
    project_src = tmp_path / name
    project_src.mkdir()
    repo = '%s/sdt-rec/rec-ghost' % stack.testbed.registry
    (project_src / 'compose.yaml').write_text(
        'services:\n  app:\n    image: %s:v1\n    network_mode: host\n    environment:\n      APP_PORT: "18712"\n'
        % repo)
    services = {'app': {'image': repo + ':v1', 'digest': 'sha256:' + '0' * 64}}
    for action in ('record', 'promote'):
        apply_ledger_action(str(stack.state_dir), name, action=action, release='v1', services=services)
    return {'name': name, 'project_src': str(project_src),
            'health_checks': [{'name': 'ghost health', 'type': 'tcp', 'host': '127.0.0.1', 'port': 18712}]}


def assert_nothing_on_main_engine(stack):
    main = stack.testbed.client()
    assert stack.containers(main) == [], 'containers of %s landed on the main engine' % stack.name


@pytest.fixture(scope='module')
def big_refs(testbed):
    return testbed_mod.ensure_big_images(testbed.client(), BIG_COUNT, BIG_MB)


@pytest.fixture
def small(small_engine):
    with holding_small_engine(small_engine) as client:
        yield client


@pytest.fixture
def make_stack(testbed, small_engine, tmp_path):
    made = []

    def make(what, ports):
        stack = RoleStack(testbed, tmp_path, what, ports, docker_host=small_engine.docker_host)
        made.append(stack)
        return stack
    yield make
    for stack in made:
        stack.cleanup()


def test_recovery_of_a_full_disk_and_a_broken_stack(small, small_engine, make_stack, big_refs, run_playbook, tmp_path):
    stack = make_stack('rec', {'web': 18710, 'worker': 18711})
    stack.release('v1')
    stack.release('v2')
    env = {'DOCKER_HOST': small_engine.docker_host}
    report_path = tmp_path / 'recovery.json'
    inventory = stack.inventory(vps_recovery_target_percent=80, vps_recovery_report_path=str(report_path),
                                vps_recovery_health_timeout=30)
    for release in ('v1', 'v2'):
        run = run_playbook(PLAYBOOKS / 'rollout.yml', inventory, extra_vars={'release': release}, env=env)
        assert run.rc == 0, run.output[-4000:]
    stack.assert_runs('v2')
    assert_nothing_on_main_engine(stack)

    # The VPS in trouble: disk past 95% with unused images and a dead container, the stack down.
    root = small.info()['DockerRootDir']
    capacity = sum(disk_usage(root)[:2])
    _used, _free, full = fill(small, root, big_refs, stack.pinned_ref('web', 'v1'), free_bytes=capacity * 3 // 100)
    assert full > 95, 'the fill reached only %.1f%%' % full
    boxes = dict((box.labels['com.docker.compose.service'], box) for box in stack.containers())
    boxes['web'].stop(timeout=5)
    boxes['worker'].remove(force=True)
    assert [box.status for box in stack.containers()] == ['exited']

    # A second stack that cannot come back (its last good image is gone from the host and the registry) is
    # listed first: it is reported and fails the play, but it does not stop the recovery of the other one.
    ghost = ghost_stack(stack, tmp_path)
    host = inventory['all']['hosts']['localhost']
    host['safedeploy_stacks'] = [ghost] + host['safedeploy_stacks']
    run = run_playbook(PLAYBOOKS / 'recover.yml', inventory, env=env)
    assert run.rc != 0 and run.recap['localhost']['failed'] == 1, run.output[-4000:]
    text = ' '.join(run.output.split())
    assert '1 of 2 stacks on localhost did not come back: %s (' % ghost['name'] in text, text[-3000:]
    assert 'The other stacks were recovered; the report is in %s' % report_path in text

    # Below the target, measured on the filesystem itself.
    after = disk_usage(root)[2]
    assert after < 80, 'disk at %.1f%% after recovery' % after
    # Back on the last good release, by digest, healthy, on the small engine only.
    stack.assert_runs('v2')
    assert stack.health('web')['version'] == 'v2' and stack.health('worker')['version'] == 'v2'
    assert_nothing_on_main_engine(stack)
    # The ledger is unchanged in substance and the way back is still on the host.
    ledger = stack.ledger()
    assert ledger['current']['id'] == 'v2' and ledger['last_good']['id'] == 'v2'
    assert stack.statuses() == {'v1': 'superseded', 'v2': 'good'}
    for service in stack.ports:
        for release in ('v1', 'v2'):
            assert stack.has_image(service, release), '%s %s was reclaimed' % (service, release)
    # Some of the unused big images went, and the report says before -> after.
    report = json.loads(report_path.read_text())
    assert report['disk_before_percent'] >= 95 > 80 > report['disk_after_percent']
    assert report['disk_after_reclaim_percent'] < 80, 'the reclaim itself reached the target'
    assert abs(report['disk_after_percent'] - after) < 1.0
    assert abs(report['disk_before_percent'] - full) < 1.0
    assert report['reclaimed_bytes'] > 15 * capacity // 100
    assert report['stacks'][1] == {'name': stack.name, 'release': 'v2', 'healthy': True, 'error': None}
    lost = report['stacks'][0]
    assert (lost['name'], lost['release'], lost['healthy']) == (ghost['name'], 'v1', False)
    assert 'Cannot roll back %s to v1' % ghost['name'] in lost['error'], lost['error']
    assert stack.containers(small) and not [box for box in small.containers.list(all=True)
                                            if box.labels.get('com.docker.compose.project') == ghost['name']]
    assert report['engine_restarted'] is False


def test_disk_full_during_the_pull_aborts_and_the_next_run_reclaims(small, small_engine, make_stack, big_refs,
                                                                    run_playbook, testbed):
    stack = make_stack('full', {'web': 18720, 'worker': 18721})
    stack.release('v1')
    # Release v4 brings a 20 MB layer of its own: it cannot be pulled into 12 MB.
    client = testbed.client()
    v4 = testbed_mod.build_app_image(client, '%s/sdt-rec/full-base:v4' % testbed.registry, 'v4', 'healthy',
                                     extra_bytes=20 * MB)
    stack.release('v4', image=v4)
    env = {'DOCKER_HOST': small_engine.docker_host}
    run = run_playbook(PLAYBOOKS / 'rollout.yml', stack.inventory(), extra_vars={'release': 'v1'}, env=env)
    assert run.rc == 0, run.output[-4000:]
    stack.assert_runs('v1')

    root = small.info()['DockerRootDir']
    _used, free, _percent = fill(small, root, big_refs, stack.pinned_ref('web', 'v1'), free_bytes=12 * MB)
    assert free < 20 * MB, free

    # A preflight that lets the disk through (no reclaim below 100%, no download-size check): the pull runs out of space.
    desperate = stack.inventory(rollout_disk_threshold_percent=100, rollout_disk_hard_limit_percent=100,
                                rollout_pull_retries=1, rollout_download_check=False)
    failed = run_playbook(PLAYBOOKS / 'rollout.yml', desperate, extra_vars={'release': 'v4'}, env=env)
    assert failed.rc != 0
    text = ' '.join(failed.output.split())
    # The summary names the cause, not only "non-zero return code"; so does the ledger.
    summary = re.search(r'Rollout of %s v4 failed at "Pull and bring up[^"]*": (.*?) Nothing running was touched;'
                        % stack.name, text)
    assert summary and 'no space left on device' in summary.group(1), text[-3000:]
    # The old stack still serves, the ledger says v1 is current and v4 failed.
    stack.assert_runs('v1')
    assert stack.health('web')['version'] == 'v1' and stack.health('worker')['version'] == 'v1'
    assert stack.statuses() == {'v1': 'good', 'v4': 'failed'}
    reason = [item for item in stack.ledger()['releases'] if item['id'] == 'v4'][0]['reason']
    assert reason.startswith('Pull and bring up') and 'no space left on device' in reason, reason
    assert stack.ledger()['current']['id'] == 'v1'
    assert stack.report('v4')['result'] == 'failed'
    assert disk_usage(root)[2] > 95

    # The next run reclaims unused data first and goes through. The threshold reclaim stays off (100%), so the room
    # is made by the download-size check: v4's 20 MB (and the room to unpack it) does not fit in what is free, so it
    # reclaims until it does.
    patient = stack.inventory(rollout_disk_threshold_percent=100, rollout_disk_hard_limit_percent=100)
    again = run_playbook(PLAYBOOKS / 'rollout.yml', patient, extra_vars={'release': 'v4'}, env=env)
    assert again.rc == 0, again.output[-4000:]
    assert 'changed' in task_output(again, "Reclaim until the release's download fits")
    stack.assert_runs('v4')
    assert stack.health('web')['version'] == 'v4'
    assert stack.statuses() == {'v1': 'superseded', 'v4': 'good'}
    assert stack.has_image('web', 'v1') and stack.has_image('worker', 'v1')
    assert stack.report('v4')['result'] == 'deployed' and stack.report('v4')['previous'] == 'v1'
    assert_nothing_on_main_engine(stack)


BASE_MB = 40  # the base layers a host holds from the release before


@pytest.fixture
def base_image(testbed):
    """An app image with a 40 MB layer of its own: the base layers a new release builds on."""
    return testbed_mod.build_app_image(testbed.client(), '%s/sdt-rec/inc-base:v1' % testbed.registry, 'v1', 'healthy',
                                       extra_bytes=BASE_MB * MB)


def increment(testbed, base, version, megabytes):
    """The next release of `base`: its layers plus one of `megabytes`."""
    return testbed_mod.build_increment_image(testbed.client(), '%s/sdt-rec/inc-base:%s' % (testbed.registry, version),
                                             base.tags[0], version, megabytes * MB)


def test_an_incremental_release_fits_a_nearly_full_disk_and_one_that_cannot_is_refused(
        small, small_engine, make_stack, base_image, run_playbook, testbed):
    stack = make_stack('inc', {'web': 18722})
    stack.release('v1', image=base_image)
    stack.release('v2', image=increment(testbed, base_image, 'v2', 1))
    stack.release('v3', image=increment(testbed, base_image, 'v3', 30))
    env = {'DOCKER_HOST': small_engine.docker_host}
    # The percent limits out of the way: only the download check decides.
    inventory = stack.inventory(rollout_disk_threshold_percent=100, rollout_disk_hard_limit_percent=100)
    first = run_playbook(PLAYBOOKS / 'rollout.yml', inventory, extra_vars={'release': 'v1'}, env=env)
    assert first.rc == 0, first.output[-4000:]
    stack.assert_runs('v1')

    # 24 MB free, none of it reclaimable: v1 runs and is the way back, the rest is a volume.
    root = small.info()['DockerRootDir']
    _used, free, _percent = fill_with_volume(small, root, stack.pinned_ref('web', 'v1'), 24 * MB, stack.name + '-fill')
    assert free < BASE_MB * MB, free

    # v2 adds 1 MB to v1's 40: it fits, with no reclaim.
    second = run_playbook(PLAYBOOKS / 'rollout.yml', inventory, extra_vars={'release': 'v2'}, env=env)
    assert second.rc == 0, second.output[-4000:]
    assert 'skipping' in task_output(second, "Reclaim until the release's download fits")
    stack.assert_runs('v2')
    assert stack.health('web')['version'] == 'v2'
    assert stack.statuses() == {'v1': 'superseded', 'v2': 'good'}
    assert stack.has_image('web', 'v1')

    # v3 adds 30 MB: with the room to unpack it, 60 MB and more, which nothing reclaimable can give. Refused before
    # anything is recorded or pulled, stating what it needs and what is there.
    free_before = disk_usage(root)[1]
    third = run_playbook(PLAYBOOKS / 'rollout.yml', inventory, extra_vars={'release': 'v3'}, env=env)
    assert third.rc != 0
    needed, available = refusal(third)
    assert 2 * 30 * MB < needed < 2 * 31 * MB, needed  # the new layer and its margin, not v1's 40 MB again
    assert abs(available - free_before) < 4 * MB and available < needed, (available, free_before)
    assert 'Nothing running was touched; v2 still runs' in ' '.join(third.output.split())
    stack.assert_runs('v2')
    assert stack.statuses() == {'v1': 'superseded', 'v2': 'good'}
    assert not stack.has_image('web', 'v3')
    assert stack.report('v3')['result'] == 'failed'
    assert_nothing_on_main_engine(stack)


def test_the_download_check_reclaims_below_the_target_only_what_the_release_needs(
        small, small_engine, make_stack, base_image, big_refs, run_playbook, testbed):
    stack = make_stack('room', {'web': 18723})
    stack.release('v1', image=base_image)
    env = {'DOCKER_HOST': small_engine.docker_host}
    inventory = stack.inventory()  # the default limits: reclaim above 85%, down to 80%
    first = run_playbook(PLAYBOOKS / 'rollout.yml', inventory, extra_vars={'release': 'v1'}, env=env)
    assert first.rc == 0, first.output[-4000:]

    # Two unused big images, then a volume, leaving 21% free: below the 80% target, so a percent-based reclaim
    # removes nothing.
    root = small.info()['DockerRootDir']
    spare = [small.images.pull(ref).id for ref in big_refs[:2]]
    used, free, _percent = disk_usage(root)
    used, free, percent = fill_with_volume(small, root, stack.pinned_ref('web', 'v1'), (used + free) * 21 // 100,
                                           stack.name + '-fill')
    assert percent < 80, percent
    # v2 adds a layer a little over half of what is free: with the margin to unpack it, it needs more than is free.
    grow = free // MB // 2 + 5
    stack.release('v2', image=increment(testbed, base_image, 'v2', grow))

    second = run_playbook(PLAYBOOKS / 'rollout.yml', inventory, extra_vars={'release': 'v2'}, env=env)
    assert second.rc == 0, second.output[-4000:]
    assert 'changed' in task_output(second, "Reclaim until the release's download fits")
    stack.assert_runs('v2')
    assert stack.has_image('web', 'v1')
    # One big image made the room; the other stays: only what the download needs was reclaimed.
    left = set(image.id for image in small.images.list())
    assert len([image_id for image_id in spare if image_id in left]) == 1, spare
    assert_nothing_on_main_engine(stack)
