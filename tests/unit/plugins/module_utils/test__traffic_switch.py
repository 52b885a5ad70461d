"""The pure part of traffic_switch: the targets, the ordered plan, and what counts as passing HAProxy's checks."""

from __future__ import annotations

import itertools

import pytest

from ansible_collections.safedeploy.compose.plugins.module_utils._haproxy import HAProxyRuntimeError
from ansible_collections.safedeploy.compose.plugins.module_utils._traffic_switch import (
    has_checks,
    other_server,
    passes_checks,
    plan,
    restart_checks,
    targets,
)

STATUS = {'ready': ('UP', 'L4OK'), 'drain': ('DRAIN', 'L4OK'), 'maint': ('MAINT', None)}


def server(state, weight=100, status=None, check_status=None):
    default_status, default_check = STATUS[state]
    return dict(state=state, weight=weight, status=status or default_status,
                check_status=check_status if status else default_check, port=18080, scur=0)


def moves(steps):
    return [(step['server'], step['from']['state'], step['to']['state'], step['to']['weight'], step['wait'])
            for step in steps]


@pytest.mark.parametrize('status, check_status, passing', [
    ('UP', 'L4OK', True),
    ('UP', 'L7OK', True),
    ('DRAIN', 'L6OK', True),
    ('no check', None, True),
    # just out of maint: up at once, on an initial or an old check result
    ('DRAIN 1/3', 'INI', False),
    ('UP 1/3', 'L4OK', False),
    # health forced down: the old L4OK stays until the next check
    ('DOWN', 'L4OK', False),
    ('DOWN 1/2', 'L4OK', False),
    ('DOWN', 'L4CON', False),
    ('DRAIN 2/3', 'L4CON', False),
    ('UP', 'L7STS', False),
    ('NOLB', 'L7OK', False),
    ('MAINT', None, False),
    (None, None, False),
])
def test_passes_checks(status, check_status, passing):
    assert passes_checks(dict(status=status, check_status=check_status)) is passing


def test_passes_checks_of_nothing():
    assert passes_checks(None) is False and passes_checks({}) is False


@pytest.mark.parametrize('status, passing', [('no check', True), ('DRAIN', True), ('UP', True), ('DOWN', False),
                                             ('MAINT', False)])
def test_a_server_without_checks_passes_while_it_is_up(status, passing):
    # drained, such a server shows DRAIN with no check_status (HAProxy 2.6)
    assert passes_checks(dict(status=status, check_status=None), checks=False) is passing


@pytest.mark.parametrize('check_state, checks', [(6, True), (14, True), ('6', True), (0, False), (8, False),
                                                 (None, True), ('-', True)])
def test_has_checks(check_state, checks):
    assert has_checks(check_state) is checks


def test_a_server_without_checks_is_not_waited_for():
    current = dict(blue=server('ready', status='no check', check_status=None),
                   green=server('drain', status='DRAIN', check_status=None))
    current['green']['checks'] = False
    assert moves(plan('green', 100, current))[0] == ('green', 'drain', 'ready', 100, None)


def test_other_server():
    assert other_server('blue') == 'green' and other_server('green') == 'blue'


def test_targets():
    current = dict(blue=server('ready', 40), green=server('maint', 7))
    assert targets('green', 100, current) == dict(green=dict(state='ready', weight=100),
                                                  blue=dict(state='maint', weight=40))
    assert targets('green', 25, current) == dict(green=dict(state='ready', weight=25), blue=dict(state='ready', weight=75))
    assert targets('blue', 0, current) == dict(blue=dict(state='ready', weight=0), green=dict(state='ready', weight=100))


def test_flip_raises_green_checks_it_then_drains_blue():
    steps = plan('green', 100, dict(blue=server('ready'), green=server('maint')))
    assert moves(steps) == [('green', 'maint', 'drain', 100, 'checks'), ('green', 'drain', 'ready', 100, None),
                            ('blue', 'ready', 'drain', 100, 'sessions'), ('blue', 'drain', 'maint', 100, None)]
    assert steps[0]['from'] == dict(state='maint', weight=100)


def test_a_flip_that_leaves_the_other_server_drained_keeps_it_checked_and_back_needs_no_fresh_checks():
    steps = plan('green', 100, dict(blue=server('ready'), green=server('maint')), leave='drain')
    assert moves(steps) == [('green', 'maint', 'drain', 100, 'checks'), ('green', 'drain', 'ready', 100, None),
                            ('blue', 'ready', 'drain', 100, 'sessions')]
    # and back: blue, drained and passing its checks, is made ready at once (no 'checks' wait)
    back = plan('blue', 100, dict(blue=server('drain'), green=server('ready')), leave='drain')
    assert moves(back) == [('blue', 'drain', 'ready', 100, None), ('green', 'ready', 'drain', 100, 'sessions')]
    # a drained server whose checks fail is waited for, as one out of maint would be
    failing = plan('blue', 100, dict(blue=server('drain', status='DOWN', check_status='L4CON'), green=server('ready')))
    assert moves(failing)[0] == ('blue', 'drain', 'drain', 100, 'checks')
    assert plan('green', 100, dict(blue=server('drain'), green=server('ready')), leave='drain') == []
    assert targets('green', 100, dict(blue=server('ready', 40), green=server('maint')), leave='drain')['blue'] == dict(
        state='drain', weight=40)


