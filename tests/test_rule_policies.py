"""Tests of the rule-based controllers (gfnfeeds.policies) in the JAX environment.

(a) No-Save and Fixed-Preload reproduce the reference step logs action for
    action; (b) they equal the plain-Python starters on other traces and users;
(c) PDAS and pdas_w on hand-made situations; (d) every policy jits and vmaps
over 64 sampled sessions without NaN or invalid actions; (e) mean scores on the
MMGC high/medium/low sets with the default user (printed), PDAS > No-Save and
Fixed-Preload on each set; (f) PDAS's safety rule.

Compilation dominates the run time, so every policy is compiled once: one
recorder program per starter for (a)+(b), one evaluator program per policy,
shared by (d) and (e) (same batch size, same params pytree).
"""

import csv
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfnfeeds.data.packing import pack_catalog, pack_world
from gfnfeeds.data.types import NetworkTrace, Video
from gfnfeeds.env.environment import tree_select
from gfnfeeds.env.feeds import FeedsEnv, Session, session_metrics
from gfnfeeds.env.preferences import MMGC_WEIGHTS, archetype_preferences
from gfnfeeds.env.rollout import make_session_evaluator
from gfnfeeds.policies import estimators as est
from gfnfeeds.policies import mpc
from gfnfeeds.policies.registry import make_policy, policy_names
from gfnfeeds.reference import starters
from gfnfeeds.reference.simulator import ReferenceSession, ReferenceSimulator
from tests.conftest import FIXTURES, MMGC_DEFAULT_WATCH_MS, mmgc_trace

SETS = ("high", "medium", "low")
EXTRA_TRACES = ("mixed/1", "mixed/8", "mixed/14", "mixed/17")
FIXTURE_RUNS = {"no_save": ("steps_no_save_high_0.csv", "high/0"),
                "fixed_preload": ("steps_fixed_preload_low_0.csv", "low/0")}
# (b): other traces, each with one of the MMGC sampled users (row j of mmgc_user_samples).
PARITY_TRACES = ("high/3", "high/11", "medium/5", "medium/17", "low/2", "low/13",
                 "mixed/1", "mixed/8", "mixed/14", "mixed/17")
BATCH = 64
NUM_SAMPLED = 8  # sampled sessions beside the MMGC batch in (d)
ENV = FeedsEnv(reference_quirks=True, max_steps=8192)


# ----------------------------------------------------------------- data
@pytest.fixture(scope="module")
def mmgc(mmgc_videos):
  """Catalog, world (60 set traces + extras), params and trace-name index, built once."""
  from gfnfeeds.data.users import mmgc_user_samples
  names = [f"{s}/{i}" for s in SETS for i in range(20)] + list(EXTRA_TRACES)
  traces = [mmgc_trace(n) for n in names]
  users = mmgc_user_samples(mmgc_videos, len(PARITY_TRACES))
  world = pack_world(traces, np.concatenate([[MMGC_DEFAULT_WATCH_MS], users]))
  catalog = pack_catalog(mmgc_videos)
  # One params pytree for every program: the sampling settings only matter
  # to sample_session (used for (d)); evaluations start explicit Sessions.
  params = ENV.make_params(catalog, world, archetype_preferences(), watch_from_bank=False,
                           random_offset=True, shuffle_videos=True)
  return {"videos": mmgc_videos, "catalog": catalog, "params": params, "traces": traces,
          "index": {n: i for i, n in enumerate(names)}, "users": users}


def make_sessions(trace_index, watch_ms, weights=MMGC_WEIGHTS) -> Session:
  """A batch of MMGC-style sessions: row 1 start, session video i = catalog video i."""
  n = len(trace_index)
  return Session(trace_index=jnp.asarray(trace_index, jnp.int32),
                 start_row=jnp.ones((n,), jnp.int32),
                 video_ids=jnp.tile(jnp.arange(7, dtype=jnp.int32), (n, 1)),
                 watch_ms=jnp.asarray(watch_ms, jnp.int32),
                 weights=jnp.broadcast_to(jnp.asarray(weights, jnp.float64), (n, 4)))


