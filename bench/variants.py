"""`--variant NAME:KEY=VALUE[,KEY=VALUE...]`: a named set of config overrides measured beside the defaults."""

from __future__ import annotations

import argparse
import re

# a comma starts the next override only where a dotted key and `=` follow it, so list values keep theirs:
# `fastgan-cutout:train.diffaugment=[color,translation,cutout],train.lr_d=0.0004`
_NEXT_OVERRIDE = re.compile(r",(?=[A-Za-z_][\w.]*=)")


def parse_variant(text: str) -> tuple[str, list[str]]:
    """NAME:KEY=VALUE,KEY=VALUE -> (NAME, ["KEY=VALUE", ...])."""
    name, _, overrides = text.partition(":")
    pairs = [o for o in _NEXT_OVERRIDE.split(overrides) if o]
    if not name.replace("-", "_").isidentifier() or not pairs or not all("=" in o for o in pairs):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:KEY=VALUE[,KEY=VALUE...]")
    return name, pairs
