"""The two MMGC2022 starter algorithms as plain-Python policies (SIMULATOR.md Appendix A).

Both reproduce the reference's decisions exactly. A policy reads only the
simulator's observation accessors (`slots()`, `play_video_id`) and catalog
information (`chunk_size`, `bitrates_kbps`, the retention curves it was given),
never the watch durations or the trace.

Interface: `policy.act(last_result_or_None, sim) -> (video_id_abs, level, sleep_ms)`,
called with None for the first decision of a session.
"""

from __future__ import annotations

import itertools
import math

from gfnfeeds.reference.simulator import ReferenceSimulator, StepResult

SLEEP_MS = 500


class FixedPreload:
  """MMGC quickstart `fix_preload`: finish the playing video, then preload up to 4 chunks."""

  def __init__(self, retention: list[list[float]]):
    """retention[i] = r(0..N) of session video i (the end-marker row dropped)."""
    self.retention = retention

  def act(self, last: StepResult | None, sim: ReferenceSimulator) -> tuple[int, int, int]:
    if last is None:
      return 0, 0, 0
    slots = sim.slots()
    target = None
    if slots[0].chunk_counter < slots[0].num_chunks:
      target = slots[0]
    else:
      for slot in slots[1:]:
        c = slot.chunk_counter
        r = self.retention[slot.video_id]
        if c < 4 and c < slot.num_chunks and r[c] / r[slot.play_timeline_ms // 1000] > 0.65:
          target = slot
          break
    if target is None:
      return sim.play_video_id, 0, SLEEP_MS
    if target.buffer_ms > 2000:
      level = 2
    elif target.buffer_ms > 1000:
      level = 1
    else:
      level = 0
    return target.video_id, level, 0


class NoSave:
  """MMGC baseline `no_save`: download continuously, RobustMPC bitrates.

  Keeps two quirks of the reference code, both needed for exact replay:
    * the wrapper and the MPC routine both append to the same error and
      estimate lists, so each decision with a target adds two entries;
    * in the MPC enumeration the "previous level" of the smoothness term is
      initialised once per decision (the target's last downloaded level, 0 if
      none) and is not reset between sequences: each sequence after the first
      starts from the last level of the sequence enumerated before it.
      SIMULATOR.md Appendix A omits this; without it no_save/high/0 diverges
      at step 3.
  """

  horizon = 5
  quota_bytes = 800_000
  rebuf_penalty = 4.3

  def __init__(self):
    self.throughput = [0.0] * 5  # MB/s samples, oldest first
    self.estimates: list[float] = []
    self.errors: list[float] = []
    self.prev_sleep = 0

  def act(self, last: StepResult | None, sim: ReferenceSimulator) -> tuple[int, int, int]:
    if last is None:
      self.prev_sleep = 0
      return 0, 2, 0
    if self.prev_sleep == 0:
      self.throughput = self.throughput[1:] + [(last.video_size / 1e6) / (last.delay_ms / 1000)]
    target = self._target(sim.slots())
    if target is None:
      self.prev_sleep = SLEEP_MS
      return sim.play_video_id, 0, SLEEP_MS
    self._update_estimate()
    bandwidth = self._update_estimate()
    self.prev_sleep = 0
    return target.video_id, self._mpc_level(target, bandwidth, sim), 0

  def _target(self, slots):
    """The playing video if unfinished, else a round-robin with a growing byte quota."""
    if slots[0].chunk_counter < slots[0].num_chunks:
      return slots[0]
    candidates = [s for s in slots[1:] if s.chunk_counter < s.num_chunks]
    if not candidates:
      return None
    quota = self.quota_bytes
    while True:
      for slot in candidates:
        if slot.preload_size < quota:
          return slot
      quota += self.quota_bytes

  def _update_estimate(self) -> float:
    """Appends one error and one harmonic-mean estimate; returns the robust bandwidth (MB/s)."""
    newest = self.throughput[-1]
    if not self.estimates or newest == 0:
      error = 0.0
    else:
      error = abs(self.estimates[-1] - newest) / newest
    self.errors.append(error)
    first = next(i for i, x in enumerate(self.throughput) if x != 0)
    samples = self.throughput[first:]
    harmonic = 1.0 / (sum(1 / x for x in samples) / len(samples))
    self.estimates.append(harmonic)
    return harmonic / (1 + max(self.errors[-5:]))

  def _mpc_level(self, target, bandwidth: float, sim: ReferenceSimulator) -> int:
    """First level of the best sequence over the next chunks; ties go to the later sequence."""
    kbps = sim.bitrates_kbps
    horizon = min(self.horizon, target.num_chunks - target.chunk_counter)
    # Set once per decision: the reference never resets it between sequences.
    prev = target.levels[-1] if target.levels else 0
    best_reward, best = -math.inf, None
    for seq in itertools.product(range(len(kbps)), repeat=horizon):
      buffer = target.buffer_ms
      stall = quality = smooth = 0.0
      for i, level in enumerate(seq):
        size = sim.chunk_size(target.video_id, target.chunk_counter + i, level)
        download_ms = 1000 * (size / 1e6) / bandwidth
        if buffer < download_ms:
          stall += download_ms - buffer
          buffer = 0
        else:
          buffer -= download_ms
        buffer += 1000
        quality += kbps[level]
        smooth += abs(kbps[level] - kbps[prev])
        prev = level
      reward = quality / 1000 - self.rebuf_penalty * stall / 1000 - smooth / 1000
      if reward >= best_reward:
        best_reward, best = reward, seq
    return best[0]


def run_session(sim: ReferenceSimulator, policy, max_steps: int = 1_000_000) -> list[StepResult]:
  """Steps `sim` with `policy` until the session ends; returns every StepResult."""
  results: list[StepResult] = []
  last = None
  while not sim.done:
    if len(results) >= max_steps:
      raise RuntimeError(f"session not over after {max_steps} steps")
    last = sim.step(*policy.act(last, sim))
    results.append(last)
  return results
