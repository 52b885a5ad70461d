"""compose_pin's override file: its default path per compose project, the migration of the shared
compose.release.yml of earlier releases, and the bounded logging it gives services (log_bound)."""

from __future__ import annotations

import json

import pytest
import yaml

from ansible.module_utils.testing import patch_module_args

from ansible_collections.safedeploy.compose.plugins.module_utils._compose import compose_hash, with_images
from ansible_collections.safedeploy.compose.plugins.modules import compose_pin
from ansible_collections.safedeploy.compose.plugins.modules.compose_pin import (
    ComposePin, check_log_bound, default_override_file, log_config, override_project, render_override,
    services_to_bound,
)
from ansible_collections.safedeploy.compose.plugins.modules.compose_up import log_config_unbounded

DIGEST = 'sha256:' + 'a' * 64


class Failed(Exception):
    pass


def pin_for(tmp_path, monkeypatch, check_mode=False, **params):
    """A ComposePin on tmp_path with `params` (and a tag), as the module would make it; fail_json raises Failed."""
    args = dict(project_src=str(tmp_path), project_name='shop', tag='r1', _ansible_check_mode=check_mode)
    args.update(params)
    with patch_module_args(args):
        module = compose_pin.new_module()

    def fail_json(**kwargs):
        raise Failed(kwargs['msg'])
    monkeypatch.setattr(module, 'fail_json', fail_json)
    return ComposePin(module)


# ---------------------------------------------------------------- the default path

def test_default_override_is_one_file_per_project(tmp_path, monkeypatch):
    shop = pin_for(tmp_path, monkeypatch, project_name='shop')
    blog = pin_for(tmp_path, monkeypatch, project_name='blog')
    assert shop.override_file == str(tmp_path / 'compose.shop.release.yml')
    assert blog.override_file == str(tmp_path / 'compose.blog.release.yml')
    assert shop.result['override_file'] == shop.override_file
    assert shop.override_file != blog.override_file


def test_explicit_override_file_still_wins(tmp_path, monkeypatch):
    pin = pin_for(tmp_path, monkeypatch, override_file='compose.release.yml')
    assert pin.override_file == str(tmp_path / 'compose.release.yml')
    pin = pin_for(tmp_path, monkeypatch, override_file='/elsewhere/pins.yml')
    assert pin.override_file == '/elsewhere/pins.yml'


@pytest.mark.parametrize('name', ['../etc', 'a/b', '.hidden', '-x', '', 'shop.web'])
def test_a_project_name_that_is_no_file_name_needs_override_file(tmp_path, monkeypatch, name):
    assert default_override_file(name) is None
    with pytest.raises(Failed, match='cannot name the default override file.*give override_file'):
        pin_for(tmp_path, monkeypatch, project_name=name)
    # with an explicit override_file the name is compose's business
    assert pin_for(tmp_path, monkeypatch, project_name=name, override_file='pins.yml').override_file.endswith('/pins.yml')


def test_header_names_the_project():
    text = render_override('r1', 'shop', {'web': 'reg/web:r1@' + DIGEST})
    assert override_project(text.split('\n', 1)[0]) == 'shop'
    assert override_project('services:\n  web: {}\n') is None


# ---------------------------------------------------------------- migration of compose.release.yml

def legacy(tmp_path, project):
    path = tmp_path / 'compose.release.yml'
    path.write_text(render_override('r0', project, {'web': 'reg/web:r0@' + DIGEST}))
    return path


def test_this_projects_legacy_override_is_removed(tmp_path, monkeypatch):
    path = legacy(tmp_path, 'shop')
    pin = pin_for(tmp_path, monkeypatch)
    pin.remove_legacy_override([str(tmp_path / 'compose.yaml')])
    assert not path.exists()
    assert pin.result['legacy_override_removed'] == str(path)
    assert pin.result['changed'] is True


def test_check_mode_only_says_it_would_remove_it(tmp_path, monkeypatch):
    path = legacy(tmp_path, 'shop')
    pin = pin_for(tmp_path, monkeypatch, check_mode=True)
    pin.remove_legacy_override([])
    assert path.exists()
    assert pin.result['legacy_override_removed'] == str(path) and pin.result['changed'] is True


@pytest.mark.parametrize('content', [None, 'other project', 'not generated'])
def test_a_legacy_file_that_is_not_this_projects_stays(tmp_path, monkeypatch, content):
    path = tmp_path / 'compose.release.yml'
    if content == 'other project':
        path = legacy(tmp_path, 'blog')
    elif content == 'not generated':
        path.write_text('services:\n  web:\n    image: mine:1\n')
    before = path.read_bytes() if path.exists() else None
    pin = pin_for(tmp_path, monkeypatch)
    pin.remove_legacy_override([])
    assert (path.read_bytes() if path.exists() else None) == before
    assert pin.result['legacy_override_removed'] is None and pin.result['changed'] is False


def test_an_explicit_override_file_leaves_the_legacy_file_alone(tmp_path, monkeypatch):
    path = legacy(tmp_path, 'shop')
    pin = pin_for(tmp_path, monkeypatch, override_file='pins.yml')
    pin.remove_legacy_override([])
    assert path.exists() and pin.result['legacy_override_removed'] is None


def test_a_legacy_named_compose_file_of_the_user_is_never_removed(tmp_path, monkeypatch):
    path = legacy(tmp_path, 'shop')
    pin = pin_for(tmp_path, monkeypatch)
    pin.remove_legacy_override([str(path)])
    assert path.exists()


# ---------------------------------------------------------------- log_bound

