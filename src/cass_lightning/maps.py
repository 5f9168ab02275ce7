"""Where each arm looks: ViT attention and CNN Grad-CAM maps, and a grid that shows them.

CASS trains a CNN and a ViT to agree; these maps are the quickest visual check that both arms
attend to the anatomy rather than to borders, text or scanner artefacts. Both functions take a
plain timm model (``CASSModule.cnn`` / ``.vit``, or one reloaded with ``load_backbone``), return
one ``[0, 1]`` map per image at the image's size, and leave the model as they found it: same
train/eval mode, same ``requires_grad`` flags and ``.grad`` tensors, no hooks left behind.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "cnn_gradcam",
    "denormalize",
    "gradcam_target_layer",
    "jet",
    "overlay_grid",
    "require_gradcam",
    "vit_attention_map",
]


def require_gradcam() -> None:
    """Fail early, with the fix, when the optional ``grad-cam`` package is missing: a callback
    calls this at setup so a long run does not die at its first map."""
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "CNN Grad-CAM maps need the grad-cam package: pip install grad-cam"
        ) from error


@contextmanager
def _preserved(model: nn.Module) -> Iterator[None]:
    """Restore ``model``'s train mode, ``requires_grad`` flags and ``.grad`` tensors on exit.

    Both extractors switch the model to eval mode (timm's ``AttentionExtract`` and grad-cam's
    ``BaseCAM`` call ``model.eval()``), and grad-cam calls ``model.zero_grad()``: without this a
    map drawn mid-training would silently drop dropout and discard accumulated gradients.
    """
    training = {m: m.training for m in model.modules()}
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    try:
        yield
    finally:
        for module, mode in training.items():
            module.train(mode)
        for p, flag, grad in zip(params, flags, grads, strict=True):
            p.requires_grad_(flag)
            p.grad = grad


def _normalise(maps: Tensor) -> Tensor:
    """Scale each ``(H, W)`` map to ``[0, 1]``; a constant map becomes all zeros."""
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    return ((flat - low) / span.clamp_min(1e-12)).view_as(maps)


def _last_attention_node(vit: nn.Module) -> str:
    """The fx node name of the last block's attention softmax (timm ``VisionTransformer``)."""
    blocks = getattr(vit, "blocks", None)
    if blocks is None or len(blocks) == 0:
        raise ValueError(f"{type(vit).__name__} has no .blocks: not a timm VisionTransformer")
    return f"blocks.{len(blocks) - 1}.attn.softmax"


