"""`worker report`: one self-contained HTML page (and a PNG) of what the engine did.

This module only gathers the four names the command line uses; each job has its own
module:

- :mod:`worker.obs.report_data` — :class:`ReportData`, what the page shows, whatever
  the source, and the steps both sources share;
- :mod:`worker.obs.report_replay` — a ``worker replay --out DIR`` folder → ReportData;
- :mod:`worker.obs.report_control` — decoded ``control`` messages → ReportData;
- :mod:`worker.obs.report_kafka` — reading the control topic (the only Kafka I/O);
- :mod:`worker.obs.report_lifecycle` — lifecycle events → markers, tables, lineage;
- :mod:`worker.obs.charts` — the charts' series, ranges, ticks and layout;
  :mod:`worker.obs.chart_svg` and :mod:`worker.obs.chart_png` draw them;
- :mod:`worker.obs.report_html` — the page, and the files written.
"""

from __future__ import annotations

from worker.obs.report_control import load_control
from worker.obs.report_html import write_report
from worker.obs.report_kafka import read_control
from worker.obs.report_replay import load_replay

__all__ = ["load_control", "load_replay", "read_control", "write_report"]
