"""The model card (``README.md``) of an exported model: what a person needs before using it.

What it is, the method and its paper, the data it saw (name, fingerprint, classes, images), the
settings that matter, what it started from (with the file's SHA-256), where it was trained, the
results a fine-tuning run measured with it (per label fraction, with seeds), three lines that
load it, and a licence left for its owner to choose. Framework-free: plain values in, Markdown out.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

#: The paper behind each method (an unknown method's card says none is recorded).
PAPERS = {
    "cass": ("CASS: Cross Architectural Self-Supervision for Medical Image Analysis "
             "(Singh, Sizikova, Cirrone)", "https://arxiv.org/abs/2206.04170"),
    "dino": ("Emerging Properties in Self-Supervised Vision Transformers (Caron et al., ICCV "
             "2021)", "https://arxiv.org/abs/2104.14294"),
    "byol": ("Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning (Grill et "
             "al., NeurIPS 2020)", "https://arxiv.org/abs/2006.07733"),
    "simsiam": ("Exploring Simple Siamese Representation Learning (Chen, He, CVPR 2021)",
                "https://arxiv.org/abs/2011.10566"),
    "simclr": ("A Simple Framework for Contrastive Learning of Visual Representations (Chen "
               "et al., ICML 2020)", "https://arxiv.org/abs/2002.05709"),
}  # fmt: skip
ARM_WORDS = {"cnn": "CNN", "vit": "Vision Transformer"}
NOT_RECORDED = "not recorded"


def _value(value: Any) -> str:
    if value is None or value == "":
        return NOT_RECORDED
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(_value(v) for v in value)
    return str(value)


def method_line(method: str | None) -> str:
    """The method and its paper, as a Markdown link."""
    if not method:
        return NOT_RECORDED
    title, url = PAPERS.get(str(method).lower(), (None, None))
    return f"{method} ([{title}]({url}))" if title else f"{method} (no paper recorded)"


def init_line(init: dict[str, Any] | None) -> str:
    """What pretraining (or fine-tuning) started from, with the file's SHA-256."""
    if not init:
        return NOT_RECORDED
    kind = init.get("init", NOT_RECORDED)
    where = init.get("file") or init.get("hub_id") or init.get("weights")
    sha = init.get("sha256")
    return f"{kind}" + (f": `{where}`" if where else "") + (f" (sha256 `{sha}`)" if sha else "")


def outputs(info: dict[str, Any]) -> str:
    """What the model returns: logits per class, its head's values, or pooled features."""
    if info.get("kind") == "classifier":
        return f"{_value(info.get('num_classes'))} logits, one per class"
    if info.get("num_classes"):
        return f"{info['num_classes']} values from its {info.get('head') or ''} head".replace(
            "  ", " ")  # fmt: skip
    return (f"{_value(info.get('num_features'))}-d pooled features (a projector trained after "
            "them is not part of this folder)")  # fmt: skip


def front_matter(kind: str, method: str | None) -> list[str]:
    """The Hub's metadata block; the licence is left for the weights' owner to set."""
    pipeline = "image-classification" if kind == "classifier" else "image-feature-extraction"
    tags = [pipeline, "timm", "medical-imaging", "cass-lightning",
            *([] if kind == "classifier" else ["self-supervised"]),
            *([str(method).lower()] if method else [])]  # fmt: skip
    return ["---", "library_name: timm", f"pipeline_tag: {pipeline}", "tags:",
            *(f"- {t}" for t in tags),
            "# license: set this before sharing (the weights follow the data's terms)",
            "---"]  # fmt: skip


