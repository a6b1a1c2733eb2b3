"""The example project in the Dagster UI, used from headless Chromium the way a person would use it.

The page is only half the evidence: what it shows is checked against the webserver's GraphQL API,
the sample data and what the sandbox received.
"""

import re
import time

import duckdb
import pytest
import requests
from playwright.sync_api import Page, expect

from audience_pipeline_tests.browser.conftest import ARTIFACTS, Webserver, chromium_page

# Both tests share one `dagster dev` (a module fixture): keep them on one xdist worker.
pytestmark = pytest.mark.xdist_group("browser")

SNAPSHOT = ("audience_snapshot",)
AUDIENCES = ["1001", "1002", "newsletter_subscribers", "app_users_90d"]  # in defs/audiences
ADM = ("ads_data_manager", "amzn1_ads_account_sandbox")
DSP_QUEUE = ("dsp", "advertiser_5551234567890")
DSP_FLUSH_KEY = (*DSP_QUEUE, "flush")
DESTINATION_PREFIXES = {"firehose", "ads_data_manager", "dsp", "amc"}
# Unpartitioned, and it neither waits for AMC nor needs a daemon: a run of it ends on its own.
UPLOAD = ("amc", "dataset", "sample_customer_identities")
UPLOAD_SQL = "SELECT count(*) FROM profiles WHERE customer_id IS NOT NULL"  # the `query` in defs/amc
RUN_TIMEOUT_MS = 120_000
SCREENSHOT = ARTIFACTS / "dagster_ui.png"
# Four snapshot runs, then the deliveries the automation sensor (every 10 s) launches after them, then
# the first DSP flush it launches after the DSP queue's run.
BACKFILL_TIMEOUT_SECONDS = 240
RUN_ENDED = {"SUCCESS", "FAILURE", "CANCELED"}
BACKFILL_ENDED = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

ASSET_KEYS = "{ assetNodes { assetKey { path } } }"
RUN_STATUS = "query($runId: ID!) { runOrError(runId: $runId) { ... on Run { status } } }"
BACKFILLS = "{ partitionBackfillsOrError { ... on PartitionBackfills { results { id status } } } }"
RUNS = """
{ runsOrError { ... on Runs { results {
  runId status jobName tags { key value } assetSelection { path }
} } } }
"""
PARTITIONS = """
{ assetNodes { assetKey { path } partitionStats { numPartitions numMaterialized numFailed } } }
"""
CHECK_PARTITIONS = """
query($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode { assetChecksOrError { ... on AssetChecks { checks {
      name
      partitionStatuses { ... on AssetCheckDefaultPartitionStatuses { succeededPartitions failedPartitions } }
    } } } }
  }
}
"""
LATEST_MATERIALIZATION = """
query($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset {
      assetMaterializations(limit: 1) { runId metadataEntries { label ... on IntMetadataEntry { intValue } } }
    }
  }
}
"""


def test_an_amc_upload_launched_from_the_asset_graph_succeeds_and_its_metadata_is_shown(
    webserver: Webserver,
):
    keys = [tuple(node["assetKey"]["path"]) for node in webserver.graphql(ASSET_KEYS)["assetNodes"]]
    destinations = [key for key in keys if key[0] in DESTINATION_PREFIXES]
    assert {key[0] for key in destinations} == DESTINATION_PREFIXES and SNAPSHOT in keys, keys

    with chromium_page("dagster_ui") as page:
        page.set_default_timeout(30_000)
        page.goto(f"{webserver.url}/asset-groups")
        # The global lineage starts with every group folded into one box.
        page.get_by_role("button", name="settings", exact=True).click()
        page.get_by_role("menuitem", name="Expand all groups").click()
        page.keyboard.press("Escape")
        for key in (SNAPSHOT, *destinations, UPLOAD):
            _select_in_graph(page, key)

        # The upload is the selected asset now.
        page.get_by_role("button", name="Materialize selected").click()
        run_link = page.get_by_role("link", name="View", exact=True)  # in the "Launched run" toast
        expect(run_link).to_have_attribute("href", re.compile(r"^/runs/[0-9a-f-]{36}$"))
        run_id = run_link.get_attribute("href").rsplit("/", 1)[1]
        run_link.click()
        # The run page follows the run live; a run that ends badly ends the wait as soon as a good one.
        final = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
        expect(final).to_be_visible(timeout=RUN_TIMEOUT_MS)
        assert final.inner_text() == "Success", webserver.log_tail()
        # The run's own event log shows what the materialization recorded.
        expect(page.get_by_text("rows_written", exact=True).first).to_be_visible()

        page.goto(f"{webserver.url}/assets/{'/'.join(UPLOAD)}")
        rows_written = page.get_by_role("row").filter(has=page.get_by_text("rows_written", exact=True))
        expect(rows_written.get_by_role("cell").last).to_have_text(re.compile(r"^\d+$"))
        shown = int(rows_written.get_by_role("cell").last.inner_text())
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=SCREENSHOT, full_page=True)

    assert webserver.graphql(RUN_STATUS, runId=run_id)["runOrError"]["status"] == "SUCCESS"
    (latest,) = webserver.graphql(LATEST_MATERIALIZATION, path=list(UPLOAD))["assetOrError"][
        "assetMaterializations"
    ]
    recorded = {entry["label"]: entry.get("intValue") for entry in latest["metadataEntries"]}
    assert latest["runId"] == run_id
    with duckdb.connect(str(webserver.source), read_only=True) as source:
        selected = source.sql(UPLOAD_SQL).pl().item()
    assert recorded["rows_in"] == selected
    assert shown == recorded["rows_written"] > 0
    # The run really reached AMC: the sandbox accepted the upload of these files.
    journal = requests.get(f"{webserver.sandbox.ads_url}/_sandbox/journal", timeout=10).json()["entries"]
    uploads = [e for e in journal if e["method"] == "POST" and e["path"].endswith(f"/uploads/{UPLOAD[-1]}")]
    assert [e["status"] for e in uploads] == [200], uploads


