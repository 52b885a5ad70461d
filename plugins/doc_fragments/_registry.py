# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private doc fragment of safedeploy.compose: may change without notice.

from __future__ import annotations


class ModuleDocFragment:

    # Paired with plugins/module_utils/_registry.py (REGISTRY_ARGUMENT_SPEC): how a module that reads registries
    # reaches them.
    DOCUMENTATION = r'''
options:
  registry_auth:
    description:
      - Credentials per registry. They take precedence over the Docker client configuration.
    type: list
    elements: dict
    suboptions:
      registry:
        description:
          - Registry host, with port when not the default, for example C(registry.example.com:5000).
            C(docker.io) for Docker Hub.
        type: str
        required: true
      username:
        description:
          - User name.
        type: str
        required: true
      password:
        description:
          - Password or access token. Never logged or returned.
        type: str
        required: true
  docker_config:
    description:
      - Docker client configuration file (C(config.json)), or the directory holding it, whose C(auths) entries
        provide credentials.
      - Defaults to C($DOCKER_CONFIG/config.json), else C(~/.docker/config.json), of the user the module runs as.
      - Credentials kept by credential helpers (C(credsStore), C(credHelpers)) are not read; use O(registry_auth).
    type: path
  insecure_registries:
    description:
      - Registries spoken to over plain http. Registries on a loopback address (C(127.0.0.1), C(localhost), C(::1))
        always are; all others use https.
    type: list
    elements: str
    default: []
  validate_certs:
    description:
      - Verify the TLS certificates of https registries.
    type: bool
    default: true
'''
