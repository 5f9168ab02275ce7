"""docs/extending.md's recipe runs as written: the commands of its tested block, one after the
other in a fresh folder, pretrain a method on the debug data, fine-tune it and a random
baseline over two seeds, and report both as rows of their own."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "extending.md"
MARKER = "<!-- recipe: run by tests/integration/test_docs_recipe.py -->"


def recipe_commands(text: str) -> list[list[str]]:
    """The commands of the fenced block right after the marker (one per line, ``\\``-joined)."""
    after = text.split(MARKER, 1)[1]
    block = after.split("```bash\n", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line.strip()]


def test_the_recipe_block_is_found_and_uses_only_the_apps():
    commands = recipe_commands(DOC.read_text())
    assert [c[0] for c in commands] == ["cass-pretrain", "cass-finetune", "cass-report"]


@pytest.mark.slow
def test_the_recipe_pretrains_fine_tunes_and_reports_on_the_debug_data(tmp_path):
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASS_")}
    env.update(WANDB_MODE="disabled", OMP_NUM_THREADS="1",
               PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")  # fmt: skip
    for command in recipe_commands(DOC.read_text()):
        done = subprocess.run([str(bin_dir / command[0]), *command[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
        assert done.returncode == 0, (command, done.stderr[-3000:])
    recipe = tmp_path / "runs" / "recipe"
    results = [json.loads(p.read_text()) for p in (recipe / "finetune").rglob("results.json")]
    assert sorted((r["method"], r["seed"]) for r in results) == [
        ("random", 0), ("random", 1), ("simsiam", 0), ("simsiam", 1)
    ]  # fmt: skip
    assert {r["init"] for r in results if r["method"] == "simsiam"} == {"export"}
    assert {r["timm_name"] for r in results} == {"resnet10t"}  # debug=tiny's model.cnn
    with (recipe / "report" / "report.csv").open() as fh:
        rows = {(r["method"], r["arm"]): r for r in csv.DictReader(fh)}
    assert set(rows) == {("simsiam", "cnn"), ("random", "cnn")}
    assert all(r["n"] == "2" for r in rows.values())
    md = (recipe / "report" / "report.md").read_text()
    assert "| SimSiam | cnn |" in md and "| Random | cnn |" in md
