"""Evaluation speed, side by side in one process, on the same model and the same real questions:

- MedQA's one-pass letter scorer (chat template, and the lm-eval protocol);
- (a) the reference approach: greedy generation of 8 tokens, batch 1, first letter A-D in the
  output, fallback "A" (chat template);
- (b) lm-evaluation-harness's own `medmcqa` task (pinned lm-eval) on the same questions, at the
  best of several batch sizes.

    python benchmarks/eval_speed.py --data ../shared/data/medmcqa/validation.jsonl --n 200

Prints questions/second for each, the speed ratios, and whether the predictions agree.
Not a timed test: run it by hand and record the output in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import re
import time

import numpy as np
import torch

from medqa.config import ModelConfig
from medqa.datasets import LETTERS, hash_order, load_medmcqa
from medqa.inference import score_records
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


def lm_eval_medmcqa(model, tok, records, data_file, batch_sizes):
    """Run lm-eval's medmcqa task (its own config) over a local copy of the same questions."""
    import json
    import tempfile
    from pathlib import Path

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tmp = Path(tempfile.mkdtemp())
    wanted = {r.id for r in records}
    rows = [json.loads(x) for x in Path(data_file).read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r["id"] in wanted]
    order = {r.id: i for i, r in enumerate(records)}
    rows.sort(key=lambda r: order[r["id"]])
    (tmp / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = Path(lm_eval.__file__).parent / "tasks"
    (tmp / "t.yaml").write_text(f"include: {tasks}/medmcqa/medmcqa.yaml\ntask: bench_medmcqa\n"
                                f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    validation: {tmp}/data.jsonl\n"
                                "training_split: null\n")
    best = None
    for bs in batch_sizes:
        t = time.perf_counter()
        res = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tok, batch_size=bs, device="cpu"),
                                      tasks=["bench_medmcqa"], task_manager=TaskManager(include_path=str(tmp)),
                                      log_samples=True, verbosity="ERROR")
        secs = time.perf_counter() - t
        samples = sorted(res["samples"]["bench_medmcqa"], key=lambda x: x["doc_id"])
        preds = [int(np.argmax([r[0] for r in x["filtered_resps"]])) for x in samples]
        print(f"  lm-eval batch {bs:3d}: {len(records) / secs:6.2f} q/s")
        if best is None or secs < best[0]:
            best = (secs, bs, preds)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lm-eval-batch-sizes", default="8,32", help="comma-separated; empty to skip lm-eval")
    ap.add_argument("--sweep", default="", help="only time the scorer (lm-eval prompt) at these batch sizes, e.g. 4,8,16")
    args = ap.parse_args()

    records, _ = load_medmcqa(args.data)
    records = hash_order(records, 0)[: args.n]
    model, tok = load_model(ModelConfig(name=args.model))
    fmt = PromptFormat(tok, "chat")
    n_tokens = np.mean([len(fmt.encode_prompt(r)) for r in records])
    print(f"model {args.model}, {len(records)} MedMCQA questions, mean prompt {n_tokens:.0f} tokens, "
          f"torch threads {torch.get_num_threads()}")

    score_records(model, fmt, records[:8], progress=False)  # warm-up
    if args.sweep:
        lm = PromptFormat(tok, "lm-eval")
        for bs in [int(x) for x in args.sweep.split(",")]:
            t = time.perf_counter()
            score_records(model, lm, records, batch_size=bs, progress=False)
            print(f"scorer, lm-eval prompt, batch {bs:3d}: {len(records) / (time.perf_counter() - t):6.2f} q/s")
        return
    t = time.perf_counter()
    probs = score_records(model, fmt, records, batch_size=args.batch_size, progress=False)
    ours_s = time.perf_counter() - t
    ours = [int(np.argmax(p)) for p in probs]

    t = time.perf_counter()
    ref, fallbacks = reference_generate(model, tok, fmt, records)
    ref_s = time.perf_counter() - t

    lm = PromptFormat(tok, "lm-eval")
    t = time.perf_counter()
    lm_probs = score_records(model, lm, records, batch_size=args.batch_size, progress=False)
    lm_s = time.perf_counter() - t
    ours_lm = [int(np.argmax(p)) for p in lm_probs]

    gold = [r.answer for r in records]
    acc = lambda p: np.mean([a == b for a, b in zip(p, gold)])  # noqa: E731
    n = len(records)
    print(f"medqa scorer, chat template : {n / ours_s:6.2f} q/s  accuracy {acc(ours):.1%}")
    print(f"medqa scorer, lm-eval prompt: {n / lm_s:6.2f} q/s  accuracy {acc(ours_lm):.1%}")
    print(f"(a) reference generate-8    : {n / ref_s:6.2f} q/s  accuracy {acc(ref):.1%}  "
          f"({fallbacks} fallbacks to 'A': no letter in 8 tokens)")
    print(f"speed ratio vs (a), same chat prompt: {ref_s / ours_s:.2f}x; prediction agreement {np.mean([a == b for a, b in zip(ours, ref)]):.1%}")
    sizes = [int(x) for x in args.lm_eval_batch_sizes.split(",") if x.strip()]
    if sizes:
        best_s, best_bs, theirs = lm_eval_medmcqa(model, tok, records, args.data, sizes)
        same = np.mean([a == b for a, b in zip(ours_lm, theirs)])
        print(f"(b) lm-eval medmcqa, best batch {best_bs}: {n / best_s:6.2f} q/s  accuracy {acc(theirs):.1%}")
        print(f"speed ratio vs (b), same lm-eval prompt: {best_s / lm_s:.2f}x; identical predictions {same:.1%}")


if __name__ == "__main__":
    main()
