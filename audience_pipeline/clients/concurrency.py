"""Requests sent a few at a time, at a rate: the one way every sender here uses its threads.

A sender cuts its work into units (a batch of records, a slice of members, a batch of patches) and
hands them to `completed` or `results`, which run at most `max_in_flight` of them at once on a
thread pool and give each one back as it ends, in whatever order. Units are drawn from their
iterator only when a thread is free, so a sender's units can be built lazily. After a unit fails no
new unit starts, and the units already in flight still end and are given back, so a caller can count
everything that was done before it stops: nothing sent is left unaccounted for.

A request spends its time waiting for the other side, and waiting releases the GIL: the threads
overlap those waits, so the client keeps the API (and the cores behind it) busy while its own Python
work, building a body or reading an answer, stays small.
"""

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TypeVar

from audience_pipeline.clients.rate_limit import RateLimit

U = TypeVar("U")
R = TypeVar("R")
# What `next` gives once the units run out (a unit may be None).
_END = object()


def completed(units: Iterable[U], call: Callable[[U], R], max_in_flight: int) -> Iterator[Future[R]]:
    """Run `call` on each unit, at most `max_in_flight` at once, and yield each one's future, done, as
    it completes. Once a unit has failed no new unit starts; those in flight end and are yielded."""
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
    pending = iter(units)
    failed = False
    with ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="sender") as pool:
        in_flight: set[Future[R]] = set()
        while True:
            while not failed and len(in_flight) < max_in_flight:
                unit = next(pending, _END)
                if unit is _END:
                    break
                in_flight.add(pool.submit(call, unit))
            if not in_flight:
                return
            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                failed = failed or future.exception() is not None
                yield future


def results(units: Iterable[U], call: Callable[[U], R], max_in_flight: int) -> Iterator[R]:
    """`call`'s result of each unit as it completes (see `completed`). A unit's exception is raised
    after the results of every unit that was in flight with it: the first one, if several failed."""
    failure: BaseException | None = None
    for future in completed(units, call, max_in_flight):
        error = future.exception()
        if error is None:
            yield future.result()
        else:
            failure = failure or error
    if failure is not None:
        raise failure


@dataclass(frozen=True)
class RequestPace:
    """How fast a delivery's requests go: `max_in_flight` at once, and (when given) each attempt first
    taking its request from `rate_limit`, retries included, so the sender runs at the limit rather
    than into the API's throttling."""

    max_in_flight: int = 1
    rate_limit: RateLimit | None = None

    def results(self, units: Iterable[U], call: Callable[[U], R]) -> Iterator[R]:
        """`results` of the units, `max_in_flight` at a time."""
        return results(units, call, self.max_in_flight)
