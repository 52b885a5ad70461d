# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private module_utils of safedeploy.compose: which slot of a route takes the traffic (the module traffic_switch). Not
# a public API; it may change in any release.
#
# The pure part of a switch: what each server should become for a given `to` and `share`, the ordered steps that get
# there without a moment in which no server takes new traffic, and whether HAProxy's `show stat` says a server passes
# its health checks. The module drives the runtime API along these steps.
#
# What HAProxy 2.6 reports, as observed on Debian's 2.6.12 (the reason for `passes_checks` and `restart_checks`):
#   - A server leaving maint (`set server ... state drain|ready`) is taken as up at once, before any check ran: its
#     health is set to `rise`, so it shows `DRAIN 1/3` or `UP 1/3` (with `fall 1`: plain `DRAIN` or `UP`), and its
#     check_status is `INI` or, when it was checked before maint, the result from before maint (`L4OK` from a backend
#     that has stopped since). Neither the status nor the check_status of such a server says that it answers now.
#   - `set server ... health down` sets its health to 0 (status `DOWN`, the stale check_status unchanged); it then
#     needs `rise` passing checks (`DOWN 1/2`, then `DRAIN` or `UP` with `L4OK`/`L7OK`), or shows `DOWN` with
#     `L4CON`, `L7STS`, ... while its checks fail.
#   - A drained server whose checks pass shows `DRAIN`; whose checks fail, `DRAIN 2/3`, `DRAIN 1/3`, then `DOWN`. A
#     ready server with weight 0 shows `UP`.
#   - A server without checks shows `no check` when ready but `DRAIN` (with no check_status) when drained, and a
#     `health down` would keep it down for good: whether it is checked is read from srv_check_state of `show servers
#     state` (CHK_ST_CONFIGURED), not from its status.

from __future__ import annotations

from ansible_collections.safedeploy.compose.plugins.module_utils._haproxy import (
    NAME_RE,
    SERVER_NAMES,
    HAProxyRuntimeError,
)

CHECK_PASSED = ('L4OK', 'L6OK', 'L7OK')
CHECK_CONFIGURED = 0x02  # srv_check_state bit of `show servers state`: the server has health checks
# The full statuses of a server that takes new traffic (UP) or may take it once made ready (DRAIN). A status with a
# count ("UP 1/3") is a server between states: one that just left maint, or one whose checks started to fail.
PASSING_STATUSES = ('UP', 'DRAIN')
NO_CHECK = 'no check'


def other_server(name):
    return SERVER_NAMES[1] if name == SERVER_NAMES[0] else SERVER_NAMES[0]


def has_checks(check_state):
    """Whether srv_check_state (`show servers state`) says the server has health checks; unknown counts as yes."""
    try:
        return bool(int(check_state) & CHECK_CONFIGURED)
    except (TypeError, ValueError):
        return True


def passes_checks(stat, checks=True):
    """Whether a `show stat` row (status, check_status) says the server passes its health checks now.

    A server without checks (`checks` false) passes while it is up: `no check` when ready, `DRAIN` when drained.
    """
    status = (stat or {}).get('status') or ''
    if not checks or status == NO_CHECK:
        return status in PASSING_STATUSES + (NO_CHECK,)
    return status in PASSING_STATUSES and (stat or {}).get('check_status') in CHECK_PASSED


LEAVE_STATES = ('maint', 'drain')


def targets(to, share, current, leave='maint'):
    """{server: {'state', 'weight'}} that gives `to` `share` percent of new traffic.

    At 100 the other server goes to `leave` and keeps its weight (a later switch back sets it): maint (not checked,
    takes nothing) or drain (no new traffic, still checked, so a switch back to it needs no fresh checks); below 100
    both are ready, weighted share and 100 - share.
    """
    other = other_server(to)
    if share >= 100:
        return {to: dict(state='ready', weight=100), other: dict(state=leave, weight=current[other]['weight'])}
    return {to: dict(state='ready', weight=share), other: dict(state='ready', weight=100 - share)}


def _setting(server):
    return dict(state=server['state'], weight=server['weight'])


def plan(to, share, current, leave='maint'):
    """The ordered steps from `current` ({server: {'state', 'weight', 'status', 'check_status', ...}}) to the targets.

    Each step is {'server', 'from': {'state', 'weight'}, 'to': {'state', 'weight'}, 'wait'}; `wait` is what the step
    waits for once applied: 'checks' (the server passes its health checks), 'sessions' (its sessions end) or None.
    A server left ready must pass its checks before it takes traffic: from maint it first goes to drain (checks run,
    no traffic) and waits; a server already out of maint whose checks do not pass gets a step that changes nothing
    and waits. Then capacity is added before it is removed: servers made ready or given more weight first (`to`
    first), weights lowered next, and the server leaving goes to drain, waits for its sessions, then to maint (from
    drain already, its drain step changes nothing and only waits); with leave='drain' it stays in drain.
    No steps when the servers already are as asked.
    """
    wanted = targets(to, share, current, leave)
    order = (to, other_server(to))
    steps = []
    setting = dict((name, _setting(current[name])) for name in order)

    def step(name, state, weight, wait=None):
        before = dict(setting[name])
        setting[name] = dict(state=state, weight=weight)
        steps.append({'server': name, 'from': before, 'to': dict(setting[name]), 'wait': wait})

    if all(setting[name] == wanted[name] for name in order):
        return steps
    for name in order:
        if wanted[name]['state'] != 'ready':
            continue
        if setting[name]['state'] == 'maint':
            step(name, 'drain', setting[name]['weight'], 'checks')
        elif not passes_checks(current[name], current[name].get('checks', True)):
            step(name, setting[name]['state'], setting[name]['weight'], 'checks')
    adding = [name for name in order if wanted[name]['state'] == 'ready'
              and (setting[name]['state'] != 'ready' or wanted[name]['weight'] > setting[name]['weight'])]
    for name in adding:
        step(name, 'ready', wanted[name]['weight'])
    for name in order:
        if wanted[name]['state'] == 'ready' and setting[name] != wanted[name]:
            step(name, 'ready', wanted[name]['weight'])
    for name in order:
        if wanted[name]['state'] in LEAVE_STATES and setting[name]['state'] != wanted[name]['state']:
            # from drain already, the first of the two changes nothing and only waits
            step(name, 'drain', setting[name]['weight'], 'sessions')
            if wanted[name]['state'] == 'maint':
                step(name, 'maint', setting[name]['weight'])
    return steps


def restart_checks(api, backend, server):
    """Set the server's health to 0 (`set server ... health down`): it is up again only after `rise` passing checks.

    Used on a server that just left maint and takes no traffic (drain), which HAProxy would otherwise take as up on the
    strength of a check result from before maint.
    """
    for value in (backend, server):
        if not isinstance(value, str) or not NAME_RE.match(value):
            raise HAProxyRuntimeError('backend and server names are letters, digits, _ and -, got %r' % (value,))
    line = 'set server %s/%s health down' % (backend, server)
    answer = api.command(line).strip()
    if answer:
        raise HAProxyRuntimeError('HAProxy refused %r: %s' % (line, answer))
