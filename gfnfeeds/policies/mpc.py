"""Vectorized exhaustive RobustMPC over the next chunks of one video (BASELINES.md section 6).

One implementation serves No-Save, MPC + Fixed-Preload and PDAS. All L^H level
sequences of the full horizon H are a static [L^H, H] table in lexicographic
order (first position slowest). When only P < H chunks remain, the sequences
that use a non-zero level past position P-1 are masked out; the P-prefixes of
the sequences left are then each present once and in the same lexicographic
order as an enumeration of length P, so the tie rule carries over unchanged.

Buffer roll-out per position k of a sequence (RobustMPC / MMGC, 1-s chunks):

    download_ms = 1000 * (size_bytes / 1e6) / bandwidth_MBps
    stall_k     = max(download_ms - buffer, 0)
    buffer      = max(buffer - download_ms, 0) + 1000

The roll-out returns the objective *terms* per sequence (`MpcTerms`) rather
than one objective, so each caller weights them: No-Save uses
q - 4.3 stall - smooth; MPC + Fixed-Preload the eq. (1) utility
q - 1.85 stall - smooth - 0.5 Mb; PDAS retention-weighted quality and
smoothness and its own cross-video (eq. 13) stall per position.

Exactness. The sums run position by position (an unrolled loop over H), in
the reference's units (kbps, ms, bytes) and operation order, so with weights
(1, 4.3, 1, 0) `weighted_objective` equals the plain-Python No-Save reward
bit for bit; ties then resolve as in the reference. Divisions by constants go
through `numerics.exact_div`: XLA would otherwise turn x / 1000 into
x * 0.001 and flip near-ties (no_save on mixed/8 with MMGC user 7 does).
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
from flax import struct

from gfnfeeds.numerics import exact_div

CHUNK_MS = 1000.0
DEFAULT_HORIZON = 5


def sequence_table(num_levels: int, horizon: int) -> np.ndarray:
  """All level sequences, int32 [num_levels ** horizon, horizon], lexicographic (first slowest)."""
  return np.asarray(list(itertools.product(range(num_levels), repeat=horizon)),
                    np.int32).reshape(num_levels ** horizon, horizon)


@struct.dataclass
class MpcTerms:
  """Objective terms of every sequence of the table (S = L^H rows).

  Sums are over the first P positions (P = the effective horizon); positions
  past P contribute nothing.

  Attributes:
    sequences: int32 [S, H], the static table.
    valid: bool [S], whether the row is one of the enumerated P-sequences.
    horizon: int32, P = min(H, chunks left).
    quality_kbps: [S] sum_k wq_k * kbps(level_k).
    smooth_kbps: [S] sum_k ws_k * |kbps(level_k) - kbps(previous level)|.
    stall_ms: [S] own-buffer stall summed over the positions.
    bytes: [S] bytes downloaded by the sequence.
    stall_ms_k: [S, H] own-buffer stall per position.
    download_ms_k: [S, H] predicted download time per position.
  """

  sequences: jnp.ndarray
  valid: jnp.ndarray
  horizon: jnp.ndarray
  quality_kbps: jnp.ndarray
  smooth_kbps: jnp.ndarray
  stall_ms: jnp.ndarray
  bytes: jnp.ndarray
  stall_ms_k: jnp.ndarray
  download_ms_k: jnp.ndarray

  @property
  def quality(self):
    """Quality sum in Mbps (one 1-s chunk per position)."""
    return self.quality_kbps / 1000.0

  @property
  def smoothness(self):
    """Smoothness sum in Mbps."""
    return self.smooth_kbps / 1000.0

  @property
  def stall_s(self):
    """Own-buffer stall in seconds."""
    return self.stall_ms / 1000.0

  @property
  def megabits(self):
    """Megabits downloaded."""
    return self.bytes * 8.0 / 1e6


def chunk_sizes_ahead(catalog, video, first_chunk, horizon: int = DEFAULT_HORIZON):
  """Bytes [horizon, L] of chunks first_chunk .. first_chunk+horizon-1 of catalog `video`.

  Chunks past the video's end (and past the catalog padding) read as 0.
  """
  idx = first_chunk + jnp.arange(horizon)
  inside = idx < catalog.num_chunks[video]
  sizes = catalog.chunk_sizes[video, jnp.clip(idx, 0, catalog.max_chunks - 1)]
  return jnp.where(inside[:, None], sizes, 0.0)


def download_ms_table(sizes_bytes, bandwidth_mbs):
  """Predicted download time (ms) [H, L] of each position and level: 1000 (bytes / 1e6) / C."""
  return exact_div(1000.0 * exact_div(sizes_bytes, 1e6), bandwidth_mbs)


def rollout(sizes_bytes, bitrates_kbps, buffer_ms, bandwidth_mbs, num_left, prev_level,
            quality_weights=None, smooth_weights=None, carry_prev: bool = False) -> MpcTerms:
  """Rolls every level sequence of the horizon forward and returns its terms.

  Args:
    sizes_bytes: [H, L] sizes of the next H chunks of the target (H is the
      static horizon, L the ladder size).
    bitrates_kbps: [L] the nominal ladder.
    buffer_ms: the target's buffer now.
    bandwidth_mbs: the predicted bandwidth, MB/s (> 0).
    num_left: chunks left to download; the effective horizon is min(H, num_left).
    prev_level: level before the first position (the target's last downloaded
      level); -1 = none, then the first position has no smoothness term.
    quality_weights, smooth_weights: optional [H] per-position weights (PDAS
      uses the retention probability of each chunk); default 1.
    carry_prev: No-Save's quirk (starters.NoSave): the previous level is set
      once per decision and not reset between sequences, so every sequence
      but the first starts from the last level of the sequence enumerated
      before it. Static.

  Returns:
    MpcTerms over the static sequence table.
  """
  h, num_levels = sizes_bytes.shape
  table_np = sequence_table(num_levels, h)
  table = jnp.asarray(table_np)
  n_seq = table_np.shape[0]
  p = jnp.clip(jnp.asarray(num_left, jnp.int32), 0, h)
  position = jnp.arange(h)
  active = position < p  # [H]
  valid = jnp.all(jnp.logical_or(active[None, :], table == 0), axis=1)
  kbps = bitrates_kbps[table]  # [S, H]
  sizes = sizes_bytes[position[None, :], table]  # [S, H]: size of level seq[k] at position k
  # The reference's expression elementwise (exact divisions), so gathering
  # from the [H, L] table gives the very values a per-sequence loop would.
  download_ms_all = download_ms_table(sizes_bytes, bandwidth_mbs)[position[None, :], table]
  wq = jnp.ones((h,), jnp.float64) if quality_weights is None else quality_weights
  ws = jnp.ones((h,), jnp.float64) if smooth_weights is None else smooth_weights

  prev_level = jnp.asarray(prev_level, jnp.int32)
  if carry_prev:
    # Valid rows are spaced L^(H-P) apart; row s is the k-th P-sequence with
    # k = s // L^(H-P), and the one before it ends on level (k-1) mod L.
    powers = jnp.asarray([num_levels ** j for j in range(h + 1)], jnp.int32)
    k = jnp.arange(n_seq, dtype=jnp.int32) // powers[h - p]
    prev = jnp.where(k == 0, prev_level, (k - 1) % num_levels)
  else:
    prev = jnp.full((n_seq,), prev_level, jnp.int32)

  buffer = jnp.full((n_seq,), jnp.asarray(buffer_ms, jnp.float64))
  zero = jnp.zeros((n_seq,), jnp.float64)
  quality, smooth, stall, nbytes = zero, zero, zero, zero
  stall_k, download_k = [], []
  for i in range(h):  # unrolled: the reference's summation order
    on = active[i]
    download_ms = download_ms_all[:, i]
    short = buffer < download_ms
    s_i = jnp.where(jnp.logical_and(on, short), download_ms - buffer, 0.0)
    stall = stall + s_i
    buffer = jnp.where(on, jnp.where(short, 0.0, buffer - download_ms) + CHUNK_MS, buffer)
    quality = quality + jnp.where(on, wq[i] * kbps[:, i], 0.0)
    has_prev = prev >= 0
    delta = jnp.abs(kbps[:, i] - bitrates_kbps[jnp.maximum(prev, 0)])
    smooth = smooth + jnp.where(jnp.logical_and(on, has_prev), ws[i] * delta, 0.0)
    nbytes = nbytes + jnp.where(on, sizes[:, i], 0.0)
    prev = jnp.where(on, table[:, i], prev)
    stall_k.append(s_i)
    download_k.append(jnp.where(on, download_ms, 0.0))
  return MpcTerms(sequences=table, valid=valid, horizon=p, quality_kbps=quality,
                  smooth_kbps=smooth, stall_ms=stall, bytes=nbytes,
                  stall_ms_k=jnp.stack(stall_k, axis=1), download_ms_k=jnp.stack(download_k, axis=1))


def weighted_objective(terms: MpcTerms, alpha, beta, gamma, theta, stall_ms=None):
  """alpha q - beta stall - gamma smooth - theta Mb per sequence (q, smooth in Mbps, stall in s).

  Written in the reference's operation order (x / 1000 per term), so weights
  (1, 4.3, 1, 0) reproduce No-Save's reward exactly. `stall_ms` replaces the
  own-buffer stall (PDAS substitutes its cross-video eq. (13) stall).
  """
  stall = terms.stall_ms if stall_ms is None else stall_ms
  return (exact_div(alpha * terms.quality_kbps, 1000.0) - exact_div(beta * stall, 1000.0)
          - exact_div(gamma * terms.smooth_kbps, 1000.0) - theta * terms.megabits)


def best_sequence(objective, valid):
  """(row index, value) of the best valid sequence; the last maximal one wins.

  The ">= running maximum" rule of the reference: among equal maxima the
  sequence enumerated last is kept. Rows that are not valid never win.
  """
  masked = jnp.where(valid, objective, -jnp.inf)
  last = masked.shape[0] - 1 - jnp.argmax(masked[::-1])
  return last, masked[last]


def first_level(terms: MpcTerms, objective) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(first level of the best sequence, its objective value)."""
  index, value = best_sequence(objective, terms.valid)
  return terms.sequences[index, 0], value
