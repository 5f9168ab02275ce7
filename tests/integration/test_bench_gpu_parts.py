"""The device script's Python parts run on CPU with tiny models for a step or two."""

from __future__ import annotations

import pytest

from cass_lightning.machine import local_device
from run_helpers import load_bench

TINY = ["--cnn", "resnet10t", "--vit", "vit_tiny_patch16_224"]


@pytest.mark.slow
def test_gpu_step_measures_both_paths_per_configuration(tmp_path):
    out = tmp_path / "step.md"
    lines = load_bench("gpu_step").main(
        [
            "--device",
            "cpu",
            *TINY,
            "--steps",
            "1",
            "--warmup",
            "1",
            "--out",
            str(out),
            "--configs",
            "32-true:4:shipped:32",
            "32-true:4:off:32",
        ]
    )
    rows = [line for line in lines if line.startswith("| 32-true")]
    assert [row.split(" | ")[3:5] for row in rows] == [
        ["shipped", "plain"],
        ["shipped", "lightning"],
        ["off", "plain"],
        ["off", "lightning"],
    ]
    assert not any("failed" in row for row in rows)
    assert all(row.endswith(f"| {local_device('cpu')} |") for row in rows)  # the device beside
    assert out.read_text().splitlines() == lines


@pytest.mark.slow
def test_cass_vs_dino_takes_the_same_speed_settings_for_every_method(tmp_path, capsys):
    load_bench("cass_vs_dino").main(
        [
            "--device",
            "cpu",
            *TINY,
            "--img-size",
            "32",
            "--images",
            "12",
            "--batch-size",
            "4",
            "--dino-head-dim",
            "64",
            "--epochs",
            "1",
            "--warmup-epochs",
            "0",
            "--speed",
            "off",
            "--jobs",
            "CASS",
            "DINO-CNN",
            "--data-dir",
            str(tmp_path / "data"),
        ]
    )
    out = capsys.readouterr().out
    assert "speed settings off" in out and "| DINO-CNN |" in out and "CASS / DINO-CNN =" in out
    here = local_device("cpu")
    assert f"| {here} |" in out  # each time with the device it was measured on
    ratio = out.split("CASS / DINO-CNN = ")[1].split()[0]
    assert float(ratio) > 0  # one device: the ratio is computed
