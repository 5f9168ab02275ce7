"""Frozen-feature quality after CASS and DINO, against fair random and supervised starting points.

On the repo's synthetic set (6 classes), split by class: 3 classes give a labelled "supervised
init" (a stand-in for ImageNet weights), the other 3 are where everything is evaluated and where
CASS and DINO train without labels. Every training job gets the same wall budget (``--budget``).

Starting points and methods (one row per arm):

- ``random (timm default)``: untrained, as timm builds it (ResNet ``zero_init_last=True``), its
  BatchNorm statistics left at their initial values: the naive baseline, for contrast only;
- ``random (fair)``: untrained with ``zero_init_last=False`` and BatchNorm running statistics
  re-estimated on the evaluation classes' training images (cumulative average, no gradient);
- ``supervised init``: both arms trained with labels (cross-entropy, fresh head, Adam 1e-3) on
  the other 3 classes for the budget;
- ``CASS``: ``CASSModule`` (paper loss, logits head, Adam 1e-3, cyclic cosine) from either start,
  on the evaluation classes' training images without labels;
- ``DINO``: ``DINOModule`` per arm (small head, 32-true, DINO's lr rule 5e-4 x batch / 256 and
  weight-decay schedule) from either start, same images.

CASS's heads (``--heads``): ``fresh`` (default) gives both arms a fresh random 1000-wide logits
head; ``init`` keeps, for the rows that start from the supervised init, the two classifiers it
trained on the same 3 init classes, so CASS compares logits in one shared label space as the
paper's two ImageNet classifiers do (``head_dim`` = 3). Rows from random init have no trained
classifier to keep and stay fresh.

Every row except the naive one has its BatchNorm statistics re-estimated on the evaluation
classes' training images before it is read. Readings, all in fp32 on frozen pooled features:
weighted kNN (k=20, bank: every training image of the evaluation classes, unaugmented; queries:
their validation images); a linear probe (``LinearProbe``, full batch, on standardised features of
the ``--label-fraction`` labelled training subset); and the collapse signals on the validation
images: the mean cosine between the arms' CASS outputs (CASS logits; for the starting points the
CASS module's untrained heads, i.e. CASS's step 0), and ``normalized_std`` of each arm's
L2-normalised outputs (CASS logits or the DINO head) and of its pooled features. It prints numbers
and asserts nothing.

    .venv/bin/python bench/representation.py                 # ~5-8 minutes on a 2-core CPU
    .venv/bin/python bench/representation.py --budget 20 --only random cass-random
    .venv/bin/python bench/representation.py --heads init --only supervised cass-supervised
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cass_lightning import CASSModule
from cass_lightning.data import SyntheticDataModule
from cass_lightning.data.views import dino_views
from cass_lightning.evaluation import LinearProbe, extract_features, knn_accuracy
from cass_lightning.losses import cosine_similarity, normalized_std
from cass_lightning.modules.dino import DINOModule

SEED = 0
CLASSES = 6  # of the synthetic set
INIT_CLASSES = (0, 1, 2)  # the labelled "pretraining" classes
EVAL_CLASSES = (3, 4, 5)  # where everything trains without labels and is evaluated
ROWS = (
    "random-default",
    "random",
    "supervised",
    "cass-random",
    "cass-supervised",
    "dino-random",
    "dino-supervised",
)
ARMS = ("cnn", "vit")
HEADS = ("fresh", "init")
#: DINO's lr is per 256 images (``model=dino`` sets the same linear rule).
DINO_BASE_BATCH = 256


# --------------------------------------------------------------------------- plumbing
def quiet() -> None:
    """Keep Lightning's info lines and library warnings out of the table."""
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Relabelled(Dataset):
    """A dataset whose integer targets are mapped through ``mapping`` (others become -1)."""

    def __init__(self, base: Dataset, mapping: dict[int, int]) -> None:
        self.base, self.mapping = base, mapping

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image, target = self.base[i]
        return image, self.mapping.get(int(target), -1)


