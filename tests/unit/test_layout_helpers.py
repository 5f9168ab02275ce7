"""The public helpers a layout reader is built from, and ``read_table`` (CSV/TSV, with or without
a header row): values read, and every refusal naming the file and the line."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from cass_lightning.data.layouts import helpers
from cass_lightning.data.layouts.helpers import Table, parse_delimiter, read_table


def test_every_public_helper_is_named_documented_and_public() -> None:
    assert len(helpers.__all__) == len(set(helpers.__all__))
    for name in helpers.__all__:
        assert not name.startswith("_"), name
        value = getattr(helpers, name)  # AttributeError: __all__ names a helper that is not there
        if callable(value):
            assert inspect.getdoc(value), f"{name} has no docstring"
    public = {name for name in vars(helpers) if not name.startswith("_")}
    modules = {"annotations", "common", "table"}  # the submodules and the __future__ import
    assert public - modules == set(helpers.__all__)


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- with a header row ---------------------------------------------------------------------------
def test_a_tab_separated_file_with_a_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.tsv", "label\tpath\tnote\ncat\ta, b.png\t\n\ndog\tc.png\tx\n")
    table = read_table("x", path, required=["path", "label"], delimiter="\t")
    assert isinstance(table, Table)
    assert table.columns == {"label": 0, "path": 1, "note": 2}
    assert table.rows == [(2, ["cat", "a, b.png", ""]), (4, ["dog", "c.png", "x"])]


def test_a_byte_order_mark_and_padded_header_names_are_accepted(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "\ufeffpath , label\na.png,cat\n")
    columns, rows = read_table("x", path, required=["path", "label"])
    assert columns == {"path": 0, "label": 1} and rows == [(2, ["a.png", "cat"])]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty; expected the header path,label"),
        ("\n\n", "is empty; expected the header path,label"),
        ("path,label\n", "has a header but no rows"),
        ("path,lbl\na.png,cat\n", r"missing column\(s\) \['label'\]; expected header path,label, "
         "found header path,lbl"),
        ("path,label,label\na.png,cat,dog\n", r"repeated column\(s\) \['label'\]"),
    ],
)  # fmt: skip
def test_header_problems_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path / "t.csv", text)
    with pytest.raises(ValueError, match=message) as info:
        read_table("mine", path, required=["path", "label"])
    assert str(info.value).startswith(f"mine: {path}")


def test_rows_with_the_wrong_number_of_fields_are_all_listed_by_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "path,label\na.png\nb.png,cat\nc.png,cat,x\n")
    with pytest.raises(ValueError, match="2 problem") as info:
        read_table("mine", path, required=["path"])
    assert "line 2: 1 fields, but the header has 2" in str(info.value)
    assert "line 4: 3 fields, but the header has 2" in str(info.value)
    assert "line 3" not in str(info.value)


def test_text_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", b"path,label\na.png,cat\nb.png,caf\xe9\n")
    with pytest.raises(ValueError, match=r"is not UTF-8 text \(line 3: "):
        read_table("mine", path, required=["path"])


def test_a_field_past_the_csv_limit_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "path,label\na.png,cat\nb.png," + "x" * 200_000 + "\n")
    with pytest.raises(ValueError, match=r"cannot be read as comma-separated text \(line 3: field"):
        read_table("mine", path, required=["path"])


def test_a_tab_file_read_as_comma_separated_says_which_option_to_set(tmp_path: Path) -> None:
    path = _write(tmp_path / "labels.tsv", "path\tlabel\na.png\tcat\n")
    hint = (
        r"\(the file looks tab-separated, but is read as comma-separated; set opt\.delimiter=tab\)"
    )
    with pytest.raises(ValueError, match=r"found header path\tlabel " + hint):
        read_table("mine", path, required=["path", "label"], delimiter_option="opt.delimiter")
    with pytest.raises(ValueError, match=r"the file looks tab-separated, but is read as "
                       r"comma-separated\)"):  # fmt: skip
        read_table("mine", path, required=["path", "label"])


# --- without a header row -------------------------------------------------------------------------
def test_columns_name_the_fields_of_a_file_without_a_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "a.png,cat\n\nb.png,dog\n")
    table = read_table("x", path, required=["path", "label"], columns=["path", "label"])
    assert table.columns == {"path": 0, "label": 1}
    assert table.rows == [(1, ["a.png", "cat"]), (3, ["b.png", "dog"])]


def test_a_headerless_row_with_the_wrong_field_count_names_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.tsv", "a.png\tcat\nb.png\tcat\tx\nc.png,dog\n")
    with pytest.raises(ValueError, match="2 problem") as info:
        read_table("mine", path, required=["path"], columns=["path", "label"], delimiter="\t")
    text = str(info.value)
    assert f"mine: 2 problem(s) in {path}" in text
    assert "line 2: 3 fields, expected 2 (path, label)" in text
    assert "line 3: 1 fields, expected 2 (path, label) (the file looks comma-separated" in text


def test_a_headerless_read_refuses_a_file_that_has_a_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "path,label\na.png,cat\n")
    with pytest.raises(ValueError, match=r"line 1 of .* is a header \(path,label\)"):
        read_table("mine", path, required=["path"], columns=["path", "label"])


def test_headerless_refusals(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "\n")
    with pytest.raises(ValueError, match="holds no rows; expected rows of path"):
        read_table("mine", path, required=["path"], columns=["path"])
    with pytest.raises(ValueError, match=r"lack the required column\(s\) \['label'\]"):
        read_table("mine", path, required=["path", "label"], columns=["path"])
    with pytest.raises(ValueError, match=r"name column\(s\) \['path'\] more than once"):
        read_table("mine", path, required=["path"], columns=["path", "path"])
    with pytest.raises(ValueError, match="the delimiter must be one character"):
        read_table("mine", path, required=["path"], delimiter="tab")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(",", ","), ("\t", "\t"), ("tab", "\t"), ("TAB", "\t"), ("\\t", "\t"), ("comma", ","),
     ("semicolon", ";"), ("pipe", "|"), (";", ";"), (" ", " ")],
)  # fmt: skip
def test_a_delimiter_option_takes_a_character_or_a_name(value: str, expected: str) -> None:
    assert parse_delimiter("csv", value) == expected


@pytest.mark.parametrize("value", ["", ",,", "tabs", '"', "\n", 9, None])
def test_a_delimiter_option_that_is_no_character_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match=r"csv: delimiter must be one character or one of comma"):
        parse_delimiter("csv", value)  # type: ignore[arg-type]
