# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
name: status_failing
short_description: Why a host fails its status run under a status_fail_on setting
version_added: 0.4.0
description:
  - From the status records of one host (from P(safedeploy.compose.status_record#filter)), one line per stack that fails
    under O(fail_on), naming the stack and each reason; an empty list when the host passes.
  - V(unhealthy) fails a stack that is not healthy or whose status could not be read; V(drift) also fails a stack with
    any drift; V(none) never fails.
author:
  - safedeploy.compose contributors (@safedeploy)
options:
  _input:
    description: The host's status records.
    type: list
    elements: dict
    required: true
  fail_on:
    description: What fails a stack.
    type: str
    choices: [none, unhealthy, drift]
    required: true
'''

EXAMPLES = r'''
- name: Fail the host when a stack is unhealthy
  ansible.builtin.fail:
    msg: "{{ records | safedeploy.compose.status_failing('unhealthy') | join(' | ') }}"
  when: records | safedeploy.compose.status_failing('unhealthy') | length > 0
'''

RETURN = r'''
_value:
  description: One line per failing stack.
  type: list
  elements: str
'''

from ansible.errors import AnsibleFilterError

from ansible_collections.safedeploy.compose.plugins.module_utils._status import failing


def status_failing(records, fail_on):
    try:
        return failing(records, fail_on)
    except ValueError as exc:
        raise AnsibleFilterError(str(exc))


class FilterModule(object):

    def filters(self):
        return {'status_failing': status_failing}
