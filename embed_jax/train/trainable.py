"""Which params a run trains: all of them, or LoRA adapters beside a frozen base.

With LoRA (`train.lora_rank > 0`) the train state holds

    {"adapters": the LoRA factors of the target kernels (`models.lora`),
     "head": the dual encoder's own params outside the encoder (log_temp,
             the projection when there is one), trained in full}

and the encoder's params are the frozen base, passed to the step beside the
state as `frozen["base"]` (sharded as before): never in the optimizer state,
never differentiated. The objective sees the merged params through
`params_view`, which merges W + (alpha/r) A @ B inside the step (once per
forward, so GradCache merges per chunk): each adapted kernel costs a
temporary of its size, but the base has no gradient and no optimizer moments.
A checkpoint therefore holds only the adapters and the head; a resume
rebuilds the base from `init_from` (or the seeded scratch init) and refuses
other LoRA settings (`check_resume`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh

from embed_jax import partitioning
from embed_jax.models import lora as lora_lib
from embed_jax.train.run_config import ConfigChangeError

ENCODER = "encoder"
BASE = "base"


class Trainable:
  """The split of a run's params into trained and frozen ones.

  Args:
    boxed: the dual encoder's abstract params, boxed with logical names.
    mesh, rules: where params live.
    lora: LoRA's settings, or None for full fine-tuning.

  Attributes:
    shardings, abstract: the TRAINED params' shardings and shapes (what the
      train state, the optimizer and the gradients hold).
    full_shardings, full_abstract: those of the dual encoder's whole params.
    targets: the adapted kernels (empty without LoRA).
  """

  def __init__(self, boxed: Any, mesh: Mesh, rules: partitioning.LogicalRules | None,
               lora: lora_lib.LoraConfig | None):
    self.mesh, self.rules, self.lora = mesh, rules, lora
    self.full_shardings = partitioning.logical_to_shardings(boxed, mesh, rules)
    self.full_abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype),
                                      nn.meta.unbox(boxed))
    if lora is None:
      self.targets = []
      self.shardings, self.abstract = self.full_shardings, self.full_abstract
      return
    self.targets = lora_lib.find_targets(boxed[ENCODER], lora)
    node = self.full_abstract[ENCODER]
    for key in self.targets[0].path:
      node = node[key]
    dtype = node.dtype  # the adapters are stored as the kernels they adapt
    adapters = lora_lib.abstract_adapters(self.targets, lora.rank, dtype)
    self.adapter_shardings = partitioning.logical_to_shardings(adapters, mesh, rules)
    head = {k: v for k, v in boxed.items() if k != ENCODER}
    trained_boxed = {"adapters": adapters, "head": head}
    self.shardings = {"adapters": self.adapter_shardings,
                      "head": {k: v for k, v in self.full_shardings.items() if k != ENCODER}}
    self.abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype),
                                 nn.meta.unbox(trained_boxed))

  @property
  def enabled(self) -> bool:
    return self.lora is not None

  def base_shardings(self) -> Any:
    """Shardings of `frozen["base"]`: the encoder's, as in full fine-tuning."""
    return {ENCODER: self.full_shardings[ENCODER]}

  def split(self, params: Any, rng: jax.Array) -> tuple[Any, Any]:
    """(trained, base) from the dual encoder's full params; fresh adapters drawn from `rng`.

    Without LoRA: (params, None).
    """
    if not self.enabled:
      return params, None
    init = jax.jit(lambda r: lora_lib.init_adapters(r, self.targets, self.lora.rank,
                                                    self.abstract_dtype),
                   out_shardings=self.adapter_shardings)
    trained = {"adapters": init(rng), "head": {k: v for k, v in params.items() if k != ENCODER}}
    return trained, {ENCODER: params[ENCODER]}

  @property
  def abstract_dtype(self):
    return jax.tree.leaves(self.abstract["adapters"])[0].dtype

  def merged(self, trained: Any, base: Any) -> Any:
    """The dual encoder's params: the base encoder with the adapters merged in, and the head."""
    if not self.enabled:
      return trained
    encoder = lora_lib.merge(base[ENCODER], trained["adapters"], self.lora.scale)
    return {ENCODER: encoder, **trained["head"]}

  def params_view(self, trained: Any, frozen: Any) -> Any:
    """The objective's `params_view`: merged params from the trained ones and `frozen["base"]`."""
    return self.merged(trained, frozen[BASE])

  def record(self) -> dict[str, Any] | None:
    """What checkpoints and the final model record about LoRA (None when off)."""
    if not self.enabled:
      return None
    return {**self.lora.record(), "adapted": [t.module_path for t in self.targets]}


def check_resume(checkpoint_record: dict | None, current: dict | None) -> None:
  """Refuses a resume whose LoRA settings (on/off, rank, alpha, targets) differ from the checkpoint's.

  The adapters' shapes and meaning depend on them, so no flag lets a run
  continue across such a change.
  """
  if not checkpoint_record or "config" not in checkpoint_record:
    return
  old = checkpoint_record.get("lora")
  if old == current:
    return
  def say(r):
    return "off" if not r else f"rank {r['rank']}, alpha {r['alpha']}, targets {r['targets']}"
  raise ConfigChangeError(
      f"train.lora_*: the checkpoint was trained with LoRA {say(old)}, this run asks for "
      f"{say(current)}; the adapters cannot continue across that change. Use a new --model_dir "
      "or the checkpoint's settings")


def lora_config(rank: int, alpha: float, targets: Any) -> lora_lib.LoraConfig | None:
  """LoraConfig from the train settings (None for rank 0); bad values raise LoraError.

  Targets given with rank 0 are an error: LoRA would silently be off.
  """
  if rank == 0:
    if targets is not None:
      shown = targets if isinstance(targets, str) else list(targets)
      raise lora_lib.LoraError(f"train.lora_targets={shown!r} is set but train.lora_rank=0 "
                               "(LoRA off); set a rank >= 1")
    return None
  if targets is None:
    targets = lora_lib.DEFAULT_TARGETS
  elif isinstance(targets, str):
    targets = (targets,)
  return lora_lib.LoraConfig(rank=rank, alpha=alpha, targets=tuple(targets))
