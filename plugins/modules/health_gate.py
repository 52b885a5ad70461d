#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: health_gate
short_description: Decide with evidence whether a compose release is up
version_added: 0.1.0
description:
  - Polls a list of checks (HTTP endpoints, TCP ports, the containers of a compose project, an OpenAPI document)
    until every one is green, a container crash-loops, or O(timeout) runs out.
  - Every O(interval) seconds a round probes all checks at once, each in its own thread with its own O(checks[].timeout),
    so ten endpoints that do not answer cost one check timeout per round, not ten. A round that takes longer than
    O(interval) is followed at once by the next one.
  - A check is green after O(success_threshold) passes in a row. A failure after a pass starts its count again, so a
    flapping service (healthy, unhealthy, healthy) never collects O(success_threshold) passes in a row and fails at the
    deadline, with the number of broken runs in the message.
  - The gate passes once every check is green and all have stayed green for O(stable_for) seconds.
  - A crash loop fails the gate at once instead of waiting out O(timeout) - a container restarting or whose restart count
    rises while the gate watches, or a container that has exited and will not be restarted - reporting the exit code and
    the last log lines.
  - Each result says whether the probe could not measure (C(unreachable) - DNS failure, connection refused, no answer
    in time, engine not answering) or the application answered wrong (status, body, JSON field, missing API path,
    container unhealthy). O(count_unreachable_as_failure) decides how the first kind counts.
  - On failure the task fails with a one-line message naming each failing check and why, and returns the last
    O(log_lines) log lines of the containers that were not up, as evidence to keep before a rollback removes them.
  - It only observes; it never changes anything.
author:
  - safedeploy.compose contributors (@safedeploy)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - safedeploy.compose._engine
attributes:
  check_mode:
    support: full
    details:
      - The gate only observes, so check mode runs every probe exactly as a real run does.
  diff_mode:
    support: none
  idempotent:
    description:
      - It never changes anything, so repeated runs report C(changed=false).
    support: full
  platform:
    support: full
    platforms: posix
