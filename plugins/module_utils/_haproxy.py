# -*- coding: utf-8 -*-
# Copyright: safedeploy.compose contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private module_utils of safedeploy.compose: the embedded traffic layer (HAProxy). Not a public API; it may change
# in any release.
#
# Two parts, standard library only:
#   - render_config(): a haproxy.cfg from a declarative description of the routed services. One frontend and one
#     backend per route, both named after the route (HAProxy keeps frontends and backends in separate name spaces),
#     the backend holding the servers `blue` and `green` on loopback ports. Same input, same bytes.
#   - RuntimeAPI: a client of HAProxy's runtime API on its Unix socket, one command per connection (HAProxy's
#     non-interactive mode: it answers one line and closes), bounded by a timeout; `show stat` parsed into counters per
#     route and server, `show servers state`, `set server <route>/<server> state|weight`.
#
# The configuration holds the routes, their ports and each server's first state; the runtime API holds the states and
# weights after that. A reload starts new workers from the file, so whoever changes a server through the runtime API
# saves `show servers state` into the server-state file (save_server_state), which the configuration tells HAProxy to
# load at every start and reload (`server-state-file`, `load-server-state-from-file global`): a flip survives reloads.

from __future__ import annotations

import csv
import io
import os
import re
import signal
import socket
import subprocess
import tempfile
import time

SERVER_NAMES = ('blue', 'green')
SERVER_STATES = ('ready', 'drain', 'maint')
MODES = ('http', 'tcp')
NAME_RE = re.compile(r'^[A-Za-z][A-Za-z0-9_-]{0,62}$')
HEALTH_PATH_RE = re.compile(r'^/[\x21-\x7e]*$')
ADDRESS_RE = re.compile(r'^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$')
DEFAULT_TIMEOUTS = {'connect': 5000, 'client': 60000, 'server': 60000, 'check': 2000, 'queue': 30000}
MAX_WEIGHT = 256
# HTTP routes retry a request on the other server when the first one failed it: refused or broken connections, and
# for safe methods (GET, HEAD, OPTIONS) a response the server could not give (empty) or a 500/502/503/504. So a canary
# or a slot that fails a request costs the client nothing while the other server answers, and the judge still sees it
# (the failing server counts the request in `wredis`, see _canary.py).
RETRY_ON_KEYWORDS = ('none', 'conn-failure', 'empty-response', 'junk-response', 'response-timeout', '0rtt-rejected',
                     'all-retryable-errors', '401', '403', '404', '408', '425', '500', '501', '502', '503', '504')
DEFAULT_RETRY_ON = ('conn-failure', 'empty-response', '500', '502', '503', '504')
DEFAULT_RETRIES = 1

# `show stat` counters the traffic layer reads (the canary judges by the response classes and the times).
STAT_FIELDS = ('status', 'weight', 'scur', 'smax', 'stot', 'qcur', 'hrsp_1xx', 'hrsp_2xx', 'hrsp_3xx', 'hrsp_4xx',
               'hrsp_5xx', 'hrsp_other', 'eresp', 'econ', 'wretr', 'wredis', 'chkfail', 'check_status', 'lastchg',
               'qtime', 'ctime', 'rtime', 'ttime', 'act', 'bck')
TEXT_FIELDS = ('pxname', 'svname', 'status', 'check_status', 'last_chk', 'mode', 'addr', 'cookie', 'last_agt',
               'agent_status', 'check_desc', 'agent_desc', 'algo', 'tracked', 'srv_icur', 'proxy', 'sid', 'iid',
               'pid', 'type')


class HAProxyConfigError(ValueError):
    """The description of the routes cannot make a configuration; the message names the entry and the fix."""


class HAProxyRuntimeError(Exception):
    """The runtime API did not answer, or refused a command; the message says which and why."""


# ---------------------------------------------------------------- the configuration

def _int(value, what, low, high):
    if isinstance(value, bool):
        raise HAProxyConfigError('%s must be a whole number from %d to %d, got %r' % (what, low, high, value))
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise HAProxyConfigError('%s must be a whole number from %d to %d, got %r' % (what, low, high, value))
    if str(number) != str(value).strip() or not low <= number <= high:
        raise HAProxyConfigError('%s must be a whole number from %d to %d, got %r' % (what, low, high, value))
    return number


