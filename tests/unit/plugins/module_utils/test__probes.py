"""Unit tests of plugins/module_utils/_probes.py.

HTTP, OpenAPI, TCP and TLS probes talk to real servers on 127.0.0.1 (threads in this process, ports
18200-18279); the gate runs fake probes with scripted answers so its timing rules can be measured;
the containers probe gets a scripted engine API (the real engine is in tests/integration/test_health_gate.py).
"""

from __future__ import annotations

import ast
import base64
import gzip
import json
import re
import socket
import ssl
import subprocess
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ansible_collections.safedeploy.compose.plugins.module_utils import _probes
from ansible_collections.safedeploy.compose.plugins.module_utils._probes import (
    ContainersProbe,
    Gate,
    HttpProbe,
    OpenApiProbe,
    ProbeResult,
    TcpProbe,
    build_probe,
    check_report,
    default_check_name,
    healthcheck_report_seconds,
    json_lookup,
    outcome_message,
    parse_openapi_entry,
    redact_url,
    running_seconds,
    same_value,
)

PORTS = range(18200, 18280)
TOKEN = 'sdt-gate-unit-token-5b2e9f'
HEALTH = {'status': 'ok', 'version': 'v1', 'checks': {'db': 'ok'}, 'items': [{'state': 'ready'}], 'count': 3, 'live': True}
OPENAPI = {
    'openapi': '3.0.3',
    'info': {'title': 'test', 'version': '7'},
    'paths': {
        '/api/v1/boards': {'get': {}, 'post': {}},
        '/cgi-bin/health': {'get': {}},
    },
}


def bind_in_range(sock):
    for port in PORTS:
        try:
            sock.bind(('127.0.0.1', port))
            return port
        except OSError:
            continue
    raise RuntimeError('no free port in %s-%s' % (PORTS[0], PORTS[-1]))


class Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type='text/plain', headers=None):
        data = body if isinstance(body, bytes) else body.encode()
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path
        if path == '/health':
            self.reply(200, json.dumps(HEALTH), 'application/json')
        elif path == '/error':
            self.reply(500, '{"status": "error", "detail": "database down"}', 'application/json')
        elif path == '/notfound':
            self.reply(404, '<html><body>no such page: /notfound</body></html>' + 'x' * 1000, 'text/html')
        elif path == '/moved':
            self.reply(301, 'moved permanently to /health', headers={'Location': '/health'})
        elif path == '/slow':
            time.sleep(3)
            self.reply(200, 'late')
        elif path == '/auth':
            sent = self.headers.get('Authorization', '')
            if sent == 'Bearer ' + TOKEN:
                self.reply(200, 'welcome')
            else:
                self.reply(401, 'unauthorized; you sent: %r' % sent)
        elif path == '/echo-auth':
            self.reply(500, 'broken; your header was %s' % self.headers.get('Authorization', ''))
        elif path == '/found':
            self.reply(302, 'found it at /health', headers={'Location': '/health'})
        elif path == '/temporary':
            self.reply(307, 'try /health', headers={'Location': '/health'})
        elif path == '/unavailable':
            self.reply(503, '{"status": "starting"}', 'application/json', headers={'Retry-After': '5'})
        elif path == '/loop':
            self.reply(302, 'round and round', headers={'Location': '/loop'})
        elif path == '/to-localhost':
            port = self.server.server_address[1]
            self.reply(302, 'elsewhere', headers={'Location': 'http://localhost:%d/echo-auth' % port})
        elif path == '/to-echo':
            self.reply(302, 'same host', headers={'Location': '/echo-auth'})
        elif path == '/gzip':
            self.reply(200, gzip.compress(json.dumps(HEALTH).encode()), 'application/json', headers={'Content-Encoding': 'gzip'})
        elif path == '/headers':
            self.reply(200, json.dumps(dict((key.lower(), value) for key, value in self.headers.items())), 'application/json',
                       headers={'X-Twice': 'one', 'x-twice': 'two'})
        elif path == '/stall':
            self.send_response(200)
            self.send_header('Content-Length', '100')
            self.end_headers()
            self.wfile.write(b'partial')
            self.wfile.flush()
            time.sleep(3)
        elif path.startswith('http://'):   # asked as a proxy
            self.reply(200, 'proxied %s' % path)
        elif path == '/openapi.json':
            self.reply(200, json.dumps(OPENAPI), 'application/json')
        elif path == '/openapi.yaml':
            self.reply(200, 'openapi: 3.0.3\npaths:\n  /api/v1/boards:\n    get: {}\n', 'application/yaml')
        elif path == '/not-openapi':
            self.reply(200, '{"hello": "world"}', 'application/json')
        elif path == '/text':
            self.reply(200, 'plain text, not json')
        elif path == '/big':
            self.reply(200, b'a' * (_probes.BODY_READ_LIMIT + 4096) + b'needle')
        elif path == '/latin1':
            self.reply(200, 'caf\xe9'.encode('latin-1'), 'text/plain; charset=iso-8859-1')
        else:
            self.reply(404, 'unknown path %s' % path)

    def do_POST(self):
        length = int(self.headers.get('Content-Length') or 0)
        self.rfile.read(length)
        if self.path == '/see-other':
            self.reply(303, 'see /health', headers={'Location': '/health'})
        elif self.path == '/temporary':
            self.reply(307, 'post again to /create', headers={'Location': '/create'})
        else:
            self.reply(201 if self.path == '/create' else 405, 'posted')


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # clients that time out or reject our certificate hang up on purpose


