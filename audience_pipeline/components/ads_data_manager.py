"""Amazon Ads Data Manager destination (Adobe's "Amazon Ads v2", seed 001): audiences as ADM datasets.

One instance is one manager account; each routed audience is one ADM audience dataset, created on
first use and found again by name afterwards. Its asset `ads_data_manager/<account>` has one partition
per routed audience and runs (eager automation) whenever an audience's snapshot changes: the
seed's streaming export.
"""

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Literal

import dagster as dg
from pydantic import Field, field_validator

from audience_pipeline.clients.ads_api import MAX_IN_FLIGHT
from audience_pipeline.clients.concurrency import RequestPace
from audience_pipeline.clients.rate_limit import RateLimit
from audience_pipeline.components.audiences import (
    Audience,
    AudiencesComponent,
    open_snapshot,
)
from audience_pipeline.components.destination import DeliveryRunConfig, DestinationComponent
from audience_pipeline.components.ui import name_part
from audience_pipeline.identity import normalize_country
from audience_pipeline.membership.adm_delivery import (
    COUNTRY,
    SENT_IDENTITIES,
    TARGET_IDENTITIES,
    AdmAdapter,
    MemberRules,
    adm_members,
    dataset_name,
)
from audience_pipeline.membership.delivery import BucketedMembers, Members, deliver
from audience_pipeline.membership.ledger import Ledger

MEMBERS_ACCEPTED_CHECK = "members_accepted"
# Amazon publishes no rate for member uploads: the Ads API's limits are dynamic, and it answers 429
# with Retry-After past them. 5 uploads of 5,000 members a second is 25,000 members a second, room
# for other runs and apps on the same credentials (see docs/configuration.md).
DEFAULT_UPLOADS_PER_SECOND = 5.0


