"""Training the feeds GFlowNet: learning on a fixed batch, seeds, resume, export, evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments.configs import gfn as gfn_config
from gfnfeeds.env.feeds import FeedsEnv
from gfnfeeds.training import gfn_algorithm, gfn_trainer
from gfnfeeds.training.loop import load_training_data, train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**train):
  config = gfn_config.get_config()
  config.gfn.horizon = 1
  config.gfn.num_candidates = 2
  config.gfn.num_scenarios = 1
  config.gfn.hidden = (8,)
  config.train.num_sessions = 2
  config.train.rollout_steps = 2
  config.train.num_updates = 6
  config.train.updates_per_chunk = 2
  config.train.checkpoint_every = 1
  config.train.eval_every = 0
  config.train.eval_sessions = 2
  config.train.progress = False
  for k, v in train.items():
    config.train[k] = v
  return config


@pytest.mark.parametrize("candidates", ["distinct", "iid"])
def test_update_learns_a_fixed_batch(candidates):
  """Repeated updates on the same decisions drive the TB loss down (the step learns)."""
  config = tiny_config(num_sessions=4, rollout_steps=4)
  config.gfn.num_candidates = 4
  config.gfn.candidates = candidates
  data = load_training_data(config)
  settings = gfn_algorithm.settings_from_config(config, data.env)
  state0 = gfn_trainer.init_train_state(jax.random.PRNGKey(0), settings, data.params)
  update = jax.jit(gfn_trainer.make_update(settings))
  state, losses = state0, []
  for _ in range(60):
    state, metrics = update(state, data.params)
    losses.append(float(metrics["loss"]))
    # Same sessions and key every time: only the parameters move.
    state = state.replace(obs=state0.obs, env_state=state0.env_state, key=state0.key)
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.25 * losses[0], (losses[0], losses[-1])


def test_seeds_are_vmapped_and_differ():
  config = tiny_config()
  data = load_training_data(config)
  settings = gfn_algorithm.settings_from_config(config, data.env)
  states = gfn_trainer.init_train_states(0, 2, settings, data.params)
  chunk = gfn_trainer.make_train_chunk(settings, num_seeds=2)
  states, metrics = chunk(states, data.params)
  assert metrics["loss"].shape == (2, config.train.updates_per_chunk)
  leaves = jax.tree.leaves(states.params)
  assert any(not np.array_equal(np.asarray(x[0]), np.asarray(x[1])) for x in leaves)
  assert np.all(np.asarray(states.step) == config.train.updates_per_chunk)


def _exported_params(workdir):
  _, params = gfn_algorithm.load_controller(str(workdir), FeedsEnv())
  return jax.tree.leaves(params)


def test_killed_run_resumes_to_the_same_parameters(tmp_path):
  """Stopping after any chunk and resuming ends bit-identical to an uninterrupted run."""
  config = tiny_config()
  train_and_evaluate(config, str(tmp_path / "straight"))
  interrupted = str(tmp_path / "interrupted")
  train_and_evaluate(config, interrupted, stop_after_chunks=1)
  assert not os.path.exists(os.path.join(interrupted, "export"))
  train_and_evaluate(config, interrupted, stop_after_chunks=1)
  train_and_evaluate(config, interrupted)
  for a, b in zip(_exported_params(tmp_path / "straight"), _exported_params(interrupted)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  lines = [json.loads(x) for x in open(os.path.join(interrupted, "metrics.jsonl"))]
  assert [r["update"] for r in lines] == [2, 4, 6]
  straight = [json.loads(x) for x in open(tmp_path / "straight" / "metrics.jsonl")]
  assert lines[-1]["seeds"][0]["loss"] == straight[-1]["seeds"][0]["loss"]
  # A resumed run with other settings is refused, naming the field.
  other = tiny_config()
  other.gfn.loss = "db"
  with pytest.raises(ValueError, match="gfn.loss"):
    train_and_evaluate(other, interrupted)
  # The evaluation program runs the exported controller as its single-candidate,
  # fixed-preference variant (both flags in one run; the plain K-candidate controller is
  # what the committed-checkpoint and oracle tests run in process).
  out = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate", "--policy=gfn",
       f"--checkpoint={tmp_path / 'straight'}", "--network=default:high", "--sessions=4",
       "--users=sampled:1", "--preferences=sampled", "--progress=false",
       "--gfn_candidates=1", "--gfn_condition=mmgc"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(ROOT / ".jax_cache")))
  assert out.returncode == 0, out.stderr[-2000:]
  assert "score" in out.stdout


def test_bad_checkpoint_and_training_settings_fail_clearly(tmp_path):
  with pytest.raises(ValueError, match="no controller.json"):
    gfn_algorithm.load_controller(str(tmp_path), FeedsEnv())
  config = tiny_config()
  config.gfn.num_candidates = 1
  data = load_training_data(config)
  with pytest.raises(ValueError, match="K >= 2"):
    gfn_algorithm.settings_from_config(config, data.env)
  config = tiny_config()
  config.data.network = str(tmp_path / "missing")
  with pytest.raises(Exception, match="missing"):
    load_training_data(config)


def test_every_belief_setting_is_a_config_field():
  """`config.gfn.<field>` reaches BeliefConfig for every field; an older config keeps defaults."""
  import dataclasses

  from gfnfeeds.planning.belief import BeliefConfig
  config = gfn_config.get_config()
  assert {f.name for f in dataclasses.fields(BeliefConfig)} <= set(config.gfn.keys())
  config.gfn.robust_discount = True
  config.gfn.history = 7
  config.gfn.min_spread = 0.3
  belief = gfn_algorithm.controller_from_config(config, FeedsEnv()).belief
  assert (belief.robust_discount, belief.history, belief.min_spread) == (True, 7, 0.3)
  del config.gfn["robust_discount"]
  del config.gfn["min_spread"]
  belief = gfn_algorithm.controller_from_config(config, FeedsEnv()).belief
  assert belief.robust_discount is False and belief.min_spread == BeliefConfig().min_spread


def test_sleep_mask_setting_reaches_the_controller_and_its_export(tmp_path):
  """`config.gfn.sleep_while_stalled` sets the controller's; an export keeps it, and an
  export without it (the committed gfn_default) loads with the mask on."""
  import dataclasses

  config = gfn_config.get_config()
  assert gfn_algorithm.controller_from_config(config, FeedsEnv()).sleep_while_stalled is False
  config.gfn.sleep_while_stalled = True
  ctrl = gfn_algorithm.controller_from_config(config, FeedsEnv())
  assert ctrl.sleep_while_stalled is True
  small = dataclasses.replace(ctrl, hidden=(8,))
  gfn_algorithm.save_controller(str(tmp_path / "export"), small,
                                small.init_params(jax.random.PRNGKey(0)))
  assert gfn_algorithm.load_controller(str(tmp_path), FeedsEnv())[0].sleep_while_stalled is True
  spec_path = tmp_path / "export" / "controller.json"
  spec = json.loads(spec_path.read_text())
  del spec["sleep_while_stalled"]
  spec_path.write_text(json.dumps(spec))
  assert gfn_algorithm.load_controller(str(tmp_path), FeedsEnv())[0].sleep_while_stalled is False
