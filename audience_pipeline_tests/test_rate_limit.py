"""A rate limit holds a per-second quota in every second-long window, and runs close to it."""

import threading

import pytest

from audience_pipeline.clients.rate_limit import RateLimit


class FakeTime:
    """A clock that sleeping moves forward, for one caller at a time."""

    def __init__(self):
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def sent_at(limit: RateLimit, fake: FakeTime, calls: list[dict]) -> list[tuple[float, dict]]:
    """When each call goes: after its `take`, as a sender would send it."""
    times = []
    for amounts in calls:
        limit.take(**amounts)
        times.append((fake.now, amounts))
    return times


def most_in_a_second(times: list[tuple[float, dict]], name: str) -> float:
    return max(sum(a.get(name, 0) for t, a in times if start <= t < start + 1) for start, _ in times)


@pytest.mark.parametrize("size", [1, 10, 30])  # up to the bytes' burst, 3 % of 1000
def test_no_second_long_window_passes_the_quota_and_the_rate_stays_close_to_it(size):
    fake = FakeTime()
    limit = RateLimit({"bytes": 1000, "requests": 40}, clock=fake.clock, sleep=fake.sleep)

    times = sent_at(limit, fake, [{"bytes": size, "requests": 1}] * 400)

    assert most_in_a_second(times, "bytes") <= 1000
    assert most_in_a_second(times, "requests") <= 40
    # Whichever quota binds, the calls go at 95 % of it or more.
    seconds = times[-1][0]
    assert min(1000 / size, 40) * seconds * 0.95 <= 400 <= min(1000 / size, 40) * seconds + 40


def test_a_call_larger_than_the_burst_goes_and_the_next_waits_for_its_debt():
    fake = FakeTime()
    limit = RateLimit({"bytes": 1000}, headroom=0.9, clock=fake.clock, sleep=fake.sleep)

    assert limit.burst("bytes") == pytest.approx(100) and limit.burst("requests") is None
    assert limit.take(bytes=100) == 0  # the burst: a tenth of the quota
    assert limit.take(bytes=450) == pytest.approx(0.5)  # 450 at 900/s
    assert limit.take(bytes=9) == pytest.approx(0.01)
    assert limit.take(other=10**9) == 0  # names without a quota are free


def test_concurrent_callers_queue_behind_each_others_debt():
    fake_now = [0.0]
    waits: list[float] = []
    lock = threading.Lock()
    limit = RateLimit({"requests": 100}, headroom=0.5, clock=lambda: fake_now[0], sleep=lambda s: None)

    def caller():
        wait = limit.take(requests=10)
        with lock:
            waits.append(wait)

    threads = [threading.Thread(target=caller) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # A burst of 50 then 50 per second: the n-th caller of 10 waits (10 n - 50) / 50 seconds.
    assert sorted(waits) == pytest.approx([0, 0, 0, 0, 0, 0.2])


@pytest.mark.parametrize(("quota", "headroom"), [({"bytes": 0}, 0.97), ({"bytes": 10}, 1.5)])
def test_impossible_quotas_are_refused(quota, headroom):
    with pytest.raises(ValueError, match="quota bytes|headroom"):
        RateLimit(quota, headroom=headroom)
