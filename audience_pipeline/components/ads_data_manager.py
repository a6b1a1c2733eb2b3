"""Amazon Ads Data Manager destination (Adobe's "Amazon Ads v2", seed 001): audiences as ADM datasets.

One instance is one manager account; each routed audience is one ADM audience dataset, created on
first use and found again by name afterwards. Its asset `ads_data_manager/<account>` is partitioned
like `audience_snapshot` and runs (eager automation) whenever an audience's snapshot changes: the
seed's streaming export.
"""

import re
import time
from typing import Literal

import dagster as dg
import requests
from pydantic import Field, field_validator

from audience_pipeline.clients.adm import AdmClient
from audience_pipeline.clients.ads_api import AmazonAdsApiError
from audience_pipeline.components.audiences import (
    SNAPSHOT_ASSET_KEY,
    Audience,
    AudiencesComponent,
    check_audience_ids,
    find_audiences,
    read_snapshot,
)
from audience_pipeline.components.ui import OWNERS, name_part
from audience_pipeline.identity import normalize_country
from audience_pipeline.membership.adm_delivery import (
    COUNTRY,
    SENT_IDENTITIES,
    TARGET_IDENTITIES,
    DeliveryInterrupted,
    MemberRules,
    adm_members,
    deliver,
    plan_delivery,
)
from audience_pipeline.membership.ledger import Ledger, LedgerConflict
from audience_pipeline.resources.amazon_ads import AmazonAdsApi
from audience_pipeline.resources.state_store import StateStore

MEMBERS_ACCEPTED_CHECK = "members_accepted"
# Amazon's name pattern with its minLength 5 folded in.
_DATASET_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{4,99}")


class AdsDataManagerDeliveryConfig(dg.Config):
    """Run configuration of an Ads Data Manager delivery."""

    dry_run: bool = Field(
        default=False,
        description="Compute and report the changes and requests without calling Amazon or committing.",
    )


