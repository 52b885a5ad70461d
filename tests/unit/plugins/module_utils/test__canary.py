"""The verdict on a canary from two `show stat` snapshots, and the observation loop, without HAProxy."""

from __future__ import annotations

import pytest

from ansible_collections.safedeploy.compose.plugins.module_utils._canary import (
    counter_reset,
    is_down,
    judge,
    number,
    observe,
    passed,
    server_window,
    stable_of,
)


def http(stot=None, ok=0, e5=0, e4=0, other=0, econ=0, eresp=0, wredis=0, wretr=None, rtime=2, status='UP'):
    """The counters of one HTTP server, as RuntimeAPI.stats() gives them (stot: by default one session a request)."""
    if stot is None:
        stot = ok + e5 + e4 + other + econ + eresp + wredis
    return dict(status=status, weight=100, scur=0, stot=stot, hrsp_1xx=0, hrsp_2xx=ok, hrsp_3xx=0, hrsp_4xx=e4,
                hrsp_5xx=e5, hrsp_other=other, econ=econ, eresp=eresp, wretr=wredis if wretr is None else wretr,
                wredis=wredis, rtime=rtime)


def tcp(stot=0, econ=0, eresp=0, status='UP'):
    """The counters of one TCP server: no response classes, rtime 0."""
    return dict(status=status, weight=100, scur=0, stot=stot, hrsp_1xx=None, hrsp_2xx=None, hrsp_3xx=None,
                hrsp_4xx=None, hrsp_5xx=None, hrsp_other=None, econ=econ, eresp=eresp, wretr=0, wredis=0, rtime=0)


def snap(blue, green, at=0.0, worker='100'):
    return dict(frontend={}, backend={}, servers=dict(blue=blue, green=green), at=at, worker=worker)


START = snap(http(stot=1000, ok=1000), http(stot=10, ok=10), at=100.0)


def after(blue, green, seconds=30.0, worker='100'):
    return snap(blue, green, at=100.0 + seconds, worker=worker)


# ---------------------------------------------------------------- deltas

def test_http_requests_count_every_response_class_and_the_failures_errors_count_5xx_and_failures():
    before = http(stot=50, ok=40, e5=2, e4=3, other=1, econ=1, eresp=2)
    later = http(stot=90, ok=70, e5=6, e4=5, other=2, econ=3, eresp=5, rtime=17)
    window = server_window('green', before, later)
    # responses 30 + 4 + 2 + 1, connection errors 2, response errors 3
    assert window['requests'] == 37 + 2 + 3
    assert window['errors'] == 4 + 2 + 3
    assert window['error_ratio'] == pytest.approx(9 / 42.0)
    assert window['rtime_ms'] == 17 and window['status'] == 'UP' and window['server'] == 'green'


def test_requests_retried_on_the_other_server_are_the_canarys_errors():
    # HAProxy 2.6 with the routes' retries, a canary answering 500 to a GET: the client gets the stable server's 200,
    # the canary shows no 5xx and no error, only wretr and wredis (26 of 26 in the hand check); a refused connection
    # shows only wredis. Both are counted once, by wredis.
    answered_500 = server_window('green', http(ok=10), http(ok=10, wredis=26))
    refused = server_window('green', http(ok=10), http(ok=10, wredis=26, wretr=0))
    assert answered_500['requests'] == answered_500['errors'] == 26
    assert refused['requests'] == refused['errors'] == 26 and refused['error_ratio'] == 1.0
    verdict = judge(snap(http(ok=100), http(ok=10)), after(http(ok=200), http(ok=10, wredis=30)), 'green')
    assert verdict['verdict'] == 'fail' and verdict['canary']['errors'] == 30, verdict


def test_a_wredis_going_down_is_a_counter_reset():
    message = counter_reset(snap(http(ok=5), http(stot=20, ok=5, wredis=4)), snap(http(ok=6), http(stot=21, ok=6, wredis=1)))
    assert 'the counter wredis of server green went down from 4 to 1' in message, message


