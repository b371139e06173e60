"""Serve: a Gradio demo (`medqa demo`) and a Hugging Face Spaces folder (`medqa space export`).

The demo answers one question at a time through a queue (bounded size, bounded concurrency):
an answer card with the letter, a confidence badge, a probability bar per option and an abstention
message below the threshold, then the explanation streamed token by token. Everything a user
typed or the model wrote is rendered inertly (HTML-escaped, or in plain text boxes).

API endpoints (for `gradio_client`):
- `/answer` (question: str, options: list[str], explain: bool = True) -> dict, the full result
- `/ask` (question, number of options, option A..E) -> streams (card HTML, explanation, result dict)

    from medqa.serve import build_demo
    build_demo(model, tokenizer).launch(server_name="127.0.0.1", server_port=7860)

A study aid, not medical advice: the disclaimer is on the page and in every API result.
Importing this module imports neither gradio nor torch.
"""

from __future__ import annotations

import argparse
import html
import os
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medqa import predict as _predict
from medqa.config import DEFAULT_MODEL
from medqa.data import LETTERS, MCQRecord
from medqa.errors import ConfigError, ModelError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_QUEUE_SIZE = 32
DEFAULT_CONCURRENCY = 1
GRADIO_SDK_FALLBACK = "6.31.0"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
CONCURRENCY_ID = "medqa-model"

CARD_CSS = """
.mq-card { border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 14px 16px;
  background: var(--background-fill-secondary); color: var(--body-text-color); font-size: 15px; }
.mq-empty { color: var(--body-text-color-subdued); }
.mq-head { display: flex; align-items: center; gap: 12px; flex-wrap: wrap; }
.mq-letter { display: inline-flex; align-items: center; justify-content: center; width: 40px; height: 40px;
  border-radius: 50%; background: var(--color-accent); color: white; font-size: 22px; font-weight: 700; }
.mq-answer { font-size: 18px; font-weight: 600; flex: 1 1 200px; overflow-wrap: anywhere; }
.mq-badge { padding: 3px 10px; border-radius: 999px; font-size: 13px; font-weight: 600; white-space: nowrap; }
.mq-high { background: #d1fae5; color: #065f46; }
.mq-moderate { background: #e0e7ff; color: #3730a3; }
.mq-low { background: #fef3c7; color: #92400e; }
.mq-abstain { margin-top: 10px; padding: 8px 10px; border-left: 4px solid #d97706; background: #fffbeb;
  color: #78350f; border-radius: 4px; }
.mq-probs { margin-top: 12px; display: grid; gap: 6px; }
.mq-row { display: grid; grid-template-columns: 22px minmax(80px, 1fr) 56px; gap: 8px; align-items: center; }
.mq-row .mq-l { font-weight: 700; }
.mq-bar { position: relative; height: 18px; border-radius: 4px; background: var(--border-color-primary); overflow: hidden; }
.mq-fill { position: absolute; left: 0; top: 0; bottom: 0; background: #94a3b8; }
.mq-chosen .mq-fill { background: var(--color-accent); }
.mq-p { text-align: right; font-variant-numeric: tabular-nums; }
.mq-opt { grid-column: 2 / 4; font-size: 13px; color: var(--body-text-color-subdued); margin-top: -4px;
  overflow-wrap: anywhere; }
.mq-guarantee { margin-top: 10px; font-size: 13px; color: var(--body-text-color-subdued); }
.mq-meta { margin-top: 10px; font-size: 12px; color: var(--body-text-color-subdued); }
.mq-disclaimer { margin-top: 8px; font-size: 12px; color: var(--body-text-color-subdued); }
"""

NOTICE_CSS = """
.mq-notice { border: 1px solid #f59e0b; background: #fffbeb; color: #78350f; border-radius: 8px;
  padding: 10px 14px; font-size: 15px; }
"""


# ----------------------------------------------------------------------------- rendering


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def empty_card(message: str = "Ask a question, or pick an example, to see the answer here.") -> str:
    return f'<div class="mq-card mq-empty" data-state="empty">{_e(message)}</div>'


def confidence_level(pred: _predict.Prediction) -> str:
    """low: flagged by the abstention rule (`calibrate.abstains`, decided in predict); else high or moderate."""
    if pred.low_confidence:
        return "low"
    return "high" if pred.confidence >= max(0.8, pred.threshold or 0.0) else "moderate"


