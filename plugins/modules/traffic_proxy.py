#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: traffic_proxy
short_description: Own the configuration of the host's traffic proxy (HAProxy) and apply it without dropping connections
version_added: 0.2.0
description:
  - Renders the HAProxy configuration file O(config_path) from O(routes), one frontend and one backend per routed
    service, both named after the route. The frontend listens on the route's public port; the backend holds the
    servers C(blue) and C(green) on loopback ports, each with an active health check.
  - Validates the candidate with C(haproxy -c -f) before anything is replaced. A configuration HAProxy refuses
    leaves the file and the running proxy untouched, and the task fails with HAProxy's alert lines.
  - Replaces the file atomically and only when its text changes.
  - Then makes sure HAProxy runs with it. When it already runs and the file changed, it is reloaded in master-worker
    mode; the new workers take over the listening sockets from the old ones (C(expose-fd listeners) on the runtime
    API socket), and the old workers finish their connections, so no connection is refused or cut. When it does not
    run, it is started.
  - C(haproxy -c) binds no port. When a reload fails all the same (a port taken by another process), the old workers
    keep serving, the previous file is put back and the task fails.
  - After the task, the state of every server is read from HAProxy's runtime API (O(runtime_socket)).
  - The file is the source of truth for each server's state and weight. A reload starts the new workers from it, so a
    change made only through the runtime API lasts until the next reload.
author:
  - safedeploy.compose contributors (@safedeploy)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Check mode renders and validates the configuration (in a temporary file) and says whether the file would
        change and whether HAProxy would be started or reloaded; it writes, starts and reloads nothing.
      - When HAProxy is not installed yet (a check run of a play that installs it), check mode renders the
        configuration without validating it and warns.
  diff_mode:
    support: full
    details:
      - The diff is the text of the configuration file before and after.
  idempotent:
    description:
      - When run twice with the same options, the second run changes nothing and reports C(changed=false).
    support: full
  platform:
    support: full
    platforms: posix
