"""Writing a report folder: the overwrite guard, the staged folder, report.csv, .md and .png.

A report is written whole or not at all: every file goes into a hidden temporary folder beside
the target (:class:`StagedFolder`), renamed into place once the last file is written. A full
disk or a file-size limit mid-way leaves neither a partial report folder nor the temporary one,
and the error names the file that could not be written.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from cass_lightning.io import WriteRefusedError, disk_refusal, fsync_dir, temp_path_for
from cass_lightning.io import write_csv as write_csv_file
from cass_lightning.report.plots import plot
from cass_lightning.report.table import CSV_FIELDS, markdown

REPORT_FILES = ("report.csv", "report.md", "report.png")


def refuse_existing(paths: Iterable[Path]) -> None:
    """Raise before anything is written when any of ``paths`` already exists.

    A report is a record of the runs it read; a second report must not silently replace the first.
    """
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise FileExistsError(
            f"{', '.join(existing)} already exist; refusing to overwrite a report. "
            "Choose another output folder (--out)"
        )


def write_csv(rows: Sequence[dict[str, Any]], path: Path, fields: Sequence[str]) -> None:
    """``rows`` as CSV with ``fields`` as the header; ``None`` (and absent keys) as empty cells.
    Through :func:`cass_lightning.io.write_csv`: atomic, formula-like text cells neutralised,
    numbers kept as numbers."""
    cells = [["" if row.get(k) is None else row[k] for k in fields] for row in rows]
    write_csv_file(path, list(fields), cells)


class StagedFolder:
    """A report folder written in a hidden temporary folder beside ``out``, renamed into place
    on success and removed on any failure (nothing half written is ever left).

    Use as a context manager; :meth:`write` runs one file's writer and turns a refused write
    (full disk, file-size limit, read-only folder) into :class:`WriteRefusedError` naming the
    file's final path.
    """

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.temp = temp_path_for(self.out)

    def __enter__(self) -> StagedFolder:
        self._guard(self.out, lambda: self.out.parent.mkdir(parents=True, exist_ok=True))
        self._guard(self.out, self.temp.mkdir)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if err is not None:
            shutil.rmtree(self.temp, ignore_errors=True)
            return
        try:
            self._publish()
        except BaseException:
            shutil.rmtree(self.temp, ignore_errors=True)
            raise

    def path(self, name: str) -> Path:
        """Where ``name`` is written until the folder is published."""
        return self.temp / name

    def write(self, name: str, write: Callable[[Path], Any]) -> None:
        """``write(temporary path of name)``, with a refused write named by its final path."""
        self._guard(self.out / name, lambda: write(self.temp / name))

    @staticmethod
    def _guard(target: Path, action: Callable[[], Any]) -> None:
        try:
            action()
        except OSError as err:
            message = disk_refusal(err, target)
            if message is None:
                raise
            raise WriteRefusedError(err.errno, message, str(target)) from None

    def _publish(self) -> None:
        if not self.out.exists():
            self._guard(self.out, lambda: self.temp.rename(self.out))
        else:  # an existing folder (--out): its other files stay; ours were checked absent
            for file in sorted(self.temp.iterdir()):
                target = self.out / file.name
                if target.exists():
                    raise FileExistsError(f"{target} appeared while the report was written")
                self._guard(target, lambda f=file, t=target: f.rename(t))
            self.temp.rmdir()
        fsync_dir(self.out.parent)


def write_report(
    rows: Sequence[dict[str, Any]],
    out_dir: str | Path,
    metric: str = "f1_macro",
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``report.csv``, ``report.md`` and ``report.png`` into ``out_dir``; return their paths.

    Refuses (before writing anything) when ``out_dir`` already holds any of them: a report is a
    record of the runs it read, and a second report must not silently replace the first.
    ``notes`` (copies counted once, datasets told apart) close ``report.md`` as a list. The files
    appear together or not at all (:class:`StagedFolder`).
    """
    if not rows:
        raise ValueError("no rows to report")
    out = Path(out_dir)
    paths = {name.split(".")[1]: out / name for name in REPORT_FILES}
    refuse_existing(paths.values())
    text = markdown(rows, metric)
    if notes:
        text += "\n## Notes\n\n" + "".join(f"- {note}\n" for note in notes)
    with StagedFolder(out) as staged:
        staged.write("report.csv", lambda p: write_csv(rows, p, CSV_FIELDS))
        staged.write("report.md", lambda p: p.write_text(text))
        staged.write("report.png", lambda p: plot(rows, metric, p))
    return paths