def serve_in_range():
    for port in PORTS:
        try:
            httpd = QuietServer(('127.0.0.1', port), Handler)
        except OSError:
            continue
        httpd.daemon_threads = True
        return httpd, port
    raise RuntimeError('no free port in %s-%s' % (PORTS[0], PORTS[-1]))


@pytest.fixture(scope='module')
def server():
    httpd, port = serve_in_range()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield 'http://127.0.0.1:%d' % port
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_port():
    """A port in our range with nothing listening (bound then closed: refused on connect)."""
    sock = socket.socket()
    port = bind_in_range(sock)
    sock.close()
    return port


@pytest.fixture
def blackhole():
    """A socket that listens but never accepts or answers."""
    sock = socket.socket()
    port = bind_in_range(sock)
    sock.listen(64)
    yield port
    sock.close()


def http(url, **kwargs):
    return HttpProbe('t', url, **kwargs)


# ---------------------------------------------------------------- http


def test_http_200_passes_with_evidence(server):
    result = http(server + '/health').probe(2)
    assert result.passed and result.status == 200 and result.error is None
    assert result.evidence['status'] == 200
    assert result.evidence['body'].startswith('{"status": "ok"')
    assert result.evidence['content_type'] == 'application/json'


def test_http_500_is_a_wrong_answer_with_status_and_body(server):
    result = http(server + '/error').probe(2)
    assert not result.passed and not result.unreachable and not result.fatal
    assert result.status == 500
    assert 'HTTP 500' in result.error and 'expected 200' in result.error and 'database down' in result.error


def test_http_404_reports_status_and_first_bytes_of_body(server):
    result = http(server + '/notfound').probe(2)
    assert not result.passed and not result.unreachable
    assert result.status == 404
    assert 'HTTP 404' in result.error and 'no such page: /notfound' in result.error
    assert result.evidence['body'].startswith('<html><body>no such page')
    assert len(result.evidence['body']) == _probes.BODY_EXCERPT_CHARS
    assert '\n' not in result.error


def test_http_301_is_not_followed_by_default(server):
    result = http(server + '/moved').probe(2)
    assert not result.passed and result.status == 301
    assert result.evidence['location'] == '/health'
    assert 'HTTP 301' in result.error and 'Location: /health' in result.error and 'moved permanently' in result.error
    followed = http(server + '/moved', follow_redirects=True).probe(2)
    assert followed.passed and followed.status == 200


def test_http_status_list(server):
    assert http(server + '/moved', status=[200, 301]).probe(2).passed
    assert http(server + '/notfound', status=[404]).probe(2).passed
    result = http(server + '/error', status=[200, 204])
    assert 'expected 200 or 204' in result.probe(2).error


def test_http_method_post(server):
    assert http(server + '/create', method='post', status=[201]).probe(2).passed
    assert http(server + '/elsewhere', method='POST').probe(2).status == 405


def test_http_body_contains_and_regex(server):
    assert http(server + '/health', body_contains='"db": "ok"').probe(2).passed
    missing = http(server + '/health', body_contains='"db": "down"').probe(2)
    assert not missing.passed and 'does not contain' in missing.error and not missing.unreachable
    assert http(server + '/health', body_regex=r'"version":\s*"v\d+"').probe(2).passed
    nomatch = http(server + '/health', body_regex=r'"version":\s*"v9"').probe(2)
    assert not nomatch.passed and 'does not match' in nomatch.error


def test_http_body_beyond_read_limit_is_cut(server):
    result = http(server + '/big', body_contains='needle').probe(5)
    assert not result.passed and 'does not contain' in result.error
    assert len(result.evidence['body']) == _probes.BODY_EXCERPT_CHARS


def test_http_charset_from_content_type(server):
    assert http(server + '/latin1', body_contains='caf\xe9').probe(2).passed


def test_http_json_fields(server):
    fields = {'status': 'ok', 'checks.db': 'ok', 'items.0.state': 'ready', 'count': '3', 'live': True, 'version': 'v1'}
    probe = http(server + '/health', json_fields=fields)
    assert probe.probe(2).passed
    wrong = http(server + '/health', json_fields={'checks.db': 'down', 'items.1.state': 'ready', 'count': 4}).probe(2)
    assert not wrong.passed and not wrong.unreachable
    assert 'checks.db is "ok", expected "down"' in wrong.error
    assert 'items.1.state is missing' in wrong.error
    assert 'count is 3, expected 4' in wrong.error
    notjson = http(server + '/text', json_fields={'status': 'ok'}).probe(2)
    assert not notjson.passed and 'not JSON' in notjson.error and 'plain text' in notjson.error


def test_http_refused_is_unreachable(closed_port):
    result = http('http://127.0.0.1:%d/health' % closed_port).probe(2)
    assert not result.passed and result.unreachable and result.status is None
    assert 'refused' in result.error


def test_http_timeout_is_unreachable_and_bounded(server):
    started = time.monotonic()
    result = http(server + '/slow').probe(0.5)
    took = time.monotonic() - started
    assert result.unreachable and not result.passed
    assert 'no answer within 0.5s' in result.error
    assert took < 1.5


def test_http_blackhole_is_unreachable_within_timeout(blackhole):
    started = time.monotonic()
    result = http('http://127.0.0.1:%d/' % blackhole).probe(0.5)
    assert result.unreachable and time.monotonic() - started < 1.5


