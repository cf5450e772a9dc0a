"""Input/output at the edges: frame dumps (DM/TIFF/NPY readers), the Zarr movie store, Parquet
conventions, and atomic output with the output-path policy. Imports only :mod:`etemseg.errors`
and :mod:`etemseg.config` from the package; every layer above uses it."""
