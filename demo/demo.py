"""`make demo`: releases of two stacks on this machine, told as a story.

First a plain stack: v1 rolls out, v2 rolls out (both pass their health gates), v3 crash-loops: its gate fails
within seconds, the stack goes back to v2 by itself and the play fails with a summary. Then the ledger, a disk-guard
report, and a status run saying what runs where.

Then zero downtime: a stack whose web runs in blue/green slots behind the collection's HAProxy, with a client
sending 40 requests a second to it and a live counter. v1 moves behind the proxy; v2 goes through a canary step
and flips with no failed request; v3 crash-loops in its slot and never takes a request; v4 answers errors under
traffic: the proxy answers each of them from the stable slot, and the canary is judged on them and aborted, with no
failed request either.

Everything runs against the local engine and the local registry; the demo removes its stacks, its proxy and its
files at the end (pass --keep to leave them running).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tests'))

from testbed import testbed  # noqa: E402

DEMO_ROOT = Path('/var/lib/safedeploy-demo')
PROJECT = 'sd-demo-web'
REPOS = {'web': '127.0.0.1:5000/safedeploy-demo/web', 'worker': '127.0.0.1:5000/safedeploy-demo/worker'}
RELEASES = {'v1': 'v1', 'v2': 'v2', 'v3': 'v3', 'v4': 'error500'}  # release -> test image (v3 crash-loops, v4 answers 500)
SHOP = 'sd-demo-shop'  # the routed stack (inventories/local/traffic.yml)
SHOP_PORT = 18083
BOLD, GREEN, RED, DIM, RESET = ('\033[1m', '\033[32m', '\033[31m', '\033[2m', '\033[0m') if sys.stdout.isatty() else ('',) * 5


def say(text=''):
    print(text, flush=True)


def step(title):
    say()
    say('%s== %s ==%s' % (BOLD, title, RESET))


def playbook(name, *extra, inventory='hosts.yml'):
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / 'ansible.cfg'), ANSIBLE_COLLECTIONS_PATH=str(ROOT / '.build' / 'collections'),
               ANSIBLE_NOCOLOR='1', ANSIBLE_DISPLAY_SKIPPED_HOSTS='false', ANSIBLE_DISPLAY_OK_HOSTS='true')
    argv = [str(ROOT / '.venv' / 'bin' / 'ansible-playbook'), '-i', str(ROOT / 'inventories' / 'local' / inventory),
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


def shop_down(client):
    """The routed stack's containers (project and slots), networks, and the demo's HAProxy."""
    for project in (SHOP, SHOP + '-blue', SHOP + '-green'):
        for container in client.containers.list(all=True, filters={'label': 'com.docker.compose.project=%s' % project}):
            container.remove(force=True)
        for network in client.networks.list(filters={'label': 'com.docker.compose.project=%s' % project}):
            try:
                network.remove()
            except Exception:  # still in use by a container being removed: the next run removes it
                pass
    try:
        with open(DEMO_ROOT / 'proxy' / 'haproxy.pid') as handle:
            os.kill(int(handle.read().split()[0]), 15)
    except (OSError, ValueError, IndexError):
        pass


class LiveClient(object):
    """40 requests a second to the routed stack's public port, each on a new connection, until stopped; counts the
    answers by version and the failures, and prints a live counter line."""

    def __init__(self, port, rate=40):
        self.port, self.rate = port, rate
        self.ok, self.failed, self.versions = 0, 0, {}
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        start, number, last_print = time.monotonic(), 0, 0.0
        while not self.stop_event.is_set() and time.monotonic() - start < 600:  # bounded, whatever happens
            delay = start + number / float(self.rate) - time.monotonic()
            number += 1
            if delay > 0:
                time.sleep(delay)
            conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=5)
            try:
                conn.request('GET', '/cgi-bin/health')
                response = conn.getresponse()
                body = response.read()
                if response.status == 200:
                    self.ok += 1
                    version = json.loads(body).get('version', '?')
                    self.versions[version] = self.versions.get(version, 0) + 1
                else:
                    self.failed += 1
            except (OSError, http.client.HTTPException, ValueError):
                self.failed += 1
            finally:
                conn.close()
            now = time.monotonic()
            if sys.stdout.isatty() and now - last_print > 0.25:
                last_print = now
                sys.stdout.write('\r  %s' % self.line())
                sys.stdout.flush()

    def line(self):
        return 'requests %d, failed %s%d%s, answered by %s' % (
            self.ok + self.failed, RED if self.failed else GREEN, self.failed, RESET,
            ', '.join('%s: %d' % item for item in sorted(self.versions.items())) or '-')

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(10)
        if sys.stdout.isatty():
            sys.stdout.write('\r')
        say('  live counter: %s' % self.line())


def zero_downtime(client):
    """The routed stack's part of the story; returns an exit code."""
    step('Zero downtime: %s, web in blue/green slots behind HAProxy on 127.0.0.1:%d' % (SHOP, SHOP_PORT))
    say('  (inventories/local/traffic.yml: routes, a canary step of 20% for 4 s; a client sends 40 requests a second)')
    plan = (('v1', True, 'the first release, in the blue slot (nothing answers before it: those requests fail)'),
            ('v2', True, 'canary at 20%, judged from the proxy\'s counters, then the flip: no request fails'),
            ('v3', False, 'crash-loops in its slot: the gate fails, the traffic never moves, no request fails'),
            ('v4', False, 'answers 500 under traffic: the proxy retries each on v2, the canary is judged on them and '
                          'aborted: no request fails'))
    counts = []
    for release, expect_ok, story in plan:
        step('Roll out %s to %s: %s' % (release, SHOP, story))
        with LiveClient(SHOP_PORT) as live:
            proc, elapsed = playbook('rollout.yml', '-e', 'release=%s' % release, inventory='traffic.yml')
            time.sleep(1)
        counts.append((release, live.ok, live.failed, dict(live.versions)))
        ok = proc.returncode == 0
        say('  recap: %s' % recap(proc.stdout))
        report = {}
        path = DEMO_ROOT / 'reports' / 'releases' / release / ('localhost-%s.json' % SHOP)
        if path.exists():
            report = json.loads(path.read_text())
        for event in report.get('canary') or []:
            say('  canary at %s%%: %s' % (event['share'], ', '.join('%s %s' % item for item in sorted(event['routes'].items()))))
        if report.get('slot'):
            say('  release %s ran in the %s slot; %s' % (release, report['slot'], report.get('result')))
        if ok != expect_ok or (release != 'v1' and live.failed):  # v1: nothing served before it
            say(proc.stdout[-6000:])
            say('%sdemo: the %s rollout of %s did not go as told%s' % (RED, release, SHOP, RESET))
            return 1
        say('  %s%s in %.1fs%s' % (GREEN if ok else RED, 'succeeded' if ok else 'FAILED, as intended', elapsed, RESET))
    step('What happened behind the proxy')
    for release, answered, failed, versions in counts:
        say('  %s: %d requests during the rollout, %d failed, answered by %s'
            % (release, answered + failed, failed, ', '.join('%s: %d' % item for item in sorted(versions.items()))))
    say('  v2 serves from its slot; v3 and v4 wait, stopped, in the other one (their evidence kept).')
    return 0


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
    say('engine %s, registry %s; demo images pushed: %s:{v1,v2,v3,v4} and %s:{v1,v2,v3,v4} (v3 crash-loops, v4 answers 500)'
        % (bed.docker_host, bed.registry, REPOS['web'], REPOS['worker']))
    say('Compose: docker compose %s (v2, what the roles use here; docker-compose %s stays for v1 users)'
        % (bed.compose['v2']['version'], bed.compose['v1']['version']))
    compose_down()
    shop_down(client)
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
        return zero_downtime(client)
    finally:
        if not keep:
            compose_down()
            shop_down(client)
            shutil.rmtree(DEMO_ROOT, ignore_errors=True)
            say('%s(demo stack and files removed; run with --keep to leave v2 running)%s' % (DIM, RESET))


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
