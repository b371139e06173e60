"""One inference path: score the option letters, generate with the model's own `generate`, answer questions.

    from medqa.inference import Answerer
    answerer = Answerer.from_config(cfg)              # or Answerer(model, tokenizer) for a loaded model
    answerer.score(records)                           # calibrated option probabilities (raw=True: unscaled)
    answerer.generate(records, max_new_tokens=96)     # greedy answer + explanation, one stop rule
    answerer.reason(records, max_new_tokens=1024)     # thinking mode: reasoning, then "Answer: X" (Generation)
    pred = answerer.answer("Which nerve supplies the deltoid?", ["Axillary", "Radial"])
    pred.letter, pred.probabilities, pred.low_confidence, pred.explanation
    pred = answerer.answer(..., thinking=True)        # the reasoning's letter; pred.thinking has the reasoning

Scoring is lm-evaluation-harness's (the next-token probability of each single-token option letter),
done in one forward pass: prompts sorted by length, left-padded into batches (positions restart after the
padding), only the last position's logits computed. The calibration saved with the adapter (temperature,
abstention rule) is read once, from the loaded model; whether to abstain is decided in one place,
`Answerer.decide` (`calibrate.abstains`). Input is validated before the model is touched.
Importing this module does not import torch (the CLI parser stays fast).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from medqa.calibrate import abstains, apply_temperature, guarantee_text
from medqa.config import THINKING_MAX_NEW_TOKENS
from medqa.datasets import LETTERS, MCQRecord
from medqa.errors import ConfigError
from medqa.errors import DataError
from medqa.reasoning import REASONING_TAGS, parse_final_answer, reasoning_prompt, supports_thinking
from medqa.inference_stream import (
    DEFAULT_THRESHOLD,
    DISCLAIMER,
    Generation,
    Prediction,
    StreamStats,
    abstention_message,
    decode_generated,
    generated_length,
    generation_kwargs,
    skipped_ids,
    guarantee_info,
    shown_threshold,
    stop_rule,
    stream_generate,
    thinking_note,
    unparseable_message,
)

__all__ = ["Answerer", "score_records", "left_padded_batches", "generate_answers", "generate_ids", "validate_question",
           "InputError", "Prediction", "check_settings", "DISCLAIMER", "DEFAULT_THRESHOLD", "DEFAULT_MAX_NEW_TOKENS",
           "generate_completions", "generate_reasoning", "reasoning_ids", "Generation", "THINKING_MAX_NEW_TOKENS"]

MAX_QUESTION_CHARS = 2000
MAX_OPTION_CHARS = 300
MIN_OPTIONS, MAX_OPTIONS = 2, 5
DEFAULT_MAX_NEW_TOKENS = 128


class InputError(DataError, ValueError):
    """A question or its options are not acceptable (names the field: 'question', 'option B', ...)."""

    def __init__(self, field: str | None, message: str, source: str = "input", row: int | str | None = None):
        super().__init__(source, row, field, message)

    def user_message(self) -> str:
        """A sentence for people: "Question is empty.", "Option B is too long (...)."."""
        text = f"{self.field} {self.message}" if self.field else self.message
        return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _reserved_tokens(tokenizer: Any) -> list[str]:
    if tokenizer is None:
        return []
    toks = set(getattr(tokenizer, "all_special_tokens", None) or [])
    for t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(t, "special", False):
            toks.add(str(t))
    return sorted((t for t in toks if t and len(t) > 1), key=len, reverse=True)


def _check_text(value: Any, field: str, limit: int, source: str, row: int | str | None, reserved: list[str]) -> str:
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


def validate_question(question: Any, options: Any, tokenizer: Any = None, source: str = "input",
                      row: int | str | None = None) -> tuple[str, list[str]]:
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


def left_padded_batches(encoded: list[list[int]], batch_size: int, pad_id: int) -> Iterator[tuple[list[int], Any, Any]]:
    """Yield (indices, input_ids, attention_mask): longest prompts first, left-padded so every row ends
    at the last column (where the next token is read)."""
    import torch

    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]) :] = 1
        yield idx, ids, mask


def score_records(model: Any, fmt: Any, records: list[MCQRecord], batch_size: int = 16, progress: bool = True,
                  desc: str = "scoring") -> list[np.ndarray]:
    """Probabilities over each record's options (renormalised over the option letters), uncalibrated."""
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    pad_id = fmt.tokenizer.pad_token_id if fmt.tokenizer.pad_token_id is not None else 0
    out: list[np.ndarray | None] = [None] * len(records)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(records), desc=desc, unit="q", disable=not progress, leave=False)
    with torch.inference_mode():
        for idx, ids, mask in left_padded_batches([fmt.encode_prompt(r) for r in records], batch_size, pad_id):
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                           logits_to_keep=1, use_cache=False).logits[:, -1, :].float()
            for row, i in enumerate(idx):
                out[i] = torch.softmax(logits[row, fmt.choice_ids(records[i])], dim=-1).cpu().numpy()
            bar.update(len(idx))
    bar.close()
    if was_training:
        model.train()
    return out  # type: ignore[return-value]


