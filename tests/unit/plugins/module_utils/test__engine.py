"""Unit tests of the disk measurement and the reclaim planning in module_utils/_engine.py.

The engine is faked here (image, container and layer data as /system/df would give them);
tests/integration/test_disk_reclaim.py runs the same code against a real engine on a small disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from ansible_collections.safedeploy.compose.plugins.module_utils import _engine as engine
from ansible_collections.safedeploy.compose.plugins.module_utils._engine_api import EngineAPIError, NotFound

MB = 1 << 20


# ---------------------------------------------------------------- helpers building fake engine data

def image(image_id, layers, tags=(), digests=(), created=0):
    return dict(id='sha256:' + image_id, tags=list(tags), digests=list(digests), created=created,
                size=sum(size for _chain, size in layers), layers=list(layers))


def container(container_id, image_id, state='running', created=0, size=0, project=None):
    return dict(id=container_id, name='c-' + container_id, state=state, image_id='sha256:' + image_id,
                created=created, bytes=size, labels={engine.PROJECT_LABEL: project} if project else {})


def volume(name, ref_count=0, size=MB, labels=None, driver='local'):
    return dict(name=name, driver=driver, bytes=size, ref_count=ref_count, labels=labels or {})


def protection(*refs, projects=()):
    result = engine.ImageProtection()
    for ref in refs:
        result.add(ref, 'protect')
    result.projects.update(projects)
    return result


def names(candidates):
    return [candidate['name'] for candidate in candidates]


# ---------------------------------------------------------------- measuring a filesystem

def test_measure_disk_matches_the_df_tool(tmp_path):
    usage = engine.measure_disk(str(tmp_path))
    out = subprocess.run(['df', '-B1', '--output=size,used,avail,pcent', str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout.splitlines()[1].split()
    size, used, avail, pcent = int(out[0]), int(out[1]), int(out[2]), int(out[3].rstrip('%'))
    assert usage['total'] == size
    # df and our statvfs are two reads of a live filesystem: allow a little drift between them.
    assert abs(usage['used'] - used) < 64 * MB
    assert abs(usage['free'] - avail) < 64 * MB
    assert usage['used'] + usage['free'] <= usage['total']
    assert abs(usage['percent'] - pcent) <= 1.01  # df rounds Use% up to a whole percent
    assert usage['path'] == str(tmp_path)


def test_measure_disk_of_a_missing_path_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        engine.measure_disk(str(tmp_path / 'nope'))


def test_usage_after_freeing_moves_bytes_from_used_to_free():
    usage = dict(path='/x', total=1000, used=900, free=60, percent=engine.usage_percent(900, 960))
    after = engine.usage_after_freeing(usage, 300)
    assert (after['used'], after['free'], after['total']) == (600, 360, 1000)
    assert after['percent'] == 62.5
    assert engine.usage_after_freeing(usage, 5000)['used'] == 0


# ---------------------------------------------------------------- references and protection

@pytest.mark.parametrize('ref, expected', [
    ('nginx', dict(repository='docker.io/library/nginx', tag='latest', digest=None, id_prefix=None)),
    ('user/app:1.2', dict(repository='docker.io/user/app', tag='1.2', digest=None, id_prefix=None)),
    ('127.0.0.1:5000/shop/web:v1', dict(repository='127.0.0.1:5000/shop/web', tag='v1', digest=None, id_prefix=None)),
    ('localhost/app@sha256:' + 'a' * 64,
     dict(repository='localhost/app', tag=None, digest='sha256:' + 'a' * 64, id_prefix=None)),
    ('reg.example.com/app:v2@sha256:' + 'b' * 64,
     dict(repository='reg.example.com/app', tag='v2', digest='sha256:' + 'b' * 64, id_prefix=None)),
    ('sha256:' + 'c' * 12, dict(repository=None, tag=None, digest=None, id_prefix='sha256:' + 'c' * 12)),
    ('sha256:' + 'd' * 64, dict(repository=None, tag=None, digest='sha256:' + 'd' * 64, id_prefix='sha256:' + 'd' * 64)),
    ('e' * 64, dict(repository=None, tag=None, digest='sha256:' + 'e' * 64, id_prefix='sha256:' + 'e' * 64)),
])
def test_parse_image_ref(ref, expected):
    assert engine.parse_image_ref(ref) == expected


@pytest.mark.parametrize('ref', ['', '   ', 'Upper/Case:tag', 'app@notadigest', 'two words', '/abs:tag'])
def test_parse_image_ref_rejects_what_is_no_reference(ref):
    assert engine.parse_image_ref(ref) is None


def test_protection_rejects_a_bad_reference_naming_its_source():
    with pytest.raises(ValueError, match="'app@nope' \\(from protect\\)"):
        protection('app@nope')


DIGEST_A = 'sha256:' + 'a1' * 32
WEB = image('1' * 64, [('l1', 10)], tags=['127.0.0.1:5000/shop/web:v1'], digests=['127.0.0.1:5000/shop/web@' + DIGEST_A])


@pytest.mark.parametrize('ref, protects', [
    ('127.0.0.1:5000/shop/web:v1', True),
    ('127.0.0.1:5000/shop/web:v2', False),
    ('127.0.0.1:5000/shop/web@' + DIGEST_A, True),
    # The same manifest digest pulled from a mirror is the same image.
    ('mirror.example.com/shop/web@' + DIGEST_A, True),
    (DIGEST_A, True),
    ('127.0.0.1:5000/shop/web@sha256:' + 'ff' * 32, False),
    # Pinned ref whose digest is not local (built here, never pulled): still kept by its tag.
    ('127.0.0.1:5000/shop/web:v1@sha256:' + 'ff' * 32, True),
    ('sha256:' + '1' * 12, True),
    ('sha256:' + '2' * 12, False),
])
def test_ref_protects_by_tag_digest_and_id(ref, protects):
    assert engine.ref_protects(engine.parse_image_ref(ref), WEB) is protects


def test_familiar_names_match_the_engines_short_tags():
    nginx = image('3' * 64, [('l', 1)], tags=['nginx:latest'], digests=['nginx@' + DIGEST_A])
    assert engine.ref_protects(engine.parse_image_ref('docker.io/library/nginx'), nginx)
    assert engine.ref_protects(engine.parse_image_ref('index.docker.io/library/nginx:latest'), nginx)
    assert not engine.ref_protects(engine.parse_image_ref('nginx:1.25'), nginx)


# ---------------------------------------------------------------- layers

def test_chain_ids_follow_the_oci_definition():
    diff = ['sha256:' + 'a' * 64, 'sha256:' + 'b' * 64, 'sha256:' + 'c' * 64]
    second = 'sha256:' + hashlib.sha256((diff[0] + ' ' + diff[1]).encode()).hexdigest()
    third = 'sha256:' + hashlib.sha256((second + ' ' + diff[2]).encode()).hexdigest()
    assert engine.chain_ids(diff) == [diff[0], second, third]
    assert engine.chain_ids([]) == []


def test_layers_to_pull_are_those_whose_chain_the_engine_lacks():
    base, middle, top = ('sha256:' + c * 64 for c in 'abc')
    layers = [('sha256:' + '1' * 64, 100), ('sha256:' + '2' * 64, 20), ('sha256:' + '3' * 64, 3)]
    chains = engine.chain_ids([base, middle, top])
    # The host holds the base and the middle layer (another release of the same image): only the top is pulled.
    assert engine.layers_to_pull([base, middle, top], layers, set(chains[:2])) == [(chains[2], 3)]
    assert engine.layers_to_pull([base, middle, top], layers, set(chains)) == []
    # The same content on another parent is another layer: the engine pulls it again.
    assert engine.layers_to_pull([base, middle, top], layers, {middle, top}) == list(zip(chains, (100, 20, 3)))


def test_layers_to_pull_count_every_layer_without_diff_ids_to_match():
    layers = [('sha256:' + '1' * 64, 100), ('sha256:' + '2' * 64, 20)]
    held = set(engine.chain_ids(['sha256:' + 'a' * 64]))
    assert engine.layers_to_pull(None, layers, held) == layers
    assert engine.layers_to_pull(['sha256:' + 'a' * 64], layers, held) == layers  # not one diff id a layer


class ImagesApi(object):
    """The two engine calls read_held_chains makes, counting the inspects."""

    def __init__(self, layers):
        self.layers = layers  # image id -> diff ids
        self.inspected = []

    def images(self):
        return [{'Id': image_id} for image_id in self.layers]

    def inspect_image(self, image_id):
        self.inspected.append(image_id)
        if image_id not in self.layers:
            raise NotFound(404, 'Not Found', 'gone')
        return {'RootFS': {'Layers': self.layers[image_id]}}


class ImagesClient(object):
    def __init__(self, layers):
        self.api = ImagesApi(layers)


def test_held_chains_inspect_each_image_once_across_runs(tmp_path):
    base, app, web = ('sha256:' + c * 64 for c in 'abc')
    cache = str(tmp_path / 'cache' / 'image-chains.json')
    first = ImagesClient({'sha256:1': [base, app], 'sha256:2': [base, web]})
    expected = set(engine.chain_ids([base, app]) + engine.chain_ids([base, web]))
    assert engine.read_held_chains(first, cache) == expected
    assert sorted(first.api.inspected) == ['sha256:1', 'sha256:2']
    assert os.stat(cache).st_mode & 0o777 == 0o600
    # A later look inspects only the image it has not seen; the one that went is forgotten.
    second = ImagesClient({'sha256:2': [base, web], 'sha256:3': [base]})
    assert engine.read_held_chains(second, cache) == set(engine.chain_ids([base, web]) + [base])
    assert second.api.inspected == ['sha256:3']
    third = ImagesClient({'sha256:2': [base, web], 'sha256:3': [base]})
    assert engine.read_held_chains(third, cache) == set(engine.chain_ids([base, web]) + [base])
    assert third.api.inspected == []
    assert sorted(json.loads(open(cache).read())) == ['sha256:2', 'sha256:3']


def test_held_chains_without_a_usable_cache_inspect_every_image(tmp_path):
    base = 'sha256:' + 'a' * 64
    broken = tmp_path / 'image-chains.json'
    broken.write_text('{"sha256:1": "not a list"')  # torn: read as no cache
    client = ImagesClient({'sha256:1': [base]})
    assert engine.read_held_chains(client, str(broken)) == {base}
    assert client.api.inspected == ['sha256:1']
    client = ImagesClient({'sha256:1': [base]})
    assert engine.read_held_chains(client) == {base}  # no cache asked for: nothing written
    assert client.api.inspected == ['sha256:1']


def history(*steps):
    """Engine history (newest first) from (created_by, size) steps given oldest first."""
    return [dict(CreatedBy=created_by, Size=size) for created_by, size in reversed(steps)]


def test_layer_sizes_skip_config_only_steps_and_keep_empty_layers():
    steps = history(('/bin/sh -c #(nop) COPY file:1 in /bin/busybox ', 1982256),
                    ('/bin/busybox --install -s /bin', 3216),
                    ('/bin/sh -c mkdir -p /tmp /run && chmod 1777 /tmp', 0),
                    ('/bin/sh -c #(nop)  ENV APP_PORT=8080', 0),
                    ('/bin/sh -c #(nop)  LABEL a=b', 0),
                    ('ENTRYPOINT ["/app"]', 0),
                    ('COPY payload / # buildkit', 4096))
    assert engine.layer_sizes(['d1', 'd2', 'd3', 'd4'], steps) == [1982256, 3216, 0, 4096]


def test_layer_sizes_keep_every_byte_when_the_steps_do_not_line_up():
    # A zero-size WORKDIR that made a layer: counts differ, the bytes stay attributed.
    steps = history(('COPY a /', 100), ('WORKDIR /srv', 0), ('COPY b /', 50))
    sizes = engine.layer_sizes(['d1', 'd2', 'd3'], steps)
    assert len(sizes) == 3 and sum(sizes) == 150
    assert engine.layer_sizes([], steps) == []


# ---------------------------------------------------------------- the model

def test_a_shared_layer_is_freed_only_with_its_last_image():
    base = ('base', 100 * MB)
    old = image('a' * 64, [base, ('old', 10 * MB)], tags=['app:1'])
    new = image('b' * 64, [base, ('new', 20 * MB)], tags=['app:2'])
    inventory = engine.EngineInventory([old, new])
    assert inventory.image_bytes(old['id']) == 10 * MB
    assert inventory.forget(dict(kind='image', id=old['id'])) == 10 * MB
    assert inventory.image_bytes(new['id']) == 120 * MB
    assert inventory.forget(dict(kind='image', id=new['id'])) == 120 * MB
    assert inventory.images == {}


def test_forget_other_kinds():
    inventory = engine.EngineInventory(
        containers=[container('c1', 'a' * 64, 'exited', size=5)],
        build_cache=[dict(id='b1', type='regular', bytes=7, in_use=False, shared=False),
                     dict(id='b2', type='regular', bytes=3, in_use=True, shared=False),
                     dict(id='b3', type='regular', bytes=11, in_use=False, shared=True)],
        volumes=[volume('v1', size=-1), volume('v2', size=9)])
    assert inventory.forget(dict(kind='container', id='c1')) == 5
    assert inventory.forget(dict(kind='build_cache', id='build cache')) == 7
    assert [entry['id'] for entry in inventory.build_cache] == ['b2']
    assert inventory.forget(dict(kind='volume', id='v1')) == 0  # size unknown to the engine
    assert inventory.forget(dict(kind='volume', id='v2')) == 9
    with pytest.raises(ValueError):
        inventory.forget(dict(kind='network', id='n'))


# ---------------------------------------------------------------- what each stage may remove

def fleet():
    """An engine with every case: used, stopped-used, protected, multi-tag, dangling, old."""
    return engine.EngineInventory(
        images=[
            image('a' * 64, [('la', 10 * MB)], tags=['reg/app:running'], created=1),
            image('b' * 64, [('lb', 20 * MB)], tags=['reg/app:stopped'], created=2),
            image('c' * 64, [('lc', 30 * MB)], tags=['reg/app:current'], digests=['reg/app@' + DIGEST_A], created=3),
            image('d' * 64, [('ld', 40 * MB)], tags=['reg/app:old', 'other/app:keep'], created=4),
            image('e' * 64, [('le', 50 * MB)], created=5),
            image('f' * 64, [('lf', 60 * MB)], tags=['reg/app:older'], created=0),
            image('9' * 64, [('l9', 70 * MB)], digests=['reg/app@sha256:' + '9' * 64], created=6),
        ],
        containers=[
            container('run', 'a' * 64, 'running', created=5),
            container('stop', 'b' * 64, 'exited', created=3, size=MB),
            container('dead', 'b' * 64, 'dead', created=1),
            container('new', 'c' * 64, 'created', created=2),
            container('pause', 'f' * 64, 'paused', created=4),
            container('restart', 'f' * 64, 'restarting', created=4),
        ],
        build_cache=[dict(id='bc', type='regular', bytes=5 * MB, in_use=False, shared=False)],
        volumes=[volume('data', ref_count=0), volume('used', ref_count=1),
                 volume('shopdb', labels={engine.PROJECT_LABEL: 'shop'}), volume('nfs', driver='nfs')])


def test_containers_stage_takes_stopped_containers_oldest_first():
    assert names(engine.reclaim_candidates('containers', fleet(), protection())) == ['c-dead', 'c-new', 'c-stop']


def test_containers_stage_keeps_the_stopped_containers_of_managed_projects():
    inventory = fleet()
    inventory.containers['shopdb'] = container('shopdb', 'b' * 64, 'exited', created=0, project='shop')
    inventory.containers['other'] = container('other', 'b' * 64, 'exited', created=0, project='scratch')
    taken = names(engine.reclaim_candidates('containers', inventory, protection(projects=['shop'])))
    assert 'c-shopdb' not in taken, 'a stopped container of a project with a ledger was taken'
    assert taken == ['c-other', 'c-dead', 'c-new', 'c-stop'], 'other projects are not protected'


def test_image_stages_never_take_used_or_protected_images():
    keep = protection('reg/app@' + DIGEST_A, 'other/app:keep')
    unused = engine.reclaim_candidates('unused_images', fleet(), keep)
    # a (running), b (stopped containers), f (paused/restarting) used; c and d protected (d by one of its two tags).
    assert [c['id'][7:8] for c in unused] == ['e', '9']
    dangling = engine.reclaim_candidates('dangling_images', fleet(), keep)
    assert [c['id'][7:8] for c in dangling] == ['e']
    assert dangling[0]['refs'] == [] and dangling[0]['name'] == 'sha256:eeeeeeeeeeee'


def test_an_image_becomes_unused_when_its_stopped_containers_are_removed():
    inventory = fleet()
    for candidate in engine.reclaim_candidates('containers', inventory, protection()):
        inventory.forget(candidate)
    ids = [c['id'][7:8] for c in engine.reclaim_candidates('unused_images', inventory, protection())]
    assert ids == ['b', 'c', 'd', 'e', '9']  # c lost its `created` container too; f stays (paused, restarting)


def test_volumes_stage_keeps_used_foreign_and_protected_project_volumes():
    candidates = engine.reclaim_candidates('volumes', fleet(), protection(projects=['shop']))
    assert names(candidates) == ['data']
    assert names(engine.reclaim_candidates('volumes', fleet(), protection())) == ['data', 'shopdb']


def test_build_cache_stage_is_one_prune_of_the_unused_records():
    candidates = engine.reclaim_candidates('build_cache', fleet(), protection())
    assert [(c['kind'], c['refs']) for c in candidates] == [('build_cache', ['bc'])]
    assert engine.reclaim_candidates('build_cache', engine.EngineInventory(), protection()) == []
    with pytest.raises(ValueError):
        engine.reclaim_candidates('networks', fleet(), protection())


# ---------------------------------------------------------------- running the stages

def usage_of(used, capacity=1000 * MB):
    return dict(path='/d', total=capacity, used=used, free=capacity - used,
                percent=engine.usage_percent(used, capacity))


def test_check_mode_plan_runs_stages_in_order_and_stops_at_target():
    reader_calls = []

    def read():
        reader_calls.append(1)
        return fleet()

    # 900 MB used of 1000: target 76% needs 140 MB. Containers free 1 MB, the dangling image 50, the cache 5,
    # then the unused images in age order: b 20, c 30, d 40 (146 MB in all: stop), leaving 9 (70).
    reclaimer = engine.Reclaimer(read, protection(), 76)
    end = reclaimer.run(['unused_images', 'containers', 'build_cache', 'dangling_images'], usage_of(900 * MB))
    assert [stage['name'] for stage in reclaimer.stages] == ['containers', 'dangling_images', 'build_cache',
                                                             'unused_images']
    assert names(reclaimer.stages[1]['removed']) == ['sha256:eeeeeeeeeeee']  # dangling: 50 MB
    removed = [item['id'][7:8] for item in reclaimer.stages[3]['removed']]
    assert removed == ['b', 'c', 'd']
    assert reclaimer.estimated_bytes == sum(stage['estimated_bytes'] for stage in reclaimer.stages)
    assert reclaimer.estimated_bytes == (1 + 50 + 5 + 20 + 30 + 40) * MB
    assert end['percent'] <= 76 and end['used'] == 900 * MB - reclaimer.estimated_bytes
    assert all(item['bytes'] == 0 for stage in reclaimer.stages for item in stage['removed'])
    assert len(reader_calls) == 1  # a plan reads the engine once


def test_plan_does_nothing_when_already_at_target():
    reclaimer = engine.Reclaimer(fleet, protection(), 95)
    end = reclaimer.run(engine.RECLAIM_STAGES, usage_of(900 * MB))
    assert reclaimer.stages == [] and end['used'] == 900 * MB


def test_plan_that_cannot_reach_target_removes_all_it_may_and_no_more():
    keep = protection('reg/app:stopped', 'reg/app:current', 'reg/app:old', 'sha256:' + 'e' * 12, 'sha256:' + '9' * 12)
    reclaimer = engine.Reclaimer(fleet, keep, 10)
    end = reclaimer.run(['containers', 'unused_images'], usage_of(900 * MB))
    assert names(reclaimer.stages[0]['removed']) == ['c-dead', 'c-new', 'c-stop']
    assert reclaimer.stages[1]['removed'] == []
    assert end['percent'] > 10


def test_plan_with_min_free_bytes_stops_once_that_much_is_free_even_below_the_target():
    # 700 MB used of 1000, under a 95% target: 300 MB free, 350 MB asked. The container (1 MB), the dangling image
    # (50 MB): 351 MB free, and the plan stops there.
    reclaimer = engine.Reclaimer(fleet, protection(), 95, min_free_bytes=350 * MB)
    end = reclaimer.run(engine.RECLAIM_STAGES, usage_of(700 * MB))
    assert [stage['name'] for stage in reclaimer.stages] == ['containers', 'dangling_images']
    assert names(reclaimer.stages[1]['removed']) == ['sha256:eeeeeeeeeeee']
    assert end['free'] == 351 * MB and reclaimer.reached(end)


def test_plan_with_min_free_bytes_and_a_target_meets_both():
    # 900 MB used: 100 MB free meets 50 MB asked, but the 89% target still needs 10 MB: the container, then the
    # dangling image.
    reclaimer = engine.Reclaimer(fleet, protection(), 89, min_free_bytes=50 * MB)
    end = reclaimer.run(engine.RECLAIM_STAGES, usage_of(900 * MB))
    assert end['used'] == 849 * MB and reclaimer.reached(end)
    # Met already: nothing to do.
    idle = engine.Reclaimer(fleet, protection(), 95, min_free_bytes=100 * MB)
    assert idle.run(engine.RECLAIM_STAGES, usage_of(900 * MB))['used'] == 900 * MB and idle.stages == []


class FakeDisk:
    """A disk whose usage drops by what the fake engine frees, plus a few bytes of metadata."""

    def __init__(self, used):
        self.used = used

    def measure(self):
        return usage_of(self.used)


def test_real_run_measures_after_each_removal_and_reports_refusals():
    disk = FakeDisk(900 * MB)
    sizes = {'sha256:' + 'e' * 64: 50 * MB, 'sha256:' + '9' * 64: 70 * MB, 'sha256:' + 'b' * 64: 20 * MB}
    reads = []
    gone = []

    def read():
        reads.append(1)
        inventory = fleet()
        for candidate in gone:
            inventory.forget(candidate)
        return inventory

    def remove(candidate):
        if candidate['kind'] == 'container' and candidate['id'] == 'dead':
            return 'the engine refused: container is dead and busy'
        if candidate['kind'] == 'image' and candidate['id'].startswith('sha256:ccc'):
            return 'the engine refused: conflict'
        disk.used -= sizes.get(candidate['id'], MB if candidate['kind'] == 'container' else 0) + 4096
        gone.append(candidate)
        return None

    reclaimer = engine.Reclaimer(read, protection('reg/app:old'), 80, measure=disk.measure, remove=remove)
    end = reclaimer.run(['containers', 'unused_images'], usage_of(900 * MB))
    containers, images = reclaimer.stages
    assert names(containers['removed']) == ['c-new', 'c-stop']
    assert [(item['name'], item['reason']) for item in containers['skipped']] == [
        ('c-dead', 'the engine refused: container is dead and busy')]
    # The second stage reads the engine again: c lost its container, the dead container still holds b.
    assert len(reads) == 2
    assert [item['id'][7:8] for item in images['skipped']] == ['c']
    assert [item['id'][7:8] for item in images['removed']] == ['e', '9']
    assert images['removed'][0]['bytes'] == 50 * MB + 4096
    assert images['bytes'] == 120 * MB + 2 * 4096
    assert end == disk.measure() and end['percent'] <= 80
    assert images['estimated_bytes'] == 120 * MB


def test_real_run_uses_the_inventory_it_was_given_for_the_first_stage():
    disk = FakeDisk(900 * MB)
    reads = []
    reclaimer = engine.Reclaimer(lambda: reads.append(1) or fleet(), protection(), 0, measure=disk.measure,
                                 remove=lambda candidate: None)
    reclaimer.run(['containers', 'dangling_images'], usage_of(900 * MB), inventory=fleet())
    assert len(reads) == 1 and [s['name'] for s in reclaimer.stages] == ['containers', 'dangling_images']


# ---------------------------------------------------------------- removing from the engine

class FakeApi:
    def __init__(self, fail=None, image_left=None):
        self.calls = []
        self.fail = fail
        self.image_left = image_left

    def _call(self, *call):
        self.calls.append(call)
        if self.fail is not None:
            raise self.fail

    def remove_container(self, container_id, v=False, force=False):
        self._call('remove_container', container_id, v, force)

    def remove_image(self, ref, force=False, noprune=False):
        self._call('remove_image', ref, force, noprune)

    def remove_volume(self, name, force=False):
        self._call('remove_volume', name, force)

    def prune_builds(self, all=None):  # noqa: A002 - docker SDK's parameter name
        self._call('prune_builds', all)

    def inspect_image(self, image_id):
        if self.image_left is None:
            raise NotFound(404, 'Not Found', 'No such image: %s' % image_id)
        return self.image_left


class FakeClient:
    def __init__(self, api):
        self.api = api


def api_error(status, text):
    return (NotFound if status == 404 else EngineAPIError)(status, 'x', text)


def test_remove_image_by_id_without_force_when_one_repository():
    api = FakeApi()
    candidate = dict(kind='image', id='sha256:' + 'a' * 64, refs=['reg/app:1', 'reg/app:2', 'reg/app@' + DIGEST_A])
    assert engine.remove_reclaim_candidate(FakeClient(api), candidate) is None
    assert api.calls == [('remove_image', 'sha256:' + 'a' * 64, False, False)]


def test_remove_image_named_in_several_repositories_untags_each_name():
    api = FakeApi()
    candidate = dict(kind='image', id='sha256:' + 'a' * 64, refs=['reg/app:1', 'mirror/app:1', 'reg/app@' + DIGEST_A])
    assert engine.remove_reclaim_candidate(FakeClient(api), candidate) is None
    assert api.calls == [('remove_image', ref, False, False) for ref in candidate['refs']]


def test_remove_image_the_engine_kept_says_why():
    api = FakeApi(image_left=dict(RepoTags=['reg/app:new'], RepoDigests=[]))
    reason = engine.remove_reclaim_candidate(FakeClient(api), dict(kind='image', id='sha256:1', refs=['reg/app:1']))
    assert reason == 'the engine kept it (still named reg/app:new)'


def test_remove_other_kinds_never_force_and_keep_volumes_of_containers():
    api = FakeApi()
    client = FakeClient(api)
    engine.remove_reclaim_candidate(client, dict(kind='container', id='c1', refs=[]))
    engine.remove_reclaim_candidate(client, dict(kind='volume', id='v1', refs=[]))
    engine.remove_reclaim_candidate(client, dict(kind='build_cache', id='build cache', refs=['b1']))
    assert api.calls == [('remove_container', 'c1', False, False), ('remove_volume', 'v1', False),
                         ('prune_builds', True)]


def test_engine_refusals_become_reasons_but_no_space_raises():
    conflict = FakeApi(fail=api_error(409, 'conflict: unable to delete 1234 (cannot be forced) - image is being used'))
    assert engine.remove_reclaim_candidate(FakeClient(conflict), dict(kind='image', id='sha256:1', refs=[])) == (
        'the engine refused: conflict: unable to delete 1234 (cannot be forced) - image is being used')
    gone = FakeApi(fail=NotFound(404, 'Not Found', 'No such container: c1'))
    assert 'already gone' in engine.remove_reclaim_candidate(FakeClient(gone), dict(kind='container', id='c1', refs=[]))
    full = FakeApi(fail=api_error(500, 'write /var/lib/docker/x: no space left on device'))
    with pytest.raises(EngineAPIError):
        engine.remove_reclaim_candidate(FakeClient(full), dict(kind='container', id='c1', refs=[]))


def test_no_space_is_described_as_such():
    exc = api_error(500, 'failed to register layer: write /srv/payload.bin: no space left on device')
    assert engine.is_no_space_error(exc)
    assert engine.is_no_space_error(OSError(28, os.strerror(28)))
    text = engine.describe_engine_error(exc, 'unix:///run/x.sock', 'pull 127.0.0.1:5000/app:v1')
    assert 'no space left on device' in text and 'disk_reclaim' in text and 'unix:///run/x.sock' in text


# ---------------------------------------------------------------- reading the engine

class InventoryApi:
    """An engine answering /system/df, image inspect and history like Docker 20.10."""

    def __init__(self):
        self.history_calls = 0

    def df(self):
        return {
            'Images': [
                {'Id': 'sha256:' + 'a' * 64, 'RepoTags': ['reg/app:1'], 'RepoDigests': ['reg/app@' + DIGEST_A],
                 'Created': 10, 'Size': 30, 'SharedSize': 20},
                {'Id': 'sha256:' + 'b' * 64, 'RepoTags': ['<none>:<none>'], 'RepoDigests': ['<none>@<none>'],
                 'Created': 11, 'Size': 25, 'SharedSize': 20},
                {'Id': 'sha256:' + 'c' * 64, 'RepoTags': None, 'RepoDigests': None, 'Created': 12, 'Size': 9,
                 'SharedSize': -1},
            ],
            'Containers': [
                {'Id': 'c1', 'Names': ['/web'], 'ImageID': 'sha256:' + 'a' * 64, 'State': 'exited', 'SizeRw': 7,
                 'Created': 5},
                {'Id': 'c2', 'Names': ['/db'], 'ImageID': 'sha256:' + 'a' * 64, 'State': 'running', 'Created': 6},
            ],
            'Volumes': [{'Name': 'v', 'Driver': 'local', 'Labels': None, 'UsageData': {'Size': 4, 'RefCount': 0}}],
            'BuildCache': None,
        }

    def inspect_image(self, image_id):
        if image_id.startswith('sha256:c'):
            raise NotFound(404, 'Not Found', 'gone')
        return {'RootFS': {'Layers': ['sha256:base', 'sha256:' + image_id[7:8]]}}

    def history(self, image_id):
        self.history_calls += 1
        own = 10 if image_id.startswith('sha256:a') else 5
        return history(('COPY base /', 20), ('ENV X=1', 0), ('COPY own /', own))

    def inspect_container(self, container_id):
        return {'LogPath': '/nonexistent/%s-json.log' % container_id}


def test_read_engine_inventory_models_shared_layers_and_caches_them():
    api = InventoryApi()
    cache = {}
    inventory = engine.read_engine_inventory(FakeClient(api), cache)
    assert sorted(inventory.images) == ['sha256:' + 'a' * 64, 'sha256:' + 'b' * 64]  # c vanished meanwhile
    b = inventory.images['sha256:' + 'b' * 64]
    assert b['tags'] == [] and b['digests'] == []
    assert inventory.image_bytes('sha256:' + 'a' * 64) == 10  # the base layer is shared with b
    assert inventory.images_in_use() == {'sha256:' + 'a' * 64: ['web', 'db']}
    assert inventory.containers['c1']['bytes'] == 7 and inventory.containers['c2']['bytes'] == 0
    assert inventory.volumes['v']['bytes'] == 4 and inventory.build_cache == []
    engine.read_engine_inventory(FakeClient(api), cache)
    assert api.history_calls == 2  # layers read once per image


def test_protection_report_names_local_images_and_users():
    inventory = fleet()
    report = protection('reg/app:current', 'nothing/here:1').report(inventory)
    assert report[0] == dict(ref='reg/app:current', source='protect', image_ids=['sha256:' + 'c' * 64])
    assert report[1] == dict(ref='nothing/here:1', source='protect', image_ids=[])
    users = dict((entry['ref'], entry['source']) for entry in report[2:])
    assert users['reg/app:running'] == 'in use by container c-run'
    assert users['reg/app:older'] == 'in use by container c-pause, c-restart'
