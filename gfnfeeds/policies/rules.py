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
from gfnfeeds.numerics import exact_div

STALL_MODELS = ("reach", "window", "first")  # Pdas.stall_model, see Pdas
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
  """r(chunk) of each slot's video, for chunk indices of shape [W, ...]; 0 at or past the end.

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
  """on_true where pred else on_false, field by field (no Python branching on traced values)."""
  return tree_select(pred, on_true, on_false)


def slot_mpc_level(obs, catalog, slot, bandwidth, horizon: int, weights, prev_level,
                   carry_prev: bool = False) -> jnp.ndarray:
  """First level of the best RobustMPC sequence over `slot`'s next chunks.

  weights = (quality, stall, smoothness, megabit) weights of the objective;
  prev_level = the level smoothness starts from (-1: no term on position 0).
  """
  video = slot_videos(obs)[slot]
  c = obs.chunks_downloaded[slot]
  terms = mpc.rollout(mpc.chunk_sizes_ahead(catalog, video, c, horizon), catalog.bitrates_kbps,
                      obs.buffer_ms[slot], bandwidth, obs.num_chunks[slot] - c, prev_level,
                      carry_prev=carry_prev)
  level, _ = mpc.first_level(terms, mpc.weighted_objective(terms, *weights))
  return level


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
  # A true division: at preload == q * quota exactly the pass must be q + 1.
  passes = jnp.floor(exact_div(obs.preload_bytes, quota_bytes)) + 1.0
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

    level = slot_mpc_level(obs, catalog, slot, bandwidth, self.horizon,
                           (1.0, self.rebuf_penalty, 1.0, 0.0),
                           jnp.maximum(obs.last_level[slot], 0), carry_prev=True)
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
    level = slot_mpc_level(obs, catalog, slot, bandwidth, self.horizon, self.weights,
                           obs.last_level[slot])
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
  3. Safety (`safety`, a reading of eq. 13 with P_{ic,ic} = 1): while the
     playing video has chunks left, a queued slot is no candidate when the
     playing buffer is below the predicted time to download the slot's next
     chunk at the lowest level. If no candidate: sleep 50 ms.
  4. Each candidate: exhaustive RobustMPC over its next K = min(5, left)
     chunks (all 3^K sequences):
       U = sum_k [alpha p_k q_k - gamma p_k |q_k - q_{k-1}| - beta Gamma_k] - theta Mb,
     p_k = p_i(m + k), q in Mbps, Gamma_k in s, (alpha, beta, gamma, theta) =
     (1, 1.85, 1, 0.5). Gamma_k is the cross-video expected stall of eq. (13)
     for downloading position k (`stall_model`):
       * "reach" (default, `reach_stall_s`): at every position, with the
         window's buffers rolled forward: the playing video's drains by the
         download time T_k of every position, whichever video is downloaded,
         and the candidate's gains 1 s. stay_j = p_j(m_j | z_j) at j's first
         missing chunk m_j (the user stalls on j iff still there when its
         buffer runs out), P_0 = 1, P_j = prod_{l<j} (1 - stay_l),
         Gamma_k = sum_j P_j stay_j max(T_k - b_j, 0);
       * "window": the same roll-out with the paper's literal
         stay_j = p_j(z_j + ceil(T_k) | z_j) (`window_stall_s`);
       * "first": the paper's Gamma for position 0 only and the candidate's
         own-buffer stall for later positions (BASELINES.md's recommended
         form; it rolls a queued video's buffer down as if it were playing
         and lets the playing video starve on low bandwidth).
     The candidate keeps its best first level (ties: last maximal sequence).
  5. Download the candidate with the largest U (ties: the lower slot).

  Interpretations of what the paper leaves open (also in notes_policies.md):
    * C is in MB/s (the MMGC sample unit), b_th and b_max in seconds; T_max
      and T are size / C with samples that include the RTT, as RobustMPC;
    * K = 5 (fewer when fewer chunks remain); U sums the K positions as
      Algorithm 1 says (no normalization by K);
    * previous level for the smoothness of the first position: the
      candidate's last downloaded level; for its chunk 0, the newest level of
      the video in the slot before it; none for slot 0 at chunk 0;
    * stall and bandwidth terms are not weighted by p_k (eq. 1 charges every
      byte; eq. 13 carries its own probabilities);
    * bandwidth: one error and one estimate per new sample (clean RobustMPC);
    * first decision (no sample yet): video 0 at level 0;
    * the max-buffer and safety rules do not depend on the weights
      (PdasPersonalized changes only the objective).

  Attributes:
    horizon: K, the static MPC horizon.
    epsilon, lambda1, lambda2: the b_th constants.
    sleep_ms: tau, the sleep when no video qualifies.
    weights: (alpha, beta, gamma, theta) of U.
    personalized: use obs.weights instead of `weights` (PdasPersonalized).
    stall_model: "reach" (default), "window" or "first", see above.
    safety: apply the safety rule of step 3.

  policy_state: estimators.EstimatorState.
  """

  horizon: int = mpc.DEFAULT_HORIZON
  epsilon: float = 3.5
  lambda1: float = 0.3
  lambda2: float = 0.15
  sleep_ms: int = 50
  weights: tuple[float, float, float, float] = MMGC_WEIGHTS
  personalized: bool = False
  stall_model: str = "reach"
  safety: bool = True

  def __post_init__(self):
    if self.stall_model not in STALL_MODELS:
      raise ValueError(f"stall_model must be one of {STALL_MODELS}, got {self.stall_model!r}")

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
    p_next = conditional_retention(obs, catalog, c, obs.play_ms // 1000)
    top = catalog.chunk_sizes[video, jnp.clip(c, 0, catalog.max_chunks - 1), -1]
    t_max = top / 1e6 / bandwidth
    b_th = self.epsilon * jnp.exp(-self.lambda1 * bandwidth - self.lambda2 * jnp.arange(w))
    return jnp.maximum(p_next * t_max, b_th)

  def unsafe(self, obs, catalog, bandwidth):
    """bool [W]: queued slots barred by the safety rule (all False unless `safety`).

    While the playing video has chunks left, a queued slot is barred when the
    playing buffer (s) is below the predicted time to download that slot's
    next chunk at the lowest level: any download of it would stall the
    playing video (eq. 13 with P_{ic,ic} = 1).
    """
    w = obs.slot_valid.shape[0]
    if not self.safety:
      return jnp.zeros((w,), bool)
    video = slot_videos(obs)
    low = catalog.chunk_sizes[video, jnp.clip(obs.chunks_downloaded, 0, catalog.max_chunks - 1), 0]
    t_min = low / 1e6 / bandwidth
    head_busy = slots_with_chunks(obs)[0]
    return (jnp.arange(w) >= 1) & head_busy & (obs.buffer_ms[0] / 1000.0 < t_min)

  def candidates(self, obs, catalog, bandwidth):
    """bool [W]: slots allowed to download now (chunks left, buffer under b_max, safe)."""
    return (slots_with_chunks(obs)
            & (obs.buffer_ms / 1000.0 <= self.max_buffer_s(obs, catalog, bandwidth))
            & ~self.unsafe(obs, catalog, bandwidth))

  def stall_weights(self, obs, catalog, download_s):
    """Eq. (13)'s P_{ic,j} stay_j per slot for download times `download_s`: [W, *download_s.shape].

    stay_j = p_j(z_j + ceil(T)) (the user still on video j after the
    ceil(T) chunks played during the download), P_{ic,0} = 1 and
    P_{ic,j} = prod_{l<j} (1 - stay_l). Empty slots weigh 0.
    """
    w = obs.slot_valid.shape[0]
    extra = (None,) * download_s.ndim
    z = (obs.play_ms // 1000)[(slice(None),) + extra]
    k = jnp.ceil(download_s).astype(jnp.int32)[None]
    stay = conditional_retention(obs, catalog, z + k, jnp.broadcast_to(z, (w,) + download_s.shape))
    valid = obs.slot_valid[(slice(None),) + extra]
    stay = jnp.where(valid, stay, 0.0)
    leave = jnp.cumprod(1.0 - stay, axis=0)
    reach = jnp.concatenate([jnp.ones_like(leave[:1]), leave[:-1]], axis=0)
    return jnp.where(valid, reach * stay, 0.0)

  def expected_stall_s(self, obs, catalog, download_s):
    """Eq. (13): the expected stall (s) of downloads taking `download_s` seconds (any shape)."""
    extra = (None,) * download_s.ndim
    buf = (obs.buffer_ms / 1000.0)[(slice(None),) + extra]
    gap = jnp.maximum(download_s[None] - buf, 0.0)
    return jnp.sum(self.stall_weights(obs, catalog, download_s) * gap, axis=0)

  def window_stall_s(self, obs, catalog, download_s_table, sequences, active, slot):
    """Eq. (13) at every position, the window's buffers rolled forward: [S] seconds.

    download_s_table [H, L] are the predicted download times per position and
    level; position k of sequence s adds sum_j P_j stay_j max(T_k - b_j, 0)
    as eq. (13) does for k = 0; between positions the playing video's buffer
    drains by T_k and the candidate's buffer gains the 1-s chunk.
    """
    w = obs.slot_valid.shape[0]
    n_seq, h = sequences.shape
    weights = self.stall_weights(obs, catalog, download_s_table)  # [W, H, L]
    buf = jnp.broadcast_to((obs.buffer_ms / 1000.0)[:, None], (w, n_seq))
    is_target = (jnp.arange(w) == slot)[:, None]
    is_head = (jnp.arange(w) == 0)[:, None]
    total = jnp.zeros((n_seq,), jnp.float64)
    for i in range(h):  # unrolled over the horizon
      level = sequences[:, i]
      t = jnp.where(active[i], download_s_table[i, level], 0.0)[None, :]
      total = total + jnp.sum(weights[:, i, level] * jnp.maximum(t - buf, 0.0), axis=0)
      buf = jnp.where(is_head & active[i], jnp.maximum(buf - t, 0.0), buf)
      buf = jnp.where(is_target & active[i], buf + 1.0, buf)
    return total

  def reach_stall_s(self, obs, catalog, download_s_table, sequences, active, slot):
    """Eq. (13) at every position, stay read at the first missing chunk: [S] seconds.

    The user stalls on window video j iff still on j when its buffer runs
    out, i.e. on reaching its first missing chunk m_j; the probability is
    eq. (4)'s p_j(m_j | z_j), the very p of the max-buffer rule. During the
    candidate's roll-out m_j is fixed for every slot but the candidate, whose
    m grows by one per position. Position k adds
    sum_j P_j stay_j max(T_k - b_j, 0), P_0 = 1, P_j = prod_{l<j} (1 - stay_l);
    between positions the playing video's buffer drains by T_k (clamped at 0)
    and the candidate's buffer gains the 1-s chunk. For the playing video as
    candidate the j = 0 term is RobustMPC's own-buffer stall, weighted by
    the chance that the user is still there.
    """
    w = obs.slot_valid.shape[0]
    n_seq, h = sequences.shape
    is_target = jnp.arange(w) == slot
    chunk = (obs.chunks_downloaded[:, None]
             + jnp.where(is_target[:, None], jnp.arange(h)[None, :], 0))  # [W, H]
    z = jnp.broadcast_to((obs.play_ms // 1000)[:, None], (w, h))
    stay = jnp.where(obs.slot_valid[:, None], conditional_retention(obs, catalog, chunk, z), 0.0)
    leave = jnp.cumprod(1.0 - stay, axis=0)
    reach = jnp.concatenate([jnp.ones_like(leave[:1]), leave[:-1]], axis=0)
    weight = jnp.where(obs.slot_valid[:, None], reach * stay, 0.0)  # [W, H]
    buf = jnp.broadcast_to((obs.buffer_ms / 1000.0)[:, None], (w, n_seq))
    is_target = is_target[:, None]
    is_head = (jnp.arange(w) == 0)[:, None]
    total = jnp.zeros((n_seq,), jnp.float64)
    for i in range(h):  # unrolled over the horizon
      t = jnp.where(active[i], download_s_table[i, sequences[:, i]], 0.0)[None, :]
      total = total + jnp.sum(weight[:, i:i + 1] * jnp.maximum(t - buf, 0.0), axis=0)
      buf = jnp.where(is_head & active[i], jnp.maximum(buf - t, 0.0), buf)
      buf = jnp.where(is_target & active[i], buf + 1.0, buf)
    return total

  def candidate_utility(self, obs, catalog, bandwidth, slot, weights):
    """(best first level, U) of window slot `slot` (meaningful where it is a candidate)."""
    video = slot_videos(obs)[slot]
    c = obs.chunks_downloaded[slot]
    ahead = c + jnp.arange(self.horizon)
    w = obs.slot_valid.shape[0]
    pk = conditional_retention(obs, catalog, jnp.broadcast_to(ahead, (w, self.horizon)),
                               jnp.broadcast_to((obs.play_ms // 1000)[:, None],
                                                (w, self.horizon)))[slot]
    prev_slot_level = jnp.where(slot > 0, obs.last_level[jnp.maximum(slot - 1, 0)], -1)
    prev = jnp.where(obs.last_level[slot] >= 0, obs.last_level[slot], prev_slot_level)
    sizes = mpc.chunk_sizes_ahead(catalog, video, c, self.horizon)
    terms = mpc.rollout(sizes, catalog.bitrates_kbps, obs.buffer_ms[slot], bandwidth,
                        obs.num_chunks[slot] - c, prev, quality_weights=pk, smooth_weights=pk)
    download_s = mpc.download_ms_table(sizes, bandwidth) / 1000.0  # [H, L]
    active = jnp.arange(self.horizon) < terms.horizon
    if self.stall_model == "first":
      # Gamma depends on the first level only: L evaluations, then a gather.
      first = self.expected_stall_s(obs, catalog, download_s[0])[terms.sequences[:, 0]]
      stall_ms = first * 1000.0 + jnp.sum(terms.stall_ms_k[:, 1:], axis=1)
    elif self.stall_model == "window":
      stall_ms = 1000.0 * self.window_stall_s(obs, catalog, download_s, terms.sequences, active,
                                              slot)
    else:
      stall_ms = 1000.0 * self.reach_stall_s(obs, catalog, download_s, terms.sequences, active,
                                             slot)
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
