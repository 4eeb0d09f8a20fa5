"""Reference QM/MM data generation: system preparation, MD sampling, PySCF QM/MM single points,
an append-only HDF5 store and a Dask driver. See docs/data.md."""
