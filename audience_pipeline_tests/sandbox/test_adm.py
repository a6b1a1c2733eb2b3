"""Amazon Ads Data Manager: the client against the sandbox over real HTTP."""

import hashlib
import json

import pytest

from audience_pipeline.clients.adm import MEMBERS_MEDIA_TYPE, AdmClient
from audience_pipeline.clients.ads_api import AmazonAdsApiError, ServerError
from audience_pipeline.sandbox.identity_graph import is_known

from ..conftest import add_fault, journal

MANAGER = "amzn1.ads-account.m.sandbox"


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def member(user: str, action: str = "CREATE", consent: str = "GRANTED", **hashed: str) -> dict:
    """A member with a hashed email (or the hashed PII given), consented as `consent`."""
    return {
        "externalUserId": user,
        "action": action,
        "userIdentity": {"hashedPiis": [hashed or {"em": sha(f"{user}@example.com")}]},
        "userConsent": {
            "geo": {"countryCode": "US"},
            "consent": {"amzn": {"amznAdStorage": "GRANTED", "amznUserData": consent}},
        },
    }


@pytest.fixture
def adm(ads_client) -> AdmClient:
    return AdmClient(ads_client, MANAGER)


def test_audience_is_created_once_per_name(adm):
    audience = adm.create_audience("High_Value-Buyers", "US", description="top decile")
    assert audience.data_set_type == "AUDIENCE"
    assert (audience.name, audience.country_code) == ("High_Value-Buyers", "US")
    with pytest.raises(AmazonAdsApiError) as error:
        adm.create_audience("High_Value-Buyers", "US")
    assert error.value.status == 400
    # The definition: `code` is the HTTP status as a string, `errorCode` a number.
    assert error.value.body["code"] == "400"
    assert error.value.body["errors"][0]["errorCode"] == 400
    assert error.value.body["errors"][0]["errorMessage"] == error.value.body["message"]
    # The same name in another manager account is a different audience.
    assert AdmClient(adm.api, "another-manager").create_audience("High_Value-Buyers", "DE")


@pytest.mark.parametrize(
    "body",
    [
        {"name": "1starts-with-digit", "countryCode": "US"},
        {"name": "abc", "countryCode": "US"},
        {"name": "GoodName", "countryCode": "usa"},
        {"name": "GoodName", "countryCode": "US", "x": 1},
    ],
)
def test_invalid_audiences_are_refused(ads_client, body):
    with pytest.raises(AmazonAdsApiError) as error:
        ads_client.request(
            "POST", "/adm/audiences", json_body=body, headers={"Amazon-Ads-Manager-Account-ID": "m"}
        )
    assert error.value.status == 400


def test_an_account_header_is_required_and_the_advertiser_header_will_do(ads_client):
    with pytest.raises(AmazonAdsApiError) as error:
        ads_client.request("GET", "/adm/audiences")
    assert error.value.status == 400
    assert "Amazon-Ads-Manager-Account-ID" in error.value.body["details"]
    assert "Amazon-Ads-AccountId" in error.value.body["details"]
    advertiser = {"Amazon-Ads-AccountId": "ENTITY1"}
    ads_client.request(
        "POST", "/adm/audiences", json_body={"name": "By_Advertiser", "countryCode": "US"}, headers=advertiser
    )
    assert [
        d["name"] for d in ads_client.request("GET", "/adm/audiences", headers=advertiser)["dataSets"]
    ] == ["By_Advertiser"]
    # Identity deletion is the one call that requires the manager account.
    with pytest.raises(AmazonAdsApiError) as error:
        AdmClient(ads_client, "", "ENTITY1").delete_identities([{"externalUserId": "u1"}])
    assert error.value.status == 400
    assert "Amazon-Ads-AccountId" not in error.value.body["details"]


def test_audiences_are_listed_page_by_page(sandbox, adm):
    names = [f"Audience_{i}" for i in range(5)]
    for name in names:
        adm.create_audience(name, "US")
    AdmClient(adm.api, "another-manager").create_audience("Not_Mine", "US")
    assert [a.name for a in adm.audiences(page_size=2)] == names
    assert (
        len([e for e in journal(sandbox.ads_url) if e["path"] == "/adm/audiences" and e["method"] == "GET"])
        == 3
    )
    assert adm.find_audience("Audience_3").name == "Audience_3"
    assert adm.find_audience("Not_Mine") is None


