#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: compose_slot
short_description: The blue or green slot of a routed compose stack, its compose file and its containers
version_added: 0.4.0
description:
  - A routed service (one that M(safedeploy.compose.traffic_proxy) fronts) runs in two slots, C(blue) and C(green),
    each a compose project of its own (C(<project>-blue), C(<project>-green)) holding one release of the routed
    services. The project itself scales them to 0 (the C(slotted) option of M(safedeploy.compose.compose_pin)).
  - With O(state=rendered), renders the slot's compose file from the release's effective configuration (C(compose
    config) of O(files)). It holds the routed services only, each publishing its container port on the slot's loopback
    port (C(127.0.0.1)), depending only on other routed services, joined to the project's networks where its other
    services use them (each slot gets its own otherwise) and to the project's named volumes. Networks and volumes the
    slot joins are created when missing, as the project would create them. Then bring the slot up with
    M(safedeploy.compose.compose_up) (O(project_src) and O(files) from RV(slot_src) and RV(slot_file)).
  - With O(state=stopped), stops the slot's containers and keeps them (a flip back starts them again).
  - With O(state=started), starts the slot's stopped containers and checks that each routed service has one running
    the image digest of O(digests).
  - With O(state=query), only reads the slot's containers.
  - Needs Compose v2 (C(compose config --format json)).
author:
  - safedeploy.compose contributors (@safedeploy)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - safedeploy.compose._compose_project
  - safedeploy.compose._engine
attributes:
  check_mode:
    support: full
    details:
      - Check mode renders the file in memory, says whether it would change, and starts, stops and creates nothing.
  diff_mode:
    support: full
    details:
      - The diff of the slot's compose file (secrets interpolated into it are not shown; the diff is only that the
        file changes).
  idempotent:
    description:
      - The same release rendered again, or a slot already stopped or started, reports C(changed=false).
    support: full
  platform:
    support: full
    platforms: posix
options:
  slot:
    description: The slot.
    type: str
    choices: [blue, green]
    required: true
  state:
    description:
      - V(rendered) writes the slot's compose file for the release of O(files); V(stopped) stops its containers;
        V(started) starts them and checks them against O(digests); V(query) reads them.
    type: str
    choices: [rendered, stopped, started, query]
    default: rendered
  routes:
    description:
      - The routed services, as the stack declares them.
    type: list
    elements: dict
    required: true
    suboptions:
      service:
        description: The compose service.
        type: str
        required: true
      container_port:
        description: The port the service listens on inside its container.
        type: int
        required: true
      slot_ports:
        description:
          - The loopback ports of the C(blue) and C(green) slots. By default the collection allocates them from the
            project and service names (20000-27999, the same on every run); give them when two routes clash.
        type: list
        elements: int
  release:
    description: The release id, written as a label on the slot's containers (O(state=rendered)).
    type: str
  digests:
    description:
      - "O(state=started) and O(state=query): the image digest each routed service's container must run
        (C({service: sha256:...})); RV(holds) says whether the slot has them."
    type: dict
    default: {}
  state_dir:
    description: The state directory; the slot's file is C(<state_dir>/<project>/slots/<slot>/compose.yml) (0600).
    type: path
    default: /var/lib/safedeploy
  stop_timeout:
    description: Seconds a container may take to stop (O(state=stopped)) before it is killed.
    type: int
    default: 10
notes:
  - The slot's file holds the release's interpolated environment (secrets from env files included); it is written 0600
    in the 0700 state directory and never returned.
seealso:
  - module: safedeploy.compose.compose_pin
  - module: safedeploy.compose.compose_up
  - module: safedeploy.compose.traffic_switch
'''

EXAMPLES = r'''
- name: Render the idle slot for the release
  safedeploy.compose.compose_slot:
    project_src: /srv/shop
    project_name: shop
    files: "{{ pin.files }}"
    slot: green
    release: 9f2c1ab
    routes:
      - {service: web, container_port: 8000}
  register: slot