def _address(value, what):
    match = ADDRESS_RE.match(str(value))
    if not match or any(int(part) > 255 for part in match.groups()):
        raise HAProxyConfigError('%s must be an IPv4 address such as 0.0.0.0 or 127.0.0.1, got %r' % (what, value))
    return str(value)


def _raw_lines(value, what):
    lines = []
    for line in value or []:
        if not isinstance(line, str) or not line.strip() or '\n' in line or '\r' in line or '\0' in line:
            raise HAProxyConfigError('%s must be a list of single, non-empty configuration lines, got %r' % (what, line))
        lines.append(line.strip())
    return lines


def _server(route_name, server_name, spec):
    what = 'route %s, server %s' % (route_name, server_name)
    if not isinstance(spec, dict):
        raise HAProxyConfigError('%s must be a dict with port, weight and state, got %r' % (what, spec))
    unknown = sorted(set(spec) - {'port', 'weight', 'state'})
    if unknown:
        raise HAProxyConfigError('%s has unknown keys %s (known: port, weight, state)' % (what, ', '.join(unknown)))
    if spec.get('port') is None:
        raise HAProxyConfigError('%s needs a port (the loopback port its container publishes)' % what)
    state = spec.get('state') or 'ready'
    if state not in SERVER_STATES:
        raise HAProxyConfigError('%s: state must be one of %s, got %r' % (what, ', '.join(SERVER_STATES), state))
    weight = spec.get('weight')
    return {
        'port': _int(spec['port'], what + ': port', 1, 65535),
        'weight': 100 if weight is None else _int(weight, what + ': weight', 0, MAX_WEIGHT),
        'state': state,
    }


def normalize_route(route):
    """One route with every default filled in; HAProxyConfigError naming the key when it is not valid."""
    if not isinstance(route, dict):
        raise HAProxyConfigError('each route must be a dict, got %r' % (route,))
    name = route.get('name')
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise HAProxyConfigError('route name %r is not valid: a letter, then up to 62 letters, digits, _ or -' % (name,))
    known = {'name', 'port', 'bind', 'mode', 'blue', 'green', 'health_path', 'check_interval', 'rise', 'fall',
             'retries', 'retry_on', 'frontend_options', 'backend_options'}
    unknown = sorted(set(route) - known)
    if unknown:
        raise HAProxyConfigError('route %s has unknown keys %s (known: %s)' % (name, ', '.join(unknown), ', '.join(sorted(known))))
    if route.get('port') is None:
        raise HAProxyConfigError('route %s needs a port (the public port the proxy listens on)' % name)
    mode = route.get('mode') or 'http'
    if mode not in MODES:
        raise HAProxyConfigError('route %s: mode must be http or tcp, got %r' % (name, mode))
    health_path = route.get('health_path')
    if health_path is not None:
        if mode != 'http':
            raise HAProxyConfigError('route %s: health_path needs mode http (a tcp route is checked by connecting)' % name)
        if not isinstance(health_path, str) or not HEALTH_PATH_RE.match(health_path):
            raise HAProxyConfigError('route %s: health_path must start with / and hold no spaces, got %r' % (name, health_path))
    retry_on = _retry_on(route.get('retry_on'), mode, name)
    if route.get('blue') is None:
        raise HAProxyConfigError('route %s needs a blue server (blue.port: the loopback port of the live slot)' % name)
    servers = {'blue': _server(name, 'blue', route['blue'])}
    if route.get('green') is not None:
        servers['green'] = _server(name, 'green', route['green'])
    return {
        'name': name,
        'port': _int(route['port'], 'route %s: port' % name, 1, 65535),
        'bind': _address(route.get('bind') or '0.0.0.0', 'route %s: bind' % name),
        'mode': mode,
        'servers': servers,
        'health_path': health_path,
        'check_interval': _int(route.get('check_interval') or 2000, 'route %s: check_interval (ms)' % name, 100, 3600000),
        'rise': _int(route.get('rise') or 2, 'route %s: rise' % name, 1, 100),
        'fall': _int(route.get('fall') or 3, 'route %s: fall' % name, 1, 100),
        'retries': _int(DEFAULT_RETRIES if route.get('retries') is None else route['retries'],
                        'route %s: retries' % name, 0, 100),
        'retry_on': retry_on,
        'frontend_options': _raw_lines(route.get('frontend_options'), 'route %s: frontend_options' % name),
        'backend_options': _raw_lines(route.get('backend_options'), 'route %s: backend_options' % name),
    }


