"""Parity of the JAX FeedsEnv with the MMGC2022 step logs and with the plain-Python reference.

The real data and the step logs are read by path from ../shared (never copied);
these tests skip when it is absent.
"""

import functools
import random

import jax
import numpy as np
import pytest

from tests.conftest import FIXTURES, MMGC_DEFAULT_WATCH_MS, mmgc_trace, require_shared
from tests.env_helpers import (MMGC_WEIGHTS, actions_array, make_replay, make_session, read_fixture,
                         reference_session, random_reference_action, random_watch_ms, stack,
                         synthetic_trace)
from gfnfeeds.data.packing import pack_world
from gfnfeeds.env.feeds import FeedsEnv, download, sleep
from gfnfeeds.reference.simulator import ReferenceSimulator

FIXTURE_TRACES = {"steps_no_save_high_0.csv": "high/0", "steps_fixed_preload_low_0.csv": "low/0"}


@functools.lru_cache(maxsize=None)
def jitted_step(env):
  return jax.jit(env.step_env)


# --- 1. the reference step logs ------------------------------------------------------------------


@pytest.mark.parametrize("fixture", sorted(FIXTURE_TRACES))
def test_step_log_parity(fixture, mmgc_catalog):
  """FeedsEnv(reference_quirks=True), fed the logged actions, reproduces every column of every
  row of the MMGC2022 step log and the final line's metrics."""
  require_shared()
  rows, final = read_fixture(FIXTURES / fixture)
  world = pack_world([mmgc_trace(FIXTURE_TRACES[fixture])], watch_bank=[MMGC_DEFAULT_WATCH_MS])
  env = FeedsEnv(reference_quirks=True)
  params = env.make_params(mmgc_catalog, world)
  session = make_session(0, MMGC_DEFAULT_WATCH_MS, np.arange(7), 1, MMGC_WEIGHTS)
  obs, state = env.reset_to_session(session, params)
  step = jitted_step(env)
  key = jax.random.key(0)
  sleeps = 0
  for i, row in enumerate(rows):
    assert int(row["step"]) == i
    vid, level = int(row["download_video_id"]), int(row["bitrate"])
    sleep_ms = float(row["sleep_ms"])
    assert float(state.qoe) == pytest.approx(float(row["qoe_before"]), abs=1e-9), i
    if sleep_ms > 0:
      assert sleep_ms == int(sleep_ms)
      action = sleep(int(sleep_ms))
    else:
      action = download(vid - int(obs.play_video_id), level)
    obs, state, reward, terminated, _, info = step(key, state, action, params)
    got = {
        "quality_kbps": float(info["quality_kbps"]), "smooth_kbps": float(info["smooth_kbps"]),
        "delay_ms": float(info["delay_ms"]), "rebuf_ms": float(info["rebuf_ms"]),
        "video_size_bytes": float(info["video_bytes"]),
        "end_of_video": int(bool(info["end_of_video"])),
        "play_video_id_after": int(info["play_video_id"]),
        "wasted_bytes_step": float(info["wasted_bytes"]),
    }
    want = {k: float(row[k]) for k in got}
    assert got == want, (fixture, i)
    assert not bool(info["invalid_action"])
    sleeps += sleep_ms > 0
    valid = np.asarray(obs.slot_valid)
    head = int(obs.play_ms[0]) if valid[0] else -1
    assert head == float(row["play_timeline_head_after_ms"]), (fixture, i)
    buffers = [int(b) for b in np.asarray(obs.buffer_ms)[valid]]
    want_buffers = [int(b) for b in row["buffers_ms_after"].split(";") if b != ""]
    assert buffers == want_buffers, (fixture, i)
    assert bool(terminated) == (i == len(rows) - 1)
  assert sleeps > 0 or fixture == "steps_no_save_high_0.csv"  # sleeps are replayed too
  m = info["metrics"]
  assert float(m["score"]) == pytest.approx(final["score"], abs=1e-6)
  assert float(m["qoe"]) == pytest.approx(final["qoe"], abs=1e-6)
  assert float(m["bandwidth_bytes"]) == final["bandwidth_usage_bytes"]
  assert float(m["wasted_bytes"]) == final["wasted_bytes"]
  assert float(m["download_watch_ratio"]) == pytest.approx(final["download_watch_ratio"], abs=1e-9)


# --- 2. random action sequences against the Python reference ------------------------------------

