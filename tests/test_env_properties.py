"""Properties of the JAX FeedsEnv: determinism, batching, sharding, no retracing, invariants,
invalid actions, no hidden information in observations, and the user samplers.

Real MMGC data is read by path from ../shared (never copied); tests skip when it is absent.
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import MMGC, MMGC_DEFAULT_WATCH_MS, mmgc_trace, require_shared
from tests.env_helpers import make_session, stack, synthetic_trace
from gfnfeeds.data.packing import pack_catalog, pack_world
from gfnfeeds.env.feeds import (Action, EnvState, FeedsEnv, Observation, download, sample_watch_ms,
                                sleep)
from gfnfeeds.env.preferences import (ARCHETYPES, WEIGHT_HIGH, WEIGHT_LOW, archetype_preferences,
                                      fixed_preferences)
from gfnfeeds.env.rollout import make_autoreset_rollout, session_mesh, shard_sessions
from gfnfeeds.policies.base import RandomValidPolicy

ENV = FeedsEnv()
POLICY = RandomValidPolicy(env=ENV)
# Shared compiled functions (compiling the environment dominates this file's run time).
JIT_RESET = jax.jit(ENV.reset)
JIT_STEP = jax.jit(ENV.step)
JIT_STEP_ENV = jax.jit(ENV.step_env)
JIT_ACT = jax.jit(lambda key, obs, catalog: POLICY.act(key, (), obs, catalog)[0])
SHORT_TRACE = synthetic_trace("short", [0.0, 0.5, 1.0, 1.7], [9.0, 0.8, 2.5, 1.3])


def tree_equal(a, b) -> bool:
  """Bitwise equality of two pytrees (NaNs compare equal to themselves)."""
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  if ta != tb:
    return False
  return all(np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True) for x, y in zip(la, lb))


def all_finite(tree) -> jax.Array:
  """True when every inexact leaf of `tree` is finite (usable inside jit)."""
  ok = jnp.asarray(True)
  for leaf in jax.tree.leaves(tree):
    if jnp.issubdtype(leaf.dtype, jnp.inexact):
      ok = ok & jnp.all(jnp.isfinite(leaf))
  return ok


@pytest.fixture(scope="module")
def world():
  require_shared()
  from gfnfeeds.data.users import mmgc_user_samples
  from gfnfeeds.data.videos import load_mmgc_videos
  # The MMGC default user and 7 of its user samples, watching a quarter as long, so that
  # random-policy rollouts of a few dozen steps cross session ends.
  bank = np.concatenate([[MMGC_DEFAULT_WATCH_MS],
                         mmgc_user_samples(load_mmgc_videos(MMGC), 7)]) // 4
  return pack_world([mmgc_trace("high/0"), mmgc_trace("low/0"), mmgc_trace("mixed/1")],
                    watch_bank=bank)


@pytest.fixture(scope="module")
def params(mmgc_catalog, world):
  return ENV.make_params(mmgc_catalog, world)


# --- 3. determinism, jit, vmap, sharding --------------------------------------------------------


@pytest.fixture(scope="module")
def rollout():
  return jax.jit(make_autoreset_rollout(ENV, POLICY, 96))


def test_rollout_is_deterministic(rollout, params):
  """The same keys give bitwise-identical auto-reset rollouts; other keys give other rollouts."""
  keys = jax.random.split(jax.random.key(3), 8)
  a = jax.device_get(rollout(keys, params))
  b = jax.device_get(rollout(keys, params))
  assert tree_equal(a, b)
  assert a["sessions_ended"].sum() > 0  # the rollout crosses auto-resets
  c = jax.device_get(rollout(jax.random.split(jax.random.key(4), 8), params))
  assert not np.array_equal(a["reward"], c["reward"])


def test_sharded_rollout_equals_unsharded(rollout, params):
  """shard_sessions over the 2-device session mesh returns bitwise the unsharded vmap result."""
  mesh = session_mesh()
  assert len(mesh.devices.ravel()) == 2, "tests/conftest.py should give 2 host CPU devices"
  keys = jax.random.split(jax.random.key(5), 8)
  sharded = jax.jit(shard_sessions(rollout, mesh, num_sharded_args=1))
  out = sharded(keys, params)
  assert len(out["reward"].sharding.device_set) == 2  # really split over both devices
  assert tree_equal(jax.device_get(out), jax.device_get(rollout(keys, params)))


def test_vmap_equals_single_sessions(params):
  """vmap of env.reset/env.step over N sessions equals, bitwise, the N sessions run one at a time
  without vmap: observations, states, rewards, terminations and info (incl. metrics and the
  auto-reset's final observation) at every step."""
  n, num_steps = 4, 40
  # Users who swipe 8x sooner, so that sessions end (and auto-reset) inside the window.
  params = params.replace(world=params.world.replace(watch_bank=params.world.watch_bank // 8))
  keys = jax.random.split(jax.random.key(6), n)
  vreset, vstep = jax.jit(jax.vmap(ENV.reset, in_axes=(0, None))), jax.jit(
      jax.vmap(ENV.step, in_axes=(0, 0, 0, None)))
  singles = [JIT_RESET(k, params) for k in keys]
  batched = vreset(keys, params)
  assert tree_equal(jax.device_get(batched), jax.device_get(stack(singles)))
  ended = 0
  for t in range(num_steps):
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t)
    actions = [JIT_ACT(jax.random.fold_in(step_keys[i], 1), singles[i][0], params.catalog)
               for i in range(n)]
    singles = [JIT_STEP(step_keys[i], singles[i][1], actions[i], params) for i in range(n)]
    batched = vstep(step_keys, batched[1], stack(actions), params)
    assert tree_equal(jax.device_get(batched), jax.device_get(stack(singles))), t
    ended += int(np.sum(np.asarray(batched[3])))
  assert ended > 0  # the comparison crosses auto-resets


def test_jit_equals_no_jit(params):
  """reset and step (download, invalid action, sleep, auto-reset path) agree with and without jit:
  integer and boolean leaves exactly, float leaves to a few ulp (XLA may compile x / c as
  x * (1 / c))."""
  key = jax.random.key(7)
  actions = [download(0, 2), download(7, 0), sleep(700)]

  def run(reset, step):
    obs, state = reset(key, params)
    out = [(obs, state)]
    for i, a in enumerate(actions):
      out.append(step(jax.random.fold_in(key, i), state, a, params))
      state = out[-1][1]
    return jax.device_get(out)

  jitted = run(JIT_RESET, JIT_STEP)
  with jax.disable_jit():
    eager = run(ENV.reset, ENV.step)
  flat_j, tree_j = jax.tree.flatten(jitted)
  flat_e, tree_e = jax.tree.flatten(eager)
  assert tree_j == tree_e
  for x, y in zip(flat_j, flat_e):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    if np.issubdtype(x.dtype, np.inexact):
      np.testing.assert_allclose(x, y, rtol=1e-14, atol=0)
    else:
      assert np.array_equal(x, y)
  assert int(jitted[-1][1].steps) == len(actions)
  assert bool(jitted[2][5]["invalid_action"])


# --- 4. no retracing ------------------------------------------------------------------------------


def test_step_does_not_retrace(mmgc_videos, mmgc_catalog, world):
  """The jitted step (chex.assert_max_traces(n=1)) traces once, across many steps and across
  different data sets of equal shape (other traces padded to the same length, a permuted catalog,
  other users and scalar settings), and the new data is really used."""
  traces_b = [mmgc_trace("mixed/1"), SHORT_TRACE, mmgc_trace("medium/4")]
  world_b = pack_world(traces_b, watch_bank=np.asarray(world.watch_bank)[::-1] // 2 + 1,
                       max_trace_len=world.trace_times.shape[1])
  catalog_b = pack_catalog(list(reversed(mmgc_videos)), max_chunks=mmgc_catalog.max_chunks)
  assert jax.tree.map(jnp.shape, world_b) == jax.tree.map(jnp.shape, world)
  assert jax.tree.map(jnp.shape, catalog_b) == jax.tree.map(jnp.shape, mmgc_catalog)
  settings = [
      ENV.make_params(mmgc_catalog, world),
      ENV.make_params(mmgc_catalog, world_b),
      ENV.make_params(catalog_b, world),
      ENV.make_params(catalog_b, world_b, rtt_ms=60.0, wall_clock_trace=True, random_offset=True,
                      watch_from_bank=False, shuffle_videos=True, invalid_sleep_ms=300),
  ]

  @chex.assert_max_traces(n=1)
  def step(key, state, action, params):
    return ENV.step(key, state, action, params)

  step = jax.jit(step)
  totals = []
  for p in settings:
    key = jax.random.key(11)
    obs, state = JIT_RESET(key, p)
    total = 0.0
    for t in range(40):
      k_act, k_step = jax.random.split(jax.random.fold_in(key, t))
      obs, state, reward, *_ = step(k_step, state, JIT_ACT(k_act, obs, p.catalog), p)
      total += float(reward)
    totals.append(total)
  assert len(set(totals)) == len(totals), totals  # each data set changed the outcome


# --- 5. invariants over random rollouts ----------------------------------------------------------

INV_SESSIONS, INV_STEPS = 256, 300


def test_invariants_over_random_rollouts(mmgc_catalog, world):
  """Over 256 auto-resetting sessions x 300 random valid steps (users sampled from retention,
  archetype preferences, random trace offsets, shuffled videos): buffers >= 0; buffer + timeline
  == 1000 * chunks for unswiped videos; timelines <= watch time (== for swiped videos); chunk
  counters <= chunk counts; waste <= bytes; bytes == the catalog sizes of the chunks the actions
  downloaded; clean-mode waste == the sizes of downloaded chunks at or past ceil(w/1000);
  wall == played + rebuf + dropped == sum of step delays; no NaN/inf in obs, state, reward or
  metrics; the mask-valid policy is never invalid; env.step equals step_env plus auto-reset;
  sessions end; metrics lie in range."""
  env = ENV
  catalog = mmgc_catalog
  params = env.make_params(catalog, world, archetype_preferences(), watch_from_bank=False,
                           random_offset=True, shuffle_videos=True)

  def one_session(key):
    k_reset, k_loop = jax.random.split(key)
    obs, state = env.reset(k_reset, params)

    def body(carry, k):
      obs, state = carry
      k_act, k_step = jax.random.split(k)
      action, _ = POLICY.act(k_act, (), obs, catalog)
      obs_n, st_n, reward, term, trunc, info = env.step_env(k_step, state, action, params)
      obs_a, st_a, reward_a, term_a, trunc_a, info_a = env.step(k_step, state, action, params)
      done = term | trunc
      fresh = (st_a.steps == 0) & obs_a.first_step & (st_a.play_id == 0)
      autoreset_ok = (tree_equal_jnp(info_a["final_observation"], obs_n)
                      & (reward_a == reward) & (term_a == term) & (trunc_a == trunc)
                      & jnp.where(done, fresh, tree_equal_jnp((obs_a, st_a), (obs_n, st_n))))
      s = st_n.session
      n_chunks = catalog.num_chunks[s.video_ids]
      vid = jnp.clip(state.play_id + action.slot, 0, env.num_videos - 1)
      ids = jnp.arange(env.num_videos)
      unswiped = ids >= st_n.play_id
      rec = {
          "is_download": (action.sleep_ms == 0) & ~info["invalid_action"],
          "invalid": info["invalid_action"],
          "video": s.video_ids[vid], "chunk": state.chunk_counter[vid], "level": action.level,
          "watch": s.watch_ms[vid], "video_bytes": info["video_bytes"],
          "delay": info["delay_ms"], "terminated": term, "truncated": trunc,
          "bytes": info["metrics"]["bandwidth_bytes"], "waste": info["metrics"]["wasted_bytes"],
          "nqoe": info["metrics"]["normalized_qoe"], "wastage": info["metrics"]["wastage_pct"],
          "ratio": info["metrics"]["download_watch_ratio"],
          "decisions": info["metrics"]["decisions"],
          "wall": st_n.wall_ms, "played": st_n.played_ms, "rebuf": st_n.rebuf_ms,
          "dropped": st_n.dropped_ms,
          "buffers_ok": jnp.all(st_n.buffer_ms >= 0) & jnp.all(obs_n.buffer_ms >= 0),
          "conservation_ok": jnp.all(jnp.where(
              unswiped, st_n.buffer_ms + st_n.timeline_ms == 1000 * st_n.chunk_counter, True)),
          "timeline_ok": jnp.all((st_n.timeline_ms >= 0) & (st_n.timeline_ms <= s.watch_ms)
                                 & jnp.where(unswiped, True, st_n.timeline_ms == s.watch_ms)),
          "counter_ok": jnp.all(st_n.chunk_counter <= n_chunks)
                        & jnp.all(obs_n.chunks_downloaded <= obs_n.num_chunks),
          "watch_ok": jnp.all((s.watch_ms >= 0) & (s.watch_ms <= 1000 * n_chunks)),
          "weights": s.weights,
          "finite": all_finite((obs_n, st_n, reward, info, obs_a, st_a)),
          "autoreset_ok": autoreset_ok,
      }
      return (obs_a, st_a), rec

    return jax.lax.scan(body, (obs, state), jax.random.split(k_loop, INV_STEPS))[1]

  keys = jax.random.split(jax.random.key(21), INV_SESSIONS)
  r = jax.device_get(jax.jit(jax.vmap(one_session))(keys))
  r = {k: np.swapaxes(np.asarray(v), 0, 1) for k, v in r.items()}  # [T, N, ...]
  for flag in ("buffers_ok", "conservation_ok", "timeline_ok", "counter_ok", "watch_ok", "finite",
               "autoreset_ok"):
    assert r[flag].all(), flag
  assert not r["invalid"].any()  # the policy only picks masked-valid actions
  assert np.all(r["waste"] <= r["bytes"])
  assert np.all(r["wall"] == r["played"] + r["rebuf"] + r["dropped"])
  assert np.all((r["nqoe"] >= 0) & (r["nqoe"] <= 1))
  assert np.all((r["wastage"] >= 0) & (r["wastage"] <= 100))
  assert np.all(r["ratio"] >= 0)
  w = r["weights"]
  assert np.all((w >= np.asarray(WEIGHT_LOW)) & (w <= np.asarray(WEIGHT_HIGH)))

  sizes = np.asarray(catalog.chunk_sizes)
  expected = np.where(r["is_download"],
                      sizes[r["video"], np.minimum(r["chunk"], sizes.shape[1] - 1),
                            np.clip(r["level"], 0, sizes.shape[2] - 1)], 0.0)
  assert np.array_equal(r["video_bytes"], expected)
  past_watch = r["chunk"] >= -(-r["watch"] // 1000)
  # Per-session segments between auto-resets: sums since the segment's first step.
  done = r["terminated"] | r["truncated"]
  steps = np.arange(INV_STEPS)[:, None]
  first = np.concatenate([np.ones((1, INV_SESSIONS), bool), done[:-1]])
  seg_start = np.maximum.accumulate(np.where(first, steps, 0), axis=0)

  def since_start(x):
    c = np.cumsum(x, axis=0)
    before = np.take_along_axis(np.concatenate([np.zeros((1, INV_SESSIONS)), c]), seg_start, 0)
    return c - before

  assert np.array_equal(r["bytes"], since_start(expected))
  assert np.array_equal(r["wall"], since_start(r["delay"]))
  assert np.array_equal(r["decisions"], steps + 1 - seg_start)
  assert np.all((r["dropped"] == 0) | r["terminated"])
  wasted = since_start(expected * past_watch)
  term = r["terminated"]
  assert np.array_equal(r["waste"][term], wasted[term])  # clean mode: no double count
  # Sessions end: most sessions finish at least once in 300 random steps (the others hold long
  # watches, e.g. full watches of the 125-chunk video, which a random policy feeds slowly).
  assert term.any(axis=0).mean() >= 0.85, term.any(axis=0).mean()
  assert term.sum() >= INV_SESSIONS
  assert not r["truncated"].any()


def tree_equal_jnp(a, b):
  """Bitwise equality of two pytrees inside jit."""
  ok = jnp.asarray(True)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    ok = ok & jnp.all((x == y) | ((x != x) & (y != y)))
  return ok


# --- 6. invalid actions --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def invalid_setup(mmgc_catalog, world):
  """A state at play_id 3 (queue of 4 videos) whose playing video (6_jt, 6 chunks) is complete."""
  env = ENV
  params = env.make_params(mmgc_catalog, world, invalid_sleep_ms=300)
  session = make_session(1, (0, 0, 0, 5000, 4000, 2500, 9000), (0, 1, 2, 5, 3, 4, 6))
  obs, state = env.reset_to_session(session, params)
  step = JIT_STEP_ENV
  key = jax.random.key(0)
  obs, state, *_ = step(key, state, sleep(1), params)  # three zero-length videos swiped at once
  assert int(state.play_id) == 3
  for _ in range(6):
    obs, state, *_ = step(key, state, download(0, 1), params)
  assert int(obs.chunks_downloaded[0]) == int(obs.num_chunks[0]) == 6
  assert int(state.play_id) == 3 and int(obs.slot_valid.sum()) == 4
  return env, params, obs, state


def test_invalid_actions_run_as_counted_sleeps(invalid_setup):
  """Out-of-window slots, a slot past the last video, a finished video, levels -1 and 3, negative
  sleeps and out-of-range discrete indices never crash or produce NaN under jit: each runs exactly
  as a sleep of params.invalid_sleep_ms and is counted in info and metrics; valid controls are not
  counted."""
  env, params, obs, state = invalid_setup
  n_act = env.num_actions
  invalid = [download(env.window, 0), download(-1, 2), download(4, 0), download(0, 2),
             download(1, -1), download(1, 3), sleep(-1), sleep(-500),
             env.action_from_index(-1), env.action_from_index(n_act),
             env.action_from_index(n_act + 7), env.action_from_index(4 * 3 + 1),
             env.action_from_index(0)]
  valid = [download(1, 2), download(3, 0), sleep(300), env.action_from_index(n_act - 1),
           env.action_from_index(5)]
  key = jax.random.key(1)
  results = [jax.device_get(JIT_STEP_ENV(key, state, a, params)) for a in invalid + valid]
  ref = jax.device_get(JIT_STEP_ENV(key, state, sleep(300), params))
  infos = [r[5] for r in results]
  assert [bool(i["invalid_action"]) for i in infos] == [True] * len(invalid) + [False] * len(valid)
  for r, i in zip(results, infos):
    assert int(i["metrics"]["invalid_actions"]) == int(state.invalid_actions) + bool(
        i["invalid_action"])
    assert bool(all_finite(r))
  for n, one in enumerate(results[:len(invalid)]):
    assert int(one[5]["delay_ms"]) == 300 and float(one[5]["video_bytes"]) == 0.0, n
    assert bool(one[0].last_invalid) and bool(one[1].last_invalid), n
    # Identical to a plain 300 ms sleep but for the invalid-action bookkeeping.
    assert tree_equal(one[0].replace(last_invalid=ref[0].last_invalid), ref[0]), n
    assert tree_equal(one[1].replace(last_invalid=ref[1].last_invalid,
                                     invalid_actions=ref[1].invalid_actions), ref[1]), n
    assert tree_equal(one[2:5], ref[2:5]), n
  downloaded = np.asarray([i["video_bytes"] for i in infos])[len(invalid):]
  assert np.array_equal(downloaded > 0, [True, True, False, False, True])  # valid downloads ran


def test_action_mask_marks_exactly_valid_downloads(invalid_setup):
  """Along a jitted rollout of random, often invalid (slot, level, sleep) triples, no step crashes
  or yields NaN; a step is invalid exactly when the pre-step mask (or a negative sleep) says so,
  and then it sleeps params.invalid_sleep_ms and downloads nothing; the counts add up; and from
  visited states (ended ones too) discrete action i is executed (not invalid) iff action_mask[i]."""
  env, params, obs_done, state_done = invalid_setup
  levels = params.catalog.num_levels
  rng = np.random.default_rng(2)
  obs, state = env.reset_to_session(
      make_session(0, (1500, 300, 3000, 0, 2000, 1200, 700), (6, 5, 0, 1, 2, 3, 4), start_row=50),
      params)
  visited, invalid_steps = [(obs_done, state_done)], 0  # starts with a complete playing video
  for t in range(150):
    slot = 0 if rng.random() < 0.4 else int(rng.integers(-2, env.window + 2))
    level = int(rng.integers(-1, levels + 1))
    sleep_ms = int(rng.choice([0, 0, 0, 0, 0, -7, 250, 1, 2000]))
    if t % 5 == 0:
      visited.append((obs, state))
    mask = np.asarray(obs.action_mask)
    in_range = 0 <= slot < env.window and 0 <= level < levels
    expect_invalid = sleep_ms < 0 or (sleep_ms == 0 and not (in_range and mask[slot * levels +
                                                                              level]))
    action = Action(slot=jnp.int32(slot), level=jnp.int32(level), sleep_ms=jnp.int32(sleep_ms))
    obs, state, reward, _, _, info = JIT_STEP_ENV(jax.random.key(t), state, action, params)
    assert bool(info["invalid_action"]) == expect_invalid, t
    assert bool(all_finite((obs, state, reward, info))), t
    if expect_invalid:
      invalid_steps += 1
      assert int(info["delay_ms"]) == 300 and float(info["video_bytes"]) == 0.0, t
  assert 15 < invalid_steps < 135
  assert int(state.invalid_actions) == int(info["metrics"]["invalid_actions"]) == invalid_steps
  assert int(state.play_id) == env.num_videos  # the session ended; later states are included
  for obs_v, state_v in visited:
    executed = [not bool(JIT_STEP_ENV(jax.random.key(0), state_v, env.action_from_index(i),
                                      params)[5]["invalid_action"])
                for i in range(env.num_actions)]
    assert executed == np.asarray(obs_v.action_mask).tolist()
  masks = np.asarray([np.asarray(o.action_mask) for o, _ in visited])
  assert masks.any() and not masks.all()


# --- 7. no hidden information ---------------------------------------------------------------------

HIDDEN_STEPS = 40


def test_observations_do_not_depend_on_the_hidden_future(mmgc_catalog):
  """Changing what the client cannot have seen by step k (trace rows past the cursor, watch times
  of videos not yet in view or beyond their current play position) leaves every observation, and
  so every decision of an observation-driven policy, identical for steps 0..k; the change shows
  only afterwards."""
  base = mmgc_trace("medium/2")
  session = make_session(0, (3400, 2100, 12000, 800, 5000, 6000, 1500), start_row=200)
  k, total = HIDDEN_STEPS, HIDDEN_STEPS + 40

  def run(world, session):
    p = ENV.make_params(mmgc_catalog, world)
    obs, state = ENV.reset_to_session(session, p)
    seq = [(obs, state.ptr, state.play_id, state.timeline_ms)]
    for t in range(total):
      key = jax.random.fold_in(jax.random.key(13), t)
      obs, state, *_ = JIT_STEP_ENV(key, state, JIT_ACT(key, obs, p.catalog), p)
      seq.append((obs, state.ptr, state.play_id, state.timeline_ms))
    return jax.device_get(seq)

  seq_a = run(pack_world([base, base]), session)
  ptr = np.asarray([s[1] for s in seq_a])
  ptr_k, play_k, timeline_k = int(ptr[k]), int(seq_a[k][2]), np.asarray(seq_a[k][3])
  assert np.all(np.diff(ptr[:k + 1]) >= 0) and ptr_k < len(base) - 1  # no wrap before step k
  assert 0 < play_k < 6, play_k

  # Hidden future 1: every trace row after the cursor's row at step k.
  mbps = base.bandwidth_mbps.copy()
  mbps[ptr_k + 1:] = mbps[ptr_k + 1:][::-1] * 0.37 + 0.2
  changed = synthetic_trace("changed", base.times_s, mbps)
  # Hidden future 2: watch times of the videos not swiped by step k, beyond what was played.
  rng = np.random.default_rng(0)
  counts = np.asarray(mmgc_catalog.num_chunks)[np.asarray(session.video_ids)]
  watch = np.asarray(session.watch_ms).copy()
  for v in range(play_k, 7):
    watch[v] = rng.integers(timeline_k[v] + 1, 1000 * counts[v] + 1)
  assert not np.array_equal(watch, np.asarray(session.watch_ms))
  session_b = session.replace(trace_index=jnp.asarray(1, jnp.int32),
                              watch_ms=jnp.asarray(watch, jnp.int32))
  seq_b = run(pack_world([base, changed]), session_b)

  obs_a, obs_b = [s[0] for s in seq_a], [s[0] for s in seq_b]
  for t in range(k + 1):
    assert tree_equal(obs_a[t], obs_b[t]), t
  assert not tree_equal(obs_a, obs_b)  # the change is visible once it is revealed


def test_observation_has_no_hidden_fields(params, mmgc_catalog, world):
  """Observation has no field for watch times, the trace, the trace index or the cursor, and
  get_obs gives the same observation when every hidden part of the state and the World change."""
  names = {f.name for f in dataclasses.fields(Observation)}
  for word in ("watch", "trace", "ptr", "last_t", "session", "start_row", "world", "waste",
               "pending"):
    assert not any(word in n for n in names), (word, names)
  hidden_state = {"ptr", "last_t", "pending_waste", "last_watched_level", "wasted_bytes"}
  assert hidden_state <= {f.name for f in dataclasses.fields(EnvState)}

  obs, state = ENV.reset_to_session(make_session(0, (1200, 100, 7000, 3000, 900, 4000, 500)),
                                    params)
  step = JIT_STEP_ENV
  for a in (download(0, 2), download(0, 1), download(1, 0), sleep(2600), download(0, 0)):
    obs, state, *_ = step(jax.random.key(0), state, a, params)
  assert int(state.play_id) >= 1
  other_world = pack_world([SHORT_TRACE, SHORT_TRACE, SHORT_TRACE], watch_bank=[[1] * 7],
                           max_trace_len=world.trace_times.shape[1])
  scrambled = state.replace(
      session=state.session.replace(trace_index=jnp.asarray(2, jnp.int32),
                                    start_row=jnp.asarray(77, jnp.int32),
                                    watch_ms=state.session.watch_ms * 3 + 11),
      ptr=jnp.asarray(3, jnp.int32), last_t=jnp.asarray(0.123),
      pending_waste=state.pending_waste + 5,
      last_watched_level=jnp.full_like(state.last_watched_level, 2), wasted_bytes=jnp.asarray(9.0))
  get_obs = jax.jit(ENV.get_obs)
  assert tree_equal(get_obs(state, params), obs)
  assert tree_equal(get_obs(scrambled, params.replace(world=other_world)), obs)
  for shift in (1, 2, 5):  # the hidden cursor and watch times, moved a few different ways
    moved = state.replace(ptr=state.ptr + shift, last_t=state.last_t + 0.1 * shift,
                          session=state.session.replace(watch_ms=state.session.watch_ms + shift))
    assert tree_equal(get_obs(moved, params), obs), shift


# --- 8. samplers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("video", [0, 5, 6])
def test_sampled_watch_matches_retention(video, mmgc_videos, mmgc_catalog):
  """sample_watch_ms draws the MMGC user model: floor(w/1000) ~ p_k = r(k) - r(k+1) (max abs
  error < 0.01 over 100k draws), a full watch is exactly N*1000 ms, partial watches spread
  over the whole second."""
  n_draws = 100_000
  v = mmgc_videos[video]
  n = v.num_chunks
  w = np.asarray(jax.jit(sample_watch_ms)(jax.random.key(video), mmgc_catalog,
                                          jnp.full((n_draws,), video, jnp.int32)))
  assert w.min() >= 0 and w.max() <= n * 1000
  k = w // 1000
  p = np.asarray(v.retention) - np.append(np.asarray(v.retention)[1:], 0.0)
  freq = np.bincount(k, minlength=n + 1) / n_draws
  assert freq.shape == (n + 1,)
  assert np.max(np.abs(freq - p)) < 0.01
  assert np.array_equal(k == n, w == n * 1000)  # chunk index N only as a full watch
  partial = w[k < n] % 1000
  assert partial.min() < 50 and partial.max() > 950


def test_preference_sampler_bounds_and_archetypes():
  """Archetype preference draws stay in [0.5,1.5]x[0.5,6]x[0,2]x[0,1.5], every archetype is drawn
  often, zero noise gives the archetype centres, and the fixed sampler gives the MMGC weights."""
  sampler = archetype_preferences()
  w = np.asarray(jax.jit(jax.vmap(sampler.sample))(jax.random.split(jax.random.key(0), 20000)))
  low, high = np.asarray(WEIGHT_LOW), np.asarray(WEIGHT_HIGH)
  assert np.all((w >= low) & (w <= high))
  assert np.allclose(low, [0.5, 0.5, 0.0, 0.0]) and np.allclose(high, [1.5, 6.0, 2.0, 1.5])
  means = np.asarray(list(ARCHETYPES.values()))
  nearest = np.argmin(np.abs(np.log(w[:, None, :] + 1e-3) - np.log(means[None] + 1e-3)).sum(-1),
                      axis=1)
  share = np.bincount(nearest, minlength=len(means)) / len(w)
  assert np.all(share > 0.15), share
  # Zero noise (u[1:3] = 0 gives radius 0) returns the archetype centres.
  u = jnp.asarray([[(a + 0.5) / len(means), 0.0, 0.0, 0.3, 0.7] for a in range(len(means))])
  assert np.allclose(np.asarray(jax.jit(jax.vmap(sampler.from_uniforms))(u)), means)
  fixed = np.asarray(jax.jit(jax.vmap(fixed_preferences().sample))(
      jax.random.split(jax.random.key(1), 5)))
  assert np.all(fixed == np.asarray([1.0, 1.85, 1.0, 0.5]))


def test_float_sleeps_below_one_ms_or_nan_are_invalid(mmgc_catalog):
  """Float sleep_ms in (0, 1) or NaN is invalid (not a download); 2.7 ms truncates to 2 ms."""
  import jax.numpy as jnp
  from gfnfeeds.data.packing import pack_world
  from gfnfeeds.env.feeds import Action, FeedsEnv, Session
  from tests.conftest import MMGC_DEFAULT_WATCH_MS, mmgc_trace
  env = FeedsEnv()
  params = env.make_params(mmgc_catalog, pack_world([mmgc_trace("high/0")]))
  session = Session(trace_index=jnp.int32(0), start_row=jnp.int32(1),
                    video_ids=jnp.arange(7, dtype=jnp.int32),
                    watch_ms=jnp.asarray(MMGC_DEFAULT_WATCH_MS, jnp.int32),
                    weights=jnp.asarray([1.0, 1.85, 1.0, 0.5]))
  _, state = env.reset_to_session(session, params)
  step = jax.jit(env.step_env)
  for value, invalid, delay in [(0.5, True, 500), (float("nan"), True, 500), (2.7, False, 2)]:
    action = Action(slot=jnp.int32(0), level=jnp.int32(0), sleep_ms=jnp.float64(value))
    _, _, _, _, _, info = step(jax.random.PRNGKey(0), state, action, params)
    assert bool(info["invalid_action"]) == invalid
    assert int(info["delay_ms"]) == delay and float(info["video_bytes"]) == 0.0


def test_env_params_vmap_over_worlds_and_preferences(mmgc_catalog):
  """EnvParams is a pytree: vmapping over stacked params (per-session worlds,
  users and preference samplers) equals running each params alone."""
  from gfnfeeds.data.packing import pack_world
  from gfnfeeds.env.feeds import FeedsEnv
  from gfnfeeds.env.preferences import fixed_preferences
  env = FeedsEnv()
  worlds = [pack_world([mmgc_trace(n)], [MMGC_DEFAULT_WATCH_MS], max_trace_len=5880)
            for n in ("high/0", "low/7")]
  prefs = [fixed_preferences(), fixed_preferences((1.2, 3.0, 0.5, 1.0))]
  singles = [env.make_params(mmgc_catalog, w, p) for w, p in zip(worlds, prefs)]
  batched = jax.tree.map(lambda a, b: jnp.stack([jnp.asarray(a), jnp.asarray(b)]), *singles)
  keys = jax.random.split(jax.random.PRNGKey(7), 2)

  def run(key, params):
    obs, state = env.reset(key, params)
    rewards = []
    for t in range(12):
      action = jnp.int32(0) if t % 3 else jnp.int32(15)  # download slot 0 level 0, or sleep
      obs, state, reward, _, _, _ = env.step(jax.random.fold_in(key, t), state, action, params)
      rewards.append(reward)
    return jnp.stack(rewards), state.session.weights

  rewards_b, weights_b = jax.jit(jax.vmap(run))(keys, batched)
  for i, params in enumerate(singles):
    rewards_i, weights_i = jax.jit(run)(keys[i], params)
    np.testing.assert_array_equal(np.asarray(rewards_b[i]), np.asarray(rewards_i))
    np.testing.assert_array_equal(np.asarray(weights_b[i]), np.asarray(weights_i))
  assert not np.array_equal(np.asarray(rewards_b[0]), np.asarray(rewards_b[1]))
  np.testing.assert_allclose(np.asarray(weights_b[1]), [1.2, 3.0, 0.5, 1.0])


def test_world_without_users_samples_from_retention(mmgc_catalog):
  """A world packed without a user bank makes sessions sample watch times from the
  retention curves by default, and asking for bank users raises a clear error."""
  from gfnfeeds.data.packing import pack_world
  from gfnfeeds.env.feeds import FeedsEnv
  env = FeedsEnv()
  world = pack_world([mmgc_trace("high/0")])
  params = env.make_params(mmgc_catalog, world)
  assert params.watch_from_bank is False
  _, state = jax.jit(env.reset)(jax.random.PRNGKey(3), params)
  watch = np.asarray(state.session.watch_ms)
  assert np.all(watch >= 0) and watch.max() > 1000  # real draws, not the -1 marker
  with pytest.raises(ValueError, match="no fixed users"):
    env.make_params(mmgc_catalog, world, watch_from_bank=True)
  banked = pack_world([mmgc_trace("high/0")], [MMGC_DEFAULT_WATCH_MS])
  assert env.make_params(mmgc_catalog, banked).watch_from_bank is True