def _retry_on(value, mode, name):
    """The `retry-on` keywords of a route: HTTP only (TCP retries failed connections, HAProxy's own rule)."""
    if value is None:
        return list(DEFAULT_RETRY_ON) if mode == 'http' else None
    if mode != 'http':
        raise HAProxyConfigError('route %s: retry_on needs mode http (a tcp route retries failed connections only)' % name)
    words = value.split() if isinstance(value, str) else value
    if not isinstance(words, (list, tuple)) or not words or not all(isinstance(word, str) for word in words):
        raise HAProxyConfigError('route %s: retry_on must be a non-empty list of keywords, got %r' % (name, value))
    unknown = [word for word in words if word not in RETRY_ON_KEYWORDS]
    if unknown:
        raise HAProxyConfigError('route %s: retry_on keyword %s is not known (known: %s)'
                                 % (name, ', '.join(unknown), ', '.join(RETRY_ON_KEYWORDS)))
    if 'none' in words and len(words) > 1:
        raise HAProxyConfigError('route %s: retry_on none cannot be combined with other keywords' % name)
    return list(words)


def normalize_routes(routes):
    """The routes, validated and completed, sorted by name; duplicates and port clashes are errors."""
    if not isinstance(routes, (list, tuple)):
        raise HAProxyConfigError('routes must be a list, got %r' % (routes,))
    normalized = [normalize_route(route) for route in routes]
    names = {}
    listeners = {}
    server_ports = {}
    for route in normalized:
        if route['name'] in names:
            raise HAProxyConfigError('route %s is given twice; route names must be unique' % route['name'])
        names[route['name']] = route
        for other_bind, other_port, other in listeners.values():
            if other_port == route['port'] and '0.0.0.0' in (other_bind, route['bind']) or (other_bind, other_port) == (route['bind'], route['port']):
                raise HAProxyConfigError('routes %s and %s both listen on port %d; give each route its own public port'
                                         % (other, route['name'], route['port']))
        listeners[route['name']] = (route['bind'], route['port'], route['name'])
    for route in normalized:
        for server_name in SERVER_NAMES:
            server = route['servers'].get(server_name)
            if server is None:
                continue
            owner = '%s/%s' % (route['name'], server_name)
            if server['port'] in server_ports:
                raise HAProxyConfigError('%s and %s both use loopback port %d; each server needs its own port'
                                         % (server_ports[server['port']], owner, server['port']))
            clash = [name for name, (bind, port, _n) in sorted(listeners.items())
                     if port == server['port'] and bind in ('0.0.0.0', '127.0.0.1')]
            if clash:
                raise HAProxyConfigError('%s uses port %d, the public port of route %s; the proxy would send the traffic to itself'
                                         % (owner, server['port'], clash[0]))
            server_ports[server['port']] = owner
    return sorted(normalized, key=lambda route: route['name'])


def _check_path(value, what):
    if not isinstance(value, str) or not value.startswith('/') or any(ch.isspace() or ch == '\0' for ch in value):
        raise HAProxyConfigError('%s must be an absolute path without spaces, got %r' % (what, value))
    return value


