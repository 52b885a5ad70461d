"""traffic_switch against a real HAProxy, with plain Python HTTP servers as the blue and green slots.

ENGINE-FREE: nothing here uses Docker (no engine, no registry, no compose); the test bed is not needed. Every HAProxy
this file starts runs from its own files in a temporary directory (started with traffic_proxy) and is stopped at the
end of its test; ports come from 19200-19299 only.
"""

from __future__ import annotations

import os
import threading
import time

from conftest import PortRange
from haproxy_bed import backends_fixture, get, HAPROXY_MARKS, Load, proxy_fixture, route

pytestmark = HAPROXY_MARKS

PORTS = PortRange(range(19200, 19300))
backends = backends_fixture(PORTS)
proxy = proxy_fixture()


def serve(run_module, proxy, blue_port, green_port, **extra):
    """Start HAProxy with the route shop: blue ready, green in maint; its public port."""
    public = PORTS.take()
    shop = route('shop', public, blue_port, green_port, **extra)
    shop['green']['state'] = 'maint'
    started = run_module('traffic_proxy', proxy.args([shop]))
    assert not started.failed and started['started'], started
    return public, shop


def switch(run_module, proxy, check=False, diff=False, **args):
    args = dict(dict(route='shop', runtime_socket=proxy.socket, server_state_file=proxy.state_file, up_timeout=10,
                     drain_timeout=10), **args)
    return run_module('traffic_switch', args, check=check, diff=diff)


def states(proxy):
    """{server: (state, weight)} as HAProxy holds them now."""
    from ansible_collections.safedeploy.compose.plugins.module_utils._haproxy import admin_state
    return dict((row['srv_name'], (admin_state(row['srv_admin_state']), row['srv_uweight']))
                for row in proxy.api.servers_state('shop'))


def actions(result):
    return [(event['server'], event['action']) for event in result['events']]


