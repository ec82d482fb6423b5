"""DWPose: SimCC decoding and the 133 -> OpenPose-18 mapping on hand-made arrays, YOLOX decoding
and NMS, the crop geometry, the whole pipeline on tiny ONNX models with planted answers, the
OpenPose JSON, and the drawing checked pixel by pixel."""
import math

import cv2
import numpy as np
import pytest

import tests_fixtures as fx
from models.common.errors import VideoForgeError
from models.preprocess import dwpose as W
from models.preprocess import openpose_draw as P
from models.preprocess.frames import as_uint8_frames


# ---------------------------------------------------------------------------- decoding
def test_simcc_decode_known_answers():
    sx = np.zeros((2, 3, 12), np.float32)
    sy = np.zeros((2, 3, 16), np.float32)
    sx[0, 0, 7], sy[0, 0, 3] = 0.8, 0.6     # -> (3.5, 1.5), score min(0.8, 0.6)
    sx[0, 1, 0], sy[0, 1, 15] = 0.2, 0.9    # -> (0, 7.5), 0.2
    sx[1, 2, 11], sy[1, 2, 8] = 1.0, 1.0    # -> (5.5, 4.0), 1.0
    sx[1, 0] = -1.0                          # nothing positive: -1 / 2 = -0.5
    locs, scores = W.simcc_decode(sx, sy, 2.0)
    assert locs.shape == (2, 3, 2) and scores.shape == (2, 3)
    assert locs[0, 0].tolist() == [3.5, 1.5] and scores[0, 0] == pytest.approx(0.6)
    assert locs[0, 1].tolist() == [0.0, 7.5] and scores[0, 1] == pytest.approx(0.2)
    assert locs[1, 2].tolist() == [5.5, 4.0] and scores[1, 2] == pytest.approx(1.0)
    assert scores[1, 0] == -1.0 and locs[1, 0].tolist() == [-0.5, -0.5]
    assert locs[0, 2].tolist() == [-0.5, -0.5]  # all-zero row: score 0 -> location -1


