"""Amazon Ads Data Manager client: audience datasets, member uploads, metrics, identity deletion.

Shapes, media types and headers follow `AdsDataManager_prod_3p.json`; limits follow Amazon's guide.
Member uploads and identity deletions are safe to repeat (CREATE and DELETE are upserts by
`externalUserId`), so they are retried on 429 and 5xx; creating an audience is not: on a failure
that may hide a success the client looks the audience up by name before giving up.

Members built as JSON text (the delivery writes them column-wise) go into the upload's body as they
are, so the body's size is known exactly before it is sent (`members_body`).
"""

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from audience_pipeline.clients.ads_api import LOST_ANSWER, AdsApiClient, ApiModel
from audience_pipeline.clients.rate_limit import RateLimit

MANAGER_ACCOUNT_HEADER = "Amazon-Ads-Manager-Account-ID"
ADVERTISER_ACCOUNT_HEADER = "Amazon-Ads-AccountId"
# The definition's media types; every other ADM call takes and answers `application/json`.
MEMBERS_MEDIA_TYPE = "application/vnd.admAudiences.v1+json"
METRICS_MEDIA_TYPE = "application/vnd.admmetrics.v1+json"
DELETION_MEDIA_TYPE = "application/vnd.admDataDeletion.v1+json"
MAX_MEMBERS_PER_REQUEST = 10_000
# The guide: "files limited to 10 MB", about 5,000 records per request recommended.
MAX_REQUEST_BYTES = 10 * 1024 * 1024
RECOMMENDED_MEMBERS_PER_REQUEST = 5_000
MAX_DELETION_TARGETS = 1_000


def members_body(members: Sequence[str]) -> bytes:
    """The body of a member upload, byte for byte, from each member object's JSON text:
    `{"members":[m1,m2,…]}`, so its size is its envelope's plus each member's and a comma, less one."""
    return ('{"members":[' + ",".join(members) + "]}").encode()


class AdmAudience(ApiModel):
    """An audience dataset."""

    data_set_id: str
    name: str
    country_code: str | None = None
    data_set_type: str = "AUDIENCE"
    description: str | None = None


class DetailedError(ApiModel):
    """One of Amazon's reasons: `errorCode` is a number, `errorType` its name."""

    error_code: float | None = None
    error_message: str | None = None
    error_type: str | None = None


class MemberError(ApiModel):
    """A member Amazon refused, by its index in the request, with Amazon's reasons (`code` is the
    HTTP status as a string). Only `index` is relied on: without it no member could be told apart."""

    index: int
    code: str | None = None
    details: str | None = None
    errors: list[DetailedError] = []

    @property
    def reason(self) -> str:
        """Amazon's words for the refusal: its details, else its first message, else its code."""
        messages = [error.error_message for error in self.errors if error.error_message]
        return self.details or (messages[0] if messages else None) or self.code or "refused"


class MembersResult(ApiModel):
    """The answer to one member upload: its ingress id and the refused members (absent when none)."""

    ingress_id: str | None = None
    errors: list[MemberError] = []


class DatasetMetrics(ApiModel):
    """What Amazon reports about a dataset: counts and the share of records it resolved (Amazon
    types the counts as numbers; they are whole)."""

    accepted_count: int
    invalid_record_count: int
    match_record_percentage: float
    records_resolved: int
    records_with_identity: int
    upload_count: int


