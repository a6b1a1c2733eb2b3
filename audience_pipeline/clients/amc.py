"""Amazon Marketing Cloud client: advertiser data upload, user deletion and rule-based audiences.

A thin layer over `AdsApiClient` that sets the AMC headers and media types, pages through lists
(`nextToken` as a query parameter, present only while more pages follow) and reads the documented
variants of statuses (the ADU guide's examples show `COMPLETED` where the definition says `SUCCESS`).
Calls that create something are never repeated after a 5xx: look it up first (`find_audience`,
`get_dataset`, `list_uploads`).

Shapes per Amazon's definitions (AdvertiserDataUpload_prod_3p.json, Rule-BasedAudiences_prod_3p.json,
AMCAdministration_prod_3p.json). Rule-based audiences are read as
`application/vnd.amcquerybasedaudience.v1.1+json`, the first version with `audienceCount`.

AMC accounts (seed 003: "if you leave the account id blank, the first account of the instance is
used"): `GET /amc/accounts?nextToken` with only the bearer token and client id →
`{"amcAccounts": [{"accountId", "accountName", "marketplaceId"}], "nextToken"?}`. `accountId` is the
`Amazon-Advertising-API-AdvertiserId` of the data upload calls; see `first_amc_account`.
"""

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict

from audience_pipeline.clients.ads_api import AdsApiClient, AmazonAdsApiError

NOT_FINISHED = frozenset({"SUBMITTED", "PENDING", "IN_PROGRESS", "RUNNING"})
# Each resource's media type: sent as Content-Type and Accept.
DATASET_MEDIA_TYPE = "application/vnd.amcadvertiserdataset.v1+json"
UPLOAD_MEDIA_TYPE = "application/vnd.amcadvertiserdataupload.v1+json"
DELETION_MEDIA_TYPE = "application/vnd.amcadvertiseruserdeletionrequest.v1+json"
ACCOUNTS_MEDIA_TYPE = "application/vnd.amcaudiencesconnections.v1+json"
AUDIENCE_MEDIA_TYPE = "application/vnd.amcquerybasedaudience.v1+json"
AUDIENCE_READ_MEDIA_TYPE = "application/vnd.amcquerybasedaudience.v1.1+json"
AUDIENCE_UPDATED_MEDIA_TYPE = "application/vnd.amcquerybasedaudience.v1.2+json"
SUCCEEDED = frozenset({"SUCCESS", "COMPLETED", "SUCCEEDED"})
FAILED = frozenset({"FAILED"})

UpdateStrategy = Literal["ADDITIVE", "FULL_REPLACE", "OVERLAP_REPLACE", "OVERLAP_KEEP"]
# ZIP, also in the definition, is deprecated since 2025-01-01.
Compression = Literal["GZIP", "BZIP", "SNAPPY", "NONE"]
JSON_LINES = {"jsonDataFormat": "LINES"}
PARQUET = {"parquetDataFormat": "PARQUET_DATA_FORMAT"}


def csv_format(field_delimiter: str = ",", quote_character: str = '"') -> dict[str, Any]:
    """The `fileFormat` of CSV files with a header row."""
    return {"csvDataFormat": {"fieldDelimiter": field_delimiter, "quoteCharacter": quote_character}}


def is_final(status: str | None) -> bool:
    """Whether a job in this status will not change any more (unknown statuses count as final)."""
    return (status or "").upper() not in NOT_FINISHED


def succeeded(status: str | None) -> bool:
    """Whether a job in this status finished well (`SUCCESS`, `COMPLETED` or `SUCCEEDED`)."""
    return (status or "").upper() in SUCCEEDED


def failed(status: str | None) -> bool:
    """Whether a job in this status failed (read its `message` or `statusReason`)."""
    return (status or "").upper() in FAILED


def amc_time(value: datetime | str) -> str:
    """A time as AMC takes it: `yyyy-MM-ddTHH:mm:ssZ` in UTC (naive datetimes are taken as UTC)."""
    if isinstance(value, str):
        return value
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


class Upload(TypedDict, total=False):
    """An upload as `GET /uploads/{dataSetId}/{uploadId}` describes it."""

    uploadId: str
    dataSetId: str
    status: str
    message: str
    metrics: dict[str, int]
    createdAt: str
    updatedAt: str
    countryCode: str
    dataSource: dict[str, str]


class UserDeletion(TypedDict, total=False):
    """A user deletion request's progress."""

    userDeletionRequestId: str
    status: str
    identityCount: int
    creationDateTime: str


class Audience(TypedDict, total=False):
    """A rule-based audience execution, as the v1.1 media type shows it."""

    audienceExecutionId: str
    audienceName: str
    advertiserId: str
    instanceId: str
    query: str
    status: str
    statusReason: str
    audienceCount: int
    dspAudienceId: str
    lastRefreshedTime: str
    createTime: str
    timeWindowStart: str
    timeWindowEnd: str
    timeWindowRelative: bool
    refreshRateDays: int


