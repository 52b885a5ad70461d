# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private module_utils of safedeploy.compose: key-based verification of cosign image signatures.
# Not a public API; it may change in any release.
#
# Written from the published formats, not from cosign's code:
# - the legacy format: the tag `sha256-<hex>.sig` in the image's repository holds an image manifest whose layers
#   are simple-signing payloads (application/vnd.dev.cosign.simplesigning.v1+json); each layer's annotation
#   `dev.cosignproject.cosign/signature` is the base64 signature of the payload's bytes, and the payload's
#   critical.image.docker-manifest-digest names the image digest that was signed;
# - the Sigstore bundle (v0.3, cosign 3's default): an OCI 1.1 referrer of the image (GET /v2/<name>/referrers/<digest>,
#   or the fallback tag `sha256-<hex>` holding an OCI index of referrers on registries without that API), whose
#   layer is the bundle JSON: a DSSE envelope of an in-toto statement whose subject names the image digest. The
#   signature is over the DSSE pre-authentication encoding (PAE) of the payload type and payload.
# Neither the transparency log (Rekor) nor keyless certificates (Fulcio) are verified: the equivalent of
# `cosign verify --key <key> --insecure-ignore-tlog=true`.
# A signature counts only when it verifies with one of the policy's public keys AND its payload names the digest
# being verified; a payload is parsed only after its signature verified (nothing unauthenticated is trusted).

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
import re
import traceback
from collections import namedtuple

try:
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - exercised by ansible-test's import sanity test
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()

from ansible_collections.safedeploy.compose.plugins.module_utils._image_ref import ImageRef, is_valid_digest
from ansible_collections.safedeploy.compose.plugins.module_utils._registry import ManifestNotFoundError, RegistryError

SIMPLE_SIGNING = 'application/vnd.dev.cosign.simplesigning.v1+json'
SIGNATURE_ANNOTATION = 'dev.cosignproject.cosign/signature'
SIMPLE_SIGNING_TYPE = 'cosign container image signature'
BUNDLE_V03 = 'application/vnd.dev.sigstore.bundle.v0.3+json'
BUNDLE_PREFIX = 'application/vnd.dev.sigstore.bundle'
IN_TOTO = 'application/vnd.in-toto+json'
STATEMENT_TYPES = ('https://in-toto.io/Statement/v1', 'https://in-toto.io/Statement/v0.1')
FORMATS = ('legacy', 'bundle')
MODES = ('required', 'report')
# One payload or bundle is a few KB; a layer named as one but far larger is refused before it is read whole.
MAX_PAYLOAD_BYTES = 1 << 20
# At most this many signature candidates (the newest: the last listed) are read per image and format, so a flooded
# tag costs bounded time.
MAX_CANDIDATES = 32


class SignatureFormatError(ValueError):
    """A payload, envelope, statement, bundle or key is malformed. The message says which and why."""


PolicyKey = namedtuple('PolicyKey', 'name keyid algorithm key')


# ------------------------------------------------------------------ keys

def _b64decode(text, what):
    if not isinstance(text, str) or not text.strip():
        raise SignatureFormatError('%s is missing or not a string' % what)
    compact = re.sub(r'\s+', '', text).rstrip('=')
    padded = compact + '=' * (-len(compact) % 4)
    try:
        if re.match(r'^[A-Za-z0-9+/]*$', compact):
            return base64.b64decode(padded, validate=True)
        if re.match(r'^[A-Za-z0-9_-]*$', compact):
            return base64.urlsafe_b64decode(padded)
    except (binascii.Error, ValueError):
        pass
    raise SignatureFormatError('%s is not base64' % what)


