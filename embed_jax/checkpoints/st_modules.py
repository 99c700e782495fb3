"""sentence-transformers modules for what its own modules cannot express (copied into exports).

`embed-jax export` copies this file into the exported folder as
`embed_jax_modules.py` and names its classes in modules.json, so
`SentenceTransformer(folder, trust_remote_code=True)` loads them without
embed_jax installed: it imports only torch, transformers and sentence-transformers.

  BidirectionalTransformer  a decoder (Llama, Qwen2, GPT-2 in transformers) run with
                            every real token visible to every other (no causal mask)
  LatentAttentionPooling    NV-Embed's latent-attention block, then the masked mean
                            (embed_jax/models/latent_attention.py is the definition)
  PromptMeanPooling         the mean with the prompt's tokens left out where
                            sentence-transformers' own count differs from embed_jax's
"""

from __future__ import annotations

import math

import torch
from sentence_transformers.base.modules.module import Module
from sentence_transformers.base.modules.transformer import Transformer


def _key_padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
  """Additive attention mask [B, 1, L, L]: 0 where the key is a real token, else the dtype's min."""
  visible = mask.bool()[:, None, None, :].expand(-1, 1, mask.shape[1], -1)
  return torch.zeros(visible.shape, dtype=dtype, device=mask.device).masked_fill(
      ~visible, torch.finfo(dtype).min)


class BidirectionalTransformer(Transformer):
  """A transformers decoder with its causal mask removed (a 4-D key-padding mask instead)."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    for module in self.model.modules():
      if hasattr(module, "is_causal"):
        module.is_causal = False

  def forward(self, features, **kwargs):
    mask = features["attention_mask"]
    kwargs = {**kwargs, "attention_mask": _key_padding_bias(mask, self.model.dtype)}
    return super().forward(features, **kwargs)


def _text_mask(features: dict, include_prompt: bool, prompt_offset: int) -> torch.Tensor:
  """The attention mask without the prompt's tokens (right padding; see embed_jax.embedding)."""
  mask = features["attention_mask"].clone()
  prompt_length = features.get("prompt_length")
  if include_prompt or not prompt_length:
    return mask
  if isinstance(prompt_length, torch.Tensor):
    prompt_length = int(prompt_length.reshape(-1)[0].item())
  mask[:, :int(prompt_length) + prompt_offset] = 0
  return mask


def _masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  weights = mask.to(torch.float32).unsqueeze(-1)
  return ((tokens.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)).to(tokens.dtype)


class PromptMeanPooling(Module):
  """Mean over the text's tokens; the prompt's (sentence-transformers' prompt_length plus
  prompt_offset tokens) left out unless include_prompt."""

  config_keys = ["embedding_dimension", "include_prompt", "prompt_offset"]

  def __init__(self, embedding_dimension: int, include_prompt: bool = True, prompt_offset: int = 0):
    super().__init__()
    self.embedding_dimension = embedding_dimension
    self.include_prompt = include_prompt
    self.prompt_offset = prompt_offset

  def forward(self, features: dict, **kwargs) -> dict:
    mask = _text_mask(features, self.include_prompt, self.prompt_offset)
    features["sentence_embedding"] = _masked_mean(features["token_embeddings"], mask)
    return features

  def get_sentence_embedding_dimension(self) -> int:
    return self.embedding_dimension

  def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
    self.save_config(output_path)


class LatentAttentionPooling(PromptMeanPooling):
  """h + Wo·attn(h Wq, latents Wk, latents Wv), then + MLP (exact GELU), then the masked mean."""

  config_keys = ["embedding_dimension", "num_latents", "num_heads", "include_prompt",
                 "prompt_offset"]

  def __init__(self, embedding_dimension: int, num_latents: int, num_heads: int,
               include_prompt: bool = False, prompt_offset: int = 0):
    super().__init__(embedding_dimension, include_prompt, prompt_offset)
    d = embedding_dimension
    self.num_latents, self.num_heads = num_latents, num_heads
    self.latents = torch.nn.Parameter(torch.zeros(num_latents, d))
    self.query = torch.nn.Linear(d, d, bias=False)
    self.key = torch.nn.Linear(d, d, bias=False)
    self.value = torch.nn.Linear(d, d, bias=False)
    self.out = torch.nn.Linear(d, d, bias=False)
    self.wi = torch.nn.Linear(d, 4 * d)
    self.wo = torch.nn.Linear(4 * d, d)

  def block(self, hidden: torch.Tensor) -> torch.Tensor:
    """hidden [B, L, D] -> [B, L, D]: the latent cross-attention and the MLP, with residuals."""
    heads, head_dim = self.num_heads, hidden.shape[-1] // self.num_heads
    split = lambda x: x.reshape(*x.shape[:-1], heads, head_dim)  # noqa: E731
    q, k, v = split(self.query(hidden)), split(self.key(self.latents)), split(self.value(self.latents))
    logits = torch.einsum("blnh,rnh->blnr", q.float(), k.float()) / math.sqrt(head_dim)
    attended = torch.einsum("blnr,rnh->blnh", logits.softmax(-1).to(v.dtype), v)
    x = hidden + self.out(attended.reshape(hidden.shape))
    return x + self.wo(torch.nn.functional.gelu(self.wi(x)))

  def forward(self, features: dict, **kwargs) -> dict:
    mask = _text_mask(features, self.include_prompt, self.prompt_offset)
    features["sentence_embedding"] = _masked_mean(self.block(features["token_embeddings"]), mask)
    return features

  def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
    self.save_config(output_path)
    self.save_torch_weights(output_path, safe_serialization=safe_serialization)

  @classmethod
  def load(cls, model_name_or_path: str, subfolder: str = "", token=None, cache_folder=None,
           revision=None, local_files_only: bool = False, **kwargs):
    hub = dict(subfolder=subfolder, token=token, cache_folder=cache_folder, revision=revision,
               local_files_only=local_files_only)
    model = cls(**cls.load_config(model_name_or_path=model_name_or_path, **hub))
    return cls.load_torch_weights(model_name_or_path=model_name_or_path, model=model, **hub)
