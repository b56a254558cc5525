"""The README's model table against the store: each bold number there is a held-out metric of
the model the store holds, within a margin (builds on other machines differ by a few tenths of a
point: README "Reproducibility"), so the table cannot silently go stale."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.store.specs import latest_specs

pytestmark = pytest.mark.models

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
MARGIN_POINTS = 1.5  # accuracies and rates, in percentage points
ERROR_MARGIN_POINTS = 1.0  # CER / WER

# the bold numbers of each row, in order -> the store metric each one reports
BOLD_METRICS = {
    "digits-cnn": ["accuracy", "out_of_domain_flagged"],
    "sentiment-lstm": ["accuracy"],
    "speech-ctc": ["cer", "wer", "ood_flagged"],
    "captioner": ["exact_match_greedy", "exact_match_second_renderer", "out_of_domain_flagged"],
}


def table_row(model: str) -> str:
    start = README.index("## Models")
    table = README[start : README.index("\n\n", README.index("| name |", start))]
    rows = [line for line in table.splitlines() if line.startswith(f"| `{model}` |")]
    assert len(rows) == 1, f"README model table: {len(rows)} rows for {model}"
    return rows[0]


def bold_values(row: str) -> list[float]:
    """Bold numbers of a row as fractions: **0.993** -> 0.993, **98.9 %** -> 0.989."""
    values = []
    for number, percent in re.findall(r"\*\*([0-9.]+)( %)?\*\*", row):
        values.append(float(number) / (100 if percent else 1))
    return values


def test_bold_values_parse_percent_and_fractions() -> None:
    assert bold_values("| a **0.993** b **98.9 %** c 1.5 % |") == pytest.approx([0.993, 0.989])


@pytest.mark.parametrize("model", sorted(BOLD_METRICS))
def test_readme_numbers_are_the_stores_within_a_margin(model: str) -> None:
    spec = latest_specs()[model]
    shown = bold_values(table_row(model))
    names = BOLD_METRICS[model]
    assert len(shown) == len(names), f"{model}: README shows {shown}, expected {names}"
    for name, value in zip(names, shown, strict=True):
        margin = (ERROR_MARGIN_POINTS if name in ("cer", "wer") else MARGIN_POINTS) / 100
        measured = spec.metrics[name]
        assert abs(measured - value) <= margin, (
            f"README says {model} {name} = {value}, the store's build measured {measured:.4f} "
            f"(margin {margin}): update the README's model table"
        )
