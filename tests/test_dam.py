"""DAM (PPO on the 16-way masked joint action): masks, reward, learning, export, jit/vmap."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import dam as dam_config
from gfnfeeds import evaluation
from gfnfeeds.env.feeds import CHUNK_MS
from gfnfeeds.policies import dam
from gfnfeeds.policies.registry import DEFAULT_CHECKPOINTS, load_policy
from gfnfeeds.training import dam_algorithm
from gfnfeeds.training.loop import load_training_data


def tiny_config(**train):
  config = dam_config.get_config()
  config.dam.actor_hidden = (16, 16)
  config.dam.critic_hidden = (16, 16)
  config.dam.ppo_epochs = 2
  config.dam.ppo_minibatches = 2
  config.train.num_sessions = 8
  config.train.rollout_steps = 16
  config.train.updates_per_chunk = 2
  config.train.eval_every = 0
  config.train.eval_sessions = 8
  config.train.progress = False
  for k, v in train.items():
    config.train[k] = v
  return config


@pytest.fixture(scope="module")
def setup():
  config = tiny_config()
  data = load_training_data(config)
  settings = dam_algorithm.settings_from_config(config, data.env)
  return config, data, settings


def _biased_params(settings, action: int, bias: float = 50.0):
  """Fresh parameters whose actor strongly prefers `action` (to test that masks win)."""
  params = settings.controller.init_params(jax.random.PRNGKey(3))
  layers = params["params"]["actor"]
  last = sorted(layers)[-1]
  b = layers[last]["bias"]
  layers[last]["bias"] = b.at[action].set(bias)
  return params


def test_masks_respected_even_against_the_actor(setup):
  """An actor that wants to sleep (or fetch the last slot) never takes a masked action, and
  the force rule leaves only the playing video's downloads when its buffer is low."""
  _, data, settings = setup
  env = data.env
  w, l = env.window, env.num_levels_hint
  h = env.history_len
  forced_seen = 0
  for action in (env.num_actions - 1, (w - 1) * l + 2):
    params = _biased_params(settings, action)
    state = dam_algorithm.init_train_state(jax.random.PRNGKey(1), settings, data.params)
    rollout = jax.jit(dam_algorithm.make_rollout(settings))
    obs = state.obs
    for i in range(3):
      obs, env_state, batch, _ = rollout(params, obs, state.env_state, jax.random.PRNGKey(i),
                                         data.params)
      state = state.replace(obs=obs, env_state=env_state)
      mask = np.asarray(batch["mask"])
      act = np.asarray(batch["action"])
      taken = np.take_along_axis(mask, act[..., None], axis=-1)[..., 0]
      assert taken.all()
      feats = np.asarray(batch["features"])
      # The playing video's downloads stay allowed iff it has chunks left.
      forced = (feats[..., h + 2 * w] <= 1.0) & mask[..., 0]
      forced_seen += int(forced.sum())
      assert (act[forced] < l).all()
      assert not mask[forced][:, l:].any()
    assert int(np.asarray(state.env_state.invalid_actions).sum()) == 0
  assert forced_seen > 0  # the force rule was exercised


def test_dam_mask_unit(setup):
  _, data, _ = setup
  env = data.env
  obs, _ = env.reset(jax.random.PRNGKey(0), data.params)
  n = env.num_actions
  full = obs.replace(action_mask=jnp.ones((n,), bool))
  low = full.replace(buffer_ms=full.buffer_ms.at[0].set(999))
  high = full.replace(buffer_ms=full.buffer_ms.at[0].set(1001))
  np.testing.assert_array_equal(dam.dam_mask(low, 3, 1000.0), np.arange(n) < 3)
  np.testing.assert_array_equal(dam.dam_mask(high, 3, 1000.0), np.ones(n, bool))
  # The playing video has nothing left: no force, whatever its buffer.
  done0 = low.replace(action_mask=low.action_mask.at[:3].set(False))
  np.testing.assert_array_equal(dam.dam_mask(done0, 3, 1000.0), np.arange(n) >= 3)


def test_training_reward_by_hand():
  # p = 0.8, q = 1850 kbps, smooth = 450 kbps, stall 300 ms, 250 kB, MMGC weights:
  # 0.8 * 1.85 - 1.85 * 0.3 - 0.8 * 0.45 - 0.5 * 8 * 0.25 = 1.48 - 0.555 - 0.36 - 1.0
  r = dam_algorithm.training_reward(jnp.asarray([1.0, 1.85, 1.0, 0.5]), 0.8, 1850.0, 450.0,
                                    300.0, 250_000.0)
  np.testing.assert_allclose(float(r), -0.435, rtol=1e-12)


