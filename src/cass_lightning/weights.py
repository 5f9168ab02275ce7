"""Weights files into timm models, strictly: every backbone tensor comes from the file, or the
load is refused.

timm's own loading (``pretrained_cfg_overlay=dict(file=...)``) switches to ``strict=False`` as
soon as the classifier width differs from the file's, so a file whose keys do not match (keys
prefixed ``backbone.``, another architecture's file) loads nothing and the run carries on from
random weights with an INFO line. Here every load is checked against the built model:

* every tensor of the model is in the file with the model's shape, and the file holds nothing
  the model lacks, except for three adaptations:
* the classifier (``pretrained_cfg["classifier"]``): a file's classifier of another width, or
  one the model does not have (``head=projector``/``features``), is not loaded; the model keeps
  its freshly initialised one;
* a ViT's absolute position embedding, resampled (bicubic, as timm does) when the model's
  ``img_size`` gives another patch grid than the file's;
* the first convolution (``pretrained_cfg["first_conv"]``), adapted (as timm's
  ``adapt_input_conv``: summed for one channel, repeated and rescaled for more) when the model's
  ``in_chans`` differs from the file's.

BatchNorm's ``num_batches_tracked`` counters may be absent from a file (torch fills them in).
Anything else raises :class:`WeightsMismatchError`, listing the first missing, unexpected and
mis-shaped keys; nothing is loaded then. What was loaded is returned as a record (file, SHA-256,
keys loaded, keys adapted) and kept on the model as ``weights_record`` (see :func:`record_of`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cass_lightning.io import file_sha256, load_torch_file

#: The attribute of a timm model that holds what :func:`load_weights` put into it.
RECORD_ATTR = "weights_record"
#: Keys listed in an error message, per kind of mismatch.
SHOWN = 5


class WeightsMismatchError(ValueError):
    """A weights file whose tensors do not fit the model (beyond the allowed adaptations)."""


def record_of(model: nn.Module) -> dict[str, Any]:
    """What :func:`load_weights` loaded into ``model``, or ``{"init": "random"}``."""
    return dict(getattr(model, RECORD_ATTR, None) or {"init": "random"})


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file or a torch state-dict file (``weights_only``).

    A torch file holding ``{"state_dict": ...}`` or ``{"model": ...}`` around the tensors is
    unwrapped; anything else that is not a flat name -> tensor mapping is refused by name.
    """
    file = Path(path)
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as err:
            message = f"{file} is not a readable safetensors file: {err}"
            raise WeightsMismatchError(message) from None
    else:
        state = load_torch_file(file, "weights file")
        for wrapper in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise WeightsMismatchError(
            f"{file} holds no state dict (a mapping of names to tensors): save the timm "
            "model's state_dict(), e.g. safetensors.torch.save_file(model.state_dict(), path)"
        )
    check_finite_state(state, str(file))
    return state


def check_finite_state(state: dict[str, Tensor], where: str) -> None:
    """Refuse, by file and tensor name, weights holding NaN or inf: a model built from them
    predicts nothing (every output NaN) while looking like it ran."""
    bad = [name for name, value in state.items()
           if value.is_floating_point() and not bool(torch.isfinite(value).all())]  # fmt: skip
    if bad:
        raise ValueError(
            f"{where} hold non-finite values (NaN or inf) in {len(bad)} tensor(s), e.g. "
            f"{_first(bad)}; a model with them predicts nothing: use the weights of an earlier, "
            "finite checkpoint"
        )


def _names(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(f"{p}.") for p in prefixes)


def _adapt_first_conv(model: nn.Module, state: dict, wanted: dict, adapted: dict) -> None:
    from timm.models import adapt_input_conv

    for conv in _names((getattr(model, "pretrained_cfg", None) or {}).get("first_conv")):
        key = f"{conv}.weight"
        have, want = state.get(key), wanted.get(key)
        if have is None or want is None or have.ndim != 4 or have.shape == want.shape:
            continue
        if have.shape[0] == want.shape[0] and have.shape[2:] == want.shape[2:]:
            state[key] = adapt_input_conv(int(want.shape[1]), have)
            adapted[key] = f"input channels {have.shape[1]} -> {want.shape[1]}"


