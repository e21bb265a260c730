"""Default config of the GFlowNet controller's training (every field overridable by flag).

    python -m experiments.train --config=experiments/configs/gfn.py --workdir=/tmp/gfn \
        --config.gfn.loss=subtb --config.train.num_updates=500
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.algorithm = "gfn"
  config.seed = 0
  config.num_seeds = 1  # seeds vmapped in one program; seed 0 is exported

  config.data = ml_collections.ConfigDict()
  config.data.network = "default"  # trace dirs/files, or default[:low|medium|high]
  config.data.videos = "default"  # MMGC catalog dir, .npz, or default
  config.data.trace_class = "all"
  config.data.split = "all"  # use "train" with real Oboe+FCC traces (the paper's protocol)
  config.data.skip_invalid_traces = False
  config.data.preferences = "sampled"  # users' w from the archetype mixture
  config.data.random_offset = True  # sessions start anywhere in their trace
  config.data.reference_quirks = False

  config.env = ml_collections.ConfigDict()
  config.env.max_steps = 4096

  config.gfn = ml_collections.ConfigDict()
  config.gfn.horizon = 2  # H: decisions per plan
  config.gfn.num_candidates = 10  # K plans per decision
  # distinct: K different plans, without replacement (exact, by enumerating all T^H plans);
  # distinct_beam: the same distribution by stochastic beam search (cheap for any H); iid
  config.gfn.candidates = "distinct"
  config.gfn.num_scenarios = 16  # M belief scenarios
  config.gfn.hidden = (256, 256)
  config.gfn.loss = "tb"  # tb | db | subtb | fm
  config.gfn.lamda = 0.9  # SubTB lambda
  config.gfn.reward_temperature = 0.25  # tau: log R = U_w / tau
  config.gfn.epsilon = 0.05  # exploration of the plan sampler while training
  config.gfn.temperature = 1.0
  # True: plans may open with a sleep while the playing video is stalled with chunks left
  # (a dominated action, masked by default; BUILD_NOTES 6j)
  config.gfn.sleep_while_stalled = False
  config.gfn.prior_mbps = 1.5
  config.gfn.terminal_weight = 1.0  # continuation term beyond the plan (0 = ablation)
  config.gfn.terminal_horizon_ms = 4000
  config.gfn.swipe_in_flight = True  # non-clairvoyant swipe in the continuation (BUILD_NOTES 6)
  # The rest of the belief model (gfnfeeds.planning.belief.BeliefConfig, same names).
  config.gfn.history = 5  # net-rate samples in the bandwidth centre
  config.gfn.prior_spread = 0.5
  config.gfn.min_spread = 0.1
  config.gfn.max_spread = 1.0
  config.gfn.rtt_ms = 80.0
  config.gfn.robust_discount = False  # RobustMPC's discount of the bandwidth centre
  config.gfn.terminal_videos = 2  # videos the continuation covers (the playing one and the next)

  config.train = ml_collections.ConfigDict()
  config.train.num_sessions = 32  # per seed, sharded over local devices
  config.train.rollout_steps = 8
  config.train.relabel = 1  # extra preference vectors per decision
  config.train.learning_rate = 1e-3
  config.train.log_z_learning_rate = 1e-2
  config.train.max_grad_norm = 10.0
  config.train.num_updates = 1000
  config.train.updates_per_chunk = 20
  config.train.checkpoint_every = 5  # chunks
  config.train.eval_every = 10  # chunks (0: never)
  config.train.eval_sessions = 64
  config.train.progress = True
  return config
