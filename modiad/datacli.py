"""`modiad data`: generate, convert, preprocess and check datasets in the MVTec 3D-AD layout.

Subcommands:

- `generate [ROOT]`: write the synthetic dataset (`sensors_sim.synthetic`).
- `convert-eyecandies SRC DST`: convert the raw Eyecandies release.
- `preprocess-mvtec SRC DST`: remove the background plane of MVTec 3D-AD into a cache.
- `check ROOT`: print counts per class and split and list every problem with its path.

`sensors_sim` is imported inside the handlers, so `modiad` starts without it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from modiad.errors import ConfigError

__all__ = ["DEFAULT_SYNTHETIC_ROOT", "add_data_parser", "run_data"]

logger = logging.getLogger(__name__)

DEFAULT_SYNTHETIC_ROOT = Path("./modiad-data/synthetic")


def add_data_parser(commands: argparse._SubParsersAction) -> None:
    """Add the `data` command and its subcommands to the `modiad` parser."""
    data = commands.add_parser("data", help="generate, convert, preprocess and check datasets")
    actions = data.add_subparsers(dest="data_command", required=True)

    generate = actions.add_parser("generate", help="write the synthetic dataset in the MVTec 3D-AD layout")
    generate.add_argument("root", nargs="?", type=Path, default=DEFAULT_SYNTHETIC_ROOT,
                          help=f"output folder (default {DEFAULT_SYNTHETIC_ROOT})")
    generate.add_argument("--profile", default="demo", help="sample counts and image size: small, tiny, demo or full (default demo)")
    generate.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    generate.add_argument("--classes", help="comma-separated class names (default: all ten)")

    convert = actions.add_parser("convert-eyecandies", help="convert raw Eyecandies to the MVTec 3D-AD layout")
    convert.add_argument("source", type=Path, help="raw Eyecandies folder that contains CandyCane/, ...")
    convert.add_argument("destination", type=Path, help="output folder, outside the raw folder")
    convert.add_argument("--image", default="image_4", help="lighting image used as RGB, image_0 to image_5 (default image_4)")
    convert.add_argument("--frame", default="camera", choices=["camera", "world"],
                         help="coordinate frame of the points: camera (default) or world through pose.txt")
    convert.add_argument("--classes", help="comma-separated raw class folders (default: all found)")

    _add_preprocess_parser(actions)

    check = actions.add_parser("check", help="validate a dataset tree and print counts per class and split")
    check.add_argument("root", type=Path, help="dataset folder that contains the class folders")
    check.add_argument("--read-files", action="store_true",
                       help="decode every file instead of reading headers only (slower, finds truncated files)")


def run_data(arguments: argparse.Namespace) -> int:
    """Run one `modiad data` subcommand and return its exit code.

    `check` returns 1 when it finds a problem, so scripts can stop on a damaged tree.
    """
    if arguments.data_command == "generate":
        return _generate(arguments)
    if arguments.data_command == "convert-eyecandies":
        return _convert_eyecandies(arguments)
    if arguments.data_command == "preprocess-mvtec":
        return _preprocess_mvtec(arguments)
    return _check(arguments)


def _add_preprocess_parser(actions: argparse._SubParsersAction) -> None:
    # Options default to None, so PreprocessSettings keeps the one copy of the defaults
    # and `sensors_sim` is not imported to build the parser.
    preprocess = actions.add_parser(
        "preprocess-mvtec", help="remove the background plane of an MVTec 3D-AD tree into a cache folder"
    )
    preprocess.add_argument("source", type=Path, help="MVTec 3D-AD folder that contains bagel/, cable_gland/, ...")
    preprocess.add_argument("destination", type=Path, help="cache folder, outside the source folder")
    preprocess.add_argument("--border-px", type=int,
                            help="width in pixels of the image border whose points fit the plane (default 10)")
    preprocess.add_argument("--plane-inlier-m", type=float, help="RANSAC inlier distance in metres (default 0.005)")
    preprocess.add_argument("--plane-distance-m", type=float,
                            help="remove points closer to the plane than this, in metres (default 0.005)")
    preprocess.add_argument("--ransac-iterations", type=int, help="RANSAC plane hypotheses (default 200)")
    preprocess.add_argument("--min-border-points", type=int,
                            help="skip plane removal below this many valid border points (default 100)")
    preprocess.add_argument("--keep-largest-cluster", action="store_true", default=None,
                            help="keep only the largest 3D cluster of points")
    preprocess.add_argument("--cluster-distance-m", type=float,
                            help="points closer than this, in metres, share a cluster (default 0.006)")
    preprocess.add_argument("--image-size", type=int,
                            help="resize the longer side to this many pixels and pad to a square (default: keep the size)")
    preprocess.add_argument("--classes", help="comma-separated class names (default: all found)")
    preprocess.add_argument("--overwrite", action="store_true",
                            help="delete a cache written with other settings and preprocess again")


def _preprocess_mvtec(arguments: argparse.Namespace) -> int:
    from sensors_sim.mvtec import PreprocessSettings, preprocess_mvtec

    options = ("border_px", "plane_inlier_m", "plane_distance_m", "ransac_iterations", "min_border_points",
               "keep_largest_cluster", "cluster_distance_m", "image_size")
    overrides = {name: getattr(arguments, name) for name in options if getattr(arguments, name) is not None}
    settings = PreprocessSettings(**overrides)
    summary = preprocess_mvtec(arguments.source, arguments.destination, settings,
                               classes=_split_list(arguments.classes), overwrite=arguments.overwrite)
    print(f"preprocessed into {summary.destination}: {summary.written} samples written, "
          f"{summary.skipped_existing} already in the cache")
    if summary.plane_skipped:
        print(f"background plane not removed from {len(summary.plane_skipped)} files "
              "(too few valid border points, perhaps preprocessed already):")
        for path in summary.plane_skipped:
            print(f"  {path}")
    return 0


def _generate(arguments: argparse.Namespace) -> int:
    from sensors_sim.synthetic import generate_dataset

    root = generate_dataset(arguments.root, profile=arguments.profile, seed=arguments.seed,
                            classes=_split_list(arguments.classes))
    print(f"synthetic dataset ready at {root}")
    return 0


def _convert_eyecandies(arguments: argparse.Namespace) -> int:
    from sensors_sim.eyecandies import convert_eyecandies

    summary = convert_eyecandies(arguments.source, arguments.destination, image=arguments.image,
                                 frame=arguments.frame, classes=_split_list(arguments.classes))
    state = "already up to date" if summary.up_to_date else "written"
    print(f"converted Eyecandies at {summary.destination} ({state})")
    for class_name, counts in summary.counts.items():
        print(f"  {class_name}: " + ", ".join(f"{split} {count}" for split, count in counts.items()))
    if summary.skipped_private:
        print(f"  skipped {summary.skipped_private} test_private samples: they have no masks")
    return 0


def _check(arguments: argparse.Namespace) -> int:
    from modiad.dataset import check_dataset, format_check

    check = check_dataset(arguments.root, read_files=arguments.read_files)
    print(f"dataset {check.root}")
    print(format_check(check))
    return 1 if check.problems else 0


def _split_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError(f"--classes {text!r} names no class; pass names separated by commas")
    return names
