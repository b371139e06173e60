"""`medqa demo`: the Gradio front-end over `medqa.inference.Answerer`.

The demo answers one question at a time through a queue (bounded size, bounded concurrency):
an answer card with the letter, a confidence badge, a probability bar per option and an abstention
message below the threshold, then the explanation streamed token by token. In thinking mode
(`build_demo(..., thinking=True)`, `medqa demo --thinking`) the model reasons first: the card answers with
the letter of its final "Answer: X" line, its confidence is letter scoring's calibrated probability of that
letter (a real probability, computed before the reasoning; a disagreement with letter scoring is said), and
the reasoning sits collapsed under the answer. Everything a user
typed or the model wrote is rendered inertly (HTML-escaped, or in plain text boxes).

API endpoints (for `gradio_client`):
- `/answer` (question: str, options: list[str], explain: bool = True) -> dict, the full result
- `/ask` (question, number of options, option A..E) -> streams (card HTML, explanation, result dict)

    from medqa.serve import build_demo
    build_demo(Answerer.from_config(cfg)).launch(server_name="127.0.0.1", server_port=7860)
    build_demo(model, tokenizer)                   # an already-loaded model

A study aid, not medical advice: the disclaimer is on the page and in every API result.
The Spaces export is `medqa.ship.space`. Importing this module imports neither gradio nor torch.
"""

from __future__ import annotations

