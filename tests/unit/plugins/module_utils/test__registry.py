"""The Registry HTTP API v2 client (plugins/module_utils/_registry.py) against a fake registry on 127.0.0.1.

The fake speaks just enough of the protocol to exercise what real registries do and the test bed's
registries cannot show: a bearer-token service, server errors, a HEAD without Docker-Content-Digest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from ansible_collections.safedeploy.compose.plugins.module_utils import _registry
from ansible_collections.safedeploy.compose.plugins.module_utils._registry import (
    MANIFEST_MEDIA_TYPES, OCI_INDEX, OCI_MANIFEST, DockerConfigError, ManifestNotFoundError, RegistryAuthError,
    RegistryClient, RegistryError, RegistryUnreachableError, is_loopback, load_docker_config_auths,
    normalize_registry_key, parse_www_authenticate,
)

USER = 'deployer'
PASSWORD = 'pw-Secret-4711'
TOKEN = 'tok-Very-Secret-0815'


def manifest_body(layers=(100, 200), config_size=50, media_type=OCI_MANIFEST):
    return json.dumps({
        'schemaVersion': 2, 'mediaType': media_type,
        'config': {'mediaType': 'application/vnd.oci.image.config.v1+json', 'size': config_size,
                   'digest': 'sha256:' + '1' * 64},
        'layers': [{'mediaType': 'application/vnd.oci.image.layer.v1.tar+gzip', 'size': size,
                    'digest': 'sha256:%064x' % index} for index, size in enumerate(layers)],
    }, sort_keys=True).encode()


def sha(body):
    return 'sha256:' + hashlib.sha256(body).hexdigest()


class FakeRegistry(object):
    """Manifests by (repository, reference); auth mode None, 'basic' or 'bearer'; scripted failures."""

    def __init__(self):
        self.auth = None
        self.public = set()  # repositories the token service serves anonymously
        self.manifests = {}
        self.blobs = {}
        self.fail_statuses = []  # statuses answered (in order) before the real answer
        self.head_digest = True
        self.realm = None  # the token service a bearer challenge names (default: this fake's /token)
        self.challenge_scope = None  # the scope a bearer challenge names (default: the repository's pull scope)
        self.drip = None  # seconds between the bytes of a GET answer, to trickle it
        self.referrers = None  # {(repository, digest): [descriptors]} served by the referrers API; None: no such API
        self.redirects = {}  # {path: Location}: answered (with redirect_status) once a request is authorized
        self.redirect_status = 307
        self.stop = threading.Event()
        self.requests = []
        self.token_requests = []
        self.server = ThreadingHTTPServer(('127.0.0.1', 0), self._handler())
        self.port = self.server.server_address[1]
        self.host = '127.0.0.1:%d' % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
        self.thread.start()

    def add(self, repository, reference, body, media_type=OCI_MANIFEST):
        self.manifests[(repository, reference)] = (body, media_type)
        self.manifests[(repository, sha(body))] = (body, media_type)
        return sha(body)

    def add_blob(self, repository, body):
        self.blobs[(repository, sha(body))] = body
        return sha(body)

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._serve(body=True)

            def do_HEAD(self):
                self._serve(body=False)

            def _reply(self, status, headers=None, body=b'', send_body=True):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                if send_body and body and fake.drip:
                    try:
                        for index in range(len(body)):
                            if fake.stop.wait(fake.drip):
                                return
                            self.wfile.write(body[index:index + 1])
                            self.wfile.flush()
                    except OSError:  # the client gave up
                        return
                elif send_body and body:
                    self.wfile.write(body)

            def _serve(self, body):
                url = urlparse(self.path)
                if url.path == '/token':
                    return self._token(parse_qs(url.query))
                fake.requests.append((self.command, url.path, dict(self.headers)))
                if fake.fail_statuses:
                    return self._reply(fake.fail_statuses.pop(0), send_body=body)
                if url.path.startswith('/storage/'):  # where blob reads are redirected to: no auth, like signed URLs
                    for (_repository, digest), content in fake.blobs.items():
                        if url.path == '/storage/' + digest:
                            return self._reply(200, {'Content-Type': 'application/octet-stream'}, content, body)
                    return self._reply(404, send_body=body)
                if not self._authorized():
                    return
                if url.path in fake.redirects:
                    return self._reply(fake.redirect_status, {'Location': fake.redirects[url.path]}, send_body=body)
                if '/referrers/' in url.path:
                    if fake.referrers is None:
                        return self._reply(404, {'Content-Type': 'text/plain'}, b'404 page not found\n', body)
                    repository, digest = url.path[len('/v2/'):].split('/referrers/')
                    index = json.dumps({'schemaVersion': 2, 'mediaType': OCI_INDEX,
                                        'manifests': fake.referrers.get((repository, digest), [])}).encode()
                    return self._reply(200, {'Content-Type': OCI_INDEX}, index, body)
                if '/blobs/' in url.path:
                    repository, digest = url.path[len('/v2/'):].split('/blobs/')
                    if (repository, digest) not in fake.blobs:
                        return self._reply(404, {'Content-Type': 'application/json'},
                                           b'{"errors":[{"code":"BLOB_UNKNOWN"}]}', body)
                    return self._reply(200, {'Content-Type': 'application/octet-stream'}, fake.blobs[(repository, digest)],
                                       body)
                parts = url.path.split('/manifests/')
                repository, reference = parts[0][len('/v2/'):], parts[1]
                if (repository, reference) not in fake.manifests:
                    return self._reply(404, {'Content-Type': 'application/json'},
                                       b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', body)
                content, media_type = fake.manifests[(repository, reference)]
                headers = {'Content-Type': media_type}
                if fake.head_digest:  # when False, neither HEAD nor GET carries it: the digest must be computed
                    headers['Docker-Content-Digest'] = sha(content)
                self._reply(200, headers, content, body)

            def _authorized(self):
                given = self.headers.get('Authorization', '')
                if fake.auth == 'basic':
                    expected = 'Basic ' + base64.b64encode(('%s:%s' % (USER, PASSWORD)).encode()).decode()
                    if given != expected:
                        self._reply(401, {'WWW-Authenticate': 'Basic realm="fake"'}, send_body=self.command == 'GET')
                        return False
                elif fake.auth == 'bearer':
                    if given != 'Bearer ' + TOKEN:
                        repository = self.path.split('/manifests/')[0].split('/blobs/')[0][len('/v2/'):]
                        scope = fake.challenge_scope or 'repository:%s:pull' % repository
                        realm = fake.realm or 'http://%s/token' % fake.host
                        self._reply(401, {'WWW-Authenticate': 'Bearer realm="%s",service="fake.test",'
                                                              'scope="%s"' % (realm, scope)},
                                    send_body=self.command == 'GET')
                        return False
                return True

            def _token(self, query):
                given = self.headers.get('Authorization', '')
                fake.token_requests.append((query, given))
                expected = 'Basic ' + base64.b64encode(('%s:%s' % (USER, PASSWORD)).encode()).decode()
                repository = query.get('scope', [''])[0].split(':')[1]
                if given == expected or (not given and repository in fake.public):
                    return self._reply(200, {'Content-Type': 'application/json'},
                                       json.dumps({'token': TOKEN, 'expires_in': 300}).encode())
                return self._reply(401, {'Content-Type': 'application/json'}, b'{"details":"incorrect username or password"}')

        return Handler


@pytest.fixture
def fake():
    registry = FakeRegistry()
    yield registry
    registry.close()


class Clock(object):
    """A fake clock the fake sleep advances, so retry tests take no real time."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def client_for(fake_or_none=None, **kwargs):
    kwargs.setdefault('docker_config', '/nonexistent/safedeploy-test/config.json')
    kwargs.setdefault('timeout', 10)
    return RegistryClient(**kwargs)


