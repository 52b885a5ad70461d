"""The disk_guard role through playbooks/disk_guard.yml: reports with measured numbers, the webhook alert, the timer units.

One run reclaims on the small-disk engine (400 MB ext4, under the flock every small-engine test takes) with the
alert forced (critical 1%) and checks the JSON report, the Prometheus textfile and the POST a local webhook
received against statvfs. One run on the main engine, with thresholds it never reaches (nothing is removed
there), checks that no alert goes out and that the rendered service and timer pass `systemd-analyze verify`;
one more shows that units systemd would refuse fail the role.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import COLLECTIONS
from testbed import testbed as testbed_mod

from role_stack import PLAYBOOKS, disk_usage, holding_small_engine

pytestmark = [pytest.mark.xdist_group('small_engine')]

WEBHOOK_PORT = 18790
WEBHOOK_TOKEN = 'hook-Secret-7731'  # in the webhook URL, as Slack and Teams put theirs
BIG_COUNT, BIG_MB = 7, 40  # the same big images test_disk_reclaim.py uses (other sizes would rebuild them)
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / 'ansible-playbook')


class Webhook(http.server.BaseHTTPRequestHandler):
    calls = None

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
        self.calls.append(dict(path=self.path, content_type=self.headers.get('Content-Type'), body=json.loads(body)))
        self.send_response(204)
        self.end_headers()


@pytest.fixture
def webhook():
    calls = []
    handler = type('RecordingWebhook', (Webhook,), {'calls': calls})
    server = http.server.ThreadingHTTPServer(('127.0.0.1', WEBHOOK_PORT), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield 'http://127.0.0.1:%d/hooks/disk?token=%s' % (WEBHOOK_PORT, WEBHOOK_TOKEN), calls
    server.shutdown()
    server.server_close()


def guard_inventory(tmp_path, **extra):
    host = {
        'ansible_connection': 'local',
        'ansible_python_interpreter': sys.executable,
        'disk_guard_state_dir': str(tmp_path / 'state'),
        'disk_guard_report_path': str(tmp_path / 'reports' / 'disk_guard.json'),
        'disk_guard_textfile_path': str(tmp_path / 'reports' / 'safedeploy_disk.prom'),
    }
    host.update(extra)
    return {'all': {'hosts': {'localhost': host}}}


def read_textfile(path):
    """{(metric, labels): value} from a node_exporter textfile; HELP and TYPE must precede each metric's samples."""
    samples, declared = {}, set()
    for line in Path(path).read_text().splitlines():
        if line.startswith('# TYPE '):
            declared.add(line.split()[2])
            continue
        if not line or line.startswith('#'):
            continue
        match = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$', line)
        assert match, 'not a Prometheus sample: %r' % line
        assert match.group(1) in declared, '%s has no TYPE line before it' % match.group(1)
        samples[(match.group(1), match.group(2) or '')] = float(match.group(3))
    return samples


def test_reclaim_reports_measured_numbers_and_alerts_while_critical(testbed, small_engine, run_playbook, webhook,
                                                                    tmp_path):
    url, calls = webhook
    refs = testbed_mod.ensure_big_images(testbed.client(), BIG_COUNT, BIG_MB)
    with holding_small_engine(small_engine) as client:
        for ref in refs[:3]:
            client.images.pull(ref)
        root = client.info()['DockerRootDir']
        used_before, _free, percent_before = disk_usage(root)
        # Act (threshold just below the usage) and stop about one big image lower: some, not all, must go.
        threshold = int(percent_before) - 1
        target = threshold - 10
        assert target > percent_before - 100.0 * (3 * BIG_MB << 20) / small_engine.size_bytes
        inventory = guard_inventory(tmp_path, disk_guard_threshold_percent=threshold, disk_guard_target_percent=target,
                                    disk_guard_critical_percent=1, disk_guard_webhook_url=url)

        run = run_playbook(PLAYBOOKS / 'disk_guard.yml', inventory, env={'DOCKER_HOST': small_engine.docker_host},
                           args=['-vvv'])
        assert run.rc == 0, run.output[-4000:]
        assert WEBHOOK_TOKEN not in run.output, "the webhook's token shows in the -vvv output"
        used_after, _free, percent_after = disk_usage(root)
        left = [ref for ref in refs[:3] if any(ref in image.tags for image in client.images.list())]

    report = json.loads((tmp_path / 'reports' / 'disk_guard.json').read_text())
    # The numbers are the filesystem's own, and of the engine the play was pointed at.
    assert report['path'] == root
    assert abs(report['usage_before']['percent'] - percent_before) < 0.5, (report['usage_before'], percent_before)
    assert abs(report['usage_after']['percent'] - percent_after) < 0.5, (report['usage_after'], percent_after)
    assert report['usage_after']['percent'] <= target < threshold <= report['usage_before']['percent']
    assert abs(report['reclaimed_bytes'] - (used_before - used_after)) <= 0.05 * (used_before - used_after)
    assert report['reclaimed_bytes'] > BIG_MB << 20
    assert 0 < len(left) < 3, 'the guard removed %d of the 3 unused images' % (3 - len(left))
    removed = [item for stage in report['stages'] for item in stage['removed']]
    assert len(removed) == 3 - len(left)
    assert (report['threshold_percent'], report['target_percent'], report['critical_percent']) == (threshold, target, 1)
    assert report['critical'] is True and report['host'] == 'localhost'

    prom = read_textfile(tmp_path / 'reports' / 'safedeploy_disk.prom')
    labels = '{path="%s"' % root
    assert prom[('safedeploy_disk_used_percent', labels + ',phase="before"}')] == report['usage_before']['percent']
    assert prom[('safedeploy_disk_used_percent', labels + ',phase="after"}')] == report['usage_after']['percent']
    assert prom[('safedeploy_disk_reclaimed_bytes', labels + '}')] == report['reclaimed_bytes']
    assert prom[('safedeploy_disk_critical', labels + '}')] == 1
    assert ('safedeploy_disk_guard_last_run_timestamp_seconds', '') in prom

    # Still at or above critical after reclaiming: exactly one alert, carrying the report.
    assert len(calls) == 1, calls
    call = calls[0]
    assert call['path'] == '/hooks/disk?token=' + WEBHOOK_TOKEN and call['content_type'].startswith('application/json')
    assert call['body']['report']['usage_after'] == report['usage_after']
    assert '%s%%' % report['usage_after']['percent'] in call['body']['text'] and 'critical at 1%' in call['body']['text']


