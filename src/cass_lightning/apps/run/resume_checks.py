"""What :mod:`.resume` checks in a run folder before anything is claimed or written: its
records are plain data (``run_info.json``, ``.hydra/*.yaml``), and the resumed run writes only
inside its own folder.

A saved override can be a plain literal of a known key and still send writes elsewhere:
``data.output_dir=<another folder>`` rewrites that folder's ``splits.csv``; ``data.root=/etc``
with generated (synthetic) data writes images there. So a saved value of a key the run writes
into must name a place inside the run folder, or be given again on the command line (where the
user typed it); and no saved value may be longer than a path can be.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cass_lightning.apps.run.overrides import override_key, override_value
from cass_lightning.apps.run.runinfo import read_run_info
from cass_lightning.io import RecordError, read_yaml

#: Keys whose value is a folder every run writes into (splits, reports, caches, logs,
#: checkpoints, exports).
WRITTEN_KEYS = re.compile(
    r"paths\.output_dir|data\.output_dir|data\.cache_dir|trainer\.default_root_dir"
    r"|logger\.[A-Za-z0-9_]+\.save_dir|callbacks\.[A-Za-z0-9_]+\.(dirpath|out_dir|save_dir)"
)
#: Keys whose value names a file or folder below one the run writes into (a logger's run
#: name, a checkpoint's file name): ``../..`` or an absolute path there would leave the run.
BELOW_KEYS = re.compile(
    r"logger\.[A-Za-z0-9_]+\.(name|version|sub_dir|prefix)|callbacks\.[A-Za-z0-9_]+\.filename"
)
#: Keys whose folder a run writes into only when its data is generated (synthetic images are
#: written once under the data root).
GENERATED_KEYS = ("data.root", "paths.data_dir")
#: The longest saved override taken (Linux's PATH_MAX); one path component at most NAME_MAX.
LONGEST = 4096
LONGEST_NAME = 255
OUTSIDE = "names a folder outside the run that the run would write into"
OUT_OF_RUN = "leads out of the run folder"


def _inside(value: object, folder: Path) -> bool:
    """Whether ``value`` names ``folder`` or a place in it, relative paths taken from the
    current folder as Hydra takes them (links resolved)."""
    if value is None:
        return True  # unset: the app's default, which the saved file does not choose
    if not isinstance(value, str) or "${" in value:
        return False  # an interpolation (only under resume_trust): where it leads is unknown
    place = (Path.cwd() / Path(value).expanduser()).resolve()
    return place == folder or folder in place.parents


def refused_saved_values(
    folder: Path, saved: Iterable[str], generated_data: bool
) -> list[tuple[str, str]]:
    """The saved overrides (with the reason) that a resume of ``folder`` must not apply: too
    long, or naming a folder outside the run that it would write into. ``saved``: those not
    given again on the command line; ``generated_data``: the run's data is written by it."""
    folder = folder.resolve()
    refused = []
    for override in saved:
        key = override_key(override)
        if len(override) > LONGEST:
            refused.append((override, f"is {len(override)} characters long (at most {LONGEST})"))
            continue
        if key is None:
            continue  # malformed: refused by the override checks
        value = override_value(override)
        if BELOW_KEYS.fullmatch(key):
            if isinstance(value, str) and not _inside(str(folder / value), folder):
                refused.append((override, OUT_OF_RUN))
            continue
        writes = WRITTEN_KEYS.fullmatch(key) or (generated_data and key in GENERATED_KEYS)
        if not writes:
            continue
        if isinstance(value, str) and any(len(p) > LONGEST_NAME for p in Path(value).parts):
            refused.append((override, f"holds a path component over {LONGEST_NAME} characters"))
        elif not _inside(value, folder):
            refused.append((override, OUTSIDE))
    return refused


def records_problem(folder: Path) -> str | None:
    """Why the run's records cannot be read as plain data (``run_info.json`` checked: its run
    id goes to the loggers; ``.hydra/*.yaml`` parsed: they are kept and printed), else None."""
    try:
        read_run_info(folder)
        for path in sorted((folder / ".hydra").glob("*.yaml")):
            read_yaml(path, f"saved {path.name}")
    except RecordError as err:
        return str(err)
    return None


def outside_writes(
    folder: Path, kept: list[str], given: list[str], compose: Callable[[list[str]], Any]
) -> str | None:
    """Why the saved overrides ``kept`` (those not ``given`` again on the command line) cannot
    be applied to a resume of ``folder`` (:func:`refused_saved_values`), else None. Checked
    whatever ``resume_trust`` says. ``compose``: the app's config from overrides (to tell
    whether the run generates its data)."""
    keys = {override_key(o) for o in kept}
    generated = bool(keys & set(GENERATED_KEYS)) and _generated_data([*kept, *given], compose)
    refused = refused_saved_values(folder, kept, generated)
    if not refused:
        return None
    listed = "; ".join(f"{_shown(o)!r} {why}" for o, why in refused)
    return (
        f"resume={folder}: its saved .hydra/overrides.yaml holds settings a resume does not "
        f"apply: {listed}. A resume writes only inside its run folder; nothing was changed. "
        "Give the setting again on the command line (e.g. data.output_dir=<folder>) to choose "
        "where it writes."
    )


def _shown(override: str) -> str:
    return override if len(override) <= 120 else f"{override[:100]}... ({len(override)} chars)"


def restated_settings(folder: Path) -> list[str]:
    """The run's saved overrides that a resume takes only when given again on its command line
    (folders outside the run it writes into): what its printed resume command must restate."""
    try:
        saved = read_yaml(folder / ".hydra" / "overrides.yaml", "list of overrides")
    except (OSError, RecordError):
        return []
    if not isinstance(saved, list) or not all(isinstance(o, str) for o in saved):
        return []
    refused = refused_saved_values(folder, saved, generated_data=True)
    return [o for o, why in refused if why in (OUTSIDE, OUT_OF_RUN)]


def _generated_data(overrides: list[str], compose: Callable[[list[str]], Any]) -> bool:
    """Whether the run's data is generated by the run itself (written under its data root);
    true when the settings do not compose (nothing shows otherwise)."""
    from hydra.utils import get_class

    from cass_lightning.data.presets import SyntheticDataModule

    try:
        target = compose(overrides).data.get("_target_")
        return issubclass(get_class(str(target)), SyntheticDataModule)
    except Exception:  # does not compose, or no class: Hydra names it when the run starts
        return True