def test_http_dns_failure_is_unreachable():
    result = http('http://sdt-gate-no-such-host.invalid:18200/').probe(3)
    assert result.unreachable and not result.passed
    assert 'DNS' in result.error or 'resolve' in result.error or 'cannot connect' in result.error


def test_bearer_token_is_sent_and_never_reported(server):
    assert http(server + '/auth', bearer_token=TOKEN).probe(2).passed
    denied = http(server + '/auth').probe(2)
    assert denied.status == 401
    echoed = http(server + '/echo-auth', bearer_token=TOKEN).probe(2)
    assert echoed.status == 500
    text = repr(echoed) + json.dumps(echoed.evidence) + (echoed.error or '')
    assert TOKEN not in text
    assert '********' in echoed.error and '********' in echoed.evidence['body']


def test_bearer_token_not_in_unreachable_errors(closed_port):
    result = http('http://127.0.0.1:%d/?t=1' % closed_port, bearer_token=TOKEN).probe(1)
    assert result.unreachable and TOKEN not in json.dumps(result.evidence) + result.error


def test_url_credentials_are_hidden(closed_port):
    url = 'http://user:s3cret@127.0.0.1:%d/health' % closed_port
    assert redact_url(url) == 'http://***@127.0.0.1:%d/health' % closed_port
    result = http(url).probe(1)
    assert 's3cret' not in result.error + json.dumps(result.evidence)
    assert 's3cret' not in default_check_name({'type': 'http', 'url': url})


def test_http_302_and_307_are_answers_unless_followed(server):
    for path, status in (('/found', 302), ('/temporary', 307)):
        result = http(server + path).probe(2)
        assert not result.passed and not result.unreachable and result.status == status
        assert result.evidence['location'] == '/health'
        assert 'HTTP %d' % status in result.error and 'Location: /health' in result.error
        followed = http(server + path, follow_redirects=True).probe(2)
        assert followed.passed and followed.status == 200 and 'location' not in followed.evidence


def test_http_redirects_change_the_method_as_requests_did(server):
    # 303 turns a POST into a GET; 307 repeats the POST
    assert http(server + '/see-other', method='POST', follow_redirects=True).probe(2).passed
    assert http(server + '/temporary', method='POST', status=[201], follow_redirects=True).probe(2).passed


def test_http_redirect_loop_is_reported(server):
    result = http(server + '/loop', follow_redirects=True).probe(5)
    assert not result.passed and result.status is None
    assert result.error == '%s/loop redirects in a loop: Exceeded 30 redirects.' % server


def test_http_bearer_token_follows_a_redirect_only_to_the_same_host(server):
    same = http(server + '/to-echo', bearer_token=TOKEN, follow_redirects=True).probe(2)
    assert same.status == 500 and 'your header was Bearer ********' in same.error
    other = http(server + '/to-localhost', bearer_token=TOKEN, follow_redirects=True).probe(2)
    assert other.status == 500 and other.error.endswith('your header was')


def test_http_503_is_an_answer_judged_by_status(server):
    result = http(server + '/unavailable').probe(2)
    assert not result.passed and not result.unreachable and result.status == 503
    assert result.error == 'HTTP 503 Service Unavailable (expected 200); body: {"status": "starting"}'
    assert result.evidence['reason'] == 'Service Unavailable' and result.evidence['content_type'] == 'application/json'
    assert http(server + '/unavailable', status=[503], body_contains='starting').probe(2).passed
    answer, failure = http(server + '/unavailable').exchange(2)
    assert failure is None and answer.headers['retry-after'] == '5' and answer.body == b'{"status": "starting"}'


def test_http_refused_names_the_target(closed_port):
    result = http('http://127.0.0.1:%d/health' % closed_port).probe(2)
    assert result.error == 'connection to http://127.0.0.1:%d/health refused (nothing listening yet?)' % closed_port
    assert result.unreachable and result.evidence['url'] == 'http://127.0.0.1:%d/health' % closed_port


def test_http_connect_timeout_and_read_timeout_are_told_apart(server, blackhole, monkeypatch):
    read = http('http://127.0.0.1:%d/' % blackhole).probe(0.5)
    assert read.unreachable and read.error == 'connected to http://127.0.0.1:%d/ but no answer within 0.5s' % blackhole

    def no_connection(address, timeout=None, *args, **kwargs):
        raise socket.timeout('timed out')
    monkeypatch.setattr(socket, 'create_connection', no_connection)
    connect = http(server + '/health').probe(0.5)
    assert connect.unreachable and connect.error == 'no connection to %s/health within 0.5s' % server


def test_http_body_that_stalls_is_bounded(server):
    started = time.monotonic()
    result = http(server + '/stall').probe(0.5)
    assert result.unreachable and 'no answer from %s/stall within 0.5s' % server in result.error
    assert time.monotonic() - started < 1.5


def test_http_gzip_body_is_decoded_and_headers_lower_cased(server):
    assert http(server + '/gzip', json_fields={'checks.db': 'ok'}).probe(2).passed
    answer, _failure = http(server + '/headers', headers={'X-Api-Key': 'k1'}).exchange(2)
    sent = json.loads(answer.body)
    assert sent['x-api-key'] == 'k1' and sent['accept'] == '*/*' and 'gzip' in sent['accept-encoding']
    assert answer.headers['x-twice'] == 'one, two' and answer.headers['content-type'] == 'application/json'


