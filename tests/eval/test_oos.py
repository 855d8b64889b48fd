"""Out-of-scope detection arithmetic (zerolm.eval.oos): scores, AUROC, threshold
calibration and the reported figures, against hand computations."""

import math

import numpy as np
import pytest
import torch

from zerolm.eval.oos import (
    auroc,
    best_in_scope,
    calibrate,
    candidate_thresholds,
    cross_calibrate,
    decide,
    oos_metrics,
    oos_scores,
    score_histogram,
)


def test_auroc_equals_the_hand_count_of_pairs_with_ties():
    # in scope 0.1 0.4 0.4 0.8; out of scope 0.4 0.9 0.35. Pairs (oos, in) won / tied:
    # 0.4 beats 0.1, ties both 0.4s, loses to 0.8: 1 + 0.5 + 0.5 = 2
    # 0.9 beats all four: 4; 0.35 beats 0.1 only: 1. AUROC = 7 / 12
    scores = [0.1, 0.4, 0.4, 0.8, 0.4, 0.9, 0.35]
    is_oos = [False] * 4 + [True] * 3
    assert auroc(scores, is_oos) == pytest.approx(7 / 12)
    assert auroc([0.1, 0.2], [False, True]) == 1.0 and auroc([0.3, 0.2], [False, True]) == 0.0
    assert auroc([0.5, 0.5], [False, True]) == 0.5  # a tie counts one half
    assert auroc([0.1, 0.2], [False, False]) is None  # no oos example: undefined, not 0


def test_auroc_equals_sklearn_on_random_scores_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(5):
        scores = np.round(rng.normal(size=300), 1)  # rounding makes many ties
        is_oos = rng.random(300) < 0.2
        scores[is_oos] += 0.7
        assert auroc(scores, is_oos) == pytest.approx(metrics.roc_auc_score(is_oos, scores), abs=1e-12)


def test_scores_read_higher_as_more_out_of_scope_and_skip_the_oos_class():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 5.0]])
    p = logits.softmax(-1)
    # no oos class: 1 - the max probability; energy over every logit
    assert oos_scores(logits, "msp").tolist() == pytest.approx((1 - p.max(-1).values).tolist())
    assert oos_scores(logits, "energy").tolist() == pytest.approx((-torch.logsumexp(logits, -1)).tolist())
    # class 2 is oos: the best in-scope probability (the softmax keeps oos's share) ...
    assert oos_scores(logits, "msp", 2).tolist() == pytest.approx([1 - p[0, 0].item(), 1 - p[1, 0].item()])
    # ... and energy over the in-scope logits only: a big oos logit must not look in scope
    assert oos_scores(logits, "energy", 2).tolist() == pytest.approx([-math.log(math.e ** 2 + 1), -math.log(2)])
    assert best_in_scope(p, 2).tolist() == [0, 0] and best_in_scope(p, None).tolist() == [0, 2]
    with pytest.raises(ValueError, match="unknown out-of-scope score 'maha'"):
        oos_scores(logits, "maha")


# a toy calibration set: in scope (the first four; the third misclassified), then oos
TOY_SCORES = [0.1, 0.2, 0.3, 0.6, 0.5, 0.7, 0.9]
TOY_CORRECT = [True, True, False, True, False, False, False]
TOY_OOS = [False] * 4 + [True] * 3
NONE_FORCED = [False] * 7


def test_candidate_thresholds_sit_halfway_between_scores():
    assert candidate_thresholds(TOY_SCORES).tolist() == pytest.approx(
        [0.1 - 1, 0.15, 0.25, 0.4, 0.55, 0.65, 0.8, 0.9])


