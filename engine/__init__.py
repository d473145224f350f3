"""faceengine: face-recognition video analytics engine."""

import os

# Defence in depth against image bombs: OpenCV's own ceiling on a decoded image (read once, when cv2 is
# first imported). The engine checks `[limits]` from the header before decoding (engine/vision/image.py);
# this ceiling (8192 x 8192, the largest image the default limits allow) catches a header that Pillow and
# OpenCV would read differently. Set OPENCV_IO_MAX_IMAGE_PIXELS yourself to change it.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(8192 * 8192))

__version__ = "0.1.0"
