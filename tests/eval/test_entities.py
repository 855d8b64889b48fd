"""Entity-level scores equal seqeval's (default, conlleval-compatible mode)."""

import random
import warnings

import pytest

from zerolm.eval.entities import entities, entity_report, format_entity_report

seqeval = pytest.importorskip("seqeval.metrics")
from seqeval.metrics.sequence_labeling import get_entities  # noqa: E402

TAGS = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC-X", "I-MISC-X"]

# ill-formed sequences a tagger without a CRF produces, and what conlleval makes of them
ILL_FORMED = [
    ["I-PER", "I-PER", "O"],  # an entity that starts with I-
    ["B-PER", "I-LOC", "I-LOC"],  # the type changes inside an entity
    ["O", "I-ORG", "B-ORG", "I-ORG"],  # stray I- then a proper entity
    ["B-LOC", "B-LOC", "I-LOC", "I-PER"],
    ["I-LOC"],
    ["B-PER"],
    [],
]


def _seqeval(y_true, y_pred) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined-metric warnings for types never predicted
        return seqeval.classification_report(y_true, y_pred, output_dict=True)


def _assert_same(ours: dict, ref: dict) -> None:
    types = [k for k in ref if not k.endswith(" avg")]
    assert list(ours["per_type"]) == types
    rows = [(ours["per_type"][t], ref[t]) for t in types]
    rows += [(ours[avg], ref[f"{avg} avg"]) for avg in ("micro", "macro", "weighted")]
    for mine, theirs in rows:
        for k in ("precision", "recall"):
            assert mine[k] == pytest.approx(float(theirs[k]), abs=1e-12)
        assert mine["f1"] == pytest.approx(float(theirs["f1-score"]), abs=1e-12)
        assert mine["support"] == int(theirs["support"])


def test_entities_chunk_ill_formed_sequences_as_seqeval():
    for seq in ILL_FORMED:
        assert entities(seq) == get_entities(seq), seq
    assert entities(["I-PER", "I-PER", "O", "B-LOC", "I-PER"]) == [("PER", 0, 1), ("LOC", 3, 3), ("PER", 4, 4)]


@pytest.mark.parametrize("seed", range(5))
def test_report_equals_seqeval_on_random_predictions(seed):
    rng = random.Random(seed)
    y_true, y_pred = [], []
    for _ in range(60):
        n = rng.randint(0, 12)
        gold = [rng.choice(TAGS) for _ in range(n)]
        # a prediction that mostly agrees, with some random (often ill-formed) tags
        pred = [g if rng.random() < 0.7 else rng.choice(TAGS) for g in gold]
        y_true.append(gold)
        y_pred.append(pred)
    y_true += ILL_FORMED
    y_pred += [list(reversed(s)) for s in ILL_FORMED]
    ours = entity_report(y_true, y_pred)
    _assert_same(ours, _seqeval(y_true, y_pred))
    for seq in y_true + y_pred:
        assert entities(seq) == get_entities(seq)


def test_types_only_predicted_or_only_gold_and_perfect_predictions():
    y_true = [["B-PER", "I-PER", "O"], ["B-LOC", "O", "O"]]
    y_pred = [["B-PER", "I-PER", "O"], ["O", "O", "B-ORG"]]
    ours = entity_report(y_true, y_pred)
    _assert_same(ours, _seqeval(y_true, y_pred))
    assert ours["per_type"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    perfect = entity_report(y_true, y_true)
    assert perfect["micro"]["f1"] == 1.0 and perfect["micro"]["support"] == 2


def test_no_entities_anywhere_gives_zeros_where_seqeval_gives_nan_for_macro():
    ours = entity_report([["O", "O"]], [["O", "O"]])
    ref = _seqeval([["O", "O"]], [["O", "O"]])
    assert ours["per_type"] == {}
    assert ours["micro"]["f1"] == ref["micro avg"]["f1-score"] == 0.0
    assert ours["weighted"]["f1"] == ref["weighted avg"]["f1-score"] == 0.0
    assert ours["macro"]["f1"] == 0.0  # seqeval: nan (mean of no types)


def test_bad_input_is_an_error_and_the_table_lists_every_type():
    with pytest.raises(ValueError, match="not an IOB tag: 'PER'"):
        entities(["PER"])
    with pytest.raises(ValueError, match="sentence 0: 2 gold tags but 1 predicted"):
        entity_report([["O", "O"]], [["O"]])
    text = format_entity_report(entity_report([["B-PER", "B-LOC"]], [["B-PER", "O"]]))
    assert "PER" in text and "LOC" in text and "micro avg" in text and "weighted avg" in text
