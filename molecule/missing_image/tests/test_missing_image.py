"""A release whose images were never pushed: refused before anything running was touched."""

import json

PROJECT = 'sd-mol-web'
ROOT = '/var/lib/safedeploy-molecule'


def test_the_same_containers_still_run(host):
    before = json.loads(host.file(ROOT + '/containers-before.json').content_string)
    now = sorted(host.check_output('docker ps --quiet --no-trunc --filter label=com.docker.compose.project=%s' % PROJECT).split())
    assert before and now == before


def test_ledger_knows_nothing_of_the_unpushed_release(host):
    data = json.loads(host.file('%s/state/%s/releases.json' % (ROOT, PROJECT)).content_string)
    assert [r['id'] for r in data['releases']] == ['v1']
    assert data['current'] == 'v1'


def test_override_still_pins_v1(host):
    override = host.file('%s/%s/compose.%s.release.yml' % (ROOT, PROJECT, PROJECT)).content_string
    assert ':v1@sha256:' in override and ':v9' not in override