def _select_in_graph(page: Page, key: tuple[str, ...]) -> None:
    """Find the asset with the graph's "Jump to" search and check the graph selected that very asset."""
    page.get_by_placeholder("Jump to").fill("/".join(key))
    page.keyboard.press("Enter")
    # The side panel of the selected asset links to its catalog page, which is named by the full key.
    expect(page.get_by_role("link", name="View in Asset Catalog")).to_have_attribute(
        "href", f"/assets/{'/'.join(key)}"
    )


def test_a_newcomers_first_backfill_of_every_audience_ends_green_with_every_destination_delivered(
    webserver: Webserver,
):
    """What the README's quickstart says: materialize every partition of `audience_snapshot`; the
    destinations follow each snapshot (eager automation) and take only the audiences routed to them; the
    DSP flush of a never-flushed audience follows its queue."""
    earlier_runs = {run["runId"] for run in _runs(webserver)}
    with chromium_page("newcomer_backfill") as page:
        page.set_default_timeout(30_000)
        page.goto(f"{webserver.url}/assets/{'/'.join(SNAPSHOT)}")
        dialog = page.get_by_role("dialog")
        page.get_by_role("button", name="Materialize…").click()
        dialog.get_by_role("button", name="All", exact=True).click()
        expect(dialog.get_by_text("4 partitions", exact=True)).to_be_visible()
        dialog.get_by_role("button", name="Launch backfill").click()
        expect(dialog).to_be_hidden()

    backfill, runs, partitions = _wait_for_backfill_and_deliveries(webserver)
    runs = [run for run in runs if run["runId"] not in earlier_runs]

    assert backfill["status"] in {"COMPLETED", "COMPLETED_SUCCESS"}, (backfill, webserver.log_tail())
    assert [run for run in runs if run["status"] != "SUCCESS"] == [], webserver.log_tail()
    launched_by = {tag["value"] for run in runs for tag in run["tags"] if tag["key"] == "dagster/sensor_name"}
    assert "default_automation_condition_sensor" in launched_by, runs
    destinations = {key: stats for key, stats in partitions.items() if key != SNAPSHOT}
    # Each destination has a partition per audience routed to it (the DSP advertiser takes one) and
    # none is left missing: the first DSP upload does not wait for its flush sensor's interval (2 h in
    # the example).
    assert {key: stats["numPartitions"] for key, stats in destinations.items()} == {
        ("firehose", "audience_changes"): 4,
        (*ADM,): 4,
        DSP_QUEUE: 1,
        DSP_FLUSH_KEY: 1,
    }
    missing = {
        key: stats
        for key, stats in destinations.items()
        if (stats["numMaterialized"], stats["numFailed"]) != (stats["numPartitions"], 0)
    }
    assert missing == {}, missing
    # The automation sensor launched that first flush, after the queue's run and not with it.
    flush_runs = [run for run in runs if _asset_selection(run) == {DSP_FLUSH_KEY}]
    launched = [(_tag(run, "dagster/partition"), _tag(run, "dagster/sensor_name")) for run in flush_runs]
    assert launched == [("app_users_90d", "default_automation_condition_sensor")], runs
    # The check result carries its partition: every audience's `members_accepted` passed.
    [check] = webserver.graphql(CHECK_PARTITIONS, path=list(ADM))["assetNodeOrError"]["assetChecksOrError"][
        "checks"
    ]
    statuses = check["partitionStatuses"]
    assert check["name"] == "members_accepted" and statuses["failedPartitions"] == [], check
    assert sorted(statuses["succeededPartitions"]) == sorted(AUDIENCES), check


def _asset_selection(run: dict) -> set[tuple[str, ...]]:
    return {tuple(key["path"]) for key in run["assetSelection"] or []}


def _tag(run: dict, key: str) -> str | None:
    return next((tag["value"] for tag in run["tags"] if tag["key"] == key), None)


def _runs(webserver: Webserver) -> list[dict]:
    return webserver.graphql(RUNS)["runsOrError"]["results"]


def _wait_for_backfill_and_deliveries(webserver: Webserver) -> tuple[dict, list[dict], dict]:
    """The backfill, the runs and each partitioned asset's partition counts once the backfill and every
    run have ended and the automatic deliveries are done, or as soon as something failed."""
    deadline = time.monotonic() + BACKFILL_TIMEOUT_SECONDS
    while True:
        backfills = webserver.graphql(BACKFILLS)["partitionBackfillsOrError"]["results"]
        runs = _runs(webserver)
        partitions = {
            tuple(node["assetKey"]["path"]): node["partitionStats"]
            for node in webserver.graphql(PARTITIONS)["assetNodes"]
            if node["partitionStats"] is not None
        }
        ended = all(b["status"] in BACKFILL_ENDED for b in backfills) and all(
            run["status"] in RUN_ENDED for run in runs
        )
        delivered = all(stats["numMaterialized"] == stats["numPartitions"] for stats in partitions.values())
        failed = any(run["status"] != "SUCCESS" for run in runs if run["status"] in RUN_ENDED)
        if backfills and ended and (delivered or failed):
            [backfill] = backfills
            return backfill, runs, partitions
        assert time.monotonic() < deadline, (backfills, runs, partitions, webserver.log_tail())
        time.sleep(1)
