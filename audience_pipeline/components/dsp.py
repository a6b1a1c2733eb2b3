"""Amazon DSP mobile ad ids (mParticle's "Amazon Advertising", seed 000): IDFA/GAID audiences, bulk.

One instance is one advertiser; many audiences may share it. Per audience it takes (a partition of
both assets, following the snapshot's partition of the same audience):

- `dsp/advertiser_<id>` (eager) appends the MAID changes of a new snapshot to the audience's queue;
- `dsp/advertiser_<id>/flush` sends the queue to the audience's DSP audience (created on first use,
  never twice: see `membership.dsp_audiences`);
- an audience's first flush runs as soon as its queue partition is materialized (automation, see
  `FIRST_FLUSH`): never uploaded, it has no previous upload to wait for;
- after that, the sensor requests a flush when the upload interval has passed since the last upload or
  the queue reached its size limit, whichever comes first.
"""

import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, ClassVar

import dagster as dg
from pydantic import Field, TypeAdapter, ValidationError, field_validator

from audience_pipeline.clients.ads_api import MAX_IN_FLIGHT
from audience_pipeline.clients.concurrency import RequestPace
from audience_pipeline.clients.rate_limit import RateLimit
from audience_pipeline.components.audiences import (
    Audience,
    AudiencesComponent,
    open_snapshot,
)
from audience_pipeline.components.destination import DeliveryRunConfig, DestinationComponent
from audience_pipeline.membership.dsp_audiences import DspAudienceRecord
from audience_pipeline.membership.dsp_delivery import DspAccess, DspAdapter, DspTarget, flush
from audience_pipeline.membership.dsp_queue import DspQueue, queue_audience
from audience_pipeline.membership.ledger import Ledger
from audience_pipeline.resources.state_store import StateStore
from audience_pipeline.state import ParquetStore

REGIONS = ("NA", "EU", "FE")
# Amazon's Data Provider guide gives `PATCH /v2/dp/audience` a 100 TPS throttle, shared by every flush
# and app on the same credentials: a tenth of it, 20,000 MAIDs a second (see docs/configuration.md).
DEFAULT_PATCHES_PER_SECOND = 10.0
# The flush sensor reads this many queues at once, and its skip reason names this many waiting ones
# (empty queues are counted, not named: a tick's reason is kept in the instance's database).
QUEUE_READERS = 8
LISTED_WAITING = 10
_INTERVAL = TypeAdapter(timedelta)
# Amazon's marketplaces, by the country code and the shape of the id `GET /v2/profiles` gives them: how
# settings written before they took the seed's meaning (a marketplace in `marketplace_profile_name`) are
# told from a profile's name.
_MARKETPLACE_COUNTRIES = frozenset(
    {"US", "CA", "MX", "BR"}  # NA
    | {"UK", "DE", "FR", "IT", "ES", "NL", "SE", "PL", "BE", "TR", "AE", "SA", "EG", "IN", "IE", "ZA"}  # EU
    | {"JP", "AU", "SG"}  # FE
)
_MARKETPLACE_ID = re.compile(r"A(?=[A-Z]*[0-9])[0-9A-Z]{12,13}")