def assert_no_secret(exc):
    text = '%s %r %r' % (exc, exc, exc.as_dict())
    for secret in (PASSWORD, TOKEN, base64.b64encode(('%s:%s' % (USER, PASSWORD)).encode()).decode()):
        assert secret not in text


# ------------------------------------------------------------------ resolving

def test_anonymous_head_gives_digest_and_sends_every_manifest_type(fake):
    digest = fake.add('team/web', 'v1', manifest_body())
    resolved = client_for().resolve('%s/team/web:v1' % fake.host)
    assert resolved.digest == digest
    assert resolved.media_type == OCI_MANIFEST
    method, path, headers = fake.requests[-1]
    assert (method, path) == ('HEAD', '/v2/team/web/manifests/v1')
    accepted = [item.strip() for item in headers['Accept'].split(',')]
    assert accepted == list(MANIFEST_MEDIA_TYPES)


def test_index_digest_is_the_index_not_a_platform_manifest(fake):
    amd64 = fake.add('team/multi', sha(manifest_body((1,))), manifest_body((1,)))
    index = json.dumps({'schemaVersion': 2, 'mediaType': OCI_INDEX, 'manifests': [
        {'mediaType': OCI_MANIFEST, 'digest': amd64, 'size': 10, 'platform': {'os': 'linux', 'architecture': 'amd64'}},
    ]}).encode()
    index_digest = fake.add('team/multi', 'v1', index, OCI_INDEX)
    resolved = client_for().resolve('%s/team/multi:v1' % fake.host)
    assert resolved.digest == index_digest
    assert resolved.media_type == OCI_INDEX


def test_head_without_digest_falls_back_to_get_and_hashes_the_body(fake):
    body = manifest_body((7, 8, 9))
    fake.add('team/web', 'v2', body)
    fake.head_digest = False
    resolved = client_for().resolve('%s/team/web:v2' % fake.host)
    assert resolved.digest == sha(body)
    assert [request[0] for request in fake.requests] == ['HEAD', 'GET']
    assert resolved.size == len(body)


