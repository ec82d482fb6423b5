"""The pack in a real browser: Debian chromium driven by playwright-core (browser/drive.mjs)
against the session's headless ComfyUI.

Every shipped workflow is dropped onto the canvas as a file (what a user dragging it in does);
the page must show no dialog or warning, and every VideoForge node must be in the graph with the
widgets /object_info declares, holding the file's values. A doctored copy with an unknown node
type must bring up the missing-node dialog (proves that check can see it). The demo workflow is
then run with the Run button until its video plays in the page. Screenshots:
${VIDEOFORGE_OUT:-<repo>/out}/browser/<workflow>.png and videoforge_demo_t2v_run.png.

Needs /usr/bin/chromium, node and playwright-core: `.ci/test.sh` installs them
(`.ci/browser_env.sh`) and exports VIDEOFORGE_NODE_PATH. Skipped only outside CI on a machine
without chromium.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import urllib.parse
from dataclasses import dataclass

import pytest

from harness import DEMO_WEIGHTS, DEMO_WORKFLOW, REPO_ROOT, ComfyServer, widget_inputs, video_info

CHROMIUM = "/usr/bin/chromium"
DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "browser", "drive.mjs")
WORKFLOWS = sorted(glob.glob(os.path.join(REPO_ROOT, "workflows", "*.json")))
DEMO = os.path.splitext(os.path.basename(DEMO_WORKFLOW))[0]
NEGATIVE = "negative_control_missing_node"
UNKNOWN_TYPE = "VFNoSuchNode"
# Widgets the frontend adds next to an input's own (seed's "control after generate", the
# upload button of a file combo): no /object_info input of their own, but a widgets_values slot.
HELPER_WIDGETS = {"control_after_generate", "upload"}
# Demo loaders -> their demo/weights subfolder (for a clear message when the weights are absent).
DEMO_LOADERS = {"VFLoadVideoModel": "diffusion_models", "VFLoadTextEncoder": "text_encoders",
                "VFLoadVideoVAE": "vae"}
TIMEOUTS = {"load_s": 90, "drop_s": 30, "run_s": 300}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _playwright_package() -> str:
    """Path of the playwright-core package; skips (outside CI, no chromium) or fails if absent."""
    node_path = os.environ.get("VIDEOFORGE_NODE_PATH")
    if not node_path:
        if _in_ci():
            pytest.fail("VIDEOFORGE_NODE_PATH is not set: CI must run the tests through "
                        ".ci/test.sh, which installs the browser with .ci/browser_env.sh")
        if not os.path.exists(CHROMIUM):
            pytest.skip(f"no {CHROMIUM}: `export VIDEOFORGE_NODE_PATH=$(bash .ci/browser_env.sh)` "
                        "installs chromium and playwright-core")
        # chromium is here: fetch (or reuse the cached) playwright-core like CI does.
        env = subprocess.run(["bash", os.path.join(REPO_ROOT, ".ci", "browser_env.sh")],
                             capture_output=True, text=True, timeout=900)
        assert env.returncode == 0, f".ci/browser_env.sh failed:\n{env.stderr[-4000:]}"
        node_path = env.stdout.strip()
    package = os.path.join(node_path, "playwright-core")
    assert os.path.isfile(os.path.join(package, "package.json")), \
        f"no playwright-core in {node_path} (VIDEOFORGE_NODE_PATH): run .ci/browser_env.sh"
    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} missing: run .ci/browser_env.sh"
    return package


def _out_dir() -> str:
    out = os.path.join(os.environ.get("VIDEOFORGE_OUT") or os.path.join(REPO_ROOT, "out"), "browser")
    os.makedirs(out, exist_ok=True)
    return out


def _load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _negative_control(tmp_dir: str) -> str:
    """The demo workflow with its first VideoForge node renamed to a type nobody registers."""
    wf = _load(DEMO_WORKFLOW)
    next(n for n in wf["nodes"] if n["type"].startswith("VF"))["type"] = UNKNOWN_TYPE
    path = os.path.join(tmp_dir, f"{NEGATIVE}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(wf, f)
    return path


def _drive(node: str, job_path: str, n_workflows: int) -> dict:
    """Run drive.mjs on a job; its report. Each wait in the driver is bounded; this bounds the
    whole run (browser start and teardown too) and, on expiry, ends node and its chromium."""
    limit = TIMEOUTS["load_s"] + n_workflows * (TIMEOUTS["drop_s"] + 15) + TIMEOUTS["run_s"] + 60
    proc = subprocess.Popen([node, DRIVER, job_path], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"drive.mjs still running after {limit} s; stderr:\n{err[-4000:]}")
    assert proc.returncode == 0 and out, f"drive.mjs failed (exit {proc.returncode}):\n{err[-4000:]}"
    return json.loads(out)


@dataclass
class BrowserRun:
    report: dict  # drive.mjs's JSON report
    server: ComfyServer


@pytest.fixture(scope="module")
def browser_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> BrowserRun:
    """One browser session over all workflows (the negative control last)."""
    package = _playwright_package()  # before the server: a skip needs none
    node = shutil.which("node")
    assert node, "node is not on PATH: run .ci/browser_env.sh"
    comfy = request.getfixturevalue("comfy")
    tmp = str(tmp_path_factory.mktemp("browser"))
    workflows = [{"name": os.path.splitext(os.path.basename(p))[0], "path": p} for p in WORKFLOWS]
    workflows.append({"name": NEGATIVE, "path": _negative_control(tmp)})
    job = {"url": comfy.url, "playwright": package, "chromium": CHROMIUM, "out_dir": _out_dir(),
           "workflows": workflows, "run": DEMO, "timeouts": TIMEOUTS}
    job_path = os.path.join(tmp, "job.json")
    with open(job_path, "w", encoding="utf-8") as f:
        json.dump(job, f)
    report = _drive(node, job_path, len(workflows))
    assert report["error"] is None, f"browser session failed: {report['error']}"
    assert report["initial"] == {"dialogs": [], "toasts": []}, f"the page opened with {report['initial']}"
    return BrowserRun(report, comfy)


def _entry(report: dict, name: str) -> dict:
    hits = [w for w in report["workflows"] if w["name"] == name]
    assert hits, f"{name} was not dropped (driver stopped early?)"
    return hits[0]


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_dropped_workflow_shows_our_nodes(browser_run: BrowserRun, path: str) -> None:
    name = os.path.splitext(os.path.basename(path))[0]
    got = _entry(browser_run.report, name)
    assert got["loaded"], f"{name}: the graph never showed the file's nodes: {got.get('load_error')}"
    assert not got["dialogs"], f"{name}: dialog after the drop:\n" + "\n---\n".join(got["dialogs"])
    bad = [t for t in got["toasts"] if t["severity"] in ("warn", "error")]
    assert not bad, f"{name}: warning / error toast after the drop: {bad}"

    info = browser_run.server.object_info()
    graph = {n["id"]: n for n in got["nodes"]}
    ours = [n for n in _load(path)["nodes"] if n["type"].startswith("VF")]
    assert ours, f"{name} has no VideoForge node"
    for want in ours:
        where = f"{name}: node {want['id']} ({want['type']})"
        node = graph.get(want["id"])
        assert node is not None, f"{where} is not in the graph"
        assert node["type"] == want["type"], f"{where} came up as {node['type']}"
        names = [w["name"] for w in node["widgets"]]
        declared = [n for n, _ in widget_inputs(info[want["type"]])]
        assert [n for n in names if n not in HELPER_WIDGETS] == declared, \
            f"{where}: widgets {names}, /object_info declares {declared}"
        values = [w["value"] for w in node["widgets"]]
        assert values == want["widgets_values"], \
            f"{where}: widgets {names} hold {values}, the file has {want['widgets_values']}"


def test_missing_node_dialog_is_seen(browser_run: BrowserRun) -> None:
    """The negative control: an unknown node type must be reported by the page."""
    got = _entry(browser_run.report, NEGATIVE)
    text = "\n".join(got["dialogs"])
    assert "missing nodes" in text.lower() and UNKNOWN_TYPE in text, \
        f"no missing-node dialog naming {UNKNOWN_TYPE}; dialogs: {got['dialogs']}"


def _missing_demo_weights(demo: dict) -> list[str]:
    """The demo workflow's weight files that demo/weights lacks (folder/name)."""
    files = [os.path.join(DEMO_LOADERS[n["type"]], n["widgets_values"][0])
             for n in demo["nodes"] if n["type"] in DEMO_LOADERS]
    return [f for f in files if not os.path.isfile(os.path.join(DEMO_WEIGHTS, f))]