# The flush's own automation: a partition never materialized is requested once its queue partition has
# been materialized (a run of its own, after the queue's: not with it in the queue's run). So the first
# upload follows the first enqueue (mParticle uploads when the interval has passed "since the last
# upload", and there is none) and no audience stays missing until the sensor's interval; later uploads
# are the sensor's. A first flush that failed is tried again after the queue's next update (run-level
# retries are off). Unlike `on_missing()`, partitions already missing at the first evaluation count.
FIRST_FLUSH = (
    dg.AutomationCondition.missing()
    & dg.AutomationCondition.any_deps_match(dg.AutomationCondition.newly_updated()).since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("first flush: never flushed, queue materialized")


class DspMobileAdIdsComponent(DestinationComponent):
    """Sends the IDFAs and GAIDs of the chosen audiences to Amazon DSP audiences of one advertiser.

    The settings are mParticle's Amazon Advertising settings (seed 000), with its defaults and
    meanings: "Marketplace Profile Name" is the advertiser profile's name for the target marketplace
    (`marketplace_profile_name`, with `marketplace` where the name is in several), "Profile Name" the
    Amazon user linked to the account (`profile_name`). The Login with Amazon credentials are the
    `amazon_ads` resource's (`AMAZON_ADS_*` environment variables).
    """

    kind: ClassVar[str] = "DSP"

    advertiser_id: int = Field(gt=0, description="Your Amazon Advertising account's advertiser id.")
    region: str = Field(
        default="NA", description="Where the target marketplace is: NA (North America), EU or FE."
    )
    marketplace_profile_name: str = Field(
        min_length=1,
        description="The name of the advertiser profile for the target marketplace (`accountInfo.name` "
        "in `GET /v2/profiles`, as `audience-pipeline login` lists it), or its profile id.",
    )
    marketplace: str | None = Field(
        default=None,
        min_length=1,
        description="The target marketplace: a country code (US, UK, DE...) or marketplace id "
        "(ATVPDKIKX0DER). Needed when the profile's name is in more than one marketplace of the region.",
    )
    profile_name: str | None = Field(
        default=None,
        min_length=1,
        description="The name of the Amazon user linked to the Amazon Advertising account: the user who "
        "granted the refresh token (Login with Amazon's user profile; needs the `profile` scope). Each "
        "flush checks it before sending; unset, no check.",
    )
    upload_interval: int | str = Field(
        default=7200,
        description="Upload at the latest this long after the last upload: seconds, `HH:MM:SS` or ISO 8601 "
        "(`PT2H`).",
    )
    queue_size_limit_bytes: int = Field(
        default=1_000_000, gt=0, description="Upload as soon as the queued patches reach this size."
    )

    max_in_flight_requests: int = Field(
        default=4, ge=1, le=MAX_IN_FLIGHT, description="PATCH requests in flight at once, per flush."
    )
    requests_per_second: float = Field(
        default=DEFAULT_PATCHES_PER_SECOND,
        gt=0,
        description="PATCH requests per second, retries included, that a flush stays within (Amazon's "
        "guide: a 100 TPS throttle on the endpoint).",
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
    def in_earlier_meaning(self) -> bool:
        """Whether the profile settings are written as before they took the seed's meaning: a
        marketplace in `marketplace_profile_name`, the profile's name in `profile_name`, no
        `marketplace`. They are still read so (see `profile_settings`), with a warning."""
        written = self.marketplace_profile_name
        return (
            self.marketplace is None
            and self.profile_name is not None
            and (written.upper() in _MARKETPLACE_COUNTRIES or bool(_MARKETPLACE_ID.fullmatch(written)))
        )

    @property
    def profile_settings(self) -> tuple[str, str | None, str | None]:
        """`marketplace_profile_name`, `marketplace` and `profile_name` as the flush uses them; settings
        `in_earlier_meaning` give the profile's name and marketplace, and no user to check."""
        if self.in_earlier_meaning:
            return self.profile_name, self.marketplace_profile_name, None
        return self.marketplace_profile_name, self.marketplace, self.profile_name

    @property
    def upload_interval_seconds(self) -> float:
        """`upload_interval` in seconds."""
        return _INTERVAL.validate_python(self.upload_interval).total_seconds()

    @property
    def queue_key(self) -> dg.AssetKey:
        """`dsp/advertiser_<id>`: the queue asset."""
        return dg.AssetKey(["dsp", f"advertiser_{self.advertiser_id}"])

    @property
    def flush_key(self) -> dg.AssetKey:
        """`dsp/advertiser_<id>/flush`: the upload asset."""
        return dg.AssetKey([*self.queue_key.path, "flush"])

    @property
    def asset_key(self) -> dg.AssetKey:
        """The queue asset's key, which names the job."""
        return self.queue_key

    @property
    def destination(self) -> str:
        """The ledger's destination name: an advertiser in a region."""
        return f"dsp/{self.region}/{self.advertiser_id}"

    @property
    def label(self) -> str:
        """`DSP advertiser <id>`."""
        return f"DSP advertiser {self.advertiser_id}"

    @property
    def job_description(self) -> str:
        """What the job does."""
        return (
            "Queues the chosen audiences' mobile ad id changes and uploads them to DSP "
            f"advertiser {self.advertiser_id} now, without waiting for the flush sensor."
        )

    def build_assets(self, audiences: AudiencesComponent) -> list[dg.AssetsDefinition]:
        """The queue and flush assets."""
        return [self.build_queue_asset(audiences), self.build_flush_asset(audiences)]

    def build_sensors(self) -> list[dg.SensorDefinition]:
        """The flush sensor."""
        return [self.build_sensor()]

    def build_queue_asset(
        self, audiences: AudiencesComponent, clock: Callable[[], float] = time.time
    ) -> dg.AssetsDefinition:
        """The queue asset, one partition per routed audience; unknown audience ids fail here."""

        def enqueue_step(
            context: dg.AssetExecutionContext, config: DeliveryRunConfig, audience: Audience
        ) -> dict[str, Any]:
            state_store: StateStore = context.resources.state_store
            with open_snapshot(state_store, audience) as snapshot:
                queued = queue_audience(
                    DspQueue(state_store.store, self.destination, audience.partition_key),
                    snapshot,
                    Ledger(state_store.store, self.destination, audience.partition_key),
                    int(clock()),
                    dry_run=config.dry_run,
                )
            return {
                "dry_run": config.dry_run,
                "maids": queued.maids,
                "added": queued.added,
                "removed": queued.removed,
                "rejects_total": sum(queued.rejects.values()),
                "rejects": queued.rejects,
                "queued": queued.queue.changes,
                "queue_bytes": queued.queue.size_bytes,
            }

        return self.delivery_asset(
            audiences,
            self.queue_key,
            enqueue_step,
            description="Mobile ad id changes of one audience, appended to its DSP upload queue.\n\n"
            "Takes the IDFAs and GAIDs of the audience's snapshot (zeroed or malformed ones are rejects), "
            "diffs them against what DSP holds (the ledger) plus the changes already queued, and appends "
            "the new additions and removals to the queue in the state store. Nothing is sent: the flush "
            "sensor uploads the queue. Metadata holds counts only.",
            kinds={"amazon", "dsp"},
            resources=set(),
            group_name="transform",
        )

    def build_flush_asset(
        self, audiences: AudiencesComponent, clock: Callable[[], float] = time.time
    ) -> dg.AssetsDefinition:
        """The flush asset: an audience's first flush follows its queue (`FIRST_FLUSH`), the sensor
        requests the later ones."""

        def flush_step(
            context: dg.AssetExecutionContext, config: DeliveryRunConfig, audience: Audience
        ) -> dict[str, Any]:
            store = context.resources.state_store.store
            name, marketplace, user = self.profile_settings
            if self.in_earlier_meaning:
                context.log.warning(
                    f"DSP settings `marketplace_profile_name: {self.marketplace_profile_name}` and "
                    f"`profile_name: {self.profile_name}` are read in their earlier meaning. Write them as "
                    f"mParticle means them: `marketplace_profile_name: {name}` (the advertiser profile's "
                    f"name), `marketplace: {marketplace}`, and `profile_name:` the Amazon user linked to "
                    "the account, which is then checked (`audience-pipeline login` lists both)"
                )
            access = None if config.dry_run else context.resources.amazon_ads
            adapter = self.adapter(store, audience, access, clock)
            flushed = flush(
                DspQueue(store, self.destination, audience.partition_key),
                Ledger(store, self.destination, audience.partition_key),
                adapter,
                int(clock()),
                dry_run=config.dry_run,
                max_removal_share=self.max_share(config),
            )
            counts = flushed.outcome.counts
            projected = flushed.outcome.held + counts["added"] - counts["removed"]
            if config.dry_run:
                return self.report(context, flushed.outcome, config, projected_audience_size=projected)
            size = None
            if adapter.dsp_audience_id is not None:
                size = adapter.dsp.get_audience(adapter.dsp_audience_id)
            match = size.metadata.audience_size if size is not None else None
            return self.report(
                context,
                flushed.outcome,
                config,
                queued_left=flushed.left,
                received=match.received_record_size if match else 0,
                matched=match.matched_record_size if match else 0,
                match_rate_pct=round(100 * match.match_rate, 2) if match else 0.0,
            )

        return self.delivery_asset(
            audiences,
            self.flush_key,
            flush_step,
            description="One audience's DSP queue, uploaded: `PATCH /v2/dp/audience` with add/remove "
            "patches.\n\nFinds the advertiser profile by `marketplace_profile_name` in `marketplace` "
            "(`GET /v2/profiles`) and, with `profile_name`, checks the Amazon user the login belongs to "
            "(Login with Amazon's `GET /user/profile`). Creates the DSP audience on first use (its id is "
            "recorded in the state store, its intent before the request), sends the queued patches in "
            "requests within Amazon's limits (`max_in_flight_requests` at once within "
            "`requests_per_second`), commits the confirmed ones to the ledger and takes them off the "
            "queue, records the upload time and reads the audience's match rate. Patches not confirmed "
            "stay queued and fail the run. Metadata holds counts only.\n\nAn audience's first flush runs "
            "as soon as its queue partition is materialized; later ones when the flush sensor finds the "
            "upload interval passed since the last upload or the queue at its size limit.",
            kinds={"amazon", "dsp"},
            resources={"amazon_ads"},
            upstream=self.queue_key,
            automation_condition=FIRST_FLUSH,
            pool="amazon_ads_dsp",
        )

    def adapter(
        self, store: ParquetStore, audience: Audience, access: DspAccess | None, clock: Callable[[], float]
    ) -> DspAdapter:
        """The delivery core's adapter patching `audience`'s DSP audience (`access`: the `amazon_ads`
        resource, None in a dry run)."""
        name, marketplace, user = self.profile_settings
        target = DspTarget(
            self.advertiser_id,
            name,
            marketplace,
            audience.partition_key,
            audience.destination_name,
            self.region,
            user,
        )
        record = DspAudienceRecord(store, self.destination, audience.partition_key)
        # One limit for the whole flush: every PATCH of every bucket takes from it.
        pace = RequestPace(self.max_in_flight_requests, RateLimit({"requests": self.requests_per_second}))
        return DspAdapter(target, record, clock, access, pace)

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
            # One read a queue, many at once: a tick of hundreds of audiences stays seconds long.
            queues = [DspQueue(state_store.store, self.destination, a) for a in audiences]
            with ThreadPoolExecutor(max_workers=QUEUE_READERS) as readers:
                loaded = list(zip(audiences, readers.map(DspQueue.load, queues), strict=True))
            for partition, state in loaded:
                reason = state.due(now, interval, self.queue_size_limit_bytes)
                if reason is None:
                    if state.changes:
                        waiting.append(f"{partition}: {state.changes} changes, {state.size_bytes} bytes")
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
                        f"{self.queue_size_limit_bytes} bytes; {len(audiences) - len(waiting)} of "
                        f"{len(audiences)} queues empty{listed(waiting, LISTED_WAITING)}"
                    ),
                    cursor=json.dumps(requested),
                )
            return dg.SensorResult(run_requests=runs, cursor=json.dumps(requested))

        return dsp_flush_sensor


def listed(items: list[str], most: int) -> str:
    """`; a; b` for the first `most` items, then `; and N more`."""
    more = f"; and {len(items) - most} more" if len(items) > most else ""
    return "".join(f"; {item}" for item in items[:most]) + more
