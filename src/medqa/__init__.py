"""MedQA: turn a small open LLM into a clinical multiple-choice answerer (a study aid, not medical advice).

Library API (the `medqa` CLI is a thin layer over it):

    from medqa import build_config, run_eval, run_train, quickstart
    from medqa.data import load_medmcqa, load_demo
    from medqa.modeling import load_model, apply_lora
    from medqa.format import PromptFormat
    from medqa.evaluate import evaluate, score_records
"""

from medqa.config import RunConfig, build_config
from medqa.errors import ConfigError, DataError, MedQAError, ModelError

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy: importing medqa must not import torch
    if name in ("run_eval", "run_train", "quickstart"):
        from medqa import recipes

        return getattr(recipes, name)
    raise AttributeError(name)


__all__ = [
    "RunConfig", "build_config", "run_eval", "run_train", "quickstart",
    "MedQAError", "ConfigError", "DataError", "ModelError", "__version__",
]
