r"""GFlowNet speed: gfnfeeds (JAX) against PyTorch peers on the same machine.

    python -m experiments.benchmark_gfn --json=/tmp/bench_gfn.json  # --suite=all
    python -m experiments.benchmark_gfn --suite=hypergrid --json=/tmp/bench_gfn.json

Suites: `hypergrid`, `feeds` and `latency` (`all`, the default, runs the three).

Suite `feeds`: training throughput of the feeds GFlowNet controller with the
training config experiments/configs/gfn.py (H=2, K=10 distinct plans, M=16, MLP 2 x 256,
32 sessions x 8 rollout steps per update, relabel 1, TB), data --network and
--videos, sampled preferences, random trace offsets (as `experiments.train`).
gfnfeeds: the jitted fused training chunk (`gfn_trainer.make_train_chunk`,
--feeds_updates_per_chunk updates per call, one seed), compiled ahead of time
(compile_s separate), one untimed call, then --feeds_repeats timed calls
(median); measured with the sessions on one XLA device and sharded over every
local device (`shard_train_state`, what training does), the faster reported.
decisions/s = num_sessions x rollout_steps x updates / time; candidate
trajectories/s = decisions/s x K x (1 + relabel) (the plans the loss trains on).
Peer: `gfnfeeds.reference.torch_gfn.TorchReferenceTrainer` (optional `torch`
extra), the same training step in PyTorch driven by the plain-Python reference
simulator (same network, TB loss, K plans x M belief scenarios x H steps +
terminal term per decision, same batch), --torch_updates timed updates after
--torch_warmup untimed ones (median), for each of --torch_threads (0 = all
cores), the fastest reported. ratio = jax / torch decisions/s.
Breakdown (`phases`; --feeds_phase_repeats, 0 skips it): milliseconds per update
of each phase on both sides: proposal (features, plan sampling), scoring (belief
scenarios, K x M plan runs, argmax), environment (the live sessions' steps),
rollout (the three), learning (relabelling, loss, gradient, optimizer step) and
the whole update. JAX times each phase as its own compiled program on one
update's decisions (`time_feeds_phases_jax`); the torch reference times its own
phases inside the timed updates (`TorchReferenceTrainer.phase_s`).

Suite `latency`: `make_server(controller)` with untrained parameters (latency
does not depend on the weights) and serving exploration (epsilon 0), for each
of --latency_batches sessions per call: observations a few decisions into
sampled sessions, --latency_warmup untimed calls (compile), then up to
--latency_calls timed calls (fewer when they would exceed
--latency_budget_s), p50/p99 wall ms per call (each call blocks until ready).

Suite `hypergrid`: trajectory-balance training on
HyperGrid (ndim, height) for each --grids entry, a 2 x --hidden ReLU MLP with a
forward head and a learned backward head on one shared trunk, scalar log Z,
batch --batch, Adam (network --lr, log Z --log_z_lr), on-policy (no exploration).

gfnfeeds: from a fresh init, --warmup untimed steps, then --repeats x (one
block of --block steps fused in a `lax.scan`, one jitted call; one block of
--block sequential jitted `make_train_step` calls), training carried on
throughout; ms/iteration = median block / --block, compile time separate. The
modes `active_buckets=0` (plain), `active_buckets=--active_buckets` and the
shrinking-batch sampler `compact=--compact` are measured (0 skips a mode); the
fastest (mode, fused/sequential) is the reported `ms_per_iter`, the rest stays
in the JSON, with the 1-minute load average before and after each timing (the
machine may be shared).

torchgfn (2.4.1, optional `torch` extra): its own `HyperGrid` env (original
reward, same R0/R1/R2), `KHotPreprocessor` (the same one-hot-per-coordinate
features), `DiscretePolicyEstimator` with `gfn.utils.modules.MLP` (P_B's MLP
shares P_F's trunk, as in gfnfeeds), `TBGFlowNet`, sampling with
`sample_trajectories(env, n=batch, save_logprobs=True)` and the loss with the
saved log-probs (`recalculate_all_logprobs=False`), Adam with the same two
learning rates, `torch.set_num_threads(cpu count)`. Timed over the same
iterations: fresh init, same warmup, then 2 x --repeats blocks of --block
(median), so both are at the same training stage, which matters: trajectories
lengthen as training proceeds and both samplers' cost follows the lengths.

Quality: on the --tv_grid both are trained --tv_iterations iterations from a
fresh init and the exact terminal distribution of each forward policy
(propagated through the DAG by `HyperGrid.policy_distribution`, no sampling
noise) is compared with the exact target by total variation. The wall time of
these runs (ms/iteration averaged over the whole run, compile excluded for JAX)
is reported as well.
"""

from __future__ import annotations

import os

# One XLA device per core on CPU (as in the other benchmarks); set before jax loads.
os.environ.setdefault("XLA_FLAGS",
                      f"--xla_force_host_platform_device_count={os.cpu_count() or 1}")

import dataclasses  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments.common import device_description, write_json  # noqa: E402

import gfnfeeds  # noqa: E402,F401
from gfnfeeds.gfn import train as T  # noqa: E402
from gfnfeeds.gfn.hypergrid import HyperGrid, total_variation  # noqa: E402
from gfnfeeds.gfn.networks import PolicyOutput  # noqa: E402
from gfnfeeds.reference import torch_gfn  # noqa: E402  (imports without torch)

