# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private module_utils of safedeploy.compose: parsing and formatting of image references
# (`[registry[:port]/]path[:tag][@digest]`). Not a public API; it may change in any release.
#
# The rules follow the reference grammar of the Docker distribution project: the first path
# component names a registry only when it contains a '.' or a ':' or is 'localhost'; otherwise
# the image lives on Docker Hub, where one-component names belong to 'library/'. Hub aliases
# are folded into 'docker.io', and Hub references are written back in the short, familiar form
# the engine itself uses ('nginx', 'user/app'), so a pin reads like what the user wrote.

from __future__ import annotations

import re
from collections import namedtuple

DOCKER_HUB = 'docker.io'
DOCKER_HUB_API_HOST = 'registry-1.docker.io'
DOCKER_HUB_ALIASES = frozenset(['docker.io', 'index.docker.io', 'registry-1.docker.io', 'registry.hub.docker.com'])
OFFICIAL_NAMESPACE = 'library'
MUTABLE_TAGS = frozenset(['latest'])

# Every pattern is matched against the whole string (`\Z`, not `$`, which also matches before a trailing newline),
# and character classes are spelled out in ASCII: Python's `\w` matches any Unicode letter or digit, the
# distribution spec's tag grammar only [A-Za-z0-9_].
_PATH_COMPONENT = re.compile(r'[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z')
_DOMAIN = re.compile(
    r'(?:\[[0-9a-fA-F:.]+\]|[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*)'
    r'(?::[0-9]+)?\Z')
_TAG = re.compile(r'[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z')
_DIGEST = re.compile(r'[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}\Z')
_SHA256 = re.compile(r'sha256:[0-9a-f]{64}\Z')
_MAX_NAME_LENGTH = 255


class ImageRefError(ValueError):
    """A string is not a valid image reference; the message quotes it and says why."""


def normalize_registry(host):
    """Fold the Docker Hub aliases into 'docker.io'; other hosts in lower case (host names are case-insensitive, and
    one spelling per registry keeps the ledger, the pins and the engine's own names comparable)."""
    host = host.lower()
    if host in DOCKER_HUB_ALIASES:
        return DOCKER_HUB
    return host


def is_valid_digest(value):
    if not value or not _DIGEST.match(value):
        return False
    # sha256 is the only algorithm registries use today; hold it to its exact form.
    return not value.startswith('sha256:') or bool(_SHA256.match(value))


def is_mutable_tag(tag):
    """A tag that is expected to move (`latest`) or no tag at all (which means `latest`)."""
    return not tag or tag in MUTABLE_TAGS


def _looks_like_domain(component):
    return '.' in component or ':' in component or component == 'localhost' or component != component.lower()


class ImageRef(namedtuple('ImageRef', 'registry repository tag digest')):
    """A parsed image reference.

    `registry` is the registry host (with port), 'docker.io' for Docker Hub; `repository` is the
    path inside the registry ('library/nginx', 'team/web'); `tag` and `digest` are None when absent.
    """

    __slots__ = ()

    @classmethod
    def parse(cls, text):
        if not isinstance(text, str) or not text.strip():
            raise ImageRefError('image reference %r is empty' % (text,))
        original = text
        if any(char.isspace() for char in text):
            raise ImageRefError('image reference %r contains white space' % (text,))
        digest = None
        if '@' in text:
            text, digest = text.split('@', 1)
            if not is_valid_digest(digest):
                raise ImageRefError('image reference %r has an invalid digest %r (expected sha256:<64 hex digits>)'
                                    % (original, digest))
        tag = None
        slash = text.rfind('/')
        colon = text.rfind(':')
        if colon > slash:
            text, tag = text[:colon], text[colon + 1:]
            if not _TAG.match(tag):
                raise ImageRefError('image reference %r has an invalid tag %r (letters, digits, _, . and -, '
                                    'at most 128, not starting with . or -)' % (original, tag))
        if not text:
            raise ImageRefError('image reference %r has no repository name' % (original,))
        parts = text.split('/')
        if len(parts) > 1 and _looks_like_domain(parts[0]):
            registry = parts[0]
            if not _DOMAIN.match(registry):
                raise ImageRefError('image reference %r has an invalid registry host %r' % (original, registry))
            path = parts[1:]
        else:
            registry = DOCKER_HUB
            path = parts
        registry = normalize_registry(registry)
        for component in path:
            if not _PATH_COMPONENT.match(component):
                raise ImageRefError('image reference %r has an invalid repository component %r (lowercase letters, '
                                    'digits and separators . _ __ -)' % (original, component))
        if registry == DOCKER_HUB and len(path) == 1:
            path = [OFFICIAL_NAMESPACE] + path
        repository = '/'.join(path)
        if len(registry) + 1 + len(repository) > _MAX_NAME_LENGTH:
            raise ImageRefError('image reference %r is longer than %d characters' % (original, _MAX_NAME_LENGTH))
        return cls(registry, repository, tag, digest)

    @property
    def name(self):
        """The repository as the engine writes it: short on Docker Hub, `registry/path` elsewhere."""
        if self.registry == DOCKER_HUB:
            prefix = OFFICIAL_NAMESPACE + '/'
            if self.repository.startswith(prefix) and '/' not in self.repository[len(prefix):]:
                return self.repository[len(prefix):]
            return self.repository
        return '%s/%s' % (self.registry, self.repository)

    @property
    def canonical_name(self):
        """`registry/path` with the registry always spelled out (docker.io/library/nginx)."""
        return '%s/%s' % (self.registry, self.repository)

    @property
    def api_host(self):
        """The host (with port) serving the Registry HTTP API v2 for this image."""
        return DOCKER_HUB_API_HOST if self.registry == DOCKER_HUB else self.registry

    @property
    def reference(self):
        """What to ask the registry for: the digest when there is one (it wins over a tag), else the tag."""
        return self.digest or self.tag or 'latest'

    @property
    def is_pinned(self):
        return self.digest is not None

    def same_repository(self, other):
        return (self.registry, self.repository) == (other.registry, other.repository)

    def with_tag(self, tag):
        """The same repository at another tag, without any digest (a new tag means a new resolution)."""
        if not _TAG.match(tag or ''):
            raise ImageRefError('tag %r is not a valid image tag' % (tag,))
        return self._replace(tag=tag, digest=None)

    def with_digest(self, digest):
        if not is_valid_digest(digest):
            raise ImageRefError('digest %r is not a valid image digest' % (digest,))
        return self._replace(digest=digest)

    def format(self):
        return pinned(self.name, self.tag, self.digest)

    def __str__(self):
        return self.format()


def parse(text):
    return ImageRef.parse(text)


def pinned(repo, tag, digest):
    """`repo:tag@sha256:...`; the tag part is left out when there is none, the digest part too."""
    text = repo
    if tag:
        text += ':' + tag
    if digest:
        text += '@' + digest
    return text
