"""What the blue_green verifiers read of the routed stack declared in ../molecule.yml."""

import json

PROJECT = 'sd-mol-bg'
ROOT = '/var/lib/safedeploy-molecule-blue-green'
STATE = ROOT + '/state/' + PROJECT
PROXY = ROOT + '/proxy'
PUBLIC_PORT = 19700
WORKER_PORT = 19701


def ledger(host):
    return json.loads(host.file(STATE + '/releases.json').content_string)


def release(host, release_id):
    return next(record for record in ledger(host)['releases'] if record['id'] == release_id)


def containers(host, project):
    """Every container of a compose project: [{service, state, release, digests}], sorted by service."""
    ids = host.check_output('docker ps --all --quiet --filter label=com.docker.compose.project=%s' % project).split()
    found = []
    for container in (json.loads(host.check_output('docker inspect %s' % ' '.join(ids))) if ids else []):
        labels = container['Config']['Labels'] or {}
        image = json.loads(host.check_output("docker image inspect --format '{{json .RepoDigests}}' %s"
                                             % container['Image']))
        found.append({'service': labels.get('com.docker.compose.service'), 'state': container['State']['Status'],
                      'release': labels.get('org.safedeploy.release'),
                      'digests': [ref.split('@', 1)[1] for ref in image]})
    return sorted(found, key=lambda item: item['service'])


def assert_slot(host, slot, state, release_id):
    """The slot holds one web container, in `state`, labelled and running the digest the ledger recorded for it."""
    found = containers(host, '%s-%s' % (PROJECT, slot))
    assert [(c['service'], c['state'], c['release']) for c in found] == [('web', state, release_id)], (slot, found)
    assert release(host, release_id)['services']['web']['digest'] in found[0]['digests'], (slot, found)


def assert_project_runs_only_the_worker(host, release_id):
    running = [c for c in containers(host, PROJECT) if c['state'] == 'running']
    assert [c['service'] for c in running] == ['worker'], running
    assert release(host, release_id)['services']['worker']['digest'] in running[0]['digests'], running


def version(host, port):
    """The version the app answers on a loopback port."""
    answer = host.check_output('curl --silent --fail --max-time 5 http://127.0.0.1:%d/cgi-bin/health' % port)
    return json.loads(answer)['version']
