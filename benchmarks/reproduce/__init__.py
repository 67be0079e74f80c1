"""Paper reproductions: configs (``configs/*.json``), a runner (``python -m benchmarks.reproduce``)
and the comparison with the published numbers in tolerance bands (``compare``)."""
