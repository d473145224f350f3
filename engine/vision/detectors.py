"""Face detectors on onnxruntime (YuNet, SCRFD) behind one interface.

Frames of any size are letterboxed (aspect kept, padded right/bottom) to the network size, run
as one batch, decoded per family, filtered (score, NMS, minimum size, max faces) and mapped back
to original image coordinates.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from engine.config import DetectorConfig, RuntimeConfig
from engine.models.factory import load_runner
from engine.models.registry import ModelRegistry, ModelSpec
from engine.models.runner import BatchVerdict, InferenceRunner, RunFn
from engine.models.session import warmup_on
from engine.settings import detector_score_threshold, gpu_provider
from engine.vision.batchcheck import compare_detections, sample_images
from engine.vision.detections import Detections
from engine.vision.graph_preprocess import letterbox_for, prepend_letterbox
from engine.vision.image import check_array
from engine.vision.scale import DEFAULT_MIN_FACE_PX, input_size, network_side

STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class DetectTiming:
    """Where one `detect_batch` call spent its time, in seconds for the whole batch.

    preprocess: letterbox into the float input on the CPU (with graph pre-processing only stacking
    the uint8 frames: the letterbox runs inside the graph and is counted in `model`). model: the
    runner call. postprocess: decoding the heads, NMS and mapping boxes back."""

    frames: int
    preprocess: float
    model: float
    postprocess: float


@dataclass(frozen=True)
class Letterbox:
    """How an image was scaled into the network input."""

    scale: float
    width: int  # network input width
    height: int


class FaceDetector(ABC):
    """Detect faces in BGR images. `detect_batch` runs several frames in one model call."""

    name: str
    runner: InferenceRunner
    spec: ModelSpec
    score_threshold: float  # resolved: detector.score_threshold or the model's own

    def detect(self, image: np.ndarray) -> Detections:
        return self.detect_batch([image])[0]

    @abstractmethod
    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]: ...

    def detect_scaled(self, images: Sequence[np.ndarray], scale: float) -> list[Detections]:
        """Detections of frame regions at `scale` network pixels per image pixel (default: as `detect_batch`)."""
        return self.detect_batch(images)

    def last_timing(self) -> DetectTiming | None:
        """The split of this thread's last `detect_batch` call (None when the detector keeps none)."""
        return None


