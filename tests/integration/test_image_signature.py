"""image_signature against the test bed's real registries (127.0.0.1:5000 open, 127.0.0.1:5001 htpasswd), with
signatures pushed by the test bed's own signer (tests/testbed/cosign_signer.py) in both cosign formats.

Debian's docker-registry (distribution 2.8) has no referrers API: bundles are found through the fallback tag
`sha256-<hex>`. The referrers API is served by a ReferrersFront on 127.0.0.1:19801 (open) and :19802 (auth), which
proxies everything else to the real registry. Images are small synthetic ones pushed to
`sdt-sig/<random>` repositories; nothing runs on the engine.
"""

from __future__ import annotations

import json
import uuid

import pytest

from testbed import cosign_signer as cs
from testbed import testbed as testbed_mod

MODULE = 'image_signature'
FRONT_OPEN_PORT = 19801
FRONT_AUTH_PORT = 19802


def rand():
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope='module')
def keys():
    return {'ci': cs.Key('ecdsa'), 'other': cs.Key('ecdsa'), 'ed': cs.Key('ed25519'), 'rsa': cs.Key('rsa'),
            'pss': cs.Key('rsa-pss')}


@pytest.fixture(scope='module')
def fronts(testbed):
    started = {'open': cs.ReferrersFront(FRONT_OPEN_PORT, testbed_mod.REGISTRY).start(),
               'auth': cs.ReferrersFront(FRONT_AUTH_PORT, testbed_mod.AUTH_REGISTRY).start()}
    yield started
    for front in started.values():
        front.stop()


class Place(object):
    """One repository in one registry (optionally seen through a referrers front): push images, sign them."""

    def __init__(self, host, auth=None, front=None):
        self.registry = cs.Registry(host, auth=auth)
        self.front = front
        self.host = front.host if front else host
        self.repository = 'sdt-sig/' + rand()
        self.signer = cs.Signer(self.registry, front=front)
        self.auth = auth

    def image(self, tag=None):
        """Push a new image; its reference as the module gets it (pinned, through the front if any), and digest."""
        tag = tag or rand()
        digest = self.registry.push_image(self.repository, tag)[0]
        return '%s/%s:%s@%s' % (self.host, self.repository, tag, digest), digest

    def sign(self, fmt, digest, key, **kwargs):
        if fmt == 'legacy':
            return self.signer.sign_legacy(self.repository, digest, key, **kwargs)
        return self.signer.sign_bundle(self.repository, digest, key, **kwargs)

    def args(self, images, keys, mode='required', **extra):
        args = dict(images=images, policy=[{'repository': '%s/sdt-sig/*' % self.host, 'mode': mode,
                                            'keys': [{'name': name, 'pem': key.pem} for name, key in keys]}])
        if self.auth:
            args['registry_auth'] = [{'registry': self.host, 'username': self.auth[0], 'password': self.auth[1]}]
        args.update(extra)
        return args


@pytest.fixture
def open_place(testbed):
    return Place(testbed_mod.REGISTRY)


@pytest.fixture
def auth_place(testbed):
    return Place(testbed_mod.AUTH_REGISTRY, auth=(testbed_mod.AUTH_USER, testbed_mod.auth_password()))


PLACES = ['open', 'auth', 'open-referrers', 'auth-referrers']


@pytest.fixture(params=PLACES)
def place(request, testbed, fronts):
    auth = (testbed_mod.AUTH_USER, testbed_mod.auth_password()) if request.param.startswith('auth') else None
    host = testbed_mod.AUTH_REGISTRY if auth else testbed_mod.REGISTRY
    front = fronts['auth' if auth else 'open'] if request.param.endswith('referrers') else None
    return Place(host, auth=auth, front=front)


@pytest.mark.parametrize('fmt', ['legacy', 'bundle'])
def test_signed_passes_in_check_mode_and_apply(run_module, place, keys, fmt):
    image, digest = place.image()
    place.sign(fmt, digest, keys['ci'])
    for check in (True, False):
        result = run_module(MODULE, place.args([image], [('ci', keys['ci'])]), check=check)
        assert not result.failed, result
        assert result['changed'] is False
        verdict = result['verdicts'][0]
        assert verdict['verified'] is True
        assert (verdict['key'], verdict['keyid'], verdict['format'], verdict['digest']) == \
            ('ci', keys['ci'].keyid, fmt, digest)
        assert result['failures'] == []
    if place.auth:
        assert place.auth[1] not in result.stdout + result.stderr
    if fmt == 'bundle':
        via = 'referrers API' if place.front else 'fallback tag'
        assert via in verdict['source']
        if place.front:
            assert ('GET', '/v2/%s/referrers/%s' % (place.repository, digest)) in place.front.requests


def test_unsigned_fails_naming_every_image(run_module, open_place, keys):
    signed, signed_digest = open_place.image()
    open_place.sign('legacy', signed_digest, keys['ci'])
    first, dummy = open_place.image()
    second, dummy = open_place.image()
    result = run_module(MODULE, open_place.args([signed, first, second], [('ci', keys['ci'])]))
    assert result.failed
    assert [entry['image'] for entry in result['failures']] == [first, second]
    assert first in result['msg'] and second in result['msg'] and signed not in result['msg']
    assert 'no signature' in result['msg']
    assert [verdict['verified'] for verdict in result['verdicts']] == [True, False, False]
    assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('fmt', ['legacy', 'bundle'])
