"""After playbooks/rollback.yml -e apply=true: a flip back to the blue slot, which kept r1; green is stopped and
kept."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routed_stack import (PUBLIC_PORT, STATE, WORKER_PORT,  # noqa: E402  (needs sys.path above)
                          assert_project_runs_only_the_worker, assert_slot, ledger, version)


def test_the_public_port_answers_r1(host):
    assert version(host, PUBLIC_PORT) == 'v1'


def test_blue_runs_web_on_the_r1_digest_again(host):
    assert_slot(host, 'blue', 'running', 'r1')


def test_green_kept_web_stopped_on_the_r2_digest(host):
    assert_slot(host, 'green', 'exited', 'r2')


def test_the_project_itself_runs_only_the_worker_on_r1(host):
    assert_project_runs_only_the_worker(host, 'r1')
    assert version(host, WORKER_PORT) == 'v1'


def test_the_ledger_has_r1_current_and_r2_rolled_back(host):
    data = ledger(host)
    assert data['current'] == 'r1'
    assert dict((r['id'], r['status']) for r in data['releases']) == {'r1': 'good', 'r2': 'rolled_back'}
    assert not host.file(STATE + '/lock.json').exists, 'the stack lock must be released after the rollback'
