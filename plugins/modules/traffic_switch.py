#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: traffic_switch
short_description: Move the traffic of a route of the traffic proxy to its blue or green server, without a reload
version_added: 0.2.0
description:
  - Moves the new traffic of one route of the running HAProxy to its server O(to) (C(blue) or C(green)), wholly or in
    part (O(share)), through HAProxy's runtime API, at once and without a reload. The route and both its servers are
    set up by M(safedeploy.compose.traffic_proxy).
  - A server must pass HAProxy's own health checks before it takes traffic. A server in V(maint) first goes to
    V(drain) (its checks run, it takes no traffic) with its health reset, so that it is up only after C(rise) checks
    that pass now; the module waits up to O(up_timeout) seconds for that. HAProxy takes a server leaving maint as up
    at once, on the strength of the check result from before maint, which says nothing about whether it answers now.
    A server without health checks (no C(check) on its line) is not reset and passes as soon as it is out of maint.
  - When the server does not pass its checks in time, it goes back to V(maint), nothing is switched and the task
    fails naming the server, its status and its last check result.
  - With O(share=100) the other server then goes to V(drain) (it takes no new traffic and finishes what it has), the
    module waits up to O(drain_timeout) seconds for its sessions to end, and puts it in V(maint) (or leaves it in
    V(drain), still checked, with O(leave=drain)). Requests still in flight at the timeout are not cut by HAProxy; the
    server takes nothing new.
  - Below 100 both servers take traffic, O(to) with the weight O(share) and the other with C(100 - share); at V(0)
    O(to) is ready with weight 0 (it takes no new traffic) and the other takes it all.
  - Capacity is added before it is removed, so that some server takes new traffic at every moment.
  - After a change the servers' states are saved into O(server_state_file), which HAProxy loads at every start and
    reload, so that the switch survives them.
author:
  - safedeploy.compose contributors (@safedeploy)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Check mode reads both servers and returns the plan (RV(plan)), whether it would change anything and the
        servers' states and weights after it; it changes nothing and waits for nothing.
  diff_mode:
    support: full
    details:
      - The diff is both servers' state and weight before and after.
  idempotent:
    description:
      - When the servers already are as asked, nothing is written and the task reports C(changed=false).
    support: full
  platform:
    support: full
    platforms: posix
