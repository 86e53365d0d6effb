"""Reports people look at: one self-contained HTML page per run, or per comparison of runs.

The page holds the metrics and their definitions, the configuration, figures and a conversation browser, all
derived from the results folders.

``write_report(folders, out)`` writes ``report.html`` and ``figures/*.png``; ``coral-report <dir> [<dir> ...]``
(or ``python -m coral.report``) is the command line. ``load_runs`` is the report model the page is built from, and
``coral.report.plots`` the plotting code every figure of the project shares.
"""

from coral.report.build import REPORT_FILE, Report, write_report
from coral.report.model import Run, load_run, load_runs

__all__ = ["REPORT_FILE", "Report", "Run", "load_run", "load_runs", "write_report"]
