"""What a streamed answer is made of: the `Prediction` snapshots, the one stop rule, streamed generation.

`Prediction` is one answer (letter, probabilities, abstention, explanation so far, timings);
`abstention_message`, `shown_threshold` and `guarantee_info` say what the abstention rule decided.

`stop_rule(fmt)` is the only place that decides where generation ends: the prompt format's end-of-turn
marker (one token, or a sequence checked by a stopping criterion) and the tokenizer's eos id(s).
`medqa.inference.generate_answers` (batched, for evaluation) and `stream_generate` (one prompt, token by
token through `TextIteratorStreamer` from a worker thread, for `predict` and the demo) both use it.
`Generation` is one batched completion (text, tokens generated, stop reason); `thinking_note` and
`unparseable_message` say what a thinking-mode answer is made of.
Importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

DISCLAIMER = "MedQA is a study aid, not a clinician: its answers are not medical advice."
DEFAULT_THRESHOLD = 0.5
STREAM_TIMEOUT_S = 600.0  # a stalled generation thread never blocks a reader forever


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
    disclaimer: str = DISCLAIMER
    # thinking mode: the reasoning, the final line, the letter it names (None: unparseable), the letter scoring's
    # own choice, whether they agree, tokens and cut-off; None when the model answered by letter scoring alone
    thinking: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        extra = d.pop("extra")
        d["answer"] = d.pop("option")
        return {**extra, **d}


def abstention_message(letter: str, confidence: float, threshold: float | None, reason: str | None = None,
                       subject: str = "The best option") -> str:
    """Why an answer is flagged: below the threshold, or (threshold None) the calibration flags every answer."""
    if threshold is None:
        why = reason or "Its calibration found no confidence level whose answers reach the target accuracy."
        return (
            f"{subject} ({letter}) has {confidence:.0%} probability, but MedQA abstains on every answer of "
            f"this model. {why} Treat {letter} as a guess and check a reliable source."
        )
    return (
        f"{subject} ({letter}) has only {confidence:.0%} probability, below the {threshold:.0%} "
        f"threshold: MedQA abstains. Treat {letter} as a guess and check a reliable source."
    )


def unparseable_message(scored_letter: str, scored_confidence: float, cut_off_at: int | None = None) -> str:
    """Thinking mode, no parseable final "Answer: X" line: MedQA abstains and shows letter scoring's answer."""
    why = (f"was cut off at {cut_off_at} tokens" if cut_off_at is not None
           else "gave no parseable final 'Answer: X' line")
    return (f"The model's reasoning {why}: MedQA abstains. The letter shown is letter scoring's choice "
            f"({scored_letter}, {scored_confidence:.0%}); treat it as a guess and check a reliable source.")


def thinking_note(info: dict[str, Any]) -> str:
    """One sentence on a thinking-mode answer: where the letter and its confidence come from, and whether the
    reasoning and letter scoring agree (`info`: `Prediction.thinking`)."""
    letter, scored, conf = info.get("letter"), info["scored_letter"], info["scored_confidence"]
    if letter is None:
        return (f"No answer from the reasoning; the letter shown is letter scoring's ({scored}, {conf:.0%}, one "
                "forward pass before any reasoning).")
    source = (f"the confidence is letter scoring's calibrated probability of {letter} (one forward pass, before "
              "reasoning)")
    if info.get("agrees"):
        return f"The reasoning answered {letter}, letter scoring's choice too; {source}."
    return (f"The reasoning answered {letter} but letter scoring prefers {scored} ({conf:.0%}): they disagree; "
            f"{source}.")


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


@dataclass(frozen=True)
class StopRule:
    """Where generation ends: any of `ids` (single-token end-of-turn, eos), or the token sequence `seq`
    (a multi-token end-of-turn marker, whose text is `end_text`)."""

    ids: list[int]
    seq: list[int] | None
    end_text: str
    pad_id: int

    def cut(self, text: str) -> str:
        """The generated text before the end-of-turn marker (a multi-token marker is decoded as text)."""
        return text.split(self.end_text, 1)[0] if self.seq else text

    def ended(self, last_id: int | None, text: str) -> bool:
        return last_id in self.ids or (self.seq is not None and self.end_text in text)


def stop_rule(fmt: Any) -> StopRule:
    """The one stop rule of a prompt format: its end-of-turn marker, then the tokenizer's eos id(s)."""
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
    pad = tok.pad_token_id if tok.pad_token_id is not None else (ids[0] if ids else 0)
    return StopRule(ids=ids, seq=seq, end_text=fmt.end_text, pad_id=pad)


