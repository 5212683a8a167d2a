"""The runtime: the SpMM operator and SparseLinear, running the best known kernel. May import: core, device, store, errors, resources."""
