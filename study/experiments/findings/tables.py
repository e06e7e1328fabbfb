"""What every section of the findings document shares: Markdown tables and the lesson studies' outcomes."""

from __future__ import annotations

import math

import pandas as pd

from study.experiments.findings import claims


def markdown_table(frame: pd.DataFrame) -> str:
    """A frame as a Markdown table: numbers to 3 significant digits, "-" for a missing value."""
    def cell(value) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.3g}"
        return str(value)

    rows = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    rows += ["| " + " | ".join(cell(v) for v in record) + " |" for record in frame.itertuples(index=False)]
    return "\n".join(rows)


def verdict_table(verdicts: list[claims.Verdict]) -> str:
    """Verdicts (already judged, e.g. `claims.with_holm`) as the Markdown table the tests read back."""
    rows = ["| statement | evidence | verdict | test |", "|---|---|---|---|"]
    rows += [f"| {v.statement} | {v.evidence} | **{v.verdict}** | {v.test} |" for v in verdicts]
    return "\n".join(rows)


def lesson_outcome(outcomes: dict, variant: str, setting: tuple[float, float]) -> claims.Outcomes:
    """The seeds' outcomes of one lesson study (`FindingsPlan.lesson_studies`) of `variant`."""
    return outcomes[f"findings-{variant}-{setting[0]:g}-{setting[1]:g}"]


def setting_name(row: dict) -> str:
    """(leak, sub) of a table's row: "(0.1, 0.4)"."""
    return f"({row['leak']:g}, {row['sub']:g})"
