"""The confusion matrix and its scores against hand computations."""

import numpy as np
import pytest

import semla


def test_counts_and_scores_by_hand():
    pred = np.array([[0, 0, 1], [1, 2, 2]], dtype=np.uint16)
    gt = np.array([[0, 1, 1], [1, 2, 255]], dtype=np.uint8)
    cm = semla.ConfusionMatrix(num_classes=3, ignore=255)
    report = cm.update(pred, gt)
    assert report["counted"] == 5 and report["ignored"] == 1
    want = np.zeros((3, 3), dtype=np.uint64)
    for p, g in zip(pred.ravel(), gt.ravel()):
        if g != 255:
            want[g, p] += 1
    np.testing.assert_array_equal(cm.matrix, want)
    scores = cm.scores()
    # IoU_c = TP / (TP + FP + FN): class 0: 1/(1+0+1)... by hand.
    iou = [1 / 2, 2 / 3, 1 / 1]
    assert scores["mean_iou"] == pytest.approx(np.mean(iou))
    assert [c["iou"] for c in scores["classes"]] == pytest.approx(iou)
    assert scores["pixel_accuracy"] == pytest.approx(4 / 5)


def test_definitions_differ_on_absent_classes():
    cm = semla.ConfusionMatrix(3, ignore=None)
    cm.update(np.array([0, 2]), np.array([0, 0]))
    assert cm.scores("cityscapes")["mean_iou"] == pytest.approx((1 / 2 + 0) / 2)
    assert cm.scores("detectron2")["mean_iou"] == pytest.approx(1 / 2)
    with pytest.raises(semla.SemlaError, match="unknown definition"):
        cm.scores("coco")


def test_merge_adds_counts_and_checks_classes():
    a, b = semla.ConfusionMatrix(2), semla.ConfusionMatrix(2)
    a.update(np.array([0, 1]), np.array([0, 0]))
    b.update(np.array([1, 1]), np.array([1, 1]))
    a.merge(b)
    np.testing.assert_array_equal(a.matrix, [[1, 1], [0, 2]])
    with pytest.raises(semla.ShapeError, match="merge"):
        a.merge(semla.ConfusionMatrix(3))


def test_bad_label_arrays_are_shape_errors():
    cm = semla.ConfusionMatrix(2)
    with pytest.raises(semla.ShapeError, match="shape"):
        cm.update(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))
    with pytest.raises(semla.ShapeError, match="not a class"):
        cm.update(np.array([5]), np.array([0]))
    with pytest.raises(semla.ShapeError, match="integer"):
        cm.update(np.array([0.5]), np.array([0]))
    with pytest.raises(semla.ShapeError, match="not a label"):
        cm.update(np.array([-1]), np.array([0]))
    assert int(cm.matrix.sum()) == 0


def test_scores_equal_semla_metrics(fixtures, semla_cli, tmp_path):
    """SemLA's predictions on the fixture photos, scored in Python and by the CLI."""
    sl = semla.SemLA(fixtures / "model", fixtures / "library", top_k=2)
    # The CLI scores the same predictions, read from the PNGs `semla segment --labels` wrote.
    semla_cli(
        "segment", "--model", fixtures / "model", "--library", fixtures / "library", "--top-k", "2",
        "--out", tmp_path / "masks", "--labels", tmp_path / "pred",
        fixtures / "images" / "fog.png", fixtures / "images" / "night.png",
    )
    for definition in ("cityscapes", "detectron2"):
        cm = semla.ConfusionMatrix(10, ignore=255)
        for name in ("fog", "night"):
            labels = sl.segment(fixtures / "images" / f"{name}.png").labels
            cm.update(labels, semla.read_label_map(fixtures / "truth" / f"{name}.png"))
        cli = semla_cli(
            "metrics", "--pred", tmp_path / "pred", "--gt", fixtures / "truth",
            "--num-classes", "10", "--definition", definition,
        )
        ours = cm.scores(definition)
        assert ours["mean_iou"] * 100 == pytest.approx(cli["miou"], abs=1e-9)
        assert ours["pixel_accuracy"] * 100 == pytest.approx(cli["pixel_accuracy"], abs=1e-9)
        assert ours["counted_pixels"] == cli["counted_pixels"] == 2 * 48 * 64
        assert 0 < ours["mean_iou"] < 1
