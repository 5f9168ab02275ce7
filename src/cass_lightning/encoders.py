"""timm encoders by name, with the heads CASS compares, and strictly checked weight loading.

Weights (a ``weights_file``, or the hub with ``pretrained=True``) are loaded by
:mod:`cass_lightning.weights`: every backbone tensor must fit, only the classifier (and, for
another ``img_size``/``in_chans``, a ViT's position embedding and the first convolution) is
adapted, and the built model carries a ``weights_record`` of what was loaded (:func:`record_of`).

Heads:
- ``logits``: the paper's choice. The timm classifier output (``head_dim`` wide, 1000 by
  default, as the ImageNet head the paper keeps); both arms' vectors are compared directly.
- ``projector``: pooled features followed by a 2-layer MLP to a shared ``head_dim``.
- ``features``: the pooled features themselves; only valid when both arms have the same width.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
from timm.models import group_parameters
from torch import nn

from cass_lightning.checks import check_choice
from cass_lightning.io import host_reachable
from cass_lightning.weights import (
    WeightsMismatchError,
    load_weights,
    load_weights_file,
    record_of,
)

__all__ = [
    "HEAD_KINDS",
    "EncoderSpec",
    "HubUnreachableError",
    "HubWeights",
    "WeightsMismatchError",
    "build_encoder",
    "build_projector",
    "create_timm_model",
    "encoder_spec",
    "freeze_stages",
    "hub_weights_file",
    "keep_frozen_in_eval",
    "layer_ids",
    "record_of",
]

HEAD_KINDS = ("logits", "projector", "features")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


class HubUnreachableError(RuntimeError):
    """Pretrained weights were asked for without a ``weights_file`` and the hub is unreachable."""


@dataclass(frozen=True)
class EncoderSpec:
    """What is needed to rebuild an encoder with plain timm (written to ``meta.json``)."""

    timm_name: str
    img_size: int | None
    in_chans: int
    num_classes: int
    num_features: int


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """True when the Hugging Face endpoint answers within ``timeout_s``.

    timm retries a dead hub for tens of seconds before failing; this probe makes the failure fast.
    When huggingface_hub is in offline mode, weights can only come from its cache: let timm try.
    """
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or host_reachable(constants.ENDPOINT, timeout_s)


@dataclass(frozen=True)
class HubWeights:
    """The local file of a timm model's default pretrained weights on the Hugging Face hub."""

    model: str  # the timm name asked for, e.g. resnet50
    hub_id: str  # the hub repository of its default pretrained tag, e.g. timm/resnet50.a1_in1k
    file: Path  # the file in the local Hugging Face cache (a snapshot path, not resolved)


#: Files timm reads from a hub repository, in its order (``load_state_dict_from_hf``): the
#: safetensors alternative first, then the torch file.
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")


def hub_weights_file(
    name: str,
    *,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    timeout_s: float = 3.0,
) -> HubWeights:
    """The local file of ``name``'s default pretrained weights (timm's ``pretrained_cfg``:
    ``hf_hub_id`` and ``hf_hub_filename``, else timm's file names), so it can be loaded and
    recorded (path, SHA-256) like any weights file.

    Found in the Hugging Face cache (``cache_dir``, default huggingface_hub's own, i.e.
    ``HF_HUB_CACHE``) without the network; else downloaded when the hub answers within
    ``timeout_s`` and huggingface_hub is not ``offline`` (default: its ``HF_HUB_OFFLINE``);
    else :class:`HubUnreachableError` in seconds, naming the model, the cache and the way out.
    """
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}")
    cfg = get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise ValueError(f"timm has no Hugging Face hub weights for {name!r}: give a weights file")
    repo, _, revision = hub_id.partition("@")
    filenames = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HUB_FILENAMES
    cache = Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE)
    for filename in filenames:
        found = try_to_load_from_cache(repo, filename, cache_dir=cache, revision=revision or None)
        if isinstance(found, str):
            return HubWeights(name, hub_id, Path(found))
    offline = bool(constants.HF_HUB_OFFLINE) if offline is None else offline
    if offline or not host_reachable(constants.ENDPOINT, timeout_s):
        why = "the hub is off (HF_HUB_OFFLINE)" if offline else "the hub is not reachable"
        raise HubUnreachableError(
            f"{name}'s ImageNet weights ({hub_id}) are not in the local Hugging Face cache "
            f"({cache}) and {why}; download them on a machine with network (e.g. "
            f"timm.create_model({name!r}, pretrained=True), then copy the cache) or give a "
            "weights file (weights_file)"
        )
    for filename in filenames:
        try:
            path = hf_hub_download(repo, filename, revision=revision or None, cache_dir=cache)
        except EntryNotFoundError:
            continue
        return HubWeights(name, hub_id, Path(path))
    raise FileNotFoundError(f"{hub_id} on the hub holds none of {', '.join(filenames)}")


