"""Readers for layouts described by a table with one row per image: your own CSV or TSV, and
autoimmune.

Both go through :func:`_index_table`: a path column, a label column (one class name, or for
multi-label sets a list literal or separated names) and optionally a split column. Classes are
taken from every well-formed row, so a missing file never shifts the label indices. The file
is read by ``helpers.read_table``: any one-character delimiter, with or without a header row.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cass_lightning.data.index import SPLITS, SampleIndex
from cass_lightning.data.layouts.helpers import (
    MISSING_LABELS,
    BadFiles,
    FileLookup,
    check_image_dir,
    check_policy,
    delimiter_name,
    dir_text,
    finish_index,
    is_missing_label,
    key_for,
    mismatch,
    open_root,
    outside_root,
    parse_delimiter,
    raise_row_errors,
    read_table,
    sort_labels,
)

# What each layout expects under its root; every message about a root that does not fit says it.
AUTOIMMUNE_EXPECTED = (
    "{csv_file} with a {file_column!r} column and a list-valued {label_column!r} column "
    "(image paths relative to {image_dir})"
)
#: ``{columns}``: the header row or the columns named by the ``columns`` option.
CSV_EXPECTED = (
    "{csv_file} with {columns} ({delimiter}-separated; image paths relative to {image_dir})"
)


def _parse_label_list(cell: str, separators: Sequence[str]) -> tuple[list[str], str | None]:
    """Labels of a multi-label cell: a list literal, or names joined by a separator."""
    text = cell.strip()
    if not text:
        return [], None
    if text[0] in "[(":
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return [], f"could not read the label list {text!r}; expected e.g. ['a', 'b']"
        if not isinstance(value, (list, tuple)) or any(
            isinstance(item, bool) or not isinstance(item, (str, int)) for item in value
        ):
            return [], f"label list {text!r} must hold names (or integers)"
        labels = [str(item).strip() for item in value]
    else:
        labels = [part.strip() for part in re.split("|".join(map(re.escape, separators)), text)]
    return list(dict.fromkeys(label for label in labels if label)), None


def _class_list(layout: str, classes: Sequence[str]) -> list[str]:
    if isinstance(classes, str) or not classes:
        raise ValueError(f"{layout}: classes must be a non-empty list of names, got {classes!r}")
    names = [str(name) for name in classes]
    doubled = sorted({name for name in names if names.count(name) > 1})
    if doubled:
        raise ValueError(f"{layout}: classes lists {doubled} more than once")
    blank = [name for name in names if is_missing_label(name)]
    if blank:
        raise ValueError(
            f"{layout}: classes lists {blank}, a blank or missing-value name; name each class"
        )
    return names


def _index_table(
    layout: str,
    root: str | Path,
    *,
    csv_file: str,
    path_column: str,
    label_column: str,
    multi_label: bool,
    separators: Sequence[str],
    classes: Sequence[str] | None,
    split_column: str | None,
    image_dir: str,
    on_bad_file: str,
    allow_outside_root: bool,
    expected: str,
    delimiter: str = ",",
    columns: Sequence[str] | None = None,
    delimiter_option: str | None = None,
) -> SampleIndex:
    """One table row per image: a path, a label (or a list of labels) and maybe a split.

    A path that leaves the root (``../x``, or an absolute path elsewhere) is refused with its
    line unless ``allow_outside_root``; symbolic links inside the root are followed.
    ``delimiter`` and ``columns`` (a file without a header row) go to ``read_table``.
    """
    check_policy(on_bad_file)
    known = None if classes is None else _class_list(layout, classes)
    required = [path_column, label_column, *([split_column] if split_column else [])]
    if len(set(required)) != len(required):
        raise ValueError(f"{layout}: the path, label and split columns must differ, got {required}")
    resolved = open_root(layout, root, expected)
    csv_path = resolved / csv_file
    if not csv_path.is_file():
        raise mismatch(
            layout,
            resolved,
            expected,
            f"{csv_file} not found",
            probe=lambda p: (p / csv_file).is_file(),
        )
    base = check_image_dir(layout, resolved, image_dir, allow_outside_root)
    if not base.is_dir():
        raise mismatch(layout, resolved, expected, f"image folder {image_dir}/ not found")
    positions, rows = read_table(
        layout,
        csv_path,
        required=required,
        columns=columns,
        delimiter=delimiter,
        delimiter_option=delimiter_option,
    )

    bad = BadFiles(layout, resolved, on_bad_file)
    lookup = FileLookup()
    errors: list[str] = []
    first_line: dict[str, int] = {}
    seen: set[str] = set()
    entries: list[tuple[str, list[str], str | None]] = []
    for line, cells in rows:
        path = cells[positions[path_column]].strip()
        if not path:
            errors.append(f"line {line}: empty {path_column!r} cell; expected an image path")
            continue
        where = f"line {line} ({path})"
        cell = cells[positions[label_column]]
        if multi_label:
            labels, problem = _parse_label_list(cell, separators)
            if problem is not None:
                errors.append(f"{where}: column {label_column!r}: {problem}")
                continue
        elif not cell.strip():
            errors.append(f"{where}: empty {label_column!r} cell; expected a class name")
            continue
        else:
            labels = [cell.strip()]
        missing = [label for label in labels if is_missing_label(label)]
        if missing:
            errors.append(
                f"{where}: label {missing[0]!r} in column {label_column!r} reads as a missing "
                f"value ({', '.join(MISSING_LABELS)}); fill in the class name or drop the row"
            )
            continue
        if known is not None:
            unknown = [label for label in labels if label not in known]
            if unknown:
                errors.append(f"{where}: unknown label(s) {unknown}; expected one of {known}")
                continue
        split = None
        if split_column is not None:
            raw = cells[positions[split_column]].strip()
            split = raw.lower()
            if split not in SPLITS:
                errors.append(
                    f"{where}: split {raw!r} in column {split_column!r}; "
                    f"expected one of {', '.join(SPLITS)}"
                )
                continue
        key, inside = key_for(resolved, base, path)
        if not inside and not allow_outside_root:
            errors.append(f"line {line}: " + outside_root(f"path {path_column!r}", path, key,
                                                           resolved))  # fmt: skip
            continue
        if key in first_line:
            errors.append(f"{where}: listed again (first at line {first_line[key]})")
            continue
        first_line[key] = line
        # Classes come from every well-formed row, so a missing file never shifts label indices.
        seen.update(labels)
        why = lookup.why_missing(str(resolved / key))
        if why is not None:
            where, listed = str(resolved / key), f"listed at {csv_file} line {line}"
            bad.add(where, f"{why} ({listed})", split, labels)
            continue
        entries.append((key, labels, split))
    raise_row_errors(layout, csv_path, errors)
    names = known if known is not None else sort_labels(seen)
    if not names:
        raise ValueError(
            f"{layout}: no labels at all in column {label_column!r} of {csv_path}; "
            "expected at least one labelled row"
        )
    skipped = bad.resolve()
    position = {name: i for i, name in enumerate(names)}
    if multi_label:
        targets = np.zeros((len(entries), len(names)), dtype=np.float32)
        for row, (_, labels, _) in enumerate(entries):
            targets[row, [position[label] for label in labels]] = 1.0
    else:
        targets = np.asarray([position[labels[0]] for _, labels, _ in entries], dtype=np.int64)
    keys = [key for key, _, _ in entries]
    splits = None if split_column is None else [split or "" for _, _, split in entries]
    return finish_index(layout, resolved, keys, targets, names, splits, skipped, bad.meta)


def index_autoimmune(
    root: str | Path,
    *,
    csv_file: str = "labels.csv",
    image_dir: str = ".",
    file_column: str = "file",
    label_column: str = "label",
    on_bad_file: str = "error",
    allow_outside_root: bool = False,
) -> SampleIndex:
    """The dermatomyositis biopsies: multi-label, one CSV row per image with a list of labels.

    The label cell may be a list literal (``"['a', 'b']"``, ``'["a"]'``, ``"[]"``) or names
    joined by ``|`` or ``;``; an empty list is an image without labels.
    """
    expected = AUTOIMMUNE_EXPECTED.format(
        csv_file=csv_file,
        file_column=file_column,
        label_column=label_column,
        image_dir=dir_text(image_dir),
    )
    return _index_table(
        "autoimmune",
        root,
        csv_file=csv_file,
        path_column=file_column,
        label_column=label_column,
        multi_label=True,
        separators=("|", ";"),
        classes=None,
        split_column=None,
        image_dir=image_dir,
        on_bad_file=on_bad_file,
        allow_outside_root=allow_outside_root,
        expected=expected,
    )


def _csv_columns(
    header: bool, columns: Sequence[str] | None, named: dict[str, str | None]
) -> list[str] | None:
    """The ``columns`` option checked against ``header`` and the column options (``named``:
    option -> column); ``None`` when the file's header row names the columns."""
    if not isinstance(header, bool):
        raise ValueError(f"csv: header must be true or false, got {header!r}")
    if header:
        if columns is not None:
            raise ValueError(
                "csv: columns names the fields of a file without a header row, but header is "
                "true; set header=false too, or leave columns out to read the names from the "
                "header"
            )
        return None
    if columns is None:
        raise ValueError(
            "csv: header=false needs columns, the names of the file's fields in file order "
            "(e.g. data.options.columns=[path,label]); path_column and label_column then pick "
            "among them"
        )
    if isinstance(columns, str) or not columns:
        raise ValueError(
            f"csv: columns must be a list of names like [path, label], got {columns!r}"
        )
    names = [str(name).strip() for name in columns]
    doubled = sorted({name for name in names if names.count(name) > 1})
    if doubled:
        raise ValueError(f"csv: columns {names} lists {doubled} more than once")
    for option, column in named.items():
        if column is not None and column not in names:
            raise ValueError(
                f"csv: columns {names} has no {column!r} column, which {option} names; "
                f"list the file's fields in order (e.g. [path, label]) or set {option} to "
                "one of them"
            )
    return names