def stopping_criteria(rule: StopRule, cancel: threading.Event | None = None) -> Any:
    """Stop a row once it ends with the rule's multi-token marker; stop every row once `cancel` is set."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    seq = rule.seq

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: Any, **kw: Any) -> torch.BoolTensor:
            hit = torch.full((input_ids.shape[0],), cancel is not None and cancel.is_set(), dtype=torch.bool,
                             device=input_ids.device)
            if seq is not None and input_ids.shape[1] >= len(seq):
                tail = torch.tensor(seq, dtype=input_ids.dtype, device=input_ids.device)
                hit = hit | (input_ids[:, -len(seq):] == tail).all(dim=-1)
            return hit

    return StoppingCriteriaList([_Stop()])


def generation_kwargs(rule: StopRule, max_new_tokens: int, cancel: threading.Event | None = None) -> dict[str, Any]:
    """Greedy decoding under the stop rule (the arguments of `model.generate`)."""
    from transformers import GenerationConfig

    kw: dict[str, Any] = {"generation_config": GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=rule.ids, pad_token_id=rule.pad_id)}
    if rule.seq is not None or cancel is not None:
        kw["stopping_criteria"] = stopping_criteria(rule, cancel)
    return kw


@dataclass(frozen=True)
class Generation:
    """One generated completion: its text (cut at the stop rule), the tokens generated (the stop token
    included) and why it stopped: end_of_turn, or max_new_tokens (cut off at the limit)."""

    text: str
    tokens: int
    stop_reason: str

    @property
    def cut_off(self) -> bool:
        return self.stop_reason == "max_new_tokens"


def generated_length(rule: StopRule, ids: list[int]) -> tuple[int, bool]:
    """(tokens generated up to and including the stop, whether the stop rule ended the row); after the stop a
    batched row holds only padding."""
    seq = rule.seq
    for j, t in enumerate(ids):
        if t in rule.ids or (seq is not None and j + 1 >= len(seq) and ids[j + 1 - len(seq) : j + 1] == seq):
            return j + 1, True
    return len(ids), False


def skipped_ids(tokenizer: Any, keep: Sequence[str] = ()) -> set[int]:
    """The special token ids a decoded completion leaves out, except the tokens in `keep` (e.g. the reasoning
    block's <think> / </think>, special in some tokenizers and not in others)."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    ids |= {int(i) for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()
            if getattr(t, "special", False)}
    if keep:
        vocab = tokenizer.get_vocab()
        ids -= {vocab[t] for t in keep if t in vocab}
    return ids


def decode_generated(tokenizer: Any, ids: list[int], skip: set[int] | None = None) -> str:
    """Generated ids as text without special tokens (`skip`: the ids to leave out, from `skipped_ids`; None: every
    special token)."""
    if skip is None:
        return tokenizer.decode(ids, skip_special_tokens=True)
    return tokenizer.decode([t for t in ids if t not in skip], skip_special_tokens=False)


def _make_streamer(tokenizer: Any, keep: Sequence[str] = ()) -> Any:
    from transformers import TextIteratorStreamer

    skip = skipped_ids(tokenizer, keep) if keep else None

    class _TimedStreamer(TextIteratorStreamer):
        """Records when the first new token arrives (before word-boundary buffering) and counts them; with
        `keep`, special tokens are dropped here (those kept stay in the text)."""

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
                if skip is not None:
                    import torch

                    value = torch.tensor([t for t in flat if t not in skip], dtype=value.dtype)
            super().put(value)

    return _TimedStreamer(tokenizer, skip_prompt=True, timeout=STREAM_TIMEOUT_S, skip_special_tokens=skip is None)


@dataclass
class StreamStats:
    """Filled in by `stream_generate`: the first token's time, and at the end the text, tokens and stop reason."""

    first_token_at: float | None = None
    text: str = ""
    tokens: int = 0
    stop_reason: str | None = None  # end_of_turn | max_new_tokens


def stream_generate(model: Any, tokenizer: Any, prompt_ids: list[int], rule: StopRule, max_new_tokens: int,
                    stats: StreamStats, keep: Sequence[str] = ()) -> Iterator[str]:
    """Greedy generation after `prompt_ids`, yielding the text so far (cut at the stop rule) whenever it grows;
    special tokens are left out of the text except those in `keep`.
    Closing the generator stops generation; an error in the generation thread is raised here."""
    import torch

    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=next(model.parameters()).device)
    streamer = _make_streamer(tokenizer, keep)
    cancel = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with torch.inference_mode():
                model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                               **generation_kwargs(rule, max_new_tokens, cancel))
        except BaseException as e:  # surfaced in the reader below
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=run, name="medqa-generate", daemon=True)
    raw, shown = "", ""
    try:
        thread.start()
        for piece in streamer:
            raw += piece
            text = rule.cut(raw).lstrip()
            if not piece or text == shown:
                continue
            shown = text
            stats.first_token_at = streamer.first_token_at
            yield text
    finally:
        cancel.set()
        thread.join(timeout=STREAM_TIMEOUT_S)
    if errors:
        raise errors[0]
    stats.first_token_at = streamer.first_token_at
    stats.text = rule.cut(raw).strip()
    stats.tokens = streamer.n_tokens
    stats.stop_reason = "end_of_turn" if rule.ended(streamer.last_id, raw) else "max_new_tokens"
