"""`audience-pipeline status`: the activation overview in a terminal.

Reads what a deployment keeps (nothing is sent anywhere and nothing is written): the Dagster instance in
a Dagster home (its runs and the delivery assets' materializations) and the state store (ledger
manifests, DSP queues), for the audiences and destinations a dg project declares. The rows are the ones
the `activation_status` asset shows (`components.activation_status.read_status`).
"""

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

import audience_pipeline
from audience_pipeline.activation_status import StatusRow, Target
from audience_pipeline.components.activation_status import activation_targets, read_status
from audience_pipeline.components.setting_errors import yaml_setting_errors
from audience_pipeline.resources.state_store import DEFAULT_STATE
from audience_pipeline.state import ParquetStore

# The project this package is: `project_components` loads the same one.
DEFAULT_PROJECT = Path(audience_pipeline.__file__).resolve().parent


class StatusError(Exception):
    """The overview cannot be read as asked; the message says what to change, in one line."""


def project_targets(project: Path) -> list[Target]:
    """The audiences × destinations and AMC targets that the dg project holding `project` declares."""
    try:
        tree = dg.ComponentTree.for_project(project)
        with yaml_setting_errors(tree.project_root):
            return activation_targets(tree.load_context)
    except (dg.DagsterError, ModuleNotFoundError) as error:
        raise StatusError(f"--project {project}: {error}") from None


def read_project_status(
    dagster_home: Path, state: str | None, targets: Sequence[Target], now: float
) -> list[StatusRow]:
    """The overview's rows from the Dagster instance in `dagster_home` and the state store at `state`
    (a folder or `s3://bucket/prefix`; None: `.audience_state`, the `state_store` resource's default)."""
    if not dagster_home.is_dir():
        raise StatusError(
            f"Dagster home {dagster_home} is not a folder: point --dagster-home (or DAGSTER_HOME) at the "
            "one the pipeline runs with"
        )
    # boto3 finds an `s3://` state store the way the `state_store` resource does: the default
    # credential chain and AWS_ENDPOINT_URL.
    store = ParquetStore(state or DEFAULT_STATE)
    try:
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            return read_status(instance, store, targets, now)
    except dg.DagsterError as error:
        raise StatusError(f"Dagster home {dagster_home}: {error}") from None


def status_json(rows: Sequence[StatusRow], now: float) -> str:
    """The overview as one JSON object: when it was read, and its rows."""
    generated_at = datetime.fromtimestamp(now, UTC).isoformat()
    return json.dumps({"generated_at": generated_at, "rows": [row.to_json() for row in rows]})
