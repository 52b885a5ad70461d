# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private module_utils of safedeploy.compose: what a container's log configuration says about its disk use.
# Not a public API; it may change in any release.

from __future__ import annotations


def log_config_unbounded(log_config):
    """Whether a container's HostConfig.LogConfig lets its logs grow without bound: the json-file driver with no
    max-size, or max-size -1 (json-file's "unlimited"). Other drivers rotate (local) or keep nothing on the host's
    disk for this container (journald, syslog, none...)."""
    log_config = log_config or {}
    if (log_config.get('Type') or '') != 'json-file':
        return False
    size = str((log_config.get('Config') or {}).get('max-size') or '').strip()
    return size in ('', '-1')