import argparse
import html
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from medqa.datasets import LETTERS, MCQRecord
from medqa.errors import ConfigError
from medqa.flags import add_config_arguments
from medqa.inference import Answerer, InputError, Prediction, check_settings
from medqa.inference_stream import guarantee_info, shown_threshold
from medqa.predict import (
    DEFAULT_MAX_NEW_TOKENS,
    DISCLAIMER,
    MAX_OPTION_CHARS,
    MAX_OPTIONS,
    MAX_QUESTION_CHARS,
    MIN_OPTIONS,
    MODEL_FLAGS,
    THINKING_MAX_NEW_TOKENS,
    add_answer_arguments,
    load_answerer,
    resolve_answer_arguments,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_QUEUE_SIZE = 32
DEFAULT_CONCURRENCY = 1
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
.mq-thinking { margin-top: 10px; font-size: 14px; }
.mq-thinking[data-agrees="false"] { padding: 6px 10px; border-left: 4px solid #6366f1; background: #eef2ff;
  color: #312e81; border-radius: 4px; }
.mq-reasoning { margin-top: 10px; }
.mq-reasoning summary { cursor: pointer; font-weight: 600; }
.mq-reasoning-text { white-space: pre-wrap; font-size: 13px; margin-top: 6px; overflow-wrap: anywhere; }
.mq-final { margin-top: 6px; font-size: 13px; font-weight: 600; overflow-wrap: anywhere; }
.mq-caption { margin-top: 10px; font-size: 12px; color: var(--body-text-color-subdued); }
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


def confidence_level(pred: Prediction) -> str:
    """low: flagged by the abstention rule (`calibrate.abstains`, decided in predict); else high or moderate."""
    if pred.low_confidence:
        return "low"
    return "high" if pred.confidence >= max(0.8, pred.threshold or 0.0) else "moderate"


def render_card(pred: Prediction) -> str:
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
    generated = "reasoning" if pred.thinking is not None else "explanation"
    meta = f"letter {'scored ' if pred.thinking is not None else ''}in {pred.seconds_to_letter:.2f} s"
    if pred.seconds_to_first_token is not None:
        meta += f" · first {generated} token after {pred.seconds_to_first_token:.2f} s"
    if pred.done and pred.seconds_total is not None:
        meta += f" · done in {pred.seconds_total:.2f} s"
    elif not pred.done:
        meta += " · reasoning…" if pred.thinking is not None else " · explaining…"
    mode = ' data-mode="thinking"' if pred.thinking is not None else ""
    return (
        f'<div class="mq-card" data-state="{"done" if pred.done else "streaming"}" data-letter="{pred.letter}" '
        f'data-confidence="{pred.confidence:.6f}" data-level="{level}"{mode}>'
        f'<div class="mq-head"><span class="mq-letter">{pred.letter}</span>'
        f'<span class="mq-answer">{_e(pred.option)}</span>'
        f'<span class="mq-badge mq-{level}">{badge}: {pred.confidence:.0%}</span></div>'
        f"{thinking_block(pred)}"
        f"{abstain}"
        f"{reasoning_block(pred)}"
        + ('<div class="mq-caption">Letter scoring (one forward pass on the question, calibrated):</div>'
           if pred.thinking is not None else "")
        + f'<div class="mq-probs">{"".join(rows)}</div>'
        f"{guarantee}"
        f'<div class="mq-meta">{_e(meta)}</div>'
        f'<div class="mq-disclaimer">{_e(DISCLAIMER)}</div></div>'
    )


def thinking_block(pred: Prediction) -> str:
    """Thinking mode: where the answer and its confidence come from, and whether reasoning and letter scoring agree
    (while the model reasons: what the card shows until then)."""
    t = pred.thinking
    if t is None:
        return ""
    if t.get("status") != "done":
        text = (f"The model is reasoning; its final answer replaces this one when it ends. Letter scoring (one "
                f"forward pass) chose {t['scored_letter']} ({t['scored_confidence']:.0%}).")
        return f'<div class="mq-thinking" data-agrees="pending">{_e(text)}</div>'
    agrees = {True: "true", False: "false", None: "none"}[t.get("agrees")]
    return f'<div class="mq-thinking" data-agrees="{agrees}">{_e(t.get("note", ""))}</div>'


def reasoning_block(pred: Prediction) -> str:
    """Thinking mode, once done: the reasoning and the final line, collapsed (<details> without `open`)."""
    t = pred.thinking
    if t is None or t.get("status") != "done":
        return ""
    cut = ", cut off at the token limit" if t.get("cut_off") else ""
    final = t.get("final_line") or "(no final line)"
    return (f'<details class="mq-reasoning" data-tokens="{int(t.get("tokens", 0))}" '
            f'data-cut-off="{str(bool(t.get("cut_off"))).lower()}">'
            f'<summary>Reasoning ({int(t.get("tokens", 0))} tokens{cut}; may be wrong)</summary>'
            f'<div class="mq-reasoning-text">{_e(t.get("reasoning") or "(none)")}</div>'
            f'<div class="mq-final">Final line: {_e(final)}</div></details>')


def example_rows(records: Sequence[MCQRecord] | None = None, n: int = 8) -> tuple[list[list[Any]], list[str]]:
    """Examples (one per subject first) as [question, n_options, A, B, C, D, E] rows, plus labels."""
    if records is None:
        from medqa.datasets import load_demo

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
    tokenizer: Any = None,
    *,
    threshold: float | None = None,
    max_new_tokens: int | None = None,
    protocol: str | None = None,
    model_name: str | None = None,
    examples: Sequence[MCQRecord] | None = None,
    n_examples: int = 8,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    title: str = "MedQA — medical multiple-choice study aid",
    thinking: bool = False,
) -> Any:
    """A Gradio Blocks app with its queue configured (max size, concurrency limit). Launch it yourself.

    `model`: an `Answerer`, or a loaded model with its `tokenizer` (and `protocol`: None, the one the adapter
    or merged model was trained with, else chat). `threshold` None: the abstention rule calibrated with the
    adapter (`calibrate.abstains`), else 0.5. `thinking`: the model reasons first (see the module docstring);
    `max_new_tokens` None: DEFAULT_MAX_NEW_TOKENS, or THINKING_MAX_NEW_TOKENS thinking."""
    import gradio as gr

    if max_new_tokens is None:
        max_new_tokens = THINKING_MAX_NEW_TOKENS if thinking else DEFAULT_MAX_NEW_TOKENS
    check_settings(threshold, max_new_tokens)
    if queue_size < 1 or concurrency < 1:
        raise ConfigError("queue size and concurrency must be at least 1")
    answerer = model if isinstance(model, Answerer) else Answerer(model, tokenizer, protocol)
    ask, answer_api = _handlers(gr, answerer, threshold, max_new_tokens, thinking)
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        ui = _layout(gr, title, examples, n_examples, thinking)
        gr.HTML(f'<p class="mq-about" style="font-size: 13px; opacity: 0.8">'
                f'{_e(about_text(answerer, threshold, model_name, thinking, max_new_tokens))}</p>', js_on_load=None)
        _wire(gr, ui, ask, answer_api, concurrency)
    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency, api_open=False)
    return demo


