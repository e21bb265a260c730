"""Rule-based controllers: the MMGC starters, MPC + Fixed-Preload and PDAS, in JAX.

Every policy is a frozen dataclass (hashable, static under jit) with
`init(obs, catalog) -> policy_state` and
`act(key, policy_state, obs, catalog) -> (Action, policy_state)`, written
without Python control flow on traced values, so it jits and vmaps over
sessions. Policies read the Observation and the Catalog (through
obs.slot_video only); they never see the World or the Session.

* `NoSave`, `FixedPreload`: SIMULATOR.md Appendix A, decision for decision
  (`gfnfeeds.reference.starters` is the plain-Python twin they are tested
  against, including No-Save's smoothness carry-over quirk).
* `MpcFixedPreload`: Incendio's baseline (BASELINES.md section 5).
* `Pdas`, `PdasPersonalized`: BASELINES.md section 3; see `Pdas` and
  notes_policies.md for every interpretation.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gfnfeeds.env.environment import tree_select
from gfnfeeds.env.feeds import Action, download, sleep
from gfnfeeds.env.preferences import MMGC_WEIGHTS
from gfnfeeds.policies import estimators as est
from gfnfeeds.policies import mpc
from gfnfeeds.policies.base import Policy

STARTER_SLEEP_MS = 500  # No-Save and Fixed-Preload sleep 500 ms when nothing is left


# ----------------------------------------------------------------- helpers
def slots_with_chunks(obs) -> jnp.ndarray:
  """bool [W]: the slot holds a video with chunks left to download."""
  return jnp.logical_and(obs.slot_valid, obs.chunks_downloaded < obs.num_chunks)


def first_true(mask) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(index of the first True, any True); index 0 when none."""
  return jnp.argmax(mask).astype(jnp.int32), jnp.any(mask)


def slot_videos(obs) -> jnp.ndarray:
  """Catalog index per slot, clipped to 0 for empty slots (their results are masked)."""
  return jnp.maximum(obs.slot_video, 0)


def retention_at(obs, catalog, chunk) -> jnp.ndarray:
  """r(chunk) per slot [W] (chunk broadcastable to [W] or [W, K]); 0 at or past the video's end.

  r(m) is the share of users who reach second m, i.e. who play chunk m (the
  chunk is credited iff the watch time w >= 1000 m). Past the last chunk no
  one is on the video any more, hence 0.
  """
  video = slot_videos(obs)
  chunk = jnp.asarray(chunk, jnp.int32)
  extra = (None,) * (chunk.ndim - 1)
  rows = catalog.retention[video]  # [W, C+1]
  idx = jnp.clip(chunk, 0, catalog.max_chunks)
  r = jnp.take_along_axis(rows, idx.reshape(rows.shape[0], -1), axis=1).reshape(idx.shape)
  return jnp.where(chunk < obs.num_chunks[(slice(None),) + extra], r, 0.0)


def conditional_retention(obs, catalog, chunk, position) -> jnp.ndarray:
  """PDAS eq. (4): p(chunk | position) = H(chunk) / H(position) if chunk > position, else 1.

  position is the chunk the user is on (floor(play_ms / 1000); 0 for queued
  videos). Clipped to [0, 1]; 0 when H(position) is 0 (no information).
  """
  chunk = jnp.asarray(chunk, jnp.int32)
  position = jnp.asarray(position, jnp.int32)
  h_m = retention_at(obs, catalog, chunk)
  h_z = retention_at(obs, catalog, jnp.broadcast_to(position, chunk.shape))
  ratio = jnp.where(h_z > 0, h_m / jnp.where(h_z > 0, h_z, 1.0), 0.0)
  return jnp.where(chunk > position, jnp.clip(ratio, 0.0, 1.0), 1.0)


def choose(pred, on_true: Action, on_false: Action) -> Action:
  return tree_select(pred, on_true, on_false)


