"""The key the membership ledgers encrypt the raw identities they keep with (Firehose removals)."""

import dagster as dg
from pydantic import Field

from audience_pipeline.membership.payload_crypto import LEDGER_KEY_ENV_VAR, PayloadCipher


class LedgerCipher(dg.ConfigurableResource):
    """A Fernet key, wired from `AUDIENCE_PIPELINE_LEDGER_KEY` through `dg.EnvVar`.

    Keep the key: without it a ledger's removals cannot be read. Make one with
    `python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`.
    """

    key: str = Field(description=f"The Fernet key (from `{LEDGER_KEY_ENV_VAR}`).")

    def cipher(self) -> PayloadCipher:
        """The cipher of ledger payloads; a malformed key fails here, saying how to make a good one."""
        return PayloadCipher(self.key)