class OnnxFaceDetector(FaceDetector):
    """Shared letterbox, batching and post-processing; subclasses decode their heads.

    The model runs in an injected `InferenceRunner` (built by `engine.models.factory`)."""

    def __init__(self, spec: ModelSpec, runner: InferenceRunner, cfg: DetectorConfig,
                 graph_letterbox: bool = False) -> None:
        self.spec = spec
        self.name = spec.name
        self.runner = runner
        self.graph_letterbox = graph_letterbox
        """True when the runner's graph starts with the pre-processing nodes (`prepend_letterbox`):
        it then takes uint8 BGR frames (N, H, W, 3) and letterboxes them itself."""
        self.cfg = cfg
        self.score_threshold = detector_score_threshold(cfg, spec)  # "auto": the model's own (manifest)
        self._anchor_cache: dict[tuple[int, int, int], np.ndarray] = {}
        self._local = threading.local()

    def target_size(self, w: int, h: int) -> tuple[int, int]:
        """Network input (width, height): long side from `scale.network_side` (faces of
        detector.min_face_size stay findable), each side padded to a multiple of 32."""
        return input_size(w, h, self.network_side(w, h))

    def network_side(self, w: int, h: int) -> int:
        """Long side of the network input for a w x h image (`scale.network_side`; the graph
        letterbox computes the same in ONNX nodes)."""
        return network_side(w, h, self.cfg, self.min_face_px)

    @property
    def min_face_px(self) -> float:
        """Smallest face (network pixels) this model finds reliably (manifest `min_face_px`)."""
        return float(self.spec.extra.get("min_face_px", DEFAULT_MIN_FACE_PX))  # type: ignore[arg-type]

    def preprocess(self, image: np.ndarray, size: tuple[int, int], out: np.ndarray,
                   scale: float | None = None) -> Letterbox:
        """Letterbox `image` into the float32 buffer `out`, shaped 3xHxW (what the network eats, so no
        transpose copy is needed) or HxWx3; the padding (right/bottom) is set to normalised black. `scale`:
        network pixels per image pixel (default: the largest that fits `size`)."""
        h, w = image.shape[:2]
        tw, th = size
        scale = min(tw / w, th / h) if scale is None else scale
        nw, nh = min(tw, max(1, round(w * scale))), min(th, max(1, round(h * scale)))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(image, (nw, nh), interpolation=interp)
        if self.spec.color == "RGB":
            resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
        pad = -self.spec.mean / self.spec.std
        if out.shape == (3, th, tw):
            region = out[:, :nh, :nw]
            for c, plane in enumerate(cv2.split(resized)):
                region[c] = plane
            out[:, nh:, :] = pad
            out[:, :nh, nw:] = pad
        else:
            region = out[:nh, :nw]
            region[...] = resized
            out[nh:, :] = pad
            out[:nh, nw:] = pad
        if self.spec.mean or self.spec.std != 1.0:
            region -= self.spec.mean
            region /= self.spec.std
        return Letterbox(scale, tw, th)

    def _input_buffer(self, n: int, h: int, w: int) -> np.ndarray:
        """A reused (n, 3, h, w) float32 input buffer, one per thread: page-faulting a fresh 20+ MB
        array (and a transposed copy of it) for every batch cost more than the resize itself."""
        return self._buffer((n, 3, h, w), np.float32)

    def _buffer(self, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """A reused input buffer of `shape`, one per thread (n is the runner's padded batch, so a bucket
        needs no copy; spare rows keep old frames, which only pad)."""
        cache: dict[tuple[tuple[int, ...], type], np.ndarray] | None = getattr(self._local, "buffers", None)
        if cache is None:
            cache = self._local.buffers = {}
        buf = cache.get((shape, dtype))
        if buf is None:
            if len(cache) >= 6:  # frame sizes and buckets vary little; keep the few in use
                cache.pop(next(iter(cache)))
            buf = cache[(shape, dtype)] = np.zeros(shape, dtype)
        return buf

    def last_timing(self) -> DetectTiming | None:
        return getattr(self._local, "timing", None)

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        images = [check_array(im) for im in images]
        if self.graph_letterbox:
            return self._detect_frames(images)
        return self._detect_sized(images, [self.target_size(im.shape[1], im.shape[0]) for im in images])

    def detect_scaled(self, images: Sequence[np.ndarray], scale: float) -> list[Detections]:
        """Detections of regions cut from a frame, each run at `scale` network pixels per image pixel (1 = as
        they are: a 24 px face stays 24 px), not letterboxed up to `input_size` as small stills are. Regions
        whose sides are multiples of 32 / `scale` run unpadded; equal shapes share one runner call. With the
        graph letterbox (GPU) the graph picks the size as for any image."""
        images = [check_array(im) for im in images]
        if self.graph_letterbox:
            return self._detect_frames(images)
        sizes = [(max(32, math.ceil(im.shape[1] * scale / 32) * 32), max(32, math.ceil(im.shape[0] * scale / 32) * 32))
                 for im in images]
        return self._detect_sized(images, sizes, scale)

    def _detect_sized(self, images: list[np.ndarray], sizes: list[tuple[int, int]],
                      scale: float | None = None) -> list[Detections]:
        """CPU letterbox of each image into its network (width, height); equal sizes run as one batch."""
        results: list[Detections | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(sizes):
            groups.setdefault(size, []).append(i)
        pre = model = post = 0.0  # a perf_counter pair per step: the split bench/metrics report
        for size, idx in groups.items():
            tw, th = size
            t0 = time.perf_counter()
            buf = self._input_buffer(self.runner.padded(len(idx)), th, tw)
            boxes = [self.preprocess(images[i], size, buf[k], scale) for k, i in enumerate(idx)]
            t1 = time.perf_counter()
            outs = self.runner.run(buf, len(idx))
            t2 = time.perf_counter()
            for k, i in enumerate(idx):
                raw_boxes, kps, scores = self.decode([o[k] for o in outs], tw, th)
                results[i] = self.postprocess(raw_boxes, kps, scores, boxes[k], images[i].shape)
            pre, model, post = pre + t1 - t0, model + t2 - t1, post + time.perf_counter() - t2
        self._local.timing = DetectTiming(len(images), pre, model, post)
        return [r if r is not None else Detections.empty() for r in results]

    def _detect_frames(self, images: list[np.ndarray]) -> list[Detections]:
        """Graph pre-processing: frames of one size go to the runner as one uint8 batch."""
        results: list[Detections | None] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape, []).append(i)
        pre = model = post = 0.0
        for shape, idx in groups.items():
            t0 = time.perf_counter()
            scale, tw, th = letterbox_for(shape[0], shape[1], self.network_side(shape[1], shape[0]))
            # not cached: a 32-frame 1080p bucket is 200 MB a thread; spare rows of np.empty are never touched
            frames = np.empty((self.runner.padded(len(idx)), *shape), np.uint8)
            for k, i in enumerate(idx):
                frames[k] = images[i]
            t1 = time.perf_counter()
            outs = self.runner.run(frames, len(idx))
            t2 = time.perf_counter()
            for k, i in enumerate(idx):
                raw_boxes, kps, scores = self.decode([o[k] for o in outs], tw, th)
                results[i] = self.postprocess(raw_boxes, kps, scores, Letterbox(scale, tw, th), shape)
            pre, model, post = pre + t1 - t0, model + t2 - t1, post + time.perf_counter() - t2
        self._local.timing = DetectTiming(len(images), pre, model, post)
        return [r if r is not None else Detections.empty() for r in results]

    def _detect_copies(self, frame: np.ndarray, rows: int) -> list[Detections]:
        """`rows` copies of one frame in one batched call (warm-up)."""
        return self.detect_batch([frame] * rows)

    def warm_up(self, frame_sizes: Sequence[str]) -> float:
        """Run every bucket at each frame size (WIDTHxHEIGHT, one per stream class) through `detect_batch`
        with black frames, so each shape steady state will use is met once at load; returns seconds."""
        total = 0.0
        for size in frame_sizes:
            w, h = (int(v) for v in size.lower().split("x"))
            frame = np.zeros((h, w, 3), np.uint8)
            total += self.runner.warm_up(functools.partial(self._detect_copies, frame), f"{w}x{h} frames")
        return total

    @abstractmethod
    def decode(self, outs: list[np.ndarray], w: int, h: int,
               threshold: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Network outputs of one image -> (boxes Mx4 xyxy, kps Mx5x2, scores M) in input pixels,
        candidates scoring below `threshold` (default: the configured score threshold) left out."""

    def batch_check(self, run_batched: RunFn, run_single: RunFn, side: int = 320) -> BatchVerdict:
        """Decode every candidate (no threshold) of two sample images (drawn faces on a random
        background) through the batched graph and through single calls, and compare boxes, scores
        and landmarks of the candidates that could become faces (`compare_detections`)."""
        imgs = sample_images(2, side, side)
        buf: np.ndarray = imgs
        if not self.graph_letterbox:
            buf = np.empty((2, 3, side, side), np.float32)
            for k in range(2):
                self.preprocess(imgs[k], (side, side), buf[k])
        _, tw, th = (letterbox_for(side, side, self.network_side(side, side)) if self.graph_letterbox
                     else (1.0, side, side))
        got, ref = run_batched(buf), run_single(buf)
        decode = [(self.decode([o[k] for o in ref], tw, th, -np.inf),
                   self.decode([o[k] for o in got], tw, th, -np.inf))
                  for k in range(2)]
        return compare_detections([r for r, _ in decode], [c for _, c in decode])

    def postprocess(self, boxes: np.ndarray, kps: np.ndarray, scores: np.ndarray, lb: Letterbox,
                    shape: tuple[int, ...]) -> Detections:
        keep = scores >= self.score_threshold
        boxes, kps, scores = boxes[keep], kps[keep], scores[keep]
        if len(scores) == 0:
            return Detections.empty()
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        idx = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), self.score_threshold, self.cfg.nms_threshold)
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        boxes, kps, scores = boxes[idx] / lb.scale, kps[idx] / lb.scale, scores[idx]
        h, w = shape[:2]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        sizes = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        keep = sizes >= self.cfg.min_face_size
        boxes, kps, scores = boxes[keep], kps[keep], scores[keep]
        order = np.argsort(-scores)[: self.cfg.max_faces]
        return Detections(boxes[order].astype(np.float32), kps[order].astype(np.float32),
                          scores[order].astype(np.float32))

    def _grid(self, w: int, h: int, stride: int, per_cell: int) -> np.ndarray:
        """(cells*per_cell, 2) grid cell column/row indices, row-major, cached per input size."""
        key = (w, h, stride * 10 + per_cell)
        grid = self._anchor_cache.get(key)
        if grid is None:
            cols, rows = w // stride, h // stride
            yy, xx = np.mgrid[:rows, :cols]
            grid = np.stack([xx, yy], axis=-1).reshape(-1, 2).astype(np.float32)
            if per_cell > 1:
                grid = np.repeat(grid, per_cell, axis=0)
            self._anchor_cache[key] = grid
        return grid


class YuNetDetector(OnnxFaceDetector):
    """YuNet (libfacedetection / OpenCV Zoo 2023mar): cls, obj, bbox, kps heads at strides 8/16/32."""

    def decode(self, outs: list[np.ndarray], w: int, h: int,
               threshold: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        thr = self.score_threshold if threshold is None else threshold
        all_b, all_k, all_s = [], [], []
        for i, stride in enumerate(STRIDES):
            cls, obj = outs[i].reshape(-1), outs[3 + i].reshape(-1)
            bbox, kps = outs[6 + i].reshape(-1, 4), outs[9 + i].reshape(-1, 10)
            score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
            sel = np.nonzero(score >= thr)[0]
            if sel.size == 0:
                continue
            grid = self._grid(w, h, stride, 1)[sel]
            b = bbox[sel]
            cxcy = (grid + b[:, :2]) * stride
            wh = np.exp(b[:, 2:]) * stride
            all_b.append(np.concatenate([cxcy - wh / 2, cxcy + wh / 2], axis=1))
            all_k.append((kps[sel].reshape(-1, 5, 2) + grid[:, None, :]) * stride)
            all_s.append(score[sel])
        return _cat(all_b, all_k, all_s)


class ScrfdDetector(OnnxFaceDetector):
    """SCRFD (InsightFace): scores, distance boxes and keypoints at strides 8/16/32, 2 anchors a cell."""

    def decode(self, outs: list[np.ndarray], w: int, h: int,
               threshold: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        thr = self.score_threshold if threshold is None else threshold
        all_b, all_k, all_s = [], [], []
        n = len(outs) // 3
        anchors = 2 if n == 3 else 1
        for i, stride in enumerate(STRIDES[:n]):
            scores = outs[i].reshape(-1)
            sel = np.nonzero(scores >= thr)[0]
            if sel.size == 0:
                continue
            centers = self._grid(w, h, stride, anchors)[sel] * stride
            d = outs[n + i].reshape(-1, 4)[sel] * stride
            all_b.append(np.concatenate([centers - d[:, :2], centers + d[:, 2:]], axis=1))
            k = outs[2 * n + i].reshape(-1, 10)[sel].reshape(-1, 5, 2) * stride
            all_k.append(centers[:, None, :] + k)
            all_s.append(scores[sel])
        return _cat(all_b, all_k, all_s)


def _cat(b: list[np.ndarray], k: list[np.ndarray], s: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not s:
        return np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros((0,), np.float32)
    return np.concatenate(b), np.concatenate(k), np.concatenate(s)


_FAMILIES: dict[str, type[OnnxFaceDetector]] = {"yunet": YuNetDetector, "scrfd": ScrfdDetector}


def load_detector(registry: ModelRegistry, name: str, cfg: DetectorConfig, runtime: RuntimeConfig) -> FaceDetector:
    """Build the detector for a manifest name (family picks the decoder) on a runner from the
    factory, then settle the batch rewrite with the detector's own check (decoded faces)."""
    spec = registry.spec(name)
    if spec.task != "detector" or spec.family not in _FAMILIES:
        raise ValueError(f"model {name} is not a supported detector (task={spec.task}, family={spec.family})")
    graph = runtime.runner == "onnx" and (runtime.graph_preprocess == "on" or (
        runtime.graph_preprocess == "auto" and gpu_provider(runtime.provider)))
    auto = None
    if cfg.auto_scale and cfg.min_face_size > 0:
        auto = (float(spec.extra.get("min_face_px", DEFAULT_MIN_FACE_PX)), cfg.min_face_size,  # type: ignore[arg-type]
                cfg.max_input_side)
    transform = (lambda m: prepend_letterbox(m, spec, cfg.input_size, auto)) if graph else None
    runner = load_runner(registry, name, runtime, dynamic_hw=True, transform=transform)
    det = _FAMILIES[spec.family](spec, runner, cfg, graph_letterbox=graph)
    runner.verify_batching(det.batch_check)
    runner.try_fp16(det.batch_check)  # fp16 against fp32: the same decoded-faces comparison (off: no-op)
    if warmup_on(runtime):
        det.warm_up(runtime.warmup_frame_sizes)
    return det
