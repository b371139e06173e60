"""Prompt formatting: a record becomes chat messages, rendered with the tokenizer's own template.

Training and scoring agree on one contract: the prompt ends exactly where the answer letter
starts, and the letter is a token of its own there. Training sequences are built as
`prompt_ids + target_ids` (target = "B. option text\\nExplanation: ...<end of turn>"), and scoring
reads the next-token distribution after `prompt_ids` at the letter tokens. `letter_ids()` and
`encode_example()` check that contract for the tokenizer at hand and fail loudly if it breaks.

Protocols:
- "chat": system + user messages through the tokenizer's chat template (Qwen3 with
  `enable_thinking=False`); models without a template get the plain format below.
- "lm-eval": lm-evaluation-harness's `medmcqa` prompt ("Question: ...\\nChoices:\\nA. ...\\nAnswer:"),
  letters scored as " A", " B", ...

PubMedQA: under "lm-eval" the prompt is lm-eval's `pubmedqa` one (abstract and question, no options) and
the scored continuations are the words " yes" / " no" / " maybe", so training teaches " yes" (not " A. yes").
Under "chat", with or without a template, the options are listed as "A. yes / B. no / C. maybe" and the
letters are scored, as for every other dataset (predict, serve and generative parsing read letters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medqa.datasets import LETTERS, MCQRecord
from medqa.errors import ModelError

SYSTEM_PROMPT = (
    "You are a medical expert answering exam questions. Reply with the letter of the correct "
    "option and its text, then a short explanation."
)
_SENTINEL = "\x00MEDQA_SENTINEL\x00"


def user_message(rec: MCQRecord) -> str:
    lines = [f"Abstract: {rec.context.strip()}", ""] if rec.context else []
    lines += [f"Question: {rec.question.strip()}", "", "Options:"]
    lines += [f"{LETTERS[i]}. {opt.strip()}" for i, opt in enumerate(rec.options)]
    return "\n".join(lines)


def messages(rec: MCQRecord) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user_message(rec)}]


def _options_block(rec: MCQRecord) -> str:
    return "".join(f"{LETTERS[i]}. {opt}\n" for i, opt in enumerate(rec.options))


def plain_prompt(rec: MCQRecord, list_options: bool = False) -> str:
    """lm-evaluation-harness's prompt for the record's benchmark (0.4.x task templates).

    medmcqa (and anything else): "Question: q\nChoices:\nA. ..\nAnswer:"; medqa_4options:
    "Question: q\nA. ..\nAnswer:"; pubmedqa: "Abstract: ctx\nQuestion: q\nAnswer:" (choices are the
    words yes / no / maybe); mmlu: "q\nA. ..\nAnswer:" after the task description naming the subject.
    With `list_options` (the plain chat format, which scores letters), pubmedqa lists its options too:
    "Abstract: ctx\nQuestion: q\nChoices:\nA. yes\nB. no\nC. maybe\nAnswer:".
    """
    if rec.source == "pubmedqa":
        choices = f"Choices:\n{_options_block(rec)}" if list_options else ""
        return f"Abstract: {rec.context or ''}\nQuestion: {rec.question}\n{choices}Answer:"
    if rec.source == "medqa-usmle":
        return f"Question: {rec.question}\n{_options_block(rec)}Answer:"
    if rec.source == "mmlu":
        return f"{rec.question.strip()}\n{_options_block(rec)}Answer:"
    return f"Question: {rec.question}\nChoices:\n{_options_block(rec)}Answer:"


def lm_eval_description(rec: MCQRecord) -> str:
    if rec.source == "mmlu" and rec.subject:
        return f"The following are multiple choice questions (with answers) about {rec.subject.replace('_', ' ')}.\n\n"
    return ""


@dataclass
class PromptFormat:
    tokenizer: Any
    protocol: str = "chat"
    shots: list[MCQRecord] = field(default_factory=list)  # few-shot examples, answered, before each question
    uses_template: bool = field(init=False)
    letter_prefix: str = field(init=False)
    end_text: str = field(init=False)
    _letter_ids: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.protocol not in ("chat", "lm-eval"):
            raise ModelError(f"unknown prompt protocol '{self.protocol}' (chat or lm-eval)")
        self.uses_template = self.protocol == "chat" and bool(getattr(self.tokenizer, "chat_template", None))
        self.letter_prefix = "" if self.uses_template else " "
        self.end_text = self._end_of_turn()
        self._letter_ids = [self._single_token(self.letter_prefix + L) for L in LETTERS]

    @property
    def name(self) -> str:
        return "chat-template" if self.uses_template else ("lm-eval" if self.protocol == "lm-eval" else "plain")

    # -- text ----------------------------------------------------------------------------------
    def _render(self, msgs: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=generation_prompt, enable_thinking=False
        )

    def _end_of_turn(self) -> str:
        if self.uses_template:
            msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _SENTINEL}]
            rendered = self._render(msgs, generation_prompt=False)
            if _SENTINEL in rendered:
                tail = rendered.split(_SENTINEL, 1)[1].rstrip()
                if tail:
                    return tail
        eos = getattr(self.tokenizer, "eos_token", None)
        if not eos:
            raise ModelError("the tokenizer has neither an end-of-turn marker in its chat template nor an eos_token")
        return eos

    def prompt(self, rec: MCQRecord) -> str:
        """Everything before the answer letter (after the few-shot examples, if any)."""
        if self.uses_template:
            msgs = messages(rec)
            for shot in reversed(self.shots):
                msgs[1:1] = [{"role": "user", "content": user_message(shot)},
                             {"role": "assistant", "content": self.answer_text(shot)}]
            return self._render(msgs, generation_prompt=True)
        # lm-evaluation-harness layout: description, then "<prompt> <choice>" shots joined by a blank line
        shots = "".join(f"{self._plain(s)}{self.choice_strings(s)[s.answer]}\n\n" for s in self.shots)
        return lm_eval_description(rec) + shots + self._plain(rec)

    def _plain(self, rec: MCQRecord) -> str:
        # letters are scored unless lm-eval's words are: then the options must be in the prompt
        return plain_prompt(rec, list_options=not self.scores_words(rec))

    def scores_words(self, rec: MCQRecord) -> bool:
        """lm-eval's PubMedQA scores the words yes / no / maybe, not letters."""
        return self.protocol == "lm-eval" and rec.source == "pubmedqa"

    def choice_strings(self, rec: MCQRecord) -> list[str]:
        """The continuations scored after the prompt: letters, or lm-eval's words for PubMedQA."""
        if self.scores_words(rec):
            return [" " + o for o in rec.options]
        return [self.letter_prefix + L for L in LETTERS[: len(rec.options)]]

    def choice_ids(self, rec: MCQRecord) -> list[int]:
        if self.scores_words(rec):
            return [self._single_token(c) for c in self.choice_strings(rec)]
        return self.letter_ids(len(rec.options))

    def answer_text(self, rec: MCQRecord) -> str:
        """What the assistant says: letter, option text, then the explanation when there is one (lm-eval's
        PubMedQA: the word the scorer reads, " yes", then the explanation)."""
        if self.scores_words(rec):
            text = self.choice_strings(rec)[rec.answer]
        else:
            text = f"{self.letter_prefix}{rec.answer_letter}. {rec.options[rec.answer].strip()}"
        if rec.explanation:
            text += f"\nExplanation: {rec.explanation.strip()}"
        return text

    def target(self, rec: MCQRecord) -> str:
        return self.answer_text(rec) + self.end_text

    # -- tokens --------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _single_token(self, s: str) -> int:
        ids = self.encode(s)
        if len(ids) != 1:
            raise ModelError(f"the tokenizer splits the answer letter {s!r} into {len(ids)} tokens; cannot score letters")
        return ids[0]

    def letter_ids(self, n_options: int) -> list[int]:
        return self._letter_ids[:n_options]

    def encode_prompt(self, rec: MCQRecord) -> list[int]:
        return self.encode(self.prompt(rec))

    def encode_example(self, rec: MCQRecord, max_length: int) -> dict[str, Any] | None:
        """Token ids and labels for training: prompt labels are -100, the answer is learned.

        The explanation is cut to fit `max_length` (the letter and end-of-turn are kept whole when
        the prompt allows); returns None when even the prompt and letter do not fit.
        """
        prompt_ids = self.encode_prompt(rec)
        answer_ids = self.encode(self.answer_text(rec))
        end_ids = self.encode(self.end_text)
        if not answer_ids or answer_ids[0] != self.choice_ids(rec)[rec.answer]:
            raise ModelError(
                f"record {rec.id}: the answer does not start with the token the scorer reads "
                f"({self.tokenizer.convert_ids_to_tokens(answer_ids[:2])})"
            )
        room = max_length - len(prompt_ids) - len(end_ids)
        if room < 1:
            return None
        truncated = len(answer_ids) > room
        target_ids = answer_ids[:room] + end_ids
        input_ids = prompt_ids + target_ids
        return {
            "input_ids": input_ids,
            "labels": [-100] * len(prompt_ids) + target_ids,
            "truncated": truncated,
        }
