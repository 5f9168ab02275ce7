"""The quickstart notebook runs top to bottom in a fresh kernel of this environment and leaves
what it promises: a loss per step, an export folder with both arms, and the maps grid."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ipykernel  # noqa: F401  (dev dependencies: the notebook runs in a real kernel)
import nbclient
import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"
KERNEL = "cass-test-venv"


def _kernelspec(root: Path) -> Path:
    """A kernelspec running *this* interpreter, first on ``JUPYTER_PATH``, so the notebook
    imports this checkout's packages whatever ``python3`` kernel the machine also has."""
    folder = root / "kernels" / KERNEL
    folder.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "cass-lightning test venv",
        "language": "python",
    }
    (folder / "kernel.json").write_text(json.dumps(spec))
    return root


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    monkeypatch.setenv("JUPYTER_PATH", str(_kernelspec(tmp_path / "jupyter")))
    monkeypatch.setenv("CASS_NB_OUT", str(out))
    monkeypatch.setenv("CASS_NB_IMG_SIZE", "32")
    monkeypatch.setenv("CASS_NB_STEPS", "2")
    monkeypatch.setenv("CASS_NB_BATCH_SIZE", "4")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=120, kernel_name=KERNEL, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    text = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    assert "32 px, 2 steps of 4 images" in text
    assert "CASS loss per step:" in text
    assert "reloaded ViT matches the trained arm: True" in text
    assert "maps: (4, 32, 32) (4, 32, 32)" in text
    assert {p.name for p in (out / "export").iterdir()} >= {
        "cnn.safetensors",
        "vit.safetensors",
        "meta.json",
        "timm-cnn",
        "timm-vit",  # the folder plain timm reloaded the ViT from
    }
    assert (out / "maps.png").stat().st_size > 0


def _results(
    folder: Path, *, value: float, init: str, arm: str, fraction: float, seed: int
) -> None:
    """One results.json as cass-finetune writes it."""
    folder.mkdir(parents=True)
    result = {
        "arm": arm, "mode": "finetune", "init": init, "weights": None, "dataset": "synthetic",
        "label_fraction": fraction, "seed": seed, "test_split": "val",
        "metrics": {"test/f1_macro": value},
    }  # fmt: skip
    (folder / "results.json").write_text(json.dumps(result))


@pytest.mark.slow
def test_results_notebook_shows_a_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cass_lightning.apps.report import main as report

    runs = tmp_path / "runs"
    values = {("random", "cnn", 0.1): [0.3, 0.5], ("imagenet", "cnn", 0.1): [0.6, 0.8],
              ("random", "vit", 1.0): [0.4, 0.4]}  # fmt: skip
    for i, ((init, arm, fraction), scores) in enumerate(values.items()):
        for seed, value in enumerate(scores):
            _results(runs / f"{i}_{seed}", value=value, init=init, arm=arm, fraction=fraction,
                     seed=seed)  # fmt: skip
    assert report([str(runs), "--out", str(tmp_path / "report")]) == 0

    monkeypatch.setenv("JUPYTER_PATH", str(_kernelspec(tmp_path / "jupyter")))
    monkeypatch.setenv("CASS_NB_REPORT", str(tmp_path / "report"))
    notebook = nbformat.read(NOTEBOOK.with_name("results.ipynb"), as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=120, kernel_name=KERNEL, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    text = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    assert "3 rows from" in text and "methods: imagenet, random" in text
    assert "best cnn at 0.1 labels: imagenet (0.7000 ± 0.1414, n=2)" in text
    assert "best vit at 1 labels: random (0.4000 ± 0.0000, n=2)" in text
    kinds = {k for c in notebook.cells for o in c.get("outputs", []) for k in o.get("data", {})}
    assert {"text/markdown", "image/png"} <= kinds  # the table and the plot were displayed
