"""Incendio: two cooperating actors (buffer management, bitrate) and one shared critic.

BASELINES.md section 4. Per decision:
  * the buffer-management (BM) agent picks one of the window's W slots or a sleep of
    `sleep_ms` (200 ms): a (W + 1)-way categorical, masked to slots with chunks left;
  * when it does not sleep, the bitrate-adaptation (BA) agent picks the level of the
    chosen video's next chunk: an L-way categorical.

State (`features`): the last K = 5 throughput samples b (MB/s, the observation's
history, RTT included as MMGC's samples) and a per-slot grid of
  l  P(watch the next chunk to download | the current position) (PDAS eq. 4),
  g  buffer (s),
  u  mean size of the next chunk over the levels (MB),
  h  rebuffering caused by the last download of that video (s),
  q  level bitrate of its newest chunk (Mbps, 0 if none),
  f  |q_j - q_{j-1}| with the previous video's newest level (Mbps).
The BM grid is (b, l, g, u) [4, W] (b laid out one sample per column as the grid is
W = K = 5 wide); the BA grid is (b, l, g, u, h, q, f) [7, W] plus a one-hot of the
slot the BM agent chose (which video the BA agent is deciding for).

Networks (leaky ReLU everywhere, as the paper):
  BM actor: GRU(64) over b (5 steps x 1 feature, last output) || three 5x5 'same'
    convolutions 64 -> 16 -> 4 over the [4, W, 1] grid, flattened to 4W -> concat
    -> FC 64 -> FC W + 1.
  BA actor: GRU(64) over b || FC 128 -> 256 -> 80 over the flattened [7, W] grid and
    the slot one-hot -> concat -> FC 64 -> FC L.
  Critic: linear over the concatenation of both actors' last hidden layers (64 + 64);
    the BA part is taken with an all-zero slot one-hot so the value is V(s), not
    V(s, a_BM).

The policy reads only the Observation and the Catalog. What it remembers between
decisions (h and q per absolute video position, and the position it last fetched)
lives in `IncendioState`; the GRUs run over the 5-sample window at every decision,
so no recurrent hidden state is carried. Parameters are bound with `bind(params)`.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from gfnfeeds.data.packing import Catalog
from gfnfeeds.env.feeds import CHUNK_MS, Action, FeedsEnv, Observation
from gfnfeeds.policies.base import Policy
from gfnfeeds.policies.rules import conditional_retention
from gfnfeeds.training.ppo import masked_logits

F32 = jnp.float32
HISTORY = 5  # K: throughput samples the agents see
BM_ROWS = 4  # (b, l, g, u)
BA_ROWS = 7  # (b, l, g, u, h, q, f)
INCENDIO_SLEEP_MS = 200  # the BM agent's fixed sleep (the paper's tau)


# ----------------------------------------------------------------- state and features
@struct.dataclass
class IncendioState:
  """Per-session memory, indexed by absolute video position.

  Attributes:
    rebuf_s: float64 [V] stall (s) during the last download of each video.
    level: int32 [V] level of each video's newest chunk (-1: none).
    last_pos: int32 position of the video the previous action fetched (-1: it slept).
  """

  rebuf_s: jax.Array
  level: jax.Array
  last_pos: jax.Array


@struct.dataclass
class Features:
  """The two agents' inputs for one decision (float32) and the BM mask.

  Attributes:
    tput: [K] throughput samples (MB/s), oldest first, 0 where none yet.
    grid: [7, W] rows (b, l, g, u, h, q, f); the BM agent reads rows 0..3.
    bm_mask: bool [W + 1] slots with chunks left, then the (always valid) sleep.
  """

  tput: jax.Array
  grid: jax.Array
  bm_mask: jax.Array


def init_state(num_videos: int) -> IncendioState:
  return IncendioState(rebuf_s=jnp.zeros((num_videos,), jnp.float64),
                       level=jnp.full((num_videos,), -1, jnp.int32),
                       last_pos=jnp.asarray(-1, jnp.int32))


def observe(state: IncendioState, obs: Observation) -> IncendioState:
  """Credits the previous download's stall to the video it fetched (first step: nothing)."""
  hit = ((jnp.arange(state.rebuf_s.shape[0]) == state.last_pos) & obs.last_was_download
         & ~obs.first_step)
  return state.replace(rebuf_s=jnp.where(hit, obs.last_rebuf_ms / 1000.0, state.rebuf_s))


