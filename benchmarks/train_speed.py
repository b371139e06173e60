"""Training speed, side by side in one process, on the same model, examples and epochs:

- reference recipe (the hackathon's): full-sequence labels (prompt included), random order padded
  to the longest in each batch, gradient checkpointing, the model's own loss over all logits;
- MedQA's default path: answer-and-explanation labels, balanced micro-batches (padding-free with
  flash attention), the shared system prompt run once per optimizer step, logits only where a target is
  predicted through the fused head + cross-entropy, memory-lean autograd (medqa.lean), no gradient
  checkpointing;

both LoRA (q,v, r=8) at batch 4 x accumulation 4 through `medqa.training.train`. Prints training
examples/s, non-padding tokens/s, peak memory above the loaded model, and achieved FLOP/s as a share
of this machine's matmul peak measured in the same run (4·N·T FLOPs for LoRA over non-padding tokens).

    python benchmarks/train_speed.py --n 64            # bundled demo questions (with explanations)
    python benchmarks/train_speed.py --n 64 --data ../shared/data/medmcqa/validation.jsonl   # real MedMCQA
    python benchmarks/train_speed.py --micro-batch 2   # also try a smaller micro-batch (same effective batch)
    python benchmarks/train_speed.py --repeat 3        # alternate the configurations 3 times (fastest run each)

Each configuration trains in a fresh child process (same start state, its own peak memory); the
parent measures the matmul peak and prints the ratios.

Not a timed test: run it by hand and record the output in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time

import torch

from medqa.config import build_config, parse_value
from medqa.config import DataConfig
from medqa.datasets import load_dataset_config, load_demo
from medqa.hardware import detect
from medqa.modeling import apply_lora, load_model
from medqa.training import train


def matmul_peak(device: str, dtype: torch.dtype) -> float:
    """Best FLOP/s of square matmuls (1024..4096) on this device and dtype."""
    from gpu_bench import matmul_peak as square_peak  # benchmarks/ is on sys.path when run as a script

    return max(square_peak(device, dtype, n) for n in (1024, 2048, 4096))


class PeakMemory:
    """Peak memory above the starting point: CUDA/ROCm allocator peak, or process RSS sampled every 10 ms."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            import psutil

            self.proc = psutil.Process()
            self.start = self.peak = self.proc.memory_info().rss
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.running = False
            self.thread.join()
        self.bytes = self.peak - self.start


def load_records(data: str | None, n: int):
    if data is None:
        return load_demo()[:n]
    # the training part of a seeded hash split, as the reference recipe samples its questions
    records, _ = load_dataset_config(DataConfig(dataset="medmcqa", path=data, subset="train", train_size=n), default_split="train")
    return records


def child(name: str, overrides: dict, data: str | None, n: int) -> dict:
    """One configuration, in this (fresh) process: load, LoRA, train; peak memory above the loaded model."""
    records = load_records(data, n)
    cfg = build_config(None, {**overrides, "out": tempfile.mkdtemp(prefix="train-speed-")})
    torch.manual_seed(0)
    model, tok = load_model(cfg.model)
    model = apply_lora(model, cfg.lora)
    with PeakMemory(detect(cfg.model.device).device) as mem:
        s = train(cfg, model, tok, records, progress=False)
    return {"name": name, "seconds": s["seconds"], "examples_per_s": s["examples_per_second"],
            "computed": s["computed"], "gc": s["gradient_checkpointing"], "slots": s["tokens"] * s["epochs_done"] / s["non_padding_share"],
            "tokens": s["tokens"] * s["epochs_done"], "non_padding_share": s["non_padding_share"],
            "peak_mib": mem.bytes / 2**20, "estimate_mib": s["memory_estimate_bytes"]["total"] / 2**20,
            "loss": s["train_loss"], "batching": s["batching"]}