def _check_weights_file(weights_file: str | Path) -> Path:
    path = Path(weights_file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights_file not found: {path}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(
            f"weights_file {path} has suffix {path.suffix!r}; expected one of {WEIGHT_SUFFIXES}"
        )
    return path


def _check_patch_grid(name: str, model: nn.Module, img_size: int | None) -> None:
    """Refuse an ``img_size`` a ViT's patches do not tile: the border pixels would be dropped."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if img_size is None or not patch:
        return
    step = int(patch[0]) if isinstance(patch, tuple | list) else int(patch)
    if step > 1 and img_size % step:
        lower, upper = img_size // step * step, (img_size // step + 1) * step
        nearest = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(
            f"img_size={img_size} is not a multiple of {name}'s patch size {step}: the last "
            f"{img_size % step} pixel rows and columns would never be seen. Use img_size="
            f"{nearest} (model.img_size; the data's img_size follows it)"
        )


def _hub_state(name: str, timm_kwargs: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The hub weights of ``name`` as timm loads them for its default shapes (a strict load:
    same classifier width, 3 channels, its own image size), and what they are called."""
    reference = timm.create_model(name, pretrained=True, **timm_kwargs)
    cfg = getattr(reference, "pretrained_cfg", None) or {}
    tag = cfg.get("hf_hub_id") or cfg.get("url") or name
    return reference.state_dict(), f"hub:{tag}"


def create_timm_model(
    name: str,
    *,
    pretrained: bool = False,
    weights_file: str | Path | None = None,
    num_classes: int = 1000,
    img_size: int | None = None,
    in_chans: int = 3,
    **timm_kwargs: Any,
) -> nn.Module:
    """``timm.create_model`` that never waits on a missing network and never loads weights
    loosely.

    ``weights_file`` (``.safetensors`` or a ``.pth`` state dict, read with ``weights_only``)
    supplies pretrained weights offline. Every load, from a file or the hub, goes through
    :func:`cass_lightning.weights.load_weights`: all backbone tensors must fit; only the
    classifier, a ViT's position embedding (another ``img_size``) and the first convolution
    (another ``in_chans``) are adapted. The model's ``weights_record`` says what was loaded.
    ``img_size`` is passed only to models that take it (ViTs); CNNs are size-agnostic.
    """
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ValueError(f"unknown timm model {name!r}; similar names: {close}")
    path = _check_weights_file(weights_file) if weights_file is not None else None
    if pretrained and path is None and not _hub_reachable():
        raise HubUnreachableError(
            f"pretrained=True for {name!r} but the model hub cannot be reached and no "
            "weights_file was given. Download the weights elsewhere (e.g. "
            f"timm.create_model({name!r}, pretrained=True) then save_file(model.state_dict(), "
            "'x.safetensors')) and pass weights_file=<path>, or set pretrained=false."
        )
    kwargs: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, **timm_kwargs)
    if img_size is not None:
        kwargs["img_size"] = img_size
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as err:
        if "img_size" not in str(err):
            raise
        kwargs.pop("img_size")
        model = timm.create_model(name, pretrained=False, **kwargs)
    if "img_size" in kwargs:
        _check_patch_grid(name, model, img_size)
    if path is not None:
        load_weights_file(model, path)
    elif pretrained:
        state, tag = _hub_state(name, timm_kwargs)
        load_weights(model, state, tag, init="hub")
    return model


