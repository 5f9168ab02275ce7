"""Named datamodules for the layouts with options of their own, so configs and users can write
``SyntheticDataModule(root, images_per_class=...)`` instead of ``options={...}``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cass_lightning.data.datamodule import MedicalDataModule


class SyntheticDataModule(MedicalDataModule):
    """The seeded synthetic set (6 classes), written once under ``root``; train/val splits."""

    def __init__(
        self,
        root: str | Path,
        images_per_class: int = 100,
        val_images_per_class: int = 20,
        image_size: int = 96,
        seed: int = 77,
        **kwargs: Any,
    ) -> None:
        options = dict(
            images_per_class=images_per_class,
            val_images_per_class=val_images_per_class,
            image_size=image_size,
            seed=seed,
        )
        kwargs.setdefault("test_fraction", 0.0)
        super().__init__("synthetic", root, options=options, **kwargs)


class ImageFolderDataModule(MedicalDataModule):
    """``<root>/<class>/<image>``, or ``<root>/{train,val,test}/<class>/<image>``."""

    def __init__(self, root: str | Path, **kwargs: Any) -> None:
        super().__init__("image_folder", root, **kwargs)


class MedMNISTDataModule(MedicalDataModule):
    """A local MedMNIST ``<root>/<name>[_<size>].npz``; official train/val/test splits."""

    def __init__(
        self,
        root: str | Path,
        name: str,
        size: int | None = None,
        class_names: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        options = dict(name=name, size=size, class_names=class_names)
        super().__init__("medmnist", root, options=options, **kwargs)