def generate_completions(model: Any, fmt: Any, encoded: list[list[int]], batch_size: int = 8,
                         max_new_tokens: int = 96, progress: bool = True, keep: Sequence[str] = ()) -> list[Generation]:
    """Greedy, batched (left-padded) generation after each prompt, under the format's one stop rule: each
    completion's text (special tokens left out, except those in `keep`), tokens generated and stop reason."""
    import torch
    from tqdm.auto import tqdm

    rule = stop_rule(fmt)
    skip = skipped_ids(fmt.tokenizer, keep) if keep else None
    device = next(model.parameters()).device
    done: list[Generation | None] = [None] * len(encoded)
    bar = tqdm(total=len(encoded), desc="generating", unit="q", disable=not progress, leave=False)
    with torch.inference_mode():
        for idx, ids, mask in left_padded_batches(encoded, batch_size, rule.pad_id):
            width = ids.shape[1]
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 **generation_kwargs(rule, max_new_tokens))
            for row, i in enumerate(idx):
                new = out[row, width:].tolist()
                n, ended = generated_length(rule, new)
                text = rule.cut(decode_generated(fmt.tokenizer, new[:n], skip)).strip()
                done[i] = Generation(text, n, "end_of_turn" if ended else "max_new_tokens")
            bar.update(len(idx))
    bar.close()
    return done  # type: ignore[return-value]


def generate_ids(model: Any, fmt: Any, encoded: list[list[int]], batch_size: int = 8, max_new_tokens: int = 96,
                 progress: bool = True) -> list[str]:
    """Greedy, batched (left-padded) generation after each prompt, under the format's one stop rule."""
    return [g.text for g in generate_completions(model, fmt, encoded, batch_size, max_new_tokens, progress)]


def generate_answers(model: Any, fmt: Any, records: list[MCQRecord], batch_size: int = 8, max_new_tokens: int = 96,
                     progress: bool = True) -> list[str]:
    """The answer and its explanation for each record (greedy, batched); stops at end of turn."""
    return generate_ids(model, fmt, [fmt.encode_prompt(r) for r in records], batch_size, max_new_tokens, progress)


def reasoning_ids(fmt: Any, rec: MCQRecord) -> list[int]:
    """The thinking-mode prompt (`medqa.reasoning.reasoning_prompt`, thinking on): through the chat template when
    the format uses one (Qwen3: its thinking mode), else the plain prompt ending at "Reasoning:" (lm-eval)."""
    return fmt.encode(reasoning_prompt(fmt.tokenizer, rec, thinking=True, use_template=fmt.uses_template))


def generate_reasoning(model: Any, fmt: Any, records: list[MCQRecord], batch_size: int = 8,
                       max_new_tokens: int = THINKING_MAX_NEW_TOKENS, progress: bool = True) -> list[Generation]:
    """Thinking mode for each record (greedy, batched, the one stop rule): the reasoning and the final answer line,
    <think> / </think> kept in the text for `medqa.reasoning.parse_final_answer`."""
    return generate_completions(model, fmt, [reasoning_ids(fmt, r) for r in records], batch_size, max_new_tokens,
                                progress, keep=REASONING_TAGS)


def check_settings(threshold: float | None, max_new_tokens: int, flag: str = "") -> None:
    """A threshold in [0, 1] and at least one new token (`flag` names the option: '--')."""
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"{flag}threshold must be between 0 and 1 (got {threshold})")
    if max_new_tokens < 1:
        raise ConfigError(f"{flag}max{'-' if flag else '_'}new{'-' if flag else '_'}tokens must be at least 1 "
                          f"(got {max_new_tokens})")


