# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private doc fragment of safedeploy.compose: may change without notice.

from __future__ import annotations


class ModuleDocFragment:

    # Paired with plugins/module_utils/_engine.py (ENGINE_ARGUMENT_SPEC).
    DOCUMENTATION = r'''
options:
  docker_host:
    description:
      - Address of the Docker engine API, for example C(unix:///var/run/docker.sock) or C(tcp://127.0.0.1:2375).
      - When not set, the E(DOCKER_HOST) environment variable is used, else C(unix:///var/run/docker.sock).
      - The modules speak the Engine API themselves (Python's standard library, no Docker SDK), over a Unix socket
        or plain TCP. Other schemes (C(ssh://), TLS) are refused with a message; run the modules on the Docker host.
    type: str
  engine_timeout:
    description:
      - Seconds to wait for one Docker engine API call before giving up (a read of its socket that gets no answer for
        that long, so a call that hangs, such as removing a container the engine cannot stop, ends after it).
      - The module then fails naming the step and this option; nothing after that call runs.
    type: int
    default: 60
'''
