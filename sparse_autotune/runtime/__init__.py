"""The runtime: the SpMM operator and SparseLinear, the SDDMM operator, running the best known kernel. May import: core, device, ops, store, errors, resources."""
