"""cass-export: checkpoint -> plain timm weights, never overwriting."""

from __future__ import annotations

import json
import re

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from cass_lightning import CASSModule
from cass_lightning.apps.export import default_out_dir, export_checkpoint, main
from cass_lightning.export import load_backbone


@pytest.fixture
def checkpoint(tmp_path, tiny_kwargs):
    model = CASSModule(**tiny_kwargs)
    trainer = L.Trainer(max_steps=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, DataLoader(torch.randn(4, 3, 32, 32), batch_size=4))
    path = tmp_path / "run" / "checkpoints" / "best.ckpt"
    path.parent.mkdir(parents=True)
    trainer.save_checkpoint(path)
    return path, model


def test_export_from_checkpoint_matches_the_model(checkpoint):
    path, model = checkpoint
    out = export_checkpoint(path)
    assert out == path.parent.parent / "export-best" == default_out_dir(path)
    cnn = load_backbone(out, "cnn")
    for key, value in model.cnn.state_dict().items():
        torch.testing.assert_close(cnn.state_dict()[key], value)


def test_cli_refuses_existing_export_and_missing_checkpoint(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    main([str(path), "--out", str(tmp_path / "e")])
    assert "exported" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main([str(path), "--out", str(tmp_path / "e")])
    assert exc.value.code == 1 and "already holds an export" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "missing.ckpt")])
    assert exc.value.code == 1 and "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # a usage error
        main([str(path), "--no-such-flag"])
    assert exc.value.code == 2


def _truncated(path, tmp_path):
    target = tmp_path / "truncated.ckpt"
    target.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return target


def _hostile(path, tmp_path):
    class Hostile:
        def __reduce__(self):
            return (open, (str(tmp_path / "marker"), "w"))

    target = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"cnn": "x", "vit": "y"},
                "payload": Hostile()}, target)  # fmt: skip
    return target


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_truncated, "empty or truncated"),
        (lambda path, tmp: tmp / "empty.ckpt", "empty or truncated"),
        (lambda path, tmp: tmp / "notes.ckpt", "not a torch file"),
        (lambda path, tmp: tmp / "weights.ckpt", "not a Lightning checkpoint"),
        (_hostile, r"Python object \(.*open\) that only a code-running load"),
    ],
    ids=["truncated", "empty", "text", "plain-tensors", "hostile"],
)
def test_cli_names_a_file_that_is_not_a_usable_checkpoint(
    checkpoint, tmp_path, capsys, monkeypatch, make, reason
):
    """Once a bare EOFError or a raw traceback; now the file, the reason, exit 1, no export."""
    path, _ = checkpoint
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "notes.ckpt").write_text("not a checkpoint at all")
    torch.save({"w": torch.ones(3)}, tmp_path / "weights.ckpt")
    bad = make(path, tmp_path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(SystemExit) as exc:
        main([str(bad), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 1
    assert bad.name in err and re.search(reason, err), err
    assert "weights_only=False" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "marker").exists()


def test_export_meta_says_what_the_arms_started_from(checkpoint, tmp_path):
    path, _ = checkpoint
    state = torch.load(path, weights_only=True)
    init = {"cnn": {"init": "file", "file": "/w/r.safetensors", "sha256": "ab", "keys_loaded": 3,
                    "keys_adapted": {}, "keys_fresh": []}, "vit": {"init": "random"}}  # fmt: skip
    state["weights_init"] = init
    recorded = tmp_path / "recorded.ckpt"
    torch.save(state, recorded)
    meta = json.loads((export_checkpoint(recorded, tmp_path / "a") / "meta.json").read_text())
    assert meta["cnn"]["init"] == init["cnn"] and meta["vit"]["init"] == {"init": "random"}
    # A checkpoint from before the record: what its hyperparameters say, marked unrecorded.
    meta = json.loads((export_checkpoint(path, tmp_path / "b") / "meta.json").read_text())
    assert meta["cnn"]["init"] == {"init": "unrecorded", "pretrained": False, "file": None}
