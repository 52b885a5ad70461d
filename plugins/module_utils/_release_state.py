# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private module_utils of safedeploy.compose: the release ledger kept on the host,
# <state_dir>/<project>/releases.json. Not a public API; it may change in any release.
#
# The ledger is the host's memory of what it ran: which release is current, which one was
# last healthy (the way back), and the digest of every image of each release. Losing or
# silently resetting it would turn the next rollback into a manual hunt, so:
#   - every read-modify-write holds an flock on <project>/.releases.lock (bounded wait, the
#     holder's pid/host/since written into the lock file so a waiter can name it);
#   - writes are atomic (_atomic_file) and the previous good write is kept as releases.json.bak;
#   - the file carries a monotonic serial and a checksum, so a torn or hand-edited file is
#     detected and reported, and the backup is used only when the caller asks for it.

from __future__ import annotations

import contextlib
import copy
import datetime
import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import stat
import time

from ansible_collections.safedeploy.compose.plugins.module_utils._atomic_file import (
    remove_stale_temp_files,
    write_file_atomic,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._image_ref import ImageRef, ImageRefError, pinned

# Documented once in plugins/doc_fragments/_state.py.
STATE_ARGUMENT_SPEC = dict(
    project=dict(type='str', required=True),
    state_dir=dict(type='path', default='/var/lib/safedeploy'),
)

LEDGER_FORMAT = 1
LEDGER_NAME = 'releases.json'
BACKUP_SUFFIX = '.bak'
DAMAGED_SUFFIX = '.damaged-'
LEDGER_FLOCK_NAME = '.releases.lock'
DIR_MODE = 0o700
FILE_MODE = 0o600

STATUSES = ('candidate', 'good', 'failed', 'rolled_back', 'superseded')
FAILED_STATUSES = ('failed', 'rolled_back')
# Releases that were healthy in production at some point: the candidates for a rollback.
ONCE_GOOD_STATUSES = ('good', 'superseded')
DEFAULT_HISTORY_LIMIT = 20
# Failed attempts to redeploy a release that was good, kept on its record for the post-mortem.
FAILED_ATTEMPTS_KEPT = 5

# A release's snapshot: the files that make its configuration, kept by content under <project>/files/<sha256>.
SNAPSHOT_DIR_NAME = 'files'
SNAPSHOT_MAX_FILE_BYTES = 8 * 1024 * 1024
SHA256_HEX_RE = re.compile(r'[0-9a-f]{64}\Z')

# A ledger update takes milliseconds; waiting longer than this means the holder is stuck.
FLOCK_TIMEOUT = 30.0
FLOCK_POLL_INTERVAL = 0.05

# Compose project names (lower case is what Compose itself produces; upper case is accepted).
PROJECT_NAME_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9_-]{0,127}\Z')
# A release id is the image tag to roll back to, so it follows the Docker tag grammar.
RELEASE_ID_RE = re.compile(r'[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z')
# OCI digest grammar: algorithm ":" encoded.
DIGEST_RE = re.compile(r'[a-z0-9]+(?:[+._-][a-z0-9]+)*:[A-Za-z0-9=_-]+\Z')


class ReleaseStateError(Exception):
    """The ledger cannot be used as asked; the message names the file and what to do next."""


class LedgerCorruptError(ReleaseStateError):
    """The ledger file exists but is truncated, not JSON, or fails its checksum."""


class FlockTimeout(ReleaseStateError):
    """Another process held the ledger's flock for longer than the bounded wait."""


def utc_now():
    """Timestamps with microseconds: two promotes in one second must still order."""
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')


def validate_project(project):
    if not isinstance(project, str) or not PROJECT_NAME_RE.match(project):
        raise ReleaseStateError(
            'invalid project name %r: use letters, digits, "_" and "-", starting with a letter or digit '
            '(at most 128 characters), as Compose does' % (project,))


def validate_release_id(release_id):
    if not isinstance(release_id, str) or not RELEASE_ID_RE.match(release_id):
        raise ReleaseStateError(
            'invalid release id %r: a release id is the image tag to roll back to, so it must be a valid '
            'Docker tag (letters, digits, "_", "." and "-", not starting with "." or "-", at most 128 characters)'
            % (release_id,))


def project_dir(state_dir, project):
    validate_project(project)
    return os.path.join(state_dir, project)


def ledger_path(state_dir, project):
    return os.path.join(project_dir(state_dir, project), LEDGER_NAME)


