"""medqa.training.collate: features, collators, batching modes, the seeded length-grouped order."""

import json

import pytest
import torch
from training_runs import tiny_run as _tiny_run

from medqa.datasets import load_demo
from medqa.errors import DataError
from medqa.format import PromptFormat
from medqa.training import PadCollator, build_features, train


def test_pad_collator_masks_padding():
    batch = PadCollator(pad_id=0)([
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
        {"input_ids": [5], "labels": [5]},
    ])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_build_features_counts_what_it_cuts(qwen_tokenizer):
    fmt = PromptFormat(qwen_tokenizer)
    feats, stats = build_features(fmt, load_demo()[:5], max_length=130)
    assert stats["examples"] + stats["dropped_too_long"] == 5
    assert stats["truncated"] >= 1
    assert all(len(f["input_ids"]) <= 130 for f in feats)
    with pytest.raises(DataError, match="max_length"):
        build_features(fmt, load_demo()[:2], max_length=16)


def test_batching_auto_picks_padding_free_only_for_flash_attention():
    from types import SimpleNamespace

    from medqa.training import resolve_batching

    def m(impl):
        return SimpleNamespace(config=SimpleNamespace(_attn_implementation=impl))

    assert resolve_batching("auto", m("flash_attention_2")) == "padding_free"
    assert resolve_batching("auto", m("sdpa")) == "balanced"
    assert resolve_batching("auto", m("eager")) == "balanced"
    assert resolve_batching("padded", m("flash_attention_2")) == "padded"


def test_length_grouped_order_is_seeded_per_epoch_not_global():
    from medqa.training import seeded_length_sampler as _seeded_length_sampler

    lengths = [(i * 37) % 101 + 10 for i in range(1024)]
    a, b = _seeded_length_sampler(8, lengths, seed=3), _seeded_length_sampler(8, lengths, seed=3)
    first = list(a)
    torch.manual_seed(999)  # the global RNG does not matter
    assert list(b) == first and sorted(first) == list(range(1024))
    a.set_epoch(1)
    assert list(a) != first
    batches = [first[i:i + 8] for i in range(0, 1024, 8)]
    spread = [max(lengths[j] for j in bt) - min(lengths[j] for j in bt) for bt in batches]
    assert sum(spread) / len(spread) < 10  # similar lengths batched together (random order: ~75)


def test_balanced_batching_keeps_examples_per_step_and_lowers_the_largest_micro_batch(qwen_dir, tmp_path,
                                                                                     monkeypatch):
    import medqa.training.collate as mt

    shapes: list[tuple[int, int]] = []
    call = mt.PadCollator.__call__
    monkeypatch.setattr(mt.PadCollator, "__call__", lambda self, b: _record(shapes, call(self, b)))
    runs = {}
    for batching in ("balanced", "length_grouped"):
        shapes.clear()
        cfg, model, tok = _tiny_run(qwen_dir, tmp_path / batching, **{
            "train.batching": batching, "train.max_steps": -1, "train.epochs": 1, "train.batch_size": 2,
            "train.grad_accum": 4, "model.attn_implementation": "sdpa", "train.calibration_size": 0})
        records = [r.model_copy(update={"question": " ".join([r.question] * (1 + 3 * (i % 4 == 0)))})
                   for i, r in enumerate(load_demo()[:32])]  # a quarter of the questions 4 times as long
        summary = train(cfg, model, tok, records, progress=False)
        assert summary["batching"] == batching and summary["steps"] == 4
        runs[batching] = list(shapes)
    balanced = runs["balanced"]
    assert len(balanced) == 16
    assert [sum(r for r, _ in balanced[i:i + 4]) for i in range(0, 16, 4)] == [8, 8, 8, 8]
    assert len({r for r, _ in balanced}) > 1  # rows vary with length
    assert max(r * w for r, w in balanced) <= max(r * w for r, w in runs["length_grouped"])


def _record(shapes, batch):
    shapes.append(tuple(batch["input_ids"].shape))
    return batch


_SHARES: dict[str, float] = {}  # non-padding share per batching mode, compared across the parametrised runs


@pytest.mark.parametrize("batching", ["padded", "length_grouped", "padding_free"])
def test_batching_modes_train_and_report_their_padding(qwen_dir, tmp_path, batching):
    cfg, model, tok = _tiny_run(qwen_dir, tmp_path / batching, **{
        "train.batching": batching, "train.max_steps": -1, "train.epochs": 1, "train.batch_size": 4,
        "model.attn_implementation": "sdpa"})
    records = load_demo()[:48]
    summary = train(cfg, model, tok, records, progress=False)
    assert summary["batching"] == batching
    assert summary["steps"] == 12 and summary["examples_per_second"] > 0
    share = summary["non_padding_share"]
    logs = [json.loads(x) for x in (tmp_path / batching / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < e["non_padding_share"] <= 1 for e in logs if "loss" in e)
    assert any("tokens_per_second" in e for e in logs)
    if batching == "padding_free":
        assert share == 1.0
    else:
        _SHARES[batching] = share
        assert 0.5 < share < 1.0
    if batching == "length_grouped" and "padded" in _SHARES:
        assert share > _SHARES["padded"]  # grouping by length wastes fewer slots than random order
