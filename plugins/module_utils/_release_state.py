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
import time

from ansible_collections.safedeploy.compose.plugins.module_utils._atomic_file import (
    remove_stale_temp_files,
    write_file_atomic,
)

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

# A ledger update takes milliseconds; waiting longer than this means the holder is stuck.
FLOCK_TIMEOUT = 30.0
FLOCK_POLL_INTERVAL = 0.05

# Compose project names (lower case is what Compose itself produces; upper case is accepted).
PROJECT_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$')
# A release id is the image tag to roll back to, so it follows the Docker tag grammar.
RELEASE_ID_RE = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$')
# OCI digest grammar: algorithm ":" encoded.
DIGEST_RE = re.compile(r'^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[A-Za-z0-9=_-]+$')


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


@contextlib.contextmanager
def exclusive_flock(lock_path, subject, timeout=FLOCK_TIMEOUT, poll_interval=FLOCK_POLL_INTERVAL):
    """Hold an exclusive flock on `lock_path`, waiting at most `timeout` seconds.

    The descriptor is close-on-exec, so a child process (docker, compose) never inherits the
    lock and keeps it after this process is done. The lock dies with this process, so a crash
    never leaves it stuck.
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    raise
            if time.monotonic() >= deadline:
                raise FlockTimeout(
                    '%s is locked by %s (lock file %s); gave up after waiting %ss. Another task is changing it: '
                    'retry when it is done, or stop that process if it hangs (the lock is freed when it exits).'
                    % (subject, _describe_flock_holder(fd), lock_path, timeout))
            time.sleep(poll_interval)
        _set_fd_mode(fd, FILE_MODE)
        note = dict(pid=os.getpid(), host=socket.gethostname(), since=utc_now(), since_epoch=time.time())
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(note).encode('utf-8'), 0)
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


def once_good_releases(ledger):
    """Releases that were good at some point, most recently promoted first."""
    indexed = [(record.get('promoted_at') or '', index, record)
               for index, record in enumerate(ledger['releases']) if record['status'] in ONCE_GOOD_STATUSES]
    return [record for _promoted, _index, record in sorted(indexed, key=lambda item: item[:2], reverse=True)]


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


def record_release(ledger, release_id, services, compose_hash=None, source=None, now=None):
    """Add `release_id` as a candidate. An id names one set of images for good: recording it
    again with the same images changes nothing (its status and source stay), with other images
    fails. A new compose_hash is taken over, because the configuration (an edited .env) may
    change under the same images and the rollout must see that the running config is not it."""
    validate_release_id(release_id)
    services = normalize_services(services, release_id)
    existing = find_release(ledger, release_id)
    if existing is None:
        now = now or utc_now()
        ledger['releases'].append(dict(
            id=release_id, status='candidate', created_at=now, updated_at=now, promoted_at=None,
            services=services, compose_hash=compose_hash, health=None, source=dict(source or {}), reason=None))
    elif existing['services'] != services:
        differing = sorted(name for name in set(existing['services']) | set(services)
                           if existing['services'].get(name) != services.get(name))
        raise ReleaseStateError(
            'release %s is already recorded with other images (services differing: %s); a release id is '
            'immutable: record this build under a new id' % (release_id, ', '.join(differing)))
    elif compose_hash is not None and compose_hash != existing.get('compose_hash'):
        existing.update(compose_hash=compose_hash, updated_at=now or utc_now())


def _require_release(ledger, release_id, action):
    validate_release_id(release_id)
    record = find_release(ledger, release_id)
    if record is None:
        raise ReleaseStateError(
            'cannot %s release %s of project %s: it is not in the ledger; record it first (action: record)'
            % (action, release_id, ledger['project']))
    return record


def promote_release(ledger, release_id, health=None, now=None):
    """Make a release good and current; the release that was good before becomes superseded."""
    record = _require_release(ledger, release_id, 'promote')
    if record['status'] == 'good' and ledger['current'] == release_id:
        return  # promoting the running good release again changes nothing, its health included
    now = now or utc_now()
    for other in ledger['releases']:
        if other['status'] == 'good' and other['id'] != release_id:
            other.update(status='superseded', updated_at=now)
    record.update(status='good', promoted_at=now, updated_at=now, reason=None)
    if health is not None:
        record['health'] = health
    ledger['current'] = release_id


def fail_release(ledger, release_id, reason, status='failed', now=None):
    """Mark a release failed (its gate failed) or rolled_back (it ran and was rolled back from)."""
    if status not in FAILED_STATUSES:
        raise ReleaseStateError('invalid failure status %r: use one of %s' % (status, ', '.join(FAILED_STATUSES)))
    record = _require_release(ledger, release_id, 'fail')
    if record['status'] != status or record.get('reason') != reason:
        record.update(status=status, reason=reason, updated_at=now or utc_now())


def enforce_history_limit(ledger, history_limit, keep=()):
    """Evict the oldest releases beyond `history_limit`; never current, the last good or `keep`."""
    if history_limit < 1:
        raise ReleaseStateError('history_limit must be at least 1, got %s' % history_limit)
    good = last_good(ledger)
    protected = set(keep)
    protected.add(ledger['current'])
    if good is not None:
        protected.add(good['id'])
    evicted = []
    for record in list(ledger['releases']):
        if len(ledger['releases']) <= history_limit:
            break
        if record['id'] not in protected:
            ledger['releases'].remove(record)
            evicted.append(record['id'])
    return evicted


# --- one module call ------------------------------------------------------------------------

def _content_differs(before, after):
    strip = ('serial', 'checksum')
    return (dict((k, v) for k, v in before.items() if k not in strip)
            != dict((k, v) for k, v in after.items() if k not in strip))


def _release_or_none(ledger, release_id):
    record = find_release(ledger, release_id) if release_id else None
    return copy.deepcopy(record)


def _evaluate(loaded, action, release, services, compose_hash, source, health, reason, fail_status,
              history_limit):
    before = loaded.ledger
    after = copy.deepcopy(before)
    after.pop('checksum', None)
    if action == 'record':
        record_release(after, release, services, compose_hash, source)
    elif action == 'promote':
        promote_release(after, release, health)
    elif action == 'fail':
        fail_release(after, release, reason, fail_status)
    elif action != 'query':
        raise ReleaseStateError('unknown action %r' % (action,))
    evicted = [] if action == 'query' else enforce_history_limit(after, history_limit, keep=[release])
    changed = loaded.recovered or _content_differs(before, after)
    if changed:
        after['serial'] = before['serial'] + 1
    return after, changed, evicted


def _result(path, before, after, changed, evicted, warnings):
    return dict(
        changed=changed,
        ledger_file=path,
        serial=after['serial'],
        last_good=copy.deepcopy(last_good(after)),
        previous_good=copy.deepcopy(previous_good(after)),
        current=_release_or_none(after, after['current']),
        releases=copy.deepcopy(after['releases']),
        evicted=evicted,
        diff=dict(before=status_summary(before), after=status_summary(after)),
        warnings=warnings,
    )


def apply_ledger_action(state_dir, project, action='query', release=None, services=None, compose_hash=None,
                        source=None, health=None, reason=None, fail_status='failed',
                        history_limit=DEFAULT_HISTORY_LIMIT, recover_from_backup=False, check_mode=False,
                        flock_timeout=FLOCK_TIMEOUT):
    """Run one last_good_tag action; return the module result (with `warnings` to emit).

    Check mode, and a query of a project that has no state yet, read without locking or
    writing: the atomic rename means a reader always sees a whole ledger.
    """
    path = ledger_path(state_dir, project)
    if history_limit < 1:
        raise ReleaseStateError('history_limit must be at least 1, got %s' % history_limit)
    args = (action, release, services, compose_hash, source, health, reason, fail_status, history_limit)
    stale = []
    try:
        if check_mode or (action == 'query' and not os.path.isdir(os.path.dirname(path))):
            loaded = read_ledger(state_dir, project, recover_from_backup)
            after, changed, evicted = _evaluate(loaded, *args)
        else:
            ensure_project_dir(state_dir, project)
            flock_path = os.path.join(os.path.dirname(path), LEDGER_FLOCK_NAME)
            with exclusive_flock(flock_path, 'release ledger %s' % path, timeout=flock_timeout):
                stale = remove_stale_temp_files(path) + remove_stale_temp_files(path + BACKUP_SUFFIX)
                loaded = read_ledger(state_dir, project, recover_from_backup)
                after, changed, evicted = _evaluate(loaded, *args)
                if changed:
                    write_ledger(state_dir, project, loaded, after)
    except OSError as exc:
        raise ReleaseStateError(
            'cannot use release ledger %s: %s (%s). Check that state_dir is a local directory this user may write '
            '(become: true)' % (path, exc.strerror or exc, exc.filename or path))
    warnings = []
    if stale:
        warnings.append('removed %d stale temporary file(s) left by an interrupted write of %s: %s'
                        % (len(stale), path, ', '.join(os.path.basename(name) for name in stale)))
    if loaded.recovered:
        warnings.append('release ledger %s was %s; %s it from %s (serial %s)%s' % (
            path, loaded.damaged_cause, 'would restore' if check_mode else 'restored', path + BACKUP_SUFFIX,
            after['serial'], '; the damaged file is kept beside it as %s<time>' % (LEDGER_NAME + DAMAGED_SUFFIX)
            if loaded.damaged_raw is not None and not check_mode else ''))
    return _result(path, loaded.ledger, after, changed, evicted, warnings)


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


def _repository_of(image):
    """`registry:5000/app/web:tag@sha256:..` -> `registry:5000/app/web` (what RepoDigests hold)."""
    name = image.split('@', 1)[0]
    slash = name.rfind('/')
    colon = name.rfind(':')
    return name[:colon] if colon > slash else name


def protected_images(state_dir, project, keep_releases, missing_ok=False):
    """Image references a prune must keep for `project`: the current release and the last
    `keep_releases` releases that were good (good or superseded), newest first.

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
    refs = set()
    for record in releases:
        for service in record['services'].values():
            refs.update([service['image'], service['digest'],
                         '%s@%s' % (_repository_of(service['image']), service['digest'])])
    return sorted(refs)
