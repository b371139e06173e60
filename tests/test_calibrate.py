import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from medqa.calibrate import (
    abstain_threshold,
    abstains,
    guarantee_text,
    apply_temperature,
    augment_options,
    fit_temperature,
    load_calibration,
    refers_to_positions,
    risk_coverage,
)
from medqa.datasets import MCQRecord, load_demo
from medqa.evaluate import expected_calibration_error


def test_augmentation_keeps_every_gold_option_and_balances_letters():
    records = [r.model_copy(update={"answer": 0, "options": [r.options[r.answer]] + [o for i, o in enumerate(r.options) if i != r.answer]})
               for r in load_demo()[:100]]  # every gold is "A": the letter prior to unlearn
    out, info = augment_options(records, copies=1, seed=7)
    assert len(out) == 100 and info["gold_before"] == {"A": 100}
    for a, b in zip(records, out):
        assert b.options[b.answer] == a.options[a.answer] and sorted(b.options) == sorted(a.options)
    assert Counter(r.answer_letter for r in out) == {"A": 25, "B": 25, "C": 25, "D": 25}
    again, _ = augment_options(records, copies=1, seed=7)
    assert [r.options for r in again] == [r.options for r in out]  # seeded
    two, info2 = augment_options(records, copies=2, seed=7)
    assert len(two) == 200 and len({r.id for r in two}) == 200
    assert set(info2["gold_after"].values()) == {50}
    assert augment_options(records, copies=0)[0] == records


def test_options_that_point_at_other_options_keep_their_order():
    r = MCQRecord(id="x", question="q", options=["Fever", "Rash", "Both A and B", "None of the above"], answer=2)
    assert refers_to_positions(r)
    out, info = augment_options([r], copies=1, seed=0)
    assert out[0] == r and info["kept_order"] == 1
    plain = MCQRecord(id="y", question="q", options=["Femur", "Tibia", "Ulna", "Radius"], answer=1)
    assert not refers_to_positions(plain)


def test_temperature_fitting_lowers_ece_on_a_miscalibrated_case():
    rng = np.random.default_rng(0)
    # an overconfident model: right 60 % of the time, but says 0.97 every time
    answers = list(rng.integers(0, 4, 400))
    probs = []
    for a in answers:
        pred = a if rng.random() < 0.6 else (a + 1) % 4
        p = np.full(4, 0.01)
        p[pred] = 0.97
        probs.append(p)
    correct = np.array([int(np.argmax(p)) == a for p, a in zip(probs, answers)], dtype=float)
    ece = lambda ps: expected_calibration_error(np.array([p.max() for p in ps]), correct)  # noqa: E731
    t = fit_temperature(probs, answers)
    assert t > 1.5  # softens
    scaled = apply_temperature(probs, t)
    assert ece(scaled) < ece(probs) / 3
    assert [int(np.argmax(p)) for p in scaled] == [int(np.argmax(p)) for p in probs]  # accuracy unchanged
    assert apply_temperature(probs, 1.0)[0].tolist() == probs[0].tolist()


def test_risk_coverage_hand_worked():
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    correct = np.array([1.0, 0.0, 1.0, 0.0])
    rc = risk_coverage(conf, correct, coverages=(1.0, 0.5))
    # kept answers' accuracy: 1/1, 1/2, 2/3, 2/4 -> risks 0, 1/2, 1/3, 1/2 -> AURC = (0 + .5 + .3333 + .5) / 4
    assert rc["accuracy"] == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert rc["aurc"] == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)
    assert rc["accuracy_at_coverage"] == {"100%": 0.5, "50%": 0.5}
    # four answers cannot show 65 % accuracy with 90 % confidence: abstain on everything
    assert abstain_threshold(conf, correct, 0.65)["abstain_all"] is True


def test_clopper_pearson_lower_bound_matches_the_beta_quantile():
    from scipy.stats import beta

    from medqa.calibrate import clopper_pearson_lower

    for k, n, level in [(5, 10, 0.9), (1, 1, 0.9), (60, 100, 0.95), (499, 500, 0.9), (0, 7, 0.9)]:
        want = beta.ppf(1 - level, k, n - k + 1) if k else 0.0
        assert clopper_pearson_lower(k, n, level) == pytest.approx(want, abs=1e-9)


