"""Forget a person everywhere: the `privacy/forget` asset over a query of deletion requests.

Each run reads the requests (`privacy.deletion_requests`: hashed at once), replaces the suppression
list with the open requests' keys (snapshots built later leave those people out), and for each open
request without a receipt, or with a destination that failed:

- drops the person from every audience snapshot (by user id, e-mail, phone, mobile ad ID, partner ID);
- Firehose: an `IsMember=false` message per audience holding them, through the delivery core, which
  commits the removal to the stream's ledger;
- Ads Data Manager: an identity deletion (`POST /adm/identities/delete`, by `externalUserId` and by
  hashed e-mail and phone) per manager account, then the person is purged from its ledgers;
- DSP: a removal patch of their mobile ad IDs per audience holding them, through the delivery core,
  and their pending changes taken off the queue;
- AMC: a user deletion request per instance (the AMC deletion path of `amc.jobs`), waited for within
  the instance's `wait_timeout_seconds`; a deletion still running is polled again by the next run
  until it is final.

It writes a receipt per request and destination to the state store (`privacy.RECEIPTS_KEY`): request
id, destination, Amazon's request ids, state, members, time. Never a raw identity: receipts, logs and
metadata hold request ids, destination names, states and counts.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field, field_validator

from audience_pipeline.amc.deletion import deletion_identities
from audience_pipeline.amc.jobs import AmcJob, check_job, request_deletions, wait_for_job
from audience_pipeline.clients.adm import MAX_DELETION_TARGETS
from audience_pipeline.clients.ads_api import AmazonAdsApiError
from audience_pipeline.components.ads_data_manager import AdsDataManagerComponent
from audience_pipeline.components.amc import AmazonMarketingCloudComponent
from audience_pipeline.components.audiences import AudiencesComponent, find_audiences, snapshot_state_key
from audience_pipeline.components.dsp import DspMobileAdIdsComponent
from audience_pipeline.components.firehose import FirehoseComponent
from audience_pipeline.components.setting_errors import CheckedSettings
from audience_pipeline.components.source import source_table_key
from audience_pipeline.components.ui import OWNERS
from audience_pipeline.identity import MAID_FIELDS
from audience_pipeline.identity.countries import country_setting
from audience_pipeline.identity.hashing import sha256_hex
from audience_pipeline.membership.adm_delivery import dataset_name
from audience_pipeline.membership.delivery import USER_ID, deliver
from audience_pipeline.membership.dsp_queue import DspQueue
from audience_pipeline.membership.ledger import Ledger, LedgerState
from audience_pipeline.privacy import (
    DONE,
    FAILED,
    REQUEST_ID,
    Receipt,
    deletion_requests,
    load_receipts,
    save_receipts,
    save_suppressed,
    to_process,
    without,
)
from audience_pipeline.resources.duckdb_source import source_query_errors, source_tables
from audience_pipeline.snapshot import drop_members
from audience_pipeline.state.buckets import BucketedFile

FORGET_ASSET_KEY = dg.AssetKey(["privacy", "forget"])
# AMC identity columns that name a person (the others name a place), as `amc.deletion` reads them.
_PERSON_COLUMNS = ("email", "phone", "first_name", "last_name", "address")


@dataclass(frozen=True)
class Destinations:
    """The project's destinations a person is forgotten at."""

    firehose: list[FirehoseComponent]
    ads_data_manager: list[AdsDataManagerComponent]
    dsp: list[DspMobileAdIdsComponent]
    amc: list[AmazonMarketingCloudComponent]


