"""The MMGC2022 user (watch-duration) model, reproduced draw for draw (SIMULATOR.md 6).

The reference re-seeds numpy's global legacy RNG and Python's global `random`
for every video. Here each seeding gets a fresh private generator of the same
kind instead: `np.random.RandomState(s)` is exactly what `np.random.seed(s)`
re-initialises, and `random.Random(s)` what `random.seed(s)` does, so the draws
are identical, no global RNG state is read or changed, and the results do not
depend on what ran before in the process.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from gfnfeeds.data.types import Video

SESSION_VIDEOS = 7  # ALL_VIDEO_NUM of the reference run.py
DEFAULT_SEED = 42  # run.py seeds numpy with this at import
MAX_USER_SAMPLES = 1001  # rows of test_user_samples' seed_for_sample
CHUNK_MS = 1000


def watch_probabilities(video: Video) -> np.ndarray:
  """Returns p_k = r(k) - r(k+1) for k = 0..N with r(N+1) = 0, float64 [N+1].

  Computed as the reference does, as differences of 1 - r, so the floats (and
  hence the `choice` draws) match it bit for bit.
  """
  r = np.append(np.asarray(video.retention, dtype=np.float64), 0.0)
  return np.diff(1.0 - r)


def mmgc_watch_duration(video: Video, seed_np, seed_py) -> int:
  """Returns the reference's watch duration in ms for `video` and one seed pair.

  k = RandomState(seed_np).choice(N+1, p=watch_probabilities(video)); k == N is a
  full watch (N*1000 ms), otherwise int(Random(seed_py).uniform(k*1000,
  k*1000+1000)).
  """
  n = video.num_chunks
  # Same MT19937 seeding, and the same single uniform draw, as the reference's
  # np.random.seed(s); np.random.choice(times[:-1], p=p).
  k = int(np.random.RandomState(int(seed_np)).choice(
      n + 1, p=watch_probabilities(video)))
  if k == n:
    return n * CHUNK_MS
  # The reference seeds with a numpy integer, which Python <3.11 hashed: for
  # 0 <= s < 2**61 - 1 that equals seeding with int(s).
  start = k * CHUNK_MS
  return int(random.Random(int(seed_py)).uniform(start, start + CHUNK_MS))


def mmgc_default_seeds() -> np.ndarray:
  """Returns run.py's import-time seeds: RandomState(42).randint(100, (7, 2)), int64."""
  rng = np.random.RandomState(DEFAULT_SEED)
  return rng.randint(100, size=(SESSION_VIDEOS, 2)).astype(np.int64)


def _session_durations(videos: Sequence[Video], seeds: np.ndarray) -> np.ndarray:
  if not videos:
    raise ValueError("videos must not be empty")
  return np.asarray(
      [mmgc_watch_duration(videos[i % len(videos)], seeds[i, 0], seeds[i, 1])
       for i in range(SESSION_VIDEOS)],
      dtype=np.int64)


def mmgc_default_user(videos: Sequence[Video]) -> np.ndarray:
  """Returns the default run's watch durations in ms, int64 [7].

  Video i of the session is videos[i % len(videos)] and uses mmgc_default_seeds()[i].
  """
  return _session_durations(videos, mmgc_default_seeds())


def mmgc_sample_seeds(n: int) -> np.ndarray:
  """Returns the seed pairs of test_user_samples' first n samples, int64 [n, 7, 2].

  The reference's RNG sequence, with test_user_samples called right after import:
  np.random.seed(42); randint(100, (7, 2)) (the default seeds);
  seed_for_sample = randint(10000, (1001, 1)); then for sample j:
  np.random.seed(seed_for_sample[j]); seeds_j = randint(10000, (7, 2)).
  """
  if not 0 <= n <= MAX_USER_SAMPLES:
    raise ValueError(f"n must be in [0, {MAX_USER_SAMPLES}], got {n}")
  rng = np.random.RandomState(DEFAULT_SEED)
  rng.randint(100, size=(SESSION_VIDEOS, 2))
  seed_for_sample = rng.randint(10000, size=(MAX_USER_SAMPLES, 1))
  out = np.empty((n, SESSION_VIDEOS, 2), dtype=np.int64)
  for j in range(n):
    # np.random.seed squeezes the shape-(1,) row to the scalar seed.
    rng_j = np.random.RandomState(int(seed_for_sample[j, 0]))
    out[j] = rng_j.randint(10000, size=(SESSION_VIDEOS, 2))
  return out


def mmgc_user_samples(videos: Sequence[Video], n: int) -> np.ndarray:
  """Returns the watch durations in ms of test_user_samples' first n users, int64 [n, 7].

  Row j uses mmgc_sample_seeds(n)[j]; video i of a session is videos[i % len(videos)].
  Raises ValueError if n > 1001 (the reference draws 1001 sample seeds).
  """
  seeds = mmgc_sample_seeds(n)
  out = np.empty((n, SESSION_VIDEOS), dtype=np.int64)
  for j in range(n):
    out[j] = _session_durations(videos, seeds[j])
  return out
