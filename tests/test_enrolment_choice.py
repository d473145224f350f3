"""Which face of a photo is enrolled: the one that dominates by size and position, the same through
the gRPC service, the CLI and the console; comparable faces are refused, naming their boxes.

The photos are real: an ID-style photo (obama.jpg, centred) with a larger face cut off at its left edge
(biden.jpg, half outside the frame), and real group photos. Identities are checked with the real
embedder against other photos of the same people."""

from __future__ import annotations

from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from engine.client import Client, encode_jpeg
from engine.config import Config
from engine.errors import MultipleFacesError, NoFaceError
from engine.service.proto import pb
from engine.service.server import FaceEngineServer
from engine.vision.enrolment import FaceChoice, choose_enrolment_face, fmt_box
from engine.vision.image import read_image
from tests.conftest import IMAGES


def id_photo_with_a_cut_off_face() -> np.ndarray:
    """obama.jpg at half size (face about 122 px, centred) with biden's face pasted at the left edge,
    half of it outside the frame (its box about 135 px: larger than the subject's)."""
    out = cv2.resize(read_image(IMAGES / "obama.jpg"), (455, 568))
    other = read_image(IMAGES / "biden.jpg")[150:620, 380:760]
    h, w = other.shape[:2]
    out[60:60 + h, :w - w // 2] = other[:, w // 2:]
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def refs(analyzer) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Embeddings of other photos of the two people (one face each)."""
    return {n: analyzer.single_face(read_image(IMAGES / f"{n}.jpg"))[1] for n in ("obama2", "biden")}


def _is_obama(emb: np.ndarray, refs: dict[str, np.ndarray]) -> bool:
    return _cos(emb, refs["obama2"]) > _cos(emb, refs["biden"]) + 0.1


# ---- the rule, on boxes ------------------------------------------------------------------------
def test_rule_prefers_a_centred_face_to_a_larger_one_cut_off_at_the_edge() -> None:
    boxes = np.array([[2, 100, 90, 200], [160, 80, 240, 170]], np.float32)  # 88 px at x=2; 80 px centred
    choice = choose_enrolment_face(boxes, 400, 300)
    assert choice.index == 1 and "2 faces found; enrolled the dominant face, box [160,80,240,170]" in choice.note
    assert choose_enrolment_face(boxes[:1], 400, 300) == FaceChoice(0, "")
    far_bigger = np.array([[150, 40, 300, 220], [10, 20, 50, 60]], np.float32)  # a bystander far smaller
    assert choose_enrolment_face(far_bigger, 400, 300).index == 0
    with pytest.raises(NoFaceError, match="no face found"):
        choose_enrolment_face(np.zeros((0, 4), np.float32), 400, 300)


def test_rule_refuses_comparable_faces_naming_their_boxes() -> None:
    boxes = np.array([[60, 100, 160, 200], [240, 100, 338, 198], [380, 0, 398, 18]], np.float32)
    with pytest.raises(MultipleFacesError) as err:
        choose_enrolment_face(boxes, 400, 300, "photo.jpg")
    msg = str(err.value)
    assert msg.startswith("photo.jpg: 3 faces found and none dominates")
    assert "[60,100,160,200]" in msg and "[240,100,338,198]" in msg and "[380,0,398,18]" not in msg


# ---- real photos, each enrolment path ----------------------------------------------------------
def test_analyzer_enrols_the_centred_subject_not_the_larger_cut_off_face(analyzer, refs) -> None:  # noqa: ANN001
    img = id_photo_with_a_cut_off_face()
    dets = analyzer.detector.detect(img)
    assert len(dets) == 2
    edge = int(np.argmin(dets.boxes[:, 0]))
    assert dets.boxes[edge][0] <= 2 and int(np.argmax(dets.sizes)) == edge  # the cut-off face is the largest
    det, emb, note = analyzer.enrol_face(img, "id.jpg")
    assert _is_obama(emb, refs), "enrolled the cut-off face"
    assert det.boxes[0][0] > 150 and note.startswith("id.jpg: 2 faces found; enrolled the dominant face, box [")
    with pytest.raises(MultipleFacesError, match="id.jpg: 2 faces found"):
        analyzer.enrol_face(img, "id.jpg", strict=True)
    for name in ("two_people", "multiface", "obama_and_biden"):  # group photos: no face dominates
        with pytest.raises(MultipleFacesError, match="none dominates: boxes \\[") as err:
            analyzer.enrol_face(read_image(IMAGES / f"{name}.jpg"), name)
        assert "crop the image to the person to enrol" in str(err.value)


def test_grpc_and_console_preview_make_the_same_choice(cfg: Config, analyzer, refs,  # noqa: ANN001
                                                        tmp_path: Path) -> None:
    photo = tmp_path / "id.jpg"
    photo.write_bytes(encode_jpeg(id_photo_with_a_cut_off_face()))
    group = (IMAGES / "two_people.jpg").read_bytes()
    img = read_image(photo)
    dets = analyzer.detector.detect(img)
    chosen = fmt_box(dets.boxes[choose_enrolment_face(dets.boxes, img.shape[1], img.shape[0]).index])
    gdets = analyzer.detector.detect(read_image(IMAGES / "two_people.jpg"))
    group_boxes = [fmt_box(b) for b in gdets.boxes]
    assert len(group_boxes) == 2
    cfg.auth.enabled = False
    cfg.server.host, cfg.server.port = "127.0.0.1", 0
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    try:
        with Client(srv.address) as c:
            c.ensure_watchlist("ids")
            p = c.enroll("ids", "subject", [photo.read_bytes()])
            assert len(p.notes) == 1 and f"enrolled the dominant face, box {chosen}" in p.notes[0]
            prev = c.watchlists.DetectFaces(pb.DetectFacesRequest(image=pb.Image(encoded=photo.read_bytes())))
            assert len(prev.faces) == 2 and prev.problem == "" and prev.crop  # the preview shows that face
            crop = cv2.imdecode(np.frombuffer(prev.crop, np.uint8), cv2.IMREAD_COLOR)
            assert _is_obama(analyzer.largest_face(crop)[1], refs)
            def search(name: str) -> list[str]:
                res = c.matches.SearchByImage(pb.SearchRequest(image=pb.Image(
                    encoded=(IMAGES / f"{name}.jpg").read_bytes()), top_k=1))
                return [h.person_id for h in res.hits if h.is_match]

            assert search("obama2") == ["subject"]  # another photo of the subject finds it
            assert search("biden") == []  # the cut-off face's owner does not
            with pytest.raises(grpc.RpcError) as err:
                c.enroll("ids", "group", [group])
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert all(b in err.value.details() for b in group_boxes), err.value.details()
            prev = c.watchlists.DetectFaces(pb.DetectFacesRequest(image=pb.Image(encoded=group)))
            assert not prev.crop and "none dominates" in prev.problem and all(b in prev.problem for b in group_boxes)
            assert [x.person_id for x in c.watchlists.ListPersons(pb.ListPersonsRequest(watchlist="ids")).persons] \
                == ["subject"]
    finally:
        srv.stop(grace=1)


def test_cli_makes_the_same_choice(analyzer, model_dir: Path, tmp_path: Path,  # noqa: ANN001
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli.main import main as cli

    photo = tmp_path / "id.jpg"
    photo.write_bytes(encode_jpeg(id_photo_with_a_cut_off_face()))
    img = read_image(photo)
    dets = analyzer.detector.detect(img)
    chosen = fmt_box(dets.boxes[choose_enrolment_face(dets.boxes, img.shape[1], img.shape[0]).index])
    group_boxes = [fmt_box(b) for b in analyzer.detector.detect(read_image(IMAGES / "two_people.jpg")).boxes]
    capsys.readouterr()  # one run (one model load): the ID photo is taken, then the group photo refused
    assert cli(["enroll-local", "--model-dir", str(model_dir), "--db", str(tmp_path / "cli.db"), "--create",
                "--person", "p", str(photo), str(IMAGES / "two_people.jpg")]) == 1
    err = capsys.readouterr().err
    assert f"note: {photo}: 2 faces found; enrolled the dominant face, box {chosen}" in err
    assert "two_people.jpg: 2 faces found and none dominates" in err and all(b in err for b in group_boxes)
    assert "Traceback" not in err
