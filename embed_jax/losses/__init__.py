"""Contrastive losses: symmetric in-batch InfoNCE, on one device or sharded over the mesh.

`contrastive_loss` is the one entry point; `impl` picks the computation
("gather", the default; "ring", memory-lean; "reference", the dense oracle).
"""

from embed_jax.losses.contrastive import IMPLS, check_options, contrastive_loss

__all__ = ["IMPLS", "check_options", "contrastive_loss"]
