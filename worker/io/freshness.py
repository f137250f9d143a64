"""Refuse a signed command that is written to ``control`` again long after it was signed.

A signature says who made a command, not when it was sent: anyone who can write to
``control`` could copy an old signed ``pause_learning`` and write it again. Commands are
idempotent by ``command_id``, which stops such a replay only while the worker remembers
the id — not after ``--fresh``, nor once 100,000 other commands came after it. So when
signed commands are required, a command the worker has not applied yet must have been
logged by the broker within ``max_age_s`` of the time it was signed (its signed ``ts``):
a copy written later is refused as stale.

Both times come from the log itself — the signed ``ts`` in the message, the broker's
timestamp on it — so a worker that replays its input after a crash takes exactly the
same decision as the first time. The broker's timestamp is only the broker's own when
the topic logs append times (``message.timestamp.type=LogAppendTime``, which
``worker topics create`` sets on ``control``); with producers' create times, a replay
that also forges its timestamp is not caught.

>>> stale_command({"ts": 1000.0}, logged_at_s=1012.5, max_age_s=300)
>>> stale_command({"ts": 1000.0}, logged_at_s=4600.0, max_age_s=300)
'stale: signed 3600 s before the broker logged it (at most 300 s): a copy written again, or clocks apart'
>>> stale_command({"type": "promote"}, logged_at_s=4600.0, max_age_s=300)
'stale: a signed command needs a "ts" (its signing time, epoch seconds) to tell it from a copy written again'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: Default of ``command_max_age_s``: five minutes, the clock skew Kerberos tolerates.
DEFAULT_MAX_AGE_S = 300.0


def stale_command(raw: Mapping[str, Any], logged_at_s: float | None, max_age_s: float) -> str | None:
    """Why the signed command ``raw`` is refused as a possible replay, or None.

    ``logged_at_s`` is the broker's timestamp on the message, in seconds (None when the
    message has none: nothing to compare, nothing refused). Its signed ``ts`` may also be
    ahead of the broker's clock by at most ``max_age_s`` (an operator's clock running
    fast); 0 turns the check off.
    """
    if not max_age_s or logged_at_s is None:
        return None
    signed = raw.get("ts")
    if type(signed) not in (int, float) or not math.isfinite(signed):
        return ('stale: a signed command needs a "ts" (its signing time, epoch seconds) '
                "to tell it from a copy written again")
    age = logged_at_s - signed
    if age > max_age_s:
        return (f"stale: signed {age:.0f} s before the broker logged it (at most {max_age_s:g} s): "
                "a copy written again, or clocks apart")
    if -age > max_age_s:
        unit = " (ts must be in seconds, not milliseconds)" if signed > 100 * logged_at_s > 0 else ""
        return (f"stale: signed {-age:.0f} s after the broker logged it (at most {max_age_s:g} s "
                f"ahead): the signer's clock is wrong{unit}")
    return None
