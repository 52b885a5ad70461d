# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private module_utils of safedeploy.compose: what a stack's status is made of (stack_status, the status role's
# table filter). Not a public API; it may change in any release.
#
# Pure functions over plain data (the engine's inspect output, the ledger, the lease), so that drift, health and the
# table are decided in one place and tested without an engine. Nothing here changes anything.

from __future__ import annotations

import calendar
import datetime
import hashlib
import re
import time

from ansible_collections.safedeploy.compose.plugins.module_utils._log_config import log_config_unbounded
from ansible_collections.safedeploy.compose.plugins.module_utils._units import human_bytes

# Docker's restart backoff keeps a crash-looping container `restarting` most of the time, but a look may catch it in
# the second it runs: a container that restarted and has been up less than this is counted as restarting.
DEFAULT_RESTART_WINDOW = 120
DIGEST_IN_TEXT_RE = re.compile(r'sha256:[0-9a-f]{64}')
DRIFT_KINDS = ('no_ledger', 'ledger', 'no_release', 'missing', 'digest', 'extra', 'files', 'lock')
TABLE_COLUMNS = (('STACK', 28), ('CURRENT', 14), ('LAST GOOD', 14), ('STATE', 10), ('HEALTH', 10), ('DRIFT', 0))
LOG_LINE_MAX_CHARS = 500


def parse_docker_time(text):
    """Epoch seconds of an engine timestamp (`2025-01-31T10:02:12.913456789Z`), None for Docker's zero time or junk."""
    match = re.match(r'^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)', text or '')
    if not match or match.group(1).startswith('0001-'):
        return None
    return calendar.timegm(time.strptime(match.group(1), '%Y-%m-%dT%H:%M:%S'))


def parse_ledger_time(text):
    """Epoch seconds (float) of a ledger timestamp (`2025-01-31T10:02:12.123456Z`), None when absent."""
    if not isinstance(text, str) or not text:
        return None
    for fmt in ('%Y-%m-%dT%H:%M:%S.%fZ', '%Y-%m-%dT%H:%M:%SZ'):
        try:
            stamp = datetime.datetime.strptime(text, fmt).replace(tzinfo=datetime.timezone.utc)
            return round(stamp.timestamp(), 3)
        except ValueError:
            continue
    return None


def container_digests(details, image_details):
    """The sha256 digests a container runs by: its image's repository digests and a digest in the reference it was
    created from (a pinned `repo:tag@sha256:..`). Sorted, without repeats."""
    found = set()
    for ref in (image_details or {}).get('RepoDigests') or []:
        found.update(DIGEST_IN_TEXT_RE.findall(ref.rpartition('@')[2]))
    found.update(DIGEST_IN_TEXT_RE.findall(((details.get('Config') or {}).get('Image')) or ''))
    return sorted(found)


def container_view(details, image_details, now, restart_window=DEFAULT_RESTART_WINDOW):
    """One container as the status shows it, from `docker inspect` of it and of its image."""
    state = details.get('State') or {}
    labels = (details.get('Config') or {}).get('Labels') or {}
    started = parse_docker_time(state.get('StartedAt'))
    status = state.get('Status') or ('running' if state.get('Running') else 'unknown')
    running = status == 'running'
    health = (state.get('Health') or {}).get('Status') or None
    restarts = int(details.get('RestartCount') or 0)
    uptime = int(max(0, now - started)) if running and started is not None else None
    restarting = status == 'restarting' or bool(state.get('Restarting')) or (
        restarts > 0 and uptime is not None and uptime < restart_window)
    problems = []
    if restarting:
        problems.append('restarting (%d restarts)' % restarts)
    elif not running:
        problems.append(status if status != 'exited' else 'exited (code %s)' % state.get('ExitCode'))
    if running and health == 'unhealthy':
        problems.append('unhealthy')
    return dict(
        name=(details.get('Name') or '').lstrip('/') or details.get('Id', '')[:12],
        id=(details.get('Id') or '')[:12],
        service=labels.get('com.docker.compose.service') or '',
        image=(details.get('Config') or {}).get('Image') or '',
        image_id=details.get('Image') or '',
        digests=container_digests(details, image_details),
        state=status,
        health=health,
        restart_count=restarts,
        exit_code=state.get('ExitCode') if not running else None,
        started_at=state.get('StartedAt') if started is not None else None,
        uptime_seconds=uptime,
        restarting=restarting,
        logs_bounded=not log_config_unbounded((details.get('HostConfig') or {}).get('LogConfig')),
        up=running and not restarting and health != 'unhealthy',
        problems=problems,
    )


