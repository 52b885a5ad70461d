"""What the verifiers of the molecule scenarios check of the shared stack (see vars/stack.yml)."""

import json

PROJECT = 'sd-mol-web'
STATE = '/var/lib/safedeploy-molecule/state/' + PROJECT
WEB_HEALTH = 'http://127.0.0.1:18501/cgi-bin/health'


def ledger(host):
    return json.loads(host.file(STATE + '/releases.json').content_string)


def release(host, release_id):
    return next(record for record in ledger(host)['releases'] if record['id'] == release_id)


def assert_runs(host, release_id):
    """One container per service of the release, each on the digest the ledger recorded, and web answering it."""
    for service, spec in release(host, release_id)['services'].items():
        ids = host.check_output('docker ps -q --filter label=com.docker.compose.project=%s '
                                '--filter label=com.docker.compose.service=%s' % (PROJECT, service)).split()
        assert len(ids) == 1, (service, ids)
        image_id = host.check_output("docker inspect --format '{{.Image}}' %s" % ids[0])
        digests = json.loads(host.check_output("docker image inspect --format '{{json .RepoDigests}}' %s" % image_id))
        assert any(d.endswith(spec['digest']) for d in digests), (service, digests)
    assert '"version": "%s"' % release_id in host.check_output('curl -s %s' % WEB_HEALTH)