def test_tcp_requests_are_sessions_and_errors_connection_and_response_errors():
    window = server_window('blue', tcp(stot=10, econ=1), tcp(stot=60, econ=3, eresp=1))
    assert window['requests'] == 50
    assert window['errors'] == 3
    assert window['error_ratio'] == pytest.approx(0.06)
    assert window['rtime_ms'] is None  # HAProxy measures none on TCP


def test_no_requests_no_ratio():
    assert server_window('blue', http(ok=5), http(ok=5))['error_ratio'] is None


def test_the_stable_server_is_the_other_one():
    assert stable_of('green') == 'blue' and stable_of('blue') == 'green'


def test_down_statuses():
    assert is_down('DOWN') and is_down('DOWN 1/2')
    assert not is_down('UP') and not is_down('UP 1/3') and not is_down('MAINT') and not is_down('DRAIN')
    assert not is_down(None)


def test_numbers_in_sentences():
    assert number(0.25) == '0.25' and number(0.01) == '0.01' and number(3) == '3' and number(76.0) == '76'
    assert number(1 / 3.0) == '0.3333' and number(0.0) == '0'


# ---------------------------------------------------------------- error ratios

def test_a_clean_canary_passes():
    result = judge(START, after(http(stot=1090, ok=1090), http(stot=40, ok=40)), 'green')
    assert result['verdict'] == 'pass' and result['reasons'] == []
    assert result['canary']['requests'] == 30 and result['canary']['errors'] == 0
    assert result['stable']['server'] == 'blue' and result['stable']['requests'] == 90
    assert result['window'] == 30.0


def test_error_ratio_above_the_absolute_limit_fails_naming_the_numbers():
    result = judge(START, after(http(stot=1090, ok=1090), http(stot=50, ok=40, e5=10)), 'green', max_error_ratio=0.1,
                   max_error_ratio_delta=1.0)
    assert result['verdict'] == 'fail'
    assert result['reasons'] == ["the canary green's error ratio is 0.25 (10 errors in 40 requests), above "
                                 "max_error_ratio 0.1"]
    assert result['canary']['error_ratio'] == 0.25


def test_error_ratio_at_the_absolute_limit_passes():
    result = judge(START, after(http(stot=1090, ok=1090), http(stot=50, ok=46, e5=4)), 'green', max_error_ratio=0.1,
                   max_error_ratio_delta=1.0)
    assert result['verdict'] == 'pass', result['reasons']


def test_connection_and_response_errors_count_against_the_canary():
    result = judge(START, after(http(stot=1090, ok=1090), http(stot=50, ok=46, econ=2, eresp=2)), 'green',
                   max_error_ratio=0.05, max_error_ratio_delta=1.0)
    assert result['verdict'] == 'fail'
    assert result['canary']['errors'] == 4 and result['canary']['requests'] == 40


def test_error_ratio_against_the_stable_one():
    # both above 1%, the canary no worse than the stable one by more than the delta: a problem they share passes
    shared = judge(START, after(http(ok=1026, e5=4), http(ok=36, e5=4)), 'green', max_error_ratio=0.2,
                   max_error_ratio_delta=0.05)
    assert shared['verdict'] == 'pass', shared['reasons']
    worse = judge(START, after(http(ok=1090, e5=10), http(ok=40, e5=10)), 'green', max_error_ratio=0.5,
                  max_error_ratio_delta=0.05)
    assert worse['verdict'] == 'fail'
    assert worse['reasons'] == ["the canary green's error ratio 0.25 exceeds the stable blue's 0.1 by 0.15, more than "
                                "max_error_ratio_delta 0.05"]


def test_ratio_delta_exactly_at_the_limit_passes_despite_float_arithmetic():
    # 0.04 - 0.03 is 0.010000000000000002 in floats
    result = judge(START, after(http(ok=1000 + 97, e5=3), http(ok=10 + 96, e5=4)), 'green', max_error_ratio=0.5,
                   max_error_ratio_delta=0.01)
    assert result['canary']['error_ratio'] == 0.04 and result['stable']['error_ratio'] == 0.03
    assert result['verdict'] == 'pass', result['reasons']


