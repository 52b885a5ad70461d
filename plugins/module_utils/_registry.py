# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private module_utils of safedeploy.compose: a small client of the Registry HTTP API v2 that
# resolves image references to manifest digests. Not a public API; it may change in any release.
#
# What it does, and why:
# - HEAD /v2/<repository>/manifests/<reference> with an Accept header naming the OCI index, the
#   Docker manifest list and both single-platform manifest types, so a multi-arch image resolves to
#   its index digest (the digest `docker pull` records), and reads Docker-Content-Digest. Registries
#   that leave that header out of HEAD answers get a GET, and the digest is the sha256 of the body.
# - Authentication as the Docker client does it: anonymous first; on 401 follow the challenge in
#   WWW-Authenticate: Bearer (ask the realm for a token, with basic credentials when we have some)
#   or Basic. Credentials come from the caller (module options) or from the `auths` section of the
#   Docker client's config.json. Passwords and tokens never enter an exception message.
# - Loopback registries and those listed as insecure are spoken to over http, all others https.
# - 429, 5xx and connection errors are retried with exponential backoff, all within one deadline
#   per call, so an unreachable registry fails in bounded time. The deadline holds for the whole
#   exchange, not each read (a registry that trickles its answer byte by byte is cut off), and an
#   answer larger than MAX_RESPONSE_BYTES is refused.
# - For a download estimate, GET of the platform's manifest and of its image config blob (a few KB,
#   under the same cap): the config's rootfs.diff_ids name the layers the way the engine knows them.
# - For signature verification (_signatures.py): GET of a blob (capped, checked against its digest) and of the OCI
#   1.1 referrers of a digest; a registry without the referrers API answers 404 and the caller reads the fallback tag.
# - Credentials go only where they belong: a token realm must be https (http only on loopback or a
#   host listed as insecure), the token's scope is built from the repository (never taken from the
#   challenge), and ~/.netrc is never consulted.
# - HTTP is the standard library's (urllib.request, imported at the first exchange, not with this module): no
#   third-party library on the managed host. Redirects are followed, but the Authorization header goes to no
#   other origin (scheme, host, port) than the one it was meant for. Proxies come from the environment
#   (HTTP(S)_PROXY, NO_PROXY), except that a registry on this very host is never reached through one.

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
import threading
import time
from collections import namedtuple

try:
    from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit
except ImportError:  # pragma: no cover - Python 2 is not supported; keeps the import sanity test quiet
    from urllib import urlencode
    from urlparse import urljoin, urlsplit, urlunsplit

from ansible_collections.safedeploy.compose.plugins.module_utils._proxy_env import in_no_proxy_network
from ansible_collections.safedeploy.compose.plugins.module_utils._image_ref import (
    DOCKER_HUB, DOCKER_HUB_ALIASES, DOCKER_HUB_API_HOST, ImageRef, is_valid_digest,
)

OCI_INDEX = 'application/vnd.oci.image.index.v1+json'
DOCKER_MANIFEST_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json'
OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json'
MANIFEST_MEDIA_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_MEDIA_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_ACCEPT = ', '.join(MANIFEST_MEDIA_TYPES)

RETRY_STATUSES = frozenset([429, 500, 502, 503, 504])
DEFAULT_TIMEOUT = 60
# Manifests, image configs and token answers are small; the distribution project itself refuses manifests over 4 MiB.
MAX_RESPONSE_BYTES = 4 << 20
USER_AGENT = 'safedeploy.compose-registry-client'

ResolvedManifest = namedtuple('ResolvedManifest', 'digest media_type size')
# One platform's manifest: its digest, its config blob's digest and size, its layers as (digest, compressed size).
ImageManifest = namedtuple('ImageManifest', 'digest config_digest config_size layers')


# The options of a module that reads registries (doc fragment _registry).
REGISTRY_ARGUMENT_SPEC = dict(
    registry_auth=dict(type='list', elements='dict', options=dict(
        registry=dict(type='str', required=True),
        username=dict(type='str', required=True),
        password=dict(type='str', required=True, no_log=True),
    )),
    docker_config=dict(type='path'),
    insecure_registries=dict(type='list', elements='str', default=[]),
    validate_certs=dict(type='bool', default=True),
)


class RegistryError(Exception):
    """A registry call failed. Carries where (registry, repository, reference) and the HTTP status."""

    kind = 'error'

    def __init__(self, message, registry=None, repository=None, reference=None, status=None):
        super(RegistryError, self).__init__(message)
        self.message = message
        self.registry = registry
        self.repository = repository
        self.reference = reference
        self.status = status

    def as_dict(self):
        return dict(kind=self.kind, registry=self.registry, repository=self.repository, reference=self.reference,
                    status=self.status, message=self.message)


