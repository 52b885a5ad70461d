"""After v2 broke web's port through its configuration: v1 runs again with v1's files, not v1's images on
v2's files, and the snapshot that made it possible is kept on the host, readable by root only."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'shared'))

from stack_checks import PROJECT, STATE, assert_runs, ledger, release  # noqa: E402  (needs sys.path above)

SRC = '/var/lib/safedeploy-molecule/' + PROJECT
OVERRIDE = '%s/compose.%s.release.yml' % (SRC, PROJECT)


def test_the_compose_file_is_v1s_again(host):
    compose = host.file(SRC + '/compose.yaml').content_string
    assert 'APP_PORT: "18501"' in compose and '18509' not in compose
    override = host.file(OVERRIDE).content_string
    assert ':v1@sha256:' in override and ':v2@' not in override


def test_v1_is_current_and_v2_failed_with_its_reason(host):
    data = ledger(host)
    records = dict((r['id'], r) for r in data['releases'])
    assert data['current'] == 'v1' and records['v1']['status'] == 'good'
    assert records['v2']['status'] == 'failed' and 'web health' in records['v2']['reason']
    kept = [entry['path'] for entry in records['v1']['snapshot']['files']]
    assert kept == [SRC + '/compose.yaml', OVERRIDE]


def test_the_snapshot_store_is_root_only(host):
    store = host.file(STATE + '/files')
    assert store.is_directory and store.mode == 0o700 and store.user == 'root'
    for entry in release(host, 'v1')['snapshot']['files']:
        blob = host.file('%s/files/%s' % (STATE, entry['sha256']))
        assert blob.is_file and blob.mode == 0o600
        assert blob.content_string == host.file(entry['path']).content_string


def test_the_containers_run_v1_on_v1s_ports(host):
    assert_runs(host, 'v1')
    assert host.run('curl -s --max-time 2 http://127.0.0.1:18509/cgi-bin/health').rc != 0
