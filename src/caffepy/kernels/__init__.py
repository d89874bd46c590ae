"""Hot loops (im2col/col2im, pooling, …): NumPy implementations, CuPy-compatible array code."""
