"""SHA-256 fingerprints of member identities and the ids of outgoing messages, vectorized.

Both hash a canonical encoding of several values: each value is written as its UTF-8 byte length,
a colon and the value itself, and a null as a lone `-`. The length prefix means no value can be
mistaken for a separator or for the next value, and `-` (never a length) keeps a null apart from
an empty string, so two different value lists never encode alike.
"""

import hashlib
from collections.abc import Sequence

import polars as pl
import polars_hash  # noqa: F401  (registers the `chash` namespace)

NULL = "-"


def _encoded(value: pl.Expr) -> pl.Expr:
    text = value.cast(pl.String)
    encoded = pl.concat_str([text.str.len_bytes().cast(pl.String), pl.lit(":"), text])
    return pl.when(text.is_null()).then(pl.lit(NULL)).otherwise(encoded)


def _encoded_scalar(value: str | None) -> str:
    return NULL if value is None else f"{len(value.encode())}:{value}"


def fingerprint(frame: pl.DataFrame, columns: Sequence[str]) -> pl.Series:
    """SHA-256 hex, named `fingerprint`, of each row's values in `columns`, in the order given.

    The same values always give the same fingerprint; changing, nulling or emptying any value, or
    listing the columns in another order, gives another one. Non-string columns count as their
    string form. Nothing is kept but the hash, so the result carries no raw PII.
    """
    missing = [column for column in columns if column not in frame.columns]
    if not columns or missing:
        raise ValueError(f"Fingerprint needs identity columns present in the frame; missing: {missing}")
    canonical = pl.concat_str([_encoded(pl.col(column)) for column in columns])
    # The lazy engine hashes chunks in parallel where the eager one does not.
    return frame.lazy().select(canonical.chash.sha2_256().alias("fingerprint")).collect().to_series()


def message_id(
    destination: str,
    audience_id: str | int,
    user_id: pl.Expr,
    change: str,
    epoch: str,
    version: int,
    fingerprint: pl.Expr,
) -> pl.Expr:
    """Id (SHA-256 hex) of the message announcing `change` of each member at ledger `epoch` and `version`.

    `epoch` and `version` are those of the ledger the change was diffed against, and `fingerprint`
    the identities the message carries (the new ones for an addition, the delivered ones for a
    removal). A delivery re-run before the ledger moved on sends the very same ids, so consumers can
    drop the duplicates; any other message, even the same change with other identities or from a
    ledger started again after it was deleted (a new epoch), gets another id.
    """
    # The constant fields are encoded once in Python, in the same order as `message_id_of`.
    head = _encoded_scalar(destination) + _encoded_scalar(str(audience_id))
    middle = _encoded_scalar(change) + _encoded_scalar(epoch) + _encoded_scalar(str(version))
    canonical = pl.concat_str([pl.lit(head), _encoded(user_id), pl.lit(middle), _encoded(fingerprint)])
    return canonical.chash.sha2_256()


def message_id_of(
    destination: str,
    audience_id: str | int,
    user_id: str,
    change: str,
    epoch: str,
    version: int,
    fingerprint: str,
) -> str:
    """`message_id` for one message."""
    fields = [destination, str(audience_id), user_id, change, epoch, str(version), fingerprint]
    return hashlib.sha256("".join(_encoded_scalar(field) for field in fields).encode()).hexdigest()
