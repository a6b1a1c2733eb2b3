"""Without Chromium the browser tests skip, unless CI (`.ci/run`) requires them: then they fail."""

from pathlib import Path

import pytest

from audience_pipeline_tests.browser.conftest import REQUIRE_BROWSER_ENV_VAR, check_chromium

PROJECT_ROOT = Path(__file__).parents[2]


def test_a_missing_chromium_skips_naming_the_package(tmp_path):
    with pytest.raises(pytest.skip.Exception, match=r"missing: .*`chromium` package"):
        check_chromium(tmp_path / "chromium", {})


def test_a_missing_chromium_fails_where_the_browser_is_required(tmp_path):
    with pytest.raises(pytest.fail.Exception, match=f"{REQUIRE_BROWSER_ENV_VAR} is set"):
        check_chromium(tmp_path / "chromium", {REQUIRE_BROWSER_ENV_VAR: "1"})


def test_a_present_chromium_runs_the_tests(tmp_path):
    (tmp_path / "chromium").touch()
    check_chromium(tmp_path / "chromium", {REQUIRE_BROWSER_ENV_VAR: "1"})


def test_ci_requires_the_browser():
    assert f"export {REQUIRE_BROWSER_ENV_VAR}=1" in (PROJECT_ROOT / ".ci" / "run").read_text()
