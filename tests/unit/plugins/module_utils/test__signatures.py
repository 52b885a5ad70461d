"""The parsing and the cryptography of cosign signature verification (plugins/module_utils/_signatures.py).

Malformed inputs must give a SignatureFormatError with a message naming what is wrong, never another exception.
Keys and signatures are made here with `cryptography`, as the test bed's signer makes them.
"""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from ansible_collections.safedeploy.compose.plugins.module_utils._registry import ManifestNotFoundError
from ansible_collections.safedeploy.compose.plugins.module_utils._signatures import (
    BUNDLE_V03, IN_TOTO, SIMPLE_SIGNING, ImageVerifier, SignatureFormatError, fallback_tag, legacy_tag, load_policy, load_public_key, match_policy,
    pae, parse_bundle, parse_envelope, simple_signing_digest, statement_digests, verify_any, verify_with,
)

DIGEST = 'sha256:' + 'ab' * 32
OTHER = 'sha256:' + 'cd' * 32

pytestmark = pytest.mark.engine_free


def pem_of(private):
    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode('ascii')


def payload(digest=DIGEST, kind='cosign container image signature'):
    return json.dumps({'critical': {'identity': {'docker-reference': 'r/x'}, 'image': {'docker-manifest-digest': digest},
                                    'type': kind}, 'optional': None}).encode()


def statement(digest=DIGEST, kind='https://in-toto.io/Statement/v1'):
    return json.dumps({'_type': kind, 'subject': [{'name': 'r/x', 'digest': {'sha256': digest.split(':')[1]}}],
                       'predicateType': 'https://sigstore.dev/cosign/sign/v1', 'predicate': {}}).encode()


def bundle(body=None, **override):
    document = {'mediaType': BUNDLE_V03, 'verificationMaterial': {'publicKey': {'hint': 'x'}},
                'dsseEnvelope': {'payload': base64.b64encode(body or statement()).decode(), 'payloadType': IN_TOTO,
                                 'signatures': [{'sig': base64.b64encode(b'sig').decode(), 'keyid': ''}]}}
    document.update(override)
    return json.dumps(document).encode()


# ---------------------------------------------------------------- PAE

def test_pae_bytes_match_the_dsse_spec():
    assert pae('http://example.com/HelloWorld', b'hello world') == \
        b'DSSEv1 29 http://example.com/HelloWorld 11 hello world'
    assert pae(IN_TOTO, b'') == b'DSSEv1 28 application/vnd.in-toto+json 0 '


def test_pae_counts_bytes_not_characters():
    assert pae('t', '\u00e9'.encode('utf-8')) == b'DSSEv1 1 t 2 \xc3\xa9'


def test_tags():
    assert legacy_tag(DIGEST) == 'sha256-' + 'ab' * 32 + '.sig'
    assert fallback_tag(DIGEST) == 'sha256-' + 'ab' * 32


# ---------------------------------------------------------------- simple signing

def test_simple_signing_digest():
    assert simple_signing_digest(payload()) == DIGEST


@pytest.mark.parametrize('data, message', [
    (b'not json', 'not JSON'),
    (b'\xff\xfe', 'not UTF-8'),
    (b'[1, 2]', 'not an object'),
    (b'{}', 'no "critical" object'),
    (json.dumps({'critical': 'x'}).encode(), 'no "critical" object'),
    (payload(kind='atomic container signature'), 'critical.type'),
    (payload(digest='sha256:short'), 'docker-manifest-digest'),
    (json.dumps({'critical': {'type': 'cosign container image signature', 'image': []}}).encode(),
     'docker-manifest-digest'),
])
def test_simple_signing_malformed(data, message):
    with pytest.raises(SignatureFormatError, match=message):
        simple_signing_digest(data)


# ---------------------------------------------------------------- DSSE and in-toto

def test_envelope_and_statement():
    payload_type, body, signatures, hints = parse_bundle(bundle())
    assert payload_type == IN_TOTO
    assert statement_digests(body) == [DIGEST]
    assert signatures == [('', b'sig')]
    assert hints == {'x'}


def test_statement_v01_and_several_subjects():
    document = json.loads(statement(kind='https://in-toto.io/Statement/v0.1'))
    document['subject'].append({'name': 'y', 'digest': {'sha256': OTHER.split(':')[1]}})
    assert statement_digests(json.dumps(document).encode()) == [DIGEST, OTHER]


@pytest.mark.parametrize('data, message', [
    (b'{', 'not JSON'),
    (statement(kind='https://example.com/Other'), '_type'),
    (json.dumps({'_type': 'https://in-toto.io/Statement/v1', 'subject': []}).encode(), 'no subject'),
    (json.dumps({'_type': 'https://in-toto.io/Statement/v1', 'subject': [{'digest': {'sha512': 'aa'}}]}).encode(),
     'subject 1 .* no sha256'),
    (json.dumps({'_type': 'https://in-toto.io/Statement/v1', 'subject': ['x']}).encode(), 'no sha256'),
    (json.dumps({'_type': 'https://in-toto.io/Statement/v1', 'subject': [{'digest': {'sha256': 'XYZ'}}]}).encode(),
     'no sha256'),
])
def test_statement_malformed(data, message):
    with pytest.raises(SignatureFormatError, match=message):
        statement_digests(data)


