"""Data pipeline at MedMCQA-train scale: generate, load, clean, tokenise; prints rows/s per stage.

    .venv/bin/python benchmarks/data_scale.py [--rows 182822] [--num-proc 2] [--tokenizer smollm2-135m-instruct]

1. writes a MedMCQA-shaped JSONL (Hub schema, 0-based cop, ~1 % exact duplicates, ~30 % "multi",
   explanations on most rows) of `--rows` rows (default 182,822 = the MedMCQA train split) to a temp dir;
2. `data.load_medmcqa` (parse + validate every row);
3. `hygiene.clean_records` (NFKC/whitespace, exact duplicates), the "multi" policy and
   `hygiene.remove_leakage` against the MedMCQA validation file (../shared/data, if present) or a
   synthetic held-out set;
4. tokenisation as training does it (`PromptFormat.encode_example`: chat template, prompt + target,
   labels) through `datasets.Dataset.map(num_proc=N)` on an Arrow-backed dataset, cold and then again
   from the `datasets` cache (same fingerprint), plus plain batched tokenisation for comparison.
Nothing is written outside the temp dir (the `datasets` cache lives there too).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ("artery vein nerve muscle kidney liver heart lung cortex enzyme receptor hormone insulin glucose "
         "sodium potassium calcium nephron alveoli bronchus femur tibia humerus pelvis thyroid adrenal pituitary "
         "hepatitis malaria tuberculosis leprosy syphilis dengue typhoid anemia leukemia lymphoma carcinoma "
         "sarcoma fracture dislocation infarction ischemia hypertension diabetes pregnancy placenta fetus "
         "neonate child adult elderly patient treatment diagnosis drug dose toxicity antidote vaccine").split()
SUBJECTS = ["Anatomy", "Physiology", "Biochemistry", "Pathology", "Pharmacology", "Microbiology", "Forensic Medicine",
            "Social & Preventive Medicine", "Medicine", "Surgery", "Gynaecology & Obstetrics", "Pediatrics",
            "Ophthalmology", "ENT", "Orthopaedics", "Psychiatry", "Radiology", "Skin", "Dental", "Anaesthesia", "Unknown"]


def _words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def generate(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        prev: dict | None = None
        for i in range(rows):
            if prev is not None and rng.random() < 0.01:
                row = dict(prev, id=f"syn-{i}")  # an exact duplicate under another id
            else:
                row = {
                    "id": f"syn-{i}",
                    "question": _words(rng, 5, 30).capitalize() + rng.choice(["?", ":", " is", " except:"]),
                    "opa": _words(rng, 1, 8), "opb": _words(rng, 1, 8), "opc": _words(rng, 1, 8), "opd": _words(rng, 1, 8),
                    "cop": rng.randrange(4),
                    "choice_type": "multi" if rng.random() < 0.3 else "single",
                    "exp": _words(rng, 10, 120) if rng.random() < 0.85 else None,
                    "subject_name": rng.choice(SUBJECTS),
                    "topic_name": None,
                }
            if rng.random() < 0.02:
                row["question"] = row["question"].replace(" ", "\u00a0", 1) + "  "  # NBSP / trailing spaces to normalise
            f.write(json.dumps(row) + "\n")
            prev = row


def _rate(n: int, seconds: float) -> str:
    return f"{n:,} rows in {seconds:.2f} s = {n / seconds:,.0f} rows/s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=182_822)
    ap.add_argument("--num-proc", type=int, default=2)
    ap.add_argument("--tokenizer", default="smollm2-135m-instruct")
    ap.add_argument("--max-length", type=int, default=512)
    ns = ap.parse_args(argv)

    from medqa.datasets import load_medmcqa
    from medqa.hygiene import apply_multi_policy, clean_records, remove_leakage

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="medqa-bench-") as tmp:
        tmpdir = Path(tmp)
        os.environ["HF_DATASETS_CACHE"] = str(tmpdir / "hf-cache")
        src = tmpdir / "train.jsonl"

        t = time.perf_counter()
        generate(src, ns.rows)
        dt = time.perf_counter() - t
        print(f"generate           {_rate(ns.rows, dt)}  ({src.stat().st_size / 2**20:.0f} MiB)")

        t = time.perf_counter()
        records, report = load_medmcqa(str(src))
        dt = time.perf_counter() - t
        results["load"] = len(records) / dt
        print(f"load               {_rate(len(records), dt)}  (cop_base {report.cop_base}, skipped {len(report.skipped)})")

        shared = ROOT.parent / "shared" / "data" / "medmcqa" / "validation.jsonl"
        if shared.is_file():
            eval_records, _ = load_medmcqa(str(shared))
            eval_name = "medmcqa validation (4,183)"
        else:
            eval_records = records[-4183:]
            eval_name = "synthetic held-out (last 4,183 rows)"
        t = time.perf_counter()
        cleaned, crep = clean_records(records)
        cleaned, dropped_multi = apply_multi_policy(cleaned, "keep")
        train, leak = remove_leakage(cleaned, {"eval": eval_records})
        dt = time.perf_counter() - t
        results["clean"] = len(records) / dt
        print(f"clean              {_rate(len(records), dt)}  (normalised {crep.normalized}, exact duplicates {crep.exact_duplicates}, "
              f"conflicts {crep.label_conflicts}, multi dropped {dropped_multi}, leaked vs {eval_name}: {leak['removed']})")

        import datasets

        from medqa.format import PromptFormat
        from medqa.modeling import load_tokenizer

        datasets.disable_progress_bars()
        tok = load_tokenizer(ns.tokenizer)
        fmt = PromptFormat(tok)
        clean_path = tmpdir / "clean.jsonl"
        with open(clean_path, "w", encoding="utf-8") as f:
            for r in train:
                f.write(r.model_dump_json() + "\n")
        ds = datasets.load_dataset("json", data_files=str(clean_path), split="train", cache_dir=str(tmpdir / "hf-cache"))
        max_length = ns.max_length

        def encode(batch: dict[str, list]) -> dict[str, list]:
            from medqa.datasets import MCQRecord

            out: dict[str, list] = {"input_ids": [], "labels": [], "truncated": []}
            keys = list(batch)
            for i in range(len(batch["id"])):
                rec = MCQRecord.model_validate({k: batch[k][i] for k in keys})
                ex = fmt.encode_example(rec, max_length) or {"input_ids": [], "labels": [], "truncated": True}
                for k in out:
                    out[k].append(ex[k])
            return out

        for label in ("tokenise (cold)", "tokenise (cached)"):
            t = time.perf_counter()
            enc = ds.map(encode, batched=True, batch_size=1000, num_proc=ns.num_proc, remove_columns=ds.column_names)
            dt = time.perf_counter() - t
            results[label] = len(ds) / dt
            n_tok = sum(len(x) for x in enc["input_ids"])
            print(f"{label:18s} {_rate(len(ds), dt)}  (num_proc {ns.num_proc}, {n_tok / len(ds):.0f} tokens/row, "
                  f"cache files {len(enc.cache_files)})")

        texts = [fmt.prompt(r) for r in train[:20000]]
        t = time.perf_counter()
        tok(texts, add_special_tokens=False)
        dt = time.perf_counter() - t
        print(f"plain batched tokeniser call on {len(texts):,} rendered prompts (no map): {_rate(len(texts), dt)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
