"""Host-side (numpy) records produced by the loaders.

These are plain, validated, immutable records: a network trace, a video of the
catalog. `gfnfeeds.data.packing` turns lists of them into padded device arrays.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class NetworkTrace:
  """A throughput trace: the value bandwidth_mbps[k] holds on (times_s[k-1], times_s[k]].

  Row 0's bandwidth is never used by the simulator (SIMULATOR.md 3.1).

  Attributes:
    name: identifier, the file path relative to the directory it was loaded from.
    times_s: float64 [n], strictly increasing timestamps in seconds.
    bandwidth_mbps: float64 [n], throughput in Mbps (1e6 bit/s), all > 0.
    path: the file it came from ('' for generated traces).
  """

  name: str
  times_s: np.ndarray
  bandwidth_mbps: np.ndarray
  path: str = ""

  def __len__(self) -> int:
    return int(self.times_s.shape[0])

  @property
  def mean_mbps(self) -> float:
    """Time-weighted mean throughput over the rows the simulator uses (1..n-1)."""
    dt = np.diff(self.times_s)
    return float(np.sum(self.bandwidth_mbps[1:] * dt) / np.sum(dt))

  @property
  def duration_s(self) -> float:
    return float(self.times_s[-1] - self.times_s[0])


@dataclasses.dataclass(frozen=True, eq=False)
class Video:
  """One short video of the catalog (client-visible information only).

  Attributes:
    name: identifier (the MMGC directory name, e.g. '1_tj').
    chunk_sizes: int64 [num_chunks, num_levels], bytes of 1-s chunk j at level l.
    retention: float64 [num_chunks + 1], r(t) for t = 0..num_chunks seconds:
      the fraction of users still watching at t; r(0) = 1, non-increasing.
  """

  name: str
  chunk_sizes: np.ndarray
  retention: np.ndarray

  @property
  def num_chunks(self) -> int:
    return int(self.chunk_sizes.shape[0])

  @property
  def num_levels(self) -> int:
    return int(self.chunk_sizes.shape[1])


class DataError(ValueError):
  """A data file is malformed. The message names the file and, where known, the line."""

  def __init__(self, path, message: str, line: int | None = None):
    where = f"{path}" if line is None else f"{path}:{line}"
    super().__init__(f"{where}: {message}")
    self.path = str(path)
    self.line = line
