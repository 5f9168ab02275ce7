"""cass-report on synthetic results.json files: labels, exact aggregates, files, refusals."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from cass_lightning.apps.report import main
from cass_lightning.report import (
    REPORT_FILES,
    aggregate,
    collect_results,
    fraction_label,
    method_of,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def export(folder: Path, method: str | None) -> Path:
    """A fake export: only meta.json matters to the report (CASS's carries no method key)."""
    folder.mkdir(parents=True)
    meta: dict[str, Any] = {"format": "cass-lightning-export/1"}
    if method is not None:
        meta["method"] = method
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def run(folder: Path, *, value: float | None, init: str = "random", weights: Any = None,
        arm: str = "cnn", fraction: float = 1.0, seed: int = 0, mode: str = "finetune",
        dataset: str = "synthetic") -> Path:  # fmt: skip
    """One results.json as cass-finetune writes it, with a known test/f1_macro."""
    folder.mkdir(parents=True)
    result = {
        "arm": arm, "mode": mode, "init": init, "weights": weights, "dataset": dataset,
        "label_fraction": fraction, "seed": seed, "test_split": "val",
        "metrics": {"test/f1_macro": value, "test/loss": 1.0},
    }  # fmt: skip
    (folder / "results.json").write_text(json.dumps(result))
    return folder


@pytest.fixture
def runs(tmp_path) -> Path:
    """CASS (export and checkpoint), DINO, ImageNet and random runs with known numbers."""
    cass = export(tmp_path / "exports" / "cass", None)
    dino = export(tmp_path / "exports" / "dino", "dino")
    root = tmp_path / "runs"
    run(root / "a" / "0", value=0.5, init="export", weights=str(cass), fraction=0.1, seed=0)
    run(root / "a" / "1", value=0.7, init="export", weights=str(cass), fraction=0.1, seed=1)
    run(root / "a" / "2", value=0.8, init="checkpoint", weights="x.ckpt", fraction=1.0)
    run(root / "b" / "0", value=0.2, init="export", weights=str(dino), arm="vit", seed=0)
    run(root / "b" / "1", value=0.3, init="export", weights=str(dino), arm="vit", seed=1)
    run(root / "b" / "2", value=0.4, init="export", weights=str(dino), arm="vit", seed=2)
    run(root / "c" / "deep" / "0", value=0.6, init="imagenet", weights="r.safetensors",
        fraction=0.01)  # fmt: skip
    run(root / "c" / "1", value=0.1, init="random", fraction=0.01)
    return root


def test_methods_are_labelled_from_init_and_export_meta(runs, tmp_path):
    results = collect_results([runs])
    assert len(results) == 8
    by_file = {Path(r["results_file"]).parent.relative_to(runs.resolve()).as_posix(): r["method"]
               for r in results}  # fmt: skip
    assert by_file == {"a/0": "cass", "a/1": "cass", "a/2": "cass", "b/0": "dino", "b/1": "dino",
                       "b/2": "dino", "c/deep/0": "imagenet", "c/1": "random"}  # fmt: skip
    # Overlapping folders do not count a run twice.
    assert len(collect_results([runs, runs / "a"])) == 8
    with pytest.raises(FileNotFoundError, match=r"gone.*meta\.json"):
        method_of({"init": "export", "weights": str(tmp_path / "gone")})
    with pytest.raises(ValueError, match="unknown init"):
        method_of({"init": "magic"})


def test_the_method_comes_from_results_json_when_exports_moved_or_deleted(tmp_path, capsys):
    root = tmp_path / "runs"
    export_dir = export(tmp_path / "exports" / "dino", "dino")
    for seed, recorded in ((0, "dino"), (1, "DINO")):  # a label, as in older files: its name
        folder = run(root / str(seed), value=0.5, init="export", weights=str(export_dir),
                     arm="vit", seed=seed)  # fmt: skip
        saved = json.loads((folder / "results.json").read_text())
        (folder / "results.json").write_text(json.dumps({**saved, "method": recorded}))
    export_dir.rename(tmp_path / "moved")  # results.json still names the method
    assert [r["method"] for r in collect_results([root])] == ["dino", "dino"]
    assert main([str(root), "--out", str(tmp_path / "out")]) == 0
    with (tmp_path / "out" / "report.csv").open() as fh:
        assert {r["method"] for r in csv.DictReader(fh)} == {"dino"}
    capsys.readouterr()
    assert method_of({"method": "SimSiam", "init": "export"}) == "simsiam"
    with pytest.raises(ValueError, match=r"unknown method 'swav'.*the run \(x\)"):
        method_of({"method": "swav", "init": "export"}, Path("x"))
    with pytest.raises(FileNotFoundError, match="earlier version"):  # no method, no export
        method_of({"init": "export", "weights": str(export_dir)})


def test_aggregates_are_exact(runs):
    rows = aggregate(collect_results([runs]), "f1_macro")
    table = {(r["method"], r["arm"], r["label_fraction"]): r for r in rows}
    assert list(table) == [("cass", "cnn", 0.1), ("cass", "cnn", 1.0), ("dino", "vit", 1.0),
                           ("imagenet", "cnn", 0.01), ("random", "cnn", 0.01)]  # fmt: skip
    cass = table["cass", "cnn", 0.1]
    assert cass["mean"] == pytest.approx(0.6) and cass["std"] == pytest.approx(math.sqrt(0.02))
    assert (cass["n"], cass["seeds"], cass["metric"]) == (2, "0 1", "test/f1_macro")
    assert table["cass", "cnn", 1.0]["std"] == 0.0 and table["cass", "cnn", 1.0]["n"] == 1
    dino = table["dino", "vit", 1.0]
    assert dino["mean"] == pytest.approx(0.3) and dino["std"] == pytest.approx(0.1)
    assert dino["n"] == 3 and dino["test_split"] == "val"
    assert aggregate(collect_results([runs]), "test/f1_macro") == rows  # prefix optional


def test_report_files_hold_the_numbers(runs, tmp_path):
    rows = aggregate(collect_results([runs]), "f1_macro")
    paths = write_report(rows, tmp_path / "out", "f1_macro")
    assert sorted(p.name for p in paths.values()) == sorted(REPORT_FILES)

    with paths["csv"].open() as fh:
        saved = list(csv.DictReader(fh))
    assert len(saved) == len(rows) == 5
    cass = next(r for r in saved if (r["method"], r["label_fraction"]) == ("cass", "0.1"))
    assert float(cass["mean"]) == pytest.approx(0.6)
    assert float(cass["std"]) == pytest.approx(math.sqrt(0.02))
    assert (cass["n"], cass["n_missing"], cass["arm"], cass["dataset"]) == ("2", "0", "cnn",
                                                                           "synthetic")  # fmt: skip

    md = paths["md"].read_text()
    assert "| method | arm | 1% | 10% | 100% |" in md
    assert "| CASS | cnn | - | 0.6000 ± 0.1414 (2) | 0.8000 (1) |" in md
    assert "| DINO | vit | - | - | 0.3000 ± 0.1000 (3) |" in md
    assert "| ImageNet | cnn | 0.6000 (1) | - | - |" in md
    assert "| Random | cnn | 0.1000 (1) | - | - |" in md

    png = paths["png"].read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 1000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 0 and height > 0


def test_non_finite_runs_are_counted_not_averaged(tmp_path):
    run(tmp_path / "0", value=0.4, seed=0)
    run(tmp_path / "1", value=None, seed=1)
    run(tmp_path / "2", value=None, seed=0, fraction=0.1)
    rows = aggregate(collect_results([tmp_path]))
    full = next(r for r in rows if r["label_fraction"] == 1.0)
    assert (full["mean"], full["std"], full["n"], full["n_missing"]) == (0.4, 0.0, 1, 1)
    empty = next(r for r in rows if r["label_fraction"] == 0.1)
    assert (empty["mean"], empty["n"], empty["n_missing"]) == (None, 0, 1)
    md = write_report(rows, tmp_path / "out")["md"].read_text()
    assert "| Random | cnn | - (1 without a value) | 0.4000 (1; 1 missing) |" in md


def test_refuses_to_overwrite_a_report(runs, tmp_path):
    rows = aggregate(collect_results([runs]))
    out = tmp_path / "out"
    write_report(rows, out)
    before = {name: (out / name).read_bytes() for name in REPORT_FILES}
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_report(rows, out)
    (out / "report.csv").unlink()  # any one of the files left is enough to refuse
    with pytest.raises(FileExistsError, match=r"report\.md"):
        write_report(rows, out)
    assert {n: (out / n).read_bytes() for n in REPORT_FILES[1:]} == {
        n: before[n] for n in REPORT_FILES[1:]
    }


def test_no_results_and_unknown_metrics_are_named(tmp_path, runs):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no results\.json found under .*empty"):
        collect_results([empty])
    with pytest.raises(FileNotFoundError, match=r"not a folder.*nowhere"):
        collect_results([tmp_path / "nowhere"])
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "results.json").write_text(json.dumps({"method": "CASS", "metrics": {}}))
    with pytest.raises(ValueError, match=r"stray.*lacks init, arm.*not a cass-finetune"):
        collect_results([stray])
    with pytest.raises(KeyError, match="has no test/auroc"):
        aggregate(collect_results([runs]), "auroc")


