"""The encoder settings every pretraining method takes, checked and built in one place.

Each method trains the CNN arm, the ViT arm or both, named and loaded the same way, so one
config (``debug=tiny``, an experiment, the study's encoder settings) drives every method and a
comparison changes only the method. The settings stay flat constructor arguments (``cnn``,
``vit``, ``img_size``, ...): checkpoints store them so, and ``load_from_checkpoint`` passes
them back by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from cass_lightning.checks import check_choice, check_int, check_keys
from cass_lightning.encoders import EncoderSpec, build_encoder, encoder_spec

ARMS = ("cnn", "vit")


@dataclass(frozen=True)
class EncoderSettings:
    """Both arms' timm names, the input (``img_size``, ``in_chans``), the init (``pretrained``,
    ``<arm>_weights_file``) and extra ``timm.create_model`` arguments (``<arm>_kwargs``)."""

    cnn: str
    vit: str
    img_size: int
    in_chans: int = 3
    pretrained: bool = False
    weights_files: dict[str, str | None] = field(default_factory=dict)
    kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_hparams(cls, hp: Mapping[str, Any]) -> EncoderSettings:
        """The settings of a module's hyperparameters, each refused by name when wrong."""
        for arm in ARMS:
            if not isinstance(hp[arm], str) or not hp[arm]:
                raise ValueError(f"model.{arm} must be a timm model name; got {hp[arm]!r}")
            given = hp.get(f"{arm}_kwargs") or {}
            if not isinstance(given, Mapping):
                raise ValueError(f"model.{arm}_kwargs must be a mapping; got {given!r}")
        if not isinstance(hp["pretrained"], bool):
            raise ValueError(f"model.pretrained must be true or false; got {hp['pretrained']!r}")
        return cls(
            cnn=hp["cnn"],
            vit=hp["vit"],
            img_size=check_int("model.img_size", hp["img_size"]),
            in_chans=check_int("model.in_chans", hp["in_chans"]),
            pretrained=hp["pretrained"],
            weights_files={arm: hp.get(f"{arm}_weights_file") for arm in ARMS},
            kwargs={arm: dict(hp.get(f"{arm}_kwargs") or {}) for arm in ARMS},
        )

    def build(self, arm: str, student: bool = True, **extra: Any) -> tuple[nn.Module, nn.Module]:
        """``(timm backbone, head)`` of ``arm``; ``student=False`` builds a copy that gets no
        weights of its own (a momentum target takes the student's). ``extra`` goes to
        :func:`~cass_lightning.encoders.build_encoder` (default: pooled features, no head)."""
        check_choice("arm", arm, ARMS)
        kwargs: dict[str, Any] = {"head": "features", **extra}
        if arm == "vit":
            kwargs.setdefault("img_size", self.img_size)
        kwargs.update(self.kwargs[arm])
        return build_encoder(
            getattr(self, arm),
            pretrained=self.pretrained and student,
            weights_file=self.weights_files[arm] if student else None,
            in_chans=self.in_chans,
            **kwargs,
        )

    def spec(self, arm: str, backbone: nn.Module) -> EncoderSpec:
        """How plain timm rebuilds ``arm``'s built ``backbone`` (for ``meta.json``)."""
        size = self.img_size if arm == "vit" else None
        return encoder_spec(getattr(self, arm), backbone, size, self.in_chans)


def merged_settings(
    name: str, given: Mapping[str, Any] | None, defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """``defaults`` updated by ``given``; a key ``defaults`` lacks is refused (named as
    ``model.<name>``), so a typo never silently does nothing."""
    check_keys(f"model.{name}", (given or {}).keys(), defaults)
    return {**defaults, **(given or {})}


def check_momentum(name: str, start: float, end: float) -> tuple[float, float]:
    """A momentum schedule ``start -> end`` with ``0 <= start <= end <= 1``."""
    if not 0.0 <= float(start) <= float(end) <= 1.0:
        raise ValueError(
            f"need 0 <= {name} start <= end <= 1 (the momentum rises over the run); "
            f"got {start} -> {end}"
        )
    return float(start), float(end)