def render_card(pred: _predict.Prediction) -> str:
    """The answer card. All text (question, options, numbers) is HTML-escaped."""
    level = confidence_level(pred)
    badge = {"low": "Low confidence", "moderate": "Moderate confidence", "high": "High confidence"}[level]
    rows = []
    for i, opt in enumerate(pred.options):
        L = LETTERS[i]
        p = float(pred.probabilities[L])
        chosen = " mq-chosen" if i == pred.index else ""
        rows.append(
            f'<div class="mq-row{chosen}" data-letter="{L}" data-prob="{p:.6f}">'
            f'<span class="mq-l">{L}</span>'
            f'<div class="mq-bar" role="progressbar" aria-label="option {L}" aria-valuemin="0" aria-valuemax="100" '
            f'aria-valuenow="{p * 100:.1f}"><div class="mq-fill" style="width: {p * 100:.1f}%"></div></div>'
            f'<span class="mq-p">{p:.1%}</span>'
            f'<span class="mq-opt">{_e(opt)}</span></div>'
        )
    abstain = f'<div class="mq-abstain" role="alert">{_e(pred.abstention)}</div>' if pred.abstention else ""
    guarantee = (f'<div class="mq-guarantee" data-applies="{str(pred.guarantee.get("applies", True)).lower()}">'
                 f'{_e(pred.guarantee["text"])}</div>' if pred.guarantee else "")
    meta = f"letter in {pred.seconds_to_letter:.2f} s"
    if pred.seconds_to_first_token is not None:
        meta += f" · first explanation token after {pred.seconds_to_first_token:.2f} s"
    if pred.done and pred.seconds_total is not None:
        meta += f" · done in {pred.seconds_total:.2f} s"
    elif not pred.done:
        meta += " · explaining…"
    return (
        f'<div class="mq-card" data-state="{"done" if pred.done else "streaming"}" data-letter="{pred.letter}" '
        f'data-confidence="{pred.confidence:.6f}" data-level="{level}">'
        f'<div class="mq-head"><span class="mq-letter">{pred.letter}</span>'
        f'<span class="mq-answer">{_e(pred.option)}</span>'
        f'<span class="mq-badge mq-{level}">{badge}: {pred.confidence:.0%}</span></div>'
        f"{abstain}"
        f'<div class="mq-probs">{"".join(rows)}</div>'
        f"{guarantee}"
        f'<div class="mq-meta">{_e(meta)}</div>'
        f'<div class="mq-disclaimer">{_e(_predict.disclaimer())}</div></div>'
    )


def example_rows(records: Sequence[MCQRecord] | None = None, n: int = 8) -> tuple[list[list[Any]], list[str]]:
    """Examples (one per subject first) as [question, n_options, A, B, C, D, E] rows, plus labels."""
    if records is None:
        from medqa.data import load_demo

        records = load_demo()
    picked: list[MCQRecord] = []
    subjects: set[str | None] = set()
    for r in records:
        if r.subject not in subjects:
            picked.append(r)
            subjects.add(r.subject)
        if len(picked) >= n:
            break
    for r in records:
        if len(picked) >= n:
            break
        if r not in picked:
            picked.append(r)
    rows = [[r.question, len(r.options), *r.options, *[""] * (5 - len(r.options))] for r in picked]
    labels = [(f"{r.subject}: " if r.subject else "") + textwrap.shorten(r.question, 90, placeholder="…") for r in picked]
    return rows, labels


# ----------------------------------------------------------------------------- the app


