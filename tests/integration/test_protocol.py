"""The paper's whole protocol in miniature: pretrain CASS and DINO, fine-tune, report.

Tiny encoders on the default synthetic data, one epoch each: what this checks is that the apps
fit together (exports feed cass-finetune, its results.json files feed cass-report, the methods
come out labelled), not the numbers.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from app_helpers import compose_app
from cass_lightning.apps.finetune import finetune
from cass_lightning.apps.pretrain import pretrain
from cass_lightning.apps.report import main as report_main

QUIET = ["print_config=false", "trainer.enable_progress_bar=false"]
DINO_HEAD = ["model.head.dim=32", "model.head.hidden_dim=64", "model.head.bottleneck_dim=16"]
TINY_FINETUNE = [
    "data.images_per_class=4", "data.val_images_per_class=2", "data.image_size=32",
    "data.batch_size=8", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
]  # fmt: skip
FRACTIONS = (0.5, 1.0)


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.mark.slow
def test_pretrain_finetune_report_end_to_end(tmp_path):
    exports = {}
    for method, overrides in {"cass": [], "dino": ["model=dino", *DINO_HEAD]}.items():
        cfg = compose_app(tmp_path, [*overrides, "debug=tiny", "rich_progress_bar=false", *QUIET],
                          output_dir=tmp_path / "pretrain" / method)  # fmt: skip
        exports[method] = pretrain(cfg)["export_dir"]
        assert exports[method] and Path(exports[method], "meta.json").is_file()

    arms = {"cass": ("cnn", "vit"), "dino": ("vit",)}  # DINO trains one arm: the ViT by default
    finetuned = tmp_path / "finetune"
    for method, method_arms in arms.items():
        for arm in method_arms:
            for fraction in FRACTIONS:
                cfg = compose_app(
                    tmp_path,
                    [*TINY_FINETUNE, *QUIET, f"weights={exports[method]}", f"arm={arm}",
                     f"data.label_fraction={fraction}"],
                    config_name="finetune",
                    output_dir=finetuned / f"{method}_{arm}_{fraction}",
                )  # fmt: skip
                result = finetune(cfg)
                assert (result["arm"], result["init"]) == (arm, "export")

    for fraction in FRACTIONS:  # the no-pretraining baseline, labelled from init alone
        cfg = compose_app(
            tmp_path,
            [*TINY_FINETUNE, *QUIET, "weights=random", "arm=cnn", "model.timm_name=resnet10t",
             "model.img_size=32", f"data.label_fraction={fraction}"],
            config_name="finetune",
            output_dir=finetuned / f"random_cnn_{fraction}",
        )  # fmt: skip
        assert finetune(cfg)["init"] == "random"

    assert report_main([str(finetuned)]) == 0
    out = finetuned / "report"
    assert all((out / name).stat().st_size > 0 for name in ("report.csv", "report.md",
                                                            "report.png"))  # fmt: skip
    with (out / "report.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    got = {(r["method"], r["arm"], float(r["label_fraction"])) for r in rows}
    expected = {(m, a, f) for m, method_arms in {**arms, "random": ("cnn",)}.items()
                for a in method_arms for f in FRACTIONS}  # fmt: skip
    assert got == expected and len(rows) == len(expected)
    assert all(r["n"] == "1" and r["dataset"] == "synthetic" for r in rows)
    assert {r["metric"] for r in rows} == {"test/f1_macro"}
    md = (out / "report.md").read_text()
    assert "| method | arm | 50% | 100% |" in md
    for method, arm in (("CASS", "cnn"), ("CASS", "vit"), ("DINO", "vit"), ("Random", "cnn")):
        assert f"| {method} | {arm} |" in md
