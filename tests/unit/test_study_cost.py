"""The study's own cost: wall time from process start, loops only from this invocation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace

from cass_lightning.apps.study import report as study_report
from cass_lightning.apps.study.plan import Point
from cass_lightning.apps.study.points import TIMING_FILE
from cass_lightning.apps.study.report import overhead


def test_the_study_time_counts_from_the_process_start():
    """What ran before the study's code (interpreter start, imports, here a 1 s sleep) counts."""
    code = ("import time; time.sleep(1.0); from cass_lightning.apps.study.report import "
            "seconds_since_start; print(seconds_since_start())")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 1.0 <= float(out.stdout) < 60


def test_overhead_counts_the_loops_of_this_invocation_only(tmp_path, monkeypatch):
    point = Point("finetune-a", "finetune", 1, "cass", "cnn", [], "d")
    older = replace(point, id="finetune-b")
    for p, loop in ((point, 30.0), (older, 500.0)):
        folder = p.folder(tmp_path)
        folder.mkdir(parents=True)
        (folder / TIMING_FILE).write_text(
            json.dumps({"wall_seconds": loop + 1, "loop_seconds": loop})
        )
    stale = time.time() - 3600
    os.utime(older.folder(tmp_path) / TIMING_FILE, (stale, stale))  # from an earlier invocation
    monkeypatch.setattr(study_report, "INVOCATION_STARTED", time.time() - 60)
    cost = overhead([point, older], tmp_path, wall=40.0)
    assert cost == {"wall_seconds": 40.0, "loop_seconds": 30.0, "overhead_seconds": 10.0,
                    "overhead_fraction": 0.25}  # fmt: skip
