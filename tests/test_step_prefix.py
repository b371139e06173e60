"""The system prompt run once per optimizer step (medqa.training.StepPrefix) under what the Trainer does
around `compute_loss`: fp16 loss scaling (GradScaler), its own division by the accumulation steps,
overflows in an earlier micro-batch, and LoRA dropout."""

from __future__ import annotations

import math

import pytest
import torch

from medqa.config import build_config
from medqa.datasets import load_demo
from medqa.format import PromptFormat
from medqa.modeling import apply_lora, load_model
from medqa.training import PadCollator, StepPrefix, build_features, common_prefix, target_only_loss

SCALE = 2.0**16  # GradScaler's initial scale


def _setup(qwen_dir, dropout: float = 0.0):
    cfg = build_config(None, {"model.name": str(qwen_dir), "lora.dropout": dropout})
    model, tok = load_model(cfg.model)
    model = apply_lora(model, cfg.lora)
    model.train()
    feats, _ = build_features(PromptFormat(tok), load_demo()[:7], 512)
    prefix = common_prefix(feats)
    assert len(prefix) >= 16
    collate = PadCollator(tok.pad_token_id)
    micro = [collate(feats[:3]), collate(feats[3:4]), collate(feats[4:])]  # accumulation 3, a 1-row micro-batch
    return model, prefix, micro


