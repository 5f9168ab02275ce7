"""The plan of a study: every point (a pretraining or fine-tuning run), its settings, its folder
and, read from the folder, its status.

A point is an app (``pretrain`` or ``finetune``) and the overrides that app is composed with.
Its id ends in a digest of those overrides (and of the point it depends on), so a changed setting
makes a new point in a new folder beside the old one: nothing a finished point wrote is ever
overwritten, and the same command twice finds its points done. The status is never stored as a
fact: it is read from what each point folder holds (export, results, a failure record, a start
record whose process is gone).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cass_lightning.apps.run.runfolder import holder_alive
from cass_lightning.apps.study.tracking import with_logging
from cass_lightning.io import atomic_write_json, read_json
from cass_lightning.modules.registry import BOTH, Method, method_names, pretraining_methods

PLAN_FILE = "plan.json"
POINTS_DIR = "points"
STARTED_FILE = "started.json"
FAILED_FILE = "failed.json"
RESULTS_FILE = "results.json"  # what cass-finetune writes
SUMMARY_FILE = "summary.json"  # what cass-pretrain writes
STATUSES = ("done", "pending", "partial", "running", "interrupted", "failed", "blocked")
#: The shipped methods a study can run (the registry, ``cass_lightning.modules.registry``, is
#: the list; the study checks ``study.methods`` against it when it runs).
METHODS = method_names()
ARMS = ("cnn", "vit")
#: Fine-tuning modes: ClassifierModule's MODES (kept here so the planner does not import torch;
#: a test keeps the two equal).
MODES = ("finetune", "linear")


@dataclass(frozen=True)
class StudySettings:
    """Everything that decides a study's points, as plain values (see ``conf/study/``)."""

    kind: str
    encoders: dict[str, Any]
    weights: dict[str, str | None]
    methods: list[str]
    arms: list[str]
    fractions: list[float]
    seeds: list[int]
    modes: list[str]
    pretrain_epochs: int
    pretrain_batch_size: int
    pretrain_seed: int
    common: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)
    pretrain: list[str] = field(default_factory=list)
    cass: list[str] = field(default_factory=list)
    dino: list[str] = field(default_factory=list)
    finetune: list[str] = field(default_factory=list)
    #: ``study.overrides.<method>`` of the other pretraining methods (``cass`` and ``dino``
    #: have their own fields above), e.g. ``{"byol": [...]}``.
    method_overrides: dict[str, list[str]] = field(default_factory=dict)
    grid: list[tuple[int, int]] = field(default_factory=list)  # robustness: (batch, epochs)
    # Where each arm's ImageNet weights came from: the file, its SHA-256, the hub entry.
    weights_sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    logger: str | None = None  # wandb: every point is a run of one wandb project (see below)
    wandb_project: str = "cass-study"


@dataclass
class Point:
    """One run of the study."""

    id: str
    app: str  # pretrain | finetune
    stage: int  # 0: pretraining, 1: fine-tuning
    method: str  # a registry name: cass | dino | byol | imagenet | random | ...
    arm: str  # cnn | vit | both
    overrides: list[str]
    digest: str
    needs: str | None = None  # id of the pretraining point this one fine-tunes
    info: dict[str, Any] = field(default_factory=dict)  # fraction, seed, mode, batch, epochs
    # How the point logs (wandb run name, group, ...): composed with it, not in its digest, so
    # a study logged to wandb finds the points it ran without wandb done, and vice versa.
    logging: list[str] = field(default_factory=list)

    def folder(self, study_dir: Path) -> Path:
        return study_dir / POINTS_DIR / self.id


