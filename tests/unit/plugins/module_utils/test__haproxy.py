"""The traffic layer's HAProxy plumbing: the configuration renderer, the `show stat` parser, the runtime API client."""

from __future__ import annotations

import os
import socket
import tempfile
import threading

import pytest

from ansible_collections.safedeploy.compose.plugins.module_utils._haproxy import (
    HAProxyConfigError,
    HAProxyRuntimeError,
    RuntimeAPI,
    admin_state,
    alerts,
    normalize_routes,
    parse_servers_state,
    parse_stat_csv,
    render_config,
    server_stats,
)

SOCKET = '/run/haproxy/admin.sock'


def shop(**extra):
    entry = dict(name='shop', port=80, blue=dict(port=18080), green=dict(port=18081))
    entry.update(extra)
    return entry


# ---------------------------------------------------------------- renderer

def test_render_is_deterministic_and_sorted():
    routes = [dict(name='web', port=8080, blue=dict(port=18090)), shop(health_path='/healthz')]
    text = render_config(routes, SOCKET)
    assert text == render_config(list(reversed(routes)), SOCKET)
    assert text.index('frontend shop') < text.index('frontend web')
    assert '    stats socket /run/haproxy/admin.sock mode 600 level admin expose-fd listeners\n' in text
    assert '    master-worker\n' in text
    assert '    bind 0.0.0.0:80\n' in text
    assert '    option httpchk GET /healthz\n' in text
    assert '    server blue 127.0.0.1:18080 check weight 100\n' in text
    assert '    server green 127.0.0.1:18081 check weight 100\n' in text
    assert '    option redispatch 1\n' in text and '    retries 1\n' in text
    assert '    retry-on conn-failure empty-response 500 502 503 504\n' in text
    assert '    http-request disable-l7-retry if !METH_GET !METH_OPTIONS\n' in text
    assert text.endswith('\n')


def test_http_routes_retry_failed_requests_on_the_other_server_and_tcp_routes_only_connections():
    text = render_config([shop(retry_on=['conn-failure', '503'], retries=2),
                          dict(name='db', port=5432, mode='tcp', blue=dict(port=25432))], SOCKET)
    shop_backend = text[text.index('backend shop'):]
    db_backend = text[text.index('backend db'):text.index('frontend shop')]
    assert '    retry-on conn-failure 503\n' in shop_backend and '    retries 2\n' in shop_backend
    assert 'retry-on' not in db_backend and 'disable-l7-retry' not in db_backend
    assert '    option redispatch 1\n' in db_backend
    assert 'retry-on none\n' in render_config([shop(retry_on='none')], SOCKET)


@pytest.mark.parametrize('route, fragment', [
    (dict(retry_on=['500', 'teapot']), 'retry_on keyword teapot is not known'),
    (dict(retry_on=[]), 'non-empty list'),
    (dict(retry_on=['none', '500']), 'none cannot be combined'),
    (dict(mode='tcp', retry_on=['conn-failure']), 'retry_on needs mode http'),
])
def test_bad_retry_on_is_refused_naming_the_route(route, fragment):
    with pytest.raises(HAProxyConfigError, match=fragment) as caught:
        render_config([shop(**route)], SOCKET)
    assert 'route shop' in str(caught.value)


def test_render_states_weights_and_options():
    text = render_config([shop(mode='tcp', bind='127.0.0.1', blue=dict(port=18080, weight=30, state='drain'),
                               green=dict(port=18081, state='maint'), backend_options=['balance leastconn'])],
                         SOCKET, timeouts=dict(connect=1000), user='haproxy', group='haproxy', hard_stop_after=30000)
    assert '    server blue 127.0.0.1:18080 check weight 0\n' in text
    assert '    server green 127.0.0.1:18081 check weight 100 disabled\n' in text
    assert '    mode tcp\n' in text and '    bind 127.0.0.1:80\n' in text
    assert '    balance leastconn\n' in text
    assert '    timeout connect 1000ms\n' in text and '    timeout server 60000ms\n' in text
    assert '    user haproxy\n' in text and '    hard-stop-after 30000ms\n' in text


def test_green_is_optional():
    text = render_config([dict(name='shop', port=80, blue=dict(port=18080))], SOCKET)
    assert 'server green' not in text


