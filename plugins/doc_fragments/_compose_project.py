# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private doc fragment of safedeploy.compose: may change without notice.

from __future__ import annotations


class ModuleDocFragment:

    # Paired with plugins/module_utils/_compose.py (COMPOSE_PROJECT_ARGUMENT_SPEC, open_project).
    DOCUMENTATION = r'''
options:
  project_src:
    description:
      - Directory of the compose project (its C(--project-directory)). Relative O(files) and O(env_files) are taken from
        here.
    type: path
    required: true
  project_name:
    description: Compose project name.
    type: str
    required: true
  files:
    description:
      - The compose files, in order, ending with the pinned override, as M(safedeploy.compose.compose_pin) returns them.
    type: list
    elements: path
    required: true
  env_files:
    description:
      - Env files passed to compose with C(--env-file).
    type: list
    elements: path
  compose_command:
    description:
      - Which Docker Compose CLI runs the project, as in M(safedeploy.compose.compose_pin). V(auto) takes the
        C(docker compose) plugin when it answers, else C(docker-compose).
    type: str
    choices: [auto, v2, v1]
    default: auto
'''
