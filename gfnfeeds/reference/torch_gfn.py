"""A PyTorch reference of the feeds GFlowNet training step (a throughput peer, optional extra).

It performs the same work as one `gfnfeeds.training.gfn_trainer.make_update`
step, written the way a typical research codebase would write it: a PyTorch
network, NumPy features, and the plain-Python reference simulator
(`gfnfeeds.reference.simulator`) for the sessions and the belief scenarios.
It needs the optional `torch` extra; importing this module without torch works,
building a trainer raises a clear error.

One update (`TorchReferenceTrainer.update`):
  1. rollout: `rollout_steps` decisions in each of `num_sessions` live
     `ReferenceSimulator` sessions (auto-reset; sessions drawn like
     `FeedsEnv.sample_session`: trace, random start row, videos, watch durations
     from the retention curves, preferences from the archetype mixture). Per
     decision, as `GFNController.decide`:
       a. the observation features in NumPy (`observation_features_np`, the same
          definitions as `gfnfeeds.policies.gfn.observation_features`) and the
          preference features;
       b. K plans of H tokens sampled autoregressively with the torch network on
          the plan DAG (`PlanDAG`'s masks: a download token while its window slot
          has chunks left after the plan's earlier downloads, sleeps except as
          the first token while the playing video is stalled with chunks left,
          only the exit after H tokens; epsilon-uniform exploration, temperature).
          The network runs on all B x K rows of a rollout step at once, at each
          of the H + 1 plan states (exit included), as the JAX sampler does;
       c. M belief scenarios from the observation (`gfnfeeds.planning.belief`:
          constant bandwidths from the harmonic-mean centre and the log spread,
          watch durations drawn from the retention law conditioned on the play
          position), each a re-constructed `ReferenceSimulator` over the window's
          videos; every plan is executed in every scenario by stepping a copy of
          the scenario simulator through its tokens (a token names a window slot
          at decision time; it is skipped once the scenario has swiped past that
          video), plus the same terminal term (`terminal_components`) in Python;
       d. U_w = w . (components x signs), argmax, and the best plan's first
          token is executed in the real reference session.
  2. relabelling with `relabel` extra preference vectors per decision;
  3. teacher-forced replay of all N (1 + R) K plans (one network call on every
     visited plan state), the trajectory-balance loss with log R = U_w / tau,
     global-norm clipping and Adam (network and log Z step sizes).

Network: the same architecture as `MLPPolicy` (trunk of ReLU layers on
[plan features, observation features + preference features], a forward-logits
head over num_tokens + 1 actions, a separate log Z MLP(64) on the conditioning).
Numerical parity with JAX is not a goal (different PRNGs and initialisation);
the plan scorer is exact (`score_plan` equals `belief.run_plan` to float
rounding, tests/test_torch_reference.py).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Optional, Sequence

import numpy as np

from gfnfeeds.reference.simulator import CHUNK_MS, ReferenceSession, ReferenceSimulator

try:  # the optional `torch` extra
  import torch
  from torch import nn
except ImportError:  # pragma: no cover - exercised only without torch
  torch = None
  nn = None

WEIGHT_HIGH = (1.5, 6.0, 2.0, 1.5)  # gfnfeeds.env.preferences.WEIGHT_HIGH (feature scale)
COMPONENT_SIGNS = np.asarray([1.0, -1.0, -1.0, -1.0])
_FOREVER_S = 1e7
# The phases of one update that `TorchReferenceTrainer.phase_s` times: observation features and
# plan sampling (1a-b), belief scenarios, plan scoring and the argmax (1c-d), the live sessions'
# steps and resets, and relabelling, loss, backward and Adam (2-3).
PHASES = ("proposal", "scoring", "environment", "learning")


def torch_missing() -> Optional[str]:
  """None when torch imports, else the reason."""
  return None if torch is not None else "torch is not installed (the optional `torch` extra)"


def _require_torch():
  if torch is None:
    raise ImportError("gfnfeeds.reference.torch_gfn needs PyTorch: pip install 'gfnfeeds[torch]'")


# ----------------------------------------------------------------- static settings and data
@dataclasses.dataclass(frozen=True)
class TorchGFNSettings:
  """What the JAX `GFNTrainSettings` holds, as plain numbers."""

  window: int = 5
  levels: int = 3
  sleep_choices_ms: tuple = (500,)
  num_videos: int = 7
  history_len: int = 8
  max_steps: int = 4096
  horizon: int = 2
  num_candidates: int = 10
  hidden: tuple = (256, 256)
  epsilon: float = 0.05
  temperature: float = 1.0
  candidates: str = "iid"  # or "distinct": K different plans (GFNController.candidates)
  sleep_while_stalled: bool = False  # GFNController.sleep_while_stalled
  # belief model
  num_scenarios: int = 8
  history: int = 5
  prior_mbps: float = 1.5
  prior_spread: float = 0.5
  min_spread: float = 0.1
  max_spread: float = 1.0
  belief_rtt_ms: float = 80.0
  terminal_weight: float = 1.0
  terminal_horizon_ms: int = 4000
  swipe_in_flight: bool = False
  terminal_videos: int = 2
  # training
  reward_temperature: float = 0.25
  num_sessions: int = 32
  rollout_steps: int = 8
  relabel: int = 1
  learning_rate: float = 1e-3
  log_z_learning_rate: float = 1e-2
  max_grad_norm: float = 10.0

  @property
  def num_tokens(self) -> int:
    return self.window * self.levels + len(self.sleep_choices_ms)

  @property
  def num_actions(self) -> int:
    return self.num_tokens + 1

  @property
  def feature_dim(self) -> int:
    return self.horizon * self.num_tokens + self.horizon + 1

  @property
  def obs_dim(self) -> int:
    return self.window * (4 + 1 + (self.levels + 1) + self.levels + 3) + 6

  @property
  def cond_dim(self) -> int:
    return self.obs_dim + 4

  @classmethod
  def from_jax(cls, settings) -> "TorchGFNSettings":
    """From a `gfnfeeds.training.gfn_trainer.GFNTrainSettings` (the TB loss only)."""
    if settings.loss != "tb":
      raise ValueError(f"the torch reference implements the TB loss, not {settings.loss!r}")
    c, env, b = settings.controller, settings.controller.env, settings.controller.belief
    if c.condition != "user":
      raise ValueError("the torch reference conditions on the user's weights only")
    if c.candidates not in ("iid", "distinct"):
      raise ValueError(f"the torch reference draws 'iid' or 'distinct' candidates, not "
                       f"{c.candidates!r}")
    return cls(window=env.window, levels=env.num_levels_hint,
               sleep_choices_ms=tuple(env.sleep_choices_ms), num_videos=env.num_videos,
               history_len=env.history_len, max_steps=env.max_steps, horizon=c.horizon,
               num_candidates=c.num_candidates, hidden=tuple(c.hidden), epsilon=c.epsilon,
               temperature=c.temperature, candidates=c.candidates,
               sleep_while_stalled=c.sleep_while_stalled,
               num_scenarios=b.num_scenarios, history=b.history,
               prior_mbps=b.prior_mbps, prior_spread=b.prior_spread, min_spread=b.min_spread,
               max_spread=b.max_spread, belief_rtt_ms=b.rtt_ms,
               terminal_weight=b.terminal_weight, terminal_horizon_ms=b.terminal_horizon_ms,
               swipe_in_flight=b.swipe_in_flight, terminal_videos=b.terminal_videos,
               reward_temperature=settings.reward_temperature,
               num_sessions=settings.num_sessions, rollout_steps=settings.rollout_steps,
               relabel=settings.relabel, learning_rate=settings.learning_rate,
               log_z_learning_rate=settings.log_z_learning_rate,
               max_grad_norm=settings.max_grad_norm)


@dataclasses.dataclass
class ReferenceData:
  """Catalog, traces, users and preferences as NumPy arrays and Python lists."""

  chunk_sizes: np.ndarray        # [V, C, L] bytes
  video_chunks: list             # [V] -> [chunk][level] int bytes (ReferenceSession layout)
  num_chunks: np.ndarray         # [V]
  retention: np.ndarray          # [V, C+1]
  watch_cdf: np.ndarray          # [V, C+1]
  bitrates_kbps: tuple
  traces: list                   # [(times list, mbps list)]
  pref_means: np.ndarray         # [A, 4]
  pref_probs: np.ndarray         # [A]
  pref_jitter: np.ndarray        # [4]
  pref_low: np.ndarray
  pref_high: np.ndarray
  rtt_ms: float = 80.0
  payload: float = 0.95
  min_qoe: float = -1e4
  invalid_sleep_ms: int = 500
  random_offset: bool = True
  shuffle_videos: bool = False

  @classmethod
  def from_env_params(cls, params) -> "ReferenceData":
    """From the JAX `EnvParams` (the same catalog, traces and preference sampler)."""
    cat, world, prefs = params.catalog, params.world, params.preferences
    sizes = np.asarray(cat.chunk_sizes, np.float64)
    n = np.asarray(cat.num_chunks)
    times, mbps, lens = (np.asarray(world.trace_times), np.asarray(world.trace_mbps),
                         np.asarray(world.trace_len))
    if bool(np.asarray(params.watch_from_bank)):
      raise ValueError("the torch reference samples users from the retention curves "
                       "(watch_from_bank=False)")
    if bool(np.asarray(params.wall_clock_trace)):
      raise ValueError("the torch reference runs the default trace clock (wall_clock_trace=False)")
    return cls(
        chunk_sizes=sizes,
        video_chunks=[sizes[v, :n[v]].astype(np.int64).tolist() for v in range(len(n))],
        num_chunks=n.astype(np.int64), retention=np.asarray(cat.retention, np.float64),
        watch_cdf=np.asarray(cat.watch_cdf, np.float64),
        bitrates_kbps=tuple(float(b) for b in np.asarray(cat.bitrates_kbps)),
        traces=[(times[i, :lens[i]].tolist(), mbps[i, :lens[i]].tolist())
                for i in range(len(lens))],
        pref_means=np.asarray(prefs.means, np.float64), pref_probs=np.asarray(prefs.probs),
        pref_jitter=np.asarray(prefs.jitter), pref_low=np.asarray(prefs.low),
        pref_high=np.asarray(prefs.high), rtt_ms=float(np.asarray(params.rtt_ms)),
        payload=float(np.asarray(params.payload_portion)),
        min_qoe=float(np.asarray(params.min_qoe)),
        invalid_sleep_ms=int(np.asarray(params.invalid_sleep_ms)),
        random_offset=bool(np.asarray(params.random_offset)),
        shuffle_videos=bool(np.asarray(params.shuffle_videos)))

  def sample_weights(self, rng: np.random.Generator) -> np.ndarray:
    """One preference vector: archetype, then log-normal jitter (the JAX sampler's law)."""
    u = rng.random(5)
    arch = min(int(np.sum(np.cumsum(self.pref_probs) <= u[0])), len(self.pref_means) - 1)
    radius = np.sqrt(-2.0 * np.log1p(-u[1:3]))
    angle = 2.0 * np.pi * u[3:5]
    noise = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])
    return np.clip(self.pref_means[arch] * np.exp(self.pref_jitter * noise), self.pref_low,
                   self.pref_high)

  def sample_watch_ms(self, rng: np.random.Generator, video: int) -> int:
    """A watch duration from the video's retention law (chunk index, then uniform inside)."""
    cdf = self.watch_cdf[video]
    n = int(self.num_chunks[video])
    k = min(int(np.searchsorted(cdf[:n + 1], rng.random(), side="right")), n)
    return n * CHUNK_MS if k >= n else int(math.floor((k + rng.random()) * CHUNK_MS))


