"""Operator console: a real engine (real models, auth on) and the real console over HTTP.

Security checks use plain HTTP requests (httpx); the page itself is driven by Debian's Chromium
through Playwright (tests/test_console_browser.py)."""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import grpc
import httpx
import numpy as np
import pytest
import uvicorn

from engine.client import Client, encode_jpeg
from engine.config import Config
from engine.console.app import ConsoleSettings, create_app, csv_cell
from engine.service.auth import create_token
from engine.service.proto import pb
from engine.service.server import FaceEngineServer
from engine.store.base import MatchEvent
from tests.conftest import IMAGES, VIDEOS
from tests.shared_data import ROOT, UPDATE_DOCS_ENV, doc_image
from tests.test_security import pki  # noqa: F401 - a throw-away CA and server certificate


@dataclass
class Stack:
    srv: FaceEngineServer
    url: str
    tokens: dict[str, str]
    crop: Path  # one face cut from frame 100 of stage_360p.mp4 (the person who walks through the video)
    max_cards: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def stack(model_dir: Path, analyzer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:  # noqa: ANN001
    tmp = tmp_path_factory.mktemp("console")
    cfg = Config.load(env={})
    cfg.models.dir = str(model_dir)
    cfg.store.path = str(tmp / "engine.db")
    cfg.server.host, cfg.server.port, cfg.server.metrics_port = "127.0.0.1", 0, 0
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    tokens = {role: create_token(srv.store, f"{role}-1", role, ["*"] if role == "gateway" else ())[0]
              for role in ("admin", "operator", "gateway")}
    cap = cv2.VideoCapture(str(VIDEOS / "stage_360p.mp4"))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 100)
    ok, frame = cap.read()
    cap.release()
    assert ok
    dets = analyzer.detector.detect(frame)
    x1, y1, x2, y2 = dets.boxes[int(dets.sizes.argmax())][:4]
    w, h = x2 - x1, y2 - y1
    crop = tmp / "person-1.jpg"
    crop.write_bytes(encode_jpeg(frame[max(0, int(y1 - h)): int(y2 + h), max(0, int(x1 - w)): int(x2 + w)]))
    max_cards = 20
    try:
        with serve_console(ConsoleSettings(server=srv.address, max_cards=max_cards)) as url:
            yield Stack(srv, url, tokens, crop, max_cards)
    finally:
        srv.stop(grace=1)


@contextlib.contextmanager
def serve_console(settings: ConsoleSettings) -> Iterator[str]:
    """The console app on a real uvicorn server in a thread; yields its base URL."""
    port = _free_port()
    web = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=web.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not web.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert web.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        web.should_exit = True
        t.join(timeout=10)


def sign_in(url: str, token: str) -> tuple[httpx.Client, str]:
    """A signed-in HTTP client and its session's CSRF token."""
    c = httpx.Client(base_url=url, timeout=60)
    page = c.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = c.post("/login", data={"csrf": csrf, "token": token})
    assert r.status_code == 303 and r.headers["location"] == "/live", r.text
    live = c.get("/live")
    assert live.status_code == 200
    return c, re.search(r'name="csrf" value="([^"]+)"', live.text).group(1)


def synthetic_event(cam: str, jpeg: bytes, person: str = "person-1", name: str = "Person One") -> MatchEvent:
    """A match record as the event recorder makes it (for load on the console's live path only)."""
    return MatchEvent(uuid.uuid4().hex, cam, time.time(), "vip", person, name, 0.9, (1.0, 2.0, 30.0, 40.0), 1, 1,
                      jpeg)