def test_the_delta_is_not_applied_when_the_stable_one_served_nothing():
    result = judge(START, after(http(stot=1000, ok=1000), http(ok=36, e5=4)), 'green', max_error_ratio=0.2,
                   max_error_ratio_delta=0.01)
    assert result['stable']['requests'] == 0 and result['stable']['error_ratio'] is None
    assert result['verdict'] == 'pass', result['reasons']


def test_both_limits_give_two_reasons():
    result = judge(START, after(http(ok=1100), http(ok=20, e5=20)), 'green')
    assert result['verdict'] == 'fail' and len(result['reasons']) == 2
    assert 'max_error_ratio 0.01' in result['reasons'][0] and 'max_error_ratio_delta 0.01' in result['reasons'][1]


def test_blue_can_be_the_canary():
    result = judge(START, after(http(ok=1000 + 20, e5=20), http(ok=100)), 'blue')
    assert result['verdict'] == 'fail' and result['canary']['server'] == 'blue' and result['stable']['server'] == 'green'
    assert "the canary blue's error ratio is 0.5" in result['reasons'][0]


# ---------------------------------------------------------------- latency

def test_latency_above_the_absolute_limit_fails():
    result = judge(START, after(http(ok=1100), http(ok=40, rtime=250)), 'green', max_latency_ms=200)
    assert result['verdict'] == 'fail'
    assert result['reasons'] == ["the canary green's average response time is 250 ms (HAProxy's rtime), above "
                                 "max_latency_ms 200"]
    assert result['canary']['rtime_ms'] == 250
    at_limit = judge(START, after(http(ok=1100), http(ok=40, rtime=200)), 'green', max_latency_ms=200)
    assert at_limit['verdict'] == 'pass'
    unlimited = judge(START, after(http(ok=1100), http(ok=40, rtime=5000)), 'green')
    assert unlimited['verdict'] == 'pass'


def test_latency_against_the_stable_one():
    result = judge(START, after(http(ok=1100, rtime=10), http(ok=40, rtime=30)), 'green', max_latency_ratio=2)
    assert result['verdict'] == 'fail'
    assert result['reasons'] == ["the canary green's average response time 30 ms is 3 times the stable blue's 10 ms, "
                                 "above max_latency_ratio 2"]
    close = judge(START, after(http(ok=1100, rtime=10), http(ok=40, rtime=15)), 'green', max_latency_ratio=1.5)
    assert close['verdict'] == 'pass'


def test_latency_ratio_not_applied_when_the_stable_one_has_no_rtime():
    result = judge(START, after(http(ok=1100, rtime=0), http(ok=40, rtime=30)), 'green', max_latency_ratio=2)
    assert result['verdict'] == 'pass'


def test_tcp_route_judged_by_sessions_latency_limits_not_applied():
    start = snap(tcp(stot=100), tcp(stot=10), at=0.0)
    clean = judge(start, snap(tcp(stot=190), tcp(stot=40), at=10.0), 'green', max_latency_ms=1, max_latency_ratio=1)
    assert clean['verdict'] == 'pass' and clean['canary']['requests'] == 30 and clean['canary']['rtime_ms'] is None
    refused = judge(start, snap(tcp(stot=190), tcp(stot=40, econ=6), at=10.0), 'green')
    assert refused['verdict'] == 'fail'
    assert "error ratio is 0.2 (6 errors in 30 requests)" in refused['reasons'][0]


# ---------------------------------------------------------------- DOWN, too few requests, resets

