"""Shared fixtures: the real data in ../shared (read by path, never copied), JAX cache."""

import os
from pathlib import Path

# Must precede the jax import. Several host CPU devices, so the sharded path is exercised.
# LLVM optimisation level 0: the suite is dominated by compiling many small programs, and
# level 0 compiles them faster (cold suite 11 min 40 s -> 8 min 49 s on the 2-core container)
# at no change in results (IEEE arithmetic either way: the suite, bit-exact parity with the
# reference step logs included, passes at both levels; BUILD_NOTES "Test-suite time, session 9").
# Benchmarks and experiments compile at XLA's default level. A user's own XLA_FLAGS win.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2 "
                      "--xla_backend_optimization_level=0")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import gfnfeeds  # noqa: E402,F401  (enables float64)

_CACHE = Path(__file__).resolve().parents[1] / ".jax_cache"
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

SHARED = Path(__file__).resolve().parents[2] / "shared"
MMGC = SHARED / "traces" / "mmgc2022"
FIXTURES = SHARED / "reference_fixtures"
MMGC_DEFAULT_WATCH_MS = (12421, 13323, 2905, 3791, 1859, 6000, 1956)


def require_shared():
  if not MMGC.is_dir():
    pytest.skip(f"real data not found at {MMGC}")


@pytest.fixture(scope="session")
def mmgc_videos():
  require_shared()
  from gfnfeeds.data.videos import load_mmgc_videos
  return load_mmgc_videos(MMGC)


@pytest.fixture(scope="session")
def mmgc_catalog(mmgc_videos):
  from gfnfeeds.data.packing import pack_catalog
  return pack_catalog(mmgc_videos)


def mmgc_trace(name: str):
  """A real MMGC trace by 'set/index', e.g. 'high/0'."""
  require_shared()
  from gfnfeeds.data.traces import load_network_trace
  return load_network_trace(MMGC / "network" / name, name=name)


@pytest.fixture(scope="session")
def rng():
  return np.random.default_rng(0)