def test_nothing_to_do_when_already_as_asked():
    assert plan('green', 100, dict(blue=server('maint', 30), green=server('ready'))) == []
    assert plan('green', 25, dict(blue=server('ready', 75), green=server('ready', 25))) == []
    # as asked but failing its checks: nothing the switch can change (the module warns)
    assert plan('green', 100, dict(blue=server('maint'), green=server('ready', status='DOWN', check_status='L4CON'))) == []


def test_already_drained_server_only_waits_for_its_sessions():
    steps = plan('green', 100, dict(blue=server('drain'), green=server('ready')))
    assert moves(steps) == [('blue', 'drain', 'drain', 100, 'sessions'), ('blue', 'drain', 'maint', 100, None)]


def test_a_server_out_of_maint_that_fails_its_checks_is_waited_for_before_it_is_made_ready():
    steps = plan('green', 100, dict(blue=server('ready'), green=server('drain', status='DOWN', check_status='L4CON')))
    assert moves(steps)[:2] == [('green', 'drain', 'drain', 100, 'checks'), ('green', 'drain', 'ready', 100, None)]


def test_share_keeps_both_ready_and_raises_before_it_lowers():
    assert moves(plan('green', 25, dict(blue=server('ready'), green=server('maint')))) == [
        ('green', 'maint', 'drain', 100, 'checks'), ('green', 'drain', 'ready', 25, None),
        ('blue', 'ready', 'ready', 75, None)]
    # to 0 from a flip: blue comes back (checked) before green's weight goes to 0
    assert moves(plan('green', 0, dict(blue=server('maint'), green=server('ready')))) == [
        ('blue', 'maint', 'drain', 100, 'checks'), ('blue', 'drain', 'ready', 100, None),
        ('green', 'ready', 'ready', 0, None)]
    assert moves(plan('green', 100, dict(blue=server('ready', 75), green=server('ready', 25)))) == [
        ('green', 'ready', 'ready', 100, None), ('blue', 'ready', 'drain', 75, 'sessions'),
        ('blue', 'drain', 'maint', 75, None)]


def takes_traffic(setting):
    return any(entry['state'] == 'ready' and entry['weight'] > 0 for entry in setting.values())


@pytest.mark.parametrize('to, share, leave', list(itertools.product(('blue', 'green'), (0, 1, 25, 50, 99, 100),
                                                                    ('maint', 'drain'))))
def test_every_plan_reaches_the_targets_and_never_leaves_the_route_without_a_server(to, share, leave):
    for blue, green in itertools.product(itertools.product(('ready', 'drain', 'maint'), (0, 50, 100)), repeat=2):
        current = dict(blue=server(*blue), green=server(*green))
        steps = plan(to, share, current, leave)
        setting = dict((name, dict(state=current[name]['state'], weight=current[name]['weight'])) for name in current)
        had_traffic = takes_traffic(setting)
        checked = set()
        for step in steps:
            assert step['from'] == setting[step['server']], (current, steps)
            setting[step['server']] = dict(step['to'])
            if step['wait'] == 'checks':
                checked.add(step['server'])
            if step['to']['state'] == 'ready' and current[step['server']]['state'] == 'maint':
                assert step['server'] in checked, (current, steps)  # no traffic to an unchecked server
            if had_traffic:
                assert takes_traffic(setting), (current, steps)
        assert setting == targets(to, share, current, leave), (current, steps)
        assert bool(steps) == (dict((name, dict(state=current[name]['state'], weight=current[name]['weight']))
                                    for name in current) != targets(to, share, current, leave))


class RecordingAPI(object):
    def __init__(self, answer='\n'):
        self.answer = answer
        self.sent = []

    def command(self, line):
        self.sent.append(line)
        return self.answer


def test_restart_checks_sends_health_down():
    api = RecordingAPI()
    restart_checks(api, 'shop', 'green')
    assert api.sent == ['set server shop/green health down']


def test_restart_checks_reports_a_refusal_and_refuses_bad_names():
    with pytest.raises(HAProxyRuntimeError, match='HAProxy refused .*No such server'):
        restart_checks(RecordingAPI('No such server.\n'), 'shop', 'green')
    api = RecordingAPI()
    with pytest.raises(HAProxyRuntimeError, match='letters, digits'):
        restart_checks(api, 'shop;shutdown', 'green')
    assert api.sent == []
