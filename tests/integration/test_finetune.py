"""Fine-tuning: ClassifierModule's init paths and modes, and the cass-finetune app end to end."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from cass_lightning import CASSModule
from cass_lightning.apps.finetune import RESULTS_FILE, finetune, plain_config
from cass_lightning.apps.run.common import CONFIG_DIR
from cass_lightning.encoders import create_timm_model
from cass_lightning.export import export_module
from cass_lightning.losses import sigmoid_focal_loss
from cass_lightning.modules.arm_source import parse_weights
from cass_lightning.modules.classifier import ClassifierModule
from cass_lightning.modules.metrics import METRIC_NAMES
from cass_lightning.report.identity import settings_digest, weights_hashes
from data_fixtures import autoimmune

TINY_CASS = dict(cnn="resnet10t", vit="vit_tiny_patch16_224", img_size=32, head_dim=32)
RESULT_KEYS = {
    "arm", "mode", "init", "weights", "label_fraction", "seed", "dataset", "metrics",
    "best_checkpoint", "epochs_run", "test_split", "img_size", "timm_name",
}  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> dict:
    """A tiny CASS model after one step: its export folder and its Lightning checkpoint."""
    root = tmp_path_factory.mktemp("cass")
    torch.manual_seed(0)
    model = CASSModule(**TINY_CASS, pretrained=False)
    trainer = L.Trainer(max_steps=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root)  # fmt: skip
    trainer.fit(model, DataLoader(torch.randn(4, 3, 32, 32), batch_size=4))
    ckpt = root / "cass.ckpt"
    trainer.save_checkpoint(ckpt)
    export = export_module(model, root / "export", source="test")
    return {"model": model, "export": export, "ckpt": ckpt}


def backbone_state(module: torch.nn.Module, head: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of a timm model outside its classifier head."""
    (prefix,) = [f"{name}." for name, m in module.named_modules() if m is head]
    return {
        k: v.detach().clone() for k, v in module.state_dict().items() if not k.startswith(prefix)
    }


# ------------------------------------------------------------------------- init paths
@pytest.mark.parametrize("init", ["export", "checkpoint"])
@pytest.mark.parametrize("arm", ["cnn", "vit"])
def test_pretrained_arms_load_with_a_fresh_head(pretrained, arm, init):
    weights = pretrained["export" if init == "export" else "ckpt"]
    model = ClassifierModule(arm=arm, init=init, weights=str(weights), num_classes=3)
    source = getattr(pretrained["model"], arm).state_dict()
    got = backbone_state(model.backbone, model.head)
    assert got and all(torch.equal(v, source[k]) for k, v in got.items())
    assert model.head.out_features == 3
    assert model.hparams.timm_name == TINY_CASS[arm] and model.hparams.img_size == 32
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_imagenet_weights_file_and_random_init(tmp_path):
    reference = create_timm_model("resnet10t", num_classes=1000)
    file = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(file))
    model = ClassifierModule(init="imagenet", weights=str(file), timm_name="resnet10t",
                             num_classes=4)  # fmt: skip
    source = reference.state_dict()
    got = backbone_state(model.backbone, model.head)
    assert all(torch.equal(v, source[k]) for k, v in got.items())
    assert model.head.out_features == 4
    random = ClassifierModule(init="random", timm_name="resnet10t", num_classes=4)
    assert not torch.equal(random.backbone.conv1[0].weight, model.backbone.conv1[0].weight)


def test_saved_classifier_reloads_without_its_original_weights(pretrained, tmp_path):
    model = ClassifierModule(arm="vit", init="export", weights=str(pretrained["export"]),
                             num_classes=3)  # fmt: skip
    trainer = L.Trainer(max_steps=0, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    again = ClassifierModule.load_from_checkpoint(
        tmp_path / "c.ckpt", init="random", weights=None, weights_only=True
    )
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again.eval()(x), model.eval()(x))


