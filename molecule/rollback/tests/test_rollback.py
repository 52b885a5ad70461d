"""After an explicit rollback from v2 to v1: v1 runs by digest, the ledger tells the story."""

import json

PROJECT = 'sd-mol-web'
STATE = '/var/lib/safedeploy-molecule/state/' + PROJECT


def test_ledger_has_v1_current_and_v2_rolled_back(host):
    data = json.loads(host.file(STATE + '/releases.json').content_string)
    statuses = dict((r['id'], r['status']) for r in data['releases'])
    assert data['current'] == 'v1'
    assert statuses == {'v1': 'good', 'v2': 'rolled_back'}


def test_containers_run_the_v1_digests(host):
    data = json.loads(host.file(STATE + '/releases.json').content_string)
    v1 = next(r for r in data['releases'] if r['id'] == 'v1')
    for service, spec in v1['services'].items():
        ids = host.check_output('docker ps -q --filter label=com.docker.compose.project=%s '
                                '--filter label=com.docker.compose.service=%s' % (PROJECT, service)).split()
        assert len(ids) == 1
        image_id = host.check_output("docker inspect --format '{{.Image}}' %s" % ids[0])
        digests = json.loads(host.check_output("docker image inspect --format '{{json .RepoDigests}}' %s" % image_id))
        assert any(d.endswith(spec['digest']) for d in digests), (service, digests)
    assert '"version": "v1"' in host.check_output('curl -s http://127.0.0.1:18501/cgi-bin/health')
