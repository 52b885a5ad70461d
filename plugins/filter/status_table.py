# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
name: status_table
short_description: One host's stacks as a fixed-width table
version_added: 0.4.0
description:
  - Renders the status records of one host (from P(safedeploy.compose.status_record#filter)) as lines of a table - a title
    with the host and its Docker disk usage, a header, and one line per stack with its current and last good release,
    state, health and drift.
author:
  - safedeploy.compose contributors (@safedeploy)
options:
  _input:
    description: The host's status records.
    type: list
    elements: dict
    required: true
  host:
    description: The host name in the title.
    type: str
    required: true
'''

EXAMPLES = r'''
- name: Show the table
  ansible.builtin.debug:
    msg: "{{ records | safedeploy.compose.status_table(inventory_hostname) }}"
'''

RETURN = r'''
_value:
  description: The table's lines.
  type: list
  elements: str
'''

from ansible_collections.safedeploy.compose.plugins.module_utils._status import status_table


class FilterModule(object):

    def filters(self):
        return {'status_table': status_table}