options:
  routes:
    description:
      - The routed services. Each gets a frontend on its public port and a backend with the servers C(blue) and
        C(green).
      - Names, public ports and server ports must be unique; a server port must not be a public port.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description:
          - Name of the route, its frontend and its backend (a letter, then letters, digits, C(_) or C(-)).
          - The runtime API names a server C(<name>/blue) or C(<name>/green).
        type: str
        required: true
      port:
        description: The public port the proxy listens on for this service.
        type: int
        required: true
      bind:
        description: The IPv4 address the proxy listens on, V(0.0.0.0) for every address.
        type: str
        default: 0.0.0.0
      mode:
        description:
          - V(http) balances per request and can check an HTTP path; V(tcp) balances per connection.
        type: str
        choices: [http, tcp]
        default: http
      blue:
        description:
          - The server C(blue), the slot that serves first.
          - C(port) (required) is its loopback port on C(127.0.0.1). C(weight) (0 to 256, default 100) is its share
            of new traffic. C(state) is V(ready) (default), V(drain) (no new traffic; rendered as weight 0) or
            V(maint) (no traffic; rendered as C(disabled)).
        type: dict
        required: true
      green:
        description:
          - The server C(green), the other slot, with the keys of O(routes[].blue). Omit it while the route has one slot.
        type: dict
      health_path:
        description:
          - For an V(http) route, the path HAProxy requests on each server (C(GET)); a 2xx or 3xx answer is healthy.
          - Without it, and for a V(tcp) route, a server is healthy when it accepts a connection.
        type: str
      check_interval:
        description: Milliseconds between two health checks of a server.
        type: int
        default: 2000
      rise:
        description: Consecutive passed checks that bring a server back up.
        type: int
        default: 2
      fall:
        description: Consecutive failed checks that take a server down.
        type: int
        default: 3
      retries:
        description:
          - Times a failed request is retried; every retry goes to another server when the route has one
            (C(option redispatch 1)), so one retry moves a request a failing slot could not serve to the other slot.
          - Each retry costs the failing request one more attempt, also when only one server takes traffic (a request
            the live release answers with a 500 is then tried twice).
        type: int
        default: 1
      retry_on:
        description:
          - For an V(http) route, what makes HAProxy retry a request (its C(retry-on) keywords), for example
            V(conn-failure), V(empty-response), V(response-timeout), V(500), V(502), V(503), V(504) or V(none).
          - Not set, V([conn-failure, empty-response, 500, 502, 503, 504]), so a canary or a new slot that refuses a
            connection, closes it without an answer or answers 500/502/503/504 costs the client nothing while the
            other server answers. The failing server counts each such request in C(wredis), which
            M(safedeploy.compose.traffic_canary) counts as its error.
          - Requests whose method is not C(GET), C(HEAD) or C(OPTIONS) are retried only when their connection failed
            (the server never saw them); a C(POST) answered 500 may have done its work, so it is never sent twice.
            Requests with a body larger than HAProxy's buffer (16 kB) are not retried.
          - Must not be set on a V(tcp) route, which retries failed connections only.
        type: list
        elements: str
      frontend_options:
        description:
          - Extra configuration lines for the frontend, one line each, as HAProxy reads them. They are validated by
            HAProxy with the rest.
        type: list
        elements: str
        default: []
      backend_options:
        description: Extra configuration lines for the backend, as O(routes[].frontend_options).
        type: list
        elements: str
        default: []
  config_path:
    description:
      - The configuration file the module owns. It is replaced whole; edits by hand are overwritten.
      - With O(service_manager=systemd), the path the C(haproxy) unit reads (Debian's reads C(/etc/haproxy/haproxy.cfg)).
    type: path
    default: /etc/haproxy/haproxy.cfg
  runtime_socket:
    description:
      - The Unix socket of HAProxy's runtime API (C(stats socket ... mode 600 level admin expose-fd listeners)).
      - Its directory is created (mode C(0750)) when missing.
    type: path
    default: /run/haproxy/admin.sock
  service_manager:
    description:
      - How HAProxy runs. V(systemd) starts the C(haproxy) unit or reloads it (C(systemctl reload haproxy)).
        V(process) supervises it without systemd, in master-worker mode as a daemon (C(haproxy -W -D)), whose master
        O(pid_file) names; it is reloaded with C(SIGUSR2). V(none) only writes the file.
      - V(auto) chooses V(systemd) when C(/run/systemd/system) exists, else V(process).
    type: str
    choices: [auto, systemd, process, none]
    default: auto
  pid_file:
    description: With O(service_manager=process), the file holding the pid of HAProxy's master.
    type: path
    default: /run/haproxy/safedeploy-haproxy.pid
  master_socket:
    description:
      - With O(service_manager=process), the master's own command socket (C(-S)), for C(show proc) and C(reload) by hand.
      - Empty opens none.
    type: path
    default: /run/haproxy/master.sock
  haproxy_command:
    description: The HAProxy executable, a path or a name looked up on C(PATH) and in C(/usr/sbin).
    type: str
    default: haproxy
  timeouts:
    description:
      - Timeouts of every route, in milliseconds; keys C(connect) (5000), C(client) (60000), C(server) (60000),
        C(check) (2000) and C(queue) (30000). Keys left out keep these defaults.
    type: dict
    default: {}
  user:
    description: The account HAProxy's workers run as (C(user) in C(global)); the master keeps the caller's.
    type: str
  group:
    description: The group HAProxy's workers run as (C(group) in C(global)).
    type: str
  hard_stop_after:
    description:
      - Milliseconds an old worker may keep serving its connections after a reload before it is stopped.
        Unset, it waits for the last one (a long-lived connection keeps it alive).
    type: int
  reload_timeout:
    description: Seconds to wait for HAProxy to answer on the runtime API after a start or a reload.
    type: int
    default: 30
  server_state_file:
    description:
      - The file in which the servers' states and weights (set through the runtime API by
        M(safedeploy.compose.traffic_switch) and M(safedeploy.compose.traffic_server)) are kept. The configuration tells
        HAProxy to load it at every start and reload, and the module saves C(show servers state) into it before a
        reload, so that a flip or a canary weight survives reloads and restarts. A server the file does not name starts
        as its route says.
      - An empty string leaves the states to the configuration alone.
    type: path
    default: /var/lib/haproxy/safedeploy-server-state
