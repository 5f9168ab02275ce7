"""cass-export: checkpoint -> plain timm weights, never overwriting."""

from __future__ import annotations

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
    assert exc.value.code == 2 and "already holds an export" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.ckpt")])
    assert "checkpoint not found" in capsys.readouterr().err
