"""Assemble BENCHMARKS.md from the per-area result files that the `sop bench ...` commands write.

    python scripts/collect_benchmarks.py

Each `benchmarks/results/<area>.md` is produced by its own command (named inside it, beside every figure);
this script only concatenates them under one header, in a fixed order, so BENCHMARKS.md is never edited by hand.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ORDER = ["env", "data", "rti", "robot", "learner", "fleet", "fleet_scaling"]

HEADER = """# SOP benchmarks

Every figure below comes with the command that reproduces it. Unless a section says otherwise the machine is the
project's development and CI machine: 2 CPU cores (x86_64), 24 GiB, no GPU, shared with other work, so absolute
times are noisy; sections report medians and ratios measured side by side in one run.
Regenerate a section with its command, then this file with `python scripts/collect_benchmarks.py`.
"""


def main() -> None:
    files = sorted(
        RESULTS.glob("*.md"), key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.stem)
    )
    sections = [HEADER] + [p.read_text().strip() + "\n" for p in files]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(sections))


if __name__ == "__main__":
    main()