@pytest.mark.parametrize('size', ['10m', '100k', '1g', '512', '20M'])
def test_log_bound_sizes_accepted(size):
    assert check_log_bound({'max_size': size, 'max_file': 3, 'driver': 'json-file'}) == []


@pytest.mark.parametrize('size', ['10 mb', '0m', '-1', '10mb', 'ten', '', '1.5m', '10t'])
def test_log_bound_bad_sizes_are_named(size):
    problems = check_log_bound({'max_size': size, 'max_file': 3, 'driver': 'json-file'})
    assert problems and 'log_bound.max_size must be a size such as 10m' in problems[0]
    assert json.dumps(size) in problems[0]


def test_log_bound_max_file_at_least_one():
    assert 'log_bound.max_file must be 1 or more' in check_log_bound({'max_size': '1m', 'max_file': 0})[0]


def test_bad_log_bound_fails_before_anything(tmp_path, monkeypatch):
    with pytest.raises(Failed, match=r'log_bound.max_size must be .* got "lots".*Nothing was written'):
        pin_for(tmp_path, monkeypatch, log_bound={'max_size': 'lots'})


def test_log_bound_defaults(tmp_path, monkeypatch):
    pin = pin_for(tmp_path, monkeypatch, log_bound={'max_size': '10M'})
    assert log_config(pin.params['log_bound']) == {'driver': 'json-file',
                                                   'options': {'max-size': '10m', 'max-file': '3'}}


def test_only_services_without_their_own_logging_are_bounded():
    config = {'services': {'web': {'image': 'a'}, 'db': {'image': 'b', 'logging': {'driver': 'journald'}},
                           'worker': {'image': 'c'}}}
    bound = {'max_size': '1m', 'max_file': 2, 'driver': 'json-file'}
    assert services_to_bound(config, bound) == ['web', 'worker']
    assert services_to_bound(config, None) == []


def test_override_with_logging_renders_and_parses():
    logging = {'web': log_config({'max_size': '1m', 'max_file': 2, 'driver': 'local'})}
    text = render_override('r1', 'shop', {'web': 'reg/web:r1@' + DIGEST, 'db': 'reg/db:1@' + DIGEST}, logging=logging)
    data = yaml.safe_load(text)
    assert data['services']['web'] == {'image': 'reg/web:r1@' + DIGEST,
                                       'logging': {'driver': 'local', 'options': {'max-file': '2', 'max-size': '1m'}}}
    assert data['services']['db'] == {'image': 'reg/db:1@' + DIGEST}
    assert text == render_override('r1', 'shop', {'db': 'reg/db:1@' + DIGEST, 'web': 'reg/web:r1@' + DIGEST},
                                   logging=logging)


def test_compose_hash_changes_with_the_bound():
    config = {'services': {'web': {'image': 'a'}}}
    logging = {'web': log_config({'max_size': '1m', 'max_file': 2, 'driver': 'json-file'})}
    plain = with_images(config, {'web': 'a@' + DIGEST})
    bounded = with_images(config, {'web': 'a@' + DIGEST}, logging)
    assert bounded['services']['web']['logging'] == logging['web']
    assert 'logging' not in config['services']['web']  # a copy
    assert compose_hash(plain) != compose_hash(bounded)


# ---------------------------------------------------------------- compose_up's unbounded logs

@pytest.mark.parametrize('log_config_,unbounded', [
    ({'Type': 'json-file', 'Config': {}}, True),
    ({'Type': 'json-file', 'Config': {'max-file': '3'}}, True),
    ({'Type': 'json-file', 'Config': {'max-size': '-1'}}, True),
    ({'Type': 'json-file', 'Config': {'max-size': '10m'}}, False),
    ({'Type': 'local', 'Config': {}}, False),
    ({'Type': 'journald', 'Config': {}}, False),
    ({'Type': 'none'}, False),
    (None, False),
])
def test_unbounded_log_config(log_config_, unbounded):
    assert log_config_unbounded(log_config_) is unbounded


def test_slotted_services_are_scaled_to_zero_in_the_override_and_the_hash():
    pins = {'web': 'r/web:1@sha256:' + 'a' * 64, 'worker': 'r/worker:1@sha256:' + 'b' * 64}
    text = render_override('r1', 'shop', pins, slotted=['web'])
    rendered = yaml.safe_load(text)
    assert rendered['services']['web'] == {'image': pins['web'], 'scale': 0}
    assert rendered['services']['worker'] == {'image': pins['worker']}
    config = {'services': {'web': {'image': 'r/web:1'}, 'worker': {'image': 'r/worker:1'}}}
    assert compose_hash(with_images(config, pins, scale={'web': 0})) != compose_hash(with_images(config, pins))
    assert yaml.safe_load(render_override('r1', 'shop', pins))['services']['web'] == {'image': pins['web']}


def test_without_pyyaml_the_pin_stops_before_anything_naming_it(tmp_path, monkeypatch):
    """Without PyYAML the env_file entries of the compose files cannot be found: a snapshot would silently lack them."""
    (tmp_path / 'compose.yaml').write_text('services:\n  web:\n    image: 127.0.0.1:5000/web:r1\n    env_file: web.env\n')
    monkeypatch.setattr(compose_pin, 'yaml', None)
    pin = pin_for(tmp_path, monkeypatch)
    with pytest.raises(Failed) as info:
        pin.run()
    assert 'PyYAML' in str(info.value) and 'python3-yaml' in str(info.value) and 'Nothing was written' in str(info.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == ['compose.yaml']
