"""The datasets package as a whole: the demo set, the seeded split, `load_dataset_config`, the registry
of dataset families, the names it exports, and that importing it pulls in nothing it should not."""

import json
import subprocess
import sys
from collections import Counter

import pytest

import medqa.datasets as datasets_pkg
from medqa.config import DataConfig
from medqa.datasets import (
    DATASET_NAMES,
    DATASETS,
    DatasetFamily,
    dataset_names,
    get_family,
    load_dataset_config,
    load_demo,
    load_demo_set,
    load_medmcqa,
    load_named,
    register,
    split_train_heldout,
)
from medqa.errors import DataError


def test_demo_set_is_original_and_broad():
    records = load_demo()
    assert len(records) >= 150
    assert len({r.subject for r in records}) >= 10
    assert all(r.explanation for r in records)
    assert len({r.id for r in records}) == len(records)
    assert len({r.question for r in records}) == len(records)
    letters = Counter(r.answer_letter for r in records)
    assert max(letters.values()) - min(letters.values()) <= len(records) * 0.05  # balanced gold letters
    assert all(r.source == "medqa-demo" for r in records)


def test_hash_split_is_seeded_disjoint_and_order_free(small_jsonl):
    records, _ = load_medmcqa(str(small_jsonl))
    train, held = split_train_heldout(records, 8, seed=1)
    assert len(train) == 8 and len(held) == 4
    assert not {r.id for r in train} & {r.id for r in held}
    train2, _ = split_train_heldout(list(reversed(records)), 8, seed=1)
    assert [r.id for r in train] == [r.id for r in train2]
    train3, _ = split_train_heldout(records, 8, seed=2)
    assert [r.id for r in train] != [r.id for r in train3]
    assert [r.id for r in train] != [r.id for r in records[:8]]
    with pytest.raises(DataError, match="nothing held out"):
        split_train_heldout(records, 12, seed=1)


def test_load_dataset_config_subsets(small_jsonl):
    base = {"dataset": "medmcqa", "path": str(small_jsonl), "train_size": 8, "seed": 3}
    train, _ = load_dataset_config(DataConfig(**base, subset="train"), "train")
    held, _ = load_dataset_config(DataConfig(**base, subset="heldout"), "validation")
    sample, _ = load_dataset_config(DataConfig(**base), "train")
    assert {r.id for r in train} == {r.id for r in sample}
    assert len(held) == 4 and not {r.id for r in train} & {r.id for r in held}
    limited, _ = load_dataset_config(DataConfig(dataset="medmcqa", path=str(small_jsonl), limit=3), "train")
    assert [r.id for r in limited] == ["q0", "q1", "q2"]
    with pytest.raises(DataError, match="needs --data"):
        load_dataset_config(DataConfig(dataset="medmcqa"), "train")


# ----------------------------------------------------------------------------- registry

BUILT_IN = ("medmcqa", "medqa-usmle", "pubmedqa", "mmlu", "csv", "jsonl", "demo")


def test_registry_names_resolve_in_a_stable_order():
    assert dataset_names() == BUILT_IN == DATASET_NAMES
    for name in dataset_names():
        family = get_family(name)
        assert family is DATASETS[name] and family.name == name and family.title and callable(family.loader)
        assert not {"path", "split", "on_bad_rows", "subset"} & set(family.options())


def test_registry_matches_the_config_choices():
    """The config's dataset choices are the registry's names (one list, read from the registry)."""
    from medqa.config import build_config
    from medqa.errors import ConfigError

    for name in dataset_names():
        assert build_config(overrides={"data.dataset": name}).data.dataset == name
    with pytest.raises(ConfigError, match="unknown dataset 'medmcqa2'; one of: medmcqa"):
        build_config(overrides={"data.dataset": "medmcqa2"})


@pytest.mark.parametrize("call", [lambda: get_family("medmcqa2"), lambda: load_named("medmcqa2", "x.jsonl"),
                                  lambda: load_dataset_config(DataConfig.model_construct(dataset="medmcqa2"), "train")])
