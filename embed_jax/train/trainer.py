"""The training loop behind `embed-jax train`.

Resume order: this run's latest checkpoint in `model_dir/checkpoints`, else
`init_from` (a model directory, or anything `embed-jax convert` reads, converted
once into `model_dir/pretrained`), else a scratch initialisation (params
created sharded). The step is compiled ahead
of the loop; its memory and FLOPs are printed before step 1. With
`StepConfig.pack` each host batch is packed (several texts a row) before it
becomes global, and the step, jitted once, compiles once per packed shape. Checkpoints are
saved every `checkpoint_every` steps, on SIGTERM/SIGINT and at the end; the
final model is written as a model directory in `model_dir/final` and, when
asked, exported for sentence-transformers to `model_dir/sentence_transformers`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import shutil
import signal
from pathlib import Path
from typing import Any

import flax.linen as nn
import gin
import jax
import numpy as np

from embed_jax import flops, partitioning, tokenization
from embed_jax.checkpoints import model_dir as model_dir_lib
from embed_jax.data import global_batches, packed_batches
from embed_jax.models.dual_encoder import DualEncoderConfig, build_dual_encoder
from embed_jax.models.sharded_init import abstract_params, example_inputs, init_params
from embed_jax.train import checkpointing, eval_hook, metrics as metrics_lib, optimizer
from embed_jax.train import state as state_lib
from embed_jax.train.step import CompiledSteps, StepConfig, TrainStep, describe_compiled
from embed_jax.train.synthetic import SyntheticPairs

log = logging.getLogger(__name__)
FINAL_DIR = "final"
PRETRAINED_DIR = "pretrained"
EXPORT_DIR = "sentence_transformers"
DATA_SOURCES = ("pipeline", "synthetic")
EXIT_NONFINITE = 3


class NonFiniteError(RuntimeError):
  """Too many consecutive non-finite steps."""


def model_config(text_encoder: tokenization.TextEncoder) -> DualEncoderConfig:
  """`DualEncoderConfig()` from gin, with eos delimiter ids taken from the text encoder."""
  config = DualEncoderConfig()  # pylint: disable=no-value-for-parameter
  updates = {}
  for side in ("x", "y"):
    if getattr(config, f"{side}_delimiter_ids") is None:
      open_id, close_id = text_encoder.delimiter_ids(side)
      if open_id is not None and close_id is not None:
        updates[f"{side}_delimiter_ids"] = (open_id, close_id)
  config = dataclasses.replace(config, **updates) if updates else config
  if text_encoder.vocab_size > config.encoder.vocab_size:
    raise ValueError(f"the text encoder has {text_encoder.vocab_size} ids but the model's "
                     f"vocab_size is {config.encoder.vocab_size}")
  return config


class _StopSignal:
  """Remembers SIGTERM/SIGINT so the loop can checkpoint and stop between steps."""

  def __init__(self):
    self.signum = 0
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, _frame):
    self.signum = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def requested(self) -> bool:
    """True on every process once any process got a signal."""
    flag = self.signum
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      flag = int(np.max(multihost_utils.process_allgather(np.int32(flag))))
      self.signum = self.signum or flag
    return bool(flag)


def host_packer(config: DualEncoderConfig, step_config: StepConfig, mesh, rules, pad_id: int):
  """`pack_batch` for this process's host batches: its batch shards x grad_cache_chunks groups."""
  shards, processes = partitioning.batch_size_multiple(mesh, rules), jax.process_count()
  if shards % processes:
    raise ValueError(f"packing needs each of the {processes} processes to hold whole batch "
                     f"shards, but the mesh has {shards} batch shards")
  closing = {s: config.closing_id(s) for s in ("x", "y")} if config.pooling == "eos" else None
  return functools.partial(
      packed_batches.pack_batch, groups=shards // processes * step_config.grad_cache_chunks,
      pooling=config.pooling, closing_ids=closing, pad_id=pad_id)


