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
#
# The holder renews its lease at each phase boundary (hold_stack_lock: before a pull, a hook, an
# `up` and each ledger write), and that same call is the re-check: a run whose lease was taken
# over stops there, touching nothing more. Expiry is measured on the host's boot clock
# (CLOCK_BOOTTIME, which a wall-clock step does not move) while the host has not rebooted since
# the lease was written; a lease from an earlier boot is expired (every process that held it died
# with that boot), and a lease without these fields (written by an older release) falls back to
# the wall clock.
#
# Disk reclaims and new leases exclude each other: a reclaim holds <state_dir>/.reclaim.lock
# while it removes, and skips (or waits) while another run holds a live lease; taking a new lease
# waits for that flock. So no reclaim runs inside another run's window between its pull and its up.

from __future__ import annotations

import calendar
import contextlib
import errno
import fcntl
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
    DIR_MODE,
    FILE_MODE,
    FLOCK_POLL_INTERVAL,
    FlockTimeout,
    ReleaseStateError,
    ensure_project_dir,
    exclusive_flock,
    project_dir,
    wait_for_flock,
)

LEASE_NAME = 'lock.json'
LEASE_FLOCK_NAME = '.lock.json.lock'
RECLAIM_FLOCK_NAME = '.reclaim.lock'
BOOT_ID_PATH = '/proc/sys/kernel/random/boot_id'
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


class LeaseLost(StackLockError):
    """The run no longer holds the lease it took: another run took it over, or it was released."""


# The option of the modules that change a stack (compose_up, compose_run): the run that must still hold its lock.
STACK_LOCK_HOLD_SPEC = dict(
    stack_lock=dict(type='dict', options=dict(
        run_id=dict(type='str', required=True),
        state_dir=dict(type='path', default='/var/lib/safedeploy'),
        project=dict(type='str'),
    )),
)


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


def boot_id():
    """This boot's id (Linux), or None where the kernel does not tell."""
    try:
        with open(BOOT_ID_PATH, 'r') as handle:
            return handle.read().strip() or None
    except (IOError, OSError):
        return None


def boot_clock():
    """Seconds on a clock that only moves forward and counts suspended time (CLOCK_BOOTTIME), or None."""
    clock = getattr(time, 'CLOCK_BOOTTIME', None)
    if clock is None:
        return None
    try:
        return time.clock_gettime(clock)
    except OSError:
        return None


def _stamp(lease, ttl, now):
    """Set the lease's expiry, on the wall clock (for people) and on the boot clock (for the expiry check)."""
    lease.update(renewed_at=_timestamp(int(now)), ttl=ttl, expires_at=_timestamp(int(now) + ttl))
    boot, clock = boot_id(), boot_clock()
    if boot and clock is not None:
        lease.update(boot_id=boot, expires_boot_clock=round(clock + ttl, 3))
    else:
        lease.pop('boot_id', None)
        lease.pop('expires_boot_clock', None)
    return lease


def new_lease(run_id, owner, release, ttl, now):
    lease = dict(owner=owner, host=socket.gethostname(), pid=os.getpid(), run_id=run_id, release=release,
                 acquired_at=_timestamp(int(now)))
    return _stamp(lease, ttl, now)


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
    """Whether the lease's holder is presumed dead: past its ttl since it was taken or last renewed."""
    boot, clock = boot_id(), boot_clock()
    if lease.get('boot_id') and boot and clock is not None:
        if lease['boot_id'] != boot:
            return True  # taken before this host's last boot: its holder died with that boot
        try:
            return float(lease['expires_boot_clock']) < clock
        except (KeyError, TypeError, ValueError):
            pass
    try:
        since = _epoch(lease.get('renewed_at') or lease['acquired_at'])
    except (TypeError, ValueError):
        since = _epoch(lease['acquired_at'])
    return since + int(lease['ttl']) < now


def describe_lease(lease, now):
    renewed = lease.get('renewed_at')
    return 'owner %s on host %s (pid %s), run id %s%s, acquired %s (%ss ago, ttl %ss%s)' % (
        lease.get('owner'), lease.get('host'), lease.get('pid'), lease['run_id'],
        ', release %s' % lease['release'] if lease.get('release') else '',
        lease['acquired_at'], lease_age(lease, now), lease['ttl'],
        ', last renewed %s' % renewed if renewed and renewed != lease['acquired_at'] else '')


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