# ----------------------------------------------------------------- observations
@dataclasses.dataclass
class ObsView:
  """The client-visible observation of one decision (the fields of `Observation` it needs)."""

  slot_valid: np.ndarray        # [W] bool
  slot_video: np.ndarray        # [W] catalog index (-1 if none)
  buffer_ms: np.ndarray         # [W]
  play_ms: np.ndarray           # [W]
  chunks_downloaded: np.ndarray  # [W]
  num_chunks: np.ndarray        # [W]
  last_level: np.ndarray        # [W] (-1: none)
  preload_bytes: np.ndarray     # [W]
  next_chunk_bytes: np.ndarray  # [W, L]
  tput_history_mbps: np.ndarray  # [H]
  delay_history_ms: np.ndarray  # [H]
  history_count: int
  last_rebuf_ms: int
  first_step: bool
  weights: np.ndarray           # [4]

  @classmethod
  def from_observation(cls, obs) -> "ObsView":
    """From one JAX `Observation` (for tests and cross-checks)."""
    a = lambda x: np.asarray(x)  # noqa: E731
    return cls(slot_valid=a(obs.slot_valid), slot_video=a(obs.slot_video),
               buffer_ms=a(obs.buffer_ms), play_ms=a(obs.play_ms),
               chunks_downloaded=a(obs.chunks_downloaded), num_chunks=a(obs.num_chunks),
               last_level=a(obs.last_level), preload_bytes=a(obs.preload_bytes),
               next_chunk_bytes=a(obs.next_chunk_bytes),
               tput_history_mbps=a(obs.tput_history_mbps),
               delay_history_ms=a(obs.delay_history_ms),
               history_count=int(obs.history_count), last_rebuf_ms=int(obs.last_rebuf_ms),
               first_step=bool(obs.first_step), weights=a(obs.weights).astype(np.float64))

  def remaining(self) -> np.ndarray:
    """int [W]: chunks left per window slot (0 for empty slots)."""
    return np.where(self.slot_valid, self.num_chunks - self.chunks_downloaded, 0)

  def sleep_allowed(self) -> bool:
    """`gfnfeeds.policies.gfn.sleep_allowed`: False while the playing video is stalled
    with chunks left."""
    return not (self.buffer_ms[0] <= 0 and self.remaining()[0] > 0)