def test_http_url_credentials_are_sent_as_basic_auth_and_netrc_is_not_read(server, netrc_file):
    answer, _failure = http(server.replace('http://', 'http://user:s%40cret@') + '/headers').exchange(2)
    assert json.loads(answer.body)['authorization'] == 'Basic ' + base64.b64encode(b'user:s@cret').decode()
    plain, _failure = http(server + '/headers').exchange(2)
    assert 'authorization' not in json.loads(plain.body)


def test_http_honours_proxy_environment(server, monkeypatch):
    for name in ('NO_PROXY', 'no_proxy'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('http_proxy', server)
    result = http('http://sdt-gate-through-proxy.invalid/health', body_contains='proxied http://sdt-gate').probe(2)
    assert result.passed, result.error
    monkeypatch.setenv('no_proxy', 'sdt-gate-through-proxy.invalid')
    assert http('http://sdt-gate-through-proxy.invalid/health').probe(2).unreachable


def test_http_goes_direct_to_a_host_in_a_no_proxy_network(server, monkeypatch):
    """NO_PROXY may name a network (127.0.0.0/8), which urllib's own check does not read: the check then goes direct."""
    for name in ('NO_PROXY', 'no_proxy'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('http_proxy', server)
    closed = socket.socket()
    closed.bind(('127.0.0.1', 0))
    url = 'http://127.0.0.1:%d/health' % closed.getsockname()[1]
    closed.close()  # nothing listens there: only the proxy can answer
    assert http(url, body_contains='proxied').probe(2).passed, 'without NO_PROXY the proxy answers'
    monkeypatch.setenv('no_proxy', 'example.invalid, 127.0.0.0/8')
    direct = http(url).probe(2)
    assert direct.unreachable and 'refused' in direct.error, direct.error


def test_a_redirect_never_carries_the_proxy_password(monkeypatch):
    """The proxy handler adds Proxy-Authorization again where the next hop uses the proxy; a hop that goes direct
    (NO_PROXY) must not get it."""
    import io
    import urllib.request
    request = urllib.request.Request('http://public.example/health', headers={
        'Proxy-Authorization': 'Basic cHVzZXI6cHNlY3JldA==', 'Authorization': 'Bearer token', 'X-Check': '1'})
    handler = _probes._Redirects(True)
    elsewhere = handler.redirect_request(request, io.BytesIO(), 302, 'Found', {}, 'http://internal.example/x')
    same = handler.redirect_request(request, io.BytesIO(), 302, 'Found', {}, 'http://public.example/y')
    assert not elsewhere.has_header('Proxy-authorization') and not elsewhere.has_header('Authorization')
    assert not same.has_header('Proxy-authorization') and same.get_header('Authorization') == 'Bearer token'
    assert elsewhere.get_header('X-check') == '1'


def test_http_rejects_non_http_urls():
    with pytest.raises(ValueError):
        HttpProbe('t', 'ftp://127.0.0.1/')
    with pytest.raises(ValueError):
        build_probe({'type': 'http', 'url': 'http://127.0.0.1/', 'body_regex': '(unclosed'}, 't')


@pytest.fixture(scope='module')
def tls_server(tmp_path_factory):
    """An HTTPS server with a self-signed certificate."""
    folder = tmp_path_factory.mktemp('tls')
    key, cert = folder / 'key.pem', folder / 'cert.pem'
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', str(key), '-out', str(cert),
                    '-days', '1', '-subj', '/CN=127.0.0.1'], check=True, capture_output=True)
    httpd, port = serve_in_range()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield 'https://127.0.0.1:%d' % port
    httpd.shutdown()
    httpd.server_close()


def test_tls_verification_on_by_default(tls_server):
    rejected = http(tls_server + '/health').probe(3)
    assert not rejected.passed and not rejected.unreachable
    assert 'TLS' in rejected.error and 'validate_certs' in rejected.error
    with warnings.catch_warnings():
        warnings.simplefilter('error')   # no InsecureRequestWarning or any other
        assert http(tls_server + '/health', validate_certs=False).probe(3).passed
    assert rejected.error.startswith('TLS handshake with %s/health rejected: ' % tls_server)
    assert 'CERTIFICATE_VERIFY_FAILED' in rejected.error


def test_probes_do_not_import_requests():
    tree = ast.parse(open(_probes.__file__).read())
    names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
    assert not [name for name in names if name.split('.')[0] in ('requests', 'urllib3')]
    assert not hasattr(_probes, 'requests') and not hasattr(_probes, 'HAS_REQUESTS')


# ---------------------------------------------------------------- openapi


def test_openapi_all_present(server):
    probe = OpenApiProbe('api', server + '/openapi.json', ['GET /api/v1/boards', 'post /api/v1/boards', '/cgi-bin/health'])
    result = probe.probe(2)
    assert result.passed and result.evidence['missing'] == [] and result.evidence['api_version'] == '7'


def test_openapi_names_every_missing_path(server):
    probe = OpenApiProbe('api', server + '/openapi.json',
                         ['GET /api/v1/boards', 'DELETE /api/v1/boards', 'GET /api/v1/users', '/api/v2'])
    result = probe.probe(2)
    assert not result.passed and not result.unreachable
    assert result.evidence['missing'] == ['DELETE /api/v1/boards', 'GET /api/v1/users', '/api/v2']
    assert result.error == 'missing from the OpenAPI document: DELETE /api/v1/boards, GET /api/v1/users, /api/v2'