def _paged(
    api: AdsApiClient, method: str, path: str, key: str, params: Mapping[str, Any], **kwargs: Any
) -> Iterator[Any]:
    """The `key` items of every page of a list call, following `nextToken` (a query parameter in
    every AMC definition, the list POSTs included: they take no body)."""
    token = None
    while True:
        query = {**params, **({"nextToken": token} if token else {})}
        body = api.request(method, path, params=query, **kwargs)
        yield from body.get(key, [])
        token = body.get("nextToken")
        if not token:
            return


def list_amc_accounts(api: AdsApiClient) -> list[dict[str, Any]]:
    """Every AMC account these credentials reach: `{"accountId", "accountName", "marketplaceId"}`."""
    return list(_paged(api, "GET", "/amc/accounts", "amcAccounts", {}, media_type=ACCOUNTS_MEDIA_TYPE))


def first_amc_account(api: AdsApiClient) -> dict[str, Any]:
    """The account to use when the `account_id` setting is blank: the first one Amazon lists.

    Raises LookupError when the credentials reach no AMC account.
    """
    accounts = list_amc_accounts(api)
    if not accounts:
        raise LookupError(
            "GET /amc/accounts lists no AMC account for these credentials: set account_id, or grant the "
            "Login with Amazon user access to the AMC instance"
        )
    return accounts[0]


