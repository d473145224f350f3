"""Video: decoding, sources, the per-camera pipeline, tracking and events.

FFmpeg (inside OpenCV) writes its own log lines straight to stderr, and they name the URLs it opens,
credentials included (`Error when loading first segment 'http://user:pass@...'`); no Python filter can
reach them. So its log level is set to quiet before any capture is opened, unless the operator sets
OPENCV_FFMPEG_LOGLEVEL (for debugging, knowing the lines may then show camera credentials). The engine
reports stream errors itself, with the URI redacted (`sources.redact_uri`).
"""

import os

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET: read when FFmpeg is first used
