#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: traffic_canary
short_description: Judge a canary server of the traffic proxy from its counters over a window
version_added: 0.2.0
description:
  - Observes one route of the running HAProxy for O(window) seconds and gives the verdict on its canary, the server
    (C(blue) or C(green)) that takes a share of the traffic by its weight; the other server is the stable one.
  - Reads the C(show stat) counters of both servers through the runtime API at the start, at most a second apart
    during the window, and at its end, and judges the canary from the differences. It changes nothing.
  - "Requests of a server on an HTTP route: its responses of every class (C(hrsp_1xx) to C(hrsp_5xx), C(hrsp_other))
    plus its connection errors (C(econ)) and response errors (C(eresp)). Errors: C(hrsp_5xx) plus C(econ) plus
    C(eresp). On a TCP route (no response classes) the requests are the sessions (C(stot)) and the errors C(econ)
    plus C(eresp). The error ratio is errors divided by requests."
  - "The verdict is V(fail) when the canary is C(DOWN) at any reading (its health checks fail), whatever else.
    Otherwise it is V(inconclusive) when the canary served fewer than O(min_requests) requests; then O(inconclusive)
    decides. Otherwise it is V(fail) when the canary exceeds any limit: O(max_error_ratio), O(max_error_ratio_delta)
    (against the stable server's error ratio), O(max_latency_ms), O(max_latency_ratio); and V(pass) when it exceeds
    none. Every limit exceeded is named, with its numbers, in RV(reasons)."
  - A fail verdict does not fail the task; the caller decides (for example by counting failed windows). The task fails
    only on bad options, a runtime API that does not answer, or a route or server HAProxy does not have.
  - HAProxy keeps its counters in the worker's memory, so a reload or C(clear counters all) starts them from zero.
    A window with such a reset in it is not judged; the window starts again at the first reading after the reset
    (within O(max_window)) and the module warns.
author:
  - safedeploy.compose contributors (@safedeploy)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - The module changes nothing, so check mode observes the window and returns the verdict as a normal run does.
  diff_mode:
    support: none
  idempotent:
    description:
      - It never changes anything and always reports C(changed=false). Two runs observe two windows, and their
        verdicts may differ as the traffic does.
    support: full
  platform:
    support: full
    platforms: posix
options:
  route:
    description: The route (the backend) whose canary is judged; it must have both servers C(blue) and C(green).
    type: str
    required: true
  canary:
    description: The server under trial. The other server of the route is the stable one it is compared with.
    type: str
    choices: [blue, green]
    required: true
  window:
    description:
      - Seconds to observe. The counters at its end are compared with those at its start.
      - The canary's share of the traffic times the request rate times O(window) should be well above
        O(min_requests).
    type: float
    default: 30
  max_error_ratio:
    description: The most the canary's errors divided by its requests may be, from 0 to 1 (V(0.01) is 1%).
    type: float
    default: 0.01
  max_error_ratio_delta:
    description:
      - The most the canary's error ratio may exceed the stable server's, from 0 to 1.
      - Not applied when the stable server served no request in the window.
    type: float
    default: 0.01
  max_latency_ms:
    description:
      - The most the canary's average response time may be, in milliseconds. The average is HAProxy's C(rtime), over
        the server's last 1024 responses; it can include responses from before the window.
      - Not applied on a TCP route (HAProxy measures no response time there). Without it, no absolute limit.
    type: int
  max_latency_ratio:
    description:
      - The most the canary's average response time (C(rtime)) may be, as a multiple of the stable server's.
      - Not applied when the stable server's C(rtime) is 0 (no response yet, or under a millisecond), nor on a TCP
        route. C(rtime) counts whole milliseconds, so with fast servers the ratio is coarse; pair it with
        O(max_latency_ms). Without it, no relative limit.
    type: float
  min_requests:
    description:
      - Fewest canary requests in the window that make a verdict; fewer make it V(inconclusive).
    type: int
    default: 20
  inconclusive:
    description:
      - What too few requests mean.
      - V(fail) stops after the window with the verdict V(inconclusive) and RV(passed=false).
      - V(pass) stops after the window with the verdict V(inconclusive) and RV(passed=true).
      - V(extend) observes another window, comparing with the counters of the first reading, until the canary has
        served O(min_requests) requests or O(max_window) seconds have passed; then an inconclusive verdict has
        RV(passed=false).
    type: str
    choices: [fail, pass, extend]
    default: extend
  max_window:
    description:
      - The most seconds the whole observation may take, with O(inconclusive=extend) or after a counter reset. At least
        O(window).
      - Without it, three times O(window).
    type: float
  runtime_socket:
    description: The Unix socket of HAProxy's runtime API.
    type: path
    default: /run/haproxy/admin.sock
  timeout:
    description: Seconds one runtime API command may take.
    type: float
    default: 5
notes:
  - The task takes O(window) seconds, or up to O(max_window).
  - Set the canary's share first, for example with the C(weight) of M(safedeploy.compose.traffic_server), and make
    sure both servers are up.
seealso:
  - module: safedeploy.compose.traffic_server
  - module: safedeploy.compose.traffic_proxy
'''

EXAMPLES = r'''
- name: Give green, the canary, a quarter of shop's traffic
  safedeploy.compose.traffic_server:
    route: shop
    server: green
    weight: 33

- name: Judge green over 30 seconds; at most 1% errors and 300 ms
  safedeploy.compose.traffic_canary:
    route: shop
    canary: green
    window: 30
    max_error_ratio: 0.01
    max_latency_ms: 300
  register: canary

- name: Stop the rollout when the canary failed
  ansible.builtin.fail:
    msg: "The canary failed: {{ canary.reasons | join('; ') }}"
  when: not canary.passed

- name: Judge blue over 10-second windows until it has served 100 requests, for at most a minute
  safedeploy.compose.traffic_canary:
    route: api
    canary: blue
    window: 10
    min_requests: 100
    inconclusive: extend
    max_window: 60
    max_latency_ratio: 1.5
  register: canary
'''

RETURN = r'''
verdict:
  description:
    - V(pass), V(fail) or V(inconclusive) (too few canary requests, or the observation ended on a counter reset).
  returned: always
  type: str
  sample: fail
passed:
  description:
    - Whether the canary may go on; true for V(pass), and for V(inconclusive) with O(inconclusive=pass).
  returned: always
  type: bool
  sample: false
reasons:
  description:
    - Why the verdict is not V(pass), one sentence each, naming the numbers and the limit; empty on a pass.
  returned: always
  type: list
  elements: str
  sample: ["the canary green's error ratio is 0.25 (8 errors in 32 requests), above max_error_ratio 0.01"]
canary:
  description:
    - What the canary did in the window.
    - C(server) its name; C(requests), C(errors) and C(error_ratio) (null without requests) in the window; C(rtime_ms)
      HAProxy's average response time at the end (null on a TCP route); C(status) its C(show stat) status at the end.
  returned: always
  type: dict
  sample: {server: green, requests: 32, errors: 8, error_ratio: 0.25, rtime_ms: 4, status: UP}
stable:
  description: What the stable server did in the window, with the keys of RV(canary).
  returned: always
  type: dict
  sample: {server: blue, requests: 96, errors: 0, error_ratio: 0.0, rtime_ms: 3, status: UP}
window:
  description:
    - Seconds between the two readings the verdict compares; more than O(window) after an extension, counted from
      the restart after a counter reset.
  returned: always
  type: float
  sample: 30.004
'''

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.safedeploy.compose.plugins.module_utils._canary import (
    INCONCLUSIVE_POLICIES,
    SERVER_NAMES,
    observe,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._haproxy import HAProxyRuntimeError, RuntimeAPI


def reader(api, route):
    """A function reading one snapshot of the route: its `show stat` entry, the answering worker's pid, the time."""
    def read():
        worker = api.info().get('Pid')
        stats = api.stats()
        entry = stats.get(route)
        if entry is None:
            known = ', '.join(sorted(name for name in stats if name)) or 'none'
            raise HAProxyRuntimeError('HAProxy has no route %s (its routes: %s); the routes are set with traffic_proxy'
                                      % (route, known))
        for server in SERVER_NAMES:
            if server not in entry['servers']:
                raise HAProxyRuntimeError('route %s has no server %s, and a canary needs both blue and green: add %s '
                                          'to the route with traffic_proxy' % (route, server, server))
        return dict(entry, worker=worker, at=time.monotonic())
    return read


def bad_options(params):
    """The first option out of range, as a message naming the fix; None when all are valid."""
    window = params['window']
    if window <= 0:
        return 'window must be more than 0 seconds, got %s: give the seconds to observe the canary' % window
    if params['max_window'] is not None and params['max_window'] < window:
        return ('max_window (%s s) must be at least window (%s s): raise max_window or shorten window'
                % (params['max_window'], window))
    for name in ('max_error_ratio', 'max_error_ratio_delta'):
        if not 0 <= params[name] <= 1:
            return '%s must be a fraction from 0 to 1 (0.01 is 1%%), got %s' % (name, params[name])
    if params['max_latency_ms'] is not None and params['max_latency_ms'] < 1:
        return 'max_latency_ms must be at least 1, got %d: give milliseconds, or leave it out' % params['max_latency_ms']
    if params['max_latency_ratio'] is not None and params['max_latency_ratio'] <= 0:
        return ('max_latency_ratio must be more than 0, got %s: give a multiple of the stable server\'s response time '
                '(1.5 allows 50%% more), or leave it out' % params['max_latency_ratio'])
    if params['min_requests'] < 1:
        return 'min_requests must be at least 1, got %d' % params['min_requests']
    if params['timeout'] <= 0:
        return 'timeout must be more than 0 seconds, got %s' % params['timeout']
    return None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            route=dict(type='str', required=True),
            canary=dict(type='str', required=True, choices=list(SERVER_NAMES)),
            window=dict(type='float', default=30.0),
            max_error_ratio=dict(type='float', default=0.01),
            max_error_ratio_delta=dict(type='float', default=0.01),
            max_latency_ms=dict(type='int'),
            max_latency_ratio=dict(type='float'),
            min_requests=dict(type='int', default=20),
            inconclusive=dict(type='str', default='extend', choices=list(INCONCLUSIVE_POLICIES)),
            max_window=dict(type='float'),
            runtime_socket=dict(type='path', default='/run/haproxy/admin.sock'),
            timeout=dict(type='float', default=5.0),
        ),
        supports_check_mode=True,
    )
    params = module.params
    message = bad_options(params)
    if message:
        module.fail_json(msg=message)
    route, canary = params['route'], params['canary']
    api = RuntimeAPI(params['runtime_socket'], timeout=params['timeout'])
    try:
        judgement, notes = observe(
            reader(api, route), canary, params['window'], max_window=params['max_window'],
            inconclusive=params['inconclusive'], max_error_ratio=params['max_error_ratio'],
            max_error_ratio_delta=params['max_error_ratio_delta'], max_latency_ms=params['max_latency_ms'],
            max_latency_ratio=params['max_latency_ratio'], min_requests=params['min_requests'])
    except HAProxyRuntimeError as exc:
        module.fail_json(msg='cannot observe the canary %s of route %s: %s' % (canary, route, exc))
    for note in notes:
        module.warn('traffic_canary: %s' % note)
    latency_limits = params['max_latency_ms'] is not None or params['max_latency_ratio'] is not None
    if latency_limits and judgement['canary']['rtime_ms'] is None:
        module.warn('traffic_canary: route %s is a TCP route, where HAProxy measures no response time: '
                    'max_latency_ms and max_latency_ratio were not applied' % route)
    module.exit_json(changed=False, verdict=judgement['verdict'], passed=judgement['passed'],
                     reasons=judgement['reasons'], canary=judgement['canary'], stable=judgement['stable'],
                     window=judgement['window'])


if __name__ == '__main__':
    main()
