"""The one report writer: result files, plots, console tables, Markdown and HTML reports."""

from nora.report.console import print_table, table_console
from nora.report.reports import write_report

__all__ = ["print_table", "table_console", "write_report"]