- name: Bring the slot up
  safedeploy.compose.compose_up:
    project_src: "{{ slot.slot_src }}"
    project_name: "{{ slot.slot_project }}"
    files: ["{{ slot.slot_file }}"]

- name: Stop the slot that no longer takes traffic (kept for a flip back)
  safedeploy.compose.compose_slot:
    project_src: /srv/shop
    project_name: shop
    files: "{{ pin.files }}"
    slot: blue
    state: stopped
    routes:
      - {service: web, container_port: 8000}
'''

RETURN = r'''
slot:
  description: The slot.
  returned: always
  type: str
  sample: green
slot_project:
  description: The slot's compose project name.
  returned: always
  type: str
  sample: shop-green
slot_src:
  description: The slot's project directory (holds its compose file).
  returned: always
  type: str
  sample: /var/lib/safedeploy/shop/slots/green
slot_file:
  description: The slot's compose file.
  returned: always
  type: str
  sample: /var/lib/safedeploy/shop/slots/green/compose.yml
ports:
  description: "The slot's loopback port of each routed service (C({service: port}))."
  returned: always
  type: dict
  sample: {web: 20418}
slot_ports:
  description: "Both slots' ports of each routed service (C({service: {blue: port, green: port}}))."
  returned: always
  type: dict
  sample: {web: {blue: 20418, green: 20419}}
containers:
  description:
    - "The slot's containers per routed service (C({service: [{name, state, image, digest, release}]})), read after
      the change."
  returned: always
  type: dict
  sample: {web: [{name: shop-green-web-1, state: running, image: "sha256:1f2e...", digest: "sha256:77aa...", release: 9f2c1ab}]}
holds:
  description:
    - Whether every routed service has a container in the slot on its digest in O(digests) (any container when
      O(digests) names none for it). Not returned with O(state=rendered).
  returned: when state is not rendered
  type: bool
running:
  description: Whether every routed service has a running container in the slot. Not returned with O(state=rendered).
  returned: when state is not rendered
  type: bool
notes:
  description: What the rendering left out (ports a slot does not publish).
  returned: always
  type: list
  elements: str
created:
  description: The networks and volumes created for the slot (O(state=rendered)).
  returned: always
  type: list
  elements: str
