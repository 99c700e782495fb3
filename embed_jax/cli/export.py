"""`embed-jax export`: a model directory -> sentence-transformers folder(s).

    embed-jax export --model DIR --out OUT [--side x|y|both] [--max_length N] [--peft]

With `--side both` (the default) and sides whose delimiters differ, writes
OUT/x and OUT/y (load the one for the side you embed: e.g. queries with x,
documents with y); otherwise one folder OUT. See
`embed_jax.checkpoints.export_st`. With `--peft` (a model trained with
`train.lora_rank`), also OUT/peft/base and OUT/peft/adapter: the base as a
transformers model and the adapters as a PEFT LoRA folder
(`embed_jax.checkpoints.export_peft`).
"""

from __future__ import annotations

import argparse

from embed_jax.main import CommandLineError


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--model", required=True, help="a model directory")
  parser.add_argument("--out", required=True, help="the folder to write")
  parser.add_argument("--side", choices=("x", "y", "both"), default="both")
  parser.add_argument("--max_length", type=int, help="max_seq_length of the export")
  parser.add_argument("--peft", action="store_true",
                      help="also write OUT/peft: the base model and the LoRA adapters for peft")


def run(args: argparse.Namespace) -> int:
  from embed_jax.checkpoints import export_st, model_dir  # pylint: disable=import-outside-toplevel
  from embed_jax.checkpoints.hf_config import HFConversionError  # pylint: disable=import-outside-toplevel
  try:
    if args.peft:
      from embed_jax.checkpoints import export_peft  # pylint: disable=import-outside-toplevel
      export_peft.check_exportable(args.model)
    folders = export_st.export(args.model, args.out, side=args.side, max_length=args.max_length)
    for folder in folders:
      print(f"wrote {folder}: load with sentence_transformers.SentenceTransformer({str(folder)!r})")
    if args.peft:
      peft = export_peft.export_peft(args.model, f"{args.out}/{export_peft.PEFT_DIR}")
      print(f"wrote {peft}: load with peft.PeftModel.from_pretrained("
            f"transformers.AutoModel.from_pretrained({str(peft / 'base')!r}), "
            f"{str(peft / 'adapter')!r})")
  except (HFConversionError, model_dir.ModelDirError, export_st.ExportError) as e:
    raise CommandLineError(str(e)) from None
  return 0