def test_cli_writes_next_to_the_first_folder_and_reports_errors(runs, tmp_path, capsys):
    assert main([str(runs / "a"), str(runs / "b")]) == 0
    out = runs / "a" / "report"
    assert all((out / name).is_file() for name in REPORT_FILES)
    printed = capsys.readouterr().out
    assert "| DINO | vit |" in printed and "6 runs in 3 rows" in printed
    assert main([str(runs / "a")]) == 1  # the report is already there: a refusal
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main([str(runs), "--out", str(tmp_path / "other"), "--metric", "loss"]) == 0
    assert "test/loss" in (tmp_path / "other" / "report.md").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 1
    assert "no results.json found" in capsys.readouterr().err


def test_fraction_labels_read_as_percent():
    assert [fraction_label(f) for f in (0.01, 0.1, 1.0, 0.5, 0.005)] == [
        "1%", "10%", "100%", "50%", "0.5%",
    ]  # fmt: skip


def test_robustness_grid_runs_are_rows_of_their_own(tmp_path):
    run(tmp_path / "main", value=0.5, seed=0)
    for i, (batch, value) in enumerate(((8, 0.2), (8, 0.4), (32, 0.9))):
        folder = run(tmp_path / f"grid{i}", value=value, seed=i)
        result = json.loads((folder / "results.json").read_text())
        result["pretrain"] = {"batch_size": batch, "epochs": 50}
        (folder / "results.json").write_text(json.dumps(result))
    rows = aggregate(collect_results([tmp_path]))
    got = [(r["pretrain_batch_size"], r["pretrain_epochs"], r["mean"], r["n"]) for r in rows]
    assert got == [(None, None, 0.5, 1), (8, 50, pytest.approx(0.3), 2), (32, 50, 0.9, 1)]
    paths = write_report(rows, tmp_path / "out")
    md = paths["md"].read_text()
    assert "| Random | cnn | 0.5000 (1) |" in md
    assert "| Random (batch 8, 50 epochs) | cnn | 0.3000 ± 0.1414 (2) |" in md
    with paths["csv"].open() as fh:
        saved = list(csv.DictReader(fh))
    assert [(r["pretrain_batch_size"], r["pretrain_epochs"]) for r in saved] == [
        ("", ""), ("8", "50"), ("32", "50"),
    ]  # fmt: skip


def test_cli_writes_a_study_report_with_verdicts(runs, tmp_path, capsys):
    out = tmp_path / "study"
    assert main([str(runs), "--out", str(out), "--study"]) == 0
    assert {"study.md", "report.csv", "verdicts.csv", "fractions.png"} <= {
        p.name for p in out.iterdir()
    }
    printed = capsys.readouterr().out
    # CASS-CNN (seeds 0, 1 at 10%) has no DINO-CNN run to pair with: said, not hidden.
    assert "CASS-CNN vs DINO-CNN at 10% labels: DINO-CNN missing (no runs at 10% labels)" in printed
    assert "No pretraining costs were given" in printed
    assert main([str(runs), "--out", str(out), "--study"]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