def read_fixture(name):
  lines = (FIXTURES / name).read_text().splitlines()
  rows = list(csv.DictReader(lines[:-1]))
  final = dict(kv.split("=") for kv in lines[-1][len("# final:"):].split())
  actions = [(int(r["download_video_id"]), int(r["bitrate"]), int(float(r["sleep_ms"])))
             for r in rows]
  return actions, {k: float(v) for k, v in final.items()}


# ----------------------------------------------------------------- (a) + (b)
def make_recorder(env, policy, num_steps):
  """jit(vmap): runs Sessions for num_steps decisions; returns per-step actions and final metrics.

  Actions are (absolute video id, level, sleep_ms, live) per step; steps after
  the session ended are frozen and marked live=False.
  """

  def one(session, params):
    obs, state = env.reset_to_session(session, params)
    pstate = policy.init(obs, params.catalog)
    key = jax.random.key(0)

    def body(carry, _):
      obs, state, pstate, done = carry
      action, pstate_n = policy.act(key, pstate, obs, params.catalog)
      obs_n, state_n, _, term, trunc, _ = env.step_env(key, state, action, params)
      record = (obs.play_video_id + action.slot, action.level, action.sleep_ms, ~done)
      carry = (tree_select(done, obs, obs_n), tree_select(done, state, state_n),
               tree_select(done, pstate, pstate_n), done | term | trunc)
      return carry, record

    init = (obs, state, pstate, jnp.asarray(False))
    (_, state, _, done), records = jax.lax.scan(body, init, None, length=num_steps)
    return records, session_metrics(state, params), done

  return jax.jit(jax.vmap(one, in_axes=(0, None)))


def python_actions(mmgc, name, trace, watch_ms):
  """Actions of the plain-Python starter on the reference simulator (reference quirks on)."""
  tr = mmgc["traces"][mmgc["index"][trace]]
  videos = [mmgc["videos"][i % 7] for i in range(7)]
  sim = ReferenceSimulator(ReferenceSession(
      tr.times_s.tolist(), tr.bandwidth_mbps.tolist(), [v.chunk_sizes.tolist() for v in videos],
      [int(w) for w in watch_ms], reference_quirks=True))
  policy = (starters.NoSave() if name == "no_save"
            else starters.FixedPreload([v.retention.tolist() for v in videos]))
  actions, last = [], None
  while not sim.done:
    action = policy.act(last, sim)
    actions.append(tuple(int(x) for x in action))
    last = sim.step(*action)
  return actions, sim.metrics()["score"]


@pytest.mark.parametrize("name", sorted(FIXTURE_RUNS))
def test_starters_replay_reference_logs_and_python_twins(mmgc, name):
  fixture, fixture_trace = FIXTURE_RUNS[name]
  traces = [fixture_trace] + list(PARITY_TRACES)
  watch = [MMGC_DEFAULT_WATCH_MS] + [u for u in mmgc["users"]]
  sessions = make_sessions([mmgc["index"][t] for t in traces], watch)
  record = make_recorder(ENV, make_policy(name, ENV), num_steps=1024)
  (vid, level, sleep_ms, live), metrics, done = jax.device_get(record(sessions, mmgc["params"]))
  assert done.all() and (metrics["invalid_actions"] == 0).all()

  def jax_actions(i):
    return [(int(a), int(b), int(c)) for a, b, c, ok in
            zip(vid[i], level[i], sleep_ms[i], live[i]) if ok]

  # (a) the reference log, step for step, and its final score.
  want, final = read_fixture(fixture)
  assert jax_actions(0) == want
  assert metrics["score"][0] == pytest.approx(final["score"], abs=1e-6)
  # (b) the plain-Python starter on other traces and sampled users.
  for i, (trace, w) in enumerate(zip(traces, watch)):
    if i == 0:
      continue
    actions, score = python_actions(mmgc, name, trace, w)
    assert jax_actions(i) == actions, trace
    assert metrics["score"][i] == pytest.approx(score, abs=1e-6), trace


