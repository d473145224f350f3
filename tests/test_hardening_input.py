"""Hostile input, issue 10 items 1-4 and 7: image bombs in every accepted format, camera credentials,
camera options, camera URIs, and limits on names and metadata. Each test failed before its fix."""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from engine.client import Client
from engine.config import Config
from engine.errors import InvalidArgumentError, InvalidImageError
from engine.service.proto import pb
from engine.service.server import FaceEngineServer
from engine.store.sqlite import SQLiteStore
from engine.video.pipeline import CameraState
from engine.vision.image import decode_for_detection, decode_image
from tests.conftest import IMAGES, VIDEOS
from tests.procs import wait_for

ROOT = Path(__file__).resolve().parents[1]


# ---- bombs -------------------------------------------------------------------------------------
def _bmp_rle(width: int, height: int) -> bytes:
    """An 8-bit RLE BMP of width x height in 1,080 bytes: a palette and one end-of-bitmap code."""
    palette = b"\0\0\0\0" * 256
    data = b"\x00\x01"
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + palette + data


def _pillow(fmt: str, width: int, height: int, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.new("L" if fmt in ("GIF", "TIFF") else "RGB", (width, height)).save(buf, fmt, **kw)
    return buf.getvalue()


def bombs(width: int, height: int) -> dict[str, bytes]:
    """A small file declaring width x height for each accepted format."""
    return {
        "JPEG": _pillow("JPEG", width, height, quality=10),
        "PNG": _pillow("PNG", width, height, compress_level=9),
        "BMP-RLE": _bmp_rle(width, height),
        "GIF": _pillow("GIF", width, height),
        "TIFF": _pillow("TIFF", width, height, compression="tiff_deflate"),
        "WebP": _pillow("WEBP", width, height, quality=1, method=0),
    }


# Formats OpenCV decodes that the engine cannot size from a header it trusts: refused outright.
UNSIZED = {
    "PPM": b"P6\n5000 5000\n255\n" + b"\0" * 64,
    "PGM": b"P5 5000 5000 255\n" + b"\0" * 64,
    "PFM": b"PF\n5000 5000\n-1.0\n" + b"\0" * 64,
    "SunRaster": b"\x59\xa6\x6a\x95" + struct.pack(">7I", 5000, 5000, 24, 0, 1, 0, 0) + b"\0" * 64,
    "HDR": b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 5000 +X 5000\n" + b"\0" * 64,
    "BigTIFF": b"II+\x00\x08\x00\x00\x00" + b"\0" * 64,
}


@pytest.fixture(scope="module")
def small_bombs() -> dict[str, bytes]:
    return bombs(5000, 5000)  # 25 Mpx: over the 4096 px side used below, 75 MB if decoded


class DecoderCalls(list):
    """The byte counts of cv2.imdecode calls; `guard` holds the bombs."""

    def __init__(self) -> None:
        super().__init__()
        self.guard: set[bytes] = set()


@pytest.fixture()
def decoder_spy(monkeypatch: pytest.MonkeyPatch) -> DecoderCalls:
    """Records every cv2.imdecode call; a call on a bomb raises instead of decoding it."""
    calls = DecoderCalls()
    real = cv2.imdecode

    def spy(buf, flags):  # noqa: ANN001, ANN202
        calls.append(len(buf))
        if bytes(buf) in calls.guard:
            raise AssertionError("the decoder was called on an image bomb")
        return real(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", spy)
    return calls


def test_bombs_of_every_format_are_refused_from_the_header(small_bombs: dict[str, bytes],
                                                          decoder_spy: DecoderCalls) -> None:
    for name, data in small_bombs.items():
        assert len(data) < 600_000, (name, len(data))
        decoder_spy.guard.add(data)
        with pytest.raises(InvalidImageError, match="5000x5000: a side exceeds the limit of 4096"):
            decode_image(data, max_side=4096, max_pixels=16_000_000)
        with pytest.raises(InvalidImageError, match="5000x5000: more than the limit of 20000000 pixels"):
            decode_image(data, max_side=8192, max_pixels=20_000_000)
        with pytest.raises(InvalidImageError, match="5000x5000"):
            decode_for_detection(data, 1280, max_side=4096, max_pixels=16_000_000)
    for name, data in UNSIZED.items():
        decoder_spy.guard.add(data)
        with pytest.raises(InvalidImageError, match="unsupported format; send JPEG, PNG, BMP, GIF, TIFF, WebP"):
            decode_image(data)
        assert name
    assert decoder_spy == []
    # the same formats at a size within the limits still decode
    for name, data in bombs(64, 48).items():
        assert decode_image(data).shape == (48, 64, 3), name


_RSS_SCRIPT = """
import sys
from pathlib import Path
from engine.errors import InvalidImageError
from engine.vision.image import decode_image
def peak_kb():  # VmHWM: this process's own peak (ru_maxrss is inherited from the parent across exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
for f in sorted(Path(sys.argv[1]).iterdir()):  # tiny images of each format: every decoder loaded and warm
    decode_image(f.read_bytes())
datas = [f.read_bytes() for f in sorted(Path(sys.argv[2]).iterdir())]
before = peak_kb()
refused = 0
for data in datas:
    try:
        decode_image(data, max_side=4096, max_pixels=16_000_000)
    except InvalidImageError:
        refused += 1
print(refused, peak_kb() - before)
"""


def test_bombs_cost_no_memory(small_bombs: dict[str, bytes], tmp_path: Path) -> None:
    """Peak RSS of a fresh process refusing a bomb of each format grows by less than 20 MB (75 MB each
    if decoded): measured in a fresh process (VmHWM), since tracemalloc does not see OpenCV's allocations."""
    (tmp_path / "warm").mkdir()
    (tmp_path / "bombs").mkdir()
    for name, data in bombs(16, 16).items():
        (tmp_path / "warm" / name).write_bytes(data)
    for name, data in small_bombs.items():
        (tmp_path / "bombs" / name).write_bytes(data)
    res = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(tmp_path / "warm"), str(tmp_path / "bombs")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    refused, grown_kb = map(int, res.stdout.split())
    assert refused == len(small_bombs)
    assert grown_kb < 20 * 1024, f"peak RSS grew by {grown_kb / 1024:.0f} MB refusing {len(small_bombs)} bombs"


# ---- a server ----------------------------------------------------------------------------------
def _cfg(cfg: Config, tmp_path: Path) -> Config:
    cfg.server.host, cfg.server.port, cfg.server.metrics_port = "127.0.0.1", 0, 0
    cfg.auth.enabled = False  # input handling is under test; roles are covered in test_security
    media = tmp_path / "media"
    media.mkdir(exist_ok=True)
    cfg.cameras.file_roots = [str(media)]
    return cfg


@pytest.fixture()
def server(cfg: Config, analyzer, tmp_path: Path):  # noqa: ANN001, ANN201
    srv = FaceEngineServer(_cfg(cfg, tmp_path), analyzer=analyzer).start()
    srv.client = Client(srv.address)  # type: ignore[attr-defined]
    yield srv
    srv.client.close()  # type: ignore[attr-defined]
    srv.stop(grace=1)


def _code(fn) -> tuple[str, str]:  # noqa: ANN001
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or ""
    return "OK", ""


def _healthy(srv: FaceEngineServer) -> bool:
    with grpc.insecure_channel(srv.address) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    return status == health_pb2.HealthCheckResponse.SERVING


_wait = wait_for  # poll until true, 20 s by default


def test_bombs_over_every_image_rpc(server: FaceEngineServer, decoder_spy: DecoderCalls) -> None:
    """A 1,080-byte RLE BMP of 20000x20000 and 9000x9000 GIF/TIFF/WebP/PNG never reach the decoder."""
    c: Client = server.client  # type: ignore[attr-defined]
    c.ensure_watchlist("w")
    c.ensure_push_camera("gate")
    big = {"BMP-RLE": _bmp_rle(20000, 20000), **{k: v for k, v in bombs(9000, 9000).items() if k != "BMP-RLE"}}
    assert len(big["BMP-RLE"]) == 1080
    good = pb.Image(encoded=(IMAGES / "obama.jpg").read_bytes())
    for name, data in big.items():
        decoder_spy.guard.add(data)
        img = pb.Image(encoded=data)
        calls = {
            "EnrollPerson": lambda img=img: c.watchlists.EnrollPerson(pb.EnrollPersonRequest(
                watchlist="w", person_id="p", images=[img])),
            "SearchByImage": lambda img=img: c.matches.SearchByImage(pb.SearchRequest(image=img)),
            "Verify": lambda img=img: c.matches.Verify(pb.VerifyRequest(image_a=good, image_b=img)),
        }
        for rpc_name, call in calls.items():
            code, msg = _code(call)
            assert code == "INVALID_ARGUMENT" and "exceeds the limit" in msg, (name, rpc_name, code, msg)
        res = list(c.stream(iter([pb.Frame(camera_id="gate", sequence=1, encoded=data)])))
        assert res[0].error.code_name == "INVALID_ARGUMENT" and "exceeds the limit" in res[0].error.message, name
    assert _healthy(server)


# ---- CPU bombs: JPEG scans -----------------------------------------------------------------------
def progressive_bomb(side: int, repeats: int) -> bytes:
    """A flat progressive JPEG of side x side whose last scan is repeated `repeats` times (about 80
    bytes a repeat): inside the pixel limit, yet a decoder passes over the whole image once per scan
    (4096 px, 2,000 repeats: 165 kB, about 30 CPU-seconds to decode)."""
    data = cv2.imencode(".jpg", np.full((side, side, 3), 128, np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1]
    data = data.tobytes()
    last = data.rfind(b"\xff\xda")
    return data[:-2] + data[last:-2] * repeats + b"\xff\xd9"


def test_jpeg_scan_bombs_are_refused_before_decoding(decoder_spy: DecoderCalls) -> None:
    from engine.vision.image import MAX_JPEG_SCANS, jpeg_scans

    bomb = progressive_bomb(4096, 2000)
    assert len(bomb) < 200_000 and jpeg_scans(bomb) == 2010
    decoder_spy.guard.add(bomb)
    with pytest.raises(InvalidImageError, match="4096x4096 has 2010 scans, more than the limit of 24"):
        decode_image(bomb)
    with pytest.raises(InvalidImageError, match="2010 scans"):
        decode_for_detection(bomb, 1280)
    small = progressive_bomb(256, MAX_JPEG_SCANS)  # a small image may have more scans, up to the cap
    decoder_spy.guard.add(small)
    with pytest.raises(InvalidImageError, match=f"more than the limit of {MAX_JPEG_SCANS}"):
        decode_image(small)
    assert decoder_spy == []
    # real photos: baseline (1 scan), progressive from Pillow and OpenCV (10-14 scans) still decode
    photo = (IMAGES / "obama_and_biden.jpg").read_bytes()
    assert jpeg_scans(photo) == 14 and decode_image(photo).shape[2] == 3
    big = cv2.resize(cv2.imdecode(np.frombuffer(photo, np.uint8), 1), (2048, 2048))
    prog = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert jpeg_scans(prog) == 10 and decode_image(prog).shape == (2048, 2048, 3)
    assert jpeg_scans((IMAGES / "obama.jpg").read_bytes()) == 1
    assert decode_image(progressive_bomb(256, 80)).shape == (256, 256, 3)  # within the cap: decoded


def test_jpeg_scan_bombs_over_every_image_rpc(server: FaceEngineServer, decoder_spy: DecoderCalls) -> None:
    c: Client = server.client  # type: ignore[attr-defined]
    c.ensure_watchlist("w")
    c.ensure_push_camera("gate")
    bomb = progressive_bomb(4096, 2000)
    decoder_spy.guard.add(bomb)
    img, good = pb.Image(encoded=bomb), pb.Image(encoded=(IMAGES / "obama.jpg").read_bytes())
    calls = {
        "EnrollPerson": lambda: c.watchlists.EnrollPerson(pb.EnrollPersonRequest(watchlist="w", person_id="p",
                                                                                 images=[img])),
        "DetectFaces": lambda: c.watchlists.DetectFaces(pb.DetectFacesRequest(image=img)),
        "SearchByImage": lambda: c.matches.SearchByImage(pb.SearchRequest(image=img)),
        "Verify": lambda: c.matches.Verify(pb.VerifyRequest(image_a=good, image_b=img)),
    }
    for rpc_name, call in calls.items():
        code, msg = _code(call)
        assert code == "INVALID_ARGUMENT" and "2010 scans" in msg, (rpc_name, code, msg)
    res = list(c.stream(iter([pb.Frame(camera_id="gate", sequence=1, encoded=bomb)])))
    assert res[0].error.code_name == "INVALID_ARGUMENT" and "2010 scans" in res[0].error.message
    assert _healthy(server)


# ---- camera credentials ------------------------------------------------------------------------
def test_redact_uri() -> None:
    from engine.video.sources import redact_uri

    assert redact_uri("rtsp://admin:s3cret@10.0.0.5:554/live?x=1") == "rtsp://***@10.0.0.5:554/live?x=1"
    assert redact_uri("rtsp://admin@cam/live") == "rtsp://***@cam/live"
    assert redact_uri("http://cam/snap.cgi?user=admin&password=s3cret&ch=1") == \
        "http://cam/snap.cgi?user=***&password=***&ch=1"
    assert redact_uri("https://cam/a?token=abc&Sig=xyz") == "https://cam/a?token=***&Sig=***"
    assert redact_uri("/videos/a:b@c.mp4") == "/videos/a:b@c.mp4"  # a file path has no credentials
    assert redact_uri("push") == "push"


def test_camera_credentials_never_leave_the_server(server: FaceEngineServer, caplog: pytest.LogCaptureFixture
                                                    ) -> None:
    caplog.set_level(logging.DEBUG)
    c: Client = server.client  # type: ignore[attr-defined]
    uri = "rtsp://admin:s3cret@127.0.0.1:9/live?password=hunter2"
    added = c.cameras.AddCamera(pb.AddCameraRequest(camera_id="lobby", uri=uri,
                                                    options={"timeout_s": "1", "backoff_s": "0.5"}))
    seen = [str(added)]
    assert _wait(lambda: "cannot open" in c.cameras.GetCamera(pb.CameraRequest(camera_id="lobby")).last_error)
    got = c.cameras.GetCamera(pb.CameraRequest(camera_id="lobby"))
    assert got.uri == "rtsp://***@127.0.0.1:9/live?password=***"
    seen += [str(got), str(c.cameras.ListCameras(pb.ListCamerasRequest()))]
    res = list(c.stream(iter([pb.Frame(camera_id="lobby", sequence=1, encoded=b"x")])))
    assert res[0].error.code_name == "INVALID_ARGUMENT" and "pull camera" in res[0].error.message
    seen.append(res[0].error.message)
    code, msg = _code(lambda: c.cameras.AddCamera(pb.AddCameraRequest(camera_id="lobby", uri=uri)))
    assert code == "ALREADY_EXISTS"
    seen.append(msg)
    code, msg = _code(lambda: c.cameras.AddCamera(pb.AddCameraRequest(camera_id="lobby2", uri=uri,
                                                                      options={"fps": "abc"})))
    assert code == "INVALID_ARGUMENT"
    seen.append(msg)
    seen += [json.dumps(r) for r in server.store.query_audit(limit=1000)]
    seen += [r.getMessage() for r in caplog.records]
    text = "\n".join(seen)
    assert "lobby" in text and "127.0.0.1:9" in text
    assert "s3cret" not in text and "hunter2" not in text and "admin:" not in text
    # the stored definition keeps the credentials: the server still needs them to connect
    assert [u for cid, u, _ in server.store.list_camera_defs() if cid == "lobby"] == [uri]


# ---- camera options ----------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "named"), [
    ({"fps": "abc"}, "fps"), ({"timeout_s": "x"}, "timeout_s"), ({"backoff_s": "0"}, "backoff_s"),
    ({"backoff_s": "nan"}, "backoff_s"), ({"fps": "-1"}, "fps"), ({"loop": "maybe"}, "loop"),
    ({"realtime": "2"}, "realtime"), ({"timeout_s": "1e9"}, "timeout_s"), ({"fsp": "5"}, "fsp"),
])
def test_camera_options_validated_at_add(server: FaceEngineServer, options: dict[str, str], named: str) -> None:
    c: Client = server.client  # type: ignore[attr-defined]
    code, msg = _code(lambda: c.cameras.AddCamera(pb.AddCameraRequest(camera_id="cam", uri="rtsp://127.0.0.1:9/x",
                                                                      options=options)))
    assert code == "INVALID_ARGUMENT" and f"option {named!r}" in msg, (code, msg)
    assert list(c.cameras.ListCameras(pb.ListCamerasRequest()).cameras) == []
    assert server.store.list_camera_defs() == []  # nothing saved


def test_saved_camera_that_fails_at_startup_is_reported(cfg: Config, analyzer, tmp_path: Path) -> None:  # noqa: ANN001
    """Definitions saved before validation existed (or before the config changed) never stop the server."""
    cfg = _cfg(cfg, tmp_path)
    store = SQLiteStore(cfg.store.path)
    store.save_camera("bad-fps", "rtsp://127.0.0.1:9/a", {"fps": "abc"})
    store.save_camera("bad-timeout", "rtsp://127.0.0.1:9/b", {"timeout_s": "x"})
    store.save_camera("shadow", "/etc/shadow", {})
    store.save_camera("good", "push", {})
    store.close()
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    try:
        c = Client(srv.address)
        cams = {x.camera_id: x for x in c.cameras.ListCameras(pb.ListCamerasRequest()).cameras}
        assert set(cams) == {"bad-fps", "bad-timeout", "shadow", "good"}
        assert cams["bad-fps"].state == "error" and "option 'fps'" in cams["bad-fps"].last_error
        assert cams["bad-timeout"].state == "error" and "option 'timeout_s'" in cams["bad-timeout"].last_error
        assert cams["shadow"].state == "error" and "cameras.file_roots" in cams["shadow"].last_error
        assert cams["good"].state == "idle"
        assert _healthy(srv)
        c.cameras.RemoveCamera(pb.CameraRequest(camera_id="bad-fps"))  # an admin can clean up
        assert {x.camera_id for x in c.cameras.ListCameras(pb.ListCamerasRequest()).cameras} == \
            {"bad-timeout", "shadow", "good"}
        c.close()
    finally:
        srv.stop(grace=1)


def test_saved_camera_rows_with_damaged_options_are_listed_in_error(cfg: Config, analyzer,  # noqa: ANN001
                                                                    tmp_path: Path) -> None:
    """A camera row whose options column is not JSON, or is JSON but not an object of strings (a hand edit,
    a bad restore), neither stops the start with a traceback nor hides the camera: state 'error', saying why."""
    cfg = _cfg(cfg, tmp_path)
    store = SQLiteStore(cfg.store.path)
    for cid in ("not-json", "a-list", "numbers", "good"):
        store.save_camera(cid, "rtsp://127.0.0.1:9/a" if cid != "good" else "push", {})
    for cid, raw in (("not-json", "{fps: 5"), ("a-list", '["fps", "5"]'), ("numbers", '{"fps": 5}')):
        store._db.execute("UPDATE cameras SET options=? WHERE camera_id=?", (raw, cid))
    store.close()
    srv = FaceEngineServer(cfg, analyzer=analyzer).start()
    try:
        with Client(srv.address) as c:
            cams = {x.camera_id: x for x in c.cameras.ListCameras(pb.ListCamerasRequest()).cameras}
            assert set(cams) == {"not-json", "a-list", "numbers", "good"}
            assert cams["good"].state != "error"
            for cid, why in (("not-json", "saved options are not JSON"),
                             ("a-list", "saved options are a JSON list, not an object"),
                             ("numbers", "a value that is not a string")):
                assert cams[cid].state == "error" and why in cams[cid].last_error, cams[cid]
                assert "remove and add it again" in cams[cid].last_error
            c.cameras.RemoveCamera(pb.CameraRequest(camera_id="not-json"))  # an admin can clean up
            assert "not-json" not in {cid for cid, _, _ in srv.store.list_camera_defs()}
    finally:
        srv.stop(grace=1)


def _cam(uri: str, options: dict[str, str]) -> CameraState:
    return CameraState("cam", uri, "pull", options)


def test_source_backoff_floor_and_log_rate_limit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from engine.video.sources import MIN_BACKOFF_S, PullSource

    with pytest.raises(InvalidArgumentError, match="option 'backoff_s'"):
        PullSource(None, _cam(str(tmp_path / "missing.mp4"), {"backoff_s": "0"}))  # type: ignore[arg-type]
    assert MIN_BACKOFF_S >= 0.2
    caplog.set_level(logging.INFO, logger="engine.video.sources")
    src = PullSource(None, _cam(str(tmp_path / "missing.mp4"), {"backoff_s": str(MIN_BACKOFF_S)}))  # type: ignore[arg-type]
    for i in range(1000):  # a camera failing the same way over and over
        src._fail(f"cannot open {tmp_path}/missing.mp4: no such file (attempt {i})", True)
    lines = [r for r in caplog.records if r.name == "engine.video.sources"]
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]
    assert src.cam.last_error.endswith("(attempt 999)")  # the status always shows the latest error
    # a reader thread that hits an unexpected error reports it instead of dying silently
    src = PullSource(None, _cam(str(tmp_path / "missing.mp4"), {"backoff_s": "0.5"}))  # type: ignore[arg-type]
    src._open = lambda: (_ for _ in ()).throw(RuntimeError("boom"))  # type: ignore[method-assign]
    src.start()
    try:
        assert _wait(lambda: "boom" in src.cam.last_error, 5), src.cam
        assert src.cam.state in ("retrying", "connecting")
    finally:
        src.stop()