def build_demo(
    model: Any,
    tokenizer: Any,
    *,
    threshold: float | None = None,
    max_new_tokens: int = _predict.DEFAULT_MAX_NEW_TOKENS,
    protocol: str | None = None,
    model_name: str | None = None,
    examples: Sequence[MCQRecord] | None = None,
    n_examples: int = 8,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    title: str = "MedQA — medical multiple-choice study aid",
) -> Any:
    """A Gradio Blocks app with its queue configured (max size, concurrency limit). Launch it yourself.

    `threshold` None: the abstention rule calibrated with the adapter (`calibrate.abstains`), else 0.5;
    `protocol` None: the protocol the adapter (or merged model) was trained with, else chat."""
    import gradio as gr

    from medqa.format import PromptFormat

    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold must be between 0 and 1 (got {threshold})")
    if queue_size < 1 or concurrency < 1:
        raise ConfigError("queue size and concurrency must be at least 1")
    fmt = PromptFormat(tokenizer, _predict.model_protocol(model, protocol))
    calibration = _predict.calibration_of(model)
    shown = _predict.shown_threshold(calibration, threshold)
    guarantee = _predict.guarantee_info(calibration, threshold)
    rows, labels = example_rows(examples, n_examples)

    def input_error(e: _predict.InputError) -> Exception:
        return gr.Error(html.escape(e.user_message(), quote=False), title="Check your input", print_exception=False)

    def ask(question: str, n_options: int, a: str, b: str, c: str, d: str, e: str):
        """Answer a question; streams (answer card HTML, explanation text, result dict)."""
        try:
            n = int(n_options)
        except (TypeError, ValueError):
            raise gr.Error("Number of options must be 2, 3, 4 or 5.", title="Check your input") from None
        if not _predict.MIN_OPTIONS <= n <= _predict.MAX_OPTIONS:
            raise gr.Error("Number of options must be 2, 3, 4 or 5.", title="Check your input")
        options = [a, b, c, d, e][:n]
        try:
            for snap in _predict.answer_stream(model, tokenizer, question, options, threshold=threshold,
                                               max_new_tokens=max_new_tokens, fmt=fmt):
                first = snap.explanation == "" and not snap.done
                yield (
                    render_card(snap) if (first or snap.done) else gr.skip(),
                    snap.explanation or "",
                    snap.to_dict() if snap.done else gr.skip(),
                )
        except _predict.InputError as err:
            raise input_error(err) from None

    def answer_api(question: str, options: list[str], explain: bool = True) -> dict:
        """Answer one multiple-choice question (2-5 options). Returns the letter, the answer text, every
        option's probability, a low-confidence flag with an abstention message, the explanation, timings
        and the disclaimer (a study aid, not medical advice)."""
        try:
            pred = _predict.answer(model, tokenizer, question, options, threshold=threshold, explain=bool(explain),
                                   max_new_tokens=max_new_tokens, fmt=fmt)
        except _predict.InputError as err:
            raise input_error(err) from None
        return pred.to_dict()

    def show_options(n: int):
        return [gr.Textbox(visible=i < int(n)) for i in range(_predict.MAX_OPTIONS)]

    def clear():
        return ("", 4, "", "", "", "", "", empty_card(), "", None)

    notice = (
        f'<div class="mq-notice" id="mq-disclaimer" role="note"><strong>Study aid, not medical advice.</strong> '
        f"{_e(_predict.disclaimer())} Answers come from a small language model and are often wrong; never use them "
        f"for the care of a patient.</div>"
    )
    rule = (f"answers below {shown:.0%} confidence are flagged and MedQA abstains" if shown is not None
            else "every answer is flagged as low confidence and MedQA abstains")
    about = (f"Model: {model_name}. " if model_name else "") + (
        f"The letter is scored from the model's next-token probabilities over the option letters; {rule}. "
        + (f"{guarantee['text']} " if guarantee else "")
        + f"Questions up to {_predict.MAX_QUESTION_CHARS} characters, options up to {_predict.MAX_OPTION_CHARS}."
    )

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.HTML(f"<h1>{_e(title)}</h1>", js_on_load=None)
        gr.HTML(notice, css_template=NOTICE_CSS, js_on_load=None, elem_id="disclaimer")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                question = gr.Textbox(label="Question", lines=3, max_lines=12, max_length=_predict.MAX_QUESTION_CHARS,
                                      placeholder="Type a multiple-choice question…", elem_id="question")
                n_options = gr.Radio([2, 3, 4, 5], value=4, label="Number of options", elem_id="n-options")
                boxes = [
                    gr.Textbox(label=f"Option {L}", max_length=_predict.MAX_OPTION_CHARS, lines=1, max_lines=3,
                               visible=i < 4, elem_id=f"option-{L.lower()}")
                    for i, L in enumerate(LETTERS[: _predict.MAX_OPTIONS])
                ]
                with gr.Row():
                    ask_btn = gr.Button("Answer", variant="primary", elem_id="ask")
                    clear_btn = gr.Button("Clear", variant="secondary", elem_id="clear")
            with gr.Column(scale=1):
                card = gr.HTML(empty_card(), label="Answer card", css_template=CARD_CSS, js_on_load=None, elem_id="answer-card")
                explanation = gr.Textbox(label="Explanation (streamed; may be wrong)", lines=6, max_lines=20,
                                         interactive=False, elem_id="explanation")
                with gr.Accordion("Full result (JSON)", open=False):
                    details = gr.JSON(label="Result", elem_id="details")
        gr.Examples(examples=rows, inputs=[question, n_options, *boxes], example_labels=labels,
                    label="Examples from the bundled demo set", cache_examples=False, examples_per_page=n_examples)
        gr.HTML(f'<p class="mq-about" style="font-size: 13px; opacity: 0.8">{_e(about)}</p>', js_on_load=None)

        n_options.change(show_options, n_options, boxes, queue=False, api_visibility="private", show_progress="hidden")
        ask_btn.click(ask, [question, n_options, *boxes], [card, explanation, details], api_name="ask",
                      concurrency_limit=concurrency, concurrency_id=CONCURRENCY_ID, show_progress="minimal",
                      show_progress_on=[card])
        clear_btn.click(clear, None, [question, n_options, *boxes, card, explanation, details], queue=False,
                        api_visibility="private", show_progress="hidden")
        gr.api(answer_api, api_name="answer", concurrency_limit=concurrency, concurrency_id=CONCURRENCY_ID)

    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency, api_open=False)
    return demo


