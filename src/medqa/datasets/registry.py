"""The one registry of dataset families, and the two ways in: by name (`load_named`) and by config
(`load_dataset_config`).

A family is a name, a loader `(path, split=, on_bad_rows=, [subset=,] **options)` returning
`(records, LoadReport)`, and how a `DataConfig` maps onto that loader. Adding a dataset is one
module with its loader and one `DatasetFamily(...)` line below (or `register(...)` from outside).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from medqa.datasets.demo import load_demo_set
from medqa.datasets.generic import load_generic
from medqa.datasets.medmcqa import load_medmcqa
from medqa.datasets.medqa_usmle import load_medqa_usmle
from medqa.datasets.mmlu import load_mmlu
from medqa.datasets.pubmedqa import load_pubmedqa
from medqa.datasets.readers import check_on_bad_rows
from medqa.datasets.record import LoadReport, MCQRecord
from medqa.datasets.sniff import sniff_family
from medqa.datasets.splits import hash_order, split_train_heldout
from medqa.errors import DataError
from medqa.hygiene import apply_multi_policy, clean_records

Loader = Callable[..., tuple[list[MCQRecord], LoadReport]]
_COMMON = {"path", "split", "on_bad_rows", "subset"}  # every loader's arguments; the rest are its options


def _from_config(cfg: Any, default_split: str) -> dict[str, Any]:
    """Most families: their own default split ("validation" is not a PubMedQA split; MMLU: test), the
    subjects as subset and the loader options."""
    return dict(split=cfg.split, subset=cfg.subjects, **cfg.loader_options)


def _medmcqa_from_config(cfg: Any, default_split: str) -> dict[str, Any]:
    """MedMCQA: the recipe's split (train / validation) unless one is given, and `cop_base`."""
    return {"split": cfg.split or default_split, "cop_base": cfg.cop_base}


def _demo_from_config(cfg: Any, default_split: str) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class DatasetFamily:
    """A dataset family: its name, its loader and how a `DataConfig` becomes the loader's arguments."""

    name: str
    loader: Loader
    title: str  # how reports and model cards name it
    needs_path: bool = True
    has_subsets: bool = False
    preset: Mapping[str, Any] = field(default_factory=dict)  # options fixed by the family (csv: file_format)
    from_config: Callable[[Any, str], dict[str, Any]] = _from_config

    def options(self) -> tuple[str, ...]:
        """The loader options this family accepts (beyond path, split, on_bad_rows, subset)."""
        return tuple(sorted(set(inspect.signature(self.loader).parameters) - _COMMON))

    def load(self, path: str | None, split: str | None = None, subset: str | None = None,
             on_bad_rows: str = "error", **opts: Any) -> tuple[list[MCQRecord], LoadReport]:
        """Check the arguments against the family, then call its loader."""
        check_on_bad_rows(on_bad_rows)
        name = self.name
        if self.needs_path and not path:
            raise DataError("data", None, "path", f"dataset '{name}' needs --data PATH|HUB_ID")
        if subset is not None and not self.has_subsets:
            raise DataError("data", None, "subset", f"dataset '{name}' has no subsets (only mmlu: a subject or 'medical')")
        opts = {**self.preset, **opts}
        allowed = self.options()
        for k in opts:
            if k not in allowed:
                raise DataError("data", None, k, f"unknown option for dataset '{name}' (allowed: {', '.join(allowed) or 'none'})")
        kwargs: dict[str, Any] = {"split": split, "on_bad_rows": on_bad_rows}
        if self.has_subsets:
            kwargs["subset"] = subset
        return self.loader(path, **kwargs, **opts)


DATASETS: dict[str, DatasetFamily] = {}


def register(family: DatasetFamily) -> DatasetFamily:
    """Add a family to the registry (its name must be new)."""
    if family.name in DATASETS:
        raise ValueError(f"dataset family {family.name!r} is already registered")
    DATASETS[family.name] = family
    return family


for _family in (
    DatasetFamily("medmcqa", load_medmcqa, "MedMCQA", from_config=_medmcqa_from_config),
    DatasetFamily("medqa-usmle", load_medqa_usmle, "MedQA-USMLE"),
    DatasetFamily("pubmedqa", load_pubmedqa, "PubMedQA"),
    DatasetFamily("mmlu", load_mmlu, "MMLU (medical subjects)", has_subsets=True),
    DatasetFamily("csv", load_generic, "local CSV", preset={"file_format": "csv"}),
    DatasetFamily("jsonl", load_generic, "local JSONL"),
    DatasetFamily("demo", load_demo_set, "MedQA demo set (bundled, not a benchmark)", needs_path=False,
                  from_config=_demo_from_config),
):
    register(_family)


