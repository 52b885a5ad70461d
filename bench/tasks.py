"""Where a gated rollout spends its time, task by task: the profile behind the reading in docs/benchmarks.md.

    .venv/bin/python bench/tasks.py [--services 5] [--top 14]

Rolls a fresh stack of N services out to a first release (setup), then N -> N+1 and the same release again
(a rerun, which must change nothing), each through playbooks/rollout.yml with the bench_timeline callback,
and prints for both runs the wall and CPU time, the number of tasks by status, the slowest tasks and the time
before the first task and after the last. Not a benchmark (one run, no floor): it says where to look.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / 'tests'))

from run import PORTS, Bench  # noqa: E402
from stacks import Stack, gated_rollout  # noqa: E402


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


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('--services', type=int, default=5, choices=range(1, 21), metavar='1..20')
    parser.add_argument('--top', type=int, default=14)
    parser.add_argument('--in-order', action='store_true', help='also list every task in the order it ran')
    args = parser.parse_args(argv)
    bench = Bench(True, 1, Path(tempfile.mkdtemp(prefix='sdb-tasks-')))
    try:
        stack = Stack('tasks', args.services, PORTS['tasks'], bench.workdir)
        stack.write_compose(False)
        bench.stacks.append(stack)
        bench.gated({'h1': [stack]}, bench.new_release([stack]))
        release = bench.new_release([stack])
        for label in ('rollout N -> N+1', 'rerun of N+1'):
            run = gated_rollout({'h1': [stack]}, release, bench.common_vars())
            if run.rc != 0:
                print(run.tail(), file=sys.stderr)
                return 1
            describe(label, run, args.top, args.in_order)
    finally:
        bench.cleanup()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