def index_csv(
    root: str | Path,
    *,
    csv_file: str,
    path_column: str = "path",
    label_column: str = "label",
    delimiter: str = ",",
    header: bool = True,
    columns: Sequence[str] | None = None,
    multi_label: bool = False,
    label_separator: str = "|",
    classes: Sequence[str] | None = None,
    split_column: str | None = None,
    image_dir: str = ".",
    on_bad_file: str = "error",
    allow_outside_root: bool = False,
) -> SampleIndex:
    """Your own CSV or TSV: an image path (relative to ``root/image_dir``, or absolute) and a
    label per row.

    ``delimiter`` is one character, or a name: ``comma`` (default), ``tab``, ``semicolon``,
    ``pipe``. With ``header`` (default) the first row names the columns; ``header=False``
    reads a file without a header row whose fields ``columns`` names in order (e.g.
    ``["path", "label"]``). Paths must stay inside ``root`` unless ``allow_outside_root``.

    With ``classes`` the label space is fixed (in that order) and anything else is an error;
    without, it is the sorted set of labels seen. ``multi_label`` cells are list literals or
    names joined by ``label_separator``. A ``split_column`` holds train/val/test per row.
    """
    if not isinstance(label_separator, str) or not label_separator:
        raise ValueError(
            f"csv: label_separator must be a non-empty string, got {label_separator!r}"
        )
    delimiter = parse_delimiter("csv", delimiter)
    if multi_label and label_separator == delimiter:
        raise ValueError(
            f"csv: label_separator and delimiter are both {label_separator!r}, so a label list "
            "would read as more fields; choose another label_separator"
        )
    named = {"path_column": path_column, "label_column": label_column, "split_column": split_column}
    fields = _csv_columns(header, columns, named)
    wanted = [path_column, label_column, *([split_column] if split_column else [])]
    shown = ", ".join(map(repr, fields or wanted))
    expected = CSV_EXPECTED.format(
        csv_file=csv_file,
        columns=f"a header row naming columns {shown}"
        if fields is None
        else f"no header row, its fields being the columns {shown} in that order",
        delimiter=delimiter_name(delimiter),
        image_dir=dir_text(image_dir),
    )
    return _index_table(
        "csv",
        root,
        csv_file=csv_file,
        path_column=path_column,
        label_column=label_column,
        multi_label=multi_label,
        separators=(label_separator,),
        classes=classes,
        split_column=split_column,
        image_dir=image_dir,
        on_bad_file=on_bad_file,
        allow_outside_root=allow_outside_root,
        expected=expected,
        delimiter=delimiter,
        columns=fields,
        delimiter_option="data.options.delimiter",
    )
