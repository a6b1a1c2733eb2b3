"""What every asset shows in the Dagster UI: its owners, and metadata shaped so the UI can plot it."""

import re
from collections.abc import Mapping

OWNERS = ["team:audience-pipeline"]
"""Who answers for the assets; set on every asset so the UI can filter by owner."""


def rejects_by_reason(rejects: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """`rejects_<reason>` → count over every field, from field → reason → count.

    The UI plots numeric metadata only; a JSON map of rejects shows in a run but cannot be charted.
    """
    totals: dict[str, int] = {}
    for reasons in rejects.values():
        for reason, n in reasons.items():
            totals[f"rejects_{reason}"] = totals.get(f"rejects_{reason}", 0) + n
    return dict(sorted(totals.items()))


def name_part(text: str) -> str:
    """`text` with every character an asset key part or a job or sensor name cannot hold made `_`."""
    return re.sub(r"[^A-Za-z0-9_]", "_", text)