def file_states(snapshot_files, read_file):
    """[{path, state}] for the files of a release's snapshot: `same`, `changed` or `missing` on disk now, or
    `unreadable`. `read_file(path)` returns the bytes, None when the file does not exist; it may raise OSError."""
    states = []
    for entry in snapshot_files or []:
        path = entry.get('path')
        try:
            data = read_file(path)
        except (IOError, OSError) as exc:
            states.append(dict(path=path, state='unreadable', detail=str(getattr(exc, 'strerror', None) or exc)))
            continue
        if data is None:
            states.append(dict(path=path, state='missing'))
        elif hashlib.sha256(data).hexdigest() != entry.get('sha256'):
            states.append(dict(path=path, state='changed'))
        else:
            states.append(dict(path=path, state='same'))
    return states


def describe_holder(lease):
    return 'owner %s on host %s, run id %s%s, since %s' % (
        lease.get('owner'), lease.get('host'), lease.get('run_id'),
        ', release %s' % lease['release'] if lease.get('release') else '', lease.get('acquired_at'))


def compute_drift(ledger_state, expected, containers, files=(), lock=None):
    """Where what runs differs from what the ledger says should run: [{kind, service, container, detail}].

    ledger_state: `ok`, `missing` (no ledger) or `unreadable: <why>`; expected: {service: digest} of the current
    release, or None when there is none; containers: container_view()s of the project (one-offs left out);
    files: file_states() of the current release's snapshot; lock: {held, expired, holder} or None.
    """
    drift = []

    def add(kind, detail, service=None, container=None):
        drift.append(dict(kind=kind, service=service, container=container, detail=detail))

    if ledger_state == 'missing':
        add('no_ledger', 'no release ledger for this project on this host: it was never rolled out here by '
                         'safedeploy.compose (or state_dir is not the one the rollout used)')
    elif ledger_state != 'ok':
        add('ledger', 'the release ledger cannot be read: %s' % ledger_state)
    elif expected is None:
        add('no_release', 'the ledger has no current release (no rollout of it has passed its gate yet)')
    by_service = {}
    for box in containers:
        by_service.setdefault(box['service'], []).append(box)
    if expected is not None:
        for service in sorted(expected):
            boxes = by_service.get(service) or []
            if not boxes:
                add('missing', 'service %s of the current release has no container' % service, service=service)
            for box in boxes:
                if expected[service] not in box['digests']:
                    add('digest', 'container %s runs %s, not %s of the current release'
                        % (box['name'], short_digest(box['digests'][0]) if box['digests'] else box['image'] or '?',
                           short_digest(expected[service])), service=service, container=box['name'])
        for service in sorted(set(by_service) - set(expected)):
            for box in by_service[service]:
                add('extra', 'container %s (service %s) is not part of the current release'
                    % (box['name'], service or '?'), service=service or None, container=box['name'])
    for entry in files or ():
        if entry['state'] != 'same':
            add('files', '%s %s since the current release was recorded' % (
                entry['path'], {'changed': 'changed', 'missing': 'was removed'}.get(entry['state'], 'cannot be read')))
    if lock and lock.get('holder'):
        add('lock', ('an expired stack lock was left by %s' if lock.get('expired') else 'the stack lock is held by %s')
            % describe_holder(lock['holder']))
    return drift


def short_digest(digest):
    return digest[:19] if isinstance(digest, str) and digest.startswith('sha256:') else digest


def stack_state(expected_services, containers):
    """`running`, `degraded`, `stopped` or `absent`: how much of the stack runs."""
    if not containers:
        return 'absent'
    services = set(expected_services or ()) | set(box['service'] for box in containers)
    up = set(box['service'] for box in containers if box['state'] == 'running')
    if not up:
        return 'stopped'
    if up >= services and all(box['state'] == 'running' for box in containers):
        return 'running'
    return 'degraded'


