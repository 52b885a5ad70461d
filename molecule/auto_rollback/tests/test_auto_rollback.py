"""After a crash-looping v3: the stack serves v2 again and the ledger says why v3 failed."""

import json

PROJECT = 'sd-mol-web'
STATE = '/var/lib/safedeploy-molecule/state/' + PROJECT


def ledger(host):
    return json.loads(host.file(STATE + '/releases.json').content_string)


def test_v3_is_failed_with_its_reason_and_v2_is_current(host):
    data = ledger(host)
    records = dict((r['id'], r) for r in data['releases'])
    assert data['current'] == 'v2'
    assert records['v2']['status'] == 'good'
    assert records['v3']['status'] == 'failed'
    assert 'health' in records['v3']['reason'].lower() or 'gate' in records['v3']['reason'].lower()


def test_every_container_runs_v2_again(host):
    v2 = next(r for r in ledger(host)['releases'] if r['id'] == 'v2')
    for service, spec in v2['services'].items():
        ids = host.check_output('docker ps -q --filter label=com.docker.compose.project=%s '
                                '--filter label=com.docker.compose.service=%s' % (PROJECT, service)).split()
        assert len(ids) == 1
        image_id = host.check_output("docker inspect --format '{{.Image}}' %s" % ids[0])
        digests = json.loads(host.check_output("docker image inspect --format '{{json .RepoDigests}}' %s" % image_id))
        assert any(d.endswith(spec['digest']) for d in digests), (service, digests)
    assert '"version": "v2"' in host.check_output('curl -s http://127.0.0.1:18501/cgi-bin/health')