options:
  route:
    description: The route (the frontend and the backend named after it) whose traffic moves.
    type: str
    required: true
  to:
    description: The server that takes the traffic.
    type: str
    choices: [blue, green]
    required: true
  share:
    description:
      - The percent of new traffic O(to) takes, 0 to 100. V(100) takes the other server out (drain, then maint);
        below 100 both servers are ready, weighted O(share) and C(100 - share).
    type: int
    default: 100
  leave:
    description:
      - With O(share=100), what the other server becomes once its sessions ended (or O(drain_timeout) passed).
      - V(maint) takes nothing and is not checked; a later switch back to it resets its health and waits for fresh
        checks (C(rise) of them) before it takes traffic.
      - V(drain) takes no new traffic but stays checked, so a switch back to it needs no fresh checks; its health is
        current. For a previous slot kept running for a fast rollback.
    type: str
    choices: [maint, drain]
    default: maint
  drain_timeout:
    description:
      - Seconds to wait for the sessions of the server leaving (C(scur) of C(show stat)) to end before it goes to
        V(maint) all the same. V(0) does not wait.
    type: int
    default: 30
  up_timeout:
    description:
      - Seconds to wait for a server that is to take traffic to pass HAProxy's health checks (C(rise) checks in a row
        for a server coming out of maint).
    type: int
    default: 30
  runtime_socket:
    description: The Unix socket of HAProxy's runtime API.
    type: path
    default: /run/haproxy/admin.sock
  server_state_file:
    description:
      - After a change, C(show servers state) is saved into this file, which the configuration of
        M(safedeploy.compose.traffic_proxy) tells HAProxy to load at every start and reload, so that the switch
        survives reloads and restarts. Use the same path as its O(safedeploy.compose.traffic_proxy#module:server_state_file).
      - An empty string saves nothing; the switch then lasts until the next reload.
    type: path
    default: /var/lib/haproxy/safedeploy-server-state
  timeout:
    description: Seconds one runtime API command may take.
    type: float
    default: 5
notes:
  - HAProxy 2.6 shows a server it takes as up with the status C(UP), or C(DRAIN) when it is drained; a passing check
    is C(L4OK), C(L6OK) or C(L7OK). A status with a count (C(UP 1/3), C(DOWN 1/2)) is a server between two states.
  - The health reset of a server coming out of maint (C(set server ... health down)) shows in HAProxy's log as that
    server going down; it took no traffic then.
seealso:
  - module: safedeploy.compose.traffic_proxy
  - module: safedeploy.compose.traffic_server
'''

EXAMPLES = r'''
- name: Move the shop's traffic to green; blue finishes its requests, then goes to maint
  safedeploy.compose.traffic_switch:
    route: shop
    to: green
  register: flip

- name: Send a quarter of the shop's new traffic to green, the rest to blue
  safedeploy.compose.traffic_switch:
    route: shop
    to: green
    share: 25

- name: Roll back to blue, giving long requests on green two minutes to finish
  safedeploy.compose.traffic_switch:
    route: shop
    to: blue
    drain_timeout: 120
    up_timeout: 60
'''

RETURN = r'''
route:
  description: The route.
  returned: always
  type: str
  sample: shop
to:
  description: The server that takes the traffic.
  returned: always
  type: str
  sample: green
share:
  description: The percent of new traffic O(to) takes.
  returned: always
  type: int
  sample: 100
plan:
  description:
    - The steps from the servers as they were to the servers as asked, in the order they are (or, in check mode,
      would be) applied; empty when they already are as asked.
    - Each step has C(server), C(from) and C(to) (each C(state) and C(weight)) and C(wait), what the step waits for
      once applied; V(checks) (the server passes its health checks), V(sessions) (its sessions end) or null. A step
      whose C(from) and C(to) are equal only waits.
  returned: always
  type: list
  elements: dict
  sample:
    - {server: green, from: {state: maint, weight: 100}, to: {state: drain, weight: 100}, wait: checks}
    - {server: green, from: {state: drain, weight: 100}, to: {state: ready, weight: 100}, wait: null}
    - {server: blue, from: {state: ready, weight: 100}, to: {state: drain, weight: 100}, wait: sessions}
    - {server: blue, from: {state: drain, weight: 100}, to: {state: maint, weight: 100}, wait: null}
servers:
  description:
    - Per server, C(before) and C(after) the task, each with C(state) (V(ready), V(drain), V(maint)), C(weight), C(port)
      (its loopback port), C(checks) (whether HAProxy health-checks it), C(status) and C(check_status) (C(show stat))
      and C(scur) (its sessions).
    - In check mode C(after) holds the states and weights the plan leads to, and C(status), C(check_status) and C(scur)
      are null.
  returned: always
  type: dict
  sample:
    blue:
      before: {state: ready, weight: 100, port: 18080, checks: true, status: UP, check_status: L7OK, scur: 3}
      after: {state: maint, weight: 100, port: 18080, checks: true, status: MAINT, check_status: null, scur: 0}
    green:
      before: {state: maint, weight: 100, port: 18081, checks: true, status: MAINT, check_status: null, scur: 0}
      after: {state: ready, weight: 100, port: 18081, checks: true, status: UP, check_status: L7OK, scur: 2}
events:
  description:
    - What happened, in order, for a release report. Each event has C(at) (seconds since the task started, to the
      millisecond), C(server) and C(action).
    - V(drain), V(ready), V(maint) (the server was put in that state; C(from) is the state before); V(weight) (C(from)
      and C(to) are the weights); V(up) (the server passes its checks; C(status), C(check_status), C(waited) seconds);
      V(up_timeout) (it did not pass them in time; the same keys); V(drained) (its sessions ended; C(waited));
      V(drain_timeout) (they had not ended in time; C(in_flight) sessions left, C(waited)).
    - Empty in check mode.
  returned: always
  type: list
  elements: dict
  sample:
    - {at: 0.004, server: green, action: drain, from: maint}
    - {at: 4.112, server: green, action: up, status: DRAIN, check_status: L7OK, waited: 4.103}
    - {at: 4.114, server: green, action: ready, from: drain}
    - {at: 4.115, server: blue, action: drain, from: ready}
    - {at: 5.322, server: blue, action: drained, waited: 1.207}
    - {at: 5.323, server: blue, action: maint, from: drain}
drained:
  description:
    - Whether the sessions of the server that left ended before it went to maint. Null when no server left in this
      task.
  returned: always
  type: bool
  sample: true
in_flight:
  description: Sessions the server that left still held when the drain ended (0 once drained); null when none left.
  returned: always
  type: int
  sample: 0
drain_seconds:
  description: Seconds the drain of the server that left took; null when none left.
  returned: always
  type: float
  sample: 1.207
elapsed:
  description: Seconds the task took.
  returned: always
  type: float
  sample: 5.331
diff:
  description: Both servers' state and weight before and after.
  returned: when diff mode is enabled
  type: dict
  sample:
    before: {blue: {state: ready, weight: 100}, green: {state: maint, weight: 100}}
    after: {blue: {state: maint, weight: 100}, green: {state: ready, weight: 100}}
'''

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.safedeploy.compose.plugins.module_utils._haproxy import (
    NAME_RE,
    SERVER_NAMES,
    HAProxyRuntimeError,
    RuntimeAPI,
    admin_state,
    save_server_state,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._traffic_switch import (
    has_checks,
    passes_checks,
    plan,
    restart_checks,
)

POLL_SECONDS = 0.1


class SwitchFailed(Exception):
    """The switch stopped; the message names the server, the cause and what to do."""


class Switch(object):
    """Walks the plan on one route through the runtime API, recording every change and wait as an event."""

    def __init__(self, api, route, started):
        self.api = api
        self.route = route
        self.started = started
        self.events = []

    def clock(self):
        return round(time.monotonic() - self.started, 3)

    def event(self, server, action, **details):
        entry = dict(at=self.clock(), server=server, action=action)
        entry.update(details)
        self.events.append(entry)

    def read(self):
        stats = self.api.stats().get(self.route)
        if stats is None:
            raise SwitchFailed('HAProxy has no route %s: run the traffic role or traffic_proxy with it' % self.route)
        rows = dict((row.get('srv_name'), row) for row in self.api.servers_state(self.route))
        servers = {}
        for name in SERVER_NAMES:
            if name not in stats['servers'] or name not in rows:
                raise SwitchFailed('route %s has no server %s in the proxy: run the traffic role or traffic_proxy with '
                                   '%s in the route' % (self.route, name, name))
            stat = stats['servers'][name]
            row = rows[name]
            servers[name] = dict(state=admin_state(row['srv_admin_state']), weight=row['srv_uweight'],
                                 port=row.get('srv_port'), checks=has_checks(row.get('srv_check_state')),
                                 status=stat.get('status'), check_status=stat.get('check_status'), scur=stat.get('scur'))
        return servers

    def stat(self, name):
        return (self.api.stats().get(self.route) or {}).get('servers', {}).get(name) or {}

    def apply(self, name, before, after):
        if after['weight'] != before['weight']:
            self.api.set_server_weight(self.route, name, after['weight'])
            self.event(name, 'weight', **{'from': before['weight'], 'to': after['weight']})
        if after['state'] != before['state']:
            self.api.set_server_state(self.route, name, after['state'])
            self.event(name, after['state'], **{'from': before['state']})

    def wait_checks(self, name, checks, timeout):
        """(passed, stat, seconds waited) once the server passes its checks or `timeout` seconds passed."""
        start = time.monotonic()
        while True:
            stat = self.stat(name)
            waited = round(time.monotonic() - start, 3)
            if passes_checks(stat, checks):
                self.event(name, 'up', status=stat.get('status'), check_status=stat.get('check_status'), waited=waited)
                return True, stat, waited
            if waited >= timeout:
                self.event(name, 'up_timeout', status=stat.get('status'), check_status=stat.get('check_status'),
                           waited=waited)
                return False, stat, waited
            time.sleep(POLL_SECONDS)

    def wait_sessions(self, name, timeout, since):
        """(drained, sessions left, seconds since `since`) once the server holds no session or `timeout` passed."""
        while True:
            scur = self.stat(name).get('scur') or 0
            waited = round(time.monotonic() - since, 3)
            if scur == 0:
                self.event(name, 'drained', waited=waited)
                return True, 0, waited
            if waited >= timeout:
                self.event(name, 'drain_timeout', in_flight=scur, waited=waited)
                return False, scur, waited
            time.sleep(POLL_SECONDS)


def taking_traffic(servers):
    names = [name for name in SERVER_NAMES if servers[name]['state'] == 'ready' and servers[name]['weight'] > 0]
    return ' and '.join(names) if names else 'no server (none is ready with a weight above 0)'


def settings(servers):
    return dict((name, dict(state=servers[name]['state'], weight=servers[name]['weight'])) for name in SERVER_NAMES)


def main():
    started = time.monotonic()
    module = AnsibleModule(
        argument_spec=dict(
            route=dict(type='str', required=True),
            to=dict(type='str', required=True, choices=['blue', 'green']),
            share=dict(type='int', default=100),
            leave=dict(type='str', default='maint', choices=['maint', 'drain']),
            drain_timeout=dict(type='int', default=30),
            up_timeout=dict(type='int', default=30),
            runtime_socket=dict(type='path', default='/run/haproxy/admin.sock'),
            server_state_file=dict(type='path', default='/var/lib/haproxy/safedeploy-server-state'),
            timeout=dict(type='float', default=5.0),
        ),
        supports_check_mode=True,
    )
    params = module.params
    route, to, share = params['route'], params['to'], params['share']
    result = dict(changed=False, route=route, to=to, share=share, plan=[], servers={}, events=[], drained=None,
                  in_flight=None, drain_seconds=None, elapsed=0.0)

    def finish(failed_msg=None):
        result['elapsed'] = round(time.monotonic() - started, 3)
        if failed_msg:
            module.fail_json(msg=failed_msg, **result)
        module.exit_json(**result)

    if not NAME_RE.match(route):
        module.fail_json(msg='route %r is not a route name: a letter, then up to 62 letters, digits, _ or -' % route,
                         **result)
    if not 0 <= share <= 100:
        module.fail_json(msg='share is the percent of new traffic %s takes, from 0 to 100; got %d' % (to, share), **result)
    for option in ('drain_timeout', 'up_timeout'):
        if params[option] < 0:
            module.fail_json(msg='%s is a number of seconds, 0 or more; got %d' % (option, params[option]), **result)
    if params['timeout'] <= 0:
        module.fail_json(msg='timeout is the seconds one runtime API command may take, above 0; got %s'
                             % params['timeout'], **result)

    switch = Switch(RuntimeAPI(params['runtime_socket'], timeout=params['timeout']), route, started)
    try:
        before = switch.read()
    except (SwitchFailed, HAProxyRuntimeError) as exc:
        finish('Cannot read route %s: %s' % (route, exc))
    steps = plan(to, share, before, params['leave'])
    result['plan'] = steps
    result['changed'] = bool(steps)
    predicted = settings(before)
    for step in steps:
        predicted[step['server']] = dict(step['to'])
    if module._diff:
        result['diff'] = dict(before=settings(before), after=predicted)
    if module.check_mode or not steps:
        for name in SERVER_NAMES:
            after = dict(before[name])
            if steps:
                after.update(predicted[name], status=None, check_status=None, scur=None)
            result['servers'][name] = dict(before=before[name], after=after)
        if not steps:
            for name in SERVER_NAMES:
                if before[name]['state'] == 'ready' and not passes_checks(before[name], before[name]['checks']):
                    module.warn('%s of route %s is ready but does not pass its health checks (status %s, check_status '
                                '%s): HAProxy sends it no traffic' % (name, route, before[name]['status'],
                                                                      before[name]['check_status']))
        finish()

    raised = []  # servers this task took out of maint to check them; they go back there if the switch fails
    try:
        for step in steps:
            name = step['server']
            switch.apply(name, step['from'], step['to'])
            if step['wait'] == 'checks':
                if step['from']['state'] == 'maint':
                    raised.append(name)
                    if before[name]['checks']:
                        restart_checks(switch.api, route, name)
                passed, stat, waited = switch.wait_checks(name, before[name]['checks'], params['up_timeout'])
                if not passed:
                    for back in raised:
                        switch.api.set_server_state(route, back, 'maint')
                        switch.event(back, 'maint', **{'from': 'drain'})
                    where = ('it is back in maint and ' if name in raised else '')
                    raise SwitchFailed(
                        '%s of route %s did not pass its health checks within %d s (status %s, check_status %s): %s'
                        'nothing was switched; the traffic stays on %s. Make %s answer its health check (is its '
                        'service running on port %s?) and run again, or raise up_timeout'
                        % (name, route, params['up_timeout'], stat.get('status'), stat.get('check_status'), where,
                           taking_traffic(before), name, before[name]['port']))
            elif step['wait'] == 'sessions':
                drained, in_flight, seconds = switch.wait_sessions(name, params['drain_timeout'], time.monotonic())
                result.update(drained=drained, in_flight=in_flight, drain_seconds=seconds)
    except SwitchFailed as exc:
        # the servers are as they were (the ones taken out of maint are back there)
        result['changed'] = False
        result['events'] = switch.events
        try:
            now = switch.read()
        except (SwitchFailed, HAProxyRuntimeError):
            now = before
        result['servers'] = dict((name, dict(before=before[name], after=now[name])) for name in SERVER_NAMES)
        if module._diff:
            result['diff']['after'] = settings(now)
        finish(str(exc))
    except HAProxyRuntimeError as exc:
        result['changed'] = bool(switch.events)
        result['events'] = switch.events
        finish('The switch of route %s to %s stopped half-way: %s. The events say what was done; run the task again '
               'once the runtime API answers' % (route, to, exc))
    result['events'] = switch.events
    try:
        after = switch.read()
    except (SwitchFailed, HAProxyRuntimeError) as exc:
        finish('Route %s was switched to %s but could not be read afterwards: %s' % (route, to, exc))
    result['servers'] = dict((name, dict(before=before[name], after=after[name])) for name in SERVER_NAMES)
    if params['server_state_file']:
        try:
            save_server_state(switch.api, params['server_state_file'])
        except (HAProxyRuntimeError, OSError) as exc:
            finish('Route %s was switched to %s, but the servers\' states could not be saved to %s (%s): a reload '
                   'would start them as the configuration says. Fix the path or its permissions and run again, or '
                   'set server_state_file to an empty string' % (route, to, params['server_state_file'], exc))
    finish()


if __name__ == '__main__':
    main()
