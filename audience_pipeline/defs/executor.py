"""How runs execute: every step in the run's own process.

A run here is one audience at one or a few destinations, whose steps wait on each other or on an API
pool: Dagster's default multiprocess executor would start a process per step, each loading the code
location again (2 to 8 s on a 2-core machine, more than most deliveries take), for parallelism the runs
do not use. A run whose process dies is reported failed by the process that launched it and retried
(`run_retries` in dagster.yaml).
"""

import dagster as dg


@dg.definitions
def executor() -> dg.Definitions:
    """The in-process executor for every job of the code location."""
    return dg.Definitions(executor=dg.in_process_executor)
