"""Amazon Ads API access for the destinations: Login with Amazon credentials and where to call.

Secrets come only through `dg.EnvVar` (`AMAZON_ADS_CLIENT_ID`, `AMAZON_ADS_CLIENT_SECRET`,
`AMAZON_ADS_REFRESH_TOKEN`). Against the sandbox any non-empty values log in, and
`AMAZON_ADS_API_URL` / `AMAZON_ADS_TOKEN_URL` (what `audience-pipeline sandbox` prints) point there.
"""

import dagster as dg
from pydantic import Field, field_validator

from audience_pipeline.clients.ads_api import API_HOSTS, AdsApiClient

CLIENT_ID_ENV_VAR = "AMAZON_ADS_CLIENT_ID"
CLIENT_SECRET_ENV_VAR = "AMAZON_ADS_CLIENT_SECRET"
REFRESH_TOKEN_ENV_VAR = "AMAZON_ADS_REFRESH_TOKEN"
API_URL_ENV_VAR = "AMAZON_ADS_API_URL"
TOKEN_URL_ENV_VAR = "AMAZON_ADS_TOKEN_URL"
REGION_ENV_VAR = "AMAZON_ADS_REGION"


class AmazonAdsApi(dg.ConfigurableResource):
    """A Login with Amazon app's credentials and the Amazon Ads API endpoint to use."""

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

    def client(self, region: str | None = None) -> AdsApiClient:
        """A client session; `region` overrides the resource's (DSP audiences name their own)."""
        return AdsApiClient(
            self.client_id,
            self.client_secret,
            self.refresh_token,
            region=region or self.region,
            base_url=self.base_url,
            token_url=self.token_url,
        )
