"""A refused torch file is explained in our words, never with torch's advice to retry with a
code-running load (torch's wording changes between versions)."""

from __future__ import annotations

import os

import pytest
import torch

from cass_lightning.io import UnreadableFileError, load_torch_file


class RunsAShell:
    """A pickle whose load would call ``os.system`` (a blocked module in torch 2.14)."""

    def __reduce__(self):
        return (os.system, ("exit 0",))


class Harmless:
    """A plain custom class: still refused by a weights-only load."""


@pytest.mark.parametrize(("payload", "named"), [(RunsAShell(), "system"), (Harmless(), "Harmless")])
def test_refusal_names_the_object_and_never_passes_on_the_retry_advice(tmp_path, payload, named):
    path = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": payload}, path)
    with pytest.raises(UnreadableFileError) as err:
        load_torch_file(path)
    message = str(err.value)
    assert "hostile.ckpt" in message and named in message and "code-running" in message
    assert "weights_only" not in message and "False" not in message
