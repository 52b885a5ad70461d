#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: compose_pin
short_description: Resolve every image of a compose project to its registry digest and pin it in an override file
version_added: 0.1.0
description:
  - Reads the compose files of a project (rendered by the compose CLI, so variables and env files apply),
    chooses the image of every service for a release, resolves each image to its manifest digest and writes a
    generated override file that pins every service to C(repository:tag@sha256:...).
  - Images are resolved against their registries with the Registry HTTP API v2 (HEAD on the manifest, anonymous,
    bearer-token and basic authentication). Multi-platform images pin to their index digest, as C(docker pull)
    records it. With O(resolve=local) the digests come from images already present on the host (their
    C(RepoDigests)), for a rollback that must not depend on the registry.
  - Nothing is written unless every image resolves. The module fails, before writing anything, when any image is
    missing from its registry (all missing images are listed), when a service has C(build:) and no pullable image
    (unless O(allow_build=true)), when an image has a mutable tag (C(latest) or none) and no digest, or when a
    registry cannot be reached within O(timeout).
  - The user's own compose files are never modified. Use the override file after them, for example
    C(docker-compose -p shop -f compose.yaml -f compose.shop.release.yml up -d); the RV(files) return value lists the
    files in order.
  - With O(log_bound), the override also gives every service without its own C(logging) a bounded log configuration.
  - Also returns RV(compose_hash), the sha256 of the effective configuration with the override applied, so a changed
    C(.env) or compose file shows as a different release configuration. C(compose config) runs once; the override,
    which only sets the C(image) key (and C(logging) with O(log_bound)) and comes last, is merged in-process the way
    compose merges it.
  - The version of a standalone C(docker-compose) is remembered in C(~/.cache/safedeploy/compose-cli.json), keyed
    by the binary's path, inode, size and modification time, so an upgraded binary is asked again; v1 takes most
    of a second to answer C(version). The C(docker compose) plugin is asked every time.
author:
  - safedeploy.compose contributors (@safedeploy)
