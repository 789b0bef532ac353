"""A results row's identity: the key that decides which rows are the same point (a rerun supersedes the old
row). Writers (experiments/results.py) and readers (evaluation/report_tables.py) share this one definition."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cad.io import stable_hash

# The sweep point of a row written before rows carried `row_key`.
POINT_FIELDS = ("experiment", "model", "concept", "method", "variant", "ratio", "sign", "granularity", "retain",
                "benchmark", "metric", "protocol", "edit_fingerprint")


def key_of(row: Mapping[str, Any]) -> str:
    """A row's dedup key (rows written before keys existed get one from their fields, run_id excluded)."""
    if row.get("row_key"):
        return str(row["row_key"])
    # a row with none of the point's fields is its own key
    fields = {k: row.get(k) for k in POINT_FIELDS}
    return "legacy-" + stable_hash(fields if any(v is not None for v in fields.values()) else dict(row), 16)


def concept_cell(row: Mapping[str, Any]) -> str:
    """The concept a report column stands for: its name, and the prompt it was run with when that was overridden
    on the command line (concept=diamond concept.prompt="a striped circle" is not diamond's result)."""
    override = row.get("concept_override")
    return f"{row['concept']} [prompt: {override}]" if override else str(row["concept"])
