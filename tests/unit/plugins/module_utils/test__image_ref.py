"""Parsing and formatting of image references (plugins/module_utils/_image_ref.py)."""

from __future__ import annotations

import pytest

from ansible_collections.safedeploy.compose.plugins.module_utils._image_ref import (
    ImageRef, ImageRefError, is_mutable_tag, is_valid_digest, pinned,
)

DIGEST = 'sha256:' + 'ab' * 32
OTHER = 'sha256:' + 'cd' * 32


@pytest.mark.parametrize('text, registry, repository, tag, digest, name', [
    # Docker Hub: one component goes to library/, aliases fold into docker.io, the name stays short
    ('nginx', 'docker.io', 'library/nginx', None, None, 'nginx'),
    ('nginx:1.25', 'docker.io', 'library/nginx', '1.25', None, 'nginx'),
    ('library/nginx:1.25', 'docker.io', 'library/nginx', '1.25', None, 'nginx'),
    ('docker.io/library/nginx:1.25', 'docker.io', 'library/nginx', '1.25', None, 'nginx'),
    ('index.docker.io/library/nginx', 'docker.io', 'library/nginx', None, None, 'nginx'),
    ('registry-1.docker.io/team/web:v1', 'docker.io', 'team/web', 'v1', None, 'team/web'),
    ('team/web:v1', 'docker.io', 'team/web', 'v1', None, 'team/web'),
    ('library/a/b', 'docker.io', 'library/a/b', None, None, 'library/a/b'),
    # registries with ports; the port's colon is not a tag
    ('127.0.0.1:5000/safedeploy-test/app:v1', '127.0.0.1:5000', 'safedeploy-test/app', 'v1', None,
     '127.0.0.1:5000/safedeploy-test/app'),
    ('127.0.0.1:5000/app', '127.0.0.1:5000', 'app', None, None, '127.0.0.1:5000/app'),
    ('localhost/app:1', 'localhost', 'app', '1', None, 'localhost/app'),
    ('localhost:5000/a/b/c:x_y.z-1', 'localhost:5000', 'a/b/c', 'x_y.z-1', None, 'localhost:5000/a/b/c'),
    ('registry.example.com/shop/web', 'registry.example.com', 'shop/web', None, None, 'registry.example.com/shop/web'),
    ('[::1]:5000/app:v1', '[::1]:5000', 'app', 'v1', None, '[::1]:5000/app'),
    # digests: alone and with a tag
    ('nginx@' + DIGEST, 'docker.io', 'library/nginx', None, DIGEST, 'nginx'),
    ('127.0.0.1:5000/app@' + DIGEST, '127.0.0.1:5000', 'app', None, DIGEST, '127.0.0.1:5000/app'),
    ('127.0.0.1:5000/app:v1@' + DIGEST, '127.0.0.1:5000', 'app', 'v1', DIGEST, '127.0.0.1:5000/app'),
    ('my_org__x/web-app.v2:1.0', 'docker.io', 'my_org__x/web-app.v2', '1.0', None, 'my_org__x/web-app.v2'),
])
def test_parse(text, registry, repository, tag, digest, name):
    ref = ImageRef.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert ref.name == name
    assert ref.canonical_name == '%s/%s' % (registry, repository)
    # formatting gives back something that parses to the same reference
    assert ImageRef.parse(ref.format()) == ref


@pytest.mark.parametrize('text, expected', [
    ('nginx:1.25', 'nginx:1.25'),
    ('docker.io/library/nginx:1.25', 'nginx:1.25'),
    ('127.0.0.1:5000/app:v1@' + DIGEST, '127.0.0.1:5000/app:v1@' + DIGEST),
    ('127.0.0.1:5000/app', '127.0.0.1:5000/app'),
])
def test_format_is_the_familiar_form(text, expected):
    assert str(ImageRef.parse(text)) == expected


@pytest.mark.parametrize('text, fragment', [
    ('', 'empty'),
    ('   ', 'empty'),
    ('Nginx', 'invalid repository component'),  # a lone component is a name, and names are lowercase
    ('team/Web', 'invalid repository component'),
    ('app:-bad', 'invalid tag'),
    ('app:' + 'x' * 129, 'invalid tag'),
    ('app@sha256:1234', 'invalid digest'),
    ('app@sha256:' + 'AB' * 32, 'invalid digest'),
    ('127.0.0.1:5000/', 'invalid repository component'),
    ('a//b', 'invalid repository component'),
    (':v1', 'no repository name'),
    ('bad_host:5000x/app', 'invalid registry host'),
])
def test_parse_rejects(text, fragment):
    with pytest.raises(ImageRefError) as info:
        ImageRef.parse(text)
    assert fragment in str(info.value)


def test_uppercase_first_component_is_a_registry_written_in_lower_case():
    ref = ImageRef.parse('MyRegistry/app:v1')
    assert ref.registry == 'myregistry' and ref.repository == 'app'


def test_reference_prefers_digest_then_tag_then_latest():
    assert ImageRef.parse('app').reference == 'latest'
    assert ImageRef.parse('app:v1').reference == 'v1'
    assert ImageRef.parse('app:v1@' + DIGEST).reference == DIGEST


def test_api_host():
    assert ImageRef.parse('nginx').api_host == 'registry-1.docker.io'
    assert ImageRef.parse('127.0.0.1:5000/app').api_host == '127.0.0.1:5000'


def test_with_tag_drops_the_digest_and_validates():
    ref = ImageRef.parse('127.0.0.1:5000/app:v1@' + DIGEST).with_tag('9f2c1ab')
    assert (ref.tag, ref.digest) == ('9f2c1ab', None)
    with pytest.raises(ImageRefError):
        ref.with_tag('bad tag')
    assert ref.with_digest(OTHER).digest == OTHER
    with pytest.raises(ImageRefError):
        ref.with_digest('sha256:nothex')


def test_same_repository_ignores_tag_and_spelling():
    assert ImageRef.parse('nginx:1').same_repository(ImageRef.parse('docker.io/library/nginx@' + DIGEST))
    assert not ImageRef.parse('127.0.0.1:5000/app').same_repository(ImageRef.parse('127.0.0.1:5001/app'))


@pytest.mark.parametrize('tag, mutable', [(None, True), ('', True), ('latest', True), ('v1', False),
                                          ('9f2c1ab', False), ('Latest', False)])
def test_is_mutable_tag(tag, mutable):
    assert is_mutable_tag(tag) is mutable


def test_pinned():
    assert pinned('127.0.0.1:5000/app', 'v1', DIGEST) == '127.0.0.1:5000/app:v1@' + DIGEST
    assert pinned('nginx', None, DIGEST) == 'nginx@' + DIGEST
    assert pinned('nginx', 'v1', None) == 'nginx:v1'


def test_is_valid_digest():
    assert is_valid_digest(DIGEST)
    assert is_valid_digest('sha512:' + 'a' * 128)
    assert not is_valid_digest('sha256:' + 'a' * 63)
    assert not is_valid_digest(None)