@pytest.mark.parametrize('envelope, message', [
    ('x', 'not an object'),
    ({}, 'no payloadType'),
    ({'payloadType': IN_TOTO}, 'payload is missing'),
    ({'payloadType': IN_TOTO, 'payload': '!!!not base64!!!'}, 'payload is not base64'),
    ({'payloadType': IN_TOTO, 'payload': 'e30='}, 'no signatures'),
    ({'payloadType': IN_TOTO, 'payload': 'e30=', 'signatures': ['x']}, 'signature 1 .* not an object'),
    ({'payloadType': IN_TOTO, 'payload': 'e30=', 'signatures': [{'sig': 7}]}, 'signature 1 .* not a string'),
    ({'payloadType': IN_TOTO, 'payload': 'e30=', 'signatures': [{'sig': '%%%'}]}, 'signature 1 .* not base64'),
])
def test_envelope_malformed(envelope, message):
    with pytest.raises(SignatureFormatError, match=message):
        parse_envelope(envelope)


def test_envelope_accepts_unpadded_and_urlsafe_base64():
    raw = b'\xfb\xff' * 5
    encoded = base64.urlsafe_b64encode(raw).decode().rstrip('=')
    assert parse_envelope({'payloadType': 't', 'payload': encoded, 'signatures': [{'sig': encoded}]})[1] == raw


@pytest.mark.parametrize('data, message', [
    (b'nope', 'not JSON'),
    (json.dumps({'mediaType': 'application/json'}).encode(), 'mediaType'),
    (json.dumps({'mediaType': BUNDLE_V03}).encode(), 'no DSSE envelope'),
    (json.dumps({'mediaType': BUNDLE_V03, 'messageSignature': {}}).encode(), 'message signature'),
    (bundle(dsseEnvelope={'payloadType': 'text/plain', 'payload': 'e30=', 'signatures': [{'sig': 'e30='}]}),
     'payloadType'),
])
def test_bundle_malformed(data, message):
    with pytest.raises(SignatureFormatError, match=message):
        parse_bundle(data)


# ---------------------------------------------------------------- keys

def signers():
    ecdsa = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    edkey = ed25519.Ed25519PrivateKey.generate()
    rsakey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return [
        ('ecdsa-p256', ecdsa, lambda data: ecdsa.sign(data, ec.ECDSA(hashes.SHA256()))),
        ('ecdsa-p384', p384, lambda data: p384.sign(data, ec.ECDSA(hashes.SHA384()))),
        ('ed25519', edkey, edkey.sign),
        ('rsa-pkcs1', rsakey, lambda data: rsakey.sign(data, padding.PKCS1v15(), hashes.SHA256())),
        ('rsa-pss', rsakey, lambda data: rsakey.sign(data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                                       salt_length=32), hashes.SHA256())),
    ]


@pytest.mark.parametrize('kind, private, sign', signers(), ids=lambda value: value if isinstance(value, str) else '')
def test_each_key_type_verifies_and_rejects(kind, private, sign):
    key = load_public_key(pem_of(private), 'k')
    data = pae(IN_TOTO, statement())
    assert verify_with(key, sign(data), data)
    assert not verify_with(key, sign(data), data + b' ')
    assert not verify_with(key, b'garbage', data)
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.keyid == hashlib.sha256(der).hexdigest()


def test_verify_any_names_the_key_that_verified():
    first, second = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    keys = [load_public_key(pem_of(first), 'old'), load_public_key(pem_of(second), 'new')]
    signature = second.sign(b'data', ec.ECDSA(hashes.SHA256()))
    assert verify_any(keys, signature, b'data').name == 'new'
    assert verify_any(keys[:1], signature, b'data') is None


@pytest.mark.parametrize('pem, message', [
    ('', 'not a PEM public key'),
    (None, 'not a PEM public key'),
    ('-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n', 'cannot be read'),
    ('-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n', 'private key'),
])
def test_bad_keys(pem, message):
    with pytest.raises(SignatureFormatError, match=message):
        load_public_key(pem, 'k')


def test_weak_and_unsupported_keys():
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(SignatureFormatError, match='1024 bits'):
        load_public_key(pem_of(small), 'small')
    k1 = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(SignatureFormatError, match='secp256k1'):
        load_public_key(pem_of(k1), 'k1')


# ---------------------------------------------------------------- policy

def test_policy_matching_first_entry_wins():
    pem = pem_of(ec.generate_private_key(ec.SECP256R1()))
    policy = load_policy([
        {'repository': 'reg.example.com/shop/web', 'keys': [{'name': 'a', 'pem': pem}], 'mode': 'report'},
        {'repository': 'reg.example.com/shop/*', 'keys': [{'pem': pem}]},
    ])
    assert match_policy(policy, 'reg.example.com/shop/web')[1] == 'report'
    entry = match_policy(policy, 'reg.example.com/shop/deep/worker')
    assert entry[1] == 'required' and entry[2][0].name == 'reg.example.com/shop/*#1'
    assert match_policy(policy, 'reg.example.com/other/web') is None


