"""The public helpers a layout reader is built from, and ``read_table`` (CSV/TSV, with or without
a header row): values read, and every refusal naming the file and the line. Last, the example
layout of docs/extending.md, run through ``build_index``: the documented helpers are enough."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from cass_lightning.data.layouts import LAYOUTS, build_index, helpers, scan
from cass_lightning.data.layouts.helpers import Table, parse_delimiter, read_table
from data_fixtures import image


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


# --- the documented example layout, built from the public helpers only ---------------------------
DOCS = Path(__file__).resolve().parents[2] / "docs" / "extending.md"


def _documented_layout() -> tuple[str, dict[str, object]]:
    """The example reader of docs/extending.md ("Adding a dataset layout"), executed."""
    section = DOCS.read_text().split("## Adding a dataset layout", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    code = next(block for block in blocks if "def index_listed_classes" in block)
    namespace: dict[str, object] = {"__name__": "listed_layout"}
    exec(compile(code, str(DOCS), "exec"), namespace)  # the project's own docs
    return code, namespace


def test_the_documented_layout_imports_only_public_documented_helpers() -> None:
    code, _ = _documented_layout()
    imported = {
        (node.module, alias.name)
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert all(not name.startswith("_") for _, name in imported)
    from_helpers = {name for module, name in imported if module == helpers.__name__}
    assert from_helpers and from_helpers <= set(helpers.__all__)
    assert {module for module, _ in imported} <= {
        "pathlib", "cass_lightning.data.index", helpers.__name__, scan.__name__,
    }  # fmt: skip


@pytest.fixture
def listed(monkeypatch: pytest.MonkeyPatch) -> None:
    _, namespace = _documented_layout()
    monkeypatch.setitem(LAYOUTS, "listed", namespace["index_listed_classes"])


def _listed_root(root: Path, classes: str) -> Path:
    for key in ("cat/c0.png", "cat/c1.png", "dog/sub/d0.png", "extra/e0.png"):
        image(root / key)
    (root / "cat" / "notes.txt").write_text("x")
    (root / "classes.txt").write_text(classes)
    return root


@pytest.mark.usefixtures("listed")
def test_a_new_layout_from_the_public_helpers_runs_through_build_index(tmp_path: Path) -> None:
    root = _listed_root(tmp_path / "set", "dog\n\ncat\n")
    index = build_index("listed", root)
    assert index.name == "listed" and index.root == root.resolve()
    assert index.classes == ["cat", "dog"]  # sorted: label indices never depend on the list order
    assert index.keys == ["cat/c0.png", "cat/c1.png", "dog/sub/d0.png"]  # extra/ is not listed
    assert index.targets.tolist() == [0, 0, 1]
    assert index.splits is None and index.skipped == []
    assert index.ignored == {".txt": 1}
    assert index.reader(index.keys[0]).mode == "RGB"
    with pytest.raises(ValueError, match=r"layout 'listed' does not take option\(s\) \['clases'\]"):
        build_index("listed", root, clases=["cat"])


@pytest.mark.usefixtures("listed")
def test_a_new_layout_words_its_refusals_with_the_helpers(tmp_path: Path) -> None:
    root = _listed_root(tmp_path / "set", "cat\ncow\n")
    no_cow = r"does not fit the listed layout: no folder for class\(es\) \['cow'\]\. Expected "
    with pytest.raises(ValueError, match=no_cow + r"classes\.txt \(one class name a line\)"):
        build_index("listed", root)
    (root / "classes.txt").write_text("cat\tdog\n")
    with pytest.raises(ValueError, match=r"line 1: 2 fields, expected 1 \(class\)"):
        build_index("listed", root)
    (root / "classes.txt").unlink()
    with pytest.raises(ValueError, match=r"classes\.txt not found\. .* found there: cat/, dog/"):
        build_index("listed", root)
    with pytest.raises(ValueError, match="on_bad_file must be one of"):
        build_index("listed", root, on_bad_file="ignore")


@pytest.mark.usefixtures("listed")
def test_a_new_layout_follows_the_bad_file_policy(tmp_path: Path) -> None:
    root = _listed_root(tmp_path / "set", "cat\ndog\n")
    (root / "dog" / "gone.png").symlink_to(root / "nowhere.png")
    with pytest.raises(FileNotFoundError, match=r"gone\.png: broken symbolic link"):
        build_index("listed", root)
    index = build_index("listed", root, on_bad_file="skip")
    assert index.keys == ["cat/c0.png", "cat/c1.png", "dog/sub/d0.png"]
    assert [why for _, why in index.skipped] == ["broken symbolic link"]