def load_public_key(pem, name=None):
    """A PolicyKey from a PEM public key: ECDSA P-256/P-384, Ed25519 or RSA (2048 bits or more)."""
    label = 'key %s' % name if name else 'a policy key'
    if not isinstance(pem, str) or 'BEGIN' not in pem:
        raise SignatureFormatError('%s is not a PEM public key (-----BEGIN PUBLIC KEY-----)' % label)
    if 'PRIVATE KEY' in pem:
        raise SignatureFormatError('%s is a private key: give the public key (cosign.pub), never the private one'
                                   % label)
    try:
        key = serialization.load_pem_public_key(pem.strip().encode('ascii'))
    except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError) as exc:
        raise SignatureFormatError('%s cannot be read as a PEM public key: %s' % (label, exc))
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, (ec.SECP256R1, ec.SECP384R1)):
            raise SignatureFormatError('%s is an ECDSA key on curve %s: only P-256 and P-384 are supported'
                                       % (label, key.curve.name))
        algorithm = 'ecdsa-%s' % key.curve.name
    elif isinstance(key, ed25519.Ed25519PublicKey):
        algorithm = 'ed25519'
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise SignatureFormatError('%s is an RSA key of %d bits: at least 2048 are required' % (label, key.key_size))
        algorithm = 'rsa-%d' % key.key_size
    else:
        raise SignatureFormatError('%s is a %s: only ECDSA (P-256, P-384), Ed25519 and RSA keys are supported'
                                   % (label, type(key).__name__))
    return PolicyKey(name or keyid_of(key)[:12], keyid_of(key), algorithm, key)


def keyid_of(key):
    """sha256 (hex) of the key's DER SubjectPublicKeyInfo: a fingerprint that does not depend on the PEM's layout."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def key_hints(policy_key):
    """The ways a bundle may name this key: its sha256 fingerprint in hex or base64."""
    raw = binascii.unhexlify(policy_key.keyid)
    return set([policy_key.keyid, base64.b64encode(raw).decode('ascii'), base64.urlsafe_b64encode(raw).decode('ascii')])


def verify_with(policy_key, signature, data):
    """True when `signature` (bytes) is a signature of `data` (bytes) by the key, as cosign makes them:
    ECDSA over SHA-256 (SHA-384 on P-384) with an ASN.1 DER signature, Ed25519 over the data itself, RSA PKCS#1 v1.5
    or PSS over SHA-256."""
    key = policy_key.key
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            digest = hashes.SHA384() if isinstance(key.curve, ec.SECP384R1) else hashes.SHA256()
            key.verify(signature, data, ec.ECDSA(digest))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            try:
                key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
            except InvalidSignature:
                key.verify(signature, data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                        salt_length=padding.PSS.AUTO), hashes.SHA256())
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def verify_any(keys, signature, data):
    """The first PolicyKey of `keys` that verifies, or None."""
    for policy_key in keys:
        if verify_with(policy_key, signature, data):
            return policy_key
    return None


# ------------------------------------------------------------------ policy

def load_policy(entries):
    """[(pattern, mode, [PolicyKey])] from the module's policy option; SignatureFormatError on a bad entry."""
    policy = []
    for number, entry in enumerate(entries or [], 1):
        pattern = (entry.get('repository') or '').strip()
        if not pattern:
            raise SignatureFormatError('policy entry %d has no repository' % number)
        mode = entry.get('mode') or 'required'
        if mode not in MODES:
            raise SignatureFormatError('policy entry %d (%s): mode %r is not one of %s' % (number, pattern, mode,
                                                                                           ', '.join(MODES)))
        keys = []
        for key_number, key in enumerate(entry.get('keys') or [], 1):
            keys.append(load_public_key(key.get('pem'), key.get('name') or '%s#%d' % (pattern, key_number)))
        if not keys:
            raise SignatureFormatError('policy entry %d (%s) has no keys: give at least one public key' % (number, pattern))
        policy.append((pattern, mode, keys))
    return policy


def match_policy(policy, repository):
    """The first (pattern, mode, keys) whose pattern matches `repository` (registry/path, no tag), or None.

    A pattern is the repository itself or a shell-style pattern (`*` crosses `/`), e.g. `registry.example.com/shop/*`."""
    for entry in policy:
        if entry[0] == repository or fnmatch.fnmatchcase(repository, entry[0]):
            return entry
    return None


# ------------------------------------------------------------------ payloads

def _json_object(data, what):
    if isinstance(data, bytes):
        try:
            data = data.decode('utf-8')
        except UnicodeDecodeError:
            raise SignatureFormatError('%s is not UTF-8' % what)
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise SignatureFormatError('%s is not JSON (%s)' % (what, exc))
    if not isinstance(document, dict):
        raise SignatureFormatError('%s is JSON but not an object' % what)
    return document


