"""How the report writes a value in text: a dash for what is not known.

Shared by the lifecycle texts (:mod:`worker.obs.report_lifecycle`) and the page
(:mod:`worker.obs.report_html`), so a missing value reads the same everywhere.
"""

from __future__ import annotations

from typing import Any

MISSING = "–"


def version_text(version: Any) -> str:
    """``v3``, or a dash."""
    return MISSING if version is None else f"v{version}"


def number_text(value: Any) -> str:
    """A metric with four decimals, or a dash."""
    return MISSING if value is None else f"{value:.4f}"


def value_text(value: Any) -> str:
    """Any value as ``str`` gives it, or a dash."""
    return MISSING if value is None else str(value)
