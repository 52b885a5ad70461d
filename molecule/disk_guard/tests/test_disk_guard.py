"""The disk guard's outputs: a JSON report with real numbers, a Prometheus textfile, valid units."""

import json
import os

REPORTS = '/var/lib/safedeploy-molecule/reports'
UNITS = '/var/lib/safedeploy-molecule/systemd'


def test_report_measures_the_engine_disk(host):
    report = json.loads(host.file(REPORTS + '/disk_guard.json').content_string)
    stat = os.statvfs('/var/lib/docker')
    used = stat.f_blocks - stat.f_bfree            # as df computes Use%: used / (used + available)
    used_percent = 100.0 * used / (used + stat.f_bavail)
    assert abs(float(report['usage_after']['percent']) - used_percent) < 5
    assert report['threshold_percent'] in (85, '85')


def test_the_report_is_private_and_the_textfile_readable_by_node_exporter(host):
    assert host.file(REPORTS).mode == 0o700, 'the report directory the role made is not private'
    assert host.file(REPORTS + '/disk_guard.json').mode == 0o600
    assert host.file(REPORTS + '/safedeploy_disk.prom').mode == 0o644


def test_textfile_is_prometheus_format(host):
    text = host.file(REPORTS + '/safedeploy_disk.prom').content_string
    samples = [line for line in text.splitlines() if line and not line.startswith('#')]
    assert any(line.startswith('safedeploy_disk_used_percent{') for line in samples)
    for line in samples:
        name_labels, value = line.rsplit(' ', 1)
        float(value)  # every sample value is a number
    assert '# TYPE safedeploy_disk_reclaimed_bytes gauge' in text


def test_timer_units_render_and_verify(host):
    timer = host.file(UNITS + '/safedeploy-disk-guard.timer')
    service = host.file(UNITS + '/safedeploy-disk-guard.service')
    assert timer.mode == 0o644 and service.mode == 0o644
    assert 'OnCalendar=*:0/15' in timer.content_string
    assert 'ExecStart=/bin/true' in service.content_string
    assert host.run('systemd-analyze verify %s/safedeploy-disk-guard.timer' % UNITS).rc == 0
