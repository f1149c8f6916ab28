"""`torchrun ... -m atlas_gan.train --config configs/satellite.yaml --set train.steps=100`: one rank of training."""

from __future__ import annotations

import argparse
import logging
import sys

from atlas_gan.config import ConfigError, load_config, resolve_config
from atlas_gan.runtime import distributed
from atlas_gan.train.trainer import Trainer, TrainingDiverged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atlas_gan.train", description=__doc__)
    parser.add_argument("--config", help="YAML config (default: $ATLAS_CONFIG, else the packaged default)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.steps=100 (repeatable)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--resolved",
        action="store_true",
        help="the --config file is already resolved (the launcher wrote it): apply no environment overrides",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        resolve = load_config if args.resolved else resolve_config
        config = resolve(args.config, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    ctx = distributed.setup()
    hooks = []
    if config.train.evaluate_every:
        from atlas_gan.metrics.hook import EvaluationHook

        hooks.append(EvaluationHook())
    if ctx.is_main:
        from atlas_gan.train.figures_hook import FiguresHook

        hooks.append(FiguresHook())
    tracker = None
    if config.tracking.enabled and ctx.is_main:
        from atlas_gan.tracking.hook import MLflowHook

        tracker = MLflowHook()
        hooks.append(tracker)
    try:
        summary = Trainer(config, ctx, hooks=hooks, progress=not args.quiet).run()
    except (TrainingDiverged, ValueError, FileNotFoundError) as exc:
        print(f"rank {ctx.rank}: {exc}", file=sys.stderr)
        if tracker is not None:
            tracker.finish("FAILED")
        return leave(ctx, 1, together=False)
    except BaseException:
        if tracker is not None:
            tracker.finish("FAILED")
        distributed.teardown(ctx, together=False)
        raise
    if ctx.is_main:
        budget = config.train.max_minutes
        spent = f" (train.max_minutes {budget:g} spent)" if summary["stopped_by_time_budget"] else ""
        print(
            f"trained to step {summary['step']} of {config.train.steps}{spent} ({summary['images_seen']} images); "
            f"ranks in sync: {summary['ranks_in_sync']}; checkpoint: {summary['checkpoint']}"
        )
    return leave(ctx, 0, together=True)


def leave(ctx: distributed.DistributedContext, code: int, together: bool) -> int:
    """A torchrun worker ends here (see `distributed.exit_worker`); a single process returns its exit code."""
    if ctx.enabled:
        distributed.exit_worker(ctx, code, together=together)
    return code


if __name__ == "__main__":
    sys.exit(main())