def test_openapi_yaml_and_bad_documents(server, closed_port):
    assert OpenApiProbe('api', server + '/openapi.yaml', ['GET /api/v1/boards']).probe(2).passed
    notdoc = OpenApiProbe('api', server + '/not-openapi', ['GET /x']).probe(2)
    assert not notdoc.passed and 'not an OpenAPI document' in notdoc.error
    gone = OpenApiProbe('api', server + '/nothing.json', ['GET /x']).probe(2)
    assert gone.status == 404 and 'HTTP 404' in gone.error
    down = OpenApiProbe('api', 'http://127.0.0.1:%d/openapi.json' % closed_port, ['GET /x']).probe(1)
    assert down.unreachable


def test_openapi_entry_syntax():
    assert parse_openapi_entry('GET /api/v1/boards') == ('get', '/api/v1/boards')
    assert parse_openapi_entry('/health') == (None, '/health')
    for bad in ('FETCH /x', 'GET api', 'GET /x extra', ''):
        with pytest.raises(ValueError):
            parse_openapi_entry(bad)


# ---------------------------------------------------------------- tcp


def test_tcp_open_and_refused(server, closed_port):
    port = int(server.rsplit(':', 1)[1])
    assert TcpProbe('t', '127.0.0.1', port).probe(1).passed
    refused = TcpProbe('t', '127.0.0.1', closed_port).probe(1)
    assert refused.unreachable and 'refused' in refused.error


# ---------------------------------------------------------------- small rules


def test_json_lookup_and_same_value():
    assert json_lookup(HEALTH, 'items.0.state') == (True, 'ready')
    assert json_lookup(HEALTH, 'items.-1.state') == (True, 'ready')
    assert json_lookup(HEALTH, 'checks.cache') == (False, None)
    assert json_lookup(HEALTH, 'status.deeper') == (False, None)
    assert same_value(3, '3') and same_value('3', 3) and same_value(True, 'true') and same_value(None, 'null')
    assert not same_value(True, 1) and not same_value('ok', 'OK') and not same_value(3, 4)
    assert same_value({'a': 1}, {'a': 1}) and not same_value({'a': 1}, '{"a": 1}')


def test_healthcheck_report_seconds():
    assert healthcheck_report_seconds(None) is None
    assert healthcheck_report_seconds({'Test': ['NONE']}) is None
    assert healthcheck_report_seconds({'Test': ['CMD', 'true'], 'Interval': 10 ** 9, 'StartPeriod': 10 ** 9, 'Retries': 2})[0] == 3
    # Docker's defaults: interval 30s, 3 retries, no start period
    assert healthcheck_report_seconds({'Test': ['CMD', 'true']})[0] == 90


def test_default_names():
    assert default_check_name({'type': 'http', 'url': 'http://127.0.0.1:8080/h'}) == 'http GET http://127.0.0.1:8080/h'
    assert default_check_name({'type': 'tcp', 'host': 'db', 'port': 5432}) == 'tcp db:5432'
    assert default_check_name({'type': 'containers', 'project': 'shop', 'services': ['web', 'worker']}) == 'containers shop[web,worker]'
    assert default_check_name({'type': 'openapi', 'url': 'http://h/o.json'}) == 'openapi http://h/o.json'


# ---------------------------------------------------------------- the gate, with scripted probes


class Scripted:
    """A probe answering from a script: 'pass', 'fail', 'unreachable', 'fatal' (the last one repeats)."""

    kind = 'http'
    secrets = []

    def __init__(self, name, script, delay=0.0, timeout=2.0):
        self.name = name
        self.script = list(script)
        self.delay = delay
        self.timeout = timeout
        self.calls = []

    def probe(self, timeout):
        self.calls.append(time.monotonic())
        if self.delay:
            time.sleep(self.delay)
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if step == 'pass':
            return ProbeResult(True, status=200)
        if step == 'unreachable':
            return ProbeResult(False, unreachable=True, error='connection refused')
        if step == 'fatal':
            return ProbeResult(False, fatal=True, error='crash loop: exit code 1')
        return ProbeResult(False, status=503, error='HTTP 503')


def test_gate_passes_in_first_round():
    gate = Gate([Scripted('a', ['pass']), Scripted('b', ['pass'])], timeout=5, interval=1)
    outcome = gate.wait_until_healthy()
    assert outcome.passed and outcome.rounds == 1 and outcome.elapsed < 0.5
    assert 'passed' in outcome_message(outcome, 1, 0, True, 5)


def test_gate_runs_a_round_concurrently():
    probes = [Scripted('slow%d' % index, ['unreachable'], delay=0.5) for index in range(10)]
    gate = Gate(probes, timeout=1.2, interval=0.2)
    outcome = gate.wait_until_healthy()
    assert not outcome.passed
    # ten probes of 0.5s each: ~0.5s a round, so ~3 rounds in 1.2s (sequential would be one round of 5s)
    assert outcome.elapsed < 2.2
    assert outcome.rounds >= 3
    assert all(len(probe.calls) == outcome.rounds for probe in probes)


def test_gate_sleeps_only_until_the_next_round_is_due():
    probe = Scripted('a', ['fail'], delay=0.3)
    gate = Gate([probe], timeout=2.05, interval=0.5)
    gate.wait_until_healthy()
    gaps = [later - earlier for earlier, later in zip(probe.calls, probe.calls[1:])]
    assert gaps and all(0.45 < gap < 0.65 for gap in gaps[:-1]), gaps  # 0.5, not 0.3 + 0.5


def test_gate_slow_round_is_followed_at_once():
    probe = Scripted('a', ['fail'], delay=0.6)
    gate = Gate([probe], timeout=1.5, interval=0.2)
    gate.wait_until_healthy()
    gaps = [later - earlier for earlier, later in zip(probe.calls, probe.calls[1:])]
    assert gaps and all(gap < 0.75 for gap in gaps), gaps


