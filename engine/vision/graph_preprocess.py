"""Detector pre-processing as ONNX nodes, so a GPU provider does it next to the model.

`prepend_letterbox` rewrites a detector graph to take uint8 BGR frames (N, H, W, 3) as they come
from the decoder and do in the graph what `OnnxFaceDetector.preprocess` does on the CPU: resize
with the aspect kept so the long side is `input_size`, pad right/bottom to a multiple of 32,
colour order, mean/std. A frame is then uploaded once as bytes (4x less than float32) and no CPU
time goes to resizing. `runtime.graph_preprocess` turns it on (`auto`: GPU providers only; the
detector then groups frames by size and sends them as one uint8 batch). Not the default on CPU:
there OpenCV's INTER_AREA resize is both faster and what the models were tuned with; the graph
uses linear resizing, so detections agree closely but not bit for bit (tests/test_runtime.py
measures it on real photos).

>>> letterbox_for(1080, 1920, 640)
(0.3333333333333333, 640, 384)
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.models.registry import ModelSpec

FRAME_INPUT = "frame"


def prepend_letterbox(model: onnx.ModelProto, spec: ModelSpec, input_size: int,
                      auto_scale: tuple[float, float, int] | None = None) -> onnx.ModelProto:
    """A copy of the detector `model` whose input is `frame`: uint8 (N, H, W, 3) BGR, any H and W;
    its outputs are unchanged and map to the letterbox `letterbox_for(h, w, side)` describes, where
    side is `input_size`, or with `auto_scale` = (min_face_px, detector.min_face_size, max_input_side)
    the side `engine.vision.scale.network_side` picks for the frame (computed in the graph)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    weights = {i.name for i in g.initializer}
    net_in = next(i for i in g.input if i.name not in weights)
    target = net_in.name
    p = "pre_"  # prefix for every name this adds

    def const(name: str, value: np.ndarray) -> str:
        g.initializer.append(numpy_helper.from_array(value, p + name))
        return p + name

    base = const("side", np.array([float(input_size)], np.float32))
    thirty_two = const("32", np.array([32.0, 32.0], np.float32))
    one_f = const("one", np.array([1.0, 1.0], np.float32))
    eps = const("eps", np.array([1e-4, 1e-4], np.float32))
    nc = const("nc", np.array([0, 3], np.int64))  # N copied below, C = 3
    zeros6 = const("zeros6", np.zeros(6, np.int64))  # pads: N, C, H, W begins, then N, C ends
    starts, ends = const("s2", np.array([2], np.int64)), const("e4", np.array([4], np.int64))
    roi, scales = const("roi", np.zeros(0, np.float32)), const("scales", np.zeros(0, np.float32))
    mean = const("mean", np.array(spec.mean, np.float32).reshape(-1, 1, 1) if np.ndim(spec.mean)
                 else np.full((1, 1, 1), spec.mean, np.float32))
    std = const("std", np.array(spec.std, np.float32).reshape(-1, 1, 1) if np.ndim(spec.std)
                else np.full((1, 1, 1), spec.std, np.float32))
    nodes = [
        helper.make_node("Cast", [FRAME_INPUT], [p + "f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", [p + "f"], [p + "nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Shape", [p + "nchw"], [p + "shape"]),
        helper.make_node("Slice", [p + "shape", starts, ends], [p + "hw_i"]),
        helper.make_node("Cast", [p + "hw_i"], [p + "hw"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", [p + "hw"], [p + "long"], keepdims=1),
    ]
    side = base
    if auto_scale is not None:  # side = max(base, floor32(min(ceil(long * px / min_face), long, max(base, cap))))
        min_px, min_face, cap = auto_scale
        nodes += [
            helper.make_node("Mul", [p + "long", const("min_px", np.array([min_px], np.float32))], [p + "need0"]),
            helper.make_node("Div", [p + "need0", const("min_face", np.array([float(min_face)], np.float32))],
                             [p + "need1"]),
            helper.make_node("Ceil", [p + "need1"], [p + "need"]),
            helper.make_node("Min", [p + "need", p + "long",
                                     const("cap", np.array([float(max(input_size, cap))], np.float32))],
                             [p + "capped"]),
            helper.make_node("Div", [p + "capped", const("32s", np.array([32.0], np.float32))], [p + "c32"]),
            helper.make_node("Floor", [p + "c32"], [p + "c32f"]),
            helper.make_node("Mul", [p + "c32f", p + "32s"], [p + "capped32"]),
            helper.make_node("Max", [p + "capped32", base], [p + "auto_side"]),
        ]
        side = p + "auto_side"
    nodes += [
        helper.make_node("Div", [side, p + "long"], [p + "scale"]),
        helper.make_node("Mul", [p + "hw", p + "scale"], [p + "hw_scaled"]),
        # resized size: max(1, round(side * scale)), as the CPU path
        helper.make_node("Round", [p + "hw_scaled"], [p + "hw_round"]),
        helper.make_node("Max", [p + "hw_round", one_f], [p + "hw_new_f"]),
        helper.make_node("Cast", [p + "hw_new_f"], [p + "hw_new"], to=TensorProto.INT64),
        # network size: max(32, ceil(side * scale / 32) * 32)
        helper.make_node("Div", [p + "hw_scaled", thirty_two], [p + "q"]),
        helper.make_node("Sub", [p + "q", eps], [p + "q_eps"]),  # float32 1200 * (640 / 1200) is 640.00006
        helper.make_node("Ceil", [p + "q_eps"], [p + "qc"]),
        helper.make_node("Mul", [p + "qc", thirty_two], [p + "t_f0"]),
        helper.make_node("Max", [p + "t_f0", thirty_two], [p + "t_f"]),
        helper.make_node("Cast", [p + "t_f"], [p + "t"], to=TensorProto.INT64),
        helper.make_node("Sub", [p + "t", p + "hw_new"], [p + "pad_hw"]),
        helper.make_node("Slice", [p + "shape", const("s0", np.array([0], np.int64)),
                                   const("e1", np.array([1], np.int64))], [p + "n"]),
        helper.make_node("Slice", [nc, const("s1", np.array([1], np.int64)), const("e2", np.array([2], np.int64))],
                         [p + "c"]),
        helper.make_node("Concat", [p + "n", p + "c", p + "hw_new"], [p + "sizes"], axis=0),
        helper.make_node("Resize", [p + "nchw", roi, scales, p + "sizes"], [p + "resized"], mode="linear",
                         coordinate_transformation_mode="half_pixel"),
        helper.make_node("Concat", [zeros6, p + "pad_hw"], [p + "pads0"], axis=0),
        helper.make_node("Pad", [p + "resized", p + "pads0"], [p + "padded"], mode="constant"),
    ]
    last = p + "padded"
    if spec.color == "RGB":
        nodes.append(helper.make_node("Gather", [last, const("bgr2rgb", np.array([2, 1, 0], np.int64))],
                                      [p + "rgb"], axis=1))
        last = p + "rgb"
    nodes += [
        helper.make_node("Sub", [last, mean], [p + "centred"]),
        helper.make_node("Div", [p + "centred", std], [target]),
    ]
    old = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old)
    g.input.remove(net_in)
    g.input.insert(0, helper.make_tensor_value_info(FRAME_INPUT, TensorProto.UINT8, ["N", "H", "W", 3]))
    del g.value_info[:]
    for out in g.output:
        out.type.tensor_type.ClearField("shape")
    return m


def letterbox_for(h: int, w: int, input_size: int) -> tuple[float, int, int]:
    """(scale, network width, network height) the graph uses for an h x w frame (as the CPU path)."""
    scale = input_size / max(w, h)
    return (scale, max(32, int(np.ceil(w * scale / 32)) * 32), max(32, int(np.ceil(h * scale / 32)) * 32))
