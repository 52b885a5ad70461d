# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private module_utils of safedeploy.compose: the blue and green slots of a routed stack. Not a public API.
#
# A routed service (one the traffic proxy fronts) does not run in its compose project: the pinned override scales it to
# 0 there (compose_pin's `slotted`), and it runs in two compose projects of its own, `<project>-blue` and
# `<project>-green`, one release each. A slot's compose file is rendered from the release's effective configuration
# (`compose config`): the routed services only, each publishing its container port on the slot's loopback port, joined
# to the project's networks and volumes where the project's other services use them. Standard library only.

from __future__ import annotations

import copy
import re
import zlib

SLOTS = ('blue', 'green')
SLOT_LABEL = 'org.safedeploy.slot'
RELEASE_LABEL = 'org.safedeploy.release'
PORT_BASE = 20000
PORT_PAIRS = 4000  # slot ports 20000-27999, blue even, green odd
_ROUTE_NAME_RE = re.compile(r'^[A-Za-z][A-Za-z0-9_-]{0,62}$')


class SlotError(ValueError):
    """A routed service that cannot run in two slots; the message names the service and the fix."""


def other_slot(slot):
    return 'green' if slot == 'blue' else 'blue'


def slot_project(project, slot):
    return '%s-%s' % (project, slot)


def slot_ports(project, service):
    """The (blue, green) loopback ports of a routed service: the same on every run and host, from its names."""
    index = zlib.crc32(('%s/%s' % (project, service)).encode('utf-8')) % PORT_PAIRS
    return PORT_BASE + 2 * index, PORT_BASE + 2 * index + 1


def route_name(project, service):
    """The proxy's route (frontend and backend) of a routed service: <project>-<service>, made a valid name."""
    name = re.sub(r'[^A-Za-z0-9_-]', '_', '%s-%s' % (project, service))
    if not name[:1].isalpha():
        name = 'r' + name
    return name[:63]


def _published_ports(spec):
    return [port for port in spec.get('ports') or [] if isinstance(port, dict) and port.get('published')]


def _network_names(spec):
    networks = spec.get('networks')
    if isinstance(networks, dict):
        return sorted(networks)
    if isinstance(networks, list):
        return sorted(networks)
    return []


def _named_volumes(spec):
    return sorted(set(volume.get('source') for volume in spec.get('volumes') or []
                      if isinstance(volume, dict) and volume.get('type') == 'volume' and volume.get('source')))


def render_slot(config, project, slot, routed, release):
    """(slot configuration, notes) for `routed` ({service: {'container_port': n, 'port': slot port}}).

    `config` is the release's effective configuration (compose config, JSON), in which the routed services are scaled
    to 0. Raises SlotError for a routed service that cannot run twice on one host (a fixed container name, the host's
    network) or that the configuration does not define.
    """
    if slot not in SLOTS:
        raise SlotError('slot must be blue or green, got %r' % (slot,))
    services = config.get('services') or {}
    missing = sorted(set(routed) - set(services))
    if missing:
        raise SlotError('routed service(s) %s are not in the compose files of %s: fix the stack\'s routes'
                        % (', '.join(missing), project))
    main_networks = set()
    for name, spec in services.items():
        if name not in routed and (spec or {}).get('scale', 1) != 0:
            main_networks.update(_network_names(spec or {}))
    notes = []
    out_services = {}
    used_networks = set()
    used_volumes = set()
    for name in sorted(routed):
        spec = copy.deepcopy(services[name] or {})
        where = 'routed service %s of %s' % (name, project)
        if spec.get('container_name'):
            raise SlotError('%s sets container_name %s: its blue and green slots run at once and need a name each; '
                            'remove container_name' % (where, spec['container_name']))
        mode = spec.get('network_mode') or ''
        if mode == 'host' or mode.startswith('container:') or mode.startswith('service:'):
            raise SlotError('%s uses network_mode %s: its two slots would listen on one port; give it a network of its '
                            'own (the default) and route to its container_port' % (where, mode))
        dropped = ['%s:%s' % (port.get('published'), port.get('target')) for port in _published_ports(spec)
                   if int(port.get('target') or 0) != int(routed[name]['container_port'])]
        if dropped:
            notes.append('%s publishes %s besides its route; a slot publishes only the routed port on 127.0.0.1'
                         % (where, ', '.join(dropped)))
        spec['ports'] = [{'mode': 'ingress', 'host_ip': '127.0.0.1', 'target': int(routed[name]['container_port']),
                          'published': str(int(routed[name]['port'])), 'protocol': 'tcp'}]
        for key in ('scale', 'profiles'):
            spec.pop(key, None)
        deploy = spec.get('deploy')
        if isinstance(deploy, dict):
            deploy.pop('replicas', None)
        depends = spec.get('depends_on')
        if isinstance(depends, dict):
            kept = dict((other, value) for other, value in depends.items() if other in routed)
            if kept:
                spec['depends_on'] = kept
            else:
                spec.pop('depends_on')
        elif isinstance(depends, list):
            kept = [other for other in depends if other in routed]
            if kept:
                spec['depends_on'] = kept
            else:
                spec.pop('depends_on')
        labels = spec.get('labels') or {}
        if isinstance(labels, list):
            labels = dict(item.split('=', 1) if '=' in item else (item, '') for item in labels)
        labels[SLOT_LABEL] = slot
        labels[RELEASE_LABEL] = str(release)
        spec['labels'] = labels
        used_networks.update(_network_names(spec))
        used_volumes.update(_named_volumes(spec))
        out_services[name] = spec
    networks = {}
    for key in sorted(used_networks):
        definition = copy.deepcopy((config.get('networks') or {}).get(key) or {})
        if definition.get('external'):
            networks[key] = definition
        elif key in main_networks:
            # the project's other services are on it: the slots join the project's own network
            networks[key] = {'name': definition.get('name') or '%s_%s' % (project, key), 'external': True}
        else:
            definition.pop('name', None)  # each slot gets its own (<project>-<slot>_<key>)
            networks[key] = definition
    volumes = {}
    for key in sorted(used_volumes):
        definition = (config.get('volumes') or {}).get(key) or {}
        volumes[key] = {'name': definition.get('name') or '%s_%s' % (project, key), 'external': True}
    rendered = {'name': slot_project(project, slot), 'services': out_services}
    if networks:
        rendered['networks'] = networks
    if volumes:
        rendered['volumes'] = volumes
    for key in ('secrets', 'configs'):
        if config.get(key):
            rendered[key] = copy.deepcopy(config[key])
    return rendered, notes