FLAGS = flags.FLAGS
SUITES = ("hypergrid", "feeds", "latency")
flags.DEFINE_enum("suite", "all", ["all", *SUITES], "which benchmark suite to run")
flags.DEFINE_list("grids", ["4:16", "2:8"], "HyperGrid sizes as ndim:height")
flags.DEFINE_integer("batch", 512, "trajectories per iteration")
flags.DEFINE_integer("hidden", 256, "width of the 2 hidden layers")
flags.DEFINE_float("lr", 1e-3, "Adam step size of the network")
flags.DEFINE_float("log_z_lr", 1e-1, "Adam step size of log Z")
flags.DEFINE_integer("active_buckets", 5, "the bucketed mode measured against active_buckets=0")
flags.DEFINE_integer("compact", 8, "the shrinking-batch mode (compact=n) measured too; 0 skips it")
flags.DEFINE_integer("warmup", 5, "untimed iterations before the timed blocks")
flags.DEFINE_integer("block", 10, "iterations per timed block")
flags.DEFINE_integer("repeats", 5, "timed blocks (median reported)")
flags.DEFINE_string("tv_grid", "2:8", "grid of the quality comparison ('' to skip)")
flags.DEFINE_integer("tv_iterations", 1000, "training iterations before the TV comparison")
flags.DEFINE_bool("peer", True, "also run torchgfn (skipped with a message if not installed)")
flags.DEFINE_string("json", None, "write the results as JSON here")
flags.DEFINE_integer("seed", 0, "PRNG / torch seed")
# feeds and latency
flags.DEFINE_string("network", "default", "feeds/latency traces: 'default[:class]' or directories")
flags.DEFINE_string("videos", "default", "feeds/latency catalog: 'default', MMGC dir or .npz")
flags.DEFINE_integer("feeds_sessions", 32, "sessions per update (config train.num_sessions)")
flags.DEFINE_integer("feeds_rollout_steps", 8, "decisions per session per update")
flags.DEFINE_integer("feeds_updates_per_chunk", 10, "updates fused in one timed JAX call")
flags.DEFINE_enum("feeds_candidates", None, ["iid", "distinct", "distinct_beam"],
                  "candidate sampling of the benchmarked controller (default: the config's; the "
                  "torch reference has no distinct_beam and is then skipped)")
flags.DEFINE_integer("feeds_horizon", None, "plan horizon H of the benchmarked controller "
                     "(default: the config's)")
flags.DEFINE_integer("feeds_repeats", 5, "timed JAX calls (median reported)")
flags.DEFINE_list("feeds_placements", ["single", "sharded"],
                  "JAX session placements measured: single device, sharded over local devices")
flags.DEFINE_integer("feeds_phase_repeats", 20, "timed calls per phase of the update's "
                     "breakdown (median; 0 skips the breakdown)")
flags.DEFINE_integer("torch_updates", 3, "timed torch reference updates (median reported)")
flags.DEFINE_integer("torch_warmup", 1, "untimed torch reference updates first")
flags.DEFINE_list("torch_threads", ["1", "0"], "torch thread counts tried (0 = all cores)")
flags.DEFINE_list("latency_batches", ["1", "16", "256", "4096"], "sessions per serving call")
flags.DEFINE_integer("latency_calls", 200, "timed serving calls per batch (at most)")
flags.DEFINE_float("latency_budget_s", 20.0, "time budget of the timed calls per batch")
flags.DEFINE_integer("latency_warmup", 3, "untimed serving calls per batch (compile included)")


@dataclasses.dataclass(frozen=True)
class Setup:
  """What both implementations share."""

  batch: int = 512
  hidden: int = 256
  lr: float = 1e-3
  log_z_lr: float = 1e-1
  seed: int = 0


def parse_grid(text: str) -> tuple[int, int]:
  ndim, height = text.split(":")
  return int(ndim), int(height)


def _load() -> float | None:
  """The 1-minute load average (another process on a shared machine shows here), if known."""
  try:
    return os.getloadavg()[0]
  except OSError:
    return None


def _median_ms(times: list[float], block: int) -> float:
  return 1e3 * float(np.median(times)) / block


# ---------------------------------------------------------------- gfnfeeds (JAX)


class JaxTB:
  """TB training state and step functions of gfnfeeds for one grid and one bucket mode."""

  def __init__(self, ndim: int, height: int, setup: Setup, active_buckets: int, compact: int = 0):
    batch, hidden, seed = setup.batch, setup.hidden, setup.seed
    lr, log_z_lr = setup.lr, setup.log_z_lr
    self.env = HyperGrid(ndim=ndim, height=height)
    self.model = T.make_model(self.env, "tb", (hidden, hidden), "relu", "learned")
    self.optimizer = T.make_optimizer(lr, log_z_lr)
    self.state = T.init_train_state(jax.random.PRNGKey(seed), self.env, self.model,
                                    self.optimizer)
    self.key = jax.random.PRNGKey(seed + 1)
    self.step = T.make_train_step(self.env, self.model, "tb", self.optimizer, batch,
                                  active_buckets=active_buckets, jit=True, compact=compact)
    raw = T.make_train_step(self.env, self.model, "tb", self.optimizer, batch,
                            active_buckets=active_buckets, jit=False, compact=compact)
    self._fused = jax.jit(lambda s, keys: jax.lax.scan(raw, s, keys))

  def _keys(self, n: int):
    self.key, sub = jax.random.split(self.key)
    return jax.random.split(sub, n)

  def run_fused(self, n: int) -> dict:
    """n iterations in one scanned call; returns the last metrics (blocks until done)."""
    self.state, metrics = self._fused(self.state, self._keys(n))
    jax.block_until_ready(self.state)
    return jax.tree.map(lambda m: m[-1], metrics)

  def run_sequential(self, n: int) -> None:
    for k in self._keys(n):
      self.state, _ = self.step(self.state, k)
    jax.block_until_ready(self.state)

  def compile_s(self, n: int) -> float:
    """Compiles the fused n-step call and the single step (AOT, no state change)."""
    t0 = time.perf_counter()
    self._fused.lower(self.state, self._keys(n)).compile()
    self.step.lower(self.state, self._keys(1)[0]).compile()
    return time.perf_counter() - t0

  def tv(self) -> float:
    dist = self.env.policy_distribution(self.model.apply, self.state.params)
    return total_variation(dist, self.env.exact_distribution())


