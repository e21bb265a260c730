"""Incendio: masks, no World access, imitation accuracy, a MAPPO step, export round trip."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import incendio as incendio_config
from gfnfeeds.data.packing import pack_world
from gfnfeeds.env.feeds import FeedsEnv
from gfnfeeds.policies import incendio as inc
from gfnfeeds.training import incendio_algorithm as ia
from gfnfeeds.training.loop import load_training_data
from tests.env_helpers import make_session, synthetic_trace

IMITATION_ACCURACY = 0.6  # joint (video and level) greedy agreement with the expert


def tiny_config(**incendio):
  config = incendio_config.get_config()
  config.train.num_sessions = 4
  config.train.rollout_steps = 8
  config.train.updates_per_chunk = 2
  config.incendio.imitation_updates = 2
  config.incendio.replay_capacity = 256
  config.incendio.il_batch = 32
  config.train.eval_every = 0
  config.train.progress = False
  for k, v in incendio.items():
    config.incendio[k] = v
  return config


def test_grid_conv_equals_flax_conv():
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 5, 2)).astype(jnp.float32)
  conv = nn.Conv(6, (5, 5), padding="SAME", param_dtype=jnp.float32)
  params = conv.init(jax.random.PRNGKey(0), x)
  np.testing.assert_allclose(inc.GridConv(6, (5, 5)).apply(params, x), conv.apply(params, x),
                             rtol=1e-5, atol=1e-5)


def _rollout(policy, params, env, env_params, session, steps, seed=0):
  obs, state = env.reset_to_session(session, env_params)
  pstate = policy.init(obs, env_params.catalog)
  bound = policy.bind(params)

  def body(carry, t):
    obs, state, pstate = carry
    key = jax.random.fold_in(jax.random.PRNGKey(seed), t)
    action, pstate_n = bound.act(key, pstate, obs, env_params.catalog)
    obs_n, state_n, *_ = env.step_env(key, state, action, env_params)
    return (obs_n, state_n, pstate_n), (action, obs.action_mask)

  _, (actions, masks) = jax.lax.scan(body, (obs, state, pstate), jnp.arange(steps))
  return actions, masks


def test_actions_respect_masks_and_the_policy_never_reads_the_world(mmgc_catalog):
  """Sampled actions only download slots with chunks left; with everything the client has
  seen unchanged, changing the hidden future (trace rows beyond what was used, other
  users' watch times) leaves every decision identical."""
  env = FeedsEnv()
  policy = inc.Incendio(env=env, greedy=False)
  params = policy.init_params(jax.random.PRNGKey(3))
  times = np.arange(400, dtype=np.float64) + 1.0
  mbps = 1.0 + 0.8 * np.sin(np.arange(400) / 7.0) ** 2
  base = synthetic_trace("base", times, mbps)
  session = make_session(0, (3400, 2100, 12000, 800, 5000, 6000, 1500))
  params_a = env.make_params(mmgc_catalog, pack_world([base, base]))
  run = jax.jit(lambda p, pp, s: _rollout(policy, p, env, pp, s, 30))
  actions, masks = run(params, params_a, session)
  slot, level, sleep_ms = map(np.asarray, (actions.slot, actions.level, actions.sleep_ms))
  masks = np.asarray(masks)
  download = sleep_ms == 0
  assert np.all((sleep_ms == 0) | (sleep_ms == 200))
  assert download.any() and (~download).any() or download.all()
  index = slot * env.num_levels_hint + level
  assert np.all(masks[np.arange(len(index)), index][download])
  # The policy's inputs are Observation + Catalog only: act()'s signature has no World, and a
  # World whose other trace (never used by this session) differs gives the same decisions.
  changed = synthetic_trace("other", times, mbps[::-1] * 0.3 + 0.1)
  params_b = env.make_params(mmgc_catalog, pack_world([base, changed]))
  actions_b, _ = run(params, params_b, session)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), actions, actions_b))
  # ...while the same policy on a session that really uses the changed trace acts differently.
  actions_c, _ = run(params, params_b, session.replace(trace_index=jnp.asarray(1, jnp.int32)))
  assert not jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), actions,
                                       actions_c))


def test_policy_ignores_hidden_future_of_the_trace(mmgc_catalog):
  """Trace rows after the last row the session's downloads reached are invisible."""
  env = FeedsEnv()
  policy = inc.Incendio(env=env, greedy=True)
  params = policy.init_params(jax.random.PRNGKey(5))
  times = np.arange(600, dtype=np.float64) + 1.0
  mbps = np.full(600, 1.5)
  base = synthetic_trace("base", times, mbps)
  session = make_session(0, (3400, 2100, 12000, 800, 5000, 6000, 1500))
  k = 12
  # How far the cursor gets in k decisions.
  p0 = env.make_params(mmgc_catalog, pack_world([base]))
  obs, state = env.reset_to_session(session, p0)
  pstate = policy.init(obs, p0.catalog)
  bound = policy.bind(params)
  act = jax.jit(bound.act)
  step = jax.jit(env.step_env)
  seq = []
  for t in range(k):
    a, pstate = act(jax.random.PRNGKey(t), pstate, obs, p0.catalog)
    seq.append(a)
    obs, state, *_ = step(jax.random.PRNGKey(t), state, a, p0)
  row = int(state.ptr)
  future = mbps.copy()
  future[row + 1:] = 0.2 + 3.0 * (np.arange(600 - row - 1) % 3)
  p1 = env.make_params(mmgc_catalog, pack_world([synthetic_trace("f", times, future)]))
  obs, state = env.reset_to_session(session, p1)
  pstate = policy.init(obs, p1.catalog)
  for t in range(k):
    a, pstate = act(jax.random.PRNGKey(t), pstate, obs, p1.catalog)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, seq[t])), t
    obs, state, *_ = step(jax.random.PRNGKey(t), state, a, p1)


