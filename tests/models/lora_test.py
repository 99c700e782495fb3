"""LoRA adapters: the merge against a numpy reference, target matching, bad settings, shardings."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embed_jax import partitioning
from embed_jax.models import lora as lora_lib
from embed_jax.models.bert import BertConfig
from embed_jax.models.dual_encoder import DualEncoderConfig, build_dual_encoder
from embed_jax.models.sharded_init import abstract_params, example_inputs
from embed_jax.models.transformer import DecoderConfig

LLAMA = DecoderConfig(vocab_size=64, d_model=16, num_layers=2, num_heads=4, num_kv_heads=2,
                      max_length=16, position_embedding="rope", norm="rmsnorm",
                      mlp_activation="silu", gated_mlp=True, qkv_bias=False, out_bias=False,
                      mlp_bias=False)


def _boxed(encoder, mesh=None):
  module = build_dual_encoder(DualEncoderConfig(encoder=encoder, pooling="mean"))
  return abstract_params(module, example_inputs(module, 8 if mesh else 1), mesh)


def _paths(targets):
  return [t.module_path for t in targets]


def test_default_targets_are_every_layers_attention_projections():
  targets = lora_lib.find_targets(_boxed(LLAMA)["encoder"], lora_lib.LoraConfig(rank=2))
  assert _paths(targets) == [f"layer_{i}/attention/{p}" for i in range(2)
                             for p in ("key", "out", "query", "value")]
  by_name = {t.module_path: t for t in targets}
  out, key = by_name["layer_0/attention/out"], by_name["layer_0/attention/key"]
  assert (out.num_in, out.in_size, out.out_size) == (2, 16, 16)  # [heads, head_dim, embed]
  assert (key.num_in, key.in_size, key.out_size) == (1, 16, 8)  # two kv heads of 4


def test_targets_match_path_runs_and_peft_aliases():
  encoder = _boxed(LLAMA)["encoder"]
  mlp = lora_lib.find_targets(encoder, lora_lib.LoraConfig(rank=2, targets=("layer_1/mlp",)))
  assert _paths(mlp) == ["layer_1/mlp/wi_gate", "layer_1/mlp/wi_up", "layer_1/mlp/wo"]
  aliased = lora_lib.find_targets(encoder, lora_lib.LoraConfig(rank=2, targets=("q_proj", "down_proj")))
  assert _paths(aliased) == ["layer_0/attention/query", "layer_0/mlp/wo",
                             "layer_1/attention/query", "layer_1/mlp/wo"]


def test_bad_settings_are_one_line_errors_naming_the_setting():
  encoder = _boxed(LLAMA)["encoder"]
  with pytest.raises(lora_lib.LoraError, match=r"train.lora_targets: 'qproj' matches no"):
    lora_lib.find_targets(encoder, lora_lib.LoraConfig(rank=2, targets=("qproj",)))
  with pytest.raises(lora_lib.LoraError, match=r"train.lora_rank=9 exceeds .*key \(16 x 8: at most 8\)"):
    lora_lib.find_targets(encoder, lora_lib.LoraConfig(rank=9))
  for rank in (0, -1, 2.5):
    with pytest.raises(lora_lib.LoraError, match="train.lora_rank must be a positive integer"):
      lora_lib.LoraConfig(rank=rank)
  with pytest.raises(lora_lib.LoraError, match="train.lora_targets is empty"):
    lora_lib.LoraConfig(rank=2, targets=())


@pytest.mark.parametrize("scan", [False, True])
def test_merge_equals_numpy_reference(scan):
  encoder = LLAMA if not scan else DecoderConfig(**{**LLAMA.__dict__, "scan_layers": True})
  boxed = _boxed(encoder)["encoder"]
  config = lora_lib.LoraConfig(rank=3, alpha=6.0, targets=("attention", "mlp/wo"))
  targets = lora_lib.find_targets(boxed, config)
  base = jax.tree.map(lambda s: np.random.default_rng(0).normal(size=s.shape).astype(np.float32),
                      nn.meta.unbox(boxed))
  adapters = lora_lib.init_adapters(jax.random.key(1), targets, config.rank)
  # lora_b starts at zero: the adapted model starts as the base.
  for a, b in zip(jax.tree.leaves(lora_lib.merge(base, adapters, config.scale)), jax.tree.leaves(base)):
    np.testing.assert_array_equal(np.asarray(a), b)
  rng = np.random.default_rng(2)
  adapters = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), adapters)
  merged = lora_lib.merge(base, adapters, config.scale)
  leaves = lora_lib.adapter_leaves(adapters)
  adapted = set()
  for t in targets:
    a = np.asarray(leaves["/".join(t.path[:-1]) + "/lora_a"], np.float64)
    b = np.asarray(leaves["/".join(t.path[:-1]) + "/lora_b"], np.float64)
    layers = a.shape[0] if scan else 1
    a, b = a.reshape(layers, t.in_size, 3), b.reshape(layers, 3, t.out_size)
    kernel = np.asarray(base[t.path[0]][t.path[1]][t.path[2]]["kernel"], np.float64)
    want = kernel + 2.0 * np.einsum("lir,lro->lio", a, b).reshape(kernel.shape)
    got = merged[t.path[0]][t.path[1]][t.path[2]]["kernel"]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    adapted.add(t.path)
  flat_base = {tuple(str(k.key) for k in p): v
               for p, v in jax.tree_util.tree_leaves_with_path(base)}
  for path, value in jax.tree_util.tree_leaves_with_path(merged):
    path = tuple(str(k.key) for k in path)
    if path not in adapted:
      np.testing.assert_array_equal(np.asarray(value), flat_base[path])
  assert lora_lib.adapters_from_leaves(leaves).keys() == adapters.keys()


def test_adapters_are_sharded_like_their_base_matrices():
  mesh = partitioning.create_mesh(data=4, fsdp=2)
  rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("heads", "tensor"),
           ("kv_heads", "tensor"), ("mlp", "data"))
  boxed = _boxed(BertConfig(vocab_size=64, d_model=16, num_layers=1, num_heads=4, d_ff=32,
                            max_length=16), mesh)
  targets = lora_lib.find_targets(boxed["encoder"], lora_lib.LoraConfig(rank=2, targets=("mlp",)))
  shardings = partitioning.logical_to_shardings(lora_lib.abstract_adapters(targets, 2), mesh, rules)
  base = partitioning.logical_to_shardings(boxed, mesh, rules)["encoder"]["layer_0"]["mlp"]
  wi, wo = shardings["layer_0"]["mlp"]["wi"], shardings["layer_0"]["mlp"]["wo"]

  def spec(sharding):
    return tuple(sharding.spec) + (None,) * (2 - len(sharding.spec))
  # wi: [embed, mlp] -> a [embed, r] by fsdp, b [r, mlp] by data; wo the other way round.
  assert spec(base["wi"]["kernel"]) == ("fsdp", "data") and spec(base["wo"]["kernel"]) == ("data", "fsdp")
  assert spec(wi["lora_a"]) == ("fsdp", None) and spec(wi["lora_b"]) == (None, "data")
  assert spec(wo["lora_a"]) == ("data", None) and spec(wo["lora_b"]) == (None, "fsdp")
  adapters = jax.jit(lambda r: lora_lib.init_adapters(r, targets, 2), out_shardings=shardings)(
      jax.random.key(0))
  assert adapters["layer_0"]["mlp"]["wi"]["lora_a"].sharding == wi["lora_a"]
  assert float(jnp.abs(adapters["layer_0"]["mlp"]["wi"]["lora_a"]).max()) <= 1 / 4  # 1/sqrt(16)


def test_train_settings_become_a_lora_config():
  from embed_jax.train import trainable  # pylint: disable=import-outside-toplevel
  assert trainable.lora_config(0, 16.0, None) is None
  config = trainable.lora_config(8, 16.0, "mlp")
  assert (config.rank, config.scale, config.targets) == (8, 2.0, ("mlp",))
  assert trainable.lora_config(4, 8.0, None).targets == lora_lib.DEFAULT_TARGETS
  with pytest.raises(lora_lib.LoraError, match=r"train.lora_targets=\['mlp'\] is set but train.lora_rank=0"):
    trainable.lora_config(0, 16.0, ["mlp"])
  with pytest.raises(lora_lib.LoraError, match="train.lora_rank must be a positive integer"):
    trainable.lora_config(-2, 16.0, None)
