"""GRPO rewards: plain functions TRL's GRPOTrainer calls, each logged under its own name.

TRL calls every reward function as `f(prompts=..., completions=..., completion_ids=..., **columns)`, where
`columns` are the training dataset's other columns, one value per completion (here `answer_index` and
`n_options`), and logs each function's mean and std as `rewards/<function name>/mean` and `/std`.

Every letter comes from `medqa.reasoning.parse_final_answer`, the one strict parser: the final
"Answer: X" line only. An unparseable completion (no final line, a letter outside the options, two
letters, a reasoning block never closed) is wrong - never a default letter - so the reward cannot be
won by guessing the data set's favourite letter through a lenient parser.

    correct_reward   1.0 when the parsed letter is the gold one, else 0.0
    format_reward    1.0 when the completion is well formed (a closed reasoning block, if one was opened,
                     and a parseable final answer line), else 0.0
    length_penalty(target, limit)
                     0.0 up to `target` completion tokens, falling linearly to -1.0 at `limit`
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from medqa.datasets import LETTERS
from medqa.reasoning import ParsedAnswer, parse_final_answer

RewardFunction = Callable[..., list[float]]


def completion_text(completion: Any) -> str:
    """A completion as text: TRL passes a string (text prompts) or a list of messages (chat prompts)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        return content if isinstance(content, str) else ""
    return ""


def parse_completions(completions: Sequence[Any], n_options: Sequence[int]) -> list[ParsedAnswer]:
    return [parse_final_answer(completion_text(c), int(n)) for c, n in zip(completions, n_options, strict=True)]


def correct_reward(prompts: Sequence[Any], completions: Sequence[Any], answer_index: Sequence[int],
                   n_options: Sequence[int], **kwargs: Any) -> list[float]:
    """1.0 for the gold letter read strictly from the final answer line; 0.0 for a wrong or unparseable one."""
    parsed = parse_completions(completions, n_options)
    log_extra = kwargs.get("log_extra")
    if callable(log_extra):  # TRL's completions table: what was parsed, beside the gold letter
        log_extra("parsed", [p.letter or "" for p in parsed])
        log_extra("gold", [LETTERS[int(a)] for a in answer_index])
    return [1.0 if p.index is not None and p.index == int(a) else 0.0
            for p, a in zip(parsed, answer_index, strict=True)]


def format_reward(prompts: Sequence[Any], completions: Sequence[Any], n_options: Sequence[int],
                  **kwargs: Any) -> list[float]:
    """1.0 when well formed: a closed reasoning block (when one was opened) and a parseable final answer line."""
    return [1.0 if p.well_formed else 0.0 for p in parse_completions(completions, n_options)]


def length_penalty(target: int, limit: int) -> RewardFunction:
    """A reward of 0.0 up to `target` completion tokens, falling linearly to -1.0 at `limit` tokens (and below
    -1.0 never); logged as `length_penalty`."""
    if not 0 < target < limit:
        raise ValueError(f"length penalty: the target ({target}) must be positive and below the limit ({limit})")

    def length_penalty(prompts: Sequence[Any], completions: Sequence[Any],
                       completion_ids: Sequence[Sequence[int]] | None = None, **kwargs: Any) -> list[float]:
        lengths = [len(ids) for ids in completion_ids] if completion_ids is not None else [
            len(completion_text(c).split()) for c in completions]
        over = [min(1.0, max(0, n - target) / (limit - target)) for n in lengths]
        return [-x if x else 0.0 for x in over]  # never -0.0

    return length_penalty


def reward_functions(grpo: Any) -> tuple[list[RewardFunction], list[float]]:
    """The reward functions and their weights for `grpo` settings (medqa.config.GRPOSettings): correctness and
    format always (a weight may be 0: still logged), the length penalty when its weight is above 0."""
    funcs: list[RewardFunction] = [correct_reward, format_reward]
    weights = [grpo.reward_correct, grpo.reward_format]
    if grpo.length_penalty > 0:
        target = grpo.length_target or grpo.max_completion_length // 2
        if target >= grpo.max_completion_length:
            from medqa.errors import ConfigError

            raise ConfigError(f"grpo.length_target ({target}) must be below grpo.max_completion_length "
                              f"({grpo.max_completion_length})")
        funcs.append(length_penalty(target, grpo.max_completion_length))
        weights.append(grpo.length_penalty)
    return funcs, weights
