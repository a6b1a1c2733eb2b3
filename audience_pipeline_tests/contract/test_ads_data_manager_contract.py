"""The Ads Data Manager client and the sandbox, held to Amazon's `AdsDataManager_prod_3p.json`."""

import dataclasses
import hashlib
import json

import polars as pl
import pytest

from audience_pipeline.clients.adm import AdmClient
from audience_pipeline.clients.ads_api import AmazonAdsApiError
from audience_pipeline.identity import normalize_identities
from audience_pipeline.membership.adm_delivery import TARGET_IDENTITIES, AdmAdapter, MemberRules, adm_members
from audience_pipeline.membership.delivery import USER_ID, deliver
from audience_pipeline.membership.ledger import Ledger
from audience_pipeline.sandbox.adm import COUNTRY_CODES
from audience_pipeline.state import ParquetStore

from .openapi import DEFINITIONS, Exchange, problems

MANAGER = "amzn1.ads-account.g.contract"
ADVERTISER = "ENTITY1CONTRACT"


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def member(user: str, action: str = "CREATE") -> dict:
    """A member as our delivery builds one: hashed PII and a partner id, consent with its country."""
    return {
        "externalUserId": user,
        "action": action,
        "userIdentity": {
            "hashedPiis": [{"em": sha(f"{user}@example.com"), "fn": sha("alice"), "zip": sha("98109")}],
            "externalIdentities": [{"liveRampId": f"LR-{user}"}],
        },
        "userConsent": {
            "geo": {"countryCode": "US"},
            "consent": {
                "amzn": {"amznAdStorage": "GRANTED", "amznUserData": "GRANTED"},
                "tcf": "CPXxRfAPXxRfA",
            },
        },
    }


@pytest.fixture
def adm(recorded) -> AdmClient:
    return AdmClient(recorded.api, MANAGER, ADVERTISER)


def adm_exchanges(recorded, method: str, path: str) -> list[Exchange]:
    return [e for e in recorded.exchanges if e.method == method and e.path == path]


def test_every_ads_data_manager_call_conforms_to_amazons_definition(recorded, adm):
    audiences = [adm.create_audience(f"Contract_{i}", "US", description="contract test") for i in range(3)]
    assert [a.name for a in adm.audiences(page_size=2)] == ["Contract_0", "Contract_1", "Contract_2"]
    pages = [json.loads(e.response_body) for e in adm_exchanges(recorded, "GET", "/adm/audiences")]
    assert ["nextToken" in page for page in pages] == [True, False]

    data_set_id = audiences[0].data_set_id
    # Valid for the schema (`em` is a string) but not a SHA-256: Amazon refuses that member alone.
    refused = {**member("refused"), "userIdentity": {"hashedPiis": [{"em": "not-a-hash"}]}}
    result = adm.upload_members(data_set_id, [member("u1"), member("u2"), refused])
    assert [(error.index, error.code) for error in result.errors] == [(2, "400")]
    assert adm.upload_members(data_set_id, [member("u1", "DELETE")]).errors == []
    metrics = adm.metrics(data_set_id)
    assert (metrics.records_with_identity, metrics.accepted_count, metrics.invalid_record_count) == (1, 3, 1)
    adm.delete_identities(
        [{"externalUserId": "u2"}, {"identity": {"hashedPiis": [{"em": sha("u3@example.com")}]}}]
    )
    assert adm.metrics(data_set_id).records_with_identity == 0

    with pytest.raises(AmazonAdsApiError) as duplicate:
        adm.create_audience("Contract_0", "US")
    with pytest.raises(AmazonAdsApiError) as unknown:
        adm.upload_members("no-such-dataset", [member("u1")])
    with pytest.raises(AmazonAdsApiError) as unknown_metrics:
        adm.metrics("no-such-dataset")
    assert [e.value.status for e in (duplicate, unknown, unknown_metrics)] == [400, 404, 400]

    answered = {
        (e.method, e.path.split("/")[2], e.status) for e in recorded.exchanges if e.path.startswith("/adm/")
    }
    assert answered == {
        ("POST", "audiences", 201),
        ("POST", "audiences", 400),
        ("GET", "audiences", 200),
        ("POST", "audiences", 200),
        ("POST", "audiences", 404),
        ("GET", "datasets", 200),
        ("GET", "datasets", 400),
        ("POST", "identities", 200),
    }
    recorded.check("ads_data_manager")


def test_the_checker_catches_a_missing_required_field_and_an_invented_one(recorded, adm):
    audience = adm.create_audience("Drift_Check", "US")
    adm.upload_members(audience.data_set_id, [member("u1")])
    [created] = adm_exchanges(recorded, "POST", "/adm/audiences")
    [uploaded] = adm_exchanges(recorded, "POST", f"/adm/audiences/{audience.data_set_id}/members")
    assert problems([created, uploaded]) == []

    sent = json.loads(uploaded.request_body)
    del sent["members"][0]["action"]
    without_action = dataclasses.replace(uploaded, request_body=json.dumps(sent).encode())
    assert problems([without_action]) == [
        f"POST {uploaded.path} request: members/0: 'action' is a required property"
    ]

    answered = json.loads(created.response_body)
    answered["managerAccountId"] = MANAGER  # what the sandbox used to invent
    invented = dataclasses.replace(created, response_body=json.dumps(answered).encode())
    [problem] = problems([invented])
    assert problem.startswith("POST /adm/audiences -> 201: body: Additional properties")
    assert "managerAccountId" in problem


def test_the_sandbox_takes_the_countries_amazon_lists():
    extract = json.loads((DEFINITIONS / "ads_data_manager.json").read_text())
    create = extract["paths"]["/adm/audiences"]["post"]["requestBody"]["content"]["application/json"]
    assert set(create["schema"]["properties"]["countryCode"]["enum"]) == COUNTRY_CODES


def test_members_the_delivery_writes_as_text_conform_to_amazons_definition(recorded, adm, tmp_path):
    """The delivery builds members as JSON text column-wise and sends the text as the body: what
    arrives, a CREATE and then a DELETE, is held to the definition (not to hand-written dicts)."""
    profiles = pl.DataFrame(
        {
            USER_ID: ["u1", "u2", "u3"],
            "email": ["Ana@Example.com", None, "cy@example.org"],
            "phone": ["+1 206 555 0100", "+44 20 7946 0958", None],
            "first_name": ["Ana", "Bo", None],
            "country_code": ["US", "GB", None],
            "live_ramp_id": [None, 'LR-"2"', "LR-é"],
            "amzn_user_data": ["granted", None, "nonsense"],
            "tcf_string": ["CPXxRfAPXxRfA", None, None],
        }
    )
    snapshot = normalize_identities(profiles, default_country="US").frame
    rules = MemberRules(TARGET_IDENTITIES, "GRANTED", "US")
    ledger = Ledger(ParquetStore(str(tmp_path)), "adm/contract", 1)
    adapter = AdmAdapter("Text_Contract", "US", "contract", adm)

    def delivered(frame: pl.DataFrame) -> int:
        members = adm_members(frame, rules)
        return deliver(ledger, lambda state, held: members, adapter, max_removal_share=1).confirmed

    assert delivered(snapshot) == 3
    assert delivered(snapshot.head(0)) == 3

    uploads = [e for e in recorded.exchanges if e.method == "POST" and e.path.endswith("/members")]
    assert len(uploads) == 2
    assert problems(recorded.exchanges) == []