@pytest.mark.parametrize('routes, message', [
    ([shop(name='bad name')], 'route name'),
    ([shop(port=0)], 'port must be a whole number from 1 to 65535'),
    ([shop(port='80x')], 'port must be a whole number'),
    ([shop(port=True)], 'port must be a whole number'),
    ([shop(mode='udp')], 'mode must be http or tcp'),
    ([shop(bind='localhost')], 'must be an IPv4 address'),
    ([shop(bind='300.0.0.1')], 'must be an IPv4 address'),
    ([shop(health_path='healthz')], 'health_path must start with /'),
    ([shop(health_path='/a b')], 'health_path must start with /'),
    ([shop(mode='tcp', health_path='/h')], 'health_path needs mode http'),
    ([dict(name='shop', port=80)], 'needs a blue server'),
    ([shop(blue=dict(weight=3))], 'needs a port'),
    ([shop(blue=dict(port=1, state='up'))], 'state must be one of ready, drain, maint'),
    ([shop(blue=dict(port=1, weight=257))], 'weight must be a whole number from 0 to 256'),
    ([shop(blue=dict(port=1, colour='blue'))], 'unknown keys colour'),
    ([shop(colour='blue')], 'unknown keys colour'),
    ([shop(backend_options=['a\nb'])], 'single, non-empty configuration lines'),
    ([shop(), shop(port=81, blue=dict(port=1), green=dict(port=2))], 'route shop is given twice'),
    ([shop(), dict(name='web', port=80, bind='127.0.0.1', blue=dict(port=1))], 'both listen on port 80'),
    ([shop(), dict(name='web', port=81, blue=dict(port=18081))], 'both use loopback port 18081'),
    ([shop(blue=dict(port=80))], 'the public port of route shop'),
    ('shop', 'routes must be a list'),
])
def test_invalid_routes_are_named(routes, message):
    with pytest.raises(HAProxyConfigError, match=message.replace('(', r'\(')):
        render_config(routes, SOCKET)


def test_distinct_addresses_may_share_a_port():
    routes = normalize_routes([dict(name='a', port=80, bind='127.0.0.1', blue=dict(port=1)),
                               dict(name='b', port=80, bind='10.0.0.1', blue=dict(port=2))])
    assert [route['name'] for route in routes] == ['a', 'b']


@pytest.mark.parametrize('kwargs, message', [
    (dict(stats_socket='admin.sock'), 'absolute path'),
    (dict(timeouts=dict(tunnel=5)), 'unknown timeout'),
    (dict(user='Root Admin'), 'not a valid account name'),
])
def test_invalid_globals(kwargs, message):
    args = dict(stats_socket=SOCKET)
    args.update(kwargs)
    with pytest.raises(HAProxyConfigError, match=message):
        render_config([shop()], **args)


def test_alerts_keep_only_the_alert_lines():
    output = ('[NOTICE]   (1) : haproxy version is 2.6.12\n'
              "[ALERT]    (1) : config : parsing [x.cfg:20] : unknown keyword 'frobnicate' in 'backend' section\n"
              '[ALERT]    (1) : config : Fatal errors found in configuration.\n')
    assert alerts(output).splitlines() == [
        "[ALERT]    (1) : config : parsing [x.cfg:20] : unknown keyword 'frobnicate' in 'backend' section",
        '[ALERT]    (1) : config : Fatal errors found in configuration.']
    assert alerts('  something else\n') == 'something else'


# ---------------------------------------------------------------- show stat, show servers state

STAT = (
    '# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,'
    'act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,'
    'check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,'
    'req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,'
    'qtime,ctime,rtime,ttime,\n'
    'shop,FRONTEND,,,2,5,262124,40,4100,9000,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,1,0,4,,,,0,38,0,2,0,0,,1,4,40,,,0,0,0,0,,,,'
    ',,,,\n'
    'shop,blue,0,0,2,3,,30,3000,7000,,0,,0,0,0,0,UP,100,1,0,0,0,120,0,,1,3,1,,30,,2,1,,3,L7OK,200,1,0,28,0,2,0,0,,,,,0,0,'
    ',,,,5,"HTTP status check returned code <3C>200<3E>",,0,1,4,6,\n'
    'shop,green,0,0,0,0,,10,1000,2000,,0,,0,0,0,0,MAINT,100,1,0,1,1,50,50,,1,3,2,,10,,2,0,,1,L4CON,,0,0,10,0,0,2,0,,,,,'
    '0,0,,,,,9,"Connection refused",,0,0,2,3,\n'
    'shop,BACKEND,0,0,2,5,,40,4100,9000,0,0,,0,0,0,0,UP,100,1,0,,0,120,0,,1,3,0,,40,,1,1,,4,,,,0,38,0,2,0,0,,,,40,0,0,0,'
    '0,0,0,5,,,0,1,4,6,\n'
)


def test_show_stat_is_parsed_into_counters_per_route_and_server():
    rows = parse_stat_csv(STAT)
    assert len(rows) == 4
    assert rows[1]['pxname'] == 'shop' and rows[1]['svname'] == 'blue'
    assert rows[1]['last_chk'] == 'HTTP status check returned code <3C>200<3E>'
    assert rows[0]['qcur'] is None
    stats = server_stats(rows)
    blue = stats['shop']['servers']['blue']
    assert blue['status'] == 'UP' and blue['weight'] == 100 and blue['scur'] == 2 and blue['stot'] == 30
    assert blue['hrsp_2xx'] == 28 and blue['hrsp_5xx'] == 0
    assert (blue['qtime'], blue['ctime'], blue['rtime'], blue['ttime']) == (0, 1, 4, 6)
    assert stats['shop']['servers']['green']['status'] == 'MAINT'
    assert stats['shop']['servers']['green']['hrsp_5xx'] == 2
    assert stats['shop']['frontend']['status'] == 'OPEN' and stats['shop']['frontend']['hrsp_2xx'] == 38
    assert stats['shop']['backend']['stot'] == 40


