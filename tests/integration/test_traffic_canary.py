"""traffic_canary against a real HAProxy: a canary server taking a quarter of a route's traffic, judged from the
counters of the runtime API, with plain Python HTTP servers as the backends.

ENGINE-FREE: nothing here uses Docker (no engine, no registry, no compose); the test bed is not needed. Every HAProxy
this file starts runs from its own files in a temporary directory and is stopped at the end of its test; ports come
from 19300-19399 only. Windows are 1 to 3 seconds, so the whole file takes well under a minute.
"""

from __future__ import annotations

import threading
import time

from conftest import PortRange
from haproxy_bed import backends_fixture, FaultyBackend, get, HAPROXY_MARKS, Load, proxy_fixture, route

from ansible_collections.safedeploy.compose.plugins.module_utils._canary import number

pytestmark = HAPROXY_MARKS

PORTS = PortRange(range(19300, 19400))
backends = backends_fixture(PORTS, faulty_class=FaultyBackend)
proxy = proxy_fixture()
# blue 100, green 33: green, the canary, takes a quarter of the requests (round-robin by weight)
CANARY_WEIGHT = 33


def start(run_module, proxy, blue, green, *others):
    """HAProxy with the route shop (blue and green) and the given others, green at a quarter; shop's public port."""
    public = PORTS.take()
    routes = [route('shop', public, blue.port, green.port)] + list(others)
    started = run_module('traffic_proxy', proxy.args(routes))
    assert not started.failed, started
    proxy.api.set_server_weight('shop', 'green', CANARY_WEIGHT)
    return public


def canary_args(proxy, **extra):
    args = dict(route='shop', canary='green', runtime_socket=proxy.socket)
    args.update(extra)
    return args


def test_a_clean_canary_at_a_quarter_passes(run_module, proxy, backends):
    blue, green = backends('blue'), backends('green')
    public = PORTS.take()
    assert not run_module('traffic_proxy', proxy.args([route('shop', public, blue.port, green.port)])).failed
    weighted = run_module('traffic_server', dict(route='shop', server='green', weight=CANARY_WEIGHT,
                                                 runtime_socket=proxy.socket, server_state_file=proxy.state_file))
    assert not weighted.failed and weighted['weight'] == CANARY_WEIGHT, weighted
    with Load(public, rate=40, seconds=4.5) as load:
        result = run_module('traffic_canary', canary_args(proxy, window=3, max_latency_ms=500))
    assert not result.failed, result
    assert result['verdict'] == 'pass' and result['passed'] and result['reasons'] == [], result
    assert not result['changed']
    assert 3 <= result['window'] < 4, result['window']
    canary, stable = result['canary'], result['stable']
    assert canary['server'] == 'green' and stable['server'] == 'blue'
    assert canary['requests'] >= 20 and canary['errors'] == 0 and canary['error_ratio'] == 0, canary
    assert canary['status'] == 'UP' and canary['rtime_ms'] is not None
    # a quarter: the stable server had about three times the canary's requests
    assert 2 * canary['requests'] < stable['requests'] < 4 * canary['requests'], (canary, stable)
    assert load.failures == [], load.failures


def test_a_canary_answering_500s_fails_naming_its_error_ratio_also_in_check_mode(run_module, proxy, backends):
    blue, green = backends('blue'), backends('green', faulty=True, error_ratio=0.5)
    public = start(run_module, proxy, blue, green)
    with Load(public, rate=40, seconds=4.5) as load:
        result = run_module('traffic_canary', canary_args(proxy, window=3), check=True)
    assert not result.failed, result  # a failing canary does not fail the task
    assert result['verdict'] == 'fail' and not result['passed'] and not result['changed'], result
    canary = result['canary']
    assert canary['requests'] >= 20 and 0.4 <= canary['error_ratio'] <= 0.6, canary
    assert result['stable']['errors'] == 0 and result['stable']['error_ratio'] == 0
    assert result['reasons'][0] == ("the canary green's error ratio is %s (%d errors in %d requests), above "
                                    "max_error_ratio 0.01" % (number(canary['error_ratio']), canary['errors'],
                                                              canary['requests'])), result['reasons']
    assert 'max_error_ratio_delta 0.01' in result['reasons'][1]
    # the route retries a GET the canary failed on the stable server: the clients saw none of the canary's 500s,
    # the judge saw every one (the canary's wredis)
    assert load.failures == [], load.failures
    assert green.served > canary['requests'] / 2, (green.served, canary)


def test_a_slow_canary_fails_the_latency_limits(run_module, proxy, backends):
    blue = backends('blue', faulty=True, delay=0.01)  # 10 ms: the stable server has an rtime to compare with
    green = backends('green', faulty=True, delay=0.15)
    public = start(run_module, proxy, blue, green)
    # 20 a second: the client sends one request at a time, and a quarter of them take 150 ms
    with Load(public, rate=20, seconds=4.5):
        result = run_module('traffic_canary', canary_args(proxy, window=3, min_requests=8, max_latency_ms=100,
                                                          max_latency_ratio=5))
    assert not result.failed, result
    assert result['verdict'] == 'fail' and not result['passed'], result
    canary, stable = result['canary'], result['stable']
    assert canary['errors'] == 0 and canary['rtime_ms'] >= 140 and 5 <= stable['rtime_ms'] < 30, (canary, stable)
    assert result['reasons'] == [
        "the canary green's average response time is %d ms (HAProxy's rtime), above max_latency_ms 100"
        % canary['rtime_ms'],
        "the canary green's average response time %d ms is %s times the stable blue's %d ms, above max_latency_ratio 5"
        % (canary['rtime_ms'], number(round(float(canary['rtime_ms']) / stable['rtime_ms'], 9)), stable['rtime_ms']),
    ]