class ForgetComponent(CheckedSettings, dg.Component, dg.Model, dg.Resolvable):
    """Forgets the people of a deletion-requests query at every destination, and keeps them out of
    every later snapshot until their request is withdrawn (`privacy/forget`)."""

    sql: str = Field(
        min_length=1,
        description="DuckDB SQL over the source: one row per identity of a request, `request_id` plus any "
        "identity columns (user_id, email, phone, idfa, gaid, partner IDs; names and addresses for AMC), "
        "and optionally `withdrawn` (true: the request no longer holds).",
    )
    country_code: str | None = Field(
        default=None, description="Country of phones and addresses for rows without a `country_code`."
    )

    @field_validator("country_code")
    @classmethod
    def _check_country(cls, value: str | None) -> str | None:
        return country_setting(value)

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """The forget asset over the project's audiences and destinations."""
        tree = context.component_tree
        destinations = Destinations(
            firehose=tree.get_all_components(FirehoseComponent),
            ads_data_manager=tree.get_all_components(AdsDataManagerComponent),
            dsp=tree.get_all_components(DspMobileAdIdsComponent),
            amc=tree.get_all_components(AmazonMarketingCloudComponent),
        )
        return dg.Definitions(assets=[self.build_asset(find_audiences(context), destinations)])

    def build_asset(self, audiences: AudiencesComponent, destinations: Destinations) -> dg.AssetsDefinition:
        """The `privacy/forget` asset."""

        @dg.asset(
            key=FORGET_ASSET_KEY,
            group_name="privacy",
            kinds={"amazon", "privacy"},
            owners=OWNERS,
            deps=[source_table_key(table) for table in source_tables(self.sql)],
            required_resource_keys={"source", "state_store", "amazon_ads", "firehose", "ledger_cipher"},
            pool="amazon_ads_api",
        )
        def forget(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
            """Forgets the people of the open deletion requests at every destination.

            Replaces the suppression list (hashes of the open requests' identities), then for each new
            request (or one a destination failed): drops the person from the snapshots, sends
            `IsMember=false` to Firehose, deletes the identity in Ads Data Manager, removes their MAIDs
            from DSP audiences, deletes the identity in AMC (followed to its end), purges ledgers and
            queues, and records a receipt per destination. Metadata holds request ids and counts only.
            """
            store = context.resources.state_store.store
            with source_query_errors("deletion requests", "sql"):
                frame = context.resources.source.query(self.sql)
            try:
                requests = deletion_requests(frame, self.country_code)
            except ValueError as error:
                raise dg.Failure(f"deletion requests: {error}") from None
            # First, so that a snapshot refreshed while this run works already leaves them out.
            save_suppressed(store, requests.keys)
            stored = load_receipts(store)
            work = _Forgetting(context, audiences, destinations)
            processed = to_process(requests, stored)
            receipts = [
                receipt
                for request_id in processed
                for receipt in work.forget(
                    request_id, requests.keys_of(request_id), requests.hashed_of(request_id)
                )
            ]
            pending = stored.filter(~pl.col("final") & ~pl.col(REQUEST_ID).is_in(processed))
            receipts += [work.follow(row) for row in pending.iter_rows(named=True)]
            save_receipts(store, stored, receipts)
            failed = [r for r in receipts if r.state == FAILED]
            metadata = {
                "requests_open": len(requests.open),
                "requests_withdrawn": len(requests.withdrawn),
                "requests_processed": len(processed),
                "rows_without_request_id": requests.rows_without_request_id,
                "suppressed_keys": requests.keys.height,
                "receipts": len(receipts),
                "receipts_failed": len(failed),
                "receipts_pending": sum(not r.final for r in receipts),
                "rejects": dg.MetadataValue.json(requests.rejects),
                "receipt_table": dg.MetadataValue.md(_table(receipts)),
            }
            context.log.info(
                f"forget: {len(processed)} requests processed, {len(receipts)} receipts, {len(failed)} failed"
            )
            if failed:
                where = ", ".join(sorted({f"{r.request_id} at {r.destination}" for r in failed}))
                raise dg.Failure(
                    f"forget: not done for {where}; those requests are tried again on the next run",
                    metadata=metadata,
                )
            return dg.MaterializeResult(metadata=metadata)

        return forget


class _Forgetting:
    """One run's work on the requests, with its resources."""

    def __init__(
        self, context: dg.AssetExecutionContext, audiences: AudiencesComponent, destinations: Destinations
    ):
        self.context, self.resources = context, context.resources
        self.store = context.resources.state_store.store
        self.audiences, self.destinations = audiences, destinations

    def forget(self, request_id: str, keys: pl.DataFrame, hashed: pl.DataFrame) -> list[Receipt]:
        """Forget one request's person everywhere; a receipt per destination that held or took them."""
        dropped = self._drop_from_snapshots(keys)
        user_ids = _column(dropped, [USER_ID])
        maids = _column(dropped, [c for c in MAID_FIELDS if c in dropped.columns])
        user_keys = keys.filter(pl.col("kind") == USER_ID).get_column("hash").implode()
        maid_keys = keys.filter(pl.col("kind").is_in(MAID_FIELDS)).get_column("hash").implode()

        def person(ids: pl.Series) -> pl.Series:
            return ids.is_in(user_ids.implode()) | _hashes(ids).is_in(user_keys)

        def device(ids: pl.Series) -> pl.Series:
            return ids.is_in(maids.implode()) | _hashes(ids).is_in(maid_keys)

        receipts: list[Receipt] = []
        for firehose in self.destinations.firehose:
            receipts += self._firehose(request_id, firehose, person)
        for adm in self.destinations.ads_data_manager:
            receipts += self._adm(request_id, adm, person, user_ids, hashed)
        for dsp in self.destinations.dsp:
            receipts += self._dsp(request_id, dsp, device, maids)
        for amc in self.destinations.amc:
            receipts += self._amc(request_id, amc, hashed)
        return receipts

    def follow(self, row: dict[str, Any]) -> Receipt:
        """Poll once an AMC deletion an earlier run left running; its receipt as it stands now."""
        amc = next(c for c in self.destinations.amc if _amc_label(c) == row["destination"])
        with self._attempt(row[REQUEST_ID], row["destination"]) as failed:
            client = amc.amc_instance.amc_client(self.resources.amazon_ads)
            outcome = check_job(client, AmcJob("deletion", tuple(row["amazon_ids"])))
            return Receipt(
                row[REQUEST_ID],
                row["destination"],
                outcome.status,
                _now(),
                final=outcome.final,
                members=row["members"],
                amazon_ids=tuple(row["amazon_ids"]),
            )
        return failed[0]

    def _drop_from_snapshots(self, keys: pl.DataFrame) -> pl.DataFrame:
        """Drop the members carrying `keys` from every audience's snapshot; the members dropped."""
        dropped = []
        for audience in self.audiences.audiences:
            key = snapshot_state_key(audience.partition_key)
            with self.store.open(key) as stored:
                if stored is None:
                    continue
                with self.store.replacing(key, stored.revision) as staged:
                    gone = drop_members(BucketedFile(stored), staged.path, keys)
                    staged.discard = not gone.height
            dropped.append(gone)
        return (
            pl.concat(dropped, how="diagonal_relaxed")
            if dropped
            else pl.DataFrame({USER_ID: []}, schema={USER_ID: pl.String})
        )

    def _firehose(
        self, request_id: str, firehose: FirehoseComponent, person: Callable[[pl.Series], pl.Series]
    ) -> list[Receipt]:
        receipts = []
        for audience_id in firehose.audiences:
            audience = self.audiences.audience(str(audience_id))
            ledger = Ledger(self.store, firehose.destination, audience.partition_key)
            where = f"{firehose.label}, audience {audience.partition_key}"
            with self._attempt(request_id, where) as failed:
                _, held = _held(ledger, person)
                if held.len():
                    outcome = deliver(
                        ledger,
                        without(held),
                        firehose.adapter(self.resources, audience),
                        max_removal_share=1.0,
                    )
                    state = DONE if not outcome.failed and not outcome.rejected else FAILED
                    receipts.append(Receipt(request_id, where, state, _now(), members=outcome.confirmed))
            receipts += failed
        return receipts

    def _adm(
        self,
        request_id: str,
        adm: AdsDataManagerComponent,
        person: Callable[[pl.Series], pl.Series],
        user_ids: pl.Series,
        hashed: pl.DataFrame,
    ) -> list[Receipt]:
        with self._attempt(request_id, adm.label) as failed:
            ledgers = []
            for audience_id in adm.audiences:
                audience = self.audiences.audience(str(audience_id))
                ledger = Ledger(
                    self.store, adm.ledger_destination(dataset_name(audience)), audience.partition_key
                )
                state, held = _held(ledger, person)
                if held.len():
                    ledgers.append((ledger, state, held))
            held_ids = pl.concat([user_ids, *(held for _, _, held in ledgers)]).unique(maintain_order=True)
            targets = [{"externalUserId": user_id} for user_id in held_ids] + _adm_identities(hashed)
            if not targets:
                return []
            client = self.resources.amazon_ads.adm(adm.manager_account_id)
            for start in range(0, len(targets), MAX_DELETION_TARGETS):
                client.delete_identities(targets[start : start + MAX_DELETION_TARGETS])
            for ledger, state, held in ledgers:
                ledger.purge(state, held)
            return [Receipt(request_id, adm.label, DONE, _now(), members=held_ids.len())]
        return failed

    def _dsp(
        self,
        request_id: str,
        dsp: DspMobileAdIdsComponent,
        device: Callable[[pl.Series], pl.Series],
        maids: pl.Series,
    ) -> list[Receipt]:
        receipts = []
        for audience_id in dsp.audiences:
            audience = self.audiences.audience(str(audience_id))
            where = f"{dsp.label}, audience {audience.partition_key}"
            with self._attempt(request_id, where) as failed:
                ledger = Ledger(self.store, dsp.destination, audience.partition_key)
                _, held = _held(ledger, device)
                confirmed = 0
                if held.len():
                    adapter = dsp.adapter(self.store, audience, self.resources.amazon_ads, time.time)
                    outcome = deliver(ledger, without(held), adapter, max_removal_share=1.0)
                    confirmed = outcome.confirmed
                    if outcome.failed or outcome.rejected:
                        receipts.append(Receipt(request_id, where, FAILED, _now(), members=confirmed))
                        continue
                taken = DspQueue(self.store, dsp.destination, audience.partition_key).purge(
                    pl.concat([maids, held])
                )
                if held.len() or taken:
                    receipts.append(Receipt(request_id, where, DONE, _now(), members=confirmed))
            receipts += failed
        return receipts

    def _amc(
        self, request_id: str, amc: AmazonMarketingCloudComponent, hashed: pl.DataFrame
    ) -> list[Receipt]:
        person = [c for c in _PERSON_COLUMNS if c in hashed.columns]
        if not person or not hashed.select(pl.any_horizontal(pl.col(person).is_not_null()).any()).item():
            return []
        where = _amc_label(amc)
        with self._attempt(request_id, where) as failed:
            # The identities are hashes already: the identity engine passes SHA-256 digests through.
            identities = deletion_identities(hashed)
            instance = amc.amc_instance
            client = instance.amc_client(self.resources.amazon_ads)
            job = AmcJob("deletion", tuple(request_deletions(client, identities.requests())))
            outcome = wait_for_job(
                client,
                job,
                poll_seconds=instance.poll_interval_seconds,
                timeout_seconds=instance.wait_timeout_seconds,
            )
            return [
                Receipt(
                    request_id,
                    where,
                    outcome.status,
                    _now(),
                    final=outcome.final,
                    members=len(identities.identities),
                    amazon_ids=job.ids,
                )
            ]
        return failed

    def _attempt(self, request_id: str, where: str) -> "_Attempt":
        return _Attempt(self.context, request_id, where)


class _Attempt:
    """One destination's part of a request: an error is logged (type and message, which never quote
    an identity) and becomes a FAILED receipt in the list it yields, so the other destinations go on."""

    def __init__(self, context: dg.AssetExecutionContext, request_id: str, where: str):
        self.context, self.request_id, self.where = context, request_id, where
        self.failed: list[Receipt] = []

    def __enter__(self) -> list[Receipt]:
        return self.failed

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _: object) -> bool:
        if error is None or not isinstance(error, Exception):
            return False
        # Amazon's and our own errors are worded without data; any other may quote a value it met.
        said = f": {error}" if isinstance(error, AmazonAdsApiError | dg.Failure) else ""
        self.context.log.error(
            f"forget request {self.request_id} at {self.where}: {type(error).__name__}{said}"
        )
        self.failed.append(Receipt(self.request_id, self.where, FAILED, _now()))
        return True


