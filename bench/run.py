"""What the safety of safedeploy.compose costs, measured side by side against plain Compose on this machine.

    make bench          # .venv/bin/python bench/run.py            the full run (over an hour on 2 cores; figure 7 ~25 min)
    make bench-smoke    # .venv/bin/python bench/run.py --smoke    one pass of every figure on small stacks (~5 min;
                        #                                          figure 7, six playbook runs, ~3 of them)

Every figure compares A with B in the same run, alternating which goes first, and reports the median with
[min-max] of the repetitions (the ratio is taken within each pair of the same repetition):

  1 rollout    gated rollout (playbooks/rollout.yml) of a 5-service stack N -> N+1 vs the floor (docker compose pull,
               up -d, a tight loop on the same health endpoints), with the time of each phase
  2 gate       how long after the app really serves (a tight side loop) the gate passes; how long after up -d the
               gate fails a crash-looping release vs the first moment the engine shows the crash
  3 restore    from the failed gate to the last good release serving again vs a plain up -d of the old release
  4 rerun      rolling out the running release again (must report changed=0) vs a rollout N -> N+1
  5 scale      stacks of 1, 5, 20 services; a fleet of 1, 10, 50 simulated hosts (one compose project each,
               connection local, forks 10, batches of 10) vs the floor run 10 projects at a time
  6 disk       disk_reclaim vs docker system prune -af on the small-disk engine: time, bytes, rollback images lost
  7 traffic    a bounded client (40 requests a second, a new connection each) on the public port of a two-service
               stack through (a) a healthy rollout, (b) a crash-looping release, (c) a release on the wrong port,
               (d) a canary abort, (e) a manual rollback: the traffic layer (blue/green slots behind a private HAProxy,
               playbooks/rollout.yml and rollback.yml) vs plain up -d of the same stack; failed requests, p99 latency
               over the switch window, time to flip back (bench/traffic.py)

With --mitogen (make bench), figure 1 (the main size, its rerun included) and every fleet size get a leg beside A
and B: the same gated rollout with the opt-in mitogen strategy (PyPI mitogen, pip-installed into .build/bench-mitogen
on first use, for the bench only), rows 1m, 4m and 5m. With --before REF, the same figures get a leg that runs the
collection as it was at commit REF (git archive into .build/bench-before/), rows 1b, 4b and 5b: before and after in
one run, on the same stacks, against the same floor.

Prints a table and writes bench/results/bench-<UTC time>[-smoke].json. Exits non-zero when the bench breaks (a
rollout that should pass fails, a rerun changes something, a rollback does not restore service...), never because
a target is missed: targets are reported, not asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / 'tests'))

import docker  # noqa: E402

from releases import ReleasePusher  # noqa: E402
from stacks import REGISTRY, REPO_PREFIX, Stack, Watcher, children_cpu, gated_rollout, playbook_run  # noqa: E402
from testbed import testbed  # noqa: E402
from traffic import LoadClient, PlainStack, RoutedStack, measure, push_release, release_refs, seen, wait_answer  # noqa: E402

RESULTS = HERE / 'results'
GATE_INTERVAL = 2.0  # the rollout role's default rollout_health_interval, which the bench leaves alone
FORKS = 10
BATCH = 10
# The opt-in mitogen leg (--mitogen): PyPI mitogen, installed for the bench only, never by make test or the collection.
MITOGEN_VERSION = '0.3.54'
MITOGEN_DIR = ROOT / '.build' / 'bench-mitogen'
# The --before leg: the collection at an earlier commit, extracted with git archive (the working tree is not touched).
BEFORE_DIR = ROOT / '.build' / 'bench-before'

# Port plan (18800-19999): each stack gets a block, one port per service.
PORTS = {'g1': 18800, 'f1': 18801, 'g2': 18802, 'f2': 18804, 'g5': 18810, 'f5': 18820, 'g20': 18840, 'f20': 18870, 'lat': 18900,
         'tasks': 18920, 'fleet_g': 19000, 'fleet_f': 19100,  # tasks: bench/tasks.py, up to 20 services
         'traffic_routed': 19600, 'traffic_plain': 19610}  # figure 7 (19600-19699): public, 2 slots, worker; public, worker

# Figure 7: the cases, in the order of the table, and the web image each one rolls out (the worker is always v2)
TRAFFIC_CASES = (('healthy', '(a) healthy rollout', 'v2'), ('crash', '(b) crash-looping release', 'v3'),
                 ('wrongport', '(c) release on the wrong port', 'wrongport'), ('canary', '(d) canary abort', 'error500'),
                 ('rollback', '(e) manual rollback', None))
TRAFFIC_ORDER = ('healthy', 'rollback', 'crash', 'wrongport', 'canary')  # (e) takes back what (a) rolled out, by a flip
# The smoke run checks that the figure works, not its numbers: (b) and (c) have their tests (test_roles_traffic.py).
TRAFFIC_SMOKE = ('healthy', 'rollback', 'canary')
TRAFFIC_RATE = 40  # requests a second, each on a new connection
TRAFFIC_CANARY = {'steps': [25], 'interval': 4, 'threshold': 1, 'min_requests': 10}  # smoke: interval 2
TRAFFIC_HEALTH_TIMEOUT = 10  # the gates' timeout (rollout_ and rollback_health_timeout): when (c) fails; smoke: 6

TARGETS = {
    'rollout': 'gated <= 1.3x floor (5 services)',
    'gate_latency': 'gate passes within one interval (%gs) of the app serving' % GATE_INTERVAL,
    'crash': 'crash loop failed <= 5 s after up -d',
    'restore': 'none set (reported against a plain up -d of the old release)',
    'rerun': 'rerun <= 0.35x rollout, changed=0',
    'overhead': 'overhead <= +6.8s (half of +13.6s)',
    'fleet_cpu': 'controller CPU/host <= 8 CPU-s',
    'fleet': 'wall time grows with batches, not with hosts inside a batch',
    'disk': 'keeps every rollback image prune deletes',
    'traffic': '0 failed requests (collection)',
}


# A leg beside A (the collection, default settings) and B (the floor): key 'mitogen' or 'before', the label of its
# rows, the environment ansible-playbook runs with, and the checkout whose playbooks it runs (None: this one).
Leg = namedtuple('Leg', 'key label env root')


class BenchBroken(Exception):
    """Something the bench relies on did not behave: the run fails (targets never make it fail)."""


def log(msg):
    print('bench: %s' % msg, file=sys.stderr, flush=True)


def summary(values):
    values = [value for value in values if value is not None]
    if not values:
        return {'n': 0, 'median': None, 'min': None, 'max': None, 'values': []}
    return {'n': len(values), 'median': round(statistics.median(values), 3), 'min': round(min(values), 3),
            'max': round(max(values), 3), 'values': [round(value, 3) for value in values]}


def alternate(reps, first, second, *more):
    """Run first(i), second(i) (and any more steps) for each repetition i, reversing their order every repetition."""
    steps = (first, second) + more
    for index in range(reps):
        for step in (steps if index % 2 == 0 else tuple(reversed(steps))):
            step(index)


def mitogen_env():
    """The environment that runs ansible-playbook with mitogen's linear strategy, mitogen installed on first use.

    pip installs the pinned mitogen into .build/bench-mitogen (a --target directory, not the venv): nothing but
    this leg of the bench sees it."""
    strategies = MITOGEN_DIR / 'ansible_mitogen' / 'plugins' / 'strategy'
    if not (strategies / 'mitogen_linear.py').exists():
        log('installing mitogen %s into %s (the --mitogen leg only)' % (MITOGEN_VERSION, MITOGEN_DIR))
        subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', '--no-deps',
                        '--target', str(MITOGEN_DIR), 'mitogen==%s' % MITOGEN_VERSION], check=True)
    return Leg('mitogen', 'mitogen (opt-in)', {'ANSIBLE_STRATEGY_PLUGINS': str(strategies), 'ANSIBLE_STRATEGY': 'mitogen_linear'},
               None)


def before_leg(ref):
    """The collection as it was at commit `ref`: `git archive` of that commit into .build/bench-before/<commit>, run
    with its own playbooks and ANSIBLE_COLLECTIONS_PATH pointing there. Nothing of the working tree changes."""
    sha = subprocess.run(['git', 'rev-parse', '--verify', ref + '^{commit}'], cwd=str(ROOT), capture_output=True, text=True,
                         check=True).stdout.strip()
    home = BEFORE_DIR / sha[:12]
    tree = home / 'ansible_collections' / 'safedeploy' / 'compose'
    if not (tree / 'galaxy.yml').exists():
        log('extracting the collection at %s into %s (the --before leg only)' % (sha[:12], home))
        shutil.rmtree(str(home), ignore_errors=True)
        tree.mkdir(parents=True)
        archive = subprocess.run(['git', 'archive', '--format=tar', sha], cwd=str(ROOT), capture_output=True, check=True).stdout
        subprocess.run(['tar', '-x', '-C', str(tree)], input=archive, check=True)
    return Leg('before', 'before (%s)' % sha[:7], {'ANSIBLE_COLLECTIONS_PATH': str(home)}, tree)


def iso_epoch(text):
    if not text:
        return None
    return datetime.datetime.strptime(text.rstrip('Z'), '%Y-%m-%dT%H:%M:%S.%f').replace(tzinfo=datetime.timezone.utc).timestamp()


# ---------------------------------------------------------------- the timeline of a gated run

PHASES = ('startup', 'preflight', 'pin', 'ledger', 'pull', 'up', 'gate', 'finish', 'rollback')


def phase_of(task):
    """Which rollout phase a task of the rollout or rollback role belongs to (None: a task of the playbook)."""
    path = task.get('path') or ''
    name = task.get('name') or ''
    action = task.get('action') or ''
    filename = os.path.basename(path.rsplit(':', 1)[0])
    if 'validate_argument_spec' in action:
        return 'startup'
    if '/roles/' not in path:
        return None
    if ('/roles/rollback/' in path and filename != 'hook.yml') or filename == 'rollback.yml':
        return 'rollback'
    if action.endswith('last_good_tag') or 'candidate was recorded' in name:
        return 'ledger'
    if '/roles/host_python/' in path or filename in ('lock.yml', 'prepare.yml', 'preflight.yml', 'disk.yml'):
        return 'preflight'
    if filename in ('pin.yml', 'signatures.yml'):
        return 'gate' if action.endswith('health_gate') else 'pin'
    if filename == 'deploy.yml':
        if ': Pull and bring up' in name:
            return 'up'  # compose_up pulls and brings up in one module run: its time is pull and up together
        return 'pull' if ': Pull' in name else 'up'
    if filename == 'gate.yml':
        return 'gate'
    return 'finish'


def phases(run):
    """Seconds of the run per phase: each task lasts until the next starts. Playbook tasks before the first task
    of a role count as start-up (with Ansible's own start), the ones after as finish (with its exit)."""
    tasks = run.timeline.get('tasks') or []
    totals = dict((phase, 0.0) for phase in PHASES)
    if not tasks:
        totals['startup'] = run.wall
        return totals
    totals['startup'] += tasks[0]['start'] - run.started
    seen_role = False
    for index, task in enumerate(tasks):
        until = tasks[index + 1]['start'] if index + 1 < len(tasks) else run.ended
        phase = phase_of(task)
        if phase is None:
            phase = 'finish' if seen_role else 'startup'
        else:
            seen_role = True
        totals[phase] += until - task['start']
    return totals


def task_end(run, marker, role='rollout'):
    for task in run.timeline.get('tasks') or []:
        if (': %s' % marker) in task['name'] and task['name'].startswith('safedeploy.compose.%s' % role) and task['end']:
            return task['end']
    return None


def task_start(run, marker, role='rollout'):
    for task in run.timeline.get('tasks') or []:
        if (': %s' % marker) in task['name'] and task['name'].startswith('safedeploy.compose.%s' % role):
            return task['start']
    return None


def failed_task_end(run, markers, role='rollout'):
    """When the first task of the role named by one of markers failed (its result came back): where its rescue began."""
    for task in run.timeline.get('tasks') or []:
        if (task['name'].startswith('safedeploy.compose.%s' % role) and 'failed' in task['hosts'].values()
                and any((': %s' % marker) in task['name'] for marker in markers)):
            return task['end']
    return None


def gate_result(run, role='rollout'):
    for gate in run.gates:
        if gate['task'].startswith('safedeploy.compose.%s : Gate' % role):
            return gate
    return None


# ---------------------------------------------------------------- the bench

class Bench(object):
    def __init__(self, smoke, reps, workdir):
        self.smoke = smoke
        self.reps = reps
        self.traffic_cases = TRAFFIC_SMOKE if smoke else TRAFFIC_ORDER
        self.workdir = Path(workdir)
        self.state_dir = self.workdir / 'state'
        self.pusher = ReleasePusher(REGISTRY)
        self.client = docker.DockerClient(base_url=testbed.MAIN_DOCKER_HOST, timeout=120)
        self.stacks = []
        self.counter = 0
        self.stamp = '%x' % int(time.time())
        self.legs = []  # the legs beside A and B (--mitogen, --before), figure 1 and the fleet figure

    def release(self):
        self.counter += 1
        return 'b%s-%03d' % (self.stamp, self.counter)

    def stack(self, name, services, templated):
        stack = Stack(name, services, PORTS.get(name, 0), self.workdir)
        stack.write_compose(templated)
        self.stacks.append(stack)
        return stack

    def retire(self, stacks):
        """Remove the local images of every release but the two last good ones of each stack, as a host whose disk
        guard keeps its rollback images does: otherwise hundreds of bench releases pile up on the one engine and every
        disk check (which reads the engine's whole image inventory) gets slower from one repetition to the next."""
        for stack in stacks:
            keep = set(stack.good[-2:])
            for release in [release for release in stack.pushed if release not in keep]:
                in_use = False
                for ref in stack.image_refs(release):
                    try:
                        self.client.images.remove(ref)
                    except docker.errors.ImageNotFound:
                        pass
                    except docker.errors.APIError:  # still in use: try again next time
                        in_use = True
                if not in_use:
                    stack.pushed.remove(release)

    def common_vars(self):
        return {'rollout_state_dir': str(self.state_dir)}

    def gated(self, hosts, release, expect_ok=True, batches=None, leg=None):
        run = gated_rollout(hosts, release, self.common_vars(), forks=FORKS, batches=batches,
                            extra_env=leg.env if leg else None, root=leg.root if leg else None)
        ok = run.rc == 0
        if ok != expect_ok or not run.timeline:
            raise BenchBroken('gated rollout of %s to %s %s (rc=%s):\n%s' % (
                ', '.join(stack.project for stacks in hosts.values() for stack in stacks), release,
                'failed' if expect_ok else 'passed, but should have failed', run.rc, run.tail()))
        if ok:
            for stacks in hosts.values():
                for stack in stacks:
                    stack.current = release
                    stack.good.append(release)
        self.retire([stack for stacks in hosts.values() for stack in stacks])
        return run

    def floor(self, stack, release):
        result = stack.floor_rollout(release)
        if not result['ok']:
            raise BenchBroken('floor rollout of %s to %s never served the new release' % (stack.project, release))
        stack.current = release
        stack.good.append(release)
        self.retire([stack])
        return result

    def new_release(self, stacks, base_tag='v2', env=None):
        release = self.release()
        for stack in stacks:
            stack.push_release(self.pusher, release, base_tag=base_tag, env=env)
            stack.pushed.append(release)
        return release

    # ------------------------------------------------------------ figures 1, 4 and 5 (stacks)

    def rollout_pair(self, size, with_rerun):
        """Gated vs floor N -> N+1 on stacks of `size` services (and reruns of the running release)."""
        gated_stack = self.stack('g%d' % size, size, templated=False)
        floor_stack = self.stack('f%d' % size, size, templated=True)
        log('%d-service stacks: first rollout (setup)' % size)
        first = self.gated({'localhost': [gated_stack]}, self.new_release([gated_stack]))
        self.floor(floor_stack, self.new_release([floor_stack]))
        data = {'services': size, 'gated': [], 'floor': [], 'ratio': [], 'phases': [], 'floor_phases': [],
                'rerun': [], 'rerun_changed': [], 'rerun_phases': [], 'first_rollout': first.wall}

        def gated_step(index):
            release = self.new_release([gated_stack])
            run = self.gated({'localhost': [gated_stack]}, release)
            data['gated'].append(run.wall)
            data['phases'].append(phases(run))
            log('  %d svc rep %d: gated %.2fs' % (size, index + 1, run.wall))

        def floor_step(index):
            release = self.new_release([floor_stack])
            result = self.floor(floor_stack, release)
            data['floor'].append(result['total'])
            data['floor_phases'].append({'pull': result['pull'], 'up': result['up'], 'gate': result['gate']})
            log('  %d svc rep %d: floor %.2fs' % (size, index + 1, result['total']))

        def leg_step(leg):
            def step(index):
                release = self.new_release([gated_stack])
                run = self.gated({'localhost': [gated_stack]}, release, leg=leg)
                data[leg.key].append(run.wall)
                data[leg.key + '_phases'].append(phases(run))
                log('  %d svc rep %d: gated, %s %.2fs' % (size, index + 1, leg.label, run.wall))
            return step

        def rerun_step(leg):
            key = leg.key + '_rerun' if leg else 'rerun'

            def step(index):
                run = self.gated({'localhost': [gated_stack]}, gated_stack.current, leg=leg)
                if run.changed() != 0:
                    raise BenchBroken('rerun%s of the running release %s of %s reported changed=%d:\n%s'
                                      % (', ' + leg.label if leg else '', gated_stack.current, gated_stack.project,
                                         run.changed(), run.tail()))
                data[key].append(run.wall)
                data[key + '_changed'].append(run.changed())
                data[key + '_phases'].append(phases(run))
                log('  %d svc rep %d: rerun%s %.2fs (changed=0)' % (size, index + 1, ', ' + leg.label if leg else '', run.wall))
            return step

        # The legs (figure 1 only, the main size): the same rollout and rerun with mitogen's strategy, or with the
        # collection of an earlier commit, beside A and B.
        legs = self.legs if with_rerun else []
        for leg in legs:
            data.update({leg.key: [], leg.key + '_phases': [], leg.key + '_rerun': [], leg.key + '_rerun_changed': [],
                         leg.key + '_rerun_phases': []})
        for index in range(self.reps):
            order = (gated_step, floor_step)
            if with_rerun:
                order = (rerun_step(None),) + order
            for leg in legs:
                order += (leg_step(leg), rerun_step(leg))
            for step in (order if index % 2 == 0 else tuple(reversed(order))):
                step(index)
        data['ratio'] = [a / b for a, b in zip(data['gated'], data['floor'])]
        for leg in legs:
            data[leg.key + '_ratio'] = [a / b for a, b in zip(data[leg.key], data['floor'])]
            data[leg.key + '_rerun_ratio'] = [a / b for a, b in zip(data[leg.key + '_rerun'], data[leg.key])]
        if with_rerun:
            data['rerun_ratio'] = [a / b for a, b in zip(data['rerun'], data['gated'])]
        return data, gated_stack, floor_stack

    def figure_rollout(self, sizes, main_size):
        results = {}
        main = None
        for size in sizes:
            data, gated_stack, floor_stack = self.rollout_pair(size, with_rerun=(size == main_size))
            results[size] = data
            if size == main_size:
                main = (gated_stack, floor_stack)
        return results, main

    # ------------------------------------------------------------ figure 2 (gate latency)

    def figure_gate_latency(self):
        stack = self.stack('lat', 1, templated=False)
        rows = []
        for index in range(self.reps):
            # start-up delays spread over one gate interval, so the moment the app is ready falls
            # at every phase of the gate's rounds
            delay = round(0.3 + GATE_INTERVAL * (index + 0.5) / self.reps, 2)
            release = self.new_release([stack], base_tag='slow', env={'APP_DELAY': str(delay)})
            with Watcher(stack) as watcher:
                run = self.gated({'localhost': [stack]}, release)
            gate = gate_result(run)
            up_done = task_end(run, 'Pull and bring up')
            serving = watcher.first_serving(release, after=run.started)
            passed = iso_epoch(gate and gate['finished_at'])
            if None in (gate, up_done, serving, passed):
                raise BenchBroken('gate latency: missing timestamps (gate %s, up %s, serving %s)' % (gate, up_done, serving))
            rows.append({'delay': delay, 'latency': passed - serving, 'gate_after_up': passed - up_done,
                         'serving_after_up': serving - up_done, 'rounds': gate['rounds'], 'wall': run.wall})
            log('  rep %d: app delay %.2fs, serving %.2fs after up, gate passed %.2fs after up (latency %.2fs, %s rounds)'
                % (index + 1, delay, serving - up_done, passed - up_done, passed - serving, gate['rounds']))
        return {'interval': GATE_INTERVAL, 'reps': rows,
                'ratio': [row['gate_after_up'] / row['serving_after_up'] for row in rows]}

    # ------------------------------------------------------------ figures 2 and 3 (crash loop, restore)

    def figure_crash(self, gated_stack, floor_stack):
        data = {'gated_fail': [], 'floor_detect': [], 'gated_restore': [], 'floor_restore': [], 'gate_elapsed': [],
                'gated_wall': []}

        def gated_step(index):
            good = gated_stack.current
            bad = self.new_release([gated_stack], base_tag='v3')
            with Watcher(gated_stack) as watcher:
                run = self.gated({'localhost': [gated_stack]}, bad, expect_ok=False)
            gate = gate_result(run)
            up_done = task_end(run, 'Pull and bring up')
            failed_at = iso_epoch(gate and gate['finished_at'])
            restored = watcher.first_serving(good, after=failed_at or run.ended)
            if gate is None or gate['passed'] or up_done is None:
                raise BenchBroken('crash loop: the gate of %s did not run and fail:\n%s' % (bad, run.tail()))
            if restored is None:
                raise BenchBroken('crash loop: %s never served the last good release %s again:\n%s'
                                  % (gated_stack.project, good, run.tail()))
            data['gated_fail'].append(failed_at - up_done)
            data['gate_elapsed'].append(gate['elapsed'])
            data['gated_restore'].append(restored - failed_at)
            data['gated_wall'].append(run.wall)
            log('  rep %d: gate failed %.2fs after up -d, last good serving %.2fs after that (run %.1fs)'
                % (index + 1, failed_at - up_done, restored - failed_at, run.wall))

        def floor_step(index):
            good = floor_stack.current
            bad = self.new_release([floor_stack], base_tag='v3')
            result = floor_stack.floor_crash(bad, good, self.client)
            self.retire([floor_stack])
            if not result['ok']:
                raise BenchBroken('floor crash: no crash seen or %s not restored' % good)
            data['floor_detect'].append(result['detect'])
            data['floor_restore'].append(result['restore'])
            log('  rep %d: floor saw the crash %.2fs after up -d, plain up -d restored in %.2fs'
                % (index + 1, result['detect'], result['restore']))

        alternate(self.reps, gated_step, floor_step)
        data['fail_ratio'] = [a / b for a, b in zip(data['gated_fail'], data['floor_detect'])]
        data['restore_ratio'] = [a / b for a, b in zip(data['gated_restore'], data['floor_restore'])]
        return data

    # ------------------------------------------------------------ figure 5 (fleet)

    def figure_fleet(self, sizes):
        largest = max(sizes)
        gated = [Stack('fl-g%02d' % index, 1, PORTS['fleet_g'] + index, self.workdir) for index in range(largest)]
        floors = [Stack('fl-f%02d' % index, 1, PORTS['fleet_f'] + index, self.workdir) for index in range(largest)]
        for stack in gated + floors:
            stack.write_compose(stack in floors)
            self.stacks.append(stack)
        hosts = dict(('h%02d' % index, [stack]) for index, stack in enumerate(gated))
        names = sorted(hosts)
        # Setup: every simulated host starts with a release running, brought up by plain Compose 10 at a time (a
        # gated first rollout of 50 hosts would cost minutes of the budget). So the first gated rollout of each
        # host finds an empty ledger: the same tasks run, only "previous good" is none.
        log('fleet: %d hosts start with a release running (setup, plain Compose)' % largest)
        release = self.new_release(gated + floors)

        def start(stack):
            stack.write_compose(templated=True)
            self.floor(stack, release)
            stack.write_compose(templated=stack in floors)

        with ThreadPoolExecutor(FORKS) as pool:
            list(pool.map(start, gated + floors))
        data = {'sizes': {}}
        for size in sizes:
            row = {'hosts': size, 'batches': int(math.ceil(size / float(BATCH))), 'gated': [], 'floor': [],
                   'gated_cpu': [], 'floor_cpu': []}
            data['sizes'][size] = row

            def gated_step(index, size=size, row=row):  # pylint: disable=dangerous-default-value
                chosen = dict((name, hosts[name]) for name in names[:size])
                release = self.new_release(gated[:size])
                run = self.gated(chosen, release, batches=[BATCH])
                unchanged = [host for host, counts in run.recap.items() if counts.get('changed', 0) == 0]
                if len(run.recap) != size or unchanged:
                    raise BenchBroken('fleet of %d: recap has %d hosts, unchanged: %s' % (size, len(run.recap), unchanged))
                row['gated'].append(run.wall)
                row['gated_cpu'].append(run.cpu)
                log('  %d hosts rep %d: gated %.1fs (%.1f CPU-s)' % (size, index + 1, run.wall, run.cpu))

            def floor_step(index, size=size, row=row):  # pylint: disable=dangerous-default-value
                release = self.new_release(floors[:size])
                cpu = children_cpu()
                started = time.time()
                with ThreadPoolExecutor(FORKS) as pool:
                    list(pool.map(lambda stack: self.floor(stack, release), floors[:size]))
                row['floor'].append(time.time() - started)
                row['floor_cpu'].append(children_cpu() - cpu)
                log('  %d hosts rep %d: floor %.1fs (%.1f CPU-s)' % (size, index + 1, row['floor'][-1], row['floor_cpu'][-1]))

            def leg_step(leg, size=size, row=row):  # pylint: disable=dangerous-default-value
                def step(index):
                    chosen = dict((name, hosts[name]) for name in names[:size])
                    release = self.new_release(gated[:size])
                    run = self.gated(chosen, release, batches=[BATCH], leg=leg)
                    unchanged = [host for host, counts in run.recap.items() if counts.get('changed', 0) == 0]
                    if len(run.recap) != size or unchanged:
                        raise BenchBroken('fleet of %d, %s: recap has %d hosts, unchanged: %s'
                                          % (size, leg.label, len(run.recap), unchanged))
                    row[leg.key].append(run.wall)
                    row[leg.key + '_cpu'].append(run.cpu)
                    log('  %d hosts rep %d: gated, %s %.1fs (%.1f CPU-s)' % (size, index + 1, leg.label, run.wall, run.cpu))
                return step

            for leg in self.legs:
                row.update({leg.key: [], leg.key + '_cpu': []})
            alternate(self.reps, gated_step, floor_step, *[leg_step(leg) for leg in self.legs])
            for leg in self.legs:
                row[leg.key + '_ratio'] = [a / b for a, b in zip(row[leg.key], row['floor'])]
                row[leg.key + '_cpu_per_host'] = [a / size for a in row[leg.key + '_cpu']]
                row[leg.key + '_per_batch'] = [a / row['batches'] for a in row[leg.key]]
            row['ratio'] = [a / b for a, b in zip(row['gated'], row['floor'])]
            row['per_host_overhead'] = [(a - b) / size for a, b in zip(row['gated'], row['floor'])]
            row['per_batch'] = [a / row['batches'] for a in row['gated']]
            row['cpu_per_host'] = [a / size for a in row['gated_cpu']]
        return data

    # ------------------------------------------------------------ figure 6 (disk)

    def figure_disk(self, image_count):
        # the bench's own small-disk engine: prune -af must never hit the one the tests use
        engine = testbed.small_engine_up(instance='bench')
        try:
            return self._disk(engine, image_count)
        finally:
            testbed.small_engine_down(instance='bench')

    def _disk(self, engine, image_count):
        refs = testbed.ensure_big_images(self.client, count=image_count, size_mb=40)
        small = docker.DockerClient(base_url=engine.docker_host, timeout=300)
        digests = dict((ref, testbed.registry_digest(ref)) for ref in refs)
        releases = refs[:3] if image_count >= 4 else refs[:2]  # promoted in turn: the last is current
        # What a rollback needs under disk_reclaim's default retention (keep_releases 2 counts the current release):
        # the current release and the good one before it. An older release (r1 of three) is fair game for both.
        rollback = releases[-2:]
        state_dir = self.workdir / 'disk-state'
        project = 'sdb-disk'
        for index, ref in enumerate(releases):
            release = 'r%d' % (index + 1)
            services = {'app': {'image': ref, 'digest': digests[ref]}}
            for action in ('record', 'promote'):
                result = run_module('last_good_tag', {'project': project, 'state_dir': str(state_dir), 'action': action,
                                                      'release': release, 'services': services})
                if result.get('failed'):
                    raise BenchBroken('disk: ledger %s of %s failed: %s' % (action, release, result.get('msg')))
        current = releases[-1]
        data = {'images': len(refs), 'image_mb': 40, 'rollback_images': len(rollback), 'keep_releases': 2,
                'reclaim': [], 'prune': [],
                'reclaim_bytes': [], 'prune_bytes': [], 'reclaim_lost': [], 'prune_lost': []}

        def prepare():
            for ref in refs:
                try:
                    small.images.get(ref)
                except docker.errors.ImageNotFound:
                    small.images.pull(ref)
            for container in small.containers.list(all=True, filters={'name': 'sdb-disk-current'}):
                container.remove(force=True)
            small.containers.run(current, name='sdb-disk-current', detach=True, network_mode='none',
                                 labels={'com.docker.compose.project': project})
            return dict((ref, small.images.get(ref).id) for ref in rollback)

        def lost(kept_ids):
            present = set(image.id for image in small.images.list())
            return sum(1 for image_id in kept_ids.values() if image_id not in present)

        def reclaim_step(index):
            kept = prepare()
            before = used_bytes(engine.mountpoint)
            started = time.time()
            protect = {'state_dir': str(state_dir), 'keep_releases': 2}
            result = run_module('disk_reclaim', {'docker_host': engine.docker_host, 'threshold_percent': 1, 'target_percent': 0,
                                                 'force': True, 'protect_releases': protect})
            elapsed = time.time() - started
            if result.get('failed'):
                raise BenchBroken('disk_reclaim failed: %s' % result.get('msg'))
            data['reclaim'].append(elapsed)
            data['reclaim_bytes'].append(before - used_bytes(engine.mountpoint))
            data['reclaim_lost'].append(lost(kept))
            log('  rep %d: disk_reclaim %.2fs, %d MB, rollback images lost %d'
                % (index + 1, elapsed, data['reclaim_bytes'][-1] >> 20, data['reclaim_lost'][-1]))

        def prune_step(index):
            kept = prepare()
            before = used_bytes(engine.mountpoint)
            started = time.time()
            subprocess.run(['docker', '-H', engine.docker_host, 'system', 'prune', '--all', '--force'],
                           check=True, capture_output=True)
            elapsed = time.time() - started
            data['prune'].append(elapsed)
            data['prune_bytes'].append(before - used_bytes(engine.mountpoint))
            data['prune_lost'].append(lost(kept))
            log('  rep %d: docker system prune -af %.2fs, %d MB, rollback images lost %d'
                % (index + 1, elapsed, data['prune_bytes'][-1] >> 20, data['prune_lost'][-1]))

        try:
            alternate(self.reps, reclaim_step, prune_step)
        finally:
            for container in small.containers.list(all=True, filters={'name': 'sdb-disk-current'}):
                container.remove(force=True)
            for ref in refs:
                try:
                    small.images.remove(ref, force=True)
                except docker.errors.APIError:
                    pass
        if any(data['reclaim_lost']):
            raise BenchBroken('disk_reclaim deleted rollback images: %s' % data['reclaim_lost'])
        data['time_ratio'] = [a / b for a, b in zip(data['reclaim'], data['prune'])]
        data['bytes_ratio'] = [a / float(b) for a, b in zip(data['reclaim_bytes'], data['prune_bytes']) if b]
        return data

    # ------------------------------------------------------------ figure 7 (traffic)

    def figure_traffic(self):
        """The five cases on a routed stack (the collection) and a plain one (up -d), a client on each public port."""
        base = PORTS['traffic_routed']
        canary = dict(TRAFFIC_CANARY, interval=2) if self.smoke else TRAFFIC_CANARY
        routed = RoutedStack('trf-c', base, (base + 1, base + 2), base + 3, self.workdir, self.client,
                             health_timeout=6 if self.smoke else TRAFFIC_HEALTH_TIMEOUT)
        plain = PlainStack('trf-p', PORTS['traffic_plain'], PORTS['traffic_plain'] + 1, self.workdir, self.client)
        self.stacks += [routed, plain]
        lead, tail = (0.5, 0.5) if self.smoke else (1.0, 2.0)  # the client runs this long before and after a change
        data = {'rate': TRAFFIC_RATE, 'canary': canary, 'health_timeout': routed.health_timeout,
                'lead': lead, 'tail': tail, 'cases': dict((case, {'collection': [], 'plain': []}) for case, _label, _tag in TRAFFIC_CASES)}
        pushed = {}  # release -> {service: digest}, for retire_traffic
        decided = {}  # case -> the collection's last time from its bad slot coming up to its decision: the plain side waits it

        log('traffic: first release on both stacks (setup)')
        first = self.traffic_release('v2', pushed)
        run = playbook_run('rollout.yml', {'localhost': [routed]}, routed.host_vars(), {'release': first})
        if run.rc != 0:
            raise BenchBroken('traffic: first routed rollout of %s failed:\n%s' % (first, run.tail()))
        plain.pull(first)
        plain.up(first)
        for stack in (routed, plain):
            if not wait_answer(stack.public, first):
                raise BenchBroken('traffic: %s does not serve its first release %s' % (stack.project, first))
            stack.good.append(first)

        def collection_step(case, release, index):
            old = routed.good[-1]
            routed.canary = canary if case == 'canary' else None
            # (a) keeps the slot it leaves running (in maintenance), so that (e), the manual rollback right after it,
            # is the flip the issue asks for; the other cases stop it (the default)
            routed.previous_slot = 'running' if case == 'healthy' else 'stopped'
            with LoadClient(routed.public, TRAFFIC_RATE) as load:
                time.sleep(lead)
                if case == 'rollback':
                    old = routed.good[-2]
                    run = playbook_run('rollback.yml', {'localhost': [routed]}, routed.host_vars(), {'apply': True, 'to': old})
                else:
                    run = playbook_run('rollout.yml', {'localhost': [routed]}, routed.host_vars(), {'release': release})
                time.sleep(tail)
            operation = (run.started, run.ended)
            row = {'rc': run.rc, 'wall': run.wall}
            if case == 'healthy':
                if run.rc != 0:
                    raise BenchBroken('traffic (a): routed rollout of %s failed:\n%s' % (release, run.tail()))
                row.update(measure(load.samples, operation))
                routed.good.append(release)
                final = release
            elif case == 'rollback':
                if run.rc != 0:
                    raise BenchBroken('traffic (e): rollback of %s to %s failed:\n%s' % (routed.project, old, run.tail()))
                row.update(measure(load.samples, operation, old=old, decision=run.started))
                # the same flip, from the start of the rollback's switch task: what is left once the run got there
                switch = task_start(run, 'Move the traffic of each route', role='rollback')
                if switch is not None:
                    row['flip_from_switch'] = measure(load.samples, operation, old=old, decision=switch)['flip_back']
                    row['switch_after_start'] = switch - run.started
                routed.good.append(old)
                final = old
            else:
                decision = failed_task_end(run, ('Gate on real health', 'Abort the canary'))
                slot_up = task_end(run, 'Pull and bring up')
                if run.rc == 0 or decision is None or slot_up is None:
                    raise BenchBroken('traffic %s: the routed rollout of %s should have failed at its gate or canary (rc=%s):\n%s'
                                      % (case, release, run.rc, run.tail()))
                row.update(measure(load.samples, operation, old=old, decision=decision))
                row['decision_after_up'] = decision - slot_up
                decided[case] = decision - slot_up
                final = old
            check_final(routed, case, load.samples, final, row)
            data['cases'][case]['collection'].append(row)
            log('  %s rep %d collection: %s' % (case, index + 1, describe(row)))

        def plain_step(case, release, index):
            old = plain.good[-1]
            with LoadClient(plain.public, TRAFFIC_RATE) as load:
                time.sleep(lead)
                started = time.time()
                decision = None
                if case == 'healthy':
                    plain.pull(release)
                    plain.up(release)
                    final = release
                elif case == 'rollback':
                    old = final = plain.good[-2]
                    decision = time.time()
                    plain.up(old)
                else:
                    plain.pull(release)
                    plain.up(release)
                    # the operator notices when the collection decided (same time after the bad release came up)
                    time.sleep(max(0.0, decided[case]))
                    decision = time.time()
                    plain.up(old)
                    final = old
                served = load.first_answer(final, decision or started)
                ended = time.time()
                time.sleep(tail)
            if served is None:
                raise BenchBroken('traffic %s: the plain stack never served %s' % (case, final))
            row = dict(measure(load.samples, (started, ended), old=final if decision else None, decision=decision),
                       wall=ended - started)
            if decision is not None and case != 'rollback':
                row['decision_after_up'] = decided[case]
            check_final(plain, case, load.samples, final, row)
            plain.good.append(final)
            data['cases'][case]['plain'].append(row)
            log('  %s rep %d plain:      %s' % (case, index + 1, describe(row)))

        for index in range(self.reps):
            for case in [case for case in TRAFFIC_ORDER if case in self.traffic_cases]:
                base_tag = dict((name, tag) for name, _label, tag in TRAFFIC_CASES)[case]
                release = self.traffic_release(base_tag, pushed) if base_tag else None
                steps = (collection_step, plain_step) if index % 2 == 0 else (plain_step, collection_step)
                for step in steps:
                    step(case, release, index)
            self.retire_traffic(pushed, set(routed.good[-2:] + plain.good[-2:]))
        return data

    def traffic_release(self, web_base, pushed):
        release = self.release()
        pushed[release] = push_release(self.pusher, release, web_base)
        return release

    def retire_traffic(self, pushed, keep):
        """Figure 7's retire(): remove the local images of its releases but the ones a case may still go back to."""
        for release in [release for release in pushed if release not in keep]:
            in_use = False
            for ref in release_refs(release, pushed[release]):
                try:
                    self.client.images.remove(ref)
                except docker.errors.ImageNotFound:
                    pass
                except docker.errors.APIError:  # a stopped slot of a failed release keeps it: next time
                    in_use = True
            if not in_use:
                del pushed[release]

    # ------------------------------------------------------------ cleanup

    def cleanup(self):
        for stack in self.stacks:
            stack.down()
        prefix = '%s/%s' % (REGISTRY, REPO_PREFIX)
        for image in self.client.images.list():
            refs = list(image.tags) + list(image.attrs.get('RepoDigests') or [])
            if refs and all(ref.startswith(prefix) for ref in refs):
                try:
                    self.client.images.remove(image.id, force=True)
                except Exception:  # a busy or slow engine must not cost the report  # pylint: disable=broad-except
                    pass
        self.pusher.delete_all()


def used_bytes(path):
    stat = os.statvfs(path)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def run_module(name, args, timeout=600):
    """Run a module of this collection the way Ansible runs it on a host: its own Python process, args in a file."""
    payload = dict(args, _ansible_check_mode=False, _ansible_diff=False, _ansible_remote_tmp=tempfile.gettempdir(),
                   _ansible_tmpdir=tempfile.gettempdir())
    with tempfile.NamedTemporaryFile('w', suffix='.json', delete=False) as handle:
        json.dump({'ANSIBLE_MODULE_ARGS': payload}, handle)
    env = dict(os.environ, PYTHONPATH=str(ROOT / '.build' / 'collections'))
    try:
        proc = subprocess.run([sys.executable, '-m', 'ansible_collections.safedeploy.compose.plugins.modules.%s' % name, handle.name],
                              capture_output=True, text=True, env=env, timeout=timeout, check=False)
    finally:
        os.unlink(handle.name)
    try:
        return json.loads(proc.stdout[proc.stdout.index('{'):])
    except ValueError:
        raise BenchBroken('module %s printed no JSON (rc=%s): %s' % (name, proc.returncode, proc.stderr[-2000:]))


def check_final(stack, case, samples, version, row):
    """The bench breaks when a case did not end with `version` serving (the release rolled out, or the one kept)."""
    answered = [seen(sample) for sample in samples if seen(sample)]
    if not answered or answered[-1] != version or (row.get('decision') is not None and row.get('flip_back') is None):
        raise BenchBroken('traffic %s: %s ended serving %s, not %s (versions seen: %s)'
                          % (case, stack.project, answered[-1] if answered else 'nothing', version, row.get('versions')))


def describe(row):
    parts = ['%d requests, %d failed %s' % (row['requests'], row['failed'], row['failures'] or ''),
             'p99 %s' % ('%.0f ms' % (row['p99'] * 1000) if row['p99'] is not None else '-')]
    if row.get('flip_back') is not None:
        parts.append('flip back %.2fs' % row['flip_back'])
    if row.get('decision_after_up') is not None:
        parts.append('decided %.2fs after up' % row['decision_after_up'])
    if row.get('flip_from_switch') is not None:
        parts.append('switch task %.2fs after the start, flip %.2fs from it' % (row['switch_after_start'], row['flip_from_switch']))
    parts.append('%.1fs' % row['wall'])
    return ', '.join(parts)


# ---------------------------------------------------------------- report

def fmt(stats, unit='s', scale=1.0, digits=2):
    if not stats or stats['median'] is None:
        return '-'
    form = '%%.%df' % digits
    return '%s%s [%s-%s]' % (form % (stats['median'] * scale), unit, form % (stats['min'] * scale), form % (stats['max'] * scale))


def build_report(bench, figures):
    """Rows (figure, A, B, A/B, target, verdict) and the JSON document."""
    rows = []
    doc = {'figures': {}}
    rollout = figures.get('rollout')
    if rollout:
        main = rollout['main']
        data = rollout['sizes'][main]
        ratio = summary(data['ratio'])
        rows.append(('1 rollout %d svc: gated vs floor' % main, fmt(summary(data['gated'])), fmt(summary(data['floor'])),
                     fmt(ratio, 'x'), TARGETS['rollout'], verdict(ratio['median'] <= 1.3)))
        phase_rows = []
        for phase in PHASES:
            a_values = [sample[phase] for sample in data['phases']]
            b_values = [sample.get(phase, 0.0) for sample in data['floor_phases']]
            if max(a_values + b_values) == 0:
                continue
            overhead = [a - b for a, b in zip(a_values, b_values)]
            phase_rows.append((phase, summary(a_values), summary(b_values), summary(overhead)))
            rows.append(('    phase %s' % phase, fmt(summary(a_values)), fmt(summary(b_values)) if any(b_values) else '-',
                         '+%s' % fmt(summary(overhead)), '', ''))
        doc['figures']['rollout'] = {'services': main, 'gated': summary(data['gated']), 'floor': summary(data['floor']),
                                     'ratio': ratio, 'first_rollout': data['first_rollout'],
                                     'phases': dict((phase, {'gated': a, 'floor': b, 'overhead': o}) for phase, a, b, o in phase_rows)}
        default_overhead = summary([a - b for a, b in zip(data['gated'], data['floor'])])
        rows.append(('    overhead, default settings', fmt(default_overhead), '', '', TARGETS['overhead'],
                     verdict(default_overhead['median'] <= 6.8)))
        doc['figures']['rollout']['overhead'] = default_overhead
        for leg in bench.legs:
            if not data.get(leg.key):
                continue
            overhead = summary([a - b for a, b in zip(data[leg.key], data['floor'])])
            rows.append(('1%s rollout %d svc, %s vs floor' % (leg.key[0], main, leg.label), fmt(summary(data[leg.key])),
                         fmt(summary(data['floor'])), fmt(summary(data[leg.key + '_ratio']), 'x'),
                         'overhead +%s (default: +%s)' % (fmt(overhead), fmt(default_overhead)), ''))
            doc['figures']['rollout_' + leg.key] = {
                'leg': leg.label, 'gated': summary(data[leg.key]), 'floor': summary(data['floor']),
                'ratio': summary(data[leg.key + '_ratio']), 'overhead': overhead,
                'phases': dict((phase, summary([sample[phase] for sample in data[leg.key + '_phases']])) for phase in PHASES),
                'rerun': summary(data[leg.key + '_rerun']), 'rerun_ratio': summary(data[leg.key + '_rerun_ratio']),
                'rerun_changed': data[leg.key + '_rerun_changed']}
            if leg.key == 'mitogen':
                doc['figures']['rollout_mitogen']['mitogen'] = MITOGEN_VERSION
        rerun = summary(data['rerun_ratio'])
        rows.append(('4 rerun of running release vs rollout', fmt(summary(data['rerun'])), fmt(summary(data['gated'])),
                     fmt(rerun, 'x'), TARGETS['rerun'],
                     verdict(rerun['median'] <= 0.35 and not any(data['rerun_changed']),
                             'changed=%s' % max(data['rerun_changed']))))
        for leg in bench.legs:
            if data.get(leg.key + '_rerun'):
                rows.append(('4%s rerun, %s vs its rollout' % (leg.key[0], leg.label), fmt(summary(data[leg.key + '_rerun'])),
                             fmt(summary(data[leg.key])), fmt(summary(data[leg.key + '_rerun_ratio']), 'x'), '',
                             'changed=%s' % max(data[leg.key + '_rerun_changed'])))
        doc['figures']['rerun'] = {'rerun': summary(data['rerun']), 'rollout': summary(data['gated']), 'ratio': rerun,
                                   'changed': data['rerun_changed'], 'first_rollout': data['first_rollout'],
                                   'phases': dict((phase, summary([sample[phase] for sample in data['rerun_phases']]))
                                                  for phase in PHASES)}
        scale = {}
        for size, item in sorted(rollout['sizes'].items()):
            ratio = summary(item['ratio'])
            overhead = summary([a - b for a, b in zip(item['gated'], item['floor'])])
            rows.append(('5 stack of %d svc: gated vs floor' % size, fmt(summary(item['gated'])), fmt(summary(item['floor'])),
                         fmt(ratio, 'x'), 'overhead +%s' % fmt(overhead), ''))
            scale[size] = {'gated': summary(item['gated']), 'floor': summary(item['floor']), 'ratio': ratio, 'overhead': overhead}
        doc['figures']['scale_services'] = scale
    latency = figures.get('gate_latency')
    if latency:
        lat = summary([row['latency'] for row in latency['reps']])
        rows.append(('2 gate passes after app serves', fmt(summary([row['gate_after_up'] for row in latency['reps']])),
                     fmt(summary([row['serving_after_up'] for row in latency['reps']])), fmt(summary(latency['ratio']), 'x'),
                     TARGETS['gate_latency'], verdict(lat['max'] <= latency['interval'], 'latency %s' % fmt(lat))))
        doc['figures']['gate_latency'] = dict(latency, latency=lat)
    crash = figures.get('crash')
    if crash:
        fail = summary(crash['gated_fail'])
        rows.append(('2 crash loop: gate fails vs engine shows it', fmt(fail), fmt(summary(crash['floor_detect'])),
                     fmt(summary(crash['fail_ratio']), 'x'), TARGETS['crash'], verdict(fail['max'] <= 5.0)))
        rows.append(('3 restore last good: auto rollback vs up -d', fmt(summary(crash['gated_restore'])),
                     fmt(summary(crash['floor_restore'])), fmt(summary(crash['restore_ratio']), 'x'), TARGETS['restore'], ''))
        doc['figures']['crash'] = dict((key, summary(value)) for key, value in crash.items())
    fleet = figures.get('fleet')
    if fleet:
        per_size = {}
        walls = {}
        for size, row in sorted(fleet['sizes'].items()):
            walls[size] = summary(row['gated'])['median']
            rows.append(('5 fleet %d hosts (%d batch%s): gated vs floor' % (size, row['batches'], 'es' if row['batches'] > 1 else ''),
                         fmt(summary(row['gated']), digits=1), fmt(summary(row['floor']), digits=1),
                         fmt(summary(row['ratio']), 'x'),
                         'per host +%s, per batch %s, CPU/host %s' % (
                             fmt(summary(row['per_host_overhead'])), fmt(summary(row['per_batch']), digits=1),
                             fmt(summary(row['cpu_per_host']), ' CPU-s', digits=1)),
                         verdict(summary(row['cpu_per_host'])['median'] <= 8.0, TARGETS['fleet_cpu'])))
            for leg in bench.legs:
                if row.get(leg.key):
                    rows.append(('5%s fleet %d hosts, %s vs floor' % (leg.key[0], size, leg.label),
                                 fmt(summary(row[leg.key]), digits=1), fmt(summary(row['floor']), digits=1),
                                 fmt(summary(row[leg.key + '_ratio']), 'x'),
                                 'per batch %s, CPU/host %s' % (
                                     fmt(summary(row[leg.key + '_per_batch']), digits=1),
                                     fmt(summary(row[leg.key + '_cpu_per_host']), ' CPU-s', digits=1)), ''))
            per_size[size] = dict((key, summary(value)) for key, value in row.items() if isinstance(value, list))
            per_size[size]['batches'] = row['batches']
        within = growth = None
        one_batch = [size for size, row in fleet['sizes'].items() if row['batches'] == 1]
        if len(one_batch) >= 2:
            within = walls[max(one_batch)] / walls[min(one_batch)]
        multi = sorted(size for size, row in fleet['sizes'].items() if row['batches'] > 1)
        if multi and one_batch:
            big, small = multi[-1], max(one_batch)
            growth = (walls[big] / walls[small]) / (fleet['sizes'][big]['batches'] / float(fleet['sizes'][small]['batches']))
        if within is not None:
            rows.append(('5 fleet: %d hosts vs %d host in one batch' % (max(one_batch), min(one_batch)),
                         '%.2fx' % within, '1 batch each', '', TARGETS['fleet'],
                         verdict(within <= 1.5 and (growth is None or growth <= 1.5),
                                 'wall per batch grows %.2fx from %d to %d batches' % (growth, 1, fleet['sizes'][multi[-1]]['batches'])
                                 if growth is not None else '')))
        doc['figures']['fleet'] = {'sizes': per_size, 'within_batch_growth': within,
                                   'per_batch_growth': growth, 'forks': FORKS, 'batch': BATCH}
    disk = figures.get('disk')
    if disk:
        rows.append(('6 disk_reclaim vs docker system prune -af', fmt(summary(disk['reclaim'])), fmt(summary(disk['prune'])),
                     fmt(summary(disk['time_ratio']), 'x'), TARGETS['disk'],
                     verdict(not any(disk['reclaim_lost']), 'prune lost %d of %d rollback images, we lost %d'
                             % (max(disk['prune_lost']), disk['rollback_images'], max(disk['reclaim_lost'])))))
        rows.append(('    bytes freed', fmt(summary(disk['reclaim_bytes']), ' MB', 1.0 / (1 << 20), 0),
                     fmt(summary(disk['prune_bytes']), ' MB', 1.0 / (1 << 20), 0), fmt(summary(disk['bytes_ratio']), 'x'), '', ''))
        doc['figures']['disk'] = dict((key, summary(value) if isinstance(value, list) else value) for key, value in disk.items())
    traffic = figures.get('traffic')
    if traffic:
        rows.extend(traffic_rows(traffic))
        doc['figures']['traffic'] = dict(
            (case, dict((side, dict((key, summary([row.get(key) for row in traffic['cases'][case][side]]))
                                    for key in ('requests', 'failed', 'p99', 'flip_back', 'decision_after_up',
                                                'flip_from_switch', 'switch_after_start')))
                        for side in ('collection', 'plain')))
            for case, _label, _tag in TRAFFIC_CASES if traffic['cases'][case]['collection'])
    return rows, doc


def traffic_rows(traffic):
    """Per case: failed requests (target 0 for the collection), p99 latency over the switch window, time to flip back."""
    rows = []
    for case, label, _tag in TRAFFIC_CASES:
        sides = traffic['cases'][case]
        if not sides['collection']:
            continue

        def values(side, key):
            return [row.get(key) for row in sides[side]]
        failed = summary(values('collection', 'failed'))
        requests = summary(values('collection', 'requests'))
        rows.append(('7 %s: failed requests' % label, '%s of %d' % (fmt(failed, '', digits=0), requests['median']),
                     '%s of %d' % (fmt(summary(values('plain', 'failed')), '', digits=0), summary(values('plain', 'requests'))['median']),
                     '', TARGETS['traffic'], verdict(failed['max'] == 0)))
        p99 = [a / b for a, b in zip(values('collection', 'p99'), values('plain', 'p99')) if a is not None and b]
        rows.append(('    p99 latency, switch window', fmt(summary(values('collection', 'p99')), ' ms', 1000.0, 0),
                     fmt(summary(values('plain', 'p99')), ' ms', 1000.0, 0), fmt(summary(p99), 'x'), '', ''))
        if case == 'healthy':
            continue
        back = [a / b for a, b in zip(values('collection', 'flip_back'), values('plain', 'flip_back')) if a is not None and b]
        decided = summary(values('collection', 'decision_after_up'))
        rows.append(('    time to flip back', fmt(summary(values('collection', 'flip_back'))),
                     fmt(summary(values('plain', 'flip_back'))), fmt(summary(back), 'x'),
                     'decided %s after the bad release came up' % fmt(decided) if decided['n'] else 'decided at the rollback\'s start', ''))
        switch = summary([value for value in values('collection', 'flip_from_switch') if value is not None])
        if switch['n']:
            reached = summary([value for value in values('collection', 'switch_after_start') if value is not None])
            rows.append(('    flip, from the switch task', fmt(switch), '', '',
                         'the switch task began %s after the rollback\'s start' % fmt(reached), ''))
    return rows


def verdict(ok, detail=''):
    return ('met' if ok else 'MISSED') + ((' (%s)' % detail) if detail else '')


def render(rows):
    header = ('figure', 'A', 'B', 'A/B', 'target', 'verdict')
    widths = [max(len(str(row[col])) for row in [header] + rows) for col in range(6)]
    lines = []
    for index, row in enumerate([header] + rows):
        lines.append('| ' + ' | '.join(str(cell).ljust(widths[col]) for col, cell in enumerate(row)) + ' |')
        if index == 0:
            lines.append('|' + '|'.join('-' * (width + 2) for width in widths) + '|')
    return '\n'.join(lines)


# ---------------------------------------------------------------- main

def machine():
    return {'cpus': os.cpu_count(), 'python': sys.version.split()[0], 'loadavg': os.getloadavg(),
            'ansible': subprocess.run([str(ROOT / '.venv' / 'bin' / 'ansible'), '--version'], capture_output=True,
                                      text=True, check=False).stdout.splitlines()[0],
            'docker_compose': subprocess.run(['docker', 'compose', 'version', '--short'], capture_output=True, text=True,
                                             check=False).stdout.strip()}


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--smoke', action='store_true', help='one repetition of every figure on small stacks (about five minutes)')
    parser.add_argument('--reps', type=int, help='repetitions per figure (default 5, smoke 1)')
    parser.add_argument('--only', default='', help='comma-separated figures to run: rollout,gate,crash,fleet,disk,traffic')
    parser.add_argument('--sizes', help='stack sizes of figures 1/4/5, comma-separated (default 1,5,20; the rerun and '
                        'crash figures use 5, or the largest given below 5)')
    parser.add_argument('--fleet', help='fleet sizes of figure 5, comma-separated (default 1,10,50)')
    parser.add_argument('--traffic-cases', help='cases of figure 7, comma-separated, from %s (default all; smoke: %s); '
                        'rollback needs healthy' % (','.join(TRAFFIC_ORDER), ','.join(TRAFFIC_SMOKE)))
    parser.add_argument('--keep', action='store_true', help='leave the stacks and the work dir in place')
    parser.add_argument('--mitogen', action='store_true',
                        help='also run figure 1 (the main size) and the fleet figure with the opt-in mitogen strategy '
                        '(PyPI mitogen %s, installed into .build/bench-mitogen for the bench only)' % MITOGEN_VERSION)
    parser.add_argument('--before', metavar='REF',
                        help='also run figure 1 (the main size, rerun included) and the fleet figure with the collection as '
                        'it was at commit REF (extracted into .build/bench-before), rows 1b, 4b, 5b')
    args = parser.parse_args(argv)
    reps = args.reps or (1 if args.smoke else 5)
    if reps < 5 and not args.smoke:
        log('warning: %d repetition(s): the figures need at least 5 to be quoted' % reps)
    only = set(filter(None, args.only.split(',')))

    def wanted(name):
        return not only or name in only
    if args.smoke:
        sizes, main_size, fleet_sizes, disk_images = (1,), 1, (1, 2), 3
    else:
        sizes, main_size, fleet_sizes, disk_images = (1, 5, 20), 5, (1, 10, 50), 5
    if args.sizes:
        sizes = tuple(int(size) for size in args.sizes.split(','))
        main_size = 5 if 5 in sizes else max(size for size in sizes if size <= 5) if min(sizes) <= 5 else min(sizes)
    if args.fleet:
        fleet_sizes = tuple(int(size) for size in args.fleet.split(','))

    testbed.up()
    load_before = os.getloadavg()
    workdir = tempfile.mkdtemp(prefix='sdb-bench-')
    bench = Bench(args.smoke, reps, workdir)
    if args.traffic_cases:
        bench.traffic_cases = tuple(args.traffic_cases.split(','))
        unknown = sorted(set(bench.traffic_cases) - set(TRAFFIC_ORDER))
        if unknown or ('rollback' in bench.traffic_cases and 'healthy' not in bench.traffic_cases):
            parser.error('--traffic-cases: from %s, and rollback needs healthy' % ','.join(TRAFFIC_ORDER))
    if args.mitogen:
        bench.legs.append(mitogen_env())
    if args.before:
        bench.legs.append(before_leg(args.before))
    figures = {}
    started = time.time()
    broken = None
    try:
        if wanted('rollout') or wanted('crash'):
            log('figures 1, 4, 5: rollouts of stacks of %s services' % ', '.join(map(str, sizes)))
            results, main = bench.figure_rollout(sizes if wanted('rollout') else (main_size,), main_size)
            if wanted('rollout'):
                figures['rollout'] = {'sizes': results, 'main': main_size}
            if wanted('crash'):
                log('figures 2 and 3: crash-looping release, fail and restore')
                figures['crash'] = bench.figure_crash(*main)
        if wanted('gate'):
            log('figure 2: gate latency')
            figures['gate_latency'] = bench.figure_gate_latency()
        if wanted('fleet'):
            log('figure 5: fleet of %s hosts' % ', '.join(map(str, fleet_sizes)))
            figures['fleet'] = bench.figure_fleet(fleet_sizes)
        if wanted('disk'):
            log('figure 6: disk_reclaim vs docker system prune -af on the small-disk engine')
            figures['disk'] = bench.figure_disk(disk_images)
        if wanted('traffic'):
            log('figure 7: a client at %d requests a second through five cases, traffic layer vs plain up -d' % TRAFFIC_RATE)
            figures['traffic'] = bench.figure_traffic()
    except BenchBroken as exc:
        broken = str(exc)
    except (Exception, KeyboardInterrupt):  # report what was measured so far, then fail
        broken = traceback.format_exc()
    finally:
        if not args.keep:
            try:
                bench.cleanup()
            except Exception as exc:  # report what was measured even when cleanup fails  # pylint: disable=broad-except
                log('cleanup failed, remove sdb-* projects by hand: %s' % exc)
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.time() - started

    rows, doc = build_report(bench, figures)
    doc.update({'command': ' '.join(['bench/run.py'] + list(argv)), 'env_pipelining': os.environ.get('ANSIBLE_PIPELINING'),
                'reps': reps, 'smoke': args.smoke, 'started': datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(),
                'seconds': round(elapsed, 1), 'machine': dict(machine(), loadavg_before=load_before), 'raw': figures,
                'broken': broken})
    RESULTS.mkdir(exist_ok=True)
    name = 'bench-%s%s.json' % (time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started)), '-smoke' if args.smoke else '')
    (RESULTS / name).write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + '\n')
    print(render(rows))
    print('\n%d repetition(s) per figure, %.0fs in all; JSON in %s' % (reps, elapsed, RESULTS / name))
    if broken:
        print('\nBENCH BROKEN: %s' % broken, file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
