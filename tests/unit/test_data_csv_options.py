"""The ``csv`` layout's table options: ``delimiter`` (comma, tab, ...), ``header`` and ``columns``
(a file without a header row), their refusals, and the same options from the command line."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from app_helpers import compose_app
from cass_lightning.data.layouts import build_index, index_csv
from data_fixtures import image


def _root(root: Path, name: str, lines: list[str], files: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, file in enumerate(files):
        image(root / "img" / file, seed=i)
    (root / name).write_text("\n".join(lines) + "\n")
    return root


def test_a_tsv_with_a_header(tmp_path: Path) -> None:
    lines = ["label\tpath\tsplit", "10\tb, c.png\ttrain", "2\ta.png\tval", "2\td.png\ttest"]
    root = _root(tmp_path, "labels.tsv", lines, ["a.png", "b, c.png", "d.png"])
    index = index_csv(
        root, csv_file="labels.tsv", delimiter="tab", image_dir="img", split_column="split"
    )
    assert index.keys == ["img/a.png", "img/b, c.png", "img/d.png"]  # a comma is a path character
    assert index.classes == ["2", "10"]
    assert index.targets.tolist() == [0, 1, 0]
    assert index.splits.tolist() == ["val", "train", "test"]


def test_a_tsv_without_a_header_names_its_columns(tmp_path: Path) -> None:
    lines = ["cat\ta.png\tnote", "dog\tb.png\t", "cat\tc.png\tx"]
    root = _root(tmp_path, "labels.tsv", lines, ["a.png", "b.png", "c.png"])
    index = build_index(
        "csv", root, csv_file="labels.tsv", delimiter="\t", header=False,
        columns=["label", "path", "note"], image_dir="img",
    )  # fmt: skip
    assert index.keys == ["img/a.png", "img/b.png", "img/c.png"]
    assert index.classes == ["cat", "dog"]
    assert index.targets.tolist() == [0, 1, 0]


def test_a_comma_csv_without_a_header(tmp_path: Path) -> None:
    root = _root(tmp_path, "labels.csv", ["a.png,dog", "b.png,cat"], ["a.png", "b.png"])
    index = index_csv(
        root, csv_file="labels.csv", header=False, columns=["path", "label"], image_dir="img"
    )
    assert index.keys == ["img/a.png", "img/b.png"]
    assert index.classes == ["cat", "dog"] and index.targets.tolist() == [1, 0]


def test_the_multi_label_separator_still_works_in_a_headerless_tsv(tmp_path: Path) -> None:
    lines = ["a.png\tx|y", "b.png\t", "c.png\t['y']"]
    root = _root(tmp_path, "labels.tsv", lines, ["a.png", "b.png", "c.png"])
    index = index_csv(
        root, csv_file="labels.tsv", delimiter="tab", header=False, columns=["path", "label"],
        image_dir="img", multi_label=True,
    )  # fmt: skip
    assert index.classes == ["x", "y"]
    assert index.targets.tolist() == [[1, 1], [0, 0], [0, 1]]


def test_header_false_without_columns_is_refused_by_option(tmp_path: Path) -> None:
    root = _root(tmp_path, "labels.csv", ["a.png,dog"], ["a.png"])
    needs = r"csv: header=false needs columns, the names of the file's fields in file order"
    with pytest.raises(
        ValueError, match=needs + r" \(e\.g\. data\.options\.columns=\[path,label\]"
    ):
        index_csv(root, csv_file="labels.csv", header=False, image_dir="img")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"columns": ["file", "label"]},
         r"columns \['file', 'label'\] has no 'path' column, which path_column names"),
        ({"columns": ["path", "class"]},
         r"columns \['path', 'class'\] has no 'label' column, which label_column names"),
        ({"columns": ["path", "label"], "split_column": "split"},
         r"has no 'split' column, which split_column names"),
        ({"columns": ["path", "label", "path"]}, r"lists \['path'\] more than once"),
        ({"columns": "path,label"}, r"columns must be a list of names like \[path, label\]"),
    ],
)  # fmt: skip
def test_columns_that_miss_a_named_column_are_refused(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    root = _root(tmp_path, "labels.csv", ["a.png,dog"], ["a.png"])
    with pytest.raises(ValueError, match=message):
        index_csv(root, csv_file="labels.csv", header=False, image_dir="img", **options)


def test_columns_with_a_header_row_and_a_header_that_is_no_bool_are_refused(tmp_path: Path) -> None:
    root = _root(tmp_path, "labels.csv", ["path,label", "a.png,dog"], ["a.png"])
    with pytest.raises(ValueError, match="columns names the fields of a file without a header"):
        index_csv(root, csv_file="labels.csv", columns=["path", "label"], image_dir="img")
    with pytest.raises(ValueError, match="header must be true or false, got 'no'"):
        index_csv(root, csv_file="labels.csv", header="no", image_dir="img")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="csv: delimiter must be one character or one of"):
        index_csv(root, csv_file="labels.csv", delimiter="tabs", image_dir="img")
    with pytest.raises(ValueError, match=r"label_separator and delimiter are both '\|'"):
        index_csv(root, csv_file="labels.csv", delimiter="pipe", multi_label=True, image_dir="img")


def test_a_headerless_row_with_the_wrong_field_count_names_its_line(tmp_path: Path) -> None:
    lines = ["a.png,dog", "b.png,cat,extra", "c.png,dog"]
    root = _root(tmp_path, "labels.csv", lines, ["a.png", "b.png", "c.png"])
    with pytest.raises(ValueError, match="1 problem") as info:
        index_csv(root, csv_file="labels.csv", header=False, columns=["path", "label"],
                  image_dir="img")  # fmt: skip
    assert (
        f"in {root.resolve() / 'labels.csv'}:\n  - line 2: 3 fields, expected 2 (path, label)"
        in (str(info.value))
    )


def test_a_tsv_read_as_comma_separated_names_the_delimiter_option(tmp_path: Path) -> None:
    root = _root(tmp_path, "labels.tsv", ["path\tlabel", "a.png\tdog"], ["a.png"])
    with pytest.raises(ValueError) as info:
        index_csv(root, csv_file="labels.tsv", image_dir="img")
    text = str(info.value)
    assert "missing column(s) ['path', 'label']" in text
    assert "the file looks tab-separated, but is read as comma-separated; " in text
    assert text.endswith("set data.options.delimiter=tab)")
    index = index_csv(root, csv_file="labels.tsv", image_dir="img", delimiter="tab")
    assert index.keys == ["img/a.png"] and index.classes == ["dog"]


def test_a_headerless_tsv_read_as_comma_separated_names_the_delimiter_option(
    tmp_path: Path,
) -> None:
    root = _root(tmp_path, "labels.tsv", ["a.png\tdog", "b.png\tcat"], ["a.png", "b.png"])
    with pytest.raises(ValueError, match="2 problem") as info:
        index_csv(root, csv_file="labels.tsv", header=False, columns=["path", "label"],
                  image_dir="img")  # fmt: skip
    assert "line 1: 1 fields, expected 2 (path, label) (the file looks tab-separated" in str(
        info.value
    )
    assert "set data.options.delimiter=tab" in str(info.value)


def test_the_wrong_root_message_says_the_delimiter_and_the_columns(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError) as info:
        index_csv(tmp_path, csv_file="labels.tsv", delimiter="tab", header=False,
                  columns=["path", "label"])  # fmt: skip
    assert (
        "Expected labels.tsv with no header row, its fields being the columns 'path', 'label' in "
        "that order (tab-separated; image paths relative to the root folder)"
    ) in str(info.value)


def test_a_headerless_tsv_from_the_command_line(tmp_path: Path) -> None:
    lines = [f"img/x{i}.png\t{'yes' if i % 2 else 'no'}" for i in range(8)]
    root = _root(tmp_path / "data" / "table", "labels.tsv", lines, [])
    for i in range(8):
        image(root / "img" / f"x{i}.png", seed=i)
    overrides = [
        "debug=tiny", "data=csv", f"data.root={root}", "data.val_fraction=0.2",
        "data.options.csv_file=labels.tsv", "data.options.delimiter=tab",
        "data.options.header=false", "data.options.columns=[path,label]",
    ]  # fmt: skip
    cfg = compose_app(tmp_path, overrides)
    dm = instantiate(cfg.data, _convert_="all")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup()
    assert dm.classes == ["no", "yes"]
    assert sorted(dm.index.keys) == [f"img/x{i}.png" for i in range(8)]
    assert dm.index.targets.tolist() == [i % 2 for i in range(8)]
    # the escape a shell passes for '\t' (a backslash and a t) works too
    cfg = compose_app(tmp_path, [*overrides[:-3], "data.options.delimiter='\\t'", *overrides[-2:]])
    options = OmegaConf.to_container(cfg.data.options)
    assert isinstance(options, dict) and options["delimiter"] == "\\t"
    index = build_index("csv", root, **options)
    assert index.classes == ["no", "yes"] and len(index) == 8