def test_imitation_reaches_the_expert_on_its_training_states():
  """A short imitation run reproduces the oracle-PDAS expert's decisions on fixed states."""
  config = tiny_config(il_steps=1, il_learning_rate=3e-3)
  data = load_training_data(config)
  s = ia.settings_from_config(config, data.env)
  state0 = ia.init_train_state(jax.random.PRNGKey(0), s, data.params)
  rollout = jax.jit(ia.make_rollout(s, imitation=True))
  _, _, _, d = rollout(state0.params, state0.obs, state0.env_state, state0.pstate, state0.key,
                       data.params)
  batch = {k: ia._flat(d[k]) for k in ("tput", "grid", "bm_mask", "bm_label", "ba_label")}
  assert len(np.unique(np.asarray(batch["bm_label"]))) >= 2  # the labels are not one constant
  net = s.policy.net
  opt = ia.il_optimizer(s)

  @jax.jit
  def fit(params, o):
    (loss, _), g = jax.value_and_grad(lambda p: ia.imitation_loss(net, p, batch),
                                      has_aux=True)(params)
    u, o = opt.update(g, o, params)
    return jax.tree.map(lambda a, b: a + b, params, u), o, loss

  def accuracy(params):
    bm_logits, ba_logits, _ = inc.distributions(
        net, params, inc.Features(batch["tput"], batch["grid"], batch["bm_mask"]))
    return float(ia.label_accuracy(bm_logits, ba_logits, batch["bm_label"],
                                   batch["ba_label"])["accuracy"])

  params, o = state0.params, state0.il_opt
  before = accuracy(params)
  losses = []
  for _ in range(150):
    params, o, loss = fit(params, o)
    losses.append(float(loss))
  after = accuracy(params)
  assert losses[-1] < 0.5 * losses[0]
  assert after >= IMITATION_ACCURACY and after > before, (before, after)


def test_oracle_bandwidth_reads_the_true_trace(mmgc_catalog):
  """The expert's bandwidth equals the trace's delivered rate (payload share, RTT included)."""
  env = FeedsEnv()
  times = np.arange(300, dtype=np.float64) + 1.0
  for level in (0.8, 3.0):
    trace = synthetic_trace("flat", times, np.full(300, level))
    p = env.make_params(mmgc_catalog, pack_world([trace]))
    obs, state = env.reset_to_session(make_session(0), p)
    bw = float(ia.oracle_bandwidth(state, p, obs, 5))
    size = float(np.mean(np.asarray(obs.next_chunk_bytes)[np.asarray(obs.next_chunk_bytes)[:, 0]
                                                          > 0]))
    seconds = 5 * size / (level * 1e6 / 8 * 0.95) + 5 * 0.08
    np.testing.assert_allclose(bw, 5 * size / 1e6 / seconds, rtol=1e-9)


def test_train_chunk_switches_stage_mappo_learns_and_export_round_trips(tmp_path):
  """One run: the imitation chunk, then MAPPO chunks; repeated MAPPO chunks from the same
  sessions lower the PPO loss (the step learns); the export loads and plays identically."""
  config = tiny_config(critic_warmup=0)
  data = load_training_data(config)
  algo = ia.make(config, data)
  states = algo.init_states()
  states, m1 = algo.train_chunk(states, data.params)
  assert "accuracy" in m1 and float(np.asarray(m1["stage"]).max()) == 0.0
  # MAPPO smoke run: every chunk restarts from the same sessions, key and update counter,
  # so the first update of each chunk sees the same rollout distribution with newer params.
  fixed = jax.tree.map(jnp.copy, states)  # the chunk donates its input
  losses, values = [], []
  for _ in range(12):
    states, m2 = algo.train_chunk(states, data.params)
    losses.append(float(np.asarray(m2["loss"])[0, 0]))
    values.append(float(np.asarray(m2["value_loss"])[0, 0]))
    states = states.replace(**{f: jax.tree.map(jnp.copy, getattr(fixed, f))
                               for f in ("obs", "env_state", "pstate", "key", "step")})
  assert "value_loss" in m2 and float(np.asarray(m2["stage"]).min()) == 1.0
  assert np.all(np.isfinite(losses))
  assert losses[-1] < losses[0] and values[-1] < 0.5 * values[0], (losses, values)
  algo.export(states, 0, str(tmp_path / "export"))
  from gfnfeeds.policies.registry import load_policy
  policy, params = load_policy("incendio", data.env, str(tmp_path))
  assert policy.greedy
  trained = jax.tree.map(lambda x: np.asarray(x[0]), states.params)
  assert jax.tree.all(jax.tree.map(np.array_equal, trained, params))
  session = jax.tree.map(lambda x: x[0], data.eval_table.sessions)
  run = jax.jit(lambda p: _rollout(policy, p, data.env, data.params, session, 20)[0])
  a, b = run(trained), run(params)
  assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b))


def test_committed_checkpoint_loads_and_plays():
  """The committed incendio_default loads, plays whole sessions without invalid actions."""
  from gfnfeeds import evaluation
  from gfnfeeds.policies.registry import DEFAULT_CHECKPOINTS, load_policy
  if not (DEFAULT_CHECKPOINTS["incendio"] / "controller.json").exists():
    pytest.skip("no committed Incendio checkpoint")
  config = tiny_config()
  config.train.eval_sessions = 8
  data = load_training_data(config)
  policy, params = load_policy("incendio", data.env)
  assert policy.greedy
  metrics = evaluation.run_sessions(data.env, policy, data.params, data.eval_table, 0,
                                    policy_params=params)
  assert metrics["completed"].all()
  assert int(metrics["invalid_actions"].sum()) == 0
