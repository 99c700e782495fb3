"""Training: state, optimizer, the (GradCache) train step, checkpoints, metrics, the loop.

The package is also callable: `embed_jax.train(gin_files=..., overrides=..., model_dir=...)`
runs `embed_jax.api.runs.train` (the public API).

  optimizer      AdamW with warmup then cosine/linear decay, clipping, weight-decay mask
  state          TrainState and its shardings
  objective      the dual encoder + its loss: embed a batch part, score the global batch
  updater        gradients of any objective (direct or GradCache), the optimizer step,
                 non-finite updates skipped
  checkpointing  orbax CheckpointManager: async saves, resume that never deletes
  run_lock       one trainer per run directory
  run_config     config.gin / results.json, which config changes a resume accepts
  run_model      the model a run trains (init_from or gin) and its guide model
  prefetch       batches prepared ahead in a background thread
  metrics        console progress, TensorBoard, metrics.jsonl (process 0 only)
  eval_hook      validation loss/accuracy and held-out code-search MRR@10
  synthetic      a TF-free synthetic pair source (smoke runs, throughput, tests)
  trainer        the loop behind `embed-jax train`

Only `trainer` (through the data pipeline) may import tensorflow.
"""

import sys as _sys
import types as _types


class _CallablePackage(_types.ModuleType):
  """`embed_jax.train` is this package and the public `embed_jax.train(...)` function at once.

  Importing a submodule (`embed_jax.train.trainer`) makes the package the
  attribute `train` of `embed_jax`, so the public function is the package's call.
  """

  def __call__(self, *args, **kwargs):
    from embed_jax.api.runs import train  # pylint: disable=import-outside-toplevel
    return train(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallablePackage
