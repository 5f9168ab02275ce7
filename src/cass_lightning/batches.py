"""The batch contracts: what each module and callback reads from a batch, in one place.

Batches reach the modules in a few shapes: a bare image tensor, ``(images, labels)`` as a tuple
or list, a dict with ``"image"`` (and ``"label"``), and for multi-view training
``([view_1, view_2, ...], labels)`` or a dict with ``"views"``. Each function here reads one
contract and names the shape it needed when the batch does not fit:

- :func:`batch_images`: one image tensor from any batch (the first view of a multi-view batch);
  what callbacks count, show and draw maps on.
- :func:`batch_labels`: the labels, or ``None`` for a bare tensor.
- :func:`same_size_views`: CASS's views, all of one shape: ``[images]`` or the views of a
  ``data.train_views=pair`` batch.
- :func:`multicrop_views`: DINO's global + local crops (sizes differ); at least two.
- :func:`images_and_targets`: fine-tuning's ``(images, targets)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

_SHAPES = (
    "an image tensor, an (images, labels) tuple/list, a dict with 'image', or ([view, ...], labels)"
)


def _is_view_list(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(v, Tensor) for v in value)
    )


def _first(batch: Any) -> Any:
    """The image part of a batch: the tensor itself, ``batch[0]``, or the dict's entry."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Mapping):
        if "views" in batch:
            return list(batch["views"])
        if "image" not in batch:
            raise KeyError(f"a dict batch needs the key 'image'; got keys {sorted(batch)}")
        return batch["image"]
    if isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) > 0:
        return batch[0]
    raise TypeError(f"a batch must be {_SHAPES}; got {type(batch).__name__}")


def _check_images(images: Any) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"expected images as a (batch, channels, H, W) tensor, got {shape}")
    return images


def batch_images(batch: Any) -> Tensor:
    """The image tensor of any batch; for a list of views, the first view."""
    if isinstance(batch, Mapping) and "image" in batch:
        return _check_images(batch["image"])
    images = _first(batch)
    if _is_view_list(images):
        images = images[0]
    return _check_images(images)


def batch_labels(batch: Any) -> Tensor | None:
    """The labels of ``(images, labels)`` or of a dict's ``"label"``; ``None`` when absent."""
    if isinstance(batch, Mapping):
        return batch.get("label")
    if isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) > 1:
        return batch[1]
    return None


def same_size_views(batch: Any) -> list[Tensor]:
    """The views of a CASS batch: ``[images]`` for a single view, else the list of views, which
    must share one ``(batch, channels, H, W)`` shape."""
    images = _first(batch)
    if not _is_view_list(images):
        return [_check_images(images)]
    views = [_check_images(v) for v in images]
    shapes = {tuple(v.shape) for v in views}
    if len(shapes) != 1:
        raise ValueError(
            f"the views of a batch must be (batch, channels, H, W) tensors of one shape, got "
            f"{sorted(shapes)}"
        )
    return views


def multicrop_views(batch: Any) -> list[Tensor]:
    """DINO's crops: from ``[views, labels]`` or a dict with ``"views"``.

    A single image tensor means the loader gives CASS's one-view batches, which DINO cannot
    train on: that is the common configuration mistake, so it gets its own message.
    """
    views = _first(batch)
    if isinstance(views, Tensor):
        raise ValueError(
            "DINOModule needs multi-crop batches (a list of views per batch), but got a single "
            "image tensor. Set data.train_views=dino (cass-pretrain model=dino asks for it) or use "
            "cass_lightning.data.views.dino_views as the training transform."
        )
    if not _is_view_list(views) or len(views) < 2 or any(v.ndim != 4 for v in views):
        raise ValueError(
            "DINOModule expects [views, labels] with views a list of at least two "
            f"(batch, channels, H, W) tensors; got {type(views).__name__}"
        )
    return list(views)


def images_and_targets(batch: Any) -> tuple[Tensor, Tensor]:
    """``(images, targets)`` of a fine-tuning batch: a 2-tuple/list or ``{"image", "label"}``."""
    if isinstance(batch, Mapping) and "image" in batch and "label" in batch:
        return batch["image"], batch["label"]
    if isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(
        "fine-tuning batches must be (images, targets) or {'image', 'label'}; "
        f"got {type(batch).__name__}"
    )