def test_missing_manifest_is_not_found_with_status(fake):
    with pytest.raises(ManifestNotFoundError) as info:
        client_for().resolve('%s/team/web:nope' % fake.host)
    error = info.value
    assert (error.registry, error.repository, error.reference, error.status) == (fake.host, 'team/web', 'nope', 404)
    assert 'not found' in str(error) and 'HTTP 404' in str(error)


def test_digest_reference_is_checked_by_digest(fake):
    digest = fake.add('team/web', 'v1', manifest_body())
    assert client_for().resolve('%s/team/web:ignored@%s' % (fake.host, digest)).digest == digest
    assert fake.requests[-1][1] == '/v2/team/web/manifests/%s' % digest


# ------------------------------------------------------------------ retries and deadlines

def test_server_errors_are_retried_with_growing_backoff(fake):
    digest = fake.add('team/web', 'v1', manifest_body())
    fake.fail_statuses = [503, 500, 502]
    clock = Clock()
    client = client_for(clock=clock, sleep=clock.sleep, backoff=0.5)
    assert client.resolve('%s/team/web:v1' % fake.host).digest == digest
    assert len(fake.requests) == 4
    assert clock.sleeps == [0.5, 1.0, 2.0]


def test_server_errors_until_the_deadline_make_the_registry_unreachable(fake):
    fake.fail_statuses = [503] * 1000
    clock = Clock()
    client = client_for(clock=clock, sleep=clock.sleep, backoff=0.5, max_backoff=2, timeout=9)
    with pytest.raises(RegistryUnreachableError) as info:
        client.resolve('%s/team/web:v1' % fake.host)
    assert info.value.status == 503
    assert 'within 9s' in str(info.value) and 'HTTP 503' in str(info.value)
    assert sum(clock.sleeps) == pytest.approx(9)
    assert max(clock.sleeps) <= 2


def test_connection_refused_is_bounded_by_the_timeout_and_remembered():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    client = client_for(timeout=1.5, backoff=0.2)
    started = time.monotonic()
    with pytest.raises(RegistryUnreachableError) as info:
        client.resolve('127.0.0.1:%d/team/web:v1' % port)
    elapsed = time.monotonic() - started
    assert 1.4 <= elapsed < 4
    assert 'ConnectionError' in str(info.value)
    # a second image on the same registry fails at once instead of waiting again
    started = time.monotonic()
    with pytest.raises(RegistryUnreachableError):
        client.resolve('127.0.0.1:%d/team/other:v1' % port)
    assert time.monotonic() - started < 0.2


# ------------------------------------------------------------------ authentication

def test_bearer_token_flow_with_credentials(fake):
    fake.auth = 'bearer'
    digest = fake.add('team/private', 'v1', manifest_body())
    client = client_for(credentials=[{'registry': fake.host, 'username': USER, 'password': PASSWORD}])
    assert client.resolve('%s/team/private:v1' % fake.host).digest == digest
    query, authorization = fake.token_requests[-1]
    assert query['service'] == ['fake.test']
    assert query['scope'] == ['repository:team/private:pull']
    assert authorization.startswith('Basic ')
    # the token is cached: a second resolve needs no token request
    client.resolve('%s/team/private:v1' % fake.host)
    assert len(fake.token_requests) == 1


def test_bearer_token_flow_anonymous_for_a_public_repository(fake):
    fake.auth = 'bearer'
    fake.public.add('library/nginx')
    digest = fake.add('library/nginx', '1.25', manifest_body())
    assert client_for().resolve('%s/library/nginx:1.25' % fake.host).digest == digest
    assert fake.token_requests[-1][1] == ''


def test_bearer_wrong_password_is_a_clear_401_without_secrets(fake):
    fake.auth = 'bearer'
    fake.add('team/private', 'v1', manifest_body())
    wrong = 'wrong-' + PASSWORD
    client = client_for(credentials=[{'registry': fake.host, 'username': USER, 'password': wrong}])
    with pytest.raises(RegistryAuthError) as info:
        client.resolve('%s/team/private:v1' % fake.host)
    error = info.value
    assert error.status == 401
    assert 'refused the credentials' in str(error) and USER in str(error) and 'registry_auth' in str(error)
    assert wrong not in '%s %r' % (error, error.as_dict())
    assert_no_secret(error)


def test_bearer_without_credentials_says_how_to_give_them(fake):
    fake.auth = 'bearer'
    fake.add('team/private', 'v1', manifest_body())
    with pytest.raises(RegistryAuthError) as info:
        client_for().resolve('%s/team/private:v1' % fake.host)
    assert 'requires credentials' in str(info.value) and 'docker login' in str(info.value)