def test_bad_weights_are_named(pretrained, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"export folder not found.*nowhere"):
        ClassifierModule(init="export", weights=str(missing))
    with pytest.raises(FileNotFoundError, match=r"meta\.json"):
        ClassifierModule(init="export", weights=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"CASS checkpoint not found.*x\.ckpt"):
        ClassifierModule(init="checkpoint", weights=str(tmp_path / "x.ckpt"))
    garbage = tmp_path / "bad.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"bad\.ckpt"):
        ClassifierModule(init="checkpoint", weights=str(garbage))
    with pytest.raises(FileNotFoundError, match=r"weights_file not found.*w\.safetensors"):
        ClassifierModule(init="imagenet", weights=str(tmp_path / "w.safetensors"),
                         timm_name="resnet10t")  # fmt: skip
    with pytest.raises(ValueError, match="must follow the weights"):
        ClassifierModule(arm="vit", init="export", weights=str(pretrained["export"]), img_size=64)
    with pytest.raises(ValueError, match="set weights="):
        parse_weights(None, None)


# ------------------------------------------------------------------------ losses, args
def test_loss_choices_match_their_definitions():
    logits = torch.randn(6, 3)
    targets = torch.tensor([0, 1, 2, 2, 1, 0])
    onehot = F.one_hot(targets, 3).float()
    weights = [0.2, 1.0, 0.6]
    w = torch.tensor(weights)

    def module(loss: str, multi_label: bool = False) -> ClassifierModule:
        return ClassifierModule(
            init="random", timm_name="resnet10t", num_classes=3, loss=loss,
            class_weights=weights, multi_label=multi_label,
        )  # fmt: skip

    torch.testing.assert_close(
        module("ce").compute_loss(logits, targets), F.cross_entropy(logits, targets, weight=w)
    )
    torch.testing.assert_close(
        module("bce").compute_loss(logits, targets),
        F.binary_cross_entropy_with_logits(logits, onehot, weight=w),
    )
    torch.testing.assert_close(
        module("focal").compute_loss(logits, targets), sigmoid_focal_loss(logits, onehot, weight=w)
    )
    torch.testing.assert_close(
        module("focal", multi_label=True).compute_loss(logits, onehot),
        sigmoid_focal_loss(logits, onehot, weight=w),
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(loss="ce", multi_label=True), "multi-class"),
        (dict(class_weights=[1.0, 2.0]), "2 entries for 3 classes"),
        (dict(monitor="val/balanced_acc", multi_label=True), "monitor must be one of"),
        (dict(mode="probe"), "mode must be one of"),
        (dict(arm="mlp"), "arm must be one of"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassifierModule(init="random", timm_name="resnet10t", num_classes=3, **kwargs)


# ------------------------------------------------------------------------------- modes
def fit_steps(model: ClassifierModule, steps: int = 2) -> None:
    data = TensorDataset(torch.randn(8, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    trainer = L.Trainer(max_steps=steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        limit_val_batches=0)  # fmt: skip
    trainer.fit(model, DataLoader(data, batch_size=4))


def test_linear_mode_trains_only_the_head_and_keeps_batchnorm_statistics():
    model = ClassifierModule(init="random", timm_name="resnet10t", num_classes=3, mode="linear",
                             optimizer={"lr": 1e-2})  # fmt: skip
    before = backbone_state(model.backbone, model.head)
    head_before = model.head.weight.detach().clone()
    assert any(k.endswith("running_mean") for k in before)
    fit_steps(model)
    after = backbone_state(model.backbone, model.head)
    assert all(torch.equal(after[k], v) for k, v in before.items())  # weights and BN stats
    assert not torch.equal(model.head.weight, head_before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"backbone.fc.weight", "backbone.fc.bias"}


def test_finetune_mode_updates_the_backbone():
    model = ClassifierModule(init="random", timm_name="resnet10t", num_classes=3)
    before = backbone_state(model.backbone, model.head)
    fit_steps(model)
    after = backbone_state(model.backbone, model.head)
    changed = [k for k, v in before.items() if not torch.equal(after[k], v)]
    assert any("conv1" in k and k.endswith("weight") for k in changed)
    assert any(k.endswith("running_mean") for k in changed)


# ---------------------------------------------------------------------------- the app
@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def compose_cfg(tmp_path: Path, overrides: list[str], run: str = "run") -> DictConfig:
    """Compose like the app does, with run and data folders inside tmp_path."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="finetune",
            return_hydra_config=True,
            overrides=[f"paths.data_dir={tmp_path / 'data'}", *overrides],
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / run)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


TINY_APP = [
    "data.images_per_class=4", "data.val_images_per_class=2", "data.image_size=32",
    "data.batch_size=8", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]  # fmt: skip


def test_config_is_the_papers_protocol(tmp_path):
    cfg = compose_cfg(tmp_path, [])
    m = cfg.model
    assert (m.optimizer.name, m.optimizer.lr, m.scheduler.name, m.scheduler.t_max) == (
        "adam", 3e-4, "cyclic_cosine", 16,
    )  # fmt: skip
    assert (m.loss, m.focal_alpha, m.focal_gamma, cfg.data.class_weight) == (
        "focal", 1.0, 2.0, "paper",
    )  # fmt: skip
    assert (cfg.trainer.max_epochs, cfg.data.batch_size, cfg.data.img_size) == (50, 16, 384)
    assert m.monitor == cfg.early_stopping.monitor == "val/f1_macro"


def test_weights_setting_picks_the_init():
    assert parse_weights("random", "x.pth") == ("random", None)
    assert parse_weights("imagenet", "x.pth") == ("imagenet", "x.pth")
    assert parse_weights("runs/a/last.ckpt", None) == ("checkpoint", "runs/a/last.ckpt")
    assert parse_weights("runs/a/export", None) == ("export", "runs/a/export")


@pytest.mark.parametrize(("arm", "source", "mode"), [("vit", "export", "finetune"),
                                                     ("cnn", "ckpt", "linear")])  # fmt: skip
def test_finetune_from_pretrained_weights_end_to_end(tmp_path, pretrained, arm, source, mode):
    weights = pretrained[source]
    cfg = compose_cfg(tmp_path, [*TINY_APP, f"arm={arm}", f"mode={mode}", f"weights={weights}",
                                 "model.img_size=224"])  # fmt: skip
    result = finetune(cfg)
    saved = json.loads((tmp_path / "run" / RESULTS_FILE).read_text())
    assert set(saved) >= RESULT_KEYS
    init = "export" if source == "export" else "checkpoint"
    assert (saved["arm"], saved["init"], saved["mode"]) == (arm, init, mode)
    assert saved["weights"] == str(weights) and saved["timm_name"] == TINY_CASS[arm]
    loaded = saved["weights_loaded"]  # the file the backbone came from, and its digest
    file = Path(weights) / f"{arm}.safetensors" if source == "export" else Path(weights)
    assert loaded["init"] == init and loaded["file"] == str(file.resolve())
    assert loaded["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert saved["img_size"] == 32  # followed the pretraining size, not model.img_size
    assert saved["test_split"] == "val"  # the synthetic set has no test split
    assert (saved["dataset"], saved["label_fraction"], saved["seed"]) == ("synthetic", 1.0, 0)
    assert saved["epochs_run"] == 2 and Path(saved["best_checkpoint"]).is_file()
    expected = {"test/loss", *(f"test/{m}" for m in METRIC_NAMES["multiclass"])}
    assert expected <= set(saved["metrics"])
    assert all(math.isfinite(v) for v in saved["metrics"].values())
    assert result["metrics"] == saved["metrics"]
    header = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss_epoch", "train/f1_macro", "val/f1_macro", "val/balanced_acc"} <= set(header)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        finetune(compose_cfg(tmp_path, [*TINY_APP, f"weights={pretrained['export']}"]))


def test_imagenet_weights_file_is_checked_and_recorded(tmp_path):
    """`weights=imagenet model.weights_file=...`: a file whose keys do not fit once loaded
    nothing (timm's loose load for a new head) and the run said init: imagenet."""
    reference = create_timm_model("resnet10t")
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    prefixed = tmp_path / "prefixed.safetensors"
    save_file({f"backbone.{k}": v for k, v in state.items()}, str(prefixed))
    base = [*TINY_APP, "weights=imagenet", "model.timm_name=resnet10t", "model.img_size=32",
            "trainer.max_epochs=1"]  # fmt: skip
    with pytest.raises(ValueError, match=r"prefixed\.safetensors does not fit"):
        finetune(compose_cfg(tmp_path, [*base, f"model.weights_file={prefixed}"], run="bad"))
    assert not (tmp_path / "bad" / RESULTS_FILE).exists()
    good = tmp_path / "resnet10t.safetensors"
    save_file(state, str(good))
    finetune(compose_cfg(tmp_path, [*base, f"model.weights_file={good}"]))
    saved = json.loads((tmp_path / "run" / RESULTS_FILE).read_text())
    # What a report groups by: the run's id, its settings (not its seed) and its data's files.
    assert len(saved["run_id"]) == 32 and int(saved["run_id"], 16) >= 0
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert saved["data_fingerprint"] == report["fingerprint"]
    assert saved["data_fingerprint"]["files"] > 0 and len(saved["data_fingerprint"]["sha256"]) == 64
    hashes = weights_hashes(saved)
    assert hashes == [hashlib.sha256(good.read_bytes()).hexdigest()]
    other_seed = compose_cfg(tmp_path, [*base, f"model.weights_file={good}", "seed=5"], run="s5")
    assert settings_digest(plain_config(other_seed), hashes) == saved["settings_digest"]
    other_lr = compose_cfg(tmp_path, [*base, f"model.weights_file={good}",
                                      "model.optimizer.lr=0.1"], run="lr")  # fmt: skip
    assert settings_digest(plain_config(other_lr), hashes) != saved["settings_digest"]
    assert settings_digest(plain_config(other_seed), ["0" * 64]) != saved["settings_digest"]
    loaded = saved["weights_loaded"]
    assert loaded["file"] == str(good) and loaded["init"] == "file"
    assert loaded["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
    assert loaded["keys_loaded"] == len(state) - 2 and set(loaded["keys_adapted"]) == {
        "fc.weight", "fc.bias"
    }  # fmt: skip
    assert loaded["head"] == "fresh (6 classes)"


def test_multi_label_run_through_the_autoimmune_layout(tmp_path):
    labels = ["['DM']", "['PM']", "['IBM', 'DM']", "['NORMAL']", "['PM', 'IBM']"]
    rows = [(f"b{i:03d}.png", labels[i % len(labels)]) for i in range(30)]
    autoimmune(tmp_path / "data" / "autoimmune", rows=rows)
    cfg = compose_cfg(tmp_path, [
        "data=autoimmune", "data.val_fraction=0.2", "data.test_fraction=0.2", "data.batch_size=4",
        "data.num_workers=0", "weights=random", "model.timm_name=resnet10t", "model.img_size=32",
        "mode=linear", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
    ])  # fmt: skip
    result = finetune(cfg)
    assert result["multi_label"] is True and result["test_split"] == "test"
    assert result["num_classes"] == 4 and result["init"] == "random"
    assert {f"test/{m}" for m in METRIC_NAMES["multilabel"]} <= set(result["metrics"])
    assert math.isfinite(result["metrics"]["test/f1_macro"])
    # per-class scores, and no confusion matrix (it has no meaning with several labels)
    assert result["confusion"] is None
    assert result["classes"] == ["DM", "IBM", "NORMAL", "PM"]
    per_class = result["per_class"]
    assert len(per_class["f1"]) == len(per_class["support"]) == 4
    assert sum(per_class["support"]) >= 6  # the 6 test images carry at least one label each
    assert all(f is None or 0.0 <= f <= 1.0 for f in per_class["f1"])
    assert result["label_seed"] == cfg.data.label_seed


def test_a_missing_export_fails_before_any_data_is_built(tmp_path):
    cfg = compose_cfg(tmp_path, [*TINY_APP, f"weights={tmp_path / 'gone'}"])
    with pytest.raises(FileNotFoundError, match="gone"):
        finetune(cfg)
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_sweep_runs_each_point_in_its_own_folder(tmp_path, pretrained):
    env = {**os.environ, "WANDB_MODE": "disabled", "CASS_DATA_ROOT": str(tmp_path / "data"),
           "CASS_OUTPUT_ROOT": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    args = ["-m", "arm=cnn,vit", "seed=0", f"weights={pretrained['export']}", *TINY_APP,
            "trainer.max_epochs=1"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "cass_lightning.apps.finetune", *args],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "runs" / "finetune" / "multirun").iterdir()
    results = sorted(sweep.glob(f"*/{RESULTS_FILE}"))
    assert [p.parent.name.split(",")[0] for p in results] == ["0_arm=cnn", "1_arm=vit"]
    assert all("weights=" not in p.parent.name for p in results)  # no path in folder names
    assert [json.loads(p.read_text())["arm"] for p in results] == ["cnn", "vit"]


def _as_slurm_start(monkeypatch, restart: int) -> None:
    """This process as start ``restart`` of SLURM batch job 77 (what a requeue changes)."""
    for key, value in {"SLURM_JOB_ID": "77", "ENVIRONMENT": "BATCH", "SLURM_PROCID": "0",
                       "SLURM_RESTART_COUNT": str(restart)}.items():  # fmt: skip
        monkeypatch.setenv(key, value)


@pytest.fixture
def _usr_handlers_kept():
    """A run in a SLURM job leaves SIGUSR1/SIGUSR2 ignored: given back to pytest after."""
    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


def test_a_requeued_finetune_job_keeps_its_results_or_its_cut_short_attempt(
    tmp_path, pretrained, monkeypatch, _usr_handlers_kept
):
    overrides = [*TINY_APP, "trainer.max_epochs=1", f"weights={pretrained['export']}"]
    _as_slurm_start(monkeypatch, 0)
    first = finetune(compose_cfg(tmp_path, overrides))
    run = tmp_path / "run"
    assert json.loads((run / "job.json").read_text())["restart"] == 0
    written = (run / RESULTS_FILE).read_bytes()
    # requeued after it had finished (e.g. a warning signal during the test): nothing redone
    _as_slurm_start(monkeypatch, 1)
    again = finetune(compose_cfg(tmp_path, overrides))
    assert again["run_id"] == first["run_id"] and (run / RESULTS_FILE).read_bytes() == written
    assert not (run / "attempts").exists()
    # requeued with its work cut short (no results): the attempt is kept aside, run again
    (run / RESULTS_FILE).rename(tmp_path / "results-of-first.json")
    third = finetune(compose_cfg(tmp_path, overrides))
    kept = run / "attempts" / "requeued-1"
    assert (kept / "job.json").is_file() and (kept / "checkpoints").is_dir()
    assert third["run_id"] != first["run_id"] and (run / RESULTS_FILE).is_file()
    assert json.loads((run / "job.json").read_text())["restart"] == 1


@pytest.mark.parametrize(("arm", "expected"), [("cnn", "resnet10t"),
                                               ("vit", "vit_tiny_patch16_224")])  # fmt: skip
def test_debug_tiny_names_each_arms_baseline_encoder_as_in_pretraining(tmp_path, arm, expected):
    cfg = compose_cfg(tmp_path, ["debug=tiny", f"arm={arm}", "weights=random",
                                 "trainer.enable_progress_bar=false"])  # fmt: skip
    assert (cfg.trainer.max_epochs, cfg.model.img_size, cfg.data.batch_size) == (1, 32, 8)
    saved = finetune(cfg)
    assert (saved["arm"], saved["timm_name"], saved["img_size"]) == (arm, expected, 32)
    # model.timm_name still names it for either arm
    other = compose_cfg(tmp_path, ["debug=tiny", f"arm={arm}", "weights=random",
                                   "model.timm_name=resnet18"], run="named")  # fmt: skip
    assert read_arm_source_name(other) == "resnet18"


def read_arm_source_name(cfg: DictConfig) -> str:
    """The encoder ``cass-finetune`` would build for ``cfg`` (read before any data is built)."""
    from cass_lightning.apps.finetune import baseline_name

    return baseline_name(cfg, "random")
