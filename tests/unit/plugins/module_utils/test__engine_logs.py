"""Unit tests of the disk accounting and the logs stage in module_utils/_engine.py.

The engine is faked (inventory data as /system/df and container inspect give it); log files are real files
in a temporary directory. tests/integration/test_disk_reclaim.py runs both against a real engine.
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.safedeploy.compose.plugins.module_utils import _engine as engine
from ansible_collections.safedeploy.compose.plugins.module_utils._engine_api import NotFound

MB = 1 << 20


def image(image_id, layers, tags=(), created=0):
    return dict(id='sha256:' + image_id, tags=list(tags), digests=[], created=created,
                size=sum(size for _chain, size in layers), layers=list(layers))


def container(name, image_id, state='running', rw_bytes=0, log=None, project=None, service=None):
    labels = {}
    if project:
        labels[engine.PROJECT_LABEL] = project
    if service:
        labels[engine.SERVICE_LABEL_KEY] = service
    stopped_log = log['bytes'] if log and state in engine.STOPPED_CONTAINER_STATES else 0
    return dict(id=name * 8, name=name, state=state, image_id='sha256:' + image_id, created=0,
                bytes=rw_bytes + stopped_log, rw_bytes=rw_bytes, labels=labels, log=log)


def log(size, driver='json-file', bounded=False, path='/x.log'):
    return dict(path=path, bytes=size, driver=driver, bounded=bounded)


def protection(*refs, projects=()):
    result = engine.ImageProtection()
    for ref in refs:
        result.add(ref, 'protect')
    result.projects.update(projects)
    return result


def host():
    """Three images sharing a base layer: one in use, one protected, one neither; chatty and quiet containers."""
    return engine.EngineInventory(
        images=[image('a' * 64, [('base', 100 * MB), ('a1', 10 * MB)], tags=['reg/app:running']),
                image('b' * 64, [('base', 100 * MB), ('b1', 20 * MB)], tags=['reg/app:rollback']),
                image('c' * 64, [('base', 100 * MB), ('c1', 30 * MB), ('c2', 5 * MB)], tags=['reg/app:old'])],
        containers=[container('chatty', 'a' * 64, log=log(900 * MB), project='shop', service='worker', rw_bytes=MB),
                    container('quiet', 'a' * 64, log=log(2 * MB, bounded=True), project='shop', service='web'),
                    container('journald', 'a' * 64, log=log(0, driver='journald', bounded=True, path='')),
                    container('gone', 'a' * 64, 'exited', rw_bytes=3 * MB, log=log(300 * MB), project='shop'),
                    container('scratch', 'a' * 64, 'exited', rw_bytes=4 * MB, log=log(7 * MB))],
        build_cache=[dict(id='bc1', type='regular', bytes=8 * MB, in_use=False, shared=False),
                     dict(id='bc2', type='regular', bytes=2 * MB, in_use=True, shared=False)],
        volumes=[dict(name='db', driver='local', bytes=50 * MB, ref_count=1, labels={}),
                 dict(name='old', driver='local', bytes=6 * MB, ref_count=0, labels={}),
                 dict(name='unknown', driver='nfs', bytes=-1, ref_count=-1, labels={})])


def usage(used):
    return dict(path='/var/lib/docker', total=4096 * MB, used=used, free=4096 * MB - used,
                percent=engine.usage_percent(used, 4096 * MB))


def test_accounting_counts_each_layer_once_in_its_most_needed_class():
    account = engine.disk_accounting(host(), protection('reg/app:rollback', projects=['shop']), usage(2048 * MB))
    images = account['images']
    # the shared base layer is in use (the running image holds it): not counted again as protected or reclaimable
    assert images['in_use_bytes'] == 110 * MB
    assert images['protected_bytes'] == 20 * MB
    assert images['reclaimable_bytes'] == 35 * MB
    assert images['bytes'] == 165 * MB == images['in_use_bytes'] + images['protected_bytes'] + images['reclaimable_bytes']
    assert (images['count'], images['in_use'], images['protected'], images['reclaimable']) == (3, 1, 1, 1)


def test_accounting_of_an_unprotected_host_finds_the_rollback_image_reclaimable():
    images = engine.disk_accounting(host(), protection(), usage(2048 * MB))['images']
    assert images['protected_bytes'] == 0 and images['reclaimable_bytes'] == 55 * MB


def test_accounting_separates_writable_layers_logs_volumes_and_cache():
    account = engine.disk_accounting(host(), protection(projects=['shop']), usage(2048 * MB), log_max_bytes=100 * MB)
    containers = account['containers']
    assert (containers['running'], containers['running_bytes']) == (3, MB)
    # a stopped container's log is under logs, not under its writable layer: no byte twice
    assert (containers['stopped'], containers['stopped_bytes']) == (2, 7 * MB)
    assert (containers['stopped_kept'], containers['stopped_kept_bytes']) == (1, 3 * MB)
    volumes = account['volumes']
    # the nfs volume whose use the engine does not report counts as in use (its size, unknown, as 0)
    assert (volumes['in_use'], volumes['in_use_bytes'], volumes['dangling'], volumes['dangling_bytes']) == (2, 50 * MB, 1, 6 * MB)
    assert account['build_cache'] == dict(records=2, bytes=10 * MB, reclaimable_bytes=8 * MB)
    logs = account['logs']
    assert logs['bytes'] == (900 + 2 + 300 + 7) * MB
    assert [entry['container'] for entry in logs['largest']] == ['chatty', 'gone', 'scratch', 'quiet', 'journald']
    assert logs['largest'][0]['project'] == 'shop' and logs['largest'][0]['service'] == 'worker'
    assert logs['unbounded'] == ['chatty', 'gone', 'scratch']
    assert logs['truncatable_bytes'] == 900 * MB  # only live containers' json-file logs above the limit
    filesystem = account['filesystem']
    docker = 165 * MB + MB + 7 * MB + 56 * MB + 10 * MB + 1209 * MB
    assert filesystem['docker_bytes'] == docker
    assert filesystem['other_bytes'] == 2048 * MB - docker


def test_accounting_never_reports_negative_other_bytes():
    assert engine.disk_accounting(host(), protection(), usage(MB))['filesystem']['other_bytes'] == 0


def test_logs_stage_takes_live_json_file_logs_above_the_limit_largest_first():
    inventory = host()
    inventory.containers['small' * 8] = container('small', 'a' * 64, log=log(150 * MB, path='/s.log'))
    inventory.containers['paused' * 8] = container('paused', 'a' * 64, 'paused', log=log(120 * MB, path='/p.log'))
    candidates = engine.reclaim_candidates('logs', inventory, protection(), log_max_bytes=100 * MB)
    assert [(c['kind'], c['name'], c['refs']) for c in candidates] == [
        ('log', 'chatty', ['/x.log']), ('log', 'small', ['/s.log']), ('log', 'paused', ['/p.log'])]
    assert engine.reclaim_candidates('logs', inventory, protection()) == []  # no limit given: nothing


def test_logs_stage_in_check_mode_stops_at_the_target_and_forgets_the_bytes():
    inventory = host()
    inventory.containers['other' * 8] = container('other', 'a' * 64, log=log(500 * MB, path='/o.log'))
    reclaimer = engine.Reclaimer(None, protection(), target_percent=60, log_max_bytes=100 * MB)
    end = reclaimer.run(['logs'], usage(3000 * MB), inventory)
    stage = reclaimer.stages[0]
    assert stage['name'] == 'logs'
    assert [item['name'] for item in stage['removed']] == ['chatty']  # 900 MiB was enough for 60%
    assert stage['estimated_bytes'] == 900 * MB and end['used'] == 2100 * MB
    assert inventory.containers['chatty' * 8]['log']['bytes'] == 0


def test_rotated_files_count_on_disk_but_the_stage_empties_and_estimates_the_current_file_only():
    inventory = host()
    rotated = dict(path='/b.log', bytes=250 * MB, current_bytes=40 * MB, driver='json-file', bounded=True)
    inventory.containers['bounded' * 8] = container('bounded', 'a' * 64, log=rotated)
    # 250 MiB on disk, but emptying frees its 40 MiB current file: below a 100 MiB limit, not a candidate
    assert [c['name'] for c in engine.reclaim_candidates('logs', inventory, protection(), 100 * MB)] == ['chatty']
    account = engine.disk_accounting(inventory, protection(), usage(2048 * MB), log_max_bytes=30 * MB)
    entry = [e for e in account['logs']['largest'] if e['container'] == 'bounded'][0]
    assert (entry['bytes'], entry['current_bytes']) == (250 * MB, 40 * MB)
    assert account['logs']['truncatable_bytes'] == (900 + 40) * MB
    reclaimer = engine.Reclaimer(None, protection(), target_percent=0, log_max_bytes=30 * MB)
    reclaimer.run(['logs'], usage(3000 * MB), inventory)
    assert [(item['name'], item['estimated_bytes']) for item in reclaimer.stages[0]['removed']] == [
        ('chatty', 900 * MB), ('bounded', 40 * MB)]
    assert inventory.containers['bounded' * 8]['log']['bytes'] == 210 * MB  # the rotated files are still there


def test_a_log_path_that_is_not_the_containers_json_log_is_left_alone(tmp_path):
    other = tmp_path / 'precious.db'
    other.write_bytes(b'keep me')
    reason = engine.remove_reclaim_candidate(None, dict(kind='log', id='c' * 64, name='web', refs=[str(other)]))
    assert 'left alone' in reason and other.read_bytes() == b'keep me'
    real = tmp_path / ('%s-json.log' % ('c' * 64))
    real.write_bytes(b'{"log":"x"}\n' * 100)
    assert engine.remove_reclaim_candidate(None, dict(kind='log', id='c' * 64, name='web', refs=[str(real)])) is None
    assert real.exists() and real.stat().st_size == 0


def test_logs_stage_runs_after_images_and_before_volumes():
    order = list(engine.RECLAIM_STAGES)
    assert order.index('unused_images') < order.index('logs') < order.index('volumes')


# ---------------------------------------------------------------- real files

def test_truncate_log_empties_the_file_in_place_and_the_writer_appends_at_its_new_end(tmp_path):
    path = tmp_path / 'c-json.log'
    writer = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # as the engine opens it
    try:
        os.write(writer, b'x' * (1 << 20))
        inode = os.stat(str(path)).st_ino
        engine.truncate_log(str(path))
        assert os.stat(str(path)).st_size == 0 and os.stat(str(path)).st_ino == inode
        os.write(writer, b'{"log":"after"}\n')
    finally:
        os.close(writer)
    assert path.read_bytes() == b'{"log":"after"}\n'  # no hole of zeros before it


def test_truncate_log_refuses_a_symlink(tmp_path):
    target = tmp_path / 'precious'
    target.write_bytes(b'keep me')
    link = tmp_path / 'c-json.log'
    link.symlink_to(target)
    with pytest.raises(OSError):
        engine.truncate_log(str(link))
    assert target.read_bytes() == b'keep me'


def test_a_log_file_not_on_this_host_is_skipped_with_a_reason(tmp_path):
    reason = engine.remove_reclaim_candidate(None, dict(kind='log', id='c', name='web', refs=[str(tmp_path / 'c-json.log')]))
    assert 'not on this host' in reason


class InspectApi:
    def __init__(self, details):
        self.details = details

    def inspect_container(self, container_id):
        if container_id not in self.details:
            raise NotFound(404, 'Not Found', 'gone')
        return self.details[container_id]


class Client:
    def __init__(self, api):
        self.api = api


def test_container_log_counts_rotated_files_and_reads_the_bound_from_the_log_config(tmp_path):
    current = tmp_path / 'abc-json.log'
    current.write_bytes(b'a' * 40000)
    (tmp_path / 'abc-json.log.1').write_bytes(b'b' * 40000)
    (tmp_path / 'abc-json.log.2.gz').write_bytes(b'c' * 40000)
    (tmp_path / 'abc-json.log.tmp').write_bytes(b'd' * 40000)  # not a rotated file
    details = {
        'bounded': {'LogPath': str(current), 'HostConfig': {'LogConfig': {
            'Type': 'json-file', 'Config': {'max-size': '10m', 'max-file': '3'}}}},
        'unbounded': {'LogPath': str(current), 'HostConfig': {'LogConfig': {'Type': 'json-file', 'Config': {}}}},
        'journald': {'LogPath': '', 'HostConfig': {'LogConfig': {'Type': 'journald', 'Config': {}}}},
    }
    client = Client(InspectApi(details))
    bounded = engine._container_log(client, 'bounded')  # pylint: disable=protected-access
    one_file = engine.file_disk_bytes(str(current))
    assert one_file >= 40000
    assert bounded == dict(path=str(current), bytes=3 * one_file, current_bytes=one_file, driver='json-file', bounded=True)
    assert engine._container_log(client, 'unbounded')['bounded'] is False  # pylint: disable=protected-access
    assert engine._container_log(client, 'journald') == dict(  # pylint: disable=protected-access
        path='', bytes=0, current_bytes=0, driver='journald', bounded=True)
    assert engine._container_log(client, 'vanished') is None  # pylint: disable=protected-access
