"""Does CASS help a pretrained network on new data, and which remedy keeps it from harm?

A supervised init (the stand-in for ImageNet weights) is trained with labels on one part of a
labelled set; CASS, each remedy of ``conf/remedy/``, the best combination of them and DINO then
train without labels on the other part, from that init, at equal wall time; every result is read
on the other part only. Datasets:

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 real images), upsampled to
  ``--img-size``: classes 0-4 for the init, 5-9 for self-supervision and evaluation;
- ``synthetic``: the repo's default synthetic medical-like images (6 classes) drawn in memory:
  classes 0-2 for the init, 3-5 for self-supervision and evaluation.

The evaluation classes are split once (seeded, stratified) 60/20/20 into train / val / test.
Rows (each with the init loaded into both arms; the remedies exactly as ``conf/remedy/<name>.yaml``
sets them, over the paper's settings):

- ``init``: the supervised init, no self-supervision;
- ``cass``: the paper's CASS (logits head, Adam 1e-3, cyclic cosine);
- ``gentle``, ``ema``, ``variance``, ``predictor``, ``two_views``: one remedy each;
- ``best``: the remedies whose mean kNN (over arms and seeds) beat paper CASS, together (the two
  best singles when fewer than two did);
- ``dino``: DINO on each arm alone (each arm gets the whole budget: generous to DINO), with
  DINO's lr rule (5e-4 x batch / 256) and weight-decay schedule, as ``model=dino`` runs it.

CASS's heads (``--heads``): ``fresh`` (default) gives both arms a fresh random 1000-wide logits
head over the supervised init's backbones; ``init`` keeps the two classifiers the supervised init
trained on the same init classes, so CASS compares logits that already live in one shared label
space, as the paper's two ImageNet classifiers do (``head_dim`` = the number of init classes).
The ``init`` row's arm cosine is then the agreement of those classifiers before any CASS step.

Equal wall time: each method's seconds per step are measured once per dataset (a few steps per
method, back to back, twice, the faster kept) and each job runs ``budget / seconds-per-step``
steps; the count of steps, not the clock, ends a job, so a busy machine does not shorten one row
against another. ``--steps cass=N dino-vit=M ...`` fixes a job kind's steps instead (no timing):
to rerun with another ``--heads`` at the very steps a first run printed, and ``--init-cache DIR``
reuses the first run's supervised init.

Readings per arm, all on the evaluation classes, in fp32, BatchNorm statistics re-estimated on
the unlabelled training images first: weighted kNN (k=20; bank = train, queries = test); a linear
probe on standardised frozen features of 10% of train (labels), read on test; and end-to-end
fine-tuning at those 10% labels with the evaluation protocol (``ClassifierModule``: fresh head,
focal loss, Adam 3e-4, cyclic cosine, early stopping on validation macro-F1, the best validation
checkpoint read on test). Mean and sample std over ``--seeds`` (pretraining, label subset and
fine-tuning change with the seed; the init and the split do not). It prints numbers and asserts
nothing.

    .venv/bin/python bench/transfer.py                       # ~1 hour on a 2-core CPU
    .venv/bin/python bench/transfer.py --datasets digits --seeds 0 --budget 10 --only init cass
    .venv/bin/python bench/transfer.py --datasets digits --only init cass --heads init
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import OmegaConf
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cass_lightning import CASSModule
from cass_lightning.data.synthetic import SYNTHETIC_CLASSES, render_synthetic_image
from cass_lightning.data.transforms import eval_transform, paper_train_transform
from cass_lightning.data.views import dino_views
from cass_lightning.evaluation import extract_features, knn_accuracy
from cass_lightning.losses import cosine_similarity, normalized_std
from cass_lightning.modules.classifier import ClassifierModule
from cass_lightning.modules.dino import DINOModule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from representation import probe_accuracy, quiet, reestimate_batchnorm, transplant

REMEDY_DIR = Path(__file__).resolve().parents[1] / "conf" / "remedy"
REMEDIES = ("gentle", "ema", "variance", "predictor", "two_views")
METHODS = ("init", "cass", *REMEDIES, "best", "dino")
DATASETS = ("digits", "synthetic")
ARMS = ("cnn", "vit")
HEADS = ("fresh", "init")
SPLIT_SEED = 0
#: DINO's lr is per 256 images (``model=dino`` sets the same linear rule).
DINO_BASE_BATCH = 256


# ------------------------------------------------------------------------------- data
def digits_images(img_size: int) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 8x8 digits as ``(N, img_size, img_size, 3)`` uint8 (bilinear upsampling)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = np.clip(digits.images / 16.0 * 255.0, 0, 255).astype(np.uint8)
    big = np.stack(
        [
            np.asarray(Image.fromarray(im).resize((img_size, img_size), Image.BILINEAR))
            for im in small
        ]
    )
    return np.repeat(big[..., None], 3, axis=-1), digits.target.astype(np.int64)


def synthetic_images(img_size: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The default data's six classes, ``per_class`` images each, drawn in memory."""
    rng = np.random.default_rng(SPLIT_SEED)
    images, labels = [], []
    for c, name in enumerate(SYNTHETIC_CLASSES):
        for _ in range(per_class):
            images.append(render_synthetic_image(name, img_size, rng))
            labels.append(c)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def stratified(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Index sets with the given fractions of every class (the last takes the rest)."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.cumsum([round(f * len(idx)) for f in fractions[:-1]])
        for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
            part.extend(chunk.tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


class Images(Dataset):
    """uint8 arrays as ``(view(s), label)``: one transform, or a list of views per item."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any, views: int = 1):
        self.images, self.labels, self.transform, self.views = images, labels, transform, views

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[i])
        item = (
            self.transform(image)
            if self.views == 1
            else [self.transform(image) for _ in range(self.views)]
        )
        return item, int(self.labels[i])


class Split:
    """One dataset: init part, and the evaluation part's train / val / test."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.name, self.args = name, args
        if name == "digits":
            images, labels = digits_images(args.img_size)
            init_classes, eval_classes = range(0, 5), range(5, 10)
        else:
            images, labels = synthetic_images(args.img_size, args.synthetic_per_class)
            init_classes, eval_classes = range(0, 3), range(3, 6)
        self.num_init = len(init_classes)
        self.num_eval = len(eval_classes)
        init = np.isin(labels, list(init_classes))
        self.init_x, self.init_y = images[init], labels[init] - min(init_classes)
        ex, ey = images[~init], labels[~init] - min(eval_classes)
        train, val, test = stratified(ey, (0.6, 0.2, 0.2), SPLIT_SEED)
        self.x = {"train": ex[train], "val": ex[val], "test": ex[test]}
        self.y = {"train": ey[train], "val": ey[val], "test": ey[test]}
        self.train_tf = paper_train_transform(args.img_size)
        self.eval_tf = eval_transform(args.img_size)

    def labelled(self, seed: int) -> np.ndarray:
        """10% (``--label-fraction``) of train, stratified, at least one per class."""
        rng = np.random.default_rng(1000 + seed)
        keep = []
        for c in range(self.num_eval):
            idx = rng.permutation(np.flatnonzero(self.y["train"] == c))
            keep.extend(idx[: max(1, round(self.args.label_fraction * len(idx)))].tolist())
        return np.sort(np.asarray(keep))

    def loader(self, x: np.ndarray, y: np.ndarray, transform: Any, train: bool, batch: int,
               views: int = 1, seed: int = 0) -> DataLoader:  # fmt: skip
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(Images(x, y, transform, views), batch_size=batch, shuffle=train,
                          drop_last=train and len(x) >= batch, num_workers=0,
                          generator=generator)  # fmt: skip

    def unlabelled(self, seed: int, views: int = 1, transform: Any = None) -> DataLoader:
        return self.loader(self.x["train"], self.y["train"], transform or self.train_tf, True,
                           self.args.batch_size, views, seed)  # fmt: skip

    def plain(self, part: str, indices: np.ndarray | None = None) -> DataLoader:
        x, y = self.x[part], self.y[part]
        if indices is not None:
            x, y = x[indices], y[indices]
        return self.loader(x, y, self.eval_tf, False, 128)


# ----------------------------------------------------------------------------- models
def remedy_kwargs(names: list[str]) -> dict[str, Any]:
    """CASSModule arguments of ``conf/remedy/<name>.yaml`` (their ``model`` part: ``remedies``,
    and for some ``optimizer``/``scheduler``), merged."""
    merged = OmegaConf.create({})
    for name in names:
        cfg = OmegaConf.load(REMEDY_DIR / f"{name}.yaml")
        merged = OmegaConf.merge(merged, cfg.get("model", {}))
    return OmegaConf.to_container(merged, resolve=True)  # type: ignore[return-value]


def vit_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"patch_size": args.vit_patch_size} if args.vit_patch_size else {}


def supervised_init(split: Split, args: argparse.Namespace) -> dict[str, dict[str, Tensor]]:
    """Both arms trained with labels (cross-entropy, Adam: 1e-3 for the CNN, 3e-4 for the ViT,
    which is unstable at 1e-3 from scratch; the paper's augmentation) on the
    init classes for ``--init-epochs`` epochs each (epochs, not seconds: the init must not depend
    on how busy the machine is)."""
    states = {}
    for arm in ARMS:
        L.seed_everything(SPLIT_SEED, verbose=False)
        if arm == "cnn":
            model = timm.create_model(args.cnn, num_classes=split.num_init, zero_init_last=False)
        else:
            model = timm.create_model(args.vit, num_classes=split.num_init,
                                      img_size=args.img_size, **vit_kwargs(args))  # fmt: skip
        opt = torch.optim.Adam(model.parameters(), lr=1e-3 if arm == "cnn" else 3e-4)
        loader = split.loader(split.init_x, split.init_y, split.train_tf, True, args.batch_size)
        start, steps, correct, seen = time.perf_counter(), 0, 0, 0
        model.train()
        for _ in range(args.init_epochs):
            correct, seen = 0, 0
            for images, labels in loader:
                logits = model(images)
                loss = F.cross_entropy(logits, labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                correct += int((logits.argmax(1) == labels).sum())
                seen += len(labels)
        print(f"    init {arm}: {steps} steps in {time.perf_counter() - start:.0f} s, train "
              f"accuracy in the last epoch {correct / max(1, seen):.3f}", flush=True)  # fmt: skip
        states[arm] = model.state_dict()
    return states


def cached_init(split: Split, args: argparse.Namespace) -> dict[str, dict[str, Tensor]]:
    """``supervised_init``, read from ``--init-cache`` when an earlier run with the same settings
    saved it there (the init is seeded and counted in epochs, so it is the same init)."""
    if args.init_cache is None:
        return supervised_init(split, args)
    key = (f"{split.name}-{args.cnn}-{args.vit}-p{args.vit_patch_size}-{args.img_size}px-"
           f"e{args.init_epochs}-b{args.batch_size}-n{args.synthetic_per_class}")  # fmt: skip
    path = Path(args.init_cache) / f"init-{key}.pt"
    if path.is_file():
        print(f"    init: read from {path}", flush=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    states = supervised_init(split, args)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():  # never over another run's file
        torch.save(states, path)
    return states


def cass_module(
    args: argparse.Namespace, remedies: list[str], init: dict, init_head_dim: int | None = None
) -> CASSModule:
    """CASS over the supervised init's backbones. With ``init_head_dim`` (``--heads init``: the
    number of init classes) the init's trained classifiers are kept as the logits heads;
    without, each arm gets a fresh random 1000-wide logits head."""
    head_dim = init_head_dim or 1000
    module = CASSModule(cnn=args.cnn, vit=args.vit, img_size=args.img_size, pretrained=False,
                        head_dim=head_dim, cnn_kwargs={"zero_init_last": False},
                        vit_kwargs=vit_kwargs(args), **remedy_kwargs(remedies))  # fmt: skip
    for arm in ARMS:
        loaded = transplant(init[arm], getattr(module, arm))
        if init_head_dim and loaded != len(init[arm]):
            raise RuntimeError(f"--heads init: the {arm} init (classifier too) did not load")
    if module.ema is not None:  # the momentum copies start from the loaded weights too
        module.update_ema(0.0)
    return module


def dino_module(args: argparse.Namespace, arm: str, init: dict) -> DINOModule:
    kwargs: dict[str, Any] = {"zero_init_last": False} if arm == "cnn" else vit_kwargs(args)
    module = DINOModule(arm=arm, cnn=args.cnn, vit=args.vit, img_size=args.img_size,
                        head=dict(dim=args.dino_head_dim, hidden_dim=512, bottleneck_dim=128,
                                  batch_norm=arm == "cnn"),
                        batch_lr_factor=args.batch_size / DINO_BASE_BATCH,
                        **{f"{arm}_kwargs": kwargs})  # fmt: skip
    transplant(init[arm], module.student_backbone)
    module.teacher_backbone.load_state_dict(module.student_backbone.state_dict())
    return module


def fit_steps(module: L.LightningModule, loader: DataLoader, steps: int) -> float:
    """Train ``steps`` optimiser steps (fp32, CPU); returns the wall seconds."""
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_epochs=-1,
                        max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, loader)
    return time.perf_counter() - start


def seconds_per_step(make: Callable[[], L.LightningModule], loader: DataLoader) -> float:
    """Mean step time over steps 3-6 of a short fit (the first step pays set-up costs; a mean,
    not a median, because ``predictor=alternate`` alternates a cheap and a dear step)."""
    times: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_end(self, *a: Any) -> None:
            times.append(time.perf_counter())

    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=6,
                        limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Clock()])  # fmt: skip
    trainer.fit(make(), loader)
    return float(np.mean(np.diff(times[1:])))


