"""The report never mixes or invents: tampered results refused by name, a run counted once,
settings and datasets never share a cell, formula cells neutralised, a full disk leaves no
partial report, a changed dataset stops the study."""

from __future__ import annotations

import csv
import errno
import json
from pathlib import Path
from typing import Any

import pytest

from cass_lightning.apps.report import main as report_main
from cass_lightning.report import aggregate, verdicts, write_study_report
from cass_lightning.report.identity import prepare


def result(seed: int, value: float | None, **extra: Any) -> dict[str, Any]:
    """One results.json as cass-finetune writes it (init random: no export to look up)."""
    return {
        "run_id": f"run{seed}", "init": "random", "arm": "cnn", "mode": "finetune",
        "dataset": "mine", "label_fraction": 1.0, "seed": seed, "label_seed": seed,
        "test_split": "test", "num_classes": 3, "multi_label": False,
        "metrics": {"test/f1_macro": value, "test/loss": 1.2}, **extra,
    }  # fmt: skip


def save(folder: Path, content: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def labelled(results: list[dict[str, Any]], method: str = "random") -> list[dict[str, Any]]:
    return [{**r, "method": method} for r in results]


# --- 1. results files validated --------------------------------------------------------------
TAMPERED = {
    "huge": {"metrics": {"test/f1_macro": 1e308}},
    "five": {"metrics": {"test/f1_macro": 5.0}},
    "list": {"metrics": {"test/f1_macro": [0.5]}},
    "dict": {"metrics": {"test/f1_macro": {"v": 0.5}}},
    "bool": {"metrics": {"test/f1_macro": True}},
    "no_metrics": {"metrics": {}},
    "fraction_list": {"label_fraction": [0.1]},
    "negative_loss": {"metrics": {"test/f1_macro": 0.5, "test/loss": -1.0}},
}


@pytest.mark.parametrize("case", [*TAMPERED, "nan_literal", "whole_list", "not_json"])
def test_a_tampered_results_file_is_refused_by_name(tmp_path, capsys, case):
    save(tmp_path / "runs" / "good", result(0, 0.7))
    if case == "nan_literal":
        bad = save(tmp_path / "runs" / "bad", json.dumps(result(1, 0.5)).replace("0.5", "NaN"))
    elif case == "whole_list":
        bad = save(tmp_path / "runs" / "bad", [result(1, 0.5)])
    elif case == "not_json":
        bad = save(tmp_path / "runs" / "bad", '{"metrics": ')
    else:
        bad = save(tmp_path / "runs" / "bad", {**result(1, 0.5), **TAMPERED[case]})
    out = tmp_path / "out"
    assert report_main([str(tmp_path / "runs"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "Traceback" not in err[0], err
    assert not out.exists()  # no table built on it


def test_the_study_report_leaves_a_tampered_point_out_and_says_why(tmp_path):
    from cass_lightning.apps.study.plan import Point
    from cass_lightning.apps.study.report import gather

    points = [Point(f"finetune-random-cnn-s{s}", "finetune", 1, "random", "cnn", [], "")
              for s in range(3)]  # fmt: skip
    for s, value in enumerate((0.7, 0.8, 5.0)):
        save(points[s].folder(tmp_path), result(s, value))
    found = gather(points, tmp_path, {p.id: "done" for p in points})
    assert [r["seed"] for r in found["results"]] == [0, 1]
    (note,) = found["notes"]
    assert note.startswith("finetune-random-cnn-s2 left out:") and "5.0" in note
    assert "results.json" in note


def test_a_seed_without_a_value_is_missing_never_a_zero_spread(tmp_path):
    rows = aggregate(labelled([result(0, 0.7612), result(1, None)]))
    (row,) = rows
    assert (row["n"], row["n_missing"], row["mean"]) == (1, 1, 0.7612)
    out = tmp_path / "study"
    paths = write_study_report(labelled([result(0, 0.7612), result(1, None)]), [], out)
    md = paths["study.md"].read_text()
    assert "0.7612 (1; 1 missing)" in md and "0.7612 ± 0.0000" not in md


# --- 2. a run counted once -------------------------------------------------------------------
def test_copies_of_a_run_count_once_and_the_report_says_so(tmp_path, capsys):
    runs = tmp_path / "runs"
    save(runs / "a", result(0, 0.6))
    save(runs / "copy-of-a", result(0, 0.6))  # the same run id: a copied folder
    save(runs / "b", result(1, 0.8))
    old = {k: v for k, v in result(2, 0.7).items() if k != "run_id"}  # before run ids
    save(runs / "old", old)
    save(runs / "old-copy", old)
    out = tmp_path / "out"
    assert report_main([str(runs), "--out", str(out)]) == 0
    with (out / "report.csv").open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert (row["n"], row["seeds"]) == ("3", "0 1 2")
    md = (out / "report.md").read_text()
    assert "2 copies of run run0 counted once" in md
    assert "2 copies of content" in md and "old-copy" in md
    assert "2 copies of run run0 counted once" in capsys.readouterr().out


# --- 3. never mix settings or data in one cell -----------------------------------------------
def test_different_settings_split_the_cell_and_block_the_verdict():
    cass = [result(0, 0.9, settings_digest="a" * 64), result(0, 0.5, settings_digest="b" * 64,
                                                            run_id="b0"),
            result(1, 0.8, settings_digest="a" * 64)]  # fmt: skip
    dino = [result(s, 0.6, settings_digest="c" * 64, run_id=f"d{s}") for s in (0, 1)]
    rows = aggregate(labelled(cass, "cass"))
    assert sorted((r["settings"][:1], r["n"]) for r in rows) == [("a", 2), ("b", 1)]
    assert all(r["split"] == "cell split: 2 settings" for r in rows)
    assert not any(r["n"] == 3 for r in rows)
    found = verdicts(labelled(cass, "cass") + labelled(dino, "dino"), lambda d: "f1_macro",
                     others=("dino",))  # fmt: skip
    (comparison,) = found
    assert comparison.outcome == "no verdict" and comparison.n == 0
    assert "cell split: 2 settings" in comparison.words()


def test_runs_from_different_weights_files_are_never_averaged():
    """Results from before settings digests: the weights' sha256 in results.json decides."""
    runs = [result(0, 0.9, weights_loaded={"sha256": "1" * 64}),
            result(0, 0.5, weights_loaded={"sha256": "2" * 64}, run_id="other")]  # fmt: skip
    rows = aggregate(labelled(runs))
    assert [r["n"] for r in rows] == [1, 1] and rows[0]["settings"] != rows[1]["settings"]


def test_two_datasets_of_one_name_land_in_separate_tables(tmp_path):
    eight = [result(s, 0.5, num_classes=8, run_id=f"e{s}") for s in (0, 1)]
    three = [result(s, 0.9, num_classes=3, run_id=f"t{s}") for s in (0, 1)]
    results, notes = prepare(labelled(eight + three))
    assert len({r["dataset"] for r in results}) == 2
    assert notes and "2 different datasets are named mine" in notes[0]
    rows = aggregate(labelled(eight + three))
    assert sorted(r["mean"] for r in rows) == [0.5, 0.9] and all(r["n"] == 2 for r in rows)
    fingerprinted = [
        result(0, 0.5, data_fingerprint={"sha256": "f" * 64}, run_id="x"),
        result(1, 0.6, data_fingerprint={"sha256": "e" * 64}, run_id="y"),
    ]
    assert len(aggregate(labelled(fingerprinted))) == 2  # same name and classes, other files


# --- 5. CSV formula cells --------------------------------------------------------------------
def test_a_name_that_could_be_a_formula_is_refused_before_any_csv_is_written(tmp_path, capsys):
    """CSV cells are neutralised when written (tests/unit/test_csv_cells.py); a name read from a
    results file is refused before that: it could be a formula or a row of its own."""
    name = '=HYPERLINK("http://x","click")'
    runs = [result(s, 0.7 + s / 100, dataset=name, run_id=f"c{s}") for s in range(2)]
    with pytest.raises(ValueError, match="dataset must be a name of letters"):
        write_study_report(labelled(runs, "cass"), [], tmp_path / "study")
    assert not (tmp_path / "study").exists()
    runs_dir = tmp_path / "runs"
    for s, r in enumerate(runs):
        save(runs_dir / str(s), r)
    assert report_main([str(runs_dir), "--out", str(tmp_path / "plain")]) == 1
    assert "dataset must be a name of letters" in capsys.readouterr().err
    assert not (tmp_path / "plain").exists()


# --- 6. disk full / file limits --------------------------------------------------------------
def _refuse(number: int):
    def write(*args: Any, **kwargs: Any) -> None:
        raise OSError(number, "refused")

    return write


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EFBIG])
def test_a_refused_write_leaves_no_report_folder_and_names_the_file(
    tmp_path, capsys, monkeypatch, number
):
    runs = tmp_path / "runs"
    for s in range(2):
        save(runs / str(s), result(s, 0.7))
    monkeypatch.setattr("cass_lightning.report.writer.plot", _refuse(number))  # after the CSV
    out = tmp_path / "out" / "report-2"
    assert report_main([str(runs), "--out", str(out)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert str(out / "report.png") in line and errno.errorcode[number] in line
    assert not out.exists() and list((tmp_path / "out").iterdir()) == []  # no temp folder


def test_a_full_disk_midway_through_the_study_report_leaves_nothing(tmp_path, monkeypatch):
    from cass_lightning.io import WriteRefusedError

    per_class = {"f1": [0.5, 0.6, 0.7], "support": [2, 2, 2]}
    runs = [result(s, 0.7, run_id=f"c{s}", per_class=per_class, classes=["a", "b", "c"])
            for s in range(2)]  # fmt: skip
    monkeypatch.setattr("cass_lightning.report.study.plot_per_class_f1", _refuse(errno.ENOSPC))
    out = tmp_path / "study" / "report"
    with pytest.raises(WriteRefusedError, match=r"per_class_f1_mine_finetune_100pct\.png"):
        write_study_report(labelled(runs, "cass"), [], out)
    assert list((tmp_path / "study").iterdir()) == []


# --- 7. a class with no test samples ---------------------------------------------------------
def test_macro_f1_over_the_classes_evaluated_is_said(tmp_path):
    per_class = {"f1": [0.8, None, 0.6], "support": [4, 0, 5]}
    runs = [result(s, 0.7, per_class=per_class, run_id=f"k{s}") for s in range(2)]
    (row,) = aggregate(labelled(runs))
    assert row["classes_evaluated"] == "2 of 3"
    md = write_study_report(labelled(runs), [], tmp_path / "r")["study.md"].read_text()
    assert "0.7000 ± 0.0000 (2) over 2 of 3 classes" in md


# --- 3/4. the dataset fingerprint and the study's data check ---------------------------------
def _folder_dataset(root: Path, per_class: int) -> None:
    from data_fixtures import image

    for cls in ("benign", "malignant"):
        for i in range(per_class):
            image(root / cls / f"{cls}_{i}.png", size=(12, 10), seed=i)


def test_the_fingerprint_changes_with_the_files_and_not_otherwise(tmp_path):
    import os

    from cass_lightning.data.fingerprint import dataset_fingerprint
    from cass_lightning.data.layouts import build_index

    root = tmp_path / "data"
    _folder_dataset(root, 3)
    first = dataset_fingerprint(build_index("image_folder", root))
    assert first == dataset_fingerprint(build_index("image_folder", root))
    assert first["files"] == 6 and first["classes"] == ["benign", "malignant"]
    file = root / "benign" / "benign_0.png"
    stat = file.stat()
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    touched = dataset_fingerprint(build_index("image_folder", root))
    assert touched["sha256"] != first["sha256"]
    _folder_dataset(root, 4)
    assert dataset_fingerprint(build_index("image_folder", root))["files"] == 8


def test_a_changed_dataset_stops_the_study_by_name(tmp_path):
    from app_helpers import compose_app
    from cass_lightning.apps.study.app import settings_from
    from cass_lightning.apps.study.data import DATA_FILES, data_check_folder

    root = tmp_path / "mine"
    _folder_dataset(root, 3)
    overrides = [
        "study=smoke",
        "data=image_folder",
        f"data.root={root}",
        'study.overrides.data=["data.num_workers=0"]',
    ]
    cfg = compose_app(tmp_path, overrides, config_name="study")
    study_dir = tmp_path / "study"
    settings = settings_from(cfg, overrides, study_dir)
    folder = data_check_folder(settings, study_dir)
    assert folder is not None and (folder / DATA_FILES).is_file()
    (folder / "data_report.json").write_text(json.dumps({"problems": []}))  # the check passed
    assert data_check_folder(settings, study_dir) is None  # same files: no new check
    _folder_dataset(root, 5)  # images added to both classes between two invocations
    with pytest.raises(ValueError, match=r"4 file\(s\) added \(benign/benign_3\.png, .*"
                                         r"start a new study"):  # fmt: skip
        data_check_folder(settings, study_dir)


def test_a_robustness_point_of_two_settings_is_shown_split():
    from cass_lightning.report import grids, table_rows

    point = {"batch_size": 8, "epochs": 50}
    runs = [result(0, 0.6, pretrain=point, settings_digest="a" * 64, run_id="g0"),
            result(1, 0.9, pretrain=point, settings_digest="b" * 64, run_id="g1")]  # fmt: skip
    ((_, grid),) = grids(table_rows(labelled(runs, "cass"))).items()
    (row,) = grid["cnn"]["cass"].values()
    assert row["mean"] is None and row["split_count"] == 2