notes:
  - HAProxy must be installed; the role P(safedeploy.compose.traffic#role) installs it from the distribution's packages.
  - The configuration file is written with mode C(0644); it holds no secret.
seealso:
  - module: safedeploy.compose.health_gate
'''

EXAMPLES = r'''
- name: Route the shop and its API through the proxy
  safedeploy.compose.traffic_proxy:
    routes:
      - name: shop
        port: 80
        health_path: /healthz
        blue: {port: 18080}
        green: {port: 18081, state: maint}
      - name: api
        port: 8443
        mode: tcp
        blue: {port: 18443}

- name: Without systemd, a supervised HAProxy with its files elsewhere
  safedeploy.compose.traffic_proxy:
    config_path: /srv/proxy/haproxy.cfg
    runtime_socket: /srv/proxy/admin.sock
    pid_file: /srv/proxy/haproxy.pid
    master_socket: /srv/proxy/master.sock
    service_manager: process
    routes:
      - name: shop
        port: 8080
        blue: {port: 18080}
'''

RETURN = r'''
routes:
  description: The routes as rendered, sorted by name, with every default filled in.
  returned: always
  type: list
  elements: dict
  sample:
    - name: shop
      port: 80
      bind: 0.0.0.0
      mode: http
      health_path: /healthz
      servers:
        blue: {port: 18080, weight: 100, state: ready}
        green: {port: 18081, weight: 100, state: maint}
      check_interval: 2000
      rise: 2
      fall: 3
      retries: 1
      retry_on: [conn-failure, empty-response, 500, 502, 503, 504]
      frontend_options: []
      backend_options: []
config_path:
  description: The configuration file.
  returned: always
  type: str
  sample: /etc/haproxy/haproxy.cfg
service_manager:
  description: How HAProxy runs, after V(auto) was resolved.
  returned: always
  type: str
  sample: process
started:
  description: Whether HAProxy was started (or, in check mode, would be).
  returned: always
  type: bool
  sample: false
reloaded:
  description: Whether the running HAProxy was reloaded (or, in check mode, would be).
  returned: always
  type: bool
  sample: true
pid:
  description: Pid of the HAProxy worker answering on the runtime API after the task; null when it was not read.
  returned: always
  type: int
  sample: 41207
servers:
  description:
    - Per route, the counters HAProxy reports for its frontend, its backend and each server after the task
      (C(show stat)), with C(status) (C(UP), C(DOWN), C(MAINT), C(DRAIN), C(no check)), C(weight), C(scur) (current
      sessions), C(stot) (total sessions), C(hrsp_2xx) and C(hrsp_5xx) (responses by class), and C(qtime), C(rtime)
      and C(ttime) (average queue, response and total times, ms).
    - Empty in check mode and with O(service_manager=none).
  returned: always
  type: dict
  sample:
    shop:
      frontend: {status: OPEN, scur: 3, stot: 1200, hrsp_2xx: 1180, hrsp_5xx: 0}
      backend: {status: UP, weight: 100, scur: 3, stot: 1200}
      servers:
        blue: {status: UP, weight: 100, scur: 3, stot: 1200, hrsp_2xx: 1180, hrsp_5xx: 0, qtime: 0, rtime: 4, ttime: 5}
        green: {status: MAINT, weight: 100, scur: 0, stot: 0, hrsp_2xx: 0, hrsp_5xx: 0, qtime: 0, rtime: 0, ttime: 0}
diff:
  description: The configuration text before and after.
  returned: when diff mode is enabled
  type: dict
  sample: {before: "", after: "global\n    master-worker\n..."}
'''

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.safedeploy.compose.plugins.module_utils._atomic_file import write_file_atomic
from ansible_collections.safedeploy.compose.plugins.module_utils._haproxy import (
    HAProxyConfigError,
    HAProxyRuntimeError,
    RuntimeAPI,
    master_pid,
    normalize_routes,
    reload_master,
    save_server_state,
    render_config,
    start_master,
    validate_config,
    wait_new_worker,
)

ROUTE_SPEC = dict(
    name=dict(type='str', required=True),
    port=dict(type='int', required=True),
    bind=dict(type='str', default='0.0.0.0'),
    mode=dict(type='str', default='http', choices=['http', 'tcp']),
    blue=dict(type='dict', required=True),
    green=dict(type='dict'),
    health_path=dict(type='str'),
    check_interval=dict(type='int', default=2000),
    rise=dict(type='int', default=2),
    fall=dict(type='int', default=3),
    retries=dict(type='int', default=1),
    retry_on=dict(type='list', elements='str'),
    frontend_options=dict(type='list', elements='str', default=[]),
    backend_options=dict(type='list', elements='str', default=[]),
)


def read_text(path):
    try:
        with open(path, encoding='utf-8') as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def restore(path, text):
    if text is None:
        os.unlink(path)
    else:
        write_file_atomic(path, text.encode('utf-8'), mode=0o644)


def systemctl(module, *args):
    rc, out, err = module.run_command([module.get_bin_path('systemctl', required=True)] + list(args))
    return rc, (out + err).strip()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            routes=dict(type='list', elements='dict', required=True, options=ROUTE_SPEC),
            config_path=dict(type='path', default='/etc/haproxy/haproxy.cfg'),
            runtime_socket=dict(type='path', default='/run/haproxy/admin.sock'),
            service_manager=dict(type='str', default='auto', choices=['auto', 'systemd', 'process', 'none']),
            pid_file=dict(type='path', default='/run/haproxy/safedeploy-haproxy.pid'),
            master_socket=dict(type='path', default='/run/haproxy/master.sock'),
            haproxy_command=dict(type='str', default='haproxy'),
            timeouts=dict(type='dict', default={}),
            user=dict(type='str'),
            group=dict(type='str'),
            hard_stop_after=dict(type='int'),
            reload_timeout=dict(type='int', default=30),
            server_state_file=dict(type='path', default='/var/lib/haproxy/safedeploy-server-state'),
        ),
        supports_check_mode=True,
    )
    params = module.params
    manager = params['service_manager']
    if manager == 'auto':
        manager = 'systemd' if os.path.isdir('/run/systemd/system') else 'process'
    result = dict(changed=False, config_path=params['config_path'], service_manager=manager, started=False,
                  reloaded=False, pid=None, servers={}, routes=[])

    routes = [dict((key, value) for key, value in route.items() if value is not None) for route in params['routes']]
    try:
        result['routes'] = normalize_routes(routes)
        text = render_config(routes, params['runtime_socket'], timeouts=params['timeouts'], user=params['user'],
                             group=params['group'], hard_stop_after=params['hard_stop_after'],
                             server_state_file=params['server_state_file'] or None)
    except HAProxyConfigError as exc:
        module.fail_json(msg='The routes cannot make a HAProxy configuration: %s' % exc, **result)

    haproxy = params['haproxy_command']
    if os.sep not in haproxy:
        haproxy = module.get_bin_path(haproxy, opt_dirs=['/usr/sbin', '/usr/local/sbin'])
    installed = bool(haproxy) and os.access(haproxy, os.X_OK)
    if not installed and not module.check_mode:
        module.fail_json(msg='HAProxy (%s) is not installed on this host: install the package haproxy (the role '
                             'safedeploy.compose.traffic does) or set haproxy_command' % params['haproxy_command'], **result)
    if not installed:
        module.warn('HAProxy is not installed yet (a check run before the package is installed): the configuration '
                    'was rendered but not validated')
    else:
        config_dir = os.path.dirname(params['config_path'])
        candidate_dir = config_dir if os.path.isdir(config_dir) and not module.check_mode else None
        ok, message = validate_config(haproxy, text, directory=candidate_dir)
        if not ok:
            module.fail_json(msg='HAProxy refused the new configuration; %s and the running proxy are unchanged. '
                                 'Fix the routes (or their frontend_options/backend_options). HAProxy said:\n%s'
                                 % (params['config_path'], message), candidate=text, **result)

    before = read_text(params['config_path'])
    file_changed = before != text
    if module._diff:
        result['diff'] = dict(before=before or '', after=text, before_header=params['config_path'],
                              after_header=params['config_path'])

    api = RuntimeAPI(params['runtime_socket'], timeout=5.0)
    running = None
    if manager == 'systemd':
        running = systemctl(module, 'is-active', '--quiet', 'haproxy')[0] == 0
    elif manager == 'process':
        running = master_pid(params['pid_file'])
    start = manager != 'none' and not running
    reload = manager != 'none' and bool(running) and file_changed
    result['changed'] = file_changed or start
    result['started'] = start
    result['reloaded'] = reload
    if module.check_mode:
        module.exit_json(**result)

    config_dir = os.path.dirname(params['config_path'])
    if file_changed:
        if not os.path.isdir(config_dir):
            os.makedirs(config_dir, 0o755)
        write_file_atomic(params['config_path'], text.encode('utf-8'), mode=0o644)
    if manager == 'none':
        module.exit_json(**result)

    socket_dir = os.path.dirname(params['runtime_socket'])
    if not os.path.isdir(socket_dir):
        os.makedirs(socket_dir, 0o750)
    if reload and params['server_state_file']:
        # the servers' states and weights set through the runtime API (a flip, a canary weight) outlive the reload
        try:
            save_server_state(api, params['server_state_file'], routes=result['routes'])
        except HAProxyRuntimeError as exc:
            module.warn('The servers\' states could not be saved before the reload (%s): the new workers start them '
                        'as the configuration says' % exc)
    try:
        if manager == 'systemd':
            old = None
            if reload:
                try:
                    old = api.info().get('Pid')
                except HAProxyRuntimeError:
                    pass  # the running one may listen elsewhere (the distribution's configuration): any answer will do
            rc, out = systemctl(module, 'reload' if reload else 'start', 'haproxy') if (start or reload) else (0, '')
            if rc == 0 and reload:
                try:
                    wait_new_worker(api, old, params['reload_timeout'], 'systemctl reload haproxy')
                except HAProxyRuntimeError as exc:
                    # As in the supervised case: the old workers serve the old configuration, so the file says so
                    # again and the next run tries again.
                    restore(params['config_path'], before)
                    module.fail_json(msg='HAProxy did not take the new configuration (%s); the old workers keep '
                                         'serving and %s was put back. A port taken by another process or an address '
                                         'the host does not have is the usual cause (haproxy -c does not bind)'
                                         % (exc, params['config_path']), **result)
            if rc != 0:
                module.fail_json(msg='systemctl %s haproxy failed (%s); the new configuration is in %s. See '
                                     '`journalctl -u haproxy`' % ('reload' if reload else 'start', out, params['config_path']),
                                 **result)
        elif start:
            ok, message = start_master(haproxy, params['config_path'], params['pid_file'], params['master_socket'])
            if not ok:
                module.fail_json(msg='HAProxy did not start with %s (a port taken by another process?). HAProxy said:\n%s'
                                     % (params['config_path'], message), **result)
        elif reload:
            try:
                reload_master(running, api, params['reload_timeout'])
            except HAProxyRuntimeError as exc:
                # The old workers still serve the old configuration: put the file back so that it says what runs,
                # and the next run tries again.
                restore(params['config_path'], before)
                module.fail_json(msg='HAProxy did not take the new configuration (%s); the old workers keep serving and '
                                     '%s was put back. A port taken by another process or an address the host does '
                                     'not have is the usual cause (haproxy -c does not bind)'
                                     % (exc, params['config_path']), **result)
        info = api.wait_ready(params['reload_timeout'])
        result['pid'] = int(info['Pid'])
        result['servers'] = api.stats()
    except HAProxyRuntimeError as exc:
        module.fail_json(msg='HAProxy runs with %s but its runtime API did not answer: %s'
                             % (params['config_path'], exc), **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
