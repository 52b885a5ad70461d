"""Container logs on the small-disk engine: a chatty container fills the disk with its json-file log.

The disk guard's report names it and its bytes (the images left nothing to reclaim); the logs stage brings the
disk under the target without stopping the container, and the file is still there, still written to; the
recovery role empties logs only when the disk is critical. Every size is measured on the filesystem.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

import pytest

from testbed import testbed as testbed_mod

from role_stack import PLAYBOOKS, disk_usage, holding_small_engine

pytestmark = [pytest.mark.xdist_group('small_engine')]

MB = 1 << 20
LINE = 'x' * 1000
DONE = 'sdt-log-writer-done'


def chatty(client, name, megabytes):
    """A running container that writes about `megabytes` of log lines to stdout, says DONE, then idles.

    Returns the container once the engine has written the whole log (its file ends with DONE)."""
    script = ('i=0; while [ $i -lt %d ]; do j=0; while [ $j -lt 1000 ]; do echo %s; j=$((j+1)); done; i=$((i+1)); '
              'done; echo %s; exec sleep 3600' % (megabytes, LINE, DONE))
    box = client.containers.run(testbed_mod.APP_REPO + ':v1', name=name, entrypoint=['/bin/sh', '-c', script],
                                network_mode='none', detach=True, labels={'com.docker.compose.project': 'sdt-logs',
                                                                          'com.docker.compose.service': 'chatty'})
    path = client.api.inspect_container(box.id)['LogPath']
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        with open(path, 'rb') as handle:
            handle.seek(max(os.path.getsize(path) - 200, 0))
            if DONE.encode() in handle.read():
                return box, path
        time.sleep(0.5)
    raise AssertionError('the chatty container did not finish writing its log in time')


def inventory_for(tmp_path, **host_vars):
    host = {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable}
    host.update(host_vars)
    return {'all': {'hosts': {'localhost': host}}}


def test_a_chatty_containers_log_is_named_by_the_guard_and_emptied_by_the_logs_stage(
        small_engine, run_playbook, run_module, tmp_path):
    env = {'DOCKER_HOST': small_engine.docker_host}
    reports = tmp_path / 'reports'
    name = 'sdt-chatty-%s' % uuid.uuid4().hex[:6]
    with holding_small_engine(small_engine) as client:
        client.images.pull(testbed_mod.APP_REPO + ':v1')
        root = client.info()['DockerRootDir']
        used, free, start = disk_usage(root)
        # The log alone takes the disk from where it is to about 90%: there is nothing else to reclaim.
        megabytes = int((0.94 * (used + free) - used) / (1.07 * MB))
        assert megabytes > 100, 'the small disk is already %.1f%% used' % start
        box, path = chatty(client, name, megabytes)
        _used, _free, full = disk_usage(root)
        assert full > 85, 'the log took the disk only to %.1f%%' % full
        log_bytes = os.stat(path).st_blocks * 512
        assert log_bytes > megabytes * MB
        threshold, target = int(start) + 10, int(start) + 5
        assert full > threshold
        guard = dict(disk_guard_state_dir=str(tmp_path / 'state'), disk_guard_report_path=str(reports / 'disk_guard.json'),
                     disk_guard_textfile_path=str(reports / 'disk.prom'), disk_guard_threshold_percent=threshold,
                     disk_guard_target_percent=target, disk_guard_log_max_bytes=50 * MB)

        # Before: the guard reclaims what it may (nothing here), and its report says where the bytes are.
        run = run_playbook(PLAYBOOKS / 'disk_guard.yml', inventory_for(tmp_path, **guard), env=env)
        assert run.rc == 0, run.output[-4000:]
        before = json.loads((reports / 'disk_guard.json').read_text())
        logs = before['accounting']['logs']
        largest = logs['largest'][0]
        assert (largest['container'], largest['project'], largest['service']) == (name, 'sdt-logs', 'chatty')
        assert largest['bytes'] == os.stat(path).st_blocks * 512 and largest['bounded'] is False
        assert largest['path'] == path and name in logs['unbounded']
        assert logs['truncatable_bytes'] >= largest['bytes']
        assert before['usage_after']['percent'] > target, 'nothing but the log could have brought it down'
        assert before['accounting']['filesystem']['used'] == before['usage_after']['used']
        # the log is most of the disk's used bytes, and the accounting says so
        assert largest['bytes'] > 0.5 * before['accounting']['filesystem']['used']
        assert 'largest container log %s' % name in ' '.join(run.output.split())
        prom = (reports / 'disk.prom').read_text()
        assert 'safedeploy_container_log_bytes{container="%s",project="sdt-logs",service="chatty",bounded="false"} %d' % (
            name, largest['bytes']) in prom
        assert 'category="container_logs"' in prom
        assert os.stat(path).st_size > megabytes * MB, 'the default stages touched the log'

        # Check mode predicts the logs stage and empties nothing.
        predicted = run_module('disk_reclaim', dict(docker_host=small_engine.docker_host, threshold_percent=threshold,
                                                    target_percent=target, stages=['logs'], log_max_bytes=50 * MB,
                                                    protect_releases=dict(state_dir=str(tmp_path / 'state'))), check=True)
        assert predicted['changed'] is True and predicted['target_reached'] is True, predicted['msg']
        assert [item['name'] for item in predicted['stages'][0]['removed']] == [name]
        assert os.stat(path).st_size > megabytes * MB

        # After: with the logs stage the guard brings the disk under the target; the container never stopped.
        started = client.api.inspect_container(box.id)['State']['StartedAt']
        guard['disk_guard_truncate_logs'] = True
        run = run_playbook(PLAYBOOKS / 'disk_guard.yml', inventory_for(tmp_path, **guard), env=env)
        assert run.rc == 0, run.output[-4000:]
        after = json.loads((reports / 'disk_guard.json').read_text())
        emptied = [stage for stage in after['stages'] if stage['name'] == 'logs'][0]
        assert [(item['kind'], item['name']) for item in emptied['removed']] == [('log', name)]
        assert emptied['bytes'] >= 0.9 * log_bytes
        assert after['usage_after']['percent'] <= target
        assert abs(disk_usage(root)[2] - after['usage_after']['percent']) < 1.0
        state = client.api.inspect_container(box.id)['State']
        assert state['Running'] is True and state['StartedAt'] == started, 'the container was restarted'
        assert os.path.isfile(path) and os.stat(path).st_size < MB
        assert after['accounting']['logs']['largest'][0]['bytes'] < MB
        # The engine still writes to the same file, at its new end.
        client.api.exec_start(client.api.exec_create(box.id, ['/bin/sh', '-c', 'echo after-truncate > /proc/1/fd/1']))
        time.sleep(1)
        assert b'after-truncate' in open(path, 'rb').read()
        assert b'after-truncate' in box.logs(tail=5)

        # The before/after pair, printed for the record (pytest -s).
        print(json.dumps(dict(before=dict(usage=before['usage_after']['percent'], largest_log=largest),
                              after=dict(usage=after['usage_after']['percent'], emptied=emptied['removed']))))


def test_the_recovery_empties_logs_only_when_the_disk_is_critical(small_engine, run_playbook, tmp_path):
    env = {'DOCKER_HOST': small_engine.docker_host}
    report_path = tmp_path / 'recovery.json'
    name = 'sdt-chatty-rec-%s' % uuid.uuid4().hex[:6]
    with holding_small_engine(small_engine) as client:
        client.images.pull(testbed_mod.APP_REPO + ':v1')
        root = client.info()['DockerRootDir']
        used, free, start = disk_usage(root)
        megabytes = int((0.90 * (used + free) - used) / (1.07 * MB))
        assert megabytes > 100, 'the small disk is already %.1f%% used' % start
        _box, path = chatty(client, name, megabytes)
        full = disk_usage(root)[2]
        target = int(start) + 5
        base = dict(vps_recovery_stacks=[], vps_recovery_state_dir=str(tmp_path / 'state'),
                    vps_recovery_report_path=str(report_path), vps_recovery_target_percent=target,
                    vps_recovery_log_max_bytes=50 * MB)

        # Above the target but below critical: the log is left alone.
        run = run_playbook(PLAYBOOKS / 'recover.yml',
                           inventory_for(tmp_path, vps_recovery_critical_percent=int(full) + 2, **base), env=env)
        assert run.rc == 0, run.output[-4000:]
        report = json.loads(report_path.read_text())
        assert report['logs_emptied'] == [] and os.stat(path).st_size > megabytes * MB
        assert report['accounting']['logs']['largest'][0]['container'] == name

        # Critical: emptied down to the target.
        run = run_playbook(PLAYBOOKS / 'recover.yml',
                           inventory_for(tmp_path, vps_recovery_critical_percent=int(full) - 2, **base), env=env)
        assert run.rc == 0, run.output[-4000:]
        report = json.loads(report_path.read_text())
        assert report['logs_emptied'] == [name]
        assert report['logs_reclaimed_bytes'] > megabytes * MB * 0.9
        assert report['disk_after_reclaim_percent'] <= target
        assert os.path.isfile(path) and os.stat(path).st_size < MB
        assert client.containers.get(name).status == 'running'
        assert 'emptied the logs of %s' % name in ' '.join(run.output.split())