def render_config(routes, stats_socket, timeouts=None, user=None, group=None, hard_stop_after=None,
                  server_state_file=None):
    """The text of haproxy.cfg for `routes`; deterministic (same input, same text)."""
    _check_path(stats_socket, 'the runtime API socket')
    if server_state_file is not None:
        _check_path(server_state_file, 'the server-state file')
    merged = dict(DEFAULT_TIMEOUTS)
    for key, value in (timeouts or {}).items():
        if key not in DEFAULT_TIMEOUTS:
            raise HAProxyConfigError('unknown timeout %r (known: %s)' % (key, ', '.join(sorted(DEFAULT_TIMEOUTS))))
        if value is not None:
            merged[key] = _int(value, 'timeout %s (ms)' % key, 1, 86400000)
    for what, value in (('user', user), ('group', group)):
        if value is not None and not re.match(r'^[a-z_][a-z0-9_-]{0,31}$', value):
            raise HAProxyConfigError('%s %r is not a valid account name' % (what, value))
    normalized = normalize_routes(routes)
    out = [
        '# Managed by safedeploy.compose (traffic_proxy): edits are overwritten on the next run.',
        'global',
        '    master-worker',
        '    stats socket %s mode 600 level admin expose-fd listeners' % stats_socket,
        '    stats timeout 30s',
    ]
    if server_state_file is not None:
        out.append('    server-state-file %s' % server_state_file)
    if hard_stop_after is not None:
        out.append('    hard-stop-after %dms' % _int(hard_stop_after, 'hard_stop_after (ms)', 1, 86400000))
    if user:
        out.append('    user %s' % user)
    if group:
        out.append('    group %s' % group)
    out += ['', 'defaults', '    mode http', '    option redispatch 1', '    retries %d' % DEFAULT_RETRIES]
    if server_state_file is not None:
        out.append('    load-server-state-from-file global')
    for key in sorted(merged):
        out.append('    timeout %s %dms' % (key, merged[key]))
    for route in normalized:
        name = route['name']
        out += ['', 'frontend %s' % name, '    mode %s' % route['mode'],
                '    bind %s:%d' % (route['bind'], route['port'])]
        out += ['    %s' % line for line in route['frontend_options']]
        out.append('    default_backend %s' % name)
        out += ['', 'backend %s' % name, '    mode %s' % route['mode'], '    balance roundrobin',
                '    option redispatch 1', '    retries %d' % route['retries']]
        if route['retry_on']:
            # Every retry goes to another server when there is one (redispatch 1). Unsafe methods are retried only
            # when the connection failed (the server never saw the request): a 500 to a POST may have done its work.
            out += ['    retry-on %s' % ' '.join(route['retry_on']),
                    '    http-request disable-l7-retry if !METH_GET !METH_OPTIONS']
        if route['health_path']:
            out.append('    option httpchk GET %s' % route['health_path'])
        out += ['    %s' % line for line in route['backend_options']]
        out.append('    default-server inter %dms rise %d fall %d' % (route['check_interval'], route['rise'], route['fall']))
        for server_name in SERVER_NAMES:
            server = route['servers'].get(server_name)
            if server is None:
                continue
            line = '    server %s 127.0.0.1:%d check weight %d' % (server_name, server['port'], server['weight'])
            if server['state'] == 'maint':
                line += ' disabled'
            elif server['state'] == 'drain':
                # A configuration cannot start a server in drain; weight 0 is what drain does to new traffic.
                line = '    server %s 127.0.0.1:%d check weight 0' % (server_name, server['port'])
            out.append(line)
    return '\n'.join(out) + '\n'


# ---------------------------------------------------------------- the runtime API

def parse_stat_csv(text):
    """`show stat` output as a list of dicts; numbers as int, empty fields as None."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith('# '):
        raise HAProxyRuntimeError('show stat answered no CSV header: %r' % text[:200])
    header = lines[0][2:].rstrip(',').split(',')
    rows = []
    for values in csv.reader(io.StringIO('\n'.join(lines[1:]))):
        row = {}
        for key, value in zip(header, values):
            if value == '':
                row[key] = None
            elif key not in TEXT_FIELDS and re.match(r'^-?\d+$', value):
                row[key] = int(value)
            else:
                row[key] = value
        rows.append(row)
    return rows


def server_stats(rows):
    """{route: {'frontend': {...}, 'backend': {...}, 'servers': {server: {...}}}} with the counters of STAT_FIELDS."""
    routes = {}
    for row in rows:
        entry = routes.setdefault(row.get('pxname'), {'frontend': None, 'backend': None, 'servers': {}})
        picked = dict((key, row.get(key)) for key in STAT_FIELDS)
        if row.get('svname') == 'FRONTEND':
            entry['frontend'] = picked
        elif row.get('svname') == 'BACKEND':
            entry['backend'] = picked
        else:
            entry['servers'][row.get('svname')] = picked
    return routes


def parse_servers_state(text):
    """`show servers state` as a list of dicts keyed by its header's field names."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = None
    rows = []
    for line in lines:
        if line.startswith('# '):
            header = line[2:].split()
            continue
        if header is None:
            continue  # the format version line ("1")
        values = line.split()
        row = dict(zip(header, values))
        for key, value in row.items():
            if re.match(r'^-?\d+$', value) and key not in ('srv_addr', 'be_name', 'srv_name'):
                row[key] = int(value)
        rows.append(row)
    return rows


