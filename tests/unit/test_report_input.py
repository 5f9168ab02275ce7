"""The report prints only what its input says: names that could make a row of their own,
arms, modes, counts and budgets that no run writes are refused by name; a seed run twice is
named, never two seeds; a verdict needs the same encoders, resolution and pretraining; a
dataset keeps its metric when its files split it; linked run folders are read."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from cass_lightning.report import compare, table_rows, write_study_report
from cass_lightning.report.collect import collect_results
from cass_lightning.report.identity import prepare
from cass_lightning.report.validate import ResultsFileError, check_result, load_result


def res(method: str, seed: int, value: float, **extra: Any) -> dict[str, Any]:
    return {
        "dataset": "brain_mri", "method": method, "arm": "cnn", "mode": "finetune",
        "label_fraction": 0.1, "seed": seed, "label_seed": seed, "test_split": "test",
        "num_classes": 3, "multi_label": False, "run_id": f"{method}{seed}", "init": "random",
        "metrics": {"test/f1_macro": value, "test/balanced_acc": value}, **extra,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dataset": "mine\n| CASS-CNN | 0.99 |"}, "dataset must be a name of letters"),
        ({"arm": "cnn|x"}, "arm must be a name of letters"),
        ({"arm": "resnet"}, "arm is 'resnet', not one of cnn, vit"),
        ({"mode": "xyz"}, "mode is 'xyz', not one of finetune, linear"),
        ({"per_class": {"f1": [0.5], "support": [2.5]}}, r"per_class.support holds 2\.5"),
        ({"confusion": [[3, -1], [0, 2]]}, "confusion must hold counts"),
        ({"pretrain": {"batch_size": 8.9, "epochs": 5}}, r"pretrain.batch_size must be a whole"),
        ({"classes": ["a|b", "c"]}, "classes must be names without line breaks, pipes"),
        ({"img_size": "224"}, "img_size must be a whole number"),
    ],
)
def test_a_value_no_run_writes_is_refused_by_key(change, message):
    check_result(res("cass", 0, 0.5), "ok.json")
    with pytest.raises(ResultsFileError, match=f"bad.json: {message}"):
        check_result({**res("cass", 0, 0.5), **change}, "bad.json")


def test_a_results_file_nested_too_deeply_is_named(tmp_path):
    (tmp_path / "results.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ResultsFileError, match=r"is not a valid results\.json .nested deeper than"):
        load_result(tmp_path / "results.json")


def test_a_seed_run_twice_is_named_and_counted_once():
    twice = [res("cass", 0, 0.6), {**res("cass", 0, 0.8), "run_id": "other"}, res("cass", 1, 0.7)]
    kept, notes = prepare(twice)
    assert [r["run_id"] for r in kept] == ["cass0", "cass1"]
    assert notes == [
        "seed 0 of cass cnn (finetune, fraction 0.1) was run 2 times: run cass0 (?), run other "
        "(?); counted once (the first), not as independent seeds"
    ]
    (row,) = [r for r in table_rows(twice) if r["method"] == "cass"]
    assert row["n"] == 2 and row["mean"] == pytest.approx(0.65)


def test_a_verdict_needs_the_same_encoders_resolution_and_pretraining():
    small = {"timm_name": "resnet10t", "img_size": 32}
    large = {"timm_name": "resnet50", "img_size": 224}
    runs = [res("cass", s, 0.9, **small) for s in range(3)]
    runs += [res("dino", s, 0.5, **large) for s in range(3)]
    kw = {"dataset": "brain_mri", "mode": "finetune", "arm": "cnn", "label_fraction": 0.1,
          "metric": "f1_macro"}  # fmt: skip
    verdict = compare(runs, "dino", **kw)
    assert verdict.outcome == "no verdict" and verdict.n == 0
    assert verdict.words() == (
        "CASS-CNN vs DINO-CNN at 10% labels: not comparable, other encoders: CASS-CNN "
        "resnet10t, DINO-CNN resnet50: no verdict"
    )
    assert verdict.short() == "no verdict (not comparable: other encoders)"
    same = [*runs[:3], *(res("dino", s, 0.5, **small) for s in range(3))]
    assert compare(same, "dino", **kw).outcome == "better"
    wider = [{**r, "img_size": 64} if r["method"] == "dino" else r for r in same]
    assert "not comparable, other resolution: CASS-CNN 32, DINO-CNN 64" in compare(
        wider, "dino", **kw).words()  # fmt: skip
    budget = {"batch_size": 16, "epochs": 100}
    longer = [{**r, "pretrain_budget": {**budget, "epochs": 300 if r["method"] == "dino"
                                        else 100}} for r in same]  # fmt: skip
    assert "other pretraining budget" in compare(longer, "dino", **kw).words()
    equal = [{**r, "pretrain_budget": budget} for r in same]
    assert compare(equal, "dino", **kw).outcome == "better"
    imagenet = [*equal[:3], *(res("imagenet", s, 0.5, **small) for s in range(3))]
    assert compare(imagenet, "imagenet", **kw).outcome == "better"  # no budget: not held


def test_a_dataset_split_by_its_files_keeps_its_metric():
    runs = [res("cass", 0, 0.5, dataset="ISIC2019", layout="isic2019",
                data_fingerprint={"sha256": "a" * 64}),
            res("cass", 0, 0.4, dataset="ISIC2019", layout="isic2019",
                data_fingerprint={"sha256": "b" * 64}, run_id="x"),
            res("cass", 0, 0.3, dataset="scans", layout="isic2019", run_id="y")]  # fmt: skip
    rows = table_rows(prepare(runs)[0])
    assert {r["dataset"]: r["metric"] for r in rows} == {
        "ISIC2019 [data aaaaaaaa]": "test/balanced_acc",
        "ISIC2019 [data bbbbbbbb]": "test/balanced_acc",
        "scans": "test/balanced_acc",  # named otherwise, read as its layout says
    }


def test_run_folders_reached_through_links_are_read_and_loops_end(tmp_path):
    store = tmp_path / "store" / "run1"
    store.mkdir(parents=True)
    (store / "results.json").write_text(json.dumps({**res("random", 0, 0.5), "init": "random"}))
    runs = tmp_path / "runs"
    runs.mkdir()
    os.symlink(tmp_path / "store", runs / "linked")
    os.symlink(runs, runs / "loop")
    (found,) = collect_results([runs])
    assert found["results_file"] == str((store / "results.json").resolve())


def test_a_study_report_with_a_repeated_seed_says_so_in_study_md(tmp_path):
    runs = [res("cass", s, 0.7) for s in range(2)] + [res("dino", s, 0.6) for s in range(2)]
    runs.append({**res("cass", 0, 0.9), "run_id": "again"})
    paths = write_study_report(runs, [], tmp_path / "report")
    text = paths["study.md"].read_text()
    assert "seed 0 of cass cnn (finetune, fraction 0.1) was run 2 times" in text
