"""After a crash-looping v3: the stack serves v2 again and the ledger says why v3 failed."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'shared'))

from stack_checks import assert_runs, ledger  # noqa: E402  (needs sys.path above)


def test_v3_is_failed_with_its_reason_and_v2_is_current(host):
    data = ledger(host)
    records = dict((r['id'], r) for r in data['releases'])
    assert data['current'] == 'v2'
    assert records['v2']['status'] == 'good'
    assert records['v3']['status'] == 'failed'
    assert 'health' in records['v3']['reason'].lower() or 'gate' in records['v3']['reason'].lower()


def test_every_container_runs_v2_again(host):
    assert_runs(host, 'v2')
