"""What a layout reader is built from: every name here is public and meant for new layouts.

The shipped readers use exactly these, so a new one words its errors, lists problems and
orders samples the same way. A reader

- checks ``on_bad_file`` with :func:`check_policy` and opens its root with :func:`open_root`;
- explains a root that holds something else with :func:`mismatch`;
- reads a CSV/TSV (with or without a header row) with :func:`read_table`, turns each path
  cell into a key with :func:`key_for` (refusing paths outside the root: :func:`outside_root`,
  :func:`check_image_dir`) and asks :class:`FileLookup` whether the file is there;
- collects missing files in :class:`BadFiles` and row problems for :func:`raise_row_errors`;
- builds its :class:`~cass_lightning.data.index.SampleIndex` with :func:`finish_index`.

Each reader states what it expects under its root in its own module (the ``expected`` text
these helpers put into their messages): nothing here needs editing for a new layout. Readers
whose classes are folder names add :mod:`cass_lightning.data.layouts.scan` (``FolderScan``,
``index_class_tree``, ``check_known_classes``).
"""

from __future__ import annotations

from cass_lightning.data.layouts.helpers.common import (
    BAD_FILE_POLICIES,
    MAX_FOUND,
    MAX_LISTED,
    MISSING_LABELS,
    BadFiles,
    FileLookup,
    bullets,
    check_image_dir,
    check_policy,
    dir_text,
    finish_index,
    is_dir,
    is_hidden,
    is_missing_label,
    key_for,
    mismatch,
    open_root,
    outside_root,
    raise_row_errors,
    sort_labels,
    subdirs,
    visible_entries,
)
from cass_lightning.data.layouts.helpers.table import (
    DELIMITERS,
    Table,
    delimiter_name,
    parse_delimiter,
    read_table,
)

__all__ = [
    "BAD_FILE_POLICIES",
    "DELIMITERS",
    "MAX_FOUND",
    "MAX_LISTED",
    "MISSING_LABELS",
    "BadFiles",
    "FileLookup",
    "Table",
    "bullets",
    "check_image_dir",
    "check_policy",
    "delimiter_name",
    "dir_text",
    "finish_index",
    "is_dir",
    "is_hidden",
    "is_missing_label",
    "key_for",
    "mismatch",
    "open_root",
    "outside_root",
    "parse_delimiter",
    "raise_row_errors",
    "read_table",
    "sort_labels",
    "subdirs",
    "visible_entries",
]
