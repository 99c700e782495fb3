"""Subcommands of the `embed-jax` command line, one module each (see embed_jax/main.py)."""


def add_dtype_argument(parser) -> None:
  """`--dtype`: the compute dtype of a loaded model (`model_dir.load_model(compute_dtype=...)`)."""
  parser.add_argument(
      "--dtype", choices=("float32", "bfloat16", "float16"), default=None,
      help="compute dtype of the encoder (default: the model's, float32 after convert); "
           "bfloat16 keeps float32 accumulation, norms, softmax and embeddings, and on a CPU "
           "with AMX or a GPU runs its products several times faster")


def add_model_options(parser) -> None:
  """`--prompt` and `--layers`: how a loaded model embeds (`LoadedModel.with_options`)."""
  parser.add_argument(
      "--prompt", default=None,
      help="the instruction put before each query (embed: each text of --side); default the "
           "model's stored prompts; '' embeds without any prompt")
  parser.add_argument(
      "--layers", type=int, default=None, metavar="N",
      help="embed with the first N layers only (a 2D Matryoshka model); default all")


def apply_model_options(loaded, args, side: str = "x"):
  """`loaded` with --prompt and --layers applied; a bad value is a CommandLineError."""
  from embed_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  from embed_jax.main import CommandLineError  # pylint: disable=import-outside-toplevel
  try:
    return loaded.with_options(prompt=args.prompt, layers=args.layers, side=side)
  except UserError as e:
    raise CommandLineError(str(e)) from None