def test_a_lucky_top_three_of_fifteen_does_not_set_the_threshold():
    """Issue 14.12: the quickstart adapter's calibration (n 15, accuracy 0.20) had its threshold set by a
    lucky top three, so a 25.6 % answer was not flagged. With the guarantee nothing qualifies."""
    conf = np.array([0.31, 0.29, 0.28, 0.2558, 0.25, 0.25, 0.24, 0.24, 0.23, 0.23, 0.22, 0.22, 0.21, 0.21, 0.2])
    correct = np.array([1, 1, 1] + [0] * 12, dtype=float)
    got = abstain_threshold(conf, correct, 0.2)
    assert got["abstain_all"] is True and got["abstain_threshold"] is None
    assert got["guarantee"]["n"] == 15 and got["guarantee"]["level"] == 0.9
    cal = {"temperature": 1.0, **got}
    assert abstains(0.256, cal) and abstains(0.99, cal)  # every answer is flagged
    assert "every answer is flagged" in guarantee_text(cal)


def test_threshold_guarantee_holds_on_repeated_calibration_draws():
    """Confidence c ~ U(0.25, 1) and P(correct | c) = c, so the true accuracy of the answers kept at
    threshold t is (1 + t) / 2. Over many calibration draws of 200 questions, the chosen threshold's true
    kept accuracy falls below the target at most ~10 % of the time (level 0.9); a naive empirical rule
    (lowest threshold whose observed kept accuracy reaches the target) misses far more often."""
    rng = np.random.default_rng(0)
    target, trials, misses, naive_misses, kept = 0.75, 120, 0, 0, []
    for _ in range(trials):
        conf = rng.uniform(0.25, 1.0, 200)
        correct = (rng.uniform(size=200) < conf).astype(float)
        got = abstain_threshold(conf, correct, target, level=0.9)
        if not got["abstain_all"]:
            t = got["abstain_threshold"]
            misses += (1 + t) / 2 < target
            kept.append(got["guarantee"]["kept"])
            assert got["guarantee"]["lower_bound"] >= target
        order = np.argsort(-conf)
        acc = np.cumsum(correct[order]) / np.arange(1, 201)
        ok = np.nonzero(acc >= target)[0]
        if len(ok):
            naive_misses += (1 + conf[order][ok[-1]]) / 2 < target
    assert misses / trials <= 0.15
    assert naive_misses / trials > 0.3
    assert np.mean(kept) > 40  # it still answers: the guarantee is not bought by abstaining on everything


def test_one_abstention_rule_for_every_surface():
    cal = {"temperature": 1.0, "abstain_threshold": 0.4, "abstain_all": False}
    assert abstains(0.39, cal) and not abstains(0.4, cal)
    assert abstains(0.45, cal, threshold=0.5) and not abstains(0.3, cal, threshold=0.2)  # explicit wins
    assert abstains(0.49, None) and not abstains(0.5, None)  # no calibration: the default flag
    assert not abstains(0.99, {"temperature": 1.0, "abstain_threshold": None}, default=0.5)


def test_calibration_file_round_trip(tmp_path):
    assert load_calibration(None) == {"temperature": 1.0, "abstain_threshold": None}
    assert load_calibration(tmp_path)["temperature"] == 1.0
    (tmp_path / "calibration.json").write_text(json.dumps({"temperature": 2.5, "abstain_threshold": 0.4}))
    assert load_calibration(tmp_path) == {"temperature": 2.5, "abstain_threshold": 0.4}


def test_predict_applies_the_saved_calibration(qwen_dir, tmp_path):
    from medqa.config import LoraSettings, ModelConfig
    from medqa.modeling import apply_lora, load_model
    from medqa.predict import answer

    model, tok = load_model(ModelConfig(name=str(qwen_dir)))
    apply_lora(model, LoraSettings()).save_pretrained(tmp_path)
    q, opts = "Which is the pacemaker of the heart?", ["SA node", "AV node", "Purkinje fibres", "Bundle of His"]
    plain, _ = load_model(ModelConfig(name=str(qwen_dir), adapter=str(tmp_path)))
    p1 = answer(plain, tok, q, opts, explain=False)
    (tmp_path / "calibration.json").write_text(json.dumps({"temperature": 0.05, "abstain_threshold": 0.99}))
    calibrated, _ = load_model(ModelConfig(name=str(qwen_dir), adapter=str(tmp_path)))
    p2 = answer(calibrated, tok, q, opts, explain=False)
    assert p2.letter == p1.letter
    assert p2.confidence > p1.confidence  # T < 1 sharpens
    assert p2.threshold == 0.99 and p1.threshold == 0.5  # the fitted abstention threshold is the default
    assert answer(calibrated, tok, q, opts, threshold=0.1, explain=False).threshold == 0.1


# ----------------------------------------------------------------------------- options that point at other options

def _mcq(*options: str, answer: int = 0, source: str = "medmcqa") -> MCQRecord:
    return MCQRecord(id="r", question="Which one?", options=list(options), answer=answer, source=source)