def ensure_project_dir(state_dir, project):
    """Create <state_dir>/<project> with mode 0700, and state_dir itself (0700) when missing."""
    directory = project_dir(state_dir, project)
    if not os.path.isdir(state_dir):
        # An existing state_dir belongs to its administrator: only a new one gets our mode.
        os.makedirs(state_dir, DIR_MODE, exist_ok=True)
        os.chmod(state_dir, DIR_MODE)
    try:
        os.mkdir(directory, DIR_MODE)
    except FileExistsError:
        pass
    if os.stat(directory).st_mode & 0o7777 != DIR_MODE:
        os.chmod(directory, DIR_MODE)
    return directory


def _set_fd_mode(fd, mode):
    if os.fstat(fd).st_mode & 0o7777 != mode:
        os.fchmod(fd, mode)


# --- the flock that serializes read-modify-write of one project's ledger -----------------

def _describe_flock_holder(fd):
    try:
        note = json.loads(os.pread(fd, 4096, 0).decode('utf-8'))
        age = max(0, int(time.time() - float(note['since_epoch'])))
        return 'pid %s on host %s since %s (%ss ago)' % (note['pid'], note['host'], note['since'], age)
    except (ValueError, KeyError, TypeError, OSError):
        return 'a process that has not yet written its name into the lock file'


def wait_for_flock(fd, operation, timeout, poll_interval, timed_out):
    """flock(fd, operation) (LOCK_EX or LOCK_SH), polling for at most `timeout` seconds; raises timed_out() then."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            raise timed_out()
        time.sleep(poll_interval)


@contextlib.contextmanager
def exclusive_flock(lock_path, subject, timeout=FLOCK_TIMEOUT, poll_interval=FLOCK_POLL_INTERVAL):
    """Hold an exclusive flock on `lock_path`, waiting at most `timeout` seconds.

    The descriptor is close-on-exec, so a child process (docker, compose) never inherits the
    lock and keeps it after this process is done. The lock dies with this process, so a crash
    never leaves it stuck.
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    try:
        wait_for_flock(fd, fcntl.LOCK_EX, timeout, poll_interval, lambda: FlockTimeout(
            '%s is locked by %s (lock file %s); gave up after waiting %ss. Another task is changing it: '
            'retry when it is done, or stop that process if it hangs (the lock is freed when it exits).'
            % (subject, _describe_flock_holder(fd), lock_path, timeout)))
        _set_fd_mode(fd, FILE_MODE)
        note = dict(pid=os.getpid(), host=socket.gethostname(), since=utc_now(), since_epoch=time.time())
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(note).encode('utf-8'), 0)
        except OSError as exc:
            # The note only names the holder to a waiter: on a full disk the lock holds without it, so that
            # releasing a lock or reading state still works there.
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # the holder note must not outlive the hold
    finally:
        os.close(fd)


# --- the file: canonical form, checksum, parsing -----------------------------------------

def _canonical_bytes(ledger):
    content = dict((key, value) for key, value in ledger.items() if key != 'checksum')
    return json.dumps(content, sort_keys=True, separators=(',', ':'), ensure_ascii=False).encode('utf-8')


def ledger_checksum(ledger):
    return 'sha256:' + hashlib.sha256(_canonical_bytes(ledger)).hexdigest()


def empty_ledger(project):
    return dict(format=LEDGER_FORMAT, project=project, serial=0, current=None, releases=[])


def serialize_ledger(ledger):
    """The bytes written to disk: readable JSON, keys in a stable order, checksum included."""
    ordered = dict(format=ledger['format'], project=ledger['project'], serial=ledger['serial'])
    ordered['checksum'] = ledger_checksum(ledger)
    ordered['current'] = ledger['current']
    ordered['releases'] = ledger['releases']
    return (json.dumps(ordered, indent=2, ensure_ascii=False) + '\n').encode('utf-8')


def _check_structure(ledger, project):
    if ledger.get('project') != project:
        return 'it belongs to project %r, not %r' % (ledger.get('project'), project)
    serial = ledger.get('serial')
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
        return 'its serial is not a non-negative integer'
    releases = ledger.get('releases')
    if not isinstance(releases, list):
        return 'its releases are not a list'
    ids = set()
    for record in releases:
        if not isinstance(record, dict) or not isinstance(record.get('id'), str):
            return 'a release record has no id'
        if record.get('status') not in STATUSES:
            return 'release %s has an unknown status %r' % (record['id'], record.get('status'))
        if not isinstance(record.get('services'), dict):
            return 'release %s has no services map' % record['id']
        if record['id'] in ids:
            return 'release %s appears twice' % record['id']
        ids.add(record['id'])
    if ledger.get('current') is not None and ledger['current'] not in ids:
        return 'its current release %r is not among its releases' % (ledger['current'],)
    return None


