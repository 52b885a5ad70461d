# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private module_utils of safedeploy.compose: the stack lock, a lease on one compose project.
# Not a public API; it may change in any release.
#
# A rollout spans many tasks (each its own process), and an flock dies with the process that
# took it, so the rollout-wide lock is a file, <state_dir>/<project>/lock.json, naming its
# holder (owner, host, pid, run id, release) with the time it was taken and a TTL. It is created
# with O_EXCL; a lease older than its TTL is taken over (its rollout died without unlocking);
# only the run id that holds it can release it, which is also how an operator breaks a stale
# lock by hand: by quoting the holder's run id. Each check-and-change of lock.json holds a
# short flock on <project>/.lock.json.lock so that two takers never both win.

from __future__ import annotations

import calendar
import contextlib
import errno
import getpass
import json
import os
import socket
import time

from ansible_collections.safedeploy.compose.plugins.module_utils._atomic_file import (
    fsync_directory,
    remove_stale_temp_files,
    write_file_atomic,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._release_state import (
    FILE_MODE,
    ReleaseStateError,
    ensure_project_dir,
    exclusive_flock,
    project_dir,
)

LEASE_NAME = 'lock.json'
LEASE_FLOCK_NAME = '.lock.json.lock'
DEFAULT_TTL = 1800
DEFAULT_LOCK_WAIT = 60
DEFAULT_POLL_INTERVAL = 1.0
TIMESTAMP_FORMAT = '%Y-%m-%dT%H:%M:%SZ'


class StackLockError(ReleaseStateError):
    """The lease could not be taken or released; `holder` is the lease in the way (or None)."""

    def __init__(self, message, holder=None, waited=0.0):
        super(StackLockError, self).__init__(message)
        self.holder = holder
        self.waited = waited


def lease_path(state_dir, project):
    return os.path.join(project_dir(state_dir, project), LEASE_NAME)


def default_owner():
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (containers)
        return 'uid-%d' % os.getuid()


def _timestamp(epoch):
    return time.strftime(TIMESTAMP_FORMAT, time.gmtime(epoch))


def _epoch(timestamp):
    return calendar.timegm(time.strptime(timestamp, TIMESTAMP_FORMAT))


def new_lease(run_id, owner, release, ttl, now):
    acquired = int(now)
    return dict(owner=owner, host=socket.gethostname(), pid=os.getpid(), run_id=run_id, release=release,
                acquired_at=_timestamp(acquired), ttl=ttl, expires_at=_timestamp(acquired + ttl))


def read_lease(path):
    """Return (lease, None), (None, None) when free, or (None, cause) when the file is damaged."""
    try:
        with open(path, 'rb') as handle:
            raw = handle.read()
    except (IOError, OSError) as exc:
        if exc.errno == errno.ENOENT:
            return None, None
        raise
    try:
        lease = json.loads(raw.decode('utf-8'))
        _epoch(lease['acquired_at'])
        int(lease['ttl'])
        if not isinstance(lease['run_id'], str):
            raise TypeError('run_id is not a string')
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        return None, 'empty' if not raw.strip() else 'unreadable (%s: %s)' % (type(exc).__name__, exc)
    return lease, None


def lease_age(lease, now):
    return max(0, int(now - _epoch(lease['acquired_at'])))


def lease_expired(lease, now):
    return _epoch(lease['acquired_at']) + int(lease['ttl']) < now


def describe_lease(lease, now):
    return 'owner %s on host %s (pid %s), run id %s%s, acquired %s (%ss ago, ttl %ss)' % (
        lease.get('owner'), lease.get('host'), lease.get('pid'), lease['run_id'],
        ', release %s' % lease['release'] if lease.get('release') else '',
        lease['acquired_at'], lease_age(lease, now), lease['ttl'])


def _create_lease(path, lease):
    """Create lock.json only if it does not exist; return False when someone else has it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            return False
        raise
    try:
        os.fchmod(fd, FILE_MODE)
        os.write(fd, json.dumps(lease, indent=2).encode('utf-8') + b'\n')
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_directory(os.path.dirname(path))
    return True


def _result(path, before, after, **flags):
    result = dict(changed=False, lock=after, previous_lock=None, acquired=False, took_over=False, waited=0.0,
                  lock_file=path, diff=dict(before=before or {}, after=after or {}), warnings=[])
    result.update(flags)
    return result


def _guarded(path, check_mode):
    """The flock around one check-and-change of lock.json; none in check mode, which changes nothing."""
    if check_mode:
        return contextlib.nullcontext()
    return exclusive_flock(os.path.join(os.path.dirname(path), LEASE_FLOCK_NAME), 'stack lock %s' % path)


def _os_error(path, exc):
    return StackLockError('cannot use the stack lock %s: %s. Check that state_dir is a local directory this user '
                          'may write (become: true)' % (exc.filename or path, exc.strerror or exc))


def _try_acquire(path, run_id, owner, release, ttl, check_mode):
    """One attempt; return (result or None when another live lease is in the way, holder)."""
    now = time.time()
    holder, damage = read_lease(path)
    lease = new_lease(run_id, owner, release, ttl, now)
    if holder is None and damage is None:
        if check_mode or _create_lease(path, lease):
            return _result(path, None, lease, changed=True, acquired=True), None
        return None, read_lease(path)[0]  # created behind our back: treat like any holder
    if damage is not None:
        warning = ('stack lock %s was %s, left by a process that died while taking it; took it over' % (path, damage))
        took_over = True
    elif holder['run_id'] == run_id and not lease_expired(holder, now):
        return _result(path, holder, holder, acquired=True), None
    elif lease_expired(holder, now):
        took_over = holder['run_id'] != run_id
        warning = ('%s the expired stack lock of %s: %s. If that rollout is still running, it no longer holds the '
                   'lock.' % ('took over' if took_over else 'renewed', path, describe_lease(holder, now)))
    else:
        return None, holder
    if not check_mode:
        write_file_atomic(path, json.dumps(lease, indent=2).encode('utf-8') + b'\n', FILE_MODE)
    result = _result(path, holder, lease, changed=True, acquired=True, took_over=took_over, previous_lock=holder)
    result['warnings'].append(warning)
    return result, None


def acquire_stack_lock(state_dir, project, run_id, owner=None, release=None, ttl=DEFAULT_TTL,
                       lock_wait=DEFAULT_LOCK_WAIT, poll_interval=DEFAULT_POLL_INTERVAL, check_mode=False):
    """Take the lease for `run_id`, waiting up to `lock_wait` seconds for a live holder to let go.

    Idempotent for the same run id. Returns the module result; raises StackLockError naming
    the holder when the wait runs out.
    """
    if not run_id:
        raise StackLockError('run_id must not be empty: give each rollout its own id (for example the AWX job id)')
    if ttl < 1 or lock_wait < 0 or poll_interval <= 0:
        raise StackLockError('ttl must be at least 1, lock_wait 0 or more and poll_interval above 0 '
                             '(got ttl=%s, lock_wait=%s, poll_interval=%s)' % (ttl, lock_wait, poll_interval))
    owner = owner or default_owner()
    path = lease_path(state_dir, project)
    started = time.monotonic()
    deadline = started + lock_wait
    try:
        if not check_mode:
            ensure_project_dir(state_dir, project)
        while True:
            with _guarded(path, check_mode):
                stale = [] if check_mode else remove_stale_temp_files(path)
                result, holder = _try_acquire(path, run_id, owner, release, ttl, check_mode)
            waited = round(time.monotonic() - started, 3)
            if result is not None:
                result['waited'] = waited
                if stale:
                    result['warnings'].append('removed stale temporary file(s) of an interrupted write: %s'
                                              % ', '.join(os.path.basename(name) for name in stale))
                return result
            if holder is not None and time.monotonic() >= deadline:
                raise StackLockError(
                    'stack lock of project %s is held by %s; still held after waiting %ss (lock_wait %ss). Another '
                    'rollout of this project is running: let it finish or raise lock_wait. If it died, its lease '
                    'expires at %s, or break it now with safedeploy.compose.stack_lock state=absent run_id=%s.'
                    % (project, describe_lease(holder, time.time()), int(waited), lock_wait,
                       holder.get('expires_at'), holder['run_id']), holder=holder, waited=waited)
            time.sleep(max(0.0, min(poll_interval, deadline - time.monotonic())))
    except OSError as exc:
        raise _os_error(path, exc)


def release_stack_lock(state_dir, project, run_id, check_mode=False):
    """Release the lease held by `run_id`; a lease held by another run id is left alone (error)."""
    path = lease_path(state_dir, project)
    if not os.path.isdir(os.path.dirname(path)):
        return _result(path, None, None)  # never locked: nothing to release, nothing to create
    try:
        with _guarded(path, check_mode):
            holder, damage = read_lease(path)
            if holder is None and damage is None:
                return _result(path, None, None)
            if holder is not None and holder['run_id'] != run_id:
                raise StackLockError(
                    'refusing to unlock the stack lock of project %s: it is held by %s, not by run id %s. A forced '
                    'unlock must quote the holder\'s run id (state=absent run_id=%s); do that only when that rollout '
                    'is dead.' % (project, describe_lease(holder, time.time()), run_id, holder['run_id']),
                    holder=holder)
            if not check_mode:
                os.unlink(path)
                fsync_directory(os.path.dirname(path))
    except OSError as exc:
        raise _os_error(path, exc)
    result = _result(path, holder, None, changed=True, previous_lock=holder)
    if damage is not None:
        result['warnings'].append('removed the stack lock %s, which was %s' % (path, damage))
    return result
