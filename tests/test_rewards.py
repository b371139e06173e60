"""medqa.rewards: GRPO rewards from the strict final-line parser, each a plain function TRL can call."""

import pytest

from medqa.config import build_config
from medqa.errors import ConfigError
from medqa.reasoning import parse_final_answer
from medqa.rewards import correct_reward, format_reward, length_penalty, reward_functions

# (completion, gold index) -> (correct, well formed); gold is B (1) unless said
CASES = [
    ("<think>\nC5-C6, posterior cord.\n</think>\n\nAnswer: B", 1, 1.0, 1.0),
    ("The axillary nerve.\nAnswer: B", 1, 1.0, 1.0),
    ("The radial nerve.\nAnswer: A", 1, 0.0, 1.0),  # well formed, wrong
    ("<think>\nthe axillary nerve, so\nAnswer: B", 1, 0.0, 0.0),  # reasoning cut off: no letter, even a right one
    ("Answer: B\nbecause the axillary nerve", 1, 0.0, 0.0),  # not on the final line
    ("B", 1, 0.0, 0.0),  # a bare letter is no answer line
    ("...\nAnswer: B or C", 1, 0.0, 0.0),
    ("...\nAnswer: E", 1, 0.0, 0.0),  # no option E among four
    ("", 0, 0.0, 0.0),  # unparseable is wrong, whatever the gold letter (never a default A)
    ("no answer at all", 0, 0.0, 0.0),
]


def test_rewards_come_from_the_strict_parser():
    completions = [c for c, *_ in CASES]
    gold = [g for _, g, *_ in CASES]
    n = [4] * len(CASES)
    prompts = ["p"] * len(CASES)
    correct = correct_reward(prompts=prompts, completions=completions, answer_index=gold, n_options=n)
    fmt = format_reward(prompts=prompts, completions=completions, answer_index=gold, n_options=n)
    assert correct == [c for *_, c, _ in CASES]
    assert fmt == [f for *_, f in CASES]
    for text, g, c, f in CASES:  # the same verdicts as the parser gives
        p = parse_final_answer(text, 4)
        assert c == float(p.index == g) and f == float(p.well_formed)


def test_rewards_accept_chat_completions_and_log_what_was_parsed():
    logged = {}
    completions = [[{"role": "assistant", "content": "x\nAnswer: C"}], [{"role": "assistant", "content": "x"}]]
    r = correct_reward(prompts=["p", "p"], completions=completions, answer_index=[2, 2], n_options=[4, 4],
                       log_extra=lambda col, vals: logged.setdefault(col, vals), trainer_state=None)
    assert r == [1.0, 0.0]
    assert logged == {"parsed": ["C", ""], "gold": ["C", "C"]}


def test_the_option_count_bounds_the_letter():
    text = "reasoning\nAnswer: E"
    assert correct_reward(prompts=["p"], completions=[text], answer_index=[4], n_options=[5]) == [1.0]
    assert correct_reward(prompts=["p"], completions=[text], answer_index=[4], n_options=[4]) == [0.0]


def test_length_penalty_is_zero_up_to_the_target_then_falls_to_minus_one():
    f = length_penalty(target=10, limit=20)
    assert f.__name__ == "length_penalty"  # TRL logs it as rewards/length_penalty/mean
    ids = [[0] * n for n in (0, 10, 15, 20, 40)]
    assert f(prompts=["p"] * 5, completions=[""] * 5, completion_ids=ids) == [0.0, 0.0, -0.5, -1.0, -1.0]
    with pytest.raises(ValueError):
        length_penalty(target=20, limit=20)


def test_reward_functions_and_weights_follow_the_config():
    funcs, weights = reward_functions(build_config(None, {}).grpo)
    assert [f.__name__ for f in funcs] == ["correct_reward", "format_reward"] and weights == [1.0, 0.2]
    g = build_config(None, {"grpo.length_penalty": 0.5, "grpo.max_completion_length": 64,
                            "grpo.reward_format": 0.0}).grpo
    funcs, weights = reward_functions(g)
    assert [f.__name__ for f in funcs] == ["correct_reward", "format_reward", "length_penalty"]
    assert weights == [1.0, 0.0, 0.5]
    assert funcs[2](prompts=["p"], completions=[""], completion_ids=[[0] * 48]) == [-0.5]  # target 32 by default
    with pytest.raises(ConfigError, match="length_target"):
        reward_functions(build_config(None, {"grpo.length_penalty": 0.5, "grpo.length_target": 256}).grpo)
