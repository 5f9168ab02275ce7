"""``cass-export ... hub_repo=<org>/<name>``: what would be sent and where, private by default;
offline said by name in seconds. Nothing here reaches the real hub: the "hub" is either off
(offline mode), a local socket that never answers, or a local server that answers."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import constants

from cass_lightning import CASSModule
from cass_lightning.apps import hub
from cass_lightning.apps.export import hub_argv, main
from cass_lightning.apps.hub import HubUnavailableError, Upload, plan_uploads, upload
from cass_lightning.export import export_module


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    model = CASSModule(cnn="resnet10t", vit="vit_tiny_patch16_224", img_size=32, head_dim=8)
    return export_module(model, tmp_path_factory.mktemp("hub") / "export")


class Recorder:
    """Stands in for ``HfApi`` at the upload call, recording what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id: str, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return type("Url", (), {"url": f"https://hub.test/{repo_id}"})()

    def create_commit(self, **kwargs) -> None:
        self.calls.append(("create_commit", kwargs))


@pytest.fixture
def online(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_plan_sends_each_timm_folder_to_its_own_private_repository(export):
    plans = plan_uploads(export, "lab/cass-brain")
    assert plans == [Upload(export / "timm-cnn", "lab/cass-brain-cnn", True),
                     Upload(export / "timm-vit", "lab/cass-brain-vit", True)]  # fmt: skip
    assert plan_uploads(export, "lab/x", private=False)[0].private is False
    for bad in ("no-slash", "a/b/c", "/x", "lab/"):
        with pytest.raises(ValueError, match="not a Hub repository name"):
            plan_uploads(export, bad)
    assert hub_argv(["x.ckpt", "hub_repo=lab/m", "--public"]) == [
        "x.ckpt", "--hub-repo", "lab/m", "--public"]  # fmt: skip


def test_offline_mode_is_named_in_seconds_and_nothing_is_sent(export, monkeypatch, capsys):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    api, started = Recorder(), time.monotonic()
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE"):
        upload(plan_uploads(export, "lab/m"), api=api)
    with pytest.raises(SystemExit) as exit_:  # the command line: an export folder, upload only
        main([str(export), "hub_repo=lab/m"])
    assert exit_.value.code == 1 and "HF_HUB_OFFLINE" in capsys.readouterr().err
    assert api.calls == [] and time.monotonic() - started < 5


def test_a_hub_that_never_answers_is_given_up_on_within_the_bound(export, monkeypatch, online):
    silent = socket.socket()  # accepts connections (backlog) and never says a word
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    api, started = Recorder(), time.monotonic()
    try:
        with pytest.raises(HubUnavailableError, match=r"did not answer within 1 s"):
            upload(plan_uploads(export, "lab/m"), api=api, timeout_s=1.0)
    finally:
        silent.close()
    assert api.calls == [] and time.monotonic() - started < 10


def test_an_answering_hub_gets_each_folder_in_a_private_repository(export, monkeypatch, online):
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    api = Recorder()
    try:
        urls = upload(plan_uploads(export, "lab/m"), api=api, timeout_s=5.0)
    finally:
        server.shutdown()
    assert urls == ["https://hub.test/lab/m-cnn", "https://hub.test/lab/m-vit"]
    creates = [kw for name, kw in api.calls if name == "create_repo"]
    commits = [kw for name, kw in api.calls if name == "create_commit"]
    assert [(c["repo_id"], c["private"]) for c in creates] == [("lab/m-cnn", True),
                                                               ("lab/m-vit", True)]  # fmt: skip
    assert [c["repo_id"] for c in commits] == ["lab/m-cnn", "lab/m-vit"]
    for commit, arm in zip(commits, ("cnn", "vit"), strict=True):
        sent = {op.path_in_repo: op.path_or_fileobj for op in commit["operations"]}
        assert sorted(sent) == ["README.md", "config.json", "model.safetensors"]
        assert sent["model.safetensors"] == str(export / f"timm-{arm}" / "model.safetensors")
        card = sent["README.md"].decode()  # the card names the repository it lands in
        assert f'timm.create_model("hf-hub:lab/m-{arm}", pretrained=True)' in card
        assert "local-dir:" not in card
    assert hub.PROBE_TIMEOUT_S <= 10  # the default bound stays "seconds"


def test_an_older_export_without_timm_folders_is_named(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "meta.json").write_text(
        '{"cnn": {"timm_name": "resnet10t", "file": "cnn.safetensors"}}'
    )
    with pytest.raises(ValueError, match=r"older version.*cass-export"):
        plan_uploads(tmp_path / "old", "lab/m")
