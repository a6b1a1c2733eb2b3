"""Errors in a component's YAML settings, worded for the person who wrote the YAML.

`dg check defs`, `dg dev` and the UI show a component's error inside Dagster's own ("Error while
loading component ...", the component tree, stack traces) with ours last, after "caused by", or
twice. An error that already is of Dagster's component-tree kind is passed on as it is: a
`SettingError` is, so it is shown first and once.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

# Not exported by `dagster`: the kind of error Dagster's component loading passes on unwrapped.
from dagster.components.core.component_tree import ComponentTreeException
from pydantic import BaseModel, ValidationError


class SettingError(ComponentTreeException, dg.DagsterInvalidDefinitionError):
    """A component setting that cannot work; the message names where it is and what is wrong."""


class CheckedSettings:
    """Mixed into a component class (before `dg.Component`): invalid settings in its YAML raise one
    `SettingError` naming the YAML file and every invalid setting."""

    @classmethod
    def load(cls, attributes: BaseModel | None, context: dg.ComponentLoadContext) -> Any:
        with setting_errors(str(_yaml_path(context))):
            return super().load(attributes, context)


@contextmanager
def setting_errors(where: str) -> Iterator[None]:
    """Pydantic's validation errors of a component's settings as a `SettingError` naming `where`."""
    try:
        yield
    except ValidationError as error:
        problems = "; ".join(_describe(problem) for problem in error.errors(include_input=False))
        raise SettingError(f"{where}: {problems}") from None


def _describe(problem: Any) -> str:
    """`audiences[1].id: <why>`, from one of pydantic's error entries."""
    where = ""
    for part in problem["loc"]:
        where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
    # A validator's ValueError comes as "Value error, <its message>"; its message is the reason.
    reason = problem["msg"].removeprefix("Value error, ")
    # Some reasons name their setting already.
    return reason if not where or reason.startswith(f"{where}: ") else f"{where}: {reason}"


def _yaml_path(context: dg.ComponentLoadContext) -> Path:
    """The component's `defs.yaml`, relative to the project folder when it is inside it."""
    path = context.path / "defs.yaml" if context.path.is_dir() else context.path
    try:
        return path.relative_to(context.project_root)
    except ValueError:
        return path