def mode_name(active_buckets: int, compact: int) -> str:
  if compact > 0:
    return f"compact={compact}"
  return f"active_buckets={active_buckets}" if active_buckets > 0 else "plain"


def time_jax(ndim: int, height: int, setup: Setup, active_buckets: int, warmup: int,
             block: int, repeats: int, compact: int = 0) -> dict:
  """Fresh init, compile (timed), warmup, then `repeats` x (a fused block, a sequential block).

  Fused and sequential blocks alternate so that both are measured at the same training stage.
  """
  tb = JaxTB(ndim, height, setup, active_buckets, compact)
  compile_s = tb.compile_s(block)
  load_before = _load()
  tb.run_sequential(warmup)
  fused, seq, last = [], [], None
  for _ in range(repeats):
    t0 = time.perf_counter()
    last = tb.run_fused(block)
    fused.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    tb.run_sequential(block)
    seq.append(time.perf_counter() - t0)
  return {"mode": mode_name(active_buckets, compact), "active_buckets": active_buckets,
          "compact": compact, "ms_per_iter": _median_ms(fused, block),
          "sequential_ms_per_iter": _median_ms(seq, block), "fused_block_s": fused,
          "sequential_block_s": seq, "compile_s": compile_s,
          "load_avg_1min_before_after": [load_before, _load()],
          "mean_length_last": float(last["mean_length"])}


def train_jax_tv(ndim: int, height: int, setup: Setup, active_buckets: int,
                 iterations: int, compact: int = 0) -> dict:
  """Trains `iterations` iterations (fused, one call) from a fresh init; exact TV after."""
  tb = JaxTB(ndim, height, setup, active_buckets, compact)
  compile_s = tb.compile_s(iterations)
  t0 = time.perf_counter()
  tb.run_fused(iterations)
  wall = time.perf_counter() - t0
  return {"tv": tb.tv(), "ms_per_iter_run": 1e3 * wall / iterations, "compile_s": compile_s}


# ---------------------------------------------------------------- torchgfn peer


def torch_available() -> str | None:
  """None when torch and torchgfn import, else the reason."""
  try:
    import torch  # noqa: F401
    import gfn  # noqa: F401
    from gfn.gflownet import TBGFlowNet  # noqa: F401
    from gfn.gym import HyperGrid as _  # noqa: F401
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {e}"
  return None


def torch_versions() -> dict:
  from importlib.metadata import PackageNotFoundError, version
  out = {}
  for name in ("torch", "torchgfn"):
    try:
      out[name] = version(name)
    except PackageNotFoundError:
      pass
  return out


class TorchTB:
  """The same TB setup built from torchgfn's own modules."""

  def __init__(self, ndim: int, height: int, setup: Setup):
    batch, hidden, seed = setup.batch, setup.hidden, setup.seed
    lr, log_z_lr = setup.lr, setup.log_z_lr
    import torch
    from gfn.estimators import DiscretePolicyEstimator
    from gfn.gflownet import TBGFlowNet
    from gfn.gym import HyperGrid as TorchHyperGrid
    from gfn.preprocessors import KHotPreprocessor
    from gfn.utils.modules import MLP

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(seed)
    self.torch = torch
    self.ndim, self.height, self.batch = ndim, height, batch
    self.env = TorchHyperGrid(ndim=ndim, height=height, reward_fn_str="original",
                              reward_fn_kwargs={"R0": 0.1, "R1": 0.5, "R2": 2.0},
                              validate_modes=False)  # (2, 4) has no R2 mode; the smoke test uses it
    pre = KHotPreprocessor(height=height, ndim=ndim)
    n_actions = self.env.n_actions
    pf_module = MLP(input_dim=pre.output_dim, output_dim=n_actions, hidden_dim=hidden,
                    n_hidden_layers=2)
    pb_module = MLP(input_dim=pre.output_dim, output_dim=n_actions - 1, hidden_dim=hidden,
                    trunk=pf_module.trunk)
    self.pf = DiscretePolicyEstimator(pf_module, n_actions, preprocessor=pre, is_backward=False)
    self.pb = DiscretePolicyEstimator(pb_module, n_actions, preprocessor=pre, is_backward=True)
    self.gflownet = TBGFlowNet(pf=self.pf, pb=self.pb, init_logZ=0.0)
    self.optimizer = torch.optim.Adam([
        {"params": self.gflownet.pf_pb_parameters(), "lr": lr},
        {"params": self.gflownet.logz_parameters(), "lr": log_z_lr}])

  def run(self, n: int) -> float:
    """n on-policy TB iterations; returns the mean trajectory length of the last batch."""
    length = 0.0
    for _ in range(n):
      traj = self.gflownet.sample_trajectories(self.env, n=self.batch, save_logprobs=True)
      self.optimizer.zero_grad()
      loss = self.gflownet.loss(self.env, traj, recalculate_all_logprobs=False)
      loss.backward()
      self.optimizer.step()
      length = float(traj.terminating_idx.float().mean()) if hasattr(
          traj, "terminating_idx") else float("nan")
    return length

  def tv(self) -> float:
    """Exact TV of the forward policy: its logits on every state, propagated by gfnfeeds."""
    torch = self.torch
    grid = HyperGrid(ndim=self.ndim, height=self.height)
    positions = torch.as_tensor(grid.all_positions(), dtype=torch.long)
    with torch.no_grad():
      logits = self.pf(self.env.States(positions)).float().cpu().numpy()
    fixed = PolicyOutput(forward_logits=jnp.asarray(logits, jnp.float32))
    dist = grid.policy_distribution(lambda params, f, c: fixed, None)
    return total_variation(dist, grid.exact_distribution())


