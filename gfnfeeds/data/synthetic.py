"""The project's default data set: synthetic traces and videos fitted to real data.

The real data (MMGC2022 traces, chunk sizes and retention curves; Oboe and FCC
throughput traces) has no licence that allows shipping it, so the project ships
data it generates itself: simple statistical models whose few parameters are
fitted to the real files. fit_statistics() computes those parameters from
../shared/traces; FITTED_STATISTICS below is a frozen copy of its output (so a
fresh clone regenerates the data offline), and tests check that the two agree.

Models (parameters in FITTED_STATISTICS; every draw from one seeded numpy
Generator per part, all spawned from one master seed):

* Network throughput, per class low / medium / high. The log throughput of a
  trace is  level + x_t - within_std^2 / 2,  with level ~ Normal(level_mean,
  level_std) once per trace (the log of the trace's mean throughput: the
  between-trace spread) and x_t a stationary Gaussian AR(1) at 0.5 s slots with
  std within_std and lag-1 autocorrelation lag1 (within-trace variation of log
  throughput); throughput = clip(exp(...), floor, cap), rounded to 0.1 kbps. A draw
  whose plain mean falls outside its class (classify_trace, 1.5 / 3 Mbps) is
  rejected and redrawn, so every trace carries its label; level_mean/level_std
  are fitted to the class members, so this trims the tails a second time
  (about 10% of low and medium draws, 3% of high draws are rejected).
* Video durations: N = clip(round(exp(Normal(log_mean, log_std))), 6, 125)
  seconds (1-s chunks), [6, 125] being the real range.
* Chunk sizes: every level of a video shares one multiplicative VBR pattern
  (real levels correlate at 0.92..1.0): size[j, l] = ladder[l] * ratio[l] * c_v
  * m_j * 125 bytes/kbps, with c_v = exp(Normal(0, complexity_std)) the video's
  complexity, m_j = exp(z_j - s^2/2) for chunks j >= 1 where z is a stationary
  AR(1) whose std s and log-lag-1 give the video's coefficient of variation cv_v
  ~ LogNormal and the fitted chunk-size lag-1 correlation, and chunk 0 scaled
  by first_chunk_ratio (real first chunks are smaller: startup).
* Retention: two viewer groups. A fraction a_v of early swipers leaves with a
  Weibull(scale, shape) survival shared by all videos; the engaged rest leaves
  at a constant rate such that a fraction p_v of them watches to the end:
      r(t) = a_v exp(-(t / scale)^shape) + (1 - a_v) p_v^(t / N),  t = 0..N,
  so r(0) = 1, r is non-increasing and r(N) is the full-watch probability.
  a_v and p_v ~ Beta distributions matching the mean and std of the per-video
  fits.

Run `python -m gfnfeeds.data.synthetic --out=traces` to regenerate the default
data set bit for bit, `--fit=../shared/traces` to print fit_statistics() as a
Python literal, `--compare=../shared/traces` to print real vs synthetic.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gfnfeeds.data import compact
from gfnfeeds.data.packing import MMGC_LADDER_KBPS
from gfnfeeds.data.traces import (TRACE_CLASSES, classify_trace,
                                  load_network_traces, sample_mean_mbps)
from gfnfeeds.data.types import NetworkTrace, Video
from gfnfeeds.data.videos import load_mmgc_videos

SLOT_S = 0.5  # MMGC's trace resolution
TRACE_DURATION_S = 1200.0  # rows 0, 0.5, ..., 1199.5: longer than any session
TRACES_PER_CLASS = 24
NUM_VIDEOS = 40
DEFAULT_SEED = 0
BANDWIDTH_DECIMALS = 4  # Mbps, i.e. 0.1 kbps: as a text trace would hold it
MAX_REJECTIONS = 10_000

# Network sources per class, equally weighted so the 2000-odd FCC files do not
# drown the 20 MMGC files of a class (their sampling intervals differ: MMGC
# 0.5 s, FCC ~1.44 s, Oboe ~3.4 s).
NETWORK_SOURCES = ("mmgc", "oboe", "fcc")
# Tail quantiles used as the floor and cap of the generated throughput.
FLOOR_QUANTILE = 0.005
CAP_QUANTILE = 0.999

# Grids of the retention fit: shared Weibull (scale, shape) searched coarse to
# fine in log space; per video the engaged full-watch fraction p on a fixed grid
# with the early-swiper fraction a solved in closed form (linear least squares).
_RET_SCALE_RANGE = (0.5, 20.0)
_RET_SHAPE_RANGE = (0.5, 8.0)
_RET_P_GRID = np.linspace(0.001, 0.999, 999)

# ----------------------------------------------------------------------------
# Small statistics helpers


def lag1_autocorr(x: np.ndarray) -> float:
  """Pearson correlation of (x[t], x[t+1]); nan for fewer than 3 values or a constant."""
  x = np.asarray(x, np.float64)
  if x.shape[0] < 3:
    return math.nan
  a, b = x[:-1] - x[:-1].mean(), x[1:] - x[1:].mean()
  den = math.sqrt(float(np.sum(a * a) * np.sum(b * b)))
  return float(np.sum(a * b) / den) if den > 0.0 else math.nan


def weighted_quantile(values: np.ndarray, weights: np.ndarray,
                      q: Sequence[float]) -> np.ndarray:
  """Quantiles of a weighted sample (inverse of the midpoint-interpolated CDF)."""
  order = np.argsort(values, kind="stable")
  v, w = values[order], weights[order]
  cdf = (np.cumsum(w) - 0.5 * w) / np.sum(w)
  return np.interp(q, cdf, v)


def _beta_params(mean: float, std: float) -> tuple[float, float]:
  """Beta(alpha, beta) with the given mean and std (method of moments)."""
  var = std * std
  if not 0.0 < mean < 1.0 or not 0.0 < var < mean * (1.0 - mean):
    raise ValueError(f"no Beta distribution has mean {mean} and std {std}")
  k = mean * (1.0 - mean) / var - 1.0
  return mean * k, (1.0 - mean) * k


def _round_sig(x: float, digits: int = 6) -> float:
  return float(f"{x:.{digits}g}")


# ----------------------------------------------------------------------------
# Fitting to the real data


def _resolve_traces_dir(shared_dir) -> Path:
  """Accepts ../shared or ../shared/traces; returns the folder holding mmgc2022/."""
  d = Path(shared_dir)
  if (d / "traces" / "mmgc2022").is_dir():
    d = d / "traces"
  if not (d / "mmgc2022").is_dir() or not (d / "network").is_dir():
    raise FileNotFoundError(
        f"{shared_dir}: expected the real data folder holding mmgc2022/ and "
        "network/ (../shared/traces)")
  return d


def load_real_network(shared_dir) -> dict[str, dict[str, list[NetworkTrace]]]:
  """The real traces by class, then source: {class: {'mmgc'|'oboe'|'fcc': [...]}}.

  MMGC: network/{low,medium,high} (mixed/ only repeats them); Oboe: all files;
  FCC: fcc/{cooked_traces,test_traces,cooked_test_traces}, byte-identical
  duplicates dropped and the files with zero-throughput samples skipped. Every
  trace is put in the class classify_trace gives it (one MMGC 'medium' file
  has a plain mean below 1.5 Mbps and counts as low), so the fitted classes are
  the classes the project uses everywhere.
  """
  d = _resolve_traces_dir(shared_dir)
  by_source = {
      "mmgc": load_network_traces(
          [d / "mmgc2022" / "network" / c for c in ("low", "medium", "high")]),
      "oboe": load_network_traces(d / "network" / "oboe"),
      "fcc": load_network_traces(d / "network" / "fcc", errors="skip"),
  }
  out = {c: {s: [] for s in NETWORK_SOURCES} for c in TRACE_CLASSES}
  for source, traces in by_source.items():
    for t in traces:
      out[classify_trace(t)][source].append(t)
  return out


def _network_source_stats(traces: Sequence[NetworkTrace]) -> dict:
  """Per-trace log statistics of one source within one class, summarized."""
  levels, variances, lag1_slot, lag1_raw = [], [], [], []
  for t in traces:
    lb = np.log(t.bandwidth_mbps)
    # The level is the log of the plain mean, the quantity classify_trace
    # thresholds, rather than the mean log: real log throughput is skewed to
    # the left (dips), so exp(mean log + var/2) would overstate trace means.
    levels.append(math.log(sample_mean_mbps(t)))
    variances.append(lb.var())
    r = lag1_autocorr(lb)
    if math.isnan(r):
      continue
    dt = float(np.median(np.diff(t.times_s)))
    lag1_raw.append(r)
    # Lag-1 at this trace's own spacing dt, converted to a 0.5 s slot under
    # the Ornstein-Uhlenbeck assumption rho(lag) = rho(1 s)^(lag / 1 s).
    lag1_slot.append(max(r, 0.0)**(SLOT_S / dt))
  samples = np.concatenate([t.bandwidth_mbps for t in traces])
  return {
      "traces": len(traces),
      "level_mean": float(np.mean(levels)),
      "level_var": float(np.var(levels)),
      "within_var": float(np.mean(variances)),
      "lag1": float(np.mean(lag1_slot)),
      "lag1_raw": float(np.mean(lag1_raw)),
      "floor": float(np.quantile(samples, FLOOR_QUANTILE)),
      "cap": float(np.quantile(samples, CAP_QUANTILE)),
  }


def _fit_network(real: dict) -> dict:
  out = {}
  for c in TRACE_CLASSES:
    per = {s: _network_source_stats(real[c][s]) for s in NETWORK_SOURCES
           if real[c][s]}
    w = 1.0 / len(per)
    mean = sum(w * p["level_mean"] for p in per.values())
    # Mixture of the sources' level distributions: within + between variance.
    var = sum(w * (p["level_var"] + (p["level_mean"] - mean)**2)
              for p in per.values())
    out[c] = {
        "level_mean": mean,
        "level_std": math.sqrt(var),
        "within_std": math.sqrt(sum(w * p["within_var"] for p in per.values())),
        "lag1": sum(w * p["lag1"] for p in per.values()),
        "floor_mbps": sum(w * p["floor"] for p in per.values()),
        "cap_mbps": sum(w * p["cap"] for p in per.values()),
        "traces": {s: per[s]["traces"] if s in per else 0
                   for s in NETWORK_SOURCES},
    }
  return out


def _fit_video_sizes(videos: Sequence[Video], ladder) -> dict:
  ladder = np.asarray(ladder, np.float64)
  log_ratio, cv, lag1, pairs, first = [], [], [], [], []
  for v in videos:
    kbps = v.chunk_sizes.astype(np.float64) * 8.0 / 1000.0  # 1-s chunks
    rest = kbps[1:]  # chunk 0 is modelled apart (first_chunk_ratio)
    mean = rest.mean(axis=0)
    log_ratio.append(np.log(mean / ladder))
    cv.append(float(np.mean(rest.std(axis=0) / mean)))
    first.append(float(np.mean(np.log(kbps[0] / mean))))
    if rest.shape[0] >= 3:
      lag1.append(float(np.mean([lag1_autocorr(rest[:, l])
                                 for l in range(rest.shape[1])])))
      pairs.append(rest.shape[0] - 1)
  log_ratio = np.array(log_ratio)
  log_cv = np.log(cv)
  return {
      "bitrate_ratio": np.exp(log_ratio.mean(axis=0)).tolist(),
      "complexity_std": float(np.std(log_ratio.mean(axis=1), ddof=1)),
      "cv_log_mean": float(log_cv.mean()),
      "cv_log_std": float(np.std(log_cv, ddof=1)),
      # The log-normal is clipped to the observed range: its right tail would
      # otherwise give a few videos CVs of 2 or more, which no real video has.
      "cv_min": float(np.min(cv)),
      "cv_max": float(np.max(cv)),
      # Videos weigh by their number of chunk pairs: a 6-chunk video's lag-1
      # rests on 4 pairs, a 125-chunk one's on 123.
      "lag1": float(np.average(lag1, weights=pairs)),
      "first_chunk_ratio": float(np.exp(np.mean(first))),
  }


def retention_curve(num_chunks: int, early_frac: float, engaged_full: float,
                    scale_s: float, shape: float) -> np.ndarray:
  """r(t), t = 0..N, of the two-group model (see the module docstring)."""
  t = np.arange(num_chunks + 1, dtype=np.float64)
  r = (early_frac * np.exp(-(t / scale_s)**shape) +
       (1.0 - early_frac) * engaged_full**(t / num_chunks))
  # Both terms are non-increasing; accumulate/clip only guard float rounding.
  r = np.clip(np.minimum.accumulate(r), 0.0, 1.0)
  r[0] = 1.0
  return r


def _fit_retention_given_shape(curves, scale, shape):
  """Best (a, p, sse) per curve for a fixed Weibull (scale, shape)."""
  p = _RET_P_GRID[:, None]
  out = []
  for r in curves:
    n = r.shape[0] - 1
    t = np.arange(n + 1, dtype=np.float64)
    fast = np.exp(-(t / scale)**shape)[None, :]
    slow = p**(t / n)
    d, y = fast - slow, r[None, :] - slow
    a = np.clip(np.sum(d * y, axis=1) / np.maximum(np.sum(d * d, axis=1),
                                                   1e-300), 0.0, 1.0)
    sse = np.sum((a[:, None] * d - y)**2, axis=1)
    k = int(np.argmin(sse))
    out.append((float(a[k]), float(_RET_P_GRID[k]), float(sse[k])))
  return out


def _fit_retention(videos: Sequence[Video]) -> dict:
  curves = [v.retention for v in videos]

  def cost(scale, shape):
    # Mean squared error per curve, then averaged: each video counts once.
    fits = _fit_retention_given_shape(curves, scale, shape)
    return sum(f[2] / c.shape[0] for f, c in zip(fits, curves)) / len(curves)

  lo = np.log([_RET_SCALE_RANGE[0], _RET_SHAPE_RANGE[0]])
  hi = np.log([_RET_SCALE_RANGE[1], _RET_SHAPE_RANGE[1]])
  best = None
  for _ in range(4):  # coarse to fine: 13 x 13 log-grid, then zoom in 4x
    grid = [np.exp(np.linspace(lo[i], hi[i], 13)) for i in range(2)]
    for scale in grid[0]:
      for shape in grid[1]:
        c = cost(scale, shape)
        if best is None or c < best[0]:
          best = (c, scale, shape)
    centre = np.log([best[1], best[2]])
    half = (hi - lo) / 8.0
    lo, hi = centre - half, centre + half
  _, scale, shape = best
  fits = _fit_retention_given_shape(curves, scale, shape)
  a = np.array([f[0] for f in fits])
  p = np.array([f[1] for f in fits])
  rmse = [math.sqrt(f[2] / c.shape[0]) for f, c in zip(fits, curves)]
  return {
      "early_scale_s": float(scale),
      "early_shape": float(shape),
      "early_frac_mean": float(a.mean()),
      "early_frac_std": float(np.std(a, ddof=1)),
      "engaged_full_mean": float(p.mean()),
      "engaged_full_std": float(np.std(p, ddof=1)),
      "fit_rmse_mean": float(np.mean(rmse)),
      "fit_rmse_max": float(np.max(rmse)),
  }


def fit_statistics(shared_traces_dir) -> dict:
  """Fits every model parameter of the generator to the real data.

  Args:
    shared_traces_dir: the real data folder (../shared/traces, holding
      mmgc2022/ and network/), or its parent ../shared.

  Returns:
    {'network': {class: {level_mean, level_std, within_std, lag1, floor_mbps,
    cap_mbps, traces: {source: count}}}, 'duration': {log_mean, log_std,
    min_s, max_s}, 'sizes': {bitrate_ratio [3], complexity_std, cv_log_mean,
    cv_log_std, cv_min, cv_max, lag1, first_chunk_ratio}, 'retention':
    {early_scale_s, early_shape, early_frac_mean/std, engaged_full_mean/std,
    fit_rmse_mean/max}}.
    Log statistics are natural logs of Mbps (network) or seconds (duration);
    lag1 of the network is per 0.5 s slot. Takes a few seconds (2500 FCC files).
  """
  d = _resolve_traces_dir(shared_traces_dir)
  videos = load_mmgc_videos(d / "mmgc2022")
  durations = np.log([v.num_chunks for v in videos])
  return {
      "network": _fit_network(load_real_network(d)),
      "duration": {
          "log_mean": float(durations.mean()),
          "log_std": float(np.std(durations, ddof=1)),
          "min_s": int(min(v.num_chunks for v in videos)),
          "max_s": int(max(v.num_chunks for v in videos)),
      },
      "sizes": _fit_video_sizes(videos, MMGC_LADDER_KBPS),
      "retention": _fit_retention(videos),
  }


def format_statistics(stats, indent: int = 0) -> str:
  """Python source for a statistics dict, floats rounded to 6 significant digits."""
  pad = " " * indent
  if isinstance(stats, dict):
    items = [f'{pad}  "{k}": {format_statistics(v, indent + 2).lstrip()},'
             for k, v in stats.items()]
    return pad + "{\n" + "\n".join(items) + f"\n{pad}}}"
  if isinstance(stats, (list, tuple)):
    return pad + "[" + ", ".join(format_statistics(v) for v in stats) + "]"
  if isinstance(stats, float):
    return pad + repr(_round_sig(stats))
  return pad + repr(stats)


# The frozen output of fit_statistics('../shared/traces'), floats rounded to 6
# significant digits; the generator reads only this. Refresh it by pasting the
# output of `python -m gfnfeeds.data.synthetic --fit=../shared/traces` (and then
# regenerate traces/, whose bytes depend on it).
FITTED_STATISTICS = {
  "network": {
    "low": {
      "level_mean": 0.00909469,
      "level_std": 0.309918,
      "within_std": 0.376221,
      "lag1": 0.581253,
      "floor_mbps": 0.195797,
      "cap_mbps": 3.56706,
      "traces": {
        "mmgc": 21,
        "oboe": 96,
        "fcc": 888,
      },
    },
    "medium": {
      "level_mean": 0.673081,
      "level_std": 0.215628,
      "within_std": 0.490769,
      "lag1": 0.631031,
      "floor_mbps": 0.325645,
      "cap_mbps": 6.43047,
      "traces": {
        "mmgc": 19,
        "oboe": 120,
        "fcc": 859,
      },
    },
    "high": {
      "level_mean": 1.3015,
      "level_std": 0.115475,
      "within_std": 0.520579,
      "lag1": 0.536863,
      "floor_mbps": 0.556842,
      "cap_mbps": 9.86683,
      "traces": {
        "mmgc": 20,
        "oboe": 211,
        "fcc": 350,
      },
    },
  },
  "duration": {
    "log_mean": 3.40876,
    "log_std": 0.939675,
    "min_s": 6,
    "max_s": 125,
  },
  "sizes": {
    "bitrate_ratio": [1.07967, 1.07864, 1.08343],
    "complexity_std": 0.0851462,
    "cv_log_mean": -1.52911,
    "cv_log_std": 1.01633,
    "cv_min": 0.0416214,
    "cv_max": 0.803857,
    "lag1": 0.428139,
    "first_chunk_ratio": 0.500809,
  },
  "retention": {
    "early_scale_s": 3.7412,
    "early_shape": 1.46092,
    "early_frac_mean": 0.440582,
    "early_frac_std": 0.333074,
    "engaged_full_mean": 0.383,
    "engaged_full_std": 0.205152,
    "fit_rmse_mean": 0.0244869,
    "fit_rmse_max": 0.039728,
  },
}


# ----------------------------------------------------------------------------
# Generation


def _ar1(rng: np.random.Generator, n: int, phi: float, std: float) -> np.ndarray:
  """A stationary Gaussian AR(1) path of length n: std `std`, lag-1 corr `phi`."""
  eps = rng.standard_normal(n)
  x = np.empty(n, np.float64)
  x[0] = std * eps[0]
  innovation = std * math.sqrt(1.0 - phi * phi)
  for k in range(1, n):
    x[k] = phi * x[k - 1] + innovation * eps[k]
  return x


def generate_network_traces(trace_class: str, count: int,
                            rng: np.random.Generator,
                            stats: dict | None = None,
                            duration_s: float = TRACE_DURATION_S,
                            slot_s: float = SLOT_S) -> list[NetworkTrace]:
  """Draws `count` traces of one class (see the module docstring).

  Names are '<class>/<index>' (00..); times are 0, slot_s, ... < duration_s.
  Raises RuntimeError if MAX_REJECTIONS draws in a row miss the class.
  """
  p = (stats or FITTED_STATISTICS)["network"][trace_class]
  rows = int(round(duration_s / slot_s))
  times = np.arange(rows, dtype=np.float64) * slot_s
  floor = round(p["floor_mbps"], BANDWIDTH_DECIMALS)
  cap = round(p["cap_mbps"], BANDWIDTH_DECIMALS)
  traces = []
  for i in range(count):
    for _ in range(MAX_REJECTIONS):
      level = p["level_mean"] + p["level_std"] * rng.standard_normal()
      # E[exp(x - s^2/2)] = 1, so exp(level) is the trace's expected mean.
      x = _ar1(rng, rows, p["lag1"], p["within_std"])
      x -= 0.5 * p["within_std"]**2
      bw = np.clip(np.round(np.exp(level + x), BANDWIDTH_DECIMALS), floor, cap)
      trace = NetworkTrace(name=f"{trace_class}/{i:02d}", times_s=times.copy(),
                           bandwidth_mbps=bw)
      if classify_trace(trace) == trace_class:
        traces.append(trace)
        break
    else:
      raise RuntimeError(f"no {trace_class} trace in {MAX_REJECTIONS} draws")
  return traces


def generate_videos(count: int, rng: np.random.Generator,
                    stats: dict | None = None,
                    ladder_kbps: Sequence[float] = MMGC_LADDER_KBPS
                    ) -> list[Video]:
  """Draws `count` videos named 'syn_<index>' (see the module docstring)."""
  stats = stats or FITTED_STATISTICS
  dur, sz, ret = stats["duration"], stats["sizes"], stats["retention"]
  ladder = np.asarray(ladder_kbps, np.float64)
  ratio = np.asarray(sz["bitrate_ratio"], np.float64)
  if ratio.shape != ladder.shape:
    raise ValueError(f"generate_videos: {ratio.shape[0]} fitted bitrate ratios "
                     f"for a ladder of {ladder.shape[0]} levels")
  a_beta = _beta_params(ret["early_frac_mean"], ret["early_frac_std"])
  p_beta = _beta_params(ret["engaged_full_mean"], ret["engaged_full_std"])
  videos = []
  for i in range(count):
    n = int(np.clip(np.round(np.exp(dur["log_mean"] + dur["log_std"] *
                                    rng.standard_normal())),
                    dur["min_s"], dur["max_s"]))
    complexity = math.exp(sz["complexity_std"] * rng.standard_normal())
    cv = float(np.clip(math.exp(sz["cv_log_mean"] + sz["cv_log_std"] *
                                rng.standard_normal()),
                       sz["cv_min"], sz["cv_max"]))
    # Log-normal chunk sizes with coefficient of variation cv and lag-1
    # correlation rho need log std s and log lag-1 log(1 + rho(e^{s^2}-1))/s^2.
    s2 = math.log1p(cv * cv)
    phi = math.log1p(sz["lag1"] * math.expm1(s2)) / s2
    z = _ar1(rng, n, phi, math.sqrt(s2))
    mult = np.exp(z - 0.5 * s2)
    mult[0] *= sz["first_chunk_ratio"]
    kbps = ladder * ratio * complexity
    sizes = np.maximum(np.round(mult[:, None] * kbps[None, :] * 125.0), 1.0)
    a = rng.beta(*a_beta)
    p = rng.beta(*p_beta)
    retention = retention_curve(n, a, p, ret["early_scale_s"],
                                ret["early_shape"])
    videos.append(Video(name=f"syn_{i:02d}", chunk_sizes=sizes.astype(np.int64),
                        retention=retention))
  return videos


def generate_dataset(seed: int = DEFAULT_SEED,
                     traces_per_class: int = TRACES_PER_CLASS,
                     num_videos: int = NUM_VIDEOS,
                     stats: dict | None = None) -> dict:
  """Generates the default data set in memory.

  One master seed feeds a numpy SeedSequence whose children drive the low,
  medium and high traces and the catalog independently, so changing one part's
  size leaves the others unchanged.

  Returns:
    {'network': {class: [NetworkTrace]}, 'videos': [Video],
     'ladder_kbps': float64 [3]}.
  """
  children = np.random.SeedSequence(seed).spawn(len(TRACE_CLASSES) + 1)
  rngs = [np.random.Generator(np.random.PCG64(c)) for c in children]
  network = {
      c: generate_network_traces(c, traces_per_class, rngs[k], stats)
      for k, c in enumerate(TRACE_CLASSES)
  }
  return {
      "network": network,
      "videos": generate_videos(num_videos, rngs[-1], stats),
      "ladder_kbps": np.asarray(MMGC_LADDER_KBPS, np.float64),
  }


def _readme(seed: int, data: dict) -> str:
  net = FITTED_STATISTICS["network"]
  rows = "\n".join(
      f"| network_{c}.npz | {len(data['network'][c])} synthetic {c} traces, "
      f"0.5 s slots, {TRACE_DURATION_S:g} s each | "
      f"log-AR(1): level {net[c]['level_mean']:.3f} +- {net[c]['level_std']:.3f}, "
      f"within std {net[c]['within_std']:.3f}, lag-1 {net[c]['lag1']:.3f}, "
      f"clip [{net[c]['floor_mbps']:.3f}, {net[c]['cap_mbps']:.2f}] Mbps |"
      for c in TRACE_CLASSES)
  n = len(data["videos"])
  return f"""# gfnfeeds default data set (synthetic)

