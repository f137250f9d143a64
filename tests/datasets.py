"""Where the tests find the shared data sets (the team's `shared/` folder beside the repo)."""

from __future__ import annotations

import os
from pathlib import Path

from river import stream

ROOT = Path(__file__).resolve().parent.parent
_CANDIDATES = [ROOT.parent / "shared" / "datasets" / "elec2.csv", Path("/work/shared/datasets/elec2.csv")]
ELEC2 = Path(os.environ.get("WORKER_ELEC2") or next((p for p in _CANDIDATES if p.exists()), _CANDIDATES[0]))
ELEC2_CONVERTERS = {
    "date": float, "day": int, "period": float, "nswprice": float, "nswdemand": float,
    "vicprice": float, "vicdemand": float, "transfer": float, "class": lambda v: v == "UP",
}


def elec2():
    """Elec2 as river's (x, y) stream; fails loudly (never skips) when the file is missing."""
    if not ELEC2.exists():
        raise FileNotFoundError(f"{ELEC2} not found: set WORKER_ELEC2 to the shared elec2.csv")
    return stream.iter_csv(ELEC2, target="class", converters=ELEC2_CONVERTERS)
