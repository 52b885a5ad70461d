# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private module_utils of safedeploy.compose: sizes as people read them in messages and tables.
# Not a public API; it may change in any release.

from __future__ import annotations


def human_bytes(count):
    """`1536` -> `1.5 KiB`; whole bytes below 1 KiB, binary units up to TiB."""
    value = float(count)
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if abs(value) < 1024:
            return ('%d %s' % (value, unit)) if unit == 'B' else '%.1f %s' % (value, unit)
        value /= 1024.0
    return '%.1f TiB' % value