# ---- camera URIs -------------------------------------------------------------------------------
def test_camera_uris_allowed_by_scheme_and_folder(server: FaceEngineServer, tmp_path: Path) -> None:
    c: Client = server.client  # type: ignore[attr-defined]
    media = tmp_path / "media"
    (media / "cam.mp4").write_bytes((VIDEOS / "stage_360p.mp4").read_bytes())
    os.symlink("/etc/passwd", media / "link.mp4")
    refused = ["/etc/shadow", "/etc/passwd", "/proc/self/environ", "/dev/zero", server.cfg.store.path,
               "file:///etc/passwd", f"{media}/../engine.db", str(media / "link.mp4"), "concat:/etc/passwd|/etc/hosts",
               "data:video/mp4;base64,AAAA", "ftp://127.0.0.1/x.mp4", "gopher://127.0.0.1/", "tcp://127.0.0.1:9",
               "udp://127.0.0.1:9", "pipe:0", "subfile:,,start,0,end,0,,:/etc/passwd", "rtsp:///nohost", "mp4",
               "relative/cam.mp4", "file:relative.mp4", "rtsp://cam/a\nb", "x" * 5000]
    for uri in refused:
        code, msg = _code(lambda uri=uri: c.cameras.AddCamera(pb.AddCameraRequest(camera_id="x", uri=uri)))
        assert code == "INVALID_ARGUMENT", (uri, code, msg)
    assert list(c.cameras.ListCameras(pb.ListCamerasRequest()).cameras) == []
    assert server.store.list_camera_defs() == []
    # the answer is the same whether the file exists or not
    msgs = []
    for path in ("/etc/hostname", "/etc/no-such-file-here"):
        code, msg = _code(lambda path=path: c.cameras.AddCamera(pb.AddCameraRequest(camera_id="x", uri=path)))
        msgs.append(msg.replace(path, "PATH"))
    assert msgs[0] == msgs[1] and "cameras.file_roots" in msgs[0]
    code, msg = _code(lambda: c.cameras.AddCamera(pb.AddCameraRequest(camera_id="x", uri="ftp://h/x")))
    assert "scheme 'ftp'" in msg and "cameras.allowed_schemes" in msg
    accepted = {"rtsp": "rtsp://127.0.0.1:9/a", "rtsps": "rtsps://127.0.0.1:9/a", "http": "http://127.0.0.1:9/a.mjpg",
                "https": "HTTPS://127.0.0.1:9/a", "file": str(media / "cam.mp4"), "fileurl": f"file://{media}/cam.mp4",
                "missing": str(media / "later.mp4")}
    for cid, uri in accepted.items():
        c.cameras.AddCamera(pb.AddCameraRequest(camera_id=cid, uri=uri, options={"timeout_s": "1"}))
    assert {x.camera_id for x in c.cameras.ListCameras(pb.ListCamerasRequest()).cameras} == set(accepted)
    assert _wait(lambda: c.cameras.GetCamera(pb.CameraRequest(camera_id="file")).frames_processed > 0)
    # schemes are configurable: an admin who turns http off gets it refused
    server.cfg.cameras.allowed_schemes = ["rtsp", "rtsps"]
    code, msg = _code(lambda: c.cameras.AddCamera(pb.AddCameraRequest(camera_id="h", uri="http://127.0.0.1:9/a")))
    assert code == "INVALID_ARGUMENT" and "scheme 'http'" in msg