def results_table(results: Sequence[dict[str, Any]]) -> list[str]:
    """One row per (label fraction, metric): each seed's value and their mean."""
    if not results:
        return ["No fine-tuning run's `results.json` evaluated these weights yet."]
    cells: dict[tuple[Any, str], list[tuple[Any, float]]] = {}
    for r in results:
        for metric, value in sorted((r.get("metrics") or {}).items()):
            if isinstance(value, int | float) and not isinstance(value, bool):
                cells.setdefault((r.get("label_fraction"), metric), []).append(
                    (r.get("seed"), float(value)))  # fmt: skip
    lines = ["| label fraction | metric | seeds: values | mean | n |", "|---|---|---|---:|---:|"]
    for (fraction, metric), runs in sorted(cells.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        values = ", ".join(f"{s}: {v:.4f}" for s, v in sorted(runs, key=lambda sv: str(sv[0])))
        mean = statistics.fmean(v for _, v in runs)
        lines.append(f"| {_value(fraction)} | {metric} | {values} | {mean:.4f} | {len(runs)} |")
    split = next((r.get("test_split") for r in results if r.get("test_split")), None)
    return [*lines, "", f"Evaluated on the {split or 'test'} split of the fine-tuning data."]


def load_snippet(folder_name: str, repo: str | None, kind: str) -> list[str]:
    """Three lines that load the model and its preprocessing with plain timm."""
    source = f"hf-hub:{repo}" if repo else f"local-dir:{folder_name}"
    out = "logits = model(x)" if kind == "classifier" else "features = model.forward_features(x)"
    return ["```python", "import timm",
            f'model = timm.create_model("{source}", pretrained=True).eval()',
            "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, "
            "model=model))", "```", "",
            f"Then `x = transform(image).unsqueeze(0)` for a PIL image and `{out}`."]  # fmt: skip


def model_card(info: dict[str, Any]) -> str:
    """The card's Markdown from ``info``: ``kind`` (``backbone``/``classifier``), ``arm``,
    ``method``, ``timm_name``, ``img_size``, ``mean``, ``std``, ``num_classes``, ``classes``
    (a classifier's), ``head``, ``init`` (a weights record), ``data`` (``name``,
    ``fingerprint``), ``settings`` (plain values), ``device``, ``results``, ``folder``,
    ``repo`` and ``source``. Anything absent reads "not recorded"."""
    kind, arm, method = info.get("kind", "backbone"), info.get("arm"), info.get("method")
    data = info.get("data") or {}
    fingerprint = data.get("fingerprint") or {}
    what = (
        "a fine-tuned classifier"
        if kind == "classifier"
        else f"a self-supervised pretrained backbone ({info.get('head') or 'features'} head)"
    )
    arm_words = ARM_WORDS.get(str(arm), str(arm))  # fmt: skip
    lines = [
        *front_matter(kind, method), "",
        f"# {info.get('timm_name')} ({arm_words}): {what}", "",
        f"The {arm_words} arm ({info.get('timm_name')}) of a {_value(method)} run, exported by "
        "cass-lightning as a plain timm model. "
        + ("Its classifier predicts the classes below." if kind == "classifier" else
           "Use its features (or fine-tune it with a new head) for a downstream task."), "",
        "## Model", "",
        f"- **Architecture:** `{info.get('timm_name')}` (timm), {arm_words} arm",
        f"- **Method:** {method_line(method)}",
        f"- **Input:** {_value(info.get('img_size'))} x {_value(info.get('img_size'))} px, "
        "RGB, resized (no crop), bilinear",
        f"- **Normalisation:** mean {_value(info.get('mean'))}; std {_value(info.get('std'))}",
        f"- **Outputs:** {outputs(info)}",
        f"- **Started from:** {init_line(info.get('init'))}",
        f"- **Exported from:** `{_value(info.get('source'))}`", "",
        "## Data", "",
        f"- **Dataset:** {_value(data.get('name'))}",
        f"- **Fingerprint (sha256 of its file listing and classes):** "
        f"`{_value(fingerprint.get('sha256'))}`",
        f"- **Images:** {_value(fingerprint.get('files') or data.get('images'))}",
        f"- **Classes:** {_value(info.get('classes') or fingerprint.get('classes'))}", "",
        "## Training settings", "",
        *(f"- **{k}:** {_value(v)}" for k, v in (info.get("settings") or {}).items()),
        f"- **Trained on:** {_value(info.get('device'))}", "",
        "## Results", "",
        *results_table(info.get("results") or []), "",
        "## How to load", "",
        *load_snippet(str(info.get("folder") or "<this folder>"), info.get("repo"), kind), "",
        "## Licence", "",
        "Not set: the owner of these weights chooses it (and must respect the training data's "
        "terms) before sharing them; set `license:` at the top of this card.", "",
    ]  # fmt: skip
    return "\n".join(lines)
