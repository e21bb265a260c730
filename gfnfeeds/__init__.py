"""gfnfeeds: a JAX short-video prefetch simulator and GFlowNet controllers.

Importing gfnfeeds enables JAX's float64 mode: the simulator integrates the
network trace and rounds download delays to whole milliseconds exactly as the
MMGC2022 reference does, and float32 flips some of those roundings (see
BUILD_NOTES.md). Neural-network code in gfnfeeds always passes explicit float32
dtypes, so it is unaffected.
"""

import jax

jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"