def test_browser_screenshot_goes_to_docs_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The browser test's screenshot lands in its tmp_path, so a test run leaves docs/ (and git status) clean;
    FACEENGINE_UPDATE_SCREENSHOTS=1 refreshes the picture the README shows."""
    monkeypatch.delenv(UPDATE_DOCS_ENV, raising=False)
    assert doc_image("console-live.png", tmp_path) == tmp_path / "console-live.png"
    monkeypatch.setenv(UPDATE_DOCS_ENV, "0")
    assert doc_image("console-live.png", tmp_path) == tmp_path / "console-live.png"
    monkeypatch.setenv(UPDATE_DOCS_ENV, "1")
    readme_picture = doc_image("console-live.png", tmp_path)
    assert readme_picture == ROOT / "docs" / "console-live.png" and readme_picture.is_file()
    assert "](docs/console-live.png)" in (ROOT / "README.md").read_text()


# ---- security: plain HTTP ----------------------------------------------------------------------
def test_nothing_without_a_session(stack: Stack) -> None:
    c = httpx.Client(base_url=stack.url, timeout=30)
    for path in ("/live", "/history", "/history.csv", "/search", "/watchlists", "/persons?name=vip", "/cameras",
                 "/photo?w=vip&p=person-1", "/live/stream"):
        r = c.get(path)
        assert r.status_code in (303, 401), path
        assert r.status_code == 401 or r.headers["location"] == "/login", path
        assert b"\xff\xd8" not in r.content and "data:image" not in r.text
    browser_like = c.get("/live", headers={"accept": "text/html"})
    assert browser_like.status_code == 303 and browser_like.headers["location"] == "/login"
    for path in ("/alerts/ack", "/watchlists/create", "/persons/enrol", "/persons/remove", "/cameras/add",
                 "/search", "/logout"):
        assert c.post(path, data={"csrf": "x"}).status_code == 401, path
    # a forged or expired session cookie is no session
    c.cookies.set("fe_session", "gAAAAABforged")
    assert c.get("/cameras").status_code == 401
    login = c.get("/login")
    assert login.headers["cache-control"] == "no-store" and "frame-ancestors 'none'" in \
        login.headers["content-security-policy"]
    assert re.search(r"fe_login_csrf=[^;]+;.*HttpOnly", login.headers["set-cookie"], re.I)


def test_sign_in_cookie_flags_and_gateway_refused(stack: Stack) -> None:
    c = httpx.Client(base_url=stack.url, timeout=30)
    csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
    refused = c.post("/login", data={"csrf": csrf, "token": stack.tokens["gateway"]})
    assert refused.status_code == 403 and "gateway tokens" in refused.text
    assert "fe_session" not in c.cookies
    csrf = re.search(r'name="csrf" value="([^"]+)"', refused.text).group(1)
    assert c.post("/login", data={"csrf": csrf, "token": "fe_wrong"}).status_code == 401
    assert c.post("/login", data={"csrf": "forged", "token": stack.tokens["admin"]}).status_code == 403
    csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
    ok = c.post("/login", data={"csrf": csrf, "token": stack.tokens["operator"]})
    assert ok.status_code == 303
    cookie = ok.headers["set-cookie"]
    assert "fe_session=" in cookie and "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert stack.tokens["operator"] not in cookie  # the token is sealed, not merely signed


def test_post_without_csrf_is_refused(stack: Stack) -> None:
    c, csrf = sign_in(stack.url, stack.tokens["admin"])
    before = len(stack.srv.store.list_watchlists())
    for data in ({"name": "nocsrf"}, {"name": "nocsrf", "csrf": "wrong"}, {"name": "nocsrf", "csrf": ""}):
        r = c.post("/watchlists/create", data=data)
        assert r.status_code == 403 and "CSRF" in r.text
    assert len(stack.srv.store.list_watchlists()) == before
    # another session's token is no good either
    _, other = sign_in(stack.url, stack.tokens["operator"])
    assert c.post("/watchlists/create", data={"name": "nocsrf", "csrf": other}).status_code == 403
    assert c.post("/watchlists/create", data={"name": "withcsrf", "csrf": csrf}).status_code == 303
    assert "withcsrf" in {w.name for w in stack.srv.store.list_watchlists()}
    stack.srv.store.delete_watchlist("withcsrf")


def test_operator_cannot_reach_admin_actions_by_url(stack: Stack) -> None:
    c, csrf = sign_in(stack.url, stack.tokens["operator"])
    audit_before = len(stack.srv.store.query_audit(limit=10000))
    for path, data in (("/watchlists/create", {"name": "op-made"}), ("/watchlists/delete", {"name": "vip"}),
                       ("/persons/remove", {"watchlist": "vip", "person_id": "person-1"}),
                       ("/cameras/add", {"camera_id": "op-cam", "uri": "push"}),
                       ("/cameras/remove", {"camera_id": "door-1"})):
        r = c.post(path, data={**data, "csrf": csrf})
        assert r.status_code == 403 and "admin" in r.text, path
    r = c.post("/persons/enrol", data={"csrf": csrf, "watchlist": "vip", "person_id": "x", "step": "enrol"},
               files={"photo": ("a.jpg", (IMAGES / "obama.jpg").read_bytes(), "image/jpeg")})
    assert r.status_code == 403
    assert "op-made" not in {w.name for w in stack.srv.store.list_watchlists()}
    assert len(stack.srv.store.query_audit(limit=10000)) == audit_before  # refused before reaching the engine
    page = c.get("/watchlists").text
    assert "/watchlists/create" not in page and "/watchlists/delete" not in page
    assert "/cameras/add" not in c.get("/cameras").text


def test_html_in_names_and_notes_is_escaped(stack: Stack) -> None:
    store = stack.srv.store
    evil = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
    try:
        store.create_watchlist("xss", evil)
    except Exception:  # noqa: BLE001 - left by an earlier run of this module
        pass
    ev = synthetic_event("xss-cam", stack.crop.read_bytes(), person="p<b>1</b>", name=evil)
    ev.watchlist = "xss"
    store.add_event(ev)
    c, csrf = sign_in(stack.url, stack.tokens["operator"])
    r = c.post("/alerts/ack", data={"csrf": csrf, "event_id": ev.event_id, "action": "dismiss", "note": evil},
               headers={"x-requested-with": "console"})
    assert r.status_code == 200
    for text in (r.text, c.get("/live").text, c.get("/history?camera=xss-cam").text, c.get("/watchlists").text):
        assert "<script>alert" not in text and "<img src=x" not in text
        assert "&lt;script&gt;" in text or "&lt;img" in text
    csv_text = c.get("/history.csv?camera=xss-cam").text
    assert ev.event_id in csv_text and "dismiss" in csv_text and "operator-1" in csv_text
    assert csv_cell("=HYPERLINK(1)") == "'=HYPERLINK(1)" and csv_cell("-1") == "'-1"


def test_ack_api_validation_roles_and_photo_erasure(stack: Stack) -> None:
    srv = stack.srv
    ev = synthetic_event("api-cam", b"")
    srv.store.add_event(ev)
    op = Client(srv.address, token=stack.tokens["operator"])
    gw = Client(srv.address, token=stack.tokens["gateway"])
    admin = Client(srv.address, token=stack.tokens["admin"])

    def code(fn) -> grpc.StatusCode:  # noqa: ANN001
        try:
            fn()
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    ack = op.matches.AcknowledgeMatch
    assert code(lambda: ack(pb.AcknowledgeRequest(event_id=ev.event_id, action="maybe"), metadata=op.metadata)) \
        == grpc.StatusCode.INVALID_ARGUMENT
    assert code(lambda: ack(pb.AcknowledgeRequest(event_id="nope", action="ack"), metadata=op.metadata)) \
        == grpc.StatusCode.NOT_FOUND
    assert code(lambda: ack(pb.AcknowledgeRequest(event_id=ev.event_id, action="ack", note="x" * 1001),
                            metadata=op.metadata)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(lambda: gw.matches.AcknowledgeMatch(pb.AcknowledgeRequest(event_id=ev.event_id, action="ack"),
                                                    metadata=gw.metadata)) == grpc.StatusCode.PERMISSION_DENIED
    got = ack(pb.AcknowledgeRequest(event_id=ev.event_id, action="ack", note="checked"), metadata=op.metadata)
    assert (got.ack_action, got.ack_note, got.ack_by) == ("ack", "checked", "operator-1") and got.ack_time > 0
    audit = [a for a in srv.store.query_audit(limit=10000) if a["action"] == "AcknowledgeMatch"]
    assert audit[-1]["actor"] == "operator-1" and audit[-1]["target"] == ev.event_id and audit[-1]["result"] == "OK"
    # the photo kept at enrolment is the face crop, readable by operators, erased with the person
    admin.ensure_watchlist("erase")
    admin.enroll("erase", "obama", [(IMAGES / "obama.jpg").read_bytes()], "Barack Obama")
    photo = op.watchlists.GetPersonPhoto(pb.PersonRequest(watchlist="erase", person_id="obama"),
                                         metadata=op.metadata).jpeg
    img = cv2.imdecode(__import__("numpy").frombuffer(photo, "uint8"), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[0] <= 160
    assert len(srv.analyzer.detector.detect(img)) == 1  # the crop shows the face
    prev = admin.watchlists.DetectFaces(pb.DetectFacesRequest(image=pb.Image(
        encoded=(IMAGES / "obama_and_biden.jpg").read_bytes())), metadata=admin.metadata)
    assert len(prev.faces) >= 2 and not prev.crop and "faces found" in prev.problem
    assert code(lambda: op.watchlists.DetectFaces(pb.DetectFacesRequest(), metadata=op.metadata)) == \
        grpc.StatusCode.PERMISSION_DENIED
    admin.watchlists.RemovePerson(pb.PersonRequest(watchlist="erase", person_id="obama"), metadata=admin.metadata)
    assert srv.store._q("SELECT COUNT(*) FROM person_photos WHERE watchlist='erase'")[0][0] == 0
    who = op.admin.WhoAmI(pb.Empty(), metadata=op.metadata)
    assert (who.name, who.role) == ("operator-1", "operator")


def test_images_need_a_session_and_are_never_cached(stack: Stack) -> None:
    srv = stack.srv
    admin = Client(srv.address, token=stack.tokens["admin"])
    admin.ensure_watchlist("photos")
    admin.enroll("photos", "obama", [(IMAGES / "obama.jpg").read_bytes()], "Barack Obama")
    c, _ = sign_in(stack.url, stack.tokens["operator"])
    r = c.get("/photo?w=photos&p=obama")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    assert r.headers["cache-control"] == "no-store"
    assert c.get("/photo?w=photos&p=nobody").status_code == 404
    assert httpx.get(f"{stack.url}/photo?w=photos&p=obama").status_code == 401
    for path in ("/live", "/history", "/persons?name=photos", "/history.csv"):
        assert c.get(path).headers["cache-control"] == "no-store", path


def test_history_pages_and_filters(stack: Stack) -> None:
    jpeg = stack.crop.read_bytes()
    ids = []
    for _ in range(60):
        ev = synthetic_event("paging-cam", jpeg)
        stack.srv.store.add_event(ev)
        ids.append(ev.event_id)
    c, _ = sign_in(stack.url, stack.tokens["operator"])
    first = c.get("/history?camera=paging-cam")
    assert first.status_code == 200 and first.text.count("<tr>") == 1 + 50  # header + one page
    assert ids[-1] in c.get("/history.csv?camera=paging-cam").text
    nxt = re.search(r'id="next" href="([^"]+)"', first.text).group(1).replace("&amp;", "&")
    second = c.get(nxt)
    assert second.text.count("<tr>") == 1 + 10 and 'id="next"' not in second.text
    rows = c.get("/history.csv?camera=paging-cam").text.strip().splitlines()
    assert len(rows) == 1 + 60 and all(i in "\n".join(rows) for i in ids)
    assert c.get("/history?camera=paging-cam&min_score=0.95").text.count("<tr>") == 1 + 1  # "No matches."
    bad = c.get("/history?since=yesterday")
    assert bad.status_code == 400 and "YYYY-MM-DD" in bad.text


def test_revoked_token_ends_the_session(stack: Stack) -> None:
    srv = stack.srv
    token = create_token(srv.store, "short-lived", "operator")[0]
    c, _ = sign_in(stack.url, token)
    assert c.get("/cameras").status_code == 200
    srv.store.revoke_token("short-lived")
    r = c.get("/cameras")
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert "fe_session" not in c.cookies  # cleared
    assert c.get("/cameras").status_code == 401


def test_console_command_serves_https_from_the_same_config(cfg: Config, analyzer, pki: Path,  # noqa: ANN001, F811
                                                            tmp_path: Path) -> None:
    cfg.server.host, cfg.server.port = "127.0.0.1", 0
    cfg.tls.cert_file, cfg.tls.key_file = str(pki / "server.pem"), str(pki / "server.key")
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    token = create_token(srv.store, "ops", "admin")[0]
    port = _free_port()
    conf = tmp_path / "console.toml"
    conf.write_text(f'[tls]\ncert_file = "{pki / "server.pem"}"\nkey_file = "{pki / "server.key"}"\n'
                    f'[console]\nserver = "{srv.address}"\nca_cert = "{pki / "ca.pem"}"\nport = {port}\n'
                    f'secret_file = "{tmp_path / "key"}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli.main", "console", "--config", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        trust = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        c = httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trust, timeout=30)
        deadline = time.monotonic() + 30
        while True:
            try:
                page = c.get("/login")
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.3)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        r = c.post("/login", data={"csrf": csrf, "token": token})
        assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()
        assert c.get("/cameras").status_code == 200  # the console reached the TLS engine with the CA
        assert (tmp_path / "key").stat().st_mode & 0o077 == 0  # the session key is private
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/login", timeout=5)  # HTTPS only
        c.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        srv.stop(grace=1)


def test_failed_sign_ins_are_paced_per_browser_address(stack: Stack) -> None:
    with serve_console(ConsoleSettings(server=stack.srv.address, login_failures=3, login_window_s=60)) as url:
        c = httpx.Client(base_url=url, timeout=30)

        def attempt(token: str) -> httpx.Response:
            csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
            return c.post("/login", data={"csrf": csrf, "token": token})

        assert [attempt(f"fe_guess{i}").status_code for i in range(3)] == [401, 401, 401]
        paused = attempt(stack.tokens["operator"])  # even a good token waits for the window to end
        assert paused.status_code == 429 and "too many failed sign-ins" in paused.text
        assert "fe_session" not in c.cookies
    # the pause is the console's own: the shared console of this module still signs people in
    sign_in(stack.url, stack.tokens["operator"])


def test_search_upload_of_a_jpeg_scan_bomb_is_refused(stack: Stack) -> None:
    """A progressive JPEG repeating its last scan thousands of times is refused by the engine before any
    decoding; the console shows why (400), as for any other bad photo."""
    from tests.test_hardening_input import progressive_bomb

    c, csrf = sign_in(stack.url, stack.tokens["operator"])
    try:
        r = c.post("/search", data={"csrf": csrf, "top_k": "5"},
                   files={"photo": ("photo.jpg", progressive_bomb(1024, 3000), "image/jpeg")})
        assert r.status_code == 400 and "3010 scans" in r.text, r.text[-500:]
    finally:
        c.close()


def test_enrolment_picks_the_dominant_face_as_the_api_does(stack: Stack) -> None:
    """The console's preview and enrolment make the engine's choice: the centred subject of an ID photo,
    not the larger face cut off at its edge; a photo of two comparable faces is refused, naming both boxes."""
    import html

    from engine.vision.enrolment import choose_enrolment_face, fmt_box
    from tests.test_enrolment_choice import id_photo_with_a_cut_off_face

    analyzer = stack.srv.analyzer
    photo = encode_jpeg(id_photo_with_a_cut_off_face())
    group = (IMAGES / "two_people.jpg").read_bytes()
    boxes = [fmt_box(b) for b in analyzer.detector.detect(cv2.imdecode(np.frombuffer(group, np.uint8), 1)).boxes]
    img = cv2.imdecode(np.frombuffer(photo, np.uint8), 1)
    dets = analyzer.detector.detect(img)
    chosen = dets[choose_enrolment_face(dets.boxes, img.shape[1], img.shape[0]).index]
    c, csrf = sign_in(stack.url, stack.tokens["admin"])
    try:
        c.post("/watchlists/create", data={"csrf": csrf, "name": "ids"})
        form = {"csrf": csrf, "watchlist": "ids", "person_id": "subject"}
        r = c.post("/persons/enrol", data={**form, "step": "preview"},
                   files={"photo": ("id.jpg", photo, "image/jpeg")})
        assert r.status_code == 200 and "2 faces found; this one dominates" in r.text
        crop = re.search(r'id="preview-crop" src="data:image/jpeg;base64,([^"]+)"', r.text).group(1)
        got = cv2.imdecode(np.frombuffer(base64.b64decode(crop), np.uint8), 1)
        want = analyzer.embed_faces(img, chosen)[0]
        assert float(np.dot(analyzer.largest_face(got)[1], want)) > 0.6  # the crop is the chosen face
        r = c.post("/persons/enrol", data={**form, "step": "enrol"}, files={"photo": ("id.jpg", photo, "image/jpeg")})
        assert r.status_code == 303
        r = c.post("/persons/enrol", data={**form, "step": "preview"},
                   files={"photo": ("group.jpg", group, "image/jpeg")})
        problem = html.unescape(re.search(r'id="preview-problem">([^<]*)<', r.text).group(1))
        assert "none dominates" in problem and all(b in problem for b in boxes), problem
        r = c.post("/persons/enrol", data={**form, "person_id": "group", "step": "enrol"},
                   files={"photo": ("group.jpg", group, "image/jpeg")})
        assert r.status_code == 400 and all(b in html.unescape(r.text) for b in boxes)
        assert [p.person_id for p in stack.srv.store.list_persons("ids")] == ["subject"]
    finally:
        c.close()


def test_enrolling_another_face_under_a_taken_id_asks_first(stack: Stack) -> None:
    """A different person's photo under an existing id is not merged: the page keeps the input, shows the
    enrolled person's photo and asks; 'Add to the existing person' adds it on purpose; a duplicate is refused."""
    import html

    c, csrf = sign_in(stack.url, stack.tokens["admin"])
    try:
        c.post("/watchlists/create", data={"csrf": csrf, "name": "taken"})
        obama, biden = (IMAGES / "obama.jpg").read_bytes(), (IMAGES / "biden.jpg").read_bytes()
        form = {"csrf": csrf, "watchlist": "taken", "person_id": "obama", "step": "enrol"}
        r = c.post("/persons/enrol", data={**form, "display_name": "Barack Obama"},
                   files={"photo": ("o.jpg", obama, "image/jpeg")})
        assert r.status_code == 303
        r = c.post("/persons/enrol", data={**form, "display_name": "Joe Biden"},
                   files={"photo": ("b.jpg", biden, "image/jpeg")})
        text = html.unescape(r.text)
        assert r.status_code == 409 and "does not look like" in text and 'id="add-to-existing"' in text
        assert 'value="Joe Biden"' in text and "/photo?w=taken&amp;p=obama" in r.text  # input kept, their photo
        image = re.search(r'name="image_b64" value="([^"]+)"', r.text).group(1)
        assert stack.srv.store.get_person("taken", "obama").template_count == 1
        r = c.post("/persons/enrol", data={"csrf": csrf, "watchlist": "taken", "person_id": "biden",
                                           "display_name": "Joe Biden", "image_b64": image, "step": "enrol"})
        assert r.status_code == 303  # chose another id
        r = c.post("/persons/enrol", data={**form, "image_b64": image, "add_to_existing": "1"})
        assert r.status_code == 303  # added to the existing person on purpose
        assert stack.srv.store.get_person("taken", "obama").template_count == 2
        r = c.post("/persons/enrol", data=form, files={"photo": ("o.jpg", obama, "image/jpeg")})
        assert r.status_code == 409 and "already enrolled" in html.unescape(r.text)
        assert 'id="add-to-existing"' not in r.text
        assert stack.srv.store.get_person("taken", "obama").template_count == 2
    finally:
        c.close()