def time_torch(ndim: int, height: int, setup: Setup, warmup: int, block: int,
               repeats: int) -> dict:
  tb = TorchTB(ndim, height, setup)
  load_before = _load()
  tb.run(warmup)
  times, length = [], float("nan")
  for _ in range(2 * repeats):  # as many iterations as time_jax's fused + sequential blocks
    t0 = time.perf_counter()
    length = tb.run(block)
    times.append(time.perf_counter() - t0)
  return {"ms_per_iter": _median_ms(times, block), "block_s": times,
          "mean_length_last": length, "threads": tb.torch.get_num_threads(),
          "load_avg_1min_before_after": [load_before, _load()]}


def train_torch_tv(ndim: int, height: int, setup: Setup, iterations: int) -> dict:
  tb = TorchTB(ndim, height, setup)
  t0 = time.perf_counter()
  tb.run(iterations)
  wall = time.perf_counter() - t0
  return {"tv": tb.tv(), "ms_per_iter_run": 1e3 * wall / iterations}


# ---------------------------------------------------------------- the suite


def run_hypergrid(grids, setup: Setup = Setup(), peer: bool = True,
                  tv_grid: tuple[int, int] | None = (2, 8), tv_iterations: int = 1000,
                  active_buckets: int = 5, warmup: int = 5, block: int = 10, repeats: int = 5,
                  log=print, compact: int = 8) -> dict:
  """The HyperGrid suite; returns the JSON-ready result (the `hypergrid` list and context)."""
  reason = torch_available() if peer else "disabled (peer=False)"
  if peer and reason:
    log(f"torchgfn peer SKIPPED ({reason}); install it with "
        f"`pip install torch==2.13.0 torchgfn==2.4.1` (the `torch` extra)")
  use_peer = peer and reason is None
  rows = []
  for ndim, height in grids:
    modes = [time_jax(ndim, height, setup, 0, warmup, block, repeats)]
    if active_buckets > 0:
      modes.append(time_jax(ndim, height, setup, active_buckets, warmup, block, repeats))
    if compact > 0:
      modes.append(time_jax(ndim, height, setup, 0, warmup, block, repeats, compact))
    for m in modes:
      log(f"jax   ({ndim},{height}) {m['mode']}: "
          f"{m['ms_per_iter']:.1f} ms/iter fused, {m['sequential_ms_per_iter']:.1f} sequential, "
          f"compile {m['compile_s']:.1f}s, mean length {m['mean_length_last']:.1f}")
    # The fastest (bucket mode, fused or sequential) combination is the reported number.
    best_ms, style, best = min((m[k], k, m) for m in modes
                               for k in ("ms_per_iter", "sequential_ms_per_iter"))
    row = {"ndim": ndim, "height": height, "ms_per_iter": best_ms,
           "best_mode": best["mode"], "best_active_buckets": best["active_buckets"],
           "best_compact": best["compact"],
           "best_style": "fused" if style == "ms_per_iter" else "sequential",
           "jax_fused_ms_per_iter": best["ms_per_iter"],
           "jax_sequential_ms_per_iter": best["sequential_ms_per_iter"], "jax_modes": modes,
           "torchgfn_ms_per_iter": None, "ratio": None, "jax_tv": None, "torchgfn_tv": None,
           "iterations": None, "timing": {"warmup": warmup, "block": block, "repeats": repeats}}
    if use_peer:
      tt = time_torch(ndim, height, setup, warmup, block, repeats)
      row["torchgfn_ms_per_iter"] = tt["ms_per_iter"]
      row["torchgfn_timing"] = tt
      row["ratio"] = tt["ms_per_iter"] / best_ms
      log(f"torch ({ndim},{height}): {tt['ms_per_iter']:.1f} ms/iter ({tt['threads']} threads, "
          f"mean length {tt['mean_length_last']:.1f}); torchgfn / jax = {row['ratio']:.2f}")
    if tv_grid is not None and tuple(tv_grid) == (ndim, height) and tv_iterations > 0:
      jt = train_jax_tv(ndim, height, setup, best["active_buckets"], tv_iterations,
                        best["compact"])
      row.update(iterations=tv_iterations, jax_tv=jt["tv"],
                 jax_run_ms_per_iter=jt["ms_per_iter_run"], jax_run_compile_s=jt["compile_s"])
      log(f"jax   ({ndim},{height}) {tv_iterations} iterations: TV {jt['tv']:.4f}, "
          f"{jt['ms_per_iter_run']:.1f} ms/iter over the run")
      if use_peer:
        ptv = train_torch_tv(ndim, height, setup, tv_iterations)
        row.update(torchgfn_tv=ptv["tv"], torchgfn_run_ms_per_iter=ptv["ms_per_iter_run"])
        log(f"torch ({ndim},{height}) {tv_iterations} iterations: TV {ptv['tv']:.4f}, "
            f"{ptv['ms_per_iter_run']:.1f} ms/iter over the run")
    rows.append(row)
  return {"hypergrid": rows, "peer": "torchgfn" if use_peer else None,
          "peer_skipped_reason": None if use_peer else reason,
          "setup": dict(dataclasses.asdict(setup), loss="tb", layers=2,
                        backward_policy="learned, trunk shared with P_F", exploration="none")}