options:
  project_src:
    description:
      - Directory of the compose project. Relative O(files), O(env_files) and O(override_file) are taken from here.
    type: path
    required: true
  files:
    description:
      - The project's compose files, in order.
      - When not set, the first of C(compose.yaml), C(compose.yml), C(docker-compose.yaml), C(docker-compose.yml)
        found in O(project_src), followed by its C(.override) sibling (for example C(compose.override.yaml)) when
        present, as the compose CLI itself picks them.
    type: list
    elements: path
  project_name:
    description:
      - The compose project name, passed to every compose command explicitly.
    type: str
    required: true
  env_files:
    description:
      - Env files passed to compose with C(--env-file). C(docker-compose) v1 accepts only one.
      - When not set, compose reads C(.env) in O(project_src).
    type: list
    elements: path
  tag:
    description:
      - The release tag. It replaces the tag of every service image whose repository is listed in O(repositories),
        or of every service image when O(repositories) is not set.
      - Must not be C(latest).
      - Mutually exclusive with O(images).
    type: str
  repositories:
    description:
      - Repositories (without tag) that O(tag) applies to, for example C(registry.example.com/shop/web).
        Services whose image is in another repository keep the image of the compose files, which must then be
        pinnable (a tag other than C(latest), or a digest).
      - Every entry must match the image of at least one service.
    type: list
    elements: str
  images:
    description:
      - The release as an explicit map of service name to image reference, for example C(web) to
        C(registry.example.com/shop/web:9f2c1ab). A reference may carry a digest.
      - Services not in the map keep the image of the compose files.
      - Mutually exclusive with O(tag).
    type: dict
  release:
    description:
      - The release id written in the override file's header (for example a git short SHA).
      - Defaults to O(tag); required when O(images) is used.
    type: str
  override_file:
    description:
      - Where to write the generated override. Relative paths are taken from O(project_src).
      - It must not be one of O(files).
      - When not set, C(compose.<project_name>.release.yml) in O(project_src) (for example C(compose.shop.release.yml)),
        so two compose projects whose files share a directory never overwrite each other's pins. O(project_name) must
        then be letters, digits, C(_) and C(-), starting with a letter or digit.
      - "Migration: earlier releases of this collection wrote C(compose.release.yml) for every project. When this option is not set
        and O(project_src) holds a C(compose.release.yml) that compose_pin generated for this same project (its header
        names the project), it is removed once the new override is written (RV(legacy_override_removed)); one
        generated for another project is left alone."
    type: path
  log_bound:
    description:
      - Bound the logs of the services that do not configure their own. Every service whose effective configuration
        has no C(logging) key gets, in the generated override, the log driver O(log_bound.driver) with the options
        C(max-size) and C(max-file); services with their own C(logging) are left as they are. RV(log_bounded) lists
        the services that got it.
      - The bound applies to the containers created from this override; compose recreates the services whose logging
        changes.
      - The engine-wide alternative is C(log-opts) in C(/etc/docker/daemon.json), which bounds every container the
        engine creates after its restart; see the collection's docs/compose_pin.md.
      - Not set (the default), the override pins images only.
    type: dict
    suboptions:
      max_size:
        description:
          - Largest size of one log file before it is rotated, a number with an optional unit C(k), C(m) or C(g),
            for example C(10m).
        type: str
        required: true
      max_file:
        description:
          - How many log files to keep per container, rotated ones included (at least 1).
        type: int
        default: 3
      driver:
        description:
          - The log driver to give the services. V(json-file) is the engine's default driver, which C(docker logs)
            reads; V(local) is the engine's compact file driver.
          - Either replaces the engine's default driver for these services, also when that is another one (for
            example C(journald)); leave O(log_bound) unset on such hosts.
        type: str
        choices: [json-file, local]
        default: json-file
  slotted:
    description:
      - Services that run in the blue and green slots of a routed stack (M(safedeploy.compose.compose_slot)), not in
        the project itself. The override pins their image like any other (the slots are rendered from it) and scales
        them to 0 (C(scale) 0), so an C(up) of the project runs none of their containers and removes the ones that
        ran in place before the stack was routed.
      - Needs Compose v2 (docker-compose v1 does not read C(scale) in every file format).
      - Every service named must be in the configuration and have an image.
    type: list
    elements: str
    default: []
  resolve:
    description:
      - V(registry) resolves every image in its registry.
      - V(local) pins every image to a digest of the image already present on the Docker host (its C(RepoDigests)),
        without contacting any registry. An image absent from the host is reported as missing.
    type: str
    choices: [registry, local]
    default: registry
  allow_build:
    description:
      - Allow services that have C(build:) and no image. They are left unpinned (they are built, not pulled).
      - Production hosts should not build, so the default is to fail.
    type: bool
    default: false
  timeout:
    description:
      - Seconds allowed for resolving one image (all retries of connection errors and server errors included).
      - Also bounds each compose command, to no less than 60 seconds.
    type: int
    default: 60
  estimate_download:
    description:
      - Also return RV(download_bytes), what pulling the release would download onto the Docker host (O(docker_host)),
        so a rollout can make room for the pull, or refuse one that cannot fit, before anything is touched.
      - An image the host already holds (by its manifest or config digest) counts nothing and costs no registry
        request. For any other image the module reads its manifest (the linux/amd64 entry of a multi-platform image)
        and its image config, and counts the config and each compressed layer the host lacks. The host knows its
        layers by their uncompressed digests (the config's C(rootfs.diff_ids)), and the engine skips a layer only when
        it holds the same layer on the same parent layers, so that is what is compared.
      - Costs up to three registry requests per image not on the host, all within O(timeout), one engine call, and,
        when some image is not on the host, one engine call per local image not seen before. An image id names its
        content, so the layers of each local image are remembered in C(~/.cache/safedeploy/image-chains.json) (mode
        0600, only the images of the last look) and never inspected twice.
        Only with O(resolve=registry).
    type: bool
    default: false
  compose_command:
    description:
      - Which Docker Compose CLI renders the configuration and appears in RV(compose_argv).
      - C(auto) uses the C(docker compose) plugin (v2) when it answers, else a standalone C(docker-compose).
      - C(v2) insists on Compose v2 or later (the plugin, or a standalone C(docker-compose) that answers 2.x) and
        fails when there is none; C(v1) insists on a standalone C(docker-compose) 1.x (end of life since 2023, kept
        for hosts that have nothing newer).
    type: str
    choices: [auto, v2, v1]
    default: auto
extends_documentation_fragment:
  - safedeploy.compose._engine
  - safedeploy.compose._registry
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in diff mode).
    support: full
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments and registry content, the second
      invocation indicates no change.
    support: full
notes:
  - The engine options O(docker_host) and O(engine_timeout) are used only with O(resolve=local) or
    O(estimate_download=true).
  - Needs a compose CLI on the host (C(docker compose) plugin or C(docker-compose)) to render the configuration.
requirements:
  - PyYAML (Python library) on the managed host (C(python3-yaml))
seealso:
  - module: safedeploy.compose.last_good_tag
'''

EXAMPLES = r'''
- name: Pin the release 9f2c1ab of the shop images
  safedeploy.compose.compose_pin:
    project_src: /srv/shop
    project_name: shop
    tag: 9f2c1ab
    repositories:
      - registry.example.com/shop/web
      - registry.example.com/shop/worker
  register: shop_pin

- name: Pin explicit images, with registry credentials
  safedeploy.compose.compose_pin:
    project_src: /srv/shop
    files:
      - compose.yaml
      - compose.prod.yaml
    env_files:
      - prod.env
    project_name: shop
    release: 2024-06-01.1
    images:
      web: registry.example.com/shop/web:9f2c1ab
      worker: registry.example.com/shop/worker:9f2c1ab
    registry_auth:
      - registry: registry.example.com
        username: deploy
        password: "{{ vault_registry_password }}"

- name: Pin the last good release from the images on the host (no registry needed)
  safedeploy.compose.compose_pin:
    project_src: /srv/shop
    project_name: shop
    tag: "{{ ledger.last_good.id }}"
    repositories:
      - registry.example.com/shop/web
    resolve: local

- name: Start what was pinned
  ansible.builtin.command:
    argv: "{{ shop_pin.compose_argv + ['up', '--detach', '--remove-orphans'] }}"
  changed_when: true
