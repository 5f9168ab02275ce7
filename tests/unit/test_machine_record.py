"""Every figure says where it came from: the machine record, and times divided only between
runs on the same device."""

from __future__ import annotations

import json

import torch

from cass_lightning.apps.study.plan import Point
from cass_lightning.apps.study.report import gather
from cass_lightning.machine import (
    cpu_model,
    device_label,
    local_device,
    machine_record,
    same_device,
    time_ratio,
)
from cass_lightning.report.costs import cost_markdown, machines_markdown, ratios

H100 = {"gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.2}], "processes": 1}
H200 = {"gpus": [{"name": "NVIDIA H200", "memory_gib": 139.8}], "processes": 1}


def test_a_cpu_record_holds_precision_device_processes_and_versions():
    record = machine_record("bf16-mixed", "cpu", 1, 2)
    assert (record["precision"], record["accelerator"], record["processes"]) == (
        "bf16-mixed", "cpu", 2)  # fmt: skip
    assert record["cpu"] == cpu_model() and record["cpu_bf16_native"] in (True, False, None)
    versions = record["versions"]
    assert versions["cuda"] == torch.version.cuda
    assert {"torch", "lightning", "timm", "torchvision", "cuda", "cudnn"} <= set(versions)
    assert all(versions[k] for k in ("torch", "lightning", "timm", "torchvision"))
    assert record["device"].startswith(f"CPU: {record['cpu']} (") and "2 processes" in record[
        "device"]  # fmt: skip
    assert local_device("cpu") == machine_record("32-true", "cpu", 1, 1)["device"]


def test_device_labels_name_the_gpu_and_its_memory_and_tell_devices_apart():
    assert device_label(H100) == "NVIDIA H100 80GB HBM3 x1 (79.2 GiB)"
    assert device_label({**H100, "processes": 2}).endswith("(79.2 GiB, 2 processes)")
    assert device_label(None) == "unknown device"
    assert same_device(H100, dict(H100)) and not same_device(H100, H200)
    assert not same_device(H100, None)  # a run that recorded nothing is never matched
    assert cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n") == "AMD EPYC 7B13"


def test_a_time_ratio_across_devices_is_refused_with_the_reason():
    assert time_ratio(30.0, "A", 100.0, "A") == (0.3, "")
    value, why = time_ratio(30.0, "A", 100.0, "B")
    assert value is None and "different devices (A vs B)" in why


def _cost(method: str, arm: str, seconds: float, device: str | None) -> dict:
    return {"method": method, "arm": arm, "fit_seconds": seconds, "epochs": 10,
            "batch_size": 16, "dataset": "brain_mri", "images_per_s": 5.0,
            "device": device}  # fmt: skip


def test_the_cost_table_names_each_device_and_divides_only_within_one():
    a, b = device_label(H100), device_label(H200)
    mixed = [_cost("cass", "both", 30.0, a), _cost("dino", "cnn", 40.0, b),
             _cost("dino", "vit", 60.0, b)]  # fmt: skip
    assert ratios(mixed) == []
    text = "\n".join(cost_markdown(mixed))
    assert f"CASS ran on {a}, DINO-CNN on {b}: different devices, so no time ratio" in text
    assert f"| {a} | 1 |" in text and f"| {b} | 1 |" in text
    same = [*mixed, _cost("dino", "cnn", 40.0, a), _cost("dino", "vit", 60.0, a)]
    (found,) = ratios(same)
    assert (found["device"], found["vs_both"]) == (a, 0.3)
    assert f"| brain_mri | 10 | {a} | 16 / 16 | 0.30x (70% less time)" in "\n".join(
        cost_markdown(same))  # fmt: skip


def test_the_study_report_names_its_machines_and_what_ran_on_each():
    a, b = device_label(H100), device_label(H200)
    costs = [_cost("cass", "both", 30.0, a), _cost("dino", "cnn", 40.0, b)]
    results = [{"machine": {"device": a}}, {"machine": {"device": a}}, {}]
    lines = machines_markdown(results, costs)
    assert lines[0] == "## Machines"
    assert f"- **{a}**: pretraining of CASS (both arms); 2 fine-tuning run(s)" in lines
    assert f"- **{b}**: pretraining of DINO-CNN" in lines
    assert "- **unknown device**: 1 fine-tuning run(s)" in lines


def test_the_study_reads_each_pretraining_runs_device_from_its_summary(tmp_path):
    points = [Point("pretrain-cass", "pretrain", 0, "cass", "both", [], "d"),
              Point("pretrain-dino", "pretrain", 0, "dino", "cnn", [], "e")]  # fmt: skip
    summaries = [{"machine": H100}, {}]  # the second from a version that recorded none
    for point, extra in zip(points, summaries, strict=True):
        point.folder(tmp_path).mkdir(parents=True)
        summary = {"fit_seconds": 10.0, "epochs": 1, "batch_size": 8, "dataset": "d", **extra}
        (point.folder(tmp_path) / "summary.json").write_text(json.dumps(summary))
    costs = gather(points, tmp_path, {p.id: "done" for p in points})["costs"]
    assert [c["device"] for c in costs] == [device_label(H100), None]
    assert ratios(costs) == []  # a recorded device and an unknown one are never divided