def test_no_alert_below_critical_and_verified_timer_units(testbed, run_playbook, webhook, tmp_path):
    url, calls = webhook
    units = tmp_path / 'systemd'
    units.mkdir()
    command = [ANSIBLE_PLAYBOOK, '--inventory', 'localhost,', '--connection', 'local',
               '--extra-vars', 'ansible_python_interpreter=%s' % sys.executable, 'safedeploy.compose.disk_guard']
    # Thresholds the main engine's disk never reaches: it is measured, nothing on it is removed.
    inventory = guard_inventory(tmp_path, disk_guard_threshold_percent=99, disk_guard_target_percent=98,
                                disk_guard_critical_percent=99, disk_guard_webhook_url=url,
                                disk_guard_install_timer=True, disk_guard_systemd_dir=str(units),
                                disk_guard_timer_on_calendar='*:0/10', disk_guard_timer_command=command)
    root = testbed.client().info()['DockerRootDir']
    percent_before = disk_usage(root)[2]
    assert percent_before < 98, 'the main engine disk is too full for this test (%.1f%%)' % percent_before

    run = run_playbook(PLAYBOOKS / 'disk_guard.yml', inventory, args=['-v'])
    assert run.rc == 0, run.output[-4000:]
    assert calls == []
    report = json.loads((tmp_path / 'reports' / 'disk_guard.json').read_text())
    assert report['critical'] is False and report['reclaimed_bytes'] == 0 and report['stages'] == []
    assert abs(report['usage_after']['percent'] - disk_usage(root)[2]) < 0.5
    prom = read_textfile(tmp_path / 'reports' / 'safedeploy_disk.prom')
    assert prom[('safedeploy_disk_critical', '{path="%s"}' % root)] == 0

    service = (units / 'safedeploy-disk-guard.service').read_text()
    timer = (units / 'safedeploy-disk-guard.timer').read_text()
    settings_path = tmp_path / 'reports' / 'disk_guard.vars.json'
    exec_start = re.search(r'^ExecStart=(.*)$', service, re.M).group(1)
    assert shlex.split(exec_start) == command + ['--extra-vars', '@%s' % settings_path], service
    assert re.search(r'^OnCalendar=\*:0/10$', timer, re.M) and re.search(r'^WantedBy=timers.target$', timer, re.M)
    assert oct((units / 'safedeploy-disk-guard.timer').stat().st_mode & 0o777) == '0o644'
    assert 'TASK [safedeploy.compose.disk_guard : Verify the units]' in run.stdout
    verify = subprocess.run(['systemd-analyze', 'verify', str(units / 'safedeploy-disk-guard.service'),
                             str(units / 'safedeploy-disk-guard.timer')], capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and verify.stderr == '', verify.stderr

    # The scheduled run has no inventory: it gets this run's settings from a 0600 vars file (it may hold the
    # webhook's token). Run the service's command as systemd would: it guards with the same settings.
    settings = json.loads(settings_path.read_text())
    assert oct(settings_path.stat().st_mode & 0o777) == '0o600'
    assert settings['disk_guard_threshold_percent'] == 99 and settings['disk_guard_critical_percent'] == 99
    assert settings['disk_guard_webhook_url'] == url and settings['disk_guard_install_timer'] is False
    assert settings['disk_guard_textfile_path'] == str(tmp_path / 'reports' / 'safedeploy_disk.prom')
    for name in ('disk_guard.json', 'safedeploy_disk.prom'):
        (tmp_path / 'reports' / name).unlink()
    scheduled = subprocess.run(shlex.split(exec_start), capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
                               env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_NOCOLOR='1'),
                               check=False)
    assert scheduled.returncode == 0, scheduled.stdout[-3000:] + scheduled.stderr[-3000:]
    again = json.loads((tmp_path / 'reports' / 'disk_guard.json').read_text())
    assert (again['threshold_percent'], again['target_percent'], again['critical_percent']) == (99, 98, 99)
    assert again['stages'] == [] and again['critical'] is False and calls == []
    assert (tmp_path / 'reports' / 'safedeploy_disk.prom').exists()
    assert sorted(path.name for path in units.iterdir()) == ['safedeploy-disk-guard.service', 'safedeploy-disk-guard.timer']

    # A unit systemd would refuse (its command does not exist) fails the role at verification.
    broken = guard_inventory(tmp_path, disk_guard_threshold_percent=99, disk_guard_target_percent=98,
                             disk_guard_critical_percent=99, disk_guard_install_timer=True,
                             disk_guard_systemd_dir=str(units),
                             disk_guard_timer_command=[str(tmp_path / 'no-such-ansible-playbook')])
    refused = run_playbook(PLAYBOOKS / 'disk_guard.yml', broken)
    assert refused.rc != 0 and refused.recap['localhost']['failed'] == 1
    assert 'TASK [safedeploy.compose.disk_guard : Verify the units]' in refused.stdout
    assert 'no-such-ansible-playbook is not executable' in ' '.join(refused.output.split())
