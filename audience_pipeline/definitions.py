"""The code location: every definition under `defs/`, loaded by dg's autoloader."""

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    """All of the project's Dagster definitions."""
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
