"""Reports from fine-tuning runs: the paper's tables, seed-paired verdicts, costs and figures.

Framework-free on purpose (no torch, Lightning or Hydra; matplotlib only inside the functions
that draw): a report is made on any machine that holds the runs, long after them, and must not
need the training stack.

Two entry points:

- ``cass-report`` (:func:`collect_results`, :func:`aggregate`, :func:`write_report`): every
  ``results.json`` under some folders, each labelled with its pretraining *method*, averaged
  over seeds per (dataset, method, arm, mode, label fraction) into ``report.csv``,
  ``report.md`` (rows method x arm, columns label fractions) and ``report.png``.
- ``cass-study`` (:func:`write_study_report`): the whole study into ``<study>/report/``:
  ``study.md``, ``report.csv``, ``verdicts.csv`` and PNGs, answering whether CASS beats DINO
  and the ImageNet init at each label fraction.

Inputs of :func:`write_study_report` (the contract with ``cass-study``):

1. ``results``: one dict per fine-tuning run, as in ``results.json``: ``dataset``, ``method``
   (a name in ``cass_lightning.modules.registry``: ``cass``, ``dino``, ``byol``, ``imagenet``,
   ``random``, ...; see :func:`method_of`), ``arm`` (``cnn``,
   ``vit``), ``mode``, ``label_fraction``, ``seed``, ``label_seed``, ``metrics``
   (``{"test/<name>": float | None}``), ``test_split``, ``num_classes``, ``multi_label``, and
   optionally ``classes`` (names), ``per_class`` (``{"f1": [float | None per class],
   "support": [int per class]}`` on the test split), ``confusion`` (``[[int]]``, rows the true
   class, columns the predicted one; ``None`` for multi-label data) and ``pretrain``
   (``{"batch_size": int, "epochs": int}``, only for points of the robustness grid). Runs with
   ``pretrain`` form the robustness section and never enter the main table or the verdicts.
   Runs pair across methods by ``seed`` and ``label_seed`` (the same labelled images).
   Each result is checked first (:func:`check_result`: every metric ``None`` or a finite number
   in its range); ``run_id``, ``settings_digest`` and ``data_fingerprint`` (what
   ``cass-finetune`` records) decide which runs are copies of one run (counted once) and which
   may share a cell (:mod:`.identity`; older results fall back to their content).
2. ``costs``: one dict per pretraining run: ``method`` (``cass``, ``dino``), ``arm``
   (``both``, ``cnn``, ``vit``), ``fit_seconds``, ``images_per_s`` (or ``None``),
   ``peak_memory_gib`` (or ``None``), ``memory_kind`` (``gpu``, ``cpu_rss``), ``epochs``,
   ``batch_size``, ``steps``, ``dataset``.
3. ``missing``: ``{"method", "arm", "reason"}`` (optionally ``dataset``; without it the entry
   applies to every dataset) for each table row the study could not run. The row is shown with
   its reason, never dropped; a row with neither runs nor a reason reads "no runs".

Outputs (never over an existing file: the writer refuses before writing anything):

- ``report.csv``: one row per dataset x method x arm x mode x label fraction (x pretraining
  point for the grid): :data:`STUDY_CSV_FIELDS`; rows without runs have ``n`` 0 and ``note``.
- ``verdicts.csv``: one row per comparison: :data:`VERDICT_FIELDS`.
- ``study.md``: a summary of the verdicts; per dataset and mode the paper's table (rows
  CASS-CNN, CASS-ViT, DINO-CNN, DINO-ViT, ImageNet-CNN, ImageNet-ViT, then Random-*; columns
  the label fractions; cells ``mean ± std (n)`` of :func:`default_metric`) and each verdict in
  words; pretraining cost and CASS/DINO time ratios; the robustness grid; links to the PNGs.
- ``fractions.png`` (metric against label fraction), ``per_class_f1_<dataset>_<mode>_<N>pct.png``,
  ``confusion_<dataset>_<mode>_<N>pct.png``, ``robustness_<dataset>_<mode>_<N>pct.png``.

Modules, one job each: ``collect`` (finding results, method labels, missing rows), ``table``
(aggregates and the markdown table), ``verdict`` (paired differences, t intervals, the words),
``costs`` (pretraining cost and ratios), ``robustness`` (the batch x epochs grid),
``perclass`` (per-class F1 and confusion over seeds), ``plots`` (every figure), ``writer``
(``cass-report``'s files, the overwrite guard and the staged folder), ``study`` (the study
report), ``validate`` (a results.json checked by name), ``identity`` (run ids, settings
digests, dataset fingerprints: what counts once and what may share a cell).
"""

from cass_lightning.report.collect import (
    ARMS,
    META_FILE,
    METHODS,
    RESULTS_FILE,
    collect_results,
    method_of,
    missing_reason,
)
from cass_lightning.report.costs import cost_rows, ratios
from cass_lightning.report.plots import plot
from cass_lightning.report.robustness import grids
from cass_lightning.report.study import (
    STUDY_CSV_FIELDS,
    default_metric,
    layout,
    table_rows,
    write_study_report,
)
from cass_lightning.report.table import (
    CSV_FIELDS,
    aggregate,
    cell,
    fraction_label,
    markdown,
    metric_key,
    row_name,
)
from cass_lightning.report.validate import (
    REQUIRED_KEYS,
    ResultsFileError,
    check_result,
    load_result,
)
from cass_lightning.report.verdict import (
    VERDICT_FIELDS,
    Comparison,
    compare,
    paired_differences,
    paired_interval,
    t_quantile_975,
    verdicts,
)
from cass_lightning.report.writer import REPORT_FILES, StagedFolder, write_report

__all__ = [
    "ARMS",
    "CSV_FIELDS",
    "META_FILE",
    "METHODS",
    "REPORT_FILES",
    "REQUIRED_KEYS",
    "RESULTS_FILE",
    "STUDY_CSV_FIELDS",
    "VERDICT_FIELDS",
    "Comparison",
    "ResultsFileError",
    "StagedFolder",
    "aggregate",
    "cell",
    "check_result",
    "collect_results",
    "compare",
    "cost_rows",
    "default_metric",
    "fraction_label",
    "grids",
    "layout",
    "load_result",
    "markdown",
    "method_of",
    "metric_key",
    "missing_reason",
    "paired_differences",
    "paired_interval",
    "plot",
    "ratios",
    "row_name",
    "t_quantile_975",
    "table_rows",
    "verdicts",
    "write_report",
    "write_study_report",
]
