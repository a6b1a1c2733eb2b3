"""Amazon DSP mobile ad ids (mParticle's "Amazon Advertising", seed 000): IDFA/GAID audiences, bulk.

One instance is one advertiser; many audiences may share it. Per audience (a partition, like
`audience_snapshot`):

- `dsp/advertiser_<id>` (eager) appends the MAID changes of a new snapshot to the audience's queue;
- `dsp/advertiser_<id>/flush` sends the queue to the audience's DSP audience (created on first use);
- the sensor requests a flush when the upload interval has passed since the last upload or the queue
  reached its size limit, whichever comes first.
"""

import json
import time
from collections.abc import Callable
from datetime import timedelta

import dagster as dg
import polars as pl
from pydantic import Field, TypeAdapter, ValidationError, field_validator

from audience_pipeline.clients.ads_api import AdsApiClient, AmazonAdsApiError
from audience_pipeline.clients.dsp import DspClient
from audience_pipeline.components.audiences import (
    SNAPSHOT_ASSET_KEY,
    Audience,
    AudiencesComponent,
    check_audience_ids,
    find_audiences,
    read_snapshot,
)
from audience_pipeline.components.ui import OWNERS
from audience_pipeline.membership.dsp_delivery import flush, plan_flush
from audience_pipeline.membership.dsp_queue import (
    DspQueue,
    QueueConflict,
    QueueState,
    audience_maids,
    enqueue,
)
from audience_pipeline.membership.ledger import Ledger, LedgerConflict, ledger_key
from audience_pipeline.membership.store import RevisionConflict
from audience_pipeline.resources.amazon_ads import AmazonAdsApi
from audience_pipeline.resources.state_store import StateStore

REGIONS = ("NA", "EU", "FE")
_INTERVAL = TypeAdapter(timedelta)


class DspRunConfig(dg.Config):
    """Run configuration of the DSP queue and flush assets."""

    dry_run: bool = Field(
        default=False,
        description="Compute and report the changes and requests without calling Amazon or writing.",
    )


