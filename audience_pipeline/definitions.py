"""The code location: every definition under `defs/`, loaded by dg's autoloader."""

from pathlib import Path
from typing import TypeVar

import dagster as dg

from audience_pipeline.components.setting_errors import yaml_setting_errors

C = TypeVar("C", bound=dg.Component)

_PACKAGE = Path(__file__).parent
# Setting errors name YAML files relative to the folder holding the package (the project's).
_PROJECT = _PACKAGE.parent


@dg.definitions
def defs() -> dg.Definitions:
    """All of the project's Dagster definitions."""
    with yaml_setting_errors(_PROJECT):
        return dg.load_from_defs_folder(path_within_project=_PACKAGE)


def project_components(kind: type[C]) -> list[C]:
    """The components of one kind declared under `defs/` (e.g. every Firehose destination)."""
    with yaml_setting_errors(_PROJECT):
        tree = dg.ComponentTree.for_project(_PACKAGE)
        return list(tree.load_context.component_tree.get_all_components(kind))
