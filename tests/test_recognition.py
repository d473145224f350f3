"""Detection, alignment and embedding on real models and real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.vision.detections import Detections, box_iou
from engine.vision.image import read_image
from tests.conftest import IMAGES

ALL = ["multiface.jpg", "obama_and_biden.jpg", "obama.jpg", "obama2.jpg", "biden.jpg", "two_people.jpg",
       "obama-1080p.jpg"]


@pytest.mark.parametrize("fixture", ["analyzer", "scrfd_analyzer"])
@pytest.mark.parametrize(("image", "count"), [("multiface.jpg", 6), ("obama_and_biden.jpg", 3),
                                               ("two_people.jpg", 2), ("obama.jpg", 1)])
def test_face_counts(request: pytest.FixtureRequest, fixture: str, image: str, count: int) -> None:
    a = request.getfixturevalue(fixture)
    dets = a.detector.detect(read_image(IMAGES / image))
    assert len(dets) == count
    assert dets.landmarks.shape == (count, 5, 2)
    # landmarks lie inside their boxes: eyes above mouth
    assert np.all(dets.landmarks[:, :2, 1].mean(1) < dets.landmarks[:, 3:, 1].mean(1))


def test_yunet_and_scrfd_agree(analyzer, scrfd_analyzer) -> None:  # noqa: ANN001
    for name in ALL:
        img = read_image(IMAGES / name)
        a, b = analyzer.detector.detect(img), scrfd_analyzer.detector.detect(img)
        assert len(a) == len(b), name
        iou = box_iou(a.boxes, b.boxes)
        assert np.all(iou.max(axis=1) >= 0.5), (name, iou.max(axis=1))


def test_any_resolution_maps_back_to_original_coordinates(analyzer) -> None:  # noqa: ANN001
    img = read_image(IMAGES / "obama.jpg")
    base = analyzer.detector.detect(img)
    for scale in (0.3, 2.0):
        small = cv2.resize(img, None, fx=scale, fy=scale)
        d = analyzer.detector.detect(small)
        assert len(d) == 1
        assert box_iou(d.boxes / scale, base.boxes)[0, 0] > 0.8
    wide = cv2.copyMakeBorder(img, 0, 0, 600, 600, cv2.BORDER_CONSTANT)  # very wide frame
    d = analyzer.detector.detect(wide)
    assert len(d) == 1 and box_iou(d.boxes - [600, 0, 600, 0], base.boxes)[0, 0] > 0.8


def test_same_person_scores_clearly_above_different(analyzer) -> None:  # noqa: ANN001
    emb = {n: analyzer.single_face(read_image(IMAGES / n))[1] for n in ("obama.jpg", "obama2.jpg", "biden.jpg")}
    same = float(emb["obama.jpg"] @ emb["obama2.jpg"])
    diff = max(float(emb["obama.jpg"] @ emb["biden.jpg"]), float(emb["obama2.jpg"] @ emb["biden.jpg"]))
    assert same > 0.5
    assert diff < 0.25
    assert same - diff > 0.35
    # in the group photo, each enrolled face finds its own person
    group = analyzer.analyze(read_image(IMAGES / "obama_and_biden.jpg"))
    s_obama, s_biden = group.embeddings @ emb["obama.jpg"], group.embeddings @ emb["biden.jpg"]
    assert s_obama.max() > 0.5 and s_biden.max() > 0.5
    assert int(np.argmax(s_obama)) != int(np.argmax(s_biden))


def test_embeddings_are_unit_length(analyzer) -> None:  # noqa: ANN001
    res = analyzer.analyze(read_image(IMAGES / "multiface.jpg"))
    assert res.embeddings.shape == (6, analyzer.dim)
    np.testing.assert_allclose(np.linalg.norm(res.embeddings, axis=1), 1.0, atol=1e-5)


def test_batched_embedding_equals_single(analyzer) -> None:  # noqa: ANN001
    assert analyzer.models["embedder"].batched
    img = read_image(IMAGES / "multiface.jpg")
    dets = analyzer.detector.detect(img)
    crops = analyzer.aligner.align_all(img, dets)
    batch = analyzer.embedder.embed(crops)
    singles = np.concatenate([analyzer.embedder.embed(crops[i : i + 1]) for i in range(len(crops))])
    np.testing.assert_allclose(batch, singles, atol=1e-5)


@pytest.mark.parametrize("fixture", ["analyzer", "scrfd_analyzer"])
def test_batched_detection_equals_single(request: pytest.FixtureRequest, fixture: str) -> None:
    a = request.getfixturevalue(fixture)
    assert a.models["detector"].batched
    imgs = [read_image(IMAGES / n) for n in ("multiface.jpg", "two_people.jpg", "obama_and_biden.jpg")]
    # same frame size -> one batched call; include a duplicate so the batch really has >1 image
    imgs = [cv2.resize(im, (960, 540)) for im in imgs] + [cv2.resize(imgs[0], (960, 540))]
    batch = a.detector.detect_batch(imgs)
    for im, d in zip(imgs, batch, strict=True):
        single = a.detector.detect(im)
        assert len(single) == len(d)
        np.testing.assert_allclose(d.boxes, single.boxes, atol=1e-2)
    results = a.analyze_batch(imgs)
    assert [len(r.detections) for r in results] == [len(d) for d in batch]


def test_alignment_puts_eyes_on_template(analyzer) -> None:  # noqa: ANN001
    from engine.vision.align import ARCFACE_TEMPLATE, similarity_transform

    img = read_image(IMAGES / "obama.jpg")
    d = analyzer.detector.detect(img)
    m = similarity_transform(d.landmarks[0])
    pts = np.hstack([d.landmarks[0], np.ones((5, 1))]) @ m.T
    assert np.abs(pts - ARCFACE_TEMPLATE).max() < 8.0
    crop = analyzer.aligner.align(img, d.landmarks[0])
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8


def test_detections_container_checks_shapes() -> None:
    with pytest.raises(ValueError, match="boxes"):
        Detections(np.zeros((2, 3), np.float32), np.zeros((2, 5, 2), np.float32), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="landmarks"):
        Detections(np.zeros((2, 4), np.float32), np.zeros((1, 5, 2), np.float32), np.zeros(2, np.float32))
    d = Detections(np.zeros((3, 4), np.float32), np.zeros((3, 5, 2), np.float32), np.arange(3, dtype=np.float32))
    assert len(d[d.scores > 0]) == 2 and len(d[1]) == 1
