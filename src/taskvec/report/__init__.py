"""Reports of `taskvec run` results (report.md / report.html) and the cross-model comparison."""

from taskvec.report.compare import compare_table, load_results, write_comparison
from taskvec.report.render import html_report, markdown_report, write_report

__all__ = ["compare_table", "html_report", "load_results", "markdown_report", "write_comparison", "write_report"]
