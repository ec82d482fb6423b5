import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Fixture writers are imported as `tests_fixtures` (tests/ is not a package).
import importlib  # noqa: E402
import types  # noqa: E402

_fx = types.ModuleType("tests_fixtures")
for _m in ("wan_dit", "wan_vae", "umt5"):
    _mod = importlib.import_module(f"fixtures.{_m}")
    _fx.__dict__.update({k: v for k, v in vars(_mod).items() if not k.startswith("_")})
sys.modules["tests_fixtures"] = _fx
