"""After r2 was rolled out over r1 on the routed stack (and a second converge changed nothing): r2 takes the
traffic through HAProxy from the green slot, blue is stopped and kept with r1, the ledger tells the story."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routed_stack import (PROXY, PUBLIC_PORT, STATE, WORKER_PORT,  # noqa: E402  (needs sys.path above)
                          assert_project_runs_only_the_worker, assert_slot, ledger, version)


def test_the_public_port_answers_r2_through_haproxy(host):
    assert version(host, PUBLIC_PORT) == 'v2'
    listener = host.check_output("ss --no-header --listening --tcp --numeric --processes 'sport = :%d'" % PUBLIC_PORT)
    assert '127.0.0.1:%d' % PUBLIC_PORT in listener and '"haproxy"' in listener, listener
    master = host.file(PROXY + '/haproxy.pid').content_string.split()[0]
    assert host.file('/proc/%s/comm' % master).content_string.strip() == 'haproxy'


def test_green_runs_web_on_the_r2_digest(host):
    assert_slot(host, 'green', 'running', 'r2')


def test_blue_kept_web_stopped_on_the_r1_digest(host):
    assert_slot(host, 'blue', 'exited', 'r1')


def test_the_project_itself_runs_only_the_worker_on_r2(host):
    assert_project_runs_only_the_worker(host, 'r2')
    assert version(host, WORKER_PORT) == 'v2'


def test_the_ledger_has_r2_current_from_the_green_slot(host):
    data = ledger(host)
    records = dict((r['id'], r) for r in data['releases'])
    assert data['current'] == 'r2'
    assert dict((i, r['status']) for i, r in records.items()) == {'r1': 'superseded', 'r2': 'good'}
    assert records['r2']['source']['slot'] == 'green' and records['r1']['source']['slot'] == 'blue'


def test_state_files_are_private(host):
    assert host.file(STATE).mode == 0o700
    assert host.file(STATE + '/releases.json').mode == 0o600
    assert not host.file(STATE + '/lock.json').exists, 'the stack lock must be released after the run'
    for slot in ('blue', 'green'):
        assert host.file('%s/slots/%s' % (STATE, slot)).mode == 0o700
        assert host.file('%s/slots/%s/compose.yml' % (STATE, slot)).mode == 0o600  # the release's environment
    assert host.file(PROXY + '/admin.sock').mode == 0o600  # HAProxy's runtime API at admin level