PARITY_TRACES = ("high/0", "medium/3", "low/7", "mixed/1", "mixed/12", "mixed/19")
SHORT_TRACE = synthetic_trace("short", [0.0, 0.5, 1.0, 1.7], [9.0, 0.8, 2.5, 1.3])
IRREGULAR_TRACE = synthetic_trace("irregular", [0.0, 0.13, 0.9, 1.05, 2.4, 2.41, 3.0],
                                  [1.0, 4.0, 0.6, 12.0, 1.1, 30.0, 2.2])
SESSIONS_PER_GROUP = 40
MAX_STEPS = 700


@pytest.fixture(scope="module")
def parity_world():
  require_shared()
  traces = [mmgc_trace(name) for name in PARITY_TRACES] + [SHORT_TRACE, IRREGULAR_TRACE]
  return pack_world(traces)


def run_reference(rng, world, catalog, quirks, wall_clock):
  """One random session on the reference: (Session, actions [(slot, level, sleep)], records)."""
  n_traces = int(world.trace_times.shape[0])
  trace_index = rng.randrange(n_traces) if rng.random() < 0.7 else rng.randrange(n_traces - 2,
                                                                                n_traces)
  n_rows = int(world.trace_len[trace_index])
  start_row = rng.randint(1, n_rows - 1)
  counts = np.asarray(catalog.num_chunks)
  video_ids = [rng.randrange(len(counts)) for _ in range(7)]
  watch = [random_watch_ms(rng, int(counts[v])) for v in video_ids]
  weights = (rng.uniform(0.5, 1.5), rng.uniform(0.5, 6.0), rng.uniform(0.0, 2.0),
             rng.uniform(0.0, 1.5))
  sim = ReferenceSimulator(reference_session(
      world, catalog, trace_index, video_ids, watch, weights, start_row,
      reference_quirks=quirks, wall_clock_trace=wall_clock))
  actions, records = [], []
  while not sim.done and len(actions) < MAX_STEPS:
    start = sim.play_video_id
    vid, level, sleep_ms = random_reference_action(rng, sim)
    r = sim.step(vid, level, sleep_ms)
    actions.append((vid - start, level, sleep_ms))
    records.append((r, [(s.buffer_ms, s.play_timeline_ms, s.chunk_counter, s.num_chunks,
                         s.levels[-1] if s.levels else -1, s.preload_size) for s in sim.slots()],
                    sim._ptr, sim._last_t))  # the oracle's cursor, read for parity only
  assert sim.done, "a random reference session did not end; raise MAX_STEPS"
  session = make_session(trace_index, watch, video_ids, start_row, weights)
  return session, actions, records, sim.metrics()


