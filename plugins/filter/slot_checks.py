# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
name: slot_checks
short_description: A stack's health checks, aimed at the slot that runs the new release of its routed services
version_added: 0.4.0
description:
  - The checks of M(safedeploy.compose.health_gate) for a release whose routed services run in slot O(slot).
  - An C(http) or C(tcp) check of this host on a route's public port probes the slot's loopback port instead (the
    public port still reaches the release that serves), the project's C(containers) check leaves the routed services
    out, and a C(containers) check of the slot's project C(<project>-<slot>) is added on the routed services'
    O(digests).
author:
  - safedeploy.compose contributors (@safedeploy)
options:
  _input:
    description: The checks.
    type: list
    elements: dict
    required: true
  project:
    description: The compose project.
    type: str
    required: true
  routes:
    description: The stack's routes (C(service), C(port), optional C(slot_ports)).
    type: list
    elements: dict
    required: true
  slot:
    description: The slot of the release.
    type: str
    choices: [blue, green]
    required: true
  digests:
    description: "The release's digests (C({service: digest})), for the slot's containers check."
    type: dict
  only_slot:
    description: Only the checks aimed at the slot (the probes moved to its ports and its containers check).
    type: bool
    default: false
'''

EXAMPLES = r'''
- name: Gate the green slot
  safedeploy.compose.health_gate:
    checks: "{{ checks | safedeploy.compose.slot_checks('shop', routes, 'green', pin.digests) }}"
'''

RETURN = r'''
_value:
  description: The checks, rewritten.
  type: list
  elements: dict
'''

from ansible_collections.safedeploy.compose.plugins.module_utils._slots import slot_checks


class FilterModule(object):
    def filters(self):
        return {'slot_checks': slot_checks}