@pytest.mark.parametrize("options", [
    ("Fever", "Rash", "Jaundice", "All of the above"),
    ("Fever", "Rash", "Jaundice", "None of the above."),
    ("Fever", "Rash", "Both of the above", "None"),
    ("Fever", "Rash", "Jaundice", "all the above"),
    ("Fever", "Rash", "Jaundice", "None of above"),
    ("Fever", "Rash", "Jaundice", "All of these"),
    ("Fever", "Rash", "Jaundice", "None of these drugs"),  # "these" is the list of options, whatever noun follows
    ("Fever", "Rash", "Jaundice", "All of the following"),
    ("Fluorosis", "Dental Caries", "Both", "None"),  # the issue's example
    ("Fever", "Rash", "Both.", "Jaundice"),
    ("Fever", "Rash", "Jaundice", "None."),
    ("Fever", "Rash", "Jaundice", "All"),
    ("Fever", "Rash", "Neither", "Jaundice"),
    ("Fever", "Rash", "Jaundice", "d)\tNone"),  # the option's own letter label is not part of it
    ("Fever", "Rash", "Jaundice", "Any of the above."),
    ("Smaller", "Larger", "Remain same", "Can be any of the above"),
    ("Mandible", "ZMC", "NOE", "First can be any of the above but it should end with maxilla"),
    ("Fever", "Rash", "Jaundice", "Some of the above"),
    ("Tension", "Torsion", "Compression", "Either of the three"),
    ("Distobuccal", "Mesiobuccal", "Palatal", "All are equal"),
    ("Foramen spinosum", "Foramen rotundum", "Foramen ovale", "All at same level"),
    ("Distal root", "Mesial root", "Both equally", "Does not arise at all"),
    ("Fever", "Rash", "Both A and B", "Jaundice"),
    ("Fever", "Rash", "Both AB", "Either AB"),
    ("Fever", "Rash", "Jaundice", "Both (A) & (C)"),
    ("Fever", "Rash", "Neither A nor B", "Jaundice"),
    ("Fever", "Rash", "Jaundice", "Either A or C"),
    ("Fever", "Rash", "Jaundice", "Only A"),
    ("Fever", "Rash", "Jaundice", "All except C"),
    ("Mandible", "Zygomatic arch", "NOE", "Any but end at lefort 1"),
    ("Ackerman", "Proffit", "Dewey", "Both 1 and 2"),
    ("Vertebral artery", "Spinal branch", "Spinal cord", "Both option 2 and 3"),
    ("Ethmoid bone", "Tongue", "Sphenoid", "Option 1 and 2"),
    ("Mercaptan", "Silicone", "Reversible hydrocolloid", "1 and 2"),  # beside content options: names options 1, 2
    ("Fever", "Rash", "A and B", "Jaundice"),
    ("Fever", "Rash", "Jaundice", "A, C"),
    ("Fever", "Rash", "Jaundice", "(A) & (C)"),
    ("Fever", "Rash", "Jaundice", "All above"),
], ids=lambda o: " | ".join(o)[-48:])
def test_options_pointing_at_other_options_are_caught(options):
    assert refers_to_positions(_mcq(*options))


@pytest.mark.parametrize("options", [
    ("Femur", "Tibia", "Ulna", "Radius"),
    ("Root", "Division", "Cord", "Trunk"),  # "C or d" is no letter set
    ("ab", "cd", "bd", "ac"),  # letter sets name statements in the stem
    ("1 and 3", "2 and 4", "1, 2 and 3", "4 only"),
    ("A,B", "A,C", "B,C", "ABC"),
    ("a only", "b only", "Both a and b", "Neither a nor b"),  # a, b are the stem's statements
    ("A", "B", "C", "D"),  # labels of a figure
    ("V", "Al", "Ti", "Al, V"),  # chemical elements
    ("AML", "ALL", "CML", "CLL"),  # acute lymphoblastic leukaemia
    ("Fever", "Rash", "Jaundice", "Both D and E"),  # no options D, E: not option letters
    ("Maxillary supporting cusp", "Mandibular supporting cusp", "Both maxillary and mandibular supporting cusps",
     "Either of the jaw’s supporting cusps"),  # content, not a reference
    ("Efficacy of the drug", "Non-efficacy", "Both efficacy and non-efficacy of the drug", "Either efficacy or non-efficacy"),
    ("Prolactin", "Only Prolactin", "Only Growth hormone", "Both Prolactin and Growth hormone"),
    ("Less force", "More force", "Both require same condensing force", "Manipulation is easy"),
    ("Line mesial", "Line distal", "Line lingual", "All lines are equal"),
    ("b,c,d true a false", "a, b true c,d false", "b,c true a,d false", "All true"),  # the stem's a-d
    ("All primary teeth", "All permanent teeth, except third molars", "Incisors", "Only molars"),
    ("Any surface of premolar", "Occlusal surface", "Lingual surface", "Facial surface"),
    ("Below SMAS & above fascia", "Above SMAS & below fascia", "Above both", "Below both"),
    ("1 cm above the ischial spine", "1 cm below the ischial spine", "At the spine", "Growth at the site following trauma"),
    ("Only a person certified can perform it", "All patients need X-ray only", "Glands, if any", "Type I only"),
    ("Is interdental gingiva", "Is below mucogingival fold", "c)\tCannot be separated by probe", "d)\tIs marginal gingiva"),
    ("A.Decrease in Km", "Decrease in Vmax", "Increase in both Km and Vmax", "No change"),
    ("Enzymes of only one of those is present", "Glycogenesis", "Glycogenolysis", "Gluconeogenesis"),
    ("Vaccinate all above 40 years", "Screen all below 5 years", "Glycogenolysis", "Gluconeogenesis"),
    ("ab", "cd", "Both a and b", "Neither c nor d"),  # a-d are the stem's statements
], ids=lambda o: " | ".join(o)[-48:])
def test_options_that_do_not_point_at_other_options(options):
    assert not refers_to_positions(_mcq(*options))


