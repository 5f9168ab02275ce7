"""``cass-report``: the downstream table and plot from any number of ``cass-finetune`` runs.

::

    cass-report runs/finetune/multirun/<sweep> [<more folders> ...] [--out DIR] [--metric f1_macro]
                [--study]

Finds every ``results.json`` under the folders, averages ``test/<metric>`` over seeds for each
(dataset, method, arm, mode, label fraction) and writes ``report.csv``, ``report.md`` and
``report.png`` into ``--out`` (default ``<first folder>/report``), never over an earlier report.
``--study`` writes the study report instead (``study.md`` with the seed-paired verdicts,
``report.csv``, ``verdicts.csv`` and the figures; the metric defaults to the paper's per dataset;
no pretraining costs, which only ``cass-study`` measures).
Plain argparse rather than Hydra: a report reads finished runs and has nothing to configure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cass_lightning.io import WriteRefusedError, disk_refusal
from cass_lightning.report import (
    aggregate,
    collect_results,
    markdown,
    write_report,
    write_study_report,
)
from cass_lightning.report.identity import prepare


def build_parser() -> argparse.ArgumentParser:
    """The command line, separate from ``main`` so ``--help`` text can be checked on its own."""
    parser = argparse.ArgumentParser(
        prog="cass-report",
        description="Aggregate cass-finetune results.json files into the paper's table and plot.",
    )
    parser.add_argument("folders", nargs="+", type=Path,
                        help="folders searched recursively for results.json")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: <first folder>/report)")  # fmt: skip
    parser.add_argument("--metric", default=None,
                        help="f1_macro (default), balanced_acc, ... (test/ implied); with "
                             "--study the default is the paper's metric per dataset")  # fmt: skip
    parser.add_argument("--study", action="store_true",
                        help="write the study report: study.md with seed-paired verdicts, "
                             "report.csv, verdicts.csv and figures")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; a refused input (no results, an existing report, a bad metric)
    is one named line and exit 1, as in every app; a malformed command line exits 2."""
    args = build_parser().parse_args(argv)
    out = args.out if args.out is not None else args.folders[0] / "report"
    metric = args.metric or "f1_macro"
    try:
        results = collect_results(args.folders)
        if args.study:
            paths = write_study_report(results, [], out, metric=args.metric)
            print(paths["study.md"].read_text())
            print(f"{len(results)} runs; wrote {len(paths)} files into {out}")
            return 0
        results, notes = prepare(results)
        rows = aggregate(results, metric)
        paths = write_report(rows, out, metric, notes=notes)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"cass-report: error: {message}", file=sys.stderr)
        return 1
    except OSError as err:
        refused = err.strerror if isinstance(err, WriteRefusedError) else disk_refusal(err)
        if refused is None:
            raise
        print(f"cass-report: error: {refused}", file=sys.stderr)
        return 1
    print(markdown(rows, metric))
    for note in notes:
        print(f"note: {note}")
    print(f"{len(results)} runs in {len(rows)} rows; wrote "
          + ", ".join(str(p) for p in paths.values()))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