def _normal_quantiles(m: int) -> np.ndarray:
  nd = statistics.NormalDist()
  return np.asarray([nd.inv_cdf((i + 0.5) / m) for i in range(m)])


def bandwidth_scenarios_np(view: ObsView, s: TorchGFNSettings) -> np.ndarray:
  """float64 [M]: `belief.bandwidth_scenarios` in NumPy."""
  hist = view.tput_history_mbps.shape[-1]
  valid = np.arange(hist) >= hist - view.history_count
  megabits = view.tput_history_mbps * view.delay_history_ms / 1000.0
  net_ms = np.maximum(view.delay_history_ms - s.belief_rtt_ms, 1.0)
  rate = np.where(valid, megabits / net_ms * 1000.0, 1.0)
  valid = valid & (rate > 0)
  recent = valid & (np.arange(hist) >= hist - s.history)
  n_recent = int(np.sum(recent))
  centre = (n_recent / max(float(np.sum(1.0 / rate[recent])), 1e-12) if n_recent > 0
            else s.prior_mbps)
  n = int(np.sum(valid))
  if n >= 2:
    logs = np.log(rate[valid])
    var = np.sum(np.square(logs - logs.mean())) / max(n - 1, 1)
    spread = float(np.clip(np.sqrt(var), s.min_spread, s.max_spread))
  else:
    spread = s.prior_spread
  return centre * np.exp(spread * _normal_quantiles(s.num_scenarios))