def simple_signing_digest(payload):
    """The image digest a simple-signing payload (bytes) names in critical.image.docker-manifest-digest."""
    document = _json_object(payload, 'the simple-signing payload')
    critical = document.get('critical')
    if not isinstance(critical, dict):
        raise SignatureFormatError('the simple-signing payload has no "critical" object')
    kind = critical.get('type')
    if kind != SIMPLE_SIGNING_TYPE:
        raise SignatureFormatError('the simple-signing payload\'s critical.type is %r, not %r' % (kind, SIMPLE_SIGNING_TYPE))
    image = critical.get('image')
    digest = image.get('docker-manifest-digest') if isinstance(image, dict) else None
    if not is_valid_digest(digest):
        raise SignatureFormatError('the simple-signing payload has no valid critical.image.docker-manifest-digest')
    return digest


def pae(payload_type, payload):
    """The DSSE v1 pre-authentication encoding: "DSSEv1" SP len(type) SP type SP len(body) SP body."""
    kind = payload_type.encode('utf-8')
    return b'DSSEv1 %d %s %d %s' % (len(kind), kind, len(payload), payload)


def parse_envelope(envelope):
    """(payload_type, payload bytes, [(keyid, signature bytes)]) of a DSSE envelope (a dict)."""
    if not isinstance(envelope, dict):
        raise SignatureFormatError('the DSSE envelope is not an object')
    payload_type = envelope.get('payloadType')
    if not isinstance(payload_type, str) or not payload_type:
        raise SignatureFormatError('the DSSE envelope has no payloadType')
    payload = _b64decode(envelope.get('payload'), 'the DSSE envelope\'s payload')
    signatures = envelope.get('signatures')
    if not isinstance(signatures, list) or not signatures:
        raise SignatureFormatError('the DSSE envelope has no signatures')
    found = []
    for number, item in enumerate(signatures, 1):
        if not isinstance(item, dict):
            raise SignatureFormatError('signature %d of the DSSE envelope is not an object' % number)
        found.append((item.get('keyid') or '', _b64decode(item.get('sig'), 'signature %d of the DSSE envelope' % number)))
    return payload_type, payload, found


def statement_digests(payload):
    """The sha256 digests ("sha256:<hex>") an in-toto statement's subjects name."""
    document = _json_object(payload, 'the in-toto statement')
    if document.get('_type') not in STATEMENT_TYPES:
        raise SignatureFormatError('the in-toto statement\'s _type is %r, not one of %s'
                                   % (document.get('_type'), ', '.join(STATEMENT_TYPES)))
    subjects = document.get('subject')
    if not isinstance(subjects, list) or not subjects:
        raise SignatureFormatError('the in-toto statement has no subject')
    digests = []
    for number, subject in enumerate(subjects, 1):
        digest = subject.get('digest') if isinstance(subject, dict) else None
        value = digest.get('sha256') if isinstance(digest, dict) else None
        if not isinstance(value, str) or not re.match(r'^[0-9a-f]{64}$', value):
            raise SignatureFormatError('subject %d of the in-toto statement has no sha256 digest' % number)
        digests.append('sha256:' + value)
    return digests


def parse_bundle(data):
    """The DSSE envelope of a Sigstore bundle (bytes): (payload_type, payload, [(keyid, sig)], key hints).

    The key hints (the envelope's keyids and verificationMaterial.publicKey.hint) are unauthenticated: they only
    help tell a tampered statement (the hint names an allowed key, the signature fails) from another signer."""
    bundle = _json_object(data, 'the Sigstore bundle')
    media_type = bundle.get('mediaType')
    if not isinstance(media_type, str) or not media_type.startswith(BUNDLE_PREFIX):
        raise SignatureFormatError('the Sigstore bundle\'s mediaType is %r, not %s' % (media_type, BUNDLE_V03))
    if 'dsseEnvelope' not in bundle:
        what = 'a message signature' if 'messageSignature' in bundle else 'no DSSE envelope'
        raise SignatureFormatError('the Sigstore bundle holds %s: image signatures are DSSE envelopes of an in-toto '
                                   'statement' % what)
    payload_type, payload, signatures = parse_envelope(bundle['dsseEnvelope'])
    if payload_type != IN_TOTO:
        raise SignatureFormatError('the DSSE envelope\'s payloadType is %r, not %s' % (payload_type, IN_TOTO))
    material = bundle.get('verificationMaterial') if isinstance(bundle.get('verificationMaterial'), dict) else {}
    public_key = material.get('publicKey') if isinstance(material.get('publicKey'), dict) else {}
    hints = set(keyid for keyid, dummy in signatures if keyid)
    if isinstance(public_key.get('hint'), str) and public_key['hint']:
        hints.add(public_key['hint'])
    return payload_type, payload, signatures, hints