def launch(demo: Any, host: str = DEFAULT_HOST, port: int | None = DEFAULT_PORT, share: bool = False,
           **kwargs: Any) -> Any:
    """Launch bound to `host` (loopback unless asked), without a share link unless `share`."""
    if host not in LOOPBACK:
        print(f"medqa: serving on {host}: the demo is reachable from other machines", file=sys.stderr)
    return demo.launch(server_name=host, server_port=port, share=bool(share), show_error=False, **kwargs)


# ----------------------------------------------------------------------------- CLI: demo


def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", allow_abbrev=False, help="web demo (Gradio) on 127.0.0.1",
                              description="Serve the MedQA Gradio demo. MedQA is a study aid, not medical advice.")
    p.add_argument("--model", default=None,
                   help="Hub id, local folder, .gguf file (default: the adapter's base model, else the offline "
                        "SmolLM2-135M-Instruct)")
    p.add_argument("--adapter", help="LoRA adapter folder (or Hub id)")
    p.add_argument("--force-base", action="store_true",
                   help="load the adapter onto --model even though it was trained on another base model")
    p.add_argument("--protocol", choices=["chat", "lm-eval"], default=None,
                   help="prompt protocol (default: the one the adapter was trained with, else chat)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps | xpu")
    p.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link (off by default)")
    p.add_argument("--threshold", type=float, default=None,
                   help="abstain below this probability (default: the adapter's calibrated rule, else 0.5)")
    p.add_argument("--max-new-tokens", type=int, default=_predict.DEFAULT_MAX_NEW_TOKENS, help="explanation length cap")
    p.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE_SIZE, help="most requests waiting (default 32)")
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="requests answered at once (default 1)")
    p.set_defaults(handler=demo_main)
    return p


def demo_main(args: argparse.Namespace) -> int:
    from medqa.config import ModelConfig
    from medqa.modeling import load_model, resolve_base

    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold must be between 0 and 1 (got {args.threshold})")
    mcfg = ModelConfig(name=args.model, adapter=args.adapter, device=args.device,
                       force_base=getattr(args, "force_base", False))
    model, tokenizer = load_model(mcfg)
    name = resolve_base(mcfg) + (f" + adapter {args.adapter}" if args.adapter else "")
    demo = build_demo(model, tokenizer, threshold=args.threshold, max_new_tokens=args.max_new_tokens,
                      protocol=getattr(args, "protocol", None), model_name=name, queue_size=args.queue_size,
                      concurrency=args.concurrency)
    print(f"medqa: {_predict.disclaimer()}", file=sys.stderr)
    launch(demo, host=args.host, port=args.port, share=args.share)
    return 0


# ----------------------------------------------------------------------------- Spaces export

_REQUIREMENTS = [
    "torch>=2.4",
    "transformers>=5.0,<6",
    "peft>=0.17",
    "accelerate>=1.5",
    "safetensors>=0.4",
    "pydantic>=2.7",
    "pyyaml>=6.0",
    "numpy>=1.26",
    "tqdm>=4.66",
]
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt",
                               "checkpoint-*", "optimizer*", "scheduler*", "rng_state*", "training_args*")
_GITATTRIBUTES = "*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.gguf filter=lfs diff=lfs merge=lfs -text\n"