class Data:
    """The synthetic set, split by class into the init part and the evaluation part."""

    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.args = args
        self.dm = SyntheticDataModule(
            root,
            images_per_class=args.images_per_class,
            val_images_per_class=args.val_images_per_class,
            image_size=args.img_size,
            img_size=args.img_size,
            batch_size=args.batch_size,
            label_fraction=args.label_fraction,
            check_images="none",
        )
        self.dm.prepare_data()
        self.dm.setup()
        targets = self.dm.index.targets
        train = self.dm.split_indices("train")
        val = self.dm.split_indices("val")

        def of(indices: np.ndarray, classes: Iterable[int]) -> np.ndarray:
            return indices[np.isin(targets[indices], list(classes))]

        self.init_train = of(train, INIT_CLASSES)
        self.eval_train = of(train, EVAL_CLASSES)
        self.eval_val = of(val, EVAL_CLASSES)
        self.eval_labelled = of(np.asarray(self.dm.labelled), EVAL_CLASSES)
        self.init_map = {c: i for i, c in enumerate(INIT_CLASSES)}
        self.eval_map = {c: i for i, c in enumerate(EVAL_CLASSES)}

    def loader(
        self, indices: np.ndarray, mapping: dict[int, int], train: bool, transform: Any = None
    ) -> DataLoader:
        dataset = Relabelled(self.dm.dataset(indices, train, transform), mapping)
        generator = torch.Generator().manual_seed(SEED)
        return DataLoader(dataset, batch_size=self.args.batch_size, shuffle=train,
                          drop_last=train, num_workers=0, generator=generator)  # fmt: skip

    # What each job reads.
    def init_train_loader(self) -> DataLoader:
        return self.loader(self.init_train, self.init_map, True)

    def cass_loader(self) -> DataLoader:
        return self.loader(self.eval_train, self.eval_map, True)

    def dino_loader(self) -> DataLoader:
        views = dino_views(self.args.img_size, mean=self.dm.mean, std=self.dm.std)
        return self.loader(self.eval_train, self.eval_map, True, views)

    def eval_loader(self, which: str) -> DataLoader:
        indices = {"bank": self.eval_train, "probe": self.eval_labelled, "val": self.eval_val}
        return self.loader(indices[which], self.eval_map, False)


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, loader: DataLoader) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them (cumulative average) from
    train-mode forward passes over ``loader``, without gradients. No-op without BatchNorm."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for images, _ in loader:
            model(images.float())
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)


def transplant(source: dict[str, Tensor], target: nn.Module) -> int:
    """Load every tensor of ``source`` whose name and shape ``target`` shares (the classifier of
    a different width is left out); returns how many were loaded."""
    own = target.state_dict()
    keep = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    target.load_state_dict(keep, strict=False)
    return len(keep)


class BudgetStop(L.Callback):
    """Stops a fit once ``budget`` wall seconds of training have passed; counts the steps."""

    def __init__(self, budget: float) -> None:
        self.budget, self.steps, self.seconds = budget, 0, 0.0
        self._start = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.steps += 1
        self.seconds = time.perf_counter() - self._start
        if self.seconds >= self.budget:
            trainer.should_stop = True


def trainer(max_steps: int, callbacks: list[L.Callback]) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_epochs=-1,
                     max_steps=max_steps, limit_val_batches=0, num_sanity_val_steps=0,
                     logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=callbacks)  # fmt: skip


# ----------------------------------------------------------------------------- models
def cass_module(args: argparse.Namespace, fair: bool = True, head_dim: int = 1000) -> CASSModule:
    """CASS with logits heads of ``head_dim`` (the init's classes when keeping its classifiers)."""
    vit_kwargs = {"patch_size": args.vit_patch_size} if args.vit_patch_size else None
    return CASSModule(cnn=args.cnn, vit=args.vit, img_size=args.img_size, pretrained=False,
                      head_dim=head_dim, cnn_kwargs={"zero_init_last": False} if fair else None,
                      vit_kwargs=vit_kwargs)  # fmt: skip


def load_supervised(
    module: CASSModule, states: dict[str, dict[str, Tensor]], keep_heads: bool
) -> None:
    """Both arms from the supervised init; ``keep_heads``: its classifiers too (the module's
    ``head_dim`` must be their width), else the module's own fresh heads stay."""
    for arm in ARMS:
        loaded = transplant(states[arm], getattr(module, arm))
        if keep_heads and loaded != len(states[arm]):
            raise RuntimeError(
                f"--heads init: the {arm} init did not load whole (its classifier has "
                f"{len(INIT_CLASSES)} classes; build CASS with head_dim={len(INIT_CLASSES)})"
            )


