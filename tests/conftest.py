import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Fixture writers are imported as `tests_fixtures` (tests/ is not a package).
import importlib  # noqa: E402
import pkgutil  # noqa: E402
import types  # noqa: E402

_fx = types.ModuleType("tests_fixtures")
# Every module in tests/fixtures/ (each writes tiny checkpoints of one kind in the real layout).
for _m in sorted(m.name for m in pkgutil.iter_modules([os.path.join(os.path.dirname(__file__), "fixtures")])):
    _mod = importlib.import_module(f"fixtures.{_m}")
    _fx.__dict__.update({k: v for k, v in vars(_mod).items() if not k.startswith("_")})
sys.modules["tests_fixtures"] = _fx