def record(state: IncendioState, obs: Observation, slot, level, is_sleep) -> IncendioState:
  """Remembers the action taken: the position fetched and its level."""
  v = state.level.shape[0]
  pos = obs.play_video_id + slot
  hit = (jnp.arange(v) == pos) & ~is_sleep
  return state.replace(level=jnp.where(hit, level, state.level),
                       last_pos=jnp.where(is_sleep, -1, pos).astype(jnp.int32))


def features(state: IncendioState, obs: Observation, catalog: Catalog) -> Features:
  """The agents' state of BASELINES.md section 4 (after `observe`)."""
  w = obs.slot_valid.shape[0]
  v = state.level.shape[0]
  valid = obs.slot_valid
  has_next = valid & (obs.chunks_downloaded < obs.num_chunks)
  # Throughput samples: the env's history is Mbps (bytes*8/1e6 per s, RTT included);
  # the paper's b is chunk size / download time, kept here in MB/s like the PDAS estimator.
  tput = obs.tput_history_mbps[-HISTORY:] / 8.0
  b_row = jnp.zeros((w,), jnp.float64).at[:min(w, HISTORY)].set(tput[-min(w, HISTORY):])
  l_row = conditional_retention(obs, catalog, obs.chunks_downloaded, obs.play_ms // CHUNK_MS)
  l_row = jnp.where(has_next, l_row, 0.0)
  g_row = obs.buffer_ms / 1000.0
  u_row = jnp.mean(obs.next_chunk_bytes, axis=-1) / 1e6
  pos = jnp.clip(obs.play_video_id + jnp.arange(w), 0, v - 1)
  h_row = state.rebuf_s[pos]
  br = catalog.bitrates_kbps / 1000.0
  q_row = jnp.where(obs.last_level >= 0, br[jnp.maximum(obs.last_level, 0)], 0.0)
  prev_pos = obs.play_video_id + jnp.arange(w) - 1
  prev_level = state.level[jnp.clip(prev_pos, 0, v - 1)]
  prev_q = jnp.where((prev_pos >= 0) & (prev_level >= 0), br[jnp.maximum(prev_level, 0)], 0.0)
  f_row = jnp.where((obs.last_level >= 0) & (prev_q > 0), jnp.abs(q_row - prev_q), 0.0)
  per_slot = jnp.stack([l_row, g_row, u_row, h_row, q_row, f_row])
  per_slot = jnp.where(valid[None], per_slot, 0.0)
  grid = jnp.concatenate([b_row[None], per_slot], axis=0)
  bm_mask = jnp.concatenate([has_next, jnp.ones((1,), bool)])
  return Features(tput=tput.astype(F32), grid=grid.astype(F32), bm_mask=bm_mask)


# Scales that bring every input to about [0, 2] (rows b, l, g, u, h, q, f; b in MB/s).
ROW_SCALE = (0.5, 1.0, 4.0, 0.2, 1.0, 1.0, 1.0)


# ----------------------------------------------------------------- networks
def conv_tap_index(height: int, width: int, kh: int, kw: int) -> np.ndarray:
  """int32 [H*W, H*W]: kernel tap (dy * kw + dx) linking input cell i to output cell o, or -1.

  A 'same'-padded stride-1 convolution reads input (yi, xi) at output (yo, xo) through
  tap (yi - yo + kh // 2, xi - xo + kw // 2) when that lies inside the kernel.
  """
  idx = np.full((height * width, height * width), -1, np.int32)
  for yi, xi, yo, xo in itertools.product(range(height), range(width), range(height),
                                          range(width)):
    dy, dx = yi - yo + kh // 2, xi - xo + kw // 2
    if 0 <= dy < kh and 0 <= dx < kw:
      idx[yi * width + xi, yo * width + xo] = dy * kw + dx
  return idx


class GridConv(nn.Module):
  """A 'same'-padded, stride-1 2-D convolution over a small grid, computed as one matmul.

  Same parameters (kernel [kh, kw, in, out], bias [out]) and results as
  `nn.Conv(features, kernel_size, padding="SAME")`; on a 4 x 5 grid the dense form
  is several times faster on CPU than XLA's convolution.
  """

  features: int
  kernel_size: tuple[int, int] = (5, 5)

  @nn.compact
  def __call__(self, x):  # [..., H, W, C]
    h, w, cin = x.shape[-3:]
    kh, kw = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, cin, self.features),
                        F32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), F32)
    idx = conv_tap_index(h, w, kh, kw)
    taps = kernel.reshape(kh * kw, cin, self.features)
    full = jnp.where((idx >= 0)[:, :, None, None], taps[np.maximum(idx, 0)], 0.0)
    full = full.transpose(0, 2, 1, 3).reshape(h * w * cin, h * w * self.features)
    y = x.reshape(x.shape[:-3] + (h * w * cin,)) @ full
    return y.reshape(x.shape[:-3] + (h, w, self.features)) + bias


