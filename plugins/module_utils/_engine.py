# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private module_utils of safedeploy.compose: the Docker engine client shared by the modules.
# Not a public API; it may change in any release.

from __future__ import annotations

import errno
import os
import traceback

try:
    import docker
    from docker import errors as docker_errors
    HAS_DOCKER = True
    DOCKER_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - exercised by ansible-test's import sanity test
    docker = None
    docker_errors = None
    HAS_DOCKER = False
    DOCKER_IMPORT_ERROR = traceback.format_exc()

from ansible.module_utils.basic import missing_required_lib

DEFAULT_DOCKER_HOST = 'unix:///var/run/docker.sock'

ENGINE_ARGUMENT_SPEC = dict(
    docker_host=dict(type='str'),
    engine_timeout=dict(type='int', default=60),
)


class EngineError(Exception):
    """The engine could not be reached or refused a call; the message says what to do."""


def engine_address(params):
    return params.get('docker_host') or os.environ.get('DOCKER_HOST') or DEFAULT_DOCKER_HOST


def is_no_space_error(exc):
    text = str(exc).lower()
    return 'no space left on device' in text or getattr(exc, 'errno', None) == errno.ENOSPC


def describe_engine_error(exc, address, action):
    """One message for every way an engine call fails, naming the cause and the next step."""
    if is_no_space_error(exc):
        return ('Docker engine at %s failed to %s: no space left on device. Free disk space first, for example '
                'with safedeploy.compose.disk_reclaim (it keeps rollback images), then retry.' % (address, action))
    return ('Docker engine at %s failed to %s: %s. Check that dockerd is running and that this user may use its '
            'socket (docker_host option or DOCKER_HOST).' % (address, action, exc))


def connect_engine(module):
    """Return a docker.DockerClient talking to the engine, or fail the module with a clear message."""
    if not HAS_DOCKER:
        module.fail_json(msg=missing_required_lib('docker'), exception=DOCKER_IMPORT_ERROR)
    address = engine_address(module.params)
    try:
        client = docker.DockerClient(base_url=address, timeout=module.params.get('engine_timeout') or 60)
        client.ping()
    except Exception as exc:  # any failure to reach the engine ends the module the same way
        module.fail_json(msg=describe_engine_error(exc, address, 'answer a ping'))
    return client
