"""Amazon Ads API access for the destinations: Login with Amazon credentials and where to call.

Secrets come only through `dg.EnvVar` (`AMAZON_ADS_CLIENT_ID`, `AMAZON_ADS_CLIENT_SECRET`,
`AMAZON_ADS_REFRESH_TOKEN`). Against the sandbox any non-empty values log in, and
`AMAZON_ADS_API_URL` / `AMAZON_ADS_TOKEN_URL` (what `audience-pipeline sandbox` prints) point there.
"""

from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr, field_validator

from audience_pipeline.clients.accounts import check_linked_user, find_profile
from audience_pipeline.clients.adm import AdmClient
from audience_pipeline.clients.ads_api import API_HOSTS, AdsApiClient
from audience_pipeline.clients.amc import AmcClient, first_amc_account
from audience_pipeline.clients.dsp import DspClient

CLIENT_ID_ENV_VAR = "AMAZON_ADS_CLIENT_ID"
CLIENT_SECRET_ENV_VAR = "AMAZON_ADS_CLIENT_SECRET"
REFRESH_TOKEN_ENV_VAR = "AMAZON_ADS_REFRESH_TOKEN"
API_URL_ENV_VAR = "AMAZON_ADS_API_URL"
TOKEN_URL_ENV_VAR = "AMAZON_ADS_TOKEN_URL"
REGION_ENV_VAR = "AMAZON_ADS_REGION"


class AmazonAdsApi(dg.ConfigurableResource):
    """A Login with Amazon app's credentials and the Amazon Ads API endpoint to use; hands out the
    typed clients of AMC, Ads Data Manager and DSP, which share one login per region."""

    client_id: str = Field(description="Login with Amazon client id (from `AMAZON_ADS_CLIENT_ID`).")
    client_secret: str = Field(
        description="Login with Amazon client secret (from `AMAZON_ADS_CLIENT_SECRET`)."
    )
    refresh_token: str = Field(
        description="Refresh token of the authorized user (from `AMAZON_ADS_REFRESH_TOKEN`)."
    )
    region: str = Field(default="NA", description=f"API region: {', '.join(API_HOSTS)}.")
    base_url: str | None = Field(
        default=None, description="API base URL overriding the region's host, e.g. the sandbox's."
    )
    token_url: str | None = Field(default=None, description="Token URL overriding the region's LWA host.")

    @field_validator("region")
    @classmethod
    def _check_region(cls, value: str) -> str:
        if value not in API_HOSTS:
            raise ValueError(
                f"{value!r} is not an Amazon Ads API region ({', '.join(API_HOSTS)}); "
                f"set {REGION_ENV_VAR} to one of them"
            )
        return value

    _sessions: dict[str, AdsApiClient] = PrivateAttr(default_factory=dict)

    def client(self, region: str | None = None) -> AdsApiClient:
        """The API session of `region` (default: the resource's; DSP audiences name their own),
        logged in once and reused, so every client handed out shares its access token."""
        region = region or self.region
        if region not in self._sessions:
            self._sessions[region] = AdsApiClient(
                self.client_id,
                self.client_secret,
                self.refresh_token,
                region=region,
                base_url=self.base_url,
                token_url=self.token_url,
            )
        return self._sessions[region]

    def amc(self, instance_id: str, account_id: str, marketplace_id: str) -> AmcClient:
        """A client of one AMC instance. A blank `account_id` is the instance's first account
        (`GET /amc/accounts`; raises LookupError when there is none)."""
        api = self.client()
        account = account_id or str(first_amc_account(api)["accountId"])
        return AmcClient(api, instance_id, account, marketplace_id, entity_id=account_id or None)

    def adm(self, manager_account_id: str, advertiser_account_id: str | None = None) -> AdmClient:
        """An Ads Data Manager client of one manager account, acting for a DSP advertiser when given."""
        return AdmClient(self.client(), manager_account_id, advertiser_account_id)

    def dsp_profile(
        self, marketplace_profile_name: str, marketplace: str | None = None, region: str | None = None
    ) -> dict[str, Any]:
        """The advertising profile named `marketplace_profile_name` in `marketplace` (see `find_profile`)."""
        return find_profile(self.client(region), marketplace_profile_name, marketplace)

    def check_linked_user(self, profile_name: str, region: str | None = None) -> None:
        """Raises `ProfileNotFound` unless the refresh token's Amazon user is named `profile_name`
        (see `check_linked_user`)."""
        check_linked_user(self.client(region), profile_name)

    def dsp(self, profile_id: int, region: str | None = None) -> DspClient:
        """A DSP Data Provider client of one profile, in `region`."""
        return DspClient(self.client(region), profile_id)