# ---------------------------------------------------------------- the feeds suites


def feeds_data(network: str = "default", videos: str = "default", config=None):
  """(env, env_params, config) for the feeds suites, built as `experiments.train` builds them."""
  from experiments.configs.gfn import get_config
  from gfnfeeds.data.datasets import load_network_arg, load_videos_arg
  from gfnfeeds.data.packing import pack_catalog, pack_world
  from gfnfeeds.env.feeds import FeedsEnv
  from gfnfeeds.env.preferences import archetype_preferences
  config = get_config() if config is None else config
  traces, _ = load_network_arg(network)
  vids, ladder = load_videos_arg(videos)
  env = FeedsEnv(max_steps=int(config.env.max_steps))
  env_params = env.make_params(pack_catalog(vids, ladder), pack_world(traces),
                               archetype_preferences(), random_offset=True,
                               shuffle_videos=len(vids) > env.num_videos)
  return env, env_params, config


def feeds_settings(config, env):
  from gfnfeeds.training.gfn_algorithm import settings_from_config
  return settings_from_config(config, env)


def describe_settings(settings) -> dict:
  c = settings.controller
  return {"horizon": c.horizon, "num_candidates": c.num_candidates,
          "num_scenarios": c.belief.num_scenarios, "hidden": list(c.hidden), "loss": settings.loss,
          "num_sessions": settings.num_sessions, "rollout_steps": settings.rollout_steps,
          "relabel": settings.relabel, "epsilon": c.epsilon,
          "terminal_weight": c.belief.terminal_weight,
          "decisions_per_update": settings.num_sessions * settings.rollout_steps}


def time_feeds_jax(settings, env_params, placement: str = "single", repeats: int = 5,
                   seed: int = 0) -> dict:
  """Decisions/s of the jitted fused training chunk (one seed) for one session placement."""
  from gfnfeeds.training import gfn_trainer
  chunk = gfn_trainer.make_train_chunk(settings, 1)
  states = gfn_trainer.init_train_states(seed, 1, settings, env_params)
  if placement == "sharded":
    states = gfn_trainer.shard_train_state(states)
  elif placement != "single":
    raise ValueError(f"unknown placement {placement!r}")
  jax.block_until_ready(states)
  t0 = time.perf_counter()
  run = chunk.lower(states, env_params).compile()
  compile_s = time.perf_counter() - t0
  load_before = _load()
  states, _ = run(states, env_params)  # one untimed call
  jax.block_until_ready(states)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    states, metrics = run(states, env_params)
    jax.block_until_ready(states)
    times.append(time.perf_counter() - t0)
  med = float(np.median(times))
  decisions = settings.num_sessions * settings.rollout_steps * settings.updates_per_chunk
  return {"placement": placement, "devices": jax.device_count() if placement == "sharded" else 1,
          "decisions_per_s": decisions / med, "call_s_median": med, "call_s": times,
          "decisions_per_call": decisions, "updates_per_call": settings.updates_per_chunk,
          "compile_s": compile_s, "load_avg_1min_before_after": [load_before, _load()],
          "last_loss": float(np.asarray(metrics["loss"])[0, -1])}