def test_a_canary_down_fails_even_with_few_requests():
    result = judge(START, after(http(ok=1100), http(ok=12, status='DOWN')), 'green')
    assert result['verdict'] == 'fail'
    assert result['reasons'] == ['the canary green was DOWN during the window (its health checks fail)']
    between = judge(START, after(http(ok=1100), http(ok=40)), 'green', down_between=True)
    assert between['verdict'] == 'fail'
    at_start = judge(snap(http(), http(status='DOWN 1/2')), after(http(ok=90), http(ok=30)), 'green')
    assert at_start['verdict'] == 'fail'


def test_a_stable_one_down_does_not_fail_the_canary():
    result = judge(START, after(http(ok=1010, status='DOWN'), http(ok=100)), 'green')
    assert result['verdict'] == 'pass' and result['stable']['status'] == 'DOWN'


def test_too_few_requests_is_inconclusive_whatever_the_errors():
    result = judge(START, after(http(ok=1100), http(ok=15, e5=4)), 'green', min_requests=20)
    assert result['verdict'] == 'inconclusive'
    assert result['reasons'] == ['the canary green (UP) served 9 requests in 30 s, fewer than min_requests 20: too few '
                                 'to judge']
    enough = judge(START, after(http(ok=1100), http(ok=15, e5=4)), 'green', min_requests=9)
    assert enough['verdict'] == 'fail'


def test_a_reload_between_the_snapshots_is_inconclusive_not_a_verdict():
    # the new worker's counters start from zero: every delta is negative
    result = judge(START, after(http(stot=80, ok=70, e5=10), http(stot=5, ok=5), worker='200'), 'green')
    assert result['verdict'] == 'inconclusive'
    assert 'worker changed from pid 100 to pid 200' in result['reasons'][0]
    assert result['canary']['requests'] == 0 and result['canary']['error_ratio'] is None


def test_a_counter_going_down_is_a_reset_even_without_a_worker_change():
    later = after(http(stot=1100, ok=1100), http(stot=3, ok=3, e5=3), worker=None)
    assert 'the counter stot of server green went down from 10 to 3' in counter_reset(START, later)
    result = judge(START, later, 'green', min_requests=1)
    assert result['verdict'] == 'inconclusive' and result['reasons'][0].startswith('the counter stot')
    # a reset the deltas cannot show (the new worker already served more): only the pid tells
    hidden = after(http(stot=1500, ok=1500), http(stot=200, ok=100, e5=100), worker='200')
    assert judge(START, hidden, 'green')['verdict'] == 'inconclusive'
    assert counter_reset(START, after(http(stot=1001, ok=1001), http(stot=11, ok=11))) is None


def test_a_reset_does_not_hide_a_canary_down():
    result = judge(START, after(http(), http(status='DOWN'), worker='200'), 'green')
    assert result['verdict'] == 'fail'


def test_passed_follows_the_policy():
    assert passed('pass', 'fail') and not passed('fail', 'pass')
    assert passed('inconclusive', 'pass')
    assert not passed('inconclusive', 'fail') and not passed('inconclusive', 'extend')


# ---------------------------------------------------------------- the observation

class Route(object):
    """A route whose counters move with a fake clock: `rate` canary and `stable_rate` stable requests a second."""

    def __init__(self, rate=1.0, stable_rate=3.0, errors=0.0, events=None):
        self.now = 0.0
        self.rate, self.stable_rate, self.errors = rate, stable_rate, errors
        self.events = events or {}  # {second: callable(route)} applied at the first reading at or after it
        self.worker = '100'
        self.offset = 0.0  # seconds of traffic the current worker has not seen (it started then)
        self.status = 'UP'
        self.reads = []

    def sleep(self, seconds):
        assert seconds >= 0
        self.now += seconds

    def read(self):
        for second in sorted(self.events):
            if self.now >= second:
                self.events.pop(second)(self)
        served = self.now - self.offset
        canary = int(served * self.rate)
        errors = int(served * self.rate * self.errors)
        stable = int(served * self.stable_rate)
        self.reads.append(self.now)
        return snap(http(stot=stable, ok=stable), http(stot=canary, ok=canary - errors, e5=errors, status=self.status),
                    at=self.now, worker=self.worker)


