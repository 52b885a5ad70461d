"""Engine calls are bounded by engine_timeout (module_utils/_engine.py): against an engine socket that accepts the
connection and never answers, connect_engine fails the module within about engine_timeout, with a message naming the
step and engine_timeout, not a traceback. The "engine" is a unix socket served by a thread of this test."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from ansible_collections.safedeploy.compose.plugins.module_utils import _engine as engine


class Failed(Exception):
    pass


class FakeModule(object):

    def __init__(self, params):
        self.params = params

    def fail_json(self, **kwargs):
        raise Failed(kwargs)


@pytest.fixture
def silent_engine(tmp_path):
    """unix://<tmp>/silent.sock: accepts, reads, never answers; every socket closed at the end."""
    path = str(tmp_path / 'silent.sock')
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()
    held = []

    def serve():
        while not stop.is_set():
            try:
                conn, _peer = server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            held.append(conn)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield 'unix://' + path
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def test_a_silent_engine_fails_the_module_at_engine_timeout_naming_it(silent_engine):
    module = FakeModule({'docker_host': silent_engine, 'engine_timeout': 2})
    started = time.monotonic()
    with pytest.raises(Failed) as info:
        engine.connect_engine(module, {'changed': False})
    elapsed = time.monotonic() - started
    assert elapsed < 15, 'the ping outlived engine_timeout (%.1fs)' % elapsed
    msg = info.value.args[0]['msg']
    assert 'did not answer within 2s (engine_timeout) to answer a ping' in msg, msg
    assert 'raise engine_timeout' in msg and silent_engine in msg, msg
    assert info.value.args[0]['changed'] is False


def test_timeouts_are_told_apart_from_other_engine_failures():
    timeout = engine.describe_engine_error(requests.exceptions.ReadTimeout('Read timed out. (read timeout=7)'),
                                           'unix:///run/x.sock', 'remove the leftover container abc_web', 7)
    assert 'did not answer within 7s (engine_timeout) to remove the leftover container abc_web' in timeout, timeout
    refused = engine.describe_engine_error(ConnectionError('Connection refused'), 'unix:///run/x.sock', 'answer a ping', 7)
    assert 'engine_timeout' not in refused and 'Check that dockerd is running' in refused, refused
