"""Amazon DSP Data Provider client: audience metadata and MAID membership patches.

Requests are what Amazon's `DataProvider_openapi.yaml` defines (held to it by
`audience_pipeline_tests/contract/test_data_provider_contract.py`): `Content-Type: application/json`
on every call, GET included, as the definition requires; ids as JSON integers (int64; audience ids
exceed 2^53 and stay Python ints); only the definition's fields.

`Amazon-Advertising-API-Scope` goes on create only. The definition requires it nowhere; Amazon's
guide sends it only in its create sample (the audience belongs to the profile's advertiser), and
neither its PATCH samples nor RudderStack's production client send it on PATCH, where the audience
ids say what is changed.

Patches are idempotent (add/remove of a MAID), so they are retried on 429 and 5xx; creating an
audience is not retried after a 5xx or a lost connection. The API has no call that lists audiences,
so the caller records its intent before creating one and Amazon's id after, and stops rather than
create a second one when an answer was lost (`membership.dsp_audiences.DspAudienceRecord`).
"""

import json
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from audience_pipeline.clients.ads_api import AdsApiClient, AmazonAdsApiError, ApiModel
from audience_pipeline.clients.rate_limit import RateLimit

SCOPE_HEADER = "Amazon-Advertising-API-Scope"
JSON_CONTENT = {"Content-Type": "application/json"}
MAX_PATCHES_PER_REQUEST = 2_000
# The guide's 1 MB, not the OpenAPI summary's 6 MB: the stricter of Amazon's two statements.
MAX_PATCH_BODY_BYTES = 1_000_000


class AudienceSize(ApiModel):
    """How many records Amazon received for an audience and how many it matched."""

    received_record_size: int
    matched_record_size: int
    match_rate: float


class DspAudienceMetadata(ApiModel):
    """A data provider audience's metadata."""

    type: str = "DATA_PROVIDER"
    external_audience_id: str
    ttl: int | None = None
    data_source_country: list[str] = []
    audience_size: AudienceSize | None = None


class DspAudience(ApiModel):
    """A data provider audience; `id` is exact (above 2^53)."""

    id: int
    name: str
    description: str | None = None
    advertiser_id: int | None = None
    metadata: DspAudienceMetadata


def maid_patch(op: Literal["add", "remove"], maid: str, audience_id: int) -> dict[str, Any]:
    """One patch adding a mobile ad id to, or removing it from, an audience."""
    return {"op": op, "path": f"/MAID-{maid}/audiences", "value": [audience_id]}


def patch_batches(patches: Sequence[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Split patches into requests within Amazon's limits: ≤2,000 patches and ≤1 MB each."""
    # Sized as requests serializes JSON (", " between items), erring a separator on the safe side.
    envelope = len(json.dumps({"patches": []}))
    batch: list[dict[str, Any]] = []
    size = envelope
    for patch in patches:
        patch_size = len(json.dumps(patch).encode()) + 2
        if batch and (len(batch) == MAX_PATCHES_PER_REQUEST or size + patch_size > MAX_PATCH_BODY_BYTES):
            yield batch
            batch, size = [], envelope
        batch.append(patch)
        size += patch_size
    if batch:
        yield batch


class DspClient:
    """The Data Provider calls; audiences are created in one profile's scope."""

    def __init__(self, api: AdsApiClient, profile_id: int):
        self.api, self.profile_id = api, profile_id

    def _call(self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        return self.api.request(method, path, headers={**JSON_CONTENT, **(headers or {})}, **kwargs)

    def create_audience(
        self,
        name: str,
        description: str,
        advertiser_id: int,
        external_audience_id: str,
        data_source_country: Sequence[str],
        *,
        ttl: int | None = None,
    ) -> DspAudience:
        """`POST /v2/dp/audiencemetadata/` once: not retried after a 5xx (it may have been created)."""
        metadata: dict[str, Any] = {
            "type": "DATA_PROVIDER",
            "externalAudienceId": external_audience_id,
            "dataSourceCountry": list(data_source_country),
        }
        if ttl is not None:
            metadata["ttl"] = ttl
        body = {"name": name, "description": description, "advertiserId": advertiser_id, "metadata": metadata}
        answer = self._call(
            "POST",
            "/v2/dp/audiencemetadata/",
            headers={SCOPE_HEADER: str(self.profile_id)},
            json_body=body,
            idempotent=False,
        )
        return DspAudience.model_validate(answer["audience"])

    def get_audience(self, audience_id: int) -> DspAudience | None:
        """The audience with this id (with its size), or None if Amazon has none."""
        try:
            answer = self._call("GET", f"/v2/dp/audiencemetadata/{audience_id}")
        except AmazonAdsApiError as error:
            if error.status == 404:
                return None
            raise
        return DspAudience.model_validate(answer["audience"])

    def patch_audiences(
        self, patches: Sequence[dict[str, Any]], *, rate_limit: RateLimit | None = None
    ) -> str:
        """Apply one request of add/remove patches (see `patch_batches`); returns the job id. With
        `rate_limit`, each attempt first takes its request from it."""
        if not 1 <= len(patches) <= MAX_PATCHES_PER_REQUEST:
            raise ValueError(f"patches: {len(patches)} given, 1..{MAX_PATCHES_PER_REQUEST} per request")
        answer = self._call(
            "PATCH", "/v2/dp/audience", json_body={"patches": list(patches)}, rate_limit=rate_limit
        )
        return answer["jobId"]
