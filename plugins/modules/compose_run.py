#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: compose_run
short_description: Run a command in a one-off container of a compose service, under a deadline
version_added: 0.3.0
description:
  - Runs O(command) in a new one-off container of O(service) (C(compose run --rm --no-deps -T)), with the compose
    files given, usually those M(safedeploy.compose.compose_pin) returned, so the container runs the pinned image of
    the release. The container is removed when the command ends.
  - This is how the rollout and rollback roles run their release hooks (a database migration before C(up), a smoke
    test after the gate, a cache warm-up after a rollback).
  - The command runs under a deadline (coreutils C(timeout), killed 10 seconds after it). A command that fails or runs
    out of time fails the task with its exit code, or its limit, and the last lines it printed.
  - The one-off container gets a name of its own (RV(container_name)). Stopping the compose CLI at the deadline does
    not stop the container, so the module then removes it (C(docker rm --force)); a stalled hook leaves nothing
    running.
author:
  - safedeploy.compose contributors (@safedeploy)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - safedeploy.compose._compose_project
  - safedeploy.compose._stack_lock_hold
attributes:
  check_mode:
    support: full
    details:
      - A one-off command is assumed to change something. Check mode checks the project directory, the files and the
        compose CLI, runs nothing and reports C(changed=true).
  diff_mode:
    support: none
  idempotent:
    description:
      - What the command does is up to it; the module reports C(changed=true) whenever it ran.
    support: none
  platform:
    support: full
    platforms: posix
options:
  service:
    description: The service whose image and configuration the one-off container gets.
    type: str
    required: true
  command:
    description:
      - The command and its arguments, as a list (never a shell string). An empty list runs the service's own command.
    type: list
    elements: str
    default: []
  timeout:
    description: Seconds the command may take before it is stopped.
    type: int
    default: 300
  docker_host:
    description:
      - Address of the Docker engine the compose CLI talks to (its E(DOCKER_HOST)), for example
        C(tcp://127.0.0.1:2375). When not set, the environment's E(DOCKER_HOST) or the local socket is used.
    type: str
notes:
  - Needs only the compose CLI on the host, no Python library; the C(docker) CLI removes a container stopped at the
    deadline (without it, the module warns and names the container to remove).
  - The output of the command is returned as its last lines only (RV(stdout_tail), RV(stderr_tail)), and a failure
    message quotes its last line. For a command that may print secrets, give the task C(no_log) and fail on RV(rc) in
    a task of your own (C(failed_when) on the registered result), because ansible-core shows a failed task's message
    even under C(no_log). The service's environment is passed by the compose files, never in the arguments or the
    result.
seealso:
  - module: safedeploy.compose.compose_pin
  - module: safedeploy.compose.compose_up
'''

EXAMPLES = r'''
# pin: the registered result of safedeploy.compose.compose_pin for the release
- name: Pull it (the running release keeps serving)
  safedeploy.compose.compose_up:
    project_src: /srv/shop
    project_name: shop
    files: "{{ pin.files }}"
    state: pulled

- name: Migrate the database with the new release's image, before it starts
  safedeploy.compose.compose_run:
    project_src: /srv/shop
    project_name: shop
    files: "{{ pin.files }}"
    service: web
    command: [alembic, upgrade, head]
    timeout: 900
'''

RETURN = r'''
rc:
  description: Exit code of the command (of C(compose run), which passes on the command's own).
  returned: when the command ran
  type: int
  sample: 0
stdout_tail:
  description: The last lines the command printed on its standard output.
  returned: when the command ran
  type: str
  sample: "INFO  [alembic.runtime.migration] Running upgrade 1a2b -> 3c4d"
stderr_tail:
  description: The last lines printed on standard error (by the command or by compose).
  returned: when the command ran
  type: str
compose_argv:
  description: The command line that ran, without the deadline.
  returned: always
  type: list
  elements: str
  sample: [docker, compose, -p, shop, --project-directory, /srv/shop, -f, /srv/shop/compose.yaml, -f,
           /srv/shop/compose.release.yml, run, --rm, -T, --no-deps, web, alembic, upgrade, head]
container_name:
  description: The name given to the one-off container (C(<project>-<service>-run-<8 hex>)).
  returned: always
  type: str
  sample: shop-web-run-3f9c2a1b
lease_lost:
  description:
    - Whether the module stopped before the command because the run of O(stack_lock.run_id) no longer holds the stack
      lock.
  returned: always
  type: bool
  sample: false
compose_version:
  description: The version of the compose CLI that ran.
  returned: always
  type: str
  sample: 2.40.3
'''

import uuid

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.safedeploy.compose.plugins.module_utils._compose import (
    COMPOSE_PROJECT_ARGUMENT_SPEC,
    ComposeTimeout,
    open_project,
    tail_lines,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._stack_lock import (
    STACK_LOCK_HOLD_SPEC,
    LeaseLost,
    hold_stack_lock,
)


def remove_container(module, project, name):
    """Remove the one-off container the stopped CLI left running; say how that went, for the failure message."""
    docker = module.get_bin_path('docker')
    if not docker:
        module.warn('the docker CLI is not on PATH: remove the one-off container %s by hand' % name)
        return ' (its container %s may still run: the docker CLI to remove it is missing)' % name
    try:
        rc, _out, err = project.runner.run([docker, 'rm', '--force', name], timeout=60)
    except ComposeTimeout:
        rc, err = 124, 'no answer within 60s'
    if rc != 0 and 'No such container' not in err:
        return ' (removing its container %s failed: %s)' % (name, (tail_lines(err).splitlines() or ['?'])[-1])
    return ' (its container %s was removed)' % name


def main():
    argument_spec = dict(
        service=dict(type='str', required=True),
        command=dict(type='list', elements='str', default=[]),
        timeout=dict(type='int', default=300),
        docker_host=dict(type='str'),
    )
    argument_spec.update(COMPOSE_PROJECT_ARGUMENT_SPEC)
    argument_spec.update(STACK_LOCK_HOLD_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    result = dict(changed=False, compose_argv=[], compose_version='', container_name='', lease_lost=False)
    if params['timeout'] < 1:
        module.fail_json(msg='compose_run: timeout must be at least 1 second, got %s' % params['timeout'], **result)
    if not params['service'].strip():
        module.fail_json(msg='compose_run: service must name a service of the project', **result)
    project = open_project(module, 'compose_run', result, timeout=params['timeout'])
    name = '%s-%s-run-%s' % (params['project_name'], params['service'], uuid.uuid4().hex[:8])
    argv = project.run_argv(params['service'], params['command'], name=name)
    result.update(compose_argv=argv, container_name=name)
    what = '%s in a one-off container of service %s of project %s' % (
        ' '.join(params['command']) or 'the default command', params['service'], params['project_name'])
    if module.check_mode:
        result['changed'] = True
        module.exit_json(**result)
    if params['stack_lock']:
        result['lease_lost'] = True  # until the check below says otherwise
        try:
            _lease, warning = hold_stack_lock(params['stack_lock']['state_dir'],
                                              params['stack_lock'].get('project') or params['project_name'],
                                              params['stack_lock']['run_id'], 'running ' + what)
        except LeaseLost as exc:
            module.fail_json(msg='compose_run: %s' % exc, **result)
        except Exception as exc:  # a lock that cannot be read is not known to be held
            module.fail_json(msg='compose_run: cannot check the stack lock before running %s: %s' % (what, exc),
                             **result)
        result['lease_lost'] = False
        if warning:
            module.warn(warning)
    try:
        rc, out, err = project.runner.run(argv, timeout=params['timeout'], cwd=project.project_dir)
    except ComposeTimeout as exc:
        result.update(changed=True, rc=exc.rc, stdout_tail=tail_lines(exc.stdout), stderr_tail=tail_lines(exc.stderr))
        module.fail_json(msg='compose_run: %s did not finish within %ss and was stopped%s. Make it faster, or raise its '
                         'timeout' % (what, params['timeout'], remove_container(module, project, name)), **result)
    result.update(changed=True, rc=rc, stdout_tail=tail_lines(out), stderr_tail=tail_lines(err))
    if rc != 0:
        last = (tail_lines(err) or tail_lines(out)).splitlines()
        if last and last[-1].strip() == str(rc):  # docker-compose v1 prints the exit code last
            last.pop()
        module.fail_json(msg='compose_run: %s failed (rc=%s): %s' % (what, rc, last[-1] if last else '(no output)'),
                         **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