def test_basic_auth_flow(fake):
    fake.auth = 'basic'
    digest = fake.add('team/web', 'v1', manifest_body())
    client = client_for(credentials=[{'registry': 'http://%s/' % fake.host, 'username': USER, 'password': PASSWORD}])
    assert client.resolve('%s/team/web:v1' % fake.host).digest == digest
    statuses = [headers.get('Authorization', '').split(' ')[0] for _m, _p, headers in fake.requests]
    assert statuses == ['', 'Basic']


def test_basic_auth_wrong_password(fake):
    fake.auth = 'basic'
    fake.add('team/web', 'v1', manifest_body())
    client = client_for(credentials=[{'registry': fake.host, 'username': USER, 'password': 'nope-' + PASSWORD}])
    with pytest.raises(RegistryAuthError) as info:
        client.resolve('%s/team/web:v1' % fake.host)
    assert info.value.status == 401
    assert 'nope-' + PASSWORD not in str(info.value)
    assert_no_secret(info.value)


def test_credentials_from_docker_config(fake, tmp_path, monkeypatch):
    fake.auth = 'bearer'
    digest = fake.add('team/private', 'v1', manifest_body())
    config = {'auths': {'http://%s' % fake.host: {'auth': base64.b64encode(('%s:%s' % (USER, PASSWORD)).encode()).decode()}}}
    (tmp_path / 'config.json').write_text(json.dumps(config))
    monkeypatch.setenv('DOCKER_CONFIG', str(tmp_path))
    client = RegistryClient(timeout=10)
    assert client.docker_config_path == str(tmp_path / 'config.json')
    assert client.resolve('%s/team/private:v1' % fake.host).digest == digest
    # the option wins over the file
    option = RegistryClient(timeout=10, credentials=[{'registry': fake.host, 'username': USER, 'password': 'x'}])
    with pytest.raises(RegistryAuthError) as info:
        option.resolve('%s/team/private:v1' % fake.host)
    assert 'registry_auth' in str(info.value)


# ------------------------------------------------------------------ sizes

def test_platform_manifest_lists_config_and_layers_and_picks_amd64_from_an_index(fake):
    arm = manifest_body((1000,), 1)
    amd = manifest_body((300, 400), 20)
    fake.add('team/multi', 'arm', arm)
    fake.add('team/multi', 'amd', amd)
    index = json.dumps({'schemaVersion': 2, 'mediaType': OCI_INDEX, 'manifests': [
        {'mediaType': OCI_MANIFEST, 'digest': sha(arm), 'size': len(arm), 'platform': {'os': 'linux', 'architecture': 'arm64'}},
        {'mediaType': OCI_MANIFEST, 'digest': sha(amd), 'size': len(amd), 'platform': {'os': 'linux', 'architecture': 'amd64'}},
    ]}).encode()
    fake.add('team/multi', 'v1', index, OCI_INDEX)
    client = client_for()
    chosen = client.platform_manifest('%s/team/multi:v1' % fake.host)
    assert chosen.digest == sha(amd) and (chosen.config_digest, chosen.config_size) == ('sha256:' + '1' * 64, 20)
    assert chosen.layers == [('sha256:%064x' % 0, 300), ('sha256:%064x' % 1, 400)]
    assert client.platform_manifest('%s/team/multi:arm' % fake.host).layers == [('sha256:%064x' % 0, 1000)]
    assert client.platform_manifest('%s/team/multi:v1' % fake.host, architecture='s390x').digest == sha(arm)  # first


def image_config(diff_ids):
    return json.dumps({'architecture': 'amd64', 'os': 'linux',
                       'rootfs': {'type': 'layers', 'diff_ids': list(diff_ids)}}).encode()


def test_image_diff_ids_come_from_the_config_blob_checked_by_digest(fake):
    diff_ids = ['sha256:' + 'a' * 64, 'sha256:' + 'b' * 64]
    digest = fake.add_blob('team/web', image_config(diff_ids))
    client = client_for()
    assert client.image_diff_ids('%s/team/web:v1' % fake.host, digest) == diff_ids
    assert fake.requests[-1][:2] == ('GET', '/v2/team/web/blobs/' + digest)
    # What is no image config listing diff ids is None (the caller counts every layer), not a failure.
    artifact = fake.add_blob('team/web', b'{"kind": "sbom"}')
    assert client.image_diff_ids('%s/team/web:v1' % fake.host, artifact) is None
    assert client.image_diff_ids('%s/team/web:v1' % fake.host, fake.add_blob('team/web', b'\x00\x01')) is None


def test_image_diff_ids_refuse_a_blob_that_is_not_the_one_asked_for(fake):
    body = image_config(['sha256:' + 'a' * 64])
    wrong = 'sha256:' + 'f' * 64
    fake.blobs[('team/web', wrong)] = body
    with pytest.raises(RegistryError) as info:
        client_for().image_diff_ids('%s/team/web:v1' % fake.host, wrong)
    assert 'does not match that digest' in str(info.value), str(info.value)


