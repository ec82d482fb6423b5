"""DWPose whole-body pose: a YOLOX person detector and the RTMPose-style `dw-ll_ucoco_384`
pose model, both ONNX, run with onnxruntime (CUDA provider when asked for and present, else CPU).

Pipeline per frame (following IDEA-Research/DWPose and comfyui_controlnet_aux):
1. YOLOX (`yolox_l.onnx`, input "images" [1, 3, 640, 640], output [1, 8400, 85]): the RGB frame
   letterboxed into 640x640 (scaled by r = min(640/h, 640/w), top-left, padding 114, float,
   no normalisation); grid decode with strides 8 / 16 / 32 ((xy + grid) * stride,
   exp(wh) * stride), score = objectness * class probability, NMS 0.45 over scores > 0.1,
   keep person boxes (class 0) with score > 0.3.
2. Pose (`dw-ll_ucoco_384.onnx`, input "input" [N, 3, 384, 288], outputs "simcc_x" [N, 133, 576]
   and "simcc_y" [N, 133, 768]): each box -> centre and scale * 1.25, widened to aspect
   288/384, affine-warped to 288x384, (RGB - mean) / std with mean 123.675, 116.28, 103.53 and
   std 58.395, 57.12, 57.375. All persons of a frame run as one batch (one at a time when the
   model has a fixed batch of 1).
3. SimCC decode: argmax along each axis / split ratio 2.0, score = min of the two maxima
   (location -1 where the score is <= 0); back to frame pixels.
4. COCO-WholeBody 133 points -> 134 with a neck (mean of the shoulders, visible when both
   shoulders score > 0.3) inserted at 17, body reordered to the OpenPose-18 order.
   Points scoring > 0.3 are visible.

Like the references, the RGB frame goes to both networks unchanged.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np

from ..common.errors import VideoForgeError
from ._deps import optional, require
from .frames import Callback, detection_size, output_size, resize_image

WHAT = "OpenPose (DWPose)"
cv2 = optional("cv2", WHAT)

NUM_KEYPOINTS = 133
DET_SIZE = (640, 640)
POSE_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
POSE_STD = np.array([58.395, 57.12, 57.375], np.float32)
BBOX_PADDING = 1.25
NMS_IOU, NMS_SCORE, BOX_SCORE, KPT_SCORE = 0.45, 0.1, 0.3, 0.3

# COCO order -> OpenPose-18 order (after the neck is inserted at index 17)
MMPOSE_IDX = [17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3]
OPENPOSE_IDX = [1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17]
# slices of the 134-point layout
BODY, FOOT, FACE = slice(0, 18), slice(18, 24), slice(24, 92)
LEFT_HAND, RIGHT_HAND = slice(92, 113), slice(113, 134)

HINT = ("DWPose needs yolox_l.onnx and dw-ll_ucoco_384.onnx (huggingface.co/yzd-v/DWPose) in "
        "ComfyUI/models/annotators/ (a subfolder is fine).")


# ---------------------------------------------------------------------------- sessions
_sessions: dict[tuple, object] = {}
_sessions_lock = threading.Lock()


def providers_for(use_gpu: bool) -> list[str]:
    ort = require(WHAT, "onnxruntime")
    avail = ort.get_available_providers()
    if use_gpu and "CUDAExecutionProvider" in avail:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def get_session(path: str, providers: list[str]):
    """onnxruntime session, cached by (file, size, mtime, providers)."""
    if not os.path.isfile(path):
        raise VideoForgeError(f"{path}: file not found. {HINT}")
    ort = require(WHAT, "onnxruntime")
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, tuple(providers))
    with _sessions_lock:
        sess = _sessions.get(key)
        if sess is None:
            try:
                sess = ort.InferenceSession(path, providers=list(providers))
            except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
                raise VideoForgeError(f"{path}: onnxruntime cannot load it as an ONNX model ({e}). "
                                      f"The file may be truncated or not an ONNX model. {HINT}") from e
            _sessions[key] = sess
        return sess


def clear_sessions() -> None:
    with _sessions_lock:
        _sessions.clear()


def _fixed(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


# ---------------------------------------------------------------------------- detector
def letterbox(img: np.ndarray, size: tuple[int, int] = DET_SIZE) -> tuple[np.ndarray, float]:
    """uint8 HxWx3 -> float32 3xHxW in a (h, w) canvas padded with 114, and the scale used."""
    h, w = img.shape[:2]
    r = min(size[0] / h, size[1] / w)
    nh, nw = int(h * r), int(w * r)
    canvas = np.full((size[0], size[1], 3), 114, np.uint8)
    canvas[:nh, :nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32), r


def yolox_grid(size: tuple[int, int], strides=(8, 16, 32)) -> tuple[np.ndarray, np.ndarray]:
    """(grid xy [A, 2], stride [A, 1]) for the anchors of a YOLOX head at input `size` (h, w)."""
    grids, strs = [], []
    for s in strides:
        gh, gw = size[0] // s, size[1] // s
        xv, yv = np.meshgrid(np.arange(gw), np.arange(gh))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strs.append(np.full((gh * gw, 1), s))
    return np.concatenate(grids).astype(np.float32), np.concatenate(strs).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy NMS (boxes x1 y1 x2 y2, +1 pixel areas as in the reference); kept indices."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[overlap <= iou]
    return keep


def decode_yolox(pred: np.ndarray, ratio: float, size: tuple[int, int] = DET_SIZE) -> np.ndarray:
    """One image's raw YOLOX output [A, 5 + classes] -> person boxes [P, 4] (x1 y1 x2 y2, in
    the frame's pixels) sorted by score, after NMS. Only class 0 matters, and the reference's
    class-aware NMS treats each class alone, so class 0 is decoded alone."""
    grid, stride = yolox_grid(size)
    if pred.shape[0] != grid.shape[0]:
        raise VideoForgeError(f"person detector output has {pred.shape[0]} anchors; a YOLOX head "
                              f"at {size[1]}x{size[0]} has {grid.shape[0]}. {HINT}")
    xy = (pred[:, :2] + grid) * stride
    wh = np.exp(pred[:, 2:4]) * stride
    scores = pred[:, 4] * pred[:, 5]
    mask = scores > NMS_SCORE
    if not mask.any():
        return np.zeros((0, 4), np.float32)
    xy, wh, scores = xy[mask], wh[mask], scores[mask]
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1) / ratio
    keep = nms(boxes, scores, NMS_IOU)
    boxes, scores = boxes[keep], scores[keep]
    return boxes[scores > BOX_SCORE].astype(np.float32)


# ---------------------------------------------------------------------------- pose model
def box_to_center_scale(box: np.ndarray, aspect: float, padding: float = BBOX_PADDING):
    """x1 y1 x2 y2 -> (centre [2], scale [2] (w, h)) padded and widened to aspect w/h."""
    x1, y1, x2, y2 = [float(v) for v in box[:4]]
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2], np.float64)
    w, h = (x2 - x1) * padding, (y2 - y1) * padding
    if w > h * aspect:
        h = w / aspect
    else:
        w = h * aspect
    return center, np.array([w, h], np.float64)


def crop_matrix(center: np.ndarray, scale: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """2x3 affine matrix mapping the box (centre, scale) onto a (w, h) = size crop."""
    s = size[0] / scale[0]
    return np.array([[s, 0.0, size[0] / 2 - s * center[0]],
                     [0.0, s, size[1] / 2 - s * center[1]]], np.float64)


def simcc_decode(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float = 2.0):
    """[N, K, Wx], [N, K, Wy] -> (locations [N, K, 2] in input pixels, scores [N, K]).
    The location is -1 where the score is <= 0."""
    locs = np.stack([simcc_x.argmax(-1), simcc_y.argmax(-1)], -1).astype(np.float32)
    scores = np.minimum(simcc_x.max(-1), simcc_y.max(-1)).astype(np.float32)
    locs[scores <= 0] = -1
    return locs / split_ratio, scores


def to_openpose_layout(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO-WholeBody [N, 133, 2] + [N, 133] -> [N, 134, 2] + [N, 134]: neck inserted at 17 (mean
    of the shoulders; score 1 when both shoulders score > 0.3, else 0) and the body in
    OpenPose-18 order (nose, neck, r-shoulder, r-elbow, r-wrist, l-shoulder, ..., r-eye, l-eye,
    r-ear, l-ear); feet, face and hands follow unchanged."""
    if keypoints.shape[1:] != (NUM_KEYPOINTS, 2) or scores.shape[1:] != (NUM_KEYPOINTS,):
        raise VideoForgeError(f"expected {NUM_KEYPOINTS} whole-body keypoints, got "
                              f"{keypoints.shape} / {scores.shape}.")
    info = np.concatenate([keypoints, scores[..., None]], -1)
    neck = info[:, [5, 6]].mean(1)
    neck[:, 2] = ((info[:, 5, 2] > KPT_SCORE) & (info[:, 6, 2] > KPT_SCORE)).astype(info.dtype)
    info = np.insert(info, 17, neck, axis=1)
    info[:, OPENPOSE_IDX] = info[:, MMPOSE_IDX]
    return info[..., :2], info[..., 2]


