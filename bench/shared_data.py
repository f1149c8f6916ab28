"""Where the benches find the shared imagery: `$ATLAS_SHARED_DATA` as the tests read it, else the `shared/data`
folder beside the repository (`../shared/data` from its root), whatever the working directory."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("ATLAS_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