options:
  checks:
    description:
      - What must be true for the release to count as up. Each entry is one check of one O(checks[].type).
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description:
          - Name of the check in the results and in the failure message.
          - Defaults to the type and its target, for example C(http GET http://127.0.0.1:8080/health),
            C(tcp 127.0.0.1:5432), C(containers shop[web,worker]), C(openapi http://127.0.0.1:8080/openapi.json).
        type: str
      type:
        description:
          - V(http) sends a request and checks the status, the body and JSON fields of the answer.
          - V(tcp) connects to O(checks[].host):O(checks[].port).
          - V(containers) finds the containers of compose project O(checks[].project) through the engine API by their
            C(com.docker.compose.project) and C(com.docker.compose.service) labels (never by container names); each must be
            running, be C(healthy) when its image or compose file defines a Docker HEALTHCHECK, not crash-loop, and run
            the image digest O(checks[].digests) pins for its service; every service in O(checks[].services) must have its
            O(checks[].replicas).
            A container without a HEALTHCHECK has no Docker health at all and counts as up while it is running; use
            O(stable_for) to demand that it stays running for a while, and HTTP or TCP checks to know it answers.
          - V(openapi) fetches an OpenAPI (or Swagger 2) document in JSON (or YAML when PyYAML is installed) and checks
            that every entry of O(checks[].paths) is in it.
        type: str
        required: true
        choices: [http, tcp, containers, openapi]
      timeout:
        description:
          - Seconds one probe of this check may take (connect and answer) before it counts as unreachable.
          - In the last round before the gate's deadline a probe gets what is left of O(timeout), but at least one second.
        type: float
        default: 5.0
      url:
        description:
          - The URL to request, V(http://) or V(https://). Required for V(http) and V(openapi).
          - Credentials in the URL (C(user:pass@)) are hidden in names, messages and evidence.
        type: str
      method:
        description:
          - HTTP method of an V(http) check.
        type: str
        default: GET
      status:
        description:
          - HTTP status codes that count as a pass for an V(http) check.
          - Redirects are not followed unless O(checks[].follow_redirects=true), so a C(301) is the answer checked here.
        type: list
        elements: int
        default: [200]
      body_contains:
        description:
          - Text the body of an V(http) answer must contain.
        type: str
      body_regex:
        description:
          - Python regular expression that must match somewhere in the body of an V(http) answer.
        type: str
      json:
        description:
          - Fields the JSON body of an V(http) answer must have, as dotted path to expected value, for example
            C(status) to V(ok), C(checks.db) to V(ok), C(items.0.state) to V(ready). A number in a path indexes a list.
          - A value written as a string also matches the JSON number or boolean it spells (V("1") matches C(1)).
        type: dict
      headers:
        description:
          - Extra request headers for V(http) and V(openapi) checks, for example an C(X-Api-Key).
          - The option is C(no_log); its values are kept out of the invocation, results and logs at any verbosity (a
            header value that also appears in an answer is masked there too).
        type: dict
      bearer_token:
        description:
          - Token sent as an C(Authorization) header C(Bearer <token>) by V(http) and V(openapi) checks.
          - Never appears in results, messages, evidence or logs.
        type: str
      validate_certs:
        description:
          - Verify the TLS certificate of V(https://) URLs. A rejected certificate counts as a wrong answer, not as
            unreachable. Set V(false) only for self-signed test endpoints.
        type: bool
        default: true
      follow_redirects:
        description:
          - Follow redirects of V(http) and V(openapi) checks; by default the redirect itself is the answer.
        type: bool
        default: false
      host:
        description:
          - Host name or address of a V(tcp) check.
        type: str
      port:
        description:
          - Port of a V(tcp) check.
        type: int
      project:
        description:
          - Compose project name of a V(containers) check (its C(com.docker.compose.project) label).
        type: str
      services:
        description:
          - Services of a V(containers) check. Each must have at least one container (or O(checks[].replicas)).
          - Default is every service that has a container in the project (one-off C(compose run) containers excluded);
            at least one container must exist.
        type: list
        elements: str
      replicas:
        description:
          - Number of containers each named service must have, for example C(worker) to V(3), in a V(containers) check.
        type: dict
      digests:
        description:
          - The pinned image digest of each service, for example C(web) to V(sha256:4b1f...), in a V(containers) check.
            Each container of such a service must run an image with that digest (among its repository digests or in the
            reference it was created from); the services named here must have a container.
          - A value may also be a reference pinned to a digest (C(repo:tag@sha256:...)) or a ledger entry C({image, digest}),
            so the C(services) returned by M(safedeploy.compose.last_good_tag) fit as they are.
        type: dict
      unhealthy_is_final:
        description:
          - In a V(containers) check, fail the gate at once when Docker reports a container C(unhealthy), that is when
            its HEALTHCHECK failed C(retries) times in a row after its C(start_period) (Docker's own verdict, which a
            release with the wrong port or a broken dependency reaches in seconds), instead of waiting out O(timeout).
          - Set V(false) for a service whose health is known to recover by itself within the gate's timeout.
          - Has no effect on containers without a HEALTHCHECK, nor while Docker still says C(starting).
        type: bool
        default: true
      running_for:
        description:
          - In a V(containers) check, seconds each container must have been running, by the engine's C(StartedAt) (read
            with the host's clock), to count as up. One look at a container that has run that long shows it ran that
            long without a restart.
          - Judges a stack that was already running (the rollout role's check of a rerun) in one round. Right after an
            C(up), every new container fails it until it has run that long, so leave it unset (V(0)) for a release gate.
        type: float
        default: 0.0
      paths:
        description:
          - Operations an V(openapi) document must list, as C(METHOD /path) (for example C(GET /api/v1/boards)) or a bare
            C(/path). Paths are compared literally with the keys of the document's C(paths) object.
          - All missing entries are named in the result.
        type: list
        elements: str
  timeout:
    description:
      - Deadline in seconds for the whole gate. The last round runs at the deadline; the task may end up to one probe
        timeout (at least one second) later.
      - When a container's Docker HEALTHCHECK needs longer than this to report (start_period + interval x retries), the
        module warns.
    type: float
    default: 120.0
  interval:
    description:
      - Seconds from the start of one round of probes to the start of the next.
    type: float
    default: 2.0
  success_threshold:
    description:
      - Passes in a row each check needs to count as green.
      - The default, V(2), keeps the gate from passing on a single sample - a container that is C(running) once, in the
        middle of a crash loop, is not yet green; it must pass again one O(interval) later, and a restart in between is
        seen as a crash loop. It costs one O(interval) of gate time. V(1) passes on the first good sample.
    type: int
    default: 2
  stable_for:
    description:
      - Seconds every check must stay green, measured from the round in which the last one turned green, before the gate
        passes. V(0) passes in the first round in which all checks are green.
    type: float
    default: 0.0
  count_unreachable_as_failure:
    description:
      - How a probe that could not measure (unreachable) counts.
      - V(true) counts it as a failed attempt, like a wrong answer - it breaks a run of passes and keeps the gate from
        becoming or staying green. Choose this for gates right after a deploy, where "not listening" means "not up".
      - V(false) counts it as no data - it neither passes nor breaks a run of passes, so a check that was green stays green
        through a network hiccup. A check still needs O(success_threshold) real passes, so a check that never could be
        measured fails at the deadline either way.
      - Unreachable attempts are reported in both cases (C(unreachable), C(unreachable_attempts) per check).
    type: bool
    default: true
  log_lines:
    description:
      - How many of the last log lines of each container that was not up to return in RV(logs) when the gate fails.
        V(0) returns none.
    type: int
    default: 20
notes:
  - The task fails when the gate does not pass; register the result and use C(block)/C(rescue) to roll back with the
    evidence in hand.
  - For O(checks[].type=containers) the engine options O(docker_host) and O(engine_timeout) apply; an engine that does not
    answer makes the check unreachable for that round, it does not end the gate.
seealso:
  - module: safedeploy.compose.last_good_tag
'''

EXAMPLES = r'''
- name: Gate the release right after docker compose up -d
  safedeploy.compose.health_gate:
    timeout: 120
    interval: 2
    success_threshold: 3
    checks:
      - type: containers
        project: shop
        services: [web, worker]
        replicas:
          worker: 2
      - name: web health
        type: http
        url: http://127.0.0.1:8080/healthz
        json:
          status: ok
          checks.db: ok
      - type: openapi
        url: http://127.0.0.1:8080/openapi.json
        paths:
          - GET /api/v1/boards
          - POST /api/v1/boards
      - type: tcp
        host: 127.0.0.1
        port: 5432
  register: gate

- name: An authenticated endpoint behind TLS, 200 or 204 accepted
  safedeploy.compose.health_gate:
    timeout: 60
    stable_for: 10
    checks:
      - type: http
        url: https://shop.example.org/internal/ready
        status: [200, 204]
        body_regex: '"ready":\s*true'
        bearer_token: "{{ vault_shop_health_token }}"
        timeout: 3

- name: Gate, and roll back with the evidence when it fails
  block:
    - name: Gate the new release
      safedeploy.compose.health_gate:
        checks:
          - type: containers
            project: shop
          - type: http
            url: http://127.0.0.1:8080/healthz
      register: gate
  rescue:
    - name: Keep the evidence
      ansible.builtin.copy:
        content: "{{ gate | to_nice_json }}"
        dest: /var/log/shop-gate-failure.json
        mode: '0600'
'''

RETURN = r'''
passed:
  description: Whether every check was green (and stayed so for O(stable_for) seconds) before the deadline.
  returned: always
  type: bool
  sample: false
elapsed:
  description: Seconds the gate ran.
  returned: always
  type: float
  sample: 2.314
rounds:
  description: Number of rounds of probes the gate ran.
  returned: always
  type: int
  sample: 2
started_at:
  description: When the gate started (UTC, ISO 8601); null when the options were rejected.
  returned: always
  type: str
  sample: "2025-01-31T10:02:11.204381Z"
finished_at:
  description: When the gate ended (UTC, ISO 8601); null when the options were rejected.
  returned: always
  type: str
  sample: "2025-01-31T10:02:13.518720Z"
checks:
  description: One entry per check, in the order of O(checks).
  returned: always
  type: list
  elements: dict
  sample:
    - name: containers shop
      type: containers
      passed: false
      attempts: 2
      passes: 0
      failures: 2
      unreachable_attempts: 0
      flaps: 0
      elapsed: 2.31
      last_status: 0/1 up
      last_error: "crash loop: service web container shop_web_1 restarted 1 time(s) during the gate (restart count 1),
        last exit code 1; last log line: fatal: cannot reach database at db:5432"
      unreachable: false
      evidence:
        project: shop
        containers:
          - name: shop_web_1
            id: 3f2a9c1b7d0e
            service: web
            image: registry.example.org/shop/web:9f2c1ab@sha256:4b1f...
            state: running
            health: null
            exit_code: 1
            restart_count: 1
            started_at: "2025-01-31T10:02:12.913Z"
  contains:
    name:
      description: The check's O(checks[].name) or the name derived from its type and target.
      type: str
    type:
      description: The check's O(checks[].type).
      type: str
    passed:
      description: Whether the check was green when the gate ended (O(success_threshold) passes in a row).
      type: bool
    attempts:
      description: How many times the check was probed.
      type: int
    passes:
      description: How many probes passed.
      type: int
    failures:
      description: How many probes counted as failures (wrong answers, and unreachable ones when O(count_unreachable_as_failure=true)).
      type: int
    unreachable_attempts:
      description: How many probes could not measure.
      type: int
    flaps:
      description: How many times a run of passes was broken by a failure.
      type: int
    elapsed:
      description: Seconds from the start of the gate until the check turned green for good, or until the gate ended.
      type: float
    last_status:
      description:
        - What the last probe saw - the HTTP status code for V(http) and V(openapi), C(open) for V(tcp),
          C(<up>/<found> up) for V(containers); null when it could not measure.
      type: raw
    last_error:
      description: Why the last probe did not pass, null when it passed.
      type: str
    unreachable:
      description: Whether the last probe could not measure (as opposed to a wrong answer).
      type: bool
    evidence:
      description:
        - What the last probe saw. V(http) - C(url), C(method), C(status), C(reason), C(content_type), C(location),
          C(body) (its first 256 characters), C(duration). V(openapi) - the same without the body, plus C(missing) (the
          entries of O(checks[].paths) not in the document). V(tcp) - C(host), C(port), C(duration). V(containers) -
          C(project), C(containers) (name, id, service, image, state, health, exit_code, restart_count, started_at of each,
          and C(digests) when O(checks[].digests) pins the service) and C(missing_services).
      type: dict
logs:
  description:
    - When the gate failed, the last O(log_lines) log lines of each container a V(containers) check found not up (all
      the containers those checks watched when every one of them looked up but other checks failed), by container name.
    - Empty when the gate passed.
  returned: always
  type: dict
  sample:
    shop_web_1:
      - "app v3: mode=crash port=8080"
      - "app v3: fatal: cannot reach database at db:5432"
msg:
  description: One line - passed, or failed naming each failing check and why.
  returned: always
  type: str
  sample: "health gate failed after 30.4s (timeout 30s): 'web health': HTTP 500 Internal Server Error (expected 200); body: {\"status\": \"error\"}"
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.safedeploy.compose.plugins.module_utils._engine import (
    ENGINE_ARGUMENT_SPEC,
    engine_address,
)
from ansible_collections.safedeploy.compose.plugins.module_utils._probes import (
    CHECK_TYPES,
    DEFAULT_CHECK_TIMEOUT,
    Gate,
    build_probe,
    check_report,
    default_check_name,
    outcome_message,
)

CHECK_OPTIONS = dict(
    name=dict(type='str'),
    type=dict(type='str', required=True, choices=list(CHECK_TYPES)),
    timeout=dict(type='float', default=DEFAULT_CHECK_TIMEOUT),
    url=dict(type='str'),
    method=dict(type='str', default='GET'),
    status=dict(type='list', elements='int', default=[200]),
    body_contains=dict(type='str'),
    body_regex=dict(type='str'),
    json=dict(type='dict'),
    headers=dict(type='dict', no_log=True),  # Authorization, X-Api-Key...: secrets as often as not
    bearer_token=dict(type='str', no_log=True),
    validate_certs=dict(type='bool', default=True),
    follow_redirects=dict(type='bool', default=False),
    host=dict(type='str'),
    port=dict(type='int'),
    project=dict(type='str'),
    services=dict(type='list', elements='str'),
    replicas=dict(type='dict'),
    digests=dict(type='dict'),
    unhealthy_is_final=dict(type='bool', default=True),
    running_for=dict(type='float', default=0.0),
    paths=dict(type='list', elements='str'),
)

# Options each type reads besides name/type/timeout; the others must be left unset (or at their default).
OPTIONS_OF_TYPE = {
    'http': ('url', 'method', 'status', 'body_contains', 'body_regex', 'json', 'headers', 'bearer_token',
             'validate_certs', 'follow_redirects'),
    'tcp': ('host', 'port'),
    'containers': ('project', 'services', 'replicas', 'digests', 'unhealthy_is_final', 'running_for'),
    'openapi': ('url', 'paths', 'headers', 'bearer_token', 'validate_certs', 'follow_redirects'),
}

ARGUMENT_SPEC = dict(
    checks=dict(type='list', elements='dict', required=True, options=CHECK_OPTIONS, required_if=[
        ('type', 'http', ('url',)),
        ('type', 'tcp', ('host', 'port')),
        ('type', 'containers', ('project',)),
        ('type', 'openapi', ('url', 'paths')),
    ]),
    timeout=dict(type='float', default=120.0),
    interval=dict(type='float', default=2.0),
    success_threshold=dict(type='int', default=2),
    stable_for=dict(type='float', default=0.0),
    count_unreachable_as_failure=dict(type='bool', default=True),
    log_lines=dict(type='int', default=20),
)
ARGUMENT_SPEC.update(ENGINE_ARGUMENT_SPEC)


def empty_result():
    return dict(changed=False, passed=False, elapsed=0.0, rounds=0, started_at=None, finished_at=None, checks=[], logs={})


def build_probes(module, result):
    """Probes for every check, or fail the task naming the check whose options are wrong."""
    params = module.params
    problems = []
    for option, minimum in (('timeout', 0), ('interval', 0)):
        if params[option] <= minimum:
            problems.append('%s must be greater than 0 (got %s)' % (option, params[option]))
    if params['success_threshold'] < 1:
        problems.append('success_threshold must be 1 or more (got %s)' % params['success_threshold'])
    if params['stable_for'] < 0 or params['log_lines'] < 0:
        problems.append('stable_for and log_lines must not be negative')
    if not params['checks']:
        problems.append('checks is empty: give at least one check')
    if any((spec.get('running_for') or 0) < 0 for spec in params['checks']):
        problems.append('running_for must not be negative')

    probes = []
    names = set()
    for index, spec in enumerate(params['checks']):
        name = spec.get('name') or default_check_name(spec)
        if name in names:
            if spec.get('name'):
                problems.append('check #%d: the name %r is used twice; give each check its own name' % (index + 1, name))
                continue
            suffix = 2
            while '%s (%d)' % (name, suffix) in names:
                suffix += 1
            name = '%s (%d)' % (name, suffix)
        names.add(name)
        unused = [option for option, value in spec.items()
                  if option not in ('name', 'type', 'timeout') and option not in OPTIONS_OF_TYPE[spec['type']]
                  and value is not None and value != CHECK_OPTIONS[option].get('default')]
        if unused:
            problems.append("check '%s' (type %s) does not use %s" % (name, spec['type'], ', '.join(sorted(unused))))
            continue
        if spec['timeout'] <= 0:
            problems.append("check '%s': timeout must be greater than 0" % name)
            continue
        try:
            probes.append(build_probe(spec, name, docker_host=engine_address(params), engine_timeout=params['engine_timeout'],
                                      gate_timeout=params['timeout']))
        except ValueError as exc:
            problems.append("check '%s': %s" % (name, exc))
    if problems:
        module.fail_json(msg='health_gate cannot start: %s. Fix the options and run again.' % '; '.join(problems), **result)
    return probes


def gather_logs(outcome, lines):
    """Last log lines of the containers that were not up (of all watched ones when none looked down)."""
    if outcome.passed or lines <= 0:
        return {}
    watchers = [state for state in outcome.states if state.probe.kind == 'containers']
    flagged = [state for state in watchers if state.last is not None and state.last.unhealthy]
    logs = {}
    if flagged:
        for state in flagged:
            logs.update(state.probe.collect_logs(state.last.unhealthy, lines))
    else:
        for state in watchers:
            logs.update(state.probe.collect_logs(state.probe.known_container_ids(), lines))
    return logs


def unguarded_containers(outcome, stable_for, success_threshold, interval):
    """Containers judged by one "running" sample: no HEALTHCHECK, no other check type, one pass, no stable_for, and no
    running_for of an interval or more (which shows what a second sample an interval later would)."""
    if stable_for > 0 or success_threshold > 1 or any(state.probe.kind != 'containers' for state in outcome.states):
        return []
    if all(state.probe.running_for >= interval for state in outcome.states):
        return []
    return sorted(set(row['name'] for state in outcome.states if state.last is not None
                      for row in state.last.evidence.get('containers', []) if row.get('health') is None))


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    result = empty_result()
    probes = build_probes(module, result)
    params = module.params
    gate = Gate(probes, timeout=params['timeout'], interval=params['interval'],
                success_threshold=params['success_threshold'], stable_for=params['stable_for'],
                count_unreachable_as_failure=params['count_unreachable_as_failure'])
    outcome = gate.wait_until_healthy()
    for warning in outcome.warnings:
        module.warn(warning)
    bare = unguarded_containers(outcome, params['stable_for'], params['success_threshold'], params['interval'])
    if bare:
        module.warn('container(s) %s have no Docker HEALTHCHECK and no http, tcp or openapi check watches them, so they count as '
                    'up on one sample of them running (success_threshold 1; a crash loop between two rounds can pass); keep '
                    'success_threshold at 2 or more, set stable_for to a few intervals or running_for to an interval, or add an http or '
                    'tcp check' % ', '.join(bare))
    result.update(
        passed=outcome.passed,
        elapsed=outcome.elapsed,
        rounds=outcome.rounds,
        started_at=outcome.started_at,
        finished_at=outcome.finished_at,
        checks=[check_report(state, outcome.elapsed, gate.threshold) for state in outcome.states],
        logs=gather_logs(outcome, params['log_lines']),
    )
    msg = outcome_message(outcome, gate.threshold, gate.stable_for, params['count_unreachable_as_failure'], gate.timeout)
    if outcome.passed:
        module.exit_json(msg=msg, **result)
    module.fail_json(msg=msg, **result)


if __name__ == '__main__':
    main()
