"""The method family: the registry, the method recorded in checkpoints and exports, the
callbacks' protocol on every method, a toy method registered here end to end, and the two-view
one-arm methods (BYOL, SimSiam, SimCLR)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor

from app_helpers import compose_app
from cass_lightning.apps.export import export_checkpoint
from cass_lightning.apps.finetune import RESULTS_FILE, finetune
from cass_lightning.apps.pretrain import pretrain
from cass_lightning.apps.report import main as report_main
from cass_lightning.callbacks import OnlineEvaluation
from cass_lightning.data import SyntheticDataModule
from cass_lightning.export import load_backbone, read_meta
from cass_lightning.modules import pretraining_module_for
from cass_lightning.modules.byol import BYOLModule
from cass_lightning.modules.dino import DINOModule
from cass_lightning.modules.legacy import stored_hparams
from cass_lightning.modules.one_arm import OneArmMethod
from cass_lightning.modules.registry import (
    ONE,
    Method,
    get_method,
    method_names,
    name_of,
    recorded_method,
    register,
    unregister,
)
from cass_lightning.report import collect_results

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY_ENCODERS = dict(cnn="resnet10t", vit="vit_tiny_patch16_224", img_size=32)


# ------------------------------------------------------------------------ the registry
def test_registry_lists_every_method_and_refuses_unknown_names():
    assert method_names()[:5] == ("cass", "dino", "byol", "simsiam", "simclr")
    assert method_names()[-2:] == ("imagenet", "random")
    assert get_method("dino").exported_arms("vit") == ("vit",)
    assert get_method("cass").exported_arms() == ("cnn", "vit")
    assert not get_method("imagenet").pretrains
    with pytest.raises(ValueError, match="unknown method 'swav'"):
        get_method("swav")
    with pytest.raises(ValueError, match="already registered"):
        register(Method("cass", "CASS again"))


def test_old_files_are_labelled_by_the_legacy_rule_and_new_ones_by_their_record():
    assert recorded_method({"head": "logits"}) == "cass"  # an export from before the key
    assert recorded_method({"global_crops": 2, "arm": "vit"}) == "dino"
    assert recorded_method({"method": "BYOL", "global_crops": 2}) == "byol"  # recorded wins
    with pytest.raises(ValueError, match="unknown method 'swav'"):
        recorded_method({"method": "swav"})


def test_a_display_label_read_back_maps_to_its_registry_name():
    assert [name_of(t) for t in ("SimSiam", "simclr", "CASS", "ImageNet")] == [
        "simsiam", "simclr", "cass", "imagenet"]  # fmt: skip
    register(Method("barlow_twins", "Barlow Twins"))  # a label that is not its name
    try:
        assert name_of("Barlow Twins") == name_of("barlow_twins") == "barlow_twins"
        assert recorded_method({"method": "Barlow Twins"}) == "barlow_twins"
    finally:
        unregister("barlow_twins")
    with pytest.raises(ValueError, match="unknown method 'CASS \\(notebook"):
        name_of("CASS (notebook gradients)")


@pytest.mark.parametrize(
    ("fixture", "method"), [("legacy_cass.ckpt", "cass"), ("legacy_dino.ckpt", "dino")]
)
def test_legacy_checkpoints_load_with_their_method_named(fixture, method):
    path = FIXTURES / fixture  # committed with the tests (tests/fixtures/README.md)
    hp = stored_hparams(path)
    assert "method" not in hp  # written before the method was recorded
    module = pretraining_module_for(hp)
    assert module.method == method
    model = module.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert model.hparams["method"] == method
    assert model.exportable()[1]["method"] == method


# --------------------------------------------------- the protocol, on DINO as on CASS
@pytest.fixture
def synthetic(tmp_path):
    return SyntheticDataModule(tmp_path, images_per_class=6, val_images_per_class=2,
                               image_size=16, img_size=32, batch_size=6,
                               label_fraction=0.5)  # fmt: skip


def test_online_probe_and_knn_readings_in_a_dino_run(tmp_path):
    data = SyntheticDataModule(tmp_path / "d", images_per_class=6, val_images_per_class=2,
                               image_size=16, img_size=32, batch_size=6, label_fraction=0.5,
                               train_views="dino")  # fmt: skip
    model = DINOModule(arm="cnn", **TINY_ENCODERS, head={"dim": 32, "hidden_dim": 32,
                                                          "bottleneck_dim": 8})  # fmt: skip
    online = OnlineEvaluation(every_n_epochs=1, k=5)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[online])  # fmt: skip
    trainer.fit(model, datamodule=data)
    metrics = trainer.callback_metrics
    for key in ("probe/cnn_val_acc", "knn/cnn_val_acc", "probe/cnn_train_loss"):
        assert key in metrics, key
    assert "probe/vit_val_acc" not in metrics  # DINO trained only the CNN
    assert 0.0 <= float(metrics["knn/cnn_val_acc"]) <= 1.0
    assert model.hparams["method"] == "dino"


# --------------------------------------------------- a toy method, registered only here
class ToyModule(OneArmMethod):
    """One arm pushed to spread its pooled features over the batch (not a real method): all a
    new method must write is its loss (docs/extending.md)."""

    method = "toy"
    method_name = "Toy"

    def training_loss(self, views: list[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        z = self.backbone(views[0])
        return -F.normalize(z, dim=1).std(dim=0).mean(), {self.hparams.arm: z}


@pytest.fixture
def toy_method():
    register(Method("toy", "Toy", f"{__name__}:ToyModule", None, ONE))
    yield get_method("toy")
    unregister("toy")


@pytest.mark.slow
def test_a_registered_toy_method_pretrains_exports_finetunes_and_is_reported(
    toy_method, synthetic, tmp_path
):
    model = toy_method.module_class()(arm="cnn", **TINY_ENCODERS)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    synthetic.setup("fit")
    trainer.fit(model, synthetic.train_dataloader())  # no datamodule hparams in the checkpoint
    trainer.save_checkpoint(tmp_path / "toy.ckpt")
    hp = stored_hparams(tmp_path / "toy.ckpt")
    assert hp["method"] == "toy" and pretraining_module_for(hp) is ToyModule
    export = model.export(tmp_path / "export")
    assert read_meta(export)["method"] == "toy"
    assert load_backbone(export, "cnn").num_features == model.backbone.num_features
    cfg = compose_app(tmp_path, [
        "data=synthetic", "data.images_per_class=3", "data.val_images_per_class=1",
        "data.image_size=16", "data.batch_size=6", "data.num_workers=0", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", f"weights={export}", "arm=cnn", "logger=csv",
    ], config_name="finetune", output_dir=tmp_path / "ft")  # fmt: skip
    finetune(cfg)
    results = collect_results([tmp_path / "ft"])
    assert [r["method"] for r in results] == ["toy"]
    assert json.loads((tmp_path / "ft" / RESULTS_FILE).read_text())["method"] == "toy"
    assert report_main([str(tmp_path / "ft"), "--out", str(tmp_path / "report")]) == 0
    assert "| Toy | cnn |" in (tmp_path / "report" / "report.md").read_text()  # its label


# ---------------------------------------------- BYOL, SimSiam, SimCLR: one arm, two views
SMALL_HEADS = {
    "byol": {"hidden_dim": 32, "dim": 16, "predictor_hidden_dim": 32},
    "simsiam": {"hidden_dim": 32, "dim": 16, "predictor_hidden_dim": 8},
    "simclr": {"hidden_dim": 32, "dim": 16, "temperature": 0.2},
}


@pytest.mark.parametrize("method", ["byol", "simsiam", "simclr"])
def test_two_view_methods_train_one_arm_and_export_it(method):
    model = get_method(method).module_class()(arm="cnn", **TINY_ENCODERS,
                                              head=SMALL_HEADS[method])  # fmt: skip
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    loss = model.training_step((views, torch.zeros(4, dtype=torch.long)), 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    if method != "simclr":
        assert -1.0 <= float(loss.detach()) <= 1.0  # a negative cosine
    loss.backward()
    assert model.backbone.conv1[0].weight.grad is not None
    targets = [m for n, m in model.named_children() if n.startswith("target_")]
    assert all(p.grad is None for t in targets for p in t.parameters())
    assert bool(targets) == (method == "byol")  # only BYOL has a momentum target
    arms, meta = model.exportable()
    assert list(arms) == ["cnn"] and meta["method"] == method
    assert model.hparams["method"] == method and model.data_views() == "pair"
    assert {g["name"] for g in model.param_groups()} == {"cnn", "cnn_no_decay"}
    with pytest.raises(ValueError, match="two views"):
        model.training_step(torch.randn(4, 3, 32, 32), 0)
    with pytest.raises(ValueError, match=r"model\.head has unknown key"):
        get_method(method).module_class()(arm="cnn", **TINY_ENCODERS, head={"widht": 8})


def test_simsiam_stops_the_gradient_on_the_projection_side():
    """SimSiam's one guard against collapse: each view's projection is a target with no
    gradient; the loss reaches the projection head only through the predictions."""
    model = get_method("simsiam").module_class()(arm="cnn", **TINY_ENCODERS,
                                                 head=SMALL_HEADS["simsiam"])  # fmt: skip
    x0, x1 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    params = list(model.projection_head.parameters())

    def grads(stop: bool | None) -> list[Tensor]:
        if stop is None:
            loss = model.training_loss([x0, x1])[0]
        else:
            z0, z1 = model(x0), model(x1)
            p0, p1 = model.prediction_head(z0), model.prediction_head(z1)
            t0, t1 = (z0.detach(), z1.detach()) if stop else (z0, z1)
            loss = 0.5 * (model.criterion(p0, t1) + model.criterion(p1, t0))
        return torch.autograd.grad(loss, params)

    module, stopped, unstopped = grads(None), grads(True), grads(False)
    assert all(torch.allclose(a, b) for a, b in zip(module, stopped, strict=True))
    assert not all(torch.allclose(a, b) for a, b in zip(module, unstopped, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "arm"), [("byol", "cnn"), ("byol", "vit"), ("simsiam", "cnn"), ("simclr", "vit")]
)
def test_two_view_methods_through_the_apps_pretrain_export_finetune(method, arm, tmp_path):
    small = [f"model.head.{k}={v}" for k, v in SMALL_HEADS[method].items()]
    cfg = compose_app(tmp_path, [f"model={method}", f"model.arm={arm}", "debug=tiny",
                                 "print_config=false", "rich_progress_bar=false",
                                 "trainer.max_epochs=2", *small])  # fmt: skip
    assert cfg.data.train_views is None  # the app asks the model: two views per image
    result = pretrain(cfg)
    assert (result["method"], result["method_label"]) == (method, get_method(method).label)
    assert math.isfinite(result["metrics"]["train/loss_epoch"])
    assert f"train/{arm}_std_epoch" in result["metrics"]  # the collapse reading
    meta = read_meta(result["export_dir"])
    other = "vit" if arm == "cnn" else "cnn"
    assert meta["method"] == method and arm in meta and other not in meta
    again = export_checkpoint(result["last_checkpoint"], tmp_path / "export-last")  # cass-export
    assert read_meta(again)["method"] == method and other not in read_meta(again)
    ft = compose_app(tmp_path, [
        "data=synthetic", "data.images_per_class=3", "data.val_images_per_class=1",
        "data.image_size=32", "data.batch_size=6", "data.num_workers=0", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", f"weights={result['export_dir']}", f"arm={arm}",
        "logger=csv",
    ], config_name="finetune", output_dir=tmp_path / "ft")  # fmt: skip
    finetune(ft)
    assert [r["method"] for r in collect_results([tmp_path / "ft"])] == [method]


# ------------------------------------------------------------- the "best" checkpoint
@pytest.mark.slow
def test_best_checkpoint_follows_the_probe_or_is_absent_with_the_reason(tmp_path):
    base = ["debug=tiny", "print_config=false", "rich_progress_bar=false", "trainer.max_epochs=2"]
    result = pretrain(compose_app(tmp_path / "a", base, output_dir=tmp_path / "a" / "run"))
    assert Path(result["best_checkpoint"]).is_file() and result["best_reason"] is None
    best = torch.load(result["best_checkpoint"], map_location="cpu", weights_only=False)
    (state,) = [v for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert state["monitor"] == "probe/cnn_val_acc"
    off = [*base, "~callbacks.online_evaluation"]
    result = pretrain(compose_app(tmp_path / "b", off, output_dir=tmp_path / "b" / "run"))
    summary = json.loads((tmp_path / "b" / "run" / "summary.json").read_text())
    assert summary["best_checkpoint"] is None
    assert "no online evaluation" in summary["best_reason"]
    assert sorted(p.name for p in (tmp_path / "b" / "run" / "checkpoints").iterdir()) == [
        "last.ckpt"
    ]


def test_pretrain_takes_the_views_the_model_declares_and_refuses_others():
    from cass_lightning.apps.pretrain import data_views

    model = BYOLModule(arm="cnn", **TINY_ENCODERS, head={"hidden_dim": 8, "dim": 8,
                                                         "predictor_hidden_dim": 8})  # fmt: skip
    assert data_views(model) == data_views(model, "pair") == "pair"
    with pytest.raises(
        ValueError, match=r"BYOL needs data\.train_views=pair, but data\.train_views=paper is set"
    ):
        data_views(model, "paper")


@pytest.mark.parametrize("method", ["cass", "dino", "byol", "simsiam", "simclr"])
def test_pretrain_gives_the_data_the_models_size_and_normalisation_and_refuses_others(
    tmp_path, method
):
    from cass_lightning.apps.pretrain import data_inputs

    cfg = compose_app(tmp_path, ["debug=tiny", f"model={method}"])
    model = instantiate(cfg.model)
    size = model.hparams.img_size
    assert data_inputs(model, cfg.data) == {
        "img_size": size, "mean": list(cfg.data.mean), "std": list(cfg.data.std),
    }  # fmt: skip
    wrong = compose_app(tmp_path, ["debug=tiny", f"model={method}", f"data.img_size={size + 16}"])
    with pytest.raises(ValueError, match=rf"data\.img_size={size + 16} but the \w+ model is "
                                         rf"built for img_size={size}"):  # fmt: skip
        data_inputs(model, wrong.data)
    other = compose_app(tmp_path, ["debug=tiny", f"model={method}", "data.std=[0.5,0.5,0.5]"])
    with pytest.raises(ValueError, match=r"data\.std=\[0\.5, 0\.5, 0\.5\] but"):
        data_inputs(instantiate(compose_app(tmp_path, ["debug=tiny", f"model={method}"]).model),
                    other.data)  # fmt: skip


# ------------------------------------------------------ the report of three methods
def _export(folder: Path, method: str | None) -> Path:
    folder.mkdir(parents=True)
    meta = {"format": "cass-lightning-export/1", **({"method": method} if method else {})}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def _result(folder: Path, weights: Path, arm: str, seed: int, value: float) -> None:
    folder.mkdir(parents=True)
    (folder / RESULTS_FILE).write_text(json.dumps({
        "arm": arm, "mode": "finetune", "init": "export", "weights": str(weights),
        "dataset": "synthetic", "label_fraction": 1.0, "seed": seed, "test_split": "val",
        "metrics": {"test/f1_macro": value, "test/loss": 1.0},
    }))  # fmt: skip


def test_a_report_of_cass_dino_and_byol_labels_and_compares_each(tmp_path):
    from cass_lightning.report.costs import cost_rows
    from cass_lightning.report.table import row_name
    from cass_lightning.report.verdict import compared_methods, verdicts

    exports = {m: _export(tmp_path / "exports" / str(m), m) for m in ("cass", "dino", "byol")}
    exports["old-cass"] = _export(tmp_path / "exports" / "old", None)  # no method: legacy CASS
    for name, base in [("cass", 0.7), ("dino", 0.5), ("byol", 0.6)]:
        for seed in range(3):
            _result(tmp_path / "runs" / name / str(seed), exports[name], "cnn", seed,
                    base + 0.01 * seed)  # fmt: skip
    _result(tmp_path / "runs" / "old" / "0", exports["old-cass"], "vit", 0, 0.4)
    results = collect_results([tmp_path / "runs"])
    labels = {Path(r["results_file"]).parent.parent.name: r["method"] for r in results}
    assert labels == {"cass": "cass", "dino": "dino", "byol": "byol", "old": "cass"}
    assert row_name("byol", "cnn") == "BYOL-CNN"
    others = compared_methods({r["method"] for r in results})
    assert others == ("dino", "byol", "imagenet") and compared_methods() == ("dino", "imagenet")
    found = verdicts(results, lambda _: "f1_macro", others=others)
    byol = [c for c in found if c.other == "byol" and c.arm == "cnn"]
    assert len(byol) == 1 and byol[0].n == 3  # three seeds paired, CASS against BYOL
    costs = [{"method": m, "arm": a, "fit_seconds": s, "epochs": 2, "batch_size": 8,
              "dataset": "synthetic"}
             for m, a, s in [("cass", "both", 10.0), ("byol", "cnn", 4.0)]]  # fmt: skip
    assert [r["method"] for r in cost_rows(costs)] == ["cass", "byol"]


def test_each_method_declares_its_arms_views_and_idle_parameters():
    from cass_lightning.modules.cass import CASSModule

    small = dict(**TINY_ENCODERS, head_dim=8, projector_hidden_dim=8)
    cass = CASSModule(**small, remedies={"predictor": "alternate", "predictor_hidden_dim": 8,
                                         "two_views": True})  # fmt: skip
    assert (cass.trained_arms(), cass.data_views(), cass.has_idle_parameters()) == (
        ("cnn", "vit"), "pair", True)  # fmt: skip
    assert cass.best_monitor() == "probe/cnn_val_acc"
    dino = DINOModule(arm="vit", **TINY_ENCODERS, head={"dim": 8, "hidden_dim": 8,
                                                        "bottleneck_dim": 8})  # fmt: skip
    assert (dino.trained_arms(), dino.data_views(), dino.has_idle_parameters()) == (
        ("vit",), "dino", False)  # fmt: skip
    assert dino.best_monitor() == "probe/vit_val_acc"
    assert dino.arm_backbone("vit") is dino.student_backbone
    with pytest.raises(KeyError, match="trains the vit arm, not cnn"):
        dino.arm_backbone("cnn")


# ------------------------------------------------------- the base: one place for the settings
def _saved(model: L.LightningModule, path: Path) -> Path:
    trainer = L.Trainer(max_steps=0, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


def test_the_base_checks_the_shared_settings_and_refuses_what_no_method_takes(tmp_path):
    simsiam = get_method("simsiam").module_class()
    head = SMALL_HEADS["simsiam"]
    with pytest.raises(TypeError, match=r"SimSiamModule\(\) got unexpected argument.*'arn'"):
        simsiam(arn="cnn", **TINY_ENCODERS, head=head)
    with pytest.raises(ValueError, match=r"model\.img_size must be an integer >= 1; got 0"):
        simsiam(arm="cnn", **{**TINY_ENCODERS, "img_size": 0}, head=head)
    with pytest.raises(ValueError, match=r"model\.cnn_kwargs must be a mapping"):
        simsiam(arm="cnn", **TINY_ENCODERS, cnn_kwargs="drop_path_rate=0.1", head=head)
    with pytest.raises(ValueError, match=r"model\.arm must be one of cnn, vit"):
        simsiam(arm="both", **TINY_ENCODERS, head=head)
    with pytest.raises(ValueError, match=r"model\.optimizer\.lr must be > 0"):
        simsiam(arm="cnn", **TINY_ENCODERS, head=head, optimizer={"lr": 0})
    with pytest.raises(ValueError, match=r"model\.head\.momentum start <= end"):
        BYOLModule(arm="cnn", **TINY_ENCODERS, head={**SMALL_HEADS["byol"], "momentum_end": 0.5})
    model = simsiam(arm="cnn", **TINY_ENCODERS, head=head, batch_lr_factor=0.5)
    assert model.learning_rate() == pytest.approx(5e-4)  # CASS's lr 1e-3, times the factor
    assert [g["lr"] for g in model.param_groups()] == pytest.approx([5e-4, 5e-4])

    # A checkpoint loads with its own method only; stored names no method takes are ignored
    # with a warning (they were dropped silently before the method was recorded).
    path = _saved(model, tmp_path / "simsiam.ckpt")
    again = simsiam.load_from_checkpoint(path, weights_only=True)
    assert again.hparams.batch_lr_factor == 0.5 and again.head_cfg == model.head_cfg
    with pytest.raises(ValueError, match=r"records method 'simsiam', not 'simclr'"):
        get_method("simclr").module_class().load_from_checkpoint(path, weights_only=True)
    state = torch.load(path, weights_only=True)
    state["hyper_parameters"]["channels_last"] = True  # an old name: upgraded, no word
    state["hyper_parameters"]["colour"] = "blue"
    torch.save(state, tmp_path / "extra.ckpt")
    with pytest.warns(UserWarning, match=r"\['colour'\] are no argument of SimSiamModule"):
        simsiam.load_from_checkpoint(tmp_path / "extra.ckpt", weights_only=True)


def test_the_online_probe_reads_the_first_views_features_of_each_batch():
    model = get_method("simclr").module_class()(arm="cnn", **TINY_ENCODERS,
                                                head=SMALL_HEADS["simclr"])  # fmt: skip
    model.eval()
    first, second = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    model.on_train_batch_start(None, 0)
    model.training_loss([first, second])
    with torch.no_grad():
        expected = model.backbone.forward_head(model.backbone.forward_features(first), True)
    torch.testing.assert_close(model.pooled_features("cnn"), expected)
    model.on_validation_batch_start(None, 0)
    assert model.pooled_features("cnn") is None  # each batch starts clean
    model.validation_step(second, 0)  # no loss of its own, but the backbone runs for the probe
    assert model.pooled_features("cnn").shape == (4, model.backbone.num_features)
