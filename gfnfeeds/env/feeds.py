"""FeedsEnv: the MMGC2022 short-video prefetch simulator as pure JAX functions.

Semantics follow ../shared/spec/SIMULATOR.md exactly (clean mode by default,
quirks 2 and 4 of its section 9 behind the static `reference_quirks` flag).
Time is integer milliseconds for playback; the network cursor integrates the
trace in float64 exactly as the reference does, so delays round identically.

Session model. Each session plays `num_videos` videos in order (absolute ids
0..num_videos-1, each mapped to a catalog video). The queue window is the
playing video plus the next `window - 1`. Per-video arrays in the state are
indexed by absolute id; the observation exposes them per window slot.

One decision step (`step_env`):
  1. the action is checked; an invalid one becomes a sleep of
     `params.invalid_sleep_ms` and is counted;
  2. quality/smoothness terms are computed before anything moves (SIMULATOR 5.2);
  3. a download integrates the trace from the session's cursor (SIMULATOR 5.3);
  4. playback consumes the action's wall time, with swipes and stalls (5.4);
  5. waste, rewards, metrics and the next observation are computed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from gfnfeeds.data.packing import Catalog, World
from gfnfeeds.env import environment
from gfnfeeds.env.preferences import PreferenceSampler, fixed_preferences
from gfnfeeds.numerics import exact_div, exact_mul

CHUNK_MS = 1000  # every chunk holds one second of video


@struct.dataclass
class EnvParams:
  """Everything that is not shape-defining; a pytree, so it can be vmapped or swapped.

  Attributes:
    catalog: client-visible video data.
    world: hidden traces and fixed users.
    preferences: sampler of the weights w per session.
    rtt_ms: dead time added to every chunk download.
    payload_portion: effective throughput / trace bandwidth.
    min_qoe: a session whose weighted QoE drops below this ends (aborted).
    invalid_sleep_ms: what an invalid action does instead: sleep this long.
    random_offset: start each session at a random row of its trace (else row 1).
    wall_clock_trace: sleeps and the RTT advance the trace cursor too (the
      reference advances it only during transmission).
    watch_from_bank: users come from world.watch_bank (else they are sampled
      from the retention curves).
    shuffle_videos: each session draws its videos uniformly from the catalog
      (else session video i is catalog video i mod catalog size, as MMGC).
  """

  catalog: Catalog
  world: World
  preferences: PreferenceSampler
  rtt_ms: Any = 80.0
  payload_portion: Any = 0.95
  min_qoe: Any = -1e4
  invalid_sleep_ms: Any = 500
  random_offset: Any = False
  wall_clock_trace: Any = False
  watch_from_bank: Any = True
  shuffle_videos: Any = False


@struct.dataclass
class Session:
  """What defines one session before it starts (hidden from policies but `weights`).

  Attributes:
    trace_index: int32, row of world.trace_* used.
    start_row: int32 >= 1, the cursor starts at (start_row, t[start_row - 1]).
    video_ids: int32 [num_videos], catalog index of each session video.
    watch_ms: int32 [num_videos], when the user swipes away from each video.
    weights: float64 [4], the user's (alpha, beta, gamma, theta).
  """

  trace_index: jnp.ndarray
  start_row: jnp.ndarray
  video_ids: jnp.ndarray
  watch_ms: jnp.ndarray
  weights: jnp.ndarray


@struct.dataclass
class Action:
  """download(slot, level) when sleep_ms == 0; sleep(sleep_ms) when sleep_ms > 0.

  `slot` is the window slot (0 = the playing video). sleep_ms < 0 is invalid.
  """

  slot: jnp.ndarray
  level: jnp.ndarray
  sleep_ms: jnp.ndarray


def download(slot, level) -> Action:
  return Action(slot=jnp.asarray(slot, jnp.int32), level=jnp.asarray(level, jnp.int32),
                sleep_ms=jnp.zeros_like(jnp.asarray(slot, jnp.int32)))


def sleep(ms) -> Action:
  ms = jnp.asarray(ms, jnp.int32)
  return Action(slot=jnp.zeros_like(ms), level=jnp.zeros_like(ms), sleep_ms=ms)


@struct.dataclass
class EnvState:
  session: Session
  ptr: jnp.ndarray                # network cursor: row index
  last_t: jnp.ndarray             # network cursor: time within the row (s)
  play_id: jnp.ndarray            # absolute id of the playing video (== num_videos when over)
  chunk_counter: jnp.ndarray      # [V] chunks downloaded
  buffer_ms: jnp.ndarray          # [V]
  timeline_ms: jnp.ndarray        # [V] how far the user has watched
  preload_bytes: jnp.ndarray      # [V] bytes downloaded per video
  last_level: jnp.ndarray         # [V] level of the newest chunk (-1: none)
  first_level: jnp.ndarray        # [V] level of chunk 0 (-1: none)
  last_watched_level: jnp.ndarray  # [V] level of chunk floor(w/1000) once downloaded (-1)
  pending_waste: jnp.ndarray      # [V] bytes of downloaded chunks past the watch time
  tput_history_mbps: jnp.ndarray  # [H] newest last
  delay_history_ms: jnp.ndarray   # [H] newest last
  history_count: jnp.ndarray
  last_delay_ms: jnp.ndarray
  last_rebuf_ms: jnp.ndarray
  last_bytes: jnp.ndarray
  last_end_of_video: jnp.ndarray
  last_was_download: jnp.ndarray
  last_invalid: jnp.ndarray
  quality: jnp.ndarray            # Mbps-s credited
  rebuffer_s: jnp.ndarray
  smoothness: jnp.ndarray         # Mbps
  megabits: jnp.ndarray
  qoe: jnp.ndarray                # alpha*quality - beta*rebuffer - gamma*smoothness
  bytes_downloaded: jnp.ndarray
  wasted_bytes: jnp.ndarray
  downloaded_ms: jnp.ndarray      # 1000 per download step (MMGC's total_downloaded_len)
  played_ms: jnp.ndarray
  rebuf_ms: jnp.ndarray
  wall_ms: jnp.ndarray
  dropped_ms: jnp.ndarray         # action time left over when the session ended
  startup_ms: jnp.ndarray
  invalid_actions: jnp.ndarray
  steps: jnp.ndarray
  aborted: jnp.ndarray


@struct.dataclass
class Observation:
  """Client-visible information only (SIMULATOR.md section 7), fixed shapes.

  Per window slot s (0 = playing video), valid where slot_valid:
    slot_video: catalog index of the video (-1 if none), to look up the Catalog.
    slot_position: absolute position of the video in the session.
  """

  slot_valid: jnp.ndarray         # [W] bool
  slot_video: jnp.ndarray         # [W] int32
  slot_position: jnp.ndarray      # [W] int32
  buffer_ms: jnp.ndarray          # [W] int32
  play_ms: jnp.ndarray            # [W] int32, the play timeline
  chunks_downloaded: jnp.ndarray  # [W] int32
  num_chunks: jnp.ndarray         # [W] int32
  last_level: jnp.ndarray         # [W] int32 (-1: none)
  preload_bytes: jnp.ndarray      # [W] float64
  next_chunk_bytes: jnp.ndarray   # [W, L] float64, 0 where nothing is left
  play_video_id: jnp.ndarray      # int32
  tput_history_mbps: jnp.ndarray  # [H] float64, newest last, 0 = no sample yet
  delay_history_ms: jnp.ndarray   # [H] float64
  history_count: jnp.ndarray      # int32
  last_delay_ms: jnp.ndarray
  last_rebuf_ms: jnp.ndarray
  last_bytes: jnp.ndarray
  last_end_of_video: jnp.ndarray
  last_was_download: jnp.ndarray
  last_invalid: jnp.ndarray
  first_step: jnp.ndarray
  weights: jnp.ndarray            # [4]
  action_mask: jnp.ndarray        # [W * L + len(sleep_choices_ms)] bool


def _onehot_set(arr, index, value, enable=True):
  """arr with arr[index] = value where enable (a vectorizable scatter for short arrays)."""
  hit = jnp.logical_and(jnp.arange(arr.shape[-1]) == index, enable)
  return jnp.where(hit, value, arr)


def _wrap_cursor(ptr, trace_len, first_time, next_last_t):
  wrapped = ptr >= trace_len
  return jnp.where(wrapped, 1, ptr), jnp.where(wrapped, first_time, next_last_t)


def transmit(world: World, trace_index, ptr, last_t, size_bytes, payload_portion):
  """Sends `size_bytes` from the cursor (ptr, last_t); SIMULATOR.md 5.3.

  Returns (elapsed_s, ptr, last_t). The arithmetic follows the reference step by
  step (sequential float64 accumulation, strict '>' test) so delays round alike.
  """
  carry, _ = _transmit_loop((world, payload_portion), (trace_index, size_bytes),
                            _transmit_start(ptr, last_t), None)
  return carry[3], carry[0], carry[1]


def _transmit_start(ptr, last_t):
  """The transmit loop's carry at the cursor: (ptr, last_t, sent, elapsed, done)."""
  zero = jnp.zeros((), jnp.float64)
  return (jnp.asarray(ptr, jnp.int32), jnp.asarray(last_t, jnp.float64), zero, zero,
          jnp.asarray(False))


