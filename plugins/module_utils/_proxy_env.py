# -*- coding: utf-8 -*-
# Copyright: (c) 2026, safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""NO_PROXY entries written as networks, which urllib's own check does not read.

urllib's ProxyHandler honours HTTP(S)_PROXY and NO_PROXY host names and suffixes; an entry such as 10.0.0.0/8 (a
network, as curl and requests accept it) it ignores, and would send a call to 10.1.2.3 through the proxy. The
registry client and the HTTP checks ask this first and go direct when it says so."""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlsplit


def _no_proxy_entries(environ):
    value = environ.get('no_proxy') or environ.get('NO_PROXY') or ''
    return [entry.strip() for entry in value.replace(' ', ',').split(',') if entry.strip()]


def in_no_proxy_network(url, environ=None):
    """True when the URL's host is an IP address inside a network (address/prefix) that NO_PROXY lists."""
    try:
        address = ipaddress.ip_address((urlsplit(url).hostname or '').strip('[]'))
    except ValueError:
        return False
    for entry in _no_proxy_entries(os.environ if environ is None else environ):
        if '/' not in entry:
            continue
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        if address.version == network.version and address in network:
            return True
    return False
