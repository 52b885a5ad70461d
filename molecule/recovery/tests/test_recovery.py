"""What a user cares about after recovering a VPS whose disk was full and whose stack was down."""

import json
import os
import subprocess
import urllib.request

PROJECT = 'sd-mol-web'
ROOT = '/var/lib/safedeploy-molecule'
STATE = ROOT + '/state/' + PROJECT
SMALL = 'unix:///run/safedeploy-testbed-small.sock'
REPOS = {'web': '127.0.0.1:5000/safedeploy-molecule/web', 'worker': '127.0.0.1:5000/safedeploy-molecule/worker'}


def small_docker(*args):
    return subprocess.run(['docker', '-H', SMALL] + list(args), capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def ledger():
    with open(STATE + '/releases.json') as handle:
        return json.load(handle)


def release(data, release_id):
    return next(r for r in data['releases'] if r['id'] == release_id)


def test_the_disk_is_below_the_target_on_the_filesystem_itself():
    root = small_docker('info', '--format', '{{.DockerRootDir}}')
    stat = os.statvfs(root)
    used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
    percent = 100.0 * used / (used + stat.f_bavail * stat.f_frsize)
    assert percent < 80, 'disk at %.1f%% after the recovery' % percent


def test_the_stack_runs_the_last_good_release_by_digest_on_the_small_engine():
    data = ledger()
    assert data['current'] == 'v2'
    assert dict((r['id'], r['status']) for r in data['releases']) == {'v1': 'superseded', 'v2': 'good'}
    v2 = release(data, 'v2')
    for service, repo in REPOS.items():
        ids = small_docker('ps', '-q', '--filter', 'label=com.docker.compose.project=%s' % PROJECT,
                           '--filter', 'label=com.docker.compose.service=%s' % service).split()
        assert len(ids) == 1, 'expected one running %s container, found %s' % (service, ids)
        image_id = small_docker('inspect', '--format', '{{.Image}}', ids[0])
        digests = json.loads(small_docker('image', 'inspect', '--format', '{{json .RepoDigests}}', image_id))
        assert '%s@%s' % (repo, v2['services'][service]['digest']) in digests
    with urllib.request.urlopen('http://127.0.0.1:18501/cgi-bin/health', timeout=5) as response:
        assert json.loads(response.read().decode())['version'] == 'v2'


def test_the_way_back_is_still_on_the_host():
    data = ledger()
    for release_id in ('v1', 'v2'):
        for service, repo in REPOS.items():
            digest = release(data, release_id)['services'][service]['digest']
            assert small_docker('image', 'inspect', '--format', '{{.Id}}', '%s@%s' % (repo, digest)), \
                '%s %s was reclaimed' % (service, release_id)


def reports():
    names = sorted(name for name in os.listdir(ROOT) if name.startswith('recovery-') and name.endswith('.json'))
    assert len(names) >= 2, 'expected the reports of the converge and of the idempotence run, found %s' % names
    loaded = []
    for name in names:
        path = os.path.join(ROOT, name)
        assert os.stat(path).st_mode & 0o777 == 0o600, '%s is not private' % path
        with open(path) as handle:
            loaded.append(json.load(handle))
    return loaded


def test_the_report_says_before_and_after():
    first = reports()[0]
    assert float(first['disk_before_percent']) > 95
    assert float(first['disk_after_percent']) < 80
    assert int(first['reclaimed_bytes']) > 0
    assert first['stacks'] == [{'name': PROJECT, 'release': 'v2', 'healthy': True, 'error': None}]


def test_a_second_recovery_finds_nothing_to_do():
    last = reports()[-1]
    assert float(last['disk_before_percent']) < 80 and int(last['reclaimed_bytes']) == 0
    assert last['stacks'] == [{'name': PROJECT, 'release': 'v2', 'healthy': True, 'error': None}]
