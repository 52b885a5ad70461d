# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private doc fragment of safedeploy.compose: may change without notice.

from __future__ import annotations


class ModuleDocFragment:

    # Paired with plugins/module_utils/_release_state.py (STATE_ARGUMENT_SPEC).
    DOCUMENTATION = r'''
options:
  project:
    description:
      - Compose project name whose release ledger is used.
      - The ledger lives at O(state_dir)/O(project)/releases.json.
      - Letters, digits, C(_) and C(-) only, starting with a letter or digit (the rules Compose applies to project names).
    type: str
    required: true
  state_dir:
    description:
      - Directory holding one sub-directory per compose project with its release ledger and stack lock.
      - Created with mode C(0700) when missing.
    type: path
    default: /var/lib/safedeploy
'''
