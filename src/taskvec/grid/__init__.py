"""Experiment grids: models x tasks x seeds x shots as submitit jobs, each a resumable ``taskvec run``."""

from taskvec.grid.config import GridJob, GridSpec, load_grid, parse_grid
from taskvec.grid.execute import GridOutcome, run_grid, run_job
from taskvec.grid.summary import write_summary

__all__ = ["GridJob", "GridOutcome", "GridSpec", "load_grid", "parse_grid", "run_grid", "run_job", "write_summary"]
