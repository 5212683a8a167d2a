"""The GPU: presence and limits, compile, kernels and their launch, timing, verification, baselines, ceilings, the GPU turn. May import: core, errors, resources."""