def test_unknown_dataset_is_a_clear_error_listing_the_names(call):
    with pytest.raises(DataError) as exc:
        call()
    assert exc.value.field == "dataset" and "unknown dataset 'medmcqa2'" in str(exc.value)
    assert "one of " + ", ".join(BUILT_IN) in str(exc.value)


def test_the_demo_set_has_one_way_in():
    ids = [r.id for r in load_demo()]
    records, report = load_demo_set()
    assert [r.id for r in records] == ids and report.kept == len(ids) and report.cop_base == 0
    assert [r.id for r in load_named("demo", None)[0]] == ids
    assert [r.id for r in load_dataset_config(DataConfig(dataset="demo"), "validation")[0]] == ids


def test_family_checks_path_subset_and_options():
    with pytest.raises(DataError, match="needs --data"):
        load_named("pubmedqa", None)
    with pytest.raises(DataError, match="has no subsets"):
        load_named("csv", "x.csv", subset="anatomy")
    with pytest.raises(DataError, match=r"unknown option for dataset 'medmcqa' \(allowed: cop_base, source_name\)"):
        load_named("medmcqa", "x.jsonl", colour="red")
    with pytest.raises(DataError, match=r"allowed: none"):
        load_named("demo", None, cop_base=0)
    with pytest.raises(DataError, match="on_bad_rows"):
        load_named("demo", None, on_bad_rows="ignore")
    assert get_family("csv").preset == {"file_format": "csv"} and not get_family("jsonl").preset


def test_register_adds_a_family_and_refuses_a_taken_name(small_jsonl):
    family = DatasetFamily("medmcqa-copy", load_medmcqa, "MedMCQA under another name")
    try:
        assert register(family) is family and dataset_names()[-1] == "medmcqa-copy"
        records, _ = load_named("medmcqa-copy", str(small_jsonl), cop_base="0")
        assert len(records) == 12
    finally:
        DATASETS.pop("medmcqa-copy", None)
    with pytest.raises(ValueError, match="already registered"):
        register(DatasetFamily("mmlu", load_medmcqa, "clash"))
    assert dataset_names() == BUILT_IN


# ----------------------------------------------------------------------------- exports and imports

# Every name src/, tests/ and benchmarks/ imported from the former medqa.data and medqa.loaders modules.
FORMER_IMPORTS = (
    "LETTERS", "MCQRecord", "LoadReport", "read_text_file", "is_local", "iter_raw_rows", "text_cell",
    "load_medmcqa", "detect_cop_base", "load_demo", "demo_path", "hash_order", "split_train_heldout",
    "load_dataset_config", "DATASET_NAMES", "load_named", "MMLU_MEDICAL", "load_mmlu", "mmlu_record",
    "mmlu_csv_record", "load_pubmedqa", "pubmedqa_record", "load_medqa_usmle", "medqa_usmle_record",
    "load_generic", "generic_record",
)


def test_every_former_import_is_exported():
    missing = [n for n in FORMER_IMPORTS if not hasattr(datasets_pkg, n)]
    assert not missing
    assert set(FORMER_IMPORTS) <= set(datasets_pkg.__all__)
    assert all(hasattr(datasets_pkg, n) for n in datasets_pkg.__all__)


@pytest.mark.parametrize("module", ["medqa.datasets", "medqa.datasets.record", "medqa.datasets.readers",
                                    "medqa.datasets.mmlu", "medqa.datasets.demo", "medqa.datasets.registry"])