class AdmClient:
    """The Ads Data Manager calls of one manager account, optionally on behalf of one DSP advertiser.

    `Amazon-Ads-Manager-Account-ID` goes on every call. `advertiser_account_id`, when given, goes as
    `Amazon-Ads-AccountId` where Amazon takes it (create, list, members, metrics), never on identity
    deletion, which the definition authorizes by manager account only.
    """

    def __init__(self, api: AdsApiClient, manager_account_id: str, advertiser_account_id: str | None = None):
        self.api, self.manager_account_id = api, manager_account_id
        self.advertiser_account_id = advertiser_account_id

    def _call(self, method: str, path: str, *, advertiser: bool = True, **kwargs: Any) -> Any:
        headers = {MANAGER_ACCOUNT_HEADER: self.manager_account_id}
        if advertiser and self.advertiser_account_id:
            headers[ADVERTISER_ACCOUNT_HEADER] = self.advertiser_account_id
        return self.api.request(method, path, headers=headers, **kwargs)

    def create_audience(
        self,
        name: str,
        country_code: str,
        *,
        description: str | None = None,
        id_retention: bool | None = None,
    ) -> AdmAudience:
        """`POST /adm/audiences` once: not retried after a 5xx (it may have been created)."""
        body: dict[str, Any] = {"name": name, "countryCode": country_code}
        if description is not None:
            body["description"] = description
        if id_retention is not None:
            body["idRetention"] = id_retention
        created = self._call("POST", "/adm/audiences", json_body=body, idempotent=False)
        if created.get("dataSetId"):
            return AdmAudience.model_validate(created)
        # The definition's 201 lists `dataSetId` but does not require it: the list always has it.
        found = self.find_audience(name)
        if found is None:
            raise ValueError(f"POST /adm/audiences answered no dataSetId and no audience {name} is listed")
        return found

    def audiences(self, *, page_size: int = 100) -> Iterator[AdmAudience]:
        """Every audience dataset of the manager account, following `nextToken`."""
        token = None
        while True:
            params = {"limit": page_size, **({"nextToken": token} if token else {})}
            page = self._call("GET", "/adm/audiences", params=params)
            yield from (AdmAudience.model_validate(dataset) for dataset in page.get("dataSets") or [])
            token = page.get("nextToken")
            if not token:
                return

    def find_audience(self, name: str) -> AdmAudience | None:
        """The audience dataset with this name, if the manager account has one."""
        return next((audience for audience in self.audiences() if audience.name == name), None)

    def ensure_audience(self, name: str, country_code: str, *, description: str | None = None) -> AdmAudience:
        """The audience named `name`, created if missing; a failed create is checked by a lookup."""
        existing = self.find_audience(name)
        if existing is not None:
            return existing
        try:
            return self.create_audience(name, country_code, description=description)
        except LOST_ANSWER:
            created = self.find_audience(name)
            if created is None:
                raise
            return created

    def upload_members(
        self,
        data_set_id: str,
        members: Sequence[str] | Sequence[Mapping[str, Any]],
        *,
        rate_limit: RateLimit | None = None,
    ) -> MembersResult:
        """CREATE/DELETE up to 10,000 members, each its JSON text (sent as it is, see `members_body`) or
        an object; refused members come back by index. With `rate_limit`, each attempt takes from it."""
        if not 1 <= len(members) <= MAX_MEMBERS_PER_REQUEST:
            raise ValueError(f"members: {len(members)} given, 1..{MAX_MEMBERS_PER_REQUEST} per request")
        texts = [m if isinstance(m, str) else json.dumps(m, separators=(",", ":")) for m in members]
        body = self._call(
            "POST",
            f"/adm/audiences/{data_set_id}/members",
            json_text=members_body(texts),
            idempotent=True,
            media_type=MEMBERS_MEDIA_TYPE,
            rate_limit=rate_limit,
        )
        return MembersResult.model_validate(body)

    def metrics(self, data_set_id: str) -> DatasetMetrics:
        """The dataset's upload and match metrics."""
        body = self._call("GET", f"/adm/datasets/{data_set_id}/metrics", media_type=METRICS_MEDIA_TYPE)
        return DatasetMetrics.model_validate(body)

    def delete_identities(self, targets: Sequence[dict[str, Any]]) -> None:
        """Delete up to 1,000 users (`{"externalUserId"}` or `{"identity": {...}}`) from every dataset."""
        if not 1 <= len(targets) <= MAX_DELETION_TARGETS:
            raise ValueError(f"targets: {len(targets)} given, 1..{MAX_DELETION_TARGETS} per request")
        self._call(
            "POST",
            "/adm/identities/delete",
            advertiser=False,
            json_body={"targetIdentities": list(targets)},
            idempotent=True,
            media_type=DELETION_MEDIA_TYPE,
        )
