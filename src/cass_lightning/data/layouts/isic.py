"""Reader for ISIC-2019 as distributed: the training image folder and its one-hot ground-truth CSV.

Images are found through the CSV rows (not by listing the folder), so every row is checked:
exactly one 1 among the eight classes, no UNK, no repeats, and a file behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cass_lightning.data.index import IMAGE_EXTENSIONS, SampleIndex
from cass_lightning.data.layouts.helpers import (
    BadFiles,
    FileLookup,
    check_image_dir,
    check_policy,
    finish_index,
    key_for,
    mismatch,
    open_root,
    outside_root,
    raise_row_errors,
    read_table,
)

ISIC_CLASSES: tuple[str, ...] = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
ISIC_HEADER: tuple[str, ...] = ("image", *ISIC_CLASSES, "UNK")
#: What the layout expects under its root; ``{image_dir}`` and ``{csv_file}`` are its options.
ISIC_EXPECTED = (
    "{image_dir}/ (holding <image>.jpg) and {csv_file} "
    "(header " + ",".join(ISIC_HEADER) + ", one-hot 1.0/0.0)"
)


# --------------------------------------------------------------------------- CSV layouts
def _parse_one_hot(
    cells: list[str], columns: dict[str, int], names: Sequence[str], blank_is_zero: Sequence[str]
) -> tuple[list[str], str | None]:
    """The columns holding a 1, or why the row is not a 0/1 row."""
    ones: list[str] = []
    for name in names:
        cell = cells[columns[name]].strip()
        if not cell and name in blank_is_zero:
            continue
        try:
            value = float(cell)
        except ValueError:
            value = float("nan")
        if value not in (0.0, 1.0):
            return [], f"column {name} is {cell!r}; expected 1.0 or 0.0"
        if value == 1.0:
            ones.append(name)
    return ones, None


def index_isic2019(
    root: str | Path,
    *,
    on_bad_file: str = "error",
    image_dir: str = "ISIC_2019_Training_Input",
    csv_file: str = "ISIC_2019_Training_GroundTruth.csv",
    allow_outside_root: bool = False,
) -> SampleIndex:
    """ISIC-2019 as distributed: the training images and the one-hot ground-truth CSV.

    Images are looked up by the CSV's ``image`` column plus ``.jpg``, so the licence files and
    any ``_downsampled`` copies in the image folder are never picked up by accident. The UNK
    column is optional and may be blank; a 1 there is an unknown label (the training data has
    none). An ``image`` cell that leaves the root (``../x``, an absolute path elsewhere) is
    refused with its line unless ``allow_outside_root``.
    """
    layout = "isic2019"
    check_policy(on_bad_file)
    expected = ISIC_EXPECTED.format(image_dir=image_dir, csv_file=csv_file)
    root = open_root(layout, root, expected)
    base = check_image_dir(layout, root, image_dir, allow_outside_root)
    csv_path = root / csv_file
    absent = [
        name
        for name, present in (
            (f"{image_dir}/", base.is_dir()),
            (csv_file, csv_path.is_file()),
        )
        if not present
    ]
    if absent:
        raise mismatch(
            layout,
            root,
            expected,
            f"{' and '.join(absent)} not found",
            probe=lambda p: (p / csv_file).is_file() and (p / image_dir).is_dir(),
        )
    required = ["image", *ISIC_CLASSES]
    columns, rows = read_table(
        layout, csv_path, required=required, expected_header=",".join(ISIC_HEADER)
    )
    one_hot_columns = [*ISIC_CLASSES, *(["UNK"] if "UNK" in columns else [])]

    bad = BadFiles(layout, root, on_bad_file)
    lookup = FileLookup()
    errors: list[str] = []
    first_line: dict[str, int] = {}
    keys: list[str] = []
    labels: list[int] = []
    for line, cells in rows:
        image = cells[columns["image"]].strip()
        if not image:
            errors.append(f"line {line}: empty 'image' cell")
            continue
        where = f"line {line} (image {image})"
        ones, problem = _parse_one_hot(cells, columns, one_hot_columns, blank_is_zero=["UNK"])
        if problem is not None:
            errors.append(f"{where}: {problem}")
            continue
        if "UNK" in ones:
            errors.append(
                f"{where}: unknown label (UNK=1); expected exactly one of {', '.join(ISIC_CLASSES)}"
            )
            continue
        if len(ones) != 1:
            errors.append(
                f"{where}: one-hot row has {len(ones)} ones ({', '.join(ones) or 'none'}); "
                "expected exactly one"
            )
            continue
        if image in first_line:
            errors.append(f"{where}: listed again (first at line {first_line[image]})")
            continue
        first_line[image] = line
        filename = image if image.lower().endswith(IMAGE_EXTENSIONS) else f"{image}.jpg"
        key, inside = key_for(root, base, filename)
        if not inside and not allow_outside_root:
            errors.append(f"{where}: " + outside_root("image", image, key, root))
            continue
        why = lookup.why_missing(str(root / key))
        if why is not None:
            bad.add(str(root / key), f"{why} (listed at {csv_file} line {line})", None, ones)
            continue
        keys.append(key)
        labels.append(ISIC_CLASSES.index(ones[0]))
    raise_row_errors(layout, csv_path, errors)
    skipped = bad.resolve()
    targets = np.asarray(labels, dtype=np.int64)
    return finish_index(layout, root, keys, targets, list(ISIC_CLASSES), None, skipped, bad.meta)
