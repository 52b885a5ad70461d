# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private module_utils of safedeploy.compose: the health probes (http, tcp, containers, openapi)
# and the gate that polls them until a release is up, down, or out of time.
# Not a public API; it may change in any release.
#
# Every probe answers one question per call, ``probe(timeout) -> ProbeResult``, and keeps apart
# two kinds of "no":
#   * unreachable: the probe could not measure (DNS failure, connection refused, no answer in time,
#     engine not answering). The app may simply not be listening yet.
#   * wrong answer: the app answered, and the answer is wrong (status, body, JSON, missing API path,
#     container unhealthy). ``fatal`` marks the wrong answers no amount of waiting can fix (a crash loop).
#
# HTTP goes through the standard library (urllib.request over http.client and ssl), so a host needs no
# third-party HTTP library: connect and read timeouts, streaming with a byte limit, opt-in redirect following,
# and the exceptions told apart as "refused", "timed out" and "TLS rejected".

from __future__ import annotations

import json
import re
import socket
import threading
import time
from datetime import datetime, timezone

import base64
import http.client
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
import zlib

try:
    import yaml
    HAS_YAML = True
except ImportError:  # pragma: no cover - OpenAPI documents in JSON still work
    yaml = None
    HAS_YAML = False

from ansible_collections.safedeploy.compose.plugins.module_utils._compose import (
    ONEOFF_LABEL,
    PROJECT_LABEL,
    SERVICE_LABEL,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._engine import describe_engine_error
from ansible_collections.safedeploy.compose.plugins.module_utils._engine_api import (
    DEFAULT_ADDRESS,
    EngineClient,
    parse_engine_address,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._proxy_env import in_no_proxy_network

CHECK_TYPES = ('http', 'tcp', 'containers', 'openapi')
DEFAULT_CHECK_TIMEOUT = 5.0
BODY_EXCERPT_CHARS = 256          # what evidence keeps of a body
BODY_READ_LIMIT = 1 << 20         # what body_contains/body_regex/json/openapi get to see
MESSAGE_EXCERPT_CHARS = 120       # what a one-line error quotes of a body
MIN_PROBE_TIMEOUT = 1.0           # the last round before the deadline still gets this long
ABANDON_GRACE = 1.0               # a probe thread this late past its timeout is given up on
HTTP_METHODS = ('get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace')
# Docker's own defaults when a HEALTHCHECK leaves a field at 0
DOCKER_HEALTH_INTERVAL_NS = 30 * 10 ** 9
DOCKER_HEALTH_RETRIES = 3


class ProbeResult:
    """The answer of one probe call."""

    def __init__(self, passed, status=None, error=None, unreachable=False, fatal=False, evidence=None,
                 unhealthy=None, warnings=None):
        self.passed = bool(passed)
        self.status = status
        self.error = error
        self.unreachable = bool(unreachable) and not passed
        self.fatal = bool(fatal) and not passed
        self.evidence = evidence if evidence is not None else {}
        self.unhealthy = list(unhealthy or [])   # container ids whose logs are evidence
        self.warnings = list(warnings or [])

    def __repr__(self):
        return 'ProbeResult(passed=%r, status=%r, error=%r, unreachable=%r, fatal=%r)' % (
            self.passed, self.status, self.error, self.unreachable, self.fatal)


# ---------------------------------------------------------------- small text helpers

def one_line(text, limit=200):
    """Collapse whitespace so a message stays on one line, and cut it to limit characters."""
    text = ' '.join(str(text).split())
    if len(text) > limit:
        text = text[:limit - 3] + '...'
    return text


def redact_url(url):
    """The URL without user:password@ (what may appear in names, errors and evidence)."""
    match = re.match(r'^([a-zA-Z][a-zA-Z0-9+.-]*://)([^/@]*@)(.*)$', url or '')
    if match:
        return match.group(1) + '***@' + match.group(3)
    return url


def scrub(text, secrets):
    """Replace every secret in text by ********, so no error or evidence carries one."""
    if text is None:
        return None
    for secret in secrets:
        if secret:
            text = text.replace(secret, '********')
    return text


def _scrub_tree(value, secrets):
    if not any(secrets):
        return value
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, dict):
        return dict((key, _scrub_tree(item, secrets)) for key, item in value.items())
    if isinstance(value, list):
        return [_scrub_tree(item, secrets) for item in value]
    return value


def _exception_chain(exc):
    """exc and every exception it wraps (URLError.reason, __cause__, __context__, args), each once."""
    seen = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.append(current.__cause__)
        stack.append(current.__context__)
        stack.append(getattr(current, 'reason', None) if isinstance(getattr(current, 'reason', None), BaseException) else None)
        stack.extend(arg for arg in getattr(current, 'args', ()) if isinstance(arg, BaseException))


def describe_connection_error(exc, target, timeout):
    """A short, stable reason for a failed connection: refused, DNS, timeout, reset."""
    for item in _exception_chain(exc):
        if isinstance(item, socket.gaierror) or type(item).__name__ == 'NameResolutionError':
            return 'cannot resolve the host of %s (DNS lookup failed)' % target
    for item in _exception_chain(exc):
        if isinstance(item, ConnectionRefusedError):
            return 'connection to %s refused (nothing listening yet?)' % target
        if isinstance(item, (socket.timeout, TimeoutError)) or 'timed out' in str(item).lower():
            return 'no answer from %s within %ss' % (target, _seconds(timeout))
        # RemoteDisconnected is a ConnectionResetError too: the server hung up without a word, it did not reset
        if isinstance(item, http.client.HTTPException) or type(item).__name__ == 'ProtocolError':
            return 'connection to %s closed before an answer' % target
        if isinstance(item, ConnectionResetError):
            return 'connection to %s reset before an answer' % target
    return 'cannot connect to %s: %s' % (target, one_line(exc, 160))


def _seconds(value):
    value = float(value)
    return ('%d' % value) if value == int(value) else ('%.1f' % value)


def _now_iso():
    return datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')


# ---------------------------------------------------------------- http

class HttpAnswer:
    """What an HTTP endpoint answered (status line, a few headers, the first bytes of the body)."""

    def __init__(self, status, reason, headers, body, truncated, duration):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.truncated = truncated
        self.duration = duration

    def text(self):
        charset = None
        content_type = self.headers.get('content-type') or ''
        match = re.search(r'charset=([\w.-]+)', content_type, re.I)
        if match:
            charset = match.group(1)
        try:
            return self.body.decode(charset or 'utf-8', 'replace')
        except LookupError:
            return self.body.decode('utf-8', 'replace')


MAX_REDIRECTS = 30                # what follow_redirects follows before calling it a loop


class _TooManyRedirects(Exception):
    pass


class _BodyTooSlow(Exception):
    pass


def _split_credentials(url):
    """(url without user:password@, the Basic Authorization header those credentials make, or None)."""
    parts = urllib.parse.urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition('@')
    basic = None
    if at:
        user, _colon, password = userinfo.partition(':')
        user, password = urllib.parse.unquote(user), urllib.parse.unquote(password)
        if user or password:
            pair = '%s:%s' % (user, password)
            try:
                raw = pair.encode('latin-1')
            except UnicodeEncodeError:
                raw = pair.encode('utf-8')
            basic = 'Basic ' + base64.b64encode(raw).decode('ascii')
    # spaces and non-ASCII in the path or query are percent-encoded (what is already encoded stays as it is)
    safe = "!#$%&'()*+,/:;=?@[]~"
    return urllib.parse.urlunsplit((parts.scheme, hostport, urllib.parse.quote(parts.path, safe=safe),
                                    urllib.parse.quote(parts.query, safe=safe), '')), basic


def _ca_bundle():
    """A CA bundle named by REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE (honoured when the probes used requests)."""
    for name in ('REQUESTS_CA_BUNDLE', 'CURL_CA_BUNDLE'):
        value = os.environ.get(name)
        if value and os.path.isfile(value):
            return value
    return None


def _same_origin(old_url, new_url):
    """Whether an Authorization header may go along on a redirect from old_url to new_url (same host; port and
    scheme the same, or http on its default port going to https on its default port)."""
    old, new = urllib.parse.urlsplit(old_url), urllib.parse.urlsplit(new_url)
    if old.hostname != new.hostname:
        return False
    defaults = {'http': 80, 'https': 443}
    old_port, new_port = old.port or defaults.get(old.scheme), new.port or defaults.get(new.scheme)
    if old.scheme == 'http' and old_port == 80 and new.scheme == 'https' and new_port == 443:
        return True
    return old.scheme == new.scheme and old_port == new_port


class _Redirects(urllib.request.HTTPRedirectHandler):
    """follow_redirects: false leaves a 3xx as the answer; true follows up to MAX_REDIRECTS, the way requests did:
    302 and 303 (and a POST's 301) become GET, 307 and 308 keep the method, and the Authorization header goes
    along only to the same host."""

    max_repeats = max_redirections = MAX_REDIRECTS + 1   # counted in redirect_request

    def __init__(self, follow):
        self.follow = follow

    def http_error_302(self, req, fp, code, msg, headers):
        if not self.follow:
            return None   # the default handler raises HTTPError: the 3xx is the answer
        return urllib.request.HTTPRedirectHandler.http_error_302(self, req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        hops = getattr(req, 'redirect_hops', 0) + 1
        if hops > MAX_REDIRECTS:
            fp.close()
            raise _TooManyRedirects('Exceeded %d redirects.' % MAX_REDIRECTS)
        method = req.get_method()
        if method != 'HEAD' and (code in (302, 303) or (code == 301 and method == 'POST')):
            method = 'GET'
        kept = dict(req.headers)   # not the unredirected ones: Host and User-agent are made anew for newurl
        if code not in (307, 308):
            for name in ('Content-length', 'Content-type', 'Transfer-encoding'):
                kept.pop(name, None)
        kept.pop('Proxy-authorization', None)  # the proxy handler sets it again where the next hop uses a proxy
        if not _same_origin(req.full_url, newurl):
            kept.pop('Authorization', None)
        new = urllib.request.Request(newurl, headers=kept, method=method, origin_req_host=req.origin_req_host,
                                     unverifiable=True)
        new.redirect_hops = hops
        return new


class _Inflate:
    """Undoes a gzip or deflate Content-Encoding chunk by chunk (deflate: zlib-wrapped, or raw if that fails)."""

    def __init__(self, wbits, fallback_wbits=None):
        self._inflate = zlib.decompressobj(wbits)
        self._fallback = fallback_wbits
        self._seen = b''

    def decompress(self, data):
        if self._fallback is None:
            return self._inflate.decompress(data)
        self._seen += data
        try:
            out = self._inflate.decompress(data)
        except zlib.error:
            self._inflate = zlib.decompressobj(self._fallback)
            self._fallback, data, self._seen = None, self._seen, b''
            return self._inflate.decompress(data)
        if out:
            self._fallback, self._seen = None, b''
        return out

    def flush(self):
        return self._inflate.flush()


def _content_decoder(content_encoding):
    """What turns the body back into what the app wrote (requests decoded gzip and deflate); None for as sent."""
    coding = (content_encoding or '').strip().lower()
    if coding in ('gzip', 'x-gzip'):
        return _Inflate(16 + zlib.MAX_WBITS)
    if coding == 'deflate':
        return _Inflate(zlib.MAX_WBITS, -zlib.MAX_WBITS)
    return None


class HttpProbe:
    """An HTTP(S) request whose status, body, JSON fields must match."""

    kind = 'http'

    def __init__(self, name, url, method='GET', status=None, body_contains=None, body_regex=None, json_fields=None,
                 headers=None, bearer_token=None, validate_certs=True, follow_redirects=False,
                 timeout=DEFAULT_CHECK_TIMEOUT):
        if not re.match(r'^https?://[^/]', url or ''):
            raise ValueError('url %r is not an http:// or https:// URL' % redact_url(url))
        self.name = name
        self.url = url
        self.method = (method or 'GET').upper()
        self.statuses = [int(item) for item in (status or [200])]
        self.body_contains = body_contains
        self.body_regex = body_regex
        self._regex = re.compile(body_regex) if body_regex else None
        self.json_fields = dict(json_fields or {})
        self.headers = dict((str(key), str(value)) for key, value in (headers or {}).items())
        self.bearer_token = bearer_token
        self.validate_certs = validate_certs
        self.follow_redirects = follow_redirects
        self.timeout = float(timeout or DEFAULT_CHECK_TIMEOUT)
        self.secrets = [bearer_token] if bearer_token else []

    def _request(self):
        """The first request: credentials out of the URL into a header, the bearer token last (it wins)."""
        url, basic = _split_credentials(self.url)
        headers = {'Accept': '*/*', 'Accept-Encoding': 'gzip, deflate'}
        headers.update(self.headers)
        if self.method not in ('GET', 'HEAD') and not any(key.lower() == 'content-length' for key in headers):
            headers['Content-Length'] = '0'
        # Set here, never looked up: urllib does not read ~/.netrc, so nothing on the host can replace the token.
        if basic:
            headers['Authorization'] = basic
        if self.bearer_token:
            headers['Authorization'] = 'Bearer ' + self.bearer_token
        return urllib.request.Request(url, headers=headers, method=self.method)

    def _opener(self):
        if self.validate_certs:
            context = ssl.create_default_context(cafile=_ca_bundle())
        else:
            # the user chose this for the endpoint: no verification, and (unlike urllib3) no warning to silence
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        opener = urllib.request.OpenerDirector()
        # ProxyHandler() reads HTTP(S)_PROXY and NO_PROXY from the environment, as requests did; a NO_PROXY network
        # (10.0.0.0/8), which it does not read, means no proxy
        proxies = {} if in_no_proxy_network(self.url) else None
        for handler in (urllib.request.ProxyHandler(proxies), urllib.request.UnknownHandler(), urllib.request.HTTPHandler(),
                        urllib.request.HTTPSHandler(context=context), urllib.request.HTTPDefaultErrorHandler(),
                        _Redirects(self.follow_redirects), urllib.request.HTTPErrorProcessor()):
            opener.add_handler(handler)
        return opener

    def exchange(self, timeout):
        """Send the request; return (HttpAnswer, None) or (None, ProbeResult describing the failure)."""
        target = redact_url(self.url)
        started = time.monotonic()
        deadline = started + timeout
        evidence = {'url': target, 'method': self.method}
        response = None
        answered = False   # a socket timeout before the status line is a read timeout; after it, a body that stalled
        try:
            try:
                response = self._opener().open(self._request(), timeout=timeout)
            except urllib.error.HTTPError as exc:
                # 4xx, 5xx, and 3xx not followed: answers to judge, not failures
                response = exc
            answered = True
            stream = getattr(response, 'fp', None) if isinstance(response, urllib.error.HTTPError) else response
            status = response.code if isinstance(response, urllib.error.HTTPError) else response.status
            reason = getattr(stream, 'reason', None) or getattr(response, 'reason', None) or ''
            headers = {}
            for key, value in (response.headers or {}).items():
                key = key.lower()
                headers[key] = value if key not in headers else headers[key] + ', ' + value
            decoder = _content_decoder(headers.get('content-encoding'))
            chunks = []
            size = 0
            truncated = False
            while stream is not None:
                data = stream.read1(8192) if hasattr(stream, 'read1') else stream.read(8192)
                chunk = decoder.decompress(data) if decoder and data else data
                if not data and decoder:
                    chunk = decoder.flush()
                if chunk:
                    chunks.append(chunk)
                    size += len(chunk)
                    if size >= BODY_READ_LIMIT:
                        truncated = True
                        break
                if not data:
                    break
                if time.monotonic() > deadline:
                    raise _BodyTooSlow('body not complete within %ss' % _seconds(timeout))
            body = b''.join(chunks)[:BODY_READ_LIMIT]
            answer = HttpAnswer(status, reason, headers, body, truncated, round(time.monotonic() - started, 3))
        except _TooManyRedirects as exc:
            evidence['duration'] = round(time.monotonic() - started, 3)
            return None, ProbeResult(False, error='%s redirects in a loop: %s' % (target, one_line(exc, 120)), evidence=evidence)
        except (OSError, http.client.HTTPException, ValueError, zlib.error) as exc:
            evidence['duration'] = round(time.monotonic() - started, 3)
            return None, self._failure(exc, answered, target, timeout, evidence)
        finally:
            if response is not None:
                response.close()
        return answer, None

    def _failure(self, exc, answered, target, timeout, evidence):
        """The ProbeResult for an exchange that raised exc (answered: the status line had come)."""
        tls = [item for item in _exception_chain(exc) if isinstance(item, ssl.SSLError)]
        if tls:
            return ProbeResult(False, error=scrub('TLS handshake with %s rejected: %s (fix the certificate, or set '
                                                  'validate_certs: false for a self-signed test endpoint)'
                                                  % (target, one_line(tls[0], 160)), self.secrets), evidence=evidence)
        if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, (socket.timeout, TimeoutError)):
            # urllib wraps what goes wrong while connecting (and sending) in URLError
            return ProbeResult(False, unreachable=True, evidence=evidence,
                               error='no connection to %s within %ss' % (target, _seconds(timeout)))
        if isinstance(exc, _BodyTooSlow) or (not answered and isinstance(exc, (socket.timeout, TimeoutError))):
            return ProbeResult(False, unreachable=True, evidence=evidence,
                               error='connected to %s but no answer within %ss' % (target, _seconds(timeout)))
        return ProbeResult(False, unreachable=True, evidence=evidence,
                           error=scrub(describe_connection_error(exc, target, timeout), self.secrets))

    def answer_evidence(self, answer):
        evidence = {
            'url': redact_url(self.url),
            'method': self.method,
            'status': answer.status,
            'reason': answer.reason,
            'content_type': answer.headers.get('content-type'),
            'body': answer.text()[:BODY_EXCERPT_CHARS],
            'duration': answer.duration,
        }
        if answer.headers.get('location'):
            evidence['location'] = answer.headers['location']
        return evidence

    def probe(self, timeout=None):
        answer, failure = self.exchange(timeout or self.timeout)
        if failure is not None:
            return failure
        evidence = self.answer_evidence(answer)
        text = answer.text()
        error = None
        if answer.status not in self.statuses:
            error = 'HTTP %d %s (expected %s)' % (answer.status, answer.reason, ' or '.join(str(s) for s in self.statuses))
            if evidence.get('location'):
                error += ', Location: %s' % evidence['location']
            error += '; body: %s' % (one_line(text[:BODY_EXCERPT_CHARS], MESSAGE_EXCERPT_CHARS) or '(empty)')
        elif self.body_contains is not None and self.body_contains not in text:
            error = 'HTTP %d but the body does not contain %r; body: %s' % (
                answer.status, self.body_contains, one_line(text, MESSAGE_EXCERPT_CHARS) or '(empty)')
        elif self._regex is not None and not self._regex.search(text):
            error = 'HTTP %d but the body does not match /%s/; body: %s' % (
                answer.status, self.body_regex, one_line(text, MESSAGE_EXCERPT_CHARS) or '(empty)')
        elif self.json_fields:
            error = self._json_mismatch(answer.status, text)
        error = scrub(error, self.secrets)
        return ProbeResult(error is None, status=answer.status, error=error, evidence=_scrub_tree(evidence, self.secrets))

    def _json_mismatch(self, status, text):
        try:
            document = json.loads(text)
        except ValueError as exc:
            return 'HTTP %d but the body is not JSON (%s); body: %s' % (status, exc, one_line(text, MESSAGE_EXCERPT_CHARS) or '(empty)')
        problems = []
        for path, expected in self.json_fields.items():
            found, actual = json_lookup(document, path)
            if not found:
                problems.append('%s is missing' % path)
            elif not same_value(actual, expected):
                problems.append('%s is %s, expected %s' % (path, json.dumps(actual), json.dumps(expected)))
        if problems:
            return 'HTTP %d but JSON %s' % (status, '; '.join(problems))
        return None


def json_lookup(document, path):
    """Follow a dotted path (list items by index: items.0.name); return (found, value)."""
    current = document
    for part in str(path).split('.'):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and re.match(r'^-?\d+$', part) and -len(current) <= int(part) < len(current):
            current = current[int(part)]
        else:
            return False, None
    return True, current


def _as_text(value):
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if value is None:
        return 'null'
    return str(value)


def same_value(actual, expected):
    """Equality for JSON checks; a YAML "ok"/"1"/"true" also matches the JSON scalar it spells."""
    if isinstance(actual, (dict, list)) or isinstance(expected, (dict, list)):
        return actual == expected
    if isinstance(actual, bool) != isinstance(expected, bool):
        return _as_text(actual) == _as_text(expected)
    if actual == expected:
        return True
    return isinstance(actual, str) != isinstance(expected, str) and _as_text(actual) == _as_text(expected)


# ---------------------------------------------------------------- openapi

def parse_openapi_entry(entry):
    """"GET /api/v1/boards" -> ('get', '/api/v1/boards'); "/health" -> (None, '/health')."""
    parts = str(entry).split()
    if len(parts) == 1 and parts[0].startswith('/'):
        return None, parts[0]
    if len(parts) == 2 and parts[0].lower() in HTTP_METHODS and parts[1].startswith('/'):
        return parts[0].lower(), parts[1]
    raise ValueError('OpenAPI path entry %r is not "METHOD /path" or "/path"' % entry)


class OpenApiProbe:
    """An OpenAPI (or Swagger 2) document that must list the given operations."""

    kind = 'openapi'

    def __init__(self, name, url, paths, headers=None, bearer_token=None, validate_certs=True, follow_redirects=False,
                 timeout=DEFAULT_CHECK_TIMEOUT):
        self.name = name
        self.http = HttpProbe(name, url, method='GET', status=[200], headers=headers, bearer_token=bearer_token,
                              validate_certs=validate_certs, follow_redirects=follow_redirects, timeout=timeout)
        self.entries = [(entry, parse_openapi_entry(entry)) for entry in paths]
        self.timeout = self.http.timeout
        self.secrets = self.http.secrets

    def probe(self, timeout=None):
        answer, failure = self.http.exchange(timeout or self.timeout)
        if failure is not None:
            return failure
        evidence = _scrub_tree(self.http.answer_evidence(answer), self.secrets)
        if answer.status != 200:
            return ProbeResult(False, status=answer.status, evidence=evidence, error=scrub(
                'HTTP %d %s fetching the OpenAPI document (expected 200); body: %s'
                % (answer.status, answer.reason, one_line(answer.text()[:BODY_EXCERPT_CHARS], MESSAGE_EXCERPT_CHARS) or '(empty)'),
                self.secrets))
        document, problem = self._load(answer)
        if problem:
            return ProbeResult(False, status=answer.status, error=problem, evidence=evidence)
        paths = document['paths']
        missing = []
        for entry, (method, path) in self.entries:
            item = paths.get(path)
            if not isinstance(item, dict) or (method is not None and method not in item):
                missing.append(entry)
        evidence['missing'] = missing
        evidence['document_paths'] = len(paths)
        info = document.get('info') if isinstance(document.get('info'), dict) else {}
        if info.get('version') is not None:
            evidence['api_version'] = str(info.get('version'))
        del evidence['body']  # the document itself is not evidence worth keeping
        if missing:
            return ProbeResult(False, status=answer.status, evidence=evidence,
                               error='missing from the OpenAPI document: %s' % ', '.join(missing))
        return ProbeResult(True, status=answer.status, evidence=evidence)

    @staticmethod
    def _load(answer):
        text = answer.text()
        if answer.truncated:
            return None, 'the OpenAPI document is larger than %d bytes' % BODY_READ_LIMIT
        try:
            document = json.loads(text)
        except ValueError as exc:
            if not HAS_YAML:
                return None, 'the OpenAPI document is not JSON (%s) and PyYAML is not installed to read YAML' % exc
            try:
                document = yaml.safe_load(text)
            except yaml.YAMLError as yaml_exc:
                return None, 'the OpenAPI document is neither JSON nor YAML: %s' % one_line(yaml_exc, 120)
        if not isinstance(document, dict) or not isinstance(document.get('paths'), dict):
            return None, 'not an OpenAPI document (no "paths" object); body: %s' % one_line(text, MESSAGE_EXCERPT_CHARS)
        return document, None


# ---------------------------------------------------------------- tcp

class TcpProbe:
    """A TCP port that must accept a connection."""

    kind = 'tcp'

    def __init__(self, name, host, port, timeout=DEFAULT_CHECK_TIMEOUT):
        self.name = name
        self.host = host
        self.port = int(port)
        self.timeout = float(timeout or DEFAULT_CHECK_TIMEOUT)
        self.secrets = []

    def probe(self, timeout=None):
        timeout = timeout or self.timeout
        target = '%s:%d' % (self.host, self.port)
        started = time.monotonic()
        try:
            conn = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as exc:
            return ProbeResult(False, unreachable=True, error=describe_connection_error(exc, target, timeout),
                               evidence={'host': self.host, 'port': self.port, 'duration': round(time.monotonic() - started, 3)})
        conn.close()
        return ProbeResult(True, status='open', evidence={'host': self.host, 'port': self.port,
                                                          'duration': round(time.monotonic() - started, 3)})


# ---------------------------------------------------------------- containers

def healthcheck_report_seconds(healthcheck):
    """Seconds Docker may need to settle a container's health: start_period + interval x retries."""
    if not healthcheck or not healthcheck.get('Test') or healthcheck['Test'][0] == 'NONE':
        return None
    interval = (healthcheck.get('Interval') or DOCKER_HEALTH_INTERVAL_NS) / 1e9
    retries = healthcheck.get('Retries') or DOCKER_HEALTH_RETRIES
    start_period = (healthcheck.get('StartPeriod') or 0) / 1e9
    return start_period + interval * retries, start_period, interval, retries


class ContainersProbe:
    """The containers of a compose project, found by label: running, healthy, not crash-looping."""

    kind = 'containers'

    def __init__(self, name, project, services=None, replicas=None, digests=None, docker_host=None, engine_timeout=60,
                 gate_timeout=None, timeout=DEFAULT_CHECK_TIMEOUT, unhealthy_is_final=True, running_for=0):
        self.name = name
        self.project = project
        self.replicas = dict((str(key), int(value)) for key, value in (replicas or {}).items())
        self.digests = dict((str(key), pinned_digest(value)) for key, value in (digests or {}).items())
        self.services = list(services or [])
        self.unhealthy_is_final = unhealthy_is_final
        self.running_for = float(running_for or 0)  # seconds each container must have run without a restart
        for service in list(self.replicas) + list(self.digests):
            if service not in self.services and self.services:
                self.services.append(service)
        self._image_digests = {}  # image id -> set of its repo digests
        self.docker_host = docker_host
        parse_engine_address(docker_host or DEFAULT_ADDRESS)  # an address no round can reach: said now
        self.engine_timeout = engine_timeout
        self.gate_timeout = gate_timeout
        self.timeout = float(timeout or DEFAULT_CHECK_TIMEOUT)
        self.secrets = []
        self._api = None
        self._restarts = {}       # container id -> RestartCount at the last look
        self._warned = set()      # container ids already warned about slow healthchecks
        self._names = {}          # container id -> name, for logs
        self._seen_at = _unix_now_text()

    def _client(self, timeout):
        call_timeout = max(1, int(min(float(self.engine_timeout or 60), float(timeout)) + 0.999))
        if self._api is None:
            self._api = EngineClient(self.docker_host, timeout=call_timeout)
        self._api.timeout = call_timeout
        return self._api

    def probe(self, timeout=None):
        timeout = timeout or self.timeout
        try:
            return self._probe(self._client(timeout))
        except Exception as exc:  # any engine failure means "could not measure", not "unhealthy"
            self._api = None  # reconnect next round
            return ProbeResult(False, unreachable=True,
                               error=describe_engine_error(exc, self.docker_host, 'list the containers of project %s' % self.project))

    def _probe(self, api):
        listed = api.containers(all=True, filters={'label': ['%s=%s' % (PROJECT_LABEL, self.project)]})
        infos = []
        for item in listed:
            labels = item.get('Labels') or {}
            if labels.get(ONEOFF_LABEL, 'False') == 'True':
                continue  # `compose run` containers are not part of the release
            if self.services and labels.get(SERVICE_LABEL) not in self.services:
                continue
            try:
                infos.append(api.inspect_container(item['Id']))
            except Exception as exc:  # removed between list and inspect: a recreate in progress
                if getattr(exc, 'status_code', None) != 404:
                    raise
        infos.sort(key=lambda info: (info['Config'].get('Labels', {}).get(SERVICE_LABEL) or '', info['Name']))

        containers = []
        problems = []
        fatal = []
        unhealthy = []
        warnings = []
        up_by_service = {}
        for info in infos:
            row, problem, is_fatal, warning = self._judge(api, info)
            containers.append(row)
            if warning:
                warnings.append(warning)
            if problem:
                problems.append(problem)
                unhealthy.append(info['Id'])
                if is_fatal:
                    fatal.append(problem)
            else:
                up_by_service[row['service']] = up_by_service.get(row['service'], 0) + 1

        missing = []
        expected = dict((service, 1) for service in list(self.services) + list(self.digests))
        expected.update(self.replicas)
        for service, wanted in sorted(expected.items()):
            total = sum(1 for row in containers if row['service'] == service)
            if total == 0:
                missing.append(service)
                problems.append('service %s has no container in project %s' % (service, self.project))
            elif total < wanted:
                problems.append('service %s has %d of %d replicas' % (service, total, wanted))
        if not infos and not self.services:
            problems.append('no containers labelled %s=%s' % (PROJECT_LABEL, self.project))

        up = sum(up_by_service.values())
        status = '%d/%d up' % (up, len(containers))
        evidence = {'project': self.project, 'containers': containers}
        if missing:
            evidence['missing_services'] = missing
        if fatal:
            return ProbeResult(False, status=status, fatal=True, error='; '.join(fatal), evidence=evidence,
                               unhealthy=unhealthy, warnings=warnings)
        if problems:
            return ProbeResult(False, status=status, error='; '.join(problems), evidence=evidence, unhealthy=unhealthy,
                               warnings=warnings)
        return ProbeResult(True, status=status, evidence=evidence, warnings=warnings)

    def _judge(self, api, info):
        """One container: its evidence row, what is wrong (or None), whether waiting cannot fix it, a warning."""
        cid = info['Id']
        name = info['Name'].lstrip('/')
        self._names[cid] = name
        labels = info['Config'].get('Labels') or {}
        state = info.get('State') or {}
        status = state.get('Status') or ('running' if state.get('Running') else 'unknown')
        health = state.get('Health')
        restarts = info.get('RestartCount') or 0
        previous = self._restarts.get(cid)
        self._restarts[cid] = restarts
        row = {
            'name': name,
            'id': cid[:12],
            'service': labels.get(SERVICE_LABEL),
            'image': info['Config'].get('Image'),
            'state': status,
            'health': health.get('Status') if health else None,
            'exit_code': state.get('ExitCode'),
            'restart_count': restarts,
            'started_at': state.get('StartedAt'),
        }

        warning = None
        settle = healthcheck_report_seconds(info['Config'].get('Healthcheck'))
        if settle and self.gate_timeout and settle[0] > self.gate_timeout and cid not in self._warned:
            self._warned.add(cid)
            warning = ('container %s (service %s): Docker may need %ss to report its health (start_period %ss + '
                       'interval %ss x %d retries), longer than the gate timeout %ss; raise timeout or shorten the '
                       'HEALTHCHECK settings' % (name, row['service'], _seconds(settle[0]), _seconds(settle[1]),
                                                 _seconds(settle[2]), settle[3], _seconds(self.gate_timeout)))

        where = 'service %s container %s' % (row['service'], name)
        if status == 'restarting':
            return row, ('crash loop: %s is restarting after exit code %s (restarted %d times)%s'
                         % (where, state.get('ExitCode'), restarts, self._last_line(api, cid))), True, warning
        if status in ('exited', 'dead'):
            return row, ('%s %s with exit code %s and will not be restarted%s'
                         % (where, status, state.get('ExitCode'), self._last_line(api, cid))), True, warning
        if previous is not None and restarts > previous:
            code = self._last_exit_code(api, cid, info)
            row['exit_code'] = code
            return row, ('crash loop: %s restarted %d time(s) during the gate (restart count %d), last exit code %s%s'
                         % (where, restarts - previous, restarts, code, self._last_line(api, cid))), True, warning
        wrong_image = self._wrong_image(api, info, row)
        if wrong_image:
            return row, '%s %s' % (where, wrong_image), False, warning
        if status != 'running':
            return row, '%s is %s, not running' % (where, status), False, warning
        if self.running_for > 0:
            # One look at the engine's StartedAt stands for watching the container run that long without a restart.
            ran = running_seconds(state.get('StartedAt'))
            if ran is None or ran < self.running_for:
                return row, ('%s has run for %s, less than running_for %ss' % (
                    where, 'an unknown time' if ran is None else '%.1fs' % max(ran, 0.0), _seconds(self.running_for))), False, warning
        if health is None:
            return row, None, False, warning
        if health.get('Status') == 'healthy':
            return row, None, False, warning
        last_log = (health.get('Log') or [{}])[-1]
        output = one_line(last_log.get('Output') or '', 100)
        detail = ''
        if last_log:
            detail = ' (last healthcheck exit code %s%s)' % (last_log.get('ExitCode'), (': ' + output) if output else '')
        if health.get('Status') == 'starting':
            return row, '%s health is still starting%s' % (where, detail if last_log.get('End') else ''), False, warning
        if health.get('Status') == 'unhealthy' and self.unhealthy_is_final:
            # Docker's own verdict: its HEALTHCHECK failed `retries` times in a row after the start period
            return row, ('%s is unhealthy by its own HEALTHCHECK%s, failing streak %s%s'
                         % (where, detail, health.get('FailingStreak'), self._last_line(api, cid))), True, warning
        return row, '%s is %s%s, failing streak %s' % (where, health.get('Status'), detail, health.get('FailingStreak')), \
            False, warning

    def _wrong_image(self, api, info, row):
        """Why the container does not run its service's pinned digest, or None (also when nothing is pinned)."""
        wanted = self.digests.get(row['service'])
        if not wanted:
            return None
        image_id = info.get('Image') or ''
        if image_id not in self._image_digests:
            found = set(re.findall(r'sha256:[0-9a-f]{64}', info['Config'].get('Image') or ''))
            try:
                for repo_digest in api.inspect_image(image_id).get('RepoDigests') or []:
                    found.update(re.findall(r'sha256:[0-9a-f]{64}', repo_digest))
            except Exception as exc:  # an image being removed: judge by the reference alone
                if getattr(exc, 'status_code', None) != 404:
                    raise
            self._image_digests[image_id] = found
        found = self._image_digests[image_id]
        row['digests'] = sorted(found)
        if wanted in found:
            return None
        return 'runs image %s (%s), not the pinned %s' % (row['image'], ', '.join(sorted(found)) or 'no repo digest', wanted)

    def _last_line(self, api, cid):
        try:
            lines = _log_lines(api, cid, 1)
        except Exception:  # logs are a courtesy in the message; the full logs are fetched later
            return ''
        return ('; last log line: %s' % one_line(lines[-1], 160)) if lines else ''

    def _last_exit_code(self, api, cid, info):
        """The exit code of the latest run: the running state has reset it, the engine's die events keep it."""
        try:
            events = api.events(since=self._seen_at_for(info), until=_unix_now_text(),
                                filters={'container': cid, 'event': 'die'}, decode=True)
            code = None
            for event in events:
                attributes = (event.get('Actor') or {}).get('Attributes') or {}
                if attributes.get('exitCode') is not None:
                    code = int(attributes['exitCode'])
            return code
        except Exception:
            return None

    def _seen_at_for(self, info):
        created = info.get('Created') or ''
        match = re.match(r'^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)', created)
        if match:
            stamp = datetime.strptime(match.group(1), '%Y-%m-%dT%H:%M:%S').replace(tzinfo=timezone.utc).timestamp()
            return '%d' % (int(stamp) - 1)
        return self._seen_at

    def collect_logs(self, container_ids, lines):
        """{container name: [last lines]} for the given ids; an error is reported in place of the lines."""
        logs = {}
        if not container_ids or lines <= 0:
            return logs
        try:
            api = self._client(max(5.0, self.timeout))
        except Exception as exc:
            return dict((self._names.get(cid, cid[:12]), ['(logs unavailable: %s)' % one_line(exc, 160)]) for cid in container_ids)
        for cid in container_ids:
            name = self._names.get(cid, cid[:12])
            try:
                logs[name] = _log_lines(api, cid, lines)
            except Exception as exc:
                logs[name] = ['(logs unavailable: %s)' % one_line(exc, 160)]
        return logs

    def known_container_ids(self):
        return list(self._names)


def pinned_digest(value):
    """The sha256:... of a pin given as a digest, a repo@digest reference, or a ledger entry {image, digest}."""
    if isinstance(value, dict):
        value = value.get('digest') or value.get('image') or ''
    match = re.search(r'sha256:[0-9a-f]{64}', str(value))
    if not match:
        raise ValueError('digest %r is not sha256:<64 hex digits> or a reference pinned to one' % (value,))
    return match.group(0)


def _log_lines(api, cid, lines):
    raw = api.logs(cid, stdout=True, stderr=True, tail=lines, timestamps=False)
    if isinstance(raw, bytes):
        raw = raw.decode('utf-8', 'replace')
    return [line.rstrip('\r') for line in raw.splitlines()][-lines:]


def running_seconds(started_at, now=None):
    """Seconds since the engine's StartedAt (RFC 3339 with nanoseconds, UTC), or None when it cannot be read."""
    match = re.match(r'^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z$', started_at or '')
    if not match or match.group(1).startswith('0001-'):  # the zero time: never started
        return None
    stamp = datetime.strptime(match.group(1), '%Y-%m-%dT%H:%M:%S').replace(tzinfo=timezone.utc).timestamp()
    stamp += float('0' + match.group(2)) if match.group(2) else 0.0
    return (time.time() if now is None else now) - stamp


def _unix_now_text():
    return '%.9f' % time.time()


# ---------------------------------------------------------------- building probes from check specs

def default_check_name(spec):
    kind = spec.get('type')
    if kind == 'http':
        return 'http %s %s' % ((spec.get('method') or 'GET').upper(), redact_url(spec.get('url')))
    if kind == 'tcp':
        return 'tcp %s:%s' % (spec.get('host'), spec.get('port'))
    if kind == 'containers':
        services = spec.get('services') or []
        return 'containers %s%s' % (spec.get('project'), ('[%s]' % ','.join(services)) if services else '')
    if kind == 'openapi':
        return 'openapi %s' % redact_url(spec.get('url'))
    return str(kind)


def build_probe(spec, name, docker_host=None, engine_timeout=60, gate_timeout=None):
    """A probe from one entry of the health_gate ``checks`` option (ValueError when it cannot be built)."""
    kind = spec.get('type')
    timeout = spec.get('timeout') or DEFAULT_CHECK_TIMEOUT
    if kind == 'http':
        try:
            return HttpProbe(name, spec['url'], method=spec.get('method'), status=spec.get('status'),
                             body_contains=spec.get('body_contains'), body_regex=spec.get('body_regex'),
                             json_fields=spec.get('json'), headers=spec.get('headers'), bearer_token=spec.get('bearer_token'),
                             validate_certs=spec.get('validate_certs', True), follow_redirects=spec.get('follow_redirects', False),
                             timeout=timeout)
        except re.error as exc:
            raise ValueError('body_regex %r is not a valid regular expression: %s' % (spec.get('body_regex'), exc))
    if kind == 'tcp':
        return TcpProbe(name, spec['host'], spec['port'], timeout=timeout)
    if kind == 'containers':
        return ContainersProbe(name, spec['project'], services=spec.get('services'), replicas=spec.get('replicas'),
                               digests=spec.get('digests'), docker_host=docker_host, engine_timeout=engine_timeout, gate_timeout=gate_timeout,
                               timeout=timeout, unhealthy_is_final=spec.get('unhealthy_is_final', True),
                               running_for=spec.get('running_for') or 0)
    if kind == 'openapi':
        return OpenApiProbe(name, spec['url'], spec.get('paths') or [], headers=spec.get('headers'),
                            bearer_token=spec.get('bearer_token'), validate_certs=spec.get('validate_certs', True),
                            follow_redirects=spec.get('follow_redirects', False), timeout=timeout)
    raise ValueError('unknown check type %r (expected one of %s)' % (kind, ', '.join(CHECK_TYPES)))


# ---------------------------------------------------------------- the gate

class CheckState:
    """What the gate knows about one check across rounds."""

    def __init__(self, probe):
        self.probe = probe
        self.attempts = 0
        self.passes = 0
        self.failures = 0
        self.unreachable_attempts = 0
        self.consecutive = 0
        self.flaps = 0            # times a run of passes was broken by a failure
        self.passed_at = None     # gate seconds when the current run of passes reached the threshold
        self.last = None
        self.thread = None
        self.thread_started = None

    def record(self, result, at, threshold, count_unreachable_as_failure):
        self.attempts += 1
        self.last = result
        if result.passed:
            self.passes += 1
            self.consecutive += 1
            if self.consecutive == threshold:
                self.passed_at = at
            return
        if result.unreachable:
            self.unreachable_attempts += 1
            if not count_unreachable_as_failure:
                return  # could not measure: neither a pass nor a reason to restart the count
        self.failures += 1
        if self.consecutive > 0:
            self.flaps += 1
        self.consecutive = 0
        self.passed_at = None

    def green(self, threshold):
        return self.consecutive >= threshold


class GateOutcome:
    def __init__(self, passed, elapsed, rounds, states, reason, warnings, started_at, finished_at, green_for):
        self.passed = passed
        self.elapsed = elapsed
        self.rounds = rounds
        self.states = states
        self.reason = reason          # 'passed', 'crash', 'deadline'
        self.warnings = warnings
        self.started_at = started_at
        self.finished_at = finished_at
        self.green_for = green_for


class Gate:
    """Polls every probe once a round, all probes of a round at once, until they are green or time is up.

    Rounds start every ``interval`` seconds measured from the start of the previous round (a slow round
    is followed at once by the next). A check is green after ``success_threshold`` passes in a row; a
    failure after a pass restarts its count (so a flapping check fails, at the deadline). The gate passes
    once every check is green and has stayed so for ``stable_for`` seconds. A fatal result (crash loop)
    ends the gate at once. The last round runs at the deadline.
    """

    def __init__(self, probes, timeout=120.0, interval=2.0, success_threshold=1, stable_for=0.0,
                 count_unreachable_as_failure=True, clock=time.monotonic, sleep=time.sleep):
        self.states = [CheckState(probe) for probe in probes]
        self.timeout = float(timeout)
        self.interval = float(interval)
        self.threshold = max(1, int(success_threshold))
        self.stable_for = float(stable_for or 0)
        self.count_unreachable_as_failure = count_unreachable_as_failure
        self.clock = clock
        self.sleep = sleep
        self.start = None
        self.warnings = []

    def wait_until_healthy(self):
        started_at = _now_iso()
        self.start = self.clock()
        deadline = self.start + self.timeout
        rounds = 0
        green_since = None
        reason = 'deadline'
        while True:
            round_start = self.clock()
            rounds += 1
            self._run_round(round_start, deadline)
            now = self.clock()
            if any(state.last is not None and state.last.fatal for state in self.states):
                reason = 'crash'
                break
            if all(state.green(self.threshold) for state in self.states):
                if green_since is None:
                    green_since = round_start
                if now - green_since >= self.stable_for:
                    reason = 'passed'
                    break
            else:
                green_since = None
            if now >= deadline:
                break
            due = min(round_start + self.interval, deadline)
            if due > now:
                self.sleep(due - now)
        end = self.clock()
        green_for = round(end - green_since, 3) if green_since is not None else 0.0
        return GateOutcome(reason == 'passed', round(end - self.start, 3), rounds, self.states, reason, self.warnings,
                           started_at, _now_iso(), green_for)

    def _run_round(self, round_start, deadline):
        remaining = deadline - round_start
        started = []
        for state in self.states:
            if state.thread is not None and state.thread.is_alive():
                # a probe abandoned in an earlier round is still stuck (DNS lookups ignore timeouts):
                # do not pile up another one behind it
                state.record(ProbeResult(False, unreachable=True, error='the probe started %ss ago has still not returned'
                                         % _seconds(round(round_start - state.thread_started, 1))),
                             round(self.clock() - self.start, 3), self.threshold, self.count_unreachable_as_failure)
                continue
            probe_timeout = min(state.probe.timeout, max(remaining, MIN_PROBE_TIMEOUT))
            box = []
            thread = threading.Thread(target=_run_probe, args=(state.probe, probe_timeout, box), daemon=True,
                                      name='probe %s' % state.probe.name)
            state.thread = thread
            state.thread_started = round_start
            thread.start()
            started.append((state, thread, box, probe_timeout))
        for state, thread, box, probe_timeout in started:
            thread.join(max(0.0, round_start + probe_timeout + ABANDON_GRACE - self.clock()))
            if box:
                result = box[0]
            else:
                result = ProbeResult(False, unreachable=True,
                                     error='no result within %ss (probe abandoned)' % _seconds(probe_timeout))
            for warning in result.warnings:
                if warning not in self.warnings:
                    self.warnings.append(warning)
            state.record(result, round(self.clock() - self.start, 3), self.threshold, self.count_unreachable_as_failure)


def _run_probe(probe, timeout, box):
    try:
        result = probe.probe(timeout)
    except Exception as exc:  # a probe bug must not kill the gate; report it as "could not measure"
        result = ProbeResult(False, unreachable=True, error=scrub('probe raised %s: %s' % (type(exc).__name__, one_line(exc, 160)),
                                                                  getattr(probe, 'secrets', [])))
    box.append(result)


def check_report(state, outcome_elapsed, threshold):
    """The per-check dict health_gate returns."""
    last = state.last
    green = state.green(threshold)
    return {
        'name': state.probe.name,
        'type': state.probe.kind,
        'passed': green,
        'attempts': state.attempts,
        'passes': state.passes,
        'failures': state.failures,
        'unreachable_attempts': state.unreachable_attempts,
        'flaps': state.flaps,
        'elapsed': state.passed_at if green and state.passed_at is not None else outcome_elapsed,
        'last_status': last.status if last else None,
        'last_error': last.error if last else None,
        'unreachable': bool(last and last.unreachable),
        'evidence': last.evidence if last else {},
    }


def failure_reason(state, threshold, count_unreachable_as_failure):
    """Why one check is not green, in a few words (for the one-line msg)."""
    last = state.last
    if last is None:
        return 'never probed'
    if last.fatal:
        return last.error or 'failed'
    if last.passed:
        text = 'passed %d time(s) in a row, %d needed' % (state.consecutive, threshold)
    else:
        text = last.error or 'failed'
    if last.unreachable:
        text = 'could not measure: ' + text
        if not count_unreachable_as_failure and state.passes:
            text = 'passed %d time(s) in a row, %d needed; then %s' % (state.consecutive, threshold, text)
    if state.flaps:
        text = 'flapping (a run of passes broken %d time(s), never %d in a row); last: %s' % (state.flaps, threshold, text)
    return text


def outcome_message(outcome, threshold, stable_for, count_unreachable_as_failure, timeout):
    if outcome.passed:
        return 'health gate passed after %ss: %d check(s) green (success_threshold %d, stable_for %ss)' % (
            _seconds(round(outcome.elapsed, 1)), len(outcome.states), threshold, _seconds(stable_for))
    failing = [state for state in outcome.states if not state.green(threshold) or (state.last and state.last.fatal)]
    if outcome.reason == 'crash':
        failing = [state for state in failing if state.last and state.last.fatal] + \
                  [state for state in failing if not (state.last and state.last.fatal)]
        head = 'health gate failed fast after %ss (crash loop, timeout %ss not waited out)' % (
            _seconds(round(outcome.elapsed, 1)), _seconds(timeout))
    else:
        head = 'health gate failed after %ss (timeout %ss)' % (_seconds(round(outcome.elapsed, 1)), _seconds(timeout))
    if not failing:
        return '%s: every check is green but only for %ss of stable_for %ss' % (
            head, _seconds(round(outcome.green_for, 1)), _seconds(stable_for))
    parts = ["'%s': %s" % (state.probe.name, one_line(failure_reason(state, threshold, count_unreachable_as_failure), 300))
             for state in failing]
    return '%s: %s' % (head, '; '.join(parts))
