"""Padded device arrays: the client-visible Catalog and the hidden World.

The split is the anti-cheating line of the project: policies, planners and
selectors may read the Catalog (chunk sizes, retention curves, the bitrate
ladder) but never the World (bandwidth traces, users' watch durations).
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np
from flax import struct

from gfnfeeds.data.types import NetworkTrace, Video

MMGC_LADDER_KBPS = (750.0, 1200.0, 1850.0)
NO_USERS = -1  # watch_bank marker of a world without fixed users


@struct.dataclass
class Catalog:
  """What a client may know about the videos.

  Attributes:
    chunk_sizes: float64 [num_videos, max_chunks, num_levels], bytes (0 = padding).
    num_chunks: int32 [num_videos].
    retention: float64 [num_videos, max_chunks + 1], r(0..N), 0 past N.
    watch_cdf: float64 [num_videos, max_chunks + 1], P(watch chunk index <= k)
      for the retention watch model (p_k = r(k) - r(k+1)); 1 past N.
    alias_prob, alias_index: [num_videos, max_chunks + 1] Walker alias tables
      of the same distribution over k = 0..N, so a draw costs two gathers.
    bitrates_kbps: float64 [num_levels], the nominal ladder used for QoE.
  """

  chunk_sizes: jnp.ndarray
  num_chunks: jnp.ndarray
  retention: jnp.ndarray
  watch_cdf: jnp.ndarray
  alias_prob: jnp.ndarray
  alias_index: jnp.ndarray
  bitrates_kbps: jnp.ndarray

  @property
  def num_videos(self) -> int:
    return self.chunk_sizes.shape[-3]

  @property
  def max_chunks(self) -> int:
    return self.chunk_sizes.shape[-2]

  @property
  def num_levels(self) -> int:
    return self.chunk_sizes.shape[-1]


@struct.dataclass
class World:
  """What only the simulator knows.

  Attributes:
    trace_times: float64 [num_traces, max_len] seconds (padding repeats the last row).
    trace_mbps: float64 [num_traces, max_len].
    trace_len: int32 [num_traces], rows in use; the cursor wraps at this length.
    watch_bank: int32 [num_users, videos_per_session], watch durations (ms) of
      fixed users (e.g. the MMGC default user and its samples). At least one
      row; a single row of NO_USERS (-1) means the world has no fixed users.
  """

  trace_times: jnp.ndarray
  trace_mbps: jnp.ndarray
  trace_len: jnp.ndarray
  watch_bank: jnp.ndarray

  @property
  def num_traces(self) -> int:
    return self.trace_times.shape[-2]

  @property
  def num_users(self) -> int:
    return self.watch_bank.shape[-2]


def pack_catalog(videos: Sequence[Video],
                 bitrates_kbps: Sequence[float] = MMGC_LADDER_KBPS,
                 max_chunks: int | None = None) -> Catalog:
  """Pads a list of videos into a Catalog.

  Args:
    videos: the catalog, in the order that defines catalog indices.
    bitrates_kbps: the nominal ladder; its length must equal every video's levels.
    max_chunks: pad to this many chunks (default: the longest video). Fixing it
      lets catalogs of different videos share one compiled program.

  Raises:
    ValueError: empty catalog, mismatched levels, or a video longer than max_chunks.
  """
  if not videos:
    raise ValueError("pack_catalog: the catalog has no videos")
  num_levels = len(bitrates_kbps)
  longest = max(v.num_chunks for v in videos)
  max_chunks = longest if max_chunks is None else int(max_chunks)
  if longest > max_chunks:
    raise ValueError(f"pack_catalog: a video has {longest} chunks > max_chunks={max_chunks}")
  n = len(videos)
  sizes = np.zeros((n, max_chunks, num_levels), np.float64)
  num_chunks = np.zeros((n,), np.int32)
  retention = np.zeros((n, max_chunks + 1), np.float64)
  cdf = np.ones((n, max_chunks + 1), np.float64)
  alias_prob = np.ones((n, max_chunks + 1), np.float64)
  alias_index = np.zeros((n, max_chunks + 1), np.int32)
  for i, v in enumerate(videos):
    if v.num_levels != num_levels:
      raise ValueError(f"pack_catalog: video {v.name!r} has {v.num_levels} levels, "
                       f"the ladder has {num_levels}")
    c = v.num_chunks
    sizes[i, :c] = v.chunk_sizes
    num_chunks[i] = c
    retention[i, :c + 1] = v.retention
    probs = v.retention - np.append(v.retention[1:], 0.0)  # p_k, k = 0..N
    cdf[i, :c + 1] = np.cumsum(probs) / probs.sum()
    cdf[i, c] = 1.0
    alias_prob[i, :c + 1], alias_index[i, :c + 1] = alias_table(probs)
  return Catalog(chunk_sizes=jnp.asarray(sizes), num_chunks=jnp.asarray(num_chunks),
                 retention=jnp.asarray(retention), watch_cdf=jnp.asarray(cdf),
                 alias_prob=jnp.asarray(alias_prob), alias_index=jnp.asarray(alias_index),
                 bitrates_kbps=jnp.asarray(np.asarray(bitrates_kbps, np.float64)))


def alias_table(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Walker/Vose alias table: draw j ~ U{0..n-1}, keep j if u < prob[j] else alias[j]."""
  p = np.asarray(probs, np.float64)
  n = p.shape[0]
  scaled = p * n / p.sum()
  prob = np.ones(n, np.float64)
  alias = np.arange(n, dtype=np.int32)
  small = [i for i in range(n) if scaled[i] < 1.0]
  large = [i for i in range(n) if scaled[i] >= 1.0]
  while small and large:
    s, l = small.pop(), large.pop()
    prob[s], alias[s] = scaled[s], l
    scaled[l] = scaled[l] + scaled[s] - 1.0
    (small if scaled[l] < 1.0 else large).append(l)
  return prob, alias  # leftovers keep prob 1 (numerical slack)