# ----------------------------------------------------------------- estimators, MPC, registry
def test_estimators_match_the_no_save_bookkeeping():
  samples = [0.31, 0.12, 0.5, 0.27, 0.08, 0.44, 0.19]
  ref = starters.NoSave()
  state = est.init_estimator()
  for s in samples:
    ref.throughput = ref.throughput[1:] + [s]
    ref._update_estimate()
    want = ref._update_estimate()
    state = est.push_sample(state, s, True)
    state, got = est.nosave_update(state)
    assert float(got) == want  # bit for bit
  # Leading zeros are ignored; the clean update records one error per sample.
  assert float(est.harmonic_mean(jnp.asarray([0.0, 0.0, 1.0, 2.0, 4.0]))) == pytest.approx(
      3.0 / (1 + 0.5 + 0.25))
  state = est.robust_update(est.init_estimator(), 2.0, True)
  assert float(est.robust_bandwidth(state)) == 2.0
  state = est.robust_update(state, 1.0, True)  # error |2 - 1| / 1 = 1
  assert float(est.robust_bandwidth(state)) == pytest.approx((2 / 1.5) / 2.0)
  unchanged = est.robust_update(state, 9.0, False)  # not a download: nothing recorded
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), unchanged, state))


def test_mpc_masks_short_horizons_and_last_maximum_wins():
  sizes = jnp.full((5, 3), 1e5)
  terms = mpc.rollout(sizes, jnp.asarray([750.0, 1200.0, 1850.0]), 10_000, 10.0, 2, 2)
  assert int(terms.valid.sum()) == 9 and int(terms.horizon) == 2
  np.testing.assert_array_equal(np.asarray(terms.sequences)[np.asarray(terms.valid)][:, 2:], 0)
  index, value = mpc.best_sequence(jnp.asarray([1.0, 3.0, 3.0, 2.0]),
                                   jnp.asarray([True, True, True, False]))
  assert int(index) == 2 and float(value) == 3.0


def test_registry():
  assert policy_names()[:5] == ("no_save", "fixed_preload", "mpc_fixed_preload", "pdas", "pdas_w")
  assert {"random_shooting", "oracle"} <= set(policy_names())  # the reference planners
  assert make_policy("pdas", ENV, sleep_ms=100).sleep_ms == 100
  with pytest.raises(ValueError, match="no_save, fixed_preload, mpc_fixed_preload, pdas, pdas_w"):
    make_policy("bola", ENV)
  with pytest.raises(ValueError, match="stall_model"):
    make_policy("pdas", ENV, stall_model="nope")


# ----------------------------------------------------------------- (c) PDAS situations
@pytest.fixture(scope="module")
def toy():
  """Five identical 10-chunk videos except retention: even ids watch well, odd ids poorly."""
  sizes = np.tile(np.asarray([100_000, 160_000, 240_000], np.int64), (10, 1))
  high = np.linspace(1.0, 0.8, 11)
  low = np.concatenate([[1.0], np.linspace(0.4, 0.05, 10)])
  videos = [Video(f"v{i}", sizes, high if i % 2 == 0 else low) for i in range(5)]
  catalog = pack_catalog(videos)
  trace = NetworkTrace("flat", np.arange(0.0, 100.0, 0.5), np.full(200, 8.0))
  env = FeedsEnv(num_videos=5)
  params = env.make_params(catalog, pack_world([trace], [[10_000] * 5], videos_per_session=5))
  session = Session(trace_index=jnp.int32(0), start_row=jnp.int32(1),
                    video_ids=jnp.arange(5, dtype=jnp.int32),
                    watch_ms=jnp.full((5,), 10_000, jnp.int32),
                    weights=jnp.asarray(MMGC_WEIGHTS, jnp.float64))
  obs, _ = env.reset_to_session(session, params)
  # A later decision (not the first) after a sleep: no new sample, C stays 0.5 MB/s.
  obs = obs.replace(first_step=jnp.asarray(False), last_was_download=jnp.asarray(False))
  pstate = est.init_estimator().replace(samples=jnp.full((5,), 0.5), last_estimate=0.5,
                                        has_estimate=jnp.asarray(True))
  return catalog, obs, pstate


