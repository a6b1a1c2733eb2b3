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
    finder,
    held_per_request,
    load_keys,
    load_receipts,
    resolve,
    save_receipts,
    save_suppressed,
    settled,
    to_process,
    without,
)
from audience_pipeline.resources.duckdb_source import source_query_errors, source_tables
from audience_pipeline.snapshot import drop_members
from audience_pipeline.state.buckets import BucketedFile

FORGET_ASSET_KEY = dg.AssetKey(["privacy", "forget"])
# AMC identity columns that name a person (the others name a place), as `amc.deletion` reads them.
_PERSON_COLUMNS = ["email", "phone", "first_name", "last_name", "address"]
# What ADM deletes a person by: the hashed e-mails and phones of a request, and the user ids it holds.
_ADM_PII = {"email": "em", "phone": "ph"}
# The key kinds a ledger's user ids are found by.
_USER = (USER_ID,)


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

            Replaces the suppression list (hashes of the open requests' identities), then, all at once
            for the new requests (and those a destination failed): drops the people from the
            snapshots, sends `IsMember=false` to Firehose, deletes the identities in Ads Data Manager,
            removes their MAIDs from DSP audiences, deletes the identities in AMC (followed to its
            end), purges ledgers and queues, and records a receipt per request and destination.
            Metadata holds request ids and counts only.
            """
            store = context.resources.state_store.store
            with source_query_errors("deletion requests", "sql"):
                frame = context.resources.source.query(self.sql)
            try:
                requests = deletion_requests(frame, self.country_code)
            except ValueError as error:
                raise dg.Failure(f"deletion requests: {error}") from None
            known = load_keys(store)
            keys = pl.concat([requests.keys, known.filter(pl.col(REQUEST_ID).is_in(requests.open))]).unique()
            # First, so that a snapshot refreshed while this run works already leaves them out.
            save_suppressed(store, keys)
            stored = load_receipts(store)
            processed = to_process(requests, stored)
            work = _Forgetting(context, audiences, destinations)
            receipts: list[Receipt] = []
            if processed:
                batch_keys = keys.filter(pl.col(REQUEST_ID).is_in(processed))
                resolved = resolve(work.drop_from_snapshots(batch_keys), batch_keys)
                keys = pl.concat([keys, resolved]).unique()
                save_suppressed(store, keys)
                batch = _Batch(
                    tuple(processed),
                    keys.filter(pl.col(REQUEST_ID).is_in(processed)),
                    requests.hashed.filter(pl.col(REQUEST_ID).is_in(processed)),
                )
                receipts = work.forget(batch)
                receipts += settled(stored, processed, receipts, _now())
            pending = stored.filter(~pl.col("final") & ~pl.col(REQUEST_ID).is_in(processed))
            receipts += work.follow(pending)
            save_receipts(store, stored, receipts)
            failed = [r for r in receipts if r.state == FAILED]
            metadata = {
                "requests_open": len(requests.open),
                "requests_withdrawn": len(requests.withdrawn),
                "requests_processed": len(processed),
                "rows_without_request_id": requests.rows_without_request_id,
                "suppressed_keys": keys.height,
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


@dataclass(frozen=True)
class _Batch:
    """The requests one run works on, together: their keys (the query's and those resolved from the
    snapshots) and hashed identity rows."""

    requests: tuple[str, ...]
    keys: pl.DataFrame
    hashed: pl.DataFrame

    def receipts(self, where: str, held: dict[str, int], state: str = DONE) -> list[Receipt]:
        """A receipt at `where` for each request of which it held members (`held`: request → count)."""
        return [Receipt(r, where, state, _now(), members=n) for r, n in held.items()]


class _Forgetting:
    """One run's work on the requests, with its resources."""

    def __init__(
        self, context: dg.AssetExecutionContext, audiences: AudiencesComponent, destinations: Destinations
    ):
        self.context, self.resources = context, context.resources
        self.store = context.resources.state_store.store
        self.audiences, self.destinations = audiences, destinations

    def forget(self, batch: _Batch) -> list[Receipt]:
        """Forget the batch's people everywhere; a receipt per request and destination that held or took
        them (or failed)."""
        receipts: list[Receipt] = []
        for firehose in self.destinations.firehose:
            receipts += self._firehose(batch, firehose)
        for adm in self.destinations.ads_data_manager:
            receipts += self._adm(batch, adm)
        for dsp in self.destinations.dsp:
            receipts += self._dsp(batch, dsp)
        for amc in self.destinations.amc:
            receipts += self._amc(batch, amc)
        return receipts

    def follow(self, pending: pl.DataFrame) -> list[Receipt]:
        """Poll once each AMC deletion an earlier run left running (`pending`: receipts not final); the
        receipts as they stand now."""
        receipts: list[Receipt] = []
        for (where, ids), rows in pending.group_by("destination", "amazon_ids", maintain_order=True):
            request_ids = tuple(rows.get_column(REQUEST_ID))
            with self._attempt(request_ids, str(where)) as failed:
                amc = next(c for c in self.destinations.amc if _amc_label(c) == where)
                client = amc.amc_instance.amc_client(self.resources.amazon_ads)
                outcome = check_job(client, AmcJob("deletion", tuple(ids)))
                receipts += [
                    Receipt(
                        row[REQUEST_ID],
                        row["destination"],
                        outcome.status,
                        _now(),
                        final=outcome.final,
                        members=row["members"],
                        amazon_ids=tuple(ids),
                    )
                    for row in rows.iter_rows(named=True)
                ]
            receipts += failed
        return receipts

    def drop_from_snapshots(self, keys: pl.DataFrame) -> pl.DataFrame:
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

    def _firehose(self, batch: _Batch, firehose: FirehoseComponent) -> list[Receipt]:
        receipts = []
        for audience_id in firehose.audiences:
            audience = self.audiences.audience(str(audience_id))
            ledger = Ledger(self.store, firehose.destination, audience.partition_key)
            where = f"{firehose.label}, audience {audience.partition_key}"
            with self._attempt(batch.requests, where) as failed:
                _, held = _held(ledger, finder(batch.keys, _USER))
                if held.len():
                    outcome = deliver(
                        ledger,
                        without(held),
                        firehose.adapter(self.resources, audience),
                        max_removal_share=1.0,
                    )
                    state = DONE if not outcome.failed and not outcome.rejected else FAILED
                    receipts += batch.receipts(where, held_per_request(held, batch.keys, _USER), state)
            receipts += failed
        return receipts

    def _adm(self, batch: _Batch, adm: AdsDataManagerComponent) -> list[Receipt]:
        with self._attempt(batch.requests, adm.label) as failed:
            ledgers = []
            for audience_id in adm.audiences:
                audience = self.audiences.audience(str(audience_id))
                ledger = Ledger(
                    self.store, adm.ledger_destination(dataset_name(audience)), audience.partition_key
                )
                state, held = _held(ledger, finder(batch.keys, _USER))
                if held.len():
                    ledgers.append((ledger, state, held))
            held_ids = pl.concat([pl.Series(USER_ID, [], pl.String), *(h for _, _, h in ledgers)]).unique()
            targets = [{"externalUserId": user_id} for user_id in held_ids] + _adm_identities(batch.hashed)
            if not targets:
                return []
            client = self.resources.amazon_ads.adm(adm.manager_account_id)
            for start in range(0, len(targets), MAX_DELETION_TARGETS):
                client.delete_identities(targets[start : start + MAX_DELETION_TARGETS])
            for ledger, state, held in ledgers:
                ledger.purge(state, held)
            # Every request is deleted by its hashed identities even where no ledger held its person.
            counts = held_per_request(held_ids, batch.keys, _USER)
            named = set(batch.hashed.filter(_has_any(batch.hashed, list(_ADM_PII))).get_column(REQUEST_ID))
            held = {r: counts.get(r, 0) for r in batch.requests if r in counts or r in named}
            return batch.receipts(adm.label, held)
        return failed

    def _dsp(self, batch: _Batch, dsp: DspMobileAdIdsComponent) -> list[Receipt]:
        receipts = []
        device = finder(batch.keys, MAID_FIELDS)
        for audience_id in dsp.audiences:
            audience = self.audiences.audience(str(audience_id))
            where = f"{dsp.label}, audience {audience.partition_key}"
            with self._attempt(batch.requests, where) as failed:
                ledger = Ledger(self.store, dsp.destination, audience.partition_key)
                _, held = _held(ledger, device)
                counts = held_per_request(held, batch.keys, MAID_FIELDS)
                if held.len():
                    adapter = dsp.adapter(self.store, audience, self.resources.amazon_ads, time.time)
                    outcome = deliver(ledger, without(held), adapter, max_removal_share=1.0)
                    if outcome.failed or outcome.rejected:
                        receipts += batch.receipts(where, counts, FAILED)
                        continue
                DspQueue(self.store, dsp.destination, audience.partition_key).purge(device)
                receipts += batch.receipts(where, counts)
            receipts += failed
        return receipts

    def _amc(self, batch: _Batch, amc: AmazonMarketingCloudComponent) -> list[Receipt]:
        named = batch.hashed.filter(_has_any(batch.hashed, _PERSON_COLUMNS))
        if not named.height:
            return []
        where = _amc_label(amc)
        with self._attempt(batch.requests, where) as failed:
            # The identities are hashes already: the identity engine passes SHA-256 digests through.
            identities = deletion_identities(named.drop(REQUEST_ID))
            instance = amc.amc_instance
            client = instance.amc_client(self.resources.amazon_ads)
            job = AmcJob("deletion", tuple(request_deletions(client, identities.requests())))
            outcome = wait_for_job(
                client,
                job,
                poll_seconds=instance.poll_interval_seconds,
                timeout_seconds=instance.wait_timeout_seconds,
            )
            # One deletion for every request of the run: each receipt names all its AMC request ids.
            return [
                Receipt(
                    request_id,
                    where,
                    outcome.status,
                    _now(),
                    final=outcome.final,
                    members=rows,
                    amazon_ids=job.ids,
                )
                for request_id, rows in named.group_by(REQUEST_ID, maintain_order=True).len().iter_rows()
            ]
        return failed

    def _attempt(self, request_ids: tuple[str, ...], where: str) -> "_Attempt":
        return _Attempt(self.context, request_ids, where)


class _Attempt:
    """One destination's part of the requests: an error is logged (type and message, which never quote
    an identity) and becomes a FAILED receipt per request in the list it yields, so the other
    destinations go on and the next run tries these requests again."""

    def __init__(self, context: dg.AssetExecutionContext, request_ids: tuple[str, ...], where: str):
        self.context, self.request_ids, self.where = context, request_ids, where
        self.failed: list[Receipt] = []

    def __enter__(self) -> list[Receipt]:
        return self.failed

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _: object) -> bool:
        if error is None or not isinstance(error, Exception):
            return False
        # Amazon's and our own errors are worded without data; any other may quote a value it met.
        said = f": {error}" if isinstance(error, AmazonAdsApiError | dg.Failure) else ""
        self.context.log.error(
            f"forget: {len(self.request_ids)} requests at {self.where}: {type(error).__name__}{said}"
        )
        self.failed += [Receipt(r, self.where, FAILED, _now()) for r in self.request_ids]
        return True


def _held(ledger: Ledger, match: Callable[[pl.Series], pl.Series]) -> tuple[LedgerState, pl.Series]:
    """The ledger as loaded, and its members that `match` finds; none when there is no ledger."""
    state = ledger.load()
    if state.revision is None:
        return state, pl.Series(USER_ID, [], pl.String)
    return state, ledger.members_where(state, match)


def _has_any(frame: pl.DataFrame, columns: list[str]) -> pl.Expr:
    """Rows of `frame` with a value in one of `columns`."""
    present = [c for c in columns if c in frame.columns]
    return pl.any_horizontal(pl.col(present).is_not_null()) if present else pl.lit(False)


def _adm_identities(hashed: pl.DataFrame) -> list[dict[str, Any]]:
    """ADM identity deletion targets of the requests' hashed e-mails and phones (the keys that single a
    person out in ADM), each distinct pair once."""
    present = [c for c in _ADM_PII if c in hashed.columns]
    targets = []
    for row in hashed.select(present).unique(maintain_order=True).iter_rows(named=True):
        pii = {_ADM_PII[c]: value for c, value in row.items() if value is not None}
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