def _transmit_loop(shared, lane, carry, max_rows: int | None):
  """Runs the transmit loop from `carry` over at most `max_rows` rows (None: to the end).

  shared = (world, payload_portion); lane = (trace_index, size_bytes). Returns
  (carry, finished), in the form `environment.batched_loop` takes.
  """
  world, payload_portion = shared
  trace_index, size_bytes = lane
  n = world.trace_len[trace_index]
  t0 = world.trace_times[trace_index, 0]

  def cond(c):
    return jnp.logical_not(c[4])

  def body(c):
    ptr, last_t, sent, elapsed, _ = c
    throughput = world.trace_mbps[trace_index, ptr] * 1e6 / 8.0
    t_row = world.trace_times[trace_index, ptr]
    slot = t_row - last_t
    payload = exact_mul(throughput * slot, payload_portion)  # summed next: no FMA
    finish = sent + payload > size_bytes
    # exact_div: XLA would otherwise multiply by a reciprocal under vmap and
    # lose the last bit that the ms rounding can depend on.
    fraction = exact_div(exact_div(size_bytes - sent, throughput), payload_portion)
    ptr_next, last_t_next = _wrap_cursor(ptr + 1, n, t0, t_row)
    return (jnp.where(finish, ptr, ptr_next),
            jnp.where(finish, last_t + fraction, last_t_next),
            jnp.where(finish, sent, sent + payload),
            jnp.where(finish, elapsed + fraction, elapsed + slot),
            finish)

  return environment.bounded_while(cond, body, carry, max_rows)


