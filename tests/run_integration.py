"""make integration: tests/integration as INTEGRATION_JOBS (default 2) pytest processes running at once.

Each process runs whole test files, one after the other, in file order: files share module and class fixtures (a
stack rolled forward test by test), and each file has its own ports and project names, so two processes never meet.
The files marked xdist_group('small_engine') all use the one small-disk engine: they go to one process together.
Files are dealt to the least loaded process by their duration on the last fresh-clone run (SECONDS below; a new
file counts 60 s). Each process's output is kept in tests/output/integration-<n>.log and printed when all are done;
the exit status is the first failing process's. Extra arguments go to every pytest.
(pytest-xdist's --dist loadgroup would do this, but with pytest 9 its group marks are ignored.)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / 'tests' / 'integration'
OUTPUT = ROOT / 'tests' / 'output'
SECONDS = {  # measured on the 2-core machine, serial run of the whole directory
    'test_roles_rollout.py': 820, 'test_roles_recovery.py': 220, 'test_secrets.py': 155, 'test_fleet.py': 100,
    'test_roles_ssh.py': 75, 'test_health_gate.py': 75, 'test_compose_pin.py': 70, 'test_disk_reclaim.py': 70,
    'test_last_good_tag.py': 50, 'test_compose_up.py': 40, 'test_roles_disk_guard.py': 35, 'test_compose_run.py': 25,
    'test_testbed.py': 25, 'test_stack_lock.py': 15, 'test_container_logs.py': 25, 'test_roles_shared_dir.py': 95,
    'test_status.py': 60, 'test_proxy.py': 35, 'test_traffic_canary.py': 55, 'test_traffic_switch.py': 50,
    'test_roles_traffic.py': 400, 'test_image_signature.py': 25, 'test_roles_signatures.py': 65,
}
SMALL_ENGINE_MARK = "xdist_group('small_engine')"


def units():
    """[(seconds, [files])]: the small-engine files as one unit, every other file its own."""
    files = sorted(path.name for path in TESTS.glob('test_*.py'))
    small = [name for name in files if SMALL_ENGINE_MARK in (TESTS / name).read_text()]
    found = [(sum(SECONDS.get(name, 60) for name in small), small)] if small else []
    found += [(SECONDS.get(name, 60), [name]) for name in files if name not in small]
    return sorted(found, key=lambda unit: -unit[0])


def shards(jobs):
    loads = [[0, []] for _number in range(max(1, jobs))]
    for seconds, names in units():
        lightest = min(loads, key=lambda load: load[0])
        lightest[0] += seconds
        lightest[1].extend(names)
    return [sorted(names) for _seconds, names in loads if names]


def main(args):
    OUTPUT.mkdir(parents=True, exist_ok=True)
    jobs = int(os.environ.get('INTEGRATION_JOBS', '2'))
    status = 0
    with contextlib.ExitStack() as held:
        running = []
        for number, names in enumerate(shards(jobs), 1):
            log = OUTPUT / ('integration-%d.log' % number)
            argv = [str(ROOT / 'tests' / 'pytest-honest')] + [str(TESTS / name) for name in names] + list(args)
            print('integration process %d: %s (log %s)' % (number, ' '.join(names), log.relative_to(ROOT)), flush=True)
            handle = held.enter_context(open(log, 'w', encoding='utf-8'))
            proc = held.enter_context(subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT))
            running.append((number, proc, log))
        for number, proc, log in running:
            code = proc.wait()
            print('=== integration process %d: exit %d ===' % (number, code))
            print(log.read_text(encoding='utf-8'), flush=True)
            status = status or code
    return status


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