def stack_healthy(expected_services, containers):
    """True when every service (of the release, or found) has a container and every container is up."""
    if not containers:
        return False
    found = set(box['service'] for box in containers)
    return set(expected_services or ()) <= found and all(box['up'] for box in containers)


def last_rollout(ledger):
    """The ledger's last rollout (the release record written last): {release, status, at, timestamp, success}."""
    latest, latest_at = None, None
    for record in (ledger or {}).get('releases') or []:
        stamp = parse_ledger_time(record.get('updated_at') or record.get('created_at'))
        if stamp is not None and (latest_at is None or stamp >= latest_at):
            latest, latest_at = record, stamp
    if latest is None:
        return None
    attempts = latest.get('failed_attempts') or []
    failed_attempt = bool(attempts) and attempts[-1].get('failed_at') == latest.get('updated_at')
    status = 'failed' if failed_attempt else latest['status']
    return dict(release=latest['id'], status=status, at=latest.get('updated_at'), timestamp=latest_at,
                success=status in ('good', 'superseded') and not failed_attempt)


def clip(text, width):
    text = str(text)
    return text if width <= 0 or len(text) <= width - 1 else text[:max(1, width - 2)] + '~'


def drift_summary(drift, limit=3):
    """`digest:web, lock` style: the kinds (with the service) of the first `limit` entries."""
    if not drift:
        return 'none'
    parts = []
    for entry in drift:
        part = entry['kind'] + (':' + entry['service'] if entry.get('service') else '')
        if part not in parts:
            parts.append(part)
    return ', '.join(parts[:limit]) + (' +%d' % (len(parts) - limit) if len(parts) > limit else '')


def table_lines(host, rows, disk=None):
    """One host's status as fixed-width lines: a title, a header, one line per stack.

    rows: [{stack, current, last_good, state, health, drift}] (strings; drift may be a list of drift entries)."""
    title = host
    if disk:
        title += '  (Docker disk %s%% used of %s)' % (disk.get('percent'), human_bytes(disk.get('total') or 0))
    lines = [title, _row([name for name, _width in TABLE_COLUMNS])]
    for row in rows or []:
        drift = row.get('drift')
        if isinstance(drift, list):
            drift = drift_summary(drift)
        lines.append(_row([row.get('stack') or '?', row.get('current') or '-', row.get('last_good') or '-',
                           row.get('state') or '?', row.get('health') or '?', drift or 'none']))
    if not rows:
        lines.append('(no stacks in safedeploy_stacks for this host)')
    return lines


def _row(cells):
    parts = []
    for (_name, width), cell in zip(TABLE_COLUMNS, cells):
        parts.append(clip(cell, width).ljust(width) if width else str(cell))
    return ' '.join(parts).rstrip()


def clip_log_line(line):
    return line if len(line) <= LOG_LINE_MAX_CHARS else line[:LOG_LINE_MAX_CHARS] + '...'


# --- the status role's record of one stack (the JSON report, the table, the textfile, status_fail_on) -----------

CHECK_KEYS = ('name', 'type', 'passed', 'last_status', 'last_error', 'unreachable')
RECORD_STATUS_KEYS = ('ledger', 'current', 'last_good', 'last_rollout', 'state', 'services', 'drift', 'files', 'lock',
                      'logs', 'disk', 'checked_at')


def health_view(gate):
    """The observe pass of health_gate, reduced to what may be shown: each check's name and verdict, never its
    options (they may hold tokens). None when no check ran."""
    if not isinstance(gate, dict) or gate.get('skipped') or 'passed' not in gate:
        return None
    checks = [dict((key, check.get(key)) for key in CHECK_KEYS) for check in gate.get('checks') or []]
    view = dict(passed=bool(gate.get('passed')), elapsed=gate.get('elapsed'), checks=checks, error=None)
    if not checks and not view['passed']:
        view['error'] = str(gate.get('msg') or 'the health checks could not run')
    return view


