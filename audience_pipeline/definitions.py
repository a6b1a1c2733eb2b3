"""The code location: every definition under `defs/`, loaded by dg's autoloader."""

from pathlib import Path
from typing import TypeVar

import dagster as dg

import audience_pipeline

C = TypeVar("C", bound=dg.Component)


@dg.definitions
def defs() -> dg.Definitions:
    """All of the project's Dagster definitions."""
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)


def project_components(kind: type[C]) -> list[C]:
    """The components of one kind declared under `defs/` (e.g. every Firehose destination)."""
    tree = dg.ComponentTree.for_project(Path(audience_pipeline.__file__))
    return list(tree.load_context.component_tree.get_all_components(kind))