class ThroughputGRU(nn.Module):
  """GRU over the K throughput samples (one feature per step); the last output."""

  units: int = 64

  @nn.compact
  def __call__(self, tput):  # [..., K]
    cell = nn.GRUCell(features=self.units)
    scan = nn.scan(lambda c, carry, x: c(carry, x), variable_broadcast="params",
                   split_rngs={"params": False}, in_axes=-2, out_axes=-2)
    x = tput[..., None]
    carry = jnp.zeros(tput.shape[:-1] + (self.units,), x.dtype)
    _, ys = scan(cell, carry, x)
    return ys[..., -1, :]


class IncendioNet(nn.Module):
  """Both actors and the shared critic.

  `__call__(tput [..., K], grid [..., 7, W])` returns
  (bm_logits [..., W + 1], ba_logits [..., W, L] for every slot the BM agent may
  choose, value [...]).
  """

  window: int = 5
  levels: int = 3
  gru_units: int = 64
  conv_channels: tuple[int, ...] = (64, 16, 4)
  ba_hidden: tuple[int, ...] = (128, 256, 80)
  head: int = 64

  @nn.compact
  def __call__(self, tput, grid):
    act = nn.leaky_relu
    scale = jnp.asarray(ROW_SCALE, F32)[:, None]
    tput = tput / scale[0, 0]
    grid = grid / scale
    batch = grid.shape[:-2]

    # BM actor.
    x = grid[..., :BM_ROWS, :, None]  # [..., 4, W, 1]
    for i, c in enumerate(self.conv_channels):
      x = act(GridConv(c, (5, 5), name=f"bm_conv{i}")(x))
    x = x.reshape(batch + (-1,))
    bm_h = act(nn.Dense(self.head, name="bm_fc")(
        jnp.concatenate([act(ThroughputGRU(self.gru_units, name="bm_gru")(tput)), x], -1)))
    bm_logits = nn.Dense(self.window + 1, name="bm_out")(bm_h)

    # BA actor, once per possible slot (W one-hots) plus the "no slot" view for the critic.
    ba_gru = act(ThroughputGRU(self.gru_units, name="ba_gru")(tput))
    onehots = jnp.concatenate([jnp.eye(self.window, dtype=F32),
                               jnp.zeros((1, self.window), F32)])  # [W + 1, W]
    flat = grid.reshape(batch + (-1,))
    flat = jnp.broadcast_to(flat[..., None, :], batch + (self.window + 1, flat.shape[-1]))
    y = jnp.concatenate([flat, jnp.broadcast_to(onehots, batch + onehots.shape)], -1)
    for i, n in enumerate(self.ba_hidden):
      y = act(nn.Dense(n, name=f"ba_fc{i}")(y))
    g = jnp.broadcast_to(ba_gru[..., None, :], batch + (self.window + 1, ba_gru.shape[-1]))
    ba_h = act(nn.Dense(self.head, name="ba_fc")(jnp.concatenate([g, y], -1)))
    ba_logits = nn.Dense(self.levels, name="ba_out")(ba_h[..., :self.window, :])

    value = nn.Dense(1, name="critic")(jnp.concatenate([bm_h, ba_h[..., self.window, :]], -1))
    return bm_logits, ba_logits, value[..., 0]


# ----------------------------------------------------------------- decisions
@struct.dataclass
class Choice:
  """One decision of both agents.

  Attributes:
    bm: int32 BM action (slot, or W for the sleep).
    ba: int32 BA action (level; 0 when the BM agent sleeps).
    bm_log_prob, ba_log_prob: log-probabilities (ba_log_prob is 0 when sleeping).
    value: the critic's V(s).
  """

  bm: jax.Array
  ba: jax.Array
  bm_log_prob: jax.Array
  ba_log_prob: jax.Array
  value: jax.Array