'''

import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.safedeploy.compose.plugins.module_utils._atomic_file import write_file_atomic
from ansible_collections.safedeploy.compose.plugins.module_utils._compose import (
    COMPOSE_PROJECT_ARGUMENT_SPEC,
    PROJECT_LABEL,
    ComposeError,
    open_project,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._engine import (
    ENGINE_ARGUMENT_SPEC,
    connect_engine,
    describe_engine_error,
    engine_address,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._slots import (
    RELEASE_LABEL,
    SlotError,
    render_slot,
    route_ports,
    slot_project,
)

SERVICE_LABEL = 'com.docker.compose.service'


def read_containers(client, name, routed):
    found = dict((service, []) for service in routed)
    for entry in client.api.containers(all=True, filters={'label': '%s=%s' % (PROJECT_LABEL, name)}):
        labels = entry.get('Labels') or {}
        service = labels.get(SERVICE_LABEL)
        if service not in found:
            continue
        image = entry.get('ImageID')
        digests = []
        try:
            digests = [ref.split('@', 1)[1] for ref in client.api.inspect_image(image).get('RepoDigests') or []]
        except Exception:  # an image removed under a stopped container: no digest to show
            pass
        names = [item.lstrip('/') for item in entry.get('Names') or []]
        found[service].append(dict(name=names[0] if names else entry['Id'][:12], id=entry['Id'], state=entry.get('State'),
                                   image=image, digest=digests[0] if digests else None, digests=digests,
                                   release=labels.get(RELEASE_LABEL)))
    return found


def holds(containers, digests):
    """Whether every routed service has a container of the slot on its digest in `digests` (any, without one)."""
    return all(any(not digests.get(service) or digests[service] in item['digests'] for item in items)
               for service, items in containers.items()) and all(containers.values())


def public(containers):
    return dict((service, [dict((k, v) for k, v in item.items() if k not in ('id', 'digests')) for item in items])
                for service, items in containers.items())


def main():
    argument_spec = dict(
        slot=dict(type='str', required=True, choices=['blue', 'green']),
        state=dict(type='str', default='rendered', choices=['rendered', 'stopped', 'started', 'query']),
        routes=dict(type='list', elements='dict', required=True, options=dict(
            service=dict(type='str', required=True),
            container_port=dict(type='int', required=True),
            slot_ports=dict(type='list', elements='int'),
        )),
        release=dict(type='str'),
        digests=dict(type='dict', default={}),
        state_dir=dict(type='path', default='/var/lib/safedeploy'),
        stop_timeout=dict(type='int', default=10),
    )
    argument_spec.update(COMPOSE_PROJECT_ARGUMENT_SPEC)
    argument_spec.update(ENGINE_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[('state', 'rendered', ('release',))])
    params = module.params
    project, slot = params['project_name'], params['slot']
    routes = params['routes']
    slot_src = os.path.join(params['state_dir'], project, 'slots', slot)
    result = dict(changed=False, slot=slot, slot_project=slot_project(project, slot), slot_src=slot_src,
                  slot_file=os.path.join(slot_src, 'compose.yml'), ports={}, slot_ports={}, containers={}, notes=[],
                  created=[])
    services = [route['service'] for route in routes]
    if len(set(services)) != len(services) or not services:
        module.fail_json(msg='compose_slot: routes must name each routed service once, got %s' % services, **result)
    for route in routes:
        if route.get('slot_ports') and len(route['slot_ports']) != 2:
            module.fail_json(msg='compose_slot: slot_ports of %s must be two ports, blue then green' % route['service'],
                             **result)
    ports = dict((route['service'], pair) for route, pair in route_ports(project, routes))
    result['slot_ports'] = ports
    result['ports'] = dict((service, pair[slot]) for service, pair in ports.items())
    client = connect_engine(module, result)
    address = engine_address(params)

    if params['state'] == 'rendered':
        compose = open_project(module, 'compose_slot', result)
        if compose.cli.is_v1:
            module.fail_json(msg='compose_slot: routed services need Compose v2 (the docker compose plugin); this host '
                                 'runs docker-compose %s. Install the plugin or drop the stack\'s routes'
                                 % compose.cli.version, **result)
        try:
            _text, config = compose.load_config()
        except ComposeError as exc:
            module.fail_json(msg='compose_slot: the compose files of %s are not valid: %s' % (project, exc.message),
                             **result)
        routed = dict((route['service'], {'container_port': route['container_port'], 'port': result['ports'][route['service']]})
                      for route in routes)
        try:
            rendered, notes = render_slot(config, project, slot, routed, params['release'])
        except SlotError as exc:
            module.fail_json(msg='compose_slot: %s. Nothing was written or started.' % exc, **result)
        result['notes'] = notes
        for note in notes:
            module.warn(note)
        text = json.dumps(rendered, indent=2, sort_keys=True) + '\n'
        try:
            with open(result['slot_file']) as handle:
                before = handle.read()
        except OSError:
            before = None
        result['changed'] = before != text
        if module._diff:
            result['diff'] = dict(before_header=result['slot_file'], after_header=result['slot_file'],
                                  before='(%s)\n' % ('absent' if before is None else 'the previous release\'s file'),
                                  after='(%s)\n' % ('unchanged' if before == text else 'release %s' % params['release']))
        missing = []
        try:
            for key, spec in sorted((rendered.get('networks') or {}).items()):
                if spec.get('external') and not [network for network in client.api.networks(filters={'name': spec['name']})
                                                 if network.get('Name') == spec['name']]:
                    missing.append(('network', key, spec['name'], (config.get('networks') or {}).get(key) or {}))
            for key, spec in sorted((rendered.get('volumes') or {}).items()):
                if not [volume for volume in client.api.volumes(filters={'name': spec['name']})
                        if volume.get('Name') == spec['name']]:
                    missing.append(('volume', key, spec['name'], (config.get('volumes') or {}).get(key) or {}))
        except Exception as exc:
            module.fail_json(msg=describe_engine_error(exc, address, 'list networks and volumes',
                                                       params['engine_timeout']), **result)
        result['created'] = ['%s %s' % (kind, name) for kind, _key, name, _spec in missing]
        if missing:
            result['changed'] = True
        if module.check_mode:
            module.exit_json(**result)
        try:
            for kind, key, name, spec in missing:
                # labelled as compose labels the project's own, so that the project's next `up` adopts them
                labels = {PROJECT_LABEL: project, 'com.docker.compose.%s' % kind: key}
                if kind == 'network':
                    client.api.create_network(name, driver=spec.get('driver') or 'bridge', options=spec.get('driver_opts'),
                                              internal=bool(spec.get('internal')), attachable=bool(spec.get('attachable')),
                                              labels=labels)
                else:
                    client.api.create_volume(name, driver=spec.get('driver') or 'local',
                                             driver_opts=spec.get('driver_opts') or {}, labels=labels)
        except Exception as exc:
            module.fail_json(msg=describe_engine_error(exc, address, 'create the networks and volumes of the slot',
                                                       params['engine_timeout']), **result)
        if before != text:
            for directory in (os.path.join(params['state_dir'], project), os.path.dirname(slot_src), slot_src):
                if not os.path.isdir(directory):
                    os.makedirs(directory, 0o700)
            write_file_atomic(result['slot_file'], text.encode('utf-8'), mode=0o600)
        result['containers'] = public(read_containers(client, result['slot_project'], services))
        module.exit_json(**result)

    try:
        containers = read_containers(client, result['slot_project'], services)
    except Exception as exc:
        module.fail_json(msg=describe_engine_error(exc, address, 'list the containers of %s' % result['slot_project'],
                                                   params['engine_timeout']), **result)
    result['holds'] = holds(containers, params['digests'])
    result['running'] = all(any(item['state'] == 'running' for item in items) for items in containers.values())
    if params['state'] == 'query':
        result['containers'] = public(containers)
        module.exit_json(**result)
    wanted = 'running' if params['state'] == 'started' else 'exited'
    to_change = [item for items in containers.values() for item in items
                 if (item['state'] == 'running') != (wanted == 'running')]
    if params['state'] == 'started':
        absent = sorted(service for service, items in containers.items() if not items)
        wrong = sorted(service for service, items in containers.items()
                       if items and params['digests'].get(service)
                       and any(params['digests'][service] not in item['digests'] for item in items))
        if absent or wrong:
            module.fail_json(msg='compose_slot: slot %s does not hold the release asked for: %s. Bring the release up in '
                                 'a slot from its snapshot instead' % (slot, '; '.join(
                                     (['no container of %s' % ', '.join(absent)] if absent else [])
                                     + (['%s runs another image than %s' % (', '.join(wrong), params['digests'])]
                                        if wrong else []))), containers=public(containers),
                             **dict((k, v) for k, v in result.items() if k != 'containers'))
    result['changed'] = bool(to_change)
    if module.check_mode or not to_change:
        result['containers'] = public(containers)
        module.exit_json(**result)
    try:
        for item in to_change:
            if wanted == 'running':
                client.api.start(item['id'])
            else:
                client.api.stop(item['id'], timeout=params['stop_timeout'])
        containers = read_containers(client, result['slot_project'], services)
        result['running'] = all(any(item['state'] == 'running' for item in items) for items in containers.values())
    except Exception as exc:
        module.fail_json(msg=describe_engine_error(exc, address, '%s the containers of %s' % (
            'start' if wanted == 'running' else 'stop', result['slot_project']), params['engine_timeout']), **result)
    result['containers'] = public(containers)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