# ------------------------------------------------------------------------- evaluation
def fine_tune(backbone: nn.Module, arm: str, split: Split, labelled: np.ndarray, seed: int,
              args: argparse.Namespace, workdir: Path) -> float:  # fmt: skip
    """Test accuracy after the evaluation protocol on the labelled subset."""
    L.seed_everything(seed, verbose=False)
    name = args.cnn if arm == "cnn" else args.vit
    module = ClassifierModule(arm=arm, init="random", timm_name=name, img_size=args.img_size,
                              num_classes=split.num_eval)  # fmt: skip
    model = copy.deepcopy(backbone)
    model.reset_classifier(split.num_eval)
    module.backbone = model
    module.train()
    train = split.loader(split.x["train"][labelled], split.y["train"][labelled], split.train_tf,
                         True, args.finetune_batch_size, seed=seed)  # fmt: skip
    best = ModelCheckpoint(dirpath=workdir, monitor="val/f1_macro", mode="max", save_top_k=1)
    stop = EarlyStopping(monitor="val/f1_macro", mode="max", patience=args.finetune_patience)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true",
                        max_epochs=args.finetune_epochs, num_sanity_val_steps=0, logger=False,
                        callbacks=[best, stop], enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(module, train, split.plain("val"))
    result = trainer.test(
        module, split.plain("test"), ckpt_path=best.best_model_path, verbose=False
    )
    for path in workdir.glob("*.ckpt"):  # our own temporary checkpoints
        path.unlink()
    return float(result[0]["test/acc"])


