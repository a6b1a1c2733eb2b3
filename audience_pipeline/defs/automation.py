"""The sensor that runs the assets' automation conditions: deliveries follow their audiences' snapshots.

Dagster declares its default automation sensor stopped; the destinations' streaming export (a delivery
runs as soon as an audience's snapshot changes, `AutomationCondition.eager()`) needs it running from
the first `dg dev`. It launches runs, one per audience, rather than a backfill: a backfill waits for
the backfill daemon's next pass (up to 30 s) before its first run, and the deliveries are one run per
audience either way.
"""

import dagster as dg


@dg.definitions
def automation() -> dg.Definitions:
    """The automation condition sensor over every asset, running by default."""
    return dg.Definitions(
        sensors=[
            dg.AutomationConditionSensorDefinition(
                "default_automation_condition_sensor",
                target=dg.AssetSelection.all(),
                default_status=dg.DefaultSensorStatus.RUNNING,
                # Every 10 s rather than 30: 15 s less from a source change to the sandbox (docs: "Latency").
                minimum_interval_seconds=10,
                emit_backfills=False,
                description="Materializes deliveries when their audiences' snapshots change (eager).",
            )
        ]
    )
