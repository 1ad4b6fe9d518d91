"""benchmarks/drift.py end to end on the session's teacher: a real export and a real
serve-model, each scenario posted as image files (tiny: 12 images a window)."""

from __future__ import annotations

import json

from harness import benchmark_script

drift_script = benchmark_script("drift")


def test_the_table_separates_darkened_images_from_fresh_ones(teacher_run, sample_dir, tmp_path,
                                                               capsys):
    assert drift_script.main([str(teacher_run.run_dir), str(sample_dir), "--out",
                              str(tmp_path), "--window", "12"]) == 0
    result = json.loads((tmp_path / "drift.json").read_text())
    assert (result["reference_images"], result["fresh_images"]) == (12, 12)
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["drift_reference"]["images"] == 12
    rows = {row["scenario"].split(" (")[0]: row for row in result["rows"]}
    assert list(rows) == ["fresh held-out", "darkened by 30 %", "blurred", "one class only"]
    fresh, dark = rows["fresh held-out"]["psi"], rows["darkened by 30 %"]["psi"]
    assert len(fresh) == 8 and min(fresh.values()) >= 0
    for channel in ("red", "green", "blue"):
        assert dark[channel] > max(0.25, 2 * fresh[channel]), (channel, fresh, dark)
    assert rows["blurred"]["psi"]["sharpness"] > fresh["sharpness"]
    assert rows["one class only"]["psi"]["predicted_class"] > fresh["predicted_class"]
    # The server logged the darkened channels (once each: one may have crossed before).
    assert rows["darkened by 30 %"]["warnings"] >= 1
    assert sum(row["warnings"] for row in rows.values()) >= 3
    printed = capsys.readouterr().out
    assert printed.strip() == (tmp_path / "drift.md").read_text().strip()
    assert "| darkened by 30 % | 12 |" in printed