def evaluate(backbones: dict[str, nn.Module], split: Split, seed: int, args: argparse.Namespace,
             workdir: Path) -> dict[str, dict[str, float]]:  # fmt: skip
    labelled = split.labelled(seed)
    out = {}
    for arm, backbone in backbones.items():
        backbone = copy.deepcopy(backbone)
        reestimate_batchnorm(backbone, split.plain("train"))
        bank_x, bank_y = extract_features(backbone, split.plain("train"), "cpu")
        test_x, test_y = extract_features(backbone, split.plain("test"), "cpu")
        knn = knn_accuracy(bank_x, bank_y, test_x, test_y, split.num_eval, k=20)
        probe = probe_accuracy(bank_x[labelled], bank_y[labelled], test_x, test_y,
                               args.probe_epochs, split.num_eval)  # fmt: skip
        tuned = fine_tune(backbone, arm, split, labelled, seed, args, workdir)
        out[arm] = {"knn": knn, "probe": probe, "finetune": tuned,
                    "pooled_spread": float(normalized_std(test_x))}  # fmt: skip
    return out


@torch.no_grad()
def arm_cosine(module: CASSModule, split: Split) -> float:
    """Mean cosine between the arms' outputs on the test images (1 = collapsed together)."""
    module.eval()
    zc, zv = [], []
    for images, _ in split.plain("test"):
        a, b = module(images)
        zc.append(a)
        zv.append(b)
    return float(cosine_similarity(torch.cat(zc), torch.cat(zv)))


