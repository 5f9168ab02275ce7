"""OneArmMethod: the base of a method that trains one of the two encoders (``arm``), one run
per arm like the paper's DINO baseline: BYOL, SimSiam, SimCLR and DINO itself."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from cass_lightning.checks import check_choice
from cass_lightning.modules.base import PretrainingModule
from cass_lightning.modules.encoder_settings import ARMS, merged_settings
from cass_lightning.modules.optim import arm_param_groups


class OneArmMethod(PretrainingModule):
    """A method that trains one of the two encoders, ``arm`` (one run per arm, like DINO's
    baseline). The base builds that arm's backbone (``self.backbone``) and merges ``head`` over
    :attr:`default_head` (``self.head_cfg``); it gives the protocol and the optimiser groups
    (every trainable parameter: frozen momentum targets are left out).

    Args:
        arm: ``cnn`` or ``vit``: which of the two named encoders the method trains and exports.
        head: the method's head settings (see its ``default_head``).
        settings: :class:`PretrainingModule`'s arguments.
    """

    #: The head settings' defaults; ``model.head`` may set only these keys.
    default_head: ClassVar[dict[str, Any]] = {}
    #: The attribute the trained backbone is kept under (its state-dict name).
    backbone_attribute: ClassVar[str] = "backbone"

    def __init__(
        self, arm: str = "vit", head: dict[str, Any] | None = None, **settings: Any
    ) -> None:
        check_choice("model.arm", arm, ARMS)
        super().__init__(**settings)
        self.head_cfg = merged_settings("head", head, self.default_head)
        backbone, _ = self.build_arm(arm, **self.backbone_options())
        setattr(self, self.backbone_attribute, backbone)

    def backbone_options(self) -> dict[str, Any]:
        """Extra ``build_encoder`` arguments of the backbone (e.g. DINO's dynamic ViT size)."""
        return {}

    def trained_arms(self) -> tuple[str, ...]:
        return (self.hparams.arm,)

    def arm_backbone(self, arm: str) -> nn.Module:
        if arm != self.hparams.arm:
            raise KeyError(
                f"this {self.method_name} run trains the {self.hparams.arm} arm, not {arm}"
            )
        return getattr(self, self.backbone_attribute)

    def param_groups(self) -> list[dict[str, Any]]:
        backbone = self.arm_backbone(self.hparams.arm)  # first: timm's no-decay names apply
        modules = [backbone, *(m for m in self.children() if m is not backbone)]
        decay = float(self.optimizer_cfg.get("weight_decay") or 0.0)
        return arm_param_groups(self.hparams.arm, modules, lr=self.learning_rate(),
                                weight_decay=decay)  # fmt: skip
