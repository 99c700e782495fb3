"""Training: state, optimizer, the (GradCache) train step, checkpoints, metrics, the loop.

  optimizer      AdamW with warmup then cosine/linear decay, clipping, weight-decay mask
  state          TrainState and its shardings
  step           the pure train step (direct or GradCache), non-finite updates skipped
  checkpointing  orbax CheckpointManager: async saves, resume, corrupted-checkpoint fallback
  metrics        console progress, TensorBoard, metrics.jsonl (process 0 only)
  eval_hook      validation loss/accuracy and held-out code-search MRR@10
  synthetic      a TF-free synthetic pair source (smoke runs, throughput, tests)
  trainer        the loop behind `embed-jax train`

Only `trainer` (through the data pipeline) may import tensorflow.
"""
