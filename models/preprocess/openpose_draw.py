"""OpenPose-style drawing (what ControlNet OpenPose models were trained on), as the
ControlNet-v1-1 / DWPose annotators draw it, on a black RGB canvas:

- body: the 17 limbs of the OpenPose-18 skeleton as filled ellipses (half-length x stick width 4,
  rotated to the limb) in 60 % of the limb's colour, then every joint as a filled circle of
  radius 4 in its full colour (the 18-colour OpenPose palette);
- hands: 20 bones as 2-pixel lines coloured around the HSV hue circle, joints as blue filled
  circles of radius 4;
- face: white filled circles of radius 3.
All bodies are drawn first, then all hands (left hands, then right hands), then faces.
Coordinates are truncated to whole pixels like the references; hand and face points on the
first row or column (x or y < 1) are skipped like there.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np

from ._deps import optional
from .dwpose import BODY, FACE, LEFT_HAND, RIGHT_HAND, Pose

cv2 = optional("cv2", "OpenPose drawing")

STICK_WIDTH = 4
JOINT_RADIUS = 4
HAND_RADIUS = 4
HAND_THICKNESS = 2
FACE_RADIUS = 3
LIMB_DIM = 0.6

# 1-based OpenPose-18 joint pairs; the reference lists 19, the last two (ear-shoulder) are unused
LIMBS = [(2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12),
         (12, 13), (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18)]
DRAWN_LIMBS = 17
COLORS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
          (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
          (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]
HAND_EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
              (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18),
              (18, 19), (19, 20)]
# float RGB like matplotlib's hsv_to_rgb(...) * 255 in the references (OpenCV rounds it)
HAND_COLORS = [tuple(c * 255.0 for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0))
               for i in range(len(HAND_EDGES))]
BLUE, WHITE = (0, 0, 255), (255, 255, 255)


def limb_color(i: int) -> tuple[int, int, int]:
    """The fill colour of limb i: 60 % of its palette colour, truncated."""
    return tuple(int(c * LIMB_DIM) for c in COLORS[i])


def draw_body(canvas: np.ndarray, people: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """people: (points [18, 2] in pixels, visible [18] bool) each."""
    for i in range(DRAWN_LIMBS):
        a, b = LIMBS[i][0] - 1, LIMBS[i][1] - 1
        for pts, vis in people:
            if not (vis[a] and vis[b]):
                continue
            (xa, ya), (xb, yb) = pts[a], pts[b]
            mx, my = (xa + xb) / 2, (ya + yb) / 2
            length = math.hypot(xa - xb, ya - yb)
            angle = math.degrees(math.atan2(ya - yb, xa - xb))
            poly = cv2.ellipse2Poly((int(mx), int(my)), (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, poly, limb_color(i))
    for j in range(18):
        for pts, vis in people:
            if vis[j]:
                cv2.circle(canvas, (int(pts[j][0]), int(pts[j][1])), JOINT_RADIUS, COLORS[j], thickness=-1)
    return canvas


def draw_hand(canvas: np.ndarray, pts: np.ndarray, vis: np.ndarray) -> np.ndarray:
    ip = [(int(x), int(y)) for x, y in pts]
    for e, (a, b) in enumerate(HAND_EDGES):
        if vis[a] and vis[b] and min(ip[a] + ip[b]) >= 1:
            cv2.line(canvas, ip[a], ip[b], HAND_COLORS[e], thickness=HAND_THICKNESS)
    for p, v in zip(ip, vis):
        if v and min(p) >= 1:
            cv2.circle(canvas, p, HAND_RADIUS, BLUE, thickness=-1)
    return canvas


def draw_face(canvas: np.ndarray, pts: np.ndarray, vis: np.ndarray) -> np.ndarray:
    for (x, y), v in zip(pts, vis):
        p = (int(x), int(y))
        if v and min(p) >= 1:
            cv2.circle(canvas, p, FACE_RADIUS, WHITE, thickness=-1)
    return canvas


def draw_pose(pose: Pose, body: bool = True, hands: bool = True, face: bool = True) -> np.ndarray:
    """uint8 RGB [height, width, 3] OpenPose map of one frame's people."""
    canvas = np.zeros((pose.height, pose.width, 3), np.uint8)
    kp, vis = pose.keypoints, pose.visible
    if body:
        draw_body(canvas, [(k[BODY], v[BODY]) for k, v in zip(kp, vis)])
    if hands:
        for part in (LEFT_HAND, RIGHT_HAND):
            for k, v in zip(kp, vis):
                draw_hand(canvas, k[part], v[part])
    if face:
        for k, v in zip(kp, vis):
            draw_face(canvas, k[FACE], v[FACE])
    return canvas