def test_wrong_key_fails(run_module, open_place, keys, fmt):
    image, digest = open_place.image()
    open_place.sign(fmt, digest, keys['other'], **({'hint': True} if fmt == 'bundle' else {}))
    result = run_module(MODULE, open_place.args([image], [('ci', keys['ci'])]))
    assert result.failed
    assert 'does not verify with any allowed key' in result['failures'][0]['problems'][0]


@pytest.mark.parametrize('fmt', ['legacy', 'bundle'])
def test_signature_for_another_digest_fails(run_module, place, keys, fmt):
    image, digest = place.image()
    dummy, other = place.image()
    if fmt == 'legacy':
        place.sign(fmt, digest, keys['ci'], payload_digest=other)
    else:  # a bundle whose statement names another subject, attached to this image
        place.sign(fmt, digest, keys['ci'], subject_digest=other)
    result = run_module(MODULE, place.args([image], [('ci', keys['ci'])]))
    assert result.failed
    problem = result['failures'][0]['problems'][0]
    assert 'signature for another digest' in problem and other in problem


@pytest.mark.parametrize('fmt', ['legacy', 'bundle'])
def test_tampered_payload_fails(run_module, open_place, keys, fmt):
    image, digest = open_place.image()
    open_place.sign(fmt, digest, keys['ci'], tamper=True)
    result = run_module(MODULE, open_place.args([image], [('ci', keys['ci'])]))
    assert result.failed
    problem = result['failures'][0]['problems'][0]
    if fmt == 'bundle':
        assert 'payload tampered' in problem
    else:  # the legacy format carries no key hint: a tampered payload and another key look alike
        assert 'altered after signing' in problem


def test_tag_pushed_again_after_signing_fails(run_module, open_place, keys):
    tag = rand()
    dummy, signed = open_place.image(tag)
    open_place.sign('legacy', signed, keys['ci'])
    open_place.sign('bundle', signed, keys['ci'])
    image, digest = open_place.image(tag)  # the same tag, other content
    assert digest != signed
    result = run_module(MODULE, open_place.args([image], [('ci', keys['ci'])]))
    assert result.failed
    assert result['failures'][0]['image'] == image
    assert 'no signature' in result['failures'][0]['problems'][0]


def test_report_mode_warns_and_passes(run_module, open_place, keys):
    image, dummy = open_place.image()
    result = run_module(MODULE, open_place.args([image], [('ci', keys['ci'])], mode='report'))
    assert not result.failed, result
    assert result['verdicts'][0]['verified'] is False and result['verdicts'][0]['mode'] == 'report'
    assert result['failures'] == []
    assert image in json.dumps(result.get('warnings'))  # structured in ansible-core 2.19


def test_several_keys_and_types(run_module, open_place, keys):
    images = []
    for name, fmt in (('ed', 'legacy'), ('rsa', 'bundle'), ('pss', 'legacy'), ('other', 'bundle')):
        image, digest = open_place.image()
        open_place.sign(fmt, digest, keys[name])
        images.append(image)
    policy_keys = [(name, keys[name]) for name in ('ci', 'ed', 'rsa', 'pss', 'other')]
    result = run_module(MODULE, open_place.args(images, policy_keys))
    assert not result.failed, result
    assert [verdict['key'] for verdict in result['verdicts']] == ['ed', 'rsa', 'pss', 'other']


def test_one_good_signature_among_bad_ones_passes(run_module, open_place, keys):
    image, digest = open_place.image()
    open_place.sign('legacy', digest, keys['other'])
    open_place.sign('legacy', digest, keys['ci'])
    result = run_module(MODULE, open_place.args([image], [('ci', keys['ci'])]))
    assert not result.failed, result
    assert result['verdicts'][0]['signatures_found'] == 2
    assert 'does not verify' in result['verdicts'][0]['problems'][0]


def test_unmatched_repository_is_not_checked(run_module, open_place, keys):
    image, dummy = open_place.image()
    args = open_place.args([image], [('ci', keys['ci'])])
    args['policy'][0]['repository'] = 'registry.example.com/*'
    result = run_module(MODULE, args)
    assert not result.failed, result
    assert result['verdicts'][0]['verified'] is None and 'no policy entry' in result['verdicts'][0]['problems'][0]


def test_input_errors_are_messages(run_module, open_place, keys):
    image, dummy = open_place.image()
    result = run_module(MODULE, open_place.args([image.split('@')[0]], [('ci', keys['ci'])]))
    assert result.failed and 'has no digest' in result['msg']
    args = open_place.args([image], [('ci', keys['ci'])])
    args['policy'][0]['keys'][0]['pem'] = 'not a key'
    result = run_module(MODULE, args)
    assert result.failed and 'key ci is not a PEM public key' in result['msg']
    assert 'Traceback' not in result.stderr


def test_auth_registry_without_credentials_fails_clearly(run_module, auth_place, keys):
    image, digest = auth_place.image()
    auth_place.sign('legacy', digest, keys['ci'])
    args = auth_place.args([image], [('ci', keys['ci'])])
    args.pop('registry_auth')
    result = run_module(MODULE, args, env={'DOCKER_CONFIG': '/nonexistent'})
    assert result.failed
    assert 'could not be read' in result['msg'] and '401' in result['msg']
