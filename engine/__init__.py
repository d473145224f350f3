"""faceengine: face-recognition video analytics engine."""

__version__ = "0.1.0"