def test_ensure_audience_reuses_and_does_not_repeat_a_failed_create(sandbox, adm):
    add_fault(sandbox.ads_url, route="POST /adm/audiences", status=500, count=1)
    with pytest.raises(ServerError):
        adm.ensure_audience("Lookalike_Seed", "US")
    posts = [e for e in journal(sandbox.ads_url) if e["method"] == "POST" and e["path"] == "/adm/audiences"]
    assert [e["status"] for e in posts] == [500]
    first = adm.ensure_audience("Lookalike_Seed", "US")
    assert adm.ensure_audience("Lookalike_Seed", "US") == first
    assert [a.name for a in adm.audiences()] == ["Lookalike_Seed"]


def test_members_create_and_consented_delete_land(sandbox, adm):
    audience = adm.create_audience("Members_Land", "US")
    result = adm.upload_members(audience.data_set_id, [member(f"u{i}") for i in range(3)])
    assert result.ingress_id and result.errors == []
    assert adm.metrics(audience.data_set_id).records_with_identity == 3
    adm.upload_members(audience.data_set_id, [member("u0", "DELETE")])
    metrics = adm.metrics(audience.data_set_id)
    assert (metrics.records_with_identity, metrics.upload_count, metrics.accepted_count) == (2, 2, 4)
    assert set(sandbox.ads.state.members("adm", audience.data_set_id)) == {"u1", "u2"}


@pytest.mark.parametrize("consent", ["DENIED", "UNKNOWN", None])
def test_a_delete_without_granted_consent_is_ignored(sandbox, adm, consent):
    audience = adm.create_audience("Ignored_Deletes", "US")
    adm.upload_members(audience.data_set_id, [member("u1")])
    delete = member("u1", "DELETE", consent or "GRANTED")
    if consent is None:
        del delete["userConsent"]
    assert adm.upload_members(audience.data_set_id, [delete]).errors == []
    assert adm.metrics(audience.data_set_id).records_with_identity == 1
    assert sandbox.ads.state.family("adm")["stats"][audience.data_set_id]["ignoredDeleteCount"] == 1


def test_invalid_members_are_refused_by_index_while_the_rest_apply(adm):
    audience = adm.create_audience("Partial_Success", "US")
    raw_email = "raw.person@example.com"
    members = [
        member("ok0"),
        member("raw", em=raw_email),
        {**member("unknown-key"), "favouriteColour": "blue"},
        {k: v for k, v in member("no-id").items() if k != "externalUserId"},
        member("bad-action", "UPSERT"),
        member("upper-hex", em=sha("x@example.com").upper()),
        member("bad-pii-key", email=sha("y@example.com")),
        # `hashedPiis` has no `country` key in Amazon's definition, hashed or not.
        member("country-hashed", country=sha("us")),
        member("country-raw", country="US"),
        {**member("too-many"), "userIdentity": {"hashedPiis": [{"em": sha(str(i))} for i in range(11)]}},
        member("ok1"),
        # The unverified third-party example's `amazonConsent` is not the definition's `amzn`.
        {**member("third-party-consent"), "userConsent": {"consent": {"amazonConsent": {}}}},
    ]
    result = adm.upload_members(audience.data_set_id, members)
    assert [e.index for e in result.errors] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 11]
    assert all(e.code == "400" and e.details and e.errors for e in result.errors)
    assert all(detail.error_code == 400 for e in result.errors for detail in e.errors)
    assert "userIdentity.hashedPiis[0].em" in result.errors[0].details
    assert "userIdentity.hashedPiis[0].country is not a known field" in result.errors[6].details
    assert raw_email not in json.dumps([e.model_dump() for e in result.errors])
    metrics = adm.metrics(audience.data_set_id)
    assert (metrics.records_with_identity, metrics.accepted_count, metrics.invalid_record_count) == (2, 2, 10)


