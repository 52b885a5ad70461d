# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
name: traffic_routes
short_description: The traffic proxy's routes of the routed services of some stacks
version_added: 0.4.0
description:
  - From entries of C(safedeploy_stacks), the routes of M(safedeploy.compose.traffic_proxy) for every routed service
    (each stack's C(routes)). One route C(<stack>-<service>) on the service's public C(port), its servers C(blue) and
    C(green) on the slot ports (the stack's C(slot_ports), or the ports the collection allocates from the names,
    20000-27999), both starting in maintenance until a rollout moves traffic to one.
  - The keys C(bind), C(mode), C(health_path), C(check_interval), C(rise), C(fall), C(retries), C(retry_on), C(frontend_options) and
    C(backend_options) of a stack's route are passed on.
author:
  - safedeploy.compose contributors (@safedeploy)
options:
  _input:
    description: The stacks (C(safedeploy_stacks) entries, each with C(name) and C(routes)).
    type: list
    elements: dict
    required: true
'''

EXAMPLES = r'''
- name: Run the traffic layer for every routed service of the host
  ansible.builtin.include_role:
    name: safedeploy.compose.traffic
  vars:
    traffic_routes: "{{ safedeploy_stacks | safedeploy.compose.traffic_routes }}"
'''

RETURN = r'''
_value:
  description: The routes, in the stacks' order.
  type: list
  elements: dict
'''

from ansible_collections.safedeploy.compose.plugins.module_utils._slots import proxy_routes


class FilterModule(object):
    def filters(self):
        return {'traffic_routes': proxy_routes}