class RuntimeAPI(object):
    """HAProxy's runtime API on a Unix socket: one command per connection, each bounded by `timeout` seconds."""

    def __init__(self, socket_path, timeout=5.0):
        self.socket_path = socket_path
        self.timeout = float(timeout)

    def command(self, line):
        if '\n' in line or ';' in line:
            raise HAProxyRuntimeError('one runtime API command at a time, without newlines or ";": %r' % line)
        deadline = time.monotonic() + self.timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        chunks = []
        try:
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.socket_path)
                sock.sendall(line.encode('utf-8') + b'\n')
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise socket.timeout()
                    sock.settimeout(remaining)
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
            except socket.timeout:
                raise HAProxyRuntimeError('the runtime API at %s did not answer %r within %.1f s'
                                          % (self.socket_path, line, self.timeout))
            except OSError as exc:
                raise HAProxyRuntimeError('cannot reach the runtime API at %s (%s): is HAProxy running with this '
                                          '`stats socket`?' % (self.socket_path, exc))
        finally:
            sock.close()
        return b''.join(chunks).decode('utf-8', 'replace')

    def wait_ready(self, timeout):
        """Retry `show info` until the socket answers or `timeout` seconds passed; the parsed info."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.info()
            except HAProxyRuntimeError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def info(self):
        info = {}
        for line in self.command('show info').splitlines():
            if ':' in line:
                key, value = line.split(':', 1)
                info[key.strip()] = value.strip()
        if 'Pid' not in info:
            raise HAProxyRuntimeError('show info on %s answered no Pid' % self.socket_path)
        return info

    def show_stat(self):
        return parse_stat_csv(self.command('show stat'))

    def stats(self):
        return server_stats(self.show_stat())

    def servers_state(self, backend=None):
        return parse_servers_state(self.command('show servers state' + (' %s' % backend if backend else '')))

    def _set(self, line):
        answer = self.command(line).strip()
        if answer:
            raise HAProxyRuntimeError('HAProxy refused %r: %s' % (line, answer))

    def set_server_state(self, backend, server, state):
        if state not in SERVER_STATES:
            raise HAProxyRuntimeError('a server state is one of %s, got %r' % (', '.join(SERVER_STATES), state))
        self._check_names(backend, server)
        self._set('set server %s/%s state %s' % (backend, server, state))

    def set_server_weight(self, backend, server, weight):
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
            raise HAProxyRuntimeError('a server weight is a whole number from 0 to %d, got %r' % (MAX_WEIGHT, weight))
        self._check_names(backend, server)
        self._set('set server %s/%s weight %d' % (backend, server, weight))

    @staticmethod
    def _check_names(backend, server):
        for value in (backend, server):
            if not isinstance(value, str) or not NAME_RE.match(value):
                raise HAProxyRuntimeError('backend and server names are letters, digits, _ and -, got %r' % (value,))


def save_server_state(api, path, routes=None):
    """Write `show servers state` to `path` atomically (0600), for HAProxy to load at its next start or reload.

    HAProxy takes a server's address and port from that file too, so with `routes` (normalized, the configuration about
    to be loaded) only the servers that keep their route, name and port are written: a moved server starts as its route
    says instead of at its old port.
    """
    text = api.command('show servers state')
    if not text.lstrip().startswith('1'):
        raise HAProxyRuntimeError('show servers state answered no state (format version line): %r' % text[:200])
    if routes is not None:
        ports = dict(((route['name'], name), server['port'])
                     for route in routes for name, server in route['servers'].items())
        kept = []
        header = None
        for line in text.splitlines():
            if not line.strip() or line.startswith('#') or header is None:
                kept.append(line)
                if line.startswith('# '):
                    header = line[2:].split()
                continue
            row = dict(zip(header, line.split()))
            if ports.get((row.get('be_name'), row.get('srv_name'))) == _port_of(row) and row.get('srv_addr') == '127.0.0.1':
                kept.append(line)
        text = '\n'.join(kept)
    directory = os.path.dirname(path) or '.'
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o750)
    fd, temp = tempfile.mkstemp(prefix='.server-state-', dir=directory)
    try:
        with os.fdopen(fd, 'w') as handle:
            handle.write(text if text.endswith('\n') else text + '\n')
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o600)
        os.rename(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    return text


def _port_of(row):
    try:
        return int(row.get('srv_port'))
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- the process (validate, start, reload)

def alerts(output):
    """HAProxy's [ALERT] lines (the reasons a configuration is refused), or its whole output when it has none."""
    lines = [line.strip() for line in output.splitlines() if '[ALERT]' in line]
    return '\n'.join(lines) if lines else output.strip()


