"""A cosign-compatible signer for the test bed, written from the published formats (not from cosign's code).

It makes key pairs with `cryptography` and pushes, with a small push client of its own (monolithic blob upload), the
two storage formats of cosign key-based image signatures to a registry (open, or with basic auth):

- legacy: the tag `sha256-<hex>.sig` holding an OCI image manifest whose layers are simple-signing payloads
  (application/vnd.dev.cosign.simplesigning.v1+json), each signed in the annotation dev.cosignproject.cosign/signature
  (ECDSA over SHA-256, ASN.1 DER, base64);
- bundle: a Sigstore bundle v0.3 (a DSSE envelope of an in-toto statement naming the image digest, signed over the
  DSSE pre-authentication encoding) in an OCI image manifest with artifactType
  application/vnd.dev.sigstore.bundle.v0.3+json and `subject` the image, pushed by digest; then either the OCI 1.1
  fallback tag `sha256-<hex>` (an OCI index of the referrers) is updated, or the referrer is registered with a
  ReferrersFront, a loopback registry front that serves the referrers API the Debian registry lacks.

Every knob a test needs to make a bad signature is here: another digest in the payload, a payload altered after
signing, another subject in the statement, any key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
OCI_INDEX = 'application/vnd.oci.image.index.v1+json'
OCI_CONFIG = 'application/vnd.oci.image.config.v1+json'
OCI_EMPTY = 'application/vnd.oci.empty.v1+json'
SIMPLE_SIGNING = 'application/vnd.dev.cosign.simplesigning.v1+json'
SIGNATURE_ANNOTATION = 'dev.cosignproject.cosign/signature'
BUNDLE = 'application/vnd.dev.sigstore.bundle.v0.3+json'
IN_TOTO = 'application/vnd.in-toto+json'
ACCEPT = ', '.join([OCI_INDEX, OCI_MANIFEST, 'application/vnd.docker.distribution.manifest.v2+json',
                    'application/vnd.docker.distribution.manifest.list.v2+json'])


def sha256(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


class Key(object):
    """A key pair: `pem` is the public key as cosign.pub holds it; sign() signs as cosign does for its type."""

    def __init__(self, kind='ecdsa', private=None):
        self.kind = kind
        if private is not None:
            self.private = private
        elif kind == 'ecdsa':
            self.private = ec.generate_private_key(ec.SECP256R1())
        elif kind == 'ed25519':
            self.private = ed25519.Ed25519PrivateKey.generate()
        elif kind in ('rsa', 'rsa-pss'):
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            raise ValueError(kind)
        public = self.private.public_key()
        self.pem = public.public_bytes(serialization.Encoding.PEM,
                                       serialization.PublicFormat.SubjectPublicKeyInfo).decode('ascii')
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.keyid = hashlib.sha256(der).hexdigest()

    def sign(self, data):
        if self.kind == 'ecdsa':
            return self.private.sign(data, ec.ECDSA(hashes.SHA256()))
        if self.kind == 'ed25519':
            return self.private.sign(data)
        if self.kind == 'rsa':
            return self.private.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return self.private.sign(data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                                 hashes.SHA256())


class Registry(object):
    """A minimal push client of the Registry HTTP API v2 (basic auth, as the test bed's htpasswd registry wants)."""

    def __init__(self, host, auth=None):
        self.host = host
        self.session = requests.Session()
        self.session.trust_env = False
        if auth:
            self.session.auth = auth

    def url(self, repository, path):
        return 'http://%s/v2/%s/%s' % (self.host, repository, path)

    def push_blob(self, repository, data):
        digest = sha256(data)
        if self.session.head(self.url(repository, 'blobs/' + digest), timeout=30).status_code == 200:
            return digest
        start = self.session.post(self.url(repository, 'blobs/uploads/'), timeout=30)
        start.raise_for_status()
        location = start.headers['Location']
        if location.startswith('/'):
            location = 'http://%s%s' % (self.host, location)
        put = self.session.put(location, params={'digest': digest}, data=data, timeout=30,
                               headers={'Content-Type': 'application/octet-stream'})
        put.raise_for_status()
        return digest

    def push_manifest(self, repository, reference, document, media_type=OCI_MANIFEST):
        body = json.dumps(document, separators=(',', ':')).encode('utf-8')
        response = self.session.put(self.url(repository, 'manifests/' + reference), data=body, timeout=30,
                                    headers={'Content-Type': media_type})
        if response.status_code >= 300:
            raise AssertionError('registry %s refused the manifest %s:%s (HTTP %d): %s'
                                 % (self.host, repository, reference, response.status_code, response.text))
        return sha256(body), len(body)

    def manifest(self, repository, reference):
        """(parsed, digest, size) or None."""
        response = self.session.get(self.url(repository, 'manifests/' + reference), headers={'Accept': ACCEPT},
                                    timeout=30)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json(), sha256(response.content), len(response.content)

    def push_image(self, repository, tag, content=None):
        """A small synthetic image (config and one layer of random bytes): (digest, size)."""
        layer = content if content is not None else os.urandom(64)
        layer_digest = self.push_blob(repository, layer)
        config = json.dumps({'architecture': 'amd64', 'os': 'linux',
                             'rootfs': {'type': 'layers', 'diff_ids': [layer_digest]}}).encode('utf-8')
        config_digest = self.push_blob(repository, config)
        return self.push_manifest(repository, tag, {
            'schemaVersion': 2, 'mediaType': OCI_MANIFEST,
            'config': {'mediaType': OCI_CONFIG, 'digest': config_digest, 'size': len(config)},
            'layers': [{'mediaType': 'application/vnd.oci.image.layer.v1.tar', 'digest': layer_digest,
                        'size': len(layer)}]})


def simple_signing_payload(docker_reference, digest):
    return json.dumps({'critical': {'identity': {'docker-reference': docker_reference},
                                    'image': {'docker-manifest-digest': digest},
                                    'type': 'cosign container image signature'},
                       'optional': None}, separators=(',', ':')).encode('utf-8')


def pae(payload_type, payload):
    kind = payload_type.encode('utf-8')
    return b'DSSEv1 ' + str(len(kind)).encode() + b' ' + kind + b' ' + str(len(payload)).encode() + b' ' + payload


def statement(name, digest):
    return json.dumps({'_type': 'https://in-toto.io/Statement/v1',
                       'subject': [{'name': name, 'digest': {'sha256': digest.split(':', 1)[1]}}],
                       'predicateType': 'https://sigstore.dev/cosign/sign/v1', 'predicate': {}},
                      separators=(',', ':')).encode('utf-8')


class Signer(object):
    """Signs image digests in one registry (`registry`: a Registry) in either cosign format."""

    def __init__(self, registry, front=None):
        self.registry = registry
        self.front = front

    def sign_legacy(self, repository, digest, key, payload_digest=None, tamper=False, append=True):
        """Add a simple-signing layer to the tag sha256-<hex>.sig. `payload_digest`: the digest the payload names
        (another one makes a signature for another digest); `tamper`: alter the payload after signing."""
        payload = simple_signing_payload('%s/%s' % (self.registry.host, repository), payload_digest or digest)
        signature = base64.b64encode(key.sign(payload)).decode('ascii')
        if tamper:
            payload = payload.replace(b'"optional":null', b'"optional":{"tampered":true}')
        layer_digest = self.registry.push_blob(repository, payload)
        layer = {'mediaType': SIMPLE_SIGNING, 'digest': layer_digest, 'size': len(payload),
                 'annotations': {SIGNATURE_ANNOTATION: signature}}
        tag = digest.replace(':', '-') + '.sig'
        existing = self.registry.manifest(repository, tag) if append else None
        layers = (existing[0].get('layers') or []) if existing else []
        layers.append(layer)
        config = json.dumps({'architecture': '', 'os': '', 'config': {}, 'rootfs': {
            'type': 'layers', 'diff_ids': [item['digest'] for item in layers]}}).encode('utf-8')
        config_digest = self.registry.push_blob(repository, config)
        return self.registry.push_manifest(repository, tag, {
            'schemaVersion': 2, 'mediaType': OCI_MANIFEST,
            'config': {'mediaType': OCI_CONFIG, 'digest': config_digest, 'size': len(config)}, 'layers': layers})

    def sign_bundle(self, repository, digest, key, subject_digest=None, tamper=False, hint=True, append=True):
        """Push a Sigstore bundle referrer of `digest` and publish it (fallback tag, or the front's referrers API).
        `subject_digest`: the digest the statement names; `tamper`: alter the statement after signing."""
        payload = statement('%s/%s' % (self.registry.host, repository), subject_digest or digest)
        signature = key.sign(pae(IN_TOTO, payload))
        if tamper:
            payload = payload.replace(b'"predicate":{}', b'"predicate":{"tampered":true}')
        bundle = {'mediaType': BUNDLE,
                  'verificationMaterial': {'publicKey': {'hint': base64.b64encode(
                      bytes.fromhex(key.keyid)).decode('ascii') if hint else ''}},
                  'dsseEnvelope': {'payload': base64.b64encode(payload).decode('ascii'), 'payloadType': IN_TOTO,
                                   'signatures': [{'sig': base64.b64encode(signature).decode('ascii')}]}}
        data = json.dumps(bundle).encode('utf-8')
        layer_digest = self.registry.push_blob(repository, data)
        empty_digest = self.registry.push_blob(repository, b'{}')
        image = self.registry.manifest(repository, digest)
        manifest = {'schemaVersion': 2, 'mediaType': OCI_MANIFEST, 'artifactType': BUNDLE,
                    'config': {'mediaType': OCI_EMPTY, 'digest': empty_digest, 'size': 2},
                    'layers': [{'mediaType': BUNDLE, 'digest': layer_digest, 'size': len(data)}],
                    'subject': {'mediaType': image[0].get('mediaType') or OCI_MANIFEST, 'digest': digest,
                                'size': image[2]}}
        manifest_digest, size = self.registry.push_manifest(repository, manifest_digest_ref(manifest), manifest)
        descriptor = {'mediaType': OCI_MANIFEST, 'digest': manifest_digest, 'size': size, 'artifactType': BUNDLE}
        if self.front is not None:
            self.front.add(repository, digest, descriptor)
        else:
            tag = digest.replace(':', '-')
            existing = self.registry.manifest(repository, tag) if append else None
            manifests = (existing[0].get('manifests') or []) if existing else []
            manifests.append(descriptor)
            self.registry.push_manifest(repository, tag, {'schemaVersion': 2, 'mediaType': OCI_INDEX,
                                                          'manifests': manifests}, OCI_INDEX)
        return manifest_digest


def manifest_digest_ref(document):
    return sha256(json.dumps(document, separators=(',', ':')).encode('utf-8'))


class ReferrersFront(object):
    """A registry front on loopback: GET /v2/<name>/referrers/<digest> from what signers registered, everything else
    proxied to `backend` (headers both ways, so the backend's authentication applies)."""

    def __init__(self, port, backend):
        self.port = port
        self.backend = backend
        self.referrers = {}
        self.requests = []
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args):
                pass

            def do_GET(self):
                front.handle(self, 'GET')

            def do_HEAD(self):
                front.handle(self, 'HEAD')

        self.server = ThreadingHTTPServer(('127.0.0.1', port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self):
        return '127.0.0.1:%d' % self.port

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def add(self, repository, digest, descriptor):
        self.referrers.setdefault((repository, digest), []).append(descriptor)

    def handle(self, request, method):
        path = request.path.split('?', 1)[0]
        self.requests.append((method, path))
        if '/referrers/' in path:
            repository, digest = path[len('/v2/'):].split('/referrers/', 1)
            body = json.dumps({'schemaVersion': 2, 'mediaType': OCI_INDEX,
                               'manifests': self.referrers.get((repository, digest), [])}).encode('utf-8')
            request.send_response(200)
            request.send_header('Content-Type', OCI_INDEX)
            request.send_header('Content-Length', str(len(body)))
            request.end_headers()
            request.wfile.write(body)
            return
        headers = {name: value for name, value in request.headers.items() if name.lower() in ('accept', 'authorization')}
        answer = requests.request(method, 'http://%s%s' % (self.backend, request.path), headers=headers, timeout=30,
                                  allow_redirects=False, proxies={'http': None, 'https': None})
        request.send_response(answer.status_code)
        for name, value in answer.headers.items():
            if name.lower() not in ('content-length', 'transfer-encoding', 'connection', 'content-encoding'):
                request.send_header(name, value)
        body = answer.content if method == 'GET' else b''
        request.send_header('Content-Length', str(len(body) if method == 'GET' else answer.headers.get(
            'Content-Length', '0')))
        request.end_headers()
        request.wfile.write(body)


def load_or_make_key(directory):
    """The ECDSA P-256 key pair kept in `directory` (cosign.key unencrypted, test only; cosign.pub), made once."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    private_path = os.path.join(directory, 'cosign.key')
    if not os.path.exists(private_path):
        key = Key('ecdsa')
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, 'wb') as handle:
            handle.write(key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        with open(os.path.join(directory, 'cosign.pub'), 'w') as handle:
            handle.write(key.pem)
    with open(private_path, 'rb') as handle:
        return Key('ecdsa', serialization.load_pem_private_key(handle.read(), password=None))


def main(argv):
    """python tests/testbed/cosign_signer.py KEYDIR legacy|bundle HOST/REPOSITORY:TAG [USER:PASSWORD]

    Signs the digest the tag names now with the key pair in KEYDIR (made there when absent), replacing the digest's
    earlier signatures of that format. Prints the digest."""
    if len(argv) not in (3, 4) or argv[1] not in ('legacy', 'bundle'):
        raise SystemExit(main.__doc__)
    key = load_or_make_key(argv[0])
    host, rest = argv[2].split('/', 1)
    repository, tag = rest.rsplit(':', 1)
    auth = tuple(argv[3].split(':', 1)) if len(argv) == 4 else None
    registry = Registry(host, auth=auth)
    found = registry.manifest(repository, tag)
    if found is None:
        raise SystemExit('%s not found' % argv[2])
    signer = Signer(registry)
    if argv[1] == 'legacy':
        signer.sign_legacy(repository, found[1], key, append=False)
    else:
        signer.sign_bundle(repository, found[1], key, append=False)
    print(found[1])


if __name__ == '__main__':
    import sys
    main(sys.argv[1:])
