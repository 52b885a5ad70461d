"""A real HAProxy and plain Python HTTP backends for the engine-free traffic tests (no Docker): the files of one
supervised HAProxy in a temporary directory, backends answering their name, and a bounded client."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ansible_collections.safedeploy.compose.plugins.module_utils._haproxy import RuntimeAPI

# The marks of an engine-free test file that needs HAProxy.
HAPROXY_MARKS = [
    pytest.mark.engine_free,
    pytest.mark.skipif(not shutil.which('haproxy', path=os.environ.get('PATH', '') + ':/usr/sbin'),
                       reason='HAProxy is not installed (apt-get install haproxy; the test bed installs it)'),
]


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a health check that hangs up early is no news


class Backend(object):
    """An HTTP server on 127.0.0.1 answering its name; /slow answers after `slow` seconds."""

    def __init__(self, name, port, slow=2.0):
        self.name = name
        self.port = port
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def do_GET(self):  # noqa: N802 (the http.server API)
                if self.path == '/slow':
                    time.sleep(backend.slow)
                body = backend.name.encode()
                self.send_response(200)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.slow = slow
        self.server = QuietServer(('127.0.0.1', self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Proxy(object):
    """The files of one supervised HAProxy in a temporary directory, and the module arguments that use them."""

    def __init__(self, directory):
        self.dir = directory
        self.config = str(directory / 'haproxy.cfg')
        self.socket = str(directory / 'admin.sock')
        self.pid_file = str(directory / 'haproxy.pid')
        self.state_file = str(directory / 'server-state')
        self.api = RuntimeAPI(self.socket, timeout=5)

    def args(self, routes, **extra):
        args = dict(routes=routes, config_path=self.config, runtime_socket=self.socket, pid_file=self.pid_file,
                    master_socket=str(self.dir / 'master.sock'), service_manager='process', reload_timeout=20,
                    server_state_file=self.state_file)
        args.update(extra)
        return args

    def master(self):
        try:
            with open(self.pid_file) as handle:
                return int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self):
        pid = self.master()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and os.path.exists('/proc/%d' % pid):
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)


def get(port, path='/', timeout=10, method='GET', body=None):
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def route(name, port, blue, green=None, **extra):
    entry = dict(name=name, port=port, bind='127.0.0.1', blue=dict(port=blue), check_interval=200)
    entry.update(extra)
    if green is not None:
        entry['green'] = dict(port=green)
    return entry


class Load(object):
    """A bounded client: `rate` requests a second for `seconds` seconds on fresh connections, then it stops."""

    def __init__(self, port, rate=50, seconds=5.0):
        self.port, self.rate, self.seconds = port, rate, seconds
        self.ok = 0
        self.failures = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        start = time.monotonic()
        for number in range(int(self.rate * self.seconds)):
            delay = start + number / float(self.rate) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                status, _body = get(self.port, timeout=5)
                if status == 200:
                    self.ok += 1
                else:
                    self.failures.append('HTTP %d' % status)
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.thread.join(self.seconds + 30)


class FaultyBackend(object):
    """An HTTP server on 127.0.0.1 answering its name after `delay` seconds, and HTTP 500 to `error_ratio` of the
    requests, evenly spread (with 0.25, every fourth request), so that a window of requests holds that ratio."""

    def __init__(self, name, port, error_ratio=0.0, delay=0.0):
        self.name, self.port = name, port
        self.error_ratio, self.delay = error_ratio, delay
        self.served = 0
        self.lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def do_GET(self):  # noqa: N802 (the http.server API)
                length = int(self.headers.get('Content-Length') or 0)
                if length:
                    self.rfile.read(length)
                with backend.lock:
                    backend.served += 1
                    number = backend.served
                failing = int(number * backend.error_ratio) > int((number - 1) * backend.error_ratio)
                if backend.delay:
                    time.sleep(backend.delay)
                body = (b'failing ' if failing else b'') + backend.name.encode()
                self.send_response(500 if failing else 200)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET  # noqa: N815 (the http.server API)

            def log_message(self, *args):
                pass

        self.server = QuietServer(('127.0.0.1', self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def backends_fixture(ports, faulty_class=None):
    """A `backends` fixture for a test file: make(name, faulty=False, **kwargs) starts a backend on a port of `ports`;
    every backend it started is stopped at the end of the test."""
    @pytest.fixture
    def backends():
        started = []

        def make(name, faulty=False, **kwargs):
            backend = (faulty_class if faulty else Backend)(name, ports.take(), **kwargs)
            started.append(backend)
            return backend
        yield make
        for backend in started:
            backend.stop()
    return backends


def proxy_fixture():
    """A `proxy` fixture for a test file: the files of one supervised HAProxy in the test's temporary directory; its
    master is stopped at the end of the test."""
    @pytest.fixture
    def proxy(tmp_path):
        handle = Proxy(tmp_path)
        yield handle
        handle.stop()
    return proxy
