"""Crash-safe replacement of state files: _atomic_file."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.safedeploy.compose.plugins.module_utils import _atomic_file
from ansible_collections.safedeploy.compose.plugins.module_utils._atomic_file import (
    remove_stale_temp_files,
    temp_name_prefix,
    write_file_atomic,
)


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask():
    """umask 0: modes must come from the code, not from a friendly umask."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def test_write_creates_the_file_with_the_mode_asked(tmp_path, open_umask):
    target = tmp_path / 'releases.json'
    write_file_atomic(str(target), b'{"a": 1}\n', 0o600)
    assert target.read_bytes() == b'{"a": 1}\n'
    assert mode_of(target) == 0o600
    assert sorted(os.listdir(tmp_path)) == ['releases.json']


def test_write_replaces_an_existing_file_and_fixes_its_mode(tmp_path, open_umask):
    target = tmp_path / 'releases.json'
    target.write_bytes(b'old content that is longer than the new one')
    os.chmod(target, 0o666)
    old_inode = os.stat(target).st_ino
    write_file_atomic(str(target), b'new', 0o600)
    assert target.read_bytes() == b'new'
    assert mode_of(target) == 0o600
    assert os.stat(target).st_ino != old_inode  # a new file took its place: readers never see it half written
    assert sorted(os.listdir(tmp_path)) == ['releases.json']


def test_order_is_fsync_then_mode_then_rename_then_directory_fsync(tmp_path, monkeypatch):
    target = tmp_path / 'releases.json'
    target.write_bytes(b'old')
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(('fsync', os.readlink('/proc/self/fd/%d' % fd)))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(('replace', os.path.basename(src), mode_of(src), open(src, 'rb').read()))
        return real_replace(src, dst)

    monkeypatch.setattr(os, 'fsync', fsync)
    monkeypatch.setattr(os, 'replace', replace)
    write_file_atomic(str(target), b'new', 0o600)
    assert [event[0] for event in events] == ['fsync', 'replace', 'fsync']
    assert os.path.basename(events[0][1]).startswith('.releases.json.tmp-%d-' % os.getpid())
    assert events[1][2:] == (0o600, b'new')  # mode and content final before the file gets its name
    assert events[2][1] == str(tmp_path)  # the directory entry change is flushed too


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / 'releases.json'
    target.write_bytes(b'old')

    def broken_fsync(fd):
        raise OSError(5, 'Input/output error')

    monkeypatch.setattr(os, 'fsync', broken_fsync)
    with pytest.raises(OSError):
        write_file_atomic(str(target), b'new', 0o600)
    assert target.read_bytes() == b'old'
    assert sorted(os.listdir(tmp_path)) == ['releases.json']


def test_temp_files_are_close_on_exec(tmp_path, monkeypatch):
    seen = []
    real_fsync = os.fsync

    def fsync(fd):
        seen.append(os.get_inheritable(fd))
        return real_fsync(fd)

    monkeypatch.setattr(os, 'fsync', fsync)
    write_file_atomic(str(tmp_path / 'x.json'), b'x')
    assert seen and not any(seen)


def test_crash_before_rename_leaves_old_file_and_a_stale_temp_that_is_removed(tmp_path):
    target = tmp_path / 'releases.json'
    target.write_bytes(b'old')
    child = textwrap.dedent('''
        import os, signal, sys
        from ansible_collections.safedeploy.compose.plugins.module_utils import _atomic_file
        os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)
        _atomic_file.write_file_atomic(sys.argv[1], b'new', 0o600)
    ''')
    proc = subprocess.run([sys.executable, '-c', child, str(target)], env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
                          capture_output=True, text=True, check=False)
    assert proc.returncode == -9, proc.stderr
    assert target.read_bytes() == b'old'
    temps = [name for name in os.listdir(tmp_path) if name.startswith(temp_name_prefix(str(target)))]
    assert len(temps) == 1 and (tmp_path / temps[0]).read_bytes() == b'new'

    removed = remove_stale_temp_files(str(target))
    assert [os.path.basename(path) for path in removed] == temps
    assert sorted(os.listdir(tmp_path)) == ['releases.json']


def test_stale_cleanup_touches_only_temps_of_that_file(tmp_path):
    target = tmp_path / 'releases.json'
    keep = ['releases.json', 'releases.json.bak', '.releases.json.bak.tmp-1-abcd', 'notes.tmp-1', '.releases.lock']
    for name in keep + ['.releases.json.tmp-99-0a0b0c0d', '.releases.json.tmp-7-ffffffff']:
        (tmp_path / name).write_bytes(b'x')
    removed = remove_stale_temp_files(str(target))
    assert sorted(os.path.basename(path) for path in removed) == [
        '.releases.json.tmp-7-ffffffff', '.releases.json.tmp-99-0a0b0c0d']
    assert sorted(os.listdir(tmp_path)) == sorted(keep)


def test_stale_cleanup_of_a_missing_directory_is_a_no_op(tmp_path):
    assert remove_stale_temp_files(str(tmp_path / 'absent' / 'releases.json')) == []


def test_temp_prefix_is_hidden_and_names_the_file():
    assert _atomic_file.temp_name_prefix('/x/y/lock.json') == '.lock.json.tmp-'