def _batches(data_source: str, mesh, rules, text_encoder,
             transform=None) -> global_batches.GlobalBatchIterator:
  if data_source == "synthetic":
    return global_batches.GlobalBatchIterator(SyntheticPairs(text_encoder), mesh, rules, transform)
  from embed_jax.data import pipeline  # pylint: disable=import-outside-toplevel  # tensorflow side.
  return pipeline.global_batch_iterator(mesh, None, rules, transform)


def _tokenizer_source(text_encoder: tokenization.TextEncoder) -> tuple[str, dict]:
  """(tokenizer file, templates) of a text encoder, for the final model directory."""
  templates = {f"{side}_{part}": tuple(tokens)
               for side, pair in text_encoder._template_tokens.items()  # pylint: disable=protected-access
               for part, tokens in zip(("prefix", "suffix"), pair)}
  return text_encoder.tokenizer.name, templates


def resolve_init_from(init_from: str, model_dir: Path) -> str:
  """A model directory for `init_from`: itself when it is one, else its conversion.

  Anything `embed-jax convert` reads (a Hugging Face or sentence-transformers
  folder, a .gguf file, `package:MODULE/path`) is converted by process 0 into
  `model_dir/pretrained`, once: a later run reuses that directory.
  """
  from embed_jax.checkpoints import convert  # pylint: disable=import-outside-toplevel
  source = Path(tokenization.resolve_path(init_from))
  if (source / model_dir_lib.CONFIG_FILE).is_file():
    return str(source)
  target = model_dir / PRETRAINED_DIR
  if jax.process_index() == 0 and not (target / model_dir_lib.CONFIG_FILE).is_file():
    convert.convert(source, target, overwrite=True)
  partitioning.barrier("embed_jax_convert_init_from")
  return str(target)


def export_final(final: Path, model_dir: Path) -> Path:
  """Exports the final model for sentence-transformers into `model_dir/sentence_transformers`."""
  from embed_jax.checkpoints import export_st  # pylint: disable=import-outside-toplevel
  target = model_dir / EXPORT_DIR
  if jax.process_index() == 0:
    shutil.rmtree(target, ignore_errors=True)
    export_st.export(final, target)
  partitioning.barrier("embed_jax_export_final")
  return target


