"""The roles' boundaries, read from their task files: they depend one way (no role includes a role that includes
it back, directly or not), and no task builds a compose or `timeout` command line in YAML (compose CLI work lives
in the modules, on _compose.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROLES = Path(__file__).resolve().parents[3] / 'roles'
INCLUDES = ('ansible.builtin.include_role', 'ansible.builtin.import_role', 'include_role', 'import_role')
COMMANDS = ('ansible.builtin.command', 'ansible.builtin.shell', 'ansible.builtin.raw', 'command', 'shell', 'raw')


def tasks_of(items):
    """Every task of a task list, blocks, rescues and always sections included."""
    for task in items or []:
        if not isinstance(task, dict):
            continue
        yield task
        for section in ('block', 'rescue', 'always'):
            yield from tasks_of(task.get(section))


def role_tasks():
    for path in sorted(ROLES.glob('*/tasks/*.yml')):
        for task in tasks_of(yaml.safe_load(path.read_text())):
            yield path.relative_to(ROLES).parts[0], path, task


def role_graph():
    graph = dict((path.name, set()) for path in ROLES.iterdir() if (path / 'tasks').is_dir())
    for role, _path, task in role_tasks():
        for key in INCLUDES:
            if key in task:
                graph[role].add(task[key]['name'].split('.')[-1])
    return graph


def test_the_roles_include_each_other_one_way_only():
    graph = role_graph()
    assert graph['rollout'] >= {'rollback', 'host_python'}, graph  # the graph is read, not empty
    cycles = []

    def visit(role, trail):
        for other in sorted(graph.get(role, ())):
            if other in trail:
                cycles.append(trail[trail.index(other):] + [other])
            else:
                visit(other, trail + [other])
    for role in graph:
        visit(role, [role])
    assert not cycles, 'roles include each other in a cycle: %s' % cycles
    assert 'rollout' not in graph['rollback'] | graph['vps_recovery'] | graph['disk_guard'] | graph['host_python']


def test_no_task_builds_a_compose_or_timeout_command_line():
    offenders = []
    for _role, path, task in role_tasks():
        for key in COMMANDS:
            if key not in task:
                continue
            spec = task[key]
            if isinstance(spec, dict):  # argv: a list, or one Jinja expression that makes it
                argv = spec.get('argv', [])
                text = ' '.join(map(str, argv)) if isinstance(argv, list) else str(argv)
                text += ' ' + str(spec.get('cmd', ''))
            else:
                text = str(spec)
            if any(word in text for word in ('compose', 'timeout', 'docker login')):
                offenders.append('%s: %s' % (path.relative_to(ROLES), task.get('name')))
    assert not offenders, 'compose CLI work built in YAML: %s' % offenders