def status_record(status, gate=None, host=None, project=None):
    """One stack's status record from stack_status's result (or its failure) and the health_gate observe pass."""
    status = status if isinstance(status, dict) else {}
    record = dict(host=host, project=status.get('project') or project)
    # Registered with failed_when: false, a failure keeps only its msg: a result without a state is one.
    error = None if 'state' in status else str(status.get('msg') or 'stack_status did not run')
    for key in RECORD_STATUS_KEYS:
        record[key] = status.get(key)
    record['drift'] = list(record['drift'] or [])
    record['logs'] = dict(record['logs'] or {})
    record['error'] = error
    if error:
        record['state'] = 'error'
    health = health_view(gate)
    record['health_checks'] = health
    containers_healthy = bool(status.get('healthy')) and not error
    record['containers_healthy'] = containers_healthy
    record['healthy'] = containers_healthy and (health is None or health['passed'])
    problems = []
    if error:
        problems.append('status could not be read: %s' % error)
    services = record.get('services') or {}
    for name in sorted(services):
        for box in services[name].get('containers') or []:
            if box.get('problems'):
                tail = [line for line in record['logs'].get(box['name']) or [] if line.strip()]
                last = ' (last log line: %s)' % tail[-1] if tail else ''
                problems.append('container %s %s%s' % (box['name'], ', '.join(box['problems']), last))
    if not error and not (record.get('services') or {}):
        problems.append('no container runs')
    for entry in record['drift']:
        if entry['kind'] == 'missing':
            problems.append(entry['detail'])
    for check in (health or {}).get('checks') or []:
        if not check.get('passed'):
            problems.append('health check %r failed: %s' % (check.get('name'), check.get('last_error') or 'not green'))
    if health and health.get('error'):
        problems.append('health checks could not run: %s' % health['error'])
    record['unhealthy'] = [] if record['healthy'] else (problems or ['not healthy'])
    unbounded = sorted(set(box.get('service') or box['name'] for service in services.values()
                           for box in service.get('containers') or [] if box.get('logs_bounded') is False))
    record['warnings'] = (['the logs of %s grow without bound (json-file without max-size): bound them with '
                           'rollout_log_bound, a logging: in the compose file, or log-opts in daemon.json'
                           % ', '.join(unbounded)] if unbounded else [])
    record['drifted'] = [entry['detail'] for entry in record['drift']] + ([error] if error else [])
    return record


def health_word(record):
    if record.get('error'):
        return 'unknown'
    if record.get('healthy'):
        return 'healthy'
    health = record.get('health_checks') or {}
    failing = [check for check in health.get('checks') or [] if not check.get('passed')]
    if record.get('containers_healthy') and failing:
        return '%d/%d failing' % (len(failing), len(health['checks']))
    return 'UNHEALTHY'


def record_row(record):
    current = record.get('current') or {}
    good = record.get('last_good') or {}
    ledger = record.get('ledger') or {}
    return dict(stack=record.get('project'),
                current=current.get('id') or ('no ledger' if ledger.get('state') == 'missing' else '-'),
                last_good=good.get('id') or '-', state=record.get('state') or '?', health=health_word(record),
                drift='error' if record.get('error') else record.get('drift') or [])


def status_table(records, host):
    """The table lines of one host from its status records."""
    records = list(records or [])
    disk = next((record['disk'] for record in records if record.get('disk')), None)
    return table_lines(host, [record_row(record) for record in records], disk)


def failing(records, fail_on):
    """The lines saying why the host fails under status_fail_on `fail_on` (none, unhealthy, drift); empty: it passes."""
    if fail_on not in ('none', 'unhealthy', 'drift'):
        raise ValueError('status_fail_on must be none, unhealthy or drift, not %r' % (fail_on,))
    lines = []
    if fail_on == 'none':
        return lines
    for record in records or []:
        reasons = list(record.get('unhealthy') or [])
        if fail_on == 'drift':
            reasons += [reason for reason in record.get('drifted') or [] if reason not in reasons]
        if reasons:
            lines.append('%s: %s' % (record.get('project'), '; '.join(reasons)))
    return lines