def test_rollout_reward_matches_the_env_step(setup):
  """The rollout's reward is the formula on the env's own step terms, p read before the step
  from the catalog's retention curve of the chosen slot's video."""
  _, data, settings = setup
  env, catalog = data.env, data.params.catalog
  state = dam_algorithm.init_train_state(jax.random.PRNGKey(5), settings, data.params)
  rollout = jax.jit(dam_algorithm.make_rollout(settings))
  obs, env_state = state.obs, state.env_state
  # A few steps in, so queued videos and partial positions appear.
  for i in range(4):
    obs, env_state, _, _ = rollout(state.params, obs, env_state, jax.random.PRNGKey(10 + i),
                                   data.params)
  _, _, batch, _ = rollout(state.params, obs, env_state, jax.random.PRNGKey(99), data.params)
  act = np.asarray(batch["action"][0])
  ret = np.asarray(catalog.retention)
  checked_download = 0
  for s in range(settings.num_sessions):
    o = jax.tree.map(lambda x: x[s], obs)
    st = jax.tree.map(lambda x: x[s], env_state)
    _, _, _, _, _, info = env.step_env(jax.random.PRNGKey(0), st, int(act[s]), data.params)
    slot = min(int(act[s]) // 3, env.window - 1)
    video = int(o.slot_video[slot])
    if video >= 0:
      r_next = ret[video, int(o.chunks_downloaded[slot])]
      r_now = ret[video, int(o.play_ms[slot]) // CHUNK_MS]
      p = min(r_next / r_now, 1.0) if r_now > 0 else 0.0
    else:
      p = 0.0
    w = np.asarray(o.weights)
    expected = (p * (w[0] * float(info["quality_kbps"]) / 1000 - w[2] * float(info["smooth_kbps"])
                     / 1000) - w[1] * float(info["rebuf_ms"]) / 1000
                - w[3] * 8 * float(info["video_bytes"]) / 1e6)
    np.testing.assert_allclose(float(batch["reward"][0, s]), expected, rtol=1e-5, atol=1e-5)
    checked_download += int(act[s]) < 15 and float(info["quality_kbps"]) > 0
  assert checked_download > 0


def test_smoke_training_improves_the_objective():
  """A short PPO run on the default data raises the greedy policy's mean score_w on fixed
  sessions above the untrained network's."""
  config = tiny_config(num_sessions=16, rollout_steps=32, updates_per_chunk=60)
  config.dam.actor_learning_rate = 1e-3
  config.train.eval_sessions = 32
  data = load_training_data(config)
  settings = dam_algorithm.settings_from_config(config, data.env)
  states = dam_algorithm.init_train_states(0, 1, settings, data.params)
  ctrl = settings.controller
  before = evaluation.run_sessions(data.env, ctrl, data.params, data.eval_table, 0,
                                   policy_params=jax.tree.map(lambda x: x[0], states.params))
  chunk = dam_algorithm.make_train_chunk(settings, 1)
  states, metrics = chunk(states, data.params)
  after = evaluation.run_sessions(data.env, ctrl, data.params, data.eval_table, 0,
                                  policy_params=jax.tree.map(lambda x: x[0], states.params))
  assert np.all(np.isfinite(np.asarray(metrics["loss"])))
  tr = np.asarray(metrics["train_reward"])[0]
  assert tr[-10:].mean() > tr[:10].mean(), (tr[:10].mean(), tr[-10:].mean())
  assert after["score"].mean() > before["score"].mean() + 1.0, (
      before["score"].mean(), after["score"].mean())
  assert int(after["invalid_actions"].sum()) == 0


def test_export_load_round_trip_and_jit_vmap(setup, tmp_path):
  _, data, settings = setup
  ctrl = settings.controller
  params = ctrl.init_params(jax.random.PRNGKey(7))
  dam_algorithm.save_controller(str(tmp_path / "export"), ctrl, jax.tree.map(np.asarray, params))
  loaded, loaded_params = dam_algorithm.load_controller(str(tmp_path), data.env)  # workdir form
  assert loaded == ctrl
  jax.tree.map(np.testing.assert_array_equal, params, loaded_params)
  # Identical actions on a batch of observations, vmapped + jitted vs one by one eagerly.
  state = dam_algorithm.init_train_state(jax.random.PRNGKey(2), settings, data.params)
  obs, env_state = state.obs, state.env_state
  rollout = jax.jit(dam_algorithm.make_rollout(settings))
  obs, env_state, _, _ = rollout(params, obs, env_state, jax.random.PRNGKey(4), data.params)
  keys = jax.random.split(jax.random.PRNGKey(8), settings.num_sessions)
  cat = data.params.catalog
  batched = jax.jit(jax.vmap(lambda k, p, o, c: loaded.choose(k, p, o, c)[:2],
                             in_axes=(0, None, 0, None)))
  idx_b, logits_b = batched(keys, loaded_params, obs, cat)
  idx_orig = jax.vmap(lambda k, o: ctrl.choose(k, params, o, cat)[0])(keys, obs)
  np.testing.assert_array_equal(idx_b, idx_orig)
  for s in range(settings.num_sessions):
    o = jax.tree.map(lambda x: x[s], obs)
    i1, l1 = ctrl.choose(keys[s], params, o, cat)[:2]
    assert int(i1) == int(idx_b[s])
    np.testing.assert_allclose(np.asarray(l1), np.asarray(logits_b[s]), rtol=1e-5, atol=1e-5)
  # Sampling mode: same keys, same samples under jit/vmap and eagerly.
  sampler = dataclasses.replace(ctrl, greedy=False)
  s_b = jax.jit(jax.vmap(lambda k, o: sampler.choose(k, params, o, cat)[0]))(keys, obs)
  s_e = [int(sampler.choose(keys[s], params, jax.tree.map(lambda x: x[s], obs), cat)[0])
         for s in range(settings.num_sessions)]
  np.testing.assert_array_equal(np.asarray(s_b), s_e)
  # Whole sessions through the evaluator: identical metrics with the original and loaded params.
  m1 = evaluation.run_sessions(data.env, ctrl, data.params, data.eval_table, 0,
                               policy_params=params)
  m2 = evaluation.run_sessions(data.env, loaded, data.params, data.eval_table, 0,
                               policy_params=loaded_params)
  for k in ("score", "decisions", "bandwidth_bytes"):
    np.testing.assert_array_equal(m1[k], m2[k])


def test_committed_checkpoint_loads_and_plays(setup):
  _, data, _ = setup
  if not (DEFAULT_CHECKPOINTS["dam"] / "controller.json").exists():
    pytest.skip("no committed DAM checkpoint")
  policy, params = load_policy("dam", data.env)
  metrics = evaluation.run_sessions(data.env, policy, data.params, data.eval_table, 0,
                                    policy_params=params)
  assert metrics["completed"].all()
  assert int(metrics["invalid_actions"].sum()) == 0
