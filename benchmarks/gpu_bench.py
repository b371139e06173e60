"""GPU benchmark without internet: a Qwen3-1.7B-shaped model with random weights (real architecture,
bf16), LoRA training at the reference recipe's shape, and the evaluation scorer against the reference
generate-8 approach. Verified on CPU with `--shape tiny`; run on CUDA or ROCm through benchmarks/gpu.sh.

Prints: a gradient check of the default training path (below), matmul peak measured in this run,
training examples/s, tokens/s, model FLOP utilisation (4·N·T FLOPs for LoRA: no weight gradients for
frozen weights), peak memory; evaluation q/s of the one-pass letter scorer and of greedy generation of
8 tokens at batch 1, and their ratio. Exits 1 if the gradient check fails.

Gradient check: ONE optimizer step (accumulation >= 2) of the default training path (lean autograd,
the system prompt run once per step, the fused head) against the plain path (none of them), in fp16
with a GradScaler as the Trainer runs it (fp16 base weights, fp32 adapter, autocast), in bf16 (autocast),
and in fp32 with a GradScaler at 2**16 (exact: checks the scaling logic alone). The LoRA gradients are
compared with an fp32 plain-path reference of the same step; the default path passes if its error is
at most twice the plain low-precision path's own error (at least a floor of a few ulps of the dtype:
the paths sum in different orders). LoRA dropout is 0 here: with dropout the step prefix shares one
mask over the prefix per step, equal to the plain path in expectation only (see medqa.training.StepPrefix).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time

import torch

SHAPES = {
    # Qwen/Qwen3-1.7B config.json
    "qwen3-1.7b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                       max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6),
    "tiny": dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                 max_position_embeddings=1024),
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype: torch.dtype, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.startswith("cuda") else 3
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


# relative-error floors (max over LoRA tensors of |default - fp32| / |fp32|): ~4 ulps of the dtype's
# 8 (bf16) or 11 (fp16) mantissa bits; fp32 with a power-of-two loss scale is exact up to summation order
FLOORS = {torch.float32: 1e-5, torch.float16: 2.0**-9, torch.bfloat16: 2.0**-6}


def gradient_check(shape: dict, device: str, batch: int, accum: int, seq: int, layers: int) -> tuple[bool, dict]:
    """One optimizer step of the default training path vs the plain path, in fp16 (GradScaler), bf16 and
    fp32 with a GradScaler, against an fp32 reference; see the module docstring."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen3Config

    from medqa.lean import lean_training
    from medqa.training import StepPrefix, target_only_loss

    accum = max(2, accum)
    cfg = Qwen3Config(**(shape | {"num_hidden_layers": min(layers, shape["num_hidden_layers"])}))
    torch.manual_seed(0)
    ref_model = get_peft_model(AutoModelForCausalLM.from_config(cfg, dtype=torch.float32),
                               LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                          task_type="CAUSAL_LM")).to(device)
    with torch.no_grad():  # PEFT starts B at zero: A would get no gradient and the prefix no adapter
        for n, p in ref_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.02)
    ref_model.train()
    g = torch.Generator().manual_seed(1)
    system = torch.randint(0, cfg.vocab_size, (40,), generator=g)
    micro = []
    for _ in range(accum):
        ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)
        ids[:, :40] = system
        labels = ids.clone()
        labels[:, : seq * 2 // 3] = -100
        micro.append({"input_ids": ids.to(device), "labels": labels.to(device)})
    n_items = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)  # as the Trainer: the step's targets

    def one_step(model, dtype: torch.dtype, default: bool, scale: float | None) -> tuple[dict, int]:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.0)
        scaler = torch.amp.GradScaler(device, init_scale=scale) if scale else None
        skipped = 0
        while True:
            model.zero_grad(set_to_none=True)
            prefix = StepPrefix(system.tolist()) if default else None
            with lean_training(model) if default else contextlib.nullcontext():
                for i, b in enumerate(micro):
                    kw = {"step_prefix": prefix, "last_in_step": i == accum - 1, "step": 0, "fused_head": True}
                    with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
                        loss = target_only_loss(model, b, n_items, **(kw if default else {}))
                    (scaler.scale(loss) if scaler is not None else loss).backward()
            if scaler is None:
                break
            scaler.unscale_(opt)
            if all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None) or skipped >= 8:
                break
            skipped += 1  # an overflow: the Trainer skips the step and GradScaler halves its scale
            scaler.update()
        return {k: p.grad.detach().float().clone() for k, p in model.named_parameters() if p.requires_grad}, skipped

    def error(grads: dict, ref: dict) -> float:
        worst = 0.0
        for k, r in ref.items():
            e = float((grads[k] - r).norm() / r.norm().clamp(min=1e-30))
            worst = max(worst, e if e == e else float("inf"))
        return worst

    ref, _ = one_step(ref_model, torch.float32, False, None)
    ok, report = True, {}
    for dtype, scale in ((torch.float16, 2.0**16), (torch.bfloat16, None), (torch.float32, 2.0**16)):
        name = str(dtype).removeprefix("torch.") + (f" + GradScaler({scale:g})" if scale else " autocast")
        if dtype == torch.bfloat16 and device == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
            print(f"gradient check {name}: skipped (no bf16 on this GPU: training runs in fp16 there)")
            continue
        model = ref_model
        if dtype != torch.float32:  # the base weights in the low precision, the adapter in fp32 (as PEFT keeps it)
            model = copy.deepcopy(ref_model)
            for p in model.parameters():
                if not p.requires_grad:
                    p.data = p.data.to(dtype)
        plain, skip_plain = one_step(model, dtype, False, scale)
        default, skip_default = one_step(model, dtype, True, scale)
        e_plain, e_default = error(plain, ref), error(default, ref)
        tol = max(2 * e_plain, FLOORS[dtype])
        passed = e_default <= tol and skip_default <= skip_plain
        ok &= passed
        print(f"gradient check {name}, {accum} micro-batches x {batch} x {seq}, {cfg.num_hidden_layers} layers: "
              f"max relative error vs fp32: default path {e_default:.3g}, plain path {e_plain:.3g} "
              f"(tolerance {tol:.3g}); overflow-skipped steps {skip_default} vs {skip_plain}: "
              f"{'PASS' if passed else 'FAIL'}")
        report[name] = {"default_error": e_default, "plain_error": e_plain, "tolerance": tol,
                        "skipped_default": skip_default, "skipped_plain": skip_plain, "pass": passed}
        del model
    del ref_model
    if device == "cuda":
        torch.cuda.empty_cache()
    return ok, report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=list(SHAPES), default="qwen3-1.7b")
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps timed (after 2 warm-up steps)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--accum", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--eval-questions", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=150)
    ap.add_argument("--check-layers", type=int, default=4,
                    help="decoder layers of the gradient check's model (the shape's widths and vocabulary)")
    ap.add_argument("--check-accum", type=int, default=3, help="micro-batches of the gradient check's step")
    args = ap.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen3Config

    device = "cuda" if torch.cuda.is_available() else "cpu"
    backend = "rocm" if getattr(torch.version, "hip", None) else ("cuda" if device == "cuda" else "cpu")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    print(f"device {name} ({backend}), dtype {dtype}, torch {torch.__version__}, shape {args.shape}")
    check_ok, check = gradient_check(SHAPES[args.shape], device, args.batch, args.check_accum, args.seq,
                                     args.check_layers)
    peak = matmul_peak(device, dtype, 8192 if device == "cuda" else 1024)
    print(f"measured matmul peak: {peak / 1e9:.0f} GFLOP/s")

    torch.manual_seed(0)
    cfg = Qwen3Config(**SHAPES[args.shape])
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                             target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    from medqa.lean import lean_training
    from medqa.training import StepPrefix, target_only_loss

    g = torch.Generator().manual_seed(0)
    system = torch.randint(0, cfg.vocab_size, (40,), generator=g)  # the shared system prompt + template

    def batch():
        ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=g)
        ids[:, :40] = system
        labels = ids.clone()
        labels[:, : args.seq * 2 // 3] = -100  # prompt tokens carry no loss (answer + explanation do)
        return ids.to(device), labels.to(device)

    prefix = StepPrefix(system.tolist())

    def step(path: str, n: int) -> None:
        for i in range(args.accum):
            ids, labels = batch()
            with torch.autocast(device_type=device, dtype=dtype, enabled=device == "cuda"):
                if path == "reference":  # full-sequence labels, all logits, gradient checkpointing
                    loss = model(input_ids=ids, labels=ids, use_cache=False).loss / args.accum
                else:  # MedQA: target-only logits through the fused head, the prefix once per optimizer step
                    loss = target_only_loss(model, {"input_ids": ids, "labels": labels}, step_prefix=prefix,
                                            last_in_step=i == args.accum - 1, step=n, fused_head=True,
                                            scale=1 / args.accum)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    results = {}
    for path in ("reference", "medqa"):
        if path == "reference":
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        else:
            model.gradient_checkpointing_disable()
        model.train()
        with lean_training(model) if path == "medqa" else contextlib.nullcontext():  # MedQA's lean autograd
            for n in range(2):
                step(path, n)
            sync(device)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            for n in range(args.steps):
                step(path, 2 + n)
            sync(device)
            secs = time.perf_counter() - t
        examples = args.steps * args.accum * args.batch
        tokens = examples * args.seq
        flops = 4 * n_params * tokens
        mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
        results[path] = {"examples_per_s": examples / secs, "tokens_per_s": tokens / secs,
                         "mfu_vs_measured_peak": flops / secs / peak, "achieved_tflops": flops / secs / 1e12,
                         "peak_memory_gib": mem, "params": n_params}
        r = results[path]
        print(f"train ({path}): {r['examples_per_s']:.2f} examples/s, {r['tokens_per_s']:.0f} tokens/s, "
              f"{r['achieved_tflops'] * 1e3:.1f} GFLOP/s = {r['mfu_vs_measured_peak']:.1%} of measured peak, "
              f"peak memory {mem:.1f} GiB")
    train = results["medqa"] | {"vs_reference": results["medqa"]["examples_per_s"] / results["reference"]["examples_per_s"],
                                "reference": results["reference"]}
    print(f"train: MedQA path {train['vs_reference']:.2f}x the reference recipe's examples/s")

    # evaluation: one batched pass reading the last position vs greedy generate-8 at batch 1
    model.eval()
    torch.manual_seed(1)
    prompts = [torch.randint(0, cfg.vocab_size, (args.prompt_len + (i % 32),)) for i in range(args.eval_questions)]
    letters = torch.tensor([32, 33, 34, 35]) % cfg.vocab_size
    with torch.inference_mode():
        t = time.perf_counter()
        bs = 32
        for s in range(0, len(prompts), bs):
            chunk = prompts[s : s + bs]
            width = max(len(p) for p in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, p in enumerate(chunk):
                ids[r, width - len(p):] = p
                mask[r, width - len(p):] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.autocast(device_type=device, dtype=dtype, enabled=device == "cuda"):
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                               logits_to_keep=1).logits[:, -1, letters.to(device)]
            logits.float().softmax(-1).cpu()
        sync(device)
        ours = len(prompts) / (time.perf_counter() - t)
        n_gen = max(4, args.eval_questions // 4)
        t = time.perf_counter()
        for p in prompts[:n_gen]:
            ids = p[None].to(device)
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8,
                           do_sample=False, pad_token_id=0)
        sync(device)
        ref = n_gen / (time.perf_counter() - t)
    print(f"eval: letter scorer {ours:.1f} q/s, reference generate-8 batch 1 {ref:.2f} q/s, ratio {ours / ref:.1f}x")
    print(json.dumps({"device": name, "backend": backend, "shape": args.shape, "train": train,
                      "eval": {"scorer_qps": ours, "generate8_qps": ref, "ratio": ours / ref},
                      "gradient_check": check}))
    if not check_ok:
        print("gradient check FAILED: the default training path's LoRA gradients differ from the plain path's")
        sys.exit(1)


if __name__ == "__main__":
    main()