class AdsDataManagerComponent(DestinationComponent):
    """Sends the chosen audiences' members to Amazon Ads Data Manager as CREATE/DELETE.

    The settings are Adobe's Amazon Ads v2 settings (seed 001). Login with Amazon secrets come from
    the `amazon_ads` resource (`AMAZON_ADS_CLIENT_ID`, `_CLIENT_SECRET`, `_REFRESH_TOKEN`).
    """

    kind: ClassVar[str] = "Ads Data Manager"

    manager_account_id: str = Field(description="The target manager account (Amazon-Ads-Manager-Account-ID).")
    advertiser_account_id: str | None = Field(
        default=None,
        description=(
            "Optional DSP advertiser account the calls act for, sent as Amazon-Ads-AccountId on the "
            "dataset and member calls (for credentials whose audience rights are on the advertiser)."
        ),
    )
    consent: Literal["GRANTED", "DENIED"] = Field(
        description=(
            "All audience members sent to Amazon are consented for use for advertising: GRANTED or "
            "DENIED. A member's own `amzn_ad_storage` / `amzn_user_data` columns override it."
        )
    )
    country_code: str = Field(
        default="US",
        description=(
            "Country of the audience datasets (their countryCode, ISO alpha-2), and the consent country "
            "(userConsent.geo) of members without one."
        ),
    )
    identities: list[str] = Field(
        default_factory=lambda: list(TARGET_IDENTITIES),
        description=(
            f"The seed's target identities to map (default: all): {', '.join(TARGET_IDENTITIES)}. "
            f"`{COUNTRY}` has no key in Amazon's member identity and sends nothing of its own: a member's "
            "country always goes as its consent country, and the dataset's country is `country_code`."
        ),
    )

    max_in_flight_requests: int = Field(
        default=4, ge=1, le=MAX_IN_FLIGHT, description="Member uploads in flight at once, per delivery."
    )
    requests_per_second: float = Field(
        default=DEFAULT_UPLOADS_PER_SECOND,
        gt=0,
        description="Member uploads per second, retries included, that a delivery stays within. Amazon "
        "publishes no fixed rate (its limits are dynamic and answered with 429 and Retry-After).",
    )

    @field_validator("manager_account_id")
    @classmethod
    def _check_account(cls, value: str) -> str:
        if not value.strip() or any(c.isspace() for c in value):
            raise ValueError("must be a manager account id such as amzn1.ads-account.g.xxxx, without spaces")
        return value

    @field_validator("advertiser_account_id")
    @classmethod
    def _check_advertiser(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(c.isspace() for c in value)):
            raise ValueError("must be a DSP advertiser account id without spaces, or left out")
        return value

    @field_validator("country_code")
    @classmethod
    def _check_country(cls, value: str) -> str:
        return normalize_country(value, "country_code")

    @field_validator("identities")
    @classmethod
    def _check_identities(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in TARGET_IDENTITIES]
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)} not target identities (known: {', '.join(TARGET_IDENTITIES)})"
            )
        if not set(value) & set(SENT_IDENTITIES):
            raise ValueError(
                f"choose at least one target identity Amazon takes ({COUNTRY} alone sends no identity)"
            )
        return value

    @property
    def asset_key(self) -> dg.AssetKey:
        """`ads_data_manager/<manager account>`, the account id made a valid asset key part."""
        return dg.AssetKey(["ads_data_manager", name_part(self.manager_account_id)])

    @property
    def destination(self) -> str:
        """The destination's name: datasets belong to a manager account."""
        return f"ads_data_manager/{self.manager_account_id}"

    def ledger_destination(self, dataset: str) -> str:
        """Whose members a ledger records: one dataset of the account. The dataset is found by name, so
        a renamed audience gets a new dataset, and a new ledger that sends it every member."""
        return f"{self.destination}/{dataset}"

    @property
    def rules(self) -> MemberRules:
        """What each member carries: the chosen identities and the consent asserted for all."""
        return MemberRules(tuple(self.identities), self.consent, self.country_code)

    @property
    def label(self) -> str:
        """`Ads Data Manager <account>`."""
        return f"Ads Data Manager {self.manager_account_id}"

    @property
    def job_description(self) -> str:
        """What the job does."""
        return "Sends the chosen audiences' members to their Ads Data Manager audiences."

    def build_assets(self, audiences: AudiencesComponent) -> list[dg.AssetsDefinition]:
        """The delivery asset."""
        return [self.build_asset(audiences)]

    def build_asset(self, audiences: AudiencesComponent) -> dg.AssetsDefinition:
        """The delivery asset, one partition per routed audience; unknown audience ids and audiences
        whose dataset names collide fail here."""
        known = {a.partition_key: a for a in audiences.audiences}
        names: dict[str, str] = {}
        for key in sorted(audiences.routed(self.audiences, self.label)):
            other = names.setdefault(dataset_name(known[key]), key)
            if other != key:
                raise dg.DagsterInvalidDefinitionError(
                    f"{self.label}: `audiences` {other} and {key} would share the dataset name "
                    f"{dataset_name(known[key])}; give one a different external_name"
                )
        return self.delivery_asset(
            audiences,
            self.asset_key,
            self._deliver,
            description="Members of one audience in its Ads Data Manager audience dataset.\n\n"
            "Builds each snapshot member's `userIdentity` (hashed PII, partner IDs) and `userConsent`; "
            "diffs them against this account's ledger; finds or creates the dataset; sends removals as "
            "DELETE and additions and identity changes as CREATE, ≤5,000 and ≤10 MB per request, "
            "`max_in_flight_requests` at once within `requests_per_second`; commits "
            "the members Amazon accepted (refused ones are rejects by Amazon's reason and stay pending); "
            "records the dataset's match metrics. Metadata holds counts only.",
            kinds={"amazon", "adm"},
            resources={"amazon_ads"},
            pool="amazon_ads_api",
            checks={
                MEMBERS_ACCEPTED_CHECK: "Ads Data Manager accepted every member sent; a failure carries "
                "its reasons."
            },
        )

    def _deliver(
        self, context: dg.AssetExecutionContext, config: DeliveryRunConfig, audience: Audience
    ) -> dict[str, Any]:
        state_store = context.resources.state_store
        name = dataset_name(audience)
        adm = (
            None
            if config.dry_run
            else context.resources.amazon_ads.adm(self.manager_account_id, self.advertiser_account_id)
        )
        # The description names the audience by its immutable id, never by its internal name.
        description = f"audience_pipeline audience {audience.partition_key}"
        # One limit for the whole run: every upload of every bucket takes from it.
        pace = RequestPace(self.max_in_flight_requests, RateLimit({"requests": self.requests_per_second}))
        adapter = AdmAdapter(name, self.country_code, description, adm, pace)
        with open_snapshot(state_store, audience) as snapshot:

            def bucket(number: int, level: int) -> Members:
                return adm_members(snapshot.read(number, level), self.rules)

            outcome = deliver(
                Ledger(state_store.store, self.ledger_destination(name), audience.partition_key),
                lambda state, held: BucketedMembers(snapshot.bits, bucket),
                adapter,
                dry_run=config.dry_run,
                max_removal_share=self.max_share(config),
            )
        if config.dry_run:
            return self.report(context, outcome, config, dataset_name=name)
        dataset = adapter.dataset()
        metrics = adapter.adm.metrics(dataset.data_set_id)
        return self.report(
            context,
            outcome,
            config,
            dataset_name=name,
            data_set_id=dataset.data_set_id,
            match_rate_pct=metrics.match_record_percentage,
            accepted_count=metrics.accepted_count,
            invalid_record_count=metrics.invalid_record_count,
        )

    def checks(self, metadata: Mapping[str, Any]) -> Iterator[dg.AssetCheckResult]:
        """`members_accepted` after a real delivery: a warning, since refused members stay pending
        and are sent again."""
        if metadata["dry_run"]:
            return
        rejected, reasons = metadata["rejected"], metadata["rejects"]
        yield dg.AssetCheckResult(
            asset_key=self.asset_key,
            check_name=MEMBERS_ACCEPTED_CHECK,
            passed=rejected == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"rejected": rejected},
            description=(
                "Amazon accepted every member sent"
                if rejected == 0
                else f"Amazon refused {rejected} member(s): "
                + "; ".join(f"{reason} ({n})" for reason, n in reasons.items())
            ),
        )
