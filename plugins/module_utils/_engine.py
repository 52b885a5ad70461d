# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private module_utils of safedeploy.compose: the Docker engine client shared by the modules.
# Not a public API; it may change in any release.

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import socket
import stat
import time


from ansible_collections.safedeploy.compose.plugins.module_utils._atomic_file import write_file_atomic
from ansible_collections.safedeploy.compose.plugins.module_utils._engine_api import (
    DEFAULT_ADDRESS,
    EngineAddressError,
    EngineAPIError,
    EngineClient,
    NotFound,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._compose import PROJECT_LABEL
from ansible_collections.safedeploy.compose.plugins.module_utils._image_ref import ImageRef, ImageRefError
from ansible_collections.safedeploy.compose.plugins.module_utils._log_config import log_config_unbounded

DEFAULT_DOCKER_HOST = DEFAULT_ADDRESS

DEFAULT_ENGINE_TIMEOUT = 60
ENGINE_ARGUMENT_SPEC = dict(
    docker_host=dict(type='str'),
    engine_timeout=dict(type='int', default=DEFAULT_ENGINE_TIMEOUT),
)


class EngineError(Exception):
    """The engine could not be reached or refused a call; the message says what to do."""


def engine_address(params):
    return params.get('docker_host') or os.environ.get('DOCKER_HOST') or DEFAULT_DOCKER_HOST


def is_no_space_error(exc):
    text = str(exc).lower()
    return 'no space left on device' in text or getattr(exc, 'errno', None) == errno.ENOSPC


def is_timeout_error(exc):
    """True for an engine call abandoned at engine_timeout (a socket timeout)."""
    if isinstance(exc, socket.timeout) or type(exc).__name__ in ('ReadTimeout', 'ConnectTimeout', 'ReadTimeoutError'):
        return True
    return 'timed out' in str(exc).lower()


def describe_engine_error(exc, address, action, timeout=None):
    """One message for every way an engine call fails, naming the cause and the next step.

    `timeout` is the engine_timeout the call ran with, named when the call was abandoned at it."""
    if is_timeout_error(exc):
        return ('Docker engine at %s did not answer within %s to %s, and the call was abandoned: the engine is hung or '
                'overloaded. Check dockerd (systemctl status docker), or raise engine_timeout.'
                % (address, '%ss (engine_timeout)' % timeout if timeout else 'engine_timeout', action))
    if is_no_space_error(exc):
        return ('Docker engine at %s failed to %s: no space left on device. Free disk space first, for example '
                'with safedeploy.compose.disk_reclaim (it keeps rollback images), then retry.' % (address, action))
    return ('Docker engine at %s failed to %s: %s. Check that dockerd is running and that this user may use its '
            'socket (docker_host option or DOCKER_HOST).' % (address, action, exc))


def connect_engine(module, result=None):
    """Return an EngineClient talking to the engine (it answered a ping), or fail the module with a clear message.

    `result` (optional) holds the module's other result keys, so a failure here returns them too.
    """
    result = dict(result or {})
    result.pop('msg', None)
    address = engine_address(module.params)
    timeout = module.params.get('engine_timeout') or DEFAULT_ENGINE_TIMEOUT
    try:
        client = EngineClient(address, timeout=timeout)
    except EngineAddressError as exc:
        module.fail_json(msg=str(exc), **result)
    try:
        client.ping()
    except Exception as exc:  # any failure to reach the engine ends the module the same way
        module.fail_json(msg=describe_engine_error(exc, address, 'answer a ping', timeout), **result)
    return client


# ---------------------------------------------------------------- disk usage and reclaim (disk_reclaim)
#
# The reclaim plan works on a model of what occupies the engine's disk (EngineInventory):
# images with their layers (chain ids and sizes), containers, build cache and volumes.
# Removing something from the model returns what that removal would free: a layer is freed
# only when the last image using it goes, so two old tags sharing a base layer are counted
# right. Check mode runs the same plan on the model alone; a real run removes each item from
# the engine and measures the filesystem again after every removal.

RECLAIM_STAGES = ('containers', 'dangling_images', 'build_cache', 'unused_images', 'logs', 'volumes')
STOPPED_CONTAINER_STATES = ('exited', 'created', 'dead')
JSON_FILE_DRIVER = 'json-file'
SERVICE_LABEL_KEY = 'com.docker.compose.service'

# Dockerfile instructions that only change the image config (no filesystem layer).
_CONFIG_ONLY_INSTRUCTIONS = frozenset(['ARG', 'CMD', 'ENTRYPOINT', 'ENV', 'EXPOSE', 'HEALTHCHECK', 'LABEL',
                                       'MAINTAINER', 'ONBUILD', 'SHELL', 'STOPSIGNAL', 'USER', 'VOLUME',
                                       'WORKDIR'])
_HEX_ID_RE = re.compile(r'(sha256:)?([0-9a-f]{12,64})\Z')
_NO_REFERENCE = ('<none>:<none>', '<none>@<none>')


def usage_percent(used, capacity):
    return round(100.0 * used / capacity, 2) if capacity > 0 else 0.0


def measure_disk(path):
    """Usage of the filesystem holding `path`, in bytes, computed as df(1) computes it.

    total = all blocks; used = blocks - free blocks (f_bfree); free = blocks an unprivileged
    writer may still use (f_bavail, df's "Avail"); percent = used / (used + free), df's "Use%"
    before df rounds it up. Blocks reserved for root (and ext4's own reserve) are neither used
    nor free, so used + free <= total; a drop of `used` is what df shows as space regained.
    Raises OSError when `path` does not exist on this host.
    """
    vfs = os.statvfs(path)
    used = (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
    free = vfs.f_bavail * vfs.f_frsize
    return dict(path=path, total=vfs.f_blocks * vfs.f_frsize, used=used, free=free,
                percent=usage_percent(used, used + free))


def usage_after_freeing(usage, freed):
    """The usage `usage` would have once `freed` more bytes are released (for check mode)."""
    used = max(usage['used'] - freed, 0)
    free = usage['free'] + (usage['used'] - used)
    return dict(usage, used=used, free=free, percent=usage_percent(used, used + free))


def engine_root_dir(client):
    """The engine's DockerRootDir (the directory holding images, containers and volumes)."""
    return client.info()['DockerRootDir']


# --- image references and protection

def normalize_repository(name):
    """`nginx` -> `docker.io/library/nginx`, `127.0.0.1:5000/app` unchanged (as the engine resolves them)."""
    try:
        return ImageRef.parse(name).canonical_name
    except ImageRefError:
        return name  # not a repository name the engine would accept: compared as written


def split_tag(name):
    """`host:5000/repo:tag` -> (`host:5000/repo`, `tag`); no tag -> (name, None)."""
    slash, colon = name.rfind('/'), name.rfind(':')
    if colon > slash:
        return name[:colon], name[colon + 1:]
    return name, None


def parse_image_ref(ref):
    """What an image reference names, as a dict of repository, tag, digest and id_prefix.

    Accepted: `repo:tag`, `repo` (tag latest), `repo@sha256:..`, `repo:tag@sha256:..`,
    `sha256:<hex>` (an image id, or its prefix of at least 12 digits, or a manifest digest)
    and a bare 64-digit image id. Returns None for a string that is none of these.
    References are read by the collection's one parser, _image_ref.ImageRef.
    """
    text = (ref or '').strip()
    if not text or any(char.isspace() for char in text):
        return None
    hex_id = _HEX_ID_RE.match(text)
    if hex_id and (hex_id.group(1) or len(hex_id.group(2)) == 64):
        value = 'sha256:' + hex_id.group(2)
        return dict(repository=None, tag=None, digest=value if len(value) == 71 else None, id_prefix=value)
    try:
        parsed = ImageRef.parse(text)
    except ImageRefError:
        return None
    tag = parsed.tag if parsed.tag or parsed.digest else 'latest'
    return dict(repository=parsed.canonical_name, tag=tag, digest=parsed.digest, id_prefix=None)


def image_names(image):
    """The normalized `repo:tag` and `repo@digest` names of an inventory image, and its digests."""
    tags = set()
    for tag in image.get('tags') or ():
        repository, name = split_tag(tag)
        tags.add('%s:%s' % (normalize_repository(repository), name))
    digests = set()
    for ref in image.get('digests') or ():
        digests.add(ref.partition('@')[2])
    return tags, digests


def ref_protects(parsed, image):
    """True when the parsed reference names `image` by tag, by digest or by id.

    A digest protects every local image carrying that manifest digest whatever the repository
    it was pulled from; `repo:tag@digest` protects by the digest and by the tag, so an image
    recorded by tag and built locally (no RepoDigests) is still kept.
    """
    tags, digests = image_names(image)
    if parsed['id_prefix'] and image['id'].startswith(parsed['id_prefix']):
        return True
    if parsed['digest'] and (parsed['digest'] in digests or parsed['digest'] == image['id']):
        return True
    return bool(parsed['tag'] and parsed['repository'] and '%s:%s' % (parsed['repository'], parsed['tag']) in tags)


class ImageProtection:
    """The images a reclaim must keep: refs from `protect`, from release ledgers, and projects."""

    def __init__(self):
        self.entries = []      # (ref, source, parsed)
        self.projects = set()  # compose projects whose volumes a volume prune keeps

    def add(self, ref, source):
        parsed = parse_image_ref(ref)
        if parsed is None:
            raise ValueError('%r (from %s) is not an image reference; use repo:tag, repo@sha256:<digest>, '
                             'repo:tag@sha256:<digest> or sha256:<image id>' % (ref, source))
        self.entries.append((ref, source, parsed))

    def protecting(self, image):
        """The refs that protect `image` (empty when nothing does)."""
        return [ref for ref, _source, parsed in self.entries if ref_protects(parsed, image)]

    def report(self, inventory):
        """[{ref, source, image_ids}] for the result: each protecting ref and the local images it keeps."""
        report = []
        for ref, source, parsed in self.entries:
            ids = sorted(image_id for image_id, image in inventory.images.items() if ref_protects(parsed, image))
            report.append(dict(ref=ref, source=source, image_ids=ids))
        for image_id, names in sorted(inventory.images_in_use().items()):
            image = inventory.images.get(image_id, {})
            refs = list(image.get('tags') or ()) + list(image.get('digests') or ())
            report.append(dict(ref=refs[0] if refs else image_id, source='in use by container %s' % ', '.join(sorted(names)),
                               image_ids=[image_id]))
        return report


# --- the model of the engine's disk

def chain_ids(diff_ids):
    """Layer chain ids (what the engine stores and shares layers by) from an image's diff ids."""
    chains = []
    for diff_id in diff_ids:
        if chains:
            diff_id = 'sha256:' + hashlib.sha256(('%s %s' % (chains[-1], diff_id)).encode('ascii')).hexdigest()
        chains.append(diff_id)
    return chains


def _config_only(created_by):
    text = created_by or ''
    words = (text.split('#(nop)', 1)[1] if '#(nop)' in text else text).split()
    return bool(words) and words[0].upper() in _CONFIG_ONLY_INSTRUCTIONS


def layer_sizes(diff_ids, history):
    """The size of each layer (oldest first) from the engine's image history.

    The history lists every build step newest first with the size of the layer it made; steps
    that only changed the config (ENV, LABEL, ...) made none. Steps of size 0 are ambiguous;
    when the count does not come out right, every byte is still attributed, to the top layers.
    """
    steps = list(reversed(history or []))
    sizes = [int(step.get('Size') or 0) for step in steps
             if int(step.get('Size') or 0) > 0 or not _config_only(step.get('CreatedBy'))]
    if len(sizes) != len(diff_ids):
        nonzero = [size for size in sizes if size > 0]
        sizes = ([0] * len(diff_ids) + nonzero)[-len(diff_ids):] if diff_ids else []
    return sizes


def _clean_refs(refs):
    return [ref for ref in refs or () if ref not in _NO_REFERENCE]


class EngineInventory:
    """What occupies the engine's disk, as a model a reclaim plan removes things from.

    images: {id: {id, tags, digests, created, size, layers: [(chain_id, bytes)]}}
    containers: {id: {id, name, state, image_id, created, bytes, rw_bytes, labels, log}}
      (bytes: what removing it frees, its writable layer plus, when stopped, its log; log: None or
      {path, bytes, driver, bounded}, read only with sizes)
    build_cache: [{id, type, bytes, in_use, shared}]
    volumes: {name: {name, driver, bytes, ref_count, labels}}
    """

    def __init__(self, images=(), containers=(), build_cache=(), volumes=()):
        self.images = dict((image['id'], image) for image in images)
        self.containers = dict((container['id'], container) for container in containers)
        self.build_cache = list(build_cache)
        self.volumes = dict((volume['name'], volume) for volume in volumes)
        self._layer_users = {}
        for image in self.images.values():
            for chain, _size in image['layers']:
                self._layer_users.setdefault(chain, set()).add(image['id'])

    def images_in_use(self):
        """{image id: [container names]} for every container left, running or not."""
        used = {}
        for container in self.containers.values():
            used.setdefault(container['image_id'], []).append(container['name'])
        return used

    def image_bytes(self, image_id):
        """Bytes removing this image would free now: its layers no other image uses."""
        return sum(size for chain, size in self.images[image_id]['layers']
                   if self._layer_users.get(chain) == {image_id})

    def build_cache_bytes(self):
        return sum(entry['bytes'] for entry in self.build_cache if not entry['in_use'] and not entry['shared'])

    def forget(self, candidate):
        """Take a candidate out of the model; return the bytes its removal frees (an estimate)."""
        kind, key = candidate['kind'], candidate['id']
        if kind == 'container':
            return self.containers.pop(key)['bytes']
        if kind == 'image':
            freed = self.image_bytes(key)
            for chain, _size in self.images.pop(key)['layers']:
                users = self._layer_users.get(chain, set())
                users.discard(key)
                if not users:
                    self._layer_users.pop(chain, None)
            return freed
        if kind == 'build_cache':
            freed = self.build_cache_bytes()
            self.build_cache = [entry for entry in self.build_cache if entry['in_use']]
            return freed
        if kind == 'volume':
            return max(self.volumes.pop(key)['bytes'], 0)
        if kind == 'log':
            log = self.containers[key]['log']
            freed = current_log_bytes(log)
            log['bytes'], log['current_bytes'] = log['bytes'] - freed, 0
            return freed
        raise ValueError('unknown reclaim candidate kind %r' % kind)


def _image_candidate(image):
    refs = list(image['tags']) + list(image['digests'])
    return dict(kind='image', id=image['id'], name=refs[0] if refs else image['id'][:19], refs=refs)


def oversized_logs(inventory, log_max_bytes):
    """The json-file logs of live (not stopped) containers holding more than `log_max_bytes`, largest first."""
    found = []
    for container in inventory.containers.values():
        log = container.get('log')
        if (container['state'] not in STOPPED_CONTAINER_STATES and log and log['driver'] == JSON_FILE_DRIVER
                and log['path'] and current_log_bytes(log) > log_max_bytes):
            found.append(container)
    return sorted(found, key=lambda c: (-current_log_bytes(c['log']), c['name']))


def current_log_bytes(log):
    """The bytes of a log's current file: what emptying it frees (its rotated files stay)."""
    return log.get('current_bytes', log['bytes'])


def reclaim_candidates(stage, inventory, protection, log_max_bytes=None):
    """What `stage` may remove from `inventory`, oldest first (logs: largest first).

    Never an image a remaining container uses (running or not) and never an image any
    protecting ref names: an image with several tags or digests goes only when none of them
    is protected. Volumes: unused ones only, never one of a protected compose project.
    Logs: the json-file log of a live container above `log_max_bytes`, truncated, never deleted.
    """
    if stage == 'containers':
        # A stopped container of a managed compose project (one with a release ledger) is kept: compose carries its
        # anonymous volumes over to the container that replaces it, and a rollback may start it again.
        stopped = [c for c in inventory.containers.values() if c['state'] in STOPPED_CONTAINER_STATES
                   and (c.get('labels') or {}).get(PROJECT_LABEL) not in protection.projects]
        return [dict(kind='container', id=c['id'], name=c['name'], refs=[])
                for c in sorted(stopped, key=lambda c: (c['created'], c['id']))]
    if stage in ('dangling_images', 'unused_images'):
        in_use = inventory.images_in_use()
        images = [image for image in inventory.images.values()
                  if image['id'] not in in_use and not protection.protecting(image)
                  and (stage == 'unused_images' or not (image['tags'] or image['digests']))]
        return [_image_candidate(image) for image in sorted(images, key=lambda i: (i['created'], i['id']))]
    if stage == 'build_cache':
        records = [entry['id'] for entry in inventory.build_cache if not entry['in_use']]
        if not records:
            return []
        return [dict(kind='build_cache', id='build cache', name='%d unused build cache record(s)' % len(records),
                     refs=records)]
    if stage == 'volumes':
        volumes = [v for v in inventory.volumes.values()
                   if v['ref_count'] == 0 and v['driver'] == 'local'
                   and (v['labels'] or {}).get(PROJECT_LABEL) not in protection.projects]
        return [dict(kind='volume', id=v['name'], name=v['name'], refs=[]) for v in sorted(volumes, key=lambda v: v['name'])]
    if stage == 'logs':
        if log_max_bytes is None:
            return []
        return [dict(kind='log', id=c['id'], name=c['name'], refs=[c['log']['path']])
                for c in oversized_logs(inventory, log_max_bytes)]
    raise ValueError('unknown reclaim stage %r' % stage)


class Reclaimer:
    """Run reclaim stages in order until usage is at or below `target_percent` and at least
    `min_free_bytes` are free.

    read_inventory() returns a fresh EngineInventory; measure() the current disk usage;
    remove(candidate) removes one candidate from the engine and returns None, or the reason
    the engine kept it. Without `remove` (check mode) the plan runs on the model alone and
    usage is estimated. `stages` (the result) grows as the run goes, so a caller that fails
    half way can still report what was already removed.
    """

    def __init__(self, read_inventory, protection, target_percent, measure=None, remove=None, min_free_bytes=0,
                 log_max_bytes=None):
        self.read_inventory = read_inventory
        self.log_max_bytes = log_max_bytes
        self.protection = protection
        self.target_percent = target_percent
        self.min_free_bytes = min_free_bytes
        self.measure = measure
        self.remove = remove
        self.stages = []
        self.estimated_bytes = 0

    def reached(self, usage):
        return usage['percent'] <= self.target_percent and usage['free'] >= self.min_free_bytes

    def run(self, stages, usage, inventory=None):
        """Return the usage at the end (measured, or estimated in check mode)."""
        simulate = self.remove is None
        fresh = inventory
        for stage in [name for name in RECLAIM_STAGES if name in stages]:
            if self.reached(usage):
                break
            # A real run reads the engine again before each stage: what the previous stage
            # removed (a stopped container) changes what this one may remove (its image).
            if simulate:
                inventory = fresh if fresh is not None else (inventory or self.read_inventory())
            else:
                inventory = fresh if fresh is not None else self.read_inventory()
            fresh = None
            result = dict(name=stage, removed=[], skipped=[], bytes=0, estimated_bytes=0)
            self.stages.append(result)
            used_at_start = usage['used']
            for candidate in reclaim_candidates(stage, inventory, self.protection, self.log_max_bytes):
                if self.reached(usage):
                    break
                estimate = inventory.forget(candidate)
                item = dict(kind=candidate['kind'], id=candidate['id'], name=candidate['name'],
                            refs=candidate['refs'], estimated_bytes=estimate, bytes=0)
                if simulate:
                    usage = usage_after_freeing(usage, estimate)
                else:
                    reason = self.remove(candidate)
                    if reason:
                        item['reason'] = reason
                        result['skipped'].append(item)
                        continue
                    after = self.measure()
                    item['bytes'] = usage['used'] - after['used']
                    usage = after
                result['removed'].append(item)
                result['estimated_bytes'] += estimate
                self.estimated_bytes += estimate
            if not simulate:
                result['bytes'] = used_at_start - usage['used']
        return usage


# --- where the bytes are

TOP_LOGS = 20


def disk_accounting(inventory, protection, usage, log_max_bytes=None):
    """Where the bytes of the engine's disk are, each byte counted once, against the filesystem's usage.

    images: every layer once, as in_use (a container uses an image holding it), else protected (an image a
    protecting ref names holds it: the way back), else reclaimable. containers: writable layers, running and
    stopped (stopped ones of managed projects kept). logs: every container's log files, largest first.
    """
    in_use = set(inventory.images_in_use())
    protected = set(image_id for image_id, image in inventory.images.items()
                    if image_id not in in_use and protection.protecting(image))
    layer_class = {}
    for image_id, image in inventory.images.items():
        rank = 0 if image_id in in_use else 1 if image_id in protected else 2
        for chain, size in image['layers']:
            known = layer_class.get(chain)
            if known is None or rank < known[0]:
                layer_class[chain] = (rank, size)
    image_bytes = [0, 0, 0]
    for rank, size in layer_class.values():
        image_bytes[rank] += size
    images = dict(count=len(inventory.images), bytes=sum(image_bytes), in_use_bytes=image_bytes[0],
                  protected_bytes=image_bytes[1], reclaimable_bytes=image_bytes[2],
                  in_use=len(in_use & set(inventory.images)), protected=len(protected),
                  reclaimable=len(inventory.images) - len(in_use & set(inventory.images)) - len(protected))

    running = [c for c in inventory.containers.values() if c['state'] not in STOPPED_CONTAINER_STATES]
    stopped = [c for c in inventory.containers.values() if c['state'] in STOPPED_CONTAINER_STATES]
    kept = [c for c in stopped if (c.get('labels') or {}).get(PROJECT_LABEL) in protection.projects]
    containers = dict(running=len(running), running_bytes=sum(c.get('rw_bytes', c['bytes']) for c in running),
                      stopped=len(stopped), stopped_bytes=sum(c.get('rw_bytes', c['bytes']) for c in stopped),
                      stopped_kept=len(kept), stopped_kept_bytes=sum(c.get('rw_bytes', c['bytes']) for c in kept))

    volume_list = list(inventory.volumes.values())
    dangling = [v for v in volume_list if v['ref_count'] == 0]
    volumes = dict(count=len(volume_list), in_use=len(volume_list) - len(dangling),
                   in_use_bytes=sum(max(v['bytes'], 0) for v in volume_list if v['ref_count'] != 0),
                   dangling=len(dangling), dangling_bytes=sum(max(v['bytes'], 0) for v in dangling))

    build_cache = dict(records=len(inventory.build_cache), bytes=sum(e['bytes'] for e in inventory.build_cache),
                       reclaimable_bytes=inventory.build_cache_bytes())

    entries = []
    for container in inventory.containers.values():
        log = container.get('log')
        if not log:
            continue
        labels = container.get('labels') or {}
        entries.append(dict(container=container['name'], id=container['id'], state=container['state'],
                            project=labels.get(PROJECT_LABEL, ''), service=labels.get(SERVICE_LABEL_KEY, ''),
                            driver=log['driver'], bounded=log['bounded'], bytes=log['bytes'],
                            current_bytes=current_log_bytes(log), path=log['path']))
    entries.sort(key=lambda entry: (-entry['bytes'], entry['container']))
    over = ([e for e in entries if e['state'] not in STOPPED_CONTAINER_STATES and e['driver'] == JSON_FILE_DRIVER
             and e['current_bytes'] > log_max_bytes] if log_max_bytes is not None else [])
    logs = dict(bytes=sum(e['bytes'] for e in entries), containers=len(entries),
                unbounded=sorted(e['container'] for e in entries if not e['bounded']),
                truncatable_bytes=sum(e['current_bytes'] for e in over), largest=entries[:TOP_LOGS])

    accounted = (images['bytes'] + containers['running_bytes'] + containers['stopped_bytes'] + volumes['in_use_bytes']
                 + volumes['dangling_bytes'] + build_cache['bytes'] + logs['bytes'])
    filesystem = dict(path=usage['path'], total=usage['total'], used=usage['used'], free=usage['free'],
                      percent=usage['percent'], docker_bytes=accounted, other_bytes=max(usage['used'] - accounted, 0))
    return dict(filesystem=filesystem, images=images, build_cache=build_cache, containers=containers,
                volumes=volumes, logs=logs)


# --- what a pull would download

def layers_to_pull(diff_ids, layers, held_chains):
    """The layers (compressed digest, size) of an image that a pull must download, base first.

    `diff_ids` are the image's uncompressed layer digests (its config's rootfs.diff_ids), `layers`
    the manifest's (compressed digest, size) in the same order, `held_chains` the chain ids of the
    layers the engine holds. The engine skips a layer whose chain id it holds: the same content on
    another parent is another layer. Each entry is keyed by the chain id it would create, so layers
    shared by several images of a release can be counted once. Without usable diff ids (None, or not
    one per layer) every layer is counted, keyed by its compressed digest.
    """
    if not diff_ids or len(diff_ids) != len(layers):
        return list(layers)
    return [(chain, size) for chain, (_digest, size) in zip(chain_ids(diff_ids), layers) if chain not in held_chains]


def read_held_digests(client):
    """The ids and repository digests of the engine's images (one call): an image whose manifest or config
    digest is among them is already here, and a pull of it downloads nothing."""
    held = set()
    for entry in client.api.images():
        held.add(entry.get('Id'))
        for repo_digest in _clean_refs(entry.get('RepoDigests')):
            held.add(repo_digest.rpartition('@')[2])
    held.discard(None)
    return held


# The chain ids of the images a host's engines held at the last look, by image id.
DEFAULT_CHAIN_CACHE = '~/.cache/safedeploy/image-chains.json'


def read_held_chains(client, cache_path=None):
    """The chain ids of every layer of the engine's images (one inspect an image the cache does not know).

    An image id names the image's content, so the layers it was inspected for once never change: with
    `cache_path`, the chain ids of each image seen before are read from that file (mode 0600), and only new
    images are inspected. The file then keeps exactly the images of this look (those of another engine go,
    and are inspected again there). An unreadable or malformed cache only means inspecting again."""
    cache = _read_chain_cache(cache_path)
    seen = {}
    for entry in client.api.images():
        image_id = entry.get('Id')
        chains = cache.get(image_id)
        if chains is None:
            try:
                diff_ids = (client.api.inspect_image(image_id).get('RootFS') or {}).get('Layers') or []
            except NotFound:
                continue  # removed while we looked
            chains = chain_ids(diff_ids)
        seen[image_id] = chains
    if cache_path and seen != cache:
        _write_chain_cache(cache_path, seen)
    return set(chain for chains in seen.values() for chain in chains)


def _read_chain_cache(cache_path):
    if not cache_path:
        return {}
    try:
        with open(os.path.expanduser(cache_path)) as handle:
            data = json.load(handle)
    except (IOError, OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return dict((image_id, chains) for image_id, chains in data.items()
                if isinstance(chains, list) and all(isinstance(chain, str) for chain in chains))


def _write_chain_cache(cache_path, chains):
    """Best effort: an unwritable cache only means inspecting the images again next time."""
    path = os.path.expanduser(cache_path)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_file_atomic(path, json.dumps(chains, sort_keys=True).encode('utf-8'), 0o600)
    except (IOError, OSError):
        pass


# --- reading the engine and removing from it

def _read_image_layers(client, image_id, fallback_bytes):
    try:
        diff_ids = (client.api.inspect_image(image_id).get('RootFS') or {}).get('Layers') or []
        sizes = layer_sizes(diff_ids, client.api.history(image_id))
        return list(zip(chain_ids(diff_ids), sizes))
    except NotFound:
        return None
    except EngineAPIError as exc:
        if is_no_space_error(exc):
            raise
        # Without layer details the image's own bytes stand for it as one unshared layer.
        return [('image:' + image_id, max(fallback_bytes, 0))]


DF_BUSY_WAIT_SECONDS = 60


def _system_df(client, wait=DF_BUSY_WAIT_SECONDS):
    """/system/df. Docker 20.10 answers a second caller with 500 "a disk usage operation is already running"
    (two rollouts on one engine at once): wait for the first one to finish instead of failing."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return client.api.df()
        except EngineAPIError as exc:
            if 'disk usage operation is already running' not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def read_engine_inventory(client, layer_cache=None, sizes=True):
    """An EngineInventory of the engine's images, containers, build cache and volumes (/system/df).

    `layer_cache` ({image id: layers}) spares re-reading layers of images already seen:
    an image's layers never change. `sizes=False` reads only /system/df: no image layers (two engine
    calls an image) and no log sizes of stopped containers, for a caller that only asks what is there and
    what uses it (what is protected), not what removing it would free.
    """
    layer_cache = {} if layer_cache is None else layer_cache
    usage = _system_df(client)
    images = []
    for entry in usage.get('Images') or []:
        image_id = entry['Id']
        layers = []
        if sizes:
            if image_id not in layer_cache:
                own = int(entry.get('Size') or 0) - max(int(entry.get('SharedSize') or 0), 0)
                layer_cache[image_id] = _read_image_layers(client, image_id, own)
            layers = layer_cache[image_id]
            if layers is None:
                continue  # removed while we looked
        images.append(dict(id=image_id, tags=_clean_refs(entry.get('RepoTags')), digests=_clean_refs(entry.get('RepoDigests')),
                           created=int(entry.get('Created') or 0), size=int(entry.get('Size') or 0),
                           layers=layers))
    containers = []
    for entry in usage.get('Containers') or []:
        state = entry.get('State') or ''
        names = [name.lstrip('/') for name in entry.get('Names') or []]
        rw_bytes = max(int(entry.get('SizeRw') or 0), 0)
        log = _container_log(client, entry['Id']) if sizes else None
        size = rw_bytes + (log['bytes'] if log and state in STOPPED_CONTAINER_STATES else 0)
        containers.append(dict(id=entry['Id'], name=names[0] if names else entry['Id'][:12], state=state,
                               image_id=entry.get('ImageID') or '', created=int(entry.get('Created') or 0), bytes=size,
                               rw_bytes=rw_bytes, labels=entry.get('Labels') or {}, log=log))
    build_cache = [dict(id=entry.get('ID') or '', type=entry.get('Type') or '', bytes=int(entry.get('Size') or 0),
                        in_use=bool(entry.get('InUse')), shared=bool(entry.get('Shared')))
                   for entry in usage.get('BuildCache') or []]
    volumes = [dict(name=entry['Name'], driver=entry.get('Driver') or 'local', labels=entry.get('Labels') or {},
                    bytes=int((entry.get('UsageData') or {}).get('Size', -1)),
                    ref_count=int((entry.get('UsageData') or {}).get('RefCount', -1)))
               for entry in usage.get('Volumes') or []]
    return EngineInventory(images, containers, build_cache, volumes)


def file_disk_bytes(path):
    """The space a file takes on disk (its allocated blocks), 0 when this host cannot see it."""
    try:
        return os.lstat(path).st_blocks * 512
    except OSError:
        return 0


def _container_log(client, container_id):
    """A container's log as the reclaim sees it: {path, bytes, driver, bounded}.

    bytes is the space its files take on disk (the current file and the rotated ones, `<path>.1`...,
    when this host can see them: 0 when the engine runs elsewhere); bounded says that the engine
    caps it (json-file with max-size, or a driver keeping no file here: local caps itself, others
    ship the lines away). The engine merges daemon.json's log-opts into each container's LogConfig.
    """
    try:
        details = client.api.inspect_container(container_id)
    except NotFound:
        return None
    except EngineAPIError as exc:
        if is_no_space_error(exc):
            raise
        return None
    log_config = (details.get('HostConfig') or {}).get('LogConfig') or {}
    driver = log_config.get('Type') or ''
    path = details.get('LogPath') or ''
    total = current = 0
    if path:
        total = current = file_disk_bytes(path)
        directory, base = os.path.split(path)
        try:
            rotated = [name for name in os.listdir(directory) if re.match(re.escape(base) + r'\.[0-9]+(\.gz)?\Z', name)]
        except OSError:
            rotated = []
        total += sum(file_disk_bytes(os.path.join(directory, name)) for name in rotated)
    bounded = not log_config_unbounded(log_config)
    return dict(path=path, bytes=total, current_bytes=current, driver=driver, bounded=bounded)


def truncate_log(path):
    """Empty a container's log file in place (the engine keeps writing to it; it appends)."""
    descriptor = os.open(path, os.O_WRONLY | getattr(os, 'O_NOFOLLOW', 0))
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(errno.EINVAL, 'not a regular file', path)
        os.ftruncate(descriptor, 0)
    finally:
        os.close(descriptor)


def _remove_image(client, candidate):
    refs = candidate['refs']
    repositories = set(split_tag(ref.partition('@')[0])[0] for ref in refs)
    if len(repositories) > 1:
        # The engine deletes an image named in several repositories by id only with force
        # (which would also strip it from stopped containers); untagging each name lets the
        # last removal delete it, and the engine still refuses if a container appeared meanwhile.
        for ref in refs:
            client.api.remove_image(ref, force=False, noprune=False)
    else:
        client.api.remove_image(candidate['id'], force=False, noprune=False)
    try:
        left = client.api.inspect_image(candidate['id'])
    except NotFound:
        return None
    return 'the engine kept it (still named %s)' % ', '.join(_clean_refs(left.get('RepoTags')) + _clean_refs(left.get('RepoDigests'))
                                                             or [candidate['id']])


def _truncate_candidate_log(candidate):
    path = candidate['refs'][0]
    if os.path.basename(path) != '%s-json.log' % candidate['id']:
        # The engine names a json-file log after its container; anything else is not one to empty.
        return 'its log path %s is not <id>-json.log of the container: left alone' % path
    try:
        truncate_log(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return 'its log file %s is not on this host (the engine runs elsewhere, or the container is gone)' % path
        return 'cannot truncate its log file %s: %s' % (path, exc.strerror or exc)
    return None


def remove_reclaim_candidate(client, candidate):
    """Remove one candidate from the engine: None when done, else why the engine kept it.

    The engine's own refusals (409: in use, has dependent child images, a container started
    meanwhile; 404: already gone) become reasons; ENOSPC and failures to reach the engine raise.
    """
    kind = candidate['kind']
    try:
        if kind == 'container':
            client.api.remove_container(candidate['id'], v=False, force=False)
        elif kind == 'image':
            return _remove_image(client, candidate)
        elif kind == 'build_cache':
            client.api.prune_builds(all=True)
        elif kind == 'volume':
            client.api.remove_volume(candidate['id'], force=False)
        elif kind == 'log':
            return _truncate_candidate_log(candidate)
        else:
            raise ValueError('unknown reclaim candidate kind %r' % kind)
    except NotFound:
        return 'already gone (removed by someone else meanwhile)'
    except EngineAPIError as exc:
        if is_no_space_error(exc):
            raise
        return 'the engine refused: %s' % (exc.explanation or exc)
    return None
