"""AMC rule-based audiences against the sandbox over real HTTP: SQL over uploads and synthetic tables."""

import time

import polars as pl
import pytest

from audience_pipeline.clients.ads_api import AmazonAdsApiError
from audience_pipeline.clients.amc import csv_format, failed, succeeded

from .conftest import BUCKET, dimension_dataset, fact_dataset, purchases, sha, upload_and_wait, wait

AUDIENCE_BODY = {
    "audienceName": "buyers",
    "advertiserId": "123",
    "query": "SELECT user_id FROM dsp_impressions_for_audiences",
    "timeWindowStart": "2025-01-01T00:00:00Z",
    "timeWindowEnd": "2025-03-31T00:00:00Z",
}
WINDOW = {"time_window_start": "2025-01-01T00:00:00Z", "time_window_end": "2025-03-31T00:00:00Z"}


def run(amc, query: str, name: str = "buyers") -> dict:
    execution_id = amc.create_audience(name, advertiser_id=2**60 + 1, query=query, **WINDOW)
    return wait(lambda: amc.get_audience(execution_id))


def test_an_audience_of_2500_users_succeeds(amc):
    audience = run(amc, "SELECT user_id FROM amazon_attributed_events_by_conversion_time_for_audiences;")
    assert succeeded(audience["status"]), audience
    assert audience["audienceCount"] == 2500
    assert int(audience["dspAudienceId"]) > 2**53
    # Rule-BasedAudiences_prod_3p.json types advertiserId as a string.
    assert audience["advertiserId"] == str(2**60 + 1)
    assert audience["lastRefreshedTime"].endswith("Z") and audience["refreshRateDays"] == 21


def test_uploaded_datasets_join_the_synthetic_tables_by_user_id(amc, s3):
    amc.create_dataset(dimension_dataset())
    emails = [sha(f"user{i}@example.com") for i in range(2500)] + [sha("stranger@example.com")]
    s3.put_object(Bucket=BUCKET, Key="c.csv", Body=pl.DataFrame({"email": emails}).write_csv().encode())
    assert (
        upload_and_wait(amc, "customers", file_key="c.csv", file_format=csv_format())["status"] == "SUCCESS"
    )
    audience = run(
        amc,
        "SELECT DISTINCT c.user_id FROM customers c JOIN dsp_impressions_for_audiences i USING (user_id)",
    )
    assert audience["status"] == "SUCCEEDED", audience
    assert audience["audienceCount"] == 2500


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("SELECT user_id FROM conversions_for_audiences", "below the 2,000-user minimum"),
        ("SELECT user_id, impressions FROM dsp_impressions_for_audiences", "user_id only"),
        ("SELECT user_id FROM no_such_table", "no_such_table"),
        ("DROP TABLE dsp_impressions_for_audiences", "single SELECT"),
    ],
)
def test_failing_audiences_say_why(amc, query, reason):
    audience = run(amc, query)
    assert failed(audience["status"])
    assert reason in audience["statusReason"]
    assert "audienceCount" not in audience


@pytest.mark.parametrize(
    "change",
    [
        {"refreshRateDays": 22},
        {"refreshRateDays": -1},
        {"timeWindowStart": "2025-01-01 00:00:00"},
        {"timeWindowStart": "2025-04-01T00:00:00Z"},
        {"timeWindowRelative": "maybe"},
        {"audienceName": ""},
        {"query": None},
        {"advertiserId": 123},
        {"countryCode": "GB"},
    ],
)
def test_invalid_audiences_are_400(amc, change):
    body = {**AUDIENCE_BODY, **change}
    with pytest.raises(AmazonAdsApiError) as error:
        amc.api.request("POST", "/amc/audiences/query", json_body=body, headers=amc._audience_headers)
    assert error.value.status == 400
    # Rule-BasedAudiences_prod_3p.json: `{code, details, requestId}`, in the v1 media type.
    assert set(error.value.body) == {"code", "details", "requestId"}


def test_time_window_relative_is_taken_as_a_string_too(amc):
    body = {**AUDIENCE_BODY, "timeWindowRelative": "TRUE"}
    created = amc.api.request("POST", "/amc/audiences/query", json_body=body, headers=amc._audience_headers)
    assert created["status"] == "PENDING" and created["audienceExecutionDescription"]
    assert amc.get_audience(created["audienceExecutionId"])["timeWindowRelative"] is True


def test_audiences_are_listed_found_by_name_and_deleted_once_finished(amc):
    ids = [
        amc.create_audience(f"audience-{i}", advertiser_id="1", query="SELECT user_id FROM x", **WINDOW)
        for i in range(3)
    ]
    page = amc.api.request(
        "GET", "/amc/audiences/query", params={"maxResults": 2}, headers=amc._audience_headers
    )
    assert len(page["executionMetadata"]) == 2 and page["nextToken"]
    last = amc.api.request(
        "GET",
        "/amc/audiences/query",
        params={"maxResults": 2, "nextToken": page["nextToken"]},
        headers=amc._audience_headers,
    )
    assert len(last["executionMetadata"]) == 1 and "nextToken" not in last
    assert amc.find_audience("audience-2")["audienceExecutionId"] == ids[2]
    assert amc.find_audience("nobody") is None
    with pytest.raises(AmazonAdsApiError) as error:
        amc.delete_audience(ids[0])  # still PENDING
    assert error.value.status == 400
    wait(lambda: amc.get_audience(ids[0]))
    amc.delete_audience(ids[0])
    with pytest.raises(AmazonAdsApiError) as error:
        amc.get_audience(ids[0])
    assert error.value.status == 404
    assert len(amc.list_audiences()) == 2


