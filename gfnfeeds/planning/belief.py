"""The belief model and plan scorer: what a plan is worth, seen from the client.

A planner may read the Observation and the Catalog only (SYSTEM.md section 2).
From them this module builds M belief scenarios of the near future and runs a
plan of discrete actions through each with FeedsEnv's own `step_env` (one
implementation of the dynamics, reused, not re-written):

* Bandwidth. The throughput samples in the observation include the RTT; they
  are converted to net rates (megabits / (delay - RTT)). The harmonic mean of
  the newest `history` net rates is the centre (robust to a single fast sample,
  as in RobustMPC); the spread is the standard deviation of the log net rates
  in the history window, clipped to [min_spread, max_spread]. Scenario m has the
  constant bandwidth centre * exp(spread * z_m) with z_m the (m + 1/2)/M normal
  quantile: deterministic strata, so M small still covers pessimistic and
  optimistic futures. Before any sample: `prior_mbps` and `prior_spread`.
* Users. Watch durations are drawn from the Catalog's retention curves, the
  playing video's conditioned on the user still watching at the current play
  position (inverse CDF of the continuous watch-time law restricted to
  [position, end]). One draw per scenario, shared by every plan scored against
  the scenario (common random numbers make plan comparisons low-variance).
* State. The scenario's session holds the `window` videos of the current queue
  (virtual ids 0..window-1); buffers, play positions, chunk counters, levels and
  bytes are copied from the observation. What the observation does not show is
  approximated and documented: the level of each queued video's first chunk is
  taken as its last level (the observation gives the last), the level of the
  previous video's last watched chunk is unknown (no cross-video smoothness
  term for the playing video's next first chunk), pending waste starts at 0.
  Slots past the end of the session get watch time 0, so playback swipes
  through them and the scenario ends like the real session.

A plan is H tokens of the environment's discrete action set, each naming a
video of the CURRENT window (slot at decision time) and a level, or a sleep.
When a scenario has swiped past a plan's target video, that token is skipped
(no time, no cost): it is what a client executing the plan would do, and it
lets a plan that waits show the value of waiting (its later downloads vanish
in the futures where the user leaves).

The outcome is the vector of reward components (quality Mbps-s, rebuffering s,
smoothness Mbps, megabits) averaged over scenarios, so U_w = w . components
with signs (+, -, -, -): re-scoring for other users is a dot product.
What the horizon cannot see is one explicit term, `terminal_weight` times
`terminal_components`: over a window of `terminal_horizon_ms` of playback from
the decision, the outcome of fetching just in time what the plan left unfetched
(quality, the stall from a fluid model, megabits), minus the credit of chunks
the plan prefetched outside the window (they could be fetched later, only if
watched). It makes plans comparable: deferring the playing video's chunks is
not free, and prefetching far ahead is worth only its stall insurance.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct
from jax.scipy.special import ndtri

from gfnfeeds.data.packing import Catalog, World
from gfnfeeds.env.feeds import (CHUNK_MS, EnvParams, EnvState, FeedsEnv, Observation, Session,
                                download, sleep)
from gfnfeeds.env.preferences import fixed_preferences

NUM_COMPONENTS = 4  # quality, rebuffer_s, smoothness, megabits
COMPONENT_SIGNS = (1.0, -1.0, -1.0, -1.0)
_FOREVER_S = 1e7  # one trace row long enough for any plan: transmit loops once


@dataclasses.dataclass(frozen=True)
class BeliefConfig:
  """Settings of the belief model (hashable: part of the controller's static config).

  Attributes:
    num_scenarios: M, futures each plan is executed in.
    history: net-rate samples averaged for the bandwidth centre.
    prior_mbps: bandwidth centre before the first download of a session.
    prior_spread: log-bandwidth spread before two samples exist.
    min_spread, max_spread: clip of the measured log-bandwidth spread.
    rtt_ms: round-trip time the client assumes per chunk request.
    terminal_weight: weight of the continuation term (0 disables it: the ablation).
    terminal_horizon_ms: playback from the decision that the continuation covers.
    swipe_in_flight: the continuation is not clairvoyant about the swipe (the
      playing video's chunk in flight at the swipe is wasted and delays the next
      video; BUILD_NOTES section 6). Off in the committed checkpoint, which was
      trained without it.
    robust_discount: divide the bandwidth centre by 1 + the largest relative error
      of the harmonic-mean prediction over the newest `history` samples
      (RobustMPC's discount, which PDAS uses): pessimistic where the bandwidth is
      erratic.
    terminal_videos: videos the continuation covers from the one playing at the
      plan's end (2: it and the next; more matters when the window spans several
      short watches).
  """

  num_scenarios: int = 8
  history: int = 5
  prior_mbps: float = 1.5
  prior_spread: float = 0.5
  min_spread: float = 0.1
  max_spread: float = 1.0
  rtt_ms: float = 80.0
  terminal_weight: float = 1.0
  terminal_horizon_ms: int = 4000
  swipe_in_flight: bool = False
  robust_discount: bool = False
  terminal_videos: int = 2

  def __post_init__(self):
    if self.terminal_videos < 2:
      raise ValueError("BeliefConfig.terminal_videos must be >= 2 (the continuation covers the "
                       f"playing video and the next), got {self.terminal_videos}")


@struct.dataclass
class Belief:
  """M scenarios of one decision (leaves have a leading [M] axis).

  Attributes:
    state: EnvState of the planning environment (window videos).
    world: World with one constant-bandwidth trace.
    bandwidth_mbps: float64 [M].
  """

  state: EnvState
  world: World
  bandwidth_mbps: jnp.ndarray


def planning_env(env: FeedsEnv) -> FeedsEnv:
  """The environment a plan runs in: the same dynamics over the window's videos only."""
  return dataclasses.replace(env, num_videos=env.window, max_steps=2**30)


def utility(components: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
  """U_w = alpha q - beta r - gamma s - theta mb for components [..., 4] and weights [..., 4]."""
  signs = jnp.asarray(COMPONENT_SIGNS, components.dtype)
  return jnp.sum(components * signs * weights.astype(components.dtype), axis=-1)


def net_rate_samples(obs: Observation, rtt_ms: float) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(net Mbps [H], valid [H]) from the observation's throughput and delay history."""
  hist = obs.tput_history_mbps.shape[-1]
  valid = jnp.arange(hist) >= hist - obs.history_count
  megabits = obs.tput_history_mbps * obs.delay_history_ms / 1000.0
  net_ms = jnp.maximum(obs.delay_history_ms - rtt_ms, 1.0)
  rate = jnp.where(valid, megabits / net_ms * 1000.0, 1.0)
  return rate, valid & (rate > 0)


def bandwidth_scenarios(obs: Observation, config: BeliefConfig) -> jnp.ndarray:
  """float64 [M] constant bandwidths (Mbps) of the belief scenarios."""
  rate, valid = net_rate_samples(obs, config.rtt_ms)
  hist = rate.shape[-1]
  recent = valid & (jnp.arange(hist) >= hist - config.history)
  n_recent = jnp.sum(recent)
  inv = jnp.sum(jnp.where(recent, 1.0 / rate, 0.0))
  centre = jnp.where(n_recent > 0, n_recent / jnp.maximum(inv, 1e-12), config.prior_mbps)
  if config.robust_discount:
    centre = centre / (1.0 + prediction_error(rate, valid, config.history))
  n = jnp.sum(valid)
  logs = jnp.where(valid, jnp.log(rate), 0.0)
  mean = jnp.sum(logs) / jnp.maximum(n, 1)
  var = jnp.sum(jnp.where(valid, jnp.square(logs - mean), 0.0)) / jnp.maximum(n - 1, 1)
  spread = jnp.where(n >= 2, jnp.clip(jnp.sqrt(var), config.min_spread, config.max_spread),
                     config.prior_spread)
  m = config.num_scenarios
  z = ndtri((jnp.arange(m, dtype=jnp.float64) + 0.5) / m)
  return centre * jnp.exp(spread * z)


def prediction_error(rate: jnp.ndarray, valid: jnp.ndarray, history: int) -> jnp.ndarray:
  """RobustMPC's max relative error |C_hat_i - C_i| / C_i over the newest `history` samples.

  C_hat_i is the harmonic mean of the (up to `history`) valid samples before sample i;
  samples without a predecessor are skipped; 0 when no error can be computed.
  """
  hist = rate.shape[-1]
  idx = jnp.arange(hist)
  # before[i, j]: sample j is one of the `history` samples preceding sample i.
  before = (idx[None, :] < idx[:, None]) & (idx[None, :] >= idx[:, None] - history) & valid[None, :]
  n_before = jnp.sum(before, axis=1)
  inv = jnp.sum(jnp.where(before, 1.0 / rate[None, :], 0.0), axis=1)
  pred = n_before / jnp.maximum(inv, 1e-12)
  err = jnp.abs(pred - rate) / rate
  use = valid & (n_before > 0) & (idx >= hist - history)
  return jnp.max(jnp.where(use, err, 0.0))


def conditional_watch_ms(u: jnp.ndarray, catalog: Catalog, video: jnp.ndarray,
                         position_ms: jnp.ndarray) -> jnp.ndarray:
  """A watch duration (ms) of `video` drawn from its retention law given watch > position_ms.

  The law is the environment's: chunk index k with P(K <= k) = watch_cdf[k], a
  partial watch uniform inside chunk k, k = N a full watch of N seconds. `u`
  is one uniform in [0, 1); inverse-CDF sampling on [F(position), 1).
  """
  cdf = catalog.watch_cdf[video]
  n = catalog.num_chunks[video]
  last = cdf.shape[-1] - 1

  def before(k):  # P(K < k)
    return jnp.where(k > 0, cdf[jnp.clip(k - 1, 0, last)], 0.0)

  k0 = jnp.clip(position_ms // CHUNK_MS, 0, last)
  p_k0 = cdf[k0] - before(k0)
  frac0 = (position_ms - k0 * CHUNK_MS) / CHUNK_MS
  floor_p = jnp.where(k0 < n, before(k0) + p_k0 * frac0, 1.0)
  target = floor_p + u * (1.0 - floor_p)
  k = jnp.minimum(jnp.sum(cdf < target), last)
  lo = before(k)
  p_k = cdf[k] - lo
  frac = jnp.clip((target - lo) / jnp.maximum(p_k, 1e-12), 0.0, 1.0)
  partial = jnp.floor((k + frac) * CHUNK_MS).astype(jnp.int32)
  watch = jnp.where(k >= n, n * CHUNK_MS, partial)
  # Still watching at position_ms: the swipe comes strictly later (or at the end).
  return jnp.clip(watch, jnp.minimum(position_ms + 1, n * CHUNK_MS), n * CHUNK_MS)


def build_belief(key: jax.Array, env: FeedsEnv, obs: Observation, catalog: Catalog,
                 config: BeliefConfig) -> Belief:
  """The M belief scenarios of the decision at `obs` (reads the observation and Catalog only)."""
  m, w = config.num_scenarios, env.window
  bandwidth = bandwidth_scenarios(obs, config)
  valid = obs.slot_valid
  video = jnp.where(valid, obs.slot_video, 0)
  u = jax.random.uniform(key, (m, w), jnp.float64)
  watch = jax.vmap(jax.vmap(conditional_watch_ms, in_axes=(0, None, 0, 0)),
                   in_axes=(0, None, None, None))(u, catalog, video, obs.play_ms)
  watch = jnp.where(valid[None, :], watch, 0)

  times = jnp.broadcast_to(jnp.asarray([0.0, _FOREVER_S], jnp.float64), (m, 1, 2))
  world = World(trace_times=times,
                trace_mbps=jnp.broadcast_to(bandwidth[:, None, None], (m, 1, 2)),
                trace_len=jnp.full((m, 1), 2, jnp.int32),
                watch_bank=jnp.full((m, 1, w), -1, jnp.int32))

  zi = jnp.zeros((), jnp.int32)
  zf = jnp.zeros((), jnp.float64)
  f = jnp.asarray(False)
  last_level = jnp.where(valid, obs.last_level, -1)

  def one(watch_m):
    session = Session(trace_index=zi, start_row=jnp.ones((), jnp.int32), video_ids=video,
                      watch_ms=watch_m, weights=obs.weights)
    return EnvState(
        session=session, ptr=jnp.ones((), jnp.int32), last_t=zf, play_id=zi,
        # Empty slots (past the session's end) have nothing left to download.
        chunk_counter=jnp.where(valid, obs.chunks_downloaded, catalog.num_chunks[video]),
        buffer_ms=jnp.where(valid, obs.buffer_ms, 0), timeline_ms=jnp.where(valid, obs.play_ms, 0),
        preload_bytes=jnp.where(valid, obs.preload_bytes, 0.0), last_level=last_level,
        first_level=last_level, last_watched_level=jnp.full((w,), -1, jnp.int32),
        pending_waste=jnp.zeros((w,), jnp.float64),
        tput_history_mbps=obs.tput_history_mbps, delay_history_ms=obs.delay_history_ms,
        history_count=obs.history_count, last_delay_ms=zi, last_rebuf_ms=zi, last_bytes=zf,
        last_end_of_video=f, last_was_download=f, last_invalid=f,
        quality=zf, rebuffer_s=zf, smoothness=zf, megabits=zf, qoe=zf, bytes_downloaded=zf,
        wasted_bytes=zf, downloaded_ms=zi, played_ms=zi, rebuf_ms=zi, wall_ms=zi, dropped_ms=zi,
        startup_ms=zi, invalid_actions=zi, steps=zi, aborted=f)

  return Belief(state=jax.vmap(one)(watch), world=world, bandwidth_mbps=bandwidth)


def _scenario_params(catalog: Catalog, world: World, config: BeliefConfig) -> EnvParams:
  # The belief bandwidth is already a net rate: payload portion 1, the client's RTT.
  return EnvParams(catalog=catalog, world=world, preferences=fixed_preferences(),
                   rtt_ms=config.rtt_ms, payload_portion=1.0, watch_from_bank=False)


def run_plan(env: FeedsEnv, state: EnvState, world: World, bandwidth_mbps, plan: jnp.ndarray,
             catalog: Catalog, config: BeliefConfig) -> tuple[jnp.ndarray, EnvState]:
  """Executes one plan (int32 [H] tokens, -1 = none) in one scenario.

  Returns (components float64 [4], final state): the plan's own outcome from
  the environment's step function, plus `terminal_weight` times the terminal
  term (`terminal_components`). `env` is the full environment (its discrete
  action set defines the tokens); the plan runs in `planning_env(env)`.
  """
  penv = planning_env(env)
  params = _scenario_params(catalog, world, config)
  levels = env.num_levels_hint
  n_download = env.window * levels
  sleeps = jnp.asarray(env.sleep_choices_ms, jnp.int32)

  def body(st, token):
    is_download = (token >= 0) & (token < n_download)
    slot = token // levels - st.play_id  # window slots move when the user swipes
    skip = (token < 0) | (is_download & (slot < 0)) | (st.play_id >= penv.num_videos)
    sleep_ms = sleeps[jnp.clip(token - n_download, 0, sleeps.shape[0] - 1)]
    action = jax.tree.map(lambda a, b: jnp.where(is_download, a, b),
                          download(jnp.maximum(slot, 0), token % levels), sleep(sleep_ms))
    _, nxt, _, _, _, info = penv.step_env(None, st, action, params)
    video = jnp.clip(token // levels, 0, penv.num_videos - 1)  # virtual id = decision-time slot
    fetched = is_download & ~skip & ~info["invalid_action"]
    record = (fetched, video, st.chunk_counter[video], token % levels)
    return jax.tree.map(lambda a, b: jnp.where(skip, a, b), st, nxt), record

  final, records = jax.lax.scan(body, state, plan)
  components = jnp.stack([final.quality - state.quality, final.rebuffer_s - state.rebuffer_s,
                          final.smoothness - state.smoothness, final.megabits - state.megabits])
  terminal = terminal_components(penv, state, final, records, catalog, bandwidth_mbps, config)
  return components + config.terminal_weight * terminal, final


def _window_end_ms(penv: FeedsEnv, start: EnvState, watch: jnp.ndarray, horizon_ms) -> jnp.ndarray:
  """int [V]: per virtual video, the play position where the window of `horizon_ms`
  of playback from the decision ends (<= 0: the window ends before the video starts)."""
  left = jnp.maximum(watch - start.timeline_ms, 0)  # playback each video still has
  before = jnp.cumsum(left) - left  # playback of the earlier videos
  return jnp.where(jnp.arange(penv.num_videos) == 0, start.timeline_ms[0] + horizon_ms,
                   horizon_ms - before)


def terminal_components(penv: FeedsEnv, start: EnvState, state: EnvState, records, catalog: Catalog,
                        bandwidth_mbps, config: BeliefConfig) -> jnp.ndarray:
  """float64 [4]: what a plan leaves to the future, as outcome components.

  The window is the next `terminal_horizon_ms` of PLAYBACK from the decision in
  the scenario (across its swipes): the same set of chunks for every plan.
    * Continuation: the window's chunks the plan did not fetch are fetched just
      in time, in playback order, at each video's current level (the lowest if
      none), from the plan's end. Fluid model: a chunk costs size / bandwidth +
      RTT and is needed once the playback ahead of it has played out; the stall
      is the largest lateness. Their quality and megabits are counted too, so a
      plan that defers the playing video's chunks still pays for them.
    * Deferral credit: a chunk the plan fetched OUTSIDE the window could equally
      be fetched later, just in time, and only if the user gets there; so its
      quality and, if watched, its megabits are taken back (at the fetched
      level). What remains of such a prefetch is its true marginal effect: the
      megabits wasted when the user never gets there, and the time it took.
    * With `swipe_in_flight`, not clairvoyant about the swipe: the playing
      video's chunk in flight when the user swipes inside the window is wasted
      and delays the next video.
  Without this term a short plan defers the playing video's big chunks and
  prefetches far-ahead chunks (their cost is a sure bandwidth charge but their
  quality is credited at download), and starves the playing video.
  """
  v = penv.num_videos
  watch = state.session.watch_ms
  window_end = _window_end_ms(penv, start, watch, config.terminal_horizon_ms)
  credited_end = (watch // CHUNK_MS + 1) * CHUNK_MS  # the env credits chunk k iff k <= w // 1000

  # Deferral credit of the plan's fetches outside the window.
  fetched, video, chunk, level = records
  outside = fetched & (chunk * CHUNK_MS >= window_end[video])
  watched = chunk * CHUNK_MS < credited_end[video]
  size_mb = catalog.chunk_sizes[state.session.video_ids[video],
                                jnp.minimum(chunk, catalog.max_chunks - 1), level] * 8.0 / 1e6
  back_quality = jnp.sum(jnp.where(outside & watched, catalog.bitrates_kbps[level] / 1000.0, 0.0))
  back_megabits = jnp.sum(jnp.where(outside & watched, size_mb, 0.0))

  # Continuation over the window, from the video playing at the plan's end.
  count = -(-config.terminal_horizon_ms // CHUNK_MS) + 1
  span = config.terminal_videos
  ids = state.play_id + jnp.arange(span)
  ok = ids < v
  idc = jnp.minimum(ids, v - 1)
  vid = state.session.video_ids[idc]
  lvl = jnp.maximum(state.last_level[idc], 0)
  c = state.chunk_counter[idc]
  j = c[:, None] + jnp.arange(count)[None, :]  # [span, count]
  mb = catalog.chunk_sizes[vid[:, None], jnp.minimum(j, catalog.max_chunks - 1),
                           lvl[:, None]] * 8.0 / 1e6
  # Playback time from the plan's end until chunk j of each video is needed.
  left = jnp.where(ok, jnp.maximum(watch[idc] - state.timeline_ms[idc], 0), 0)
  offset = jnp.cumsum(left) - left  # playback of the covered videos before each
  due = offset[:, None] + state.buffer_ms[idc][:, None] + jnp.arange(count)[None, :] * CHUNK_MS
  end = jnp.minimum(window_end[idc], watch[idc])
  needed = (ok[:, None] & (j < catalog.num_chunks[vid][:, None]) &
            (j * CHUNK_MS < end[:, None]))
  fetch = jnp.where(needed, mb / bandwidth_mbps * 1000.0 + config.rtt_ms, 0.0)
  # The continuation does not know when the user swipes: it keeps fetching the
  # playing video, so when the swipe falls in the window the chunk after the
  # last watched one is in flight (if not fetched yet): wasted megabits, and time
  # spent before the next video's first chunk can start. Only a prefetch of the
  # next video hedges against it (without this, every scenario's continuation
  # is clairvoyant about the swipe, and prefetching never looks useful).
  in_flight = -(-watch[idc[0]] // CHUNK_MS)  # first chunk the user never plays
  wasted = (config.swipe_in_flight & ok[1] & (watch[idc[0]] < window_end[idc[0]]) &
            (c[0] <= in_flight) & (in_flight < catalog.num_chunks[vid[0]]))
  wasted_mb = jnp.where(wasted, catalog.chunk_sizes[
      vid[0], jnp.minimum(in_flight, catalog.max_chunks - 1), lvl[0]] * 8.0 / 1e6, 0.0)
  wasted_ms = jnp.where(wasted, wasted_mb / bandwidth_mbps * 1000.0 + config.rtt_ms, 0.0)
  fetch = fetch.at[1, 0].add(wasted_ms).reshape(-1)  # before the next video's chunks
  lateness = jnp.where(needed.reshape(-1), jnp.cumsum(fetch) - due.reshape(-1), 0.0)
  stall_s = jnp.maximum(jnp.max(lateness), 0.0) / 1000.0
  credited = needed & (j * CHUNK_MS < credited_end[idc][:, None])
  quality = jnp.sum(jnp.where(credited, (catalog.bitrates_kbps[lvl] / 1000.0)[:, None], 0.0))
  megabits = jnp.sum(jnp.where(needed, mb, 0.0)) + wasted_mb
  return jnp.stack([quality - back_quality, stall_s, jnp.zeros_like(stall_s),
                    megabits - back_megabits])


def score_plans(env: FeedsEnv, belief: Belief, plans: jnp.ndarray, catalog: Catalog,
                config: BeliefConfig) -> jnp.ndarray:
  """float64 [K, 4]: mean outcome components of each plan (int32 [K, H]) over the scenarios."""
  def per_scenario(state, world, bw):
    return jax.vmap(lambda p: run_plan(env, state, world, bw, p, catalog, config)[0])(plans)

  comps = jax.vmap(per_scenario)(belief.state, belief.world, belief.bandwidth_mbps)  # [M, K, 4]
  return jnp.mean(comps, axis=0)
