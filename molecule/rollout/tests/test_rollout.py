"""What a user cares about after rolling v2 out over v1: what runs, what the ledger says, file modes."""

import json

PROJECT = 'sd-mol-web'
STATE = '/var/lib/safedeploy-molecule/state/' + PROJECT
REPOS = {'web': '127.0.0.1:5000/safedeploy-molecule/web', 'worker': '127.0.0.1:5000/safedeploy-molecule/worker'}


def ledger(host):
    return json.loads(host.file(STATE + '/releases.json').content_string)


def running_digest(host, service):
    ids = host.check_output('docker ps -q --filter label=com.docker.compose.project=%s --filter label=com.docker.compose.service=%s'
                            % (PROJECT, service)).split()
    assert len(ids) == 1, 'expected one running %s container, found %s' % (service, ids)
    image_id = host.check_output("docker inspect --format '{{.Image}}' %s" % ids[0])
    return json.loads(host.check_output("docker image inspect --format '{{json .RepoDigests}}' %s" % image_id))


def test_every_service_runs_the_digest_recorded_for_v2(host):
    data = ledger(host)
    v2 = next(r for r in data['releases'] if r['id'] == 'v2')
    for service, repo in REPOS.items():
        assert '%s@%s' % (repo, v2['services'][service]['digest']) in running_digest(host, service)


def test_ledger_has_v2_good_and_current_and_v1_superseded(host):
    data = ledger(host)
    statuses = dict((r['id'], r['status']) for r in data['releases'])
    assert data['current'] == 'v2'
    assert statuses == {'v1': 'superseded', 'v2': 'good'}


def test_override_pins_v2_by_digest_and_the_app_answers_v2(host):
    override = host.file('/var/lib/safedeploy-molecule/%s/compose.%s.release.yml' % (PROJECT, PROJECT)).content_string
    assert '%s:v2@sha256:' % REPOS['web'] in override
    assert '"version": "v2"' in host.check_output('curl -s http://127.0.0.1:18501/cgi-bin/health')


def test_state_files_are_private(host):
    assert host.file(STATE).mode == 0o700
    assert host.file(STATE + '/releases.json').mode == 0o600
    assert not host.file(STATE + '/lock.json').exists, 'the stack lock must be released after the run'
