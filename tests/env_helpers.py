"""Helpers shared by the FeedsEnv tests: sessions, the reference oracle on packed data, replays.

The real MMGC data is read by path (tests/conftest.py); nothing here copies it.
"""

from __future__ import annotations

import csv
import random

import jax
import jax.numpy as jnp
import numpy as np

from gfnfeeds.data.packing import Catalog, World
from gfnfeeds.data.types import NetworkTrace
from gfnfeeds.env.feeds import Action, FeedsEnv, Session
from gfnfeeds.reference.simulator import ReferenceSession, ReferenceSimulator

MMGC_WEIGHTS = (1.0, 1.85, 1.0, 0.5)
NUM_VIDEOS = 7


def read_fixture(path):
  """(rows as dicts, final metrics dict) of a reference step log."""
  lines = path.read_text().splitlines()
  assert lines[-1].startswith("# final:"), path
  rows = list(csv.DictReader(lines[:-1]))
  final = dict(kv.split("=") for kv in lines[-1][len("# final:"):].split())
  return rows, {k: float(v) for k, v in final.items()}


def make_session(trace_index=0, watch_ms=(1000,) * NUM_VIDEOS, video_ids=None, start_row=1,
                 weights=MMGC_WEIGHTS) -> Session:
  """One Session with the dtypes FeedsEnv uses."""
  video_ids = np.arange(len(watch_ms)) if video_ids is None else video_ids
  return Session(trace_index=jnp.asarray(trace_index, jnp.int32),
                 start_row=jnp.asarray(start_row, jnp.int32),
                 video_ids=jnp.asarray(video_ids, jnp.int32),
                 watch_ms=jnp.asarray(watch_ms, jnp.int32),
                 weights=jnp.asarray(weights, jnp.float64))


def stack(trees):
  """Stacks a list of pytrees of the same structure along a new leading axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def synthetic_trace(name, times, mbps) -> NetworkTrace:
  return NetworkTrace(name=name, times_s=np.asarray(times, np.float64),
                      bandwidth_mbps=np.asarray(mbps, np.float64))


def reference_session(world: World, catalog: Catalog, trace_index, video_ids, watch_ms,
                      weights=MMGC_WEIGHTS, start_row=1, **kwargs) -> ReferenceSession:
  """The plain-Python reference session over exactly the data packed into world/catalog."""
  n = int(world.trace_len[trace_index])
  times = np.asarray(world.trace_times[trace_index, :n]).tolist()
  mbps = np.asarray(world.trace_mbps[trace_index, :n]).tolist()
  sizes = np.asarray(catalog.chunk_sizes)
  counts = np.asarray(catalog.num_chunks)
  chunks = [[[int(x) for x in sizes[v, j]] for j in range(counts[v])] for v in video_ids]
  return ReferenceSession(trace_times=times, trace_mbps=mbps, chunk_sizes=chunks,
                          watch_ms=[int(w) for w in watch_ms],
                          bitrates_kbps=tuple(float(b) for b in np.asarray(catalog.bitrates_kbps)),
                          weights=tuple(float(w) for w in weights), start_row=int(start_row),
                          **kwargs)


def actions_array(actions) -> Action:
  """[T, N] Action from nested lists actions[t][n] = (slot, level, sleep_ms)."""
  a = np.asarray(actions, np.int64)
  return Action(slot=jnp.asarray(a[..., 0], jnp.int32), level=jnp.asarray(a[..., 1], jnp.int32),
                sleep_ms=jnp.asarray(a[..., 2], jnp.int32))


OBS_KEYS = ("slot_valid", "buffer_ms", "play_ms", "chunks_downloaded", "num_chunks", "last_level",
            "preload_bytes", "play_video_id", "action_mask", "last_invalid")
STATE_KEYS = ("ptr", "last_t", "played_ms", "rebuf_ms", "wall_ms", "dropped_ms", "qoe")
INFO_KEYS = ("quality_kbps", "smooth_kbps", "delay_ms", "rebuf_ms", "video_bytes", "wasted_bytes",
             "end_of_video", "play_video_id", "invalid_action", "quality", "rebuffer_s",
             "smoothness", "megabits")


def make_replay(env: FeedsEnv):
  """jit(replay(sessions[N], actions[T, N], params)): scans vmapped `env.step_env`.

  No auto-reset: a session that has ended keeps being stepped, so callers read
  each session's rows up to its own end. Returns a dict of [T, N, ...] arrays:
  info entries, reward, terminated, the pre-step QoE ("qoe_before"), selected
  post-step observation fields ("obs_*"), state scalars ("state_*") and the
  info metrics ("m_*").
  """
  vstep = jax.vmap(env.step_env, in_axes=(None, 0, 0, None))

  def replay(sessions, actions, params):
    obs, state = jax.vmap(env.reset_to_session, in_axes=(0, None))(sessions, params)

    def body(carry, act):
      _, state = carry
      obs, new_state, reward, terminated, truncated, info = vstep(
          jax.random.key(0), state, act, params)
      out = {k: info[k] for k in INFO_KEYS}
      out.update(reward=reward, terminated=terminated, truncated=truncated,
                 qoe_before=state.qoe)
      out.update({f"obs_{k}": getattr(obs, k) for k in OBS_KEYS})
      out.update({f"state_{k}": getattr(new_state, k) for k in STATE_KEYS})
      out.update({f"m_{k}": v for k, v in info["metrics"].items()})
      return (obs, new_state), out

    _, outs = jax.lax.scan(body, (obs, state), actions)
    return outs

  return jax.jit(replay)


def random_reference_action(rng: random.Random, sim: ReferenceSimulator):
  """A random action for the reference simulator (absolute video id, level, sleep).

  A mix of valid downloads (biased to the playing video so sessions progress),
  sleeps of 1..3000 ms (many short) and arbitrary (slot, level, sleep) triples
  that may or may not be valid; the reference decides which are.
  """
  start = sim.play_video_id
  slots = sim.slots()
  u = rng.random()
  if u < 0.6:
    open_slots = [i for i, s in enumerate(slots) if s.chunk_counter < s.num_chunks]
    if open_slots:
      slot = 0 if (0 in open_slots and rng.random() < 0.5) else rng.choice(open_slots)
      return start + slot, rng.randrange(sim.num_levels), 0
  if u < 0.8:
    ms = rng.randint(1, 200) if rng.random() < 0.4 else rng.randint(1, 3000)
    return start, 0, ms
  slot = rng.randint(-2, 6)
  level = rng.randint(-1, 3)
  sleep = rng.choice([0, 0, 0, -1, -rng.randint(2, 5000)])
  return start + slot, level, sleep


def random_watch_ms(rng: random.Random, num_chunks: int) -> int:
  """A watch duration in [0, N*1000] from a mix that exercises the edge cases."""
  n_ms = num_chunks * 1000
  kind = rng.random()
  if kind < 0.05:
    return 0  # swiped as soon as it starts playing
  if kind < 0.25:
    return rng.randint(1, 400)  # very short: swipes during downloads, several per action
  if kind < 0.4:
    return n_ms if num_chunks <= 47 else rng.randint(0, 15000)  # full watch
  if kind < 0.5:
    return 1000 * rng.randint(1, min(num_chunks, 12))  # exact multiples (quirk 5)
  return rng.randint(0, min(n_ms, 15000))
