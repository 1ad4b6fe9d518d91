"""`vgg-mobile train --data-benchmark`: input pipeline against model step, nothing written."""

from __future__ import annotations

import re

from harness import TINY_MODEL_FLAGS as TINY


def test_data_benchmark_reports_which_side_limits_and_writes_nothing(cli, tiny_data, tmp_path):
    out = tmp_path / "never"
    result = cli("train", tiny_data, "--out", out, *TINY, "--batch-size", "8", "--data-benchmark")
    assert result.returncode == 0, result.stderr[-3000:]
    rates = dict(re.findall(r"^\| (.+?) \| ([\d,.]+) \|$", result.stdout, re.M))
    assert set(rates) == {"input pipeline, first pass (decode, cache)",
                          "input pipeline, cached and augmented", "training step, batches in memory"}
    values = {k: float(v.replace(",", "")) for k, v in rates.items()}
    assert all(v > 0 for v in values.values())
    limited = re.search(r"limited by: the (input pipeline|model step)", result.stdout).group(1)
    slower = min(("input pipeline", values["input pipeline, cached and augmented"]),
                 ("model step", values["training step, batches in memory"]), key=lambda kv: kv[1])[0]
    assert limited == slower
    assert "32 training images" in result.stdout and "global batch 8" in result.stdout
    assert not out.exists()
    missing = cli("train", tiny_data, *TINY)
    assert missing.returncode == 2 and "Missing option '--out'" in missing.stderr