'''

RETURN = r'''
services:
  description:
    - Every service of the project with the image chosen for it and its digest.
    - Services built locally (with O(allow_build=true)) have null image, digest and pinned.
  returned: always
  type: dict
  sample:
    web:
      image: registry.example.com/shop/web:9f2c1ab
      repository: registry.example.com/shop/web
      tag: 9f2c1ab
      digest: sha256:4f8c0b1e6a43c0b6bd9ec4b1a7d2b81d0cc0f93a4b9a4c4f4ef2f2d3b4c5d6e7
      pinned: registry.example.com/shop/web:9f2c1ab@sha256:4f8c0b1e6a43c0b6bd9ec4b1a7d2b81d0cc0f93a4b9a4c4f4ef2f2d3b4c5d6e7
      build: false
digests:
  description:
    - The pinned digest of each service, for example for the V(digests) of a V(containers) check of
      M(safedeploy.compose.health_gate). Services built locally are left out.
  returned: always
  type: dict
  sample:
    web: sha256:4f8c0b1e6a43c0b6bd9ec4b1a7d2b81d0cc0f93a4b9a4c4f4ef2f2d3b4c5d6e7
compose_argv:
  description:
    - The compose command line of this release without its subcommand; append one, for example C(pull) or
      C(up --detach --remove-orphans). It names the compose CLI found on the host, the project name, the project
      directory, every compose file followed by the override file, and every env file.
    - Empty when the module failed before finding the compose CLI.
  returned: always
  type: list
  elements: str
  sample: [/usr/bin/docker-compose, -p, shop, --project-directory, /srv/shop, -f, /srv/shop/compose.yaml,
           -f, /srv/shop/compose.shop.release.yml]
compose_version:
  description:
    - The version of the compose CLI in RV(compose_argv), as it answers C(version --short).
    - Empty when the module failed before finding the compose CLI.
  returned: always
  type: str
  sample: 2.40.3
override_file:
  description: Absolute path of the generated override file.
  returned: always
  type: str
  sample: /srv/shop/compose.shop.release.yml
files:
  description:
    - The compose files to use for this release, in order, ending with the override file. Pass each with C(-f).
  returned: always
  type: list
  elements: str
  sample: [/srv/shop/compose.yaml, /srv/shop/compose.shop.release.yml]
legacy_override_removed:
  description:
    - The C(compose.release.yml) of an earlier release of this collection that this run removed (or would remove, in
      check mode), because O(override_file) was not set and the file was generated for this project; see
      O(override_file). Null when there was none.
  returned: always
  type: str
  sample: /srv/shop/compose.release.yml
log_bounded:
  description:
    - The services whose log configuration the override bounds (O(log_bound)), sorted. Services with their own
      C(logging) are not in it. Empty without O(log_bound).
  returned: always
  type: list
  elements: str
  sample: [web, worker]