def observation_features_np(view: ObsView, data: ReferenceData, s: TorchGFNSettings,
                            bandwidth: Optional[np.ndarray] = None) -> np.ndarray:
  """float32 [F]: `gfnfeeds.policies.gfn.observation_features` in NumPy."""
  valid = view.slot_valid
  vf = valid.astype(np.float64)
  video = np.where(valid, view.slot_video, 0)
  counter = view.chunks_downloaded
  n = np.maximum(view.num_chunks, 1)
  ret = data.retention[video]
  last = ret.shape[-1] - 1
  k0 = np.clip(view.play_ms // CHUNK_MS, 0, last)
  rows = np.arange(len(video))
  base = np.maximum(ret[rows, k0], 1e-6)
  chances = [np.clip(ret[rows, np.clip(counter + o, 0, last)] / base, 0.0, 1.0)
             for o in range(3)]
  levels = s.levels
  onehot = np.zeros((len(video), levels + 1))
  onehot[rows, view.last_level + 1] = 1.0
  per_slot = np.concatenate([
      vf[:, None],
      (np.minimum(view.buffer_ms, 30_000) / 10_000.0)[:, None],
      (np.minimum(view.play_ms, 120_000) / 30_000.0)[:, None],
      (counter / n)[:, None],
      (np.minimum(view.num_chunks - counter, 60) / 20.0)[:, None],
      onehot, view.next_chunk_bytes * 8.0 / 1e6 / 2.0, np.stack(chances, axis=-1),
  ], axis=-1) * vf[:, None]
  bw = bandwidth_scenarios_np(view, s) if bandwidth is None else bandwidth
  m = bw.shape[0]
  centre = math.sqrt(bw[0] * bw[m - 1]) if m > 1 else bw[0]
  spread = math.log(bw[m - 1] / bw[0]) / 4.0 if m > 1 else 0.0
  glob = np.asarray([
      math.log(max(centre, 1e-3)) / 2.0, spread,
      view.history_count / view.tput_history_mbps.shape[-1],
      min(view.last_rebuf_ms, 5000) / 1000.0, float(view.first_step), vf.sum() / vf.shape[0]])
  return np.concatenate([per_slot.reshape(-1), glob]).astype(np.float32)


def weight_features_np(weights) -> np.ndarray:
  return (np.asarray(weights, np.float64) / np.asarray(WEIGHT_HIGH)).astype(np.float32)


# ----------------------------------------------------------------- belief scenarios
def conditional_watch_ms_np(u: np.ndarray, data: ReferenceData, video: int,
                            position_ms: int) -> np.ndarray:
  """int [M]: `belief.conditional_watch_ms` for uniforms u [M]."""
  cdf = data.watch_cdf[video]
  n = int(data.num_chunks[video])
  last = cdf.shape[-1] - 1

  def before(k):
    return np.where(k > 0, cdf[np.clip(k - 1, 0, last)], 0.0)

  k0 = int(np.clip(position_ms // CHUNK_MS, 0, last))
  p_k0 = cdf[k0] - before(k0)
  frac0 = (position_ms - k0 * CHUNK_MS) / CHUNK_MS
  floor_p = before(k0) + p_k0 * frac0 if k0 < n else 1.0
  target = floor_p + u * (1.0 - floor_p)
  k = np.minimum(np.searchsorted(cdf, target, side="left"), last)  # = sum(cdf < target)
  lo = before(k)
  p_k = cdf[k] - lo
  frac = np.clip((target - lo) / np.maximum(p_k, 1e-12), 0.0, 1.0)
  partial = np.floor((k + frac) * CHUNK_MS).astype(np.int64)
  watch = np.where(k >= n, n * CHUNK_MS, partial)
  return np.clip(watch, min(position_ms + 1, n * CHUNK_MS), n * CHUNK_MS)


@dataclasses.dataclass
class Scenario:
  """One belief scenario: a reference simulator of the window's videos at the decision."""

  sim: ReferenceSimulator
  bandwidth_mbps: float
  watch_ms: list
  start_timeline: list


def scenario_from_view(view: ObsView, data: ReferenceData, s: TorchGFNSettings,
                       bandwidth_mbps: float, watch_ms: Sequence[int]) -> Scenario:
  """The scenario simulator of `belief.build_belief` for one bandwidth and watch draw.

  Virtual video i is window slot i at decision time (valid slots only: the empty
  slots past the session's end only let the scenario end there, as here). Its
  state is the observation's; the first-chunk level of a queued video is taken as
  its last level, and the previous video's last watched level is unknown, as in
  the JAX belief model.
  """
  n = int(np.sum(view.slot_valid))
  vids = [int(v) for v in view.slot_video[:n]]
  watch = [int(w) for w in watch_ms[:n]]
  session = ReferenceSession(
      trace_times=[0.0, _FOREVER_S], trace_mbps=[float(bandwidth_mbps)] * 2,
      chunk_sizes=[data.video_chunks[v] for v in vids], watch_ms=watch,
      bitrates_kbps=data.bitrates_kbps, weights=tuple(float(x) for x in view.weights),
      window=s.window, rtt_ms=s.belief_rtt_ms, payload=1.0, start_row=1,
      min_qoe=-math.inf, invalid_sleep_ms=data.invalid_sleep_ms)
  sim = ReferenceSimulator(session)
  # The simulator has no "start from this state" constructor; its state is plain lists.
  sim._counter = [int(c) for c in view.chunks_downloaded[:n]]
  sim._buffer = [int(b) for b in view.buffer_ms[:n]]
  sim._timeline = [int(t) for t in view.play_ms[:n]]
  sim._preload = [int(p) for p in view.preload_bytes[:n]]
  sim._levels = [[int(lv)] * int(c) for lv, c in zip(view.last_level[:n],
                                                     view.chunks_downloaded[:n])]
  return Scenario(sim=sim, bandwidth_mbps=float(bandwidth_mbps), watch_ms=watch,
                  start_timeline=list(sim._timeline))


def clone_simulator(sim: ReferenceSimulator) -> ReferenceSimulator:
  """A copy whose mutable per-video state is independent (the session data is shared)."""
  new = object.__new__(ReferenceSimulator)
  new.__dict__.update(sim.__dict__)
  new._counter = list(sim._counter)
  new._levels = [list(lv) for lv in sim._levels]
  new._buffer = list(sim._buffer)
  new._timeline = list(sim._timeline)
  new._preload = list(sim._preload)
  new._last_chunk_level = list(sim._last_chunk_level)
  return new


def score_plan(scenario: Scenario, plan: Sequence[int], data: ReferenceData,
               s: TorchGFNSettings) -> np.ndarray:
  """float64 [4]: `belief.run_plan`'s components of one plan in one scenario.

  The plan's own outcome from stepping a copy of the scenario simulator, plus
  `terminal_weight` times the terminal term, in plain Python.
  """
  sim = clone_simulator(scenario.sim)
  levels, n_dl = s.levels, s.window * s.levels
  n = sim.num_videos
  quality = rebuffer = smooth = megabits = 0.0
  records = []  # (video, chunk, level) of the plan's fetches
  for token in plan:
    token = int(token)
    if token < 0 or sim.done:
      continue
    if token < n_dl:
      video, level = token // levels, token % levels
      if video < sim.play_video_id:
        continue  # swiped past: the client skips it
      chunk = sim._counter[video] if video < n else 0
      res = sim.step(video, level, 0)
      if not res.invalid:
        records.append((video, chunk, level))
    else:
      res = sim.step(sim.play_video_id, 0, s.sleep_choices_ms[token - n_dl])
    quality += res.quality
    rebuffer += res.rebuffer_s
    smooth += res.smoothness
    megabits += res.megabits
  out = np.asarray([quality, rebuffer, smooth, megabits])
  if s.terminal_weight != 0.0:
    out = out + s.terminal_weight * terminal_components_py(scenario, sim, records, data, s)
  return out


def terminal_components_py(scenario: Scenario, sim: ReferenceSimulator, records,
                           data: ReferenceData, s: TorchGFNSettings) -> np.ndarray:
  """float64 [4]: `belief.terminal_components` in plain Python (see it for the model)."""
  watch, start = scenario.watch_ms, scenario.start_timeline
  n = len(watch)
  horizon = s.terminal_horizon_ms
  br = data.bitrates_kbps
  sizes = sim._s.chunk_sizes
  window_end, before = [], 0
  for i in range(n):
    left = max(watch[i] - start[i], 0)
    window_end.append(start[0] + horizon if i == 0 else horizon - before)
    before += left
  credited_end = [(w // CHUNK_MS + 1) * CHUNK_MS for w in watch]

  back_quality = back_megabits = 0.0
  for video, chunk, level in records:
    if chunk * CHUNK_MS >= window_end[video] and chunk * CHUNK_MS < credited_end[video]:
      back_quality += br[level] / 1000.0
      back_megabits += sizes[video][chunk][level] * 8.0 / 1e6

  count = -(-horizon // CHUNK_MS) + 1
  play = sim.play_video_id
  quality = megabits = 0.0
  clock, stall, offset = 0.0, 0.0, 0
  for i in range(s.terminal_videos):  # the playing video and the next ones
    vid = play + i
    if vid >= n:
      break
    if i > 0:  # this video starts after the earlier ones' remaining playback
      offset += max(watch[vid - 1] - sim._timeline[vid - 1], 0)
    lvl = max(sim._levels[vid][-1], 0) if sim._levels[vid] else 0
    c = sim._counter[vid]
    nchunks = len(sizes[vid])
    end = min(window_end[vid], watch[vid])
    if i == 1 and s.swipe_in_flight:  # the chunk in flight at the swipe (see the JAX model)
      p_lvl = max(sim._levels[play][-1], 0) if sim._levels[play] else 0
      in_flight = -(-watch[play] // CHUNK_MS)
      if (watch[play] < window_end[play] and sim._counter[play] <= in_flight
          and in_flight < len(sizes[play])):
        mb = sizes[play][in_flight][p_lvl] * 8.0 / 1e6
        clock += mb / scenario.bandwidth_mbps * 1000.0 + s.belief_rtt_ms
        megabits += mb
    for k in range(count):
      j = c + k
      if j >= nchunks or j * CHUNK_MS >= end:
        continue
      mb = sizes[vid][j][lvl] * 8.0 / 1e6
      clock += mb / scenario.bandwidth_mbps * 1000.0 + s.belief_rtt_ms
      due = offset + sim._buffer[vid] + k * CHUNK_MS
      stall = max(stall, clock - due)
      megabits += mb
      if j * CHUNK_MS < credited_end[vid]:
        quality += br[lvl] / 1000.0
  return np.asarray([quality - back_quality, stall / 1000.0, 0.0, megabits - back_megabits])


def build_scenarios(rng: np.random.Generator, view: ObsView, data: ReferenceData,
                    s: TorchGFNSettings, bandwidth: Optional[np.ndarray] = None) -> list:
  """The M scenarios of one decision (`belief.build_belief`)."""
  bw = bandwidth_scenarios_np(view, s) if bandwidth is None else bandwidth
  m = s.num_scenarios
  n = int(np.sum(view.slot_valid))
  u = rng.random((m, n))
  watch = np.stack([conditional_watch_ms_np(u[:, i], data, int(view.slot_video[i]),
                                            int(view.play_ms[i])) for i in range(n)], axis=1)
  return [scenario_from_view(view, data, s, bw[j], watch[j]) for j in range(m)]


# ----------------------------------------------------------------- live sessions
class LiveSession:
  """One real session: a `ReferenceSimulator` plus the client's throughput history."""

  def __init__(self, rng: np.random.Generator, data: ReferenceData, s: TorchGFNSettings):
    self.data, self.s = data, s
    times, mbps = data.traces[int(rng.integers(len(data.traces)))]
    start_row = int(rng.integers(1, len(times))) if data.random_offset else 1
    n_cat = len(data.num_chunks)
    if data.shuffle_videos:
      self.video_ids = [int(v) for v in rng.integers(0, n_cat, s.num_videos)]
    else:
      self.video_ids = [i % n_cat for i in range(s.num_videos)]
    watch = [data.sample_watch_ms(rng, v) for v in self.video_ids]
    self.weights = data.sample_weights(rng)
    self.sim = ReferenceSimulator(ReferenceSession(
        trace_times=times, trace_mbps=mbps,
        chunk_sizes=[data.video_chunks[v] for v in self.video_ids], watch_ms=watch,
        bitrates_kbps=data.bitrates_kbps, weights=tuple(float(w) for w in self.weights),
        window=s.window, rtt_ms=data.rtt_ms, payload=data.payload, start_row=start_row,
        min_qoe=data.min_qoe, invalid_sleep_ms=data.invalid_sleep_ms))
    self.tput = np.zeros(s.history_len)
    self.delay = np.zeros(s.history_len)
    self.history_count = 0
    self.last_rebuf_ms = 0
    self.steps = 0

  def view(self) -> ObsView:
    s, data = self.s, self.data
    w, lv = s.window, s.levels
    slots = self.sim.slots()
    valid = np.zeros(w, bool)
    video = np.full(w, -1)
    buffer_ms, play_ms, counter, nchunks, last_level, preload = (
        np.zeros(w, np.int64) for _ in range(6))
    last_level[:] = -1
    next_bytes = np.zeros((w, lv))
    for i, sl in enumerate(slots):
      valid[i] = True
      video[i] = self.video_ids[sl.video_id]
      buffer_ms[i], play_ms[i] = sl.buffer_ms, sl.play_timeline_ms
      counter[i], nchunks[i] = sl.chunk_counter, sl.num_chunks
      last_level[i] = sl.levels[-1] if sl.levels else -1
      preload[i] = sl.preload_size
      if sl.chunk_counter < sl.num_chunks:
        next_bytes[i] = data.chunk_sizes[video[i], sl.chunk_counter]
    return ObsView(slot_valid=valid, slot_video=video, buffer_ms=buffer_ms, play_ms=play_ms,
                   chunks_downloaded=counter, num_chunks=nchunks, last_level=last_level,
                   preload_bytes=preload.astype(np.float64), next_chunk_bytes=next_bytes,
                   tput_history_mbps=self.tput.copy(), delay_history_ms=self.delay.copy(),
                   history_count=self.history_count, last_rebuf_ms=self.last_rebuf_ms,
                   first_step=self.steps == 0, weights=self.weights)

  def execute(self, token: int) -> tuple[float, bool]:
    """Executes one discrete action (window slot x level, or a sleep); returns (reward, over)."""
    s = self.s
    n_dl = s.window * s.levels
    play = self.sim.play_video_id
    if token < n_dl:
      res = self.sim.step(play + token // s.levels, token % s.levels, 0)
    else:
      res = self.sim.step(play, 0, s.sleep_choices_ms[token - n_dl])
    if token < n_dl and not res.invalid:  # a download: one throughput sample (RTT included)
      self.tput = np.append(self.tput[1:], res.megabits / max(res.delay_ms, 1) * 1000.0)
      self.delay = np.append(self.delay[1:], float(res.delay_ms))
      self.history_count = min(self.history_count + 1, s.history_len)
    self.last_rebuf_ms = res.rebuf_ms
    self.steps += 1
    return res.reward, res.done or self.steps >= s.max_steps


# ----------------------------------------------------------------- network
def make_network(s: TorchGFNSettings):
  """The torch twin of `MLPPolicy` (forward head) and its `LogZ` head."""
  _require_torch()

  class PlanPolicy(nn.Module):
    def __init__(self):
      super().__init__()
      layers, width = [], s.feature_dim + s.cond_dim
      for h in s.hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
      self.trunk = nn.Sequential(*layers)
      self.forward_head = nn.Linear(width, s.num_actions)
      self.log_z = nn.Sequential(nn.Linear(s.cond_dim, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, features, cond):
      return self.forward_head(self.trunk(torch.cat([features, cond], dim=-1)))

    def log_z_of(self, cond):
      return self.log_z(cond)[..., 0]

  return PlanPolicy()


def load_flax_params(net, params) -> None:
  """Copies Flax `MLPPolicy` parameters (as from `GFNController.init_params`) into `net`."""
  p = params["params"]
  dense = [m for m in net.trunk if isinstance(m, nn.Linear)]
  with torch.no_grad():
    def put(linear, leaf):
      linear.weight.copy_(torch.as_tensor(np.asarray(leaf["kernel"]).T.copy()))
      linear.bias.copy_(torch.as_tensor(np.asarray(leaf["bias"]).copy()))
    for i, linear in enumerate(dense):
      put(linear, p["trunk"][f"dense_{i}"])
    put(net.forward_head, p["forward_head"])
    put(net.log_z[0], p["log_z"]["mlp"]["dense_0"])
    put(net.log_z[2], p["log_z"]["out"])


def plan_features(tokens, length, s: TorchGFNSettings):
  """float32 [B, F]: `PlanDAG.featurize` (one-hot tokens, -1 = none; one-hot length)."""
  b = tokens.shape[0]
  onehot = torch.zeros((b, s.horizon, s.num_tokens + 1))
  onehot.scatter_(2, (tokens + 1).clamp(min=0).unsqueeze(-1), 1.0)
  return torch.cat([onehot[:, :, 1:].reshape(b, -1),
                    torch.nn.functional.one_hot(length, s.horizon + 1).float()], dim=1)


def forward_mask(remaining, planned, length, sleep_ok, s: TorchGFNSettings):
  """bool [B, A]: `PlanDAG.forward_mask` (sleep_ok bool [B]: may a plan open with a sleep)."""
  b = remaining.shape[0]
  open_ = (length < s.horizon).unsqueeze(1)
  left = (remaining - planned > 0).repeat_interleave(s.levels, dim=1)
  sleeps = ((length > 0) | sleep_ok).unsqueeze(1).expand(b, len(s.sleep_choices_ms))
  tokens = torch.cat([left, sleeps], dim=1)
  return torch.cat([tokens & open_, ~open_], dim=1)


def exploration_probs(logits, mask, s: TorchGFNSettings):
  """(1 - eps) softmax(logits / temperature) + eps uniform over the mask (the sampler's law)."""
  probs = torch.softmax(logits.masked_fill(~mask, -math.inf) / s.temperature, dim=-1)
  uniform = mask.float() / mask.sum(dim=1, keepdim=True)
  return (1.0 - s.epsilon) * probs + s.epsilon * uniform


def masked_log_softmax(logits, mask):
  return torch.log_softmax(logits.masked_fill(~mask, -math.inf), dim=-1)


# ----------------------------------------------------------------- the trainer
class TorchReferenceTrainer:
  """The training step of `gfn_trainer.make_update` in PyTorch + the Python reference simulator."""

  def __init__(self, settings: TorchGFNSettings, data: ReferenceData, seed: int = 0,
               threads: Optional[int] = None):
    _require_torch()
    import os
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(seed)
    self.s, self.data = settings, data
    self.rng = np.random.default_rng(seed)
    self.gen = torch.Generator().manual_seed(seed)
    self.net = make_network(settings)
    log_z = list(self.net.log_z.parameters())
    ids = {id(p) for p in log_z}
    network = [p for p in self.net.parameters() if id(p) not in ids]
    self.optimizer = torch.optim.Adam([{"params": network, "lr": settings.learning_rate},
                                       {"params": log_z, "lr": settings.log_z_learning_rate}])
    self.sessions = [LiveSession(self.rng, data, settings) for _ in range(settings.num_sessions)]
    self.decisions = 0
    # Seconds spent in each phase of the updates so far (the benchmark's breakdown).
    self.phase_s = dict.fromkeys(PHASES, 0.0)

  # --------------------------------------------------------- sampling
  def sample_plans(self, cond, remaining, sleep_ok):
    """int [B, H] plans for cond [B, C], remaining [B, W], sleep_ok [B] (no gradient)."""
    s = self.s
    b = cond.shape[0]
    tokens = torch.full((b, s.horizon), -1, dtype=torch.long)
    length = torch.zeros(b, dtype=torch.long)
    planned = torch.zeros((b, s.window), dtype=torch.long)
    slot_of = torch.arange(s.num_tokens) // s.levels
    with torch.no_grad():
      for t in range(s.horizon + 1):
        logits = self.net(plan_features(tokens, length, s), cond)
        if t == s.horizon:
          break  # only the exit is allowed after H tokens (log P = 0)
        mask = forward_mask(remaining, planned, length, sleep_ok, s)
        probs = exploration_probs(logits, mask, s)
        action = torch.multinomial(probs, 1, generator=self.gen)[:, 0]
        tokens[:, t] = action
        length += 1
        is_dl = action < s.window * s.levels
        planned[is_dl, slot_of[action[is_dl]]] += 1
    return tokens.numpy()

  def enumerate_plans(self, cond, remaining, sleep_ok):
    """(log-probs [B, T^H] of the exploring sampler, -inf off the masks; plans int [B, T^H, H])
    for cond [B, C], remaining [B, W], sleep_ok [B]: the network on every prefix, as
    `gfnfeeds.policies.gfn.enumerate_plan_log_probs` (same plan order)."""
    s = self.s
    b, t, h = cond.shape[0], s.num_tokens, s.horizon
    slot_of = (torch.arange(t) // s.levels).clamp(max=s.window - 1)
    # [T, W]: the slot each token downloads (none for the sleeps).
    hit = torch.nn.functional.one_hot(slot_of, s.window) * (
        torch.arange(t) < s.window * s.levels)[:, None]
    with torch.no_grad():
      tokens = torch.full((b, 1, h), -1, dtype=torch.long)  # prefixes [B, P, H]
      planned = torch.zeros((b, 1, s.window), dtype=torch.long)
      log_p = torch.zeros((b, 1))
      for depth in range(h):
        p = tokens.shape[1]
        length = torch.full((b * p,), depth, dtype=torch.long)
        logits = self.net(plan_features(tokens.reshape(b * p, h), length, s),
                          cond.repeat_interleave(p, dim=0))
        mask = forward_mask(remaining.repeat_interleave(p, dim=0), planned.reshape(b * p, -1),
                            length, sleep_ok.repeat_interleave(p, dim=0), s)
        step = torch.log(exploration_probs(logits, mask, s))[:, :t]
        log_p = (log_p[:, :, None] + step.reshape(b, p, t)).reshape(b, p * t)
        tokens = tokens[:, :, None].repeat(1, 1, t, 1)
        tokens[:, :, :, depth] = torch.arange(t)
        tokens = tokens.reshape(b, p * t, h)
        planned = (planned[:, :, None] + hit).reshape(b, p * t, s.window)
    return log_p, tokens

  def sample_distinct_plans(self, cond, remaining, sleep_ok):
    """int [B, K, H]: K different plans per decision drawn without replacement (Gumbel-top-K
    over `enumerate_plans`; rows past the allowed plans repeat the first draw)."""
    k, h = self.s.num_candidates, self.s.horizon
    log_p, tokens = self.enumerate_plans(cond, remaining, sleep_ok)
    gumbel = -torch.log(-torch.log(torch.rand(log_p.shape, generator=self.gen)))
    values, index = torch.topk(log_p + gumbel, k, dim=1)
    index = torch.where(torch.isfinite(values), index, index[:, :1])
    return torch.gather(tokens, 1, index[:, :, None].expand(-1, k, h)).numpy()

  # --------------------------------------------------------- one update
  def rollout(self):
    s, data = self.s, self.data
    k = s.num_candidates
    store = dict(obs=[], weights=[], remaining=[], sleep_ok=[], plans=[], components=[])
    rewards = []
    clock = time.perf_counter
    for _ in range(s.rollout_steps):
      t_start = clock()
      views = [sess.view() for sess in self.sessions]
      bws = [bandwidth_scenarios_np(v, s) for v in views]
      feats = np.stack([observation_features_np(v, data, s, bw) for v, bw in zip(views, bws)])
      weights = np.stack([v.weights for v in views])
      remaining = np.stack([v.remaining() for v in views])
      sleep_ok = np.asarray([s.sleep_while_stalled or v.sleep_allowed() for v in views])
      cond = np.concatenate([feats, weight_features_np(weights)], axis=1)
      if s.candidates == "distinct":
        plans = self.sample_distinct_plans(torch.as_tensor(cond), torch.as_tensor(remaining),
                                           torch.as_tensor(sleep_ok))
      else:
        plans = self.sample_plans(torch.as_tensor(np.repeat(cond, k, axis=0)),
                                  torch.as_tensor(np.repeat(remaining, k, axis=0)),
                                  torch.as_tensor(np.repeat(sleep_ok, k, axis=0)))
        plans = plans.reshape(len(views), k, s.horizon)
      self.phase_s["proposal"] += clock() - t_start
      comps = np.zeros((len(views), k, 4))
      for i, (sess, view, bw) in enumerate(zip(self.sessions, views, bws)):
        t_score = clock()
        scenarios = build_scenarios(self.rng, view, data, s, bw)
        for j in range(k):
          comps[i, j] = np.mean([score_plan(sc, plans[i, j], data, s) for sc in scenarios],
                                axis=0)
        utilities = comps[i] @ (COMPONENT_SIGNS * view.weights)
        best = int(np.argmax(utilities))
        t_env = clock()
        reward, over = sess.execute(int(plans[i, best, 0]))
        rewards.append(reward)
        if over:
          self.sessions[i] = LiveSession(self.rng, data, s)
        self.phase_s["scoring"] += t_env - t_score
        self.phase_s["environment"] += clock() - t_env
      self.decisions += len(views)
      for key, val in (("obs", feats), ("weights", weights), ("remaining", remaining),
                       ("sleep_ok", sleep_ok), ("plans", plans), ("components", comps)):
        store[key].append(val)
    return {key: np.concatenate(val) for key, val in store.items()}, float(np.mean(rewards))

  def loss(self, batch):
    """The TB loss of the relabelled, teacher-forced plans of one rollout."""
    s = self.s
    n, k, h = batch["plans"].shape
    extra = np.stack([self.data.sample_weights(self.rng) for _ in range(n * s.relabel)])
    weights = np.concatenate([batch["weights"][:, None], extra.reshape(n, s.relabel, 4)], axis=1)
    groups = 1 + s.relabel
    log_r = np.einsum("nkc,ngc->ngk", batch["components"] * COMPONENT_SIGNS,
                      weights) / s.reward_temperature  # [N, 1+R, K]
    rows = n * groups * k
    obs = np.broadcast_to(batch["obs"][:, None, None], (n, groups, k, s.obs_dim))
    wf = np.broadcast_to(weight_features_np(weights)[:, :, None], (n, groups, k, 4))
    cond = torch.as_tensor(np.concatenate([obs, wf], axis=-1).reshape(rows, -1))
    plans = torch.as_tensor(np.broadcast_to(batch["plans"][:, None], (n, groups, k, h))
                            .reshape(rows, h).astype(np.int64))
    remaining = torch.as_tensor(np.broadcast_to(batch["remaining"][:, None, None],
                                                (n, groups, k, s.window))
                                .reshape(rows, s.window).astype(np.int64))
    sleep_ok = torch.as_tensor(np.broadcast_to(batch["sleep_ok"][:, None, None], (n, groups, k))
                               .reshape(rows))
    # States s_0 .. s_H of every plan (teacher forcing), then one network call on all of them.
    feats, masks, actions = [], [], []
    tokens = torch.full((rows, h), -1, dtype=torch.long)
    planned = torch.zeros((rows, s.window), dtype=torch.long)
    exit_action = s.num_actions - 1
    for t in range(h + 1):
      length = torch.full((rows,), t, dtype=torch.long)
      feats.append(plan_features(tokens, length, s))
      masks.append(forward_mask(remaining, planned, length, sleep_ok, s))
      if t == h:
        actions.append(torch.full((rows,), exit_action, dtype=torch.long))
        break
      a = plans[:, t]
      actions.append(a)
      tokens = tokens.clone()
      tokens[:, t] = a
      dl = a < s.window * s.levels
      planned = planned + torch.nn.functional.one_hot(
          torch.where(dl, a // s.levels, 0), s.window) * dl[:, None]
    feats = torch.stack(feats, dim=1).reshape(rows * (h + 1), -1)
    cond_rep = cond.repeat_interleave(h + 1, dim=0)
    logits = self.net(feats, cond_rep).reshape(rows, h + 1, -1)
    log_p = masked_log_softmax(logits, torch.stack(masks, dim=1))
    log_pf = log_p.gather(2, torch.stack(actions, dim=1)[..., None])[..., 0].sum(dim=1)
    log_z = self.net.log_z_of(cond)
    residual = log_z + log_pf - torch.as_tensor(log_r.reshape(-1), dtype=torch.float32)
    return torch.mean(residual ** 2)

  def update(self) -> dict:
    """One rollout of num_sessions x rollout_steps decisions, relabelling, one Adam step."""
    batch, reward = self.rollout()
    t_learn = time.perf_counter()
    loss = self.loss(batch)
    self.optimizer.zero_grad()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.s.max_grad_norm)
    self.optimizer.step()
    self.phase_s["learning"] += time.perf_counter() - t_learn
    return {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "reward": reward}