Everything in this folder was generated by gfnfeeds itself from a seeded random
generator (master seed {seed}); no file here contains or is derived byte for byte
from real data. Only a few fitted statistics of the real data (the MMGC2022
challenge traces, chunk sizes and retention curves, and the Oboe and FCC
throughput traces) enter the generator, as constants in
`gfnfeeds/data/synthetic.py` (FITTED_STATISTICS).

| file | what | model |
| --- | --- | --- |
{rows}
| videos.npz | {n} synthetic short videos, 1-s chunks at 750 / 1200 / 1850 kbps (VBR), retention curves | log-normal durations (6..125 s), shared AR(1) VBR pattern, two-group retention |
| preferences.json | user preference mixture: 4 archetypes, jitter, bounds | gfnfeeds.env.preferences.archetype_preferences() |

Trace classes follow `classify_trace` (plain mean < 1.5 Mbps low, < 3 Mbps
medium, else high); every trace is checked to fall in its class.

Formats: `gfnfeeds.data.compact` (load_traces, load_videos,
load_preferences); the module docstring documents every array.

Regenerate, bit for bit (same numpy and zlib), from the project root:

    python -m gfnfeeds.data.synthetic --out=traces

Refit the statistics from the real data (read by path, never copied):

    python -m gfnfeeds.data.synthetic --fit=../shared/traces
    python -m gfnfeeds.data.synthetic --compare=../shared/traces

