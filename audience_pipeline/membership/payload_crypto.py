"""Encryption of the raw identities a ledger must keep to send a member's removal later.

A Firehose removal carries the identities the stream was given when the member was added, as the
source held them, so the ledger has to remember them; it keeps them Fernet-encrypted (AES-128-CBC
with HMAC-SHA256), never in the clear. The key is a Fernet key from the environment.

Fernet works one value at a time, so `encrypt` and `decrypt` make one Python call per value: about
10-20 µs each, i.e. a second or two per 100,000 changed members. Only changes are encrypted and
only removals decrypted, never the whole audience.
"""

import binascii

import polars as pl
from cryptography.fernet import Fernet, InvalidToken

LEDGER_KEY_ENV_VAR = "AUDIENCE_PIPELINE_LEDGER_KEY"
_MAKE_KEY = 'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'


class LedgerKeyError(ValueError):
    """The ledger key is missing, malformed, or not the key the ledger was written with."""


class PayloadCipher:
    """Encrypts and decrypts ledger payloads with one Fernet key."""

    def __init__(self, key: str | None):
        if not key:
            raise LedgerKeyError(
                f"{LEDGER_KEY_ENV_VAR} is not set: the membership ledger encrypts the identities it keeps "
                f"with this Fernet key. Make one with `{_MAKE_KEY}`, keep it secret and keep it: "
                "without it the ledger's removals cannot be read."
            )
        try:
            self._fernet = Fernet(key)
        except (ValueError, binascii.Error):
            raise LedgerKeyError(
                f"{LEDGER_KEY_ENV_VAR} is not a Fernet key (32 url-safe base64-encoded bytes); "
                f"make one with `{_MAKE_KEY}`"
            ) from None

    def encrypt(self, payloads: pl.Series) -> pl.Series:
        """Each payload encrypted to a Fernet token; nulls stay null."""
        tokens = [None if p is None else self._fernet.encrypt(p.encode()).decode() for p in payloads]
        return pl.Series(payloads.name, tokens, dtype=pl.String)

    def decrypt(self, tokens: pl.Series) -> pl.Series:
        """Each token's payload; nulls stay null. A token from another key is a `LedgerKeyError`."""
        try:
            payloads = [None if t is None else self._fernet.decrypt(t.encode()).decode() for t in tokens]
        except InvalidToken:
            raise LedgerKeyError(
                f"the ledger was encrypted with another key than {LEDGER_KEY_ENV_VAR} holds"
            ) from None
        return pl.Series(tokens.name, payloads, dtype=pl.String)