def pack_world(traces: Sequence[NetworkTrace],
               watch_bank: np.ndarray | Sequence[Sequence[int]] | None = None,
               videos_per_session: int = 7,
               max_trace_len: int | None = None) -> World:
  """Pads traces and fixed users into a World.

  Args:
    traces: network traces (at least one).
    watch_bank: [num_users, videos_per_session] watch durations in ms; None
      gives one placeholder user (watch = 1 ms each) for worlds whose users are
      sampled from retention curves.
    videos_per_session: the session length the bank is checked against.
    max_trace_len: pad traces to this many rows (default: the longest).
  """
  if not traces:
    raise ValueError("pack_world: no network traces")
  longest = max(len(t) for t in traces)
  max_len = longest if max_trace_len is None else int(max_trace_len)
  if longest > max_len:
    raise ValueError(f"pack_world: a trace has {longest} rows > max_trace_len={max_len}")
  times = np.zeros((len(traces), max_len), np.float64)
  mbps = np.zeros((len(traces), max_len), np.float64)
  lens = np.zeros((len(traces),), np.int32)
  for i, tr in enumerate(traces):
    k = len(tr)
    times[i, :k], mbps[i, :k] = tr.times_s, tr.bandwidth_mbps
    times[i, k:], mbps[i, k:] = tr.times_s[-1], tr.bandwidth_mbps[-1]
    lens[i] = k
  if watch_bank is None:
    bank = np.full((1, videos_per_session), NO_USERS, np.int32)
  else:
    bank = np.asarray(watch_bank)
    if bank.ndim != 2 or bank.shape[1] != videos_per_session:
      raise ValueError(f"pack_world: watch_bank must have shape [users, {videos_per_session}], "
                       f"got {bank.shape}")
    if bank.shape[0] == 0 or np.any(bank < 0):
      raise ValueError("pack_world: watch_bank must be non-empty with durations >= 0 ms")
    bank = bank.astype(np.int32)
  return World(trace_times=jnp.asarray(times), trace_mbps=jnp.asarray(mbps),
               trace_len=jnp.asarray(lens), watch_bank=jnp.asarray(bank))