@pytest.mark.parametrize('entries, message', [
    ([{'repository': '', 'keys': []}], 'no repository'),
    ([{'repository': 'r/x', 'keys': []}], 'no keys'),
    ([{'repository': 'r/x', 'keys': [{'pem': 'x'}], 'mode': 'strict'}], 'mode'),
    ([{'repository': 'r/x', 'keys': [{'name': 'ci', 'pem': 'nope'}]}], 'key ci is not a PEM'),
])
def test_policy_malformed(entries, message):
    with pytest.raises(SignatureFormatError, match=message):
        load_policy(entries)


# ---------------------------------------------------------------- ImageVerifier on malformed registry content

class StubClient(object):
    """The registry client's reading methods over dicts; no referrers API unless `referrers` is set."""

    def __init__(self, manifests, blobs, referrers=None):
        self.manifests, self.blobs, self.referrers_by_digest = manifests, blobs, referrers

    def new_deadline(self):
        return 0

    def manifest(self, ref, reference, deadline=None):
        if reference not in self.manifests:
            raise ManifestNotFoundError('not found')
        return None, self.manifests[reference], None

    def blob(self, ref, digest, deadline=None):
        return self.blobs[digest]

    def referrers(self, ref, digest, artifact_type=None, deadline=None):
        return None if self.referrers_by_digest is None else self.referrers_by_digest.get(digest, [])


def verifier_keys():
    private = ec.generate_private_key(ec.SECP256R1())
    return private, [load_public_key(pem_of(private), 'ci')]


def test_verifier_reports_malformed_legacy_layers_without_exceptions():
    private, keys = verifier_keys()
    body = payload()
    signature = base64.b64encode(private.sign(body, ec.ECDSA(hashes.SHA256()))).decode()
    blob = 'sha256:' + hashlib.sha256(body).hexdigest()
    manifests = {legacy_tag(DIGEST): {'layers': [
        {'mediaType': 'text/plain', 'digest': blob},
        {'mediaType': SIMPLE_SIGNING, 'digest': blob, 'annotations': {}},
        {'mediaType': SIMPLE_SIGNING, 'digest': blob, 'annotations': {'dev.cosignproject.cosign/signature': '%%'}},
        {'mediaType': SIMPLE_SIGNING, 'digest': blob, 'size': 1 << 30,
         'annotations': {'dev.cosignproject.cosign/signature': signature}},
        'junk']}}
    verdict = ImageVerifier(StubClient(manifests, {blob: body}), formats=('legacy',)).verify('r.example/x@' + DIGEST,
                                                                                             DIGEST, keys)
    assert verdict['verified'] is False and verdict['signatures_found'] == 5
    problems = ' | '.join(verdict['problems'])
    for expected in ("media type is 'text/plain'", 'annotation is missing', 'annotation is not base64',
                     'more than the', "media type is None"):
        assert expected in problems, problems


def test_verifier_checks_the_referrer_manifest_of_a_bundle():
    private, keys = verifier_keys()
    body = statement()
    envelope = {'payloadType': IN_TOTO, 'payload': base64.b64encode(body).decode(),
                'signatures': [{'sig': base64.b64encode(private.sign(pae(IN_TOTO, body),
                                                                     ec.ECDSA(hashes.SHA256()))).decode()}]}
    data = json.dumps({'mediaType': BUNDLE_V03, 'dsseEnvelope': envelope}).encode()
    blob = 'sha256:' + hashlib.sha256(data).hexdigest()
    layer = {'mediaType': BUNDLE_V03, 'digest': blob, 'size': len(data)}
    good = {'artifactType': BUNDLE_V03, 'subject': {'digest': DIGEST}, 'layers': [layer]}
    wrong_subject = dict(good, subject={'digest': OTHER})
    not_bundle = dict(good, artifactType='application/spdx+json')
    no_layer = dict(good, layers=[])
    names = {'sha256:' + '1' * 64: wrong_subject, 'sha256:' + '2' * 64: not_bundle, 'sha256:' + '3' * 64: no_layer}
    referrers = {DIGEST: [{'digest': name, 'artifactType': BUNDLE_V03} for name in sorted(names)]}
    stub = StubClient(dict(names), {blob: data}, referrers)
    verdict = ImageVerifier(stub, formats=('bundle',)).verify('r.example/x@' + DIGEST, DIGEST, keys)
    problems = ' | '.join(verdict['problems'])
    assert verdict['verified'] is False, verdict
    for expected in ("subject is " + OTHER, 'not a Sigstore bundle', 'no layer of media type', 'referrers API'):
        assert expected in problems, problems
    names['sha256:' + '4' * 64] = good
    stub.manifests['sha256:' + '4' * 64] = good
    referrers[DIGEST].append({'digest': 'sha256:' + '4' * 64, 'artifactType': BUNDLE_V03})
    verdict = ImageVerifier(stub, formats=('bundle',)).verify('r.example/x@' + DIGEST, DIGEST, keys)
    assert verdict['verified'] is True and verdict['key'] == 'ci' and verdict['format'] == 'bundle'
