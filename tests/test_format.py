import pytest
from transformers import AutoTokenizer

from medqa.data import MCQRecord
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
