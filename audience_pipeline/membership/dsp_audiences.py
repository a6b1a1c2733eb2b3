"""Which Amazon DSP audience receives an audience's mobile ad ids: created once, never twice.

Amazon's Data Provider API has no call that lists audiences, so an audience whose creation answer
was lost can never be found again, and creating another would leave an orphan in DSP. What the
pipeline records is therefore what it relies on, one file per (destination, audience) in the state
store (`dsp_audiences/<destination>/<audience>.parquet`):

1. Before `POST /v2/dp/audiencemetadata/`, the intent: the external audience id (the audience id)
   and the time, without a DSP id. It is written only if no record exists.
2. Amazon's answer: the DSP audience id, written over the intent.
3. Every later flush uses the recorded id, after checking that DSP still has that audience.

An intent without an id means an answer was lost: a timeout, a 5xx, or a crash between Amazon's
answer and step 2. DSP may or may not hold an audience with that external audience id, and the
pipeline cannot ask, so the flush stops with a `DestinationProblem` that names the external audience
id and the record to delete once the DSP side is settled, instead of silently creating a second one.
A definite refusal (4xx) created nothing: the intent is removed again.
"""

import time
from collections.abc import Callable

import polars as pl

from audience_pipeline.clients.ads_api import LOST_ANSWER, AmazonAdsApiError
from audience_pipeline.clients.dsp import DspClient
from audience_pipeline.membership.delivery import DestinationProblem, SettingProblem
from audience_pipeline.membership.ledger import ledger_key
from audience_pipeline.state import ParquetStore, RevisionConflict

RECORD_SCHEMA = pl.Schema(
    {"external_audience_id": pl.String, "dsp_audience_id": pl.String, "requested_at": pl.Int64}
)
# Amazon wants audience names of 10 to 128 characters.
_MIN_NAME, _MAX_NAME = 10, 128


def dsp_audience_name(name: str) -> str:
    """An audience's name as DSP takes it: a short name is padded with what it is, a long one cut."""
    return (name if len(name) >= _MIN_NAME else f"{name} (audience_pipeline)")[:_MAX_NAME]


class DspAudienceRecord:
    """The record of one destination's DSP audience for one audience, in `store`."""

    def __init__(self, store: ParquetStore, destination: str, audience_id: str):
        self.store, self.external_audience_id = store, audience_id
        self.ledger_key = ledger_key(destination, audience_id)
        self.key = "dsp_audiences/" + self.ledger_key.removeprefix("ledgers/")

    def audience_id(self, dsp: DspClient, create: Callable[[], int], clock: Callable[[], float]) -> int:
        """The DSP audience's id: the recorded one, checked with DSP, or one `create` makes now.

        Raises `DestinationProblem` when an earlier creation's answer was lost, when the recorded
        audience is gone from DSP or another run is creating it, and `SettingProblem` when DSP refused
        to create it.
        """
        stored = self.store.read_stored(self.key)
        if stored is not None:
            return self._recorded(dsp, stored.frame)
        intent = self._frame(None, int(clock()))
        try:
            revision = self.store.write_if(self.key, intent, None)
        except RevisionConflict:
            raise DestinationProblem(
                f"another run is creating the DSP audience of audience {self.external_audience_id}; "
                "nothing was sent, run it again"
            ) from None
        try:
            created = create()
        except LOST_ANSWER:
            raise self._lost(int(clock())) from None
        except AmazonAdsApiError as error:
            self.store.delete(self.key)
            raise SettingProblem(
                "advertiser_id", f"DSP did not create the audience ({error.message})"
            ) from None
        self.store.write_if(self.key, self._frame(str(created), intent.item(0, "requested_at")), revision)
        return created

    def _recorded(self, dsp: DspClient, frame: pl.DataFrame) -> int:
        recorded = frame.item(0, "dsp_audience_id")
        if recorded is None:
            requested = frame.item(0, "requested_at") if "requested_at" in frame.columns else None
            raise self._lost(requested)
        if dsp.get_audience(int(recorded)) is None:
            raise DestinationProblem(
                f"DSP audience {recorded}, recorded in {self.store.uri(self.key)} for audience "
                f"{self.external_audience_id}, does not exist in DSP; delete that file and the ledger "
                f"{self.store.uri(self.ledger_key)} so that the next flush creates the audience again and "
                "sends it every member; nothing was sent"
            )
        return int(recorded)

    def _lost(self, requested_at: int | None) -> DestinationProblem:
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(requested_at)) if requested_at else "earlier"
        )
        return DestinationProblem(
            f"the answer to creating the DSP audience of audience {self.external_audience_id} "
            f"(externalAudienceId '{self.external_audience_id}', requested {when}) was lost, so DSP may "
            "hold an audience the pipeline does not know, and Amazon has no call to find it. Look for "
            "that external audience id among the advertiser's Data Provider audiences in Amazon DSP and "
            f"delete the audience (or leave it unused), then delete {self.store.uri(self.key)} so that "
            "the next flush creates it again; nothing was sent"
        )

    def _frame(self, dsp_audience_id: str | None, requested_at: int) -> pl.DataFrame:
        row = {
            "external_audience_id": [self.external_audience_id],
            "dsp_audience_id": [dsp_audience_id],
            "requested_at": [requested_at],
        }
        return pl.DataFrame(row, schema=RECORD_SCHEMA)
