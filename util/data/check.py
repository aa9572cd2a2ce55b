"""Check a dataset copy: ``python -m util.data.check NAME ROOT [--split S | --index F]`` builds it,
reads every sample once and lists the files that cannot be read (a pre-scan alternative to
``--skip_bad_samples``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from util.data.base import SampleError, SentinelDataset
from util.data.registry import DATASETS, build_dataset, resolve_name
from util.data.sentinel2 import MODEL_BANDS

__all__ = ["dataset_summary", "main", "scan"]


def dataset_summary(ds: SentinelDataset) -> str:
    """One line describing a dataset (for CLIs)."""
    return (
        f"{ds.name}: {len(ds)} samples from {getattr(ds, 'index_path', '?')}, "
        f"{ds.num_classes} classes{' (multi-label)' if ds.multilabel else ''}, "
        f"bands {','.join(MODEL_BANDS)}"
    )


def scan(ds: SentinelDataset, progress: bool = True) -> list[tuple[int, SampleError]]:
    """Read every sample once (no transforms) and return ``(index, error)`` for the bad ones.

    A pre-scan alternative to ``skip_bad_samples``: run it once, fix or drop the listed files.
    """
    from tqdm.auto import tqdm

    bad = []
    for i in tqdm(range(len(ds)), desc=f"scanning {ds.name}", disable=not progress, unit="sample"):
        try:
            ds._load(i)
        except SampleError as err:
            bad.append((i, err))
    return bad


def get_args_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m util.data.check``."""
    from util.training.cli import add_debug_arg

    parser = argparse.ArgumentParser(
        prog="python -m util.data.check",
        description="Check a dataset: build it, read every sample, list unreadable files.",
    )
    parser.add_argument("name", help=f"one of {', '.join(DATASETS)} (or a paper alias)")
    parser.add_argument("root", help="dataset root")
    parser.add_argument("--split", default=None)
    parser.add_argument("--index", default=None, help="an index file (the paper's formats)")
    parser.add_argument(
        "--native_size",
        type=int,
        default=None,
        help="image side of this copy for datasets with a published size (EuroSAT 64); 0: any",
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        help="accept only these pixel types (default: any the input contract accepts: 8-bit "
        "refused, float reflectance copies converted)",
    )
    add_debug_arg(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m util.data.check NAME ROOT [--split S | --index F]``: summarise and scan a dataset.

    Returns 0 when every sample reads, 1 when some do not; a user error (unknown name, missing
    index) prints one ``error:`` line and exits 2.
    """
    from util.training.cli import run

    args = get_args_parser().parse_args(argv)
    return run(_scan_cli, args)


def _scan_cli(args: Any) -> int:
    try:
        name = resolve_name(args.name)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    options = {k: getattr(args, k) for k in ("native_size", "dtypes") if getattr(args, k)}
    if args.native_size == 0:
        options["native_size"] = 0
    ds = build_dataset(name, args.root, split=args.split, index=args.index, **options)
    print(dataset_summary(ds))
    bad = scan(ds)
    for i, err in bad:
        print(f"bad sample {i}: {err}")
    print(f"{len(ds) - len(bad)} good, {len(bad)} bad")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
