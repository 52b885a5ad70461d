# -*- coding: utf-8 -*-
# Copyright: (c) 2026, safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Docker Engine API client the modules use: the standard library only.

The modules ask the engine for a handful of things (list and inspect containers and images, remove what a reclaim
chose, start and stop a slot's containers, read logs and events, measure /system/df). A third-party SDK for that
cost every module run about 0.09 s of imports (it pulls in an HTTP stack) and a library to install on every host;
this client speaks the documented Engine API over the engine's Unix socket (or plain tcp://) with http.client.

Method names and arguments follow the low-level calls the modules made before, so a caller reads the same:
`client.api.containers(all=True, filters=...)`, `client.api.inspect_image(ref)`. An answer of 400 or more raises
EngineAPIError (NotFound for 404) carrying the engine's own message; a failure to reach the engine raises the
socket's own error (FileNotFoundError, ConnectionRefusedError, socket.timeout...), which describe_engine_error words.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
from urllib.parse import quote, urlencode, urlsplit

DEFAULT_TIMEOUT = 60
DEFAULT_ADDRESS = 'unix:///var/run/docker.sock'
USER_AGENT = 'safedeploy.compose'


class EngineAPIError(Exception):
    """The engine answered a call with an error status; str() carries its status and message."""

    def __init__(self, status_code, reason, explanation, method='', path=''):
        self.status_code = status_code
        self.reason = reason
        self.explanation = explanation
        self.method = method
        self.path = path
        super(EngineAPIError, self).__init__('%s %s: %s' % (status_code, reason, explanation))


class NotFound(EngineAPIError):
    """404: no such container, image, volume or network."""


class ImageNotFound(NotFound):
    """404 on an image."""


class EngineAddressError(ValueError):
    """docker_host names an address this client cannot reach."""


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the engine's Unix socket."""

    def __init__(self, path, timeout):
        http.client.HTTPConnection.__init__(self, 'localhost', timeout=timeout)
        self.socket_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def parse_engine_address(address):
    """('unix', path) or ('tcp', host, port) of a docker_host value; EngineAddressError naming the fix otherwise."""
    parts = urlsplit(address)
    if parts.scheme == 'unix':
        # unix:///run/docker.sock, or the older unix://run/docker.sock that Docker's clients read as the same path
        path = ('/' + parts.netloc + parts.path) if parts.netloc else parts.path
        if not path:
            raise EngineAddressError('docker_host %s names no socket path (unix:///var/run/docker.sock)' % address)
        return ('unix', path)
    if parts.scheme in ('tcp', 'http'):
        try:
            port = parts.port
        except ValueError:
            port = -1
        if not parts.hostname or port == -1:
            raise EngineAddressError('docker_host %s names no host and port (tcp://127.0.0.1:2375)' % address)
        return ('tcp', parts.hostname, port or 2375)
    raise EngineAddressError(
        'docker_host %s is not supported: the modules reach the engine on a unix:// socket or a plain tcp:// address. '
        'Run them on the Docker host itself (the roles do), with its socket (unix:///var/run/docker.sock)' % address)


def _filters(filters):
    """The engine's filters JSON: every value a list (a single string given is one value)."""
    return json.dumps(dict((key, value if isinstance(value, (list, tuple)) else [value])
                           for key, value in sorted((filters or {}).items())))


def _flag(value):
    return '1' if value else '0'


def demux_logs(raw):
    """The bytes of a log stream, stdout and stderr in the order the engine wrote them.

    Without a TTY the engine frames each write: a stream byte (0-2), three zero bytes, a big-endian length, the
    payload. With a TTY it sends the bytes as they are; anything that does not parse as frames is taken whole."""
    frames = []
    offset = 0
    while offset < len(raw):
        header = raw[offset:offset + 8]
        if len(header) < 8 or header[0] not in (0, 1, 2) or header[1:4] != b'\x00\x00\x00':
            return raw
        size = struct.unpack('>I', header[4:8])[0]
        if offset + 8 + size > len(raw):
            return raw
        frames.append(raw[offset + 8:offset + 8 + size])
        offset += 8 + size
    return b''.join(frames)


class EngineClient(object):
    """A Docker Engine API client; `api` is the client itself, for callers written as client.api.<call>."""

    def __init__(self, base_url=None, timeout=DEFAULT_TIMEOUT):
        self.base_url = base_url or DEFAULT_ADDRESS
        self.address = parse_engine_address(self.base_url)
        self.timeout = timeout
        self.api = self
        self._prefix = None  # /v<API version>, from the engine's answer to a ping

    # ------------------------------------------------------------ transport

    def _connection(self, timeout):
        if self.address[0] == 'unix':
            return _UnixConnection(self.address[1], timeout)
        return http.client.HTTPConnection(self.address[1], self.address[2], timeout=timeout)

    def _call(self, method, path, params=None, body=None, extra_timeout=0, not_found=NotFound, ok=()):
        """(status, headers, body bytes) of one call, a new connection each (a Unix socket connects in microseconds
        and nothing is left half-read between calls)."""
        query = urlencode([(key, value) for key, value in (params or {}).items() if value is not None])
        url = self._version_prefix() + path + ('?' + query if query else '')
        headers = {'User-Agent': USER_AGENT, 'Host': 'docker'}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode('utf-8')
            headers['Content-Type'] = 'application/json'
        connection = self._connection(self.timeout + extra_timeout)
        try:
            connection.request(method, url, body=payload, headers=headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        if response.status >= 400 and response.status not in ok:
            try:
                explanation = json.loads(data.decode('utf-8')).get('message')
            except (ValueError, AttributeError, UnicodeDecodeError):
                explanation = None
            explanation = explanation or data.decode('utf-8', 'replace').strip() or response.reason
            error = not_found if response.status == 404 else EngineAPIError
            raise error(response.status, response.reason, explanation, method, path)
        return response.status, response.headers, data

    def _version_prefix(self):
        """Every call names the API version the engine speaks (its ping answers it in the API-Version header), as
        Docker's own clients do: a call without one is deprecated by the Engine API. Before the first ping, none."""
        if self._prefix is None:
            self._prefix = ''
            self.ping()
        return self._prefix

    def _json(self, method, path, params=None, body=None, **kwargs):
        _status, _headers, data = self._call(method, path, params=params, body=body, **kwargs)
        return json.loads(data.decode('utf-8')) if data.strip() else None

    @staticmethod
    def _path(template, *names):
        return template % tuple(quote(str(name), safe='/:') for name in names)

    # ------------------------------------------------------------ system

    def ping(self):
        """True when the engine answers; learns the API version to name in every later call."""
        self._prefix = self._prefix or ''
        _status, headers, _data = self._call('GET', '/_ping')
        version = (headers.get('API-Version') or '').strip()
        if version and all(part.isdigit() for part in version.split('.')):
            self._prefix = '/v' + version
        return True

    def info(self):
        return self._json('GET', '/info')

    def version(self):
        return self._json('GET', '/version')

    def df(self):
        return self._json('GET', '/system/df')

    def events(self, since=None, until=None, filters=None, decode=True):
        """The events between since and until (both given: the engine ends the answer at until), oldest first."""
        params = {'since': since, 'until': until, 'filters': _filters(filters) if filters else None}
        _status, _headers, data = self._call('GET', '/events', params=params)
        lines = [line for line in data.decode('utf-8', 'replace').splitlines() if line.strip()]
        return [json.loads(line) for line in lines] if decode else lines

    def close(self):
        """Nothing is held between calls."""

    # ------------------------------------------------------------ containers

    def containers(self, all=False, filters=None):  # pylint: disable=redefined-builtin
        return self._json('GET', '/containers/json', params={'all': _flag(all), 'filters': _filters(filters)}) or []

    def inspect_container(self, container):
        return self._json('GET', self._path('/containers/%s/json', container))

    def start(self, container):
        self._call('POST', self._path('/containers/%s/start', container), ok=(304,))

    def stop(self, container, timeout=None):
        """Stop with the engine's grace period `timeout` (the container's own when None); the call waits for it."""
        self._call('POST', self._path('/containers/%s/stop', container), params={'t': timeout},
                   extra_timeout=(timeout if timeout is not None else 10) + 5, ok=(304,))

    def remove_container(self, container, v=False, force=False):
        self._call('DELETE', self._path('/containers/%s', container), params={'v': _flag(v), 'force': _flag(force)})

    def logs(self, container, stdout=True, stderr=True, tail='all', timestamps=False):
        _status, _headers, data = self._call('GET', self._path('/containers/%s/logs', container), params={
            'stdout': _flag(stdout), 'stderr': _flag(stderr), 'tail': str(tail), 'timestamps': _flag(timestamps)})
        return demux_logs(data)

    # ------------------------------------------------------------ images

    def images(self):
        return self._json('GET', '/images/json') or []

    def inspect_image(self, image):
        return self._json('GET', self._path('/images/%s/json', image), not_found=ImageNotFound)

    def history(self, image):
        return self._json('GET', self._path('/images/%s/history', image), not_found=ImageNotFound) or []

    def remove_image(self, image, force=False, noprune=False):
        return self._json('DELETE', self._path('/images/%s', image), params={'force': _flag(force), 'noprune': _flag(noprune)},
                          not_found=ImageNotFound)

    def prune_builds(self, all=False):  # pylint: disable=redefined-builtin
        return self._json('POST', '/build/prune', params={'all': _flag(all)})

    # ------------------------------------------------------------ volumes and networks

    def volumes(self, filters=None):
        return (self._json('GET', '/volumes', params={'filters': _filters(filters) if filters else None}) or {}).get('Volumes') or []

    def create_volume(self, name, driver='local', driver_opts=None, labels=None):
        return self._json('POST', '/volumes/create', body={'Name': name, 'Driver': driver, 'DriverOpts': driver_opts or {},
                                                           'Labels': labels or {}})

    def remove_volume(self, name, force=False):
        self._call('DELETE', self._path('/volumes/%s', name), params={'force': _flag(force)})

    def networks(self, filters=None):
        return self._json('GET', '/networks', params={'filters': _filters(filters) if filters else None}) or []

    def create_network(self, name, driver='bridge', options=None, internal=False, attachable=False, labels=None):
        return self._json('POST', '/networks/create', body={
            'Name': name, 'Driver': driver, 'Options': options or {}, 'Internal': bool(internal),
            'Attachable': bool(attachable), 'Labels': labels or {}, 'CheckDuplicate': True})