class ManifestNotFoundError(RegistryError):
    """The registry answered, and the manifest (or the repository) is not there."""

    kind = 'missing'


class RegistryAuthError(RegistryError):
    """The registry wants credentials we do not have, or refused the ones we sent."""

    kind = 'auth'


class RegistryUnreachableError(RegistryError):
    """No usable answer within the deadline: connection errors, timeouts or 5xx until the end."""

    kind = 'unreachable'


class DockerConfigError(RegistryError):
    """The Docker client config file exists but cannot be read or parsed."""

    kind = 'config'


# ------------------------------------------------------------------ hosts and credentials

def split_host_port(host):
    """('127.0.0.1', '5000') from '127.0.0.1:5000'; handles '[::1]:5000'. The port may be None."""
    if host.startswith('['):
        end = host.find(']')
        name = host[1:end]
        rest = host[end + 1:]
        return name, (rest[1:] if rest.startswith(':') else None)
    if host.count(':') == 1:
        name, port = host.split(':')
        return name, port
    return host, None


def is_loopback(host):
    name = split_host_port(host)[0].lower()
    if name == 'localhost' or name.endswith('.localhost'):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def normalize_registry_key(key):
    """The registry a credentials entry is for: scheme and path dropped, Docker Hub aliases folded."""
    key = (key or '').strip()
    key = re.sub(r'^[a-zA-Z][a-zA-Z0-9+.-]*://', '', key)
    key = key.split('/', 1)[0]
    if key.lower() in DOCKER_HUB_ALIASES:
        return DOCKER_HUB
    return key


def default_docker_config_path(environ=None):
    environ = os.environ if environ is None else environ
    directory = environ.get('DOCKER_CONFIG') or os.path.join(os.path.expanduser('~'), '.docker')
    return os.path.join(directory, 'config.json')


def docker_config_file(path=None, environ=None):
    """The config.json to read: `path` (a file, or a directory holding config.json) or the default."""
    if not path:
        return default_docker_config_path(environ)
    if os.path.isdir(path):
        return os.path.join(path, 'config.json')
    return path


def load_docker_config_auths(path):
    """{registry: (username, password)} from the `auths` section of a Docker client config.json.

    A missing file means no credentials. Entries without an inline `auth` (a credential helper or
    credsStore keeps them) are skipped; reading helpers is not supported.
    """
    try:
        with open(path, 'rb') as handle:
            raw = handle.read()
    except (IOError, OSError) as exc:
        if not os.path.exists(path):
            return {}
        raise DockerConfigError('cannot read Docker client config %s: %s' % (path, exc.strerror or exc))
    try:
        data = json.loads(raw.decode('utf-8'))
    except ValueError as exc:
        raise DockerConfigError('Docker client config %s is not valid JSON (%s): fix or remove it, or give credentials '
                                'in registry_auth' % (path, exc))
    auths = data.get('auths') if isinstance(data, dict) else None
    found = {}
    for key, entry in (auths or {}).items():
        if not isinstance(entry, dict):
            continue
        username, password = entry.get('username'), entry.get('password')
        if entry.get('auth'):
            try:
                decoded = base64.b64decode(entry['auth']).decode('utf-8')
                username, password = decoded.split(':', 1)
            except (ValueError, TypeError):
                # the message names the entry, never its content
                raise DockerConfigError('Docker client config %s: the auth field of the %s entry is not base64 of '
                                        '"user:password"' % (path, key))
        if username and password:
            found[normalize_registry_key(key)] = (username, password)
    return found


def parse_www_authenticate(value):
    """('bearer', {'realm': ..., 'service': ..., 'scope': ...}) from a WWW-Authenticate header."""
    value = (value or '').strip()
    if not value:
        return None, {}
    scheme, dummy, rest = value.partition(' ')
    params = {}
    for match in re.finditer(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))', rest):
        params[match.group(1).lower()] = match.group(2).replace('\\"', '"') if match.group(2) is not None else match.group(3)
    return scheme.lower(), params


# ------------------------------------------------------------------ one HTTP exchange

# What the client keeps of an HTTP answer: the body is read whole (and capped) before the deadline. `headers` is the
# http.client message of the answer: its get() ignores the case of the name.
_Answer = namedtuple('_Answer', 'status_code headers content method')

# Redirects followed for one exchange (a registry sends blob reads to its storage); more are a failed attempt.
MAX_REDIRECTS = 30
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_DEFAULT_PORTS = {'http': 80, 'https': 443}


class _TooLarge(Exception):
    pass


