"""Default config of DAM's training: PPO on the 16-way masked joint action (BASELINES.md 2).

    python -m experiments.train --config=experiments/configs/dam.py --workdir=/tmp/dam \
        --config.train.num_updates=300 --config.dam.entropy_coef=0.02

Hyper-parameter choices and where they depart from DAM's snapshot: BUILD_NOTES.md section 8.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.algorithm = "dam"
  config.seed = 0
  config.num_seeds = 1  # seeds vmapped in one program; seed 0 is exported

  config.data = ml_collections.ConfigDict()
  config.data.network = "default"
  config.data.videos = "default"
  config.data.trace_class = "all"
  config.data.split = "all"  # "train" with the real Oboe+FCC traces (the paper's protocol)
  config.data.skip_invalid_traces = False
  config.data.preferences = "mmgc"  # DAM optimises the fixed MMGC utility
  config.data.random_offset = True
  config.data.reference_quirks = False

  config.env = ml_collections.ConfigDict()
  config.env.max_steps = 4096

  config.dam = ml_collections.ConfigDict()
  config.dam.actor_hidden = (128, 64)
  config.dam.actor_activations = ("relu", "tanh")
  config.dam.critic_hidden = (128, 64)
  config.dam.critic_activations = ("relu", "relu")
  config.dam.force_buffer_ms = 1000.0  # force rule: only the playing video below this buffer
  config.dam.gamma = 0.95  # DAM's train.py
  config.dam.gae_lambda = 0.95
  config.dam.clip_eps = 0.2  # DAM's train.py
  config.dam.value_clip_eps = 10.0
  config.dam.value_coef = 0.5  # DAM's train.py
  config.dam.entropy_coef = 0.01  # DAM's variants use 0.01-0.02
  config.dam.actor_learning_rate = 3e-4
  config.dam.critic_learning_rate = 1e-3
  config.dam.ppo_epochs = 4
  config.dam.ppo_minibatches = 4
  config.dam.reward_scale = 1.0
  # Linear learning-rate decay to lr_final_fraction x over this many updates (0: constant).
  config.dam.lr_decay_updates = 0
  config.dam.lr_final_fraction = 0.1

  config.train = ml_collections.ConfigDict()
  config.train.num_sessions = 64  # per seed, sharded over local devices
  config.train.rollout_steps = 64
  config.train.max_grad_norm = 1.0
  config.train.num_updates = 300
  config.train.updates_per_chunk = 10
  config.train.checkpoint_every = 5  # chunks
  config.train.eval_every = 5  # chunks (0: never)
  config.train.eval_sessions = 64
  config.train.progress = True
  return config
