"""A study's points as wandb runs: one project, the study as group, the point as name,
pretrain/finetune as job type, and flat config keys that answer the paper's question.

Kept apart from the planner (which calls :func:`with_logging` last): the logging settings are
not part of a point's digest, so turning wandb on for a finished study reruns nothing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# The study's settings and points (``plan.StudySettings`` / ``Point``) are typed ``Any``
# here: the planner imports this module, never the other way round.
StudySettings = Any
Point = Any

#: ``study.logger``: null/csv (each point's CSV log only) or wandb (and a CSV log).
LOGGERS = (None, "none", "csv", "wandb")


#: What a wandb project or group name may hold here: a name, never an interpolation (``${``)
#: or quoting that Hydra would read in a point's overrides.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.\- ]+")


def plain_name(what: str, value: str) -> str:
    """``value`` when it is a plain name; a ``ValueError`` naming ``what`` otherwise (a
    ``plan.json`` edited to hold ``${oc.env:...}`` as the project must not reach Hydra)."""
    if not _PLAIN_NAME.fullmatch(str(value)):
        raise ValueError(
            f"{what}={value!r}: use letters, digits, spaces and . _ - only (it becomes a "
            "wandb name in every point's settings)"
        )
    return str(value)


def wants_wandb(s: StudySettings) -> bool:
    """Whether the study logs to wandb: ``study.logger=wandb``, or ``logger=wandb`` among the
    overrides of every point."""
    if s.logger not in LOGGERS:
        raise ValueError(f"study.logger={s.logger}: expected null (or csv) or wandb")
    return s.logger == "wandb" or "logger=wandb" in s.common


def wandb_config(point: Point) -> dict[str, Any]:
    """The flat keys a point's wandb run is configured with, so wandb's grouping and parallel
    coordinates compare methods, arms, label fractions, seeds and modes."""
    info = {k: v for k, v in point.info.items() if k in ("fraction", "seed", "mode")}
    info.update({k.removeprefix("grid_"): v for k, v in point.info.items()
                 if k in ("batch_size", "epochs", "grid_batch_size", "grid_epochs")})  # fmt: skip
    return {"method": point.method, "arm": point.arm, **info}


def with_logging(s: StudySettings, study_dir: Path, points: list[Point]) -> list[Point]:
    """Give every point its wandb identity when the study logs to wandb: one project, the
    study's folder name as group, the point id as name, pretrain/finetune as job type, and the
    offline runs under ``<study>/wandb`` (one ``wandb sync`` for all)."""
    if not wants_wandb(s):
        return points
    import importlib.util

    from cass_lightning.apps.run.overrides import quote

    plain_name("study.wandb.project", s.wandb_project)
    plain_name("the study folder's name", study_dir.name)
    if importlib.util.find_spec("wandb") is None:
        raise ValueError("study.logger=wandb needs the wandb package: pip install -e '.[wandb]'")

    for p in points:
        config = {**wandb_config(p), "dataset": "${hydra:runtime.choices.data}"}
        values = ",".join(f"{k}:{_hydra_value(v)}" for k, v in config.items())
        p.logging = [
            *([] if "logger=wandb" in s.common else ["logger=wandb"]),
            f"logger.wandb.project={quote(s.wandb_project)}",
            f"logger.wandb.group={quote(study_dir.name)}",
            f"logger.wandb.name={p.id}",
            f"logger.wandb.job_type={p.app}",
            f"logger.wandb.save_dir={quote(study_dir)}",
            f"logger.wandb.config={{{values}}}",
        ]
    return points


def _hydra_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back (strings quoted)."""
    from cass_lightning.apps.run.overrides import quote

    if value is None:
        return "null"
    if isinstance(value, str) and not value.startswith("${"):
        return quote(value)  # type: ignore[arg-type]
    return str(value)