def test_too_few_requests_is_inconclusive_as_each_policy_says(run_module, proxy, backends):
    blue, green = backends('blue'), backends('green')
    public = start(run_module, proxy, blue, green)
    for _request in range(4):
        assert get(public)[0] == 200  # a request or so for the canary: fewer than min_requests
    failing = run_module('traffic_canary', canary_args(proxy, window=1, inconclusive='fail'))
    assert not failing.failed, failing
    assert failing['verdict'] == 'inconclusive' and not failing['passed'], failing
    assert 'fewer than min_requests 20: too few to judge' in failing['reasons'][0]
    assert 1 <= failing['window'] < 1.5
    passing = run_module('traffic_canary', canary_args(proxy, window=1, inconclusive='pass'))
    assert passing['verdict'] == 'inconclusive' and passing['passed'], passing
    extended = run_module('traffic_canary', canary_args(proxy, window=1, inconclusive='extend', max_window=2))
    assert extended['verdict'] == 'inconclusive' and not extended['passed'], extended
    assert 2 <= extended['window'] < 2.5, extended['window']  # observed to max_window, not one window
    # under a light load the extension gathers enough: judged once min_requests is reached
    with Load(public, rate=12, seconds=4):
        enough = run_module('traffic_canary', canary_args(proxy, window=1, inconclusive='extend', max_window=5,
                                                          min_requests=6))
    assert enough['verdict'] == 'pass' and enough['passed'], enough
    assert enough['window'] >= 2 and enough['canary']['requests'] >= 6, enough


def test_a_canary_whose_backend_stopped_fails(run_module, proxy, backends):
    blue, green = backends('blue'), backends('green')
    public = start(run_module, proxy, blue, green)
    with Load(public, rate=40, seconds=3):
        green.stop()  # connections refused: the health checks take it DOWN, the requests go to blue
        result = run_module('traffic_canary', canary_args(proxy, window=2))
    assert not result.failed, result
    assert result['verdict'] == 'fail' and not result['passed'], result
    assert result['reasons'][0] == 'the canary green was DOWN during the window (its health checks fail)'
    assert result['canary']['status'] == 'DOWN' and result['stable']['status'] == 'UP'


def test_a_reload_during_the_window_restarts_it(run_module, proxy, backends):
    blue, green, other = backends('blue'), backends('green'), backends('other')
    public = start(run_module, proxy, blue, green)
    outcome = {}

    def observe():
        outcome['result'] = run_module('traffic_canary', canary_args(proxy, window=3, max_window=9, min_requests=10))
    with Load(public, rate=40, seconds=7):
        observer = threading.Thread(target=observe)
        started = time.monotonic()
        observer.start()
        time.sleep(1.0)
        # another route: a reload, whose new worker starts its counters from zero (the weights are kept)
        reloaded = run_module('traffic_proxy', proxy.args([route('shop', public, blue.port, green.port),
                                                           route('api', PORTS.take(), other.port)]))
        assert not reloaded.failed and reloaded['reloaded'], reloaded
        observer.join(30)
        took = time.monotonic() - started
    result = outcome['result']
    assert not result.failed, result
    assert 'worker changed' in repr(result.get('warnings')) and 'started again' in repr(result.get('warnings')), result
    assert result['verdict'] == 'pass', result
    assert 3 <= result['window'] < 4 and took > 4, (result['window'], took)  # a whole window after the reload
    assert result['canary']['requests'] >= 10 and result['canary']['requests'] < result['stable']['requests']


def test_unknown_routes_servers_sockets_and_bad_options_fail_naming_the_fix(run_module, proxy, backends):
    blue, green, other = backends('blue'), backends('green'), backends('other')
    start(run_module, proxy, blue, green, route('api', PORTS.take(), other.port))
    missing = run_module('traffic_canary', canary_args(proxy, route='nope', window=1))
    assert missing.failed and 'HAProxy has no route nope (its routes: api, shop)' in missing['msg'], missing
    assert 'traffic_proxy' in missing['msg']
    lonely = run_module('traffic_canary', canary_args(proxy, route='api', window=1))
    assert lonely.failed and 'route api has no server green' in lonely['msg'], lonely
    unreachable = run_module('traffic_canary', canary_args(proxy, runtime_socket=str(proxy.dir / 'x.sock'), window=1))
    assert unreachable.failed and 'cannot reach the runtime API' in unreachable['msg'], unreachable
    short = run_module('traffic_canary', canary_args(proxy, window=10, max_window=5))
    assert short.failed and 'max_window (5.0 s) must be at least window (10.0 s)' in short['msg'], short
    percent = run_module('traffic_canary', canary_args(proxy, max_error_ratio=5))
    assert percent.failed and 'max_error_ratio must be a fraction from 0 to 1' in percent['msg'], percent
