"""The README's Python API snippet, run once: its run directory is what the API, compare and
model-card tests read (one real two-step run of the tiny model, exported with its card)."""

import contextlib
import io
import os
import re

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(REPO_ROOT, "README.md")


def readme_snippet() -> str:
  """The first ```python block of the README's "## Python API" section."""
  with open(README, encoding="utf-8") as f:
    text = f.read()
  section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="session")
def readme_run(tmp_path_factory, minilm_tokenizer_json):
  """(namespace after the snippet ran, its printed output, the run directory)."""
  del minilm_tokenizer_json  # The snippet's vocabulary: skip where the package is absent.
  import gin  # pylint: disable=import-outside-toplevel
  folder = tmp_path_factory.mktemp("readme")
  previous = os.getcwd()
  namespace, out = {"__name__": "readme_snippet"}, io.StringIO()
  os.chdir(folder)
  try:
    with contextlib.redirect_stdout(out):
      exec(compile(readme_snippet(), README, "exec"), namespace)  # pylint: disable=exec-used
  finally:
    os.chdir(previous)
    gin.clear_config(clear_constants=True)
  return namespace, out.getvalue(), folder / "runs" / "tiny"
