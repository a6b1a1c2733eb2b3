"""The sandbox's synthetic "Amazon identity graph": which hashed identities and MAIDs Amazon knows.

Nothing is stored: a value is known when a keyed hash of (seed, value) falls below `known_share`,
so the same value is always known or not for a seed, and about `known_share` of any sample is.
Values are compared case-insensitively (hex digests and UUIDs are case-insensitive).
"""

import hashlib

import polars as pl
import polars_hash  # noqa: F401  (registers the `chash` namespace)

# The first 13 hex digits (52 bits) of the digest, read as a fraction of 16**13, decide membership.
_DIGITS = 13
_SCALE = float(16**_DIGITS)


def _key(seed: int) -> str:
    return f"amazon-identity-graph:{seed}:"


def is_known(value: str, *, seed: int, known_share: float) -> bool:
    """Whether Amazon's synthetic identity graph knows this hashed identity or MAID."""
    digest = hashlib.sha256(f"{_key(seed)}{value.strip().lower()}".encode()).hexdigest()
    return int(digest[:_DIGITS], 16) / _SCALE < known_share


def known(values: pl.Series, *, seed: int, known_share: float) -> pl.Series:
    """`is_known` over a Series of strings, vectorized; null is never known."""
    digest = (pl.lit(_key(seed)) + pl.col("v").str.strip_chars().str.to_lowercase()).chash.sha2_256()
    fraction = digest.str.slice(0, _DIGITS).str.to_integer(base=16).cast(pl.Float64) / _SCALE
    frame = pl.DataFrame({"v": values.cast(pl.String)})
    return frame.select((fraction < known_share).fill_null(False).alias(values.name))[values.name]


def known_count(values: list[str], *, seed: int, known_share: float) -> int:
    """How many of these values the identity graph knows."""
    if not values:
        return 0
    return int(known(pl.Series("v", values, dtype=pl.String), seed=seed, known_share=known_share).sum())
