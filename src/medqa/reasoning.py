"""Reason, then answer: the prompt that asks for a rationale and a final answer line, and its strict parser.

One contract for GRPO training (the correctness and format rewards) and thinking-mode evaluation:

    <think>                     (Qwen3 thinking mode; other models write the rationale as plain text)
    ...reasoning...
    </think>
    ...optional short explanation...
    Answer: B

`parse_final_answer` reads the letter from the LAST non-empty line only, and only in the form
"Answer: X" (case-insensitive; "Final answer:", bold markers and "(B)" / "B." / "B) text" accepted).
Anything else - no final line, a letter outside the options, a reasoning block never closed (cut off at
the token limit), two different letters on the final line - is None: counted wrong, never defaulted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from medqa.datasets import LETTERS, MCQRecord
from medqa.format import plain_prompt, user_message

REASONING_SYSTEM_PROMPT = (
    "You are a medical expert answering exam questions. Think through the question step by step, "
    "then give your final answer on the last line in the form 'Answer: X', where X is the letter of "
    "the correct option."
)
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
REASONING_TAGS = (THINK_OPEN, THINK_CLOSE)  # kept when a completion is decoded, even where they are special tokens

_FINAL_RE = re.compile(  # the answer word in any case; the letter upper-case ("Answer: a 45-year-old ..." is no letter)
    r"^[\s*_#>-]*(?i:(?:the\s+)?(?:final\s+)?answer(?:\s+is)?)\s*[:：]?\s*[*_]*\s*\(?([A-Z])\)?(?=[\s.):*_,;]|$)(.*)$"
)
_SECOND_LETTER = re.compile(r"^\s*(?:(?i:or|and)\b|/|,)\s*\(?[A-Z]\b")  # "Answer: B or C" names no one letter


def reasoning_messages(rec: MCQRecord) -> list[dict[str, str]]:
    return [{"role": "system", "content": REASONING_SYSTEM_PROMPT}, {"role": "user", "content": user_message(rec)}]


def supports_thinking(tokenizer: Any) -> bool:
    """The chat template switches thinking on and off (Qwen3's `enable_thinking`)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return isinstance(template, str) and "enable_thinking" in template


def reasoning_prompt(tokenizer: Any, rec: MCQRecord, thinking: bool = True, use_template: bool | None = None) -> str:
    """The text a model continues with its reasoning and final answer line.

    Chat models: system + user message through the tokenizer's template, with Qwen3's thinking mode on
    when `thinking` (off otherwise: the model reasons in plain text). Models without a template (or
    `use_template` False, e.g. the lm-eval protocol): the plain benchmark prompt (options listed) with the
    instruction, ending at "Reasoning:"."""
    if use_template is None:
        use_template = bool(getattr(tokenizer, "chat_template", None))
    if use_template:
        kwargs = {"enable_thinking": thinking} if supports_thinking(tokenizer) else {}
        return tokenizer.apply_chat_template(reasoning_messages(rec), tokenize=False, add_generation_prompt=True,
                                             **kwargs)
    body = plain_prompt(rec, list_options=True)
    body = body[: -len("Answer:")] if body.endswith("Answer:") else body
    return (f"{REASONING_SYSTEM_PROMPT}\n\n{body}"
            "Reason step by step, then end with a line 'Answer: X'.\nReasoning:")


@dataclass(frozen=True)
class ParsedAnswer:
    """What a generated completion says: the reasoning, the final line, the letter (None: unparseable) and
    whether it is well formed (a closed reasoning block, when one was opened, and a final answer line)."""

    reasoning: str
    final_line: str
    index: int | None
    well_formed: bool
    cut_off: bool  # a <think> block that was never closed

    @property
    def letter(self) -> str | None:
        return LETTERS[self.index] if self.index is not None else None


def split_reasoning(text: str) -> tuple[str, str, bool]:
    """(reasoning, rest, cut_off): the <think> block's content and what follows it; without a block the
    reasoning is everything before the last non-empty line. `cut_off`: a block opened and never closed."""
    open_at = text.find(THINK_OPEN)
    close_at = text.find(THINK_CLOSE)
    if close_at >= 0:  # Qwen3's template may put <think> in the prompt: only the closing tag is generated
        start = open_at + len(THINK_OPEN) if 0 <= open_at < close_at else 0
        return text[start:close_at].strip(), text[close_at + len(THINK_CLOSE):], False
    if open_at >= 0:
        return text[open_at + len(THINK_OPEN):].strip(), "", True
    lines = text.rstrip().splitlines()
    return "\n".join(lines[:-1]).strip(), (lines[-1] if lines else ""), False


def parse_final_answer(text: str, n_options: int) -> ParsedAnswer:
    """Strict: the letter on the final "Answer: X" line, among the first `n_options` letters; else None."""
    reasoning, rest, cut_off = split_reasoning(text)
    lines = [ln for ln in rest.strip().splitlines() if ln.strip()]
    final = lines[-1].strip() if lines else ""
    if cut_off or not final:
        return ParsedAnswer(reasoning, final, None, False, cut_off)
    m = _FINAL_RE.match(final)
    index = None
    if m:
        letter, tail = m.group(1), m.group(2)
        if letter in LETTERS[:n_options] and not _SECOND_LETTER.match(tail.lstrip(").*_ ")):
            index = LETTERS.index(letter)
    return ParsedAnswer(reasoning, final, index, index is not None, False)
