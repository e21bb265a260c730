"""Evaluation on explicit sessions: building them, running policies, summarising.

Every policy evaluated with the same data, user spec, preference spec and seed
sees exactly the same sessions (trace, start row, videos, watch durations,
weights), so results pair session by session.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gfnfeeds.data import users as users_io
from gfnfeeds.data.packing import Catalog
from gfnfeeds.data.types import Video
from gfnfeeds.env.feeds import EnvParams, FeedsEnv, Session, sample_watch_ms, session_metrics
from gfnfeeds.env.preferences import MMGC_WEIGHTS, PreferenceSampler
from gfnfeeds.env.rollout import make_session_evaluator, session_mesh, shard_sessions

SUMMARY_METRICS = ("score", "qoe", "normalized_qoe", "rebuffer_s", "bandwidth_mb", "wastage_pct",
                   "download_watch_ratio", "quality", "smoothness", "startup_delay_s",
                   "invalid_actions", "decisions")


@dataclasses.dataclass(frozen=True)
class SessionTable:
  """Host-side description of N sessions plus their labels for reports."""

  sessions: Session          # arrays with a leading [N] axis
  trace_names: list[str]     # per session
  user_names: list[str]      # per session

  def __len__(self) -> int:
    return len(self.trace_names)


USER_KINDS = ("mmgc_samples", "sampled", "sampled_per_session")


def parse_users(spec: str) -> tuple[str, int]:
  """'mmgc_default' | 'mmgc_samples:N' | 'sampled:N' | 'sampled_per_session:N' -> (kind, N).

  `sampled:N` is N users crossed with the traces: user u watches every trace's
  videos the same way, so with a fixed catalog (MMGC: the same seven videos in
  every session) the whole table has only N swipe patterns. `sampled_per_session:N`
  gives N sessions per trace with a fresh user each: every session is an
  independent draw of the user population, the setting in which per-session
  confidence intervals mean what they say.
  """
  if spec == "mmgc_default":
    return "mmgc_default", 1
  kind, _, n = spec.partition(":")
  if kind in USER_KINDS and n.isdigit() and int(n) > 0:
    return kind, int(n)
  raise ValueError(f"--users must be mmgc_default, mmgc_samples:N, sampled:N or "
                   f"sampled_per_session:N (N >= 1), got {spec!r}")


def build_sessions(env: FeedsEnv, videos: Sequence[Video], catalog: Catalog,
                   trace_names: Sequence[str], trace_lens: Sequence[int], users: str,
                   preferences: str, preference_sampler: PreferenceSampler, seed: int,
                   num_sessions: int | None = None, random_offset: bool = False) -> SessionTable:
  """One session per (trace, user) pair, cycled to `num_sessions` if given.

  Videos: with a catalog of exactly env.num_videos videos, session video i is
  catalog video i (MMGC); with a larger catalog each session draws its videos
  from a seeded stream. Users: the MMGC seeded procedure (exact) or watch
  durations sampled from the retention curves, per user (`sampled:N`, the same
  draws on every trace) or per session (`sampled_per_session:N`; see
  `parse_users`). Preferences: the MMGC weights
  for everyone, or one draw per session. Everything derives from `seed` and the
  session index only.
  """
  kind, n_users = parse_users(users)
  if preferences not in ("mmgc", "sampled"):
    raise ValueError(f"--preferences must be mmgc or sampled, got {preferences!r}")
  v = env.num_videos
  pairs = [(t, u) for t in range(len(trace_names)) for u in range(n_users)]
  n = len(pairs) if num_sessions is None else int(num_sessions)
  if n <= 0:
    raise ValueError("no sessions to evaluate")
  root = jax.random.PRNGKey(seed)
  k_vid, k_user, k_pref, k_row = jax.random.split(root, 4)
  idx = np.arange(n)
  trace_index = np.asarray([pairs[i % len(pairs)][0] for i in idx], np.int32)
  user_index = np.asarray([pairs[i % len(pairs)][1] for i in idx], np.int32)

  if len(videos) == v:
    video_ids = np.tile(np.arange(v, dtype=np.int32), (n, 1))
  else:
    draw = jax.vmap(lambda k: jax.random.randint(k, (v,), 0, len(videos), jnp.int32))
    video_ids = np.asarray(draw(jax.vmap(lambda i: jax.random.fold_in(k_vid, i))(idx)))

  if kind in ("sampled", "sampled_per_session"):
    # sampled: one key per user, shared by its sessions; per session: one key per
    # session, from a stream apart from the shared users' keys.
    base, index = ((k_user, user_index) if kind == "sampled"
                   else (jax.random.split(k_user)[0], idx))
    user_keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(index)
    watch = np.asarray(jax.vmap(sample_watch_ms, in_axes=(0, None, 0))(
        user_keys, catalog, jnp.asarray(video_ids)))
  else:
    seeds = (users_io.mmgc_default_seeds()[None] if kind == "mmgc_default"
             else users_io.mmgc_sample_seeds(n_users))
    cache: dict = {}
    watch = np.zeros((n, v), np.int32)
    for i in range(n):
      for j in range(v):
        key = (int(user_index[i]), int(video_ids[i, j]), j)
        if key not in cache:
          s_np, s_py = seeds[user_index[i], j]
          cache[key] = users_io.mmgc_watch_duration(videos[video_ids[i, j]], s_np, s_py)
        watch[i, j] = cache[key]

  if preferences == "mmgc":
    weights = np.tile(np.asarray(MMGC_WEIGHTS, np.float64), (n, 1))
  else:
    weights = np.asarray(jax.vmap(lambda i: preference_sampler.sample(
        jax.random.fold_in(k_pref, i)))(idx))

  if random_offset:
    lens = np.asarray(trace_lens, np.int64)[trace_index]
    u = np.asarray(jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(k_row, i)))(idx))
    start_row = (1 + np.floor(u * (lens - 1))).astype(np.int32)
  else:
    start_row = np.ones((n,), np.int32)

  sessions = Session(trace_index=jnp.asarray(trace_index), start_row=jnp.asarray(start_row),
                     video_ids=jnp.asarray(video_ids), watch_ms=jnp.asarray(watch, jnp.int32),
                     weights=jnp.asarray(weights))
  if kind == "mmgc_default":
    user_names = ["default"] * n
  elif kind == "sampled_per_session":
    user_names = [f"session{i}" for i in idx]
  else:
    user_names = [str(u) for u in user_index]
  return SessionTable(sessions=sessions, trace_names=[trace_names[t] for t in trace_index],
                      user_names=user_names)


def run_sessions(env: FeedsEnv, policy, params: EnvParams, table: SessionTable, seed: int,
                 batch_size: int = 4096, max_steps: int | None = None, progress=None,
                 policy_params=()) -> dict[str, np.ndarray]:
  """Runs `policy` on every session; returns per-session metrics as numpy arrays.

  Sessions go in batches of `batch_size` (padded to a multiple of the device
  count), sharded over local devices; the policy's keys derive from `seed` and
  the session index, so stochastic policies are reproducible too.
  `policy_params` (learned weights, replicated on every device) are passed to
  the compiled program as an argument.
  """
  mesh = session_mesh()
  n_dev = mesh.devices.size
  evaluate = make_session_evaluator(env, policy, max_steps)
  run = jax.jit(shard_sessions(lambda s, k, p, pp: evaluate(s, k, p, pp)[0], mesh, 2)
                if n_dev > 1 else (lambda s, k, p, pp: evaluate(s, k, p, pp)[0]))
  n = len(table)
  batch = min(batch_size, n)
  batch = -(-batch // n_dev) * n_dev
  keys_all = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(
      jnp.arange(n))
  chunks = []
  for start in range(0, n, batch):
    stop = min(start + batch, n)
    idx = np.arange(start, start + batch) % n  # pad the last batch by wrapping
    sess = jax.tree.map(lambda x: x[idx], table.sessions)
    out = run(sess, keys_all[idx], params, policy_params)
    chunks.append({k: np.asarray(v)[: stop - start] for k, v in out.items()})
    if progress is not None:
      progress(stop - start)
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def policy_label(name: str, policy) -> str:
  """The name printed for a policy: upper bounds (the clairvoyant oracle) say so."""
  if getattr(policy, "upper_bound", False) and "upper bound" not in name:
    return f"{name} (upper bound)"
  return name


def mean_ci(x: np.ndarray, z: float = 1.96) -> tuple[float, float]:
  """Mean and the half-width of its normal-approximation 95% confidence interval."""
  x = np.asarray(x, np.float64)
  if x.size < 2:
    return float(x.mean()) if x.size else math.nan, math.nan
  return float(x.mean()), float(z * x.std(ddof=1) / math.sqrt(x.size))


def clustered_mean_ci(x: np.ndarray, clusters, z: float = 1.96) -> tuple[float, float]:
  """Mean and 95% CI half-width allowing correlation within clusters (e.g. sessions on one trace).

  The CR1 cluster-robust standard error of a mean: with G clusters and n values,
  se = sqrt(G / (G - 1) * sum_g (sum_{i in g} (x_i - mean))^2) / n. With one value
  per cluster it is `mean_ci`'s sd / sqrt(n); when values of a cluster move together
  it is wider, as it should be.
  """
  x = np.asarray(x, np.float64)
  _, group = np.unique(np.asarray(clusters), return_inverse=True)
  num_clusters = int(group.max()) + 1 if x.size else 0
  if num_clusters < 2:
    return (float(x.mean()) if x.size else math.nan), math.nan
  totals = np.bincount(group, weights=x - x.mean(), minlength=num_clusters)
  se = math.sqrt(num_clusters / (num_clusters - 1) * float(np.sum(totals ** 2))) / x.size
  return float(x.mean()), float(z * se)


def metric_names(env: FeedsEnv, params: EnvParams) -> tuple[str, ...]:
  """Names of the per-session metrics `run_sessions` returns, by shape evaluation (runs nothing):
  `session_metrics` plus the evaluator's "completed"."""
  def final_metrics():
    _, state = env.reset(jax.random.PRNGKey(0), params)
    return session_metrics(state, params, env.window)
  return tuple(jax.eval_shape(final_metrics)) + ("completed",)


def summarize(metrics: dict[str, np.ndarray], names: Sequence[str] = SUMMARY_METRICS
              ) -> dict[str, tuple[float, float]]:
  """{metric: (mean, 95% CI half-width)} over sessions."""
  return {k: mean_ci(metrics[k]) for k in names if k in metrics}


def format_summary(title: str, summary: dict[str, tuple[float, float]], n: int) -> str:
  lines = [f"{title}  ({n} sessions; mean ± 95% CI)"]
  for k, (m, h) in summary.items():
    lines.append(f"  {k:<22} {m:>14.4f} ± {h:.4f}")
  return "\n".join(lines)
