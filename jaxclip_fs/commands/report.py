"""``jaxclip-fs report``: tables (Markdown, CSV) and plots from result records (no jax)."""

from __future__ import annotations

import argparse

NAME = "report"
HELP = "tables (Markdown, CSV) and accuracy-vs-shots plots from result records"
DESCRIPTION = """\
Read the result records under DIR (a `jaxclip-fs run` directory, or any directory of
`evaluate` result.json files) and write to OUT (default DIR/report):

  report.md               per shot count a methods x datasets table of mean ± std over
                          seeds with an average column, then accuracy-vs-shots tables
  results.csv             one row per method, dataset, shots (and average)
  table_<K>shot.csv       the per-shot tables, wide
  accuracy_vs_shots_*.png one plot per dataset and one for the average

Published numbers (the LDC paper's 16-shot RN50 table) appear in [brackets] where backbone,
dataset and shots match and the weights are real. Results from random weights are labelled
in every output. Reads records only: no model, no jax. Records may come from others: a file
that cannot be read, or a record whose accuracy is not a finite percentage (or whose names
are not strings), is named on stderr and left out; every file is written inside OUT,
whatever names the records hold (they become safe file names, one per name).

example:
  jaxclip-fs report runs/sweep1"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="directory (searched recursively) or file of records")
    p.add_argument("--out", metavar="OUT", help="report directory (default DIR/report)")
    p.add_argument("--no-plots", action="store_true", help="tables only")


def run(args: argparse.Namespace) -> int:
    import os

    from jaxclip_fs.io.outputs import check_output_dir
    from jaxclip_fs.report.write import default_out_dir, write_report

    if os.path.exists(args.dir):  # (else the one-line error says DIR does not exist)
        check_output_dir(args.out or default_out_dir(args.dir), "--out")
    files = write_report(args.dir, args.out, plots=not args.no_plots)
    print(files.summary)
    print(f"wrote {files.markdown}, {files.results_csv}, "
          f"{len(files.shot_csvs)} per-shot CSV tables and {len(files.plots)} plots in "
          f"{files.out_dir}")
    return 0