def wait_for(predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def in_thread(function):
    """Run `function` in a thread; the returned dict gets its result under 'value' once the thread is joined."""
    box = {}

    def run():
        box['value'] = function()
    box['thread'] = threading.Thread(target=run)
    box['thread'].start()
    return box


def test_flip_under_load_drops_nothing(run_module, proxy, backends):
    blue, green = backends('blue'), backends('green')
    public, _shop = serve(run_module, proxy, blue.port, green.port)
    with Load(public, rate=50, seconds=3.0) as load:
        time.sleep(0.5)
        result = switch(run_module, proxy, to='green')
    assert not result.failed, result
    assert result['changed'] and result['route'] == 'shop' and result['to'] == 'green' and result['share'] == 100
    assert actions(result) == [('green', 'drain'), ('green', 'up'), ('green', 'ready'), ('blue', 'drain'),
                               ('blue', 'drained'), ('blue', 'maint')], result['events']
    ats = [event['at'] for event in result['events']]
    assert ats == sorted(ats) and ats[-1] <= result['elapsed']
    up = result['events'][1]
    assert up['status'] == 'DRAIN' and up['check_status'] == 'L4OK', up
    assert result['drained'] is True and result['in_flight'] == 0 and result['drain_seconds'] >= 0
    assert load.failures == [], load.failures
    assert load.ok == 150
    assert [get(public)[1] for _n in range(10)] == ['green'] * 10
    assert states(proxy) == {'blue': ('maint', 100), 'green': ('ready', 100)}
    servers = result['servers']
    assert servers['blue']['before']['state'] == 'ready' and servers['blue']['after']['state'] == 'maint'
    assert servers['blue']['after']['status'] == 'MAINT' and servers['green']['after']['status'] == 'UP'
    assert servers['green']['before']['port'] == green.port and servers['green']['after']['weight'] == 100
    assert os.path.exists(proxy.state_file)


def test_a_flip_back_to_a_server_left_drained_moves_the_traffic_without_new_checks(run_module, proxy, backends):
    blue, green = backends('blue'), backends('green')
    # checks every 2 s: a server leaving maint would wait for fresh ones, a drained one is checked all along
    public, _shop = serve(run_module, proxy, blue.port, green.port, check_interval=2000)
    first = switch(run_module, proxy, to='green', leave='drain')
    assert not first.failed, first
    assert actions(first)[-2:] == [('blue', 'drain'), ('blue', 'drained')], first['events']  # no maint
    assert states(proxy) == {'blue': ('drain', 100), 'green': ('ready', 100)}
    with Load(public, rate=50, seconds=2.0) as load:
        time.sleep(0.3)
        back = switch(run_module, proxy, to='blue', leave='drain')
    assert not back.failed, back
    assert actions(back)[:1] == [('blue', 'ready')], back['events']  # no health reset, no wait for checks
    assert back['events'][0]['at'] < 0.5, back['events']
    assert states(proxy) == {'blue': ('ready', 100), 'green': ('drain', 100)}
    assert load.failures == [], load.failures
    assert [get(public)[1] for _n in range(5)] == ['blue'] * 5
    # a drained server that stopped answering is not taken back: its checks are current and fail
    green.stop()
    wait_for(lambda: proxy.api.stats()['shop']['servers']['green']['status'].startswith('DOWN'), 12, 'green seen down')
    refused = switch(run_module, proxy, to='green', leave='drain', up_timeout=1)
    assert refused.failed and 'did not pass its health checks' in refused['msg'], refused
    assert [get(public)[1] for _n in range(5)] == ['blue'] * 5


def test_drain_lets_the_slow_request_finish_while_new_ones_go_to_green(run_module, proxy, backends):
    blue, green = backends('blue', slow=2.5), backends('green')
    public, _shop = serve(run_module, proxy, blue.port, green.port)
    slow = in_thread(lambda: get(public, '/slow'))
    wait_for(lambda: proxy.api.stats()['shop']['servers']['blue']['scur'] == 1, 5, 'the slow request never reached blue')
    flip = in_thread(lambda: switch(run_module, proxy, to='green'))
    wait_for(lambda: proxy.api.stats()['shop']['servers']['blue']['status'] == 'DRAIN', 10, 'blue was never drained')
    assert [get(public)[1] for _n in range(6)] == ['green'] * 6
    assert proxy.api.stats()['shop']['servers']['blue']['scur'] == 1  # still in flight, and blue not in maint yet
    flip['thread'].join(30)
    slow['thread'].join(10)
    result = flip['value']
    assert not result.failed, result
    assert slow['value'] == (200, 'blue')
    assert result['drained'] is True and result['in_flight'] == 0
    assert 0.5 < result['drain_seconds'] < 3, result['drain_seconds']
    assert actions(result)[-2:] == [('blue', 'drained'), ('blue', 'maint')]
    assert states(proxy)['blue'] == ('maint', 100)


def test_drain_timeout_puts_the_busy_server_in_maint_all_the_same(run_module, proxy, backends):
    blue, green = backends('blue', slow=3.0), backends('green')
    public, _shop = serve(run_module, proxy, blue.port, green.port)
    slow = in_thread(lambda: get(public, '/slow'))
    wait_for(lambda: proxy.api.stats()['shop']['servers']['blue']['scur'] == 1, 5, 'the slow request never reached blue')
    result = switch(run_module, proxy, to='green', drain_timeout=1)
    assert not result.failed, result
    assert result['drained'] is False and result['in_flight'] == 1
    assert 1 <= result['drain_seconds'] < 2, result['drain_seconds']
    timeout = result['events'][-2]
    assert (timeout['server'], timeout['action'], timeout['in_flight']) == ('blue', 'drain_timeout', 1)
    assert states(proxy)['blue'] == ('maint', 100)
    assert get(public)[1] == 'green'
    slow['thread'].join(10)
    # maint takes nothing new, but HAProxy does not cut what the server holds
    assert slow['value'] == (200, 'blue')


def test_a_server_that_does_not_answer_takes_no_traffic(run_module, proxy, backends):
    blue = backends('blue')
    silent = PORTS.take()  # green's port: nothing listens there
    public, _shop = serve(run_module, proxy, blue.port, silent)
    with Load(public, rate=50, seconds=2.0) as load:
        result = switch(run_module, proxy, to='green', up_timeout=1)
    assert result.failed and not result['changed'], result
    message = result['msg']
    assert 'green of route shop did not pass its health checks within 1 s' in message, message
    assert 'status DOWN, check_status L4CON' in message, message
    assert 'back in maint and nothing was switched; the traffic stays on blue' in message, message
    assert 'port %d' % silent in message, message
    assert actions(result) == [('green', 'drain'), ('green', 'up_timeout'), ('green', 'maint')]
    assert load.failures == [], load.failures
    assert states(proxy) == {'blue': ('ready', 100), 'green': ('maint', 100)}
    assert result['servers']['green']['after']['state'] == 'maint'
    assert get(public) == (200, 'blue')
    assert not os.path.exists(proxy.state_file)  # nothing changed, nothing saved


def test_a_check_result_from_before_maint_does_not_count(run_module, proxy, backends):
    # With fall 1, HAProxy shows a server leaving maint as DRAIN with the L4OK of its last check before maint: it
    # looks healthy although its service stopped since. Only checks run after leaving maint may count.
    blue, green = backends('blue'), backends('green')
    public, _shop = serve(run_module, proxy, blue.port, green.port, fall=1)
    proxy.api.set_server_state('shop', 'green', 'drain')
    wait_for(lambda: proxy.api.stats()['shop']['servers']['green']['check_status'] == 'L4OK', 5, 'green never passed')
    proxy.api.set_server_state('shop', 'green', 'maint')
    green.stop()
    with Load(public, rate=50, seconds=2.0) as load:
        result = switch(run_module, proxy, to='green', up_timeout=1)
    assert result.failed and 'nothing was switched' in result['msg'], result
    assert 'status DOWN' in result['msg'], result['msg']
    assert load.failures == [], load.failures
    assert states(proxy)['green'] == ('maint', 100)
    assert get(public) == (200, 'blue')


def test_share_25_then_100(run_module, proxy, backends):
    blue, green = backends('blue'), backends('green')
    public, _shop = serve(run_module, proxy, blue.port, green.port)
    part = switch(run_module, proxy, to='green', share=25)
    assert not part.failed and part['changed'], part
    assert states(proxy) == {'blue': ('ready', 75), 'green': ('ready', 25)}
    assert part['drained'] is None and part['in_flight'] is None and part['drain_seconds'] is None
    assert actions(part) == [('green', 'drain'), ('green', 'up'), ('green', 'weight'), ('green', 'ready'), ('blue', 'weight')]
    answers = [get(public)[1] for _n in range(40)]
    assert 6 <= answers.count('green') <= 14 and answers.count('blue') + answers.count('green') == 40, answers
    again = switch(run_module, proxy, to='green', share=25)
    assert not again.failed and not again['changed'] and again['events'] == [] and again['plan'] == [], again
    whole = switch(run_module, proxy, to='green', share=100)
    assert not whole.failed and whole['changed'], whole
    assert actions(whole) == [('green', 'weight'), ('blue', 'drain'), ('blue', 'drained'), ('blue', 'maint')]
    assert states(proxy) == {'blue': ('maint', 75), 'green': ('ready', 100)}
    assert [get(public)[1] for _n in range(8)] == ['green'] * 8
    # share 0 back on blue: blue must come up before green's weight goes to 0
    zero = switch(run_module, proxy, to='green', share=0)
    assert not zero.failed, zero
    assert actions(zero) == [('blue', 'drain'), ('blue', 'up'), ('blue', 'weight'), ('blue', 'ready'),
                             ('green', 'weight')]
    assert states(proxy) == {'blue': ('ready', 100), 'green': ('ready', 0)}
    assert [get(public)[1] for _n in range(8)] == ['blue'] * 8


def test_check_mode_then_apply_then_again_is_idempotent(run_module, proxy, backends):
    blue, green = backends('blue'), backends('green')
    public, _shop = serve(run_module, proxy, blue.port, green.port)
    check = switch(run_module, proxy, check=True, diff=True, to='green')
    assert not check.failed and check['changed'], check
    assert [(step['server'], step['to']['state'], step['wait']) for step in check['plan']] == [
        ('green', 'drain', 'checks'), ('green', 'ready', None), ('blue', 'drain', 'sessions'), ('blue', 'maint', None)]
    assert check['events'] == [] and check['drained'] is None
    assert check['diff'] == {'before': {'blue': {'state': 'ready', 'weight': 100}, 'green': {'state': 'maint', 'weight': 100}},
                             'after': {'blue': {'state': 'maint', 'weight': 100}, 'green': {'state': 'ready', 'weight': 100}}}
    assert check['servers']['green']['after']['status'] is None
    assert states(proxy) == {'blue': ('ready', 100), 'green': ('maint', 100)}
    assert not os.path.exists(proxy.state_file)
    assert get(public) == (200, 'blue')
    applied = switch(run_module, proxy, diff=True, to='green')
    assert not applied.failed and applied['changed'], applied
    assert applied['plan'] == check['plan'] and applied['diff'] == check['diff']
    for name in ('blue', 'green'):
        real = applied['servers'][name]['after']
        assert (real['state'], real['weight']) == (check['diff']['after'][name]['state'], check['diff']['after'][name]['weight'])
    saved = os.stat(proxy.state_file).st_mtime_ns
    check_again = switch(run_module, proxy, check=True, diff=True, to='green')
    assert not check_again['changed'] and check_again['plan'] == [], check_again
    again = switch(run_module, proxy, diff=True, to='green')
    assert not again.failed and not again['changed'] and again['events'] == [], again
    assert again['diff']['before'] == again['diff']['after']
    assert again['drained'] is None
    assert os.stat(proxy.state_file).st_mtime_ns == saved  # nothing written


def test_a_flip_survives_a_restart_and_a_reload(run_module, proxy, backends):
    blue, green = backends('blue'), backends('green')
    public, shop = serve(run_module, proxy, blue.port, green.port)
    flip = switch(run_module, proxy, to='green')
    assert not flip.failed and flip['changed'], flip
    # a restart loads only the file traffic_switch saved (traffic_proxy saves it before a reload, not before a start)
    proxy.stop()
    restarted = run_module('traffic_proxy', proxy.args([shop]))
    assert not restarted.failed and restarted['started'], restarted
    assert states(proxy) == {'blue': ('maint', 100), 'green': ('ready', 100)}
    wait_for(lambda: proxy.api.stats()['shop']['servers']['green']['status'] == 'UP', 5, 'green did not come back up')
    assert [get(public)[1] for _n in range(6)] == ['green'] * 6
    reloaded = run_module('traffic_proxy', proxy.args([dict(shop, retries=2)]))
    assert not reloaded.failed and reloaded['reloaded'], reloaded
    assert states(proxy) == {'blue': ('maint', 100), 'green': ('ready', 100)}
    assert [get(public)[1] for _n in range(6)] == ['green'] * 6
    back = switch(run_module, proxy, to='blue')
    assert not back.failed and back['changed'], back
    assert [get(public)[1] for _n in range(6)] == ['blue'] * 6


def test_traffic_server_saves_the_state_file(run_module, proxy, backends):
    blue, green = backends('blue'), backends('green')
    public, shop = serve(run_module, proxy, blue.port, green.port)
    args = dict(route='shop', runtime_socket=proxy.socket, server_state_file=proxy.state_file)
    ready = run_module('traffic_server', dict(args, server='green', state='ready', weight=30))
    assert not ready.failed and ready['changed'], ready
    assert os.path.exists(proxy.state_file)
    saved = os.stat(proxy.state_file).st_mtime_ns
    assert not run_module('traffic_server', dict(args, server='green', state='ready', weight=30))['changed']
    assert os.stat(proxy.state_file).st_mtime_ns == saved
    proxy.stop()
    assert not run_module('traffic_proxy', proxy.args([shop])).failed
    assert states(proxy) == {'blue': ('ready', 100), 'green': ('ready', 30)}


def test_missing_route_or_server_changes_nothing(run_module, proxy, backends):
    blue = backends('blue')
    public = PORTS.take()
    assert not run_module('traffic_proxy', proxy.args([route('shop', public, blue.port)])).failed
    missing = switch(run_module, proxy, to='green')
    assert missing.failed and not missing['changed'], missing
    assert 'route shop has no server green in the proxy: run the traffic role or traffic_proxy' in missing['msg']
    nowhere = switch(run_module, proxy, route='cart', to='green')
    assert nowhere.failed and 'HAProxy has no route cart' in nowhere['msg'], nowhere
    share = switch(run_module, proxy, to='green', share=101)
    assert share.failed and 'from 0 to 100' in share['msg'], share
    assert states(proxy) == {'blue': ('ready', 100)}
    assert get(public) == (200, 'blue')
    assert not os.path.exists(proxy.state_file)
