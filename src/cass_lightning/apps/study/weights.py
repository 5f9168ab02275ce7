"""The ImageNet weights a study starts from: a file per arm, or ``hub`` (timm's default
pretrained weights from the local Hugging Face cache), each recorded with its SHA-256."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

HUB = "hub"


def resolve_weights(
    given: dict[str, str | None],
    encoders: dict[str, Any],
    find_hub: Callable[[str], Any] | None = None,
) -> tuple[dict[str, str | None], dict[str, dict[str, Any]]]:
    """The ImageNet weights file of each arm, and where it came from (file, SHA-256, hub entry).

    ``study.weights.<arm>`` is a weights file or ``hub``: the local Hugging Face cache file of
    timm's default pretrained weights of that arm's encoder, found by ``find_hub`` (the
    encoder's timm name -> :class:`cass_lightning.encoders.HubWeights`; default
    :func:`cass_lightning.encoders.hub_weights_file`, imported only when asked). A hub the
    study cannot use (not cached, not reachable) is refused here, by name, before the study
    starts anything.
    Both arms or neither: CASS starts both arms from ImageNet weights, or none.
    """
    from cass_lightning.io import file_sha256

    if bool(given.get("cnn")) != bool(given.get("vit")):
        raise ValueError(
            "give both study.weights.cnn and study.weights.vit (CASS starts both arms from "
            "ImageNet weights, or neither), got only one"
        )
    files: dict[str, str | None] = {}
    sources: dict[str, dict[str, Any]] = {}
    for arm, value in given.items():
        if not value:
            files[arm] = None
            continue
        source: dict[str, Any] = {}
        if str(value) == HUB:
            from cass_lightning.encoders import HubUnreachableError, hub_weights_file

            try:
                hub = (find_hub or hub_weights_file)(str(encoders[arm]))
            except (HubUnreachableError, ValueError, FileNotFoundError) as err:
                raise type(err)(f"study.weights.{arm}={HUB}: {err}") from None
            file = Path(hub.file)
            source["hub"] = hub.hub_id
        else:  # absolute, not resolved: the name's suffix says how to read the file
            file = Path(os.path.abspath(Path(str(value)).expanduser()))
        if not file.is_file():
            raise FileNotFoundError(f"study.weights.{arm}: {file} not found")
        files[arm] = str(file)
        sources[arm] = {"file": str(file), "sha256": file_sha256(file), **source}
    return files, sources