def dino_module(args: argparse.Namespace, arm: str) -> DINOModule:
    kwargs: dict[str, Any] = {"zero_init_last": False} if arm == "cnn" else {}
    if arm == "vit" and args.vit_patch_size:
        kwargs["patch_size"] = args.vit_patch_size
    return DINOModule(arm=arm, cnn=args.cnn, vit=args.vit, img_size=args.img_size,
                      head=dict(dim=args.dino_head_dim, hidden_dim=512, bottleneck_dim=128,
                                batch_norm=arm == "cnn"),
                      batch_lr_factor=args.batch_size / DINO_BASE_BATCH,
                      **{f"{arm}_kwargs": kwargs})  # fmt: skip


def timed_fit(
    make: Callable[[], L.LightningModule],
    loader_fn: Callable[[], DataLoader],
    budget: float,
    calibration: dict[str, float],
    key: str,
    init: Callable[[L.LightningModule], None] | None = None,
) -> tuple[L.LightningModule, BudgetStop]:
    """Fit a fresh module for ``budget`` wall seconds. ``max_steps`` (which sets the schedules)
    comes from a 4-step calibration fit per ``key``; a callback also stops at the budget."""
    if key not in calibration:
        L.seed_everything(SEED, verbose=False)
        probe = BudgetStop(float("inf"))
        times: list[float] = []

        class Clock(L.Callback):
            def on_train_batch_end(self, *a: Any) -> None:
                times.append(time.perf_counter())

        trainer(4, [probe, Clock()]).fit(make(), loader_fn())
        calibration[key] = (times[-1] - times[0]) / max(1, len(times) - 1)
    L.seed_everything(SEED, verbose=False)
    module = make()
    if init is not None:
        init(module)
    stop = BudgetStop(budget)
    max_steps = max(2, int(budget / calibration[key]))
    trainer(max_steps, [stop]).fit(module, loader_fn())
    return module, stop


def supervised_init(
    args: argparse.Namespace, data: Data
) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
    """Both arms trained with labels on the init classes for the budget (together, one step of
    each per batch). Returns the state dicts and a note."""
    L.seed_everything(SEED, verbose=False)
    vit_kwargs = {"patch_size": args.vit_patch_size} if args.vit_patch_size else {}
    models = {
        "cnn": timm.create_model(args.cnn, num_classes=len(INIT_CLASSES), zero_init_last=False),
        "vit": timm.create_model(
            args.vit, num_classes=len(INIT_CLASSES), img_size=args.img_size, **vit_kwargs
        ),
    }
    optims = {a: torch.optim.Adam(m.parameters(), lr=1e-3) for a, m in models.items()}
    loader = data.init_train_loader()
    correct = {a: 0 for a in ARMS}
    seen, steps, start = 0, 0, time.perf_counter()
    done = False
    while not done:
        for images, labels in loader:
            for arm, model in models.items():
                model.train()
                logits = model(images)
                loss = F.cross_entropy(logits, labels)
                optims[arm].zero_grad(set_to_none=True)
                loss.backward()
                optims[arm].step()
                correct[arm] += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            steps += 1
            if time.perf_counter() - start >= args.budget:
                done = True
                break
    note = {"steps": steps, "seconds": time.perf_counter() - start,
            "train_acc": {a: correct[a] / max(1, seen) for a in ARMS}}  # fmt: skip
    return {a: m.state_dict() for a, m in models.items()}, note


# ------------------------------------------------------------------------- evaluation
@torch.no_grad()
def outputs(fn: Callable[[Tensor], Tensor], module: nn.Module, loader: DataLoader) -> Tensor:
    was = module.training
    module.eval()
    try:
        with torch.autocast(device_type="cpu", enabled=False):
            return torch.cat([fn(images.float()).float() for images, _ in loader])
    finally:
        module.train(was)


def probe_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    epochs: int,
    num_classes: int = len(EVAL_CLASSES),
) -> float:
    """A linear probe on standardised features (full batch, Adam 1e-2); test accuracy."""
    torch.manual_seed(SEED)
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    probe = LinearProbe(train_x.shape[1], num_classes, lr=1e-2)
    with torch.enable_grad():
        for _ in range(epochs):
            probe.step((train_x - mean) / std, train_y)
    return float((probe.predict((test_x - mean) / std) == test_y).float().mean())


