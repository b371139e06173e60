"""MedQA: turn a small open LLM into a clinical multiple-choice answerer (a study aid, not medical advice).

Library API (the `medqa` CLI is a command registry over it):

    from medqa import build_config, run_eval, run_train, quickstart
    from medqa.datasets import load_medmcqa, load_demo
    from medqa.modeling import load_model, apply_lora
    from medqa.format import PromptFormat
    from medqa.inference import Answerer          # score / generate / answer: the one inference path
    from medqa.evaluate import evaluate
"""

from medqa.config import RunConfig, build_config
from medqa.errors import ConfigError, DataError, MedQAError, ModelError

from medqa.versions import __version__


def __getattr__(name: str):  # lazy: importing medqa must not import torch
    if name in ("run_eval", "run_train", "quickstart"):
        from medqa import recipes

        return getattr(recipes, name)
    raise AttributeError(name)


__all__ = [
    "RunConfig", "build_config", "run_eval", "run_train", "quickstart",
    "MedQAError", "ConfigError", "DataError", "ModelError", "__version__",
]
