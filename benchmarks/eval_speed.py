"""Evaluation speed, side by side in one process: MedQA's one-pass letter scorer against the
reference approach (greedy generation of 8 tokens, batch 1, first letter A-D found in the output,
fallback "A"), on the same model and the same real questions.

    python benchmarks/eval_speed.py --data ../shared/data/medmcqa/validation.jsonl --n 200

Prints questions/second for each, the speed ratio, and how often the predictions agree.
Not a timed test: run it by hand and record the output in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import re
import time

import numpy as np
import torch

from medqa.config import ModelConfig
from medqa.data import LETTERS, hash_order, load_medmcqa
from medqa.evaluate import score_records
from medqa.format import PromptFormat
from medqa.modeling import load_model


@torch.inference_mode()
def reference_generate(model, tok, fmt, records, max_new_tokens=8):
    """The hackathon approach: generate 8 tokens one question at a time, take the first letter."""
    preds, fallbacks = [], 0
    for r in records:
        ids = torch.tensor([fmt.encode_prompt(r)])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        m = re.search(r"\b([A-D])\b", text)
        if m is None:
            fallbacks += 1
        preds.append(LETTERS.index(m.group(1)) if m else 0)
    return preds, fallbacks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    records, _ = load_medmcqa(args.data)
    records = hash_order(records, 0)[: args.n]
    model, tok = load_model(ModelConfig(name=args.model))
    fmt = PromptFormat(tok, "chat")
    n_tokens = np.mean([len(fmt.encode_prompt(r)) for r in records])
    print(f"model {args.model}, {len(records)} MedMCQA questions, mean prompt {n_tokens:.0f} tokens, "
          f"torch threads {torch.get_num_threads()}")

    score_records(model, fmt, records[:8], progress=False)  # warm-up
    t = time.perf_counter()
    probs = score_records(model, fmt, records, batch_size=args.batch_size, progress=False)
    ours_s = time.perf_counter() - t
    ours = [int(np.argmax(p)) for p in probs]

    t = time.perf_counter()
    ref, fallbacks = reference_generate(model, tok, fmt, records)
    ref_s = time.perf_counter() - t

    gold = [r.answer for r in records]
    acc = lambda p: np.mean([a == b for a, b in zip(p, gold)])  # noqa: E731
    print(f"medqa letter scorer : {len(records) / ours_s:6.2f} q/s  accuracy {acc(ours):.1%}")
    print(f"reference generate8 : {len(records) / ref_s:6.2f} q/s  accuracy {acc(ref):.1%}  "
          f"({fallbacks} fallbacks to 'A': no letter in 8 tokens)")
    print(f"speed ratio (medqa / reference): {ref_s / ours_s:.2f}x")
    print(f"prediction agreement: {np.mean([a == b for a, b in zip(ours, ref)]):.1%}")


if __name__ == "__main__":
    main()
