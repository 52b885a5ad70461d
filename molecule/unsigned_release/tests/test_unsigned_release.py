"""A release nobody signed, under a required signature policy: refused before anything was pulled or touched."""

import json

PROJECT = 'sd-mol-web'
ROOT = '/var/lib/safedeploy-molecule'


def test_the_same_containers_still_run(host):
    before = json.loads(host.file(ROOT + '/containers-before.json').content_string)
    now = sorted(host.check_output('docker ps --quiet --no-trunc --filter label=com.docker.compose.project=%s' % PROJECT).split())
    assert before and now == before


def test_the_ledger_names_the_key_of_the_signed_release_only(host):
    data = json.loads(host.file('%s/state/%s/releases.json' % (ROOT, PROJECT)).content_string)
    assert [r['id'] for r in data['releases']] == ['v1']
    signatures = data['releases'][0]['source']['signatures']
    assert {name: (item['key'], item['format']) for name, item in signatures.items()} == {
        'web': ('molecule-ci', 'legacy'), 'worker': ('molecule-ci', 'bundle')}


def test_override_still_pins_v1(host):
    override = host.file('%s/%s/compose.%s.release.yml' % (ROOT, PROJECT, PROJECT)).content_string
    assert ':v1@sha256:' in override and ':v2' not in override


def test_the_stack_lock_is_free(host):
    assert not host.file('%s/state/%s/lock.json' % (ROOT, PROJECT)).exists