# ------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--only", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--cnn", default="resnet18")
    p.add_argument("--vit", default="vit_tiny_patch16_224")
    p.add_argument("--vit-patch-size", type=int, default=4, help="0: the model's own (16)")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--budget", type=float, default=45.0, help="seconds of pretraining per job")
    p.add_argument("--init-epochs", type=int, default=20, help="supervised epochs per arm")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--label-fraction", type=float, default=0.1)
    p.add_argument("--probe-epochs", type=int, default=300, help="full-batch probe steps")
    p.add_argument("--finetune-epochs", type=int, default=15)
    p.add_argument("--finetune-patience", type=int, default=4)
    p.add_argument("--finetune-batch-size", type=int, default=16)
    p.add_argument("--synthetic-per-class", type=int, default=150)
    p.add_argument("--dino-head-dim", type=int, default=1024)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    p.add_argument("--heads", choices=HEADS, default="fresh",
                   help="CASS heads: fresh 1000-wide (default) or the init's trained "
                   "classifiers")  # fmt: skip
    p.add_argument(
        "--init-cache",
        type=Path,
        default=None,
        help="folder to save the supervised init in, and read it from next time",
    )
    p.add_argument("--steps", nargs="+", default=[], metavar="KIND=N",
                   help="fix a job kind's steps (cass, a remedy, best, dino-cnn, dino-vit) "
                   "instead of timing it")  # fmt: skip
    args = p.parse_args(argv)
    if args.budget <= 0 or args.batch_size < 2 or not args.seeds:
        p.error("need --budget > 0, --batch-size >= 2 and at least one seed")
    kinds = (*METHODS[1:-1], "dino-cnn", "dino-vit")
    try:
        args.steps = {k: int(n) for k, n in (item.split("=", 1) for item in args.steps)}
    except ValueError:
        p.error("--steps takes KIND=N pairs, e.g. --steps cass=120 dino-vit=40")
    bad = [k for k, n in args.steps.items() if k not in kinds or n < 1]
    if bad:
        p.error(f"--steps: unknown kind or steps < 1 in {bad}; kinds: {', '.join(kinds)}")
    return args


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def pick_best(results: dict[str, list[dict]]) -> list[str]:
    """Remedies whose mean kNN over arms and seeds beat paper CASS; the two best if < 2 did."""

    def score(method: str) -> float:
        return float(np.mean([r[arm]["knn"] for r in results[method] for arm in ARMS]))

    singles = [m for m in REMEDIES if m in results]
    if not singles:
        return []
    ranked = sorted(singles, key=score, reverse=True)
    base = score("cass") if "cass" in results else -math.inf
    better = [m for m in ranked if score(m) > base]
    return better if len(better) >= 2 else ranked[:2]


