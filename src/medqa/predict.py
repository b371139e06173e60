"""Answer one question: the letter (scored), every option's probability, then a streamed explanation.

The letter comes from the same scorer as evaluation (`score_records`: one forward pass, next-token
probabilities of the option letters). The explanation is generated greedily *after* the chosen
answer, in the training target's format: the prompt is `fmt.prompt(rec)` followed by
"B. option text\\nExplanation:", so the model explains the answer it picked, and generation stops at
the end-of-turn token (or eos). Text streams through `TextIteratorStreamer` from a worker thread.

    from medqa.predict import answer
    result = answer(model, tokenizer, "Which nerve supplies the deltoid?", ["Axillary", "Radial"],
                    on_token=lambda piece: print(piece, end="", flush=True))
    result.letter, result.probabilities, result.low_confidence, result.explanation

Every result carries `medqa.evaluate.DISCLAIMER`: MedQA is a study aid, not medical advice.
Importing this module does not import torch (the CLI parser stays fast).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from medqa.data import LETTERS, MCQRecord, read_text_file
from medqa.errors import ConfigError, DataError

MAX_QUESTION_CHARS = 2000
MAX_OPTION_CHARS = 300
MIN_OPTIONS, MAX_OPTIONS = 2, 5
DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_THRESHOLD = 0.5
STREAM_TIMEOUT_S = 600.0  # a stalled generation thread never blocks a reader forever


def disclaimer() -> str:
    from medqa.evaluate import DISCLAIMER  # imports torch; kept out of module import

    return DISCLAIMER


class InputError(DataError, ValueError):
    """A question or its options are not acceptable (names the field: 'question', 'option B', ...)."""

    def __init__(self, field: str | None, message: str, source: str = "input", row: int | str | None = None):
        super().__init__(source, row, field, message)

    def user_message(self) -> str:
        """A sentence for people: "Question is empty.", "Option B is too long (...)."."""
        text = f"{self.field} {self.message}" if self.field else self.message
        return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


# ----------------------------------------------------------------------------- validation


def _reserved_tokens(tokenizer: Any) -> list[str]:
    if tokenizer is None:
        return []
    toks = set(getattr(tokenizer, "all_special_tokens", None) or [])
    for t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(t, "special", False):
            toks.add(str(t))
    return sorted((t for t in toks if t and len(t) > 1), key=len, reverse=True)


def _check_text(value: Any, field: str, limit: int, source: str, row: int | str | None,
                reserved: list[str]) -> str:
    if value is None:
        raise InputError(field, "is missing", source, row)
    if not isinstance(value, str):
        raise InputError(field, f"must be text (got {type(value).__name__})", source, row)
    text = value.strip()
    if not text:
        raise InputError(field, "is empty", source, row)
    if len(text) > limit:
        raise InputError(field, f"is too long ({len(text)} characters; at most {limit})", source, row)
    found = [(text.find(t), t) for t in reserved if t in text]
    if found:
        tok = min(found, key=lambda x: (x[0], -len(x[1])))[1]  # the first one in the text
        raise InputError(field, f"contains the model's reserved token {tok}; remove it", source, row)
    return text


def validate_question(
    question: Any,
    options: Any,
    tokenizer: Any = None,
    source: str = "input",
    row: int | str | None = None,
) -> tuple[str, list[str]]:
    """Return the stripped question and options, or raise `InputError` naming the field.

    Rules: a non-empty question of at most MAX_QUESTION_CHARS characters; 2 to 5 non-empty, distinct
    options of at most MAX_OPTION_CHARS characters; no text containing the tokenizer's special tokens
    (they would break the chat template's structure).
    """
    reserved = _reserved_tokens(tokenizer)
    q = _check_text(question, "question", MAX_QUESTION_CHARS, source, row, reserved)
    if isinstance(options, (str, bytes)) or not isinstance(options, Sequence):
        raise InputError("options", f"must be a list of {MIN_OPTIONS}-{MAX_OPTIONS} texts "
                         f"(got {type(options).__name__})", source, row)
    if len(options) < MIN_OPTIONS:
        raise InputError("options", f"are too few: at least {MIN_OPTIONS} are needed (got {len(options)})", source, row)
    if len(options) > MAX_OPTIONS:
        raise InputError("options", f"are too many: at most {MAX_OPTIONS}, A-E (got {len(options)})", source, row)
    opts = [_check_text(o, f"option {LETTERS[i]}", MAX_OPTION_CHARS, source, row, reserved)
            for i, o in enumerate(options)]
    seen: dict[str, int] = {}
    for i, o in enumerate(opts):
        key = " ".join(o.casefold().split())
        if key in seen:
            raise InputError(f"option {LETTERS[i]}", f"is the same as option {LETTERS[seen[key]]}", source, row)
        seen[key] = i
    return q, opts


# ----------------------------------------------------------------------------- result


@dataclass
class Prediction:
    """One answer. `explanation` grows while streaming; `done` is True on the last snapshot."""

    question: str
    options: list[str]
    letter: str
    index: int
    option: str
    probabilities: dict[str, float]
    confidence: float
    threshold: float | None  # the confidence flag in force; None when the calibration flags every answer
    low_confidence: bool
    abstention: str | None
    explanation: str | None = None  # None when not asked for
    guarantee: dict[str, Any] | None = None  # what the calibrated abstention rule guarantees (text, level, n, bound)
    protocol: str = "chat"
    done: bool = False
    stop_reason: str | None = None  # end_of_turn | max_new_tokens | cancelled | not_requested
    generated_tokens: int = 0
    seconds_to_letter: float = 0.0
    seconds_to_first_token: float | None = None
    seconds_total: float | None = None
    disclaimer: str = field(default_factory=disclaimer)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        extra = d.pop("extra")
        d["answer"] = d.pop("option")
        return {**extra, **d}


def abstention_message(letter: str, confidence: float, threshold: float | None, reason: str | None = None) -> str:
    """Why an answer is flagged: below the threshold, or (threshold None) the calibration flags every answer."""
    if threshold is None:
        why = reason or "Its calibration found no confidence level whose answers reach the target accuracy."
        return (
            f"The best option ({letter}) has {confidence:.0%} probability, but MedQA abstains on every answer of "
            f"this model. {why} Treat {letter} as a guess and check a reliable source."
        )
    return (
        f"The best option ({letter}) has only {confidence:.0%} probability, below the {threshold:.0%} "
        f"threshold: MedQA abstains. Treat {letter} as a guess and check a reliable source."
    )


def calibration_of(model: Any) -> dict[str, Any]:
    """The calibration loaded with the model (adapter folder or merged export), or {}."""
    return getattr(model, "medqa_calibration", None) or {}


def shown_threshold(calibration: dict[str, Any] | None, threshold: float | None = None) -> float | None:
    """The confidence flag `calibrate.abstains` applies, for display: the explicit threshold, else the fitted
    one, else the default; None when the calibration flags every answer."""
    cal = calibration or {}
    if threshold is not None:
        return float(threshold)
    if cal.get("abstain_all"):
        return None
    fitted = cal.get("abstain_threshold")
    return float(fitted) if fitted is not None else DEFAULT_THRESHOLD


def guarantee_info(calibration: dict[str, Any] | None, threshold: float | None = None) -> dict[str, Any] | None:
    """The calibrated abstention rule's guarantee for people and machines: `text` (one sentence, from
    `calibrate.guarantee_text`), level, n, target accuracy, answers kept, their accuracy and the lower bound;
    None without a fitted guarantee. With an explicit `threshold` the guarantee is not the rule in force."""
    from medqa.calibrate import guarantee_text

    cal = calibration or {}
    text = guarantee_text(cal)
    if text is None:
        return None
    g = cal["guarantee"]
    info = {"text": text, "abstain_all": bool(cal.get("abstain_all")), "abstain_threshold": cal.get("abstain_threshold"),
            **{k: g.get(k) for k in ("level", "n", "target_accuracy", "kept", "kept_accuracy", "lower_bound", "method")},
            "applies": threshold is None}
    if threshold is not None:
        info["text"] += f" (Not in force: answers are flagged below the {float(threshold):.0%} threshold asked for.)"
    return info


def model_protocol(model: Any, protocol: str | None = None) -> str:
    """The prompt protocol: the one asked for, else the one the adapter (or merged model) was trained with."""
    return protocol or (getattr(model, "medqa_meta", None) or {}).get("protocol") or "chat"


# ----------------------------------------------------------------------------- generation


def _stop_ids(fmt: Any) -> tuple[list[int], list[int] | None]:
    """(single-token stop ids, multi-token end-of-turn sequence or None)."""
    tok = fmt.tokenizer
    end_ids = fmt.encode(fmt.end_text)
    ids: list[int] = []
    seq = None
    if len(end_ids) == 1:
        ids.append(end_ids[0])
    elif end_ids:
        seq = end_ids
    eos = tok.eos_token_id
    for e in (eos if isinstance(eos, list) else [eos]):
        if e is not None and e not in ids:
            ids.append(int(e))
    return ids, seq


def _make_streamer(tokenizer: Any, stop_ids: list[int]):
    from transformers import TextIteratorStreamer

    class _TimedStreamer(TextIteratorStreamer):
        """Records when the first new token arrives (before word-boundary buffering) and counts them."""

        first_token_at: float | None = None
        n_tokens = 0
        last_id: int | None = None

        def put(self, value: Any) -> None:
            if not (self.skip_prompt and self.next_tokens_are_prompt):
                flat = value.reshape(-1).tolist()
                if flat:
                    if self.first_token_at is None:
                        self.first_token_at = time.perf_counter()
                    self.n_tokens += len(flat)
                    self.last_id = int(flat[-1])
            super().put(value)

    return _TimedStreamer(tokenizer, skip_prompt=True, timeout=STREAM_TIMEOUT_S, skip_special_tokens=True)


def _stopping(cancel: threading.Event, seq: list[int] | None):
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: Any, **kw: Any) -> torch.BoolTensor:
            hit = cancel.is_set()
            if seq is not None and input_ids.shape[1] >= len(seq):
                hit = hit or input_ids[0, -len(seq):].tolist() == seq
            return torch.full((input_ids.shape[0],), hit, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Stop()])


def answer_stream(
    model: Any,
    tokenizer: Any,
    question: str,
    options: Sequence[str],
    threshold: float | None = None,
    explain: bool = True,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    protocol: str | None = None,
    fmt: Any = None,
) -> Iterator[Prediction]:
    """Yield snapshots: first the scored letter (explanation ""), then one per streamed text piece,
    last a snapshot with `done=True` and the timings. Closing the generator stops generation."""
    import torch
    from transformers import GenerationConfig

    from medqa.calibrate import abstains, apply_temperature, guarantee_text
    from medqa.evaluate import score_records
    from medqa.format import PromptFormat

    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold must be between 0 and 1 (got {threshold})")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1 (got {max_new_tokens})")
    q, opts = validate_question(question, options, tokenizer)
    fmt = fmt or PromptFormat(tokenizer, model_protocol(model, protocol))
    calibration = calibration_of(model)

    t0 = time.perf_counter()
    rec = MCQRecord(id="predict", question=q, options=opts, answer=0)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int):  # room for the prompt, the longest answer line and a few explanation tokens
        need = len(fmt.encode_prompt(rec)) + 16 + max(
            len(fmt.encode(f"{fmt.letter_prefix}{LETTERS[i]}. {o}\nExplanation:")) for i, o in enumerate(opts))
        if need > limit:
            raise InputError(None, f"the question and options need {need} tokens; this model takes at most {limit}")
    probs = score_records(model, fmt, [rec], batch_size=1, progress=False)
    temperature = float(calibration.get("temperature", 1.0))
    probs = apply_temperature(probs, temperature)[0]  # the calibration saved with the adapter
    idx = int(probs.argmax())
    conf = float(probs[idx])
    letter = LETTERS[idx]
    low = abstains(conf, calibration, threshold, DEFAULT_THRESHOLD)  # the one rule (calibrate.abstains)
    shown = shown_threshold(calibration, threshold)
    pred = Prediction(
        question=q, options=opts, letter=letter, index=idx, option=opts[idx],
        probabilities={LETTERS[i]: round(float(p), 6) for i, p in enumerate(probs)},
        confidence=round(conf, 6), threshold=shown, low_confidence=low,
        abstention=abstention_message(letter, conf, shown, guarantee_text(calibration)) if low else None,
        explanation="" if explain else None,
        guarantee=guarantee_info(calibration, threshold), protocol=fmt.protocol,
        seconds_to_letter=round(time.perf_counter() - t0, 4),
    )
    if not explain:
        pred.done, pred.stop_reason = True, "not_requested"
        pred.seconds_total = pred.seconds_to_letter
        yield pred
        return
    yield dataclasses.replace(pred)

    # The explanation follows the chosen answer, exactly as in the training target.
    ids = fmt.encode_prompt(rec) + fmt.encode(f"{fmt.letter_prefix}{letter}. {opts[idx]}\nExplanation:")
    if isinstance(limit, int):
        max_new_tokens = max(1, min(max_new_tokens, limit - len(ids)))
    stop_ids, stop_seq = _stop_ids(fmt)
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
        eos_token_id=stop_ids, pad_token_id=pad,
    )
    streamer = _make_streamer(tokenizer, stop_ids)
    cancel = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with torch.inference_mode():
                model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                    generation_config=gen_cfg, streamer=streamer,
                    stopping_criteria=_stopping(cancel, stop_seq),
                )
        except BaseException as e:  # surfaced in the reader below
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=run, name="medqa-generate", daemon=True)
    raw = ""
    try:
        thread.start()
        for piece in streamer:
            if not piece:
                continue
            raw += piece
            text = raw.split(fmt.end_text, 1)[0].lstrip() if stop_seq else raw.lstrip()
            if text == pred.explanation:
                continue
            pred.explanation = text
            if streamer.first_token_at is not None:
                pred.seconds_to_first_token = round(streamer.first_token_at - t0, 4)
            yield dataclasses.replace(pred)
    finally:
        cancel.set()
        thread.join(timeout=STREAM_TIMEOUT_S)
    if errors:
        raise errors[0]
    pred.explanation = (raw.split(fmt.end_text, 1)[0] if stop_seq else raw).strip()
    if streamer.first_token_at is not None:
        pred.seconds_to_first_token = round(streamer.first_token_at - t0, 4)
    pred.generated_tokens = streamer.n_tokens
    ended = streamer.last_id in stop_ids or (stop_seq is not None and fmt.end_text in raw)
    pred.stop_reason = "end_of_turn" if ended else "max_new_tokens"
    pred.seconds_total = round(time.perf_counter() - t0, 4)
    pred.done = True
    yield pred


def answer(
    model: Any,
    tokenizer: Any,
    question: str,
    options: Sequence[str],
    threshold: float | None = None,
    explain: bool = True,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    on_token: Callable[[str], None] | None = None,
    on_letter: Callable[[Prediction], None] | None = None,
    protocol: str | None = None,
    fmt: Any = None,
) -> Prediction:
    """Answer one question; `on_letter(prediction)` fires once the letter is scored and
    `on_token(text_piece)` for each streamed piece of the explanation. Returns the final result."""
    last: Prediction | None = None
    shown = 0
    for snap in answer_stream(model, tokenizer, question, options, threshold, explain, max_new_tokens, protocol, fmt):
        if last is None and on_letter is not None:
            on_letter(snap)
        if on_token is not None and snap.explanation and not snap.done:
            if len(snap.explanation) > shown:
                on_token(snap.explanation[shown:])
                shown = len(snap.explanation)
        last = snap
    assert last is not None
    if on_token is not None and last.explanation and len(last.explanation) > shown:
        tail = last.explanation[shown:]
        if tail.strip():
            on_token(tail)
    return last


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
    p.add_argument("--threshold", type=float, default=None,
                   help="flag answers (and abstain) below this probability (default: the adapter's calibrated "
                        "rule, else 0.5)")
    p.add_argument("--model", default=None,
                   help="Hub id, local folder, .gguf file (default: the adapter's base model, else the offline "
                        "SmolLM2-135M-Instruct)")
    p.add_argument("--adapter", help="LoRA adapter folder (or Hub id)")
    p.add_argument("--force-base", action="store_true",
                   help="load the adapter onto --model even though it was trained on another base model")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps | xpu")
    p.add_argument("--protocol", choices=["chat", "lm-eval"], default=None,
                   help="prompt protocol (default: the one the adapter was trained with, else chat)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="explanation length cap")
    p.add_argument("--no-explain", action="store_true", help="only score the options; no explanation")
    p.set_defaults(handler=predict_main)
    return p


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


def _print_header(pred: Prediction, out: TextIO, label: str) -> None:
    print(f"{label}{_safe(pred.question)}", file=out)
    print(f"Answer: {pred.letter}. {_safe(pred.option)}  "
          f"({pred.confidence:.1%}; letter in {pred.seconds_to_letter:.2f} s)", file=out)
    for i, opt in enumerate(pred.options):
        L = LETTERS[i]
        p = pred.probabilities[L]
        mark = ">" if i == pred.index else " "
        print(f" {mark}{L} {p:6.1%} {_bar(p, 20, out)} {_safe(opt)}", file=out)
    if pred.low_confidence:
        print(f"LOW CONFIDENCE: {_safe(pred.abstention or '')}", file=out)
    out.flush()


def predict_main(args: argparse.Namespace, stdout: TextIO | None = None, stdin: TextIO | None = None) -> int:
    """`medqa predict`: validate every question first, then load the model once and answer them."""
    out = stdout or sys.stdout
    if args.input and (args.question or args.option):
        raise ConfigError("give either --question/--option or --input, not both")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold must be between 0 and 1 (got {args.threshold})")
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1 (got {args.max_new_tokens})")
    if args.input:
        items = read_questions(args.input, stdin)
    elif args.question is not None or args.option:
        q, opts = validate_question(args.question, args.option or [], source="command line")
        items = [{"question": q, "options": opts}]
    else:
        raise ConfigError(f"give --question and --option ({MIN_OPTIONS}-{MAX_OPTIONS} times), or --input FILE|-")

    from medqa import modeling
    from medqa.config import ModelConfig
    from medqa.format import PromptFormat

    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        model, tokenizer = modeling.load_model(ModelConfig(name=args.model, adapter=args.adapter, device=args.device,
                                                           force_base=getattr(args, "force_base", False)))
    fmt = PromptFormat(tokenizer, model_protocol(model, args.protocol))
    explain = not args.no_explain
    if not args.json:
        g = guarantee_info(calibration_of(model), args.threshold)
        if g is not None:  # what the confidence flag means, once, before the answers
            print(f"Abstention rule: {g['text']}", file=out)
    for n, item in enumerate(items, start=1):
        extra = {k: item[k] for k in ("id", "row") if k in item}
        if args.json:
            pred = answer(model, tokenizer, item["question"], item["options"], args.threshold, explain,
                          args.max_new_tokens, fmt=fmt)
            pred.extra = extra
            print(json.dumps(pred.to_dict(), ensure_ascii=False), file=out, flush=True)
            continue
        label = f"Q{n}/{len(items)}: " if len(items) > 1 else "Q: "
        started = {"explanation": False}

        def on_letter(p: Prediction, label: str = label) -> None:
            _print_header(p, out, label)

        def on_token(piece: str, started: dict[str, bool] = started) -> None:
            if not started["explanation"]:
                out.write("Explanation: ")
                started["explanation"] = True
            out.write(_safe(piece))
            out.flush()

        pred = answer(model, tokenizer, item["question"], item["options"], args.threshold, explain,
                      args.max_new_tokens, on_token=on_token, on_letter=on_letter, fmt=fmt)
        if explain:
            if not started["explanation"]:
                out.write("Explanation: (none generated)")
            first = f"{pred.seconds_to_first_token:.2f} s" if pred.seconds_to_first_token is not None else "n/a"
            out.write(f"\n(first explanation token after {first}; {pred.seconds_total:.2f} s total; "
                      f"stopped: {pred.stop_reason})\n")
        print(file=out)
    if not args.json:
        print(disclaimer(), file=out)
    out.flush()
    return 0
