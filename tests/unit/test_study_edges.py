"""A study point always finishes or says why: the settings that would change the grid unseen
are refused, a signal to the study's own process stops it as Ctrl-C does, the data listing
follows linked folders and refuses loops, and a failed point comes with its way on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app_helpers import app_env, compose_app
from cass_lightning.apps.study.app import settings_from, wait_forwarding, ways_on
from cass_lightning.apps.study.data import _data_listing, data_check_folder
from cass_lightning.apps.study.plan import FAILED_FILE, Point
from cass_lightning.apps.study.points import DATA_REPORT, run_data_check
from cass_lightning.apps.study.settings import (
    StudySettingsError,
    check_study_names,
    fraction_problems,
    refuse_merged_grid,
)
from data_fixtures import image


def test_an_epoch_scale_that_merges_grid_lengths_is_refused_by_name():
    with pytest.raises(StudySettingsError, match=r"epoch_scale=0.001 .* into \[1, 1, 1, 1\]"):
        refuse_merged_grid([50, 100, 200, 300], 0.001)
    with pytest.raises(StudySettingsError, match=r"epoch_scale >= 0\.02"):
        refuse_merged_grid([50, 100, 200, 300], 0.01)
    refuse_merged_grid([50, 100, 200, 300], 0.02)  # 1, 2, 4, 6: four lengths still


def test_a_study_name_that_cannot_name_a_folder_is_one_line_before_hydra(tmp_path):
    assert check_study_names(["study=smoke", "study.name=isic-1_b.2"]) is None
    assert "study.name=" in check_study_names(["study.name=a/b"])
    long = "a" * 300
    done = subprocess.run(
        [sys.executable, "-m", "cass_lightning.apps.study", f"study.name={long}"],
        capture_output=True, text=True, env=app_env(tmp_path), timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"Error: study.name={'a' * 40}...: give 1-100 letters, digits, '.', '_' or '-' (it "
        "names the study's folder)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_sigint_to_the_study_process_alone_stops_its_worker_like_ctrl_c(tmp_path):
    marker = tmp_path / "got"
    worker = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys, time\n"
        "def stop(signum, frame):\n"
        f"    open({str(marker)!r}, 'w').write(str(signum)); sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        f"open({str(marker)!r} + '.ready', 'w').close()\n"
        "time.sleep(60)\n")])  # fmt: skip
    deadline = time.monotonic() + 30
    while not Path(f"{marker}.ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))  # this process only
    timer.start()
    try:
        code = wait_forwarding(worker)
    finally:
        timer.cancel()
        worker.kill()
    assert code == 130
    assert marker.read_text() == str(int(signal.SIGTERM))  # saved-and-stopped, not killed


def _listing(root: Path, tmp_path: Path):
    overrides = ["data=image_folder", f"data.root={root}", "model.img_size=32"]
    return _data_listing(overrides, tmp_path / "check")


def test_the_data_listing_follows_linked_folders_and_refuses_loops(tmp_path):
    root = tmp_path / "data"
    image(root / "a" / "1.png")
    image(tmp_path / "store" / "2.png")
    os.symlink(tmp_path / "store", root / "b")
    listing = _listing(root, tmp_path)
    assert sorted(listing["files"]) == ["a/1.png", "b/2.png"]
    image(tmp_path / "store" / "3.png")  # an image added under the linked folder
    assert _listing(root, tmp_path)["sha256"] != listing["sha256"]
    os.symlink(root, root / "a" / "up")
    with pytest.raises(ValueError, match=r"symbolic-link loop: .*a/up leads back"):
        _listing(root, tmp_path)


def test_a_failed_point_is_named_with_its_reason_and_the_way_on(tmp_path):
    point = Point("pretrain-cass-1234abcd", "pretrain", 0, "cass", "both", [], "d")
    folder = point.folder(tmp_path)
    folder.mkdir(parents=True)
    (folder / FAILED_FILE).write_text(json.dumps({
        "error": "ValueError", "message": "the data is bad\nsecond line"}))  # fmt: skip
    lines = ways_on([point], {point.id: "failed"}, tmp_path)
    assert lines[0] == "  pretrain-cass-1234abcd failed: ValueError: the data is bad"
    assert f"mv {folder} {folder}.set-aside and run the same cass-study command" in lines[1]
    assert ways_on([point], {point.id: "done"}, tmp_path) == []


def test_a_fraction_below_one_image_per_class_is_refused_where_the_data_is_known(tmp_path):
    report = {"multi_label": False,
              "splits": {"train": {"class_counts": {"a": 6, "b": 200}}}}  # fmt: skip
    (problem,) = fraction_problems(report, [1.0, 0.5, 0.001])
    assert problem.startswith("study.fractions: 0.001 (0.1 %) gives 2 class(es) less than one")
    assert "raised to one image (16.7% of a), not 0.1 %" in problem
    assert "at least 0.167" in problem
    assert fraction_problems({**report, "multi_label": True}, [0.001]) == []
    # The worker's data check (first run) and the study's reuse of a passed check (rerun).
    cfg = compose_app(tmp_path, [
        "study=smoke", "study.fractions=[0.001]", "study.encoders.img_size=32",
        'study.overrides.data=["data.images_per_class=4","data.val_images_per_class=1",'
        '"data.image_size=32","data.num_workers=0"]'], config_name="study")  # fmt: skip
    settings = settings_from(cfg, [], tmp_path / "study")
    folder = data_check_folder(settings, tmp_path / "study")
    assert run_data_check(folder) is False
    saved = json.loads((folder / DATA_REPORT).read_text())["problems"]
    assert saved and saved[-1].startswith("study.fractions: 0.001 (0.1 %) gives 6 class(es)")
    saved = json.loads((folder / DATA_REPORT).read_text())
    (folder / DATA_REPORT).write_text(json.dumps({**saved, "problems": []}))  # as if it passed
    with pytest.raises(ValueError, match=r"study.fractions: 0\.001 \(0\.1 %\) gives 6 class"):
        data_check_folder(settings, tmp_path / "study")