def parse_ledger(data, path, project):
    """Return the ledger held in `data` (bytes read from `path`) or raise LedgerCorruptError."""
    try:
        ledger = json.loads(data.decode('utf-8'))
    except (UnicodeDecodeError, ValueError) as exc:
        cause = 'empty' if not data.strip() else 'not valid JSON, probably truncated or damaged (%s)' % exc
        raise LedgerCorruptError(cause)
    if not isinstance(ledger, dict):
        raise LedgerCorruptError('not a JSON object')
    if ledger.get('format') != LEDGER_FORMAT:
        if isinstance(ledger.get('format'), int) and ledger['format'] > LEDGER_FORMAT:
            raise ReleaseStateError(
                'release ledger %s has format %s, newer than this collection understands (%s): upgrade '
                'safedeploy.compose on the controller' % (path, ledger['format'], LEDGER_FORMAT))
        raise LedgerCorruptError('unknown format %r' % (ledger.get('format'),))
    if ledger.get('checksum') != ledger_checksum(ledger):
        raise LedgerCorruptError('its checksum does not match its content (edited by hand or damaged on disk)')
    problem = _check_structure(ledger, project)
    if problem:
        raise LedgerCorruptError(problem)
    return ledger


class LoadedLedger:
    """What read_ledger found: the ledger to work on and how it was obtained."""

    def __init__(self, ledger, raw=None, recovered=False, damaged_raw=None, damaged_cause=None):
        self.ledger = ledger
        self.raw = raw                      # the valid bytes the ledger came from (None: no file yet)
        self.recovered = recovered          # True: main file damaged or missing, taken from the backup
        self.damaged_raw = damaged_raw      # the damaged main file's bytes, kept for inspection
        self.damaged_cause = damaged_cause


def _read_bytes(path):
    try:
        with open(path, 'rb') as handle:
            return handle.read()
    except (IOError, OSError) as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


def _damaged_serial(raw):
    """The serial a damaged file still shows, so the serial keeps growing after a recovery."""
    match = re.search(br'"serial"\s*:\s*(\d+)', raw or b'')
    return int(match.group(1)) if match else 0


def read_ledger(state_dir, project, recover_from_backup=False):
    path = ledger_path(state_dir, project)
    backup = path + BACKUP_SUFFIX
    raw = _read_bytes(path)
    if raw is not None:
        try:
            return LoadedLedger(parse_ledger(raw, path, project), raw=raw)
        except LedgerCorruptError as exc:
            cause = str(exc)
        if not recover_from_backup:
            raise LedgerCorruptError(
                'release ledger %s is unreadable: %s. Nothing was changed. Rerun with recover_from_backup: true '
                'to restore the previous good write (%s); the damaged file is then kept as %s<time> for inspection.'
                % (path, cause, backup, os.path.basename(path) + DAMAGED_SUFFIX))
    else:
        cause = 'missing'
        if not os.path.exists(backup):
            return LoadedLedger(empty_ledger(project))
        if not recover_from_backup:
            raise LedgerCorruptError(
                'release ledger %s is missing but its backup %s exists, so the ledger was removed by hand or lost. '
                'Nothing was changed. Rerun with recover_from_backup: true to restore it from the backup.'
                % (path, backup))
    backup_raw = _read_bytes(backup)
    if backup_raw is None:
        raise LedgerCorruptError(
            'release ledger %s is unreadable (%s) and there is no backup %s to recover from. Inspect the file and '
            'repair it by hand, or move it away to start a new ledger (this forgets the last good release).'
            % (path, cause, backup))
    try:
        ledger = parse_ledger(backup_raw, backup, project)
    except LedgerCorruptError as exc:
        raise LedgerCorruptError(
            'release ledger %s is unreadable (%s) and so is its backup %s (%s). Inspect both and repair one by hand, '
            'or move them away to start a new ledger (this forgets the last good release).'
            % (path, cause, backup, exc))
    # The damaged file most likely held the write after the backup: keep serials above it.
    ledger['serial'] = max(ledger['serial'] + 1, _damaged_serial(raw))
    return LoadedLedger(ledger, raw=backup_raw, recovered=True, damaged_raw=raw, damaged_cause=cause)


