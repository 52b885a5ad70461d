"""`make demo`: three releases of one stack on this machine, told as a story.

v1 rolls out, v2 rolls out (both pass their health gates), v3 crash-loops: its gate fails within
seconds, the stack goes back to v2 by itself and the play fails with a summary. Then the ledger,
a disk-guard report, and a status run saying what runs where. Everything runs against the local engine and the local registry; the demo
removes its stack and its files at the end (pass --keep to leave v2 running).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tests'))

from testbed import testbed  # noqa: E402

DEMO_ROOT = Path('/var/lib/safedeploy-demo')
PROJECT = 'sd-demo-web'
REPOS = {'web': '127.0.0.1:5000/safedeploy-demo/web', 'worker': '127.0.0.1:5000/safedeploy-demo/worker'}
RELEASES = {'v1': 'v1', 'v2': 'v2', 'v3': 'v3'}  # release -> test image tag (v3 crash-loops)
BOLD, GREEN, RED, DIM, RESET = ('\033[1m', '\033[32m', '\033[31m', '\033[2m', '\033[0m') if sys.stdout.isatty() else ('',) * 5


def say(text=''):
    print(text, flush=True)


def step(title):
    say()
    say('%s== %s ==%s' % (BOLD, title, RESET))


def playbook(name, *extra):
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / 'ansible.cfg'), ANSIBLE_COLLECTIONS_PATH=str(ROOT / '.build' / 'collections'),
               ANSIBLE_NOCOLOR='1', ANSIBLE_DISPLAY_SKIPPED_HOSTS='false', ANSIBLE_DISPLAY_OK_HOSTS='true')
    argv = [str(ROOT / '.venv' / 'bin' / 'ansible-playbook'), '-i', str(ROOT / 'inventories' / 'local' / 'hosts.yml'),
            str(ROOT / 'playbooks' / name)] + list(extra)
    say('%s$ ansible-playbook %s%s' % (DIM, ' '.join(argv[1:]), RESET))
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=env, text=True, capture_output=True, check=False)
    elapsed = time.monotonic() - started
    return proc, elapsed


def recap(output):
    lines = output.splitlines()
    for index, line in enumerate(lines):
        if line.startswith('PLAY RECAP'):
            return '\n'.join(lines[index + 1:index + 2]).strip()
    return ''


def release_report(release):
    """The controller-side JSON report the rollout playbook wrote for this release."""
    path = DEMO_ROOT / 'reports' / 'releases' / release / ('localhost-%s.json' % PROJECT)
    return json.loads(path.read_text()) if path.exists() else {}


def describe(report):
    if not report:
        return ['(no release report was written)']
    if report.get('result') in ('deployed', 'unchanged'):
        lines = ['%s: %s (%ss, health gate %ss)' % (report['release'], report['result'], report['seconds'], report.get('gate_elapsed'))]
        lines += ['  %s pinned to %s' % (name, digest) for name, digest in sorted(report.get('digests', {}).items())]
        return lines
    lines = ['%s: %s after %ss, at "%s"' % (report['release'], report['result'].replace('_', ' '), report['seconds'], report.get('failed_task'))]
    lines.append('  why: %s' % report.get('reason', '')[:300])
    for container, tail in sorted((report.get('logs') or {}).items()):
        last = tail[-1] if isinstance(tail, list) and tail else tail
        lines.append('  last log line of %s: %s' % (container, last))
    return lines


def status_table(output):
    """The table the status role printed (the lines of its debug task's msg)."""
    lines = output.splitlines()
    for index, line in enumerate(lines):
        if line.startswith('TASK [safedeploy.compose.status : Show the table of the host]'):
            table = []
            for item in lines[index + 3:]:
                if not item.strip().startswith('- '):
                    break
                table.append(item.strip()[2:].strip('\''))
            return table
    return ['(no status table in the output)']


def status_report():
    path = DEMO_ROOT / 'reports' / 'releases' / 'status' / ('localhost-%s.json' % PROJECT)
    return json.loads(path.read_text()) if path.exists() else {}


def prepare_images(client):
    for release, tag in RELEASES.items():
        source = client.images.get('%s:%s' % (testbed.APP_REPO, tag))
        for repo in REPOS.values():
            source.tag(repo, release)
            testbed.push(client, '%s:%s' % (repo, release))


def compose_down():
    project_dir = DEMO_ROOT / PROJECT
    if not (project_dir / 'compose.yaml').exists():
        return
    override = 'compose.%s.release.yml' % PROJECT  # compose_pin's default, one per project
    files = ['-f', 'compose.yaml'] + (['-f', override] if (project_dir / override).exists() else [])
    subprocess.run(['docker', 'compose', '-p', PROJECT] + files + ['down', '--remove-orphans'], cwd=project_dir,
                   capture_output=True, check=False)


def ledger():
    path = DEMO_ROOT / 'state' / PROJECT / 'releases.json'
    return json.loads(path.read_text()) if path.exists() else None


def main(argv):
    keep = '--keep' in argv
    step('Test bed: engine, registry and images')
    bed = testbed.up()
    client = bed.client()
    prepare_images(client)
    say('engine %s, registry %s; demo images pushed: %s:{v1,v2,v3} and %s:{v1,v2,v3} (v3 crash-loops)'
        % (bed.docker_host, bed.registry, REPOS['web'], REPOS['worker']))
    say('Compose: docker compose %s (v2, what the roles use here; docker-compose %s stays for v1 users)'
        % (bed.compose['v2']['version'], bed.compose['v1']['version']))
    compose_down()
    shutil.rmtree(DEMO_ROOT, ignore_errors=True)
    outcomes = []
    try:
        for release, expect_ok in (('v1', True), ('v2', True), ('v2', True), ('v3', False)):
            again = any(r == release for r, _ok, _t, _rc in outcomes)
            step('Roll out %s%s' % (release, ' again (nothing should change)' if again else ''))
            proc, elapsed = playbook('rollout.yml', '-e', 'release=%s' % release)
            ok = proc.returncode == 0
            outcomes.append((release, ok, elapsed, recap(proc.stdout)))
            for line in describe(release_report(release)):
                say('  ' + line)
            say('  recap: %s' % recap(proc.stdout))
            if ok != expect_ok:
                say(proc.stdout[-6000:])
                say(proc.stderr[-3000:])
                say('%sdemo: the %s rollout %s, which it should not have%s' % (RED, release, 'passed' if ok else 'failed', RESET))
                return 1
            say('  %s%s in %.1fs%s' % (GREEN if ok else RED, 'succeeded' if ok else 'FAILED, as intended', elapsed, RESET))

        step('The ledger on the host (%s)' % (DEMO_ROOT / 'state' / PROJECT / 'releases.json'))
        data = ledger()
        for record in data['releases']:
            mark = ' <- current' if record['id'] == data['current'] else ''
            say('  %-4s %-11s %s%s' % (record['id'], record['status'],
                                       ', '.join('%s@%s' % (n, s['digest'][7:19]) for n, s in sorted(record['services'].items())), mark))
            if record.get('reason'):
                say('       reason: %s' % record['reason'][:160])
        health = subprocess.run(['curl', '-s', 'http://127.0.0.1:18081/cgi-bin/health'], capture_output=True, text=True, check=False).stdout
        say('  web answers now: %s' % health.strip())

        step('Disk guard')
        proc, elapsed = playbook('disk_guard.yml')
        report = json.loads((DEMO_ROOT / 'reports' / 'disk_guard.json').read_text())
        say('  disk %s%% used (threshold %s%%), %s bytes reclaimed, %s images protected for rollback; report %s'
            % (report['usage_after']['percent'], report['threshold_percent'], report['reclaimed_bytes'], report['protected'],
               DEMO_ROOT / 'reports' / 'disk_guard.json'))

        step('What happened')
        say('  v1 and v2 were pinned to registry digests, deployed and passed their health gates.')
        changed = [part for part in outcomes[2][3].split() if part.startswith('changed=')]
        say('  Rolling v2 out again changed nothing (%s in the recap).' % (changed[0] if changed else '?'))
        say('  v3 crash-looped: the gate failed fast, the stack went back to v2 on its own, v3 is marked failed')
        say('  in the ledger, and the play failed with a summary. v2 (%s) is serving.' % ('current: ' + data['current']))
        say('  The status run below reads it back: v2 current and last good, every container on its digest, healthy.')

        step('Status: what runs where (playbooks/status.yml, read-only)')
        proc, elapsed = playbook('status.yml')
        for line in status_table(proc.stdout):
            say('  ' + line)
        status = status_report()
        say('  healthy: %s, drift: %s, lock held: %s; report %s'
            % (status.get('healthy'), [entry['kind'] for entry in status.get('drift', [])] or 'none',
               (status.get('lock') or {}).get('held'), DEMO_ROOT / 'reports' / 'releases' / 'status'))
        say('  gauges: %s' % ', '.join(line for line in (DEMO_ROOT / 'reports' / 'safedeploy_status.prom').read_text().splitlines()
                                       if line.startswith(('safedeploy_stack_info', 'safedeploy_stack_healthy'))))
        if proc.returncode != 0 or status.get('healthy') is not True:
            say(proc.stdout[-6000:])
            say('%sdemo: the status run says the stack is not healthy on v2%s' % (RED, RESET))
            return 1
        say('  %ssucceeded in %.1fs%s' % (GREEN, elapsed, RESET))
        return 0
    finally:
        if not keep:
            compose_down()
            shutil.rmtree(DEMO_ROOT, ignore_errors=True)
            say('%s(demo stack and files removed; run with --keep to leave v2 running)%s' % (DIM, RESET))


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