def digest_of(app: str, overrides: list[str], needs: str | None) -> str:
    text = json.dumps({"app": app, "overrides": overrides, "needs": needs}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _point(app: str, label: str, stage: int, method: str, arm: str, overrides: list[str],
           needs: Point | None = None, **info: Any) -> Point:  # fmt: skip
    digest = digest_of(app, overrides, needs.digest if needs else None)
    return Point(f"{label}-{digest[:8]}", app, stage, method, arm, overrides, digest,
                 needs.id if needs else None, info)  # fmt: skip


def _encoder_overrides(s: StudySettings) -> list[str]:
    """The encoder and init settings CASS and DINO share, so their rows are comparable."""
    e, w = s.encoders, s.weights
    out = [f"model.cnn={e['cnn']}", f"model.vit={e['vit']}", f"model.img_size={e['img_size']}"]
    if w.get("cnn") and w.get("vit"):
        out += ["model.pretrained=true", f"model.cnn_weights_file={w['cnn']}",
                f"model.vit_weights_file={w['vit']}"]  # fmt: skip
    else:
        out += ["model.pretrained=false"]
    return out


def _pretraining(s: StudySettings, batch: int, epochs: int, suffix: str) -> dict[str, Point]:
    """The pretraining points at one batch size and length: one per method that trains both
    arms together (CASS), one per arm for a method that trains one (DINO, BYOL)."""
    run = [*s.common, *s.data, *s.pretrain, *_encoder_overrides(s), f"data.batch_size={batch}",
           f"trainer.max_epochs={epochs}", f"seed={s.pretrain_seed}"]  # fmt: skip
    info = {"batch_size": batch, "epochs": epochs, "seed": s.pretrain_seed}
    points = {}
    for m in _pretrained_methods(s):
        own = method_overrides(s, m.name)
        for arm in [BOTH] if m.arms == BOTH else s.arms:
            key = _pretrain_key(m, arm)
            points[key] = _point("pretrain", f"pretrain-{key}{suffix}", 0, m.name, arm,
                                 [*own, *m.pretrain_overrides(arm), *run], **info)  # fmt: skip
    return points


def _pretrained_methods(s: StudySettings) -> list[Method]:
    """The pretraining methods the study runs, in the registry's order."""
    return [m for m in pretraining_methods() if m.name in s.methods]


def _pretrain_key(m: Method, arm: str) -> str:
    """The key of a method's pretraining point: ``cass`` (both arms), ``dino-cnn``."""
    return m.name if m.arms == BOTH else f"{m.name}-{arm}"


def method_overrides(s: StudySettings, name: str) -> list[str]:
    """``study.overrides.<name>``: the pretraining overrides of one method."""
    if name in s.method_overrides:
        return list(s.method_overrides[name])
    return list(getattr(s, name, None) or [])


def _finetuning(s: StudySettings, study_dir: Path, pretrained: dict[str, Point],
                fractions: list[float], suffix: str) -> list[Point]:  # fmt: skip
    """Every (method, arm) row at each fraction x seed x mode."""
    points = []
    e = s.encoders
    for arm in s.arms:
        sources: list[tuple[str, list[str], Point | None]] = []
        for m in _pretrained_methods(s):
            key = _pretrain_key(m, arm)
            if key in pretrained:
                export = pretrained[key].folder(study_dir) / "export"
                sources.append((m.name, [f"weights={export}"], pretrained[key]))
        baseline = [f"model.timm_name={e[arm]}", f"model.img_size={e['img_size']}"]
        if "imagenet" in s.methods and s.weights.get(arm) and not suffix:
            file = f"model.weights_file={s.weights[arm]}"
            sources.append(("imagenet", ["weights=imagenet", *baseline, file], None))
        if "random" in s.methods and not suffix:
            sources.append(("random", ["weights=random", *baseline], None))
        for method, weights, needs in sources:
            for fraction in fractions:
                for seed in s.seeds:
                    for mode in s.modes:
                        label = (f"finetune-{method}-{arm}{suffix}-{fraction * 100:g}pct-s{seed}"
                                 f"{'' if mode == 'finetune' else '-' + mode}")  # fmt: skip
                        overrides = [*s.common, *s.data, *s.finetune, *weights, f"arm={arm}",
                                     f"mode={mode}", f"data.label_fraction={fraction}",
                                     f"seed={seed}"]  # fmt: skip
                        info: dict[str, Any] = {"fraction": fraction, "seed": seed, "mode": mode}
                        if needs is not None and suffix:  # a point of the robustness grid
                            info["grid_batch_size"] = needs.info["batch_size"]
                            info["grid_epochs"] = needs.info["epochs"]
                        points.append(_point("finetune", label, 1, method, arm, overrides,
                                             needs, **info))  # fmt: skip
    return points


def build_plan(s: StudySettings, study_dir: Path) -> list[Point]:
    """Every point of the study, pretraining first."""
    if not s.grid:
        pretrained = _pretraining(s, s.pretrain_batch_size, s.pretrain_epochs, "")
        points = [*pretrained.values(), *_finetuning(s, study_dir, pretrained, s.fractions, "")]
        return with_logging(s, study_dir, points)
    points = []
    tuned: list[Point] = []
    for batch, epochs in s.grid:
        suffix = f"-b{batch}-e{epochs}"
        pretrained = _pretraining(s, batch, epochs, suffix)
        points += pretrained.values()
        tuned += _finetuning(s, study_dir, pretrained, s.fractions, suffix)
    return with_logging(s, study_dir, points + tuned)


def missing_rows(s: StudySettings) -> list[dict[str, str]]:
    """Table rows the study cannot fill, and why (the report shows them with the reason)."""
    rows = []
    for arm in s.arms:
        if "imagenet" in s.methods and not s.weights.get(arm) and not s.grid:
            rows.append({"method": "imagenet", "arm": arm, "reason": (
                f"no ImageNet weights file given (study.weights.{arm}: a file, or hub for "
                "timm's hub weights); the model hub is used only when asked, so this baseline "
                "was not run")})  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- status
def point_status(point: Point, study_dir: Path, statuses: dict[str, str] | None = None) -> str:
    """``done``, ``running``, ``interrupted`` (started, its process gone), ``partial`` (a
    pretraining run that can resume from its last checkpoint), ``failed``, ``blocked`` (its
    pretraining is not done) or ``pending``."""
    folder = point.folder(study_dir)
    if point.app == "pretrain":
        if (folder / "export" / "meta.json").is_file() and (folder / SUMMARY_FILE).is_file():
            return "done"
    elif (folder / RESULTS_FILE).is_file():
        return "done"
    if (folder / FAILED_FILE).is_file():
        return "failed"
    if (folder / STARTED_FILE).is_file():
        started = read_json(folder / STARTED_FILE, "point start record")
        if holder_alive(started) is not False:  # alive, or on another machine (SLURM)
            return "running"
        if point.app == "pretrain" and (folder / "checkpoints" / "last.ckpt").is_file():
            return "partial"
        return "interrupted"
    if statuses is not None and point.needs and statuses.get(point.needs) != "done":
        return "blocked"
    return "pending"


def statuses_of(points: list[Point], study_dir: Path) -> dict[str, str]:
    statuses: dict[str, str] = {}
    for point in sorted(points, key=lambda p: p.stage):
        statuses[point.id] = point_status(point, study_dir, statuses)
    return statuses


def write_plan(study_dir: Path, settings: StudySettings, points: list[Point],
               statuses: dict[str, str], extra: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """``plan.json``: the settings, and every point with its overrides, digest and status; the
    last invocation's timing is kept until a new one replaces it."""
    kept = {}
    if (study_dir / PLAN_FILE).is_file():
        old = read_json(study_dir / PLAN_FILE, "study plan")
        kept = {k: old[k] for k in ("last_invocation",) if k in old}
    plan = {
        **kept,
        "settings": asdict(settings),
        "points": [
            {**asdict(p), "folder": str(p.folder(study_dir)), "status": statuses[p.id]}
            for p in points
        ],
        **(extra or {}),
    }
    study_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(study_dir / PLAN_FILE, plan)


def read_plan(study_dir: Path) -> list[Point]:
    """The points of ``plan.json`` (what a worker runs)."""
    plan = read_json(study_dir / PLAN_FILE, "study plan")
    fields = Point.__dataclass_fields__
    return [Point(**{k: v for k, v in p.items() if k in fields}) for p in plan["points"]]


# ----------------------------------------------------------------------------- trust
class PlanRefused(ValueError):
    """A ``plan.json`` point the worker will not run; the message names the point and why."""


def refuse_unsafe(points: list[Point], config_dir: Path) -> None:
    """Raise :class:`PlanRefused` for the first point holding an override that is not a plain
    setting: no ``+``/``~``, no ``hydra.*``, no ``${``, no ``_target_``. Each distinct override
    is parsed once (the points share most of theirs)."""
    from cass_lightning.apps.run.overrides import refused_overrides

    distinct = list(dict.fromkeys(o for p in points for o in p.overrides))
    reasons = dict(refused_overrides(distinct, config_dir, set()))
    for point in points:
        refused = [(o, reasons[o]) for o in point.overrides if o in reasons]
        if refused:
            listed = "; ".join(f"{o!r} {why}" for o, why in refused)
            raise PlanRefused(
                f"study point {point.id}: {listed}. A study's points take plain settings only "
                "(no +/~, hydra.*, ${...} or _target_); nothing was run"
            )


def verified_plan(study_dir: Path, config_dir: Path) -> list[Point]:
    """The points of ``plan.json``, each checked against its settings before a worker runs it:
    the plan's settings are planned again here, and every point must be one of those points
    with the same app, overrides, dependency and digest (recomputed), and hold plain settings
    only. ``plan.json`` is a file anyone with write access to the study can edit (and a SLURM
    job reads it when it starts): a point added or changed there is refused by name."""
    plan = read_json(study_dir / PLAN_FILE, "study plan")
    if not isinstance(plan, dict) or not isinstance(plan.get("points"), list):
        raise PlanRefused(f"{study_dir / PLAN_FILE} is not a study plan (no list of points)")
    try:
        raw = dict(plan["settings"])
        raw["grid"] = [tuple(g) for g in raw.get("grid", [])]
        settings = StudySettings(**raw)
        expected = {p.id: p for p in build_plan(settings, study_dir)}
    except Exception as err:  # a damaged or edited settings block
        raise PlanRefused(
            f"{study_dir / PLAN_FILE}: its settings cannot be planned again ({err}); run "
            "cass-study again to rewrite the plan"
        ) from None
    fields = Point.__dataclass_fields__
    points = []
    for entry in plan["points"]:
        try:
            point = Point(**{k: v for k, v in entry.items() if k in fields})
        except TypeError as err:
            raise PlanRefused(f"{study_dir / PLAN_FILE}: a point is malformed ({err})") from None
        want = expected.get(point.id)
        needs = expected.get(point.needs) if point.needs else None
        digest = digest_of(point.app, list(point.overrides), needs.digest if needs else None)
        if (
            want is None
            or digest != point.digest
            or not point.id.endswith(digest[:8])
            or (point.app, point.overrides, point.needs) != (want.app, want.overrides, want.needs)
        ):
            raise PlanRefused(
                f"study point {point.id} in {study_dir / PLAN_FILE} does not match the study's "
                "settings (its overrides, app or digest were changed after planning); it was "
                "not run. Run cass-study again to rewrite the plan from its settings."
            )
        points.append(want)
    refuse_unsafe(points, config_dir)
    return points
