import polars as pl
import pytest
from cryptography.fernet import Fernet

from audience_pipeline.membership.payload_crypto import LedgerKeyError, PayloadCipher


def test_payloads_round_trip_encrypted_and_nulls_stay_null():
    cipher = PayloadCipher(Fernet.generate_key().decode())
    payloads = pl.Series("payload", ['{"Email": "a@example.com"}', None])

    tokens = cipher.encrypt(payloads)

    assert tokens[1] is None and "example.com" not in tokens[0]
    assert cipher.decrypt(tokens).to_list() == payloads.to_list()


@pytest.mark.parametrize("key", [None, "", "not-a-key"])
def test_a_missing_or_bad_key_says_how_to_make_one(key):
    with pytest.raises(LedgerKeyError, match="AUDIENCE_PIPELINE_LEDGER_KEY") as error:
        PayloadCipher(key)
    assert "Fernet.generate_key()" in str(error.value)


def test_a_token_from_another_key_is_a_key_error():
    token = PayloadCipher(Fernet.generate_key().decode()).encrypt(pl.Series(["x"]))
    with pytest.raises(LedgerKeyError, match="another key"):
        PayloadCipher(Fernet.generate_key().decode()).decrypt(token)
