"""Errors in a component's YAML settings, worded for the person who wrote the YAML.

`dg check defs`, `dg dev` and the UI show a component's error inside Dagster's own ("Error while
loading component ...", the component tree, stack traces) with ours last, after "caused by", or
twice. An error that already is of Dagster's component-tree kind is passed on as it is: a
`SettingError` is, so it is shown first and once.

Settings fail in two places: Dagster checks a YAML file's `attributes` against the component's
schema before the component exists (`yaml_setting_errors` words those), and the component's own
validators run when it loads (`CheckedSettings` words those).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

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


@contextmanager
def yaml_setting_errors(project_root: Path) -> Iterator[None]:
    """Dagster's error for component YAML that fails its component's schema as one `SettingError`
    naming the file and every invalid setting; other errors pass on unchanged."""
    try:
        yield
    except ComponentTreeException as error:
        cause = error.__cause__
        if isinstance(error, SettingError) or not isinstance(cause, ValidationError):
            raise
        problems = cause.errors(include_input=False)
        positions = [problem.get("ctx", {}).get("source_position") for problem in problems]
        if not all(positions):  # not a schema check of a YAML file: Dagster's error says more
            raise
        path = Path(positions[0].filename)
        attributes = [document.get("attributes") for document in _yaml_documents(path)]
        described = _without_template_alternatives(
            [_yaml_problem(problem, attributes) for problem in problems]
        )
        where = path.relative_to(project_root) if path.is_relative_to(project_root) else path
        raise SettingError(f"{where}: {'; '.join(described)}") from None


def _yaml_documents(path: Path) -> list[dict]:
    """The component declarations in a YAML file (one per YAML document)."""
    with path.open() as file:
        return [document for document in yaml.safe_load_all(file) if isinstance(document, dict)]


def _yaml_problem(problem: Any, attributes: list[Any]) -> tuple[str, str, str]:
    """The setting (as written in the YAML), the error type and the description of one schema error.

    Dagster folds the error's location into one string (`attributes.audiences.function-after[...].0.id
    at <file>:<line>`), including pydantic's names for the alternatives of a union; the setting is the
    part of it that the YAML has, read in the document that has most of it."""
    parts = problem["loc"][0].rsplit(" at ", 1)[0].split(".")[1:]  # after `attributes`
    candidates = [_setting_in(parts, document, problem["type"]) for document in attributes]
    setting = max(candidates, key=lambda found: found[1])[0]
    return setting, problem["type"], _describe({**problem, "loc": (setting,) if setting else ()})


def _setting_in(parts: list[str], node: Any, error_type: str) -> tuple[str, int]:
    """`audiences[0].id` and how many of `parts` the YAML `node` holds; a missing setting is named."""
    setting, found = "", 0
    for index, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            setting, node, found = f"{setting}.{part}" if setting else part, node[part], found + 1
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            setting, node, found = f"{setting}[{part}]", node[int(part)], found + 1
        elif error_type == "missing" and index == len(parts) - 1:
            setting = f"{setting}.{part}" if setting else part
    return setting, found


def _without_template_alternatives(problems: list[tuple[str, str, str]]) -> list[str]:
    """The descriptions, without the errors of the template-string alternative Dagster adds to every
    list and object setting (`audiences.str: Input should be a valid string`) where the setting has a
    real error too."""
    settings = [setting for setting, _, _ in problems]

    def has_other_error(setting: str) -> bool:
        inside = [other for other in settings if other.startswith((f"{setting}.", f"{setting}["))]
        return bool(inside) or settings.count(setting) > 1

    return [
        description
        for setting, error_type, description in problems
        if error_type != "string_type" or not has_other_error(setting)
    ]


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