def write_ledger(state_dir, project, loaded, ledger):
    """Write `ledger` over the file `loaded` came from, keeping the previous good write as .bak."""
    path = ledger_path(state_dir, project)
    if loaded.recovered:
        # The backup already holds the good copy we started from; keep the damaged file as evidence.
        if loaded.damaged_raw is not None:
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%SZ')
            write_file_atomic(path + DAMAGED_SUFFIX + stamp, loaded.damaged_raw, FILE_MODE)
    elif loaded.raw is not None:
        write_file_atomic(path + BACKUP_SUFFIX, loaded.raw, FILE_MODE)
    write_file_atomic(path, serialize_ledger(ledger), FILE_MODE)


# --- queries on a ledger --------------------------------------------------------------------

def find_release(ledger, release_id):
    for record in ledger['releases']:
        if record['id'] == release_id:
            return record
    return None


def last_good(ledger):
    """The release that passed its gate last and was not failed since: the way back."""
    for record in ledger['releases']:
        if record['status'] == 'good':
            return record
    return None


def promotion_order(record):
    """Sort key of a promotion: the ledger serial it was written at, never the wall clock (a clock stepped
    back must not change the way back). Records written before serials were kept sort before the others,
    among themselves by their time."""
    serial = record.get('promoted_serial')
    if isinstance(serial, int) and not isinstance(serial, bool):
        return (1, serial, '')
    return (0, 0, record.get('promoted_at') or '')


def once_good_releases(ledger):
    """Releases that were good at some point, most recently promoted first."""
    indexed = [(promotion_order(record), index, record)
               for index, record in enumerate(ledger['releases']) if record['status'] in ONCE_GOOD_STATUSES]
    return [record for _order, _index, record in sorted(indexed, key=lambda item: item[:2], reverse=True)]


def previous_good(ledger):
    """The good-or-superseded release promoted most recently before the last good one."""
    good = last_good(ledger)
    for record in once_good_releases(ledger):
        if good is None or record['id'] != good['id']:
            return record
    return None


def status_summary(ledger):
    """What --diff shows: the current release and each release's status."""
    return dict(current=ledger['current'],
                releases=dict((record['id'], record['status']) for record in ledger['releases']))


# --- changes to a ledger (in memory) --------------------------------------------------------

def normalize_services(services, release_id):
    """{service: {image, digest}} with both as strings; other keys (compose_pin's `pinned`) dropped."""
    if not isinstance(services, dict) or not services:
        raise ReleaseStateError('release %s: services must be a non-empty map {service: {image, digest}}' % release_id)
    normalized = {}
    for name in sorted(services):
        entry = services[name]
        image = entry.get('image') if isinstance(entry, dict) else None
        digest = entry.get('digest') if isinstance(entry, dict) else None
        if not isinstance(image, str) or not image:
            raise ReleaseStateError('release %s: service %s has no image; give {image: ..., digest: ...} as '
                                    'returned by safedeploy.compose.compose_pin' % (release_id, name))
        if not isinstance(digest, str) or not DIGEST_RE.match(digest):
            raise ReleaseStateError('release %s: service %s has no valid digest (got %r); pin the release with '
                                    'safedeploy.compose.compose_pin first' % (release_id, name, digest))
        normalized[str(name)] = dict(image=image, digest=digest)
    return normalized


def record_release(ledger, release_id, services, compose_hash=None, source=None, snapshot=None, now=None):
    """Add `release_id` as a candidate with its `snapshot` (the files of its configuration).

    An id names one set of images for good: recording it again with other images fails. Recording
    again a release that was good (the current release redeployed, or an older one rolled forward to)
    never touches its standing nor the snapshot it was good with: the new configuration is kept as its
    pending `attempt`, which promote adopts and fail sets aside. A release that never was good takes
    the new configuration over."""
    validate_release_id(release_id)
    services = normalize_services(services, release_id)
    existing = find_release(ledger, release_id)
    now = now or utc_now()
    if existing is None:
        ledger['releases'].append(dict(
            id=release_id, status='candidate', created_at=now, updated_at=now, promoted_at=None,
            services=services, compose_hash=compose_hash, snapshot=snapshot, health=None,
            source=dict(source or {}), reason=None))
        return
    if existing['services'] != services:
        differing = sorted(name for name in set(existing['services']) | set(services)
                           if existing['services'].get(name) != services.get(name))
        raise ReleaseStateError(
            'release %s is already recorded with other images (services differing: %s); a release id is '
            'immutable: record this build under a new id' % (release_id, ', '.join(differing)))
    if existing['status'] in ONCE_GOOD_STATUSES:
        attempt = existing.get('attempt')
        if attempt and attempt.get('compose_hash') == compose_hash and attempt.get('snapshot') == snapshot:
            return
        existing['attempt'] = dict(compose_hash=compose_hash, snapshot=snapshot, recorded_at=now,
                                   source=dict(source or {}))
        existing['updated_at'] = now
        return
    if compose_hash is not None and compose_hash != existing.get('compose_hash'):
        existing.update(compose_hash=compose_hash, updated_at=now)
    if snapshot is not None and snapshot != existing.get('snapshot'):
        existing.update(snapshot=snapshot, updated_at=now)