class AmcClient:
    """One AMC instance, reached through an `AdsApiClient`."""

    def __init__(
        self,
        api: AdsApiClient,
        instance_id: str,
        account_id: str,
        marketplace_id: str,
        *,
        entity_id: str | None = None,
    ):
        self.api, self.instance_id = api, instance_id
        self._upload_headers = {
            "Amazon-Advertising-API-AdvertiserId": account_id,
            "Amazon-Advertising-API-MarketplaceId": marketplace_id,
        }
        self._audience_headers = {"Amazon-Marketing-Cloud-Audience-InstanceId": instance_id}
        if entity_id:
            self._audience_headers["Amazon-Advertising-API-EntityId"] = entity_id

    def _data(self, method: str, path: str, media_type: str, **kwargs: Any) -> Any:
        return self.api.request(
            method,
            f"/amc/advertiserData/{self.instance_id}{path}",
            headers=self._upload_headers,
            media_type=media_type,
            **kwargs,
        )

    def _data_pages(self, path: str, key: str, media_type: str, params: Mapping[str, Any]) -> list[Any]:
        path = f"/amc/advertiserData/{self.instance_id}{path}"
        pages = _paged(
            self.api,
            "POST",
            path,
            key,
            params,
            headers=self._upload_headers,
            media_type=media_type,
            idempotent=True,
        )
        return list(pages)

    def _audiences(self, method: str, path: str = "", *, accept: str | None = None, **kwargs: Any) -> Any:
        # Bodies go as v1; answers come in the version `accept` names (v1 otherwise).
        headers = {**self._audience_headers, **({"Accept": accept} if accept else {})}
        return self.api.request(
            method, f"/amc/audiences/query{path}", headers=headers, media_type=AUDIENCE_MEDIA_TYPE, **kwargs
        )

    # --- datasets ------------------------------------------------------------------------------------

    def create_dataset(self, dataset: Mapping[str, Any]) -> dict[str, Any]:
        """Create a dataset from its definition (the `dataSet` object); 400 if the id exists."""
        body = {"dataSet": dict(dataset)}
        return self._data("POST", "/dataSets", DATASET_MEDIA_TYPE, json_body=body, idempotent=False)

    def get_dataset(self, dataset_id: str) -> dict[str, Any] | None:
        """A dataset's definition, or None when it does not exist."""
        try:
            return self._data("GET", f"/dataSets/{dataset_id}", DATASET_MEDIA_TYPE)["dataSet"]
        except AmazonAdsApiError as error:
            if error.status == 404:
                return None
            raise

    def list_datasets(self) -> list[dict[str, Any]]:
        """Every dataset of the instance."""
        return self._data_pages("/dataSets/list", "dataSets", DATASET_MEDIA_TYPE, {})

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset and its data."""
        self._data("DELETE", f"/dataSets/{dataset_id}", DATASET_MEDIA_TYPE)

    # --- uploads -------------------------------------------------------------------------------------

    def start_upload(
        self,
        dataset_id: str,
        *,
        bucket: str,
        file_format: Mapping[str, Any],
        file_key: str | None = None,
        prefix: str | None = None,
        manifest_key: str | None = None,
        update_strategy: UpdateStrategy = "ADDITIVE",
        compression: Compression = "NONE",
        country_code: str | None = None,
    ) -> str:
        """Ask AMC to ingest files from S3 (one of `file_key`, `prefix`, `manifest_key`); the upload id."""
        locations = {
            "sourceFileS3Key": file_key,
            "sourceS3Prefix": prefix,
            "sourceManifestS3Key": manifest_key,
        }
        given = {field: value for field, value in locations.items() if value is not None}
        if len(given) != 1:
            raise ValueError("give exactly one of file_key, prefix, manifest_key")
        body: dict[str, Any] = {
            "updateStrategy": update_strategy,
            "compressionFormat": compression,
            "dataSource": {"sourceS3Bucket": bucket, **given},
            "fileFormat": dict(file_format),
        }
        if country_code:
            body["countryCode"] = country_code
        answer = self._data(
            "POST", f"/uploads/{dataset_id}", UPLOAD_MEDIA_TYPE, json_body=body, idempotent=False
        )
        return answer["uploadId"]

    def get_upload(self, dataset_id: str, upload_id: str) -> Upload:
        """An upload's status, message and metrics."""
        return self._data("GET", f"/uploads/{dataset_id}/{upload_id}", UPLOAD_MEDIA_TYPE)["upload"]

    def list_uploads(self, dataset_id: str | None = None, status: str | None = None) -> list[Upload]:
        """Uploads of the instance, optionally of one dataset and in one status."""
        params = {k: v for k, v in (("dataSetId", dataset_id), ("status", status)) if v is not None}
        return self._data_pages("/uploads/list", "uploads", UPLOAD_MEDIA_TYPE, params)

    # --- user deletion -------------------------------------------------------------------------------

    def request_user_deletion(self, identities: list[Mapping[str, Any]]) -> str:
        """Delete identities from every dataset; each is `{"hashedIdentity": {...}}` or
        `{"externalIdentity": {"type", "value"}}` (1 to 1,000). Returns the request id."""
        body = {"targetIdentities": [dict(identity) for identity in identities]}
        answer = self._data(
            "POST", "/userDeletionRequest", DELETION_MEDIA_TYPE, json_body=body, idempotent=False
        )
        return answer["userDeletionRequestId"]

    def get_user_deletion(self, request_id: str) -> UserDeletion:
        """A user deletion request's status."""
        path = f"/userDeletionRequest/{request_id}"
        return self._data("GET", path, DELETION_MEDIA_TYPE)["identityDeletion"]

    # --- rule-based audiences ------------------------------------------------------------------------

    def create_audience(
        self,
        name: str,
        *,
        advertiser_id: str,
        query: str,
        time_window_start: datetime | str,
        time_window_end: datetime | str,
        refresh_rate_days: int = 21,
        time_window_relative: bool = False,
        description: str | None = None,
    ) -> str:
        """Submit a rule-based audience; the execution id. Not idempotent: `find_audience` first."""
        body: dict[str, Any] = {
            "audienceName": name,
            "advertiserId": str(advertiser_id),
            "refreshRateDays": refresh_rate_days,
            **_audience_query(query, time_window_start, time_window_end, time_window_relative, description),
        }
        return self._audiences("POST", json_body=body, idempotent=False)["audienceExecutionId"]

    def update_audience(
        self,
        execution_id: str,
        name: str,
        *,
        advertiser_id: str,
        query: str,
        time_window_start: datetime | str,
        time_window_end: datetime | str,
        time_window_relative: bool = False,
        description: str | None = None,
    ) -> None:
        """Change a FAILED audience's query and time window (AMC updates no other), which runs it again.

        Its name, advertiser and refresh rate stay as they are: the PUT does not take a refresh rate.
        """
        body: dict[str, Any] = {
            "audienceName": name,
            "advertiserId": str(advertiser_id),
            "audienceType": "RULE_BASED",
            **_audience_query(query, time_window_start, time_window_end, time_window_relative, description),
        }
        # The PUT documents its answer in v1.2 only.
        self._audiences("PUT", f"/{execution_id}", json_body=body, accept=AUDIENCE_UPDATED_MEDIA_TYPE)

    def get_audience(self, execution_id: str) -> Audience:
        """An audience execution's full record."""
        return self._audiences("GET", f"/{execution_id}", accept=AUDIENCE_READ_MEDIA_TYPE)

    def list_audiences(self) -> list[Audience]:
        """Every audience execution of the instance."""
        headers = {**self._audience_headers, "Accept": AUDIENCE_READ_MEDIA_TYPE}
        pages = _paged(self.api, "GET", "/amc/audiences/query", "executionMetadata", {}, headers=headers)
        return list(pages)

    def find_audience(self, name: str) -> Audience | None:
        """The newest audience with this name, or None (so a retried create does not duplicate it)."""
        matches = [audience for audience in self.list_audiences() if audience.get("audienceName") == name]
        return max(matches, key=lambda audience: audience.get("createTime") or "", default=None)

    def delete_audience(self, execution_id: str) -> None:
        """Delete a FAILED audience (AMC deletes no other: a 400 otherwise)."""
        self._audiences("DELETE", f"/{execution_id}")


def _audience_query(
    query: str,
    time_window_start: datetime | str,
    time_window_end: datetime | str,
    time_window_relative: bool,
    description: str | None,
) -> dict[str, Any]:
    """What a rule-based audience's POST and PUT share: its query, time window and description."""
    body: dict[str, Any] = {
        "query": query,
        "timeWindowStart": amc_time(time_window_start),
        "timeWindowEnd": amc_time(time_window_end),
        "timeWindowRelative": bool(time_window_relative),
    }
    if description is not None:
        body["audienceDescription"] = description
    return body
