"""Make `import sim` mean the package under test, not this folder.

pytest puts `tests/` on sys.path (for the shared conftest), and there `tests/sim/` looks like a namespace
package named `sim` that shadows the real one: submodules still load (the editable install finds them),
but the package's `__init__`, which registers the `sop/<task>` gymnasium ids, would never run. Importing
the package from the repository root fixes the name for the whole session; submodules another test
module already imported are kept (one copy of each) and attached to the real package.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

_REPO_ROOT = str(Path(__file__).resolve().parents[2])

if getattr(sys.modules.get("sim"), "__file__", None) is None:
    sys.modules.pop("sim", None)
    sys.path.insert(0, _REPO_ROOT)
    try:
        package = importlib.import_module("sim")
    finally:
        sys.path.remove(_REPO_ROOT)
    for name, module in list(sys.modules.items()):
        if name.startswith("sim.") and name.count(".") == 1:
            setattr(package, name.removeprefix("sim."), module)
