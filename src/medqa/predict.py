"""`medqa predict`: answer questions from the command line or a file, over `medqa.inference.Answerer`.

The letter comes from the same scorer as evaluation (one forward pass, next-token probabilities of the
option letters); the explanation is generated greedily *after* the chosen answer, in the training target's
format, and streams as it is generated. `--thinking`: the model reasons first and the answer is the letter of
its final "Answer: X" line; its confidence is letter scoring's calibrated probability of that letter, and a
disagreement with letter scoring is said. This module reads question files, prints results and holds the CLI;
the answering itself (validation, scoring, the abstention rule, generation) is `Answerer`'s.

    from medqa.predict import answer
    result = answer(model, tokenizer, "Which nerve supplies the deltoid?", ["Axillary", "Radial"],
                    on_token=lambda piece: print(piece, end="", flush=True))
    result.letter, result.probabilities, result.low_confidence, result.explanation

Every result carries `medqa.inference.DISCLAIMER`: MedQA is a study aid, not medical advice.
Importing this module does not import torch (the CLI parser stays fast).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from medqa.datasets import LETTERS, read_text_file
from medqa.errors import ConfigError, DataError
from medqa.flags import add_config_arguments, config_from_args
from medqa.inference import (  # noqa: F401  (re-exported: the names predict has always offered)
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_THRESHOLD,
    DISCLAIMER,
    THINKING_MAX_NEW_TOKENS,
    MAX_OPTION_CHARS,
    MAX_OPTIONS,
    MAX_QUESTION_CHARS,
    MIN_OPTIONS,
    Answerer,
    InputError,
    Prediction,
    check_settings,
    validate_question,
)
from medqa.inference_stream import abstention_message, guarantee_info  # noqa: F401

MODEL_FLAGS = ("model", "adapter", "device", "protocol", "force-base")


def disclaimer() -> str:
    return DISCLAIMER


def answer_stream(model: Any, tokenizer: Any, question: str, options: Sequence[str], threshold: float | None = None,
                  explain: bool = True, max_new_tokens: int | None = None, protocol: str | None = None,
                  fmt: Any = None, thinking: bool = False) -> Iterator[Prediction]:
    """`Answerer(model, tokenizer, protocol).answer_stream(...)`: the scored letter, then explanation snapshots."""
    return Answerer(model, tokenizer, protocol, fmt=fmt).answer_stream(question, options, threshold, explain,
                                                                       max_new_tokens, thinking)


def answer(model: Any, tokenizer: Any, question: str, options: Sequence[str], threshold: float | None = None,
           explain: bool = True, max_new_tokens: int | None = None,
           on_token: Callable[[str], None] | None = None, on_letter: Callable[[Prediction], None] | None = None,
           protocol: str | None = None, fmt: Any = None, thinking: bool = False) -> Prediction:
    """`Answerer(model, tokenizer, protocol).answer(...)`: answer one question, with letter / token callbacks."""
    return Answerer(model, tokenizer, protocol, fmt=fmt).answer(question, options, threshold, explain, max_new_tokens,
                                                                on_token, on_letter, thinking)


# ----------------------------------------------------------------------------- input files


def _options_from_row(raw: dict[str, Any]) -> Any:
    if "options" in raw:
        opts = raw["options"]
        if isinstance(opts, dict):  # {"A": "...", "B": "..."}
            return [opts[k] for k in sorted(opts)]
        return opts
    keys = [k for k in ("opa", "opb", "opc", "opd", "ope") if raw.get(k) not in (None, "")]
    return [raw[k] for k in keys] if keys else None


def read_questions(path: str, stdin: TextIO | None = None) -> list[dict[str, Any]]:
    """Questions from a JSON object, a JSON array of objects, or JSONL (`-` reads stdin).

    Each object needs `question` and `options` (a list of 2-5 texts; MedMCQA `opa`..`opd` also work);
    `id` is kept when present. Raises `DataError` naming the source, row and field.
    """
    source = "<stdin>" if path == "-" else path
    if path == "-":
        text = (stdin or sys.stdin).read()
    else:
        text = read_text_file(path, allow_empty=True)  # emptiness is reported below, for stdin too
    if not text.strip():
        raise DataError(source, None, None, "no questions (empty input)")
    rows: list[tuple[int, Any]]
    try:
        whole = json.loads(text)
        rows = list(enumerate(whole, start=1)) if isinstance(whole, list) else [(1, whole)]
    except json.JSONDecodeError:
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(source, lineno, None, f"not valid JSON: {e.msg}") from None
    if not rows:
        raise DataError(source, None, None, "no questions")
    out = []
    for row, raw in rows:
        if not isinstance(raw, dict):
            raise DataError(source, row, None, f"expected a JSON object, got {type(raw).__name__}")
        q, opts = validate_question(raw.get("question"), _options_from_row(raw), source=source, row=row)
        item: dict[str, Any] = {"row": row, "question": q, "options": opts}
        if raw.get("id") is not None:
            item["id"] = str(raw["id"])
        out.append(item)
    return out


# ----------------------------------------------------------------------------- CLI


def add_predict_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict", allow_abbrev=False, help="answer questions: letter, every option's probability, streamed explanation",
        description="Answer multiple-choice questions with a model (+ LoRA adapter). "
                    "MedQA is a study aid, not medical advice.",
    )
    p.add_argument("--question", "-q", help="the question text")
    p.add_argument("--option", "-o", action="append", metavar="TEXT",
                   help=f"an answer option, in order A-E (give {MIN_OPTIONS}-{MAX_OPTIONS})")
    p.add_argument("--input", "-i", metavar="FILE|-", help="JSON or JSONL with 'question' and 'options' ('-': stdin)")
    p.add_argument("--json", action="store_true", help="print one JSON object per question and nothing else")
    add_answer_arguments(p, "flag answers (and abstain) below this probability")
    p.add_argument("--no-explain", action="store_true", help="only score the options; no explanation")
    add_config_arguments(p, sections=("model",), shortcuts=MODEL_FLAGS)
    p.set_defaults(handler=predict_main)
    return p


def add_answer_arguments(p: argparse.ArgumentParser, threshold_help: str) -> None:
    """`--threshold`, `--max-new-tokens` and `--thinking`, shared by `predict` and `demo`."""
    p.add_argument("--threshold", type=float, default=None,
                   help=f"{threshold_help} (default: the adapter's calibrated rule, else {DEFAULT_THRESHOLD})")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"explanation (or reasoning) length cap (default {DEFAULT_MAX_NEW_TOKENS}; "
                        f"{THINKING_MAX_NEW_TOKENS} with --thinking)")
    p.add_argument("--thinking", action="store_true",
                   help="thinking mode: the model reasons first (Qwen3 thinking mode; a plain-text rationale for "
                        "other models) and answers with the letter of its final 'Answer: X' line; the confidence "
                        "shown is letter scoring's calibrated probability of that letter (disagreement is flagged)")


def resolve_answer_arguments(args: argparse.Namespace) -> None:
    """`--max-new-tokens` unset: DEFAULT_MAX_NEW_TOKENS, or THINKING_MAX_NEW_TOKENS with `--thinking`; then checked."""
    if args.max_new_tokens is None:
        args.max_new_tokens = THINKING_MAX_NEW_TOKENS if args.thinking else DEFAULT_MAX_NEW_TOKENS
    if args.thinking and getattr(args, "no_explain", False):
        raise ConfigError("--thinking generates the reasoning; it cannot be combined with --no-explain")
    check_settings(args.threshold, args.max_new_tokens, flag="--")


def load_answerer(args: argparse.Namespace, quiet: bool = False) -> Answerer:
    """The Answerer of a subcommand's `--config` / model flags (model loading messages to stderr when `quiet`)."""
    cfg = config_from_args(args)
    with contextlib.redirect_stdout(sys.stderr) if quiet else contextlib.nullcontext():
        return Answerer.from_config(cfg)


