"""LoRA training: adapter gradients against a float64 oracle, sharded vs single device, a run, exports.

The oracle differentiates the plain (merged) model's loss with respect to the
merged kernels W and applies the chain rule by hand: dL/dA = s dW B^T and
dL/dB = s A^T dW, so it shares nothing with the adapters' autodiff.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embed_jax import partitioning
from embed_jax.checkpoints import export_peft, model_dir as model_dir_lib
from embed_jax.checkpoints.export_st import ExportError
from embed_jax.models import lora as lora_lib
from embed_jax.models.dual_encoder import DualEncoderConfig, build_dual_encoder
from embed_jax.models.sharded_init import abstract_params, example_inputs, init_params
from embed_jax.models.transformer import DecoderConfig
from embed_jax.train import run_config, trainable as trainable_lib
from embed_jax.train import updater as updater_lib
from embed_jax.train.objective import ContrastiveObjective
from tests.train import run_helpers
from tests.train.step_test import CLOSE_X, CLOSE_Y, OPEN_X, OPEN_Y, VOCAB, _batch

LORA = lora_lib.LoraConfig(rank=2, alpha=6.0, targets=("attention", "mlp/wo"))


def _config(dtype="float32"):
  encoder = DecoderConfig(vocab_size=VOCAB, d_model=16, num_layers=1, num_heads=2, max_length=16,
                          position_embedding="rope", norm="rmsnorm", mlp_activation="silu",
                          gated_mlp=True, qkv_bias=False, out_bias=False, mlp_bias=False,
                          dtype=dtype, param_dtype=dtype)
  return DualEncoderConfig(encoder=encoder, pooling="eos", x_delimiter_ids=(OPEN_X, CLOSE_X),
                           y_delimiter_ids=(OPEN_Y, CLOSE_Y))


def _setup(mesh, dtype="float32", chunks=1):
  """(trainable, updater, trained, frozen) with random (nonzero) adapters on `mesh`."""
  module = build_dual_encoder(_config(dtype))
  boxed = abstract_params(module, example_inputs(module, partitioning.batch_size_multiple(mesh)), mesh)
  trainable = trainable_lib.Trainable(boxed, mesh, None, LORA)
  params = init_params(module, jax.random.key(0), mesh)
  trained, base = trainable.split(params, jax.random.key(1))
  rng = np.random.default_rng(5)
  trained["adapters"] = jax.tree.map(
      lambda a, s: jax.device_put(rng.normal(scale=0.3, size=a.shape).astype(a.dtype), s),
      trained["adapters"], trainable.shardings["adapters"])
  objective = ContrastiveObjective(module, mesh, loss_impl="reference", dropout=False,
                                   params_view=trainable.params_view)
  updater = updater_lib.Updater(objective, None, None, trainable.shardings, chunks)
  return trainable, updater, trained, {trainable_lib.BASE: base}


def _device_batch(mesh, size=16):
  batch = _batch(np.random.default_rng(0), size)
  return {k: jax.device_put(v, partitioning.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}


def test_adapter_grads_equal_chain_rule_of_merged_model_grads_float64():
  with jax.enable_x64(True):
    mesh = partitioning.create_mesh(devices=jax.devices()[:1])
    trainable, updater, trained, frozen = _setup(mesh, "float64")
    batch, rng = _device_batch(mesh), jax.random.key(2)
    with partitioning.activate(mesh):
      loss, _, grads = jax.jit(updater.direct_grads)(trained, batch, rng, frozen)
      merged = trainable.merged(trained, frozen["base"])
      plain = updater_lib.Updater(updater.objective.replace(params_view=None), None, None, None)
      merged_loss, _, merged_grads = jax.jit(plain.direct_grads)(merged, batch, rng)
  np.testing.assert_allclose(float(loss), float(merged_loss), rtol=1e-12)
  assert jax.tree.structure(grads) == jax.tree.structure(trained)  # no base param is differentiated
  adapters = lora_lib.adapter_leaves(trained["adapters"])
  got = lora_lib.adapter_leaves(grads["adapters"])
  assert len(got) == 5 * 2  # q, k, v, o, wo: a and b
  for t in trainable.targets:
    name = "/".join(t.path[:-1])
    node = merged_grads["encoder"]
    for key in t.path:
      node = node[key]
    d_w = np.asarray(node, np.float64).reshape(t.in_size, t.out_size)
    a = np.asarray(adapters[name + "/lora_a"]).reshape(t.in_size, LORA.rank)
    b = np.asarray(adapters[name + "/lora_b"]).reshape(LORA.rank, t.out_size)
    np.testing.assert_allclose(np.asarray(got[name + "/lora_a"]).reshape(a.shape),
                               LORA.scale * d_w @ b.T, rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(np.asarray(got[name + "/lora_b"]).reshape(b.shape),
                               LORA.scale * a.T @ d_w, rtol=1e-9, atol=1e-12, err_msg=name)
  np.testing.assert_allclose(float(grads["head"]["log_temp"]), float(merged_grads["log_temp"]),
                             rtol=1e-9)


def test_sharded_grad_cache_equals_single_device():
  single = partitioning.create_mesh(devices=jax.devices()[:1])
  _, updater, trained, frozen = _setup(single)
  sharded_mesh = partitioning.create_mesh(data=4, fsdp=2)
  trainable_s, updater_s, trained_s, frozen_s = _setup(sharded_mesh, chunks=2)
  # The base kernels stay sharded as in full fine-tuning.
  kernel = frozen_s["base"]["encoder"]["layer_0"]["attention"]["query"]["kernel"]
  assert kernel.sharding == trainable_s.full_shardings["encoder"]["layer_0"]["attention"]["query"]["kernel"]
  assert not kernel.sharding.is_fully_replicated
  rng = jax.random.key(3)
  with partitioning.activate(single):
    want = jax.jit(updater.direct_grads)(trained, _device_batch(single), rng, frozen)
  with partitioning.activate(sharded_mesh):
    got = jax.jit(updater_s.grad_cache_grads)(trained_s, _device_batch(sharded_mesh), rng, frozen_s)
  np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
  for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want[2]), jax.tree.leaves(got[2])):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))


LLAMA_BINDINGS = [
    "DecoderConfig.position_embedding='rope'", "DecoderConfig.norm='rmsnorm'",
    "DecoderConfig.gated_mlp=True", "DecoderConfig.mlp_activation='silu'",
    "DecoderConfig.qkv_bias=False", "DecoderConfig.out_bias=False", "DecoderConfig.mlp_bias=False",
    "DecoderConfig.dropout_rate=0.0", "DecoderConfig.num_kv_heads=2",
    "StepConfig.grad_cache_chunks=2",
    "train.compute_dtype='bfloat16'",
]
LORA_BINDINGS = ["train.lora_rank=4", "train.lora_alpha=8.0", "train.lora_targets=['attention', 'mlp']"]
STEPS = 2


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, minilm_tokenizer_json):
  run = tmp_path_factory.mktemp("lora_run")
  summary = run_helpers.train_in_process(run, minilm_tokenizer_json, LLAMA_BINDINGS + LORA_BINDINGS,
                                         steps=STEPS, export_sentence_transformers=True)
  return run, summary, minilm_tokenizer_json


def test_lora_run_trains_adapters_only_on_a_bit_identical_base(lora_run):
  run, summary, _ = lora_run
  state = summary["state"]
  assert summary["step"] == STEPS
  assert set(state.params) == {"adapters", "head"} and set(state.params["head"]) == {"log_temp"}
  # The optimizer state holds adapter (and head) moments only: every array leaf has a trained shape.
  trained_shapes = sorted(a.shape for a in jax.tree.leaves(state.params))
  moments = [a for a in jax.tree.leaves(state.opt_state) if a.ndim > 0 or a.dtype != jnp.int32]
  assert sorted(a.shape for a in moments) == sorted(trained_shapes * 2)
  trained_bytes = sum(a.nbytes for a in jax.tree.leaves(state.params))
  assert sum(a.nbytes for a in moments) == 2 * trained_bytes

  final = model_dir_lib.load_model(os.path.join(run, "final"), compute_dtype="float32")
  lora = final.metadata["lora"]
  assert (lora["rank"], lora["alpha"], lora["targets"]) == (4, 8.0, ["attention", "mlp"])
  assert len(lora["adapted"]) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
  module = build_dual_encoder(final.config)
  base = jax.tree.map(np.asarray, init_params(module, jax.random.key(0), partitioning.create_mesh()))
  merged = model_dir_lib.params_to_numpy(final.params)
  adapters = export_peft.load_adapters(os.path.join(run, "final"))
  np.testing.assert_array_equal(  # the adapters saved are the state's
      adapters["layer_1"]["mlp"]["wo"]["lora_b"],
      np.asarray(state.params["adapters"]["layer_1"]["mlp"]["wo"]["lora_b"]))
  unmerged = export_peft.unmerge(merged["encoder"], adapters, 8.0 / 4)
  adapted = {tuple(p.split("/")) for p in lora["adapted"]}
  for path, value in jax.tree_util.tree_leaves_with_path(base["encoder"]):
    keys = tuple(str(k.key) for k in path)
    node_merged, node_unmerged = merged["encoder"], unmerged
    for key in keys:
      node_merged, node_unmerged = node_merged[key], node_unmerged[key]
    if keys[:-1] in adapted:
      assert np.abs(node_merged - value).max() > 1e-6, keys  # trained
      np.testing.assert_allclose(node_unmerged, value, atol=1e-6, err_msg=str(keys))
    else:
      np.testing.assert_array_equal(node_merged, value, err_msg=str(keys))  # frozen: bit-identical


def test_lora_exports_reproduce_the_adapted_model(lora_run, tmp_path):
  import torch  # pylint: disable=import-outside-toplevel
  from peft import PeftModel  # pylint: disable=import-outside-toplevel
  from sentence_transformers import SentenceTransformer  # pylint: disable=import-outside-toplevel
  from transformers import AutoModel  # pylint: disable=import-outside-toplevel
  run, summary, _ = lora_run
  final = model_dir_lib.load_model(os.path.join(run, "final"), compute_dtype="float32")
  texts = ["def add(a, b): return a + b", "sorting a list in place"]
  from embed_jax.embedding import embed_texts  # pylint: disable=import-outside-toplevel
  ours = embed_texts(final.module, final.params, final.text_encoder, texts, side="x")
  exported = SentenceTransformer(summary["export"], device="cpu")
  st = exported.encode(texts, normalize_embeddings=True)
  np.testing.assert_allclose(st, ours, atol=1e-4)

  out = export_peft.export_peft(os.path.join(run, "final"), tmp_path / "peft")
  base = AutoModel.from_pretrained(str(out / "base"))
  peft_model = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
  ids, _ = final.text_encoder.encode_ids(texts, "x", 16)
  length = max(len(i) for i in ids)
  tokens = np.array([i + [0] * (length - len(i)) for i in ids], np.int64)
  mask = np.array([[1] * len(i) + [0] * (length - len(i)) for i in ids], np.int64)
  with torch.no_grad():
    hidden = peft_model(input_ids=torch.from_numpy(tokens),
                        attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
  want = final.module.apply({"params": final.params}, jnp.asarray(tokens, jnp.int32),
                            jnp.asarray(mask, jnp.int32),
                            method=lambda m, t, k: m.encoder(t, k))
  real = mask.astype(bool)
  np.testing.assert_allclose(hidden[real], np.asarray(want)[real], atol=1e-4)
  # Without the adapter the base alone differs: the adapters carry the training.
  with torch.no_grad(), peft_model.disable_adapter():
    plain = peft_model(input_ids=torch.from_numpy(tokens),
                       attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
  assert np.abs(plain[real] - hidden[real]).max() > 1e-3


def test_resume_continues_the_adapters_and_refuses_other_lora_settings(lora_run):
  run, summary, tokenizer = lora_run
  for changed in (["train.lora_rank=2", "train.lora_alpha=8.0",
                   "train.lora_targets=['attention', 'mlp']"], []):
    with pytest.raises(run_config.ConfigChangeError, match="train.lora_"):
      run_helpers.train_in_process(run, tokenizer, LLAMA_BINDINGS + changed, steps=STEPS + 1)
  # The checkpoint holds the adapters (and the head): the same settings continue the run.
  resumed = run_helpers.train_in_process(run, tokenizer, LLAMA_BINDINGS + LORA_BINDINGS,
                                         steps=STEPS + 1)
  assert resumed["start_step"] == STEPS and resumed["step"] == STEPS + 1
  before = np.asarray(summary["state"].params["adapters"]["layer_0"]["attention"]["query"]["lora_b"])
  after = np.asarray(resumed["state"].params["adapters"]["layer_0"]["attention"]["query"]["lora_b"])
  # One more AdamW step from the checkpoint's adapters: each entry moves by at most ~lr (3e-3).
  assert 0 < np.abs(after - before).max() <= 1.5 * 3e-3


def test_bad_lora_settings_fail_before_the_first_step(tmp_path, minilm_tokenizer_json):
  with pytest.raises(lora_lib.LoraError, match="train.lora_targets: 'qkv' matches no"):
    run_helpers.train_in_process(tmp_path / "a", minilm_tokenizer_json,
                                 LLAMA_BINDINGS + ["train.lora_rank=2", "train.lora_targets=['qkv']"])
  assert not (tmp_path / "a" / "checkpoints").exists()


def _lora_model_dir(tmp_path, encoder, tokenizer_json, lora):
  """A model directory as a LoRA run leaves it: merged params, adapters, the lora record."""
  config = DualEncoderConfig(encoder=encoder, pooling="mean")
  module = build_dual_encoder(config)
  params = jax.tree.map(np.asarray, init_params(module, jax.random.key(0)))
  boxed = abstract_params(module, example_inputs(module, 1))
  targets = lora_lib.find_targets(boxed["encoder"], lora)
  rng = np.random.default_rng(1)
  adapters = jax.tree.map(lambda a: rng.normal(scale=0.2, size=a.shape).astype(np.float32),
                          lora_lib.init_adapters(jax.random.key(1), targets, lora.rank))
  merged = {**params, "encoder": jax.tree.map(
      np.asarray, lora_lib.merge(params["encoder"], adapters, lora.scale))}
  path = model_dir_lib.save_model(tmp_path / "model", config, merged, tokenizer_path=tokenizer_json,
                                  metadata={"lora": {**lora.record(), "adapted": []}})
  export_peft.save_adapters(path, adapters)
  return path, params, merged


def test_peft_export_of_bert_equals_the_merged_transformers_model(tmp_path, minilm_tokenizer_json):
  import torch  # pylint: disable=import-outside-toplevel
  from peft import PeftModel  # pylint: disable=import-outside-toplevel
  from transformers import AutoModel, BertConfig as HFBertConfig, BertModel  # pylint: disable=import-outside-toplevel
  from embed_jax.checkpoints import hf_params  # pylint: disable=import-outside-toplevel
  from embed_jax.models.bert import BertConfig  # pylint: disable=import-outside-toplevel
  encoder = BertConfig(vocab_size=30528, d_model=16, num_layers=2, num_heads=2, d_ff=32,
                       max_length=32)
  lora = lora_lib.LoraConfig(rank=3, alpha=5.0, targets=("attention", "mlp"))
  path, params, merged = _lora_model_dir(tmp_path, encoder, minilm_tokenizer_json, lora)
  out = export_peft.export_peft(path, tmp_path / "peft")
  adapter_config = (out / "adapter" / "adapter_config.json").read_text()
  assert '"encoder.layer.1.attention.output.dense"' in adapter_config  # exact names, not suffixes
  base = AutoModel.from_pretrained(str(out / "base"))
  base_tensors = {k: v.numpy() for k, v in base.state_dict().items()}
  for name, value in hf_params.params_to_hf(encoder, params["encoder"]).items():
    np.testing.assert_allclose(base_tensors[name], value, atol=1e-6)  # the original base
  peft_model = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
  reference = BertModel(HFBertConfig(**json_config(out / "base"))).eval()
  reference.load_state_dict({k: torch.from_numpy(v) for k, v in
                             hf_params.params_to_hf(encoder, merged["encoder"]).items()},
                            strict=False)
  tokens = torch.from_numpy(np.random.default_rng(0).integers(0, 1000, (2, 9)))
  with torch.no_grad():
    np.testing.assert_allclose(peft_model(input_ids=tokens).last_hidden_state.numpy(),
                               reference(input_ids=tokens).last_hidden_state.numpy(), atol=1e-5)


def json_config(folder):
  return json.loads((folder / "config.json").read_text())


def test_peft_export_refuses_what_it_cannot_write(tmp_path):
  def model_json(folder, encoder, metadata):
    folder.mkdir()
    record = {"format_version": 1, "text_encoder": {"tokenizer_file": "tokenizer.json"},
              "config": model_dir_lib.config_to_json(DualEncoderConfig(encoder=encoder)),
              "metadata": metadata}
    (folder / model_dir_lib.CONFIG_FILE).write_text(json.dumps(record))
    return folder
  lora = {"lora": {**lora_lib.LoraConfig(rank=2).record(), "adapted": []}}
  gpt2 = DecoderConfig(vocab_size=64, d_model=16, num_layers=1, num_heads=2, max_length=16)
  with pytest.raises(ExportError, match="--peft: a GPT-2 model keeps q, k and v in one fused"):
    export_peft.check_exportable(model_json(tmp_path / "gpt2", gpt2, lora))
  with pytest.raises(ExportError, match="was not trained with LoRA"):
    export_peft.check_exportable(model_json(tmp_path / "plain", _config().encoder, {}))
  with pytest.raises(model_dir_lib.ModelDirError, match="lora_adapters.safetensors: missing"):
    export_peft.check_exportable(model_json(tmp_path / "no_adapters", _config().encoder, lora))