def test_133_to_openpose_18_mapping():
    k = np.stack([np.arange(133.0), 1000 + np.arange(133.0)], -1)[None]
    s = np.full((1, 133), 0.9)
    s[0, 6] = 0.2  # right shoulder weak -> no neck
    kp, sc = W.to_openpose_layout(k, s)
    assert kp.shape == (1, 134, 2) and sc.shape == (1, 134)
    # OpenPose-18: nose, neck, r-sho, r-elb, r-wri, l-sho, l-elb, l-wri, r-hip, r-knee, r-ank,
    # l-hip, l-knee, l-ank, r-eye, l-eye, r-ear, l-ear  (COCO indices; neck = mean of 5 and 6)
    coco = [0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
    for j, c in enumerate(coco):
        if c is None:
            assert kp[0, j].tolist() == [5.5, 1005.5]
        else:
            assert kp[0, j].tolist() == [c, 1000 + c], (j, c)
    assert sc[0, 1] == 0.0 and sc[0, 2] == pytest.approx(0.2)
    # feet, face, hands follow in order: COCO 17.. at 18..
    assert kp[0, 18:, 0].tolist() == list(range(17, 133))
    s[0, 6] = 0.31
    assert W.to_openpose_layout(k, s)[1][0, 1] == 1.0
    with pytest.raises(VideoForgeError, match="133"):
        W.to_openpose_layout(np.zeros((1, 17, 2)), np.zeros((1, 17)))


def test_yolox_decode_nms_and_person_class():
    grid, stride = W.yolox_grid((640, 640))
    assert grid.shape == (8400, 2) and stride[0, 0] == 8 and stride[-1, 0] == 32
    pred = np.zeros((8400, 85), np.float32)

    def put(cx, cy, w, h, obj, cls_p, cls=0, s=32):
        row, rx, ry = fx.yolox_anchor(cx, cy, stride=s)
        pred[row, :4] = [rx, ry, math.log(w / s), math.log(h / s)]
        pred[row, 4], pred[row, 5 + cls] = obj, cls_p

    put(200, 240, 100, 300, 0.95, 0.95)            # person, score 0.9025
    put(206, 250, 100, 300, 0.9, 0.9, s=16)        # same person again (IoU > 0.45): suppressed
    put(500, 300, 80, 200, 0.7, 0.5)               # person, 0.35 (> 0.3 kept)
    put(400, 500, 60, 100, 0.5, 0.5)               # 0.25: above NMS 0.1, below 0.3: dropped
    put(100, 500, 60, 60, 0.99, 0.99, cls=2)       # a car: not a person
    boxes = W.decode_yolox(pred, ratio=2.0)
    assert boxes.shape == (2, 4)
    np.testing.assert_allclose(boxes[0], np.array([150, 90, 250, 390]) / 2, atol=1e-3)
    np.testing.assert_allclose(boxes[1], np.array([460, 200, 540, 400]) / 2, atol=1e-3)
    assert W.decode_yolox(np.zeros((8400, 85), np.float32), 1.0).shape == (0, 4)
    with pytest.raises(VideoForgeError, match="anchors"):
        W.decode_yolox(np.zeros((100, 85), np.float32), 1.0)


def test_nms_keeps_best_of_overlaps():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    assert W.nms(boxes, np.array([0.5, 0.9, 0.4]), 0.45) == [1, 2]


def test_letterbox_and_crop_geometry():
    img = np.full((256, 384, 3), 7, np.uint8)
    x, r = W.letterbox(img)
    assert x.shape == (3, 640, 640) and x.dtype == np.float32 and r == pytest.approx(640 / 384)
    assert (x[:, :426] == 7).all() and (x[:, 427:] == 114).all()   # 256 * r = 426.7 rows of image
    c, s = W.box_to_center_scale(np.array([60, 48, 156, 240]), 288 / 384)
    assert c.tolist() == [108, 144] and s.tolist() == [180, 240]  # 120 x 240 padded, widened to 3:4
    m = W.crop_matrix(c, s, (288, 384))
    for (fx_, fy), (cx, cy) in [((108, 144), (144, 192)), ((18, 24), (0, 0)), ((198, 264), (288, 384))]:
        assert (m @ np.array([fx_, fy, 1.0])).tolist() == pytest.approx([cx, cy])


# ---------------------------------------------------------------------------- pipeline
BOX_NET = (100, 80, 260, 400)          # in the 640 x 640 detector input
FRAME = (256, 384)                     # letterbox ratio 640 / 384 -> box (60, 48, 156, 240)
# crop (288 x 384) <-> frame: x = 108 + (cx - 144) * 0.625, y = 144 + (cy - 192) * 0.625


def crop_xy(x, y):
    return 144 + (x - 108) / 0.625, 192 + (y - 144) / 0.625


# a person in frame pixels (COCO order, 17 body points); the rest of the 133 are NaN (random)
PERSON = {0: (108, 70), 1: (113, 65), 2: (103, 65), 3: (118, 70), 4: (98, 70),
          5: (128, 100), 6: (88, 100), 7: (138, 130), 8: (78, 130), 9: (143, 160), 10: (73, 160),
          11: (123, 170), 12: (93, 170), 13: (123, 205), 14: (93, 205), 15: (123, 235), 16: (93, 235)}
# left-hand points 91..111 on a small fan, face points 23..90 on a line
HAND = {91 + i: (143 + (i % 5) * 2, 163 + (i // 5) * 2) for i in range(21)}
FACE = {23 + i: (100 + i * 0.25, 60) for i in range(68)}


def planted(points):
    kp = np.full((133, 2), np.nan)
    for i, (x, y) in points.items():
        kp[i] = crop_xy(x, y)
    return kp


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("dwpose")
    pts = {**PERSON, **HAND, **FACE}
    scores = np.full(133, 0.9)
    scores[16] = 0.25  # right ankle (COCO 16): below 0.3 -> invisible
    return {
        "det": fx.write_yolox_onnx(str(d / "yolox_l.onnx"), [(*BOX_NET, 0.9)]),
        "det_two": fx.write_yolox_onnx(str(d / "two.onnx"), [(*BOX_NET, 0.9), (400, 100, 560, 420, 0.8)],
                                       dynamic_batch=True),
        "det_none": fx.write_yolox_onnx(str(d / "none.onnx"), []),
        "pose": fx.write_dwpose_onnx(str(d / "dw-ll_ucoco_384.onnx"), planted(pts), scores),
        "pose_rand": fx.write_dwpose_onnx(str(d / "rand.onnx"), None, dynamic_batch=True),
        "pose_rand_b1": fx.write_dwpose_onnx(str(d / "rand_b1.onnx"), None, dynamic_batch=False),
        "dir": str(d),
    }


def textured(n, h, w, seed=0):
    return (np.random.default_rng(seed).random((n, h, w, 3)) * 255).astype(np.uint8)


def test_pipeline_recovers_planted_person(models):
    m = W.DWPose(models["det"], models["pose"])
    assert (m.det_size, m.det_batch, m.pose_size, m.pose_batch, m.split_ratio) == ((640, 640), 1, (288, 384), None, 2.0)
    frames = textured(2, *FRAME)
    poses = m(frames, resolution=256)
    assert len(poses) == 2
    p = poses[0]
    assert (p.height, p.width) == FRAME and p.keypoints.shape == (1, 134, 2)
    kp, vis = p.keypoints[0], p.visible[0]
    coco_to_op = [0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10]
    for c, j in enumerate(coco_to_op):
        np.testing.assert_allclose(kp[j], PERSON[c], atol=0.32, err_msg=f"COCO {c} -> OpenPose {j}")
    np.testing.assert_allclose(kp[1], [108, 100], atol=0.32)            # neck between the shoulders
    assert vis[:18].tolist() == [True] * 10 + [False] + [True] * 7      # r-ankle (10) scored 0.25
    np.testing.assert_allclose(kp[92:113], [HAND[91 + i] for i in range(21)], atol=0.32)
    np.testing.assert_allclose(kp[24:92], [FACE[23 + i] for i in range(68)], atol=0.32)
    assert not vis[113:].any() and not vis[18:24].any()                # right hand, feet: random, low


def test_detection_resolution_and_output_size(models):
    m = W.DWPose(models["det"], models["pose"])
    frames = textured(1, *FRAME)
    det = m(frames, resolution=128, output="detection")[0]      # 128 x 192: coordinates halved
    inp = m(frames, resolution=128, output="input")[0]          # back to 256 x 384
    assert (det.height, det.width) == (128, 192) and (inp.height, inp.width) == FRAME
    np.testing.assert_allclose(inp.keypoints, det.keypoints * 2, atol=1e-4)
    np.testing.assert_allclose(inp.keypoints[0, 0], PERSON[0], atol=1.0)


def test_people_batched_like_one_at_a_time(models):
    """Two people in a frame run as one batch of crops; random pose nets (output depends on
    the crop) give the same points batched (dynamic batch) or one by one (fixed batch 1)."""
    frames = textured(3, *FRAME, seed=1)
    a = W.DWPose(models["det_two"], models["pose_rand"])
    b = W.DWPose(models["det_two"], models["pose_rand_b1"])
    assert a.pose_batch is None and b.pose_batch == 1 and a.det_batch is None
    calls = []
    pa = a(frames, resolution=256, callback=lambda d, t: calls.append((d, t)))
    pb = b(frames, resolution=256)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    for x, y in zip(pa, pb):
        assert x.keypoints.shape == (2, 134, 2)
        np.testing.assert_allclose(x.keypoints, y.keypoints, atol=1e-4)
        np.testing.assert_allclose(x.scores, y.scores, atol=1e-6)
    # the two people got different (crop-dependent) answers, and each equals its crop alone
    assert not np.allclose(pa[0].keypoints[0], pa[0].keypoints[1])
    f0 = W.resize_image(frames[0], (256, 384))
    boxes = a.detect_people([f0])[0]
    alone = a.detect(f0, boxes[1:2])
    np.testing.assert_allclose(alone.keypoints[0], pa[0].keypoints[1], atol=1e-4)
    # frames batched through a dynamic-batch detector = one at a time
    assert all(np.allclose(p, q) for p, q in zip(a.detect_people(list(frames)),
                                                 [a.detect_people([f])[0] for f in frames]))


def test_no_person_gives_empty_frame(models):
    m = W.DWPose(models["det_none"], models["pose"])
    p = m(textured(1, 64, 96), resolution=64)[0]
    assert p.keypoints.shape == (0, 134, 2)
    assert P.draw_pose(p).sum() == 0
    assert W.pose_to_openpose_json(p) == {"people": [], "canvas_height": 64, "canvas_width": 96}


def test_non_finite_frames_in_the_node_path(models):
    """The OpenPose node's input conversion (as_uint8_frames): NaN -> 0, +inf -> 255, -inf -> 0,
    so the networks see defined pixels; the poses are those of the cleaned frames."""
    x, want = fx.nonfinite_frames(*FRAME)
    frames = as_uint8_frames(x, "OpenPose images")
    assert np.array_equal(frames, want)
    assert (frames[0] == 0).all() and (frames[1] == 255).all() and (frames[2] == 0).all()
    m = W.DWPose(models["det_two"], models["pose_rand"])
    got, ref = m(frames, resolution=256), m(want, resolution=256)
    for p, q in zip(got, ref):
        assert p.keypoints.shape == (2, 134, 2)
        assert np.isfinite(p.keypoints).all() and np.isfinite(p.scores).all()
        # the same uint8 frames: equal up to onnxruntime's run-to-run float noise (none expected)
        np.testing.assert_allclose(p.keypoints, q.keypoints, atol=1e-4)
        np.testing.assert_allclose(p.scores, q.scores, atol=1e-6)
        assert P.draw_pose(p).shape == (*FRAME, 3)


def test_sessions_are_cached(models):
    a = W.DWPose(models["det"], models["pose"])
    b = W.DWPose(models["det"], models["pose"])
    assert a.det is b.det and a.pose is b.pose


def test_openpose_json_layout(models):
    m = W.DWPose(models["det"], models["pose"])
    p = m(textured(1, *FRAME), resolution=256)[0]
    js = W.pose_to_openpose_json(p)
    assert js["canvas_height"] == 256 and js["canvas_width"] == 384 and len(js["people"]) == 1
    person = js["people"][0]
    body = person["pose_keypoints_2d"]
    assert len(body) == 54 and body[2] == 1.0 and body[:2] == pytest.approx(list(PERSON[0]), abs=0.32)
    assert body[30:33] == [0.0, 0.0, 0.0]                      # OpenPose 10 (r-ankle) missing
    assert len(person["hand_left_keypoints_2d"]) == 63 and person["hand_right_keypoints_2d"] is None
    face = person["face_keypoints_2d"]
    assert len(face) == 210                                     # 68 + the two eyes
    assert face[204:206] == pytest.approx(list(PERSON[2]), abs=0.32)  # point 68 = right eye (COCO 2)
    slim = W.pose_to_openpose_json(p, body=True, hands=False, face=False)["people"][0]
    assert slim["hand_left_keypoints_2d"] is None and slim["face_keypoints_2d"] is None
    nobody = W.pose_to_openpose_json(p, body=False)["people"][0]
    assert nobody["pose_keypoints_2d"] == [0.0] * 54


def test_bad_model_files(models, tmp_path):
    with pytest.raises(VideoForgeError, match="yzd-v/DWPose"):
        W.DWPose(str(tmp_path / "yolox_l.onnx"), models["pose"])
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(VideoForgeError, match="cannot load"):
        W.DWPose(str(junk), models["pose"])
    with pytest.raises(VideoForgeError, match="YOLOX"):
        W.DWPose(models["pose"], models["pose"])       # pose model in the detector slot
    with pytest.raises(VideoForgeError, match="whole-body"):
        W.DWPose(models["det"], models["det"])         # detector in the pose slot
    wrong_k = fx.write_dwpose_onnx(str(tmp_path / "k17.onnx"), None, keypoints_n=17)
    with pytest.raises(VideoForgeError, match="whole-body"):
        W.DWPose(models["det"], wrong_k)


# ---------------------------------------------------------------------------- drawing
COLORS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
          (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
          (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]
# OpenPose-18 points of a standing figure on a 200 x 160 canvas
SKELETON = [(80, 30), (80, 60), (60, 60), (50, 90), (45, 120), (100, 60), (110, 90), (115, 120),
            (70, 120), (70, 150), (70, 185), (90, 120), (90, 150), (90, 185), (76, 26), (84, 26),
            (70, 28), (90, 28)]


def pose_of(points, vis=None, h=200, w=160, extra=None):
    kp = np.full((1, 134, 2), -1.0, np.float32)
    sc = np.zeros((1, 134), np.float32)
    for j, (x, y) in enumerate(points):
        kp[0, j] = (x, y)
        sc[0, j] = 0.9 if vis is None or vis[j] else 0.1
    for j, (x, y) in (extra or {}).items():
        kp[0, j], sc[0, j] = (x, y), 0.9
    return W.Pose(kp, sc, h, w)


def reference_body(canvas, pts, vis):
    """The DWPose annotator's draw_bodypose, transcribed: limbs filled in full colour, the
    canvas scaled by 0.6, then the joints."""
    limbs = [[2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11], [2, 12],
             [12, 13], [13, 14], [2, 1], [1, 15], [15, 17], [1, 16], [16, 18]]
    for i, (a, b) in enumerate(limbs):
        if not (vis[a - 1] and vis[b - 1]):
            continue
        Y = np.array([pts[a - 1][0], pts[b - 1][0]], float)
        X = np.array([pts[a - 1][1], pts[b - 1][1]], float)
        length = ((X[0] - X[1]) ** 2 + (Y[0] - Y[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(X[0] - X[1], Y[0] - Y[1]))
        poly = cv2.ellipse2Poly((int(np.mean(Y)), int(np.mean(X))), (int(length / 2), 4), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, poly, COLORS[i])
    canvas = (canvas * 0.6).astype(np.uint8)
    for j in range(18):
        if vis[j]:
            cv2.circle(canvas, (int(pts[j][0]), int(pts[j][1])), 4, COLORS[j], thickness=-1)
    return canvas


def test_body_drawing_pixel_exact():
    vis = [True] * 18
    vis[10] = False  # right ankle missing: limb 9-10 -> 10-11 not drawn, no joint
    got = P.draw_pose(pose_of(SKELETON, vis), hands=False, face=False)
    want = reference_body(np.zeros((200, 160, 3), np.uint8), SKELETON, vis)
    # Exact: integer rasterisation by the same OpenCV calls; the 0.6 dimming is one correctly
    # rounded float64 multiply per value (int(c * 0.6) vs (canvas * 0.6).astype) in both paths
    assert got.shape == (200, 160, 3) and got.dtype == np.uint8
    assert np.array_equal(got, want), np.argwhere((got != want).any(-1))[:10]
    # and by hand: joint centres in the palette colour, limb middles at 60 %
    for j, (x, y) in enumerate(SKELETON):
        if vis[j]:
            assert tuple(got[y, x]) == COLORS[j], j
    assert tuple(got[90, 75]) == (0, 153, 0)  # neck -> r-hip (limb 6) at its middle
    # the neck -> l-shoulder limb (horizontal, index 1): 4 px half-width -> y 56..64 coloured
    assert tuple(got[60 + 3, 92]) == (153, 51, 0) and tuple(got[60 + 6, 92]) == (0, 0, 0)
    assert got[185, 70].sum() == 0 and got[170, 70].sum() == 0  # no ankle, no lower leg


def test_hands_and_face_drawing():
    # wrist at (80, 100), five vertical fingers 20 px apart, joints 15 px apart
    hand = {92: (80, 100)}
    for f in range(5):
        for k in range(4):
            hand[93 + 4 * f + k] = (40 + 20 * f, 80 - 15 * k)
    face = {24: (120, 150), 25: (0, 150)}  # a point on column 0 is skipped like the reference
    got = P.draw_pose(pose_of(SKELETON, extra={**hand, **face}), body=False)
    # hand joints: blue discs of radius 4, drawn over the bones
    for x, y in hand.values():
        assert tuple(got[y, x]) == (0, 0, 255) and tuple(got[y, x + 4]) == (0, 0, 255)
    assert tuple(got[72, 40]) in ((255, 76, 0), (255, 77, 0))      # bone 1 (1 -> 2): hue 1/20
    assert tuple(got[72, 60]) in ((127, 255, 0), (128, 255, 0))    # bone 5 (5 -> 6): hue 5/20
    assert tuple(got[72, 120]) in ((255, 0, 229), (255, 0, 230))   # bone 17 (17 -> 18): hue 17/20
    assert got[72, 43].sum() == 0 and got[72, 37].sum() == 0      # 2 px lines
    # pixel-exact against the reference's calls
    want = np.zeros_like(got)
    pts = [hand[92 + i] for i in range(21)]
    for e, (a, b) in enumerate(P.HAND_EDGES):
        cv2.line(want, pts[a], pts[b], P.HAND_COLORS[e], thickness=2)
    for p in pts:
        cv2.circle(want, p, 4, (0, 0, 255), thickness=-1)
    cv2.circle(want, (120, 150), 3, (255, 255, 255), thickness=-1)
    assert np.array_equal(got, want)
    assert P.HAND_COLORS[0] == (255.0, 0.0, 0.0) and P.HAND_COLORS[5] == pytest.approx((127.5, 255.0, 0.0))
    # face: white radius 3 (3 px away still white, 4 px away black)
    assert tuple(got[150, 123]) == (255, 255, 255) and got[150, 124].sum() == 0
    assert got[150, 0].sum() == 0
    no_hands = P.draw_pose(pose_of(SKELETON, extra={**hand, **face}), body=False, hands=False)
    assert no_hands[30, 30].sum() == 0 and tuple(no_hands[150, 120]) == (255, 255, 255)