def test_a_missing_config_blob_is_named(fake):
    digest = 'sha256:' + 'e' * 64
    with pytest.raises(ManifestNotFoundError) as info:
        client_for().image_diff_ids('%s/team/web:v1' % fake.host, digest)
    assert digest in str(info.value) and 'push the image again' in str(info.value), str(info.value)


def test_the_config_blob_is_fetched_with_the_same_bearer_token(fake):
    fake.auth = 'bearer'
    digest = fake.add_blob('team/web', image_config(['sha256:' + 'a' * 64]))
    fake.add('team/web', 'v1', manifest_body())
    client = client_for(credentials=[{'registry': fake.host, 'username': USER, 'password': PASSWORD}])
    client.platform_manifest('%s/team/web:v1' % fake.host)
    assert client.image_diff_ids('%s/team/web:v1' % fake.host, digest) == ['sha256:' + 'a' * 64]
    assert len(fake.token_requests) == 1, 'the blob asked for a token again'


# ------------------------------------------------------------------ small parts

def test_parse_www_authenticate_keeps_commas_inside_quotes():
    scheme, params = parse_www_authenticate(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push"')
    assert scheme == 'bearer'
    assert params == {'realm': 'https://auth.example.com/token', 'service': 'registry.example.com',
                      'scope': 'repository:a/b:pull,push'}
    assert parse_www_authenticate('Basic realm="x"') == ('basic', {'realm': 'x'})
    assert parse_www_authenticate('') == (None, {})


@pytest.mark.parametrize('key, expected', [
    ('https://index.docker.io/v1/', 'docker.io'),
    ('registry-1.docker.io', 'docker.io'),
    ('http://127.0.0.1:5001', '127.0.0.1:5001'),
    ('127.0.0.1:5001/v2/', '127.0.0.1:5001'),
    ('registry.example.com', 'registry.example.com'),
])
def test_normalize_registry_key(key, expected):
    assert normalize_registry_key(key) == expected


def test_scheme_http_for_loopback_and_insecure_https_otherwise():
    client = client_for(insecure_registries=['build.lan:5000'])
    assert client.base_url('127.0.0.1:5000') == 'http://127.0.0.1:5000/v2/'
    assert client.base_url('localhost:5000') == 'http://localhost:5000/v2/'
    assert client.base_url('[::1]:5000') == 'http://[::1]:5000/v2/'
    assert client.base_url('build.lan:5000') == 'http://build.lan:5000/v2/'
    assert client.base_url('registry.example.com') == 'https://registry.example.com/v2/'
    assert client.base_url('docker.io') == 'https://registry-1.docker.io/v2/'
    assert is_loopback('127.0.0.2:80') and not is_loopback('10.0.0.1:5000')


def test_docker_config_errors_name_the_file_not_the_secret(tmp_path):
    path = tmp_path / 'config.json'
    assert load_docker_config_auths(str(path)) == {}  # no file: no credentials
    path.write_text('{"auths": {"r.example": {"auth": "%s"}}' % base64.b64encode(b'u:' + PASSWORD.encode()).decode())
    with pytest.raises(DockerConfigError) as info:
        load_docker_config_auths(str(path))
    assert str(path) in str(info.value)
    path.write_text(json.dumps({'auths': {'r.example': {'auth': '!!not base64:' + PASSWORD}}}))
    with pytest.raises(DockerConfigError) as info:
        load_docker_config_auths(str(path))
    assert 'r.example' in str(info.value) and PASSWORD not in str(info.value)
    path.write_text(json.dumps({'auths': {'https://index.docker.io/v1/': {'auth': base64.b64encode(b'u:p:q').decode()},
                                          'helper.example': {}}, 'credsStore': 'pass'}))
    assert load_docker_config_auths(str(path)) == {'docker.io': ('u', 'p:q')}


def test_errors_are_registry_errors():
    assert issubclass(ManifestNotFoundError, RegistryError)
    assert issubclass(RegistryAuthError, RegistryError)
    assert issubclass(RegistryUnreachableError, RegistryError)
    assert os.path.basename(_registry.default_docker_config_path({'DOCKER_CONFIG': '/x'})) == 'config.json'


# ------------------------------------------------------------------ hardening (issue 12, item 5)

@pytest.mark.parametrize('realm', ['http://registry.example.invalid/token', 'ftp://127.0.0.1/token', '/token',
                                   'https:///token'])
def test_credentials_go_to_no_token_realm_but_https_or_a_loopback_or_insecure_http_one(fake, realm):
    fake.add('team/web', 'v1', manifest_body())
    fake.auth, fake.realm = 'bearer', realm
    client = client_for(credentials=[{'registry': fake.host, 'username': USER, 'password': PASSWORD}])
    with pytest.raises(RegistryAuthError) as info:
        client.resolve('%s/team/web:v1' % fake.host)
    assert 'token service' in str(info.value) and 'https' in str(info.value), str(info.value)
    assert fake.token_requests == [], 'the credentials went to the realm'
    assert_no_secret(info.value)


def test_the_token_scope_is_the_repositorys_not_the_challenges(fake):
    digest = fake.add('team/web', 'v1', manifest_body())
    fake.auth, fake.challenge_scope = 'bearer', 'repository:team/other:push,pull'
    client = client_for(credentials=[{'registry': fake.host, 'username': USER, 'password': PASSWORD}])
    assert client.resolve('%s/team/web:v1' % fake.host).digest == digest
    assert [query['scope'] for query, _given in fake.token_requests] == [['repository:team/web:pull']]


def test_netrc_is_never_read(fake, netrc_file):
    digest = fake.add('team/web', 'v1', manifest_body())
    assert client_for().resolve('%s/team/web:v1' % fake.host).digest == digest
    fake.auth, fake.public = 'bearer', {'team/web'}
    assert client_for().resolve('%s/team/web:v1' % fake.host).digest == digest
    sent = [headers.get('Authorization', '') for _method, _path, headers in fake.requests]
    sent += [given for _query, given in fake.token_requests]
    assert not any(value.startswith('Basic') for value in sent), sent
    assert fake.token_requests and fake.token_requests[0][1] == '', 'an anonymous token request carried credentials'


def test_an_answer_larger_than_the_cap_is_refused(fake, monkeypatch):
    monkeypatch.setattr(_registry, 'MAX_RESPONSE_BYTES', 2000)
    fake.add('team/big', 'v1', manifest_body(layers=range(200)))
    fake.add('team/small', 'v1', manifest_body())
    client = client_for()
    assert client.manifest('%s/team/small:v1' % fake.host)[1]['layers']
    with pytest.raises(RegistryError) as info:
        client.manifest('%s/team/big:v1' % fake.host)
    assert 'larger than 2000 bytes' in str(info.value), str(info.value)


def test_a_trickling_answer_is_cut_off_at_the_deadline(fake):
    fake.add('team/slow', 'v1', manifest_body(layers=range(20)))
    fake.drip = 0.05  # about 2 KB: 100 s if each byte's read counted on its own
    started = time.monotonic()
    with pytest.raises(RegistryUnreachableError) as info:
        client_for(timeout=1).manifest('%s/team/slow:v1' % fake.host)
    assert time.monotonic() - started < 5, 'the deadline bounds each read, not the exchange'
    assert 'within 1s' in str(info.value), str(info.value)


@pytest.mark.parametrize('body', [b'[1, 2]', b'"manifest"', b'null'])
def test_a_manifest_that_is_json_but_no_object_fails_with_a_message(fake, body):
    fake.add('team/odd', 'v1', body)
    client = client_for()
    for call in (client.manifest, client.platform_manifest):
        with pytest.raises(RegistryError) as info:
            call('%s/team/odd:v1' % fake.host)
        assert 'not an object' in str(info.value), str(info.value)


def test_rate_limiting_is_named_as_such(fake):
    fake.add('team/web', 'v1', manifest_body())
    fake.fail_statuses = [429] * 100
    clock = Clock()
    with pytest.raises(RegistryUnreachableError) as info:
        client_for(clock=clock, sleep=clock.sleep, timeout=5).resolve('%s/team/web:v1' % fake.host)
    message = str(info.value)
    assert 'HTTP 429' in message and 'limiting the rate' in message, message
    assert 'check that it is up' not in message


# ---------------------------------------------------------------- blobs and referrers (signature verification)

def test_blob_is_read_and_checked_against_its_digest(fake):
    digest = fake.add_blob('app/web', b'payload')
    client = client_for(fake, timeout=5)
    assert client.blob('%s/app/web' % fake.host, digest) == b'payload'
    fake.blobs[('app/web', digest)] = b'other bytes'
    with pytest.raises(RegistryError, match='does not match that digest'):
        client.blob('%s/app/web' % fake.host, digest)
    with pytest.raises(ManifestNotFoundError, match='no blob'):
        client.blob('%s/app/web' % fake.host, 'sha256:' + '0' * 64)


def test_referrers_api_absent_is_none_and_present_is_filtered(fake):
    client = client_for(fake, timeout=5)
    subject = 'sha256:' + 'a' * 64
    assert client.referrers('%s/app/web' % fake.host, subject) is None
    bundle = {'mediaType': OCI_MANIFEST, 'digest': 'sha256:' + 'b' * 64, 'size': 10,
              'artifactType': 'application/vnd.dev.sigstore.bundle.v0.3+json'}
    sbom = dict(bundle, digest='sha256:' + 'c' * 64, artifactType='application/spdx+json')
    fake.referrers = {('app/web', subject): [bundle, sbom, 'junk']}
    assert client.referrers('%s/app/web' % fake.host, subject) == [bundle, sbom]
    assert client.referrers('%s/app/web' % fake.host, subject,
                            artifact_type='application/vnd.dev.sigstore.bundle.v0.3+json') == [bundle]
    assert client.referrers('%s/app/web' % fake.host, 'sha256:' + 'd' * 64) == []


# ---------------------------------------------------------------- the HTTP layer (standard library, no requests)

def test_requests_is_not_imported():
    import sys
    import subprocess
    code = ('import sys; import ansible_collections.safedeploy.compose.plugins.module_utils._registry; '
            'print("requests" in sys.modules, "urllib.request" in sys.modules)')
    out = subprocess.check_output([sys.executable, '-c', code], env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.split() == [b'False', b'False'], out


@pytest.fixture
def other():
    registry = FakeRegistry()
    yield registry
    registry.close()


@pytest.mark.parametrize('status', [301, 302, 303, 307, 308])
def test_a_redirect_to_another_origin_does_not_carry_the_authorization(fake, other, status):
    fake.auth = 'basic'
    digest = fake.add_blob('team/web', b'blob bytes')
    other.blobs[('team/web', digest)] = b'blob bytes'
    fake.redirects['/v2/team/web/blobs/' + digest] = 'http://%s/storage/%s' % (other.host, digest)
    fake.redirect_status = status
    client = client_for(credentials=[{'registry': fake.host, 'username': USER, 'password': PASSWORD}])
    assert client.blob('%s/team/web' % fake.host, digest) == b'blob bytes'
    assert fake.requests[-1][2].get('Authorization', '').startswith('Basic ')  # the registry got it
    method, path, headers = other.requests[-1]
    assert (method, path) == ('GET', '/storage/' + digest)
    assert not any(name.lower() == 'authorization' for name in headers), headers
    assert headers.get('Accept'), 'the other headers are kept'


def test_a_redirect_within_the_origin_carries_the_authorization(fake):
    fake.auth = 'basic'
    digest = fake.add_blob('team/web', b'blob bytes')
    fake.redirects['/v2/team/web/blobs/' + digest] = '/storage/' + digest  # relative: same scheme, host and port
    client = client_for(credentials=[{'registry': fake.host, 'username': USER, 'password': PASSWORD}])
    assert client.blob('%s/team/web' % fake.host, digest) == b'blob bytes'
    method, path, headers = fake.requests[-1]
    assert (method, path) == ('GET', '/storage/' + digest)
    expected = 'Basic ' + base64.b64encode(('%s:%s' % (USER, PASSWORD)).encode()).decode()
    assert headers.get('Authorization') == expected


def test_the_same_host_on_another_port_is_another_origin(fake, other):
    fake.auth = 'basic'
    digest = fake.add_blob('team/web', b'blob bytes')
    other.blobs[('team/web', digest)] = b'blob bytes'
    fake.redirects['/v2/team/web/blobs/' + digest] = 'http://localhost:%d/storage/%s' % (other.port, digest)
    client = client_for(credentials=[{'registry': fake.host, 'username': USER, 'password': PASSWORD}])
    assert client.blob('%s/team/web' % fake.host, digest) == b'blob bytes'
    assert 'Authorization' not in other.requests[-1][2]


def test_a_redirect_loop_is_a_failed_attempt_retried_until_the_deadline(fake):
    fake.add('team/web', 'v1', manifest_body())
    fake.redirects['/v2/team/web/manifests/v1'] = '/v2/team/web/manifests/v1'
    clock = Clock()
    with pytest.raises(RegistryUnreachableError) as info:
        client_for(clock=clock, sleep=clock.sleep, timeout=2, backoff=0.5).resolve('%s/team/web:v1' % fake.host)
    assert 'TooManyRedirects' in str(info.value), str(info.value)
    assert len(clock.sleeps) >= 2, 'it was not retried'


def test_a_redirect_to_another_scheme_is_refused(fake):
    fake.add('team/web', 'v1', manifest_body())
    fake.redirects['/v2/team/web/manifests/v1'] = 'file:///etc/passwd'
    clock = Clock()
    with pytest.raises(RegistryUnreachableError) as info:
        client_for(clock=clock, sleep=clock.sleep, timeout=1).resolve('%s/team/web:v1' % fake.host)
    assert 'only http and https' in str(info.value), str(info.value)


def test_an_error_status_is_an_answer_with_headers_and_body(fake):
    client = client_for()
    deadline = client.new_deadline()
    url = 'http://%s/v2/team/web/blobs/sha256:%s' % (fake.host, 'e' * 64)
    for method, content in (('GET', b'{"errors":[{"code":"BLOB_UNKNOWN"}]}'), ('HEAD', b'')):
        answer = client._send(method, url, {}, deadline, (fake.host, 'team/web', 'x'))
        assert (answer.status_code, answer.content, answer.method) == (404, content, method)
        assert answer.headers.get('content-type') == answer.headers.get('Content-Type') == 'application/json'
    fake.auth = 'bearer'
    answer = client._send('GET', 'http://%s/v2/team/web/manifests/v1' % fake.host, {}, deadline, (fake.host, 'team/web', 'v1'))
    assert answer.status_code == 401 and answer.headers.get('www-authenticate', '').startswith('Bearer realm=')


def test_a_loopback_registry_ignores_the_environments_proxy(fake, other, monkeypatch):
    for name in ('no_proxy', 'NO_PROXY', 'all_proxy', 'ALL_PROXY', 'REQUEST_METHOD'):
        monkeypatch.delenv(name, raising=False)
    for name in ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY'):
        monkeypatch.setenv(name, 'http://%s' % other.host)
    digest = fake.add('team/web', 'v1', manifest_body())
    for host in (fake.host, 'localhost:%d' % fake.port):
        assert client_for().resolve('%s/team/web:v1' % host).digest == digest
    assert other.requests == [], 'a loopback registry was asked through the proxy'
    # Any other registry goes through it (the proxy here answers as the registry would).
    other.add('team/web', 'v1', manifest_body())
    client = client_for(insecure_registries=['registry.example.invalid:5000'])
    assert client.resolve('registry.example.invalid:5000/team/web:v1').digest == digest
    assert other.requests[-1][:2] == ('HEAD', '/v2/team/web/manifests/v1')


def test_a_registry_in_a_no_proxy_network_is_asked_direct(fake, other, monkeypatch):
    for name in ('no_proxy', 'NO_PROXY', 'all_proxy', 'ALL_PROXY', 'REQUEST_METHOD'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('no_proxy', '10.0.0.0/8,127.0.0.0/8')
    assert _registry.RegistryClient()._proxies('https://10.1.2.3:5000/v2/') == {}
    assert _registry.RegistryClient()._proxies('https://registry.example:5000/v2/') is None
    monkeypatch.setenv('no_proxy', 'registry.example')
    assert _registry.RegistryClient()._proxies('https://10.1.2.3:5000/v2/') is None


def test_a_malformed_header_value_fails_without_echoing_it(fake):
    fake.add('team/web', 'v1', manifest_body())
    client = client_for()
    deadline = client.new_deadline()
    with pytest.raises(_registry.RegistryError) as info:
        client._send('GET', 'http://%s/v2/team/web/manifests/v1' % fake.host, {'Authorization': 'Bearer sec\nret-token'},
                     deadline, (fake.host, 'team/web', 'v1'))
    message = str(info.value)
    assert 'could not be sent' in message and 'malformed' in message, message
    assert 'ret-token' not in message and 'sec' not in message.replace('second', ''), message


def test_the_token_query_keeps_the_realms_own(fake):
    fake.auth = 'bearer'
    fake.realm = 'http://%s/token?account=%s' % (fake.host, USER)
    digest = fake.add('team/web', 'v1', manifest_body())
    client = client_for(credentials=[{'registry': fake.host, 'username': USER, 'password': PASSWORD}])
    assert client.resolve('%s/team/web:v1' % fake.host).digest == digest
    query, given = fake.token_requests[-1]
    assert query == {'account': [USER], 'scope': ['repository:team/web:pull'], 'service': ['fake.test']}
    assert given == 'Basic ' + base64.b64encode(('%s:%s' % (USER, PASSWORD)).encode()).decode()


def test_a_tls_failure_is_named_and_not_retried(monkeypatch):
    import ssl
    from urllib.error import URLError
    calls = []

    def failing(*args):
        calls.append(args)
        raise URLError(ssl.SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed'))
    client = client_for()
    monkeypatch.setattr(client, '_fetch', failing)
    with pytest.raises(RegistryUnreachableError) as info:
        client.resolve('registry.example.invalid/team/web:v1')
    assert 'TLS handshake with registry registry.example.invalid failed' in str(info.value), str(info.value)
    assert 'CERTIFICATE_VERIFY_FAILED' in str(info.value)
    assert len(calls) == 1


def test_other_exceptions_of_the_exchange_are_not_swallowed(monkeypatch):
    client = client_for()
    monkeypatch.setattr(client, '_fetch', lambda *args: {}['bug'])
    with pytest.raises(KeyError):
        client.resolve('registry.example.invalid/team/web:v1')


def test_validate_certs_chooses_the_tls_context():
    import ssl
    assert client_for()._tls_context().verify_mode == ssl.CERT_REQUIRED
    unverified = client_for(validate_certs=False)._tls_context()
    assert unverified.verify_mode == ssl.CERT_NONE and not unverified.check_hostname