def _safe(text: str) -> str:
    """Terminal-inert text: control characters (escape sequences) become visible escapes."""
    return "".join(
        c if c in "\n\t" or unicodedata.category(c) != "Cc" else repr(c)[1:-1] for c in text
    )


def _bar(p: float, width: int, stream: TextIO) -> str:
    enc = (getattr(stream, "encoding", None) or "").lower()
    full, empty = ("█", "░") if "utf" in enc else ("#", ".")
    n = round(p * width)
    return full * n + empty * (width - n)


def _print_header(pred: Prediction, out: TextIO, label: str | None) -> None:
    if label is not None:
        print(f"{label}{_safe(pred.question)}", file=out)
    how = (f"letter scoring's calibrated probability of {pred.letter}: {pred.confidence:.1%}" if pred.thinking
           else f"{pred.confidence:.1%}; letter in {pred.seconds_to_letter:.2f} s")
    print(f"Answer: {pred.letter}. {_safe(pred.option)}  ({how})", file=out)
    for i, opt in enumerate(pred.options):
        L = LETTERS[i]
        p = pred.probabilities[L]
        mark = ">" if i == pred.index else " "
        print(f" {mark}{L} {p:6.1%} {_bar(p, 20, out)} {_safe(opt)}", file=out)
    if pred.low_confidence:
        print(f"LOW CONFIDENCE: {_safe(pred.abstention or '')}", file=out)
    out.flush()