def build_projector(in_dim: int, out_dim: int, hidden_dim: int = 2048) -> nn.Sequential:
    """Linear-BN-ReLU-Linear, the usual SSL projector (SimCLR/BYOL style)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


def build_encoder(
    name: str,
    *,
    head: str = "logits",
    head_dim: int = 1000,
    pretrained: bool = False,
    weights_file: str | Path | None = None,
    img_size: int | None = None,
    in_chans: int = 3,
    projector_hidden_dim: int = 2048,
    **timm_kwargs: Any,
) -> tuple[nn.Module, nn.Module]:
    """Build ``(backbone, head)`` for one arm.

    ``backbone`` is the plain timm model (what gets exported). For ``head="logits"`` it carries
    the ``head_dim``-way classifier and ``head`` is an identity; otherwise the backbone outputs
    pooled features and ``head`` is a projector MLP or an identity.
    """
    check_choice("head", head, HEAD_KINDS)
    num_classes = head_dim if head == "logits" else 0
    backbone = create_timm_model(
        name,
        pretrained=pretrained,
        weights_file=weights_file,
        num_classes=num_classes,
        img_size=img_size,
        in_chans=in_chans,
        **timm_kwargs,
    )
    if head == "projector":
        return backbone, build_projector(backbone.num_features, head_dim, projector_hidden_dim)
    return backbone, nn.Identity()


def layer_ids(model: nn.Module, coarse: bool) -> dict[str, int]:
    """Parameter name -> depth index from timm's ``group_matcher`` (0 = the stem; the classifier,
    when present, is the deepest). ``coarse`` groups by stage (ResNet: stem, layer1..layer4; ViT:
    embeddings, then one per block); fine groups ResNet blocks one by one."""
    matcher = getattr(model, "group_matcher", None)
    if not callable(matcher):
        raise ValueError(
            f"{type(model).__name__} has no timm group_matcher, so its layers cannot be ordered "
            "for layer-wise lr decay or stage freezing"
        )
    return group_parameters(model, matcher(coarse=coarse), reverse=True)


def freeze_stages(model: nn.Module, stages: int) -> list[str]:
    """Freeze the first ``stages`` stages (timm's coarse groups) of a backbone; returns the
    names of the modules whose parameters are now all frozen (their BatchNorm statistics must
    stay fixed too: see :func:`keep_frozen_in_eval`). The classifier is never frozen."""
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 0:
        raise ValueError(f"freeze stages must be an int >= 0, got {stages!r}")
    if stages == 0:
        return []
    ids = layer_ids(model, coarse=True)
    top = max(ids.values())
    classifier = _classifier_names(model)
    frozen_top = top if not classifier else top - 1
    if stages > frozen_top + 1:
        raise ValueError(
            f"cannot freeze {stages} stages of {type(model).__name__}: it has {frozen_top + 1} "
            "stages below its head"
        )
    for name, param in model.named_parameters():
        if ids.get(name, top) < stages and name not in classifier:
            param.requires_grad_(False)
    frozen = []
    for name, module in model.named_modules():
        flags = [p.requires_grad for p in module.parameters()]
        if name and flags and not any(flags):
            frozen.append(name)
    return frozen


def _classifier_names(model: nn.Module) -> set[str]:
    """Parameter names of the timm classifier (empty when the model has none)."""
    get = getattr(model, "get_classifier", None)
    if not callable(get):
        return set()
    head = {id(p) for p in get().parameters()}
    return {name for name, p in model.named_parameters() if id(p) in head}


def keep_frozen_in_eval(model: nn.Module, frozen_modules: list[str]) -> None:
    """Put the BatchNorm layers of fully frozen modules in eval mode, so a frozen stage keeps its
    running statistics as well as its weights (call after every ``.train()``)."""
    if not frozen_modules:
        return
    frozen = set(frozen_modules)
    for name, module in model.named_modules():
        if name in frozen and isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def encoder_spec(
    name: str, backbone: nn.Module, img_size: int | None, in_chans: int
) -> EncoderSpec:
    """Describe a built backbone so plain timm can rebuild it."""
    return EncoderSpec(
        timm_name=name,
        img_size=img_size,
        in_chans=in_chans,
        num_classes=int(getattr(backbone, "num_classes", 0)),
        num_features=int(getattr(backbone, "num_features", 0)),
    )
