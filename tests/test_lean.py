"""medqa.lean: the same loss and gradients as the unpatched model, fewer saved activations, and the
model restored afterwards."""

import os

import pytest
import torch

from medqa.config import build_config
from medqa.datasets import load_demo
from medqa.format import PromptFormat
from medqa.lean import DropoutLinear, SwiGLU, lean_training
from medqa.modeling import apply_lora, load_model
from medqa.training import PadCollator, build_features, target_only_loss


def _model(qwen_dir, **over):
    cfg = build_config(None, {"model.name": str(qwen_dir), "lora.dropout": 0.1, **over})
    model, tok = load_model(cfg.model)
    model = apply_lora(model, cfg.lora)
    model.train()
    feats, _ = build_features(PromptFormat(tok), load_demo()[:4], 512)
    return model, PadCollator(tok.pad_token_id)(feats)


def _loss_and_grads(model, batch, seed=3):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = target_only_loss(model, batch, share_prefix=True)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _saved_bytes(model, batch) -> int:
    """Bytes autograd keeps for the decoder layers' backward pass (each storage once, weights excluded;
    the decoder body, not the vocabulary head, which lean training does not touch)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.get_base_model().model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return sum(seen.values())


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], "all-linear"])
def test_lean_training_gives_the_same_loss_and_gradients(qwen_dir, targets):
    model, batch = _model(qwen_dir, **{"lora.target_modules": targets})
    loss, grads = _loss_and_grads(model, batch)
    with lean_training(model) as patched:
        assert patched["swiglu_mlp"] == 2  # both layers of the tiny Qwen3
        assert patched["lora_dropout"] == (4 if targets != "all-linear" else 14)
        lean_loss, lean_grads = _loss_and_grads(model, batch)
    assert torch.equal(loss, lean_loss)  # the same dropout masks: the same random draws
    for name, g in grads.items():
        assert torch.allclose(g, lean_grads[name], rtol=1e-5, atol=1e-7), name
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_lean_training_saves_less_and_restores_the_model(qwen_dir):
    model, batch = _model(qwen_dir)
    forwards_before = {id(m) for m in model.modules() if "forward" in vars(m)}
    dropouts = [type(m.lora_dropout["default"]) for m in model.modules() if hasattr(m, "lora_dropout")]
    os.environ.pop("TRANSFORMERS_SDPA_FORCE_GQA", None)
    plain = _saved_bytes(model, batch)
    with lean_training(model) as patched:
        assert patched["gqa"] == 1 and os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] == "1"
        lean = _saved_bytes(model, batch)
        model.eval()  # evaluation inside the block: no dropout, the plain projection
        with torch.no_grad():
            inside = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    # tiny model (intermediate = 2 x hidden): 0.79; SmolLM2-135M (2.67 x): 0.65 (benchmarks/train_speed.py)
    assert lean < 0.85 * plain, (lean, plain)
    assert "TRANSFORMERS_SDPA_FORCE_GQA" not in os.environ
    assert {id(m) for m in model.modules() if "forward" in vars(m)} == forwards_before
    assert [type(m.lora_dropout["default"]) for m in model.modules() if hasattr(m, "lora_dropout")] == dropouts
    with torch.no_grad():
        outside = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert torch.allclose(inside, outside, atol=1e-6)


def test_lean_training_leaves_dora_alone(qwen_dir):
    model, batch = _model(qwen_dir, **{"lora.use_dora": True})
    with lean_training(model) as patched:
        assert patched["lora_dropout"] == 0  # DoRA applies the dropout itself
        assert patched["swiglu_mlp"] == 2


def test_the_autograd_functions_match_autograd():
    torch.manual_seed(0)
    gate, up = torch.randn(3, 5, 7, requires_grad=True), torch.randn(3, 5, 7, requires_grad=True)
    out = SwiGLU.apply(gate, up)
    ref = torch.nn.functional.silu(gate) * up
    assert torch.equal(out, ref)
    g = torch.randn_like(out)
    assert all(torch.equal(a, b) for a, b in zip(torch.autograd.grad(out, (gate, up), g),
                                                  torch.autograd.grad(ref, (gate, up), g)))
    x, w = torch.randn(4, 6, 16, requires_grad=True), torch.randn(8, 16, requires_grad=True)
    torch.manual_seed(1)
    out = DropoutLinear.apply(x, w, 0.25)
    torch.manual_seed(1)
    ref = torch.nn.functional.linear(torch.nn.functional.dropout(x, 0.25, True), w)
    assert torch.equal(out, ref)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (x, w), g), torch.autograd.grad(ref, (x, w), g)):
        assert torch.allclose(a, b, atol=1e-6)
    kept = (out.detach() != 0).float().mean()
    assert 0.5 < kept <= 1.0


def test_linear_cross_entropy_matches_the_head_and_cross_entropy():
    from medqa.lean import LinearCrossEntropy

    torch.manual_seed(0)
    vocab = 2**20  # 16 rows per chunk: the 40 rows below run in three chunks
    h = torch.randn(40, 8, requires_grad=True)
    w = torch.randn(vocab, 8) * 0.3
    t = torch.randint(0, vocab, (40,))
    t[::7] = -100

    def torch_loss(h, w):
        return torch.nn.functional.cross_entropy(torch.nn.functional.linear(h, w), t, ignore_index=-100,
                                                 reduction="sum")

    loss, ref = LinearCrossEntropy.apply(h, w, t), torch_loss(h, w)
    h64 = h.detach().double().requires_grad_()
    exact = torch_loss(h64, w.double())
    (g,) = torch.autograd.grad(2.5 * loss, h)
    (g_ref,) = torch.autograd.grad(2.5 * ref, h)
    (g_exact,) = torch.autograd.grad(2.5 * exact, h64)
    # as close to the float64 result as PyTorch's own fp32 path (sums over a million logits)
    assert abs(loss.item() - exact.item()) <= 2 * abs(ref.item() - exact.item()) + 1e-4
    assert (g.double() - g_exact).abs().max() <= 2 * (g_ref.double() - g_exact).abs().max() + 1e-6
    assert torch.all(g[::7] == 0)  # ignored rows get no gradient


def test_fused_head_only_for_a_plain_frozen_head_and_same_loss(qwen_dir):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from medqa.lean import plain_frozen_head

    model, batch = _model(qwen_dir, **{"lora.dropout": 0.0})
    assert plain_frozen_head(model) is model.get_base_model().lm_head
    losses, grads = [], []
    for fused in (False, True):
        model.zero_grad(set_to_none=True)
        loss = target_only_loss(model, batch, 40, share_prefix=True, fused_head=fused)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], rtol=1e-3, atol=1e-6), name
    gemma = Gemma2ForCausalLM(Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=8))
    gemma.requires_grad_(False)
    assert plain_frozen_head(gemma) is None  # soft-capped logits: the head alone is not the logits
    model.get_base_model().lm_head.weight.requires_grad_(True)
    try:
        assert plain_frozen_head(model) is None  # a trained head needs its own gradient
    finally:
        model.get_base_model().lm_head.weight.requires_grad_(False)


def test_dropout_linear_under_autocast():
    """Mixed precision (the GPU path; CPU autocast here): bf16 output, fp32 adapter gradients."""
    torch.manual_seed(0)
    x, w = torch.randn(2, 5, 16, requires_grad=True), torch.randn(8, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        out = DropoutLinear.apply(x, w, 0.1)
        torch.manual_seed(1)
        ref = torch.nn.functional.linear(torch.nn.functional.dropout(x, 0.1, True), w)
    assert out.dtype == ref.dtype == torch.bfloat16 and torch.equal(out, ref)
    g = torch.randn_like(out)
    got, want = torch.autograd.grad(out, (x, w), g), torch.autograd.grad(ref, (x, w), g)
    for a, b in zip(got, want):
        assert a.dtype == torch.float32 and torch.allclose(a, b.float(), rtol=2e-2, atol=2e-2)
