"""The collection's Docker Engine API client (plugins/module_utils/_engine_api.py), against a fake engine on a Unix
socket: what it sends, how it reads answers and errors, the log stream format."""

from __future__ import annotations

import json
import re
import socketserver
import struct
import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from ansible_collections.safedeploy.compose.plugins.module_utils import _engine_api as api
from ansible_collections.safedeploy.compose.plugins.module_utils._engine import describe_engine_error


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def engine(tmp_path):
    """A fake engine on a Unix socket: answers[(method, path)] = (status, body bytes or JSON); records requests."""
    answers = {}
    seen = []
    raw = []

    class Handler(BaseHTTPRequestHandler):
        def address_string(self):  # a Unix socket has no (host, port)
            return 'unix'

        def _answer(self):
            url = urlsplit(self.path)
            length = int(self.headers.get('Content-Length') or 0)
            body = self.rfile.read(length) if length else b''
            versioned = unquote(url.path)  # the engine routes on the decoded path, with or without /v<version>
            path = re.sub(r'^/v[0-9.]+/', '/', versioned)
            raw.append(versioned)
            if path != '/_ping':
                seen.append((self.command, path, parse_qs(url.query), body))
            status, payload = answers.get((self.command, path), (200, b'OK') if path == '/_ping' else
                                          (404, {'message': 'page not found'}))
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header('API-Version', '1.41')
            self.send_header('Content-Length', str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _answer  # noqa: N815 - the names http.server calls

        def log_message(self, *args):  # pylint: disable=arguments-differ
            pass

    path = str(tmp_path / 'docker.sock')
    server = _Server(path, Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake = type('Engine', (), {})()
    fake.answers, fake.seen, fake.raw, fake.address = answers, seen, raw, 'unix://' + path
    yield fake
    server.shutdown()
    server.server_close()


def test_calls_send_the_documented_paths_and_parameters(engine):
    engine.answers[('GET', '/containers/json')] = (200, [{'Id': 'c1'}])
    client = api.EngineClient(engine.address, timeout=5)
    assert client.api is client
    assert client.containers(all=True, filters={'label': 'com.docker.compose.project=shop'}) == [{'Id': 'c1'}]
    method, path, query, _body = engine.seen[-1]
    assert (method, path) == ('GET', '/containers/json')
    assert query['all'] == ['1']
    assert json.loads(query['filters'][0]) == {'label': ['com.docker.compose.project=shop']}, 'a filter value is a list'
    # the first call pinged, and every call names the API version the engine answered (unversioned calls are deprecated)
    assert engine.raw == ['/_ping', '/v1.41/containers/json'], engine.raw


def test_an_image_reference_is_one_path_segment_the_engine_decodes(engine):
    ref = '127.0.0.1:5000/team/web@sha256:' + 'a' * 64
    engine.answers[('GET', '/images/%s/json' % ref)] = (200, {'Id': 'sha256:' + 'b' * 64, 'RepoDigests': [ref]})
    assert api.EngineClient(engine.address).inspect_image(ref)['RepoDigests'] == [ref]


def test_errors_carry_the_status_and_the_engine_message(engine):
    engine.answers[('GET', '/containers/gone/json')] = (404, {'message': 'No such container: gone'})
    engine.answers[('GET', '/system/df')] = (500, {'message': 'a disk usage operation is already running'})
    engine.answers[('DELETE', '/images/web:1')] = (409, {'message': 'conflict: unable to remove repository reference'})
    client = api.EngineClient(engine.address)
    with pytest.raises(api.NotFound) as gone:
        client.inspect_container('gone')
    assert gone.value.status_code == 404 and 'No such container: gone' in str(gone.value)
    with pytest.raises(api.ImageNotFound):
        client.inspect_image('nowhere:1')
    with pytest.raises(api.EngineAPIError) as busy:
        client.df()
    assert not isinstance(busy.value, api.NotFound) and 'already running' in str(busy.value)
    with pytest.raises(api.EngineAPIError) as conflict:
        client.remove_image('web:1')
    assert conflict.value.status_code == 409 and 'conflict' in str(conflict.value)
    assert engine.seen[-1][2] == {'force': ['0'], 'noprune': ['0']}


def test_a_stopped_container_stopped_again_is_no_error(engine):
    engine.answers[('POST', '/containers/c1/stop')] = (304, b'')
    engine.answers[('POST', '/containers/c1/start')] = (304, b'')
    client = api.EngineClient(engine.address)
    client.stop('c1', timeout=3)
    client.start('c1')
    assert engine.seen[0][2] == {'t': ['3']}


def test_created_volumes_and_networks_send_their_settings(engine):
    engine.answers[('POST', '/volumes/create')] = (201, {'Name': 'data'})
    engine.answers[('POST', '/networks/create')] = (201, {'Id': 'n1'})
    client = api.EngineClient(engine.address)
    client.create_volume('data', driver='local', labels={'com.docker.compose.project': 'shop'})
    client.create_network('edge', internal=True, labels={'x': 'y'})
    volume, network = (json.loads(body) for _m, _p, _q, body in engine.seen)
    assert volume == {'Name': 'data', 'Driver': 'local', 'DriverOpts': {}, 'Labels': {'com.docker.compose.project': 'shop'}}
    assert network['Name'] == 'edge' and network['Internal'] is True and network['Labels'] == {'x': 'y'}


def test_events_between_two_times_come_back_decoded_in_order(engine):
    lines = [{'Action': 'die', 'Actor': {'Attributes': {'exitCode': '3'}}}, {'Action': 'die', 'Actor': {'Attributes': {'exitCode': '1'}}}]
    engine.answers[('GET', '/events')] = (200, b''.join(json.dumps(line).encode() + b'\n' for line in lines))
    events = api.EngineClient(engine.address).events(since='10', until='20', filters={'container': 'c1', 'event': 'die'})
    assert events == lines
    assert json.loads(engine.seen[-1][2]['filters'][0]) == {'container': ['c1'], 'event': ['die']}


def frame(stream, data):
    return struct.pack('>BxxxI', stream, len(data)) + data


def test_logs_without_a_tty_are_unframed_in_order_and_with_one_are_taken_as_they_are(engine):
    engine.answers[('GET', '/containers/c1/logs')] = (200, frame(1, b'started\n') + frame(2, b'boom\n') + frame(1, b'bye\n'))
    assert api.EngineClient(engine.address).logs('c1', tail=3) == b'started\nboom\nbye\n'
    assert engine.seen[-1][2] == {'stdout': ['1'], 'stderr': ['1'], 'tail': ['3'], 'timestamps': ['0']}
    assert api.demux_logs(b'plain tty output\n') == b'plain tty output\n'
    assert api.demux_logs(frame(1, b'cut') + b'\x01\x00') == frame(1, b'cut') + b'\x01\x00', 'a torn frame is taken whole'


def test_addresses_it_cannot_reach_are_refused_naming_the_fix():
    assert api.parse_engine_address('unix:///var/run/docker.sock') == ('unix', '/var/run/docker.sock')
    assert api.parse_engine_address('tcp://127.0.0.1:2375') == ('tcp', '127.0.0.1', 2375)
    assert api.parse_engine_address('unix://run/user/1000/docker.sock') == ('unix', '/run/user/1000/docker.sock')
    with pytest.raises(api.EngineAddressError):
        api.parse_engine_address('tcp://127.0.0.1:port')
    with pytest.raises(api.EngineAddressError) as ssh:
        api.parse_engine_address('ssh://deploy@host')
    assert 'not supported' in str(ssh.value) and 'unix:///var/run/docker.sock' in str(ssh.value)
    assert api.EngineClient(None).base_url == api.DEFAULT_ADDRESS


def test_an_absent_socket_fails_with_an_error_the_module_words(tmp_path):
    client = api.EngineClient('unix://%s' % (tmp_path / 'no.sock'), timeout=2)
    with pytest.raises(OSError) as info:
        client.ping()
    message = describe_engine_error(info.value, client.base_url, 'answer a ping', 2)
    assert 'no.sock' in message and 'Check that dockerd is running' in message, message