def _held(ledger: Ledger, match: Callable[[pl.Series], pl.Series]) -> tuple[LedgerState, pl.Series]:
    """The ledger as loaded, and its members that `match` finds; none when there is no ledger."""
    state = ledger.load()
    if state.revision is None:
        return state, pl.Series(USER_ID, [], pl.String)
    return state, ledger.members_where(state, match)


def _hashes(values: pl.Series) -> pl.Series:
    """The SHA-256 of each value (ledger user ids and MAIDs), as the keys of `privacy` hold them."""
    return values.to_frame().select(sha256_hex(pl.col(values.name))).to_series()


def _column(frame: pl.DataFrame, columns: list[str]) -> pl.Series:
    """The distinct non-null values of `columns` of `frame`, as one text column."""
    values = [frame.get_column(c).cast(pl.String) for c in columns if c in frame.columns]
    return (
        pl.concat([pl.Series(USER_ID, [], pl.String), *(v.alias(USER_ID) for v in values)])
        .drop_nulls()
        .unique()
    )


def _adm_identities(hashed: pl.DataFrame) -> list[dict[str, Any]]:
    """ADM identity deletion targets of a request's hashed e-mails and phones (the keys that single a
    person out in ADM)."""
    keys = {"email": "em", "phone": "ph"}
    present = [c for c in keys if c in hashed.columns]
    targets = []
    for row in hashed.select(present).unique(maintain_order=True).iter_rows(named=True):
        pii = {keys[c]: value for c, value in row.items() if value is not None}
        if pii:
            targets.append({"identity": {"hashedPiis": [pii]}})
    return targets


def _amc_label(amc: AmazonMarketingCloudComponent) -> str:
    return f"AMC {amc.instance_id}"


def _now() -> int:
    return int(time.time())


def _table(receipts: list[Receipt]) -> str:
    """The run's receipts as Markdown: request ids, destinations, states, counts, Amazon's ids."""
    lines = ["| request | destination | state | members | Amazon ids |", "|---|---|---|---|---|"]
    lines += [
        f"| {r.request_id} | {r.destination} | {r.state} | {r.members} | {', '.join(r.amazon_ids)} |"
        for r in receipts
    ]
    return "\n".join(lines)
