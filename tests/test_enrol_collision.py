"""Enrolling under an existing person id, over gRPC with real photos: another person's face is refused
(FAILED_PRECONDITION naming the person and the way out), the same photo twice is refused as a duplicate
(ALREADY_EXISTS), the display name is never silently overwritten, and add_to_existing adds on purpose."""

from __future__ import annotations

import cv2
import grpc
import pytest

from engine.client import Client, encode_jpeg
from engine.config import Config
from engine.service.server import FaceEngineServer
from tests.shared_data import IMAGES


@pytest.fixture()
def client(cfg: Config, analyzer):  # noqa: ANN001, ANN201
    cfg.server.host, cfg.server.port, cfg.server.metrics_port = "127.0.0.1", 0, 0
    cfg.auth.enabled = False
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    c = Client(srv.address)
    c.ensure_watchlist("vip")
    yield c
    srv.stop(grace=1)


def _code(call) -> tuple[grpc.StatusCode, str]:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_another_face_under_an_existing_id_is_refused_unless_added_on_purpose(client: Client) -> None:
    obama, obama2, biden = ((IMAGES / n).read_bytes() for n in ("obama.jpg", "obama2.jpg", "biden.jpg"))
    client.enroll("vip", "obama", [obama], "Barack Obama")
    code, msg = _code(lambda: client.enroll("vip", "obama", [biden], "Joe Biden"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "'obama'" in msg and "another person id" in msg and "add_to_existing" in msg
    code, msg = _code(lambda: client.enroll("vip", "obama", [biden]))  # no name given: still another face
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "does not look like" in msg and "Barack Obama" in msg
    person = client.enroll("vip", "obama", [obama2])  # another photo of him, no name: added, name kept
    assert person.template_count == 2 and person.display_name == "Barack Obama"
    person = client.enroll("vip", "obama", [biden], "Joe Biden", add_to_existing=True)  # on purpose
    assert person.template_count == 3 and person.display_name == "Joe Biden"


def test_the_same_photo_twice_is_a_duplicate_not_a_second_template(client: Client) -> None:
    obama = (IMAGES / "obama.jpg").read_bytes()
    client.enroll("vip", "obama", [obama], "Barack Obama")
    code, msg = _code(lambda: client.enroll("vip", "obama", [obama], "Barack Obama"))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "already enrolled" in msg
    img = cv2.imread(str(IMAGES / "obama.jpg"))  # a re-encoded, resized copy is the same photo too
    copy = encode_jpeg(cv2.resize(img, (img.shape[1] * 3 // 4, img.shape[0] * 3 // 4)))
    code, _ = _code(lambda: client.enroll("vip", "obama", [copy], add_to_existing=True))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    code, _ = _code(lambda: client.enroll("vip", "biden", [obama, obama], "Twice"))  # twice in one request
    assert code == grpc.StatusCode.ALREADY_EXISTS
    code, msg = _code(lambda: client.enroll("vip", "obama", [(IMAGES / "obama2.jpg").read_bytes()], "B. Obama"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "another name" in msg  # a rename is explicit
