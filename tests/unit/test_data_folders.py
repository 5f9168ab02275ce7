"""Folder layouts against symbolic-link loops, folders linked twice and unexpected classes."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest

from cass_lightning.data import MedicalDataModule
from cass_lightning.data.layouts import (
    index_brain_mri,
    index_dermofit,
    index_image_folder,
    index_isic2019,
)
from data_fixtures import BRAIN_CLASSES, brain, dermofit, image, isic, isic_row


def _classes(root: Path, counts: dict[str, int]) -> Path:
    for name, count in counts.items():
        for i in range(count):
            image(root / name / f"{name}_{i}.png", seed=i)
    return root


def test_a_link_back_to_an_ancestor_is_not_followed_again(tmp_path) -> None:
    root = _classes(tmp_path / "data", {"a": 2, "b": 2})
    (root / "a" / "sub").mkdir()
    image(root / "a" / "sub" / "deep.png")
    (root / "a" / "sub" / "loop").symlink_to(root / "a")  # a/sub/loop/sub/loop/... forever
    with pytest.warns(UserWarning, match=r"symbolic-link loop or a folder linked twice"):
        index = index_image_folder(root)
    assert index.keys == ["a/a_0.png", "a/a_1.png", "a/sub/deep.png", "b/b_0.png", "b/b_1.png"]


def test_a_folder_linked_twice_in_one_class_counts_once(tmp_path) -> None:
    store = _classes(tmp_path / "store", {"scans": 3}) / "scans"
    root = _classes(tmp_path / "data", {"a": 1, "b": 2})
    (root / "a" / "first").symlink_to(store)
    (root / "a" / "second").symlink_to(store)
    with pytest.warns(UserWarning, match="linked twice"):
        index = index_image_folder(root)
    assert [k for k in index.keys if k.startswith("a/")] == [
        "a/a_0.png", "a/first/scans_0.png", "a/first/scans_1.png", "a/first/scans_2.png",
    ]  # fmt: skip
    assert index.class_counts().tolist() == [4, 2]


def test_one_file_linked_twice_in_one_class_counts_once(tmp_path) -> None:
    root = _classes(tmp_path / "data", {"a": 2, "b": 2})
    (root / "a" / "copy.png").symlink_to(root / "a" / "a_0.png")
    with pytest.warns(UserWarning, match=r"indexed once \(left out: a/copy\.png\)"):
        index = index_image_folder(root)
    assert index.class_counts().tolist() == [2, 2]


def test_a_link_into_another_class_is_refused_naming_both(tmp_path) -> None:
    root = _classes(tmp_path / "data", {"a": 2, "b": 2})
    (root / "a" / "more").symlink_to(root / "b")
    with pytest.raises(ValueError) as info:
        index_image_folder(root)
    message = str(info.value)
    assert "a/more/b_0.png (class a) and b/b_0.png (class b)" in message
    assert "two labels" in message


def test_a_link_to_the_root_inside_a_class_is_refused(tmp_path) -> None:
    root = _classes(tmp_path / "data", {"a": 2, "b": 2})
    (root / "a" / "up").symlink_to(root)  # a loop that also pulls in class b
    with pytest.raises(ValueError, match=r"a/up/b/b_0\.png \(class a\) and b/b_0\.png"):
        index_image_folder(root)


def test_brain_mri_test_images_linked_into_training_are_refused(tmp_path) -> None:
    root = brain(tmp_path / "brain")
    (root / "Training" / "glioma" / "more").symlink_to(root / "Testing" / "glioma")
    with pytest.raises(ValueError, match=r"split train\) and Testing/glioma/Te-gl_0010\.jpg"):
        index_brain_mri(root)


def test_brain_mri_extra_class_in_both_splits_is_refused_by_name(tmp_path) -> None:
    root = brain(tmp_path / "brain")
    for split in ("Training", "Testing"):
        image(root / split / "meningioma_old" / "x.jpg", mode="L")
    with pytest.raises(ValueError) as info:
        index_brain_mri(root)
    message = str(info.value)
    assert "['meningioma_old']" in message and "glioma, meningioma, notumor, pituitary" in message
    assert "Training/meningioma_old/" in message and "allow_extra_classes=true" in message
    index = index_brain_mri(root, allow_extra_classes=True)
    assert index.classes == [*BRAIN_CLASSES[:2], "meningioma_old", *BRAIN_CLASSES[2:]]


def test_brain_mri_missing_class_is_warned(tmp_path) -> None:
    root = brain(tmp_path / "brain")
    for split in ("Training", "Testing"):
        shutil.rmtree(root / split / "notumor")
    with pytest.warns(UserWarning, match=r"no class folder for \['notumor'\]"):
        index = index_brain_mri(root)
    assert index.classes == ["glioma", "meningioma", "pituitary"]


def test_dermofit_unknown_class_is_refused_unless_allowed(tmp_path) -> None:
    root = dermofit(tmp_path / "dermofit")
    image(root / "Melanoma" / "X1" / "X1.png")
    with pytest.raises(ValueError, match=r"\['Melanoma'\] under .* are not dermofit classes"):
        index_dermofit(root)
    with pytest.warns(UserWarning, match="no class folder for"):  # 3 of the 10 are present
        index = index_dermofit(root, allow_extra_classes=True)
    assert index.classes == ["AK", "BCC", "MEL", "Melanoma"]


def test_datamodule_takes_allow_extra_classes_as_a_layout_option(tmp_path) -> None:
    root = brain(tmp_path / "brain", per_class=3)
    for split in ("Training", "Testing"):
        for i in range(3):
            image(root / split / "other" / f"o{i}.jpg", mode="L", seed=i)
    kwargs = dict(img_size=8, batch_size=2, val_fraction=0.0)
    with pytest.raises(ValueError, match="allow_extra_classes"):
        MedicalDataModule("brain_mri", root, **kwargs).setup()
    dm = MedicalDataModule("brain_mri", root, options={"allow_extra_classes": True}, **kwargs)
    dm.setup()
    assert dm.num_classes == 5


def test_isic_classes_are_fixed_by_the_header(tmp_path) -> None:
    """An extra class column cannot add a class: a row with its 1 there is refused."""
    rows = [isic_row("ISIC_0000000", "MEL") + ",0.0", isic_row("ISIC_0000001", "NV") + ",0.0"]
    rows.append(isic_row("ISIC_0000002", "none") + ",1.0")
    header = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK,XYZ"
    root = isic(tmp_path / "isic", rows=rows, header=header)
    with pytest.raises(ValueError, match=r"line 4 .*one-hot row has 0 ones"):
        index_isic2019(root)


def test_a_plain_tree_warns_nothing(tmp_path) -> None:
    root = _classes(tmp_path / "data", {"a": 2, "b": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(index_image_folder(root)) == 4
