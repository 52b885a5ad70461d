# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private module_utils of safedeploy.compose: the verdict on a canary. Not a public API; it may change in any release.
#
# A canary is one server of a route (blue or green) taking a share of the traffic by weight; the other server is the
# stable one. The verdict compares two readings of the route's `show stat` counters (a snapshot: the route's entry of
# RuntimeAPI.stats(), plus `at`, monotonic seconds, and `worker`, the pid of the worker that answered):
#   - judge(): pure, the deltas of both servers between two snapshots, their error ratios, the limits, the verdict.
#   - observe(): reads the route through a callable until the window is over, extends it when the policy says so,
#     and starts it again after a counter reset; the reading and the sleeping are handed in, so it is testable
#     without HAProxy.
#
# Counter resets: HAProxy keeps its counters in the worker's memory, so a reload (new workers) or `clear counters all`
# starts them from zero. Deltas across a reset mean nothing (a negative delta, or one that misses what the old worker
# served), so a window with a reset in it is never judged: observe() restarts the window at the first reading after
# the reset, within max_window, and judge() calls such a pair of snapshots inconclusive.

from __future__ import annotations

import time

SERVER_NAMES = ('blue', 'green')
VERDICTS = ('pass', 'fail', 'inconclusive')
INCONCLUSIVE_POLICIES = ('fail', 'pass', 'extend')
RESPONSE_CLASSES = ('hrsp_1xx', 'hrsp_2xx', 'hrsp_3xx', 'hrsp_4xx', 'hrsp_5xx', 'hrsp_other')
# The cumulative counters a verdict reads; any of them going down between two readings is a reset.
COUNTERS = ('stot', 'econ', 'eresp', 'wredis') + RESPONSE_CLASSES
# At most this many seconds between two readings within a window: a DOWN or a reset is seen while it lasts.
SAMPLE_SECONDS = 1.0
# Ratios are compared after rounding to this many decimals, so that 0.04 - 0.03 is not above a limit of 0.01.
PRECISION = 9


def stable_of(canary):
    """The other server of the route."""
    return 'green' if canary == 'blue' else 'blue'


def is_down(status):
    """True for `show stat` statuses DOWN and DOWN n/m (down, coming back up); UP n/m, MAINT, DRAIN are not down."""
    return isinstance(status, str) and status.split(' ', 1)[0] == 'DOWN'


def number(value):
    """A number for a sentence: whole numbers without decimals, others with at most four."""
    if isinstance(value, int):
        return '%d' % value
    return ('%.4f' % value).rstrip('0').rstrip('.')


def _counter(counters, key):
    return counters.get(key) or 0


def _delta(before, after, key):
    return _counter(after, key) - _counter(before, key)


def counter_reset(before, after):
    """A sentence saying how the counters were reset between two snapshots of a route, or None when they were not."""
    old, new = before.get('worker'), after.get('worker')
    if old is not None and new is not None and str(old) != str(new):
        return ("HAProxy's worker changed from pid %s to pid %s (a reload or a restart), which starts the counters "
                "from zero" % (old, new))
    for server in SERVER_NAMES:
        first = before['servers'].get(server)
        last = after['servers'].get(server)
        if first is None or last is None:
            continue
        for key in COUNTERS:
            if first.get(key) is not None and last.get(key) is not None and last[key] < first[key]:
                return ('the counter %s of server %s went down from %d to %d (HAProxy reloaded or its counters were '
                        'cleared)' % (key, server, first[key], last[key]))
    return None


def server_window(name, before, after):
    """What one server did between two snapshots of its `show stat` counters.

    HTTP: requests are the responses of every class plus the requests the server failed without a response the
    client saw; errors are the 5xx responses plus those failures. A failure is a connection error (econ), a response
    error (eresp), or a request HAProxy took away from the server to retry it on the other one (wredis): with the
    routes' retries (option redispatch 1, retry-on ... 500 502 503 504) a canary that answers 500 shows neither a 5xx
    nor an error of its own, only wredis (HAProxy 2.6: the server that failed the request counts it, once, whether its
    connection was refused, it closed without answering or it answered 500). TCP (no response classes): requests are
    the sessions (stot), errors the connection and response errors and the redispatched sessions. rtime_ms is
    HAProxy's moving average at the second snapshot, None on TCP, which has none.
    """
    http = after.get('hrsp_2xx') is not None
    failed = sum(_delta(before, after, key) for key in ('econ', 'eresp', 'wredis'))
    if http:
        requests = sum(_delta(before, after, key) for key in RESPONSE_CLASSES) + failed
        errors = _delta(before, after, 'hrsp_5xx') + failed
    else:
        errors = failed
        requests = max(_delta(before, after, 'stot'), errors)
    return {
        'server': name,
        'requests': requests,
        'errors': errors,
        'error_ratio': round(float(errors) / requests, PRECISION) if requests > 0 else None,
        'rtime_ms': after.get('rtime') if http else None,
        'status': after.get('status'),
    }


