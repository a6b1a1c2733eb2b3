"""SHA-256 of normalized values, vectorized and multi-threaded (polars-hash runs in Rust)."""

import polars as pl
import polars_hash  # noqa: F401  (registers the `chash` namespace)

HEX64 = r"^[0-9a-fA-F]{64}$"


def is_hashed(expr: pl.Expr) -> pl.Expr:
    """True where a (trimmed) value is already a SHA-256 hex digest, in either case."""
    return expr.str.contains(HEX64)


def sha256_hex(expr: pl.Expr) -> pl.Expr:
    """Lowercase SHA-256 hex of the UTF-8 bytes; null stays null (so sha256("") needs an empty input)."""
    return expr.chash.sha2_256()