def _require_release(ledger, release_id, action):
    validate_release_id(release_id)
    record = find_release(ledger, release_id)
    if record is None:
        raise ReleaseStateError(
            'cannot %s release %s of project %s: it is not in the ledger; record it first (action: record)'
            % (action, release_id, ledger['project']))
    return record


def promote_release(ledger, release_id, health=None, now=None):
    """Make a release good and current; the release that was good before becomes superseded.

    A pending attempt (a redeploy of a release that was good) is adopted, its configuration becoming
    the release's, unless the promotion is a rollback (`health.rollback`): a rollback restored the
    snapshot the release was good with, not the attempt."""
    record = _require_release(ledger, release_id, 'promote')
    adopt = bool(record.get('attempt')) and not (health or {}).get('rollback')
    if record['status'] == 'good' and ledger['current'] == release_id and not adopt:
        return  # promoting the running good release again changes nothing, its health included
    now = now or utc_now()
    for other in ledger['releases']:
        if other['status'] == 'good' and other['id'] != release_id:
            other.update(status='superseded', updated_at=now)
    if adopt:
        attempt = record['attempt']
        record.update(compose_hash=attempt.get('compose_hash'), snapshot=attempt.get('snapshot'), attempt=None,
                      revision=int(record.get('revision') or 1) + 1)
    record.update(status='good', promoted_at=now, promoted_serial=ledger['serial'] + 1, updated_at=now, reason=None)
    if health is not None:
        record['health'] = health
    ledger['current'] = release_id


def fail_release(ledger, release_id, reason, status='failed', now=None):
    """Mark a release failed (its gate failed) or rolled_back (it ran and was rolled back from).

    A release that was good and has a pending attempt keeps its standing: the attempt is what failed,
    and it is kept among the release's failed attempts."""
    if status not in FAILED_STATUSES:
        raise ReleaseStateError('invalid failure status %r: use one of %s' % (status, ', '.join(FAILED_STATUSES)))
    record = _require_release(ledger, release_id, 'fail')
    now = now or utc_now()
    if record.get('attempt') and record['status'] in ONCE_GOOD_STATUSES:
        attempt = dict(record['attempt'], status=status, reason=reason, failed_at=now)
        attempt.pop('snapshot', None)  # its files are not a way back: not kept
        record['failed_attempts'] = (list(record.get('failed_attempts') or []) + [attempt])[-FAILED_ATTEMPTS_KEPT:]
        record.update(attempt=None, updated_at=now)
        return
    if record['status'] != status or record.get('reason') != reason:
        record.update(status=status, reason=reason, updated_at=now)


def enforce_history_limit(ledger, history_limit, keep=()):
    """Evict releases beyond `history_limit`: first those that never were good (failed, rolled back,
    unfinished candidates), oldest first, then the oldest of those that were good. Never the current
    release, the last good one, the one before it (the way back) or `keep`."""
    if history_limit < 1:
        raise ReleaseStateError('history_limit must be at least 1, got %s' % history_limit)
    protected = set(keep)
    protected.add(ledger['current'])
    for record in (last_good(ledger), previous_good(ledger)):
        if record is not None:
            protected.add(record['id'])
    never_good = [record for record in ledger['releases'] if record['status'] not in ONCE_GOOD_STATUSES]
    once_good = list(reversed(once_good_releases(ledger)))  # oldest promotion first
    evicted = []
    for record in never_good + once_good:
        if len(ledger['releases']) <= history_limit:
            break
        if record['id'] not in protected:
            ledger['releases'].remove(record)
            evicted.append(record['id'])
    return evicted


# --- snapshots: the files of a release, kept by content --------------------------------------

def snapshot_dir(state_dir, project):
    return os.path.join(project_dir(state_dir, project), SNAPSHOT_DIR_NAME)


