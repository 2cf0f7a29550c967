"""Optional fast paths behind the layer functions: persistent Pallas kernels for the GPU."""