def situation(obs, video_ids=(0, 1, 2, 3, 4), buffer_ms=(0,) * 5, chunks=(0,) * 5,
              play_ms=(0,) * 5, weights=MMGC_WEIGHTS):
  chunks = jnp.asarray(chunks, jnp.int32)
  return obs.replace(slot_video=jnp.asarray(video_ids, jnp.int32),
                     buffer_ms=jnp.asarray(buffer_ms, jnp.int32),
                     chunks_downloaded=chunks, play_ms=jnp.asarray(play_ms, jnp.int32),
                     last_level=jnp.where(chunks > 0, 1, -1),
                     weights=jnp.asarray(weights, jnp.float64))


def test_pdas_hand_made_situations(toy):
  catalog, obs, pstate = toy
  pdas = make_policy("pdas")
  act = jax.jit(lambda o: pdas.act(jax.random.key(0), pstate, o, catalog)[0])
  bmax = np.asarray(pdas.max_buffer_s(obs, catalog, 0.5))
  assert np.all(bmax < 4.0)  # b_th = 3.5 exp(-0.15 - 0.15 i) s dominates at 0.5 MB/s

  # Under its max buffer, the playing video is downloaded (the others are full).
  a = act(situation(obs, buffer_ms=(1000, 9000, 9000, 9000, 9000), chunks=(3, 9, 9, 9, 9),
                    play_ms=(2000, 0, 0, 0, 0)))
  assert (int(a.sleep_ms), int(a.slot)) == (0, 0)
  # Every video above its max buffer: sleep 50 ms.
  a = act(situation(obs, buffer_ms=(5000,) * 5, chunks=(7, 5, 5, 5, 5),
                    play_ms=(2000, 0, 0, 0, 0)))
  assert int(a.sleep_ms) == 50
  # Two otherwise identical queued videos: the one more likely to be watched
  # wins, whichever slot it sits in (the playing video and slot 3, 4 are full).
  full = dict(buffer_ms=(5000, 1000, 1000, 5000, 5000), chunks=(7, 1, 1, 5, 5),
              play_ms=(2000, 0, 0, 0, 0))
  assert int(act(situation(obs, video_ids=(0, 1, 2, 3, 4), **full)).slot) == 2
  assert int(act(situation(obs, video_ids=(0, 2, 1, 3, 4), **full)).slot) == 1

  # pdas_w: a huge theta picks a lower level than theta = 0.
  pdas_w = make_policy("pdas_w")
  act_w = jax.jit(lambda o: pdas_w.act(jax.random.key(0), pstate, o, catalog)[0])
  state = dict(buffer_ms=(3000, 0, 0, 0, 0), chunks=(3, 0, 0, 0, 0), play_ms=(1000, 0, 0, 0, 0))
  cheap = act_w(situation(obs, weights=(1.0, 1.85, 1.0, 100.0), **state))
  free = act_w(situation(obs, weights=(1.0, 1.85, 1.0, 0.0), **state))
  assert int(cheap.level) == 0 and int(free.level) == 2


def test_pdas_safety_keeps_the_playing_video_fed(toy):
  """Playing buffer (0.1 s) below the 0.2-s lowest-level download of any queued chunk: no preload.

  The playing video (a poorly watched one, on its last chunk) has a 1-chunk
  horizon while the queued videos have 5, so without the safety rule PDAS
  prefers a queued video and lets the playing one stall.
  """
  catalog, obs, pstate = toy
  state = situation(obs, video_ids=(1, 0, 2, 3, 4), buffer_ms=(100, 1000, 0, 0, 0),
                    chunks=(9, 1, 0, 0, 0), play_ms=(8900, 0, 0, 0, 0))
  safe, unsafe = make_policy("pdas"), make_policy("pdas", safety=False)
  np.testing.assert_array_equal(np.asarray(safe.unsafe(state, catalog, 0.5)),
                                [False, True, True, True, True])
  np.testing.assert_array_equal(np.asarray(safe.candidates(state, catalog, 0.5)),
                                [True, False, False, False, False])
  a = safe.act(jax.random.key(0), pstate, state, catalog)[0]
  assert (int(a.sleep_ms), int(a.slot)) == (0, 0)
  assert int(unsafe.act(jax.random.key(0), pstate, state, catalog)[0].slot) != 0
  # With enough playing buffer (5 s > 0.2 s) the rule bars nothing.
  roomy = state.replace(buffer_ms=jnp.asarray([5000, 1000, 0, 0, 0], jnp.int32))
  assert not np.any(np.asarray(safe.unsafe(roomy, catalog, 0.5)))
  # Nor when the playing video is fully downloaded: preloading is the only option.
  done = state.replace(chunks_downloaded=jnp.asarray([10, 1, 0, 0, 0], jnp.int32))
  assert not np.any(np.asarray(safe.unsafe(done, catalog, 0.5)))


