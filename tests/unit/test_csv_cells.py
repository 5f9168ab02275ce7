"""Every CSV the tool writes shows formula-like cells as text (CSV injection)."""

from __future__ import annotations

import csv

import pytest

from cass_lightning.io import spreadsheet_safe, write_csv


@pytest.mark.parametrize(
    "cell", ['=HYPERLINK("http://x")', "=cmd|' -C calc'!A0", "@x", "+1", "-2+3", "\tx", "\rx"]
)
def test_formula_like_strings_are_prefixed(cell: str) -> None:
    assert spreadsheet_safe(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["glioma", "a=b", "", 0.5, -0.25, 3, None])
def test_plain_cells_and_numbers_are_kept(cell: object) -> None:
    assert spreadsheet_safe(cell) == cell


def test_write_csv_neutralises_header_and_rows(tmp_path) -> None:
    out = write_csv(tmp_path / "t.csv", ["class", "=n"], [["=SUM(A1)", -1.5], ["ok", 2]])
    with out.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows == [["class", "'=n"], ["'=SUM(A1)", "-1.5"], ["ok", "2"]]
