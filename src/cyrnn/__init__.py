"""cyrnn: Elman recurrent networks trained by backpropagation through time, with Cython kernels."""
__version__ = "0.1.0"