Real data sets, for experiments: MMGC2022 (github.com/AItransCompetition/
Short-Video-Streaming-Challenge), the Oboe, FCC and Norway 3G/HSDPA traces
(github.com/confiwent/Real-world-bandwidth-traces, MIT). Download them yourself
and pass their paths by flag.

Licence: generated by the gfnfeeds project; same licence as the project
(Apache-2.0).
"""


def generate_default_dataset(out_dir, seed: int = DEFAULT_SEED) -> list[Path]:
  """Writes the default data set into out_dir (created if missing).

  Files: network_{low,medium,high}.npz, videos.npz, preferences.json and
  README.md. Returns their paths. The output is a pure function of the seed,
  FITTED_STATISTICS and the generator code.
  """
  from gfnfeeds.env.preferences import ARCHETYPES, archetype_preferences
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  data = generate_dataset(seed)
  paths = []
  for c in TRACE_CLASSES:
    paths.append(out / f"network_{c}.npz")
    compact.save_traces(paths[-1], data["network"][c])
  paths.append(out / "videos.npz")
  compact.save_videos(paths[-1], data["videos"], data["ladder_kbps"])
  paths.append(out / "preferences.json")
  compact.save_preferences(paths[-1], archetype_preferences(), list(ARCHETYPES))
  paths.append(out / "README.md")
  paths[-1].write_text(_readme(seed, data), encoding="utf-8")
  return paths


def load_default_dataset(data_dir) -> dict:
  """Loads a folder written by generate_default_dataset (validating every file)."""
  d = Path(data_dir)
  videos, ladder = compact.load_videos(d / "videos.npz")
  return {
      "network": {c: compact.load_traces(d / f"network_{c}.npz")
                  for c in TRACE_CLASSES},
      "videos": videos,
      "ladder_kbps": ladder,
      "preferences": compact.load_preferences(d / "preferences.json"),
  }


# ----------------------------------------------------------------------------
# Real vs synthetic


def _network_row(label: str, groups: Sequence[Sequence[NetworkTrace]]) -> str:
  """One table row; each group (source) weighs equally, as in the fit."""
  values, weights, lag_raw, lag_slot, n = [], [], [], [], 0
  for traces in groups:
    if not traces:
      continue
    n += len(traces)
    bw = np.concatenate([t.bandwidth_mbps for t in traces])
    values.append(bw)
    weights.append(np.full(bw.shape, 1.0 / bw.shape[0]))
    s = _network_source_stats(traces)
    lag_raw.append(s["lag1_raw"])
    lag_slot.append(s["lag1"])
  v, w = np.concatenate(values), np.concatenate(weights)
  mean = float(np.average(v, weights=w))
  std = math.sqrt(float(np.average((v - mean)**2, weights=w)))
  p10, p50, p90 = weighted_quantile(v, w, [0.1, 0.5, 0.9])
  class_mean = np.mean([np.mean([sample_mean_mbps(t) for t in g])
                        for g in groups if g])
  return (f"| {label} | {n} | {mean:.3f} | {std:.3f} | {p10:.3f} | {p50:.3f} | "
          f"{p90:.3f} | {np.mean(lag_raw):.3f} | {np.mean(lag_slot):.3f} | "
          f"{class_mean:.3f} |")


def _video_summary(videos: Sequence[Video], ladder) -> dict:
  n = np.array([v.num_chunks for v in videos], np.float64)
  kbps = np.array([(v.chunk_sizes * 8.0 / 1000.0).mean(axis=0) for v in videos])
  cv = [np.mean(v.chunk_sizes[1:].std(0) / v.chunk_sizes[1:].mean(0))
        for v in videos]
  long = [v for v in videos if v.num_chunks >= 4]
  lag1 = [np.mean([lag1_autocorr(v.chunk_sizes[1:, l])
                   for l in range(v.num_levels)]) for v in long]
  # Weighted by chunk pairs, as in the fit (short series bias lag-1 low).
  lag1 = np.average(lag1, weights=[v.num_chunks - 2 for v in long])

  def r_at(v, t):
    return v.retention[min(t, v.num_chunks)]

  return {
      "videos": len(videos),
      "duration mean / median (s)": f"{n.mean():.1f} / {np.median(n):.1f}",
      "mean kbps per level": " / ".join(f"{x:.0f}" for x in kbps.mean(axis=0)),
      "kbps ratio to ladder": " / ".join(
          f"{x:.3f}" for x in kbps.mean(axis=0) / np.asarray(ladder)),
      "chunk-size CV (chunks >= 1, mean over videos)": f"{np.mean(cv):.3f}",
      "chunk-size lag-1 (chunks >= 1, pair-weighted)": f"{lag1:.3f}",
      "r(5 s)": f"{np.mean([r_at(v, 5) for v in videos]):.3f}",
      "r(10 s)": f"{np.mean([r_at(v, 10) for v in videos]):.3f}",
      "full-watch r(N)": f"{np.mean([v.retention[-1] for v in videos]):.3f}",
  }


def compare_to_real(shared_dir, synthetic_dir=None, seed: int = DEFAULT_SEED,
                    file=None) -> str:
  """Prints (and returns) Markdown tables of real vs synthetic statistics.

  Args:
    shared_dir: the real data (../shared/traces or ../shared).
    synthetic_dir: a folder written by generate_default_dataset; None
      generates the data set with `seed` in memory.
    file: where to print (default sys.stdout).

  Network rows: per class, each real source and their equal-weight pool (the
  fit's weighting) against the synthetic traces: pooled-sample mean, std,
  p10/p50/p90 of throughput (Mbps), lag-1 autocorrelation of log throughput at
  the source's own spacing and converted to 0.5 s, and the mean of the
  per-trace plain means. Video rows: durations, mean bitrate per level, VBR
  variability, mean retention at 5 s and 10 s (r(N) for shorter videos) and
  the full-watch probability r(N), averaged over videos.
  """
  d = _resolve_traces_dir(shared_dir)
  real = load_real_network(d)
  if synthetic_dir is None:
    syn = generate_dataset(seed)
  else:
    syn = load_default_dataset(synthetic_dir)
  lines = ["| class / source | traces | mean | std | p10 | p50 | p90 | "
           "lag-1 (own dt) | lag-1 (0.5 s) | mean of trace means |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for c in TRACE_CLASSES:
    for s in NETWORK_SOURCES:
      lines.append(_network_row(f"{c} real {s}", [real[c][s]]))
    lines.append(_network_row(f"**{c} real pool**",
                              [real[c][s] for s in NETWORK_SOURCES]))
    lines.append(_network_row(f"**{c} synthetic**", [syn["network"][c]]))
  real_videos = load_mmgc_videos(d / "mmgc2022")
  a = _video_summary(real_videos, MMGC_LADDER_KBPS)
  b = _video_summary(syn["videos"], syn["ladder_kbps"])
  lines += ["", "| videos | MMGC real | synthetic |", "| --- | ---: | ---: |"]
  lines += [f"| {k} | {a[k]} | {b[k]} |" for k in a]
  text = "\n".join(lines) + "\n"
  print(text, file=file or sys.stdout, end="")
  return text


# ----------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m gfnfeeds.data.synthetic",
      description="Generate the default synthetic data set, refit its "
      "statistics, or compare it with the real data.")
  parser.add_argument("--out", default=None,
                      help="write the data set into this folder (e.g. traces)")
  parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                      help="master seed (the committed set uses 0)")
  parser.add_argument("--fit", default=None, metavar="SHARED_TRACES",
                      help="print fit_statistics(SHARED_TRACES) as a Python "
                      "literal for FITTED_STATISTICS")
  parser.add_argument("--compare", default=None, metavar="SHARED_TRACES",
                      help="print real vs synthetic tables")
  args = parser.parse_args(argv)
  if not (args.out or args.fit or args.compare):
    parser.error("nothing to do: give --out, --fit and/or --compare")
  if args.fit:
    print("FITTED_STATISTICS = " + format_statistics(fit_statistics(args.fit)))
  if args.out:
    for p in generate_default_dataset(args.out, seed=args.seed):
      print(f"wrote {p} ({p.stat().st_size} bytes)")
  if args.compare:
    compare_to_real(args.compare, synthetic_dir=args.out, seed=args.seed)
  return 0


if __name__ == "__main__":
  sys.exit(main())