def test_balanced_calibration_maximises_in_scope_accuracy_plus_oos_recall():
    # by hand, in-scope accuracy (of 4) + oos recall (of 3) at each candidate:
    # -0.9: 0 + 1; 0.15: .25 + 1; 0.25: .5 + 1; 0.4: .5 + 1; 0.55: .5 + 2/3; 0.65: .75 + 2/3;
    # 0.8: .75 + 1/3; 0.9: .75 + 0. Best 1.5 at 0.25 and 0.4: ties go to the higher
    assert calibrate(TOY_SCORES, TOY_CORRECT, TOY_OOS, NONE_FORCED) == pytest.approx(0.4)
    # predicting the oos class flags a query whatever the threshold: with the oos query at
    # 0.5 caught by the class, 0.65 keeps the in-scope 0.6 and still flags every oos query:
    # .75 + 1, the best
    forced = [False] * 4 + [True, False, False]
    assert calibrate(TOY_SCORES, TOY_CORRECT, TOY_OOS, forced) == pytest.approx(0.65)


def test_in_scope_recall_calibration_keeps_the_asked_share_in_scope():
    kw = {"rule": "in_scope_recall"}
    assert calibrate(TOY_SCORES, TOY_CORRECT, TOY_OOS, NONE_FORCED, target=0.75, **kw) == pytest.approx(0.4)
    assert calibrate(TOY_SCORES, TOY_CORRECT, TOY_OOS, NONE_FORCED, target=0.5, **kw) == pytest.approx(0.25)
    assert calibrate(TOY_SCORES, TOY_CORRECT, TOY_OOS, NONE_FORCED, target=1.0, **kw) == pytest.approx(0.65)
    # no oos example needed
    assert calibrate(TOY_SCORES[:4], TOY_CORRECT[:4], TOY_OOS[:4], NONE_FORCED[:4], target=0.75,
                     **kw) == pytest.approx(0.45)
    # the oos class already rejects an in-scope query: 100% cannot be kept, the threshold flags none
    forced = [True] + [False] * 6
    t = calibrate(TOY_SCORES, TOY_CORRECT, TOY_OOS, forced, target=1.0, **kw)
    assert t == max(TOY_SCORES) and not (np.asarray(TOY_SCORES) > t).any()


def test_decisions_and_metrics_equal_a_hand_count():
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.3])
    decided = decide(scores, [False, False, True, False, False], 0.5)
    assert decided.tolist() == [False, True, True, True, False]
    assert decide(scores, [False, False, True, False, False], None).tolist() == [False, False, True, False, False]
    # in scope: rows 0-2 (row 1 flagged, row 2 flagged by the class); oos: rows 3-4
    m = oos_metrics([False, False, False, True, True], decided, [True, True, True, False, False])
    assert m["in_scope_accuracy"] == pytest.approx(1 / 3)  # an oos decision on an in-scope query is wrong
    assert m["oos_recall"] == 0.5 and m["oos_precision"] == pytest.approx(1 / 3)
    assert m["oos_f1"] == pytest.approx(2 * 0.5 / 3 / (0.5 + 1 / 3))
    assert (m["n_in_scope"], m["n_oos"], m["n_flagged"]) == (3, 2, 3)
    none = oos_metrics([False, True], [False, False], [True, False])
    assert none["oos_recall"] == 0.0 and none["oos_precision"] is None  # nothing flagged: undefined


def test_cross_calibration_judges_each_fold_at_the_other_folds_threshold():
    rng = np.random.default_rng(1)
    s = rng.random(40)
    y = rng.random(40) < 0.3
    s[y] += 0.3
    ok = rng.random(40) < 0.9
    forced = np.zeros(40, dtype=bool)
    folds = np.arange(40) % 2
    decided, ts = cross_calibrate(s, ok, y, forced, folds)
    for f in (0, 1):
        other = folds != f
        t = calibrate(s[other], ok[other], y[other], forced[other])
        assert ts[f] == t
        assert (decided[folds == f] == (s[folds == f] > t)).all()


def test_histogram_counts_every_score_once():
    h = score_histogram([0.0, 0.5, 1.0, 0.25], [False, False, True, True], bins=4)
    assert len(h["edges"]) == 5 and sum(h["in_scope"]) == 2 and sum(h["oos"]) == 2
    assert h["oos"][-1] == 1  # the maximum falls in the last bin
