"""Amazon Marketing Cloud client: advertiser data upload, user deletion and rule-based audiences.

A thin layer over `AdsApiClient` that sets the AMC headers, pages through lists and reads the
documented variants of statuses (`SUCCESS` or `COMPLETED`, `PENDING` or `IN_PROGRESS`, ...).
Calls that create something are never repeated after a 5xx: look it up first (`find_audience`,
`get_dataset`, `list_uploads`).

AMC accounts (seed 003: "if you leave the account id blank, the first account of the instance is
used"): `GET /amc/accounts?nextToken` with only the bearer token and client id →
`{"amcAccounts": [{"accountId", "accountName", "marketplaceId"}], "nextToken"}`. `accountId` is the
`Amazon-Advertising-API-AdvertiserId` of the data upload calls; see `first_amc_account`.
"""

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict

from audience_pipeline.clients.ads_api import AdsApiClient, AmazonAdsApiError

NOT_FINISHED = frozenset({"SUBMITTED", "PENDING", "IN_PROGRESS", "RUNNING"})
SUCCEEDED = frozenset({"SUCCESS", "COMPLETED", "SUCCEEDED"})
FAILED = frozenset({"FAILED"})

UpdateStrategy = Literal["ADDITIVE", "FULL_REPLACE", "OVERLAP_REPLACE", "OVERLAP_KEEP"]
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
    """A rule-based audience execution."""

    audienceExecutionId: str
    audienceName: str
    advertiserId: str | int
    query: str
    status: str
    statusReason: str
    audienceCount: int
    dspAudienceId: str
    lastRefreshedTime: str
    createTime: str


def _paged(
    api: AdsApiClient, method: str, path: str, key: str, params: Mapping[str, Any], **kwargs: Any
) -> Iterator[Any]:
    """The `key` items of every page of a list call, following `nextToken`."""
    token = None
    while True:
        query = {**params, **({"nextToken": token} if token else {})}
        body = api.request(method, path, params=query, **kwargs) or {}
        yield from body.get(key) or []
        token = body.get("nextToken")
        if not token:
            return


def list_amc_accounts(api: AdsApiClient) -> list[dict[str, Any]]:
    """Every AMC account these credentials reach: `{"accountId", "accountName", "marketplaceId"}`."""
    return list(_paged(api, "GET", "/amc/accounts", "amcAccounts", {}))


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

    def _data(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.api.request(
            method, f"/amc/advertiserData/{self.instance_id}{path}", headers=self._upload_headers, **kwargs
        )

    def _pages(
        self, method: str, path: str, key: str, params: Mapping[str, Any], **kwargs: Any
    ) -> Iterator[Any]:
        return _paged(self.api, method, path, key, params, **kwargs)

    # --- datasets ------------------------------------------------------------------------------------

    def create_dataset(self, dataset: Mapping[str, Any]) -> dict[str, Any]:
        """Create a dataset from its definition (the `dataSet` object); 400 if the id exists."""
        return self._data("POST", "/dataSets", json_body={"dataSet": dict(dataset)}, idempotent=False)

    def get_dataset(self, dataset_id: str) -> dict[str, Any] | None:
        """A dataset's definition, or None when it does not exist."""
        try:
            return self._data("GET", f"/dataSets/{dataset_id}")["dataSet"]
        except AmazonAdsApiError as error:
            if error.status == 404:
                return None
            raise

    def list_datasets(self) -> list[dict[str, Any]]:
        """Every dataset of the instance."""
        path = f"/amc/advertiserData/{self.instance_id}/dataSets/list"
        return list(self._pages("POST", path, "dataSets", {}, headers=self._upload_headers, idempotent=True))

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset and its data."""
        self._data("DELETE", f"/dataSets/{dataset_id}")

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
        return self._data("POST", f"/uploads/{dataset_id}", json_body=body, idempotent=False)["uploadId"]

    def get_upload(self, dataset_id: str, upload_id: str) -> Upload:
        """An upload's status, message and metrics."""
        body = self._data("GET", f"/uploads/{dataset_id}/{upload_id}")
        return body.get("upload", body)

    def list_uploads(self, dataset_id: str | None = None, status: str | None = None) -> list[Upload]:
        """Uploads of the instance, optionally of one dataset and in one status."""
        params = {k: v for k, v in (("dataSetId", dataset_id), ("status", status)) if v is not None}
        path = f"/amc/advertiserData/{self.instance_id}/uploads/list"
        return list(
            self._pages("POST", path, "uploads", params, headers=self._upload_headers, idempotent=True)
        )

    # --- user deletion -------------------------------------------------------------------------------

    def request_user_deletion(self, identities: list[Mapping[str, Any]]) -> str:
        """Delete identities from every dataset; each is `{"hashedIdentity": {...}}` or
        `{"externalIdentity": {"type", "value"}}` (1 to 1,000). Returns the request id."""
        body = {"targetIdentities": [dict(identity) for identity in identities]}
        return self._data("POST", "/userDeletionRequest", json_body=body, idempotent=False)[
            "userDeletionRequestId"
        ]

    def get_user_deletion(self, request_id: str) -> UserDeletion:
        """A user deletion request's status."""
        body = self._data("GET", f"/userDeletionRequest/{request_id}")
        return body.get("identityDeletion", body)

    # --- rule-based audiences ------------------------------------------------------------------------

    def create_audience(
        self,
        name: str,
        *,
        advertiser_id: str | int,
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
            "advertiserId": advertiser_id,
            "query": query,
            "timeWindowStart": amc_time(time_window_start),
            "timeWindowEnd": amc_time(time_window_end),
            "refreshRateDays": refresh_rate_days,
            "timeWindowRelative": bool(time_window_relative),
        }
        if description is not None:
            body["audienceDescription"] = description
        answer = self.api.request(
            "POST", "/amc/audiences/query", json_body=body, headers=self._audience_headers, idempotent=False
        )
        return answer["audienceExecutionId"]

    def get_audience(self, execution_id: str) -> Audience:
        """An audience execution's full record."""
        return self.api.request("GET", f"/amc/audiences/query/{execution_id}", headers=self._audience_headers)

    def list_audiences(self) -> list[Audience]:
        """Every audience execution of the instance."""
        pages = self._pages(
            "GET", "/amc/audiences/query", "executionMetadata", {}, headers=self._audience_headers
        )
        return list(pages)

    def find_audience(self, name: str) -> Audience | None:
        """The newest audience with this name, or None (so a retried create does not duplicate it)."""
        matches = [audience for audience in self.list_audiences() if audience.get("audienceName") == name]
        return max(matches, key=lambda audience: audience.get("createTime") or "", default=None)

    def delete_audience(self, execution_id: str) -> None:
        """Delete a FAILED or SUCCEEDED audience."""
        self.api.request("DELETE", f"/amc/audiences/query/{execution_id}", headers=self._audience_headers)