class _RedirectProblem(Exception):
    """A redirect that is not followed: a loop, too many of them, or one to a URL that is not http(s)."""

    def __init__(self, message, name):
        super(_RedirectProblem, self).__init__(message)
        self.name = name


def _urllib_request():
    """urllib.request, imported by the first exchange: with ssl, http.client and email it costs some 0.03 s, which
    modules that import this file only for its names (or never reach a registry) do not pay."""
    import urllib.request
    return urllib.request


def _origin(url):
    """(scheme, host, port) of a URL, the default port filled in; None when the URL names no usable origin."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS.get(scheme)


def _with_query(url, params):
    """`url` with `params` (a dict) appended to its query string, the query it already has kept."""
    if not params:
        return url
    parts = urlsplit(url)
    query = urlencode(params, doseq=True)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query + '&' + query if parts.query else query,
                       parts.fragment))


def _basic_authorization(credentials):
    """The Authorization header value of HTTP basic auth. The bytes are those requests sent before: latin-1 when
    the text has nothing else (requests failed outright on anything else; that is sent as UTF-8)."""
    text = '%s:%s' % tuple(credentials)
    try:
        raw = text.encode('latin-1')
    except UnicodeEncodeError:
        raw = text.encode('utf-8')
    return 'Basic ' + base64.b64encode(raw).decode('ascii')


_REDIRECT_HANDLER = []


def _redirect_handler_class():
    """The urllib handler that follows redirects (defined at the first exchange, as urllib is imported then).

    It differs from urllib's own in what matters here: the Authorization header is dropped when the redirect leaves
    the origin (scheme, host, port) it was sent to, as requests did (urllib's would send the registry's token or
    password to whatever host a redirect names); Proxy-Authorization is never carried over (the proxy handler sets it
    again where a proxy is used); a loop or too many redirects is a failed attempt (retried), not an answer; and the
    next hop is opened with the proxies that fit its URL."""
    if _REDIRECT_HANDLER:
        return _REDIRECT_HANDLER[0]
    request = _urllib_request()

    class RedirectHandler(request.BaseHandler):
        handler_order = 500

        def __init__(self, opener_for):
            self.opener_for = opener_for

        def http_error_302(self, req, fp, code, msg, headers):
            location = headers.get('Location')
            method = req.get_method()
            if not location or method not in ('GET', 'HEAD'):
                return None  # the 3xx itself is the answer
            new_url = urljoin(req.full_url, location.strip().replace(' ', '%20'))
            new_origin = _origin(new_url)
            if new_origin is None or new_origin[0] not in ('http', 'https'):
                raise _RedirectProblem('redirect to %s refused: only http and https URLs are followed'
                                       % new_url.split('?', 1)[0], 'InvalidRedirect')
            hops = getattr(req, 'safedeploy_redirects', 0) + 1
            if hops > MAX_REDIRECTS:
                raise _RedirectProblem('more than %d redirects (a loop?), the last to %s'
                                       % (MAX_REDIRECTS, new_url.split('?', 1)[0]), 'TooManyRedirects')
            old_origin = _origin(req.full_url)
            # as requests: the same origin, or the same host moving from http to https on the default ports
            same_origin = new_origin == old_origin or (
                old_origin is not None and old_origin[0] == 'http' and old_origin[2] == 80
                and new_origin == ('https', old_origin[1], 443))
            kept = {}
            for name, value in req.headers.items():
                lowered = name.lower()
                if lowered in ('content-length', 'content-type', 'host', 'proxy-authorization'):
                    continue
                if lowered == 'authorization' and not same_origin:
                    continue
                kept[name] = value
            follow = request.Request(new_url, headers=kept, method=method, origin_req_host=req.origin_req_host,
                                     unverifiable=True)
            follow.safedeploy_redirects = hops
            fp.close()  # its body is not read: a redirect's body is nothing we need
            return self.opener_for(new_url).open(follow, timeout=req.timeout)

        http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    _REDIRECT_HANDLER.append(RedirectHandler)
    return RedirectHandler


def _failure_cause(exc):
    """What went wrong in an exchange: the exception a URLError wraps, or the exception itself."""
    reason = getattr(exc, 'reason', None)
    if isinstance(reason, BaseException):
        return reason
    return exc


def _is_tls_failure(exc):
    import ssl
    return isinstance(exc, (ssl.SSLError, ssl.CertificateError))


def _is_transport_failure(exc):
    """Failures of the connection, the TLS layer or the HTTP framing: a failed attempt, retried until the deadline."""
    import http.client
    return isinstance(exc, (OSError, http.client.HTTPException, _RedirectProblem))


def _describe_failure(exc):
    """'ConnectionError: [Errno 111] Connection refused': the failure's kind, then what it says (capped)."""
    if isinstance(exc, ConnectionError):  # refused, reset, aborted, broken pipe: named as requests named them
        name = 'ConnectionError'
    elif isinstance(exc, _RedirectProblem):
        name = exc.name
    else:
        name = type(exc).__name__
    return '%s: %s' % (name, _short(exc) or 'no detail')


