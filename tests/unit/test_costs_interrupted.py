"""A pretraining whose cost is not known in full is shown as such and kept out of the ratios."""

from __future__ import annotations

from typing import Any

from cass_lightning.apps.run.runinfo import attempt_costs
from cass_lightning.report.costs import NOT_COMPARABLE, cost_markdown, cost_rows, ratios


def cost(method: str, arm: str, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"method": method, "arm": arm, "fit_seconds": seconds, "images_per_s": 50.0,
            "peak_memory_gib": 2.5, "memory_kind": "gpu", "epochs": 4, "batch_size": 16,
            "steps": 72, "dataset": "d", **extra}  # fmt: skip


def test_an_interrupted_run_is_marked_and_left_out_of_the_ratios():
    costs = [
        cost("cass", "both", 13.4, cost_comparable=False),
        cost("dino", "cnn", 20.0),
        cost("dino", "vit", 22.0),
    ]
    assert ratios(costs) == []  # the only CASS run is not comparable
    lines = cost_markdown(costs)
    assert any("| CASS (both arms) |" in line and NOT_COMPARABLE in line for line in lines)
    assert not any("less time" in line for line in lines)
    # A whole CASS run beside it: its own row, the ratio from it alone.
    (found,) = ratios([*costs, cost("cass", "both", 10.5)])
    assert found["vs_both"] == 10.5 / 42.0
    rows = [r for r in cost_rows([*costs, cost("cass", "both", 10.5)]) if r["method"] == "cass"]
    assert [(r["comparable"], r["n"], r["fit_seconds"]) for r in rows] == [
        (True, 1, 10.5), (False, 1, 13.4)]  # fmt: skip


def start(seconds: float | None, steps: int, images: int) -> dict[str, Any]:
    ended = None if seconds is None else "2026-01-01T00:00:10+00:00"
    return {"started": "2026-01-01T00:00:00+00:00", "ended": ended, "seconds": seconds,
            "train_seconds": seconds and seconds / 2, "steps": steps, "images": images,
            "outcome": "stopped" if ended else None}  # fmt: skip


def test_attempt_costs_add_up_every_start_or_say_why_not():
    whole = attempt_costs([start(10.0, 3, 24), start(20.0, 9, 72)])
    assert (whole["fit_seconds"], whole["steps"], whole["images"]) == (30.0, 12, 96)
    assert whole["images_per_s"] == 96 / 15.0 and whole["cost_comparable"] is True
    assert len(whole["attempts"]) == 2 and "cost_note" not in whole
    killed = attempt_costs([{"started": "2026-01-01T00:00:00+00:00"}, start(20.0, 9, 72)])
    assert killed["cost_comparable"] is False
    assert killed["cost_note"].startswith("start(s) 1 of 2 recorded no end")
