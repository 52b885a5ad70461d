"""Tasks that run on the controller (delegate_to: localhost) never escalate there, in the roles and the playbooks.

A host reached as a deploy user with sudo takes become from the play, the command line or the inventory; any of
them would also make a delegated task ask for sudo on the controller. Such a task sets the variable
ansible_become: false (the variable, because an inventory's ansible_become outranks the `become` keyword).
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
CONTROLLER = ('localhost', '127.0.0.1')


def tasks_with_inherited(items, inherited=None):
    """Every task of a task list, with the delegate_to and vars it gets from the blocks around it."""
    for task in items or []:
        if not isinstance(task, dict):
            continue
        scope = dict(inherited or {'delegate_to': None, 'vars': {}})
        if 'delegate_to' in task:
            scope['delegate_to'] = task['delegate_to']
        scope['vars'] = dict(scope['vars'], **(task.get('vars') or {}))
        if any(section in task for section in ('block', 'rescue', 'always')):
            for section in ('block', 'rescue', 'always'):
                yield from tasks_with_inherited(task.get(section), scope)
        else:
            yield task, scope


def task_files():
    yield from sorted((ROOT / 'roles').glob('*/tasks/*.yml'))
    yield from sorted((ROOT / 'playbooks' / 'tasks').glob('*.yml'))
    yield from sorted((ROOT / 'playbooks').glob('*.yml'))


def all_tasks():
    for path in task_files():
        data = yaml.safe_load(path.read_text()) or []
        if path.parent.name == 'playbooks':  # a playbook: the tasks of each play
            for play in data:
                for section in ('pre_tasks', 'tasks', 'post_tasks', 'handlers'):
                    for task, scope in tasks_with_inherited(play.get(section)):
                        yield path, task, scope
        else:
            for task, scope in tasks_with_inherited(data):
                yield path, task, scope


def test_controller_tasks_never_escalate():
    delegated = [(path, task, scope) for path, task, scope in all_tasks() if scope['delegate_to'] in CONTROLLER]
    names = set(task.get('name') for _path, task, _scope in delegated)
    assert 'Write the release report on the controller for {{ rollout_project }}' in names, names  # read, not empty
    offenders = ['%s: %s' % (path.relative_to(ROOT), task.get('name')) for path, task, scope in delegated
                 if scope['vars'].get('ansible_become') is not False or task.get('become') is True]
    assert not offenders, 'controller-side tasks that would escalate on the controller: %s' % offenders


def test_no_task_runs_on_the_controller_by_connection():
    """connection: local or local_action would escape the rule above: everything on the controller is delegated."""
    offenders = ['%s: %s' % (path.relative_to(ROOT), task.get('name')) for path, task, _scope in all_tasks()
                 if task.get('connection') == 'local' or 'local_action' in task]
    assert not offenders, offenders
