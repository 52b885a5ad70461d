"""traffic_proxy and the runtime API against a real HAProxy, with plain Python HTTP servers as the backends.

ENGINE-FREE: nothing here uses Docker (no engine, no registry, no compose); the test bed is not needed. Every HAProxy
this file starts runs from its own files in a temporary directory and is stopped at the end of its test; ports come
from 19100-19199 only.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from conftest import LOCAL_HOST_VARS, PortRange
from haproxy_bed import backends_fixture, FaultyBackend, get, HAPROXY_MARKS, Load, proxy_fixture, route

from ansible_collections.safedeploy.compose.plugins.module_utils._haproxy import RuntimeAPI

pytestmark = HAPROXY_MARKS

PORTS = PortRange(range(19100, 19200))
backends = backends_fixture(PORTS, FaultyBackend)
proxy = proxy_fixture()


def test_renders_validates_starts_and_routes_to_blue(run_module, proxy, backends):
    blue, green = backends('blue'), backends('green')
    public = PORTS.take()
    routes = [route('shop', public, blue.port, green.port, health_path='/health')]
    routes[0]['green']['state'] = 'maint'
    result = run_module('traffic_proxy', proxy.args(routes))
    assert not result.failed, result
    assert result['changed'] and result['started'] and not result['reloaded']
    assert result['service_manager'] == 'process'
    assert result['servers']['shop']['servers']['green']['status'] == 'MAINT'
    assert oct(os.stat(proxy.config).st_mode & 0o777) == '0o644'
    for _attempt in range(5):
        assert get(public) == (200, 'blue')
    # the same routes again: nothing changes, nothing restarts
    again = run_module('traffic_proxy', proxy.args(routes))
    assert not again.failed, again
    assert not again['changed'] and not again['started'] and not again['reloaded']
    assert again['pid'] == result['pid']


def test_a_get_a_server_failed_is_answered_by_the_other_one_and_a_post_is_never_sent_twice(
        run_module, proxy, backends):
    blue = backends('blue', faulty=True)
    green = backends('green', faulty=True, error_ratio=1.0)  # answers 500 to everything, accepts connections
    public = PORTS.take()
    result = run_module('traffic_proxy', proxy.args([route('shop', public, blue.port, green.port)]))
    assert not result.failed, result
    gets = [get(public) for _number in range(20)]
    assert gets == [(200, 'blue')] * 20, gets  # green's 500s were retried on blue
    assert green.served >= 5, green.served  # green had its share of them all the same
    served_before = green.served
    posts = [get(public, method='POST', body=b'order=1') for _number in range(20)]
    failed = [answer for answer in posts if answer[0] != 200]
    # a POST green answered 500 reaches the client: it may have done its work, so it is never retried
    assert failed and all(answer == (500, 'failing green') for answer in failed), posts
    assert green.served - served_before == len(failed), (green.served, served_before, posts)
    stats = RuntimeAPI(proxy.socket).stats()['shop']['servers']['green']
    assert stats['wredis'] == served_before and stats['hrsp_5xx'] == len(failed), stats


def test_a_moved_runtime_socket_is_taken_by_a_reload(run_module, proxy, backends):
    blue = backends('blue')
    public = PORTS.take()
    routes = [route('shop', public, blue.port)]
    first = run_module('traffic_proxy', proxy.args(routes))
    assert not first.failed, first
    moved = str(proxy.dir / 'api.sock')
    # The running workers do not answer on the new path: the reload must not wait for them there.
    second = run_module('traffic_proxy', proxy.args(routes, runtime_socket=moved))
    assert not second.failed, second
    assert second['changed'] and second['reloaded'] and second['pid'] != first['pid']
    assert int(RuntimeAPI(moved, timeout=5).info()['Pid']) == second['pid']
    assert get(public) == (200, 'blue')


def test_reload_drops_no_request(run_module, proxy, backends):
    blue, green, other = backends('blue'), backends('green'), backends('other')
    public, second = PORTS.take(), PORTS.take()
    routes = [route('shop', public, blue.port)]
    first = run_module('traffic_proxy', proxy.args(routes))
    assert not first.failed, first
    master = proxy.master()
    with Load(public, rate=50, seconds=5.0) as load:
        time.sleep(1.0)
        # a new route and the shop's blue server on another port: two reloads while the client runs
        changed = run_module('traffic_proxy', proxy.args([route('shop', public, green.port),
                                                          route('api', second, other.port)]))
        assert not changed.failed, changed
        assert changed['changed'] and changed['reloaded'] and not changed['started']
        assert changed['pid'] != first['pid']
        time.sleep(1.0)
        back = run_module('traffic_proxy', proxy.args([route('shop', public, blue.port)]))
        assert not back.failed, back
        assert back['reloaded']
    assert load.failures == [], load.failures
    assert load.ok == 250
    assert proxy.master() == master  # the same master, new workers
    assert get(public) == (200, 'blue')


def test_invalid_configuration_changes_nothing(run_module, proxy, backends):
    blue = backends('blue')
    public = PORTS.take()
    good = run_module('traffic_proxy', proxy.args([route('shop', public, blue.port)]))
    assert not good.failed, good
    with open(proxy.config) as handle:
        before = handle.read()
    bad = [route('shop', public, blue.port, backend_options=['frobnicate the servers'])]
    result = run_module('traffic_proxy', proxy.args(bad))
    assert result.failed
    assert 'HAProxy refused the new configuration' in result['msg']
    assert 'frobnicate' in result['msg'] and '[ALERT]' in result['msg']
    with open(proxy.config) as handle:
        assert handle.read() == before
    assert proxy.api.info()['Pid'] == str(good['pid'])
    assert get(public) == (200, 'blue')
    assert not [name for name in os.listdir(proxy.dir) if name.startswith('.')]  # no candidate left behind


def test_renderer_errors_name_the_fix(run_module, proxy, backends):
    result = run_module('traffic_proxy', proxy.args([route('shop', 19150, 19151), route('api', 19150, 19152)]))
    assert result.failed
    assert 'both listen on port 19150' in result['msg']
    assert not os.path.exists(proxy.config)


def test_check_mode_changes_nothing_and_shows_the_diff(run_module, proxy, backends):
    blue = backends('blue')
    public = PORTS.take()
    result = run_module('traffic_proxy', proxy.args([route('shop', public, blue.port)]), check=True, diff=True)
    assert not result.failed, result
    assert result['changed'] and result['started']
    assert 'bind 127.0.0.1:%d' % public in result['diff']['after'] and result['diff']['before'] == ''
    assert not os.path.exists(proxy.config) and proxy.master() is None
    started = run_module('traffic_proxy', proxy.args([route('shop', public, blue.port)]))
    assert not started.failed, started
    other = PORTS.take()
    check = run_module('traffic_proxy', proxy.args([route('shop', public, other)]), check=True, diff=True)
    assert check['changed'] and check['reloaded'] and not check['started']
    assert '127.0.0.1:%d' % other in check['diff']['after'] and '127.0.0.1:%d' % blue.port in check['diff']['before']
    assert '127.0.0.1:%d' % other not in open(proxy.config).read()
    assert proxy.api.info()['Pid'] == str(started['pid'])


def test_drain_finishes_the_slow_request_and_sends_new_ones_to_green(run_module, proxy, backends):
    blue, green = backends('blue', slow=2.0), backends('green', slow=2.0)
    public = PORTS.take()
    result = run_module('traffic_proxy', proxy.args([route('shop', public, blue.port, green.port)]))
    assert not result.failed, result
    proxy.api.set_server_state('shop', 'green', 'maint')
    slow = {}

    def slow_request():
        slow['answer'] = get(public, '/slow')
    thread = threading.Thread(target=slow_request)
    thread.start()
    deadline = time.monotonic() + 5
    while proxy.api.stats()['shop']['servers']['blue']['scur'] != 1:
        assert time.monotonic() < deadline, 'the slow request never reached blue'
        time.sleep(0.02)
    proxy.api.set_server_state('shop', 'green', 'ready')
    proxy.api.set_server_state('shop', 'blue', 'drain')
    servers = proxy.api.stats()['shop']['servers']
    assert servers['blue']['status'] == 'DRAIN' and servers['blue']['scur'] == 1
    assert [get(public)[1] for _n in range(6)] == ['green'] * 6
    thread.join(10)
    assert slow['answer'] == (200, 'blue')
    states = dict((row['srv_name'], row) for row in proxy.api.servers_state('shop'))
    assert set(states) == {'blue', 'green'}
    proxy.api.set_server_weight('shop', 'green', 50)
    assert proxy.api.stats()['shop']['servers']['green']['weight'] == 50


def test_role_runs_the_proxy_and_is_idempotent(run_playbook, proxy, backends, tmp_path):
    blue = backends('blue')
    public = PORTS.take()
    playbook = tmp_path / 'traffic.yml'
    playbook.write_text(
        '- hosts: proxyhost\n'
        '  gather_facts: false\n'
        '  roles:\n'
        '    - role: safedeploy.compose.traffic\n')
    inventory = {'all': {'hosts': {'proxyhost': dict(LOCAL_HOST_VARS)}}}
    extra = dict(traffic_install=False, traffic_service_manager='process', traffic_config_path=proxy.config,
                 traffic_runtime_socket=proxy.socket, traffic_pid_file=proxy.pid_file,
                 traffic_master_socket=str(proxy.dir / 'master.sock'),
                 traffic_server_state_file=proxy.state_file, traffic_routes=[route('shop', public, blue.port)])
    first = run_playbook(playbook, inventory=inventory, extra_vars=extra, timeout=300)
    assert first.rc == 0, first.output
    assert first.recap['proxyhost']['changed'] == 1, first.output
    assert get(public) == (200, 'blue')
    assert 'user haproxy' in open(proxy.config).read()
    again = run_playbook(playbook, inventory=inventory, extra_vars=extra, timeout=300)
    assert again.rc == 0, again.output
    assert again.recap['proxyhost']['changed'] == 0, again.output
    bad = dict(extra, traffic_service_manager='launchd')
    refused = run_playbook(playbook, inventory=inventory, extra_vars=bad, timeout=300)
    assert refused.rc != 0 and 'launchd' in refused.output


def test_reload_that_cannot_bind_puts_the_file_back(run_module, proxy, backends):
    blue = backends('blue')
    public = PORTS.take()
    good = run_module('traffic_proxy', proxy.args([route('shop', public, blue.port)]))
    assert not good.failed, good
    with open(proxy.config) as handle:
        before = handle.read()
    taken = PORTS.take()
    with socket.socket() as squatter:  # haproxy -c passes; only binding the port fails
        squatter.bind(('127.0.0.1', taken))
        squatter.listen(1)
        result = run_module('traffic_proxy', proxy.args([route('shop', public, blue.port),
                                                         route('api', taken, PORTS.take())], reload_timeout=5))
    assert result.failed
    assert 'did not take the new configuration' in result['msg'] and 'was put back' in result['msg'], result['msg']
    with open(proxy.config) as handle:
        assert handle.read() == before
    assert proxy.api.info()['Pid'] == str(good['pid'])
    assert get(public) == (200, 'blue')
    again = run_module('traffic_proxy', proxy.args([route('shop', public, blue.port)]))
    assert not again.failed and not again['changed'], again
    green = backends('green')
    moved = run_module('traffic_proxy', proxy.args([route('shop', public, green.port)]))
    assert not moved.failed and moved['reloaded'], moved  # the master takes the next reload
    assert get(public) == (200, 'green')


def test_traffic_server_sets_state_and_weight_idempotently(run_module, proxy, backends):
    blue, green = backends('blue'), backends('green')
    public = PORTS.take()
    routes = [route('shop', public, blue.port, green.port)]
    routes[0]['green']['state'] = 'maint'
    assert not run_module('traffic_proxy', proxy.args(routes)).failed
    args = dict(route='shop', runtime_socket=proxy.socket, server_state_file=proxy.state_file)
    read = run_module('traffic_server', dict(args, server='green'))
    assert not read.failed and not read['changed'] and read['state'] == 'maint', read
    check = run_module('traffic_server', dict(args, server='green', state='ready'), check=True, diff=True)
    assert check['changed'] and check['diff']['after'] == dict(state='ready', weight=100), check
    assert run_module('traffic_server', dict(args, server='green'))['state'] == 'maint'
    ready = run_module('traffic_server', dict(args, server='green', state='ready', weight=50))
    assert not ready.failed and ready['changed'] and ready['state'] == 'ready' and ready['weight'] == 50, ready
    assert not run_module('traffic_server', dict(args, server='green', state='ready', weight=50))['changed']
    drained = run_module('traffic_server', dict(args, server='blue', state='drain'))
    assert drained['changed'] and drained['state'] == 'drain' and drained['stats']['status'] == 'DRAIN', drained
    assert [get(public)[1] for _n in range(4)] == ['green'] * 4
    missing = run_module('traffic_server', dict(args, route='nope', server='blue'))
    assert missing.failed and 'has no route nope' in missing['msg']
    unreachable = run_module('traffic_server', dict(route='shop', server='blue', runtime_socket=str(proxy.dir / 'x.sock')))
    assert unreachable.failed and 'cannot reach the runtime API' in unreachable['msg']


def test_haproxy_missing_fails_but_check_mode_only_warns(run_module, proxy):
    routes = [route('shop', 19160, 19161)]
    missing = run_module('traffic_proxy', proxy.args(routes, haproxy_command='/nonexistent/haproxy'))
    assert missing.failed and 'is not installed on this host' in missing['msg'], missing
    check = run_module('traffic_proxy', proxy.args(routes, haproxy_command='/nonexistent/haproxy'), check=True)
    assert not check.failed and check['changed'], check
    assert 'not validated' in repr(check.get('warnings')), check
    assert not os.path.exists(proxy.config)
