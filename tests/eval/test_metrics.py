import pytest

from zerolm.eval.metrics import classification_report, format_report


def test_report_matches_hand_computed_values():
    # true:  a a a b b c ; pred: a b a b c c
    rep = classification_report([0, 0, 0, 1, 1, 2], [0, 1, 0, 1, 2, 2], ["a", "b", "c"])
    assert rep["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    a, b, c = (rep["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"]) == (1.0, pytest.approx(2 / 3))
    assert (b["precision"], b["recall"]) == (0.5, 0.5)
    assert (c["precision"], c["recall"], c["support"]) == (0.5, 1.0, 1)
    assert rep["accuracy"] == pytest.approx(4 / 6)
    assert rep["micro"]["f1"] == pytest.approx(4 / 6)  # single-label: micro F1 = accuracy
    assert rep["macro"]["f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert rep["weighted"]["f1"] == pytest.approx((0.8 * 3 + 0.5 * 2 + 2 / 3) / 6)
    assert "weighted avg" in format_report(rep)