config_files:
  description:
    - "Every file the release's configuration is made of, absolute: the compose files, the override file, the env
      files (or the project directory's C(.env), which compose reads when given none), the services' C(env_file)
      entries and the files of top-level C(configs) and C(secrets). Files that do not exist are left out."
    - What M(safedeploy.compose.last_good_tag) keeps as the release's snapshot (its O(safedeploy.compose.last_good_tag#module:files)),
      so a rollback puts the whole configuration back, not only the images.
    - Only paths; the module never returns the contents.
  returned: success
  type: list
  elements: str
  sample: [/srv/shop/compose.yaml, /srv/shop/compose.shop.release.yml, /srv/shop/.env]
release:
  description: The release id written in the override file's header.
  returned: always
  type: str
  sample: 9f2c1ab
missing:
  description:
    - Images that could not be found, each with the services using it, the registry, repository and reference
      asked for, and the HTTP status (null when the image was looked for on the Docker host).
    - Empty on success; on failure because of missing images, all of them are listed.
  returned: always
  type: list
  elements: dict
  sample:
    - image: registry.example.com/shop/worker:9f2c1ab
      services: [worker]
      registry: registry.example.com
      repository: shop/worker
      reference: 9f2c1ab
      status: 404
      message: image registry.example.com/shop/worker:9f2c1ab not found in registry registry.example.com (HTTP 404)
download_bytes:
  description:
    - With O(estimate_download=true), the bytes pulling the release would download onto the Docker host, as the
      registry's manifests give them, compressed. The config and the layers the host lacks, each layer counted once
      however many images of the release share it; V(0) when the host holds every image.
    - Layers unpack to more than their compressed size, and the pull holds a downloaded layer while it unpacks it, so
      a pull needs more room than this; a rollout adds a margin (see the rollout role's
      C(rollout_download_margin_percent)).
    - Null without O(estimate_download=true), or when the module failed before estimating.
  returned: always
  type: int
  sample: 48213504
service_download_bytes:
  description:
    - With O(estimate_download=true), RV(download_bytes) for the image of each service on its own, by service.
      Layers that several services share count in each, so the values can add up to more than RV(download_bytes).
      Services that are built are left out. Empty otherwise.
  returned: always
  type: dict
  sample:
    web: 1052672
    worker: 0
compose_hash:
  description:
    - sha256 of the effective configuration with the override applied, as canonical JSON (the parsed output of
      C(compose config) with the pinned images, keys sorted); it changes when compose files, env files or
      interpolated variables change. Null when the module failed before rendering it.
  returned: always
  type: str
  sample: 0d6f2e3c1b8a4f5e9d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e
diff:
  description: The override file's content before and after.
  returned: when diff mode is enabled
  type: dict
  sample:
    before: ''
    after: "# Generated by safedeploy.compose.compose_pin ...\nservices:\n  web:\n    image: ...\n"
    before_header: /srv/shop/compose.shop.release.yml
    after_header: /srv/shop/compose.shop.release.yml
'''

import json
import os
import re
import stat
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.safedeploy.compose.plugins.module_utils._atomic_file import write_file_atomic
from ansible_collections.safedeploy.compose.plugins.module_utils._compose import (
    DEFAULT_CLI_CACHE, CommandRunner, ComposeError, ComposeProject, ComposeTimeout, compose_hash, config_files, detect_compose,
    find_default_compose_files, services_of, with_images,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._engine import (
    DEFAULT_CHAIN_CACHE, ENGINE_ARGUMENT_SPEC, connect_engine, describe_engine_error, engine_address, layers_to_pull,
    read_held_chains, read_held_digests,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._image_ref import (
    ImageRef, ImageRefError, is_mutable_tag, pinned,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._registry import (
    REGISTRY_ARGUMENT_SPEC, RegistryClient, RegistryError,
)

try:
    import yaml
except ImportError:  # pragma: no cover - run() then stops, naming it
    yaml = None

OVERRIDE_MODE = 0o644
MIN_COMPOSE_TIMEOUT = 60
HEADER = re.compile(r'^# Generated by safedeploy\.compose\.compose_pin for release (.*?) of project ')
HEADER_PROJECT = re.compile(r'^# Generated by safedeploy\.compose\.compose_pin for release .*? of project (.*)\. Do not edit:$',
                            re.MULTILINE)
# What earlier releases wrote for every project: one file per directory, shared by the projects that live there.
LEGACY_OVERRIDE = 'compose.release.yml'
PROJECT_FILE_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_-]*\Z')
LOG_SIZE = re.compile(r'[1-9][0-9]*[kmg]?\Z')
_PLAIN_KEY = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]*\Z')
_YAML_SPECIAL = frozenset(['y', 'n', 'yes', 'no', 'on', 'off', 'true', 'false', 'null', '~'])


def default_override_file(project_name):
    """The override's file name when override_file is not given: one per compose project, so projects whose files
    share a directory never write the same file. None when the name cannot be a plain file name."""
    if not isinstance(project_name, str) or not PROJECT_FILE_NAME.match(project_name):
        return None
    return 'compose.%s.release.yml' % project_name


def override_project(text):
    """The project named in the header of an override compose_pin generated, or None for any other text."""
    match = HEADER_PROJECT.match(text or '')
    return match.group(1) if match else None


def check_log_bound(bound):
    """The problems of a log_bound option (already typed by the argument spec), as messages naming the fix."""
    problems = []
    size = bound.get('max_size')
    if not isinstance(size, str) or not LOG_SIZE.match(size.strip().lower()):
        problems.append('log_bound.max_size must be a size such as 10m (a positive whole number with an optional unit '
                        'k, m or g), got %s' % json.dumps(size))
    if bound.get('max_file') is None or bound['max_file'] < 1:
        problems.append('log_bound.max_file must be 1 or more, got %s' % json.dumps(bound.get('max_file')))
    return problems


def log_config(bound):
    """The compose `logging:` mapping of a log_bound option."""
    return {'driver': bound['driver'],
            'options': {'max-size': bound['max_size'].strip().lower(), 'max-file': str(bound['max_file'])}}


def services_to_bound(config, bound):
    """The services of a parsed configuration with no `logging:` of their own, sorted; [] without a bound."""
    if not bound:
        return []
    services = config.get('services') or {}
    return sorted(name for name, spec in services.items() if not (spec or {}).get('logging'))


def render_override(release, project_name, pins, built=(), logging=None, slotted=()):
    """The override file's text: a header, then each service pinned; stable for the same input.

    Built services (allow_build) appear as empty entries: an override without any service would be
    read by docker-compose v1 as a version 1 file and rejected. `logging` maps services to the
    `logging:` mapping the override gives them (log_bound). `slotted` services get `scale: 0` (they run in slots).
    """
    logging = logging or {}
    lines = [
        '# Generated by safedeploy.compose.compose_pin for release %s of project %s. Do not edit:' % (
            _one_line(release), _one_line(project_name)),
        '# every rollout rewrites it. It pins each service to the image digest resolved for the release.',
        'services:',
    ]
    for service in sorted(set(pins) | set(built) | set(logging)):
        if service not in pins and service not in logging:
            lines.append('  %s: {}  # built on this host (allow_build), not pinned' % _yaml_key(service))
            continue
        lines.append('  %s:' % _yaml_key(service))
        if service in pins:
            lines.append('    image: %s' % json.dumps(pins[service]))
        if service in slotted:
            lines.append('    scale: 0  # routed: runs in the blue and green slots (compose_slot), not in the project')
        if service in logging:
            lines.append('    logging:  # log_bound: this service has no logging of its own')
            lines.append('      driver: %s' % json.dumps(logging[service]['driver']))
            lines.append('      options:')
            for key, value in sorted(logging[service]['options'].items()):
                lines.append('        %s: %s' % (key, json.dumps(value)))
    return '\n'.join(lines) + '\n'


def _one_line(text):
    return re.sub(r'[\x00-\x1f\x7f]', '?', str(text))


def _yaml_key(name):
    if _PLAIN_KEY.match(name) and name.lower() not in _YAML_SPECIAL and not re.match(r'^[0-9.]+$', name):
        return name
    return json.dumps(name)


class ComposePin(object):
    """Plan the image of each service, resolve the digests, then write the override only if all resolved."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.project_src = os.path.abspath(self.params['project_src'])
        self.result = dict(
            changed=False,
            release=self.params['release'] or self.params['tag'],
            services={},
            override_file=None,
            files=[],
            compose_argv=[],
            compose_version='',
            digests={},
            missing=[],
            compose_hash=None,
            download_bytes=None,
            service_download_bytes={},
            legacy_override_removed=None,
            log_bounded=[],
        )
        self.check_input()
        self.override_file = self._in_project(self.params['override_file']
                                              or default_override_file(self.params['project_name']))
        self.result['override_file'] = self.override_file
        if module._diff:
            self.result['diff'] = dict(before='', after='', before_header=self.override_file,
                                       after_header=self.override_file)

    def fail(self, msg, **extra):
        self.result.update(extra)
        self.module.fail_json(msg=msg, **self.result)

    def _in_project(self, path):
        return os.path.normpath(os.path.join(self.project_src, path))

    def check_input(self):
        """Refuse options that cannot work, before any command runs."""
        params = self.params
        problems = []
        if not params['override_file'] and default_override_file(params['project_name']) is None:
            problems.append('project_name %s cannot name the default override file compose.<project_name>.release.yml '
                            '(letters, digits, _ and - only, starting with a letter or digit): give override_file'
                            % json.dumps(params['project_name']))
        if params['log_bound']:
            problems += check_log_bound(params['log_bound'])
        if problems:
            self.fail('compose_pin: %s. Nothing was written.' % '; '.join(problems))

    # ---------------------------------------------------------------- steps

    def run(self):
        if yaml is None:
            # without it the compose files' env_file entries cannot be found, and a release snapshot would silently
            # lack them (a rollback would then not put them back)
            self.fail('compose_pin needs the Python library PyYAML on this host (Debian: python3-yaml; the roles\' '
                      'host_python step installs it): it reads the env_file entries of the compose files, which a '
                      'release snapshot keeps. Nothing was written.')
        project = self.compose_project()
        try:
            _text, config = project.load_config()
        except ComposeTimeout:
            self.fail('compose_pin: reading the compose files of project %s (compose config) did not finish within %ss '
                      'and was stopped; nothing was written. Raise timeout (it bounds compose commands to no less than '
                      '%ss).' % (project.project_name, project.timeout, MIN_COMPOSE_TIMEOUT))
        except ComposeError as exc:
            self.fail('compose_pin: the compose files of project %s are not valid: %s' % (
                project.project_name, exc.message))
        services = services_of(config)
        if not services:
            self.fail('compose_pin: compose project %s (%s) defines no services: check files and project_src' % (
                project.project_name, ', '.join(project.files)))
        plan = self.plan(services)
        unknown = sorted(set(self.params['slotted']) - set(plan))
        built_slotted = sorted(service for service in self.params['slotted'] if plan.get(service, '') is None)
        if unknown or built_slotted:
            self.fail('compose_pin: slotted names %s, which project %s %s; a routed service must be a service of the '
                      'compose files with an image. Nothing was written.' % (
                          ', '.join(unknown or built_slotted), project.project_name,
                          'does not define' if unknown else 'builds on the host'))
        resolved = self.resolve(plan)
        pins = {}
        for service, ref in plan.items():
            if ref is None:
                self.result['services'][service] = dict(image=None, repository=None, tag=None, digest=None,
                                                        pinned=None, build=True)
                continue
            digest = resolved[ref]
            pins[service] = pinned(ref.name, ref.tag, digest)
            self.result['digests'][service] = digest
            self.result['services'][service] = dict(image=ref.format(), repository=ref.name, tag=ref.tag,
                                                    digest=digest, pinned=pins[service],
                                                    build=services[service]['build'])
        built = [service for service, ref in plan.items() if ref is None]
        bound = self.params['log_bound']
        logging = dict((service, log_config(bound)) for service in services_to_bound(config, bound))
        self.result['log_bounded'] = sorted(logging)
        slotted = self.params['slotted']
        text = render_override(self.result['release'], project.project_name, pins, built, logging, slotted)
        self.result['compose_hash'] = compose_hash(with_images(config, pins, logging, scale=dict(
            (service, 0) for service in slotted)))
        self.result['files'] = list(project.files) + [self.override_file]
        self.write(text, pins)
        self.remove_legacy_override(project.files)
        self.result['config_files'] = config_files(project, config, [self.override_file])  # the override written
        return self.result

    def compose_project(self):
        params = self.params
        if not os.path.isdir(self.project_src):
            self.fail('compose_pin: project_src %s is not a directory: give the directory of the compose project'
                      % self.project_src)
        if params['files']:
            files = [self._in_project(path) for path in params['files']]
            absent = [path for path in files if not os.path.isfile(path)]
            if absent:
                self.fail('compose_pin: compose file(s) %s not found: check files and project_src' % ', '.join(absent))
        else:
            files = find_default_compose_files(self.project_src)
            if not files:
                self.fail('compose_pin: no compose file in %s (looked for compose.yaml, compose.yml, '
                          'docker-compose.yaml, docker-compose.yml): give files' % self.project_src)
        if os.path.realpath(self.override_file) in [os.path.realpath(path) for path in files]:
            self.fail('compose_pin: override_file %s is one of the project\'s own compose files, which compose_pin '
                      'never rewrites: choose another override_file' % self.override_file)
        if not os.path.isdir(os.path.dirname(self.override_file)):
            self.fail('compose_pin: the directory of override_file %s does not exist' % self.override_file)
        env_files = [self._in_project(path) for path in params['env_files'] or []]
        absent = [path for path in env_files if not os.path.isfile(path)]
        if absent:
            self.fail('compose_pin: env file(s) %s not found: check env_files' % ', '.join(absent))
        self.result['files'] = list(files) + [self.override_file]
        # compose config only reads files: a short registry timeout must not cut it off on a busy host
        compose_timeout = max(params['timeout'], MIN_COMPOSE_TIMEOUT)
        runner = CommandRunner(self.module, timeout=compose_timeout)
        try:
            cli = detect_compose(self.module, runner, choice=params['compose_command'], cache_path=DEFAULT_CLI_CACHE)
            project = ComposeProject(runner, cli, self.project_src, params['project_name'], files, env_files,
                                     timeout=compose_timeout)
        except ComposeError as exc:
            self.fail('compose_pin: %s' % exc.message)
        self.result['compose_argv'] = project.argv([], extra_files=[self.override_file])
        self.result['compose_version'] = cli.version
        return project

    def plan(self, services):
        """{service: ImageRef to resolve, or None for a service that is built}; fails on every policy breach."""
        params = self.params
        tag = params['tag']
        images = params['images']
        repositories = []
        for text in params['repositories'] or []:
            try:
                repo = ImageRef.parse(text)
            except ImageRefError as exc:
                self.fail('compose_pin: repositories entry %r is not a repository name: %s' % (text, exc))
            if repo.tag or repo.digest:
                self.fail('compose_pin: repositories entry %r has a tag or digest: give repository names only, the tag '
                          'comes from the tag option' % text)
            repositories.append((text, repo))
        if tag is not None and is_mutable_tag(tag):
            self.fail('compose_pin: tag %r is mutable and cannot identify a release: give an immutable tag such as a '
                      'commit id' % tag)
        if images:
            unknown = sorted(set(images) - set(services))
            if unknown:
                self.fail('compose_pin: images names service(s) %s not defined in compose project %s (services: %s)'
                          % (', '.join(unknown), params['project_name'], ', '.join(sorted(services))))

        plan = {}
        problems = []
        matched = set()
        for service, spec in sorted(services.items()):
            text = spec['image']
            origin = 'the compose files'
            if images and service in images:
                text, origin = images[service], 'images'
                if not isinstance(text, str):
                    self.fail('compose_pin: images.%s must be an image reference string, got %r' % (service, text))
            if not text:
                if params['allow_build']:
                    plan[service] = None
                else:
                    problems.append('service %s has build: and no image: production hosts pull, they do not build; '
                                    'give it an image (push the built image), or set allow_build: true' % service)
                continue
            try:
                ref = ImageRef.parse(text)
            except ImageRefError as exc:
                problems.append('service %s: %s (from %s)' % (service, exc, origin))
                continue
            if tag is not None:
                hits = [entry for entry, repo in repositories if repo.same_repository(ref)]
                matched.update(hits)
                if hits or not repositories:
                    ref = ref.with_tag(tag)
                    origin = 'the tag option'
            if not ref.digest and is_mutable_tag(ref.tag):
                problems.append('service %s: image %s has the mutable tag %s (from %s) and cannot be pinned: give an '
                                'immutable tag or a digest%s' % (
                                    service, ref.format(), ref.tag or '(none, meaning latest)', origin,
                                    ', or list its repository in repositories' if tag is not None else ''))
                continue
            plan[service] = ref
        unmatched = [entry for entry, _repo in repositories if entry not in matched]
        if unmatched:
            problems.append('repositories entry(ies) %s match no service image (images: %s): fix the names' % (
                ', '.join(unmatched), ', '.join(sorted(set(spec['image'] for spec in services.values() if spec['image'])))))
        if problems:
            self.fail('compose_pin: release %s of project %s cannot be pinned, nothing was written: %s' % (
                self.result['release'], params['project_name'], '; '.join(problems)))
        return plan

    def resolve(self, plan):
        """{ImageRef: digest} for every planned image; fails listing all missing images and all errors."""
        users = {}
        for service, ref in sorted(plan.items()):
            if ref is not None:
                users.setdefault(ref, []).append(service)
        if self.params['resolve'] == 'local':
            resolved, failures = self._resolve_local(users)
        else:
            resolved, failures = self._resolve_registry(users)
        if failures:
            self.result['missing'] = [entry for entry in failures if entry['kind'] == 'missing']
            for entry in self.result['missing']:
                entry.pop('kind')
            missing = len(self.result['missing'])
            summary = '%d of %d images of project %s not found' % (missing, len(users), self.params['project_name']) \
                if missing else 'images of project %s could not be resolved' % self.params['project_name']
            details = '; '.join('%s (services %s): %s' % (entry['image'], ', '.join(entry['services']), entry['message'])
                                for entry in failures)
            where = 'on the Docker host' if self.params['resolve'] == 'local' else 'in their registries'
            advice = (' Push the missing images or choose another release.' if missing else '')
            self.fail('compose_pin: %s %s, nothing was written: %s.%s' % (summary, where, details, advice))
        return resolved

    def _resolve_registry(self, users):
        client = RegistryClient(credentials=self.params['registry_auth'], docker_config=self.params['docker_config'],
                                insecure_registries=self.params['insecure_registries'], timeout=self.params['timeout'],
                                validate_certs=self.params['validate_certs'])
        resolved, failures = {}, []
        for ref, services in users.items():
            try:
                resolved[ref] = client.resolve(ref).digest
            except RegistryError as exc:
                failures.append(_registry_failure(exc, ref, services))
        if self.params['estimate_download'] and not failures:
            failures = self.estimate_download(client, users, resolved)
        return resolved, failures

    def estimate_download(self, registry, users, resolved):
        """Set download_bytes (and per service) to what pulling the release would fetch onto this Docker host.

        An image the host holds (by manifest or config digest) costs nothing; otherwise its config and each
        layer whose chain the host lacks, every layer counted once however many images share it. Returns
        the failures of the registry requests. Each image's requests share one deadline of `timeout`."""
        engine = connect_engine(self.module, self.result)
        address = engine_address(self.params)
        try:
            held = read_held_digests(engine)
        except Exception as exc:  # any engine failure: a message, not a traceback
            self.fail(describe_engine_error(exc, address, 'list its images (for the download estimate)',
                                            self.params['engine_timeout']))
        held_chains = None
        counted, total, by_service, failures = set(), 0, {}, []
        for ref, services in sorted(users.items(), key=lambda item: item[0].format()):
            digest = resolved[ref]
            fetch = []
            if digest not in held:
                deadline = time.monotonic() + self.params['timeout']
                try:
                    manifest = registry.platform_manifest(ref.with_digest(digest), deadline=deadline)
                    if manifest.config_digest not in held:
                        diff_ids = (registry.image_diff_ids(ref, manifest.config_digest, deadline)
                                    if manifest.config_digest else None)
                        if held_chains is None:
                            try:
                                held_chains = read_held_chains(engine, DEFAULT_CHAIN_CACHE)
                            except Exception as exc:  # any engine failure: a message, not a traceback
                                self.fail(describe_engine_error(exc, address, 'inspect its images (for the download '
                                                                'estimate)', self.params['engine_timeout']))
                        fetch = [(manifest.config_digest or manifest.digest, manifest.config_size)]
                        fetch += layers_to_pull(diff_ids, manifest.layers, held_chains)
                except RegistryError as exc:
                    failures.append(_registry_failure(exc, ref, services))
                    continue
            for service in services:
                self.result['service_download_bytes'][service] = sum(size for _key, size in fetch)
            total += sum(size for key, size in fetch if key not in counted)
            counted.update(key for key, _size in fetch)
        if not failures:
            self.result['download_bytes'] = total
        return failures

    def _resolve_local(self, users):
        client = connect_engine(self.module)
        address = engine_address(self.params)
        resolved, failures = {}, []
        for ref, services in users.items():
            lookup = pinned(ref.name, None, ref.digest) if ref.digest else ref.format()
            entry = dict(kind='missing', image=ref.format(), services=services, registry=ref.registry,
                         repository=ref.repository, reference=ref.reference, status=None)
            try:
                image = client.api.inspect_image(lookup)
            except Exception as exc:  # ImageNotFound (404), or any engine failure
                if getattr(exc, 'status_code', None) == 404 or type(exc).__name__ == 'ImageNotFound':
                    entry['message'] = 'image %s is not present on the Docker host %s' % (ref.format(), address)
                else:
                    message = describe_engine_error(exc, address, 'inspect image %s' % lookup, self.params['engine_timeout'])
                    entry.update(kind='error', message=message)
                failures.append(entry)
                continue
            digests = []
            for repo_digest in image.get('RepoDigests') or []:
                try:
                    candidate = ImageRef.parse(repo_digest)
                except ImageRefError:
                    continue
                if candidate.same_repository(ref) and candidate.digest:
                    digests.append(candidate.digest)
            if ref.digest and ref.digest in digests:
                resolved[ref] = ref.digest
            elif digests and not ref.digest:
                resolved[ref] = digests[0]
            else:
                entry.update(kind='unpinnable', message='image %s on the Docker host has no registry digest for %s '
                             '(it was built or loaded here, never pushed or pulled), so it cannot be pinned'
                             % (ref.format(), ref.name))
                failures.append(entry)
        return resolved, failures

    def write(self, text, pins):
        before, mode = self._current()
        self.result['changed'] = before != text or mode != OVERRIDE_MODE
        if 'diff' in self.result:
            self.result['diff']['before'] = before or ''
            self.result['diff']['after'] = text
        self._warn_repushed(before, pins)
        if not self.result['changed'] or self.module.check_mode:
            return
        directory = os.path.dirname(self.override_file)
        try:
            if before != text:
                write_file_atomic(self.override_file, text.encode('utf-8'), OVERRIDE_MODE)
            else:
                os.chmod(self.override_file, OVERRIDE_MODE)
        except (IOError, OSError) as exc:
            self.fail('compose_pin: writing override file %s failed: %s: check permissions and free space in %s' % (
                self.override_file, exc, directory), changed=False)

    def remove_legacy_override(self, files):
        """Migration: the shared compose.release.yml of earlier releases, when it was generated for this project and
        override_file was not given, goes once this project's own override is written. Another project's is left."""
        legacy = self._in_project(LEGACY_OVERRIDE)
        if self.params['override_file'] or legacy == self.override_file or not os.path.isfile(legacy):
            return
        if os.path.realpath(legacy) in [os.path.realpath(path) for path in files]:
            return  # the user's own compose file, whatever its name
        try:
            with open(legacy, 'rb') as handle:
                head = handle.read(4096).decode('utf-8', 'replace')
        except (IOError, OSError) as exc:
            self.module.warn('compose_pin: cannot read %s to see whether it is an override of an earlier release: %s'
                             % (legacy, exc))
            return
        if override_project(head.split('\n', 1)[0]) != self.params['project_name']:
            return
        self.result['legacy_override_removed'] = legacy
        self.result['changed'] = True
        if self.module.check_mode:
            return
        try:
            os.unlink(legacy)
        except (IOError, OSError) as exc:
            self.fail('compose_pin: the override %s was written, but removing the override %s of an earlier release '
                      'failed: %s: remove it by hand (this project no longer uses it)' % (self.override_file, legacy, exc))

    def _current(self):
        try:
            with open(self.override_file, 'rb') as handle:
                content = handle.read().decode('utf-8', 'replace')
            return content, stat.S_IMODE(os.stat(self.override_file).st_mode)
        except (IOError, OSError) as exc:
            if not os.path.exists(self.override_file):
                return None, None
            self.fail('compose_pin: reading override file %s failed: %s' % (self.override_file, exc))

    def _warn_repushed(self, before, pins):
        """Same release, other digest: somebody re-pushed a release tag, which is worth saying out loud."""
        if not before or yaml is None:
            return
        match = HEADER.match(before)
        if not match or match.group(1) != _one_line(self.result['release']):
            return
        try:
            old = (yaml.safe_load(before) or {}).get('services') or {}
        except yaml.YAMLError:
            return
        for service, ref in sorted(pins.items()):
            previous = (old.get(service) or {}).get('image')
            if previous and previous != ref and previous.split('@')[0] == ref.split('@')[0]:
                self.module.warn('release %s: the image of service %s now resolves to %s, the override pinned %s: the '
                                 'tag was pushed again' % (self.result['release'], service, ref.split('@')[1],
                                                           previous.split('@')[-1]))


def _registry_failure(exc, ref, services):
    return dict(kind=exc.kind, image=ref.format(), services=services, registry=exc.registry or ref.registry,
                repository=exc.repository or ref.repository, reference=exc.reference or ref.reference,
                status=exc.status, message=exc.message)


def new_module():
    """The AnsibleModule of compose_pin, its arguments read and typed."""
    argument_spec = dict(
        project_src=dict(type='path', required=True),
        files=dict(type='list', elements='path'),
        project_name=dict(type='str', required=True),
        env_files=dict(type='list', elements='path'),
        tag=dict(type='str'),
        repositories=dict(type='list', elements='str'),
        images=dict(type='dict'),
        release=dict(type='str'),
        override_file=dict(type='path'),
        log_bound=dict(type='dict', options=dict(
            max_size=dict(type='str', required=True),
            max_file=dict(type='int', default=3),
            driver=dict(type='str', choices=['json-file', 'local'], default='json-file'),
        )),
        resolve=dict(type='str', choices=['registry', 'local'], default='registry'),
        allow_build=dict(type='bool', default=False),
        timeout=dict(type='int', default=60),
        estimate_download=dict(type='bool', default=False),
        slotted=dict(type='list', elements='str', default=[]),
        compose_command=dict(type='str', choices=['auto', 'v2', 'v1'], default='auto'),
    )
    argument_spec.update(ENGINE_ARGUMENT_SPEC)
    argument_spec.update(REGISTRY_ARGUMENT_SPEC)
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=[('tag', 'images')],
        required_one_of=[('tag', 'images'), ('tag', 'release')],
        required_by={'repositories': 'tag'},
        supports_check_mode=True,
    )
    return module


def main():
    module = new_module()
    result = ComposePin(module).run()
    module.exit_json(**result)


if __name__ == '__main__':
    main()