_APP = '''\
"""MedQA study-aid demo for Hugging Face Spaces (generated by `medqa space export`).

A study aid, not medical advice. Settings: MEDQA_MODEL, MEDQA_ADAPTER, MEDQA_THRESHOLD. The prompt protocol
and the abstention rule come with the adapter (medqa_adapter.json, calibration.json).
"""

import os

from medqa.config import ModelConfig
from medqa.modeling import load_model
from medqa.serve import build_demo

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.environ.get("MEDQA_MODEL", {model!r})
ADAPTER = os.environ.get("MEDQA_ADAPTER", {adapter!r}) or None
_THRESHOLD = os.environ.get("MEDQA_THRESHOLD", "{threshold}")
THRESHOLD = float(_THRESHOLD) if _THRESHOLD not in ("", "None") else None  # None: the adapter's calibrated one


def _here(path):
    """Paths inside this folder resolve relative to it; anything else (a Hub id) is passed on."""
    if path and os.path.exists(os.path.join(HERE, path)):
        return os.path.join(HERE, path)
    return path


# `medqa space export` checked that the adapter was trained on this base (shipped under another path here)
model, tokenizer = load_model(ModelConfig(name=_here(MODEL), adapter=_here(ADAPTER), force_base=True))
demo = build_demo(model, tokenizer, threshold=THRESHOLD, model_name={label!r})

if __name__ == "__main__":
    demo.launch()  # Spaces sets GRADIO_SERVER_NAME / GRADIO_SERVER_PORT
'''


def _gradio_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gradio")
    except PackageNotFoundError:
        return GRADIO_SDK_FALLBACK


def _space_readme(label: str, sdk_version: str, hub_model: str | None, adapter: bool) -> str:
    import yaml

    header: dict[str, Any] = {
        "title": "MedQA study aid",
        "emoji": "🩺",
        "colorFrom": "blue",
        "colorTo": "indigo",
        "sdk": "gradio",
        "sdk_version": sdk_version,
        "python_version": "3.11",
        "app_file": "app.py",
        "pinned": False,
        "license": "apache-2.0",
        "short_description": "Medical MCQ study aid - not medical advice",
        "suggested_hardware": "cpu-basic",
        "tags": ["medical", "multiple-choice", "lora", "study-aid"],
    }
    if hub_model:
        header["models"] = [hub_model]
    body = f"""
# MedQA study aid

> **{_predict.disclaimer()}** Answers come from a small language model and are often wrong; never use them
> for the care of a patient.

Ask a multiple-choice question (2-5 options). The app scores every option letter with the model's
next-token probabilities, shows a probability bar per option, flags (and abstains on) low-confidence
answers, and streams a short explanation of the chosen answer.

- Model: `{label}`{" (LoRA adapter in `adapter/`)" if adapter else ""}
- Settings (Space variables): `MEDQA_MODEL`, `MEDQA_ADAPTER`, `MEDQA_THRESHOLD`
- API: `gradio_client.Client(URL).predict(question, options, api_name="/answer")`

Generated by `medqa space export`.
"""
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n" + body


