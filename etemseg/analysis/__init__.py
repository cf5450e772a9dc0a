"""Analysis over tables and arrays: measurement, sintering kinetics and scoring against truth.
Functions take arrays or DataFrames and return arrays or DataFrames; no stage imports."""