def test_the_instance_header_is_required(amc):
    with pytest.raises(AmazonAdsApiError, match="InstanceId") as error:
        amc.api.request("GET", "/amc/audiences/query")
    assert error.value.status == 400


def test_the_time_window_limits_a_fact_dataset_to_its_events(amc, s3):
    amc.create_dataset(fact_dataset())
    inside = purchases(2500, day="2025-03-01")
    outside = purchases(2500, day="2024-06-01", start=2500)
    s3.put_object(Bucket=BUCKET, Key="p.csv", Body=pl.concat([inside, outside]).write_csv().encode())
    assert (
        upload_and_wait(amc, "purchases", file_key="p.csv", file_format=csv_format())["status"] == "SUCCESS"
    )
    audience = run(amc, "SELECT DISTINCT user_id FROM purchases")
    assert audience["status"] == "SUCCEEDED", audience
    assert audience["audienceCount"] == 2500


def test_an_audience_never_refreshed_is_deactivated_after_30_days(sandbox, amc):
    execution_id = amc.create_audience(
        "one_off",
        advertiser_id=1,
        query="SELECT user_id FROM dsp_impressions_for_audiences",
        refresh_rate_days=0,
        **WINDOW,
    )
    assert wait(lambda: amc.get_audience(execution_id))["status"] == "SUCCEEDED"
    # Age the record as 30 days of wall clock would.
    with sandbox.ads.state.lock:
        for audiences in sandbox.ads.state.family("amc")["audiences"].values():
            if execution_id in audiences:
                audiences[execution_id]["createTime"] = "2020-01-01T00:00:00Z"
    time.sleep(0.1)  # a state lasts at least the sandbox's job step
    assert amc.get_audience(execution_id)["status"] == "DEACTIVATED"


def test_only_failed_audiences_are_updated_or_deleted_and_an_update_runs_it_again(amc):
    # The guide: "Only FAILED audiences can be updated (PUT) or deleted".
    good = "SELECT user_id FROM dsp_impressions_for_audiences"
    advertiser = str(2**60 + 1)  # as `run` creates them
    done = run(amc, good, name="done")
    assert done["status"] == "SUCCEEDED"
    for call in (
        lambda: amc.delete_audience(done["audienceExecutionId"]),
        lambda: amc.update_audience(
            done["audienceExecutionId"], "done", advertiser_id=advertiser, query=good, **WINDOW
        ),
    ):
        with pytest.raises(AmazonAdsApiError, match="only FAILED audiences can be") as error:
            call()
        assert error.value.status == 400
    broken = run(amc, "SELECT user_id FROM conversions_for_audiences", name="broken")
    assert broken["status"] == "FAILED"
    with pytest.raises(AmazonAdsApiError, match="audienceName of an audience cannot be changed"):
        amc.update_audience(
            broken["audienceExecutionId"], "renamed", advertiser_id=advertiser, query=good, **WINDOW
        )
    amc.update_audience(
        broken["audienceExecutionId"], "broken", advertiser_id=advertiser, query=good, **WINDOW
    )
    assert amc.get_audience(broken["audienceExecutionId"])["status"] in ("PENDING", "RUNNING")
    fixed = wait(lambda: amc.get_audience(broken["audienceExecutionId"]))
    assert fixed["status"] == "SUCCEEDED" and fixed["query"] == good and "statusReason" not in fixed


@pytest.mark.parametrize(
    ("accept", "added", "absent"),
    [
        (None, set(), {"audienceCount", "deletable"}),
        ("application/json", set(), {"audienceCount", "deletable"}),
        ("application/vnd.amcquerybasedaudience.v1+json", set(), {"audienceCount", "deletable"}),
        ("application/vnd.amcquerybasedaudience.v1.1+json", {"audienceCount"}, {"deletable"}),
        (
            "application/vnd.amcquerybasedaudience.v1.2+json",
            {"audienceCount", "deletable", "audienceType"},
            set(),
        ),
    ],
)
def test_an_audience_is_answered_in_the_version_the_accept_header_asks_for(amc, accept, added, absent):
    done = run(amc, "SELECT user_id FROM dsp_impressions_for_audiences")
    path = f"{amc.api.base_url}/amc/audiences/query/{done['audienceExecutionId']}"
    headers = {
        **amc._audience_headers,
        "Authorization": f"Bearer {amc.api.access_token()}",
        "Amazon-Advertising-API-ClientId": amc.api.client_id,
        **({"Accept": accept} if accept else {}),
    }
    for url, key in ((path, None), (path.rsplit("/", 1)[0], "executionMetadata")):
        response = amc.api.session.get(url, headers=headers, timeout=10)
        expected = accept if accept and "vnd" in accept else "application/vnd.amcquerybasedaudience.v1+json"
        assert response.headers["Content-Type"] == expected
        body = response.json()
        audience = body[key][0] if key else body
        assert added <= set(audience) and not absent & set(audience)
