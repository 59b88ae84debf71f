"""The checked-in gRPC code in sop/v1/ must be exactly what scripts/generate_protos.py makes from protos/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED_IN = ROOT / "sop" / "v1"


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("generate_protos", ROOT / "scripts" / "generate_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    written = _generator().generate(tmp_path)
    fresh_dir = tmp_path / "sop" / "v1"
    fresh = {p.name: p.read_bytes() for p in written}
    assert fresh, "the generator wrote nothing"
    checked_in = {
        p.name: p.read_bytes() for p in CHECKED_IN.iterdir() if p.is_file() and p.suffix in (".py", ".pyi")
    }
    stale = sorted(name for name in fresh if checked_in.get(name) != fresh[name])
    missing = sorted(set(fresh) - set(checked_in))
    extra = sorted(set(checked_in) - set(fresh))
    hint = "run `python scripts/generate_protos.py` and commit sop/v1/"
    assert not missing, f"generated files missing from sop/v1/: {missing}; {hint}"
    assert not stale, f"sop/v1/ is stale for {stale}; {hint}"
    assert not extra, f"sop/v1/ holds files the generator does not make: {extra}; remove them or {hint}"
    assert all(p.parent == fresh_dir for p in written)
