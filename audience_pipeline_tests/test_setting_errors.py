"""A mistake in a component's YAML is one line naming the file and the setting, shown first and once."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

import audience_pipeline
from audience_pipeline.components.setting_errors import SettingError, yaml_setting_errors

FIREHOSE = "type: audience_pipeline.components.firehose.FirehoseComponent\nattributes:\n"
AUDIENCES = (
    "type: audience_pipeline.components.audiences.AudiencesComponent\n"
    "attributes:\n  audiences: [{id: 7, name: a, sql: SELECT 1 AS user_id}]\n"
)


def load_project(tmp_path: Path, monkeypatch, **components: str) -> dg.Definitions:
    """Loads a project whose defs folder holds one folder per component, with this YAML."""
    (tmp_path / "pyproject.toml").write_text(
        '[tool.dg]\ndirectory_type = "project"\n\n'
        '[tool.dg.project]\nroot_module = "settings_project"\ndefs_module = "settings_project_defs"\n'
    )
    for name, text in components.items():
        folder = tmp_path / "settings_project_defs" / name
        folder.mkdir(parents=True)
        (folder / "defs.yaml").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    with yaml_setting_errors(tmp_path):
        return dg.load_from_defs_folder(path_within_project=tmp_path / "settings_project_defs")


@pytest.mark.parametrize(
    ("firehose_settings", "message"),
    [
        (
            "  audiences: [7]\n  max_removal_share: 2\n  stream: s\n",
            "max_removal_share: Input should be less than or equal to 1; "
            "delivery_stream_name: Field required; stream: Extra inputs are not permitted",
        ),
        ("  delivery_stream_name: s\n  audiences: 7\n", "audiences: Input should be a valid array"),
        ("  delivery_stream_name: s\n  audiences: [[7]]\n", "audiences[0]: Input should be a valid integer"),
        (
            "  delivery_stream_name: s\n  audiences: [7]\n  region: mars-1\n",
            "region: 'mars-1' is not an AWS region such as us-east-1",
        ),
    ],
)
def test_a_setting_failing_the_schema_or_its_check_is_named_in_one_line(
    tmp_path, monkeypatch, firehose_settings, message
):
    with pytest.raises(SettingError) as error:
        load_project(tmp_path, monkeypatch, audiences=AUDIENCES, firehose=FIREHOSE + firehose_settings)

    assert str(error.value) == f"settings_project_defs/firehose/defs.yaml: {message}"
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_an_audience_entry_failing_its_check_is_named_without_the_template_alternative(tmp_path, monkeypatch):
    audiences = AUDIENCES.replace("id: 7", 'id: "a/b"')

    with pytest.raises(SettingError) as error:
        load_project(tmp_path, monkeypatch, audiences=audiences)

    assert str(error.value) == (
        "settings_project_defs/audiences/defs.yaml: audiences[0].id: audience id 'a/b' is invalid: use a "
        "non-negative integer or up to 100 letters, digits, `_`, `-` and `.`, starting with a letter or digit"
    )


def test_dg_check_defs_shows_the_setting_error_first_and_once(tmp_path):
    # The project's own package, copied so that one of its YAML files can be broken; PYTHONPATH puts
    # the copy before the installed package.
    package = Path(audience_pipeline.__file__).parent
    shutil.copytree(package, tmp_path / "audience_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "pyproject.toml").write_text(
        '[tool.dg]\ndirectory_type = "project"\n\n[tool.dg.project]\nroot_module = "audience_pipeline"\n'
    )
    # dg's own YAML check passes it (the id is a string); our check of audience ids does not.
    audiences = tmp_path / "audience_pipeline" / "defs" / "audiences" / "defs.yaml"
    audiences.write_text(audiences.read_text().replace("- id: 1001", '- id: "a/b"'))

    result = subprocess.run(
        [str(Path(sys.executable).parent / "dg"), "check", "defs"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )

    output = result.stdout + result.stderr
    message = "audience_pipeline/defs/audiences/defs.yaml: audiences[0].id: audience id 'a/b' is invalid"
    assert result.returncode != 0
    assert output.count(message) == 1
    # Ours is the error Dagster reports, not its component tree with ours as the cause.
    assert f"SettingError: {message}" in output
    assert "Error while loading component" not in output and "caused by" not in output
