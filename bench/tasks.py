"""Where a gated rollout spends its time, task by task: the profile behind the reading in docs/benchmarks.md.

    .venv/bin/python bench/tasks.py [--services 5] [--top 14] [--in-order] [--py-spy DIR]

Rolls a fresh stack of N services out to a first release (setup), then N -> N+1 and the same release again
(a rerun, which must change nothing), each through playbooks/rollout.yml with the bench_timeline callback,
and prints for both runs the wall and CPU time, the number of tasks by status, the slowest tasks and the time
before the first task and after the last. Not a benchmark (one run, no floor): it says where to look.

With --py-spy DIR (py-spy installed: `.venv/bin/pip install py-spy`) both runs are also sampled, controller and
module processes alike, into DIR/<run>.txt (py-spy's raw format), and the CPU seconds are split by where they went:
the controller's main process, its per-task workers (templating, building each module's payload), and the module
processes on the host (importing, then working).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / 'tests'))

from run import PORTS, Bench  # noqa: E402
from stacks import Stack, gated_rollout  # noqa: E402

PY_SPY_RATE = 250


def describe(label, run, top, in_order=False):
    tasks = run.timeline.get('tasks', [])
    statuses = collections.Counter(status for task in tasks for status in task['hosts'].values())
    print('== %s: wall %.2fs, CPU %.2fs, %d tasks (%s), changed=%d'
          % (label, run.wall, run.cpu, len(tasks), ', '.join('%s %d' % item for item in sorted(statuses.items())),
             run.changed()))
    if in_order:
        for task in tasks:
            status = ','.join(sorted(set(task['hosts'].values()))) or '-'
            print('  %6.2fs  %-8s %s' % ((task['end'] or task['start']) - task['start'], status, task['name'][:100]))
    durations = sorted(((task['end'] or task['start']) - task['start'], task) for task in tasks)
    for seconds, task in reversed(durations[-top:]):
        status = ','.join(sorted(set(task['hosts'].values()))) or '-'
        print('  %6.2fs  %-8s %s' % (seconds, status, task['name'][:100]))
    if tasks:
        first = tasks[0]['start']
        last = max(task['end'] or task['start'] for task in tasks)
        print('  before the first task %.2fs, after the last %.2fs, %.2fs in the %d tasks not listed'
              % (first - run.started, run.ended - last,
                 sum(seconds for seconds, _task in durations[:-top]), max(0, len(tasks) - top)))


# Inclusive CPU seconds of these frames are printed per kind of process: where Ansible's per-task cost goes.
PROFILE_FRAMES = (
    ('recursive_finder', 'worker: building module payloads (parsing every module_utils file)'),
    ('_compile_module_ast', 'worker: of which parsing sources'),
    ('TemplateEngine.template', 'templating (controller and workers)'),
    ('_compile_source', 'module: compiling the payload\'s sources (zipimport keeps no bytecode)'),
    ('_find_and_load', 'importing (controller start, workers, modules)'),
)


def profile_summary(path, rate):
    """Seconds of samples per process kind, and of the PROFILE_FRAMES, from a py-spy raw profile."""
    kinds = collections.Counter()
    frames = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _sep, count = line.rpartition(' ')
        samples = int(count)
        parts = stack.split(';')
        depth = sum(1 for part in parts if part.startswith('process '))
        kind = 'controller' if depth == 1 else 'worker' if depth == 2 else 'module (host Python)'
        kinds[kind] += samples
        names = set(re.sub(r' \(.*', '', part) for part in parts)
        for frame, _label in PROFILE_FRAMES:
            if frame in names:
                frames[frame] += samples
    print('  profile %s (%d Hz, CPU samples):' % (path, rate))
    for kind, samples in kinds.most_common():
        print('    %6.2fs  %s' % (samples / rate, kind))
    for frame, label in PROFILE_FRAMES:
        print('    %6.2fs  %s' % (frames[frame] / rate, label))


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('--services', type=int, default=5, choices=range(1, 21), metavar='1..20')
    parser.add_argument('--top', type=int, default=14)
    parser.add_argument('--in-order', action='store_true', help='also list every task in the order it ran')
    parser.add_argument('--py-spy', metavar='DIR', type=Path,
                        help='also sample both runs with py-spy (installed separately) into DIR and split their CPU time')
    args = parser.parse_args(argv)
    py_spy = shutil.which('py-spy', path=str(Path(sys.executable).parent)) or shutil.which('py-spy')
    if args.py_spy and not py_spy:
        parser.error('--py-spy needs py-spy: .venv/bin/pip install py-spy')
    bench = Bench(True, 1, Path(tempfile.mkdtemp(prefix='sdb-tasks-')))
    try:
        stack = Stack('tasks', args.services, PORTS['tasks'], bench.workdir)
        stack.write_compose(False)
        bench.stacks.append(stack)
        bench.gated({'h1': [stack]}, bench.new_release([stack]))
        release = bench.new_release([stack])
        for key, label in (('rollout', 'rollout N -> N+1'), ('rerun', 'rerun of N+1')):
            wrap = None
            if args.py_spy:
                args.py_spy.mkdir(parents=True, exist_ok=True)
                wrap = [py_spy, 'record', '--subprocesses', '--rate', str(PY_SPY_RATE), '--format', 'raw',
                        '--output', str(args.py_spy / ('%s.txt' % key)), '--']
            run = gated_rollout({'h1': [stack]}, release, bench.common_vars(), wrap=wrap)
            if run.rc != 0:
                print(run.tail(), file=sys.stderr)
                return 1
            describe(label, run, args.top, args.in_order)
            if args.py_spy:
                profile_summary(args.py_spy / ('%s.txt' % key), PY_SPY_RATE)
    finally:
        bench.cleanup()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
