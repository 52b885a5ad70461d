"""Unit tests of the /system/df call in module_utils/_engine.py when the engine is busy with another one.

Docker 20.10 answers a second concurrent /system/df with 500 "a disk usage operation is already running";
two rollouts (or a rollout and a disk guard) on one engine must not fail on that. The bench's fleet of
simulated hosts on one engine found it.
"""

from __future__ import annotations

import pytest

from ansible_collections.safedeploy.compose.plugins.module_utils import _engine as engine
from ansible_collections.safedeploy.compose.plugins.module_utils._engine_api import EngineAPIError


def busy_error():
    return EngineAPIError(500, 'Internal Server Error', 'a disk usage operation is already running')


class FakeApi(object):
    def __init__(self, failures, error=None):
        self.failures = failures
        self.error = error or busy_error()
        self.calls = 0

    def df(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return {'Images': [], 'Containers': [], 'BuildCache': [], 'Volumes': []}


class FakeClient(object):
    def __init__(self, api):
        self.api = api


def test_a_busy_engine_is_waited_for(monkeypatch):
    monkeypatch.setattr(engine.time, 'sleep', lambda seconds: None)
    api = FakeApi(failures=3)
    inventory = engine.read_engine_inventory(FakeClient(api))
    assert api.calls == 4
    assert not inventory.images and not inventory.containers


def test_other_engine_errors_are_not_retried(monkeypatch):
    monkeypatch.setattr(engine.time, 'sleep', lambda seconds: None)
    api = FakeApi(failures=5, error=EngineAPIError(500, 'Internal Server Error', 'boom'))
    with pytest.raises(EngineAPIError):
        engine.read_engine_inventory(FakeClient(api))
    assert api.calls == 1


def test_a_busy_engine_is_not_waited_for_forever(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(engine.time, 'monotonic', lambda: clock[0])
    monkeypatch.setattr(engine.time, 'sleep', lambda seconds: clock.__setitem__(0, clock[0] + seconds))
    api = FakeApi(failures=10 ** 6)
    with pytest.raises(EngineAPIError) as raised:
        engine._system_df(FakeClient(api), wait=2)
    assert 'already running' in str(raised.value)
    assert 5 <= api.calls <= 15  # about wait / 0.2 s, then it gives up
