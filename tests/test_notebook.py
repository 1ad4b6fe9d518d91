"""notebooks/walkthrough.ipynb runs top to bottom, so it cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"
MIN_ACCURACY = 0.35


def test_walkthrough_has_no_committed_outputs():
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_walkthrough_executes(tmp_path):
    import nbclient
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any failure
    printed = "".join(output.get("text", "") for cell in notebook.cells
                      if cell.cell_type == "code" for output in cell.outputs)
    assert "teacher val accuracy" in printed and "agreement with Keras" in printed
    # The last cell's table: every model and export, scored on the 96 held-out images. With
    # 3 epochs of the full VGG16 on 36 images every row was 0.25, chance on 4 classes, which
    # tells a reader that nothing works. 34 of 96 right (0.354) by chance has a probability
    # of about 2%.
    table = printed[printed.index("artifact"):].splitlines()[1:]
    accuracies = {line.split()[0]: float(line.split()[1]) for line in table if line.strip()}
    assert set(accuracies) >= {"teacher", "pruned", "pruned_qat", "student"}, table
    assert len(accuracies) == 5, table  # and the int8 TFLite
    assert accuracies["teacher"] >= MIN_ACCURACY, accuracies
    assert all(accuracy >= MIN_ACCURACY for accuracy in accuracies.values()), accuracies