def run_dataset(name: str, args: argparse.Namespace, only: set[str], workdir: Path) -> None:
    def log(text: str) -> None:
        print(f"  [{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {text}", flush=True)

    split = Split(name, args)
    log(f"{name}: init part {len(split.init_x)} images ({split.num_init} classes); evaluation "
        f"part train {len(split.x['train'])} / val {len(split.x['val'])} / test "
        f"{len(split.x['test'])} ({split.num_eval} classes)")  # fmt: skip
    init = cached_init(split, args)
    head_dim = split.num_init if args.heads == "init" else None

    def make_cass(remedies: list[str]) -> CASSModule:
        return cass_module(args, remedies, init, head_dim)

    methods = [m for m in METHODS if m in only and m != "best"]

    # Seconds per step of every job kind: measured back to back, in two rounds, keeping each
    # kind's faster round (another process's burst only ever slows a measurement down).
    makers: dict[str, tuple[Callable[[], L.LightningModule], Callable[[], DataLoader]]] = {}
    for method in methods:
        if method == "init":
            continue
        if method == "dino":
            for arm in ARMS:
                makers[f"dino-{arm}"] = (
                    lambda a=arm: dino_module(args, a, init),
                    lambda: split.unlabelled(0, transform=dino_views(args.img_size)),
                )
        else:
            remedies = [] if method == "cass" else [method]
            views = 2 if remedy_kwargs(remedies).get("remedies", {}).get("two_views") else 1
            makers[method] = (
                lambda r=remedies: make_cass(r),
                lambda v=views: split.unlabelled(0, v),
            )
    pace: dict[str, float] = {}
    for _ in range(2):
        for key, (make, loader) in makers.items():
            if key not in args.steps:
                pace[key] = min(pace.get(key, math.inf), seconds_per_step(make, loader()))
    steps = {key: max(2, int(args.budget / s)) for key, s in pace.items()}
    steps.update({k: n for k, n in args.steps.items() if k in makers})
    log("steps per job: " + ", ".join(
        f"{k} {v} ({pace[k] * 1000:.0f} ms/step, equal wall time)" if k in pace
        else f"{k} {v} (--steps)" for k, v in steps.items()))  # fmt: skip

    results: dict[str, list[dict]] = {}
    extra: dict[str, list[float]] = {}

    def run_cass(method: str, remedies: list[str], seed: int, key: str) -> None:
        L.seed_everything(seed, verbose=False)
        module = make_cass(remedies)
        views = 2 if module.remedies.two_views else 1
        seconds = fit_steps(module, split.unlabelled(seed, views), steps[key])
        cos = arm_cosine(module, split)
        results.setdefault(method, []).append(
            evaluate({"cnn": module.cnn, "vit": module.vit}, split, seed, args, workdir)
        )
        extra.setdefault(method, []).append(cos)
        r = results[method][-1]
        log(f"{method} seed {seed}: {steps[key]} steps in {seconds:.0f} s, arm cosine {cos:.3f}; "
            + "; ".join(f"{a} kNN {r[a]['knn']:.3f} probe {r[a]['probe']:.3f} "
                        f"FT {r[a]['finetune']:.3f}" for a in ARMS))  # fmt: skip

    for seed in args.seeds:
        for method in methods:
            if method == "init":
                L.seed_everything(seed, verbose=False)
                module = make_cass([])
                results.setdefault("init", []).append(
                    evaluate({"cnn": module.cnn, "vit": module.vit}, split, seed, args, workdir)
                )
                extra.setdefault("init", []).append(arm_cosine(module, split))
                r = results["init"][-1]
                log(f"init seed {seed}: " + "; ".join(
                    f"{a} kNN {r[a]['knn']:.3f} probe {r[a]['probe']:.3f} "
                    f"FT {r[a]['finetune']:.3f}" for a in ARMS))  # fmt: skip
            elif method == "dino":
                row = {}
                for arm in ARMS:
                    L.seed_everything(seed, verbose=False)
                    module = dino_module(args, arm, init)
                    fit_steps(module, split.unlabelled(seed, transform=dino_views(args.img_size)),
                              steps[f"dino-{arm}"])  # fmt: skip
                    row.update(evaluate({arm: module.student_backbone}, split, seed, args, workdir))
                results.setdefault("dino", []).append(row)
                log(f"dino seed {seed}: " + "; ".join(
                    f"{a} kNN {row[a]['knn']:.3f} probe {row[a]['probe']:.3f} "
                    f"FT {row[a]['finetune']:.3f}" for a in ARMS))  # fmt: skip
            else:
                run_cass(method, [] if method == "cass" else [method], seed, method)

    best: list[str] = []
    if "best" in only:
        best = pick_best(results)
        if best:
            views = 2 if "two_views" in best else 1
            if "best" in args.steps:
                steps["best"] = args.steps["best"]
            else:
                pace["best"] = min(
                    seconds_per_step(lambda: make_cass(best), split.unlabelled(0, views))
                    for _ in range(2)
                )
                steps["best"] = max(2, int(args.budget / pace["best"]))
            log(f"best combination: {'+'.join(best)}, {steps['best']} steps per job")
            for seed in args.seeds:
                run_cass("best", best, seed, "best")

    print()
    heads = (f"the init's {split.num_init}-class classifiers" if head_dim
             else "fresh 1000-wide logits heads")  # fmt: skip
    print(f"### {name}: {split.num_eval} evaluation classes, {len(split.x['train'])} train / "
          f"{len(split.x['test'])} test images, {args.label_fraction:g} labels; CASS heads "
          f"{args.heads} ({heads}); mean ± std over seeds {args.seeds}")  # fmt: skip
    print()
    print(
        "| method | steps | arm cos | CNN kNN | CNN probe | CNN FT | ViT kNN | ViT probe | ViT FT |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for method in [m for m in METHODS if m in results]:
        rows = results[method]
        label = f"best ({'+'.join(best)})" if method == "best" else method
        if method == "dino":
            n = f"{steps.get('dino-cnn', 0)}/{steps.get('dino-vit', 0)}"
        else:
            n = str(steps.get(method, 0))
        cos = mean_std(extra[method]) if method in extra else "-"
        cells = [label, n, cos]
        for arm in ARMS:
            for what in ("knn", "probe", "finetune"):
                cells.append(mean_std([r[arm][what] for r in rows]))
        print("| " + " | ".join(cells) + " |")
    print(flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    cpu = platform.processor() or platform.machine() or "CPU"
    print(f"torch {torch.__version__}, lightning {L.__version__}, timm {timm.__version__} | CPU "
          f"{cpu} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()}) | load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    patch = f" (patch {args.vit_patch_size})" if args.vit_patch_size else ""
    print(f"{args.cnn} + {args.vit}{patch} at {args.img_size} px | {args.budget:g} s of "
          f"pretraining per job, batch {args.batch_size} | init: {args.init_epochs} epochs per arm "
          f"| kNN k=20, probe {args.probe_epochs} steps, fine-tuning <= {args.finetune_epochs} "
          f"epochs (patience {args.finetune_patience}) | CASS heads {args.heads} | fp32",
          flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            run_dataset(name, args, set(args.only), Path(tmp))
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
