"""Encoders (decoder-only Transformer, BERT), pooling and the dual encoder.

Every encoder maps tokens [B, L] and mask [B, L] to last hidden states
[B, L, D]; `DualEncoder` pools, projects and normalises them to [B, d].
"""

from embed_jax.models.bert import BertConfig, BertEncoder
from embed_jax.models.dual_encoder import (
    DualEncoder, DualEncoderConfig, build_dual_encoder, build_encoder)
from embed_jax.models.pooling import POOLINGS, pool
from embed_jax.models.sharded_init import init_dual_encoder, init_params, param_shardings
from embed_jax.models.stack import stack_layer_params, unstack_layer_params
from embed_jax.models.transformer import Decoder, DecoderConfig

__all__ = [
    "BertConfig", "BertEncoder", "Decoder", "DecoderConfig", "DualEncoder", "DualEncoderConfig",
    "POOLINGS", "build_dual_encoder", "build_encoder", "init_dual_encoder", "init_params",
    "param_shardings", "pool", "stack_layer_params", "unstack_layer_params",
]
