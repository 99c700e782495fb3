"""Everything outside the data pipeline imports with tensorflow absent.

A subprocess installs an import hook that refuses tensorflow, seqio and
tensorflow-datasets, then imports each module. Modules that later issues add
(the train step) are checked as soon as they exist.
"""

import json
import os
import subprocess
import sys
import warnings

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Must exist and import without tensorflow.
REQUIRED = [
    "embed_jax",
    "embed_jax.partitioning",
    "embed_jax.gin_config",
    "embed_jax.tokenization",
    "embed_jax.main",
    "embed_jax.data",
    "embed_jax.data.batch_format",
    "embed_jax.data.global_batches",
    "embed_jax.data.packing",
    "embed_jax.data.packed_batches",
    "embed_jax.data.order",
    "embed_jax.data.pair_files",
    "embed_jax.data.stdlib_corpus",
    "embed_jax.data.sentencepiece_training",
    "embed_jax.models",
    "embed_jax.losses",
    "embed_jax.checkpoints.hf_files",
    "embed_jax.checkpoints.hf_params",
    "embed_jax.evaluation.metrics",
    "embed_jax.evaluation.search",
    "embed_jax.evaluation.formats",
    "embed_jax.evaluation.linear_probe",
    "embed_jax.evaluation.retrieval",
    "embed_jax.evaluation.tasks",
    "embed_jax.evaluation.report",
    "embed_jax.evaluation.mining",
    "embed_jax.evaluation.model_embed",
    "embed_jax.cli.mine",
    "embed_jax.models.lora",
    "embed_jax.train.trainable",
    "embed_jax.evaluation.runner",
    "embed_jax.cli.eval",
    "embed_jax.cli.search",
    "embed_jax.checkpoints.gguf_file",
    "embed_jax.checkpoints.convert",
    "embed_jax.checkpoints.export_st",
    "embed_jax.cli.convert",
    "embed_jax.cli.embed",
    "embed_jax.cli.export",
    "embed_jax.train.optimizer",
    "embed_jax.train.state",
    "embed_jax.train.objective",
    "embed_jax.train.updater",
    "embed_jax.flops",
    "embed_jax.api",
    "embed_jax.cli.compare",
    "embed_jax.checkpoints.model_card",
]
# Checked once they exist (other issues add them).
WHEN_PRESENT = [
    "embed_jax.train.objective",
]

_CHILD = r"""
import importlib, importlib.abc, importlib.util, json, sys

BLOCKED = ("tensorflow", "tensorflow_datasets", "tensorflow_text", "seqio")

class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ImportError(f"blocked import of {name} (tensorflow must not be needed)")
    return None

sys.meta_path.insert(0, Block())
required, when_present = json.loads(sys.argv[1]), json.loads(sys.argv[2])

def present(name):
  try:
    return importlib.util.find_spec(name) is not None
  except ModuleNotFoundError:
    return False

result = {"imported": [], "failed": {}, "absent": [], "tf_loaded": None, "pipeline_blocked": None}
for name in required + [n for n in when_present if present(n)]:
  try:
    importlib.import_module(name)
    result["imported"].append(name)
  except Exception as e:  # pylint: disable=broad-except
    result["failed"][name] = f"{type(e).__name__}: {e}"
result["absent"] = [n for n in when_present if not present(n)]
result["tf_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
try:
  importlib.import_module("embed_jax.data.pipeline")
  result["pipeline_blocked"] = False
except ImportError:
  result["pipeline_blocked"] = True
print(json.dumps(result))
"""


def test_modules_import_without_tensorflow():
  env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  proc = subprocess.run(
      [sys.executable, "-c", _CHILD, json.dumps(REQUIRED), json.dumps(WHEN_PRESENT)],
      capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=False, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["failed"] == {}
  assert set(REQUIRED) <= set(result["imported"])
  assert result["tf_loaded"] == []
  assert result["pipeline_blocked"]  # The hook works: the tensorflow side is refused.
  if result["absent"]:
    warnings.warn(f"not yet on this branch, so not checked: {result['absent']}")