def _read_config_file(path):
    if not os.path.isabs(path):
        raise ReleaseStateError('snapshot file %s is not an absolute path: give the files as compose_pin returns '
                                'them (config_files)' % path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ReleaseStateError('snapshot file %s is not a regular file' % path)
        if info.st_size > SNAPSHOT_MAX_FILE_BYTES:
            raise ReleaseStateError('snapshot file %s is %d bytes, more than the %d a configuration file may have: '
                                    'leave data out of the release files' % (path, info.st_size, SNAPSHOT_MAX_FILE_BYTES))
        with open(path, 'rb') as handle:
            return handle.read(), stat.S_IMODE(info.st_mode)
    except (IOError, OSError) as exc:
        raise ReleaseStateError('cannot read %s for the release snapshot: %s' % (path, exc.strerror or exc))


def take_snapshot(state_dir, project, paths, check_mode=False):
    """Keep the bytes and mode of each file of `paths`; return the snapshot {files: [{path, sha256, mode}]}.

    File contents go to <project>/files/<sha256> (0600, atomic, shared by every release with the same
    bytes); the ledger keeps only the list. Env files hold secrets: they stay on the host, 0600."""
    files = []
    seen = set()
    store = snapshot_dir(state_dir, project)
    for path in paths:
        path = os.path.normpath(path) if isinstance(path, str) else path
        if path in seen:
            continue
        seen.add(path)
        data, mode = _read_config_file(path)
        digest = hashlib.sha256(data).hexdigest()
        files.append(dict(path=path, sha256=digest, mode=mode))
        if check_mode:
            continue
        blob = os.path.join(store, digest)
        if not os.path.isfile(blob):
            if not os.path.isdir(store):
                os.mkdir(store, DIR_MODE)
            write_file_atomic(blob, data, FILE_MODE)
    return dict(files=files)


def _referenced_blobs(ledger):
    names = set()
    for record in ledger['releases']:
        for snapshot in (record.get('snapshot'), (record.get('attempt') or {}).get('snapshot')):
            for entry in (snapshot or {}).get('files') or []:
                names.add(entry.get('sha256'))
    return names


def prune_snapshot_files(state_dir, project, ledger):
    """Remove the kept files no release of `ledger` refers to any more (evicted releases); return how many."""
    store = snapshot_dir(state_dir, project)
    try:
        names = os.listdir(store)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return 0
        raise
    keep = _referenced_blobs(ledger)
    removed = 0
    for name in names:
        if name in keep:
            continue
        if SHA256_HEX_RE.match(name) or name.startswith('.') and '.tmp-' in name:
            os.unlink(os.path.join(store, name))
            removed += 1
    return removed


def restore_snapshot(state_dir, project, record, only=None, check_mode=False):
    """Put the files of `record`'s snapshot back where they were, byte for byte and with their mode.

    Every kept file is read and checked against its sha256 before the first one is written, so a damaged
    store changes nothing. `only` restricts the restore to those paths. Returns the paths that changed
    (or would). A release recorded without a snapshot restores nothing (the caller says so)."""
    snapshot = record.get('snapshot') or {}
    wanted = None if only is None else set(os.path.normpath(path) for path in only)
    store = snapshot_dir(state_dir, project)
    plan = []
    for entry in snapshot.get('files') or []:
        path = entry.get('path')
        if wanted is not None and path not in wanted:
            continue
        digest = entry.get('sha256') or ''
        if not SHA256_HEX_RE.match(digest) or not isinstance(path, str) or not os.path.isabs(path):
            raise ReleaseStateError('the snapshot of release %s lists an invalid file entry (%r): the ledger was edited'
                                    % (record['id'], path))
        blob = os.path.join(store, digest)
        data = _read_bytes(blob)
        if data is None or hashlib.sha256(data).hexdigest() != digest:
            raise ReleaseStateError(
                'the kept copy of %s for release %s (%s) is %s: nothing was restored. Roll back to another release '
                '(rollback_to) or put the file back by hand' % (path, record['id'], blob,
                                                                'missing' if data is None else 'damaged'))
        mode = int(entry.get('mode') or 0o644) & 0o7777
        plan.append((path, data, mode))
    changed = []
    for path, data, mode in plan:
        try:
            current = _read_bytes(path)
            current_mode = stat.S_IMODE(os.stat(path).st_mode) if current is not None else None
        except (IOError, OSError):
            current, current_mode = None, None
        if current == data and current_mode == mode:
            continue
        changed.append(path)
        if check_mode:
            continue
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        write_file_atomic(path, data, mode)
    return changed


# --- one module call ------------------------------------------------------------------------

def _content_differs(before, after):
    strip = ('serial', 'checksum')
    return (dict((k, v) for k, v in before.items() if k not in strip)
            != dict((k, v) for k, v in after.items() if k not in strip))


def public_record(record):
    """A release record as modules return it: the snapshot lists its files' paths, not their hashes
    (a short env file's hash would let a secret be guessed)."""
    if record is None:
        return None
    record = copy.deepcopy(record)
    for service in (record.get('services') or {}).values():
        service['pinned'] = pinned_image(service)
    for holder in (record, record.get('attempt')):
        snapshot = (holder or {}).get('snapshot')
        if snapshot:
            holder['snapshot'] = dict(files=[entry.get('path') for entry in snapshot.get('files') or []])
    return record


def _release_or_none(ledger, release_id):
    return public_record(find_release(ledger, release_id) if release_id else None)


def _evaluate(loaded, action, release, services, compose_hash, source, health, reason, fail_status,
              history_limit, snapshot):
    before = loaded.ledger
    after = copy.deepcopy(before)
    after.pop('checksum', None)
    if action == 'record':
        record_release(after, release, services, compose_hash, source, snapshot)
    elif action == 'promote':
        promote_release(after, release, health)
    elif action == 'fail':
        fail_release(after, release, reason, fail_status)
    elif action not in ('query', 'restore'):
        raise ReleaseStateError('unknown action %r' % (action,))
    evicted = [] if action in ('query', 'restore') else enforce_history_limit(after, history_limit, keep=[release])
    changed = loaded.recovered or _content_differs(before, after)
    if changed:
        after['serial'] = before['serial'] + 1
    return after, changed, evicted


def _result(path, before, after, changed, evicted, warnings):
    return dict(
        changed=changed,
        ledger_file=path,
        serial=after['serial'],
        last_good=public_record(last_good(after)),
        previous_good=public_record(previous_good(after)),
        current=_release_or_none(after, after['current']),
        releases=[public_record(record) for record in after['releases']],
        evicted=evicted,
        restored=[],
        diff=dict(before=status_summary(before), after=status_summary(after)),
        warnings=warnings,
    )


def _restore(state_dir, project, ledger, release, only, check_mode):
    record = _require_release(ledger, release, 'restore')
    if not record.get('snapshot'):
        return [], ['release %s was recorded without a snapshot of its files (by a collection older than 0.3.0): '
                    'nothing was restored, its images go back onto the files in place' % release]
    return restore_snapshot(state_dir, project, record, only=only, check_mode=check_mode), []


def apply_ledger_action(state_dir, project, action='query', release=None, services=None, compose_hash=None,
                        source=None, health=None, reason=None, fail_status='failed',
                        history_limit=DEFAULT_HISTORY_LIMIT, recover_from_backup=False, check_mode=False,
                        flock_timeout=FLOCK_TIMEOUT, files=None, only=None):
    """Run one last_good_tag action; return the module result (with `warnings` to emit).

    Reading (query, restore, and any action in check mode) takes no lock and writes nothing in the
    state dir: the atomic rename means a reader always sees a whole ledger, and a full disk or a held
    lock must not stop a rollback from reading its way back. Only a query asked to recover_from_backup
    a damaged ledger writes, under the lock.
    """
    path = ledger_path(state_dir, project)
    if history_limit < 1:
        raise ReleaseStateError('history_limit must be at least 1, got %s' % history_limit)
    stale = []
    restored = []
    warnings = []
    try:
        read_only = check_mode or action == 'restore' or (action == 'query' and not recover_from_backup)
        if read_only or (action == 'query' and not os.path.isdir(os.path.dirname(path))):
            loaded = read_ledger(state_dir, project, recover_from_backup)
            snapshot = take_snapshot(state_dir, project, files, check_mode=True) if files is not None else None
            after, changed, evicted = _evaluate(loaded, action, release, services, compose_hash, source, health,
                                                reason, fail_status, history_limit, snapshot)
            if action == 'restore':
                restored, notes = _restore(state_dir, project, after, release, only, check_mode)
                warnings.extend(notes)
        else:
            ensure_project_dir(state_dir, project)
            flock_path = os.path.join(os.path.dirname(path), LEDGER_FLOCK_NAME)
            with exclusive_flock(flock_path, 'release ledger %s' % path, timeout=flock_timeout):
                stale = remove_stale_temp_files(path) + remove_stale_temp_files(path + BACKUP_SUFFIX)
                loaded = read_ledger(state_dir, project, recover_from_backup)
                snapshot = take_snapshot(state_dir, project, files) if files is not None else None
                after, changed, evicted = _evaluate(loaded, action, release, services, compose_hash, source, health,
                                                    reason, fail_status, history_limit, snapshot)
                if changed:
                    write_ledger(state_dir, project, loaded, after)
                    prune_snapshot_files(state_dir, project, after)
    except OSError as exc:
        raise ReleaseStateError(
            'cannot use release ledger %s: %s (%s). Check that state_dir is a local directory this user may write '
            '(become: true)' % (path, exc.strerror or exc, exc.filename or path))
    if stale:
        warnings.append('removed %d stale temporary file(s) left by an interrupted write of %s: %s'
                        % (len(stale), path, ', '.join(os.path.basename(name) for name in stale)))
    if loaded.recovered:
        written = not (check_mode or read_only)
        warnings.append('release ledger %s was %s; %s it from %s (serial %s)%s' % (
            path, loaded.damaged_cause, 'would restore' if check_mode else 'restored' if written else 'read', path + BACKUP_SUFFIX,
            after['serial'], '; the damaged file is kept beside it as %s<time>' % (LEDGER_NAME + DAMAGED_SUFFIX)
            if loaded.damaged_raw is not None and written else ''))
    state_changed = changed and (check_mode or not read_only)  # a read-only call reports what it would write
    result = _result(path, loaded.ledger, after, state_changed or bool(restored), evicted, warnings)
    result['restored'] = restored
    return result


# --- for other modules (disk_reclaim, vps_recovery) ----------------------------------------

def list_projects(state_dir):
    """Sorted names of the projects under `state_dir` that have a ledger (or its backup)."""
    try:
        names = os.listdir(state_dir)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return []
        raise ReleaseStateError('cannot list projects in state_dir %s: %s' % (state_dir, exc.strerror))
    projects = []
    for name in sorted(names):
        if not PROJECT_NAME_RE.match(name):
            continue
        ledger = os.path.join(state_dir, name, LEDGER_NAME)
        if os.path.isfile(ledger) or os.path.isfile(ledger + BACKUP_SUFFIX):
            projects.append(name)
    return projects


def _parsed(image):
    try:
        return ImageRef.parse(image)
    except ImageRefError:
        return None  # recorded by hand or by an old collection: left as written


def _repositories_of(image):
    """`registry:5000/app/web:tag@sha256:..` -> [`registry:5000/app/web`] (what RepoDigests hold); an image of
    Docker Hub under both its spellings (`redis`, `docker.io/library/redis`)."""
    ref = _parsed(image)
    return sorted(set([ref.name, ref.canonical_name])) if ref is not None else [image.split('@', 1)[0]]


def pinned_image(service):
    """`repo:tag@<recorded digest>` of a recorded service: what to run it by. An image the compose file already
    pinned by digest is recorded as repo:tag@sha256:..; the recorded digest replaces that one."""
    ref = _parsed(service['image'])
    if ref is None:
        return '%s@%s' % (service['image'].split('@', 1)[0], service['digest'])
    return pinned(ref.name, ref.tag, service['digest'])


def protected_images(state_dir, project, keep_releases, missing_ok=False):
    """Image references a prune must keep for `project`: the current release, the last
    `keep_releases` releases that were good (good or superseded), newest first, and every candidate
    (a release some run recorded and may be pulling or bringing up right now).

    Returns a sorted list of strings: each service's image as recorded (`repo:tag`), its
    digest (`sha256:...`) and `repo@sha256:...` (the form of an image's RepoDigests).
    Raises ReleaseStateError when the ledger is unreadable, and when it does not exist unless
    `missing_ok` (a mistyped project must not silently leave its rollback images unprotected).
    """
    if keep_releases < 0:
        raise ReleaseStateError('keep_releases must be 0 or more, got %s' % keep_releases)
    path = ledger_path(state_dir, project)
    try:
        loaded = read_ledger(state_dir, project)
    except OSError as exc:
        raise ReleaseStateError('cannot read release ledger %s: %s; refusing to decide which images it protects'
                                % (path, exc.strerror))
    except LedgerCorruptError as exc:
        raise LedgerCorruptError('%s Refusing to decide which images of project %s are safe to delete.'
                                 % (exc, project))
    if loaded.raw is None and not missing_ok:
        raise ReleaseStateError(
            'project %s has no release ledger at %s: check project and state_dir, or leave the project out'
            % (project, path))
    ledger = loaded.ledger
    releases = once_good_releases(ledger)[:keep_releases]
    current = find_release(ledger, ledger['current']) if ledger['current'] else None
    if current is not None:
        releases.append(current)
    releases.extend(record for record in ledger['releases'] if record['status'] == 'candidate')
    refs = set()
    for record in releases:
        for service in record['services'].values():
            refs.update([service['image'], service['digest']])
            refs.update('%s@%s' % (name, service['digest']) for name in _repositories_of(service['image']))
    return sorted(refs)