def space_export(
    out_dir: str | Path,
    model: str | None = None,
    adapter: str | None = None,
    *,
    threshold: float | None = None,
    overwrite: bool = False,
    force_base: bool = False,
) -> Path:
    """Write a Spaces-ready folder: app.py, requirements.txt, README.md (Spaces YAML header),
    .gitattributes, the `medqa` package, the adapter (when given) and any local model files.

    `model` None: the base model the adapter was trained on (`modeling.resolve_base`), else the offline
    default; a `model` that disagrees with the adapter's base is refused unless `force_base`. The offline
    default model is shipped as its GGUF file (the exact weights adapters are trained on), loaded through
    Transformers' GGUF support; Hub ids are downloaded by the Space.

    Every input is checked before anything is written; the folder is built beside `out_dir` and swapped in
    at the end (`overwrite`), keeping a `.git` checkout. A folder holding a training run, an adapter or
    checkpoints is never replaced, and the output may not be, contain or lie inside the adapter or model.
    """
    import medqa
    from medqa.config import ModelConfig
    from medqa.hub import check_out_dir, normal_perms
    from medqa.modeling import DEFAULT_HUB_BASE, default_gguf, is_hub_id, resolve_base

    out = Path(out_dir)
    # 1. the inputs, before anything is touched
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise ModelError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    base = resolve_base(ModelConfig(name=model, adapter=adapter, force_base=force_base))
    gguf: Path | None = None
    local: Path | None = None
    if base == DEFAULT_MODEL:
        gguf = default_gguf()
    elif Path(base).suffix == ".gguf":
        if not Path(base).is_file():
            raise ModelError(f"{base}: GGUF file not found")
        gguf = Path(base)
    elif Path(base).is_dir():
        local = Path(base)
        if not any(local.glob("*.safetensors")):
            raise ModelError(f"{base}: no safetensors weights to ship (pickle weights are not exported)")
    elif Path(base).exists():
        raise ModelError(f"{base}: a model must be a folder, a .gguf file or a Hub id")
    elif not is_hub_id(base):
        raise ModelError(f"{base}: no such model folder or file, and not a Hub id (owner/name)")
    check_out_dir(out, overwrite, keep=[(adapter and Path(adapter), "the adapter folder"),
                                        (local or gguf, "the model")])

    # 2. built beside the target, swapped in at the end
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        requirements = list(_REQUIREMENTS)
        hub_model = None
        if gguf is not None:
            (stage / "model").mkdir()
            shutil.copy2(gguf, stage / "model" / gguf.name)
            model_ref = f"model/{gguf.name}"
            hub_model = DEFAULT_HUB_BASE.get(base)
            requirements.append("gguf>=0.10")
        elif local is not None:
            shutil.copytree(local, stage / "model", ignore=_SKIP)
            model_ref = "model"
        else:
            model_ref = hub_model = base
        adapter_ref = None
        if adapter is not None:
            shutil.copytree(adapter, stage / "adapter", ignore=_SKIP)
            adapter_ref = "adapter"

        shutil.copytree(Path(medqa.__file__).parent, stage / "medqa",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        label = (base if base == DEFAULT_MODEL or not Path(base).exists() else Path(base).name) + (
            " + LoRA adapter" if adapter else "")
        (stage / "app.py").write_text(_APP.format(model=model_ref, adapter=adapter_ref or "", threshold=threshold,
                                                  label=label), encoding="utf-8")
        (stage / "requirements.txt").write_text(
            "# gradio comes from sdk_version in README.md\n" + "\n".join(requirements) + "\n", encoding="utf-8")
        (stage / "README.md").write_text(_space_readme(label, _gradio_version(), hub_model, adapter is not None),
                                         encoding="utf-8")
        (stage / ".gitattributes").write_text(_GITATTRIBUTES, encoding="utf-8")
        normal_perms(stage)
        _swap_in(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def _swap_in(stage: Path, out: Path) -> None:
    """Replace `out` with the finished `stage` folder in one rename, carrying over a `.git` checkout."""
    from medqa.hub import replace_dir

    git = out / ".git"
    moved = git.exists() and not git.is_symlink()
    if moved:
        os.replace(git, stage / ".git")
    try:
        replace_dir(stage, out)
    except BaseException:
        if moved and (stage / ".git").exists():
            os.replace(stage / ".git", git)
        raise


def add_space_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("space", allow_abbrev=False, help="Hugging Face Spaces helpers")
    sub = p.add_subparsers(dest="space_command", required=True)
    e = sub.add_parser("export", allow_abbrev=False,
                       help="write a Spaces-ready folder (app.py, requirements.txt, README.md, adapter)")
    e.add_argument("dir", help="output folder (created; must be empty unless --force)")
    e.add_argument("--model", default=None, help="base model (default: the adapter's base model, else the offline "
                                                  "SmolLM2-135M-Instruct GGUF)")
    e.add_argument("--adapter", help="LoRA adapter folder to ship")
    e.add_argument("--force-base", action="store_true",
                   help="ship --model with the adapter even though the adapter was trained on another base model")
    e.add_argument("--threshold", type=float, default=None,
                   help="abstain below this probability (default: the adapter's calibrated threshold, else 0.5)")
    e.add_argument("--force", action="store_true",
                   help="replace an earlier export in the folder (never a run, an adapter or checkpoints)")
    p.set_defaults(handler=space_main)
    return p


def space_main(args: argparse.Namespace, echo: Callable[[str], None] = print) -> int:
    out = space_export(args.dir, args.model, args.adapter, threshold=args.threshold, overwrite=args.force,
                       force_base=getattr(args, "force_base", False))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    echo(f"Space folder written to {out} ({size / 1e6:.1f} MB). Push it to a Space: "
         f"hf upload USER/NAME {out} --repo-type space")
    return 0