def test_demo_runs_and_video_shows(browser_run: BrowserRun) -> None:
    report = browser_run.report
    run = report["run"]
    assert run is not None, f"{DEMO} was never queued"
    demo = _load(DEMO_WORKFLOW)
    context = []
    if missing := _missing_demo_weights(demo):
        context.append(f"demo weights missing from demo/weights: {missing}")
    if report["page_errors"]:
        context.append(f"page errors: {report['page_errors']}")
    hint = f" ({'; '.join(context)})" if context else ""
    assert not run["dialogs"], f"dialog after Run{hint}:\n" + "\n---\n".join(run["dialogs"])
    assert not run.get("wait_error"), f"no video after {run['seconds']:.0f} s{hint}: {run['wait_error']}"

    prefix = next(n for n in demo["nodes"] if n["type"] == "SaveVideo")["widgets_values"][0]
    subfolder, stem = os.path.split(prefix)
    width, height, frames = next(n for n in demo["nodes"]
                                 if n["type"] == "VFEmptyVideoLatent")["widgets_values"][:3]
    shown = []
    for video in run["videos"]:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(video["src"]).query)
        if re.fullmatch(rf"{re.escape(stem)}_\d+_\.mp4", query.get("filename", [""])[0]):
            shown.append((video, query))
    assert shown, f"no <video> of {stem}_*.mp4 in the page; videos: {run['videos']}"
    video, query = shown[-1]
    assert query.get("type") == ["output"] and query.get("subfolder") == [subfolder], video["src"]
    assert (video["width"], video["height"]) == (width, height), \
        f"the page's video is {video['width']}x{video['height']}, the workflow makes {width}x{height}"
    # The same file on the server's disk: the frames the workflow asked for.
    path = os.path.join(browser_run.server.output_dir, subfolder, query["filename"][0])
    assert video_info(path) == (frames, width, height), f"{path}: (frames, w, h) = {video_info(path)}"