def test_gate_fails_at_the_deadline_naming_the_check():
    gate = Gate([Scripted('web', ['fail']), Scripted('db', ['pass'])], timeout=1.0, interval=0.3)
    outcome = gate.wait_until_healthy()
    assert not outcome.passed and outcome.reason == 'deadline'
    assert 1.0 <= outcome.elapsed < 1.6
    msg = outcome_message(outcome, 1, 0, True, 1.0)
    assert "'web': HTTP 503" in msg and "'db'" not in msg and '\n' not in msg


def test_gate_passes_once_it_gets_there():
    probe = Scripted('slow', ['unreachable', 'unreachable', 'fail', 'pass'])
    outcome = Gate([probe], timeout=5, interval=0.2).wait_until_healthy()
    assert outcome.passed and outcome.rounds == 4
    report = check_report(outcome.states[0], outcome.elapsed, 1)
    assert report['attempts'] == 4 and report['passes'] == 1 and report['unreachable_attempts'] == 2
    assert report['failures'] == 3 and report['passed'] and report['last_error'] is None
    assert 0.5 < report['elapsed'] <= outcome.elapsed


def test_gate_flapping_fails_with_threshold_three():
    probe = Scripted('flap', ['pass', 'pass', 'fail'] * 20)
    outcome = Gate([probe], timeout=1.5, interval=0.1, success_threshold=3).wait_until_healthy()
    assert not outcome.passed and outcome.reason == 'deadline'
    state = outcome.states[0]
    assert state.flaps >= 3 and state.passes >= 6
    msg = outcome_message(outcome, 3, 0, True, 1.5)
    assert 'flapping' in msg and "'flap'" in msg


def test_gate_success_threshold_counts_passes_in_a_row():
    probe = Scripted('a', ['pass', 'fail', 'pass', 'pass', 'pass'])
    outcome = Gate([probe], timeout=5, interval=0.05, success_threshold=3).wait_until_healthy()
    assert outcome.passed and outcome.rounds == 5 and outcome.states[0].flaps == 1


def test_gate_fails_fast_on_a_crash_loop():
    crash = Scripted('containers', ['pass', 'fatal'])
    other = Scripted('web', ['unreachable'])
    outcome = Gate([crash, other], timeout=60, interval=0.2).wait_until_healthy()
    assert not outcome.passed and outcome.reason == 'crash' and outcome.elapsed < 1
    msg = outcome_message(outcome, 1, 0, True, 60)
    assert msg.startswith('health gate failed fast') and "'containers': crash loop: exit code 1" in msg
    assert msg.index("'containers'") < msg.index("'web'")


def test_gate_stable_for():
    outcome = Gate([Scripted('a', ['pass'])], timeout=5, interval=0.2, stable_for=0.7).wait_until_healthy()
    assert outcome.passed and 0.7 <= outcome.elapsed < 1.2 and outcome.rounds >= 4
    broken = Scripted('a', ['pass', 'pass', 'fail'] + ['pass'] * 50)
    outcome = Gate([broken], timeout=5, interval=0.2, stable_for=0.5).wait_until_healthy()
    assert outcome.passed and outcome.elapsed >= 1.0  # the failure in round 3 restarted the stable window


def test_gate_stable_for_not_reached_by_deadline():
    outcome = Gate([Scripted('a', ['fail', 'fail', 'pass'])], timeout=0.6, interval=0.2, stable_for=5).wait_until_healthy()
    assert not outcome.passed
    assert 'every check is green but only for' in outcome_message(outcome, 1, 5, True, 0.6)


def test_unreachable_counts_as_failure_by_default_or_as_no_data():
    script = ['pass', 'unreachable', 'pass']
    strict = Gate([Scripted('a', script)], timeout=0.5, interval=0.05, success_threshold=2).wait_until_healthy()
    assert strict.passed and strict.rounds == 4  # pass, unreachable (resets), pass, pass
    lenient = Gate([Scripted('a', script)], timeout=0.5, interval=0.05, success_threshold=2,
                   count_unreachable_as_failure=False).wait_until_healthy()
    assert lenient.passed and lenient.rounds == 3  # the unreachable round neither passes nor resets
    assert lenient.states[0].unreachable_attempts == 1 and lenient.states[0].failures == 0
    never = Gate([Scripted('a', ['unreachable'])], timeout=0.3, interval=0.1,
                 count_unreachable_as_failure=False).wait_until_healthy()
    assert not never.passed and 'could not measure' in outcome_message(never, 1, 0, False, 0.3)


def test_gate_abandons_a_probe_that_ignores_its_timeout():
    class Stuck(Scripted):
        def probe(self, timeout):
            self.calls.append(time.monotonic())
            time.sleep(4)
            return ProbeResult(True)

    stuck = Stuck('stuck', ['pass'], timeout=0.2)
    started = time.monotonic()
    outcome = Gate([stuck, Scripted('ok', ['pass'])], timeout=1.6, interval=0.2).wait_until_healthy()
    assert time.monotonic() - started < 3.5
    assert not outcome.passed and len(stuck.calls) == 1  # never a second probe piled up behind the stuck one
    errors = [state.last.error for state in outcome.states if state.probe is stuck]
    assert 'has still not returned' in errors[0] or 'abandoned' in errors[0]