def fixed_preload_target(obs, catalog, max_chunks: int = 4, threshold: float = 0.65):
  """Fixed-Preload's video choice: (slot, has_target).

  The playing video if it has chunks left; else the first queued slot with
  fewer than `max_chunks` chunks downloaded, chunks left and
  r[c] / r[floor(play_ms / 1000)] > threshold (r indexed by chunk number).
  """
  has = slots_with_chunks(obs)
  c = obs.chunks_downloaded
  rows = catalog.retention[slot_videos(obs)]
  r_next = jnp.take_along_axis(rows, jnp.clip(c, 0, catalog.max_chunks)[:, None], 1)[:, 0]
  r_now = jnp.take_along_axis(rows, jnp.clip(obs.play_ms // 1000, 0, catalog.max_chunks)[:, None],
                              1)[:, 0]
  # r_now is r(0) = 1 for a queued video; the guard only keeps odd data finite.
  ratio = jnp.where(r_now > 0, r_next / jnp.where(r_now > 0, r_now, 1.0), 0.0)
  queued = jnp.arange(has.shape[0]) >= 1
  ok = queued & has & (c < max_chunks) & (ratio > threshold)
  first, any_ok = first_true(ok)
  slot = jnp.where(has[0], 0, first)
  return slot, jnp.logical_or(has[0], any_ok)


# ----------------------------------------------------------------- Fixed-Preload
@dataclasses.dataclass(frozen=True)
class FixedPreload(Policy):
  """MMGC quickstart `fix_preload` (SIMULATOR.md Appendix A), decision for decision.

  First call: download video 0 at level 0. Then: the playing video if it has
  chunks left, else the first queued video with < 4 chunks downloaded, chunks
  left and conditional retention r[c] / r[floor(timeline / 1000)] > 0.65;
  else sleep 500 ms. Level from the target's own buffer: > 2000 ms gives 2,
  > 1000 ms gives 1, else 0. Stateless (policy_state is ()).

  Attributes:
    max_preload_chunks: preload a queued video while fewer chunks are downloaded.
    retention_threshold: the conditional-retention bar for preloading.
    sleep_ms: the sleep when nothing qualifies.
  """

  max_preload_chunks: int = 4
  retention_threshold: float = 0.65
  sleep_ms: int = STARTER_SLEEP_MS

  def act(self, key, policy_state, obs, catalog):
    del key
    slot, has_target = fixed_preload_target(obs, catalog, self.max_preload_chunks,
                                            self.retention_threshold)
    buf = obs.buffer_ms[slot]
    level = jnp.where(buf > 2000, 2, jnp.where(buf > 1000, 1, 0))
    action = choose(has_target, download(slot, level), sleep(self.sleep_ms))
    return choose(obs.first_step, download(0, 0), action), policy_state


# ----------------------------------------------------------------- No-Save
def nosave_target(obs, quota_bytes: float):
  """No-Save's video choice: (slot, has_target).

  The playing video if it has chunks left; else the round-robin of the
  reference: passes q = 1, 2, ... over the queued slots that have chunks left,
  and the first (in slot order) with preload_bytes < q * quota wins. The
  winner is therefore the slot with the smallest pass number
  floor(preload / quota) + 1, ties to the lower slot. No target (sleep) when
  no queued slot has chunks left.
  """
  has = slots_with_chunks(obs)
  w = has.shape[0]
  passes = jnp.floor(obs.preload_bytes / quota_bytes) + 1.0
  queued = has & (jnp.arange(w) >= 1)
  keyed = jnp.where(queued, passes, jnp.inf)
  rr_slot = jnp.argmin(keyed).astype(jnp.int32)  # argmin returns the first minimum
  slot = jnp.where(has[0], 0, rr_slot)
  return slot, jnp.logical_or(has[0], jnp.any(queued))


@dataclasses.dataclass(frozen=True)
class NoSave(Policy):
  """MMGC baseline `no_save` (SIMULATOR.md section 8 and Appendix A), decision for decision.

  First call: video 0 at level 2. Every later call first records a throughput
  sample (MB/s, RTT included) if the previous action was a download. Target:
  the playing video if it has chunks left, else the 800,000-byte round-robin
  over the queued slots (`nosave_target`); none left: sleep 500 ms. With a
  target, the estimator is updated twice (`estimators.nosave_update`) and the
  level is the first of the best RobustMPC sequence over the target's next
  min(5, left) chunks with reward q - 4.3 stall_s - smooth, the previous level
  starting at the target's last downloaded level (0 if none) and carried over
  between sequences (the reference's quirk, see starters.NoSave), ties to the
  last maximal sequence.

  policy_state: estimators.EstimatorState.
  """

  horizon: int = mpc.DEFAULT_HORIZON
  quota_bytes: float = 800_000.0
  rebuf_penalty: float = 4.3
  first_level: int = 2
  sleep_ms: int = STARTER_SLEEP_MS

  def init(self, obs, catalog):
    del obs, catalog
    return est.init_estimator()

  def act(self, key, policy_state, obs, catalog):
    del key
    sample, valid = est.observed_sample(obs)
    state = est.push_sample(policy_state, sample, valid)
    slot, has_target = nosave_target(obs, self.quota_bytes)
    updated, bandwidth = est.nosave_update(state)
    state = tree_select(has_target, updated, state)
    bandwidth = jnp.where(bandwidth > 0, bandwidth, 1.0)  # unreachable guard: a sample exists

    video = slot_videos(obs)[slot]
    c = obs.chunks_downloaded[slot]
    terms = mpc.rollout(mpc.chunk_sizes_ahead(catalog, video, c, self.horizon),
                        catalog.bitrates_kbps, obs.buffer_ms[slot], bandwidth,
                        obs.num_chunks[slot] - c, jnp.maximum(obs.last_level[slot], 0),
                        carry_prev=True)
    level, _ = mpc.first_level(terms, mpc.weighted_objective(terms, 1.0, self.rebuf_penalty,
                                                             1.0, 0.0))
    action = choose(has_target, download(slot, level), sleep(self.sleep_ms))
    action = choose(obs.first_step, download(0, self.first_level), action)
    state = tree_select(obs.first_step, policy_state, state)
    return action, state


# ----------------------------------------------------------------- MPC + Fixed-Preload
@dataclasses.dataclass(frozen=True)
class MpcFixedPreload(Policy):
  """Incendio's "MPC + fixed-preload" baseline (BASELINES.md section 5).

  Video and sleep logic: exactly FixedPreload's (playing video first, then up
  to 4 chunks of queued videos with conditional retention > 0.65, else sleep
  500 ms). Level: first level of the best RobustMPC sequence over the
  target's next min(5, left) chunks, maximizing the eq. (1) utility
  alpha q - beta stall_s - gamma smooth - theta Mb with (1, 1.85, 1, 0.5).

  Choices where the source is silent:
    * bandwidth: clean RobustMPC (`estimators.robust_update`: one error and
      one estimate per new sample, not No-Save's double append);
    * previous level for smoothness: the target's last downloaded level;
      none (no smoothness term on the first position) for a video without
      chunks, whose predecessor's last watched chunk is not observable;
    * first decision (no throughput sample yet): video 0 at level 0, as
      Fixed-Preload.

  policy_state: estimators.EstimatorState.
  """

  horizon: int = mpc.DEFAULT_HORIZON
  weights: tuple[float, float, float, float] = MMGC_WEIGHTS
  max_preload_chunks: int = 4
  retention_threshold: float = 0.65
  sleep_ms: int = STARTER_SLEEP_MS

  def init(self, obs, catalog):
    del obs, catalog
    return est.init_estimator()

  def act(self, key, policy_state, obs, catalog):
    del key
    sample, valid = est.observed_sample(obs)
    state = est.robust_update(policy_state, sample, valid)
    bandwidth = est.robust_bandwidth(state)
    ready = bandwidth > 0
    bandwidth = jnp.where(ready, bandwidth, 1.0)

    slot, has_target = fixed_preload_target(obs, catalog, self.max_preload_chunks,
                                            self.retention_threshold)
    video = slot_videos(obs)[slot]
    c = obs.chunks_downloaded[slot]
    terms = mpc.rollout(mpc.chunk_sizes_ahead(catalog, video, c, self.horizon),
                        catalog.bitrates_kbps, obs.buffer_ms[slot], bandwidth,
                        obs.num_chunks[slot] - c, obs.last_level[slot])
    level, _ = mpc.first_level(terms, mpc.weighted_objective(terms, *self.weights))
    action = choose(has_target, download(slot, level), sleep(self.sleep_ms))
    action = choose(jnp.logical_or(obs.first_step, ~ready), download(0, 0), action)
    return action, state


# ----------------------------------------------------------------- PDAS
@dataclasses.dataclass(frozen=True)
class Pdas(Policy):
  """PDAS: probability-driven max-buffer + multi-video RobustMPC (BASELINES.md section 3).

  Per decision, with C the RobustMPC bandwidth estimate in MB/s, slot i of
  the window (i_c = 0 is the playing video), its next chunk m = chunks
  downloaded, its current chunk z = floor(play_ms / 1000) (0 for a queued
  video) and H = the retention curve r:

  1. Retention probability (eq. 4): p_i(m) = H(m) / H(z) if m > z else 1,
     with H(m) = 0 for m >= N (past the end nobody is on the video).
  2. Max buffer (eqs. 5-6), in seconds: b_max = max(p_i(m) T_max, b_th) with
     T_max = size(m, top level) / 1e6 / C and
     b_th = eps exp(-lambda1 C - lambda2 i), eps 3.5, lambda1 0.3, lambda2 0.15.
     Candidate iff it has chunks left and buffer_s <= b_max.
  3. If no candidate: sleep 50 ms.
  4. Each candidate: exhaustive RobustMPC over its next K = min(5, left)
     chunks (all 3^K sequences, its own buffer rolled forward from b_i):
       U = sum_k [alpha p_k q_k - gamma p_k |q_k - q_{k-1}|]
           - beta (Gamma(r_0) + sum_{k>=1} own stall_k) - theta Mb,
     p_k = p_i(m + k), q in Mbps, stalls in s, weights (1, 1.85, 1, 0.5).
     Gamma(r_0) is the cross-video expected stall of eq. (13) for the first
     chunk: with T = its predicted download time (s) and k = ceil(T / 1 s),
     for every window slot j (z_j as above)
       stay_j = p_j(z_j + k), Gamma_j = stay_j max(T - b_j, 0),
       P_0 = 1, P_j = prod_{l<j} (1 - stay_l), Gamma = sum_j P_j Gamma_j.
     The candidate keeps its best first level (ties: last maximal sequence).
  5. Download the candidate with the largest U (ties: the lower slot).

  Interpretations of what the paper leaves open (also in notes_policies.md):
    * C is in MB/s (the MMGC sample unit), b_th and b_max in seconds;
      T_max and T use size / C with samples that include the RTT, as RobustMPC;
    * K = 5 (fewer when fewer chunks remain); U sums the K positions as
      Algorithm 1 says (no normalization by K);
    * the own-buffer roll-out of a queued candidate drains its buffer during
      downloads as RobustMPC does (the recommended form), though a queued
      video does not play;
    * previous level for the smoothness of the first position: the
      candidate's last downloaded level; for its chunk 0, the newest level of
      the video in the slot before it; none for slot 0 at chunk 0;
    * stall and bandwidth terms are not retention-weighted (eq. 1 charges
      every byte; eq. 13 already carries its probabilities);
    * bandwidth: one error and one estimate per new sample (clean RobustMPC);
    * first decision (no sample yet): video 0 at level 0;
    * the max-buffer rule does not depend on the weights (PdasPersonalized
      changes only the objective).

  policy_state: estimators.EstimatorState.
  """

  horizon: int = mpc.DEFAULT_HORIZON
  epsilon: float = 3.5
  lambda1: float = 0.3
  lambda2: float = 0.15
  sleep_ms: int = 50
  weights: tuple[float, float, float, float] = MMGC_WEIGHTS
  personalized: bool = False  # use obs.weights instead of `weights`

  def init(self, obs, catalog):
    del obs, catalog
    return est.init_estimator()

  def objective_weights(self, obs) -> jnp.ndarray:
    """(alpha, beta, gamma, theta) used in U."""
    if self.personalized:
      return jnp.asarray(obs.weights, jnp.float64)
    return jnp.asarray(self.weights, jnp.float64)

  def max_buffer_s(self, obs, catalog, bandwidth):
    """b_max per slot [W] in seconds (eqs. 5-6)."""
    w = obs.slot_valid.shape[0]
    video = slot_videos(obs)
    c = obs.chunks_downloaded
    z = obs.play_ms // 1000
    p_next = conditional_retention(obs, catalog, c, z)
    top = catalog.chunk_sizes[video, jnp.clip(c, 0, catalog.max_chunks - 1), -1]
    t_max = top / 1e6 / bandwidth
    b_th = self.epsilon * jnp.exp(-self.lambda1 * bandwidth - self.lambda2 * jnp.arange(w))
    return jnp.maximum(p_next * t_max, b_th)

  def candidates(self, obs, catalog, bandwidth):
    """bool [W]: slots allowed to download now (chunks left, buffer under b_max)."""
    return slots_with_chunks(obs) & (obs.buffer_ms / 1000.0 <= self.max_buffer_s(
        obs, catalog, bandwidth))

  def expected_stall_s(self, obs, catalog, download_s):
    """Eq. (13): expected stall (s) over the window for first-chunk download times [S]."""
    z = obs.play_ms // 1000  # [W]
    k = jnp.ceil(download_s)  # chunks played during the download (1-s chunks)
    ahead = z[:, None] + k[None, :].astype(jnp.int32)  # [W, S]
    stay = conditional_retention(obs, catalog, ahead, z[:, None])  # [W, S]
    stay = jnp.where(obs.slot_valid[:, None], stay, 0.0)
    gamma_j = stay * jnp.maximum(download_s[None, :] - obs.buffer_ms[:, None] / 1000.0, 0.0)
    leave = jnp.cumprod(1.0 - stay, axis=0)
    reach = jnp.concatenate([jnp.ones_like(leave[:1]), leave[:-1]], axis=0)  # P_{ic,j}
    return jnp.sum(jnp.where(obs.slot_valid[:, None], reach * gamma_j, 0.0), axis=0)

  def candidate_utility(self, obs, catalog, bandwidth, slot, weights):
    """(best first level, U) of window slot `slot`."""
    video = slot_videos(obs)[slot]
    c = obs.chunks_downloaded[slot]
    z = obs.play_ms[slot] // 1000
    pk = conditional_retention(obs, catalog, jnp.broadcast_to(c + jnp.arange(self.horizon),
                                                              (obs.slot_valid.shape[0],
                                                               self.horizon)),
                               z)[slot]
    prev_slot_level = jnp.where(slot > 0, obs.last_level[jnp.maximum(slot - 1, 0)], -1)
    prev = jnp.where(obs.last_level[slot] >= 0, obs.last_level[slot], prev_slot_level)
    terms = mpc.rollout(mpc.chunk_sizes_ahead(catalog, video, c, self.horizon),
                        catalog.bitrates_kbps, obs.buffer_ms[slot], bandwidth,
                        obs.num_chunks[slot] - c, prev, quality_weights=pk, smooth_weights=pk)
    first_s = terms.download_ms_k[:, 0] / 1000.0
    cross_ms = self.expected_stall_s(obs, catalog, first_s) * 1000.0
    stall_ms = cross_ms + jnp.sum(terms.stall_ms_k[:, 1:], axis=1)
    alpha, beta, gamma, theta = weights[0], weights[1], weights[2], weights[3]
    objective = mpc.weighted_objective(terms, alpha, beta, gamma, theta, stall_ms=stall_ms)
    return mpc.first_level(terms, objective)

  def act(self, key, policy_state, obs, catalog):
    del key
    sample, valid = est.observed_sample(obs)
    state = est.robust_update(policy_state, sample, valid)
    bandwidth = est.robust_bandwidth(state)
    ready = bandwidth > 0
    bandwidth = jnp.where(ready, bandwidth, 1.0)
    weights = self.objective_weights(obs)

    w = obs.slot_valid.shape[0]
    candidate = self.candidates(obs, catalog, bandwidth)
    levels, utility = jax.vmap(
        lambda s: self.candidate_utility(obs, catalog, bandwidth, s, weights))(
            jnp.arange(w, dtype=jnp.int32))
    utility = jnp.where(candidate, utility, -jnp.inf)
    slot = jnp.argmax(utility).astype(jnp.int32)  # first maximum: the lower slot
    action = choose(jnp.any(candidate), download(slot, levels[slot]), sleep(self.sleep_ms))
    action = choose(jnp.logical_or(obs.first_step, ~ready), download(0, 0), action)
    return action, state


@dataclasses.dataclass(frozen=True)
class PdasPersonalized(Pdas):
  """pdas_w: PDAS whose objective uses the session's weights obs.weights = (alpha, beta, gamma, theta).

  Everything else (max-buffer rule, sleep, bandwidth estimate) is Pdas's.
  """

  personalized: bool = True