# ---- names and metadata ------------------------------------------------------------------------
def test_names_ids_and_metadata_are_bounded(server: FaceEngineServer) -> None:
    c: Client = server.client  # type: ignore[attr-defined]
    lim = server.cfg.limits
    c.ensure_watchlist("w")
    img = pb.Image(encoded=(IMAGES / "obama.jpg").read_bytes())

    def enroll(**kw: object) -> tuple[str, str]:
        req = pb.EnrollPersonRequest(watchlist="w", person_id=str(kw.pop("person_id", "p")), images=[img], **kw)
        return _code(lambda: c.watchlists.EnrollPerson(req))

    cases = [
        (enroll(display_name="n" * 1_000_000), "limits.max_name_chars"),
        (enroll(person_id="p" * (lim.max_id_chars + 1)), "limits.max_id_chars"),
        (enroll(person_id="a\nb"), "control characters"),
        (enroll(metadata={f"k{i}": "v" for i in range(10_000)}), "limits.max_metadata_keys"),
        (enroll(metadata={"k" * (lim.max_metadata_key_chars + 1): "v"}), "limits.max_metadata_key_chars"),
        (enroll(metadata={"k": "v" * (lim.max_metadata_value_chars + 1)}), "limits.max_metadata_value_chars"),
        (_code(lambda: c.watchlists.CreateWatchlist(pb.CreateWatchlistRequest(name="w" * (lim.max_id_chars + 1)))),
         "limits.max_id_chars"),
        (_code(lambda: c.watchlists.CreateWatchlist(pb.CreateWatchlistRequest(
            name="w2", description="d" * (lim.max_text_chars + 1)))), "limits.max_text_chars"),
        (_code(lambda: c.cameras.AddCamera(pb.AddCameraRequest(camera_id="c" * (lim.max_id_chars + 1),
                                                               uri="push"))), "limits.max_id_chars"),
        (_code(lambda: c.cameras.AddCamera(pb.AddCameraRequest(camera_id="c\x00", uri="push"))),
         "control characters"),
    ]
    for (code, msg), named in cases:
        assert code == "INVALID_ARGUMENT" and named in msg, (code, msg[:300], named)
    assert c.watchlists.ListPersons(pb.ListPersonsRequest(watchlist="w")).persons == []
    assert {w.name for w in c.watchlists.ListWatchlists(pb.Empty()).watchlists} == {"w"}
    # at the limits everything is accepted
    p = c.watchlists.EnrollPerson(pb.EnrollPersonRequest(
        watchlist="w", person_id="p" * lim.max_id_chars, display_name="N" * lim.max_name_chars, images=[img],
        metadata={f"{i:0{lim.max_metadata_key_chars}d}": "v" * lim.max_metadata_value_chars
                  for i in range(lim.max_metadata_keys)}))
    assert len(p.metadata) == lim.max_metadata_keys and len(p.display_name) == lim.max_name_chars
    assert np.isfinite(lim.max_name_chars)


def test_opencv_has_its_own_pixel_ceiling() -> None:
    """Behind the header check: OpenCV itself refuses to allocate more than 8192x8192 (engine/__init__.py),
    so a header that Pillow and OpenCV read differently still cannot make a larger image."""
    script = ("import engine, cv2, numpy as np, struct, zlib\n"
              "def chunk(k, d): return struct.pack('>I', len(d)) + k + d + struct.pack('>I', zlib.crc32(k + d))\n"
              "png = b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 8200, 8200, 8, 0, 0, 0, 0))\n"
              "png += chunk(b'IDAT', zlib.compress(bytes(8201))) + chunk(b'IEND', b'')\n"
              "try:\n    print(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR))\n"
              "except cv2.error as e:\n    print('refused' if 'CV_IO_MAX_IMAGE_PIXELS' in str(e) else e)\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=60)
    assert res.stdout.strip() == "refused", (res.stdout, res.stderr)