def _questions(args: argparse.Namespace, stdin: TextIO | None) -> list[dict[str, Any]]:
    """The questions asked, validated (before any model is loaded)."""
    if args.input and (args.question or args.option):
        raise ConfigError("give either --question/--option or --input, not both")
    resolve_answer_arguments(args)
    if args.input:
        return read_questions(args.input, stdin)
    if args.question is not None or args.option:
        q, opts = validate_question(args.question, args.option or [], source="command line")
        return [{"question": q, "options": opts}]
    raise ConfigError(f"give --question and --option ({MIN_OPTIONS}-{MAX_OPTIONS} times), or --input FILE|-")


def _print_thinking(pred: Prediction, out: TextIO) -> None:
    """After the reasoning: the answer it gave (or none), with letter scoring's probabilities and the agreement."""
    t = pred.thinking or {}
    _print_header(pred, out, None)
    print(f"Thinking: {_safe(t.get('note', ''))}", file=out)
    out.flush()


def _print_answer(answerer: Answerer, item: dict[str, Any], label: str, args: argparse.Namespace, out: TextIO) -> None:
    """One question for people: the header once the letter is scored, then the explanation as it streams.
    Thinking mode: the question, the reasoning as it streams, then the answer it gave."""
    started = False
    thinking = bool(getattr(args, "thinking", False))
    heading = "Reasoning: " if thinking else "Explanation: "

    def on_token(piece: str) -> None:
        nonlocal started
        if not started:
            out.write(heading)
            started = True
        out.write(_safe(piece))
        out.flush()

    def on_letter(p: Prediction) -> None:
        if thinking:
            print(f"{label}{_safe(p.question)}", file=out)
        else:
            _print_header(p, out, label)

    explain = not args.no_explain
    pred = answerer.answer(item["question"], item["options"], args.threshold, explain, args.max_new_tokens,
                           on_token=on_token, on_letter=on_letter, thinking=thinking)
    if thinking:
        if not started:
            out.write("Reasoning: (none generated)")
        print(file=out)
        _print_thinking(pred, out)
    if explain:
        if not started and not thinking:
            out.write("Explanation: (none generated)")
        first = f"{pred.seconds_to_first_token:.2f} s" if pred.seconds_to_first_token is not None else "n/a"
        if thinking:
            out.write(f"(first reasoning token after {first}; {pred.seconds_total:.2f} s total; "
                      f"{pred.generated_tokens} tokens; stopped: {pred.stop_reason})\n")
        else:
            out.write(f"\n(first explanation token after {first}; {pred.seconds_total:.2f} s total; "
                      f"stopped: {pred.stop_reason})\n")
    print(file=out)


def predict_main(args: argparse.Namespace, stdout: TextIO | None = None, stdin: TextIO | None = None) -> int:
    """`medqa predict`: validate every question first, then load the model once and answer them."""
    out = stdout or sys.stdout
    config_from_args(args)  # a bad config (or --print-config) before anything else
    items = _questions(args, stdin)
    answerer = load_answerer(args, quiet=args.json)
    if not args.json:
        g = guarantee_info(answerer.calibration, args.threshold)
        if g is not None:  # what the confidence flag means, once, before the answers
            print(f"Abstention rule: {g['text']}", file=out)
    for n, item in enumerate(items, start=1):
        if args.json:
            pred = answerer.answer(item["question"], item["options"], args.threshold, not args.no_explain,
                                   args.max_new_tokens, thinking=args.thinking)
            pred.extra = {k: item[k] for k in ("id", "row") if k in item}
            print(json.dumps(pred.to_dict(), ensure_ascii=False), file=out, flush=True)
        else:
            _print_answer(answerer, item, f"Q{n}/{len(items)}: " if len(items) > 1 else "Q: ", args, out)
    if not args.json:
        print(DISCLAIMER, file=out)
    out.flush()
    return 0