def validate_config(haproxy, text, directory=None):
    """(ok, message): `haproxy -c -f` on a candidate file holding `text`, removed afterwards."""
    fd, candidate = tempfile.mkstemp(prefix='.haproxy-candidate-', suffix='.cfg', dir=directory)
    try:
        with os.fdopen(fd, 'w') as handle:
            handle.write(text)
        proc = subprocess.run([haproxy, '-c', '-f', candidate], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=60, check=False)
    finally:
        os.unlink(candidate)
    output = (proc.stdout or '') + (proc.stderr or '')
    return proc.returncode == 0, alerts(output).replace(candidate, '<candidate>')


def read_pid(pid_file):
    try:
        with open(pid_file) as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def master_pid(pid_file):
    """The pid of the supervised HAProxy master named by `pid_file`, when that process lives and is HAProxy."""
    pid = read_pid(pid_file)
    if pid is None:
        return None
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as handle:
            argv = handle.read().split(b'\0')
    except OSError:
        return None
    if not argv or b'haproxy' not in argv[0]:
        return None
    try:
        with open('/proc/%d/stat' % pid) as handle:
            if handle.read().rsplit(')', 1)[1].split()[0] == 'Z':
                return None
    except (OSError, IndexError):
        return None
    return pid


def start_master(haproxy, config_path, pid_file, master_socket):
    """Start HAProxy in master-worker mode as a daemon; (ok, message)."""
    argv = [haproxy, '-W', '-D', '-f', config_path, '-p', pid_file]
    if master_socket:
        argv += ['-S', '%s,mode,600' % master_socket]
    # Output goes to a file, never a pipe: the daemon inherits nothing the caller waits on.
    with tempfile.TemporaryFile('w+') as output:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=output, start_new_session=True,
                              timeout=60, check=False)
        output.seek(0)
        text = output.read()
    return proc.returncode == 0, alerts(text)


def reload_master(pid, api, timeout):
    """Ask the master `pid` to reload (SIGUSR2) and wait until a new worker answers on the runtime API.

    The master starts new workers on the new configuration and hands them the listening sockets (`expose-fd
    listeners`), then the old workers stop accepting and finish their connections: no connection is refused or cut.
    Returns the new worker's pid; HAProxyRuntimeError when no new worker answered within `timeout` seconds.
    """
    try:
        old = api.wait_ready(min(timeout, 5)).get('Pid')
    except HAProxyRuntimeError:
        # The running workers do not answer on this socket (the configuration moved it): the first worker that
        # answers there after the reload is a new one.
        old = None
    os.kill(pid, signal.SIGUSR2)
    return wait_new_worker(api, old, timeout, 'SIGUSR2 to the master (pid %d)' % pid)


def wait_new_worker(api, old, timeout, how):
    """Wait until a worker other than `old` answers on the runtime API; its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            current = api.info().get('Pid')
        except HAProxyRuntimeError:
            current = None
        if current is not None and current != old:
            return int(current)
        time.sleep(0.05)
    raise HAProxyRuntimeError('HAProxy did not start a new worker within %d s after the reload (%s); '
                              'the old worker %s still serves' % (timeout, how, old))


# srv_admin_state of `show servers state`: the bits that put a server in maintenance (forced, inherited, DNS
# resolution, hostname) and the ones that drain it (forced, inherited). The configuration's `disabled` sets 0x04
# together with 0x01; `set server ... state ready` clears 0x01 and leaves 0x04 as a mere mark (HAProxy 2.6).
ADMIN_MAINT_BITS = 0x01 | 0x02 | 0x20 | 0x40
ADMIN_DRAIN_BITS = 0x08 | 0x10


def admin_state(bits):
    """`ready`, `drain` or `maint` from the srv_admin_state bits of `show servers state`."""
    bits = int(bits)
    if bits & ADMIN_MAINT_BITS:
        return 'maint'
    if bits & ADMIN_DRAIN_BITS:
        return 'drain'
    return 'ready'
