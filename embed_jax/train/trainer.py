"""The training loop behind `embed-jax train`.

Resume order: this run's latest checkpoint in `model_dir/checkpoints`, else
`init_from` (see `run_model`), else a scratch initialisation (params created
sharded). Before anything is written, process 0 takes the run directory's
lock (`run_lock`): one trainer per run. A resume compares the run's
configuration with the checkpoint's (`run_config`) and refuses changes that
cannot continue it; a damaged checkpoint is moved aside, never deleted
(`checkpointing`).

The objective (`train.objective`, the dual encoder and its loss) is built
from gin and handed to the updater (`train.updater`: direct or GradCache
gradients, the optimizer step), compiled ahead of the loop; its memory and
FLOPs are printed before step 1. With `StepConfig.pack` (the default) each
host batch is packed before it becomes global, and the step, jitted once,
compiles once per packed shape.

The loop keeps the device busy: the next batch is read, tokenised, packed and
placed on the devices in a background thread while the step runs
(`prefetch`), metrics are read one step late except when they are logged,
and the multi-process stop check runs every `stop_check_every` steps.
Checkpoints are saved every `checkpoint_every` steps, on SIGTERM/SIGINT and at
the end; a failed save stops the run at once. The final model is written as a
model directory in `model_dir/final` (and, when asked, exported for
sentence-transformers), the run's operative config as `config.gin` and its
summary as `results.json`.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import signal
import time
from typing import Any

import gin
import jax
import numpy as np
from etils import epath

from embed_jax import flops, partitioning, paths, precision
from embed_jax.checkpoints import export_peft as lora_files, model_dir as model_dir_lib
from embed_jax.data import global_batches, packed_batches
from embed_jax.errors import ConfigError
from embed_jax.models.dual_encoder import DualEncoderConfig, build_dual_encoder
from embed_jax.models.sharded_init import abstract_params, example_inputs, init_params
from embed_jax.train import checkpointing, eval_hook, metrics as metrics_lib, optimizer
from embed_jax.train import run_config, run_lock, run_model, trainable as trainable_lib
from embed_jax.train import state as state_lib
from embed_jax.train.objective import ContrastiveObjective
from embed_jax.train.prefetch import Prefetcher
from embed_jax.train.synthetic import SyntheticPairs
from embed_jax.train.updater import CompiledSteps, StepConfig, Updater, describe_compiled

log = logging.getLogger(__name__)
FINAL_DIR = "final"
PRETRAINED_DIR = run_model.PRETRAINED_DIR
EXPORT_DIR = "sentence_transformers"
DATA_SOURCES = ("pipeline", "synthetic")
EXIT_NONFINITE = 3
EXIT_SAVE_FAILED = 4


class NonFiniteError(RuntimeError):
  """Too many consecutive non-finite steps."""


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

  def requested(self, agree: bool) -> bool:
    """True once a signal arrived; with `agree`, true on every process once any process got one.

    `agree` costs an allgather across processes (free with one process), so
    the loop asks for it only every few steps.
    """
    flag = self.signum
    if agree and jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      flag = int(np.max(multihost_utils.process_allgather(np.int32(flag))))
      self.signum = self.signum or flag
      return bool(flag)
    return bool(flag) and jax.process_count() == 1


def host_packer(config: DualEncoderConfig, step_config: StepConfig, mesh, rules, pad_id: int):
  """`pack_batch` for this process's host batches: its batch shards x grad_cache_chunks groups."""
  shards, processes = partitioning.batch_size_multiple(mesh, rules), jax.process_count()
  if shards % processes:
    raise ConfigError(f"packing needs each of the {processes} processes to hold whole batch "
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


def _tokenizer_source(text_encoder) -> tuple[str, dict]:
  """(tokenizer file, templates) of a text encoder, for the final model directory."""
  templates = {f"{side}_{part}": tuple(tokens)
               for side, pair in text_encoder._template_tokens.items()  # pylint: disable=protected-access
               for part, tokens in zip(("prefix", "suffix"), pair)}
  return text_encoder.tokenizer.name, templates


def export_final(final: epath.Path, model_dir: epath.Path, results: dict | None = None) -> epath.Path:
  """Exports the final model for sentence-transformers into `model_dir/sentence_transformers`.

  `results` (the run's summary so far) goes into the export's model card.
  """
  from embed_jax.checkpoints import export_st  # pylint: disable=import-outside-toplevel
  target = model_dir / EXPORT_DIR
  if jax.process_index() == 0:
    paths.rmtree(target)
    export_st.export(final, target, run_dir=model_dir, results=results)
  partitioning.barrier("embed_jax_export_final")
  return target


def check_model_dir(model_dir: epath.Path) -> None:
  """Raises ConfigError for a `--model_dir` that is a file or a model directory (not a run)."""
  if model_dir.exists() and not model_dir.is_dir():
    raise ConfigError(f"--model_dir {model_dir} is a file; give a folder for the run")
  is_model = (model_dir / model_dir_lib.CONFIG_FILE).is_file()
  is_run = (model_dir / checkpointing.CHECKPOINTS_DIR).exists()
  if is_model and not is_run:
    raise ConfigError(
        f"--model_dir {model_dir} is a model directory (it holds {model_dir_lib.CONFIG_FILE}), "
        f"not a run: to start from it, train into a new folder with "
        f"--gin.train.init_from=\"'{model_dir}'\"")


def _take_lock(model_dir: epath.Path) -> run_lock.RunLock:
  """The run's lock, taken by process 0; every process raises if it could not be taken."""
  lock = run_lock.RunLock(model_dir)
  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except run_lock.RunLockedError as e:
      error = e
  if jax.process_count() > 1:
    taken = partitioning.host_allgather("run_lock", [error is None])[0][0]
    if not taken and error is None:
      error = run_lock.RunLockedError(f"{model_dir} is in use by another trainer (see process 0)")
  if error is not None:
    raise error
  return lock


def _check_resume_config(record: dict | None, current: str, allow_changes: bool,
                         say) -> None:
  """Compares the checkpoint's explicit bindings with this run's; raises or reports (see run_config)."""
  if not record or "config" not in record:
    return
  changes = run_config.changed_bindings(run_config.parse_bindings(record["config"]),
                                        run_config.parse_bindings(current))
  safe, other = run_config.split_changes(changes)
  if other and not allow_changes:
    raise run_config.ConfigChangeError(
        "this run's configuration differs from its checkpoint's in settings a resume cannot "
        f"change: {'; '.join(other)}. Use a new --model_dir, undo the change, or pass "
        "--gin.train.allow_config_changes=True to resume anyway")
  if safe or other:
    say("resuming with changed settings: " + "; ".join(safe + other))


def _check_data_fingerprint(record: dict | None, current: dict | None, strict: bool, say) -> None:
  if not record or record.get("fingerprint") is None or current is None:
    return
  if record["fingerprint"] != current:
    changed = sorted(set(record["fingerprint"]) ^ set(current) | {
        k for k in set(record["fingerprint"]) & set(current) if record["fingerprint"][k] != current[k]})
    message = (f"the data files changed since the checkpoint was written: {', '.join(changed[:5])}"
               f"{' ...' if len(changed) > 5 else ''}")
    if strict:
      raise ConfigError(message + " (train.strict_data=True)")
    say(f"WARNING: {message}; the resumed order is not the uninterrupted run's")


def _with_prompt_lengths(batches, text_encoder, transform):
  """(side -> prompt of the training task, the host transform also adding prompt lengths)."""
  config = getattr(batches.host_iterator, "config", None)
  if config is None or not hasattr(config, "task"):
    return {}, transform
  from embed_jax import embedding  # pylint: disable=import-outside-toplevel
  from embed_jax.data import tasks  # pylint: disable=import-outside-toplevel  # tensorflow side.
  prompts = tasks.task_prompts(config.task)
  x_length, y_length = _batch_lengths(batches)
  add = embedding.prompt_lengths_transform(text_encoder, prompts, {"x": x_length, "y": y_length})
  if add is None:
    return prompts, transform
  return prompts, add if transform is None else (lambda batch: transform(add(batch)))


def _batch_lengths(batches) -> tuple[int, int]:
  """The (x, y) token lengths of the run's batches."""
  host = batches.host_iterator
  source = getattr(host, "config", host)
  return int(source.x_length), int(source.y_length)


def _fingerprint(batches) -> dict | None:
  fingerprint = getattr(batches.host_iterator, "fingerprint", None)
  return fingerprint() if fingerprint is not None else None


@gin.configurable("train", denylist=["model_dir"])
def train(
    model_dir: str,
    steps: int = 1000,
    data_source: str = "pipeline",
    seed: int = 0,
    init_from: str | None = None,
    compute_dtype: str | None = precision.AUTO,
    objective: Any = ContrastiveObjective,
    guide_model: str | None = None,
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
    prefetch: int = 2,
    stop_check_every: int = 10,
    allow_config_changes: bool = False,
    start_over: bool = False,
    strict_data: bool = False,
    lora_rank: int = 0,
    lora_alpha: float = 16.0,
    lora_targets: tuple[str, ...] | None = None,
) -> dict[str, Any]:
  """Trains a dual encoder; returns a summary {"step", "stopped_by", "final_eval", ...}.

  Args:
    model_dir: the run's folder (checkpoints, metrics, the final model); local or gs://.
    steps: total optimizer steps (a resumed run continues to this count).
    data_source: "pipeline" (gin's `DataConfig`) or "synthetic" (`SyntheticPairs`).
    seed: params init, dropout and the step keys.
    init_from: where to start when the run has no checkpoint yet: a model
      directory, or a source `embed-jax convert` reads (see `run_model`).
    compute_dtype: run the encoder in this dtype instead of its config's (e.g.
      "bfloat16": products in bfloat16 accumulated in float32; params,
      optimizer, norms, softmax and loss in float32); the final model records
      it. "auto" (the default): bfloat16 where the hardware multiplies it
      natively (TPU, recent GPUs, AMX/AVX-512 BF16 CPUs), else the model's
      own (float32); None: the model's own.
    objective: the objective's class or factory, called as
      `objective(module, mesh, rules, guide=...)` (gin: `train.objective =
      @ContrastiveObjective`, its options bound on `ContrastiveObjective`).
    guide_model: a model directory whose frozen embeddings guide the loss
      (GISTEmbed false-negative masking); it must read this run's tokenizer.
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
    step_config: `StepConfig()` from gin by default (grad_cache_chunks, pack).
    prefetch: batches prepared ahead in a background thread (0: in the loop).
    stop_check_every: steps between the processes' agreement on a stop signal
      (multi-process runs; a single process checks every step for free).
    allow_config_changes: resume even when settings other than the safe ones
      (`run_config.SAFE_TO_CHANGE`) changed (shape changes are refused anyway).
    start_over: when every checkpoint is damaged, start again from step 0
      (they stay moved aside) instead of stopping.
    strict_data: a resume whose data files changed is an error, not a warning.
    lora_rank: train LoRA adapters of this rank on a frozen encoder (0: train
      every param); see `train.trainable`. The final model holds the merged
      weights (and the adapters, for `embed-jax export --peft`).
    lora_alpha: LoRA's update is scaled by lora_alpha / lora_rank.
    lora_targets: the kernels LoRA adapts (`models.lora`; None: the attention
      q, k, v and output projections; add "mlp" for the MLP's).
  """
  started = time.time()
  if data_source not in DATA_SOURCES:
    raise ConfigError(f"train.data_source must be one of {DATA_SOURCES}, got {data_source!r}")
  for name, value in (("steps", steps), ("checkpoint_every", checkpoint_every),
                      ("log_every", log_every), ("keep", keep), ("stop_check_every", stop_check_every)):
    if value < 1:
      raise ConfigError(f"train.{name} must be >= 1, got {value}")
  if export_sentence_transformers and importlib.util.find_spec("sentence_transformers") is None:
    from embed_jax.checkpoints import export_st  # pylint: disable=import-outside-toplevel
    raise export_st.ExportError("train.export_sentence_transformers needs sentence-transformers and "
                                "torch: pip install 'embed_jax[quickstart]' (or set it to False)")
  model_dir = paths.absolute(model_dir)
  check_model_dir(model_dir)
  mesh = partitioning.create_mesh()
  rules = partitioning.logical_axis_rules()
  step_config = step_config or StepConfig()
  explicit_config = run_config.explicit_bindings()
  lora = trainable_lib.lora_config(lora_rank, lora_alpha, lora_targets)

  lock = _take_lock(model_dir)
  writer = checkpointer = prefetcher = None
  try:
    model = run_model.run_model(init_from, model_dir, precision.resolve(compute_dtype))
    config, text_encoder = model.config, model.text_encoder
    module = build_dual_encoder(config)
    example = example_inputs(module, partitioning.batch_size_multiple(mesh, rules))
    boxed = abstract_params(module, example, mesh, rules)
    trainable = trainable_lib.Trainable(boxed, mesh, rules, lora)
    params_shardings, abstract = trainable.shardings, trainable.abstract
    tx, schedule = optimizer.make_optimizer(steps)
    shardings = state_lib.state_shardings(tx, abstract, params_shardings, mesh)
    abstract_state = state_lib.abstract_state(tx, abstract, shardings)
    transform = (host_packer(config, step_config, mesh, rules, text_encoder.pad_id)
                 if step_config.pack else None)
    batches = _batches(data_source, mesh, rules, text_encoder, transform)
    prompts, batches.transform = _with_prompt_lengths(batches, text_encoder, transform)
    # After the data (a batch that does not fit the mesh is a user error that leaves nothing
    # behind), before loading a guide or a LoRA base (a refused resume costs nothing).
    checkpointer = checkpointing.Checkpointer(model_dir, keep=keep, async_save=async_checkpoints)
    say = functools.partial(print, flush=True) if jax.process_index() == 0 else (lambda *_: None)
    record = checkpointer.latest_record()
    trainable_lib.check_resume(record, trainable.record())
    _check_resume_config(record, explicit_config, allow_config_changes, say)
    guide, frozen = None, None
    if guide_model:
      guide, guide_params = run_model.load_guide(guide_model, model, mesh, rules,
                                                 _batch_lengths(batches), step_config.pack)
      frozen = {"guide": guide_params}
    if trainable.enabled:
      if model.init_from:
        base_params = model_dir_lib.load_params(model.init_from, module, mesh, rules,
                                                new_params_rng=jax.random.key(seed))
      else:
        base_params = init_params(module, jax.random.key(seed), mesh, rules)
      head, base = trainable.split(base_params, jax.random.key(seed + 1))
      del base_params
      frozen = {**(frozen or {}), trainable_lib.BASE: base}
      objective_fn = objective(module, mesh, rules, guide=guide, params_view=trainable.params_view)
    else:
      objective_fn = objective(module, mesh, rules, guide=guide)
    updater = Updater(objective_fn, tx, schedule, params_shardings, step_config.grad_cache_chunks)

    fingerprint = _fingerprint(batches)
    _check_data_fingerprint(record, fingerprint, strict_data, say)
    try:
      restored = checkpointer.restore_latest(abstract_state, start_over=start_over)
    except checkpointing.IncompatibleCheckpointError as e:
      changed = []
      if record and "config" in record:
        changed = list(run_config.changed_bindings(
            run_config.parse_bindings(record["config"]), run_config.parse_bindings(explicit_config)))
      cause = f" (changed settings: {', '.join(changed)})" if changed else ""
      raise checkpointing.IncompatibleCheckpointError(
          f"{e}{cause}; the run was not changed: use a new --model_dir for another model") from None
    if restored is not None:
      start, state, data_record = restored
      batches.set_state(data_record.get("iterator", data_record))
      origin = f"resumed from {checkpointer.directory}/{start}"
    else:
      if trainable.enabled:
        params = head
      elif model.init_from:
        params = model_dir_lib.load_params(model.init_from, module, mesh, rules,
                                           new_params_rng=jax.random.key(seed))
      else:
        params = init_params(module, jax.random.key(seed), mesh, rules)
      origin = (f"initialised from {model.init_from}" if model.init_from
                else "initialised from scratch")
      state = state_lib.init_state(params, tx, seed, shardings)
      start = 0
    writer = metrics_lib.MetricsWriter(model_dir, steps, start, progress=progress,
                                       tensorboard=tensorboard)
    writer.print(f"{partitioning.describe(mesh)}; {origin}; step {start} of {steps}")
    if trainable.enabled:
      origin += f"; LoRA rank {lora.rank} on {len(trainable.targets)} kernels"
      writer.print(f"LoRA rank {lora.rank}, alpha {lora.alpha}: {len(trainable.targets)} kernels "
                   f"adapted, {_count(abstract):,} trained params of {_count(trainable.full_abstract):,}")

    def checkpoint_record(data_state: dict) -> dict:
      return {"iterator": data_state, "config": explicit_config, "fingerprint": fingerprint,
              "lora": trainable.record()}

    data_state = batches.get_state()
    steps_fn = None
    pairs = batches.host_iterator.global_batch_size
    if start < steps:
      prefetcher = Prefetcher(batches, depth=prefetch)
      batch, data_state = next(prefetcher)
      steps_fn = CompiledSteps(updater, shardings, abstract_state, batch, frozen)
      if step_config.pack:
        rows = {k.split("_")[0]: v.shape[0] for k, v in batch.items() if k.endswith("_packed_tokens")}
        writer.print(f"packed batches ({pairs} pairs; first batch rows {rows}): the step compiles "
                     "once per packed shape; memory and FLOPs below are the first shape's")
      writer.print(describe_compiled(steps_fn.compiled_for(batch), pairs, mesh.size))
      model_flops = flops.train_step_flops(config, trainable.full_abstract,
                                           flops.StepShape.of_batch(batch))
      writer.print(f"model FLOPs per step (analytic, 6*N*tokens + attention + loss): "
                   f"{model_flops:.4g} ({model_flops / pairs:.4g} per pair)")
    if jax.process_index() == 0:
      run_config.write_config(model_dir, gin.operative_config_str())

    evaluate = eval_hook.Evaluator(objective_fn, text_encoder,
                                   data_source == "pipeline" and eval_validation_batches,
                                   eval_code_search, eval_max_examples, eval_x_length,
                                   eval_y_length, frozen)
    summary = {"start_step": start, "stopped_by": None}
    if eval_at_start and start == 0:
      summary["initial_eval"] = evaluate(state.params)
      writer.write(0, summary["initial_eval"], split="eval")
    throughput = metrics_lib.Throughput()
    step = last_logged = start
    pending = None  # (step, metrics) of the last step, not yet read from the device.

    def read(pending_step: int, metrics: dict) -> None:
      """Reads a step's metrics: logs them when due and stops on too many non-finite steps."""
      nonlocal last_logged
      values = metrics_lib.to_python(metrics)
      if pending_step % log_every == 0 or pending_step == steps or values["skipped"]:
        values["pairs_per_s"] = throughput.pairs_per_second(pairs * (pending_step - last_logged))
        last_logged = pending_step
        writer.write(pending_step, values)
      if values["nonfinite_consecutive"] >= max_consecutive_nonfinite:
        checkpointer.wait()
        last = checkpointer.all_steps()
        raise NonFiniteError(
            f"{values['nonfinite_consecutive']} consecutive steps had a non-finite loss or "
            f"gradient (up to step {pending_step}); stopping. The last good checkpoint is "
            f"{checkpointer.directory}/{last[-1] if last else '(none)'}; lower the learning "
            "rate or check the data around these steps.")

    with _StopSignal() as stop:
      while step < steps:
        if step > start:
          batch, data_state = next(prefetcher)
        state, metrics = steps_fn(state, batch)
        step += 1
        if pending is not None:
          read(*pending)
        pending = (step, metrics)
        checkpointer.check_for_errors()
        save_now = step % checkpoint_every == 0
        evaluate_now = eval_every and step % eval_every == 0 and step < steps
        agree = step % stop_check_every == 0 or step == steps
        stopping = stop.requested(agree)
        if step % log_every == 0 or step == steps or save_now or evaluate_now or stopping:
          read(*pending)
          pending = None
        if save_now:
          checkpointer.save(step, state, checkpoint_record(data_state))
        if evaluate_now:
          writer.write(step, evaluate(state.params), split="eval")
        if stopping:
          checkpointer.save(step, state, checkpoint_record(data_state))
          summary["stopped_by"] = signal.Signals(stop.signum).name
          writer.print(f"{summary['stopped_by']}: checkpoint saved at step {step}; exiting")
          break
      if pending is not None:
        read(*pending)
      if prefetcher is not None:
        prefetcher.close()
      checkpointer.save(step, state, checkpoint_record(data_state))  # No-op when saved already.
      checkpointer.wait()
    summary["step"] = step
    summary["compiled_shapes"] = len(steps_fn.compiled) if steps_fn is not None else 0
    if summary["stopped_by"] is None:
      tokenizer_path, templates = _tokenizer_source(text_encoder)
      final_params = evaluate.encoder_params(state.params)
      metadata = {"trained_steps": step, "origin": origin, **model.inherited}
      extra = None
      if trainable.enabled:
        metadata["lora"] = trainable.record()
        extra = functools.partial(lora_files.save_adapters, adapters=state.params["adapters"])
      final = write_final(model_dir, config, final_params, tokenizer_path, templates, metadata,
                          extra, prompts)
      summary["final_model"] = str(final)
      summary["final_eval"] = evaluate(state.params)
      if summary["final_eval"]:
        writer.write(step, summary["final_eval"], split="eval")
      if compare_bm25 and eval_code_search:
        summary["bm25_eval"] = evaluate.bm25()
      if export_sentence_transformers:  # After the evaluation, which its model card shows.
        summary["export"] = str(export_final(epath.Path(final), model_dir,
                                             results_of(summary, model_dir, started)))
      if jax.process_index() == 0:
        run_config.write_config(model_dir, gin.operative_config_str())
        run_config.write_results(model_dir, results_of(summary, model_dir, started))
    summary["state"] = state
    return summary
  finally:
    _close_all([prefetcher, checkpointer, writer, lock])


def _close_all(resources: list) -> None:
  """Closes each resource (release for the lock) even when an earlier one raises."""
  if not resources:
    return
  first, rest = resources[0], resources[1:]
  try:
    if first is not None:
      (first.release if isinstance(first, run_lock.RunLock) else first.close)()
  finally:
    _close_all(rest)


def write_final(model_dir: epath.Path, config, params, tokenizer_path, templates,
                metadata: dict, extra=None, prompts: dict[str, str] | None = None) -> epath.Path:
  """Writes the final model directory to `final.partial`, then moves it to `final`.

  A run killed while writing leaves only the partial folder, which the next
  attempt replaces; `final` is always a whole model directory. An object store
  (gs://) cannot rename a folder atomically, so there `final` is written in
  place: its model.json comes last, and a `final` cut short (no model.json) is
  not loadable and is replaced by the next attempt.
  `extra(folder)` (every process calls it) writes more files into it first.
  """
  final, partial = model_dir / FINAL_DIR, model_dir / f"{FINAL_DIR}.partial"
  in_place = paths.is_cloud(model_dir)
  target = final if in_place else partial
  if jax.process_index() == 0 and target.exists():
    target.rmtree()
  partitioning.barrier("embed_jax_final_target_cleared")
  model_dir_lib.save_model(target, config, params, tokenizer_path=tokenizer_path,
                           templates=templates, metadata=metadata, prompts=prompts)
  if extra is not None:
    extra(target)
  if not in_place and jax.process_index() == 0:
    if final.exists():
      final.rmtree()
    partial.rename(final)
  partitioning.barrier("embed_jax_final_written")
  return final


def _count(abstract: Any) -> int:
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract))


def results_of(summary: dict[str, Any], model_dir: epath.Path, started: float) -> dict[str, Any]:
  """The JSON-able part of a run's summary, with its final train loss and wall time."""
  final_loss = None
  for record in metrics_lib.read_records(model_dir / metrics_lib.METRICS_FILE):
    if record.get("split") == "train" and record.get("step") == summary["step"]:
      final_loss = record.get("loss")
  keys = ("step", "start_step", "final_model", "export", "initial_eval", "final_eval", "bm25_eval")
  return {"final_loss": final_loss, "wall_s": round(time.time() - started, 1),
          **{k: summary[k] for k in keys if k in summary}}