def check_routes(routes):
    """The problems of a stack's routes ([{service, port, container_port, ...}]) as sentences naming the fix."""
    problems = []
    if not isinstance(routes, list):
        return ['routes must be a list of {service, port, container_port}']
    seen = set()
    for index, route in enumerate(routes):
        if not isinstance(route, dict) or not route.get('service'):
            problems.append('route %d needs a service' % (index + 1))
            continue
        if route['service'] in seen:
            problems.append('service %s is routed twice' % route['service'])
        seen.add(route['service'])
        for key in ('port', 'container_port'):
            value = route.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
                problems.append('route of %s: %s must be a port number, got %r' % (route['service'], key, value))
    return problems


def route_ports(project, routes):
    """[(route, {'blue': port, 'green': port})] of a stack's routes."""
    pairs = []
    for route in routes:
        given = route.get('slot_ports')
        if given:
            ports = {'blue': int(given[0]), 'green': int(given[1])}
        else:
            blue, green = slot_ports(project, route['service'])
            ports = {'blue': blue, 'green': green}
        pairs.append((route, ports))
    return pairs


def proxy_routes(stacks):
    """The traffic_proxy routes of every routed service of `stacks` (entries of safedeploy_stacks): route
    <project>-<service> on the service's public port, blue and green on their slot ports, both starting in maint (a
    slot takes traffic once traffic_switch moves it there; the server-state file keeps that across reloads)."""
    routes = []
    for stack in stacks or []:
        project = stack.get('name') or stack.get('project')
        for route, ports in route_ports(project, stack.get('routes') or []):
            entry = {'name': route.get('name') or route_name(project, route['service']), 'port': int(route['port']),
                     'bind': route.get('bind') or '0.0.0.0', 'mode': route.get('mode') or 'http',
                     'blue': {'port': ports['blue'], 'state': 'maint'},
                     'green': {'port': ports['green'], 'state': 'maint'}}
            for key in ('health_path', 'check_interval', 'rise', 'fall', 'retries', 'retry_on', 'frontend_options',
                        'backend_options'):
                if route.get(key) is not None:
                    entry[key] = route[key]
            routes.append(entry)
    return routes


def _url_port(url):
    match = re.match(r'^(https?)://(127\.0\.0\.1|localhost|\[::1\])(?::(\d+))?(/.*)?$', url or '')
    if not match:
        return None
    scheme, _host, port, _rest = match.groups()
    return int(port) if port else (443 if scheme == 'https' else 80)


def slot_checks(checks, project, routes, slot, digests=None, only_slot=False):
    """The gate's checks for a release whose routed services run in `slot`: an http or tcp check on a route's public
    port (on this host) probes the slot's port instead, the project's containers check leaves the routed services
    out, and one containers check of the slot project is added (on their digests). `only_slot`: only the checks aimed
    at the slot (the rewritten probes and the slot's containers check)."""
    digests = dict(digests or {})
    by_port = {}
    routed = set()
    for route, ports in route_ports(project, routes):
        by_port[int(route['port'])] = ports[slot]
        routed.add(route['service'])
    out = []
    for check in checks or []:
        check = dict(check)
        kind = check.get('type')
        aimed = False
        if kind == 'http':
            port = _url_port(check.get('url'))
            if port in by_port:
                aimed = True
                check['url'] = re.sub(r'^(https?://(?:127\.0\.0\.1|localhost|\[::1\]))(?::\d+)?',
                                      lambda m: '%s:%d' % (m.group(1), by_port[port]), check['url'])
        elif kind == 'tcp':
            if check.get('host', '127.0.0.1') in ('127.0.0.1', 'localhost', '::1') and int(check.get('port') or 0) in by_port:
                check['port'] = by_port[int(check['port'])]
                aimed = True
        elif kind == 'containers' and check.get('project') == project:
            if check.get('digests'):
                check['digests'] = dict((k, v) for k, v in check['digests'].items() if k not in routed)
            if check.get('services'):
                check['services'] = [s for s in check['services'] if s not in routed]
            if not check.get('digests') and not check.get('services'):
                continue  # every service of the project is routed: nothing of it runs in the project itself
        if aimed or not only_slot:
            out.append(check)
    out.append({'name': '%s containers' % slot_project(project, slot), 'type': 'containers',
                'project': slot_project(project, slot),
                'digests': dict((k, v) for k, v in digests.items() if k in routed) or None,
                'services': sorted(routed)})
    for check in out:
        if check.get('type') == 'containers' and check.get('digests') is None:
            check.pop('digests', None)
    return out
