"""``idap import``: its flags and the command, over :mod:`idap.dense.importing` (the edge, ``pipelines.cli``, adds
``models:/`` and ``s3://`` sources before calling :func:`cmd_import`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from idap.dense.importing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelImportError,
    fine_tune_bundle,
    import_bundle,
    import_model,
    is_hf_directory,
)

__all__ = ["add_import_arguments", "cmd_import"]


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``idap import``; ``idap.cli.commands.build_parser`` calls this for the subcommand."""
    p.add_argument("--model", dest="source_model", required=True,
                   help="registered name, torchvision.models.NAME, package.module:factory, or a bundle directory "
                        "(the idap console script also takes models:/NAME@ALIAS, models:/NAME/VERSION, s3://)")
    p.add_argument("--weights", default=None, help="safetensors or torch.save(state_dict) file (not with a bundle)")
    p.add_argument("--num-classes", type=int, default=None, help="replace the classifier for this many classes")
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--image-size", type=int, default=224, help="side of the square input the model will get")
    p.add_argument("--max-length", type=int, default=128, help="text models: tokens per sample")
    p.add_argument("--option", dest="options", action="append", default=[], metavar="NAME=JSON",
                   help="a factory argument, e.g. --option dropout=0.1 (repeatable)")
    p.add_argument("--normalization", default="imagenet",
                   help="'imagenet' (default), 'none', or MEAN,MEAN,MEAN/STD,STD,STD of pixels in [0, 1]")
    p.add_argument("--seed", type=int, default=0, help="initialisation of a replaced head (and fine-tuning)")
    p.add_argument("--out", required=True, help="bundle directory to write")
    ft = p.add_argument_group("fine-tuning (optional): adapt the imported model to a dataset before writing it")
    ft.add_argument("--fine-tune", dest="fine_tune", default=None, metavar="DATASET",
                    help="a builtin dataset, ImageFolder directory, .npz or dataset spec (.yaml: streamed images at "
                         "a chosen resolution and normalisation); its image size must be --image-size")
    ft.add_argument("--data-root", default=None)
    ft.add_argument("--epochs", type=float, default=1.0)
    ft.add_argument("--lr", type=float, default=0.01, help="peak SGD learning rate (one-cycle)")
    ft.add_argument("--batch-size", type=int, default=64)
    ft.add_argument("--train-limit", type=int, default=None, help="subsample the training split (quick runs)")
    ft.add_argument("--test-limit", type=int, default=None)
    ft.add_argument("--validation-size", type=int, default=5000,
                    help="held out of the training data; use the compress recipe's calibration/validation sizes so the "
                         "fine-tune never trains on what compression validates on")
    ft.add_argument("--calibration-size", type=int, default=2048)
    ft.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ft.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    """``idap import``: print the ImportReport as JSON; the bundle is at ``--out``."""
    trust = list(getattr(args, "trust_modules", []) or [])
    source = args.source_model
    if is_hf_directory(source):
        if args.weights or args.fine_tune:
            raise ModelImportError(f"{source} is a Hugging Face model directory: its weights are model.safetensors "
                                   "(no --weights); fine-tune it with idap compress's recovery or idap text finetune")
        from idap.dense.text_models import import_hf_model

        report = import_hf_model(source, args.out, num_classes=args.num_classes, max_length=args.max_length,
                                 seed=args.seed)
    elif Path(source).is_dir():
        if args.weights or args.num_classes is not None:
            raise ModelImportError(f"{source} is a bundle: --weights and --num-classes apply to an architecture "
                                   "name; import the bundle as it is, or name its architecture")
        report = import_bundle(source, args.out, trust=trust, origin=getattr(args, "source_origin", None))
    else:
        if not args.weights:
            raise ModelImportError(f"--weights is required to import {source!r} (a safetensors file or a state dict)")
        mean, std = _normalization(args.normalization)
        report = import_model(source, args.weights, args.out, num_classes=args.num_classes,
                              in_channels=args.in_channels, image_size=args.image_size,
                              options=_options(args.options), mean=mean, std=std, trust=trust, seed=args.seed)
    print(f"imported {report.architecture} -> {report.path}: {report.params:,} params, {report.macs:,} MACs at "
          f"{report.input_shape}, parity max|diff| {report.parity_max_abs_diff:.3g} ({report.parity_compared})",
          file=sys.stderr, flush=True)
    result = report.to_json()
    if args.fine_tune:
        result["fine_tune"] = fine_tune_bundle(report.path, args.fine_tune, trust=[*trust, *_factory_module(source)],
                                               root=args.data_root, epochs=args.epochs, lr=args.lr,
                                               batch_size=args.batch_size, seed=args.seed, device=args.device,
                                               train_limit=args.train_limit, test_limit=args.test_limit,
                                               validation_size=args.validation_size,
                                               calibration_size=args.calibration_size, progress=not args.quiet)
        print(f"fine-tuned on {args.fine_tune}: val {result['fine_tune']['val_acc']:.2f}% "
              f"test {result['fine_tune']['test_acc']:.2f}% ({result['fine_tune']['train_seconds']:.0f} s)",
              file=sys.stderr, flush=True)
    print(json.dumps(result, indent=2))
    return 0


def _factory_module(architecture: str) -> list[str]:
    return [architecture.partition(":")[0]] if ":" in architecture and not Path(architecture).exists() else []


def _options(items: Sequence[str]) -> dict:
    options = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ModelImportError(f"--option {item!r} must look like name=value")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return options


def _normalization(text: str) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    if text == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if text == "none":
        return None, None
    try:
        mean_text, std_text = text.split("/")
        return tuple(float(v) for v in mean_text.split(",")), tuple(float(v) for v in std_text.split(","))
    except ValueError:
        raise ModelImportError(f"--normalization must be 'imagenet', 'none' or MEAN,.../STD,..., got {text!r}") from None
