"""The paper's downstream table from fine-tuning runs: collect ``results.json``, aggregate, write.

Framework-free on purpose (no torch, Lightning or Hydra): a report is made on any machine that
holds the run folders, long after the runs, and must not need the training stack to import.

Every ``cass-finetune`` run writes one ``results.json``; :func:`collect_results` finds them under
any number of folders and labels each run with its pretraining *method* (``cass``, ``dino``,
``imagenet`` for the supervised baseline, ``random``). :func:`aggregate` averages one metric over
seeds for each (dataset, method, arm, mode, label fraction), and :func:`write_report` writes
``report.csv``, ``report.md`` (rows method x arm, columns label fractions, as in the paper) and
``report.png`` (the metric against the label fraction).

Modules, one job each: ``collect`` (finding results, method labels), ``table`` (aggregates and
the markdown table), ``plots`` (every figure), ``writer`` (report files and the overwrite guard).
"""

from cass_lightning.report.collect import (
    ARMS,
    META_FILE,
    METHODS,
    REQUIRED_KEYS,
    RESULTS_FILE,
    collect_results,
    method_label,
)
from cass_lightning.report.plots import plot
from cass_lightning.report.table import (
    CSV_FIELDS,
    aggregate,
    cell,
    fraction_label,
    markdown,
    metric_key,
)
from cass_lightning.report.writer import REPORT_FILES, write_report

__all__ = [
    "ARMS",
    "CSV_FIELDS",
    "META_FILE",
    "METHODS",
    "REPORT_FILES",
    "REQUIRED_KEYS",
    "RESULTS_FILE",
    "aggregate",
    "cell",
    "collect_results",
    "fraction_label",
    "markdown",
    "method_label",
    "metric_key",
    "plot",
    "write_report",
]
