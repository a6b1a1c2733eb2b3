"""Amazon's own request samples, replayed against the sandbox as Amazon's guides write them.

Each sample is the guide's curl command, copied verbatim (see /tmp/amz/research.md for where each
comes from). Only what stands for the caller's own account is put in: the access token (`Atza|…`)
and, where a sample has one, the profile id of `Amazon-Advertising-API-Scope`. Headers and bodies
go out otherwise byte for byte, and the outcome is checked in the sandbox's records.
"""

import json
import re
import shlex
from urllib.parse import urlsplit

import pytest
import requests

from audience_pipeline.sandbox.profiles import PROFILES

from .openapi import problems, recording_session


def curl(sample: str) -> tuple[str, str, dict[str, str], bytes | None]:
    """(method, path, headers, body) of a curl command as Amazon's guides write them."""
    words = shlex.split(sample.replace("\\\n", " "))
    method, path, headers, body = None, "", {}, None
    options = iter(words[1:])
    for word in options:
        if word == "--request":
            method = next(options)
        elif word == "--header":
            name, _, value = next(options).partition(": ")
            headers[name] = value
        elif word == "--data":
            body = next(options).encode()
        elif not word.startswith("--"):
            path = urlsplit(word).path
    return method or ("POST" if body is not None else "GET"), path, headers, body


def replay(
    sandbox, session: requests.Session, sample: str, *, body: bytes | None = None
) -> requests.Response:
    """Send a curl sample to the sandbox with a sandbox token (in the sample's own form: bare or
    `Bearer`) and a sandbox profile id in place of the sample's; `body` replaces a broken one."""
    method, path, headers, sample_body = curl(sample)
    token = requests.post(
        sandbox.token_url,
        data={"grant_type": "refresh_token", "refresh_token": "r", "client_id": "c", "client_secret": "s"},
        timeout=10,
    ).json()["access_token"]
    headers["Authorization"] = re.sub(r"Atza\|\w+", lambda _: token, headers["Authorization"])
    if "Amazon-Advertising-API-Scope" in headers:
        headers["Amazon-Advertising-API-Scope"] = str(PROFILES[0]["profileId"])
    return session.request(
        method,
        f"{sandbox.ads_url}{path}",
        headers=headers,
        data=sample_body if body is None else body,
        timeout=10,
    )


# --- Data Provider: en-us/guides/dsp/data-provider.md ------------------------------------------------

DP_ASSOCIATE = r"""curl --location --request PATCH 'https://advertising-api.amazon.com/v2/dp/audience' \
    --header 'Amazon-Advertising-API-ClientId: amzn1.application-oa2-client.xxxxxxxxxx' \
    --header 'Content-Type: application/json' \
    --header 'Authorization: Atza|xxxxxxxxxxx' \
    --header 'Host: advertising-api.amazon.com' \
    --data '{
        "patches": [
            {
                "op": "add",
                "path": "/COOKIE-XYZXYZXYZ/audiences",
                "value": [
                    12312312123
                ]
            }
        ]
    }'"""

DP_DISASSOCIATE = r"""curl --location --request PATCH 'https://advertising-api.amazon.com/v2/dp/audience' \
    --header 'Amazon-Advertising-API-ClientId: amzn1.application-oa2-client.xxxxxxxxxx' \
    --header 'Content-Type: application/json' \
    --header 'Authorization: Atza|xxxxxxxxxxx' \
    --header 'Host: advertising-api.amazon.com' \
    --data '{
        "patches": [
            {
                "op": "remove",
                "path": "/COOKIE-XYZXYZXYZ/audiences",
                "value": [
                    12312312123
                ]
            }
        ]
    }'"""

DP_CREATE_AUDIENCE = r"""curl --location 'https://advertising-api.amazon.com/v2/dp/audiencemetadata/' \
    --header 'Amazon-Advertising-API-ClientId: amzn1.application-oa2-client.XXXXXXX' \
    --header 'Authorization: Bearer Atza|XXXXXX' \
    --header 'Accept: application/json' \
    --header 'Content-Type: application/json' \
    --header 'Amazon-Advertising-API-Scope: 123123123' \
    --data '{
        "name": "string",
        "description": "string",
        "advertiserId": 1111111111`,
        "metadata": {
            "type": "DATA_PROVIDER",
            "externalAudienceId": "string",
            "ttl": 34300800,
            "dataSourceCountry": ["US"]
        }
    }'"""

DP_SAMPLE_AUDIENCE_ID = "12312312123"


def dp_cookies(sandbox) -> set[str]:
    """The cookie ids the sandbox's DSP audience 12312312123 holds."""
    return sandbox.ads.state.members("dsp", DP_SAMPLE_AUDIENCE_ID).get("COOKIE", set())


def test_dp_guide_associate_and_disassociate_samples_replayed_as_written(sandbox):
    # The samples name audience 12312312123: it is put in the sandbox's records as if created.
    state = sandbox.ads.state
    with state.lock:
        state.family("dsp").setdefault("audiences", {})[DP_SAMPLE_AUDIENCE_ID] = {
            "id": int(DP_SAMPLE_AUDIENCE_ID),
            "name": "The guide's sample audience",
            "description": "",
            "advertiserId": 1111111111,
            "metadata": {
                "type": "DATA_PROVIDER",
                "externalAudienceId": "string",
                "dataSourceCountry": ["US"],
            },
        }
    exchanges = []
    session = recording_session(exchanges)

    added = replay(sandbox, session, DP_ASSOCIATE)
    assert added.status_code == 200, added.text
    assert dp_cookies(sandbox) == {"XYZXYZXYZ"}
    removed = replay(sandbox, session, DP_DISASSOCIATE)
    assert removed.status_code == 200, removed.text
    assert dp_cookies(sandbox) == set()

    # Sent as written: the bare token and the Host header went out, and both conform.
    assert {e.request_headers["Authorization"].startswith("Atza|") for e in exchanges} == {True}
    assert {e.request_headers["Host"] for e in exchanges} == {"advertising-api.amazon.com"}
    assert problems(exchanges) == []


def test_dp_guide_create_audience_sample_needs_its_stray_backtick_removed(sandbox):
    _, _, _, published = curl(DP_CREATE_AUDIENCE)
    # As published, the body is not JSON: a backtick follows the advertiserId. Amazon would refuse it
    # as the sandbox does.
    with pytest.raises(json.JSONDecodeError):
        json.loads(published)
    session = requests.Session()
    assert replay(sandbox, session, DP_CREATE_AUDIENCE).status_code == 400

    # Without the backtick the body is JSON of the definition's shape. It is still refused, for one
    # reason only: its placeholder name "string" has 6 characters, and the definition's
    # `audienceName` asks for 10 to 128.
    fixed = published.replace(b"1111111111`,", b"1111111111,")
    assert fixed.count(b"`") == 0 and len(fixed) == len(published) - 1
    refused = replay(sandbox, session, DP_CREATE_AUDIENCE, body=fixed)
    assert refused.status_code == 400
    assert [e["fieldName"] for e in refused.json()["error"]["errors"]] == ["name"]

    named = replay(
        sandbox,
        session,
        DP_CREATE_AUDIENCE,
        body=fixed.replace(b'"name": "string"', b'"name": "string audience"'),
    )
    assert named.status_code == 200, named.text
    [audience] = sandbox.ads.state.family("dsp")["audiences"].values()
    assert (audience["advertiserId"], audience["metadata"]["ttl"]) == (1111111111, 34300800)