@contextlib.contextmanager
def _reclaim_not_running(state_dir, timeout):
    """A shared flock on the reclaim interlock: runs taking or renewing leases share it with each other, and a disk
    reclaim (which holds it exclusively while it removes) keeps them all out. Raises FlockTimeout after `timeout`."""
    path = os.path.join(state_dir, RECLAIM_FLOCK_NAME)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    try:
        wait_for_flock(fd, fcntl.LOCK_SH, timeout, FLOCK_POLL_INTERVAL, lambda: FlockTimeout(
            'the disk reclaim interlock %s is held by a running disk reclaim' % path))
        yield
    finally:
        os.close(fd)


def _no_reclaim_running(state_dir, project, deadline, started, check_mode):
    """The reclaim interlock, held while a lease is created: waits (until `deadline`) for a running disk reclaim."""
    held = contextlib.ExitStack()
    if check_mode:
        return held
    try:
        held.enter_context(_reclaim_not_running(state_dir, timeout=max(0.0, deadline - time.monotonic())))
    except FlockTimeout as exc:
        waited = round(time.monotonic() - started, 3)
        raise StackLockError('cannot take the stack lock of project %s: a disk reclaim is running on this host, and no '
                             'run may start while it removes images (%s). Waited %ss (lock_wait); it ends by itself: '
                             'retry, or raise lock_wait.' % (project, exc, int(waited)), waited=waited)
    return held


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
            with _no_reclaim_running(state_dir, project, deadline, started, check_mode):
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


def _lost_message(project, run_id, holder, damage, before, now):
    if holder is not None:
        where = 'it is held by %s' % describe_lease(holder, now)
    elif damage is not None:
        where = 'its lease file is %s' % damage
    else:
        where = 'nobody holds it (its lease was released or broken by hand)'
    return ('run %s no longer holds the stack lock of project %s: %s. It stopped before %s and changes nothing more: '
            'another run may own the stack now. If this run was only slow, raise the lock ttl (rollout_lock_ttl) '
            'above its longest phase.' % (run_id, project, where, before))


def hold_stack_lock(state_dir, project, run_id, before='its next step', check_mode=False):
    """Check that `run_id` still holds the project's lease, and renew it for another ttl.

    Called right before each step that changes the stack (a pull, a hook, an up, a ledger write),
    so a run whose lease was taken over stops before that step: raises LeaseLost naming the new
    holder. Returns (lease, warning or None); in check mode nothing is written.
    """
    path = lease_path(state_dir, project)
    now = time.time()
    if not os.path.isdir(os.path.dirname(path)):
        raise LeaseLost(_lost_message(project, run_id, None, None, before, now))
    try:
        with _guarded(path, check_mode):
            holder, damage = read_lease(path)
            if holder is None or holder['run_id'] != run_id:
                raise LeaseLost(_lost_message(project, run_id, holder, damage, before, now), holder=holder)
            warning = None
            renewal = contextlib.ExitStack()
            if lease_expired(holder, now):  # nobody took it over; a disk reclaim may have started meanwhile
                if not check_mode:
                    try:  # while this renewal holds the interlock, no reclaim starts; one that runs stops this run
                        renewal.enter_context(_reclaim_not_running(state_dir, timeout=0))
                    except FlockTimeout:
                        raise LeaseLost('run %s no longer holds the stack lock of project %s: its lease expired (%s) and '
                                        'a disk reclaim is running on this host, which may remove what this run pulled. '
                                        'It stopped before %s and changes nothing more. Raise the lock ttl '
                                        '(rollout_lock_ttl) above its longest phase.'
                                        % (run_id, project, describe_lease(holder, now), before), holder=holder)
                warning = ('the stack lock of project %s had expired (%s) but nobody took it over; renewed it. Raise '
                           'the lock ttl above the longest phase of a run.' % (project, describe_lease(holder, now)))
            lease = _stamp(dict(holder), int(holder['ttl']), now)
            with renewal:
                if not check_mode:
                    try:
                        write_file_atomic(path, json.dumps(lease, indent=2).encode('utf-8') + b'\n', FILE_MODE)
                    except OSError as exc:
                        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or warning:
                            raise
                        # A full state disk must not stop a run that holds a live lease (its way back most of
                        # all): the lease on disk still names this run until it expires.
                        return holder, ('could not renew the stack lock of project %s (%s): it stays held by this '
                                        'run until %s. Free space in %s.' % (project, exc.strerror, holder.get('expires_at'),
                                                                             state_dir))
    except OSError as exc:
        raise _os_error(path, exc)
    return lease, warning


