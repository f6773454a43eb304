import numpy as np
import pytest

from napari_uad import metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _tied_data(seed, n=4000, levels=12):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random(n) * levels) / levels
    truth = rng.random(n) < 0.05 + 0.4 * scores
    return scores.astype(np.float32), truth


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_ap_match_sklearn_with_ties(seed):
    scores, truth = _tied_data(seed)
    assert metrics.auroc(scores, truth) == pytest.approx(
        sklearn_metrics.roc_auc_score(truth, scores), abs=1e-12
    )
    assert metrics.average_precision(scores, truth) == pytest.approx(
        sklearn_metrics.average_precision_score(truth, scores), abs=1e-12
    )


def test_continuous_scores_match_sklearn():
    rng = np.random.default_rng(7)
    scores = rng.normal(size=(30, 40, 5))
    truth = scores + rng.normal(size=scores.shape) > 1.5
    assert metrics.auroc(scores, truth) == pytest.approx(
        sklearn_metrics.roc_auc_score(truth.ravel(), scores.ravel()), abs=1e-12
    )
    assert metrics.average_precision(scores, truth) == pytest.approx(
        sklearn_metrics.average_precision_score(truth.ravel(), scores.ravel()), abs=1e-12
    )


def test_mask_restricts_evaluation():
    rng = np.random.default_rng(3)
    scores = np.round(rng.random((20, 30)) * 8)
    truth = rng.random((20, 30)) < 0.2
    mask = np.zeros((20, 30), dtype=bool)
    mask[3:17, 5:25] = True
    scores[~mask] = 100.0
    expected_auc = sklearn_metrics.roc_auc_score(truth[mask], scores[mask])
    expected_ap = sklearn_metrics.average_precision_score(truth[mask], scores[mask])
    assert metrics.auroc(scores, truth, mask=mask) == pytest.approx(expected_auc, abs=1e-12)
    assert metrics.average_precision(scores, truth, mask=mask) == pytest.approx(
        expected_ap, abs=1e-12
    )
    result = metrics.evaluate(scores, truth, mask=mask)
    assert result["auroc"] == pytest.approx(expected_auc, abs=1e-12)
    assert result["ap"] == pytest.approx(expected_ap, abs=1e-12)


def _brute_best_dice(scores, truth):
    best, best_threshold = -1.0, None
    for threshold in np.unique(scores)[::-1]:
        value = metrics.dice(scores >= threshold, truth)
        if value > best:
            best, best_threshold = value, threshold
    return best, best_threshold


@pytest.mark.parametrize("seed", range(4))
def test_best_dice_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random((12, 14)) * 20) / 20
    truth = rng.random((12, 14)) < 0.1 + 0.5 * scores
    best, threshold = metrics.best_dice(scores, truth)
    expected, expected_threshold = _brute_best_dice(scores, truth)
    assert best == pytest.approx(expected, abs=1e-12)
    assert threshold == pytest.approx(expected_threshold)
    assert metrics.dice(scores >= threshold, truth) == pytest.approx(best, abs=1e-12)


def test_best_dice_with_mask_and_thresholds_grid():
    rng = np.random.default_rng(11)
    scores = rng.random((16, 16))
    truth = scores + 0.3 * rng.random((16, 16)) > 0.9
    mask = np.ones((16, 16), dtype=bool)
    mask[:, :3] = False
    exact, _ = metrics.best_dice(scores, truth, mask=mask)
    brute, _ = _brute_best_dice(scores[mask], truth[mask])
    assert exact == pytest.approx(brute, abs=1e-12)
    approx, threshold = metrics.best_dice(scores, truth, mask=mask, n_thresholds=64)
    assert approx <= exact + 1e-12
    assert approx > exact - 0.1
    assert metrics.dice(scores[mask] >= threshold, truth[mask]) == pytest.approx(approx)


def test_perfect_and_inverted_scores():
    truth = np.zeros((8, 8), dtype=bool)
    truth[2:4, 2:5] = True
    scores = truth.astype(float) + 0.1
    result = metrics.evaluate(scores, truth, threshold=0.5)
    assert result == {
        "auroc": 1.0,
        "ap": 1.0,
        "best_dice": 1.0,
        "best_threshold": 1.1,
        "dice_at_threshold": 1.0,
    }
    assert metrics.auroc(-scores, truth) == 0.0


def test_constant_scores_give_chance_auroc():
    truth = np.zeros(10, dtype=bool)
    truth[:3] = True
    scores = np.ones(10)
    assert metrics.auroc(scores, truth) == 0.5
    assert metrics.average_precision(scores, truth) == pytest.approx(0.3)
    assert metrics.best_dice(scores, truth) == (pytest.approx(2 * 3 / 13), 1.0)


def test_integer_scores_are_accepted():
    scores = np.array([0, 1, 2, 3, 3, 5])
    truth = np.array([0, 0, 1, 0, 1, 1])
    assert metrics.auroc(scores, truth) == pytest.approx(
        sklearn_metrics.roc_auc_score(truth, scores)
    )


def test_dice_edge_cases():
    empty = np.zeros((4, 4), dtype=bool)
    full = np.ones((4, 4), dtype=bool)
    assert metrics.dice(empty, empty) == 1.0
    assert metrics.dice(empty, full) == 0.0
    assert metrics.dice(full, full) == 1.0
    half = empty.copy()
    half[:2] = True
    assert metrics.dice(half, full) == pytest.approx(2 * 8 / (8 + 16))
    assert metrics.dice(half.astype(np.uint8) * 7, half) == 1.0


def test_best_dice_on_empty_truth():
    scores = np.array([0.1, 0.5, 0.9])
    best, threshold = metrics.best_dice(scores, np.zeros(3, dtype=bool))
    assert best == 1.0
    assert threshold > 0.9
    assert not (scores >= threshold).any()


def test_errors():
    scores = np.random.default_rng(0).random((5, 5))
    truth = np.zeros((5, 5), dtype=bool)
    with pytest.raises(ValueError, match="no positive"):
        metrics.auroc(scores, truth)
    with pytest.raises(ValueError, match="no negative"):
        metrics.average_precision(scores, np.ones((5, 5)))
    truth[1, 1] = True
    mask = np.zeros((5, 5), dtype=bool)
    mask[3:, 3:] = True
    with pytest.raises(ValueError, match="no positive"):
        metrics.evaluate(scores, truth, mask=mask)
    with pytest.raises(ValueError, match="shape"):
        metrics.auroc(scores, truth[:4])
    with pytest.raises(ValueError, match="shape"):
        metrics.auroc(scores, truth, mask=mask[:4])
    with pytest.raises(ValueError, match="shape"):
        metrics.dice(truth, truth[:, :4])
    with pytest.raises(ValueError, match="empty"):
        metrics.auroc(scores, truth, mask=np.zeros((5, 5), dtype=bool))
    bad = scores.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.best_dice(bad, truth)
    with pytest.raises(ValueError, match="n_thresholds"):
        metrics.best_dice(scores, truth, n_thresholds=1)