def test_observe_reads_through_the_window_and_judges_its_ends():
    route = Route(rate=10.0)
    result, notes = observe(route.read, 'green', 4.0, sleep=route.sleep)
    assert result['verdict'] == 'pass' and result['passed'] and notes == []
    assert result['window'] == 4.0 and result['canary']['requests'] == 40
    assert route.reads == [0.0, 1.0, 2.0, 3.0, 4.0]  # a reading a second at most


def test_observe_sees_a_canary_down_between_the_ends():
    def down(route):
        route.status = 'DOWN'

    def up(route):
        route.status = 'UP'
    route = Route(rate=10.0, events={2.0: down, 3.0: up})
    result, _notes = observe(route.read, 'green', 4.0, sleep=route.sleep)
    assert result['verdict'] == 'fail' and not result['passed']
    assert result['canary']['status'] == 'UP'  # up again at the end; the reading between saw it down


@pytest.mark.parametrize('policy, verdict_passed', [('fail', False), ('pass', True)])
def test_too_few_requests_with_fail_or_pass_stops_after_one_window(policy, verdict_passed):
    route = Route(rate=1.0)
    result, _notes = observe(route.read, 'green', 4.0, inconclusive=policy, sleep=route.sleep, min_requests=20)
    assert result['verdict'] == 'inconclusive' and result['passed'] is verdict_passed
    assert result['window'] == 4.0 and route.now == 4.0
    assert 'served 4 requests in 4 s, fewer than min_requests 20' in result['reasons'][0]


def test_too_few_requests_with_extend_observes_more_windows_until_enough():
    route = Route(rate=2.0)
    result, _notes = observe(route.read, 'green', 4.0, max_window=20.0, inconclusive='extend', sleep=route.sleep,
                             min_requests=20)
    # 8 requests after 4 s, 16 after 8, 24 after 12: judged then, against the first reading
    assert result['verdict'] == 'pass' and result['passed']
    assert result['window'] == 12.0 and result['canary']['requests'] == 24


def test_too_few_requests_with_extend_ends_inconclusive_and_failed_at_max_window():
    route = Route(rate=0.5)
    result, _notes = observe(route.read, 'green', 4.0, max_window=10.0, inconclusive='extend', sleep=route.sleep,
                             min_requests=20)
    assert result['verdict'] == 'inconclusive' and not result['passed']
    assert result['window'] == 10.0 and route.now == 10.0  # the last window cut to max_window
    default = Route(rate=0.5)
    result, _notes = observe(default.read, 'green', 4.0, sleep=default.sleep, min_requests=20)
    assert result['window'] == 12.0  # three windows without max_window


def test_a_reset_restarts_the_window_at_the_reading_after_it():
    def reload(route):
        route.worker = '200'
        route.offset = route.now  # the new worker's counters start here
    route = Route(rate=10.0, errors=0.0, events={2.5: reload})
    result, notes = observe(route.read, 'green', 4.0, max_window=20.0, inconclusive='fail', sleep=route.sleep)
    # the reset is seen at the reading of second 3; the window runs 4 s from there
    assert result['verdict'] == 'pass'
    assert result['window'] == 4.0 and route.now == 7.0
    assert result['canary']['requests'] == 40
    assert len(notes) == 1 and 'pid 100 to pid 200' in notes[0] and 'started again' in notes[0]


def test_a_reset_near_the_end_of_max_window_leaves_a_shorter_window():
    def reload(route):
        route.worker = '200'
        route.offset = route.now
    route = Route(rate=10.0, events={3.5: reload})
    result, notes = observe(route.read, 'green', 4.0, max_window=6.0, inconclusive='pass', sleep=route.sleep,
                            min_requests=30)
    # restarted at the reading of second 4, cut at max_window: two seconds judged
    assert route.now == 6.0 and result['window'] == 2.0 and len(notes) == 1
    assert result['verdict'] == 'inconclusive' and result['passed']
    assert 'served 20 requests in 2 s' in result['reasons'][0]
