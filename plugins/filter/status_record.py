# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
name: status_record
short_description: One stack's status record from stack_status and a health_gate observe pass
version_added: 0.4.0
description:
  - Combines the registered result of M(safedeploy.compose.stack_status) (or its failure) with the registered result of
    an observe pass of M(safedeploy.compose.health_gate) into the record the status role reports, tabulates and alerts on.
  - Keeps only each health check's name and verdict, never its options (they may hold tokens).
  - Adds C(healthy), C(unhealthy) (why not healthy) and C(drifted) (why it drifted), used by C(status_fail_on).
author:
  - safedeploy.compose contributors (@safedeploy)
options:
  _input:
    description: The registered result of M(safedeploy.compose.stack_status).
    type: dict
    required: true
  gate:
    description: The registered result of M(safedeploy.compose.health_gate), or a skipped task's result.
    type: dict
  host:
    description: The inventory host name recorded in the record.
    type: str
  project:
    description: The project name, for a failed stack_status that did not return it.
    type: str
'''

EXAMPLES = r'''
- name: Keep the status of one stack
  ansible.builtin.set_fact:
    records: "{{ records + [status | safedeploy.compose.status_record(gate, inventory_hostname, 'shop')] }}"
'''

RETURN = r'''
_value:
  description:
    - The record - host, project, checked_at, ledger, current, last_good, last_rollout, state, services, drift, files,
      lock, logs, disk, error, health_checks, containers_healthy, healthy, unhealthy, drifted.
  type: dict
'''

from ansible_collections.safedeploy.compose.plugins.module_utils._status import status_record


class FilterModule(object):

    def filters(self):
        return {'status_record': status_record}
