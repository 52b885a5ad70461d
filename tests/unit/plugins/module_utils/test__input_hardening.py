"""Input hardening (issue 12, item 6): identifiers are whole-string matches (no trailing newline slips through a
`$`), tags are ASCII as the distribution spec says, registry hosts are case-insensitive, and ids are checked
before any path is built from them."""

from __future__ import annotations

import pytest

from ansible_collections.safedeploy.compose.plugins.module_utils._engine import parse_image_ref
from ansible_collections.safedeploy.compose.plugins.module_utils._image_ref import ImageRef, ImageRefError
from ansible_collections.safedeploy.compose.plugins.module_utils._release_state import (
    ReleaseStateError, ledger_path, list_projects, validate_project, validate_release_id,
)

DIGEST = 'sha256:' + 'ab' * 32


@pytest.mark.parametrize('project', ['shop\n', 'shop\n\n', 'shop\r', '\nshop'])
def test_a_project_name_with_a_newline_is_refused(project, tmp_path):
    with pytest.raises(ReleaseStateError):
        validate_project(project)
    with pytest.raises(ReleaseStateError):
        ledger_path(str(tmp_path), project)
    assert list(tmp_path.iterdir()) == [], 'no state dir may be made for it'


@pytest.mark.parametrize('release', ['v1\n', '9f2c1ab\n', 'v1\r\n'])
def test_a_release_id_with_a_newline_is_refused(release):
    with pytest.raises(ReleaseStateError):
        validate_release_id(release)


def test_a_directory_named_with_a_newline_is_not_listed_as_a_project(tmp_path):
    (tmp_path / 'shop').mkdir()
    (tmp_path / 'shop' / 'releases.json').write_text('{}')
    (tmp_path / 'shop\n').mkdir()
    (tmp_path / 'shop\n' / 'releases.json').write_text('{}')
    assert list_projects(str(tmp_path)) == ['shop']


@pytest.mark.parametrize('text', [
    '127.0.0.1:5000/app:v1\n',         # a tag followed by a newline
    '127.0.0.1:5000/app\n:v1',
    '127.0.0.1:5000/app:v1@%s\n' % DIGEST,
    '127.0.0.1:5000/app:vé',            # not an ASCII tag: the distribution spec allows [A-Za-z0-9_.-] only
    '127.0.0.1:5000/app:٣',             # an Arabic-Indic digit is \\w in Python, not in a tag
    '127.0.0.1:5000/app:ｖ1',            # fullwidth letters
])
def test_references_that_registries_and_the_ledger_would_refuse_are_refused_when_parsed(text):
    with pytest.raises(ImageRefError):
        ImageRef.parse(text)
    if text == text.strip():  # disk_reclaim's protect entries are read leniently: surrounding white space is dropped
        assert parse_image_ref(text) is None


def test_tags_are_checked_as_ascii_when_a_tag_is_set_too():
    ref = ImageRef.parse('127.0.0.1:5000/app:v1')
    with pytest.raises(ImageRefError):
        ref.with_tag('vé')
    with pytest.raises(ImageRefError):
        ref.with_tag('v1\n')
    assert ref.with_tag('v_2.0-rc1').tag == 'v_2.0-rc1'


def test_registry_hosts_are_case_insensitive_and_written_in_lower_case():
    upper = ImageRef.parse('Registry.Example.COM:5000/team/web:v1')
    assert upper.registry == 'registry.example.com:5000'
    assert upper == ImageRef.parse('registry.example.com:5000/team/web:v1')
    assert parse_image_ref('Registry.Example.COM:5000/team/web:v1')['repository'] == \
        'registry.example.com:5000/team/web'
    assert ImageRef.parse('LOCALHOST:5000/app').registry == 'localhost:5000'