def _adapt_pos_embed(model: nn.Module, state: dict, wanted: dict, adapted: dict) -> None:
    from timm.layers import resample_abs_pos_embed

    have, want = state.get("pos_embed"), wanted.get("pos_embed")
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if have is None or want is None or grid is None or have.shape == want.shape:
        return
    if have.ndim != 3 or have.shape[-1] != want.shape[-1]:
        return  # another embedding width: reported as mis-shaped
    prefix = getattr(model, "num_prefix_tokens", 1)
    if getattr(model, "no_embed_class", False):
        prefix = 0
    old = round((have.shape[1] - prefix) ** 0.5)
    if old * old != have.shape[1] - prefix:
        return
    resampled = resample_abs_pos_embed(have, new_size=list(grid), num_prefix_tokens=prefix)
    if resampled.shape == want.shape:
        state["pos_embed"] = resampled
        adapted["pos_embed"] = f"resampled from a {old}x{old} to a {grid[0]}x{grid[1]} patch grid"


def _prefix_hint(unexpected: list[str], wanted: dict) -> str:
    """Say so when the file's keys are the model's under a common prefix (``backbone.``)."""
    for key in unexpected:
        for cut in range(1, key.count(".") + 1):
            prefix, rest = key.split(".", cut)[:-1], key.split(".", cut)[-1]
            if rest in wanted:
                name = ".".join(prefix) + "."
                share = sum(k.startswith(name) for k in unexpected) / len(unexpected)
                if share > 0.9:
                    return (
                        f" The file's keys carry the prefix {name!r} (a checkpoint of a wrapper "
                        "module?): save the timm model's own state_dict() instead."
                    )
                return ""
    return ""


def _first(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f", ... ({len(items) - SHOWN} more)" if len(items) > SHOWN else "")


def load_weights(
    model: nn.Module,
    state: dict[str, Tensor],
    source: str,
    sha256: str | None = None,
    init: str = "file",
) -> dict[str, Any]:
    """Load ``state`` into ``model`` with the checks of the module docstring; return the record
    (also kept as ``model.weights_record``). ``source`` names the file (or hub entry, with
    ``init="hub"``) in messages and in the record.
    """
    wanted = model.state_dict()
    classifier = _names((getattr(model, "pretrained_cfg", None) or {}).get("classifier"))
    state = dict(state)
    adapted: dict[str, str] = {}
    _adapt_first_conv(model, state, wanted, adapted)
    _adapt_pos_embed(model, state, wanted, adapted)
    for key in [k for k in state if _under(k, classifier)]:
        if key not in wanted:
            adapted[key] = "not loaded: the model has no classifier here (fresh head)"
        elif state[key].shape != wanted[key].shape:
            adapted[key] = (
                f"not loaded: the file's classifier is {tuple(state[key].shape)}, the model's "
                f"{tuple(wanted[key].shape)} (fresh head)"
            )
        else:
            continue
        del state[key]
    fresh = [k for k in wanted if _under(k, classifier) and k not in state]
    filled = [k for k in wanted if k.endswith("num_batches_tracked") and k not in state]
    missing = [k for k in wanted if k not in state and k not in fresh and k not in filled]
    unexpected = [k for k in state if k not in wanted]
    misshaped = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(wanted[k].shape)})"
        for k in state
        if k in wanted and state[k].shape != wanted[k].shape
    ]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the model's tensors are missing ({_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensors are not in the model ({_first(unexpected)})")
        if misshaped:
            parts.append(f"{len(misshaped)} have another shape ({_first(misshaped)})")
        raise WeightsMismatchError(
            f"{source} does not fit {type(model).__name__} "
            f"({(getattr(model, 'pretrained_cfg', None) or {}).get('architecture', '?')}): "
            f"{'; '.join(parts)}. Only the classifier may differ (and, for another img_size or "
            "in_chans, a ViT's position embedding and the first convolution). Is it the "
            "weights file of this model? Nothing was loaded." + _prefix_hint(unexpected, wanted)
        )
    with torch.no_grad():
        result = model.load_state_dict(state, strict=False)
    left = [k for k in result.missing_keys if k not in fresh and k not in filled]
    if left or result.unexpected_keys:  # the checks above make this unreachable
        raise WeightsMismatchError(f"{source}: load left {left or result.unexpected_keys}")
    record = {
        "init": init,
        "file": source,
        "sha256": sha256,
        "keys_loaded": len(state),
        "keys_adapted": adapted,
        "keys_fresh": fresh,
    }
    setattr(model, RECORD_ATTR, record)
    return record


def load_weights_file(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Read ``path`` (see :func:`read_state_dict`) and :func:`load_weights` it into ``model``."""
    # Absolute, not resolved: a Hugging Face cache file is a link to a blob without a suffix,
    # and the suffix of the name given says how to read it.
    file = Path(os.path.abspath(Path(path).expanduser()))
    return load_weights(model, read_state_dict(file), str(file), file_sha256(file))