def test_the_issue_example_keeps_its_order_under_augmentation():
    r = _mcq("Fluorosis", "Dental Caries", "Both", "None", answer=2)
    out, info = augment_options([r], copies=2, seed=0)
    assert [o.options for o in out] == [r.options, r.options] and info["kept_order"] == 1


_REFERS_BEFORE = re.compile(  # the check before the fix, to measure what the fix changes
    r"\b(all|none|both|neither|either)\b.{0,12}\b(above|below|of these|of the|options?)\b"
    r"|\b(both|only)\s+\(?[a-e1-5]\)?\s*(,|and|&|or)\s*\(?[a-e1-5]\)?\b"
    r"|^\s*\(?[a-e]\)?\s*(,|and|&)\s*\(?[a-e]\)?\s*$",
    re.IGNORECASE,
)
LABELS = Path(__file__).parent / "data" / "medmcqa_validation_refers.json"


def refers_numbers(records: list[MCQRecord], labels: dict) -> dict[str, dict[str, int]]:
    """Caught / missed of the hand-labelled positives and false positives (on the labelled hard negatives and on
    every other question of the file), before and after the fix."""
    pos = {e["id"] for e in labels["positives"]}
    hard = {e["id"] for e in labels["hard_negatives"]}
    checks = {"before": lambda r: any(_REFERS_BEFORE.search(o) for o in r.options), "after": refers_to_positions}
    out = {}
    for name, check in checks.items():
        flagged = {r.id for r in records if check(r)}
        out[name] = {"positives": len(pos), "caught": len(flagged & pos), "missed": len(pos - flagged),
                     "fp_hard_negatives": len(flagged & hard), "hard_negatives": len(hard),
                     "fp_all_others": len(flagged - pos), "others": len(records) - len(pos)}
    return out


def test_real_medmcqa_options_that_point_at_other_options():
    """Hand-labelled MedMCQA validation (tests/data/medmcqa_validation_refers.json): every positive is caught and
    few questions are flagged that are not. Numbers: pytest -s -k real_medmcqa_options tests/test_calibrate.py"""
    from conftest import MEDMCQA_VALIDATION

    from medqa.datasets import load_medmcqa

    if not MEDMCQA_VALIDATION.is_file():
        pytest.skip(f"{MEDMCQA_VALIDATION} not present")
    labels = json.loads(LABELS.read_text(encoding="utf-8"))
    records, _ = load_medmcqa(str(MEDMCQA_VALIDATION))
    assert len(records) == labels["n_questions"]
    nums = refers_numbers(records, labels)
    for name, v in nums.items():
        print(f"{name}: caught {v['caught']} of {v['positives']}, missed {v['missed']}; false positives "
              f"{v['fp_hard_negatives']} of {v['hard_negatives']} hard negatives, {v['fp_all_others']} of "
              f"{v['others']} other questions")
    after = nums["after"]
    missed = sorted(r.id for r in records if r.id in {e["id"] for e in labels["positives"]} and not refers_to_positions(r))
    assert after["missed"] == 0, missed
    assert after["fp_hard_negatives"] <= 2 and after["fp_all_others"] <= 5


def test_pubmedqa_labels_keep_their_order_under_augmentation():
    """yes / no / maybe is a fixed label set, not options: augmentation never shuffles it."""
    recs = [MCQRecord(id=f"p{a}", question="Does X work?", options=["yes", "no", "maybe"], answer=a, source="pubmedqa")
            for a in (0, 0, 0, 1, 2, 0)]
    out, info = augment_options(recs, copies=2, seed=0)
    assert all(r.options == ["yes", "no", "maybe"] for r in out)
    assert [r.answer for r in out] == [r.answer for r in recs] * 2 and info["kept_order"] == 6