def about_text(answerer: Answerer, threshold: float | None, model_name: str | None, thinking: bool = False,
               max_new_tokens: int | None = None) -> str:
    """What the page says about the model, the scoring and the abstention rule in force (and thinking mode)."""
    shown = shown_threshold(answerer.calibration, threshold)
    guarantee = guarantee_info(answerer.calibration, threshold)
    rule = (f"answers below {shown:.0%} confidence are flagged and MedQA abstains" if shown is not None
            else "every answer is flagged as low confidence and MedQA abstains")
    return (f"Model: {model_name}. " if model_name else "") + (
        f"The letter is scored from the model's next-token probabilities over the option letters; {rule}. "
        + (f"{guarantee['text']} " if guarantee else "")
        + (f"Thinking mode: the model reasons first (up to {max_new_tokens} tokens) and answers with the letter of "
           "its final 'Answer: X' line; the confidence shown is letter scoring's calibrated probability of that "
           "letter, computed before the reasoning, and a disagreement between the two is shown. "
           if thinking else "")
        + f"Questions up to {MAX_QUESTION_CHARS} characters, options up to {MAX_OPTION_CHARS}."
    )


def _handlers(gr: Any, answerer: Answerer, threshold: float | None, max_new_tokens: int,
              thinking: bool = False) -> tuple[Any, Any]:
    """The `/ask` (streaming) and `/answer` endpoints; input errors become clear `gr.Error` messages."""

    def input_error(e: InputError) -> Exception:
        return gr.Error(html.escape(e.user_message(), quote=False), title="Check your input", print_exception=False)

    def ask(question: str, n_options: int, a: str, b: str, c: str, d: str, e: str):
        """Answer a question; streams (answer card HTML, explanation text, result dict)."""
        try:
            n = int(n_options)
        except (TypeError, ValueError):
            n = 0
        if not MIN_OPTIONS <= n <= MAX_OPTIONS:
            raise gr.Error("Number of options must be 2, 3, 4 or 5.", title="Check your input")
        try:
            for snap in answerer.answer_stream(question, [a, b, c, d, e][:n], threshold, True, max_new_tokens,
                                               thinking):
                first = snap.explanation == "" and not snap.done
                yield (render_card(snap) if (first or snap.done) else gr.skip(), snap.explanation or "",
                       snap.to_dict() if snap.done else gr.skip())
        except InputError as err:
            raise input_error(err) from None

    def answer_api(question: str, options: list[str], explain: bool = True) -> dict:
        """Answer one multiple-choice question (2-5 options). Returns the letter, the answer text, every
        option's probability, a low-confidence flag with an abstention message, the explanation, timings
        and the disclaimer (a study aid, not medical advice)."""
        try:
            return answerer.answer(question, options, threshold, bool(explain), max_new_tokens,
                                   thinking=thinking).to_dict()
        except InputError as err:
            raise input_error(err) from None

    return ask, answer_api


