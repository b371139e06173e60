"""Datasets: one record type, the file and Hub readers, one module per dataset family, one registry.

    from medqa.datasets import load_named, load_dataset_config, load_demo, dataset_names

- `record`: `MCQRecord` (2 to 5 options, a 0-based answer) and `LoadReport` (rows read, kept, skipped).
- `readers`: JSONL / JSON / Parquet / CSV files and Hub datasets, cell parsing, and `collect`, the one
  loop that converts rows and, with `on_bad_rows="skip"`, skips and counts bad ones (else raises a
  `DataError` naming the file, row and field).
- families: `medmcqa`, `medqa_usmle`, `pubmedqa`, `mmlu`, `generic` (csv / jsonl), `demo`.
- `splits`: the seeded hash order and train / held-out split.
- `registry`: `DATASETS` (name -> `DatasetFamily`), `load_named`, `load_dataset_config`.
"""

from medqa.datasets.demo import demo_path, load_demo, load_demo_set
from medqa.datasets.generic import ANSWER_FORMATS, generic_record, load_generic
from medqa.datasets.medmcqa import MEDMCQA_OPTION_KEYS, detect_cop_base, load_medmcqa, medmcqa_record
from medqa.datasets.medqa_usmle import load_medqa_usmle, medqa_usmle_record
from medqa.datasets.mmlu import MMLU_MEDICAL, load_mmlu, mmlu_csv_record, mmlu_record
from medqa.datasets.pubmedqa import PUBMEDQA_OPTIONS, load_pubmedqa, pubmedqa_record
from medqa.datasets.readers import (
    LOCAL_SUFFIXES,
    collect,
    is_local,
    iter_raw_rows,
    read_text_file,
    text_cell,
)
from medqa.datasets.record import LETTERS, LoadReport, MCQRecord
from medqa.datasets.registry import (
    DATASETS,
    DatasetFamily,
    dataset_names,
    get_family,
    lm_eval_task_name,
    load_dataset_config,
    load_named,
    register,
    resolve_task_name,
)
from medqa.datasets.splits import hash_order, split_train_heldout


def _discover() -> None:
    """Import every module of this package: a new family is one file that ends with `register(...)`."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_discover()
DATASET_NAMES = dataset_names()  # the built-in names; `dataset_names()` also lists families registered later

__all__ = [
    # record
    "LETTERS", "MCQRecord", "LoadReport",
    # readers
    "LOCAL_SUFFIXES", "is_local", "iter_raw_rows", "read_text_file", "text_cell", "collect",
    # families
    "MEDMCQA_OPTION_KEYS", "detect_cop_base", "medmcqa_record", "load_medmcqa",
    "medqa_usmle_record", "load_medqa_usmle",
    "PUBMEDQA_OPTIONS", "pubmedqa_record", "load_pubmedqa",
    "MMLU_MEDICAL", "mmlu_record", "mmlu_csv_record", "load_mmlu",
    "ANSWER_FORMATS", "generic_record", "load_generic",
    "demo_path", "load_demo", "load_demo_set",
    # splits
    "hash_order", "split_train_heldout",
    # registry
    "DATASETS", "DATASET_NAMES", "DatasetFamily", "dataset_names", "get_family", "register",
    "load_named", "load_dataset_config", "resolve_task_name", "lm_eval_task_name",
]
