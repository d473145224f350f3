"""A local RTSP camera for tests: GStreamer's RTSP server (Debian: python3-gi, gir1.2-gst-rtsp-server-1.0,
gstreamer1.0-plugins-good) serving an H.264 MP4 file as rtsp://127.0.0.1:PORT/live, paced at its frame rate.

Run with a Python that has the GStreamer bindings (the system one):  python3 rtsp_server.py VIDEO.mp4
It binds a free port on 127.0.0.1, prints the port on the first line of stdout, and serves until killed.
"""

from __future__ import annotations

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main(video: str) -> None:
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service("0")  # any free port; the bound one is printed below
    factory = GstRtspServer.RTSPMediaFactory()
    # the file's own H.264 stream, packetised as a camera would send it (no re-encoding)
    factory.set_launch(f'( filesrc location="{video}" ! qtdemux ! rtph264pay name=pay0 pt=96 config-interval=1 )')
    factory.set_shared(True)
    server.get_mount_points().add_factory("/live", factory)
    if server.attach(None) == 0:
        sys.exit("rtsp_server: cannot attach the RTSP server")
    print(server.get_bound_port(), flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main(sys.argv[1])
