# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark callback: a JSON timeline of every task of a run, for attributing time to rollout phases.

Enabled only by bench/run.py (ANSIBLE_CALLBACK_PLUGINS + ANSIBLE_CALLBACKS_ENABLED), it writes to the file
named by SAFEDEPLOY_BENCH_TIMELINE when the playbook ends:
  {"tasks": [{"name", "path", "action", "start", "end", "hosts": {host: status}}],
   "gates": [{"host", "passed", "elapsed", "rounds", "started_at", "finished_at"}],
   "recap": {host: {ok, changed, failed, ...}}, "started": t, "ended": t}
Times are time.time() seconds. A task's "end" is when its last host reported.
"""

from __future__ import annotations

DOCUMENTATION = r'''
name: bench_timeline
type: aggregate
short_description: Writes a JSON timeline of task start and end times (safedeploy benchmark)
description:
  - Records when each task started and when each host reported on it, and the results of health_gate tasks.
requirements:
  - the environment variable SAFEDEPLOY_BENCH_TIMELINE names the output file
'''

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'bench_timeline'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super(CallbackModule, self).__init__()
        self.path = os.environ.get('SAFEDEPLOY_BENCH_TIMELINE')
        self.started = time.time()
        self.tasks = []
        self.gates = []
        self.current = None

    def _start(self, task):
        self.current = {'name': task.get_name(), 'path': task.get_path() or '', 'action': task.action,
                        'start': time.time(), 'end': None, 'hosts': {}}
        self.tasks.append(self.current)

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._start(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._start(task)

    def _done(self, result, status):
        if self.current is None:
            return
        self.current['end'] = time.time()
        self.current['hosts'][result._host.get_name()] = status
        data = result._result
        if result._task.action.endswith('health_gate') and 'passed' in data:
            self.gates.append({'host': result._host.get_name(), 'task': result._task.get_name(), 'passed': data.get('passed'),
                               'elapsed': data.get('elapsed'), 'rounds': data.get('rounds'),
                               'started_at': data.get('started_at'), 'finished_at': data.get('finished_at')})

    def v2_runner_on_ok(self, result):
        self._done(result, 'changed' if result._result.get('changed') else 'ok')

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._done(result, 'failed')

    def v2_runner_on_skipped(self, result):
        self._done(result, 'skipped')

    def v2_runner_on_unreachable(self, result):
        self._done(result, 'unreachable')

    def v2_playbook_on_stats(self, stats):
        if not self.path:
            return
        recap = {}
        for host in sorted(stats.processed):
            recap[host] = stats.summarize(host)
        with open(self.path, 'w') as handle:
            json.dump({'started': self.started, 'ended': time.time(), 'tasks': self.tasks, 'gates': self.gates,
                       'recap': recap}, handle)
