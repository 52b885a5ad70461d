# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private module_utils of safedeploy.compose: crash-safe file replacement for the state files
# (release ledger, stack lock). Not a public API; it may change in any release.
#
# A reader sees either the whole old file or the whole new one: the new content goes to a
# temporary file in the same directory (same filesystem, so the rename is atomic), is flushed
# to disk, gets its final mode, and only then replaces the old file; the directory is flushed
# so the rename itself survives a power cut. A crash leaves at most a temporary file named
# `.<name>.tmp-<pid>-<random>` behind, which remove_stale_temp_files() cleans up.

from __future__ import annotations

import binascii
import errno
import os

TEMP_MARKER = '.tmp-'


def temp_name_prefix(path):
    """The prefix of every temporary file written for `path`: `.<basename>.tmp-`."""
    return '.%s%s' % (os.path.basename(path), TEMP_MARKER)


def fsync_directory(directory):
    """Flush a directory's entries (a rename or unlink in it) to disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_file_atomic(path, data, mode=0o600):
    """Replace `path` with `data` (bytes) so that no reader or crash ever sees a partial file."""
    directory = os.path.dirname(os.path.abspath(path))
    temp_path = os.path.join(directory, '%s%d-%s' % (
        temp_name_prefix(path), os.getpid(), binascii.hexlify(os.urandom(4)).decode('ascii')))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp_path, flags, mode)
    try:
        try:
            # The umask may have narrowed the mode given to open(); the final mode must hold
            # from the instant the file appears under its real name.
            os.fchmod(fd, mode)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp_path, path)
    except BaseException:
        try:
            os.unlink(temp_path)
        except OSError:
            pass
        raise
    fsync_directory(directory)


def remove_stale_temp_files(path):
    """Remove temporary files a crashed write of `path` left behind; return their paths.

    Only call this while holding the lock that serializes writers of `path`: a temporary file
    that exists then cannot belong to a write in progress.
    """
    directory = os.path.dirname(os.path.abspath(path))
    prefix = temp_name_prefix(path)
    removed = []
    try:
        names = os.listdir(directory)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return removed
        raise
    for name in sorted(names):
        if not name.startswith(prefix):
            continue
        stale = os.path.join(directory, name)
        try:
            os.unlink(stale)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            continue
        removed.append(stale)
    if removed:
        fsync_directory(directory)
    return removed
