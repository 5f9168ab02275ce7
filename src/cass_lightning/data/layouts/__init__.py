"""Readers for each dataset's on-disk layout, each returning one :class:`SampleIndex`.

The datasets arrive in the shape their distributors chose (ISIC's one-hot CSV, Kaggle's
``Training``/``Testing`` folders, Dermofit's lesion folders, MedMNIST's ``.npz``...). Each reader
here only *lists* what is there: no image is decoded (the validator does that through
``index.reader``), and nothing is ever written under a dataset root.

Shared rules:

- Keys are paths relative to the root, in posix style (MedMNIST: ``"<split>/<row>"``); samples
  are sorted by key, so the same files always give the same order.
- ``on_bad_file`` decides what happens to entries that point at files which are not there:
  ``"error"`` raises one error listing every one of them, ``"skip"`` drops them and records
  ``(where, why)`` in ``index.skipped``. Structure errors (wrong or empty root, bad CSV header,
  unknown labels, classes without images) always raise, because skipping them would silently
  change the label space.
- Hidden files and folders are ignored; extensions are matched case-insensitively.

Layout of this package: ``helpers`` (what every reader is built from: root and error helpers,
the table reader, the index), ``scan`` (class folders to an index), ``isic`` (ISIC-2019),
``folders`` (image folders, Brain MRI, Dermofit, synthetic), ``tables`` (your own CSV or TSV,
autoimmune) and ``medmnist`` (MedMNIST ``.npz`` and :class:`NpzReader`); here, the
``LAYOUTS`` registry and :func:`build_index`. A new layout is a reader built from ``helpers``
(and ``scan``) plus one entry in ``LAYOUTS``; see docs/extending.md.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cass_lightning.data.index import SampleIndex
from cass_lightning.data.layouts.folders import (
    index_brain_mri,
    index_dermofit,
    index_image_folder,
    index_synthetic,
)
from cass_lightning.data.layouts.helpers import BAD_FILE_POLICIES, MAX_FOUND, MAX_LISTED
from cass_lightning.data.layouts.isic import ISIC_CLASSES, ISIC_HEADER, index_isic2019
from cass_lightning.data.layouts.medmnist import MEDMNIST_ARRAYS, NpzReader, index_medmnist
from cass_lightning.data.layouts.tables import index_autoimmune, index_csv

__all__ = [
    "BAD_FILE_POLICIES",
    "ISIC_CLASSES",
    "ISIC_HEADER",
    "LAYOUTS",
    "MAX_FOUND",
    "MAX_LISTED",
    "MEDMNIST_ARRAYS",
    "NpzReader",
    "build_index",
    "index_autoimmune",
    "index_brain_mri",
    "index_csv",
    "index_dermofit",
    "index_image_folder",
    "index_isic2019",
    "index_medmnist",
    "index_synthetic",
    "layout_takes",
]

# --------------------------------------------------------------------------- entry point
LAYOUTS: dict[str, Callable[..., SampleIndex]] = {
    "isic2019": index_isic2019,
    "brain_mri": index_brain_mri,
    "dermofit": index_dermofit,
    "autoimmune": index_autoimmune,
    "csv": index_csv,
    "image_folder": index_image_folder,
    "medmnist": index_medmnist,
    "synthetic": index_synthetic,
}


def layout_takes(layout: str, option: str) -> bool:
    """Whether the reader of ``layout`` accepts ``option`` (e.g. ``allow_outside_root``)."""
    return option in inspect.signature(LAYOUTS[layout]).parameters


def build_index(layout: str, root: str | Path, **options: Any) -> SampleIndex:
    """Index ``root`` with the reader of ``layout``; options go to that reader.

    Option names are checked here so a typo fails with the list of accepted options rather
    than a bare ``TypeError``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known layouts: {', '.join(sorted(LAYOUTS))}")
    function = LAYOUTS[layout]
    parameters = dict(inspect.signature(function).parameters)
    parameters.pop("root")
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise ValueError(
            f"layout {layout!r} does not take option(s) {unknown}; it takes {sorted(parameters)}"
        )
    needed = sorted(
        name
        for name, parameter in parameters.items()
        if parameter.default is inspect.Parameter.empty and name not in options
    )
    if needed:
        raise ValueError(f"layout {layout!r} needs option(s) {needed}")
    return function(root, **options)