def _time_compiled(fn, args, repeats: int) -> dict:
  """Compile `fn` ahead of time for `args`, one untimed call, then the median of `repeats`."""
  t0 = time.perf_counter()
  run = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  out = jax.block_until_ready(run(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(run(*args))
    times.append(time.perf_counter() - t0)
  return {"ms": 1e3 * float(np.median(times)), "compile_s": compile_s, "out": out}


def time_feeds_phases_jax(settings, env_params, repeats: int = 20, seed: int = 0) -> dict:
  """Milliseconds per update of each phase of the update, each compiled and timed on its own
  (one XLA device), on one update's worth of decisions (num_sessions x rollout_steps).

  proposal: `GFNController.propose` (features, plan sampling) for that many
  observations at once, taken a few decisions into sampled sessions; scoring:
  `select_plan` (belief scenarios, K x M plan runs, argmax) on those plans;
  rollout: the update's rollout (proposal, scoring and the environment's steps,
  rollout_steps x num_sessions); environment: rollout - proposal - scoring
  (derived, so at tiny shapes timing noise can make it <= 0; the table then
  gives it no ratio); learning: relabelling, loss, gradient and the optimizer step on
  that rollout's data. They add up to about one fused update, not exactly: the
  fused chunk overlaps and fuses across them.
  """
  from gfnfeeds.policies.gfn import select_plan
  from gfnfeeds.training import gfn_trainer
  ctrl = settings.controller
  env, catalog = ctrl.env, env_params.catalog
  phases = gfn_trainer.make_update_phases(settings)
  key = jax.random.PRNGKey(seed)
  state = jax.jit(lambda k, p: gfn_trainer.init_train_state(k, settings, p))(key, env_params)
  n = settings.num_sessions * settings.rollout_steps
  obs, _ = serving_inputs(env, env_params, n, seed)
  keys = jax.random.split(jax.random.fold_in(key, 1), n)

  def propose(keys, params, obs, catalog):
    return jax.vmap(ctrl.propose, in_axes=(0, None, 0, None))(keys, params, obs, catalog)

  def score(keys, obs, plans, weights, catalog):
    return jax.vmap(lambda k, o, p, w: select_plan(k, env, o, catalog, p, w, ctrl.belief))(
        keys, obs, plans, weights)

  proposal = _time_compiled(propose, (keys, state.params, obs, catalog), repeats)
  plans, weights = proposal["out"].plans, proposal["out"].weights
  scoring = _time_compiled(score, (keys, obs, plans, weights, catalog), repeats)
  rollout = _time_compiled(phases.rollout, (state.params, state.obs, state.env_state, key,
                                            env_params), repeats)
  data = rollout["out"][2]
  learning = _time_compiled(phases.learn, (state.params, state.opt_state, data, key, env_params),
                            repeats)
  ms = {"proposal": proposal["ms"], "scoring": scoring["ms"],
        "environment": rollout["ms"] - proposal["ms"] - scoring["ms"],
        "rollout": rollout["ms"], "learning": learning["ms"]}
  compile_s = {name: t["compile_s"] for name, t in
               (("proposal", proposal), ("scoring", scoring), ("rollout", rollout),
                ("learning", learning))}
  return {"ms_per_update": ms, "compile_s": compile_s, "repeats": repeats,
          "decisions": n}


def time_feeds_torch(settings, env_params, updates: int = 3, warmup: int = 1, threads: int = 0,
                     seed: int = 0) -> dict:
  """Decisions/s of the PyTorch + reference-simulator training step (same settings)."""
  ts = torch_gfn.TorchGFNSettings.from_jax(settings)
  data = torch_gfn.ReferenceData.from_env_params(env_params)
  trainer = torch_gfn.TorchReferenceTrainer(ts, data, seed=seed, threads=threads or None)
  load_before = _load()
  for _ in range(warmup):
    trainer.update()
  times, last, phases = [], {}, {name: [] for name in torch_gfn.PHASES}
  for _ in range(updates):
    before = dict(trainer.phase_s)
    t0 = time.perf_counter()
    last = trainer.update()
    times.append(time.perf_counter() - t0)
    for name in torch_gfn.PHASES:
      phases[name].append(trainer.phase_s[name] - before[name])
  med = float(np.median(times))
  decisions = ts.num_sessions * ts.rollout_steps
  phase_ms = {name: 1e3 * float(np.median(v)) for name, v in phases.items()}
  phase_ms["rollout"] = phase_ms["proposal"] + phase_ms["scoring"] + phase_ms["environment"]
  return {"threads": torch_gfn.torch.get_num_threads(), "decisions_per_s": decisions / med,
          "update_s_median": med, "update_s": times, "decisions_per_update": decisions,
          "phase_ms_per_update": phase_ms,
          "updates_timed": updates, "warmup_updates": warmup,
          "load_avg_1min_before_after": [load_before, _load()], "last_loss": last.get("loss")}


def torch_skip_reason(settings, peer: bool = True) -> str | None:
  """Why the torch reference cannot run `settings` (None: it can)."""
  if not peer:
    return "disabled (peer=False)"
  try:
    torch_gfn.TorchGFNSettings.from_jax(settings)
  except ValueError as err:  # settings the reference does not implement
    return f"not implemented by the reference: {err}"
  return torch_gfn.torch_missing()


PHASE_ROWS = ("proposal", "scoring", "environment", "rollout", "learning", "update")


def phase_table(jax_ms: dict, torch_ms: dict | None) -> list[dict]:
  """Rows {phase, jax_ms_per_update, torch_ms_per_update, ratio} in PHASE_ROWS order."""
  rows = []
  for name in PHASE_ROWS:
    j = jax_ms[name]
    t = None if torch_ms is None else torch_ms[name]
    rows.append({"phase": name, "jax_ms_per_update": j, "torch_ms_per_update": t,
                 "ratio": None if t is None or j <= 0 else t / j})
  return rows


def run_feeds(settings, env_params, placements=("single", "sharded"), repeats: int = 5,
              torch_updates: int = 3, torch_warmup: int = 1, torch_threads=(1, 0), seed: int = 0,
              peer: bool = True, log=print, phase_repeats: int = 20) -> dict:
  """The feeds training-throughput suite; returns the JSON-ready `feeds` dict.

  With `phase_repeats` > 0 it also times each phase of the update on its own
  (`time_feeds_phases_jax`, the torch reference's `phase_s`): `phases` rows of
  milliseconds per update on both sides, "update" being the whole update as timed
  above (JAX: the fastest placement's fused call / updates per call).
  """
  k, groups = settings.controller.num_candidates, 1 + settings.relabel
  modes = []
  for placement in placements:
    m = time_feeds_jax(settings, env_params, placement, repeats, seed)
    modes.append(m)
    log(f"jax   feeds {placement}: {m['decisions_per_s']:,.0f} decisions/s "
        f"({m['call_s_median']:.2f} s per {m['decisions_per_call']} decisions), "
        f"compile {m['compile_s']:.1f}s")
  best = max(modes, key=lambda m: m["decisions_per_s"])
  out = {"jax_decisions_per_s": best["decisions_per_s"],
         "jax_candidate_trajectories_per_s": best["decisions_per_s"] * k * groups,
         "jax_best_placement": best["placement"], "jax_compile_s": best["compile_s"],
         "torch_decisions_per_s": None, "torch_candidate_trajectories_per_s": None,
         "ratio": None, "jax": modes, "torch": [],
         "settings": describe_settings(settings),
         "candidate_trajectories_per_decision": k * groups}
  jax_phases = None
  if phase_repeats > 0:
    jax_phases = time_feeds_phases_jax(settings, env_params, phase_repeats, seed)
    jax_phases["ms_per_update"]["update"] = (1e3 * best["call_s_median"]
                                             / best["updates_per_call"])
    out["jax_phases"] = jax_phases
    log("jax   phases (ms per update): " + ", ".join(
        f"{k} {v:.1f}" for k, v in jax_phases["ms_per_update"].items()))
  reason = torch_skip_reason(settings, peer)
  if reason:
    log(f"torch reference SKIPPED ({reason})")
    out["torch_skipped_reason"] = reason
    if jax_phases:
      out["phases"] = phase_table(jax_phases["ms_per_update"], None)
    return out
  for threads in torch_threads:
    t = time_feeds_torch(settings, env_params, torch_updates, torch_warmup, int(threads), seed)
    out["torch"].append(t)
    log(f"torch feeds ({t['threads']} threads): {t['decisions_per_s']:,.1f} decisions/s "
        f"({t['update_s_median']:.2f} s per update of {t['decisions_per_update']} decisions)")
  tbest = max(out["torch"], key=lambda t: t["decisions_per_s"])
  out.update(torch_decisions_per_s=tbest["decisions_per_s"],
             torch_candidate_trajectories_per_s=tbest["decisions_per_s"] * k * groups,
             torch_threads=tbest["threads"],
             ratio=best["decisions_per_s"] / tbest["decisions_per_s"],
             torch_versions=torch_versions())
  log(f"feeds: jax / torch reference = {out['ratio']:.1f}x decisions/s")
  if jax_phases:
    torch_ms = dict(tbest["phase_ms_per_update"], update=1e3 * tbest["update_s_median"])
    out["phases"] = phase_table(jax_phases["ms_per_update"], torch_ms)
  return out


def serving_inputs(env, env_params, batch: int, seed: int = 0, steps: int = 6):
  """`batch` observations a few decisions into sampled sessions, and the users' weights."""
  keys = jax.random.split(jax.random.PRNGKey(seed), batch)

  @jax.jit
  def make(keys):
    def one(key):
      obs, state = env.reset(key, env_params)
      def body(carry, _):
        obs, state = carry
        action = jnp.where(obs.action_mask[1], 1, env.num_actions - 1)  # slot 0 level 1, or sleep
        obs, state, *_ = env.step(key, state, action, env_params)
        return (obs, state), None
      (obs, _), _ = jax.lax.scan(body, (obs, state), None, length=steps)
      return obs, env_params.preferences.sample(key)
    return jax.vmap(one)(keys)

  return make(keys)


def run_latency(settings, env_params, batches=(1, 16, 256, 4096), calls: int = 200,
                budget_s: float = 20.0, warmup: int = 3, seed: int = 0, log=print) -> list:
  """Decision latency of the jitted server; returns the JSON-ready `latency` list."""
  from gfnfeeds.policies.gfn import make_server
  controller = dataclasses.replace(settings.controller, epsilon=0.0, temperature=1.0)
  env = controller.env
  params = controller.init_params(jax.random.PRNGKey(seed))
  catalog = env_params.catalog
  rows = []
  for batch in batches:
    obs, weights = serving_inputs(env, env_params, int(batch), seed)
    serve = make_server(controller)
    t0 = time.perf_counter()
    jax.block_until_ready(serve(params, jax.random.PRNGKey(0), obs, weights, catalog))
    compile_s = time.perf_counter() - t0
    first = []
    for i in range(max(warmup - 1, 0)):
      t0 = time.perf_counter()
      jax.block_until_ready(serve(params, jax.random.PRNGKey(1 + i), obs, weights, catalog))
      first.append(time.perf_counter() - t0)
    per_call = min(first) if first else compile_s
    n = int(max(5, min(calls, budget_s / max(per_call, 1e-6))))
    times = []
    load_before = _load()
    for i in range(n):
      key = jax.random.PRNGKey(1000 + i)
      t0 = time.perf_counter()
      jax.block_until_ready(serve(params, key, obs, weights, catalog))
      times.append(time.perf_counter() - t0)
    ms = 1e3 * np.asarray(times)
    row = {"batch": int(batch), "p50_ms": float(np.percentile(ms, 50)),
           "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
           "calls": n, "decisions_per_s": int(batch) / float(np.median(times)),
           "first_call_s": compile_s, "load_avg_1min_before_after": [load_before, _load()]}
    rows.append(row)
    log(f"latency batch {batch:>5}: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms "
        f"({n} calls; {row['decisions_per_s']:,.0f} decisions/s; first call {compile_s:.1f}s)")
  return rows


def print_table(rows: list[dict]) -> None:
  def fmt(v, spec):
    return "-" if v is None else format(v, spec)
  print("| grid | gfnfeeds ms/iter (mode, fused/sequential) | torchgfn ms/iter | ratio | "
        "jax TV | torchgfn TV | iterations |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| ({r['ndim']}, {r['height']}) | {r['ms_per_iter']:.1f} "
          f"({r['best_mode']}, {r['best_style']}) "
          f"| {fmt(r['torchgfn_ms_per_iter'], '.1f')} | {fmt(r['ratio'], '.2f')} "
          f"| {fmt(r['jax_tv'], '.2g')} | {fmt(r['torchgfn_tv'], '.2g')} "
          f"| {fmt(r['iterations'], 'd')} |")


def print_feeds_table(feeds: dict, latency: list | None) -> None:
  def fmt(v, spec):
    return "-" if v is None else format(v, spec)
  if feeds:
    print("| feeds training | jax | torch reference | ratio |")
    print("|---|---|---|---|")
    print(f"| decisions/s | {feeds['jax_decisions_per_s']:,.0f} | "
          f"{fmt(feeds['torch_decisions_per_s'], ',.1f')} | {fmt(feeds['ratio'], '.1f')} |")
    print(f"| candidate trajectories/s | {feeds['jax_candidate_trajectories_per_s']:,.0f} | "
          f"{fmt(feeds['torch_candidate_trajectories_per_s'], ',.0f')} | "
          f"{fmt(feeds['ratio'], '.1f')} |")
  if feeds and feeds.get("phases"):
    print("| phase (ms per update) | jax | torch reference | ratio |")
    print("|---|---|---|---|")
    for r in feeds["phases"]:
      print(f"| {r['phase']} | {r['jax_ms_per_update']:.1f} | "
            f"{fmt(r['torch_ms_per_update'], ',.1f')} | {fmt(r['ratio'], '.1f')} |")
  if latency:
    print("| batch | p50 ms | p99 ms | decisions/s | calls |")
    print("|---|---|---|---|---|")
    for r in latency:
      print(f"| {r['batch']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['decisions_per_s']:,.0f} | {r['calls']} |")


def main(argv):
  del argv
  print(f"device: {device_description()}")
  suites = SUITES if FLAGS.suite == "all" else (FLAGS.suite,)
  log = lambda m: print(m, flush=True)  # noqa: E731
  t0 = time.perf_counter()
  result = {}
  if "hypergrid" in suites:
    grids = [parse_grid(g) for g in FLAGS.grids]
    tv_grid = parse_grid(FLAGS.tv_grid) if FLAGS.tv_grid else None
    setup = Setup(FLAGS.batch, FLAGS.hidden, FLAGS.lr, FLAGS.log_z_lr, FLAGS.seed)
    result.update(run_hypergrid(grids, setup, FLAGS.peer, tv_grid, FLAGS.tv_iterations,
                                FLAGS.active_buckets, FLAGS.warmup, FLAGS.block, FLAGS.repeats,
                                log=log, compact=FLAGS.compact))
  if "feeds" in suites or "latency" in suites:
    env, env_params, config = feeds_data(FLAGS.network, FLAGS.videos)
    config.train.num_sessions = FLAGS.feeds_sessions
    config.train.rollout_steps = FLAGS.feeds_rollout_steps
    config.train.updates_per_chunk = FLAGS.feeds_updates_per_chunk
    if FLAGS.feeds_candidates:
      config.gfn.candidates = FLAGS.feeds_candidates
    if FLAGS.feeds_horizon:
      config.gfn.horizon = FLAGS.feeds_horizon
    settings = feeds_settings(config, env)
    result["feeds_data"] = {"network": FLAGS.network, "videos": FLAGS.videos,
                            "candidates": config.gfn.candidates, "horizon": config.gfn.horizon}
  if "feeds" in suites:
    result["feeds"] = run_feeds(settings, env_params, FLAGS.feeds_placements, FLAGS.feeds_repeats,
                                FLAGS.torch_updates, FLAGS.torch_warmup,
                                [int(t) for t in FLAGS.torch_threads], FLAGS.seed, True, log,
                                FLAGS.feeds_phase_repeats)
  if "latency" in suites:
    result["latency"] = run_latency(settings, env_params, [int(b) for b in FLAGS.latency_batches],
                                    FLAGS.latency_calls, FLAGS.latency_budget_s,
                                    FLAGS.latency_warmup, FLAGS.seed, log)
  result["total_s"] = time.perf_counter() - t0
  result.update(device=device_description(), date=time.strftime("%Y-%m-%d"),
                jax_version=jax.__version__, suites=list(suites), **torch_versions())
  if "hypergrid" in result:
    print_table(result["hypergrid"])
  print_feeds_table(result.get("feeds"), result.get("latency"))
  write_json(FLAGS.json, result)


if __name__ == "__main__":
  app.run(main)
