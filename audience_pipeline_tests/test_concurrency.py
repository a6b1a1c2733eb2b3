"""Requests a few at a time: at most `max_in_flight` at once, answered as they end, and after a
failure nothing new starts while what was in flight is still given back."""

import threading

import pytest

from audience_pipeline.clients.concurrency import RequestPace, completed, results


class Refused(Exception):
    """A unit that failed."""


def test_at_most_max_in_flight_units_run_at_once_and_all_of_them_do():
    lock, running, most = threading.Lock(), [0], [0]
    # The first three wait for each other: they finish only if three can run at once.
    together = threading.Barrier(3, timeout=10)

    def call(unit: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        if unit < 3:
            together.wait()
        with lock:
            running[0] -= 1
        return unit

    assert sorted(results(range(10), call, 3)) == list(range(10))
    assert most[0] == 3


def test_results_come_as_units_end_not_in_their_order():
    first_given = threading.Event()

    def call(unit: int) -> int:
        if unit == 0:
            assert first_given.wait(10)  # unit 0 ends only once a result was given: unit 1's
        return unit

    given = []
    for result in results([0, 1], call, 2):
        given.append(result)
        first_given.set()

    assert given == [1, 0]


def test_after_a_failure_no_unit_starts_and_those_in_flight_end_and_are_given_back():
    started, release = [], threading.Event()

    def call(unit: int) -> int:
        started.append(unit)
        if unit == 1:
            raise Refused(unit)
        assert release.wait(10)  # units 0 and 2 end only once the failure has been seen
        return unit

    outcomes = []
    for future in completed(range(10), call, 3):
        outcomes.append(future.exception() or future.result())
        release.set()

    assert sorted(started) == [0, 1, 2]
    assert isinstance(outcomes[0], Refused) and sorted(outcomes[1:]) == [0, 2]


def test_a_failure_is_raised_after_the_results_of_the_units_in_flight_with_it():
    release = threading.Event()

    def call(unit: int) -> int:
        if unit == 1:
            threading.Timer(0.05, release.set).start()
            raise Refused(unit)
        assert release.wait(10)
        return unit

    given = []
    with pytest.raises(Refused):
        for result in RequestPace(max_in_flight=3).results(range(10), call):
            given.append(result)

    assert {0, 2} <= set(given) and 1 not in given


def test_max_in_flight_must_be_at_least_one():
    with pytest.raises(ValueError, match="max_in_flight"):
        list(results([1], lambda unit: unit, 0))
