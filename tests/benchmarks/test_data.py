from __future__ import annotations

from pathlib import Path

from benchmarks.data import main


def test_bench_data_writes_a_table_with_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "data.md"
    argv = ["--episodes", "2", "--steps", "20", "--image_size", "16", "--repeats", "1", "--batch_size", "8"]
    assert main([*argv, "--out", str(out), "--work_dir", str(tmp_path / "scratch")]) == 0
    text = out.read_text()
    for figure in ("codec encode_episode", "codec decode_episode", "store append, durable", "store get",
                   "window sampling, low-dim only", "window sampling, 1 camera"):  # fmt: skip
        row = next(line for line in text.splitlines() if line.startswith(f"| {figure}"))
        assert "sop bench data --episodes 2" in row
        ours = float(row.split("|")[2].split()[0].replace(",", ""))
        assert ours > 0, row