def test_probe_exception_is_reported_not_raised():
    class Broken(Scripted):
        def probe(self, timeout):
            raise KeyError('boom')

    outcome = Gate([Broken('b', ['pass'])], timeout=0.2, interval=0.1).wait_until_healthy()
    assert not outcome.passed and 'probe raised KeyError' in outcome.states[0].last.error


def test_warnings_are_collected_once():
    class Warner(Scripted):
        def probe(self, timeout):
            return ProbeResult(True, warnings=['slow healthcheck'])

    outcome = Gate([Warner('w', ['pass'])], timeout=1, interval=0.1, stable_for=0.3).wait_until_healthy()
    assert outcome.warnings == ['slow healthcheck']


# ---------------------------------------------------------------- containers, against a scripted engine API


def container(cid, service, status='running', restarts=0, exit_code=0, health=None, healthcheck=None, oneoff=False):
    labels = {'com.docker.compose.project': 'shop', 'com.docker.compose.service': service,
              'com.docker.compose.oneoff': 'True' if oneoff else 'False'}
    state = {'Status': status, 'Running': status == 'running', 'ExitCode': exit_code, 'StartedAt': '2025-01-31T10:00:00Z'}
    if health:
        state['Health'] = {'Status': health, 'FailingStreak': 0, 'Log': [{'ExitCode': 1, 'Output': 'wget: refused', 'End': 'x'}]}
    return {'Id': cid * 8, 'Name': '/shop_%s_%s' % (service, cid), 'RestartCount': restarts, 'State': state,
            'Created': '2025-01-31T09:59:59.123Z', 'Image': 'sha256:' + 'f' * 64,
            'Config': {'Labels': labels, 'Image': 'app:v1', 'Healthcheck': healthcheck}}


class FakeApi:
    def __init__(self, *snapshots):
        self.snapshots = list(snapshots)
        self.current = {}
        self.timeout = None
        self.events_asked = []

    def containers(self, all=False, filters=None):
        assert all and filters == {'label': ['com.docker.compose.project=shop']}
        if self.snapshots:
            self.current = dict((item['Id'], item) for item in self.snapshots.pop(0))
        return [{'Id': cid, 'Labels': item['Config']['Labels']} for cid, item in self.current.items()]

    def inspect_container(self, cid):
        return self.current[cid]

    def logs(self, cid, stdout=True, stderr=True, tail=20, timestamps=False):
        return ('\n'.join('line %d of %s' % (index, cid[:4]) for index in range(1, 31)) + '\n').encode()

    def inspect_image(self, image_id):
        return {'RepoDigests': ['127.0.0.1:5000/app@sha256:' + 'a' * 64]}

    def events(self, since=None, until=None, filters=None, decode=False):
        self.events_asked.append((since, until, filters))
        return iter([{'Actor': {'Attributes': {'exitCode': '0'}}}, {'Actor': {'Attributes': {'exitCode': '3'}}}])


def containers_probe(api, **kwargs):
    probe = ContainersProbe('c', 'shop', docker_host='unix:///nonexistent.sock', **kwargs)
    probe._api = api
    return probe


def test_containers_running_without_health_pass():
    probe = containers_probe(FakeApi([container('a', 'web'), container('b', 'worker'), container('c', 'web', 'exited', oneoff=True)]))
    result = probe.probe(2)
    assert result.passed and result.status == '2/2 up'
    assert [row['name'] for row in result.evidence['containers']] == ['shop_web_a', 'shop_worker_b']


def test_containers_health_must_be_healthy_and_unhealthy_can_be_waited_out_when_asked():
    api = FakeApi([container('a', 'web', health='starting')], [container('a', 'web', health='unhealthy')],
                  [container('a', 'web', health='healthy')])
    probe = containers_probe(api, unhealthy_is_final=False)
    first = probe.probe(2)
    assert not first.passed and not first.fatal and 'health is still starting' in first.error
    second = probe.probe(2)
    assert not second.passed and not second.fatal and 'unhealthy' in second.error and 'wget: refused' in second.error
    assert second.unhealthy == ['a' * 8]
    assert probe.probe(2).passed


def test_docker_saying_unhealthy_is_final_by_default():
    api = FakeApi([container('a', 'web', health='starting')], [container('a', 'web', health='unhealthy')])
    probe = containers_probe(api)
    assert not probe.probe(2).fatal, 'starting is not a verdict'
    verdict = probe.probe(2)
    assert verdict.fatal and not verdict.passed
    assert 'unhealthy by its own HEALTHCHECK' in verdict.error and 'wget: refused' in verdict.error, verdict.error


def test_containers_restart_count_rising_is_a_crash_loop():
    api = FakeApi([container('a', 'web', restarts=2)], [container('a', 'web', restarts=3)])
    probe = containers_probe(api)
    assert probe.probe(2).passed  # restarts before the gate started are history, not a loop
    result = probe.probe(2)
    assert result.fatal and 'crash loop' in result.error and 'last exit code 3' in result.error
    assert 'last log line: line 30 of aaaa' in result.error
    assert result.evidence['containers'][0]['exit_code'] == 3
    assert api.events_asked[0][2] == {'container': 'a' * 8, 'event': 'die'}