@gin.configurable("train", denylist=["model_dir", "step_class"])
def train(
    model_dir: str,
    steps: int = 1000,
    data_source: str = "pipeline",
    seed: int = 0,
    init_from: str | None = None,
    compute_dtype: str | None = None,
    checkpoint_every: int = 500,
    keep: int = 3,
    async_checkpoints: bool = True,
    log_every: int = 10,
    eval_every: int = 0,
    eval_at_start: bool = False,
    compare_bm25: bool = False,
    eval_code_search: bool = True,
    eval_validation_batches: int = 4,
    eval_max_examples: int | None = None,
    eval_x_length: int = 64,
    eval_y_length: int = 256,
    max_consecutive_nonfinite: int = 5,
    export_sentence_transformers: bool = False,
    progress: bool = True,
    tensorboard: bool = True,
    step_config: StepConfig | None = None,
    step_class: type[TrainStep] = TrainStep,
) -> dict[str, Any]:
  """Trains a dual encoder; returns a summary {"step", "stopped_by", "final_eval", ...}.

  Args:
    model_dir: the run's folder (checkpoints, metrics, the final model).
    steps: total optimizer steps (a resumed run continues to this count).
    data_source: "pipeline" (gin's `DataConfig`) or "synthetic" (`SyntheticPairs`).
    seed: params init, dropout and the step keys.
    init_from: where to start when the run has no checkpoint yet: a model
      directory, or a source `embed-jax convert` reads (see `resolve_init_from`).
    compute_dtype: run the encoder in this dtype instead of its config's (e.g.
      "bfloat16": products in bfloat16 accumulated in float32, params, optimizer,
      norms, softmax and loss in float32); the final model records it.
    checkpoint_every: save every N steps (and on signals and at the end).
    keep: checkpoints kept.
    log_every: metrics written every N steps.
    eval_every: run the evaluation hook every N steps (0 = only at the end).
    eval_at_start: also evaluate before step 1 (a run that starts at step 0).
    compare_bm25: also score BM25 on the code-search split (summary["bm25_eval"]).
    eval_code_search: include stdlib_code test MRR@10 in evaluations.
    eval_validation_batches: validation batches (pipeline data only) per evaluation.
    eval_max_examples: cap the code-search pairs (smoke runs).
    max_consecutive_nonfinite: this many skipped steps in a row stop the run.
    export_sentence_transformers: also export the final model for
      sentence-transformers (summary["export"]).
    step_config: `StepConfig()` from gin by default (grad_cache_chunks, loss_impl, ...).
    step_class: the TrainStep (a subclass injects faults in tests).
  """
  if data_source not in DATA_SOURCES:
    raise ValueError(f"train.data_source must be one of {DATA_SOURCES}, got {data_source!r}")
  if export_sentence_transformers and importlib.util.find_spec("sentence_transformers") is None:
    from embed_jax.checkpoints import export_st  # pylint: disable=import-outside-toplevel
    raise export_st.ExportError("train.export_sentence_transformers needs sentence-transformers and torch: "
                     "pip install 'embed_jax[quickstart]' (or set it to False)")
  model_dir = Path(model_dir).absolute()
  mesh = partitioning.create_mesh()
  rules = partitioning.logical_axis_rules()
  step_config = step_config or StepConfig()

  # Model: from init_from's model directory, else from gin.
  inherited = {}  # Metadata the final model keeps from init_from (its max_length).
  if init_from:
    init_from = resolve_init_from(init_from, model_dir)
    record = model_dir_lib.read_model_record(init_from)
    inherited = {k: v for k, v in record.get("metadata", {}).items() if k == "max_length"}
    config = model_dir_lib.config_from_json(record["config"], f"{init_from}/model.json")
    text_spec = model_dir_lib.TextEncoderSpec(**{
        k: (tuple(v) if isinstance(v, list) else v) for k, v in record["text_encoder"].items()})
    text_encoder = text_spec.build(init_from)
    text_spec.bind(init_from)  # The data must tokenise as the model was trained to read.
  else:
    text_encoder = tokenization.text_encoder()
    config = model_config(text_encoder)
  if compute_dtype is not None:
    config = model_dir_lib.with_compute_dtype(config, compute_dtype)
  module = build_dual_encoder(config)
  example = example_inputs(module, partitioning.batch_size_multiple(mesh, rules))
  boxed = abstract_params(module, example, mesh, rules)
  params_shardings = partitioning.logical_to_shardings(boxed, mesh, rules)
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), nn.meta.unbox(boxed))
  tx, schedule = optimizer.make_optimizer(steps)
  shardings = state_lib.state_shardings(tx, abstract, params_shardings, mesh)
  abstract_state = state_lib.abstract_state(tx, abstract, shardings)

  writer = None
  checkpointer = checkpointing.Checkpointer(model_dir, keep=keep, async_save=async_checkpoints)
  try:
    transform = (host_packer(config, step_config, mesh, rules, text_encoder.pad_id)
                 if step_config.pack else None)
    batches = _batches(data_source, mesh, rules, text_encoder, transform)
    restored = checkpointer.restore_latest(abstract_state)
    if restored is not None:
      start, state, data_state = restored
      batches.set_state(data_state)
      origin = f"resumed from {checkpointer.directory}/{start}"
    else:
      if init_from:
        params = model_dir_lib.load_params(init_from, module, mesh, rules)
        origin = f"initialised from {init_from}"
      else:
        params = init_params(module, jax.random.key(seed), mesh, rules)
        origin = "initialised from scratch"
      state = state_lib.init_state(params, tx, seed, shardings)
      start = 0
    writer = metrics_lib.MetricsWriter(model_dir, steps, start, progress=progress,
                                       tensorboard=tensorboard)
    writer.print(f"{partitioning.describe(mesh)}; {origin}; step {start} of {steps}")

    step_fn = step_class(module, tx, schedule, mesh, rules, params_shardings, step_config)
    batch = next(batches) if start < steps else None
    data_state = batches.get_state()
    steps_fn = CompiledSteps(step_fn, shardings, abstract_state, batch) if batch is not None else None
    if batch is not None:
      pairs = batches.host_iterator.global_batch_size
      if step_config.pack:
        rows = {k.split("_")[0]: v.shape[0] for k, v in batch.items() if k.endswith("_packed_tokens")}
        writer.print(f"packed batches ({pairs} pairs; first batch rows {rows}): the step compiles "
                     "once per packed shape; memory and FLOPs below are the first shape's")
      writer.print(describe_compiled(steps_fn.compiled_for(batch), pairs, mesh.size))
      model_flops = flops.train_step_flops(config, abstract, flops.StepShape.of_batch(batch))
      writer.print(f"model FLOPs per step (analytic, 6*N*tokens + attention + loss): "
                   f"{model_flops:.4g} ({model_flops / pairs:.4g} per pair)")

    evaluate = eval_hook.Evaluator(module, text_encoder, mesh, rules, step_fn.config,
                                   data_source == "pipeline" and eval_validation_batches,
                                   eval_code_search, eval_max_examples, eval_x_length,
                                   eval_y_length)
    summary = {"start_step": start, "stopped_by": None}
    if eval_at_start and start == 0:
      summary["initial_eval"] = evaluate(state.params)
      writer.write(0, summary["initial_eval"], split="eval")
    throughput = metrics_lib.Throughput()
    step = last_logged = start
    with _StopSignal() as stop:
      while step < steps:
        state, metrics = steps_fn(state, batch)
        step += 1
        values = metrics_lib.to_python(metrics)
        if step % log_every == 0 or step == steps or values["skipped"]:
          values["pairs_per_s"] = throughput.pairs_per_second(pairs * (step - last_logged))
          last_logged = step
          writer.write(step, values)
        if values["nonfinite_consecutive"] >= max_consecutive_nonfinite:
          checkpointer.wait()
          last = checkpointer.all_steps()
          raise NonFiniteError(
              f"{values['nonfinite_consecutive']} consecutive steps had a non-finite loss or "
              f"gradient (up to step {step}); stopping. The last good checkpoint is "
              f"{checkpointer.directory}/{last[-1] if last else '(none)'}; lower the learning "
              "rate or check the data around these steps.")
        if step % checkpoint_every == 0:
          checkpointer.save(step, state, data_state)
        if eval_every and step % eval_every == 0 and step < steps:
          writer.write(step, evaluate(state.params), split="eval")
        if stop.requested():
          checkpointer.save(step, state, data_state)
          summary["stopped_by"] = signal.Signals(stop.signum).name
          writer.print(f"{summary['stopped_by']}: checkpoint saved at step {step}; exiting")
          break
        if step < steps:
          batch = next(batches)
          data_state = batches.get_state()
      checkpointer.save(step, state, data_state)  # No-op when this step is saved already.
      checkpointer.wait()
    summary["step"] = step
    summary["compiled_shapes"] = len(steps_fn.compiled) if steps_fn is not None else 0
    if summary["stopped_by"] is None:
      tokenizer_path, templates = _tokenizer_source(text_encoder)
      final = model_dir_lib.save_model(
          model_dir / FINAL_DIR, config, state.params, tokenizer_path=tokenizer_path,
          templates=templates, metadata={"trained_steps": step, "origin": origin, **inherited},
          overwrite=True)
      summary["final_model"] = str(final)
      if export_sentence_transformers:
        summary["export"] = str(export_final(final, model_dir))
      summary["final_eval"] = evaluate(state.params)
      if summary["final_eval"]:
        writer.write(step, summary["final_eval"], split="eval")
      if compare_bm25 and eval_code_search:
        summary["bm25_eval"] = evaluate.bm25()
    summary["state"] = state
    return summary
  finally:
    checkpointer.close()
    if writer is not None:
      writer.close()
