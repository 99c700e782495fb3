"""Subcommands of the `embed-jax` command line, one module each (see embed_jax/main.py)."""


def add_dtype_argument(parser) -> None:
  """`--dtype`: the compute dtype of a loaded model (`model_dir.load_model(compute_dtype=...)`)."""
  parser.add_argument(
      "--dtype", choices=("float32", "bfloat16", "float16"), default=None,
      help="compute dtype of the encoder (default: the model's, float32 after convert); "
           "bfloat16 keeps float32 accumulation, norms, softmax and embeddings, and on a CPU "
           "with AMX or a GPU runs its products several times faster")