def evaluate(
    backbone: nn.Module,
    out_fn: Callable[[Tensor], Tensor],
    owner: nn.Module,
    data: Data,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """kNN, probe and spreads of one arm; also returns the validation outputs (for the cosine)."""
    bank_x, bank_y = extract_features(backbone, data.eval_loader("bank"), "cpu")
    probe_x, probe_y = extract_features(backbone, data.eval_loader("probe"), "cpu")
    val_x, val_y = extract_features(backbone, data.eval_loader("val"), "cpu")
    val_out = outputs(out_fn, owner, data.eval_loader("val"))
    return {
        "knn": knn_accuracy(bank_x, bank_y, val_x, val_y, len(EVAL_CLASSES), k=20),
        "probe": probe_accuracy(probe_x, probe_y, val_x, val_y, args.probe_epochs),
        "spread_out": float(normalized_std(val_out)),
        "spread_pooled": float(normalized_std(val_x)),
        "val_out": val_out,
    }


def evaluate_cass(
    start: str, method: str, module: CASSModule, data: Data, args: argparse.Namespace,
    reestimate: bool = True,
) -> list[dict[str, Any]]:  # fmt: skip
    if reestimate:
        reestimate_batchnorm(module.cnn, data.eval_loader("bank"))
    rows = [
        {"start": start, "method": method, "arm": "cnn",
         **evaluate(module.cnn, module.embed_cnn, module, data, args)},
        {"start": start, "method": method, "arm": "vit",
         **evaluate(module.vit, module.embed_vit, module, data, args)},
    ]  # fmt: skip
    cos = float(cosine_similarity(rows[0]["val_out"], rows[1]["val_out"]))
    for row in rows:
        row["cos"] = cos
    return rows


def evaluate_dino(
    start: str, module: DINOModule, data: Data, args: argparse.Namespace
) -> dict[str, Any]:
    reestimate_batchnorm(module.student_backbone, data.eval_loader("bank"))
    row = evaluate(module.student_backbone, module.forward, module, data, args)
    return {"start": start, "method": "DINO", "arm": module.hparams.arm, "cos": None, **row}


# ------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cnn", default="resnet18")
    p.add_argument("--vit", default="vit_tiny_patch16_224")
    p.add_argument(
        "--vit-patch-size",
        type=int,
        default=None,
        help="override the ViT's patch size (default: the model's, 16)",
    )
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--budget", type=float, default=40.0, help="wall seconds per training job")
    p.add_argument("--images-per-class", type=int, default=100, help="training images per class")
    p.add_argument("--val-images-per-class", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--label-fraction", type=float, default=0.1, help="labels the probe sees")
    p.add_argument("--probe-epochs", type=int, default=300, help="full-batch probe steps")
    p.add_argument("--dino-head-dim", type=int, default=1024)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    p.add_argument("--data-dir", type=Path, default=None, help="synthetic images (default: tmp)")
    p.add_argument("--only", nargs="+", choices=ROWS, default=list(ROWS), help="rows to run")
    p.add_argument("--heads", choices=HEADS, default="fresh",
                   help="CASS heads from the supervised init: fresh 1000-wide (default) or its "
                   "trained classifiers")  # fmt: skip
    args = p.parse_args(argv)
    if args.budget <= 0 or args.batch_size < 2 or args.probe_epochs < 1:
        p.error("need --budget > 0, --batch-size >= 2 and --probe-epochs >= 1")
    if args.images_per_class * len(EVAL_CLASSES) < args.batch_size:
        p.error("--images-per-class must give at least one full batch of the 3 classes")
    return args


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    cpu = platform.processor() or platform.machine() or "CPU"
    print(
        f"torch {torch.__version__}, lightning {L.__version__}, timm {timm.__version__} | "
        f"CPU {cpu} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}) | "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    patch = f" (patch {args.vit_patch_size})" if args.vit_patch_size else ""
    print(
        f"{args.cnn} + {args.vit}{patch} at {args.img_size} px | budget {args.budget:g} s per "
        f"job | synthetic: init classes {INIT_CLASSES}, eval classes {EVAL_CLASSES}, "
        f"{args.images_per_class} train / {args.val_images_per_class} val per class | batch "
        f"{args.batch_size} | kNN k=20 on all eval-class train images | probe: "
        f"{args.probe_epochs} full-batch Adam steps on {args.label_fraction:g} of them | CASS "
        f"heads from the supervised init: {args.heads} | fp32",
        flush=True,
    )
    only = set(args.only)
    rows: list[dict[str, Any]] = []
    calibration: dict[str, float] = {}

    def log(text: str) -> None:
        print(f"  [{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {text}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        data = Data(args.data_dir or Path(tmp) / "data", args)
        log(f"data: {len(data.init_train)} init-train, {len(data.eval_train)} eval-train "
            f"({len(data.eval_labelled)} labelled), {len(data.eval_val)} eval-val")  # fmt: skip

        if "random-default" in only:
            L.seed_everything(SEED, verbose=False)
            rows += evaluate_cass("random (timm default)", "-", cass_module(args, fair=False),
                                  data, args, reestimate=False)  # fmt: skip
        if "random" in only:
            L.seed_everything(SEED, verbose=False)
            rows += evaluate_cass("random (fair)", "-", cass_module(args), data, args)

        sup: dict[str, dict[str, Tensor]] | None = None
        if only & {"supervised", "cass-supervised", "dino-supervised"}:
            sup, note = supervised_init(args, data)
            acc = ", ".join(f"{a} {v:.2f}" for a, v in note["train_acc"].items())
            log(f"supervised init: {note['steps']} steps in {note['seconds']:.1f} s "
                f"(running train accuracy {acc})")  # fmt: skip

        def load_sup_cass(module: L.LightningModule) -> None:
            assert sup is not None
            load_supervised(module, sup, keep_heads=args.heads == "init")

        # CASS from the supervised init: its classifiers as the heads with --heads init.
        sup_head_dim = len(INIT_CLASSES) if args.heads == "init" else 1000

        def load_sup_dino(module: L.LightningModule) -> None:
            assert sup is not None
            transplant(sup[module.hparams.arm], module.student_backbone)
            module.teacher_backbone.load_state_dict(module.student_backbone.state_dict())

        if "supervised" in only:
            L.seed_everything(SEED, verbose=False)
            module = cass_module(args, head_dim=sup_head_dim)
            load_sup_cass(module)
            rows += evaluate_cass("supervised init", "-", module, data, args)

        for start, init in (("random", None), ("supervised", load_sup_cass)):
            if f"cass-{start}" not in only:
                continue
            dim = sup_head_dim if start == "supervised" else 1000
            module, stop = timed_fit(lambda d=dim: cass_module(args, head_dim=d),
                                     data.cass_loader, args.budget, calibration, f"cass-{dim}",
                                     init)  # fmt: skip
            log(f"CASS from {start}: {stop.steps} steps in {stop.seconds:.1f} s")
            label = "random (fair)" if start == "random" else "supervised init"
            rows += evaluate_cass(label, "CASS", module, data, args)

        for start, init in (("random", None), ("supervised", load_sup_dino)):
            if f"dino-{start}" not in only:
                continue
            for arm in ARMS:
                module, stop = timed_fit(lambda arm=arm: dino_module(args, arm), data.dino_loader,
                                         args.budget, calibration, f"dino-{arm}", init)  # fmt: skip
                log(f"DINO-{arm} from {start}: {stop.steps} steps in {stop.seconds:.1f} s")
                label = "random (fair)" if start == "random" else "supervised init"
                rows.append(evaluate_dino(label, module, data, args))

    print()
    print("| start | method | arm | kNN | probe | arm cos | spread (out) | spread (pooled) |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = [r["start"], r["method"], r["arm"], f"{r['knn']:.3f}", f"{r['probe']:.3f}",
                 fmt(r["cos"]), f"{r['spread_out']:.4f}", f"{r['spread_pooled']:.4f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    print()
    print(
        f"chance: {1 / len(EVAL_CLASSES):.3f}; spread of well-spread outputs ~1/sqrt(dim); "
        f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


if __name__ == "__main__":
    main()