def test_containers_running_for_judges_a_running_stack_in_one_look():
    settled = container('a', 'web', restarts=4)  # started 2025-01-31: long ago, restarts before that are history
    fresh = container('b', 'worker')
    started = time.time() - 0.5
    fresh['State']['StartedAt'] = '%s.%09dZ' % (time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(started)),
                                                int(started % 1 * 1e9))
    result = containers_probe(FakeApi([settled, fresh]), running_for=30).probe(2)
    assert not result.passed and not result.fatal
    assert re.search(r'shop_worker_b has run for \d+\.\ds, less than running_for 30s$', result.error), result.error
    assert 'shop_web_a' not in result.error
    assert containers_probe(FakeApi([settled]), running_for=2).probe(2).passed
    never = container('c', 'web')
    never['State']['StartedAt'] = '0001-01-01T00:00:00Z'
    assert 'an unknown time' in containers_probe(FakeApi([never]), running_for=2).probe(2).error


def test_running_seconds_reads_the_engines_started_at():
    now = 1738317600.0  # 2025-01-31T10:00:00Z
    assert running_seconds('2025-01-31T09:59:57.500000000Z', now) == pytest.approx(2.5)
    assert running_seconds('2025-01-31T10:00:00Z', now) == 0.0
    assert running_seconds('0001-01-01T00:00:00Z', now) is None
    assert running_seconds('', now) is None and running_seconds(None, now) is None


def test_containers_restarting_or_exited_fail_fast():
    restarting = containers_probe(FakeApi([container('a', 'web', 'restarting', restarts=1, exit_code=1)])).probe(2)
    assert restarting.fatal and 'exit code 1' in restarting.error
    exited = containers_probe(FakeApi([container('a', 'web', 'exited', exit_code=137)])).probe(2)
    assert exited.fatal and 'exit code 137' in exited.error and 'will not be restarted' in exited.error
    created = containers_probe(FakeApi([container('a', 'web', 'created')])).probe(2)
    assert not created.passed and not created.fatal and 'not running' in created.error


def test_containers_services_and_replicas():
    snapshot = [container('a', 'web'), container('b', 'worker')]
    assert containers_probe(FakeApi(snapshot), services=['web']).probe(2).passed
    missing = containers_probe(FakeApi(snapshot), services=['web', 'cron']).probe(2)
    assert not missing.passed and missing.evidence['missing_services'] == ['cron']
    short = containers_probe(FakeApi(snapshot), replicas={'worker': 2}).probe(2)
    assert not short.passed and 'service worker has 1 of 2 replicas' in short.error
    empty = containers_probe(FakeApi([])).probe(2)
    assert not empty.passed and 'no containers labelled com.docker.compose.project=shop' in empty.error


def test_containers_warn_when_healthcheck_outlasts_the_gate():
    slow = {'Test': ['CMD', 'true'], 'Interval': 30 * 10 ** 9, 'StartPeriod': 60 * 10 ** 9, 'Retries': 3}
    api = FakeApi([container('a', 'web', health='starting', healthcheck=slow)], [container('a', 'web', health='starting', healthcheck=slow)])
    probe = containers_probe(api, gate_timeout=20)
    first = probe.probe(2)
    assert len(first.warnings) == 1 and '150s' in first.warnings[0] and 'gate timeout 20s' in first.warnings[0]
    assert probe.probe(2).warnings == []  # once per container
    quick = {'Test': ['CMD', 'true'], 'Interval': 10 ** 9, 'Retries': 2}
    assert containers_probe(FakeApi([container('a', 'web', health='healthy', healthcheck=quick)]), gate_timeout=20).probe(2).warnings == []


def test_containers_logs():
    probe = containers_probe(FakeApi([container('a', 'web')]))
    probe.probe(2)
    logs = probe.collect_logs(['a' * 8], 5)
    assert logs == {'shop_web_a': ['line %d of aaaa' % index for index in range(26, 31)]}


def test_containers_engine_down_is_unreachable():
    probe = ContainersProbe('c', 'shop', docker_host='unix:///run/sdt-gate-no-such.sock')
    result = probe.probe(1)
    assert result.unreachable and not result.fatal and 'unix:///run/sdt-gate-no-such.sock' in result.error


def test_containers_pinned_digests():
    snapshot = [container('a', 'web'), container('b', 'worker')]
    good = containers_probe(FakeApi(snapshot), digests={'web': 'sha256:' + 'a' * 64,
                                                        'worker': {'image': 'app:v1', 'digest': 'sha256:' + 'a' * 64}})
    result = good.probe(2)
    assert result.passed and result.evidence['containers'][0]['digests'] == ['sha256:' + 'a' * 64]
    wrong = containers_probe(FakeApi(snapshot), digests={'web': '127.0.0.1:5000/app:v2@sha256:' + 'b' * 64}).probe(2)
    assert not wrong.passed and not wrong.fatal
    assert 'service web container shop_web_a runs image app:v1 (sha256:%s), not the pinned sha256:%s' % ('a' * 64, 'b' * 64) in wrong.error
    absent = containers_probe(FakeApi(snapshot), digests={'cron': 'sha256:' + 'a' * 64}).probe(2)
    assert not absent.passed and absent.evidence['missing_services'] == ['cron']
    with pytest.raises(ValueError):
        containers_probe(FakeApi(snapshot), digests={'web': 'latest'})


def test_a_containers_check_on_an_engine_address_no_round_can_reach_is_refused_at_once():
    with pytest.raises(ValueError) as info:
        build_probe({'type': 'containers', 'project': 'shop'}, 'stack', docker_host='ssh://deploy@host')
    assert 'not supported' in str(info.value) and 'unix:///var/run/docker.sock' in str(info.value)
    assert build_probe({'type': 'containers', 'project': 'shop'}, 'stack', docker_host='unix:///run/docker.sock')
