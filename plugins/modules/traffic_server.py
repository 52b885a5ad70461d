#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: traffic_server
short_description: Set the state or weight of one server of the traffic proxy, and read its counters
version_added: 0.2.0
description:
  - Changes one server (C(blue) or C(green)) of one route of the running HAProxy through its runtime API, at once and
    without a reload. V(drain) takes no new traffic and lets the requests in flight finish; V(maint) takes nothing.
  - Reads the server's counters (C(show stat)) before and after.
  - After a change the servers' states are saved into O(server_state_file), which the configuration of
    M(safedeploy.compose.traffic_proxy) tells HAProxy to load at every start and reload, so that the change survives
    them. Without that file the change lasts until the next reload, which starts from the configuration file.
  - Without O(state) and O(weight) the module only reads.
author:
  - safedeploy.compose contributors (@safedeploy)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Check mode reads the server and says whether it would change; it changes nothing.
  diff_mode:
    support: full
    details:
      - The diff is the server's state and weight before and after.
  idempotent:
    description:
      - When run twice with the same options, the second run changes nothing and reports C(changed=false).
    support: full
  platform:
    support: full
    platforms: posix
options:
  route:
    description: The route (the backend) the server belongs to.
    type: str
    required: true
  server:
    description: The server.
    type: str
    choices: [blue, green]
    required: true
  state:
    description:
      - V(ready) takes traffic by its weight, V(drain) takes no new traffic, V(maint) takes no traffic.
    type: str
    choices: [ready, drain, maint]
  weight:
    description: The server's share of new traffic, 0 to 256.
    type: int
  runtime_socket:
    description: The Unix socket of HAProxy's runtime API.
    type: path
    default: /run/haproxy/admin.sock
  server_state_file:
    description:
      - After a change, C(show servers state) is saved into this file, for HAProxy to load at its next start or reload.
        Use the same path as the O(safedeploy.compose.traffic_proxy#module:server_state_file) of
        M(safedeploy.compose.traffic_proxy).
      - An empty string saves nothing; the change then lasts until the next reload.
    type: path
    default: /var/lib/haproxy/safedeploy-server-state
  timeout:
    description: Seconds one runtime API command may take.
    type: float
    default: 5
seealso:
  - module: safedeploy.compose.traffic_proxy
  - module: safedeploy.compose.traffic_switch
'''

EXAMPLES = r'''
- name: Drain blue (its requests in flight finish; new ones go to green)
  safedeploy.compose.traffic_server:
    route: shop
    server: blue
    state: drain

- name: Give green a tenth of blue's share
  safedeploy.compose.traffic_server:
    route: shop
    server: green
    weight: 10

- name: Read blue's counters
  safedeploy.compose.traffic_server:
    route: shop
    server: blue
  register: blue
'''

RETURN = r'''
state:
  description: The server's administrative state after the task (V(ready), V(drain) or V(maint)).
  returned: always
  type: str
  sample: drain
weight:
  description: The server's weight after the task.
  returned: always
  type: int
  sample: 100
stats:
  description:
    - The server's counters after the task (C(show stat)); C(status) (C(UP), C(DOWN), C(DRAIN), C(MAINT)), C(scur)
      (sessions now), C(stot), C(hrsp_2xx), C(hrsp_5xx), C(qtime), C(rtime), C(ttime) and more.
  returned: always
  type: dict
  sample: {status: DRAIN, weight: 100, scur: 1, stot: 52, hrsp_2xx: 51, hrsp_5xx: 0, rtime: 3}
before:
  description: The server's state, weight and counters before the task.
  returned: always
  type: dict
  sample: {state: ready, weight: 100, stats: {status: UP, scur: 2}}
diff:
  description: State and weight before and after.
  returned: when diff mode is enabled
  type: dict
  sample: {before: {state: ready, weight: 100}, after: {state: drain, weight: 100}}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.safedeploy.compose.plugins.module_utils._haproxy import (
    HAProxyRuntimeError,
    RuntimeAPI,
    admin_state,
    save_server_state,
)


def read(api, route, server):
    stats = api.stats().get(route)
    if stats is None:
        raise HAProxyRuntimeError('HAProxy has no route %s; the routes are set with traffic_proxy' % route)
    if server not in stats['servers']:
        raise HAProxyRuntimeError('route %s has no server %s; add it to the route with traffic_proxy' % (route, server))
    rows = [row for row in api.servers_state(route) if row.get('srv_name') == server]
    if not rows:
        raise HAProxyRuntimeError('show servers state %s does not list %s' % (route, server))
    return dict(state=admin_state(rows[0]['srv_admin_state']), weight=rows[0]['srv_uweight'], stats=stats['servers'][server])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            route=dict(type='str', required=True),
            server=dict(type='str', required=True, choices=['blue', 'green']),
            state=dict(type='str', choices=['ready', 'drain', 'maint']),
            weight=dict(type='int'),
            runtime_socket=dict(type='path', default='/run/haproxy/admin.sock'),
            server_state_file=dict(type='path', default='/var/lib/haproxy/safedeploy-server-state'),
            timeout=dict(type='float', default=5.0),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params['weight'] is not None and not 0 <= params['weight'] <= 256:
        module.fail_json(msg='weight must be from 0 to 256, got %d' % params['weight'])
    api = RuntimeAPI(params['runtime_socket'], timeout=params['timeout'])
    route, server = params['route'], params['server']
    try:
        before = read(api, route, server)
        want_state = params['state'] or before['state']
        want_weight = before['weight'] if params['weight'] is None else params['weight']
        changed = (want_state, want_weight) != (before['state'], before['weight'])
        after = before
        if changed and not module.check_mode:
            if want_weight != before['weight']:
                api.set_server_weight(route, server, want_weight)
            if want_state != before['state']:
                api.set_server_state(route, server, want_state)
            after = read(api, route, server)
    except HAProxyRuntimeError as exc:
        module.fail_json(msg=str(exc))
    if changed and not module.check_mode and params['server_state_file']:
        try:
            save_server_state(api, params['server_state_file'])
        except (HAProxyRuntimeError, OSError) as exc:
            module.fail_json(msg='%s/%s was changed, but the servers\' states could not be saved to %s (%s): a reload '
                                 'would start them as the configuration says. Fix the path or its permissions and run '
                                 'again, or set server_state_file to an empty string'
                                 % (route, server, params['server_state_file'], exc), changed=True)
    result = dict(changed=changed, state=want_state if module.check_mode else after['state'],
                  weight=want_weight if module.check_mode else after['weight'], stats=after['stats'], before=before)
    if module._diff:
        result['diff'] = dict(before=dict(state=before['state'], weight=before['weight']),
                              after=dict(state=result['state'], weight=result['weight']))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