def calibration_of(model: Any) -> dict[str, Any]:
    """The calibration loaded with the model (adapter folder or merged export), or {}."""
    return getattr(model, "medqa_calibration", None) or {}


def model_protocol(model: Any, protocol: str | None = None) -> str:
    """The prompt protocol: the one asked for, else the one the adapter (or merged model) was trained with."""
    return protocol or (getattr(model, "medqa_meta", None) or {}).get("protocol") or "chat"


class Answerer:
    """A loaded model, its tokenizer, prompt protocol and calibration: everything that answers questions.

    `protocol` None: the one the adapter (or merged model) was trained with, else chat; `calibration` None:
    the one loaded with the model (`modeling.load_model`), else identity. Building one touches no weights."""

    def __init__(self, model: Any, tokenizer: Any, protocol: str | None = None,
                 calibration: dict[str, Any] | None = None, fmt: Any = None):
        self.model, self.tokenizer = model, tokenizer
        self.protocol = protocol or (fmt.protocol if fmt is not None else model_protocol(model))
        self.calibration = calibration if calibration is not None else calibration_of(model)
        self._fmt = fmt
        self.config: Any = None  # the RunConfig it was built from (`from_config`)

    @classmethod
    def from_config(cls, cfg: Any, hw: Any = None) -> Answerer:
        """Load `cfg.model` (the adapter brings its base, protocol and calibration) under `resolve_protocol(cfg)`."""
        from medqa.modeling import load_model, resolve_protocol

        model, tokenizer = load_model(cfg.model, hw)
        answerer = cls(model, tokenizer, resolve_protocol(cfg))
        answerer.config = cfg
        return answerer

    @property
    def fmt(self) -> Any:
        if self._fmt is None:
            from medqa.format import PromptFormat

            self._fmt = PromptFormat(self.tokenizer, self.protocol)
        return self._fmt

    @property
    def temperature(self) -> float:
        return float(self.calibration.get("temperature", 1.0))

    # -- scoring and generation -------------------------------------------------------------------
    def score(self, records: list[MCQRecord], raw: bool = False, batch_size: int = 16,
              progress: bool = False) -> list[np.ndarray]:
        """Option probabilities per record, temperature-scaled by the calibration unless `raw`."""
        probs = score_records(self.model, self.fmt, records, batch_size, progress)
        return probs if raw else apply_temperature(probs, self.temperature)

    def generate(self, prompts: Sequence[MCQRecord] | Sequence[list[int]], max_new_tokens: int = 96,
                 batch_size: int = 8, progress: bool = False) -> list[str]:
        """Greedy text after each prompt (records, or token ids), stopped by the format's one stop rule."""
        encoded = [p if isinstance(p, list) else self.fmt.encode_prompt(p) for p in prompts]
        return generate_ids(self.model, self.fmt, encoded, batch_size, max_new_tokens, progress)

    def reason(self, records: list[MCQRecord], max_new_tokens: int = THINKING_MAX_NEW_TOKENS, batch_size: int = 8,
               progress: bool = False) -> list[Generation]:
        """Thinking mode: the reasoning and final "Answer: X" line per record (`generate_reasoning`)."""
        return generate_reasoning(self.model, self.fmt, records, batch_size, max_new_tokens, progress)

    def decide(self, probs: np.ndarray, threshold: float | None = None, index: int | None = None) -> dict[str, Any]:
        """The chosen option (the most probable, or `index`) and whether MedQA abstains on it: the one abstention
        rule (`calibrate.abstains`: an explicit threshold, else the calibration's rule, else DEFAULT_THRESHOLD)."""
        idx = int(np.argmax(probs)) if index is None else int(index)
        conf = float(probs[idx])
        low = abstains(conf, self.calibration, threshold, DEFAULT_THRESHOLD)
        shown = shown_threshold(self.calibration, threshold)
        subject = "The best option" if idx == int(np.argmax(probs)) else "The chosen option"
        why = abstention_message(LETTERS[idx], conf, shown, guarantee_text(self.calibration), subject) if low else None
        return {"index": idx, "confidence": conf, "low_confidence": low, "threshold": shown, "abstention": why,
                "guarantee": guarantee_info(self.calibration, threshold)}

    # -- answering one question ---------------------------------------------------------------------
    def explanation_prompt(self, rec: MCQRecord, index: int) -> list[int]:
        """The explanation follows the chosen answer, exactly as in the training target."""
        fmt = self.fmt
        return fmt.encode_prompt(rec) + fmt.encode(f"{fmt.letter_prefix}{LETTERS[index]}. {rec.options[index]}"
                                                   "\nExplanation:")

    def _context_limit(self) -> int | None:
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        return limit if isinstance(limit, int) else None

    def _check_fits(self, rec: MCQRecord, thinking: bool = False) -> None:
        """Room for the prompt, the longest answer line and a few explanation tokens (thinking: and for the
        reasoning prompt and a few reasoning tokens)."""
        limit = self._context_limit()
        if limit is not None:
            need = 16 + max(len(self.explanation_prompt(rec, i)) for i in range(len(rec.options)))
            if thinking:
                need = max(need, 16 + len(reasoning_ids(self.fmt, rec)))
            if need > limit:
                raise InputError(None, f"the question and options need {need} tokens; this model takes at most {limit}")

    def _scored(self, question: str, options: Sequence[str], threshold: float | None, explain: bool,
                t0: float, thinking: bool = False) -> tuple[MCQRecord, Prediction, np.ndarray]:
        q, opts = validate_question(question, options, self.tokenizer)
        rec = MCQRecord(id="predict", question=q, options=opts, answer=0)
        self._check_fits(rec, thinking)
        probs = self.score([rec])[0]
        d = self.decide(probs, threshold)
        pred = Prediction(
            question=q, options=opts, letter=LETTERS[d["index"]], index=d["index"], option=opts[d["index"]],
            probabilities={LETTERS[i]: round(float(p), 6) for i, p in enumerate(probs)},
            confidence=round(d["confidence"], 6), threshold=d["threshold"], low_confidence=d["low_confidence"],
            abstention=d["abstention"], explanation="" if explain else None, guarantee=d["guarantee"],
            protocol=self.fmt.protocol, seconds_to_letter=round(time.perf_counter() - t0, 4))
        return rec, pred, probs

    def answer_stream(self, question: str, options: Sequence[str], threshold: float | None = None,
                      explain: bool = True, max_new_tokens: int | None = None,
                      thinking: bool = False) -> Iterator[Prediction]:
        """Yield snapshots: first the scored letter (explanation ""), then one per streamed text piece,
        last a snapshot with `done=True` and the timings. Closing the generator stops generation.

        `thinking` (with `explain`): the model reasons first (`medqa.reasoning.reasoning_prompt`) and the streamed
        text is its reasoning; the last snapshot answers with the letter of its final "Answer: X" line (see
        `_thinking_answer`). `max_new_tokens` None: DEFAULT_MAX_NEW_TOKENS, or THINKING_MAX_NEW_TOKENS thinking."""
        thinking = thinking and explain
        if max_new_tokens is None:
            max_new_tokens = THINKING_MAX_NEW_TOKENS if thinking else DEFAULT_MAX_NEW_TOKENS
        check_settings(threshold, max_new_tokens)
        t0 = time.perf_counter()
        rec, pred, probs = self._scored(question, options, threshold, explain, t0, thinking)
        if not explain:
            pred.done, pred.stop_reason, pred.seconds_total = True, "not_requested", pred.seconds_to_letter
            yield pred
            return
        if thinking:
            yield from self._reason_stream(rec, pred, probs, threshold, max_new_tokens, t0)
            return
        yield dataclasses.replace(pred)
        ids = self.explanation_prompt(rec, pred.index)
        limit = self._context_limit()
        if limit is not None:
            max_new_tokens = max(1, min(max_new_tokens, limit - len(ids)))
        stats = StreamStats()
        for text in stream_generate(self.model, self.tokenizer, ids, stop_rule(self.fmt), max_new_tokens, stats):
            pred.explanation = text
            if stats.first_token_at is not None:
                pred.seconds_to_first_token = round(stats.first_token_at - t0, 4)
            yield dataclasses.replace(pred)
        if stats.first_token_at is not None:
            pred.seconds_to_first_token = round(stats.first_token_at - t0, 4)
        pred.explanation, pred.generated_tokens, pred.stop_reason = stats.text, stats.tokens, stats.stop_reason
        pred.seconds_total = round(time.perf_counter() - t0, 4)
        pred.done = True
        yield pred

    def _reason_stream(self, rec: MCQRecord, pred: Prediction, probs: np.ndarray, threshold: float | None,
                       max_new_tokens: int, t0: float) -> Iterator[Prediction]:
        """Thinking mode: the scored snapshot, the reasoning as it streams, then `_thinking_answer`."""
        pred.thinking = {"status": "reasoning", "scored_letter": pred.letter, "scored_confidence": pred.confidence}
        yield dataclasses.replace(pred, thinking=dict(pred.thinking))
        ids = reasoning_ids(self.fmt, rec)
        limit = self._context_limit()
        if limit is not None:
            max_new_tokens = max(1, min(max_new_tokens, limit - len(ids)))
        stats = StreamStats()
        for text in stream_generate(self.model, self.tokenizer, ids, stop_rule(self.fmt), max_new_tokens, stats,
                                    keep=REASONING_TAGS):
            pred.explanation = text
            if stats.first_token_at is not None:
                pred.seconds_to_first_token = round(stats.first_token_at - t0, 4)
            yield dataclasses.replace(pred, thinking=dict(pred.thinking))
        if stats.first_token_at is not None:
            pred.seconds_to_first_token = round(stats.first_token_at - t0, 4)
        pred.explanation, pred.generated_tokens, pred.stop_reason = stats.text, stats.tokens, stats.stop_reason
        self._thinking_answer(pred, probs, threshold, Generation(stats.text, stats.tokens, stats.stop_reason or ""))
        pred.seconds_total = round(time.perf_counter() - t0, 4)
        pred.done = True
        yield pred

    def _thinking_answer(self, pred: Prediction, probs: np.ndarray, threshold: float | None, gen: Generation) -> None:
        """The thinking-mode answer, in place: the letter of the final "Answer: X" line (`parse_final_answer`,
        strict). Its confidence is a real probability: letter scoring's calibrated probability of that letter
        (one forward pass on the question, before any reasoning), under the one abstention rule; a reasoning
        that disagrees with letter scoring says so. Unparseable (or cut off): letter scoring's answer, flagged."""
        parsed = parse_final_answer(gen.text, len(pred.options))
        scored, scored_conf = pred.letter, pred.confidence
        info: dict[str, Any] = {
            "status": "done", "letter": parsed.letter, "reasoning": parsed.reasoning, "final_line": parsed.final_line,
            "well_formed": parsed.well_formed, "scored_letter": scored, "scored_confidence": scored_conf,
            "agrees": None if parsed.index is None else parsed.letter == scored,
            "tokens": gen.tokens, "cut_off": gen.cut_off,
            "template_thinking": bool(self.fmt.uses_template and supports_thinking(self.tokenizer)),
            "confidence_source": "letter scoring's calibrated probability of the answer's letter, before reasoning",
        }
        if parsed.index is not None:
            d = self.decide(probs, threshold, parsed.index)
            pred.index, pred.letter, pred.option = d["index"], LETTERS[d["index"]], pred.options[d["index"]]
            pred.confidence, pred.low_confidence = round(d["confidence"], 6), d["low_confidence"]
            pred.abstention = d["abstention"]
        else:
            pred.low_confidence = True
            pred.abstention = unparseable_message(scored, scored_conf, gen.tokens if gen.cut_off else None)
        info["note"] = thinking_note(info)
        pred.thinking = info

    def answer(self, question: str, options: Sequence[str], threshold: float | None = None, explain: bool = True,
               max_new_tokens: int | None = None, on_token: Callable[[str], None] | None = None,
               on_letter: Callable[[Prediction], None] | None = None, thinking: bool = False) -> Prediction:
        """Answer one question; `on_letter(prediction)` fires once the letter is scored and
        `on_token(text_piece)` for each streamed piece of the explanation (thinking: of the reasoning).
        Returns the final result."""
        last: Prediction | None = None
        shown = 0
        for snap in self.answer_stream(question, options, threshold, explain, max_new_tokens, thinking):
            if last is None and on_letter is not None:
                on_letter(snap)
            if on_token is not None and snap.explanation and not snap.done and len(snap.explanation) > shown:
                on_token(snap.explanation[shown:])
                shown = len(snap.explanation)
            last = snap
        assert last is not None
        if on_token is not None and last.explanation and len(last.explanation) > shown:
            tail = last.explanation[shown:]
            if tail.strip():
                on_token(tail)
        return last