# ------------------------------------------------------------------ checking one image

class ImageVerifier(object):
    """Looks for the signatures of one image digest in its repository and checks them against a policy's keys.

    `client` is a _registry.RegistryClient. verify() returns a dict: verified, key (name, keyid), format, problems
    (every reason a candidate did not count) and signatures_found."""

    def __init__(self, client, formats=FORMATS):
        self.client = client
        self.formats = formats
        self.deadline = None

    def verify(self, ref, digest, keys):
        ref = ImageRef.parse(ref) if isinstance(ref, str) else ref
        # one deadline for every request about this image, as compose_pin has one per image it resolves
        self.deadline = self.client.new_deadline()
        problems, found, unread = [], 0, 0
        for name in self.formats:
            try:
                candidates = self._legacy(ref, digest) if name == 'legacy' else self._bundles(ref, digest)
            except RegistryError as exc:
                problems.append('%s signatures could not be read: %s' % (name, exc.message))
                unread += 1
                continue
            for origin, check in candidates:
                found += 1
                try:
                    outcome = check(keys)
                except SignatureFormatError as exc:
                    problems.append('%s: %s' % (origin, exc))
                    continue
                except RegistryError as exc:
                    problems.append('%s: %s' % (origin, exc.message))
                    continue
                if isinstance(outcome, PolicyKey):
                    return dict(verified=True, key=outcome.name, keyid=outcome.keyid, format=name, source=origin,
                                problems=problems, signatures_found=found)
                problems.append('%s: %s' % (origin, outcome))
        if not found and not unread:
            problems.insert(0, 'no signature: found neither a %s' % ' nor a '.join(
                {'legacy': 'legacy signature tag %s' % legacy_tag(digest),
                 'bundle': 'Sigstore bundle referrer'}[name] for name in self.formats))
        return dict(verified=False, key=None, keyid=None, format=None, source=None, problems=problems,
                    signatures_found=found)

    # -------------------------------------------------------------- legacy

    def _legacy(self, ref, digest):
        tag = legacy_tag(digest)
        try:
            dummy, manifest, dummy = self.client.manifest(ref, tag, deadline=self.deadline)
        except ManifestNotFoundError:
            return []
        layers = manifest.get('layers')
        if not isinstance(layers, list):
            return [('legacy %s' % tag, _fail('the signature manifest has no layers'))]
        candidates = []
        for number, layer in enumerate(layers[-MAX_CANDIDATES:], max(len(layers) - MAX_CANDIDATES, 0) + 1):
            origin = 'legacy %s layer %d' % (tag, number)
            candidates.append((origin, self._legacy_check(ref, digest, layer)))
        return candidates

    def _legacy_check(self, ref, digest, layer):
        def check(keys):
            if not isinstance(layer, dict) or layer.get('mediaType') != SIMPLE_SIGNING:
                raise SignatureFormatError('the layer\'s media type is %r, not %s'
                                           % (layer.get('mediaType') if isinstance(layer, dict) else None, SIMPLE_SIGNING))
            annotations = layer.get('annotations') if isinstance(layer.get('annotations'), dict) else {}
            signature = _b64decode(annotations.get(SIGNATURE_ANNOTATION), 'the %s annotation' % SIGNATURE_ANNOTATION)
            payload = self._blob(ref, layer)
            key = verify_any(keys, signature, payload)
            if key is None:
                return ('the signature does not verify with any allowed key (signed by another key, or the payload was '
                        'altered after signing)')
            signed = simple_signing_digest(payload)
            if signed != digest:
                return 'signature for another digest: the payload signed by key %s names %s' % (key.name, signed)
            return key
        return check

    # -------------------------------------------------------------- bundle

    def _bundles(self, ref, digest):
        descriptors = self.client.referrers(ref, digest, artifact_type=BUNDLE_V03, deadline=self.deadline)
        via = 'referrers API'
        if descriptors is None:
            via = 'fallback tag %s' % fallback_tag(digest)
            try:
                dummy, index, dummy = self.client.manifest(ref, fallback_tag(digest), deadline=self.deadline)
            except ManifestNotFoundError:
                return []
            descriptors = index.get('manifests') if isinstance(index.get('manifests'), list) else []
        candidates = []
        for descriptor in descriptors[-MAX_CANDIDATES:]:
            if not isinstance(descriptor, dict) or not is_valid_digest(descriptor.get('digest')):
                continue
            if descriptor.get('artifactType') not in (None, BUNDLE_V03) and not str(
                    descriptor.get('artifactType')).startswith(BUNDLE_PREFIX):
                continue  # another kind of referrer (an SBOM, an attestation of another tool)
            origin = 'bundle %s (%s)' % (descriptor['digest'][:19], via)
            candidates.append((origin, self._bundle_check(ref, digest, descriptor['digest'])))
        return candidates

    def _bundle_check(self, ref, digest, manifest_digest):
        def check(keys):
            dummy, manifest, dummy = self.client.manifest(ref, manifest_digest, deadline=self.deadline)
            artifact = manifest.get('artifactType') or (manifest.get('config') or {}).get('mediaType')
            if not str(artifact).startswith(BUNDLE_PREFIX):
                raise SignatureFormatError('the referrer is a %s, not a Sigstore bundle' % artifact)
            subject = manifest.get('subject') if isinstance(manifest.get('subject'), dict) else {}
            if subject.get('digest') != digest:
                raise SignatureFormatError('the referrer\'s subject is %s, not this image' % subject.get('digest'))
            layers = [layer for layer in manifest.get('layers') or []
                      if isinstance(layer, dict) and str(layer.get('mediaType')).startswith(BUNDLE_PREFIX)]
            if not layers:
                raise SignatureFormatError('the referrer has no layer of media type %s' % BUNDLE_V03)
            payload_type, payload, signatures, hints = parse_bundle(self._blob(ref, layers[0]))
            encoded = pae(payload_type, payload)
            key = None
            for dummy, signature in signatures:
                key = verify_any(keys, signature, encoded)
                if key is not None:
                    break
            if key is None:
                named = [policy_key.name for policy_key in keys if hints & key_hints(policy_key)]
                if named:
                    return ('payload tampered: the bundle names allowed key %s but its DSSE signature does not verify '
                            'over the statement it holds' % ', '.join(named))
                return ('the DSSE signature does not verify with any allowed key (signed by another key, or the '
                        'statement was altered after signing)')
            subjects = statement_digests(payload)
            if digest not in subjects:
                return ('signature for another digest: the statement signed by key %s names %s'
                        % (key.name, ', '.join(subjects)))
            return key
        return check

    def _blob(self, ref, descriptor):
        size = descriptor.get('size')
        if isinstance(size, int) and size > MAX_PAYLOAD_BYTES:
            raise SignatureFormatError('the layer is %d bytes, more than the %d a signature payload may have'
                                       % (size, MAX_PAYLOAD_BYTES))
        if not is_valid_digest(descriptor.get('digest')):
            raise SignatureFormatError('the layer has no valid digest')
        return self.client.blob(ref, descriptor['digest'], deadline=self.deadline)


def _fail(message):
    def check(keys):
        raise SignatureFormatError(message)
    return check


def legacy_tag(digest):
    """The tag of the legacy signature of `digest`: sha256:<hex> -> sha256-<hex>.sig."""
    return digest.replace(':', '-') + '.sig'


def fallback_tag(digest):
    """The OCI 1.1 referrers fallback tag of `digest`: sha256:<hex> -> sha256-<hex>."""
    return digest.replace(':', '-')