def _layout(gr: Any, title: str, examples: Sequence[MCQRecord] | None, n_examples: int,
            thinking: bool = False) -> dict[str, Any]:
    """The page: disclaimer, question and option boxes, answer card, streamed explanation (thinking: the streamed
    reasoning, collapsed), examples."""
    notice = (
        f'<div class="mq-notice" id="mq-disclaimer" role="note"><strong>Study aid, not medical advice.</strong> '
        f"{_e(DISCLAIMER)} Answers come from a small language model and are often wrong; never use them "
        f"for the care of a patient.</div>"
    )
    rows, labels = example_rows(examples, n_examples)
    ui: dict[str, Any] = {}
    gr.HTML(f"<h1>{_e(title)}</h1>", js_on_load=None)
    gr.HTML(notice, css_template=NOTICE_CSS, js_on_load=None, elem_id="disclaimer")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            ui["question"] = gr.Textbox(label="Question", lines=3, max_lines=12, max_length=MAX_QUESTION_CHARS,
                                        placeholder="Type a multiple-choice question…", elem_id="question")
            ui["n_options"] = gr.Radio([2, 3, 4, 5], value=4, label="Number of options", elem_id="n-options")
            ui["boxes"] = [gr.Textbox(label=f"Option {L}", max_length=MAX_OPTION_CHARS, lines=1, max_lines=3,
                                      visible=i < 4, elem_id=f"option-{L.lower()}")
                           for i, L in enumerate(LETTERS[:MAX_OPTIONS])]
            with gr.Row():
                ui["ask"] = gr.Button("Answer", variant="primary", elem_id="ask")
                ui["clear"] = gr.Button("Clear", variant="secondary", elem_id="clear")
        with gr.Column(scale=1):
            ui["card"] = gr.HTML(empty_card(), label="Answer card", css_template=CARD_CSS, js_on_load=None,
                                 elem_id="answer-card")
            if thinking:
                with gr.Accordion("Reasoning as it streams (may be wrong)", open=False, elem_id="reasoning-stream"):
                    ui["explanation"] = gr.Textbox(label="Reasoning (streamed; may be wrong)", lines=6, max_lines=20,
                                                   interactive=False, elem_id="explanation")
            else:
                ui["explanation"] = gr.Textbox(label="Explanation (streamed; may be wrong)", lines=6, max_lines=20,
                                               interactive=False, elem_id="explanation")
            with gr.Accordion("Full result (JSON)", open=False):
                ui["details"] = gr.JSON(label="Result", elem_id="details")
    gr.Examples(examples=rows, inputs=[ui["question"], ui["n_options"], *ui["boxes"]], example_labels=labels,
                label="Examples from the bundled demo set", cache_examples=False, examples_per_page=n_examples)
    return ui


def _wire(gr: Any, ui: dict[str, Any], ask: Any, answer_api: Any, concurrency: int) -> None:
    """Events and API endpoints; the model-bound ones share one concurrency limit."""
    inputs = [ui["question"], ui["n_options"], *ui["boxes"]]
    results = [ui["card"], ui["explanation"], ui["details"]]

    def show_options(n: int):
        return [gr.Textbox(visible=i < int(n)) for i in range(MAX_OPTIONS)]

    def clear():
        return ("", 4, "", "", "", "", "", empty_card(), "", None)

    ui["n_options"].change(show_options, ui["n_options"], ui["boxes"], queue=False, api_visibility="private",
                           show_progress="hidden")
    ui["ask"].click(ask, inputs, results, api_name="ask", concurrency_limit=concurrency,
                    concurrency_id=CONCURRENCY_ID, show_progress="minimal", show_progress_on=[ui["card"]])
    ui["clear"].click(clear, None, [*inputs, *results], queue=False, api_visibility="private", show_progress="hidden")
    gr.api(answer_api, api_name="answer", concurrency_limit=concurrency, concurrency_id=CONCURRENCY_ID)


def launch(demo: Any, host: str = DEFAULT_HOST, port: int | None = DEFAULT_PORT, share: bool = False,
           **kwargs: Any) -> Any:
    """Launch bound to `host` (loopback unless asked), without a share link unless `share`."""
    if host not in LOOPBACK:
        print(f"medqa: serving on {host}: the demo is reachable from other machines", file=sys.stderr)
    return demo.launch(server_name=host, server_port=port, share=bool(share), show_error=False, **kwargs)


# ----------------------------------------------------------------------------- CLI


def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", allow_abbrev=False, help="web demo (Gradio) on 127.0.0.1",
                              description="Serve the MedQA Gradio demo. MedQA is a study aid, not medical advice.")
    p.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link (off by default)")
    add_answer_arguments(p, "abstain below this probability")
    p.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE_SIZE, help="most requests waiting (default 32)")
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="requests answered at once (default 1)")
    add_config_arguments(p, sections=("model",), shortcuts=MODEL_FLAGS)
    p.set_defaults(handler=demo_main)
    return p


def demo_main(args: argparse.Namespace) -> int:
    from medqa.modeling import resolve_base

    resolve_answer_arguments(args)
    answerer = load_answerer(args)
    cfg = answerer.config
    name = resolve_base(cfg.model) + (f" + adapter {cfg.model.adapter}" if cfg.model.adapter else "")
    demo = build_demo(answerer, threshold=args.threshold, max_new_tokens=args.max_new_tokens, model_name=name,
                      queue_size=args.queue_size, concurrency=args.concurrency, thinking=args.thinking)
    print(f"medqa: {DISCLAIMER}", file=sys.stderr)
    launch(demo, host=args.host, port=args.port, share=args.share)
    return 0