@pytest.mark.parametrize("quirks", [False, True])
def test_random_sessions_match_reference(quirks, parity_world, mmgc_catalog):
  """On random sessions (real MMGC traces incl. CRLF mixed files, a short and an irregular
  synthetic trace that wrap many times, random start rows, watch times, weights, sleeps, valid and
  invalid actions, both trace clocks) the vmapped JAX env agrees with the Python reference at every
  step (delay, rebuf, bytes, waste, end_of_video, play id, quality/smooth, reward, invalid flag,
  trace cursor, per-slot observation, action mask, termination) and on the final metrics."""
  env = FeedsEnv(reference_quirks=quirks)
  replay = make_replay(env)
  rng = random.Random(1234 + quirks)
  levels = int(mmgc_catalog.num_levels)
  seen = {"invalid": 0, "sleep": 0, "swipe_in_download": 0, "multi_swipe": 0, "wraps": 0,
          "short_trace": 0, "rebuf": 0, "steps": 0, "swiped_in_flight": 0, "full_watch": 0,
          "zero_watch": 0}
  for wall_clock in (False, True):
    params = env.make_params(mmgc_catalog, parity_world, wall_clock_trace=wall_clock)
    runs = [run_reference(rng, parity_world, mmgc_catalog, quirks, wall_clock)
            for _ in range(SESSIONS_PER_GROUP)]
    t_max = MAX_STEPS  # one padded length: one compilation for all groups
    padded = [r[1] + [(0, 0, 500)] * (t_max - len(r[1])) for r in runs]
    actions = actions_array([[padded[n][t] for n in range(len(runs))] for t in range(t_max)])
    out = jax.device_get(replay(stack([r[0] for r in runs]), actions, params))
    for n, (session, acts, records, final) in enumerate(runs):
      ctx = (quirks, wall_clock, n)
      if int(session.trace_index) >= len(PARITY_TRACES):
        seen["short_trace"] += 1
      counts = np.asarray(mmgc_catalog.num_chunks)[np.asarray(session.video_ids)]
      seen["full_watch"] += int(np.any(np.asarray(session.watch_ms) == 1000 * counts))
      seen["zero_watch"] += int(np.any(np.asarray(session.watch_ms) == 0))
      prev_ptr = int(session.start_row)
      for t, (r, slots, ptr, last_t) in enumerate(records):
        at = (*ctx, t)
        o = {k: v[t, n] for k, v in out.items()}
        assert int(o["delay_ms"]) == r.delay_ms, at
        assert int(o["rebuf_ms"]) == r.rebuf_ms, at
        assert float(o["video_bytes"]) == r.video_size, at
        assert float(o["wasted_bytes"]) == r.wasted_bytes, at
        assert bool(o["end_of_video"]) == r.end_of_video, at
        assert int(o["play_video_id"]) == r.play_video_id, at
        assert float(o["quality_kbps"]) == r.quality_kbps, at
        assert float(o["smooth_kbps"]) == r.smooth_kbps, at
        assert float(o["reward"]) == pytest.approx(r.reward, abs=1e-9), at
        assert float(o["quality"]) == pytest.approx(r.quality, abs=1e-12), at
        assert float(o["rebuffer_s"]) == pytest.approx(r.rebuffer_s, abs=1e-12), at
        assert float(o["smoothness"]) == pytest.approx(r.smoothness, abs=1e-12), at
        assert float(o["megabits"]) == pytest.approx(r.megabits, abs=1e-12), at
        assert bool(o["invalid_action"]) == r.invalid, at
        assert bool(o["terminated"]) == r.done, at
        assert int(o["state_ptr"]) == ptr, at
        assert float(o["state_last_t"]) == pytest.approx(last_t, abs=1e-9), at
        valid = o["obs_slot_valid"]
        assert int(valid.sum()) == len(slots) and bool(np.all(valid[:len(slots)])), at
        got_slots = [tuple(int(x) for x in g) for g in zip(
            o["obs_buffer_ms"], o["obs_play_ms"], o["obs_chunks_downloaded"], o["obs_num_chunks"],
            o["obs_last_level"], o["obs_preload_bytes"])]
        assert got_slots[:len(slots)] == slots, at
        has_next = np.zeros(env.window, bool)
        has_next[:len(slots)] = [s[2] < s[3] for s in slots]
        assert np.array_equal(o["obs_action_mask"][:env.window * levels],
                              np.repeat(has_next, levels)), at
        # Coverage bookkeeping.
        seen["invalid"] += r.invalid
        seen["sleep"] += (r.video_size == 0 and not r.invalid)
        seen["rebuf"] += r.rebuf_ms > 0
        seen["steps"] += 1
        prev_play = 0 if t == 0 else records[t - 1][0].play_video_id
        seen["multi_swipe"] += r.play_video_id - prev_play >= 2
        seen["swipe_in_download"] += (r.video_size > 0 and r.play_video_id > prev_play)
        seen["swiped_in_flight"] += (r.video_size > 0 and prev_play + acts[t][0] < r.play_video_id)
        seen["wraps"] += ptr < prev_ptr
        prev_ptr = ptr
      end = len(records) - 1
      m = {k[2:]: v[end, n] for k, v in out.items() if k.startswith("m_")}
      for k in ("score", "qoe", "quality", "rebuffer_s", "smoothness", "megabits"):
        assert float(m[k]) == pytest.approx(final[k], rel=1e-12, abs=1e-9), (*ctx, k)
      assert float(m["bandwidth_bytes"]) == final["bandwidth_bytes"], ctx
      assert float(m["wasted_bytes"]) == final["wasted_bytes"], ctx
      assert float(m["download_watch_ratio"]) == pytest.approx(final["download_watch_ratio"],
                                                                rel=1e-12), ctx
      assert int(m["invalid_actions"]) == final["invalid_actions"], ctx
      assert int(m["decisions"]) == final["steps"], ctx
      assert bool(m["aborted"]) == final["aborted"], ctx
      assert float(m["startup_delay_s"]) == pytest.approx(final["startup_delay_ms"] / 1000,
                                                           abs=1e-12), ctx
      assert int(out["state_played_ms"][end, n]) == final["total_played_ms"], ctx
      assert int(out["state_rebuf_ms"][end, n]) == final["total_rebuf_ms"], ctx
      assert int(out["state_wall_ms"][end, n]) == final["total_wall_ms"], ctx
      assert int(out["state_dropped_ms"][end, n]) == final["dropped_ms"], ctx
  # The random sessions must actually exercise the edge cases they are meant to cover.
  for k, v in seen.items():
    assert v > 0, (k, seen)