def run(name: str, overrides: dict, args, n_params: int, peak_flops: float, n_head: int) -> dict:
    spec = json.dumps({"name": name, "overrides": overrides, "data": args.data, "n": args.n})
    p = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{name} failed:\n{p.stderr[-3000:]}")
    row = json.loads(p.stdout.strip().splitlines()[-1])
    row["tokens_per_s"] = row["tokens"] / row["seconds"]
    flops = 4 * n_params * row["tokens"] / row["seconds"]
    row["mfu"] = flops / peak_flops
    # FLOPs actually executed: every position run (padding and a shared prefix as run), the vocabulary
    # projection only where logits were computed (the model's own loss: at every position), recomputation
    positions = row["computed"].get("positions", row["slots"])
    logits = row["computed"].get("logit_positions", row["slots"])
    body = 6 if row["gc"] else 4  # gradient checkpointing runs the decoder's forward twice
    executed = (body * (n_params - n_head) * positions + 4 * n_head * logits) / row["seconds"]
    row["executed_mfu"] = executed / peak_flops
    print(f"{name:>28}: {row['seconds']:7.1f} s  {row['examples_per_s']:6.3f} ex/s  {row['tokens_per_s']:7.1f} tok/s  "
          f"non-padding {row['non_padding_share']:.1%}  peak +{row['peak_mib']:.0f} MiB (estimate {row['estimate_mib']:.0f})  "
          f"{flops / 1e9:.1f} GFLOP/s = {row['mfu']:.1%} of peak (executed {executed / 1e9:.1f} = "
          f"{row['executed_mfu']:.1%})  loss {row['loss']:.3f}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=64, help="training examples")
    ap.add_argument("--data", help="MedMCQA file (default: the bundled demo questions, which have explanations)")
    ap.add_argument("--micro-batch", type=int, nargs="*", default=[], help="extra MedQA runs at these micro-batches")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:FIELD=VALUE[,FIELD=VALUE]",
                    help="an extra MedQA run with config overrides, e.g. gc:train.gradient_checkpointing=true")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of all configurations (alternating)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child(spec["name"], spec["overrides"], spec["data"], spec["n"])))
        return
    hw = detect()
    common = {"model.name": args.model, "train.epochs": 1, "train.batch_size": 4, "train.grad_accum": 4,
              "train.calibration_size": 0, "train.report_to": [], "train.save_steps": 10**6, "train.logging_steps": 1,
              "train.warmup_ratio": 0.0}
    probe, _ = load_model(build_config(None, {"model.name": args.model}).model)
    n_params = sum(p.numel() for p in probe.parameters())
    n_head = probe.get_output_embeddings().weight.numel()  # the vocabulary projection (tied or not)
    dtype = next(probe.parameters()).dtype
    del probe
    peak = matmul_peak(hw.device, dtype)
    print(f"{hw.name} ({hw.backend}), {torch.get_num_threads()} threads, {dtype}; {args.model}: {n_params / 1e6:.1f} M "
          f"parameters; {args.n} examples from {args.data or 'the bundled demo set'}, 1 epoch, batch 4 x accumulation 4")
    print(f"measured matmul peak: {peak / 1e9:.1f} GFLOP/s", flush=True)
    configs = {}
    if not args.skip_reference:
        configs["ref"] = ("reference recipe", {**common, "train.batching": "padded", "train.completion_only_loss": False,
                                               "train.target_only_logits": False, "train.lean_activations": False,
                                               "train.gradient_checkpointing": True})
    configs["medqa"] = ("medqa default", common)
    for mb in args.micro_batch:
        configs[f"mb{mb}"] = (f"medqa micro-batch {mb} x {16 // mb}",
                              {**common, "train.batch_size": mb, "train.grad_accum": 16 // mb})
    for spec in args.variant:
        name, _, fields = spec.partition(":")
        extra = {k: parse_value(v) for k, v in (f.split("=", 1) for f in fields.split(",") if f)}
        configs[name] = (f"medqa {name}", {**common, **extra})
    # rounds alternate the configurations, so a slow spell of the machine hits them alike
    runs: dict[str, list[dict]] = {key: [] for key in configs}
    for _ in range(args.repeat):
        for key, (name, overrides) in configs.items():
            runs[key].append(run(name, overrides, args, n_params, peak, n_head))
    if args.repeat > 1:
        print(f"over {args.repeat} rounds: fastest run's examples/s, highest peak memory")
    best = {key: max(r, key=lambda x: x["examples_per_s"]) for key, r in runs.items()}
    worst_mib = {key: max(x["peak_mib"] for x in r) for key, r in runs.items()}
    if "ref" in runs:
        for key in runs:
            if key == "ref":
                continue
            speed = [f"{x['examples_per_s'] / y['examples_per_s']:.2f}" for x, y in zip(runs[key], runs["ref"])]
            print(f"{best[key]['name']} vs reference: {best[key]['examples_per_s'] / best['ref']['examples_per_s']:.2f}x "
                  f"examples/s, peak memory {worst_mib[key] / max(worst_mib['ref'], 1):.2f}x"
                  + (f" (round by round: {', '.join(speed)}x)" if args.repeat > 1 else ""))

if __name__ == "__main__":
    main()
