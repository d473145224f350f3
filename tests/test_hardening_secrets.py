"""Camera credentials stay out of the log: FFmpeg's own lines (written straight to stderr by the library,
naming the URL it opens, user:pass included) are silenced before the first capture, and secret-looking
query keys (sessionid, JSESSIONID, X-Amz-Signature, api_key, ...) are masked wherever a URI is shown."""

from __future__ import annotations

import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from engine.video.sources import redact_uri
from tests.shared_data import ROOT

PLAYLIST = ("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
            "#EXTINF:2.0,\nseg0.ts?sessionid=Sess10nX\n#EXTINF:2.0,\nseg1.ts\n#EXT-X-ENDLIST\n")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def test_ffmpeg_lines_never_show_camera_credentials(tmp_path: Path) -> None:
    (tmp_path / "live.m3u8").write_text(PLAYLIST)  # its segments are missing: FFmpeg reports an error
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(tmp_path)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://admin:S3cretPw@127.0.0.1:{httpd.server_address[1]}/live.m3u8?token=T0kenX"
    script = ("import sys, cv2\n"  # cv2 first, as any module might import it: the engine still silences FFmpeg
              "from engine.video.decode import cpu_decoders\n"
              "from engine.video.sources import redact_uri\n"
              "u = sys.argv[1]\n"
              "r = cpu_decoders().video.open(u, network=True, timeout_s=5, shown=redact_uri(u))\n"
              "print('opened' if r is not None else 'not opened')\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "OPENCV_FFMPEG_LOGLEVEL"}
    try:
        out = subprocess.run([sys.executable, "-c", script, url], cwd=ROOT, capture_output=True, text=True,
                             timeout=60, env=env)
    finally:
        httpd.shutdown()
    assert "opened" in out.stdout, out.stderr
    for secret in ("S3cretPw", "T0kenX", "Sess10nX"):
        assert secret not in out.stderr, out.stderr


def test_secret_looking_query_keys_are_masked() -> None:
    shown = redact_uri("rtsp://cam:554/live?channel=1&sessionid=A1&JSESSIONID=B2&X-Amz-Signature=C3&api_key=D4"
                       "&access_token=E5&fps=5")
    assert shown == ("rtsp://cam:554/live?channel=1&sessionid=***&JSESSIONID=***&X-Amz-Signature=***&api_key=***"
                     "&access_token=***&fps=5")
    assert redact_uri("http://h/live.m3u8?sid=9&quality=hi") == "http://h/live.m3u8?sid=***&quality=hi"