def judge(before, after, canary, max_error_ratio=0.01, max_error_ratio_delta=0.01, max_latency_ms=None,
          max_latency_ratio=None, min_requests=20, down_between=False):
    """The verdict on the canary from two snapshots of its route; a dict with verdict, reasons, canary, stable, window.

    `down_between` says the canary was DOWN at a reading between the two. The order of the rules:
      1. the canary DOWN at either snapshot or between them fails it (its health checks fail), whatever else;
      2. a counter reset between the snapshots, or fewer than `min_requests` canary requests, is inconclusive;
      3. otherwise every limit is checked and each one exceeded is a reason; no reason is a pass.
    """
    stable = stable_of(canary)
    mine = server_window(canary, before['servers'][canary], after['servers'][canary])
    theirs = server_window(stable, before['servers'][stable], after['servers'][stable])
    seconds = round(max(0.0, after.get('at', 0.0) - before.get('at', 0.0)), 3)
    result = {'canary': mine, 'stable': theirs, 'window': seconds}
    failing = []
    if down_between or is_down(before['servers'][canary].get('status')) or is_down(mine['status']):
        failing.append('the canary %s was DOWN during the window (its health checks fail)' % canary)
    reset = counter_reset(before, after)
    if reset is not None:
        if failing:
            return dict(result, verdict='fail', reasons=failing)
        # The deltas across a reset are meaningless (they may be negative): report none.
        for entry in (mine, theirs):
            entry.update(requests=0, errors=0, error_ratio=None)
        return dict(result, verdict='inconclusive', reasons=['%s during the window, so its counters say nothing' % reset])
    if mine['requests'] < min_requests:
        if failing:
            return dict(result, verdict='fail', reasons=failing)
        return dict(result, verdict='inconclusive', reasons=[
            'the canary %s (%s) served %d requests in %s s, fewer than min_requests %d: too few to judge'
            % (canary, mine['status'], mine['requests'], number(seconds), min_requests)])
    ratio = mine['error_ratio']  # None only when min_requests is 0 and the canary served nothing
    if ratio is not None and ratio > max_error_ratio:
        failing.append("the canary %s's error ratio is %s (%d errors in %d requests), above max_error_ratio %s"
                       % (canary, number(ratio), mine['errors'], mine['requests'], number(max_error_ratio)))
    if ratio is not None and theirs['error_ratio'] is not None:
        excess = round(ratio - theirs['error_ratio'], PRECISION)
        if excess > max_error_ratio_delta:
            failing.append("the canary %s's error ratio %s exceeds the stable %s's %s by %s, more than "
                           "max_error_ratio_delta %s" % (canary, number(ratio), stable, number(theirs['error_ratio']),
                                                         number(excess), number(max_error_ratio_delta)))
    rtime, stable_rtime = mine['rtime_ms'], theirs['rtime_ms']
    if rtime is not None and max_latency_ms is not None and rtime > max_latency_ms:
        failing.append("the canary %s's average response time is %d ms (HAProxy's rtime), above max_latency_ms %d"
                       % (canary, rtime, max_latency_ms))
    if rtime is not None and max_latency_ratio is not None and stable_rtime:
        times = round(float(rtime) / stable_rtime, PRECISION)
        if times > max_latency_ratio:
            failing.append("the canary %s's average response time %d ms is %s times the stable %s's %d ms, above "
                           "max_latency_ratio %s" % (canary, rtime, number(times), stable, stable_rtime,
                                                     number(max_latency_ratio)))
    return dict(result, verdict='fail' if failing else 'pass', reasons=failing)


def passed(verdict, inconclusive):
    """Whether a verdict lets the canary through: a pass, or an inconclusive one when the policy says pass."""
    return verdict == 'pass' or (verdict == 'inconclusive' and inconclusive == 'pass')


def observe(read, canary, window, max_window=None, inconclusive='extend', sleep=time.sleep, **limits):
    """Observe the canary for `window` seconds and judge it; (judgement, notes).

    `read()` returns a snapshot of the route (see the header); it is called at the start and at most SAMPLE_SECONDS
    (or a quarter of the window) apart, so a canary DOWN between the two ends is seen. With inconclusive=extend, a
    window with too few canary requests is followed by another one, the counters still compared with the first
    reading, until the verdict is conclusive or `max_window` seconds (default three windows) have passed. A counter
    reset restarts the window at the first reading after it; `max_window` bounds that too. The judgement has the keys
    of judge() plus `passed`; the notes are sentences for warnings (one per reset).
    """
    max_window = 3 * window if max_window is None else max(max_window, window)
    sample = min(SAMPLE_SECONDS, window / 4.0)
    first = read()
    budget_end = first['at'] + max_window
    end = first['at'] + window
    baseline = last = first
    down = is_down(first['servers'][canary].get('status'))
    notes = []
    while True:
        sleep(max(0.0, min(sample, end - last['at'])))
        last = read()
        down = down or is_down(last['servers'][canary].get('status'))
        reset = counter_reset(baseline, last)
        if reset is not None:
            notes.append('%s; the window started again at the reading after it' % reset)
            baseline = last
            end = min(last['at'] + window, budget_end)
        if last['at'] < end:
            continue
        judgement = judge(baseline, last, canary, down_between=down, **limits)
        if judgement['verdict'] == 'inconclusive' and inconclusive == 'extend' and last['at'] < budget_end:
            end = min(end + window, budget_end)
            continue
        judgement['passed'] = passed(judgement['verdict'], inconclusive)
        return judgement, notes