@torch.no_grad()
def vit_attention_map(vit: nn.Module, images: Tensor) -> Tensor:
    """The CLS token's attention to the patches in the last block, as ``(B, H, W)`` in ``[0, 1]``.

    Uses timm's own ``timm.utils.AttentionExtract`` (fx tracing of ``blocks.<last>.attn.softmax``)
    rather than hand-written hooks, so nothing stays attached to ``vit``. Fused attention
    (``F.scaled_dot_product_attention``) never materialises the softmax, so ``fused_attn`` is
    switched off on every attention module for the trace and restored after; the traced copy
    shares the model's weights. Heads are averaged, register tokens dropped, the patch grid
    upsampled bilinearly to the image size, and each map scaled to ``[0, 1]``. A ViT without a
    class token gets the mean attention each patch receives from all patches instead.
    """
    from timm.utils import AttentionExtract

    node = _last_attention_node(vit)
    fused = [(m, m.fused_attn) for m in vit.modules() if hasattr(m, "fused_attn")]
    with _preserved(vit):
        try:
            for module, _ in fused:
                module.fused_attn = False
            extractor = AttentionExtract(vit, names=[node], method="fx")
        finally:
            for module, flag in fused:
                module.fused_attn = flag
        param = next(vit.parameters())
        attention = extractor(images.to(param.device, param.dtype))[node].float()  # (B, h, N, N)
    attention = attention.mean(dim=1)
    prefix = int(getattr(vit, "num_prefix_tokens", 1))
    if getattr(vit, "cls_token", None) is not None:
        weights = attention[:, 0, prefix:]
    else:
        weights = attention[:, prefix:, prefix:].mean(dim=1)
    height, width = images.shape[-2:]
    patch_h, patch_w = vit.patch_embed.patch_size
    grid = (height // patch_h, width // patch_w)
    if grid[0] * grid[1] != weights.shape[1]:
        raise ValueError(
            f"{weights.shape[1]} patch tokens do not form a {grid[0]}x{grid[1]} grid for "
            f"{height}x{width} images with {patch_h}x{patch_w} patches"
        )
    maps = weights.reshape(-1, 1, *grid)
    maps = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
    return _normalise(maps[:, 0]).cpu()


def gradcam_target_layer(cnn: nn.Module) -> nn.Module:
    """The layer Grad-CAM reads: the last feature stage timm reports, else the last conv.

    timm models list their stages in ``feature_info`` (``layer4`` for ResNets, ``stages.3`` for
    ConvNeXt), which covers most CNNs without per-family code; a model without it falls back to
    its last ``nn.Conv2d``, which is what Grad-CAM means by "the last convolutional layer".
    """
    feature_info = getattr(cnn, "feature_info", None)
    if feature_info:
        name = feature_info[-1].get("module") if isinstance(feature_info[-1], dict) else None
        if name:
            return cnn.get_submodule(name)
    convs = [m for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(cnn).__name__} has no feature_info and no Conv2d for Grad-CAM")
    return convs[-1]


def cnn_gradcam(
    cnn: nn.Module,
    images: Tensor,
    target: int | Sequence[int] | Tensor | None = None,
    layer: nn.Module | None = None,
) -> Tensor:
    """Grad-CAM of ``cnn`` on ``images`` as ``(B, H, W)`` in ``[0, 1]`` (``grad-cam`` package).

    ``target`` picks the output unit explained: ``None`` the model's top output per image (for a
    CASS arm with ``head="logits"``, its top CASS logit; with pooled-feature heads, its largest
    feature), an ``int`` one unit for all images, a sequence (or 1-D tensor) one unit per image.
    ``layer`` defaults to :func:`gradcam_target_layer`. A map is all zeros where no region of
    that layer raises the target (Grad-CAM keeps positive evidence only), and at sizes where the
    layer is 1x1 (resnet10t below 64 px). The parameters are frozen for the pass (gradients
    flow to the input instead), so their ``.grad`` stays exactly as it was.
    """
    require_gradcam()
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    batch = images.shape[0]
    if target is None:
        targets = None
    else:
        per_image = isinstance(target, Sequence) or getattr(target, "ndim", 0) > 0
        units = [int(t) for t in target] if per_image else [int(target)] * batch
        if len(units) != batch:
            raise ValueError(f"target has {len(units)} entries for {batch} images")
        targets = [ClassifierOutputTarget(unit) for unit in units]
    layer = layer if layer is not None else gradcam_target_layer(cnn)
    param = next(cnn.parameters())
    with _preserved(cnn), torch.enable_grad():
        for p in cnn.parameters():
            p.requires_grad_(False)
        inputs = images.detach().to(param.device, param.dtype).requires_grad_(True)
        with GradCAM(model=cnn, target_layers=[layer]) as cam:
            maps = cam(input_tensor=inputs, targets=targets)
    return _normalise(torch.from_numpy(np.asarray(maps, dtype=np.float32)))


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo ``Normalize(mean, std)`` on ``(N, C, H, W)`` images and clamp to ``[0, 1]``."""
    shape = (1, -1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(shape)
    return (images * std_t + mean_t).clamp(0.0, 1.0)


def jet(values: Tensor) -> Tensor:
    """The classic blue-cyan-yellow-red colour map of ``[0, 1]`` values: ``(..., 3)`` RGB.

    Piecewise linear, so the package needs no plotting library to colour a map.
    """
    x = values.clamp(0.0, 1.0).unsqueeze(-1)
    centres = torch.tensor([0.75, 0.5, 0.25], dtype=x.dtype, device=x.device)
    return (1.5 - (4.0 * x - 4.0 * centres).abs()).clamp(0.0, 1.0)


def overlay_grid(
    images: Tensor,
    maps: Sequence[Tensor],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    alpha: float = 0.5,
    padding: int = 2,
) -> np.ndarray:
    """One row per image: the image, then each map blended over it. ``uint8`` ``(H, W, 3)``.

    ``images`` are ``(B, C, H, W)`` as the model saw them; ``mean``/``std`` undo their
    normalisation (none: shown as they are, clamped to ``[0, 1]``). One-channel images are shown
    in grey, other channel counts other than three by their first channel. ``maps`` are
    ``(B, H, W)`` in ``[0, 1]``, e.g. ``[vit_attention_map(...), cnn_gradcam(...)]``, coloured
    with :func:`jet` and blended with weight ``alpha``.
    """
    from torchvision.utils import make_grid

    images = images.detach().float().cpu()
    if mean is not None and std is not None:
        images = denormalize(images, mean, std)
    else:
        images = images.clamp(0.0, 1.0)
    if images.shape[1] != 3:
        images = images[:, :1].expand(-1, 3, -1, -1)
    tiles = [images]
    for heat in maps:
        heat = heat.detach().float().cpu()
        if heat.shape != (images.shape[0], *images.shape[-2:]):
            raise ValueError(f"map of shape {tuple(heat.shape)} for images {tuple(images.shape)}")
        coloured = jet(heat).permute(0, 3, 1, 2)
        tiles.append((1.0 - alpha) * images + alpha * coloured)
    rows = torch.stack(tiles, dim=1).flatten(0, 1)  # image 0, its maps, image 1, ...
    grid = make_grid(rows, nrow=len(tiles), padding=padding)
    return grid.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
