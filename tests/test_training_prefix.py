"""medqa.training.prefix: target-only logits and shared prefixes give the plain loss and gradients."""

import pytest
import torch
from training_runs import tiny_run as _tiny_run

from medqa.datasets import load_demo
from medqa.format import PromptFormat
from medqa.training import PadCollator, build_features, train


def test_padding_free_and_target_only_losses_equal_the_plain_loss(qwen_dir, qwen_tokenizer):
    from medqa.training import FlatCollator, target_only_loss

    cfg, model, tok = _tiny_run(qwen_dir, "unused", **{"model.attn_implementation": "sdpa", "lora.dropout": 0.0})
    model.train()
    feats, _ = build_features(PromptFormat(tok), load_demo()[:4], 512)
    padded, flat = PadCollator(tok.pad_token_id)(feats), FlatCollator()(feats)
    assert flat["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in feats))
    with torch.no_grad():
        ref = float(model(**padded, use_cache=False).loss)
        singles = [float(model(**PadCollator(tok.pad_token_id)([f]), use_cache=False).loss) for f in feats]
        n = [sum(1 for x in f["labels"][1:] if x != -100) for f in feats]
        assert ref == pytest.approx(sum(s * k for s, k in zip(singles, n)) / sum(n), abs=1e-5)
        # examples in one padding-free row do not see each other (the default use_cache=True would let them)
        assert float(model(**flat).loss) == pytest.approx(ref, abs=1e-5)
        assert float(target_only_loss(model, padded)) == pytest.approx(ref, abs=1e-5)
        assert float(target_only_loss(model, flat)) == pytest.approx(ref, abs=1e-5)
        # the shared system-prompt prefix run once for the batch, the rows continuing from its cache
        assert float(target_only_loss(model, padded, share_prefix=True)) == pytest.approx(ref, abs=1e-5)
    # and the gradients agree
    def grads(fn):
        model.zero_grad()
        fn().backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}

    g_ref = grads(lambda: model(**padded, use_cache=False).loss)
    for new in (lambda: target_only_loss(model, flat), lambda: target_only_loss(model, padded, share_prefix=True)):
        g_new = grads(new)
        assert all(torch.allclose(g_ref[k], g_new[k], atol=1e-6, rtol=1e-4) for k in g_ref)


def test_shared_prefix_length():
    from medqa.training import shared_prefix_length

    ids = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 9, 0], [1, 2, 3, 4, 0]])
    assert shared_prefix_length(ids, first_kept=10) == 3
    assert shared_prefix_length(ids, first_kept=2) == 2  # never past the first position whose logits count
    assert shared_prefix_length(ids[:1], first_kept=10) == 0
    same = torch.tensor([[1, 2, 3], [1, 2, 3]])
    assert shared_prefix_length(same, first_kept=10) == 2  # each row keeps a token of its own


def test_common_prefix_stops_before_targets_and_needs_sixteen_tokens():
    from medqa.training import common_prefix

    def f(ids, first_target):
        return {"input_ids": ids, "labels": [-100] * first_target + ids[first_target:]}

    base = list(range(40))
    # token 40 is the first target: its logits come from position 39, which the prefix must not include
    assert common_prefix([f(base + [1, 2], 41), f(base + [3], 40)]) == base[:39]
    assert common_prefix([f(base + [1, 2], 41), f(base + [3], 20)]) == base[:19]  # before a target is predicted
    assert common_prefix([f(base[:20] + [7] + base[21:], 41), f(base, 39)]) == base[:20]
    assert common_prefix([f(base[:10] + [7] + base[11:], 41), f(base, 39)]) == []  # too short to pay
    assert common_prefix([f(base, 39)]) == []
    assert common_prefix([f(base, 40), f(base, 40)]) == base[:39]  # each example keeps a token of its own


def test_step_prefix_gives_the_gradients_of_running_it_in_every_micro_batch(qwen_dir):
    """The system prompt run once per optimizer step: the accumulated gradients equal the plain path's."""
    from medqa.training import StepPrefix, target_only_loss

    from test_step_prefix import _setup  # the same model, prefix and micro-batches (1-row ones use it too)

    model, prefix, micro = _setup(qwen_dir)
    n = sum(int((b["labels"] != -100).sum()) for b in micro)

    def step(**kw):
        model.zero_grad(set_to_none=True)
        work, total = {}, 0.0
        for i, b in enumerate(micro):
            extra = {"last_in_step": i == len(micro) - 1, "step": 0} if "step_prefix" in kw else {}
            loss = target_only_loss(model, b, n, work=work, **kw, **extra)
            loss.backward()
            total += float(loss.detach())
        return total, {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}, work

    plain, g0, w0 = step()
    sp = StepPrefix(prefix)
    once, g1, w1 = step(step_prefix=sp)
    assert once == pytest.approx(plain, rel=1e-5)
    for k in g0:
        assert torch.allclose(g0[k], g1[k], rtol=1e-4, atol=1e-7), k
    assert w1["positions"] == w0["positions"] - (7 - 1) * len(prefix)  # the prefix ran once for 7 rows
    assert sp.kv is None and sp.leaves is None  # nothing outlives the step


def test_gradient_checkpointing_trains_with_the_default_options(qwen_dir, tmp_path):
    from medqa.training import target_only_loss

    cfg, model, tok = _tiny_run(qwen_dir, tmp_path / "gc", **{"train.gradient_checkpointing": True,
                                                               "lora.dropout": 0.0})
    summary = train(cfg, model, tok, load_demo()[:8], progress=False)
    assert summary["steps"] == 4 and summary["gradient_checkpointing"] and not summary["shared_prefix"]
    # asked to share a prefix while checkpointing (no cache in training), the loss falls back to the plain path
    model.train()
    batch = PadCollator(tok.pad_token_id)(build_features(PromptFormat(tok), load_demo()[:2], 512)[0])
    plain = target_only_loss(model, batch)
    assert float(target_only_loss(model, batch, share_prefix=True)) == pytest.approx(float(plain), abs=1e-5)