@dataclass
class Pose:
    """One frame's people: keypoints [P, 134, 2] in pixels of a (height, width) canvas,
    scores [P, 134]."""
    keypoints: np.ndarray
    scores: np.ndarray
    height: int
    width: int

    def scaled(self, height: int, width: int) -> "Pose":
        k = self.keypoints * np.array([width / self.width, height / self.height], np.float32)
        return Pose(k.astype(np.float32), self.scores, height, width)

    @property
    def visible(self) -> np.ndarray:
        return self.scores > KPT_SCORE


class DWPose:
    """The two ONNX models; call `detect(frame)` or `__call__(frames, ...)`."""

    def __init__(self, det_path: str, pose_path: str, use_gpu: bool = False) -> None:
        require(WHAT, "cv2", "onnxruntime")  # both, named in one message
        providers = providers_for(use_gpu)
        self.det = get_session(det_path, providers)
        self.pose = get_session(pose_path, providers)
        self.det_path, self.pose_path = det_path, pose_path
        self._check_models()

    def _check_models(self) -> None:
        di, douts = self.det.get_inputs(), self.det.get_outputs()
        if len(di) != 1 or len(di[0].shape) != 4 or len(douts) < 1 or len(douts[0].shape) != 3:
            raise VideoForgeError(
                f"{self.det_path} does not look like a YOLOX person detector (expected input "
                f"'images' [1, 3, 640, 640] and output [1, 8400, 85]; it has inputs "
                f"{[(i.name, i.shape) for i in di]}, outputs {[(o.name, o.shape) for o in douts]}). {HINT}")
        h, w = _fixed(di[0].shape[2]), _fixed(di[0].shape[3])
        self.det_size = (h or DET_SIZE[0], w or DET_SIZE[1])
        anchors = yolox_grid(self.det_size)[0].shape[0]
        a, c = _fixed(douts[0].shape[1]), _fixed(douts[0].shape[2])
        if a not in (None, anchors) or (c is not None and c < 6) or _fixed(di[0].shape[1]) not in (None, 3):
            raise VideoForgeError(
                f"{self.det_path} does not look like a YOLOX person detector: output "
                f"{douts[0].name!r} {douts[0].shape}, expected [1, {anchors}, 85] for input "
                f"{di[0].name!r} {di[0].shape} (yolox_l.onnx: images [1, 3, 640, 640] -> output "
                f"[1, 8400, 85]). {HINT}")
        self.det_batch = _fixed(di[0].shape[0])  # None: any batch
        self.det_input = di[0].name
        pi, pouts = self.pose.get_inputs(), self.pose.get_outputs()
        names = [o.name for o in pouts]
        ix = names.index("simcc_x") if "simcc_x" in names else 0
        iy = names.index("simcc_y") if "simcc_y" in names else 1
        ok = len(pi) == 1 and len(pi[0].shape) == 4 and len(pouts) >= 2
        ok = ok and all(len(pouts[i].shape) == 3 and _fixed(pouts[i].shape[1]) in (None, NUM_KEYPOINTS)
                        for i in (ix, iy))
        if not ok:
            raise VideoForgeError(
                f"{self.pose_path} does not look like the DWPose whole-body model (expected input "
                f"'input' [N, 3, 384, 288] and outputs 'simcc_x' [N, 133, 576], 'simcc_y' "
                f"[N, 133, 768]; it has inputs {[(i.name, i.shape) for i in pi]}, outputs "
                f"{[(o.name, o.shape) for o in pouts]}). {HINT}")
        self.pose_input = pi[0].name
        self.pose_outputs = [names[ix], names[iy]]
        ph, pw = _fixed(pi[0].shape[2]), _fixed(pi[0].shape[3])
        self.pose_size = (pw or 288, ph or 384)  # (w, h)
        self.pose_batch = _fixed(pi[0].shape[0])
        sx = _fixed(pouts[ix].shape[2])
        self.split_ratio = sx / self.pose_size[0] if sx else 2.0

    # -- detection
    def detect_people(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Person boxes [P, 4] for each frame."""
        inputs = [letterbox(f, self.det_size) for f in frames]
        out = []
        step = self.det_batch or len(frames)
        for i in range(0, len(frames), step):
            chunk = inputs[i:i + step]
            batch = np.stack([x for x, _ in chunk])
            pred = self.det.run(None, {self.det_input: batch})[0]
            if pred.ndim != 3 or pred.shape[0] != len(chunk) or pred.shape[2] < 6:
                raise VideoForgeError(f"{self.det_path}: output of shape {pred.shape}; a YOLOX "
                                      f"detector gives [batch, anchors, 5 + classes]. {HINT}")
            out += [decode_yolox(pred[k], r, self.det_size) for k, (_, r) in enumerate(chunk)]
        return out

    # -- pose
    def crops(self, frame: np.ndarray, boxes: np.ndarray):
        w, h = self.pose_size
        imgs, centers, scales = [], [], []
        for box in boxes:
            c, s = box_to_center_scale(box, w / h)
            crop = cv2.warpAffine(frame, crop_matrix(c, s, (w, h)), (w, h), flags=cv2.INTER_LINEAR)
            imgs.append(((crop.astype(np.float32) - POSE_MEAN) / POSE_STD).transpose(2, 0, 1))
            centers.append(c)
            scales.append(s)
        return np.stack(imgs).astype(np.float32), np.array(centers), np.array(scales)

    def estimate(self, frame: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """133 keypoints [P, 133, 2] (frame pixels) and scores [P, 133] for the boxes of one frame."""
        if len(boxes) == 0:
            return np.zeros((0, NUM_KEYPOINTS, 2), np.float32), np.zeros((0, NUM_KEYPOINTS), np.float32)
        x, centers, scales = self.crops(frame, boxes)
        step = self.pose_batch or len(x)
        sx, sy = [], []
        for i in range(0, len(x), step):
            ox, oy = self.pose.run(self.pose_outputs, {self.pose_input: x[i:i + step]})
            sx.append(ox)
            sy.append(oy)
        simcc_x, simcc_y = np.concatenate(sx), np.concatenate(sy)
        if simcc_x.shape[1] != NUM_KEYPOINTS:
            raise VideoForgeError(f"{self.pose_path}: {simcc_x.shape[1]} keypoints; the DWPose "
                                  f"whole-body model has {NUM_KEYPOINTS}. {HINT}")
        locs, scores = simcc_decode(simcc_x, simcc_y, self.split_ratio)
        size = np.array(self.pose_size, np.float64)
        kpts = locs / size * scales[:, None] + centers[:, None] - scales[:, None] / 2
        return kpts.astype(np.float32), scores

    def detect(self, frame: np.ndarray, boxes: np.ndarray | None = None) -> Pose:
        """People of one uint8 RGB frame, in that frame's pixels (134-point OpenPose layout)."""
        if boxes is None:
            boxes = self.detect_people([frame])[0]
        kpts, scores = self.estimate(frame, boxes)
        kpts, scores = to_openpose_layout(kpts, scores)
        return Pose(kpts, scores, frame.shape[0], frame.shape[1])

    def __call__(self, frames: np.ndarray, *, resolution: int = 512, output: str = "input",
                 callback: Callback | None = None, det_batch: int = 8) -> list[Pose]:
        """uint8 RGB frames [N, H, W, 3] -> one Pose per frame, in output-size pixels."""
        n, h, w = frames.shape[:3]
        det = detection_size(h, w, resolution)
        out = output_size(h, w, resolution, output)
        poses: list[Pose] = []
        for i in range(0, n, det_batch):
            chunk = [resize_image(f, det) for f in frames[i:i + det_batch]]
            boxes = self.detect_people(chunk)
            for k, (f, b) in enumerate(zip(chunk, boxes)):
                poses.append(self.detect(f, b).scaled(*out))
                if callback is not None:
                    callback(i + k + 1, n)
        return poses


# ---------------------------------------------------------------------------- OpenPose JSON
def _flat(points: np.ndarray, visible: np.ndarray) -> list[float] | None:
    """x, y, 1.0 for visible points, 0, 0, 0 otherwise (controlnet_aux's layout); None when no
    point is visible."""
    if not visible.any():
        return None
    out: list[float] = []
    for (x, y), v in zip(points.tolist(), visible.tolist()):
        out += [float(x), float(y), 1.0] if v else [0.0, 0.0, 0.0]
    return out


def pose_to_openpose_json(pose: Pose, body: bool = True, hands: bool = True, face: bool = True) -> dict:
    """One frame as the OpenPose JSON dict comfyui_controlnet_aux's POSE_KEYPOINT carries:
    {"people": [{"pose_keypoints_2d", "face_keypoints_2d", "hand_left_keypoints_2d",
    "hand_right_keypoints_2d"}], "canvas_height", "canvas_width"}; absolute pixel coordinates,
    confidence 1.0 for a detected point; face = 68 points + the two eyes (70)."""
    people = []
    vis = pose.visible
    for k, v in zip(pose.keypoints, vis):
        body_pts = _flat(k[BODY], v[BODY]) if body else None
        face_pts = None
        if face:
            fk = np.concatenate([k[FACE], k[[14, 15]]])
            fv = np.concatenate([v[FACE], v[[14, 15]]])
            face_pts = _flat(fk, fv) if v[FACE].any() else None
        people.append({
            "pose_keypoints_2d": body_pts or [0.0] * 54,
            "face_keypoints_2d": face_pts,
            "hand_left_keypoints_2d": _flat(k[LEFT_HAND], v[LEFT_HAND]) if hands else None,
            "hand_right_keypoints_2d": _flat(k[RIGHT_HAND], v[RIGHT_HAND]) if hands else None,
        })
    return {"people": people, "canvas_height": int(pose.height), "canvas_width": int(pose.width)}
