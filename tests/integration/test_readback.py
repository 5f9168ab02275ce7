"""Every file a run reads back is data: the hostile files of issue 24, one route each, are
refused by name (the file and the field) before anything is written, no marker file appears
and no environment value is copied anywhere; and a resume writes only inside its run.

The payloads per file type are the lists below (their lengths are the suite's figures): each
would create ``PWNED`` or copy ``MY_SECRET`` if anything ever evaluated it."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from test_safety import _digest, _main, _run_folder
from test_study_trust import _planned

from app_helpers import compose_app
from cass_lightning.apps import finetune as finetune_app
from cass_lightning.apps import pretrain as pretrain_app
from cass_lightning.apps.export import export_checkpoint, load_classifier_checkpoint
from cass_lightning.apps.predict import predict, run_checkpoint
from cass_lightning.apps.run.common import CONFIG_DIR
from cass_lightning.apps.run.resume import ResumeError, resume_argv
from cass_lightning.apps.study.plan import PLAN_FILE, SUMMARY_FILE, PlanRefused, verified_plan
from cass_lightning.apps.study.points import DATA_CHECK_REQUEST, compose_point, run_data_check
from cass_lightning.io import MAX_DEPTH, RecordError
from cass_lightning.records import read_record
from cass_lightning.report.validate import ResultsFileError, load_result

OPEN = "${oc.create:{_target_:builtins.open,file:PWNED,mode:w}}"
SECRET_VALUE = "s3cr3t-of-the-user"
SECRET = "${oc.env:MY_SECRET}"
DEEP = "[" * 50_000 + "]" * 50_000

#: An export's meta.json (backbones): field -> hostile value.
META_PAYLOADS = [("img_size", OPEN), ("mean[0]", OPEN), ("std[1]", SECRET),
                 ("img_size", SECRET), ("cnn.img_size", OPEN), ("cnn.timm_name", OPEN),
                 ("cnn.file", "../../x")]  # fmt: skip
#: A classifier export's meta.json (cass-predict).
CLASSIFIER_PAYLOADS = [("img_size", OPEN), ("mean[0]", OPEN), ("classes[0]", SECRET),
                       ("timm_name", OPEN)]  # fmt: skip
#: A checkpoint's hyper_parameters (pretraining for cass-finetune, fine-tuning for cass-predict).
HPARAM_PAYLOADS = [("img_size", OPEN), ("cnn", OPEN), ("mean", [OPEN, 0.4, 0.4])]
#: run_info.json: whole file contents.
RUN_INFO_PAYLOADS = {
    "secret run id": json.dumps({"run_id": SECRET, "starts": [{}]}),
    "code run id": json.dumps({"run_id": OPEN, "starts": [{}]}),
    "a list": json.dumps([{"run_id": "abcd1234"}]),
    "a slash": json.dumps({"run_id": "ab/../cd", "starts": [{}]}),
    "deep": DEEP,
    "not json": '{"run_id": "ab',
}
#: .hydra/*.yaml: file -> contents.
HYDRA_PAYLOADS = {
    "hydra.yaml": f"hydra:\n  runtime:\n    cwd: {SECRET}\n",
    "config.yaml": f"seed: {SECRET}\nmodel:\n  img_size: {OPEN}\n",
}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a relative PWNED would be created
    monkeypatch.setenv("MY_SECRET", SECRET_VALUE)
    yield
    GlobalHydra.instance().clear()
    assert not list(tmp_path.rglob("PWNED")), "a file's payload was evaluated"
    for path in tmp_path.rglob("*"):
        assert SECRET_VALUE not in path.name
        if path.is_file():
            assert SECRET_VALUE.encode() not in path.read_bytes(), path


def _set(record: dict, field: str, value) -> dict:
    """``record`` with ``field`` (``a.b`` or ``a[0]``) set to ``value``."""
    *parents, last = field.replace("[", ".").replace("]", "").split(".")
    node = record
    for part in parents:
        node = node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return record


def _export(folder: Path, meta: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def _backbone_meta() -> dict:
    arm = {"timm_name": "resnet10t", "img_size": 32, "in_chans": 3, "num_classes": 1000,
           "num_features": 512, "file": "cnn.safetensors", "projector_file": None,
           "init": {"init": "random"}}  # fmt: skip
    return {"format": "cass-lightning-export/1", "method": "cass", "img_size": 32,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "cnn": arm}  # fmt: skip


def _field_pattern(field: str) -> str:
    return field.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")


# ----------------------------------------------------------------------------- exports
@pytest.mark.parametrize(("field", "value"), META_PAYLOADS)
def test_an_exports_meta_json_never_reaches_the_data_config(tmp_path, field, value):
    export = _export(tmp_path / "export", _set(_backbone_meta(), field, value))
    cfg = compose_app(tmp_path, [f"weights={export}", "arm=cnn"], config_name="finetune")
    meta = export / "meta.json"
    with pytest.raises(RecordError, match=rf"^{meta}: export meta\.json field "
                                          rf"{_field_pattern(field)} "):  # fmt: skip
        finetune_app.finetune(cfg)
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize(("field", "value"), HPARAM_PAYLOADS)
def test_a_pretraining_checkpoints_hyper_parameters_are_checked(tmp_path, field, value):
    hp = {"cnn": "resnet10t", "vit": "vit_tiny_patch16_224", "img_size": 32, "in_chans": 3}
    ckpt = tmp_path / "cass.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {**hp, field: value}}, ckpt)
    cfg = compose_app(tmp_path, [f"weights={ckpt}", "arm=cnn"], config_name="finetune")
    with pytest.raises(RecordError, match=rf"^{ckpt}: checkpoint field hyper_parameters\.{field}"):
        finetune_app.finetune(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("field", "value"), HPARAM_PAYLOADS)
def test_cass_export_checks_a_checkpoints_hyper_parameters_before_building(tmp_path, field, value):
    hp = {"cnn": "resnet10t", "vit": "vit_tiny_patch16_224", "img_size": 32, "in_chans": 3}
    ckpt = tmp_path / "cass.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {**hp, field: value}}, ckpt)
    with pytest.raises(RecordError, match=rf"^{ckpt}: checkpoint field hyper_parameters\.{field}"):
        export_checkpoint(ckpt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("field", "value"), CLASSIFIER_PAYLOADS)
def test_a_classifier_exports_meta_json_never_reaches_predict(tmp_path, field, value):
    meta = {"kind": "classifier", "arm": "cnn", "timm_name": "resnet10t", "img_size": 32,
            "in_chans": 3, "mean": [0.5] * 3, "std": [0.25] * 3, "classes": ["a", "b"],
            "num_classes": 2, "multi_label": False, "threshold": None,
            "file": "cnn_classifier.safetensors"}  # fmt: skip
    export = _export(tmp_path / "clf", _set(meta, field, value))
    (export / "cnn_classifier.safetensors").write_bytes(b"")
    cfg = compose_app(tmp_path, [f"classifier={export}", "data=synthetic", "progress=false"],
                      config_name="predict", output_dir=tmp_path / "pred")  # fmt: skip
    pattern = rf"^{export / 'meta.json'}: classifier meta\.json field {_field_pattern(field)} "
    with pytest.raises(RecordError, match=pattern):
        predict(cfg)
    assert not (tmp_path / "pred").exists() and not (tmp_path / "data").exists()


def test_a_fine_tuning_checkpoints_preprocessing_is_checked_before_predict(tmp_path):
    hp = {"arm": "cnn", "num_classes": 2, "multi_label": False, "mode": "finetune",
          "timm_name": "resnet10t", "img_size": OPEN}  # fmt: skip
    data = {"mean": [0.5] * 3, "std": [SECRET, 0.2, 0.2], "img_size": 32}
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "hyper_parameters": hp, "datamodule_hyper_parameters": data,
                "export_record": {"classes": ["a", "b"]}}, ckpt)  # fmt: skip
    (tmp_path / "run" / "results.json").write_text(json.dumps({"classes": ["a", "b"]}))
    with pytest.raises(RecordError, match=rf"^{ckpt}: classifier meta\.json field img_size "):
        load_classifier_checkpoint(ckpt)
    torch.save({"state_dict": {}, "hyper_parameters": {**hp, "img_size": 32},
                "datamodule_hyper_parameters": data}, ckpt)  # fmt: skip
    with pytest.raises(RecordError, match=r"classifier meta\.json field std\[0\] must be a number"):
        load_classifier_checkpoint(ckpt)


def test_a_studys_finished_point_with_a_hostile_export_is_refused_by_its_fine_tuning(tmp_path):
    study_dir, _, points = _planned(tmp_path)
    cass = next(p for p in points if p.method == "cass" and p.app == "pretrain")
    done = cass.folder(study_dir)
    _export(done / "export", _set(_backbone_meta(), "img_size", OPEN))
    (done / SUMMARY_FILE).write_text("{}")
    tuned = next(p for p in points if p.needs == cass.id and p.arm == "cnn")
    folder = tuned.folder(study_dir)
    cfg = compose_point(tuned, folder, [])
    with pytest.raises(RecordError, match=r"export meta\.json field img_size must be an integer"):
        finetune_app.finetune(cfg)
    assert not folder.exists()


# ----------------------------------------------------------------------------- run records
@pytest.mark.parametrize("payload", sorted(RUN_INFO_PAYLOADS))
def test_a_hostile_run_info_json_is_refused_before_the_resume_claims_anything(tmp_path, payload):
    run = _run_folder(tmp_path / "run", ["debug=tiny"])
    (run / "run_info.json").write_text(RUN_INFO_PAYLOADS[payload])
    before = _digest(run)
    with pytest.raises(ResumeError, match=rf"^resume: {run / 'run_info.json'}.*Nothing was"):
        resume_argv(["cass-pretrain", f"resume={run}"])
    with pytest.raises(ResumeError, match=r"run_info\.json"):  # the task refuses it too
        pretrain_app.pretrain(compose_app(tmp_path, ["debug=tiny", f"resume={run}"],
                                          output_dir=run))  # fmt: skip
    assert _digest(run) == before


@pytest.mark.parametrize("name", sorted(HYDRA_PAYLOADS))
def test_saved_hydra_files_are_read_as_text_never_resolved(tmp_path, capsys, name):
    run = _run_folder(tmp_path / "run", ["debug=tiny"])
    (run / ".hydra" / name).write_text(HYDRA_PAYLOADS[name])
    argv = resume_argv(["cass-pretrain", f"resume={run}"])
    assert "debug=tiny" in argv
    assert SECRET_VALUE not in capsys.readouterr().err
    (run / ".hydra" / name).write_text("a: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5))
    before = _digest(run)
    with pytest.raises(ResumeError, match=rf"{name} is not a valid saved {name} \(nested deeper"):
        resume_argv(["cass-pretrain", f"resume={run}"])
    assert _digest(run) == before


def test_results_summary_and_plan_files_are_parsed_as_bounded_plain_json(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(DEEP)
    with pytest.raises(ResultsFileError, match=r"results\.json is not a valid results\.json"):
        load_result(results)
    summary = tmp_path / "summary.json"
    for text in (json.dumps({"fit_seconds": SECRET}), json.dumps(["x"]), DEEP):
        summary.write_text(text)
        with pytest.raises(RecordError, match=rf"^{summary}"):
            read_record(summary, "summary")
    study_dir, _, _ = _planned(tmp_path)
    (study_dir / PLAN_FILE).write_text(DEEP)
    with pytest.raises(RecordError, match=r"plan\.json is not a valid study plan \(nested"):
        verified_plan(study_dir, CONFIG_DIR)


def test_a_studys_data_check_request_takes_plain_settings_only(tmp_path):
    folder = tmp_path / "study" / "data-check-0"
    folder.mkdir(parents=True)
    for overrides in ([f"data.root={OPEN}"], ["+callbacks.x._target_=builtins.open"], "x"):
        (folder / DATA_CHECK_REQUEST).write_text(json.dumps({"overrides": overrides}))
        with pytest.raises(PlanRefused, match="nothing was run"):
            run_data_check(folder)
    assert sorted(p.name for p in folder.iterdir()) == [DATA_CHECK_REQUEST]


# ----------------------------------------------------------------------------- writes
def test_a_saved_output_folder_outside_the_run_is_refused_unless_given_again(tmp_path, monkeypatch):
    other = tmp_path / "someone_elses"
    other.mkdir()
    (other / "splits.csv").write_text("theirs\n")
    run = _run_folder(tmp_path / "run", ["debug=tiny", f"data.output_dir={other}"])
    before, theirs = _digest(run), _digest(other)
    exit_ = _main(pretrain_app, [f"resume={run}"], monkeypatch)
    assert exit_ is not None and isinstance(exit_.code, str)
    assert f"'data.output_dir={other}' names a folder outside the run" in exit_.code
    assert _digest(run) == before and _digest(other) == theirs
    inside = f"data.output_dir={run / 'data'}"
    given = resume_argv(["cass-pretrain", f"resume={run}", f"data.output_dir={run}"])
    assert f"data.output_dir={run}" in given and f"data.output_dir={other}" not in given
    (run / ".hydra" / "overrides.yaml").write_text(json.dumps(["debug=tiny", inside]))
    assert inside in resume_argv(["cass-pretrain", f"resume={run}"])


@pytest.mark.parametrize(
    ("saved", "refused"),
    [
        (["debug=tiny", "data.root=/etc"], True),  # synthetic data: written under its root
        (["debug=tiny", "paths.data_dir=/etc"], True),
        (["debug=tiny", "data.cache_dir=/tmp/elsewhere"], True),
        (["debug=tiny", "logger.csv.save_dir=/tmp/elsewhere"], True),
        (["debug=tiny", "logger.csv.name=../../elsewhere"], True),
        (["debug=tiny", "callbacks.last_checkpoint.filename=/tmp/last"], True),
        (["debug=tiny", "data=image_folder", "data.root=/data/scans"], False),  # only read
        (["debug=tiny", "logger.csv.name=attempt_2"], False),
    ],
)
def test_saved_paths_the_run_writes_into_must_be_inside_it(tmp_path, saved, refused):
    run = _run_folder(tmp_path / "run", saved)
    before = _digest(run)
    if refused:
        why = "(names a folder outside the run|leads out of the run folder)"
        with pytest.raises(ResumeError, match=rf"'{saved[-1]}' {why}"):
            resume_argv(["cass-pretrain", f"resume={run}"])
    else:
        assert saved[-1] in resume_argv(["cass-pretrain", f"resume={run}"])
    assert _digest(run) == before


def test_a_200000_character_saved_value_is_refused_before_the_claim(tmp_path, monkeypatch):
    run = _run_folder(tmp_path / "run", ["debug=tiny", "logger.csv.name=" + "x" * 200_000])
    before = _digest(run)
    exit_ = _main(pretrain_app, [f"resume={run}"], monkeypatch)
    assert exit_ is not None and "is 200016 characters long (at most 4096)" in str(exit_.code)
    assert _digest(run) == before
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "checkpoints", "csv",
                                                     "run_info.json"]  # fmt: skip


def test_the_console_app_names_the_file_and_field_exit_1(tmp_path, monkeypatch, capsys):
    export = _export(tmp_path / "export", _set(_backbone_meta(), "mean[0]", OPEN))
    argv = [f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'ft'}",
            f"weights={export}", "arm=cnn", "trainer.enable_progress_bar=false"]  # fmt: skip
    exit_ = _main(finetune_app, argv, monkeypatch)
    err = capsys.readouterr().err
    assert exit_ is not None and exit_.code == 1 and "Traceback" not in err
    assert f"Error: {export / 'meta.json'}: export meta.json field mean[0] must be a number" in err
    # Hydra made the folder and its job log before the task ran; the run wrote nothing there
    assert [p.name for p in (tmp_path / "ft").rglob("*")] == ["finetune.log"]


def test_a_best_checkpoint_named_outside_the_run_is_not_taken(tmp_path):
    elsewhere = tmp_path / "elsewhere.ckpt"
    elsewhere.write_bytes(b"not read")
    run = tmp_path / "ft"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "results.json").write_text(json.dumps({"best_checkpoint": str(elsewhere)}))
    assert run_checkpoint(run) == run / "checkpoints" / "last.ckpt"


def test_the_printed_resume_command_restates_the_folders_outside_the_run(tmp_path):
    cache = tmp_path / "study" / "cache"
    saved = ["debug=tiny", f"data.cache_dir='{cache}'", "data.batch_size=4"]
    run = _run_folder(tmp_path / "run", saved)
    command = shlex.split(pretrain_app.resume_command(run))
    assert command == ["cass-pretrain", f"resume={run}", f"data.cache_dir='{cache}'"]
    argv = resume_argv(command)  # the printed command is accepted as it stands
    assert f"data.cache_dir='{cache}'" in argv and "data.batch_size=4" in argv
