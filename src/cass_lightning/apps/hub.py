"""Uploading an export's timm folders to the Hugging Face Hub (``cass-export ... hub_repo=``).

Each ``timm-<arm>/`` folder becomes one model repository (timm loads a model from a
repository's root): ``<org>/<name>`` for a one-arm export or a classifier, ``<org>/<name>-<arm>``
for each arm of a two-arm export. Repositories are created private unless asked otherwise.
Before anything is sent, the hub must answer a plain HTTP request within a few seconds: offline
(``HF_HUB_OFFLINE``, no network, a hub that does not answer) is said by name, fast, never a hang.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cass_lightning.export import exported_arms, is_classifier_export, read_meta
from cass_lightning.timm_folder import (
    CARD_FILE,
    CONFIG_FILE,
    TIMM_FILES,
    WEIGHTS_FILE,
    hub_repo_for,
)

LOAD_LINE = re.compile(r'timm\.create_model\("(?:local-dir|hf-hub):[^"]*"')
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
#: How long the hub has to answer before an upload is called off (seconds).
PROBE_TIMEOUT_S = 5.0


class HubUnavailableError(RuntimeError):
    """The hub cannot be reached now: offline mode, no network, or no answer in time."""


@dataclass(frozen=True)
class Upload:
    """One folder to send and where: what the upload call receives."""

    folder: Path
    repo_id: str
    private: bool = True

    def files(self) -> dict[str, bytes | str]:
        """What the repository receives: the folder's config and weights as they are, and its
        model card with the loading lines naming ``hf-hub:<repo>`` (a card written before the
        repository was known names the local folder)."""
        card = (self.folder / CARD_FILE).read_text(encoding="utf-8")
        card = LOAD_LINE.sub(f'timm.create_model("hf-hub:{self.repo_id}"', card)
        return {CONFIG_FILE: str(self.folder / CONFIG_FILE),
                WEIGHTS_FILE: str(self.folder / WEIGHTS_FILE),
                CARD_FILE: card.encode("utf-8")}  # fmt: skip


def check_repo_id(repo: str) -> str:
    """``<org>/<name>`` as the Hub spells repositories, or a named refusal."""
    if not REPO_ID.match(str(repo)):
        raise ValueError(f"hub_repo={repo!r} is not a Hub repository name; give <org>/<name>")
    return str(repo)


def plan_uploads(export_dir: str | Path, repo: str, private: bool = True) -> list[Upload]:
    """The uploads an export needs: each timm folder it holds and its repository."""
    check_repo_id(repo)
    out = Path(export_dir)
    meta = read_meta(out)
    entries = [meta] if is_classifier_export(meta) else [meta[a] for a in exported_arms(meta)]
    arms = [str(meta["arm"])] if is_classifier_export(meta) else exported_arms(meta)
    plans = []
    for arm, entry in zip(arms, entries, strict=True):
        name = entry.get("timm_folder")
        folder = out / str(name)
        if not name or not all((folder / f).is_file() for f in TIMM_FILES):
            raise ValueError(
                f"{out} holds no complete timm folder for its {arm} arm (written by an older "
                "version); export its checkpoint again with cass-export to get one"
            )
        plans.append(Upload(folder, str(hub_repo_for(repo, arm, len(arms))), private))
    return plans


def hub_endpoint() -> tuple[str, bool]:
    """The hub's address and whether huggingface_hub is in offline mode (its settings)."""
    from huggingface_hub import constants

    return constants.ENDPOINT, bool(constants.HF_HUB_OFFLINE)


def check_hub(timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`HubUnavailableError`, naming why, unless the hub answers within
    ``timeout_s`` (any HTTP answer counts: the upload call reports refusals itself)."""
    endpoint, offline = hub_endpoint()
    if offline:
        raise HubUnavailableError(
            "HF_HUB_OFFLINE is set: the Hugging Face Hub is not contacted, nothing was uploaded; "
            "unset it on a machine with network and run the upload again"
        )
    try:
        with urllib.request.urlopen(f"{endpoint}/api/models?limit=1", timeout=timeout_s):
            return
    except urllib.error.HTTPError:  # the hub answered (with a refusal): it is reachable
        return
    except (urllib.error.URLError, OSError) as err:  # no network, refused, timed out
        reason = getattr(err, "reason", err)
        raise HubUnavailableError(
            f"the Hugging Face Hub ({endpoint}) did not answer within {timeout_s:g} s "
            f"({reason}); nothing was uploaded. Upload later from a machine with network"
        ) from None


def upload(plans: list[Upload], api: Any = None, timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
    """Send each planned folder to its repository (created if absent, private unless asked)
    in one commit of :meth:`Upload.files`; return the repositories' addresses. ``api``: a
    ``huggingface_hub.HfApi`` (default: one with the saved or ``HF_TOKEN`` credentials)."""
    from huggingface_hub import CommitOperationAdd

    check_hub(timeout_s)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(library_name="cass-lightning")
    urls = []
    for plan in plans:
        files = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=content)
                 for name, content in plan.files().items()]  # fmt: skip
        try:
            repo = api.create_repo(plan.repo_id, private=plan.private, exist_ok=True)
            message = f"Add {plan.folder.name} (cass-lightning export)"
            api.create_commit(repo_id=plan.repo_id, operations=files, commit_message=message)
        except OSError as err:  # huggingface_hub's HTTP errors (401: no token, 403: no right)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise HubUnavailableError(
                f"uploading {plan.folder} to {plan.repo_id} failed ({first}); a missing or "
                "read-only token: run `hf auth login` or set HF_TOKEN"
            ) from None
        urls.append(str(getattr(repo, "url", plan.repo_id)))
    return urls