def test_more_than_10000_members_are_refused(ads_client, adm):
    audience = adm.create_audience("Too_Many_Members", "US")
    members = [member(f"u{i}") for i in range(10_001)]
    with pytest.raises(ValueError, match="10000"):
        adm.upload_members(audience.data_set_id, members)
    path = f"/adm/audiences/{audience.data_set_id}/members"
    headers = {"Amazon-Ads-Manager-Account-ID": MANAGER}
    # The definition's `maxItems` 10,000 and `minItems` 1; it documents no 413, so both are 400.
    for body in ({"members": members}, {"members": []}):
        with pytest.raises(AmazonAdsApiError) as error:
            ads_client.request("POST", path, json_body=body, headers=headers, media_type=MEMBERS_MEDIA_TYPE)
        assert error.value.status == 400
    # Members come in the definition's media type, not plain JSON.
    with pytest.raises(AmazonAdsApiError) as error:
        ads_client.request("POST", path, json_body={"members": members[:1]}, headers=headers)
    assert error.value.status == 400 and MEMBERS_MEDIA_TYPE in error.value.message
    assert adm.upload_members(audience.data_set_id, members[:10_000]).errors == []


def test_unknown_or_foreign_datasets_are_404_or_400_on_metrics(adm):
    audience = AdmClient(adm.api, "another-manager").create_audience("Foreign_Audience", "US")
    for data_set_id in ("no-such-dataset", audience.data_set_id):
        with pytest.raises(AmazonAdsApiError) as error:
            adm.upload_members(data_set_id, [member("u1")])
        assert error.value.status == 404
        # The metrics operation documents no 404.
        with pytest.raises(AmazonAdsApiError) as error:
            adm.metrics(data_set_id)
        assert error.value.status == 400


def test_match_rate_follows_the_identity_graph(sandbox, adm):
    audience = adm.create_audience("Match_Rate", "US")
    members = [member(f"u{i}") for i in range(2_000)]
    adm.upload_members(audience.data_set_id, members)
    metrics = adm.metrics(audience.data_set_id)
    config = sandbox.ads.config
    expected = sum(
        is_known(sha(f"u{i}@example.com"), seed=config.seed, known_share=config.known_share)
        for i in range(2_000)
    )
    assert metrics.records_resolved == expected
    assert metrics.match_record_percentage == pytest.approx(100 * expected / 2_000, abs=0.01)
    assert metrics.match_record_percentage == pytest.approx(100 * config.known_share, abs=5)


def test_identities_are_deleted_by_user_id_or_hashed_identity(adm):
    first, second = adm.create_audience("Deletion_One", "US"), adm.create_audience("Deletion_Two", "US")
    for audience in (first, second):
        adm.upload_members(audience.data_set_id, [member(f"u{i}") for i in range(4)])
    adm.delete_identities(
        [{"externalUserId": "u0"}, {"identity": {"hashedPiis": [{"em": sha("u1@example.com")}]}}]
    )
    assert adm.metrics(first.data_set_id).records_with_identity == 2
    assert adm.metrics(second.data_set_id).records_with_identity == 2
    with pytest.raises(AmazonAdsApiError) as error:
        adm.delete_identities([{"identity": {"hashedPiis": [{"em": "raw@example.com"}]}}])
    assert error.value.status == 400
    with pytest.raises(ValueError):
        adm.delete_identities([{"externalUserId": str(i)} for i in range(1_001)])


def test_throttling_and_server_errors_on_upload_are_ridden_out_without_duplicates(sandbox, adm):
    audience = adm.create_audience("Flaky_Uploads", "US")
    route = f"POST /adm/audiences/{audience.data_set_id}/members"
    add_fault(sandbox.ads_url, route=route, status=429, count=1, retry_after=0)
    add_fault(sandbox.ads_url, route=route, status=503, count=1)
    assert adm.upload_members(audience.data_set_id, [member(f"u{i}") for i in range(5)]).errors == []
    calls = [e for e in journal(sandbox.ads_url) if e["path"].endswith("/members")]
    assert [e["status"] for e in calls] == [429, 503, 200]
    metrics = adm.metrics(audience.data_set_id)
    assert (metrics.upload_count, metrics.accepted_count, metrics.records_with_identity) == (1, 5, 5)


def test_the_members_journal_holds_hashes_only(sandbox, adm):
    audience = adm.create_audience("Hashes_Only", "US")
    emails = [f"person{i}@example.com" for i in range(3)]
    adm.upload_members(audience.data_set_id, [member(f"u{i}", em=sha(e)) for i, e in enumerate(emails)])
    bodies = json.dumps([e["body"] for e in journal(sandbox.ads_url) if e["path"].endswith("/members")])
    assert sha(emails[0]) in bodies
    assert not any(email in bodies for email in emails)
    assert "@" not in bodies
