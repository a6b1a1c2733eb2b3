"""The delivery core's memory stays flat in the size of a bucket's batch (no Dagster, no HTTP).

Confirming a batch once filtered its items with an `is_in` repeated per member, which held memory
quadratic in the batch: 14 GiB for one bucket of 60k members. The delivery runs in a child process of
its own, which reports its peak resident memory (VmHWM), so nothing else in the test run counts.
"""

import json
import subprocess
import sys

CHILD = """
import json, tempfile
import polars as pl
from audience_pipeline.membership import Ledger
from audience_pipeline.membership.delivery import ADDED, ITEM, KIND, USER_ID, Answer, Members, deliver
from audience_pipeline.state import ParquetStore


class Destination:
    noun = "members"
    request_errors = ()

    def items(self, changes, state):
        return changes.added.select(USER_ID, pl.lit(ADDED).alias(KIND))

    def requests(self, items):
        return -(-items.height // 500)

    def send(self, items):
        for chunk in items.iter_slices(500):
            yield Answer(confirmed=chunk[ITEM].to_list())

    def stored(self, confirmed):
        return confirmed


users = [f"u{{i:07}}" for i in range({members})]
audience = Members(pl.DataFrame({{USER_ID: users, "fingerprint": users, "payload": users}}))
with tempfile.TemporaryDirectory() as folder:
    ledger = Ledger(ParquetStore(folder), "memory/test", 1)
    confirmed = deliver(ledger, lambda state, held: audience, Destination()).confirmed
    held = ledger.read().height
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({{"confirmed": confirmed, "held": held, "peak_mib": int(peak.split()[1]) // 1024}}))
"""


def test_confirming_one_bucket_of_60k_members_takes_memory_in_proportion_to_it():
    members = 60_000
    done = subprocess.run(
        [sys.executable, "-c", CHILD.format(members=members)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.splitlines()[-1])

    assert figures["confirmed"] == figures["held"] == members
    # Python with polars and the members themselves take a few hundred MiB; the quadratic confirm took 14 GiB.
    assert figures["peak_mib"] < 1024, figures