def dataset_name(audience: Audience) -> str:
    """The ADM audience dataset name of an audience: its destination name made valid for Amazon's
    `^[A-Za-z][A-Za-z0-9_-]{0,99}$` of 5 to 100 characters (other characters become `_`; too short or
    not starting with a letter gets an `audience_` prefix)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", audience.destination_name).strip("_")
    if not _DATASET_NAME.fullmatch(name[:100]):
        name = f"audience_{name}"
    return name[:100]


class AdsDataManagerComponent(dg.Component, dg.Model, dg.Resolvable):
    """Sends the chosen audiences' members to Amazon Ads Data Manager as CREATE/DELETE.

    The settings are Adobe's Amazon Ads v2 settings (seed 001). Login with Amazon secrets come from
    the `amazon_ads` resource (`AMAZON_ADS_CLIENT_ID`, `_CLIENT_SECRET`, `_REFRESH_TOKEN`).
    """

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
    audiences: list[int | str] = Field(
        min_length=1,
        description="Ids of the audiences (of the audiences component) sent to Ads Data Manager.",
    )
    identities: list[str] = Field(
        default_factory=lambda: list(TARGET_IDENTITIES),
        description=(
            f"The seed's target identities to map (default: all): {', '.join(TARGET_IDENTITIES)}. "
            f"`{COUNTRY}` has no key in Amazon's member identity and sends nothing of its own: a member's "
            "country always goes as its consent country, and the dataset's country is `country_code`."
        ),
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

    @field_validator("audiences")
    @classmethod
    def _check_unique(cls, value: list[int | str]) -> list[int | str]:
        return check_audience_ids(value)

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

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """The delivery asset over the project's audiences."""
        job = dg.define_asset_job(
            f"{self.asset_key.to_python_identifier()}_delivery",
            selection=[self.asset_key],
            description="Sends the chosen audiences' members to their Ads Data Manager audiences.",
        )
        return dg.Definitions(assets=[self.build_asset(find_audiences(context))], jobs=[job])

    def build_asset(self, audiences: AudiencesComponent) -> dg.AssetsDefinition:
        """The delivery asset, partitioned like `audiences`' snapshot; unknown audience ids and
        audiences whose dataset names collide fail here."""
        delivered = audiences.routed(self.audiences, f"Ads Data Manager {self.manager_account_id}")
        known = {a.partition_key: a for a in audiences.audiences}
        names: dict[str, str] = {}
        for key in sorted(delivered):
            other = names.setdefault(dataset_name(known[key]), key)
            if other != key:
                raise dg.DagsterInvalidDefinitionError(
                    f"Ads Data Manager {self.manager_account_id}: `audiences` {other} and {key} would share "
                    f"the dataset name {dataset_name(known[key])}; give one a different external_name"
                )

        # Partitions are shared with the snapshot (one run materializes both); an audience not
        # routed here is a partition that produces nothing, and evaluates no check (hence subsettable
        # outputs: a plain asset must yield every check it declares).
        @dg.multi_asset(
            specs=[
                dg.AssetSpec(
                    self.asset_key,
                    deps=[SNAPSHOT_ASSET_KEY],
                    automation_condition=dg.AutomationCondition.eager(),
                    group_name="deliver",
                    kinds={"amazon", "adm"},
                    owners=OWNERS,
                    description="Members of the chosen audiences in their Ads Data Manager datasets.",
                )
            ],
            check_specs=[
                dg.AssetCheckSpec(
                    MEMBERS_ACCEPTED_CHECK,
                    asset=self.asset_key,
                    description="Ads Data Manager accepted every member sent; a failure carries its reasons.",
                )
            ],
            partitions_def=audiences.partitions_def,
            can_subset=True,
            name=self.asset_key.to_python_identifier(),
            pool="amazon_ads_api",
        )
        def ads_data_manager_delivery(
            context: dg.AssetExecutionContext,
            config: AdsDataManagerDeliveryConfig,
            state_store: StateStore,
            amazon_ads: AmazonAdsApi,
        ):
            """Members of one audience in its Ads Data Manager audience dataset.

            Builds each snapshot member's `userIdentity` (hashed PII, partner IDs) and `userConsent`;
            diffs them against this account's ledger; finds or creates the dataset; sends removals
            as DELETE and additions and identity changes as CREATE, ≤5,000 and ≤10 MB per request; commits the
            members Amazon accepted (refused ones are rejects by Amazon's reason and stay pending);
            records the dataset's match metrics. Metadata holds counts only.
            """
            if context.partition_key not in delivered:
                context.log.info(f"audience {context.partition_key} is not delivered to Ads Data Manager")
                return
            result = self._deliver(context, config, state_store, amazon_ads, audiences)
            yield result
            rejected = result.metadata.get("rejected")
            if rejected is not None and context.selected_asset_check_keys:
                reasons = result.metadata["rejects"].value
                yield dg.AssetCheckResult(
                    asset_key=self.asset_key,
                    check_name=MEMBERS_ACCEPTED_CHECK,
                    passed=rejected == 0,
                    # Refused members stay pending and are sent again: worth a look, not a stop.
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={"rejected": rejected},
                    description=(
                        "Amazon accepted every member sent"
                        if rejected == 0
                        else f"Amazon refused {rejected} member(s): "
                        + "; ".join(f"{reason} ({n})" for reason, n in reasons.items())
                    ),
                )

        return ads_data_manager_delivery

    def _deliver(
        self,
        context: dg.AssetExecutionContext,
        config: AdsDataManagerDeliveryConfig,
        state_store: StateStore,
        amazon_ads: AmazonAdsApi,
        audiences: AudiencesComponent,
    ) -> dg.MaterializeResult:
        started = time.perf_counter()
        audience = audiences.audience(context.partition_key)
        snapshot = read_snapshot(state_store, audience)
        name = dataset_name(audience)
        ledger = Ledger(state_store.store, self.ledger_destination(name), audience.partition_key)
        state = ledger.load()
        plan = plan_delivery(adm_members(snapshot, self.rules), state)
        counts = plan.counts()
        if config.dry_run:
            context.log.info(f"dry run, nothing sent or committed: {counts} to dataset {name}")
            return dg.MaterializeResult(
                asset_key=self.asset_key,
                metadata={
                    "dry_run": True,
                    "dataset_name": name,
                    **counts,
                    "ledger_version": state.version,
                    "seconds": round(time.perf_counter() - started, 3),
                },
            )

        api = amazon_ads.client()
        adm = AdmClient(api, self.manager_account_id, self.advertiser_account_id)
        try:
            # The description names the audience by its immutable id, never by its internal name.
            description = f"audience_pipeline audience {audience.partition_key}"
            dataset = adm.ensure_audience(name, self.country_code, description=description)
            try:
                outcome = deliver(
                    plan, ledger, lambda members: adm.upload_members(dataset.data_set_id, members)
                )
            except DeliveryInterrupted as interrupted:
                raise dg.Failure(
                    f"Ads Data Manager refused a request for audience {audience.partition_key} "
                    f"({interrupted.__cause__}); the {interrupted.outcome.members_sent} members sent before "
                    "were committed, the rest are sent again on the next run"
                ) from None
            metrics = adm.metrics(dataset.data_set_id)
        except (AmazonAdsApiError, requests.RequestException) as error:
            raise dg.Failure(
                f"Ads Data Manager call failed for audience {audience.partition_key}: {error}"
            ) from None
        except LedgerConflict as error:
            raise dg.Failure(str(error)) from None
        metadata = {
            "dry_run": False,
            "dataset_name": name,
            "data_set_id": dataset.data_set_id,
            **outcome.counts,
            "members_sent": outcome.members_sent,
            "rejected": outcome.rejected,
            "rejects": dg.MetadataValue.json(outcome.rejects),
            "requests": outcome.requests,
            "retries": api.retries,
            "match_rate": metrics.match_record_percentage,
            "accepted_count": metrics.accepted_count,
            "invalid_record_count": metrics.invalid_record_count,
            "ledger_version": outcome.ledger_version,
            "seconds": round(time.perf_counter() - started, 3),
        }
        context.log.info(
            f"audience {audience.partition_key} to ADM dataset {name}: "
            f"{ {k: v for k, v in metadata.items() if k != 'rejects'} }"
        )
        if outcome.rejected:
            context.log.warning(
                f"Amazon refused {outcome.rejected} members ({outcome.rejects}); their changes stay pending "
                "and are sent again on the next run"
            )
        return dg.MaterializeResult(asset_key=self.asset_key, metadata=metadata)
