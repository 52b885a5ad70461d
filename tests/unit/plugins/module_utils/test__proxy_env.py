"""NO_PROXY networks (plugins/module_utils/_proxy_env.py), which urllib's own proxy check does not read."""

from __future__ import annotations

from ansible_collections.safedeploy.compose.plugins.module_utils._proxy_env import in_no_proxy_network


def test_an_address_inside_a_listed_network_goes_direct():
    environ = {'no_proxy': 'internal.example, 10.0.0.0/8,fd00::/8'}
    assert in_no_proxy_network('https://10.1.2.3:5000/v2/', environ)
    assert in_no_proxy_network('http://[fd00::1]:8080/health', environ)
    assert not in_no_proxy_network('http://11.1.2.3/', environ)
    assert not in_no_proxy_network('http://[fe80::1]/', environ)


def test_names_and_malformed_entries_are_left_to_urllib():
    environ = {'NO_PROXY': '10.0.0.0/33,not-a-net/8,internal.example'}
    assert not in_no_proxy_network('http://internal.example/', environ), 'host names are urllib\'s own check'
    assert not in_no_proxy_network('http://10.1.2.3/', environ)
    assert not in_no_proxy_network('http://10.1.2.3/', {})
