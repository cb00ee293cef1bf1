"""Build the Cython kernels in ``pyx/`` as extension modules of the ``cyrnn`` package.

Set ``CYRNN_CYTHON_DEBUG=1`` to compile with bounds, wraparound and initialisation checks
switched back on (slow; for hunting memory errors), ``CYRNN_SANITIZE=1`` to compile and link with
AddressSanitizer and UndefinedBehaviorSanitizer (see ``.ci/sanitize``, which also says how to run
Python on such a build), and ``CYRNN_SIMD=avx2`` (or ``baseline``) to cap the SIMD builds chosen
at run time.
"""
import os
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("CYRNN_CYTHON_DEBUG", "") not in ("", "0")
SANITIZE = os.environ.get("CYRNN_SANITIZE", "") not in ("", "0")
if SANITIZE and sys.platform == "win32":
    sys.exit("CYRNN_SANITIZE: needs gcc or clang")

# The widest SIMD build of the C helpers chosen at run time (pyx/cyrnn/_cpu.h): all of them by
# default; CYRNN_SIMD=avx2 or =baseline caps it, to measure what other CPUs would run.
SIMD_BUILDS = {"": 2, "avx512": 2, "avx2": 1, "baseline": 0}
SIMD = os.environ.get("CYRNN_SIMD", "").strip().lower()
if SIMD not in SIMD_BUILDS:
    sys.exit(f"CYRNN_SIMD: expected one of avx512, avx2, baseline, got {SIMD!r}")

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
}

# -fno-trapping-math: we never read floating-point exception flags, and without it gcc refuses
# to if-convert (and so to vectorize) the clamps of the float32 tanh. Results are unchanged.
extra_compile_args = [] if sys.platform == "win32" else ["-O3", "-fno-trapping-math"]
if DEBUG and sys.platform != "win32":
    extra_compile_args = ["-O0", "-g"]
# AddressSanitizer and UndefinedBehaviorSanitizer, stopping at the first undefined behaviour
# (float-cast-overflow, a float to integer conversion out of range or of NaN, is not part of
# gcc's "undefined" group); -O1 keeps the reports readable and the tests fast enough
extra_link_args = []
if SANITIZE:
    sanitizers = ["-fsanitize=address,undefined,float-cast-overflow", "-fno-omit-frame-pointer",
                  "-fno-sanitize-recover=undefined,float-cast-overflow"]
    optimization = ["-O0", "-g"] if DEBUG else ["-O1", "-g", "-fno-trapping-math"]
    extra_compile_args = optimization + sanitizers
    extra_link_args = sanitizers

# one extension per module, all built with the same options: cyrnn._x from pyx/cyrnn/_x.pyx
MODULES = ("cyrnn._rnn", "cyrnn._sample", "cyrnn._gated", "cyrnn._recurrence")

extensions = [
    Extension(
        name,
        ["pyx/" + name.replace(".", "/") + ".pyx"],
        depends=["pyx/cyrnn/_cpu.h", "pyx/cyrnn/_smallgemm.h", "pyx/cyrnn/_elementwise.h",
                 "pyx/cyrnn/_gated.h", "pyx/cyrnn/_gated_window.pxi", "pyx/cyrnn/_stack.pxi",
                 "pyx/cyrnn/_hooks.pxi", "pyx/cyrnn/_cells.pxi", "pyx/cyrnn/_norms.pxi",
                 "pyx/cyrnn/_recurrence.h"],
        include_dirs=[np.get_include(), "pyx/cyrnn"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_22_API_VERSION"),
                       ("CYRNN_MAX_BUILD", str(SIMD_BUILDS[SIMD]))],
        extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
    )
    for name in MODULES
]

setup(
    ext_modules=cythonize(extensions, include_path=["pyx"], compiler_directives=directives),
)
