"""Workflows: ML/MM molecular dynamics and free-energy corrections, scaled out on Dask."""