class DspMobileAdIdsComponent(dg.Component, dg.Model, dg.Resolvable):
    """Sends the IDFAs and GAIDs of the chosen audiences to Amazon DSP audiences of one advertiser.

    The settings are mParticle's Amazon Advertising settings (seed 000), with its defaults. The Login
    with Amazon credentials are the `amazon_ads` resource's (`AMAZON_ADS_*` environment variables).
    """

    advertiser_id: int = Field(gt=0, description="Your Amazon Advertising account's advertiser id.")
    region: str = Field(
        default="NA", description="Where the target marketplace is: NA (North America), EU or FE."
    )
    marketplace_profile_name: str = Field(
        min_length=1,
        description="The advertiser profile of the target marketplace: its country code (US, UK, DE...) "
        "or marketplace id, as `GET /v2/profiles` lists them.",
    )
    profile_name: str = Field(
        min_length=1, description="The name of the Amazon account linked to the profile (`accountInfo.name`)."
    )
    upload_interval: int | str = Field(
        default=7200,
        description="Upload at the latest this long after the last upload: seconds, `HH:MM:SS` or ISO 8601 "
        "(`PT2H`).",
    )
    queue_size_limit_bytes: int = Field(
        default=1_000_000, gt=0, description="Upload as soon as the queued patches reach this size."
    )
    audiences: list[int | str] = Field(
        min_length=1, description="Ids of the audiences (of the audiences component) sent to DSP."
    )

    @field_validator("region")
    @classmethod
    def _check_region(cls, value: str) -> str:
        if value not in REGIONS:
            raise ValueError(f"{value!r} is not one of {', '.join(REGIONS)}")
        return value

    @field_validator("upload_interval")
    @classmethod
    def _check_interval(cls, value: int | str) -> int | str:
        try:
            seconds = _INTERVAL.validate_python(value).total_seconds()
        except ValidationError:
            raise ValueError(
                f"{value!r} is not a duration: seconds, HH:MM:SS or ISO 8601 such as PT2H"
            ) from None
        if seconds <= 0:
            raise ValueError("must be longer than zero")
        return value

    @property
    def upload_interval_seconds(self) -> float:
        """`upload_interval` in seconds."""
        return _INTERVAL.validate_python(self.upload_interval).total_seconds()

    @field_validator("audiences")
    @classmethod
    def _check_unique(cls, value: list[int | str]) -> list[int | str]:
        return check_audience_ids(value)

    @property
    def queue_key(self) -> dg.AssetKey:
        """`dsp/advertiser_<id>`: the queue asset."""
        return dg.AssetKey(["dsp", f"advertiser_{self.advertiser_id}"])

    @property
    def flush_key(self) -> dg.AssetKey:
        """`dsp/advertiser_<id>/flush`: the upload asset."""
        return dg.AssetKey([*self.queue_key.path, "flush"])

    @property
    def destination(self) -> str:
        """The ledger's destination name: an advertiser in a region."""
        return f"dsp/{self.region}/{self.advertiser_id}"

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """The queue and flush assets over the project's audiences, and the flush sensor."""
        audiences = find_audiences(context)
        job = dg.define_asset_job(
            f"{self.queue_key.to_python_identifier()}_delivery",
            selection=[self.queue_key, self.flush_key],
            description="Queues the chosen audiences' mobile ad id changes and uploads them to DSP "
            f"advertiser {self.advertiser_id} now, without waiting for the flush sensor.",
        )
        return dg.Definitions(
            assets=[self.build_queue_asset(audiences), self.build_flush_asset(audiences)],
            sensors=[self.build_sensor()],
            jobs=[job],
        )

    def _delivered(self, audiences: AudiencesComponent) -> set[str]:
        return audiences.routed(self.audiences, f"DSP advertiser {self.advertiser_id}")

    def build_queue_asset(
        self, audiences: AudiencesComponent, clock: Callable[[], float] = time.time
    ) -> dg.AssetsDefinition:
        """The queue asset, partitioned like `audiences`' snapshot; unknown audience ids fail here."""
        delivered = self._delivered(audiences)

        @dg.asset(
            key=self.queue_key,
            partitions_def=audiences.partitions_def,
            deps=[SNAPSHOT_ASSET_KEY],
            automation_condition=dg.AutomationCondition.eager(),
            group_name="transform",
            kinds={"amazon", "dsp"},
            owners=OWNERS,
            output_required=False,
        )
        def dsp_queue(context: dg.AssetExecutionContext, config: DspRunConfig, state_store: StateStore):
            """Mobile ad id changes of one audience, appended to its DSP upload queue.

            Takes the IDFAs and GAIDs of the audience's snapshot (zeroed or malformed ones are rejects),
            diffs them against what DSP holds (the ledger) plus the changes already queued, and appends
            the new additions and removals to the queue in the state store. Nothing is sent: the flush
            sensor uploads the queue. Metadata holds counts only.
            """
            if context.partition_key not in delivered:
                context.log.info(f"audience {context.partition_key} is not sent to DSP")
                return
            yield self._enqueue(
                context, config, state_store, audiences.audience(context.partition_key), clock
            )

        return dsp_queue

    def _enqueue(
        self,
        context: dg.AssetExecutionContext,
        config: DspRunConfig,
        state_store: StateStore,
        audience: Audience,
        clock: Callable[[], float],
    ) -> dg.MaterializeResult:
        snapshot = read_snapshot(state_store, audience)
        found = audience_maids(snapshot)
        delivered = Ledger(state_store.store, self.destination, audience.partition_key).load()
        queue = DspQueue(state_store.store, self.destination, audience.partition_key)
        loaded = queue.load()
        result = enqueue(loaded.frame, delivered.frame.get_column("user_id"), found.maids, int(clock()))
        if not config.dry_run:
            try:
                queue.save(loaded, result.frame, loaded.last_upload_at)
            except QueueConflict as error:
                raise dg.Failure(f"{error}; run it again") from None
        metadata = {
            "dry_run": config.dry_run,
            "maids": found.maids.len(),
            "added": result.added,
            "removed": result.removed,
            "rejects_total": sum(found.rejects.values()),
            "rejects": dg.MetadataValue.json(found.rejects),
            "queued": result.frame.height,
            "queue_bytes": QueueState(result.frame, None, None).size_bytes,
        }
        context.log.info(f"audience {audience.partition_key} DSP queue: {metadata}")
        return dg.MaterializeResult(metadata=metadata)

    def build_flush_asset(
        self, audiences: AudiencesComponent, clock: Callable[[], float] = time.time
    ) -> dg.AssetsDefinition:
        """The flush asset; the sensor requests its partitions, nothing materializes it on its own."""
        delivered = self._delivered(audiences)

        @dg.asset(
            key=self.flush_key,
            partitions_def=audiences.partitions_def,
            deps=[self.queue_key],
            group_name="deliver",
            kinds={"amazon", "dsp"},
            owners=OWNERS,
            pool="amazon_ads_dsp",
            output_required=False,
        )
        def dsp_flush(
            context: dg.AssetExecutionContext,
            config: DspRunConfig,
            state_store: StateStore,
            amazon_ads: AmazonAdsApi,
        ):
            """One audience's DSP queue, uploaded: `PATCH /v2/dp/audience` with add/remove patches.

            Creates the DSP audience on first use (its id is kept in the state store), sends the queued
            patches in requests within Amazon's limits, commits the confirmed ones to the ledger and
            takes them off the queue, records the upload time and reads the audience's match rate.
            Patches not confirmed stay queued and fail the run. Metadata holds counts only.
            """
            if context.partition_key not in delivered:
                context.log.info(f"audience {context.partition_key} is not sent to DSP")
                return
            audience = audiences.audience(context.partition_key)
            yield self._flush(context, config, state_store, amazon_ads, audience, clock)

        return dsp_flush

    def _flush(
        self,
        context: dg.AssetExecutionContext,
        config: DspRunConfig,
        state_store: StateStore,
        amazon_ads: AmazonAdsApi,
        audience: Audience,
        clock: Callable[[], float],
    ) -> dg.MaterializeResult:
        started = time.perf_counter()
        ledger = Ledger(state_store.store, self.destination, audience.partition_key)
        queue = DspQueue(state_store.store, self.destination, audience.partition_key)
        if config.dry_run:
            plan = plan_flush(queue.load().frame, ledger.load().frame.get_column("user_id"))
            metadata = {
                "dry_run": True,
                "patches": plan.adds + plan.removes,
                "adds": plan.adds,
                "removes": plan.removes,
                "requests": plan.requests,
                "projected_audience_size": plan.projected_size,
                "seconds": round(time.perf_counter() - started, 3),
            }
            context.log.info(f"dry run, nothing sent or committed: {metadata}")
            return dg.MaterializeResult(metadata=metadata)

        api = amazon_ads.client(region=self.region)
        profile = self._profile(api)
        dsp = DspClient(api, int(profile["profileId"]))
        audience_id = self._dsp_audience(dsp, str(profile["countryCode"]), state_store, audience, context)
        try:
            outcome = flush(queue, ledger, audience_id, dsp.patch_audiences, int(clock()))
        except (LedgerConflict, QueueConflict) as error:
            raise dg.Failure(str(error)) from None
        size = dsp.get_audience(audience_id)
        match = size.metadata.audience_size if size is not None else None
        metadata = {
            "dry_run": False,
            "patches_sent": outcome.patches_sent,
            "adds": outcome.adds,
            "removes": outcome.removes,
            "requests": outcome.requests,
            "retries": api.retries,
            "queued_left": outcome.left,
            "received": match.received_record_size if match else 0,
            "matched": match.matched_record_size if match else 0,
            "match_rate": match.match_rate if match else 0.0,
            "ledger_version": outcome.ledger_version,
            "seconds": round(time.perf_counter() - started, 3),
        }
        context.log.info(f"audience {audience.partition_key} to DSP audience {audience_id}: {metadata}")
        if outcome.error is not None:
            raise dg.Failure(
                f"DSP refused a PATCH after every retry ({outcome.error}); the confirmed patches are "
                f"committed, the {outcome.left} others stay queued for the next flush",
                metadata=metadata,
            )
        return dg.MaterializeResult(metadata=metadata)

    def _profile(self, api: AdsApiClient) -> dict:
        """The profile named by `profile_name` and `marketplace_profile_name` (`GET /v2/profiles`)."""
        profiles = api.request("GET", "/v2/profiles") or []
        named = [p for p in profiles if p.get("accountInfo", {}).get("name") == self.profile_name]
        if not named:
            names = sorted({str(p.get("accountInfo", {}).get("name")) for p in profiles})
            raise dg.Failure(
                f"DSP setting `profile_name`: no profile of these credentials is named {self.profile_name!r} "
                f"(there are: {', '.join(names) or 'none'})"
            )
        wanted = self.marketplace_profile_name.upper()
        for profile in named:
            if wanted in (
                str(profile.get("countryCode")).upper(),
                profile["accountInfo"].get("marketplaceStringId"),
            ):
                return profile
        markets = sorted(str(p.get("countryCode")) for p in named)
        raise dg.Failure(
            f"DSP setting `marketplace_profile_name`: {self.profile_name!r} has no profile for "
            f"{self.marketplace_profile_name!r} (it has: {', '.join(markets)})"
        )

    def _dsp_audience(
        self,
        dsp: DspClient,
        country: str,
        state_store: StateStore,
        audience: Audience,
        context: dg.AssetExecutionContext,
    ) -> int:
        """The id of the audience's DSP audience, created on first use and remembered in the state store."""
        key = _audience_key(self.destination, audience.partition_key)
        known = state_store.read_parquet(key)
        if known is not None:
            return int(known.item(0, "dsp_audience_id"))
        # Amazon wants 10..128 characters; a short audience name is padded with what it is.
        name = audience.destination_name
        name = name if len(name) >= 10 else f"{name} (audience_pipeline)"
        try:
            created = dsp.create_audience(
                name=name[:128],
                description=f"audience_pipeline audience {audience.partition_key}",
                advertiser_id=self.advertiser_id,
                external_audience_id=str(audience.partition_key),
                data_source_country=[country],
            )
        except AmazonAdsApiError as error:
            raise dg.Failure(f"DSP did not create the audience ({error.message}); nothing was sent") from None
        frame = pl.DataFrame({"dsp_audience_id": [str(created.id)]})
        try:
            state_store.store.write_if(key, frame, None)
        except RevisionConflict:
            raise dg.Failure(
                f"another run created the DSP audience of {audience.partition_key} at the same time; "
                f"DSP audience {created.id} is unused, the next flush uses the one remembered"
            ) from None
        context.log.info(f"created DSP audience {created.id} for audience {audience.partition_key}")
        return created.id

    def build_sensor(self, clock: Callable[[], float] = time.time) -> dg.SensorDefinition:
        """The sensor that requests a flush of each audience whose queue is due."""
        interval = self.upload_interval_seconds
        audiences = [str(a) for a in self.audiences]

        @dg.sensor(
            name=f"dsp_advertiser_{self.advertiser_id}_flush",
            asset_selection=[self.flush_key],
            minimum_interval_seconds=60,
            default_status=dg.DefaultSensorStatus.RUNNING,
        )
        def dsp_flush_sensor(context: dg.SensorEvaluationContext, state_store: StateStore):
            """Requests a flush of an audience's DSP queue when the upload interval has passed since its
            last upload or the queue reached the size limit, whichever comes first.

            The cursor keeps, per audience, the queue revision a flush was requested for and when, so a
            queue is not requested twice while its flush runs; a flush that did not empty it is
            requested again after another interval.
            """
            now = clock()
            requested = json.loads(context.cursor) if context.cursor else {}
            runs, waiting = [], []
            for partition in audiences:
                state = DspQueue(state_store.store, self.destination, partition).load()
                reason = state.due(now, interval, self.queue_size_limit_bytes)
                if reason is None:
                    waiting.append(f"{partition}: {state.frame.height} changes, {state.size_bytes} bytes")
                    continue
                last = requested.get(partition)
                if last is not None and last[0] == state.revision and now - last[1] < interval:
                    waiting.append(f"{partition}: flush requested {int(now - last[1])} s ago")
                    continue
                requested[partition] = [state.revision, now]
                runs.append(
                    dg.RunRequest(
                        run_key=f"{partition}:{state.revision}:{int(now)}",
                        partition_key=partition,
                        asset_selection=[self.flush_key],
                        tags={"dsp/flush_reason": reason},
                    )
                )
                context.log.info(f"flush of audience {partition}: {reason}")
            if not runs:
                return dg.SensorResult(
                    skip_reason=dg.SkipReason(
                        f"waiting for an upload interval of {int(interval)} s or "
                        f"{self.queue_size_limit_bytes} bytes; " + "; ".join(waiting)
                    ),
                    cursor=json.dumps(requested),
                )
            return dg.SensorResult(run_requests=runs, cursor=json.dumps(requested))

        return dsp_flush_sensor


def _audience_key(destination: str, partition_key: str) -> str:
    """Where the id of an audience's DSP audience is remembered, next to its ledger."""
    return "dsp_audiences/" + ledger_key(destination, partition_key).removeprefix("ledgers/")