# lm-evaluation-harness task names accepted as dataset names (and written back in results.json)
LM_EVAL_TASKS = {"medmcqa": "medmcqa", "medqa_4options": "medqa-usmle", "pubmedqa": "pubmedqa"}


def resolve_task_name(name: str) -> tuple[str, str | None]:
    """(family, MMLU subject or None) for a family name or an lm-eval task name: `medqa_4options` is
    medqa-usmle, `mmlu_<subject>` is mmlu with that subject (`mmlu_medical`: MedQA's six medical subjects)."""
    if name in DATASETS:
        return name, None
    if name in LM_EVAL_TASKS:
        return LM_EVAL_TASKS[name], None
    if name.startswith("mmlu_") and len(name) > len("mmlu_"):
        return "mmlu", name[len("mmlu_"):]
    get_family(name)  # the error listing the names there are
    raise AssertionError("unreachable")


def lm_eval_task_name(family: str, subject: str | None = None) -> str | None:
    """The lm-eval task a family (and MMLU subject) corresponds to, or None (local files, the demo set)."""
    if family == "mmlu":
        return f"mmlu_{subject}" if subject and subject != "medical" else None
    return {v: k for k, v in LM_EVAL_TASKS.items()}.get(family)


def dataset_names() -> tuple[str, ...]:
    """The registered family names, in registration order."""
    return tuple(DATASETS)


def get_family(name: str) -> DatasetFamily:
    """The family called `name`, or a DataError listing the names there are."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError("data", None, "dataset", f"unknown dataset {name!r} (one of {', '.join(DATASETS)})") from None


def load_named(
    name: str,
    path: str | None,
    split: str | None = None,
    subset: str | None = None,
    on_bad_rows: str = "error",
    **opts: Any,
) -> tuple[list[MCQRecord], LoadReport]:
    """Load dataset family `name` from `path` (file, folder or Hub id).

    `subset` is the MMLU subject (or `medical`); other families reject it. `opts` go to the loader:
    medmcqa: cop_base; pubmedqa: test_ids, include_context; csv/jsonl: the column mapping
    (question, options, answer, answer_format, explanation, subject, id, topic, delimiter).
    """
    check_on_bad_rows(on_bad_rows)
    family = get_family(name)
    with _suggest_family(family, path):
        return family.load(path, split=split, subset=subset, on_bad_rows=on_bad_rows, **opts)


@contextlib.contextmanager
def _suggest_family(family: DatasetFamily, path: str | None) -> Iterator[None]:
    """A data error on a local file that clearly belongs to another family names that family's --dataset."""
    try:
        yield
    except DataError as e:
        likely = sniff_family(path) if path and family.needs_path else None
        if likely is None or likely == family.name or likely not in DATASETS:
            raise
        raise DataError(e.source, e.row, e.field, f"{e.message} (the file looks like {DATASETS[likely].title} "
                        f"data, not {family.title}: try --dataset {likely})") from None


def load_dataset_config(cfg: Any, default_split: str) -> tuple[list[MCQRecord], LoadReport]:
    """Load what a `DataConfig` describes: dataset, file or Hub id, subset of the seeded split, limit."""
    family = get_family(cfg.dataset)
    with _suggest_family(family, cfg.path):
        records, report = family.load(cfg.path, on_bad_rows=cfg.on_bad_rows, **family.from_config(cfg, default_split))
    if cfg.clean:
        records, _ = clean_records(records)
    records, _ = apply_multi_policy(records, cfg.multi_policy)
    if cfg.subset != "all":
        if cfg.train_size is None:
            raise DataError("data", None, "train_size", f"subset '{cfg.subset}' needs data.train_size")
        train, held = split_train_heldout(records, cfg.train_size, cfg.seed)
        records = train if cfg.subset == "train" else held
    elif cfg.train_size is not None:
        if cfg.train_size < len(records):
            records = hash_order(records, cfg.seed)[: cfg.train_size]
    if cfg.limit is not None:
        records = records[: cfg.limit]
    return records, report
