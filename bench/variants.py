"""`--variant NAME:KEY=VALUE[,KEY=VALUE...]`: a named set of config overrides measured beside the defaults."""

from __future__ import annotations

import argparse


def parse_variant(text: str) -> tuple[str, list[str]]:
    """NAME:KEY=VALUE,KEY=VALUE -> (NAME, ["KEY=VALUE", ...]). Values cannot hold commas."""
    name, _, overrides = text.partition(":")
    pairs = [o for o in overrides.split(",") if o]
    if not name.replace("-", "_").isidentifier() or not pairs or not all("=" in o for o in pairs):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:KEY=VALUE[,KEY=VALUE...]")
    return name, pairs