def test_import_is_light_and_has_no_cycle(module):
    code = (
        f"import sys, {module}\n"
        "bad = [m for m in ('medqa.data', 'medqa.loaders', 'medqa.recipes', 'medqa.train', 'medqa.training',\n"
        "                   'medqa.inspect', 'medqa.inference', 'torch', 'transformers', 'datasets', 'pyarrow')\n"
        "       if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_new_family_is_one_file(tmp_path):
    """CONTRIBUTING's recipe: a module in medqa/datasets/ that ends with register(...) is found by the registry,
    the config's dataset choices and `medqa data inspect` (checked in a fresh process with a temporary module)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import medqa.datasets as ds

    pkg = tmp_path / "medqa"
    shutil.copytree(Path(ds.__file__).parents[1], pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "datasets" / "tinyqa.py").write_text(
        "from medqa.datasets.generic import load_generic\n"
        "from medqa.datasets.registry import DatasetFamily, register\n\n"
        "register(DatasetFamily('tinyqa', load_generic, 'TinyQA'))\n")
    code = ("from medqa.config import build_config; from medqa.datasets import dataset_names; "
            "assert 'tinyqa' in dataset_names(); print(build_config(overrides={'data.dataset': 'tinyqa'}).data.dataset)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-1500:]
    assert r.stdout.strip() == "tinyqa"


@pytest.mark.parametrize("name, family, subject", [
    ("medmcqa", "medmcqa", None), ("medqa_4options", "medqa-usmle", None), ("pubmedqa", "pubmedqa", None),
    ("mmlu_anatomy", "mmlu", "anatomy"), ("mmlu_medical", "mmlu", "medical"), ("medqa-usmle", "medqa-usmle", None),
])
def test_lm_eval_task_names_are_dataset_names(name, family, subject):
    from medqa.config import DataConfig

    d = DataConfig(dataset=name)
    assert (d.dataset, d.subjects) == (family, subject)


def test_a_task_name_and_another_subject_disagree():
    from pydantic import ValidationError

    from medqa.config import DataConfig

    with pytest.raises(ValidationError, match="names the subject 'anatomy'"):
        DataConfig(dataset="mmlu_anatomy", subjects="virology")
    with pytest.raises(ValidationError, match="lm-eval task name"):
        DataConfig(dataset="medqa_5options")


def _pqal(path):
    path.write_text(json.dumps({"21645374": {"QUESTION": "Do mitochondria play a role?", "CONTEXTS": ["a", "b"],
                                             "final_decision": "yes", "LONG_ANSWER": "Yes."}}, indent=1))
    return path


@pytest.mark.parametrize("given", ["medqa-usmle", "medmcqa", "jsonl"])
def test_a_file_of_another_family_names_the_likely_dataset(tmp_path, given):
    from medqa.datasets import load_named

    with pytest.raises(DataError, match=r"looks like PubMedQA data.*try --dataset pubmedqa") as e:
        load_named(given, str(_pqal(tmp_path / "ori_pqal.json")))
    assert "ori_pqal.json" in str(e.value)


@pytest.mark.parametrize("row, family", [
    ({"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 1}, "medmcqa"),
    ({"question": "q", "options": {"A": "a", "B": "b"}, "answer_idx": "A", "answer": "a"}, "medqa-usmle"),
    ({"question": "q", "choices": ["a", "b"], "answer": 0, "subject": "anatomy"}, "mmlu"),
    ({"pubid": 1, "question": "q", "context": {}, "final_decision": "no"}, "pubmedqa"),
    ({"question": "q", "A": "a", "B": "b", "answer": "A"}, None),
])
def test_sniffing_reads_each_familys_columns(tmp_path, row, family):
    from medqa.datasets.sniff import sniff_family

    p = tmp_path / "f.jsonl"
    p.write_text(json.dumps(row) + "\n")
    assert sniff_family(str(p)) == family


def test_mmlu_csv_given_as_csv_is_named(tmp_path):
    from medqa.datasets import load_named

    p = tmp_path / "anatomy_test.csv"
    p.write_text("What is the heart?,An organ,A bone,A nerve,A vessel,A\n")
    with pytest.raises(DataError, match="try --dataset mmlu"):
        load_named("csv", str(p))
