"""The slots of a routed stack: the slot's compose file, the proxy's routes, the gate's checks (no engine)."""

from __future__ import annotations

import pytest

from ansible_collections.safedeploy.compose.plugins.module_utils._slots import (
    SlotError,
    proxy_routes,
    render_slot,
    route_name,
    slot_checks,
    slot_ports,
)

CONFIG = {
    'name': 'shop',
    'networks': {'default': {'name': 'shop_default'}, 'front': {'name': 'shop_front'}},
    'volumes': {'assets': {'name': 'shop_assets'}},
    'services': {
        'web': {'image': 'r/web:1@sha256:' + 'a' * 64, 'scale': 0, 'ports': [
            {'target': 8000, 'published': '80', 'host_ip': '0.0.0.0', 'protocol': 'tcp'},
            {'target': 9100, 'published': '9100', 'protocol': 'tcp'}],
            'depends_on': {'db': {'condition': 'service_started'}, 'api': {'condition': 'service_started'}},
            'networks': {'default': None, 'front': None},
            'volumes': [{'type': 'volume', 'source': 'assets', 'target': '/srv/assets'},
                        {'type': 'bind', 'source': '/etc/shop', 'target': '/etc/shop'}],
            'labels': {'team': 'shop'}},
        'api': {'image': 'r/api:1@sha256:' + 'b' * 64, 'scale': 0, 'networks': {'default': None}},
        'db': {'image': 'postgres:16', 'networks': {'default': None}},
    },
}
ROUTED = {'web': {'container_port': 8000, 'port': 20010}, 'api': {'container_port': 9000, 'port': 20012}}


def test_a_slot_holds_the_routed_services_on_their_slot_ports_only():
    rendered, notes = render_slot(CONFIG, 'shop', 'green', ROUTED, 'r7')
    assert rendered['name'] == 'shop-green'
    assert sorted(rendered['services']) == ['api', 'web']
    web = rendered['services']['web']
    assert web['ports'] == [{'mode': 'ingress', 'host_ip': '127.0.0.1', 'target': 8000, 'published': '20010',
                             'protocol': 'tcp'}]
    assert 'scale' not in web
    assert web['depends_on'] == {'api': {'condition': 'service_started'}}  # db runs in the project
    assert web['labels'] == {'team': 'shop', 'org.safedeploy.slot': 'green', 'org.safedeploy.release': 'r7'}
    assert any('9100:9100' in note for note in notes), notes
    # default is used by db in the project: joined; front is used by slotted services only: the slot's own
    assert rendered['networks']['default'] == {'name': 'shop_default', 'external': True}
    assert rendered['networks']['front'] == {}
    assert rendered['volumes'] == {'assets': {'name': 'shop_assets', 'external': True}}
    assert 'db' not in rendered['services']
    assert CONFIG['services']['web']['scale'] == 0  # the input is not changed


def test_a_slot_is_refused_for_what_cannot_run_twice():
    config = {'services': {'web': {'image': 'x', 'container_name': 'web'}}}
    with pytest.raises(SlotError, match='container_name'):
        render_slot(config, 'shop', 'blue', {'web': {'container_port': 80, 'port': 20000}}, 'r1')
    config = {'services': {'web': {'image': 'x', 'network_mode': 'host'}}}
    with pytest.raises(SlotError, match='network_mode host'):
        render_slot(config, 'shop', 'blue', {'web': {'container_port': 80, 'port': 20000}}, 'r1')
    with pytest.raises(SlotError, match='not in the compose files'):
        render_slot({'services': {}}, 'shop', 'blue', {'web': {'container_port': 80, 'port': 20000}}, 'r1')
    with pytest.raises(SlotError, match='blue or green'):
        render_slot(CONFIG, 'shop', 'red', ROUTED, 'r1')


def test_slot_ports_are_stable_paired_and_in_range():
    blue, green = slot_ports('shop', 'web')
    assert (blue, green) == slot_ports('shop', 'web')
    assert green == blue + 1 and blue % 2 == 0 and 20000 <= blue < 28000
    assert slot_ports('shop', 'api') != (blue, green)


def test_proxy_routes_of_the_stacks():
    stacks = [{'name': 'shop', 'routes': [{'service': 'web', 'port': 80, 'container_port': 8000,
                                           'health_path': '/healthz', 'slot_ports': [21000, 21001]}]},
              {'name': '9lives', 'routes': [{'service': 'api', 'port': 8080, 'container_port': 9000, 'mode': 'tcp'}]},
              {'name': 'plain'}]
    routes = proxy_routes(stacks)
    assert routes[0] == {'name': 'shop-web', 'port': 80, 'bind': '0.0.0.0', 'mode': 'http', 'health_path': '/healthz',
                         'blue': {'port': 21000, 'state': 'maint'}, 'green': {'port': 21001, 'state': 'maint'}}
    assert routes[1]['name'] == 'r9lives-api' and routes[1]['mode'] == 'tcp'
    assert routes[1]['blue']['port'] == slot_ports('9lives', 'api')[0]
    assert len(routes) == 2
    assert route_name('a.b', 'c') == 'a_b-c'


def test_slot_checks_aim_at_the_slot():
    routes = [{'service': 'web', 'port': 8080, 'slot_ports': [21000, 21001]}]
    checks = [
        {'name': 'web', 'type': 'http', 'url': 'http://127.0.0.1:8080/health', 'bearer_token': 's3cret'},
        {'name': 'other', 'type': 'http', 'url': 'http://127.0.0.1:9000/health'},
        {'name': 'remote', 'type': 'http', 'url': 'http://shop.example.com:8080/health'},
        {'name': 'tcp', 'type': 'tcp', 'host': '127.0.0.1', 'port': 8080},
        {'name': 'shop containers', 'type': 'containers', 'project': 'shop',
         'digests': {'web': 'sha256:1', 'worker': 'sha256:2'}},
    ]
    out = slot_checks(checks, 'shop', routes, 'green', {'web': 'sha256:1', 'worker': 'sha256:2'})
    by_name = dict((check['name'], check) for check in out)
    assert by_name['web']['url'] == 'http://127.0.0.1:21001/health'
    assert by_name['web']['bearer_token'] == 's3cret'
    assert by_name['other']['url'] == 'http://127.0.0.1:9000/health'
    assert by_name['remote']['url'] == 'http://shop.example.com:8080/health'
    assert by_name['tcp']['port'] == 21001
    assert by_name['shop containers']['digests'] == {'worker': 'sha256:2'}
    assert by_name['shop-green containers'] == {'name': 'shop-green containers', 'type': 'containers',
                                                'project': 'shop-green', 'digests': {'web': 'sha256:1'},
                                                'services': ['web']}
    assert checks[0]['url'] == 'http://127.0.0.1:8080/health'  # the input is not changed
    only = slot_checks(checks, 'shop', routes, 'blue', {'web': 'sha256:1'}, only_slot=True)
    assert [check['name'] for check in only] == ['web', 'tcp', 'shop-blue containers']
    assert only[0]['url'] == 'http://127.0.0.1:21000/health'


def test_a_project_whose_services_are_all_routed_has_no_containers_check_of_its_own():
    routes = [{'service': 'web', 'port': 8080}]
    checks = [{'name': 'shop containers', 'type': 'containers', 'project': 'shop', 'digests': {'web': 'sha256:1'}}]
    out = slot_checks(checks, 'shop', routes, 'blue', {'web': 'sha256:1'})
    assert [check['project'] for check in out] == ['shop-blue']
