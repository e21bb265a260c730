"""Default config of Incendio's training: imitation of an oracle-throughput PDAS, then MAPPO.

    python -m experiments.train --config=experiments/configs/incendio.py --workdir=/tmp/incendio \
        --config.incendio.imitation_updates=200 --config.train.num_updates=400

Updates 0 .. imitation_updates - 1 are imitation, the rest MAPPO (one run, resumable at
any update). Choices where the paper is silent: BUILD_NOTES.md section 8.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.algorithm = "incendio"
  config.seed = 0
  config.num_seeds = 1  # seeds vmapped in one program; seed 0 is exported

  config.data = ml_collections.ConfigDict()
  config.data.network = "default"
  config.data.videos = "default"
  config.data.trace_class = "all"
  config.data.split = "all"  # "train" with the real Oboe+FCC traces (the paper's protocol)
  config.data.skip_invalid_traces = False
  config.data.preferences = "mmgc"  # Incendio optimises one fixed utility (eq. 1's weights)
  config.data.random_offset = True
  config.data.reference_quirks = False

  config.env = ml_collections.ConfigDict()
  config.env.max_steps = 4096

  config.incendio = ml_collections.ConfigDict()
  config.incendio.sleep_ms = 200  # the BM agent's fixed sleep (paper)
  # Stage 1: imitation.
  config.incendio.imitation_updates = 500
  config.incendio.oracle_chunks = 5  # the expert's true-throughput horizon (= PDAS's K)
  config.incendio.il_learning_rate = 1e-3
  config.incendio.il_batch = 128  # third-party batch size
  config.incendio.il_steps = 8  # minibatch steps per update (per 1024 new decisions)
  config.incendio.replay_capacity = 8192
  config.incendio.learner_action_prob = 0.25  # DAgger-style: learner executes this often
  # Stage 2: MAPPO (third-party values where they exist, BASELINES.md section 4).
  config.incendio.reward = "incendio"  # eq. (6) training reward; "env" = the plain utility
  config.incendio.adam_eps = 1e-5
  config.incendio.clip_eps = 0.2
  config.incendio.gamma = 0.99
  config.incendio.gae_lambda = 0.95
  config.incendio.ppo_epochs = 2
  config.incendio.ppo_minibatches = 4
  config.incendio.value_coef = 0.5
  config.incendio.entropy_coef = 0.03
  config.incendio.entropy_step = 0.01
  config.incendio.entropy_floor = 0.01
  config.incendio.entropy_patience = 100  # updates without a better training reward
  config.incendio.critic_warmup = 10  # updates that train the critic head only

  config.train = ml_collections.ConfigDict()
  config.train.num_sessions = 16  # per seed (third-party: 16 episodes of 32 steps), sharded over local devices
  config.train.rollout_steps = 32  # third-party episode length
  config.train.learning_rate = 1e-4  # MAPPO (third-party value)
  config.train.max_grad_norm = 10.0
  config.train.num_updates = 1000
  config.train.updates_per_chunk = 10
  config.train.checkpoint_every = 5  # chunks
  config.train.eval_every = 10  # chunks (0: never)
  config.train.eval_sessions = 64
  config.train.progress = True
  return config
