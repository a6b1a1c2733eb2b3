"""Client-side rate limits, so that a delivery runs at an API's quota instead of into its throttling.

A quota such as Firehose's "1,000 requests, 1 MiB per second" is held when no second-long window
holds more. `RateLimit` keeps every one of its rates with a token bucket that refills at a share
(`headroom`) below the quota and holds at most the rest of a second's quota (its `burst`), so that a
full bucket spent at once and a second of refill together never pass the quota. A call takes its
share and waits until the bucket's debt is paid back; that holds the quota as long as no call takes
more than the burst, so senders size their calls by it.
"""

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# The share of each quota the limiter refills at; the rest is the burst it allows.
DEFAULT_HEADROOM = 0.97


@dataclass
class _Bucket:
    rate: float  # tokens per second
    capacity: float
    tokens: float


class RateLimit:
    """Per-second quotas (`{"requests": 1000, "bytes": 1048576}`) that every call takes from first.

    Thread-safe: concurrent senders share one limit, and each waits its turn in order of arrival.
    `clock` and `sleep` are `time.monotonic` and `time.sleep` unless a test passes its own.
    """

    def __init__(
        self,
        per_second: Mapping[str, float],
        *,
        headroom: float = DEFAULT_HEADROOM,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not 0 < headroom <= 1:
            raise ValueError(f"headroom must be in (0, 1], not {headroom}")
        for name, quota in per_second.items():
            if quota <= 0:
                raise ValueError(f"quota {name} must be positive, not {quota}")
        self.per_second = dict(per_second)
        burst = 1 - headroom
        self._buckets = {
            name: _Bucket(rate=quota * headroom, capacity=quota * burst, tokens=quota * burst)
            for name, quota in per_second.items()
        }
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._updated = clock()

    def burst(self, name: str) -> float | None:
        """The most one call may take of `name` for the quota to hold; None without a quota."""
        bucket = self._buckets.get(name)
        return None if bucket is None else bucket.capacity

    def take(self, **amounts: float) -> float:
        """Take `amounts` (e.g. `requests=1, bytes=4096`) from the buckets, waiting until the call may
        go; returns the seconds waited. Names without a quota are free."""
        with self._lock:
            now = self._clock()
            elapsed, self._updated = now - self._updated, now
            wait = 0.0
            for name, bucket in self._buckets.items():
                bucket.tokens = min(bucket.capacity, bucket.tokens + elapsed * bucket.rate)
                bucket.tokens -= amounts.get(name, 0)
                wait = max(wait, -bucket.tokens / bucket.rate)
        # Rounding leaves debts of 1e-17 s where a bucket is just empty.
        wait = wait if wait > 1e-9 else 0.0
        # Waiting outside the lock: the next caller's own wait already counts this call's debt.
        if wait:
            self._sleep(wait)
        return wait
