"""Reading delimiter-separated files (CSV, TSV, ...), with or without a header row, for layout
readers: :func:`read_table` checks the structure and names the file and line of each problem,
the reader then checks the cells. Import from :mod:`cass_lightning.data.layouts.helpers`."""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from cass_lightning.data.layouts.helpers.common import raise_row_errors

#: Delimiters by name, for options set on a command line where a tab is awkward to type.
DELIMITERS: dict[str, str] = {"comma": ",", "tab": "\t", "semicolon": ";", "pipe": "|"}


class Table(NamedTuple):
    """A delimiter-separated file: the position of every column by name, and the non-blank
    rows as ``(line, cells)``, ``line`` counted from 1 in the file (for error messages)."""

    columns: dict[str, int]
    rows: list[tuple[int, list[str]]]


def parse_delimiter(layout: str, value: str, option: str = "delimiter") -> str:
    """A delimiter option as a user may write it: one character (``","``, a tab), a name of
    :data:`DELIMITERS` (``tab``, ``comma``, ...) or the escape ``\\t``; anything else refused."""
    text = value if isinstance(value, str) else ""
    text = DELIMITERS.get(text.strip().casefold(), "\t" if text == "\\t" else text)
    if len(text) != 1 or text in '"\r\n':
        raise ValueError(
            f"{layout}: {option} must be one character or one of {', '.join(DELIMITERS)} "
            f"(e.g. {option}=tab), got {value!r}"
        )
    return text


def _shown(names: Sequence[str], delimiter: str) -> str:
    """Column names as a header line reads, with an invisible delimiter escaped (``\\t``)."""
    visible = delimiter.isprintable() and not delimiter.isspace()
    return (delimiter if visible else repr(delimiter)[1:-1]).join(names)


def delimiter_name(delimiter: str) -> str:
    """``tab`` for a tab, ``comma`` for ``,`` ...; the character itself (quoted) otherwise."""
    names = {value: name for name, value in DELIMITERS.items()}
    return names.get(delimiter, repr(delimiter))


def _hint(cells: list[str], delimiter: str, delimiter_option: str | None) -> str:
    """For a row read as one field: which other delimiter it seems to use, and the fix."""
    if len(cells) != 1:
        return ""
    for name, other in DELIMITERS.items():
        if other != delimiter and other in cells[0]:
            fix = f"; set {delimiter_option}={name}" if delimiter_option else ""
            return (
                f" (the file looks {name}-separated, but is read as "
                f"{delimiter_name(delimiter)}-separated{fix})"
            )
    return ""


def read_table(
    layout: str,
    path: Path,
    *,
    required: Sequence[str],
    columns: Sequence[str] | None = None,
    delimiter: str = ",",
    expected_header: str | None = None,
    delimiter_option: str | None = None,
) -> Table:
    """Read a delimiter-separated file (CSV, TSV, ...) whose rows a reader then checks.

    With ``columns=None`` the first row is the header; with ``columns`` the file has no header
    row and these name its fields in file order. ``required`` columns must be there (once);
    every row must have as many fields as the header or ``columns``. A UTF-8 BOM is accepted,
    blank rows are dropped, and a file without data rows is refused. Every error names the file
    and, for a row, the line. ``expected_header`` is what the error says the header should be
    (default: the required columns); ``delimiter_option`` is the option that sets the
    delimiter, named when the file seems to use another one.
    """
    if len(delimiter) != 1 or delimiter in '"\r\n':
        raise ValueError(f"{layout}: the delimiter must be one character, got {delimiter!r}")
    if columns is not None:
        columns = [str(name) for name in columns]
        absent = [name for name in required if name not in columns]
        doubled = sorted({name for name in columns if columns.count(name) > 1})
        if absent or doubled:
            problem = (
                f"lack the required column(s) {absent}"
                if absent
                else f"name column(s) {doubled} more than once"
            )
            raise ValueError(f"{layout}: the columns {columns} given for {path} {problem}")
    raw = path.read_bytes()
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{layout}: {path} is not UTF-8 text (line {line}: {exc})") from exc
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[tuple[int, list[str]]] = []
    try:
        for cells in reader:
            if any(cell.strip() for cell in cells):
                rows.append((reader.line_num, cells))
    except csv.Error as exc:
        raise ValueError(
            f"{layout}: {path} cannot be read as {delimiter_name(delimiter)}-separated text "
            f"(line {reader.line_num}: {exc})"
        ) from exc
    wanted = expected_header or _shown(required, delimiter)
    if columns is None:
        if not rows:
            raise ValueError(f"{layout}: {path} is empty; expected the header {wanted}")
        (_, header), rows = rows[0], rows[1:]
        header = [name.strip() for name in header]
        missing = [name for name in required if name not in header]
        doubled = sorted({name for name in required if header.count(name) > 1})
        if missing or doubled:
            problem = f"missing column(s) {missing}" if missing else f"repeated column(s) {doubled}"
            raise ValueError(
                f"{layout}: {path} has {problem}; expected header {wanted}, found header "
                f"{_shown(header, delimiter)}{_hint(header, delimiter, delimiter_option)}"
            )
        if not rows:
            raise ValueError(f"{layout}: {path} has a header but no rows")
        what = f"but the header has {len(header)}"
    else:
        header = columns
        if not rows:
            raise ValueError(f"{layout}: {path} holds no rows; expected rows of {wanted}")
        first = [cell.strip() for cell in rows[0][1]]
        if first == header:
            raise ValueError(
                f"{layout}: line {rows[0][0]} of {path} is a header ({_shown(first, delimiter)}),"
                " but the file is read as having none; read it with its header row instead of "
                "naming the columns"
            )
        what = f"expected {len(header)} ({', '.join(header)})"
    errors = [
        f"line {line}: {len(cells)} fields, {what}" + _hint(cells, delimiter, delimiter_option)
        for line, cells in rows
        if len(cells) != len(header)
    ]
    raise_row_errors(layout, path, errors)
    positions: dict[str, int] = {}
    for position, name in enumerate(header):
        positions.setdefault(name, position)
    return Table(positions, rows)
