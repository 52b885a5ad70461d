# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private doc fragment of safedeploy.compose: may change without notice.

from __future__ import annotations


class ModuleDocFragment:

    # Paired with plugins/module_utils/_stack_lock.py (STACK_LOCK_HOLD_SPEC, hold_stack_lock).
    DOCUMENTATION = r'''
options:
  stack_lock:
    description:
      - The run that holds the stack lock of O(project_name) (or of O(stack_lock.project)) (taken with M(safedeploy.compose.stack_lock)).
      - When given, right before each step that changes the stack the module checks that this run still holds the
        lock and renews its lease for another ttl. A run whose lease was taken over, released or broken fails there
        with RV(lease_lost=true), naming the holder, and changes nothing more.
      - Not checked in check mode, where the lock is never written.
    type: dict
    suboptions:
      run_id:
        description: The run id the lock was taken with.
        type: str
        required: true
      state_dir:
        description: The directory holding the stack locks, as given to M(safedeploy.compose.stack_lock).
        type: path
        default: /var/lib/safedeploy
      project:
        description:
          - The project whose stack lock it is, when that is not O(project_name); the slots of a routed stack
            (C(<project>-blue), C(<project>-green)) run under the lock of their stack C(<project>).
        type: str
'''