# ------------------------------------------------------------------ the client

class RegistryClient(object):
    """Resolves image references to manifest digests over the Registry HTTP API v2.

    `credentials`: list of dicts {registry, username, password} (they win over the Docker config);
    `docker_config`: config.json (or its directory) to read `auths` from, default $DOCKER_CONFIG or
    ~/.docker; `insecure_registries`: hosts spoken to over http like loopback ones; `timeout`: the
    deadline in seconds for one resolve (all retries included).
    """

    def __init__(self, credentials=None, docker_config=None, insecure_registries=None, timeout=DEFAULT_TIMEOUT,
                 validate_certs=True, backoff=0.5, max_backoff=8.0, sleep=time.sleep, clock=time.monotonic,
                 environ=None):
        self.timeout = float(timeout)
        self.validate_certs = validate_certs
        self.backoff = backoff
        self.max_backoff = max_backoff
        # urllib openers, built at first use: one using the environment's proxies, one using none (registries on this
        # host, networks NO_PROXY lists)
        self._openers = {}
        self._sleep = sleep
        self._clock = clock
        self.insecure = set(normalize_registry_key(host) for host in (insecure_registries or []))
        self._option_credentials = {}
        for entry in credentials or []:
            self._option_credentials[normalize_registry_key(entry['registry'])] = (entry['username'], entry['password'])
        self.docker_config_path = docker_config_file(docker_config, environ)
        self._config_credentials = None
        self._auth_headers = {}
        self._unreachable = {}

    # -------------------------------------------------------------- public

    def resolve(self, ref):
        """The registry's digest for `ref` (an ImageRef or a string): ResolvedManifest(digest, media_type, size)."""
        ref = ImageRef.parse(ref) if isinstance(ref, str) else ref
        deadline = self._clock() + self.timeout
        url = self._manifest_url(ref, ref.reference)
        response = self._request('HEAD', ref, url, deadline)
        if response.status_code == 405:  # a registry (or proxy) without HEAD support
            response = self._request('GET', ref, url, deadline)
        self._raise_for_status(response, ref)
        digest = response.headers.get('Docker-Content-Digest', '').strip()
        if response.method == 'HEAD' and not is_valid_digest(digest):
            response = self._request('GET', ref, url, deadline)
            self._raise_for_status(response, ref)
            digest = response.headers.get('Docker-Content-Digest', '').strip()
        media_type = response.headers.get('Content-Type', '').split(';')[0].strip() or None
        if response.method == 'GET':
            size = len(response.content)
            if not is_valid_digest(digest):
                digest = 'sha256:' + hashlib.sha256(response.content).hexdigest()
        else:
            size = _int_or_none(response.headers.get('Content-Length'))
        if ref.digest and digest != ref.digest:
            raise RegistryError('registry %s returned digest %s for %s@%s: the registry or a proxy in between is not '
                                'serving the requested content' % (ref.registry, digest, ref.repository, ref.digest),
                                ref.registry, ref.repository, ref.reference, response.status_code)
        return ResolvedManifest(digest, media_type, size)

    def manifest(self, ref, reference=None, deadline=None):
        """(media_type, parsed JSON, digest) of a manifest, fetched with GET."""
        ref = ImageRef.parse(ref) if isinstance(ref, str) else ref
        reference = reference or ref.reference
        deadline = deadline or (self._clock() + self.timeout)
        response = self._request('GET', ref, self._manifest_url(ref, reference), deadline)
        self._raise_for_status(response, ref, reference)
        try:
            document = json.loads(response.content.decode('utf-8'))
        except ValueError:
            raise RegistryError('registry %s returned a manifest for %s:%s that is not JSON'
                                % (ref.registry, ref.repository, reference), ref.registry, ref.repository, reference,
                                response.status_code)
        if not isinstance(document, dict):
            raise RegistryError('registry %s returned a manifest for %s:%s that is JSON but not an object (%s)'
                                % (ref.registry, ref.repository, reference, type(document).__name__), ref.registry,
                                ref.repository, reference, response.status_code)
        media_type = document.get('mediaType') or response.headers.get('Content-Type', '').split(';')[0].strip()
        return media_type, document, 'sha256:' + hashlib.sha256(response.content).hexdigest()

    def platform_manifest(self, ref, os_name='linux', architecture='amd64', deadline=None):
        """The single-platform manifest of the image `ref` names, as an ImageManifest.

        For an index or manifest list, the entry for os_name/architecture is read, or the first
        entry when there is none for that platform (one more request). Layers are listed base first,
        each as (compressed digest, compressed size), as the manifest lists them.
        """
        ref = ImageRef.parse(ref) if isinstance(ref, str) else ref
        deadline = deadline or (self._clock() + self.timeout)
        media_type, document, digest = self.manifest(ref, deadline=deadline)
        if media_type in INDEX_MEDIA_TYPES or ('manifests' in document and 'layers' not in document):
            entries = [entry for entry in document.get('manifests') or [] if isinstance(entry, dict) and entry.get('digest')]
            if not entries:
                raise RegistryError('registry %s: the index of %s:%s lists no manifests' % (
                    ref.registry, ref.repository, ref.reference), ref.registry, ref.repository, ref.reference)
            chosen = entries[0]
            for entry in entries:
                platform = entry.get('platform') or {}
                if platform.get('os') == os_name and platform.get('architecture') == architecture:
                    chosen = entry
                    break
            media_type, document, digest = self.manifest(ref, chosen['digest'], deadline)
        config = document.get('config') if isinstance(document.get('config'), dict) else {}
        layers = [(layer.get('digest'), _int_or_none(layer.get('size')) or 0)
                  for layer in document.get('layers') or [] if isinstance(layer, dict)]
        return ImageManifest(digest, config.get('digest'), _int_or_none(config.get('size')) or 0, layers)

    def image_diff_ids(self, ref, config_digest, deadline=None):
        """The uncompressed layer digests (rootfs.diff_ids, base first) from the image config blob `config_digest`.

        The engine knows the layers it holds by these, not by the compressed digests of the manifest.
        None when the blob is no image config listing them (an artifact, a foreign format); registry
        failures raise as for manifests. The blob is checked against its digest.
        """
        ref = ImageRef.parse(ref) if isinstance(ref, str) else ref
        deadline = deadline or (self._clock() + self.timeout)
        url = '%s%s/blobs/%s' % (self.base_url(ref.registry), ref.repository, config_digest)
        response = self._request('GET', ref, url, deadline)
        if response.status_code == 404:
            raise ManifestNotFoundError('registry %s has no config blob %s for %s, which its manifest names: push the '
                                        'image again' % (ref.registry, config_digest, ref.name),
                                        ref.registry, ref.repository, ref.reference, 404)
        self._raise_for_status(response, ref)
        if config_digest.startswith('sha256:') and 'sha256:' + hashlib.sha256(response.content).hexdigest() != config_digest:
            raise RegistryError('registry %s returned content for the config blob %s of %s that does not match that '
                                'digest: the registry or a proxy in between is not serving the requested content'
                                % (ref.registry, config_digest, ref.name), ref.registry, ref.repository, ref.reference,
                                response.status_code)
        try:
            document = json.loads(response.content.decode('utf-8'))
        except ValueError:
            return None
        rootfs = document.get('rootfs') if isinstance(document, dict) else None
        diff_ids = rootfs.get('diff_ids') if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or not all(is_valid_digest(item) for item in diff_ids):
            return None
        return diff_ids

    def new_deadline(self):
        """The deadline of a call made now: `timeout` seconds from now on the client's clock."""
        return self._clock() + self.timeout

    def blob(self, ref, digest, deadline=None):
        """The bytes of the blob `digest` in the repository of `ref`, checked against that digest (and capped)."""
        ref = ImageRef.parse(ref) if isinstance(ref, str) else ref
        deadline = deadline or (self._clock() + self.timeout)
        url = '%s%s/blobs/%s' % (self.base_url(ref.registry), ref.repository, digest)
        response = self._request('GET', ref, url, deadline)
        if response.status_code == 404:
            raise ManifestNotFoundError('registry %s has no blob %s in %s, which a manifest names'
                                        % (ref.registry, digest, ref.name), ref.registry, ref.repository, digest, 404)
        self._raise_for_status(response, ref, digest)
        if not digest.startswith('sha256:') or 'sha256:' + hashlib.sha256(response.content).hexdigest() != digest:
            raise RegistryError('registry %s returned content for the blob %s of %s that does not match that digest: '
                                'the registry or a proxy in between is not serving the requested content'
                                % (ref.registry, digest, ref.name), ref.registry, ref.repository, digest,
                                response.status_code)
        return response.content

    def referrers(self, ref, digest, artifact_type=None, deadline=None):
        """The descriptors of the OCI 1.1 referrers of `digest` (GET /v2/<name>/referrers/<digest>), filtered by
        artifact type; None when the registry has no referrers API (it answers 404 or 405), so the caller reads the
        fallback tag instead. A registry that ignores the artifactType filter is filtered here."""
        ref = ImageRef.parse(ref) if isinstance(ref, str) else ref
        deadline = deadline or (self._clock() + self.timeout)
        url = '%s%s/referrers/%s' % (self.base_url(ref.registry), ref.repository, digest)
        if artifact_type:
            url += '?artifactType=' + artifact_type
        response = self._request('GET', ref, url, deadline)
        if response.status_code in (404, 405):
            return None
        self._raise_for_status(response, ref, digest)
        try:
            document = json.loads(response.content.decode('utf-8'))
        except ValueError:
            document = None
        if not isinstance(document, dict) or not isinstance(document.get('manifests'), list):
            raise RegistryError('registry %s answered the referrers of %s@%s with something that is not an OCI index'
                                % (ref.registry, ref.name, digest), ref.registry, ref.repository, digest,
                                response.status_code)
        return [item for item in document['manifests'] if isinstance(item, dict) and (
            not artifact_type or item.get('artifactType') in (None, artifact_type))]

    # -------------------------------------------------------------- HTTP

    def base_url(self, registry):
        host = DOCKER_HUB_API_HOST if registry == DOCKER_HUB else registry
        scheme = 'http' if (is_loopback(host) or normalize_registry_key(registry) in self.insecure) else 'https'
        return '%s://%s/v2/' % (scheme, host)

    def _manifest_url(self, ref, reference):
        return '%s%s/manifests/%s' % (self.base_url(ref.registry), ref.repository, reference)

    def _proxies(self, url):
        """The proxies of a urllib ProxyHandler for `url`: None (the environment's HTTP(S)_PROXY and NO_PROXY) or,
        for a registry on this very host or in a network NO_PROXY lists, {} (none): a proxy from the environment must
        not capture those calls."""
        host = url.split('://', 1)[-1].split('/', 1)[0]
        if is_loopback(host) or in_no_proxy_network(url):
            return {}
        return None

    def _tls_context(self):
        import ssl
        if not self.validate_certs:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        # The CA bundle requests was told to use, if any; otherwise the system's trust store.
        bundle = os.environ.get('REQUESTS_CA_BUNDLE') or os.environ.get('CURL_CA_BUNDLE')
        if bundle:
            if os.path.isdir(bundle):
                return ssl.create_default_context(capath=bundle)
            return ssl.create_default_context(cafile=bundle)
        return ssl.create_default_context()

    def _opener(self, url):
        """The urllib opener for `url`: only http(s), no netrc, no stored passwords, our redirect handler."""
        proxies = self._proxies(url)
        key = 'direct' if proxies is not None else 'environment'
        if key not in self._openers:
            request = _urllib_request()
            opener = request.OpenerDirector()
            for handler in (request.ProxyHandler(proxies), request.UnknownHandler(), request.HTTPHandler(),
                            request.HTTPSHandler(context=self._tls_context()), request.HTTPDefaultErrorHandler(),
                            _redirect_handler_class()(self._opener), request.HTTPErrorProcessor()):
                opener.add_handler(handler)
            self._openers[key] = opener
        return self._openers[key]

    def _send(self, method, url, headers, deadline, where, auth=None, params=None):
        """One logical HTTP call: retried on connection errors, 429 and 5xx until the deadline."""
        registry, repository, reference = where
        if registry in self._unreachable:
            raise self._unreachable[registry]
        attempt = 0
        last_problem = None
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                if getattr(last_problem, 'status', None) == 429:
                    advice = ('it is limiting the rate of requests (HTTP 429 Too Many Requests): wait and retry, '
                              'or authenticate (anonymous clients get lower limits)')
                else:
                    advice = '%s: check that it is up and reachable from this host, or raise timeout' % (
                        last_problem or 'no attempt fitted')
                error = RegistryUnreachableError(
                    'registry %s did not answer usefully within %ss; %s' % (registry, _seconds(self.timeout), advice),
                    registry, repository, reference, getattr(last_problem, 'status', None))
                self._unreachable[registry] = error
                raise error
            retry_after = None
            try:
                response = self._exchange(method, url, headers, remaining, auth, params)
            except _TooLarge:
                raise RegistryError('registry %s sent an answer larger than %d bytes for %s %s: refused (manifests and '
                                    'tokens are far smaller; check what answers at that address)'
                                    % (registry, MAX_RESPONSE_BYTES, method, url.split('?', 1)[0]),
                                    registry, repository, reference)
            except Exception as exc:  # sorted here: TLS, other transport failures (retried), anything else raised
                cause = _failure_cause(exc)
                if _is_tls_failure(cause):
                    raise RegistryUnreachableError(
                        'TLS handshake with registry %s failed (%s): fix its certificate, set validate_certs: false, or '
                        'list it in insecure_registries if it serves plain http' % (registry, _short(cause)),
                        registry, repository, reference)
                if isinstance(cause, ValueError) and not _is_transport_failure(cause):
                    # http.client refusing a URL or a header value (a realm, a redirect, a token with a line break):
                    # named by its kind only, never echoing the value, which may be a credential
                    raise RegistryError('registry %s: the request %s %s could not be sent (%s: a URL or header value the '
                                        'registry gave is malformed)' % (registry, method, url.split('?', 1)[0],
                                                                         type(cause).__name__),
                                        registry, repository, reference)
                if not _is_transport_failure(cause):
                    raise
                last_problem = _Problem(_describe_failure(cause))
            else:
                if response is None:
                    last_problem = _Problem('no complete answer within the deadline')
                elif response.status_code not in RETRY_STATUSES:
                    return response
                else:
                    last_problem = _Problem('last answer HTTP %d' % response.status_code, response.status_code)
                    retry_after = _int_or_none(response.headers.get('Retry-After'))
            delay = min(self.backoff * (2 ** attempt), self.max_backoff)
            if retry_after is not None:
                delay = max(delay, retry_after)
            delay = min(delay, max(deadline - self._clock(), 0))
            attempt += 1
            if delay > 0:
                self._sleep(delay)

    def _exchange(self, method, url, headers, remaining, auth, params):
        """One HTTP exchange, answer read whole, within `remaining` seconds in all; None when it did not finish.

        A socket timeout bounds each read, not the exchange: a registry trickling its answer would hold the call for
        as long as it likes. The exchange runs in a daemon thread, waited for until the deadline; a thread left
        behind ends with the module's process. Exceptions of the exchange are raised here."""
        outcome = {}

        def run():
            try:
                outcome['answer'] = self._fetch(method, url, headers, remaining, auth, params)
            except Exception as exc:  # handed to the caller, which sorts them
                outcome['error'] = exc
        worker = threading.Thread(target=run, name='registry-exchange')
        worker.daemon = True
        worker.start()
        worker.join(max(remaining, 0.1))
        if 'error' in outcome:
            raise outcome['error']
        return outcome.get('answer')

    def _fetch(self, method, url, headers, remaining, auth, params):
        """The exchange itself. An HTTP error status is an answer like any other (urllib raises it: it is read here),
        HEAD reads no body, a body over MAX_RESPONSE_BYTES raises _TooLarge. `auth` is (user, password) for basic auth;
        the header is built here and never logged."""
        request_module = _urllib_request()
        request = request_module.Request(_with_query(url, params), headers=headers, method=method)
        if not request.has_header('Accept'):
            request.add_header('Accept', '*/*')
        if auth:
            request.add_header('Authorization', _basic_authorization(auth))
        try:
            response = self._opener(url).open(request, timeout=max(remaining, 0.1))
        except request_module.HTTPError as error:  # 4xx, 5xx, a 3xx not followed: an answer, read as such
            response = error
        try:
            chunks, size = [], 0
            if method != 'HEAD':
                while True:
                    chunk = response.read(16384)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > MAX_RESPONSE_BYTES:
                        raise _TooLarge()
                    chunks.append(chunk)
            return _Answer(response.getcode(), response.headers, b''.join(chunks), method)
        finally:
            response.close()

    def _request(self, method, ref, url, deadline):
        """A call to the registry API with the authentication dance done the way the Docker client does it."""
        where = (ref.registry, ref.repository, ref.reference)
        scope = 'repository:%s:pull' % ref.repository
        cache_key = (ref.registry, scope)
        headers = {'Accept': MANIFEST_ACCEPT, 'User-Agent': USER_AGENT}
        if cache_key in self._auth_headers:
            headers['Authorization'] = self._auth_headers[cache_key]
        response = self._send(method, url, headers, deadline, where)
        if response.status_code != 401:
            return response
        challenge = response.headers.get('WWW-Authenticate', '')
        authorization = self._authorize(challenge, ref, scope, deadline)
        if authorization is None:
            return response
        self._auth_headers[cache_key] = authorization
        headers['Authorization'] = authorization
        return self._send(method, url, headers, deadline, where)

    def credentials_for(self, registry):
        """(username, password) for a registry, or None; module options first, then the Docker config."""
        key = normalize_registry_key(registry)
        if key in self._option_credentials:
            return self._option_credentials[key]
        if self._config_credentials is None:
            self._config_credentials = load_docker_config_auths(self.docker_config_path)
        return self._config_credentials.get(key)

    def credentials_source(self, registry):
        key = normalize_registry_key(registry)
        if key in self._option_credentials:
            return 'registry_auth'
        return self.docker_config_path

    def _authorize(self, challenge, ref, scope, deadline):
        """The Authorization header answering a 401 challenge, or None when we have nothing to offer."""
        scheme, params = parse_www_authenticate(challenge)
        credentials = self.credentials_for(ref.registry)
        where = (ref.registry, ref.repository, ref.reference)
        if scheme == 'basic':
            if not credentials:
                raise self._auth_error(ref, 'requires credentials (basic auth) and none are configured for it', None)
            token = base64.b64encode(('%s:%s' % credentials).encode('utf-8')).decode('ascii')
            return 'Basic ' + token
        if scheme == 'bearer' and params.get('realm'):
            self._check_realm(params['realm'], ref)
            query = {'scope': scope}  # built from the repository: a challenge does not choose what we ask a token for
            if params.get('service'):
                query['service'] = params['service']
            auth = credentials if credentials else None
            response = self._send('GET', params['realm'], {'User-Agent': USER_AGENT}, deadline, where, auth=auth,
                                  params=query)
            if response.status_code in (401, 403):
                if credentials:
                    raise self._auth_error(ref, 'token service %s refused the credentials' % params['realm'], credentials,
                                           response.status_code)
                raise self._auth_error(ref, 'token service %s requires credentials and none are configured for it'
                                       % params['realm'], None, response.status_code)
            if response.status_code != 200:
                raise RegistryError('token service %s of registry %s answered HTTP %d for %s'
                                    % (params['realm'], ref.registry, response.status_code, scope),
                                    ref.registry, ref.repository, ref.reference, response.status_code)
            try:
                body = json.loads(response.content.decode('utf-8'))
                token = body.get('token') or body.get('access_token')
            except (ValueError, AttributeError):
                token = None
            if not token:
                raise RegistryError('token service %s of registry %s returned no token' % (params['realm'], ref.registry),
                                    ref.registry, ref.repository, ref.reference, response.status_code)
            return 'Bearer ' + token
        return None

    def _check_realm(self, realm, ref):
        """A token realm gets our credentials: https only, or http on loopback or a host listed as insecure."""
        parts = urlsplit(realm)
        netloc = parts.netloc.rpartition('@')[2]
        if parts.scheme == 'https' and netloc:
            return
        if parts.scheme == 'http' and netloc and (is_loopback(netloc) or normalize_registry_key(netloc) in self.insecure):
            return
        raise RegistryAuthError(
            'registry %s names %r as its token service: refused, credentials and tokens go only to an https realm '
            '(or http on a loopback host or one listed in insecure_registries)' % (ref.registry, realm),
            ref.registry, ref.repository, ref.reference, 401)

    def _auth_error(self, ref, what, credentials, status=401):
        if credentials:
            advice = 'check the password of user %s for %s in %s' % (
                credentials[0], ref.registry, self.credentials_source(ref.registry))
        else:
            advice = ('give credentials for %s in registry_auth or log in with docker login (auths in %s)'
                      % (ref.registry, self.docker_config_path))
        return RegistryAuthError('registry %s %s for repository %s (HTTP %s): %s'
                                 % (ref.registry, what, ref.repository, status, advice),
                                 ref.registry, ref.repository, ref.reference, status)

    def _raise_for_status(self, response, ref, reference=None):
        reference = reference or ref.reference
        status = response.status_code
        if 200 <= status < 300:
            return
        if status == 404:
            raise ManifestNotFoundError('image %s:%s not found in registry %s (HTTP 404)' % (
                ref.name, reference, ref.registry) if not reference.startswith('sha256:') else
                'image %s@%s not found in registry %s (HTTP 404)' % (ref.name, reference, ref.registry),
                ref.registry, ref.repository, reference, status)
        if status in (401, 403):
            credentials = self.credentials_for(ref.registry)
            if credentials:
                what = 'refused the credentials of user %s' % credentials[0]
            else:
                what = 'refused anonymous access'
            raise self._auth_error(ref, what, credentials, status)
        raise RegistryError('registry %s answered HTTP %d for %s:%s' % (ref.registry, status, ref.repository, reference),
                            ref.registry, ref.repository, reference, status)


class _Problem(str):
    """A description of the last failed attempt, remembering its HTTP status if there was one."""

    def __new__(cls, text, status=None):
        obj = str.__new__(cls, text)
        obj.status = status
        return obj


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _seconds(value):
    return ('%g' % value)


def _short(exc):
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + '...'
