"""Tables and plots from result records -- numpy, csv and matplotlib only, never jax.

``jaxclip-fs report DIR`` reads the JSON records a sweep wrote
(``collect``), aggregates them over seeds (mean ± std), lays them out as the
papers do -- methods × datasets with an average column, one table per shot
count, and accuracy-vs-shots curves (``tables``, ``plots``) -- and puts the
published numbers (``jaxclip_fs.catalogue``) beside ours where backbone, dataset and
shots match. ``write`` ties these together. Records made with random weights
are labelled as such in every output.
"""

from jaxclip_fs.report.collect import Cell, Setting, load_records, summarize
from jaxclip_fs.report.write import ReportFiles, write_report

__all__ = ["Cell", "ReportFiles", "Setting", "load_records", "summarize", "write_report"]
