"""Fixtures shared by the module_utils unit tests."""

from __future__ import annotations

import pytest

NETRC_PASSWORD = 'netrc-Secret-99'


@pytest.fixture
def netrc_file(tmp_path, monkeypatch):
    """A ~/.netrc (HOME and NETRC point at it) holding a password for 127.0.0.1, which no client may send."""
    netrc = tmp_path / '.netrc'
    netrc.write_text('machine 127.0.0.1\nlogin netrc-user\npassword %s\n' % NETRC_PASSWORD)
    netrc.chmod(0o600)
    monkeypatch.setenv('NETRC', str(netrc))
    monkeypatch.setenv('HOME', str(tmp_path))
    return netrc
