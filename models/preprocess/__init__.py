"""Control preprocessors for whole videos: Canny edges (OpenCV), depth (Depth-Anything / DPT
through transformers) and OpenPose (DWPose through onnxruntime). Pure code, no ComfyUI.

Every preprocessor takes uint8 RGB frames [N, H, W, 3] (`frames.as_uint8_frames` turns an IMAGE
batch into that), detects at `resolution` (short side, aspect kept) and returns maps at the input
size or the detection size (`output="input" | "detection"`).
"""
from .canny import canny as canny_edges  # (the name `canny` stays the submodule)
from .depth import DepthModel, cached_depth_model, estimate_depth, load_depth_model, normalize_depth
from .dwpose import DWPose, Pose, pose_to_openpose_json
from .frames import OUTPUT_SIZES, as_uint8_frames, detection_size, output_size, to_image
from .openpose_draw import draw_pose

__all__ = ["canny_edges", "DepthModel", "cached_depth_model", "estimate_depth", "load_depth_model",
           "normalize_depth", "DWPose", "Pose", "pose_to_openpose_json", "OUTPUT_SIZES",
           "as_uint8_frames", "detection_size", "output_size", "to_image", "draw_pose"]
