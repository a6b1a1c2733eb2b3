"""What the identity engine returns."""

from dataclasses import dataclass

import polars as pl

REJECT_SCHEMA = {"row": pl.Int64, "field": pl.String, "reason": pl.String}


@dataclass(frozen=True)
class IdentityResult:
    """A normalized frame and the values it had to reject.

    `frame` has every input row and column in order; the normalized fields hold lowercase SHA-256
    hex (hashed fields), canonical IDs (mobile ad IDs, partner IDs) or null. `rejects` has one row
    per rejected value: `row` (0-based position in the input, plus any offset the caller gave),
    `field` and `reason` — never the value itself.
    """

    frame: pl.DataFrame
    rejects: pl.DataFrame
    fields: tuple[str, ...]

    def reject_counts(self) -> dict[str, dict[str, int]]:
        """Rejects counted by field, then by reason."""
        counts: dict[str, dict[str, int]] = {}
        for field, reason, n in (
            self.rejects.group_by("field", "reason").len().sort("field", "reason").iter_rows()
        ):
            counts.setdefault(field, {})[reason] = n
        return counts

    def values_out(self) -> dict[str, int]:
        """Non-null normalized values per field."""
        return {f: self.frame.height - self.frame[f].null_count() for f in self.fields}