def advance_clock(world: World, trace_index, ptr, last_t, seconds):
  """Moves the cursor forward by `seconds` of wall time without sending (wall-clock mode)."""
  n = world.trace_len[trace_index]
  t0 = world.trace_times[trace_index, 0]

  def cond(c):
    return c[2] > 0

  def body(c):
    ptr, last_t, left = c
    t_row = world.trace_times[trace_index, ptr]
    slot = t_row - last_t
    inside = slot > left
    ptr_next, last_t_next = _wrap_cursor(ptr + 1, n, t0, t_row)
    return (jnp.where(inside, ptr, ptr_next), jnp.where(inside, last_t + left, last_t_next),
            jnp.where(inside, 0.0, left - slot))

  ptr, last_t, _ = jax.lax.while_loop(cond, body, (ptr, last_t, jnp.asarray(seconds, jnp.float64)))
  return ptr, last_t


def play(state: EnvState, duration_ms, num_videos: int):
  """Consumes `duration_ms` of wall time in playback; SIMULATOR.md 5.4 and 5.5.

  Returns (buffer_ms, timeline_ms, play_id, rebuf_ms, played_ms, dropped_ms, waste_bytes).
  Playback crosses swipes within the action; a stall makes the whole leftover
  time rebuffering.
  """
  carry, _ = _play_loop(num_videos, _play_lane(state), _play_start(state, duration_ms), None)
  return _play_result(carry, duration_ms)


def _play_lane(state: EnvState):
  return state.session.watch_ms, state.pending_waste


def _play_start(state: EnvState, duration_ms):
  """The playback loop's carry: (time left, play_id, buffer_ms, timeline_ms, stalled, waste)."""
  return (jnp.asarray(duration_ms, jnp.int32), state.play_id, state.buffer_ms,
          state.timeline_ms, jnp.asarray(False), jnp.zeros((), jnp.float64))


def _play_result(carry, duration_ms):
  t_left, play_id, buffer_ms, timeline_ms, stalled, waste = carry
  rebuf = jnp.where(stalled, t_left, 0)
  dropped = jnp.where(stalled, 0, t_left)
  played = duration_ms - t_left
  return buffer_ms, timeline_ms, play_id, rebuf, played, dropped, waste


def _play_loop(num_videos: int, lane, carry, max_videos: int | None):
  """Runs playback from `carry`, one iteration per video played into, at most `max_videos`.

  lane = (watch_ms [V], pending_waste [V]). Returns (carry, finished), in the
  form `environment.batched_loop` takes.
  """
  watch, pending_waste = lane

  def cond(c):
    t_left, play_id, _, _, stalled, _ = c
    return jnp.logical_and(jnp.logical_and(t_left > 0, jnp.logical_not(stalled)),
                           play_id < num_videos)

  def body(c):
    t_left, play_id, buffer_ms, timeline_ms, _, waste = c
    head = jnp.minimum(play_id, num_videos - 1)
    remain = watch[head] - timeline_ms[head]
    buf = buffer_ms[head]
    x = jnp.minimum(t_left, remain)
    played = jnp.minimum(buf, x)
    timeline_ms = _onehot_set(timeline_ms, head, timeline_ms[head] + played)
    buffer_ms = _onehot_set(buffer_ms, head, jnp.maximum(buf - x, 0))
    swipe = played == remain
    waste = waste + jnp.where(swipe, pending_waste[head], 0.0)
    return (t_left - played, play_id + swipe.astype(jnp.int32), buffer_ms, timeline_ms,
            buf - x < 0, waste)

  return environment.bounded_while(cond, body, carry, max_videos)