def test_show_stat_without_header_is_an_error():
    with pytest.raises(HAProxyRuntimeError, match='no CSV header'):
        parse_stat_csv('Unknown command.\n')


def test_show_servers_state():
    text = ('1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight\n'
            '3 shop 1 blue 127.0.0.1 2 0 100 100\n3 shop 2 green 127.0.0.1 0 1 100 100\n')
    rows = parse_servers_state(text)
    assert rows[0] == dict(be_id=3, be_name='shop', srv_id=1, srv_name='blue', srv_addr='127.0.0.1', srv_op_state=2,
                           srv_admin_state=0, srv_uweight=100, srv_iweight=100)
    assert rows[1]['srv_admin_state'] == 1


# ---------------------------------------------------------------- the runtime API client on a fake socket

class FakeHAProxy(object):
    """A Unix socket answering like HAProxy's runtime API: one command per connection, then it hangs up."""

    def __init__(self, answers, hang=False):
        self.dir = tempfile.mkdtemp()
        self.path = os.path.join(self.dir, 'admin.sock')
        self.answers = answers
        self.hang = hang
        self.received = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b''
                while not data.endswith(b'\n'):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                command = data.decode().strip()
                self.received.append(command)
                if self.hang:
                    threading.Event().wait(2)
                    continue
                conn.sendall(self.answers.get(command, 'Unknown command.\n').encode())

    def close(self):
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


@pytest.fixture
def fake():
    made = []

    def make(answers, **kwargs):
        made.append(FakeHAProxy(answers, **kwargs))
        return made[-1]
    yield make
    for server in made:
        server.close()


def test_client_reads_stat_and_info(fake):
    server = fake({'show stat': STAT, 'show info': 'Name: HAProxy\nVersion: 2.6.12\nPid: 4242\n'})
    api = RuntimeAPI(server.path, timeout=2)
    assert api.stats()['shop']['servers']['blue']['scur'] == 2
    assert api.info()['Pid'] == '4242'
    assert api.wait_ready(1)['Version'] == '2.6.12'
    assert server.received == ['show stat', 'show info', 'show info']


def test_client_sets_state_and_weight(fake):
    server = fake({'set server shop/blue state drain': '\n', 'set server shop/green weight 20': '\n',
                   'set server shop/nope state ready': 'No such server.\n'})
    api = RuntimeAPI(server.path, timeout=2)
    api.set_server_state('shop', 'blue', 'drain')
    api.set_server_weight('shop', 'green', 20)
    with pytest.raises(HAProxyRuntimeError, match='HAProxy refused .*No such server'):
        api.set_server_state('shop', 'nope', 'ready')
    assert server.received == ['set server shop/blue state drain', 'set server shop/green weight 20',
                               'set server shop/nope state ready']


@pytest.mark.parametrize('call, message', [
    (lambda api: api.set_server_state('shop', 'blue', 'up'), 'a server state is one of'),
    (lambda api: api.set_server_weight('shop', 'blue', 300), 'weight is a whole number'),
    (lambda api: api.set_server_weight('shop', 'blue', True), 'weight is a whole number'),
    (lambda api: api.set_server_state('shop;shutdown', 'blue', 'ready'), 'letters, digits'),
    (lambda api: api.command('show info\nshutdown frontend x'), 'one runtime API command at a time'),
])
def test_client_refuses_bad_commands_before_sending(fake, call, message):
    server = fake({})
    with pytest.raises(HAProxyRuntimeError, match=message):
        call(RuntimeAPI(server.path, timeout=1))
    assert server.received == []


def test_client_is_bounded_by_its_timeout(fake):
    server = fake({}, hang=True)
    with pytest.raises(HAProxyRuntimeError, match='did not answer .* within 0.3 s'):
        RuntimeAPI(server.path, timeout=0.3).info()


def test_client_names_a_missing_socket(tmp_path):
    with pytest.raises(HAProxyRuntimeError, match='cannot reach the runtime API at .*stats socket'):
        RuntimeAPI(str(tmp_path / 'none.sock'), timeout=1).info()
    with pytest.raises(HAProxyRuntimeError):
        RuntimeAPI(str(tmp_path / 'none.sock'), timeout=1).wait_ready(0.2)


@pytest.mark.parametrize('bits, state', [(0, 'ready'), (1, 'maint'), (4, 'ready'), (5, 'maint'), (8, 'drain'),
                                         (16, 'drain'), (9, 'maint'), ('32', 'maint')])
def test_admin_state(bits, state):
    assert admin_state(bits) == state
