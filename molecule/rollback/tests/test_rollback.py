"""After an explicit rollback from v2 to v1: v1 runs by digest, the ledger tells the story."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'shared'))

from stack_checks import assert_runs, ledger  # noqa: E402  (needs sys.path above)


def test_ledger_has_v1_current_and_v2_rolled_back(host):
    data = ledger(host)
    statuses = dict((r['id'], r['status']) for r in data['releases'])
    assert data['current'] == 'v1'
    assert statuses == {'v1': 'good', 'v2': 'rolled_back'}


def test_containers_run_the_v1_digests(host):
    assert_runs(host, 'v1')