# --- the reclaim interlock ---------------------------------------------------------------------

def live_leases(state_dir, except_run_id=None, now=None):
    """[(project, lease)] of every live lease in state_dir held by a run other than `except_run_id`."""
    now = time.time() if now is None else now
    try:
        names = sorted(os.listdir(state_dir))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return []
        raise
    found = []
    for name in names:
        path = os.path.join(state_dir, name, LEASE_NAME)
        if not os.path.isfile(path):
            continue
        lease, _damage = read_lease(path)  # a damaged lease was left by a process that died taking it
        if lease is not None and lease['run_id'] != except_run_id and not lease_expired(lease, now):
            found.append((name, lease))
    return found


def _lease_in_the_way(project, lease, now):
    return dict(kind='stack_lock', project=project, run_id=lease['run_id'], release=lease.get('release'),
                owner=lease.get('owner'), since=lease.get('acquired_at'),
                description='the stack lock of project %s is held by %s' % (project, describe_lease(lease, now)))


def _ensure_state_dir(state_dir):
    if not os.path.isdir(state_dir):
        os.makedirs(state_dir, DIR_MODE, exist_ok=True)
        os.chmod(state_dir, DIR_MODE)


def _interlock_error(state_dir, exc):
    return StackLockError('cannot use the disk reclaim interlock in %s: %s. Check that protect_releases.state_dir is a '
                          'local directory this user may write (become: true)'
                          % (exc.filename or state_dir, exc.strerror or exc))


def _try_interlock(state_dir, run_id, check_mode):
    """One look: (ExitStack holding the interlock, []) when the way is clear, else (None, what is in the way)."""
    now = time.time()
    if check_mode:
        return None, [_lease_in_the_way(name, lease, now) for name, lease in live_leases(state_dir, run_id, now)]
    held = contextlib.ExitStack()
    try:
        held.enter_context(exclusive_flock(os.path.join(state_dir, RECLAIM_FLOCK_NAME),
                                           'the disk reclaim interlock of %s' % state_dir, timeout=0))
    except FlockTimeout as exc:
        return None, [dict(kind='reclaim', project=None, run_id=None, release=None, owner=None, since=None,
                           description='another disk reclaim is running (%s)' % exc)]
    try:
        blocked = [_lease_in_the_way(name, lease, now) for name, lease in live_leases(state_dir, run_id, now)]
    except BaseException:
        held.close()
        raise
    if blocked:
        held.close()
        return None, blocked
    return held, []


@contextlib.contextmanager
def reclaim_interlock(state_dir, run_id=None, wait=0, poll_interval=DEFAULT_POLL_INTERVAL, check_mode=False):
    """Keep a disk reclaim out of every other run's window: yield dict(blocked_by=[...], waited=seconds).

    With blocked_by empty the caller may remove: no other run holds a live stack lease in state_dir
    and this context holds <state_dir>/.reclaim.lock, so no run takes a new lease until it exits.
    Otherwise (after waiting up to `wait` seconds) blocked_by names the leases, or the other reclaim,
    in the way, and the caller must not remove anything. `run_id` is the caller's own run, whose lease
    does not count. Check mode only looks (and never waits).
    """
    started = time.monotonic()
    deadline = started + max(0, wait)
    try:
        if not check_mode:
            _ensure_state_dir(state_dir)
        while True:
            held, blocked = _try_interlock(state_dir, run_id, check_mode)
            if held is not None or check_mode or time.monotonic() >= deadline:
                break
            time.sleep(max(0.0, min(poll_interval, deadline - time.monotonic())))
    except OSError as exc:
        raise _interlock_error(state_dir, exc)
    status = dict(blocked_by=blocked, waited=round(time.monotonic() - started, 3))
    if held is None:
        yield status
        return
    with held:
        yield status
