import pytest
from transformers import AutoTokenizer

from medqa.datasets import LETTERS, MCQRecord
from medqa.errors import ModelError
from medqa.format import PromptFormat


def rec(answer: int = 1, explanation: str | None = "The SA node sets the rate.", n: int = 4) -> MCQRecord:
    opts = ["Purkinje fibres", "SA node", "AV node", "Bundle of His", "Ventricular myocytes"][:n]
    return MCQRecord(id="r1", question="Which structure is the normal pacemaker of the heart?",
                     options=opts, answer=answer, explanation=explanation, subject="Physiology")


@pytest.mark.parametrize("protocol", ["chat", "lm-eval"])
@pytest.mark.parametrize("n", [2, 4, 5])
def test_letter_is_its_own_token_where_scoring_reads_it(any_model_dir, protocol, n):
    tok = AutoTokenizer.from_pretrained(any_model_dir)
    fmt = PromptFormat(tok, protocol)
    for answer in range(n):
        r = rec(answer=answer, n=n)
        ex = fmt.encode_example(r, max_length=512)
        prompt_ids = fmt.encode_prompt(r)
        # the training sequence is the prompt followed by the letter token the scorer reads
        assert ex["input_ids"][: len(prompt_ids)] == prompt_ids
        assert ex["input_ids"][len(prompt_ids)] == fmt.letter_ids(n)[answer]
        # and it is how the tokenizer itself splits the whole text: no merge across the boundary
        whole = fmt.encode(fmt.prompt(r) + fmt.target(r))
        assert whole == ex["input_ids"]


def test_label_masking_decodes_to_the_answer(any_model_dir):
    tok = AutoTokenizer.from_pretrained(any_model_dir)
    fmt = PromptFormat(tok, "chat")
    r = rec(answer=2)
    ex = fmt.encode_example(r, max_length=512)
    labelled = [t for t in ex["labels"] if t != -100]
    n_prompt = sum(1 for t in ex["labels"] if t == -100)
    assert n_prompt == len(fmt.encode_prompt(r))
    assert ex["labels"][:n_prompt] == [-100] * n_prompt
    text = tok.decode(labelled)
    assert text == fmt.target(r)
    assert text.strip().startswith("C. AV node\nExplanation: The SA node sets the rate.")
    assert text.endswith(fmt.end_text)


def test_qwen3_chat_template_without_thinking(qwen_dir):
    tok = AutoTokenizer.from_pretrained(qwen_dir)
    fmt = PromptFormat(tok, "chat")
    p = fmt.prompt(rec())
    assert p.startswith("<|im_start|>system\n")
    assert p.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert "A. Purkinje fibres\nB. SA node" in p
    assert fmt.end_text == "<|im_end|>" and fmt.name == "chat-template"
    assert fmt.letter_prefix == ""


def test_plain_and_lm_eval_formats(plain_dir, qwen_dir):
    plain = PromptFormat(AutoTokenizer.from_pretrained(plain_dir), "chat")
    assert plain.name == "plain" and plain.letter_prefix == " "
    lm = PromptFormat(AutoTokenizer.from_pretrained(qwen_dir), "lm-eval")
    assert lm.name == "lm-eval"
    assert lm.prompt(rec()) == (
        "Question: Which structure is the normal pacemaker of the heart?\nChoices:\n"
        "A. Purkinje fibres\nB. SA node\nC. AV node\nD. Bundle of His\nAnswer:"
    )
    assert lm.target(rec(explanation=None)) == " B. SA node<|im_end|>"


def test_no_explanation_and_truncation(qwen_dir):
    fmt = PromptFormat(AutoTokenizer.from_pretrained(qwen_dir), "chat")
    ex = fmt.encode_example(rec(explanation=None), 512)
    assert fmt.tokenizer.decode([t for t in ex["labels"] if t != -100]) == "B. SA node<|im_end|>"
    r = rec(explanation="word " * 400)
    n_prompt = len(fmt.encode_prompt(r))
    ex = fmt.encode_example(r, n_prompt + 10)
    assert ex["truncated"] and len(ex["input_ids"]) == n_prompt + 10
    assert ex["input_ids"][-1] == fmt.encode(fmt.end_text)[-1]  # end of turn kept
    assert fmt.encode_example(r, n_prompt) is None  # not even the letter fits


def test_unknown_protocol(qwen_tokenizer):
    with pytest.raises(ModelError, match="protocol"):
        PromptFormat(qwen_tokenizer, "nonsense")


# ----------------------------------------------------------------------------- prompt and scorer agree, every protocol and dataset

def _family(source: str) -> list[MCQRecord]:
    """Records of one dataset family, answered at every position."""
    from medqa.datasets import load_demo

    if source == "demo":
        base = load_demo()[0]
    elif source == "pubmedqa":
        base = MCQRecord(id="1000", question="Does drug X lower blood pressure in adults?", options=["yes", "no", "maybe"],
                         answer=0, context="A randomised trial of drug X.", explanation="It did.", source="pubmedqa")
    elif source == "mmlu":
        base = MCQRecord(id="m", question="Which bone is in the forearm?", options=["Femur", "Tibia", "Ulna", "Fibula"],
                         answer=2, subject="anatomy", source="mmlu")
    elif source == "medqa-usmle":
        base = MCQRecord(id="u", question="A 30-year-old presents with fever. Next step?",
                         options=["Observe", "Antibiotics", "Surgery", "Imaging", "Discharge"], answer=1, source="medqa-usmle")
    else:  # medmcqa, generic csv / jsonl
        base = rec().model_copy(update={"source": source})
    return [base.model_copy(update={"answer": a}) for a in range(len(base.options))]


@pytest.fixture(scope="module")
def no_template_tokenizer():
    from conftest import build_qwen_tokenizer

    return build_qwen_tokenizer(chat_template=None)


@pytest.mark.parametrize("source", ["medmcqa", "medqa-usmle", "pubmedqa", "mmlu", "generic", "demo"])
@pytest.mark.parametrize("protocol", ["chat-template", "chat-no-template", "lm-eval"])
def test_training_target_and_prompt_agree_with_what_the_scorer_reads(protocol, source, qwen_tokenizer,
                                                                     no_template_tokenizer):
    tok = no_template_tokenizer if protocol == "chat-no-template" else qwen_tokenizer
    fmt = PromptFormat(tok, "lm-eval" if protocol == "lm-eval" else "chat")
    assert fmt.name == {"chat-template": "chat-template", "chat-no-template": "plain", "lm-eval": "lm-eval"}[protocol]
    for r in _family(source):
        prompt, prompt_ids = fmt.prompt(r), fmt.encode_prompt(r)
        ex = fmt.encode_example(r, max_length=1024)
        assert ex["input_ids"][: len(prompt_ids)] == prompt_ids
        # training's first target token is the token the scorer reads for the gold answer
        assert ex["input_ids"][len(prompt_ids)] == fmt.choice_ids(r)[r.answer]
        assert fmt.encode(prompt + fmt.target(r)) == ex["input_ids"]
        # every option the scorer reads is in front of the model: letters listed with their options, or the
        # scored continuations are the option words themselves
        scored = [c.strip() for c in fmt.choice_strings(r)]
        if scored == list(LETTERS[: len(r.options)]):
            for letter, option in zip(LETTERS, r.options):
                assert f"{letter}. {option}" in prompt
        else:
            assert scored == r.options
