"""benchmarks/serving.py, briefly: real servers, its table, its exit code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serving.py"


def run(*args, timeout: float = 300):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


# Two servers start: about 30 s on 2 cores.
@pytest.mark.slow
def test_the_benchmark_measures_each_backend_and_prints_its_table(tiny):
    done = run(tiny.export_dir, "--clients", "2", "--seconds", "2",
               "--backends", "tflite:int8", "onnx:int8", "onnx:bfloat16")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| backend | server | requests | throughput (req/s) | p50 latency")
    body = rows[1:]
    assert [row.split(" | ")[0] for row in body] == [
        "| LiteRT int8 (colours_int8.tflite)", "| ONNX Runtime int8 (colours_int8.onnx)"]
    for row in body:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        server, requests, throughput, p50, p99, errors, single, ratio, memory, alone = cells[1:]
        assert server == "now, 1 worker"
        assert int(requests) > 10 and float(throughput) > 5 and errors == "0"
        assert 0 < float(p50) <= float(p99) and float(alone) > 0 and float(single) > 0
        assert float(ratio) == pytest.approx(float(p99) / float(single), abs=0.06)
        first, last = (float(value) for value in re.findall(r"\d+(?= )", memory)[:2])
        assert first > 50 and last > 50  # MiB: a Python process with a model loaded
    assert re.search(r"2 concurrent clients for 2 s", done.stdout)
    assert "generated 32x32 PNG" in done.stdout


def test_the_benchmark_refuses_a_folder_that_is_not_an_export(tmp_path):
    done = run(tmp_path, timeout=120)
    assert done.returncode == 2 and "not an export folder" in done.stderr