@dataclasses.dataclass(frozen=True)
class FeedsEnv(environment.Environment[EnvState, EnvParams]):
  """The short-video feeds environment.

  Static (shape-defining) settings are fields of this hashable object; data and
  everything else come in EnvParams.

  Attributes:
    num_videos: videos per session (MMGC: 7).
    window: queue window, the playing video and the next window-1 (MMGC: 5).
    history_len: throughput/delay samples kept in the observation.
    sleep_choices_ms: the sleep lengths of the discrete action set.
    reference_quirks: reproduce SIMULATOR.md section 9 items 2 and 4.
    max_steps: decisions after which a session is truncated.
    num_levels_hint: ladder size assumed by the discrete action set (checked
      against the catalog when observations are built).
  """

  num_videos: int = 7
  window: int = 5
  history_len: int = 8
  sleep_choices_ms: tuple[int, ...] = (500,)
  reference_quirks: bool = False
  max_steps: int = 4096
  num_levels_hint: int = 3
  # step_env_batch tuning (results never depend on them): a batch first runs every
  # session with transmit unrolled over this many trace rows and playback over this
  # many videos, then recomputes the few sessions that needed more with the exact
  # loops (BUILD_NOTES.md, environment speed).
  batch_transmit_rows: int = 6
  batch_play_videos: int = 2
  step_uses_key = False  # the dynamics are deterministic given the session

  # ----------------------------------------------------------------- params
  def make_params(self, catalog: Catalog, world: World,
                  preferences: PreferenceSampler | None = None, **kwargs) -> EnvParams:
    """EnvParams for a catalog and world; kwargs override the scalar settings.

    Users come from world.watch_bank when it holds fixed users, else they are
    sampled from the retention curves (override with watch_from_bank=...).
    """
    if world.watch_bank.shape[-1] != self.num_videos:
      raise ValueError(f"world.watch_bank has {world.watch_bank.shape[-1]} videos per session, "
                       f"the environment {self.num_videos}")
    prefs = fixed_preferences() if preferences is None else preferences
    has_users = not bool(np.any(np.asarray(world.watch_bank) < 0))
    if "watch_from_bank" not in kwargs:
      kwargs["watch_from_bank"] = has_users  # no fixed users: sample from retention
    elif kwargs["watch_from_bank"] is True and not has_users:
      raise ValueError("watch_from_bank=True but the world has no fixed users "
                       "(pack_world(..., watch_bank=None)); pass a watch_bank or sample them")
    return EnvParams(catalog=catalog, world=world, preferences=prefs, **kwargs)

  @property
  def num_actions(self) -> int:
    return self.window * self.num_levels_hint + len(self.sleep_choices_ms)

  def action_from_index(self, index) -> Action:
    """Maps a discrete action (slot * L + level, then the sleep choices) to an Action."""
    index = jnp.asarray(index, jnp.int32)
    n_dl = self.window * self.num_levels_hint
    sleeps = jnp.asarray(self.sleep_choices_ms, jnp.int32)
    is_sleep = index >= n_dl
    sleep_ms = jnp.where(is_sleep, sleeps[jnp.clip(index - n_dl, 0, len(self.sleep_choices_ms) - 1)],
                         0)
    # Out-of-range indices become an invalid sleep so they are counted, not clamped.
    sleep_ms = jnp.where(jnp.logical_or(index < 0, index >= self.num_actions), -1, sleep_ms)
    return Action(slot=jnp.where(is_sleep, 0, index // self.num_levels_hint),
                  level=jnp.where(is_sleep, 0, index % self.num_levels_hint), sleep_ms=sleep_ms)

  def action_space(self, params: EnvParams | None = None):
    return environment.Discrete(self.num_actions)

  def observation_space(self, params: EnvParams):
    w, l, h = self.window, params.catalog.num_levels, self.history_len
    inf = float("inf")
    return environment.Dict({
        "buffer_ms": environment.Box(0, inf, (w,), jnp.int32),
        "play_ms": environment.Box(0, inf, (w,), jnp.int32),
        "next_chunk_bytes": environment.Box(0, inf, (w, l), jnp.float64),
        "tput_history_mbps": environment.Box(0, inf, (h,), jnp.float64),
        "weights": environment.Box(0, inf, (4,), jnp.float64),
        "action_mask": environment.Box(0, 1, (self.num_actions,), jnp.bool_),
    })

  # ----------------------------------------------------------------- sessions
  def sample_session(self, key: jax.Array, params: EnvParams) -> Session:
    """Draws a session: trace, start row, videos, watch durations, preferences.

    All randomness comes from one uniform vector: the auto-reset runs inside
    every step, so its cost matters (see BUILD_NOTES.md).
    """
    world, catalog, v = params.world, params.catalog, self.num_videos
    u = jax.random.uniform(key, (3 + 4 * v + PreferenceSampler.NUM_UNIFORMS,), jnp.float64)
    u_watch, u_pref = u[3:3 + 4 * v].reshape(4, v), u[3 + 4 * v:]

    def pick(x, n):  # floor(x * n) as an index in [0, n)
      return jnp.minimum(jnp.floor(x * n).astype(jnp.int32), n - 1)

    trace_index = pick(u[0], world.num_traces)
    n_rows = world.trace_len[trace_index]
    start_row = jnp.where(params.random_offset, 1 + pick(u[1], n_rows - 1), 1).astype(jnp.int32)
    sequential = jnp.arange(v, dtype=jnp.int32) % catalog.num_videos
    shuffled = pick(u_watch[0], catalog.num_videos)
    video_ids = jnp.where(params.shuffle_videos, shuffled, sequential)
    watch_ms = jax.lax.cond(
        params.watch_from_bank,
        lambda: world.watch_bank[pick(u[2], world.num_users)].astype(jnp.int32),
        lambda: watch_from_uniforms(catalog, video_ids, u_watch[1], u_watch[2], u_watch[3]))
    return Session(trace_index=trace_index, start_row=start_row, video_ids=video_ids,
                   watch_ms=watch_ms, weights=params.preferences.from_uniforms(u_pref))

  def reset_env(self, key: jax.Array, params: EnvParams):
    return self.reset_to_session(self.sample_session(key, params), params)

  def reset_to_session(self, session: Session, params: EnvParams):
    """Starts the given session (for evaluation on explicit trace x user pairs)."""
    v, h = self.num_videos, self.history_len
    zi = jnp.zeros((), jnp.int32)
    zf = jnp.zeros((), jnp.float64)
    f = jnp.asarray(False)
    state = EnvState(
        session=session,
        ptr=jnp.asarray(session.start_row, jnp.int32),
        last_t=params.world.trace_times[session.trace_index, session.start_row - 1],
        play_id=zi,
        chunk_counter=jnp.zeros((v,), jnp.int32), buffer_ms=jnp.zeros((v,), jnp.int32),
        timeline_ms=jnp.zeros((v,), jnp.int32), preload_bytes=jnp.zeros((v,), jnp.float64),
        last_level=jnp.full((v,), -1, jnp.int32), first_level=jnp.full((v,), -1, jnp.int32),
        last_watched_level=jnp.full((v,), -1, jnp.int32),
        pending_waste=jnp.zeros((v,), jnp.float64),
        tput_history_mbps=jnp.zeros((h,), jnp.float64),
        delay_history_ms=jnp.zeros((h,), jnp.float64), history_count=zi,
        last_delay_ms=zi, last_rebuf_ms=zi, last_bytes=zf, last_end_of_video=f,
        last_was_download=f, last_invalid=f,
        quality=zf, rebuffer_s=zf, smoothness=zf, megabits=zf, qoe=zf,
        bytes_downloaded=zf, wasted_bytes=zf, downloaded_ms=zi, played_ms=zi, rebuf_ms=zi,
        wall_ms=zi, dropped_ms=zi, startup_ms=zi, invalid_actions=zi, steps=zi, aborted=f)
    return self.get_obs(state, params), state

  # ----------------------------------------------------------------- step
  def queue_len(self, play_id):
    return jnp.clip(self.num_videos - play_id, 0, self.window)

  def step_env(self, key: jax.Array, state: EnvState, action, params: EnvParams):
    del key  # the dynamics are deterministic given the session
    return self._outputs(self._transition(state, action, params), params)

  def step_env_batch(self, keys: jax.Array, state: EnvState, action, params: EnvParams):
    """`jax.vmap(step_env)` over a batch, bit for bit, with the slow minority handled apart.

    Under vmap, the trace integration and the playback loop run as many
    iterations as the slowest session of the batch: a download crosses one
    trace row at the median and ten or more in a few sessions, playback
    crosses a swipe in 2% of steps. Here both loops run bounded
    (`batch_transmit_rows`, `batch_play_videos`, unrolled) for every session and
    continue exactly only for the sessions that needed more
    (`environment.batched_loop`); the phases around them are the same code as
    `step_env`'s, vmapped.
    """
    del keys
    n = state.steps.shape[0]
    ctx, tx_lane, tx_carry = jax.vmap(self._before_transmit, in_axes=(0, 0, None))(
        state, action, params)
    shared = (params.world, params.payload_portion)
    tx_carry = environment.batched_loop(
        lambda lane, carry, bound: _transmit_loop(shared, lane, carry, bound), tx_lane, tx_carry,
        self.batch_transmit_rows, max(1, n // 16))
    ctx, play_lane, play_carry = jax.vmap(self._before_play, in_axes=(0, 0, 0, None))(
        state, ctx, tx_carry, params)
    play_carry = environment.batched_loop(
        lambda lane, carry, bound: _play_loop(self.num_videos, lane, carry, bound), play_lane,
        play_carry, self.batch_play_videos, max(1, n // 128))
    transition = jax.vmap(self._after_play, in_axes=(0, 0, 0, None))(state, ctx, play_carry,
                                                                    params)
    return jax.vmap(self._outputs, in_axes=(0, None))(transition, params)

  def _transition(self, state: EnvState, action, params: EnvParams):
    """One decision: (new state, reward, terminated, truncated, info).

    Three phases around the two loops (trace integration, playback), so that
    `step_env_batch` can run the loops batch-wide and the phases vmapped.
    """
    ctx, tx_lane, tx_carry = self._before_transmit(state, action, params)
    tx_carry, _ = _transmit_loop((params.world, params.payload_portion), tx_lane, tx_carry, None)
    ctx, play_lane, play_carry = self._before_play(state, ctx, tx_carry, params)
    play_carry, _ = _play_loop(self.num_videos, play_lane, play_carry, None)
    return self._after_play(state, ctx, play_carry, params)

  def _before_transmit(self, state: EnvState, action, params: EnvParams):
    """Validity, the scored terms and the download's bookkeeping: (ctx, transmit lane, carry)."""
    if not isinstance(action, Action):
      action = self.action_from_index(action)
    catalog, s = params.catalog, state.session
    num_levels = catalog.num_levels
    br = catalog.bitrates_kbps
    n_chunks_v = catalog.num_chunks[s.video_ids]  # [V]

    # 1. Validity. An invalid action is executed as a plain sleep.
    slot, level = jnp.asarray(action.slot, jnp.int32), jnp.asarray(action.level, jnp.int32)
    sleep_raw = jnp.asarray(action.sleep_ms)
    if jnp.issubdtype(sleep_raw.dtype, jnp.floating):
      # The reference truncates sleeps to whole ms; 0 < s < 1 (its 0 ms no-op) and
      # NaN are invalid here rather than silently becoming a download.
      bad_float = jnp.isnan(sleep_raw) | ((sleep_raw > 0) & (sleep_raw < 1))
      sleep_ms = jnp.where(bad_float, -1, jnp.trunc(jnp.nan_to_num(sleep_raw))).astype(jnp.int32)
    else:
      sleep_ms = sleep_raw.astype(jnp.int32)
    vid = state.play_id + slot
    vid_c = jnp.clip(vid, 0, self.num_videos - 1)
    c = state.chunk_counter[vid_c]
    dl_ok = ((slot >= 0) & (slot < self.queue_len(state.play_id)) & (level >= 0) &
             (level < num_levels) & (c < n_chunks_v[vid_c]))
    is_download = (sleep_ms == 0) & dl_ok
    invalid = (sleep_ms < 0) | ((sleep_ms == 0) & ~dl_ok)
    sleep_eff = jnp.where(invalid, jnp.asarray(params.invalid_sleep_ms, jnp.int32), sleep_ms)
    level_c = jnp.clip(level, 0, num_levels - 1)

    # 2. Quality and smoothness, computed before the environment moves (5.2).
    watch = s.watch_ms[vid_c]
    last_idx = watch // CHUNK_MS
    credited = is_download & (c <= last_idx)
    at_last = credited & (c == last_idx)
    q = br[level_c]
    quality_kbps = jnp.where(credited, q, 0.0)
    prev_vid = jnp.clip(vid_c - 1, 0, self.num_videos - 1)
    lwl = state.last_watched_level[prev_vid]
    cross_prev = jnp.where((vid_c > 0) & (lwl >= 0), jnp.abs(q - br[jnp.maximum(lwl, 0)]), 0.0)
    within = jnp.abs(q - br[jnp.maximum(state.last_level[vid_c], 0)])
    prev_term = jnp.where(c == 0, cross_prev, within)
    next_vid = jnp.clip(vid_c + 1, 0, self.num_videos - 1)
    next_has_first = ((vid_c + 1 < state.play_id + self.queue_len(state.play_id)) &
                      (state.chunk_counter[next_vid] > 0))
    next_br = br[jnp.maximum(state.first_level[next_vid], 0)]
    next_term = next_br if self.reference_quirks else jnp.abs(q - next_br)
    next_term = jnp.where(at_last & next_has_first, next_term, 0.0)
    smooth_kbps = jnp.where(credited, prev_term + next_term, 0.0)

    # 3. Bookkeeping recorded at the start of a download (levels, waste-to-be).
    size = jnp.where(is_download, catalog.chunk_sizes[s.video_ids[vid_c],
                                                      jnp.minimum(c, catalog.max_chunks - 1),
                                                      level_c], 0.0)
    beyond_watch = c >= (watch + CHUNK_MS - 1) // CHUNK_MS
    pending_waste = _onehot_set(state.pending_waste, vid_c,
                                state.pending_waste[vid_c] + size, is_download & beyond_watch)
    last_watched_level = _onehot_set(state.last_watched_level, vid_c, level_c, at_last)

    ctx = dict(is_download=is_download, invalid=invalid, sleep_eff=sleep_eff, vid_c=vid_c, c=c, level_c=level_c, quality_kbps=quality_kbps, smooth_kbps=smooth_kbps, size=size, pending_waste=pending_waste, last_watched_level=last_watched_level)
    return ctx, (s.trace_index, size), _transmit_start(state.ptr, state.last_t)

  def _before_play(self, state: EnvState, ctx: dict, tx_carry, params: EnvParams):
    """The action's wall time from the finished transmit: (ctx, playback lane, carry)."""
    world, s, is_download = params.world, state.session, ctx["is_download"]
    sleep_eff = ctx["sleep_eff"]
    # 4. Network (download only) and the action's wall time.
    ptr, last_t, elapsed_s = tx_carry[0], tx_carry[1], tx_carry[3]
    ptr = jnp.where(is_download, ptr, state.ptr)
    last_t = jnp.where(is_download, last_t, state.last_t)
    delay_ms = jnp.floor(exact_mul(elapsed_s, 1000.0) + params.rtt_ms + 0.5).astype(jnp.int32)
    duration_ms = jnp.where(is_download, delay_ms, sleep_eff)
    dead_s = jnp.where(is_download, params.rtt_ms / 1000.0, sleep_eff / 1000.0)
    ptr, last_t = jax.lax.cond(
        params.wall_clock_trace,
        lambda a: advance_clock(world, s.trace_index, a[0], a[1], a[2]),
        lambda a: (a[0], a[1]), (ptr, last_t, dead_s))

    # 5. Playback with swipes and stalls (the loop runs between the phases).
    state_pb = state.replace(pending_waste=ctx["pending_waste"])
    ctx = dict(ctx, ptr=ptr, last_t=last_t, delay_ms=delay_ms, duration_ms=duration_ms)
    return ctx, _play_lane(state_pb), _play_start(state_pb, duration_ms)

  def _after_play(self, state: EnvState, ctx: dict, play_carry, params: EnvParams):
    """Landing, rewards, history and the new state from the finished playback."""
    catalog, s = params.catalog, state.session
    n_chunks_v = catalog.num_chunks[s.video_ids]  # [V]
    (is_download, invalid, vid_c, c, level_c, quality_kbps, smooth_kbps, size, pending_waste,
     last_watched_level, ptr, last_t, delay_ms, duration_ms) = (
         ctx[k] for k in ("is_download", "invalid", "vid_c", "c", "level_c", "quality_kbps",
                          "smooth_kbps", "size", "pending_waste", "last_watched_level", "ptr",
                          "last_t", "delay_ms", "duration_ms"))
    buffer_ms, timeline_ms, play_id, rebuf_ms, played_ms, dropped_ms, waste = _play_result(
        play_carry, duration_ms)

    # 6. The downloaded chunk lands (unless its video was swiped away meanwhile).
    swiped_target = is_download & (vid_c < play_id)
    lands = is_download & ~swiped_target
    if self.reference_quirks:
      waste = waste + jnp.where(swiped_target, size, 0.0)
    buffer_ms = _onehot_set(buffer_ms, vid_c, buffer_ms[vid_c] + CHUNK_MS, lands)
    chunk_counter = _onehot_set(state.chunk_counter, vid_c, c + 1, is_download)
    last_level = _onehot_set(state.last_level, vid_c, level_c, is_download)
    first_level = _onehot_set(state.first_level, vid_c, level_c, is_download & (c == 0))
    preload_bytes = _onehot_set(state.preload_bytes, vid_c, state.preload_bytes[vid_c] + size,
                                is_download)
    over = play_id >= self.num_videos
    head = jnp.minimum(play_id, self.num_videos - 1)
    end_of_video = jnp.where(
        is_download, swiped_target | (chunk_counter[vid_c] >= n_chunks_v[vid_c]),
        over | (chunk_counter[head] >= n_chunks_v[head]))

    # 7. Rewards: the weighted objective increment and its components.
    # As the reference computes them, each product rounded on its own (numerics.exact_mul),
    # so the accumulators do not depend on how XLA fuses the surrounding program.
    alpha, beta, gamma, theta = s.weights[0], s.weights[1], s.weights[2], s.weights[3]
    quality = exact_div(quality_kbps, 1000.0)
    rebuffer = exact_div(rebuf_ms, 1000.0)
    smoothness = exact_div(smooth_kbps, 1000.0)
    megabits = exact_div(size * 8.0, 1e6)
    qoe_inc = exact_mul(alpha, quality) - exact_mul(beta, rebuffer) - exact_mul(gamma, smoothness)
    reward = qoe_inc - exact_mul(theta, megabits)
    qoe = state.qoe + qoe_inc
    aborted = qoe < params.min_qoe

    # 8. Throughput history (downloads only; RTT included like MMGC's samples).
    sample_mbps = megabits / jnp.maximum(delay_ms, 1) * 1000.0
    tput_hist = jnp.where(is_download, jnp.append(state.tput_history_mbps[1:], sample_mbps),
                          state.tput_history_mbps)
    delay_hist = jnp.where(is_download, jnp.append(state.delay_history_ms[1:],
                                                   delay_ms.astype(jnp.float64)),
                           state.delay_history_ms)

    new_state = EnvState(
        session=s, ptr=ptr, last_t=last_t, play_id=play_id, chunk_counter=chunk_counter,
        buffer_ms=buffer_ms, timeline_ms=timeline_ms, preload_bytes=preload_bytes,
        last_level=last_level, first_level=first_level, last_watched_level=last_watched_level,
        pending_waste=pending_waste, tput_history_mbps=tput_hist, delay_history_ms=delay_hist,
        history_count=jnp.minimum(state.history_count + is_download, self.history_len),
        last_delay_ms=duration_ms, last_rebuf_ms=rebuf_ms, last_bytes=size,
        last_end_of_video=end_of_video, last_was_download=is_download, last_invalid=invalid,
        quality=state.quality + quality, rebuffer_s=state.rebuffer_s + rebuffer,
        smoothness=state.smoothness + smoothness, megabits=state.megabits + megabits, qoe=qoe,
        bytes_downloaded=state.bytes_downloaded + size,
        wasted_bytes=state.wasted_bytes + waste,
        downloaded_ms=state.downloaded_ms + jnp.where(is_download, CHUNK_MS, 0),
        played_ms=state.played_ms + played_ms, rebuf_ms=state.rebuf_ms + rebuf_ms,
        wall_ms=state.wall_ms + duration_ms, dropped_ms=state.dropped_ms + dropped_ms,
        # Stalls before the first frame only: once this step has played anything, its
        # stall came after playback started and is ordinary rebuffering.
        startup_ms=state.startup_ms + jnp.where((state.played_ms == 0) & (played_ms == 0),
                                                rebuf_ms, 0),
        invalid_actions=state.invalid_actions + invalid, steps=state.steps + 1,
        aborted=aborted)

    terminated = over | aborted
    truncated = (new_state.steps >= self.max_steps) & ~terminated
    info = {
        "quality": quality, "rebuffer_s": rebuffer, "smoothness": smoothness,
        "megabits": megabits, "quality_kbps": quality_kbps, "smooth_kbps": smooth_kbps,
        "delay_ms": duration_ms, "rebuf_ms": rebuf_ms, "video_bytes": size,
        "wasted_bytes": waste, "end_of_video": end_of_video, "play_video_id": play_id,
        "invalid_action": invalid,
    }
    return new_state, reward, terminated, truncated, info

  def _outputs(self, transition, params: EnvParams):
    """step_env's 6-tuple from a transition (new state, reward, terminated, truncated, info)."""
    new_state, reward, terminated, truncated, info = transition
    info = dict(info, metrics=session_metrics(new_state, params, self.window))
    return self.get_obs(new_state, params), new_state, reward, terminated, truncated, info

  # ----------------------------------------------------------------- observation
  def get_obs(self, state: EnvState, params: EnvParams) -> Observation:
    """The client-visible view of `state`."""
    catalog, s = params.catalog, state.session
    position = state.play_id + jnp.arange(self.window, dtype=jnp.int32)
    valid = position < self.num_videos
    pos_c = jnp.clip(position, 0, self.num_videos - 1)
    video = s.video_ids[pos_c]
    n_chunks = catalog.num_chunks[video]
    counter = state.chunk_counter[pos_c]
    has_next = valid & (counter < n_chunks)
    next_bytes = catalog.chunk_sizes[video, jnp.minimum(counter, catalog.max_chunks - 1)]
    next_bytes = jnp.where(has_next[:, None], next_bytes, 0.0)
    dl_mask = jnp.repeat(has_next, catalog.num_levels)
    if catalog.num_levels != self.num_levels_hint:
      raise ValueError(f"catalog has {catalog.num_levels} levels, the environment's discrete "
                       f"action set {self.num_levels_hint} (FeedsEnv(num_levels_hint=...))")
    mask = jnp.concatenate([dl_mask, jnp.ones((len(self.sleep_choices_ms),), bool)])

    def per_slot(x, fill=0):
      return jnp.where(valid, x[pos_c], fill)

    return Observation(
        slot_valid=valid, slot_video=jnp.where(valid, video, -1), slot_position=position,
        buffer_ms=per_slot(state.buffer_ms), play_ms=per_slot(state.timeline_ms),
        chunks_downloaded=per_slot(state.chunk_counter), num_chunks=jnp.where(valid, n_chunks, 0),
        last_level=per_slot(state.last_level, -1), preload_bytes=per_slot(state.preload_bytes),
        next_chunk_bytes=next_bytes, play_video_id=state.play_id,
        tput_history_mbps=state.tput_history_mbps, delay_history_ms=state.delay_history_ms,
        history_count=state.history_count, last_delay_ms=state.last_delay_ms,
        last_rebuf_ms=state.last_rebuf_ms, last_bytes=state.last_bytes,
        last_end_of_video=state.last_end_of_video, last_was_download=state.last_was_download,
        last_invalid=state.last_invalid, first_step=state.steps == 0, weights=s.weights,
        action_mask=mask)


def watch_from_uniforms(catalog: Catalog, video_ids, u_index, u_keep, u_offset) -> jnp.ndarray:
  """Watch durations (ms) from the retention curves (the MMGC model's distribution).

  Chunk index k ~ p_k = r(k) - r(k+1) (alias method; k == N is a full watch of
  N * 1000 ms), else the swipe time is uniform in [k*1000, k*1000 + 1000).
  The three uniforms are independent, one per video each.
  """
  n = catalog.num_chunks[video_ids]
  j = jnp.minimum(jnp.floor(u_index * (n + 1)).astype(jnp.int32), n)
  keep = u_keep < catalog.alias_prob[video_ids, j]
  k = jnp.where(keep, j, catalog.alias_index[video_ids, j])
  partial_ms = jnp.floor((k + u_offset) * CHUNK_MS).astype(jnp.int32)
  return jnp.where(k >= n, n * CHUNK_MS, partial_ms)


def sample_watch_ms(key: jax.Array, catalog: Catalog, video_ids: jnp.ndarray) -> jnp.ndarray:
  """Watch durations (ms) for `video_ids` from the retention curves."""
  u = jax.random.uniform(key, (3,) + video_ids.shape, jnp.float64)
  return watch_from_uniforms(catalog, video_ids, u[0], u[1], u[2])


def session_metrics(state: EnvState, params: EnvParams, window: int = 5) -> dict:
  """Per-session metrics of SYSTEM.md section 5 from a (final) state.

  `window` is the environment's queue window: the download/watch ratio divides
  by the watch time of the videos that have entered the queue (all of them once
  the session has ended), as MMGC's total_watched_len.
  """
  s, catalog = state.session, params.catalog
  alpha, theta = s.weights[0], s.weights[3]
  n_chunks = catalog.num_chunks[s.video_ids]
  watched_chunks = jnp.sum(jnp.minimum(s.watch_ms // CHUNK_MS + 1, n_chunks))
  # exact_div/exact_mul: the same bits in every program (numerics), as the reference computes.
  ideal = exact_mul(exact_mul(alpha, exact_div(catalog.bitrates_kbps[-1], 1000.0)),
                    watched_chunks)
  bytes_ = state.bytes_downloaded
  entered = jnp.arange(s.watch_ms.shape[-1]) < state.play_id + window
  watched_ms = jnp.sum(jnp.where(entered, s.watch_ms, 0))
  return {
      "score": state.qoe - exact_mul(theta, state.megabits),
      "qoe": state.qoe,
      "quality": state.quality,
      "rebuffer_s": state.rebuffer_s,
      "smoothness": state.smoothness,
      "megabits": state.megabits,
      "bandwidth_bytes": bytes_,
      "bandwidth_mb": exact_div(bytes_, 1e6),
      "wasted_bytes": state.wasted_bytes,
      "wastage_pct": jnp.where(bytes_ > 0,
                               exact_div(100.0 * state.wasted_bytes, jnp.maximum(bytes_, 1.0)),
                               0.0),
      "download_watch_ratio": exact_div(state.downloaded_ms, jnp.maximum(watched_ms, 1)),
      "normalized_qoe": jnp.clip(exact_div(state.qoe, jnp.maximum(ideal, 1e-9)), 0.0, 1.0),
      "startup_delay_s": exact_div(state.startup_ms, 1000.0),
      "invalid_actions": state.invalid_actions,
      "decisions": state.steps,
      "aborted": state.aborted,
  }