# ----------------------------------------------------------------- (d) + (e)
# The rule-based controllers (the reference planners, registered beside them, have their own
# tests in test_reference_planners.py; the oracle costs seconds per full session).
RULES = ("no_save", "fixed_preload", "mpc_fixed_preload", "pdas", "pdas_w")


@functools.cache
def evaluator(name):
  return jax.jit(make_session_evaluator(ENV, make_policy(name, ENV)))


@pytest.fixture(scope="module")
def evaluations(mmgc):
  """Per policy: metrics on 8 sampled sessions and on the 60 MMGC set sessions (+4 pdas_w
  probes), run as one batch per policy (one compile; the sampled sessions' 50 ms sleeps make
  them the long ones, so fewer of them bound the batch's trip count)."""
  params = mmgc["params"]
  sampled = jax.vmap(ENV.sample_session, in_axes=(0, None))(
      jax.random.split(jax.random.key(7), NUM_SAMPLED), params)
  sets = [mmgc["index"][f"{s}/{i}"] for s in SETS for i in range(20)]
  probes = [mmgc["index"]["high/0"], mmgc["index"]["low/0"]] * 2  # theta 0, 0, 100, 100
  weights = np.tile(np.asarray(MMGC_WEIGHTS), (BATCH, 1))
  weights[60:62, 3], weights[62:64, 3] = 0.0, 100.0
  mmgc_sessions = make_sessions(sets + probes, [MMGC_DEFAULT_WATCH_MS] * BATCH, weights)
  sessions = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), sampled, mmgc_sessions)
  keys = jax.random.split(jax.random.key(0), NUM_SAMPLED + BATCH)
  out = {}
  for name in RULES:
    m = jax.device_get(evaluator(name)(sessions, keys, params)[0])
    out[name] = {"sampled": {k: v[:NUM_SAMPLED] for k, v in m.items()},
                 "mmgc": {k: v[NUM_SAMPLED:] for k, v in m.items()}}
  return out


@pytest.mark.parametrize("name", RULES)
def test_policies_vmap_over_sampled_sessions(evaluations, name):
  for batch in ("sampled", "mmgc"):
    m = evaluations[name][batch]
    for key, value in m.items():
      assert np.all(np.isfinite(np.asarray(value, np.float64))), (batch, key)
    assert np.all(m["invalid_actions"] == 0), batch
    assert np.all(m["completed"]) and not np.any(m["aborted"]), batch


def test_mmgc_set_scores(evaluations):
  means = {}
  for name in RULES:
    score = evaluations[name]["mmgc"]["score"][:60].reshape(len(SETS), 20).mean(axis=1)
    means[name] = score
    print(f"{name:18s} " + " ".join(f"{s}={v:8.3f}" for s, v in zip(SETS, score))
          + f"  mean={score.mean():8.3f}")
  # PDAS beats both MMGC starters on every set (BASELINES.md section 3: it won MMGC2022).
  assert np.all(means["pdas"] > means["no_save"]) and np.all(means["pdas"] > means["fixed_preload"])
  # pdas_w on high/0 and low/0: theta = 100 downloads fewer bits at lower levels than theta = 0.
  m = evaluations["pdas_w"]["mmgc"]
  free, cheap = slice(60, 62), slice(62, 64)
  assert np.all(m["megabits"][cheap] < m["megabits"][free])
  assert np.all(m["quality"][cheap] < m["quality"][free])