def distributions(net: IncendioNet, params, feats: Features):
  """(masked BM logits [W + 1], BA logits [W, L], value) for one or a batch of decisions."""
  bm_logits, ba_logits, value = net.apply(params, feats.tput, feats.grid)
  return masked_logits(bm_logits, feats.bm_mask), ba_logits, value


def choose(key, bm_logits, ba_logits, value, greedy: bool) -> Choice:
  """Samples (or takes the argmax of) the BM agent, then the BA agent for its slot."""
  window = ba_logits.shape[-2]
  k_bm, k_ba = jax.random.split(key)
  if greedy:
    bm = jnp.argmax(bm_logits, -1)
  else:
    bm = jax.random.categorical(k_bm, bm_logits)
  bm = bm.astype(jnp.int32)
  is_sleep = bm == window
  slot_logits = jnp.take_along_axis(ba_logits, jnp.minimum(bm, window - 1)[..., None, None],
                                    axis=-2)[..., 0, :]
  ba = jnp.argmax(slot_logits, -1) if greedy else jax.random.categorical(k_ba, slot_logits)
  ba = jnp.where(is_sleep, 0, ba).astype(jnp.int32)
  bm_lp = jnp.take_along_axis(jax.nn.log_softmax(bm_logits), bm[..., None], -1)[..., 0]
  ba_lp = jnp.take_along_axis(jax.nn.log_softmax(slot_logits), ba[..., None], -1)[..., 0]
  return Choice(bm=bm, ba=ba, bm_log_prob=bm_lp, ba_log_prob=jnp.where(is_sleep, 0.0, ba_lp),
                value=value)


def to_action(bm, ba, window: int, sleep_ms: int) -> Action:
  """The env Action of a (BM, BA) pair: download(slot, level) or sleep(sleep_ms)."""
  is_sleep = bm == window
  return Action(slot=jnp.where(is_sleep, 0, bm).astype(jnp.int32),
                level=jnp.where(is_sleep, 0, ba).astype(jnp.int32),
                sleep_ms=jnp.where(is_sleep, sleep_ms, 0).astype(jnp.int32))


@dataclasses.dataclass(frozen=True)
class Incendio(Policy):
  """The Incendio controller (serving: greedy by default).

  Attributes:
    env: the FeedsEnv it acts in (window, levels, videos per session).
    sleep_ms: the BM agent's sleep (the paper's fixed 200 ms).
    greedy: argmax of both agents (True when serving) or sampling (training).
    network_params: Flax parameters, bound with `bind` (not part of the hash).
  """

  env: FeedsEnv = FeedsEnv()
  sleep_ms: int = INCENDIO_SLEEP_MS
  greedy: bool = True
  network_params: Any = dataclasses.field(default=None, compare=False, hash=False, repr=False)

  @property
  def net(self) -> IncendioNet:
    return IncendioNet(window=self.env.window, levels=self.env.num_levels_hint)

  def init_params(self, key: jax.Array):
    w = self.env.window
    return self.net.init(key, jnp.zeros((HISTORY,), F32), jnp.zeros((BA_ROWS, w), F32))

  def bind(self, network_params) -> "Incendio":
    return dataclasses.replace(self, network_params=network_params)

  def init(self, obs, catalog):
    del obs, catalog
    return init_state(self.env.num_videos)

  def prepare(self, policy_state, obs, catalog):
    """(state after crediting the last download, features) of one decision."""
    policy_state = observe(policy_state, obs)
    return policy_state, features(policy_state, obs, catalog)

  def decide(self, key, params, policy_state, obs, catalog, greedy=None):
    """(Choice, Features, state before `record`) for one session."""
    policy_state, feats = self.prepare(policy_state, obs, catalog)
    bm_logits, ba_logits, value = distributions(self.net, params, feats)
    choice = choose(key, bm_logits, ba_logits, value, self.greedy if greedy is None else greedy)
    return choice, feats, policy_state

  def advance(self, policy_state, obs, bm, ba):
    """The state after executing (bm, ba) in `obs` (bm == W: sleep)."""
    w = self.env.window
    return record(policy_state, obs, jnp.minimum(bm, w - 1), ba, bm == w)

  def act(self, key, policy_state, obs, catalog):
    if self.network_params is None:
      raise ValueError("Incendio.act: no network parameters; use policy.bind(params)")
    choice, _, policy_state = self.decide(key, self.network_params, policy_state, obs, catalog)
    action = to_action(choice.bm, choice.ba, self.env.window, self.sleep_ms)
    return action, self.advance(policy_state, obs, choice.bm, choice.ba)
