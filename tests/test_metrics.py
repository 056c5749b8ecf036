from __future__ import annotations

import statistics

import pytest

from vlsweep.metrics import corpus_cer, grounding_scores, iou


def test_cer_is_corpus_level_not_a_mean_of_rates():
    # 1 edit over 10 chars and 1 edit over 2 chars: corpus 2/12, the mean of rates would be 0.3.
    assert corpus_cer(["ABCDEFGHIX", "AX"], ["ABCDEFGHIJ", "AB"]) == pytest.approx(2 / 12)


def test_cer_exact_match_is_zero_and_empty_prediction_costs_the_reference():
    assert corpus_cer(["HELLO"], ["HELLO"]) == 0.0
    assert corpus_cer([""], ["HELLO"]) == 1.0
    assert corpus_cer(["", "AB"], ["ABC", "AB"]) == pytest.approx(3 / 5)


def test_cer_counts_insertions_so_it_can_exceed_one():
    assert corpus_cer(["ABCDEF"], ["AB"]) == pytest.approx(4 / 2)


def test_cer_with_empty_references():
    assert corpus_cer([""], [""]) == 0.0
    assert corpus_cer(["X"], [""]) == 1.0
    with pytest.raises(ValueError):
        corpus_cer(["a"], ["a", "b"])


def test_iou_hand_cases():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 10, 10), (0, 0, 5, 5)) == pytest.approx(25 / 100)
    assert iou(None, (0, 0, 10, 10)) == 0.0


def test_unparseable_answers_score_zero_and_count_as_parse_failures():
    scores = grounding_scores(
        [(0, 0, 10, 10), None, (0, 0, 5, 10)], [(0, 0, 10, 10), (0, 0, 10, 10), (0, 0, 10, 10)]
    )
    assert scores["iou"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    assert scores["acc_iou50"] == pytest.approx(2 / 3)
    assert scores["parse_fail_rate"] == pytest.approx(1 / 3)
    # The standard error of that mean over the three samples (sample s.d. / sqrt(n)).
    assert scores["iou_se"] == pytest.approx(statistics.stdev([1.0, 0.0, 0.5]) / 3**0.5)