def _step(model, micro, prefix: list[int] | None = None, scaler=None, divide: bool = False, after_backward=None):
    """One optimizer step's backward passes as Trainer.training_step runs them: `compute_loss` (here
    target_only_loss), `/ accumulation` when the loss is not normalised by the step's target count
    (`divide`), then `scaler.scale(loss).backward()` (Accelerator.backward under fp16). Returns the summed
    loss values, the LoRA gradients (unscaled by `scaler.unscale_`, as before clipping and the optimizer
    step), the optimizer and the StepPrefix."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1.0)
    model.zero_grad(set_to_none=True)
    n = None if divide else sum(int((b["labels"] != -100).sum()) for b in micro)
    sp = StepPrefix(prefix) if prefix is not None else None
    total = 0.0
    for i, b in enumerate(micro):
        kw = {"step_prefix": sp, "last_in_step": i == len(micro) - 1, "step": 0} if sp is not None else {}
        loss = target_only_loss(model, b, n, **kw)
        total += float(loss.detach())
        if divide:
            loss = loss / len(micro)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if after_backward is not None:
            after_backward(i, sp)
    if scaler is not None:
        scaler.unscale_(opt)
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    return total, grads, opt, sp


def _flat(g: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in g.values()])


def _drop_earlier_prefix_gradients(i, sp):
    if i == 1:  # after the second of three micro-batches' backward: the earlier prefix gradients, forgotten
        for pair in sp.leaves:
            for leaf in pair:
                leaf.grad = None


@pytest.mark.parametrize("case", ["grad_scaler", "trainer_divides_by_accumulation", "both"])
def test_step_prefix_gradients_under_loss_scaling_equal_the_plain_path(qwen_dir, case):
    """fp16 training scales the loss (GradScaler, 2**16 at the start) and the Trainer divides it by the
    accumulation steps when it is not normalised by the step's target count. The earlier micro-batches'
    prefix gradients already carry that factor; the step's last backward must not apply it a second
    time. The unscaled LoRA gradients equal running the prefix in every micro-batch."""
    model, prefix, micro = _setup(qwen_dir)
    divide = case != "grad_scaler"

    def scaler():
        return torch.amp.GradScaler("cpu", init_scale=SCALE) if case != "trainer_divides_by_accumulation" else None

    plain, g0, _, _ = _step(model, micro, scaler=scaler(), divide=divide)
    once, g1, _, sp = _step(model, micro, prefix, scaler=scaler(), divide=divide)
    # what the earlier micro-batches' prefix gradients contribute, to say how far off they come out
    _, g_drop, _, _ = _step(model, micro, prefix, scaler=scaler(), divide=divide,
                            after_backward=_drop_earlier_prefix_gradients)
    f0, f1, fd = _flat(g0), _flat(g1), _flat(g_drop)
    earlier = f0 - fd
    assert earlier.norm() > 1e-3 * f0.norm()  # the test has something to see
    factor = 1 + float((f1 - f0) @ earlier / (earlier @ earlier))
    rel = float((f1 - f0).norm() / f0.norm())
    worst = max(float((g1[k] - g0[k]).norm() / g0[k].norm().clamp(min=1e-30)) for k in g0)
    print(f"\n[{case}] step-prefix vs plain LoRA gradients: relative error {rel:.3g} (worst tensor {worst:.3g}); "
          f"earlier micro-batches' prefix gradients come out {factor:.6g}x their true value")
    assert once == pytest.approx(plain, rel=1e-5)
    assert factor == pytest.approx(1.0, abs=1e-3)
    assert rel < 1e-5
    for k in g0:
        assert torch.allclose(g0[k], g1[k], rtol=1e-4, atol=1e-7), k
    assert sp.kv is None and sp.leaves is None


def test_step_prefix_overflow_in_an_earlier_micro_batch_makes_the_scaler_skip_the_step(qwen_dir):
    """An fp16 overflow in an earlier micro-batch leaves inf in the prefix gradients accumulated so far.
    The plain path would carry it into the LoRA gradients, and GradScaler would skip the step and halve
    its scale: so must the step-prefix path (not zero it, not report a NaN loss)."""
    model, prefix, micro = _setup(qwen_dir)

    def overflow(i, sp):
        if i == 0:
            # a single value of layer 0's value gradient (keys of layer 0 need none: nothing trainable
            # before them)
            sp.leaves[0][1].grad[0, 0, 0, 0] = float("inf")

    before = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    total, grads, opt, _ = _step(model, micro, prefix, scaler=scaler, after_backward=overflow)
    assert math.isfinite(total)  # the reported loss is the plain path's (the overflow is in the backward)
    assert not all(bool(torch.isfinite(g).all()) for g in grads.values())
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == SCALE / 2
    for k, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p.detach(), before[k]), k  # the step was skipped


def _synthetic(dropout: float):
    """A tiny Qwen3 model with a 256-token vocabulary (the real one's 151k-wide head dominates the time,
    and this test runs many steps), LoRA with non-zero B (at PEFT's initialisation B is zero, so the
    adapter, and its dropout, would not change the prefix's keys and values at all), and micro-batches of
    random tokens after a shared 24-token prefix, with targets after position 32."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen3Config

    cfg = Qwen3Config(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_config(cfg),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=["q_proj", "v_proj"],
                                      task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, 256, (24,), generator=g)
    micro = []
    for rows, width in ((3, 48), (1, 40), (2, 44)):
        ids = torch.randint(0, 256, (rows, width), generator=g)
        ids[:, :24] = prefix
        labels = ids.clone()
        labels[:, :32] = -100
        micro.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    model.train()
    return model, prefix.tolist(), micro


def test_step_prefix_with_lora_dropout_shares_one_prefix_mask_and_agrees_in_expectation():
    """With LoRA dropout in training mode the prefix runs once per optimizer step, so one dropout mask
    covers the prefix positions for every row and micro-batch of the step (the plain path draws one per
    row and micro-batch). Loss and gradients are then not the plain path's draw for draw, but every
    row's prefix mask has the same distribution, so their expectations are equal."""
    from collections import Counter

    model, prefix, micro = _synthetic(dropout=0.1)
    p = len(prefix)

    def dropout_calls(pre):
        calls: list[tuple[int, ...]] = []
        hooks = [m.register_forward_hook(lambda _m, args, _out: calls.append(tuple(args[0].shape[:2])))
                 for name, m in model.named_modules() if name.endswith("lora_dropout.default")]
        try:
            _step(model, micro, pre)
        finally:
            for h in hooks:
                h.remove()
        return Counter(calls), len(hooks)

    calls, modules = dropout_calls(prefix)
    assert modules == 4  # q and v of two layers
    # per dropout module and step: the prefix once (1 row, p positions: one mask), then each micro-batch's
    # own tokens; the plain path draws masks for every row's prefix in every micro-batch
    shapes = [tuple(b["input_ids"].shape) for b in micro]
    assert calls == Counter({(1, p): modules} | {(r, w - p): modules for r, w in shapes})
    assert dropout_calls(None)[0] == Counter({s: modules for s in shapes})

    # draw for draw they differ: one prefix mask for the whole step is a different sample
    torch.manual_seed(0)
    loss0, g0, _, _ = _step(model, micro)
    torch.manual_seed(0)
    loss1, g1, _, _ = _step(model, micro, prefix)
    assert loss0 != pytest.approx(loss1, rel=1e-5)
    assert not any(torch.allclose(g0[k], g1[k], rtol=1e-4, atol=1e-7) for k in g0 if "lora_B" in k)

    # in expectation they agree: means over many steps of the loss and of the gradient along a fixed
    # direction, compared through their standard errors
    model.eval()
    _, g_eval, _, _ = _step(model, micro)
    direction = _flat(g_eval) / _flat(g_eval).norm()
    model.train()
    runs = 64
    stats = {}
    for i, (name, pre, after) in enumerate((("plain", None, None), ("step prefix", prefix, None),
                                            ("no earlier prefix gradients", prefix, _drop_earlier_prefix_gradients))):
        losses, along = [], []
        for seed in range(runs):
            torch.manual_seed(1000 * i + seed)
            total, g, _, _ = _step(model, micro, pre, after_backward=after)
            losses.append(total)
            along.append(float(_flat(g) @ direction))
        stats[name] = torch.tensor(losses, dtype=torch.float64), torch.tensor(along, dtype=torch.float64)

    def z(name: str, which: int) -> float:
        a, b = stats[name][which], stats["plain"][which]
        return float((a.mean() - b.mean()) / (a.var() / len(a) + b.var() / len(b)).sqrt())

    z_loss, z_grad, z_wrong = z("step prefix", 0), z("step prefix", 1), z("no earlier prefix gradients", 1)
    sd = {name: float(v[1].std()) for name, v in stats.items()}
    print(f"\nlora dropout 0.1, {runs} steps each, step prefix vs plain: z of the mean loss {z_loss:.2f}, of the "
          f"mean gradient along the eval-mode gradient {z_grad:.2f} (earlier prefix gradients left out: "
          f"{z_wrong:.1f}); std of that gradient component over steps: plain {sd['plain']:.4g}, "
          f"step prefix {sd['step prefix']:.4g}")
    assert abs(z_loss) < 4 and abs(z_grad) < 4
    assert abs(z_wrong) > 8  # the comparison has the power to see a biased prefix gradient


def test_step_prefix_with_lora_dropout_in_eval_mode_gives_the_plain_gradients():
    """LoRA dropout only acts in training mode: without it the step-prefix gradients are the plain path's
    (here with the adapter's B non-zero, so the prefix's keys and values depend on it)."""
    model, prefix, micro = _synthetic(dropout=0.1)
    model.eval()
    plain, g0, _, _ = _step(model, micro, scaler=torch.amp.GradScaler("cpu", init_scale=SCALE))
    once, g1, _, _ = _step(model, micro, prefix, scaler=torch.amp.GradScaler("cpu", init_scale=SCALE))
    assert once == pytest.approx(plain, rel=1e-5)
    for k in g0:
        assert torch.allclose(g0[k], g1[k], rtol=1e-4, atol=1e-6), k
