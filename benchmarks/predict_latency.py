"""Time to the answer letter and to the first explanation token with the offline default model.

    python benchmarks/predict_latency.py      # 11 bundled demo questions; prints the first and the median of the rest
"""
import statistics

import torch

from medqa.config import RunConfig
from medqa.datasets import load_demo
from medqa.inference import Answerer

answerer = Answerer.from_config(RunConfig())
print("threads", torch.get_num_threads())
qs = load_demo()[:11]
L, F = [], []
for r in qs:
    p = answerer.answer(r.question, r.options, max_new_tokens=24)
    L.append(p.seconds_to_letter); F.append(p.seconds_to_first_token)
print("first question: letter %.2f s, first token %.2f s" % (L[0], F[0]))
print("median of next 10: letter %.2f s, first token %.2f s" % (statistics.median(L[1:]), statistics.median(F[1:])))
