"""The reason-then-answer contract: one strict parser for GRPO rewards and thinking-mode evaluation."""

import pytest

from medqa.datasets import MCQRecord
from medqa.reasoning import parse_final_answer, reasoning_prompt, split_reasoning, supports_thinking


@pytest.mark.parametrize("text, letter", [
    ("The deltoid is supplied by the axillary nerve.\nAnswer: B", "B"),
    ("<think>\nC5-C6 root, posterior cord.\n</think>\n\nAnswer: B", "B"),
    ("reasoning</think>\nThe axillary nerve.\nFinal answer: (B)", "B"),  # <think> was in the prompt
    ("...\n**Answer: B**", "B"),
    ("...\nThe answer is B. Axillary nerve", "B"),
    ("...\nanswer: B) Vitamin A deficiency", "B"),
    ("...\nAnswer: B, Axillary nerve", "B"),
    ("...\nAnswer:D\n\n", "D"),
])
def test_the_final_answer_line_is_read(text, letter):
    parsed = parse_final_answer(text, 4)
    assert parsed.letter == letter and parsed.well_formed and not parsed.cut_off


@pytest.mark.parametrize("text, why", [
    ("B", "no answer line"),
    ("Answer: B\nBecause the axillary nerve...", "the answer is not on the last line"),
    ("<think>\nthe axillary nerve, so B, and then", "reasoning cut off at the token limit"),
    ("<think>B</think>", "nothing after the reasoning"),
    ("...\nAnswer: E", "E is not among four options"),
    ("...\nAnswer: B or C", "two letters"),
    ("...\nAnswer: B/C", "two letters"),
    ("...\nAnswer: a 45-year-old man needs ...", "a lower-case article is no letter"),
    ("...\nAnswer: the axillary nerve", "no letter at all"),
    ("", "empty"),
])
def test_anything_else_is_unparseable_never_a_default_letter(text, why):
    parsed = parse_final_answer(text, 4)
    assert parsed.index is None and not parsed.well_formed, why


def test_cut_off_is_told_apart_from_a_bad_final_line():
    assert parse_final_answer("<think>long reasoning", 4).cut_off
    assert not parse_final_answer("no final line here", 4).cut_off


def test_split_reasoning_keeps_the_rationale():
    reasoning, rest, cut = split_reasoning("<think>\nstep 1\nstep 2\n</think>\nAnswer: A")
    assert (reasoning, rest.strip(), cut) == ("step 1\nstep 2", "Answer: A", False)
    reasoning, rest, cut = split_reasoning("step 1\nstep 2\nAnswer: A")
    assert (reasoning, rest, cut) == ("step 1\nstep 2", "Answer: A", False)


REC = MCQRecord(id="q1", question="Which nerve supplies the deltoid muscle?",
                options=["Radial", "Axillary", "Median", "Ulnar"], answer=1, source="medmcqa")


class _Template:
    """A tokenizer stand-in with a Qwen3-style template switch (only apply_chat_template is used)."""

    def __init__(self, template):
        self.chat_template = template
        self.calls = []

    def apply_chat_template(self, msgs, tokenize, add_generation_prompt, **kw):
        self.calls.append(kw)
        return "|".join(m["content"] for m in msgs) + ("<assistant>" if add_generation_prompt else "")


def test_thinking_is_switched_only_where_the_template_knows_it():
    qwen = _Template("{% if enable_thinking %}...{% endif %}")
    reasoning_prompt(qwen, REC, thinking=True)
    reasoning_prompt(qwen, REC, thinking=False)
    assert qwen.calls == [{"enable_thinking": True}, {"enable_thinking": False}]
    other = _Template("{{ messages }}")
    text = reasoning_prompt(other, REC, thinking=True)
    assert other.calls == [{}] and "Answer: X" in text and "B. Axillary" in text
    assert supports_thinking(qwen) and not supports_thinking(other)


def test_plain_models_get_the_options_and_the_instruction():
    class Plain:
        chat_template = None

    text = reasoning_prompt(Plain(), REC)
    assert "A. Radial" in text and "D. Ulnar" in text and text.endswith("Reasoning:")
    assert "Answer: X" in text and "\nAnswer:" not in text.replace("Answer: X", "")
