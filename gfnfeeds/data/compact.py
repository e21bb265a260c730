"""The project's own compact data format: trace sets, video catalogs, preferences.

Trace sets and video catalogs are `.npz` archives (a zip of `.npy` arrays, read
with np.load(allow_pickle=False)); preference-sampler settings are a small JSON
file, since they are a handful of numbers a person may want to read and edit.
Every file carries a format tag and a version, and every loader validates what
it reads as strictly as the text loaders in traces.py and videos.py do: a bad
file raises DataError naming the file and, where relevant, the entry (trace or
video index and name, row or chunk), never a silent NaN inside a rollout.

Trace set (`format` = "gfnfeeds.traces", `version` = 1):

  names           str [T]         unique, non-empty trace names
  offsets         int64 [T + 1]   offsets[0] = 0, trace i is rows offsets[i]:offsets[i+1]
                                  (at least 2 rows each), offsets[T] = total rows
  times_s         float64 [R]     strictly increasing within each trace, finite
  bandwidth_mbps  float32 or float64 [R], finite and > 0

Video catalog (`format` = "gfnfeeds.videos", `version` = 1):

  names        str [V]              unique, non-empty video names
  num_chunks   int32 or int64 [V]   N_v >= 1
  chunk_sizes  int32 [V, C, L]      bytes, > 0 for chunk < N_v, 0 (padding) after;
                                    C = max_v N_v
  retention    float64 [V, C + 1]   r(0..N_v) in [0, 1], r(0) = 1, non-increasing;
                                    0 (padding) after N_v
  ladder_kbps  float64 [L]          the nominal ladder, finite, > 0, increasing

Both also hold `format` (0-d str) and `version` (0-d int64); no other arrays are
allowed, so a catalog passed as a trace set (or an unknown future layout) fails
loudly. Writing is bit-for-bit deterministic: the zip is written here with fixed
member order, timestamps and attributes (np.savez_compressed in numpy 2.x is
deterministic on one platform too, but only through zipfile defaults, one of
which, create_system, depends on the operating system). The deflate stream
itself is zlib's, so byte identity across machines assumes the same zlib.

Preference settings (JSON object, `format` = "gfnfeeds.preferences", `version`
= 1): `weight_names` (alpha, beta, gamma, theta), `archetypes` (A names),
`means` [A][4], `probs` [A] (>= 0, sum 1), `jitter` [4] (>= 0), `low` and `high`
[4] with low <= high. See gfnfeeds.env.preferences.PreferenceSampler.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gfnfeeds.data.types import DataError, NetworkTrace, Video

TRACES_FORMAT = "gfnfeeds.traces"
VIDEOS_FORMAT = "gfnfeeds.videos"
PREFERENCES_FORMAT = "gfnfeeds.preferences"
FORMAT_VERSION = 1

_TRACE_KEYS = ("format", "version", "names", "offsets", "times_s",
               "bandwidth_mbps")
_VIDEO_KEYS = ("format", "version", "names", "num_chunks", "chunk_sizes",
               "retention", "ladder_kbps")
_PREFERENCE_KEYS = ("format", "version", "weight_names", "archetypes", "means",
                    "probs", "jitter", "low", "high")
WEIGHT_NAMES = ("alpha", "beta", "gamma", "theta")

# 1980-01-01 is the earliest date a zip header can hold; any fixed value works.
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_ZIP_COMPRESS_LEVEL = 6  # zlib's default, pinned so a changed default cannot alter bytes
_INT32_MAX = np.iinfo(np.int32).max


# ----------------------------------------------------------------------------
# Deterministic .npz writing and strict reading


def write_npz(path, arrays: dict[str, np.ndarray]) -> None:
  """Writes arrays to a deflated .npz, byte-for-byte reproducibly.

  Members are written in the dict's order with fixed zip metadata (date, Unix
  creator, 0644 permissions); object arrays are refused so the file never needs
  pickle to load.
  """
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, mode="w", compression=zipfile.ZIP_DEFLATED,
                       compresslevel=_ZIP_COMPRESS_LEVEL) as zf:
    for key, value in arrays.items():
      member = io.BytesIO()
      np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
      info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE_TIME)
      info.compress_type = zipfile.ZIP_DEFLATED
      info.create_system = 3  # Unix; ZipInfo's default is 0 on Windows
      info.external_attr = 0o644 << 16
      zf.writestr(info, member.getvalue(), compresslevel=_ZIP_COMPRESS_LEVEL)
  Path(path).write_bytes(buf.getvalue())


def _check_keys(path, present, expected, noun: str, where: str = "") -> None:
  """DataError naming the first missing, then the first unexpected, entry name."""
  missing = [k for k in expected if k not in present]
  if missing:
    raise DataError(path, f"missing {noun} {missing[0]!r}")
  extra = sorted(set(present) - set(expected))
  if extra:
    raise DataError(path, f"unexpected {noun} {extra[0]!r}{where}")


def _read_npz(path, keys: Sequence[str], tag: str) -> dict[str, np.ndarray]:
  """Reads every member of an .npz and checks its key set, format tag and version."""
  path = Path(path)
  try:
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
      raise DataError(path, "not a .npz archive (a single .npy array)")
    with loaded as npz:
      arrays = {k: npz[k] for k in npz.files}
  except FileNotFoundError as e:
    raise DataError(path, "file does not exist") from e
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile,
          zlib.error, NotImplementedError) as e:
    # A truncated or corrupted archive surfaces as any of these, depending on
    # where the damage is (zip directory, member header, deflate stream).
    raise DataError(path, f"not a readable .npz archive ({type(e).__name__}: {e})"
                   ) from e
  if "format" not in arrays or "version" not in arrays:
    raise DataError(path, "not a gfnfeeds compact file (no format/version entry)")
  fmt, version = arrays["format"], arrays["version"]
  if fmt.shape != () or fmt.dtype.kind != "U":
    raise DataError(path, f"format entry must be a 0-d string, got {fmt.dtype} "
                    f"{fmt.shape}")
  if str(fmt) != tag:
    raise DataError(path, f"format is {str(fmt)!r}, expected {tag!r}")
  if version.shape != () or version.dtype.kind not in "iu":
    raise DataError(path, f"version entry must be a 0-d integer, got "
                    f"{version.dtype} {version.shape}")
  if int(version) != FORMAT_VERSION:
    raise DataError(path, f"unsupported {tag} version {int(version)} (this "
                    f"gfnfeeds reads version {FORMAT_VERSION})")
  _check_keys(path, arrays, keys, "entry", f" in a {tag} file")
  return arrays


def _check_array(path, arrays, key: str, ndim: int, kinds: str,
                 dtypes: Sequence[str] | None = None) -> np.ndarray:
  """Checks one entry's rank and dtype; returns it."""
  a = arrays[key]
  if a.ndim != ndim:
    raise DataError(path, f"entry {key!r} must have {ndim} dimensions, got "
                    f"shape {a.shape}")
  if a.dtype.kind not in kinds or (dtypes is not None and
                                   a.dtype.name not in dtypes):
    want = " or ".join(dtypes) if dtypes is not None else f"kind {kinds!r}"
    raise DataError(path, f"entry {key!r} must be {want}, got {a.dtype}")
  return a


def _check_names(path, names: np.ndarray, what: str) -> list[str]:
  out = [str(n) for n in names]
  for i, n in enumerate(out):
    if not n:
      raise DataError(path, f"{what} {i}: empty name")
  seen = {}
  for i, n in enumerate(out):
    if n in seen:
      raise DataError(path, f"{what} {i} ({n!r}): duplicate name (also "
                      f"{what} {seen[n]})")
    seen[n] = i
  return out


def _format_arrays(tag: str) -> dict[str, np.ndarray]:
  return {"format": np.asarray(tag), "version": np.asarray(FORMAT_VERSION,
                                                            np.int64)}


# ----------------------------------------------------------------------------
# Trace sets


def save_traces(path, traces: Sequence[NetworkTrace],
                bandwidth_dtype=np.float64) -> None:
  """Writes network traces as a compact trace set (see the module docstring).

  Args:
    path: the .npz file to write (its parent must exist).
    traces: at least one trace; names must be unique and non-empty.
    bandwidth_dtype: np.float64 (exact) or np.float32 (half the size; values
      are rounded to the nearest float32).

  Raises:
    ValueError if the traces would not pass load_traces' validation (the
    writer never produces a file its own loader rejects).
  """
  dtype = np.dtype(bandwidth_dtype)
  if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
    raise ValueError(f"save_traces: bandwidth_dtype must be float32 or float64, "
                     f"got {dtype}")
  if not traces:
    raise ValueError("save_traces: no traces")
  lengths = np.array([len(t) for t in traces], np.int64)
  arrays = _format_arrays(TRACES_FORMAT)
  arrays["names"] = np.array([t.name for t in traces], dtype=np.str_)
  arrays["offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  arrays["times_s"] = np.concatenate(
      [np.asarray(t.times_s, np.float64) for t in traces])
  arrays["bandwidth_mbps"] = np.concatenate(
      [np.asarray(t.bandwidth_mbps, np.float64) for t in traces]).astype(dtype)
  try:
    _validate_traces(path, arrays)
  except DataError as e:
    raise ValueError(f"save_traces: refusing to write invalid data: {e}") from e
  write_npz(path, arrays)


def load_traces(path) -> list[NetworkTrace]:
  """Reads and validates a compact trace set.

  Returns:
    The traces in file order, float64 times and bandwidths (float32 files are
    widened exactly), name as stored, path = the file.

  Raises:
    DataError naming the file, and the trace (index and name) and row where one
    is at fault, for: an unreadable or truncated archive, a wrong format tag or
    version, missing/unexpected entries, wrong ranks or dtypes, bad offsets, a
    trace with fewer than 2 rows, non-finite values, a bandwidth <= 0 or a time
    not strictly greater than the previous one.
  """
  arrays = _read_npz(path, _TRACE_KEYS, TRACES_FORMAT)
  names, offsets, times, bandwidth = _validate_traces(path, arrays)
  return [
      NetworkTrace(name=name, times_s=times[a:b].copy(),
                   bandwidth_mbps=bandwidth[a:b].copy(), path=str(path))
      for name, a, b in zip(names, offsets[:-1], offsets[1:])
  ]


def _validate_traces(path, arrays):
  names = _check_array(path, arrays, "names", 1, "U")
  offsets = _check_array(path, arrays, "offsets", 1, "i", ("int64",))
  times = _check_array(path, arrays, "times_s", 1, "f", ("float64",))
  bandwidth = _check_array(path, arrays, "bandwidth_mbps", 1, "f",
                           ("float32", "float64"))
  num = names.shape[0]
  if num == 0:
    raise DataError(path, "trace set holds no traces")
  names = _check_names(path, names, "trace")
  if offsets.shape != (num + 1,):
    raise DataError(path, f"offsets must have {num + 1} entries (traces + 1), "
                    f"got {offsets.shape[0]}")
  if times.shape != bandwidth.shape:
    raise DataError(path, f"times_s has {times.shape[0]} rows but "
                    f"bandwidth_mbps has {bandwidth.shape[0]}")
  if offsets[0] != 0 or offsets[-1] != times.shape[0]:
    raise DataError(path, f"offsets must run from 0 to the row count "
                    f"{times.shape[0]}, got {offsets[0]} .. {offsets[-1]}")
  # Structure before contents, so a bad offset is reported as such rather
  # than as the time jump it creates between two traces.
  lengths = np.diff(offsets)
  bad = np.flatnonzero(lengths < 2)
  if bad.size:
    i = bad[0]
    raise DataError(path, f"trace {i} ({names[i]!r}): need at least 2 rows, "
                    f"got {lengths[i]} (offsets must increase by >= 2)")
  bandwidth = bandwidth.astype(np.float64)
  for i, (a, b) in enumerate(zip(offsets[:-1], offsets[1:])):
    entry = f"trace {i} ({names[i]!r})"
    t, bw = times[a:b], bandwidth[a:b]
    bad = np.flatnonzero(~np.isfinite(t))
    if bad.size:
      raise DataError(path, f"{entry}: time must be finite, got {t[bad[0]]} at "
                      f"row {bad[0]}")
    bad = np.flatnonzero(~(np.isfinite(bw) & (bw > 0.0)))
    if bad.size:
      raise DataError(path, f"{entry}: bandwidth must be finite and > 0, got "
                      f"{bw[bad[0]]} at row {bad[0]}")
    bad = np.flatnonzero(~(np.diff(t) > 0.0))
    if bad.size:
      k = bad[0] + 1
      raise DataError(path, f"{entry}: time must be strictly increasing, got "
                      f"{t[k]} after {t[k - 1]} at row {k}")
  return names, offsets, times, bandwidth


# ----------------------------------------------------------------------------
# Video catalogs


def save_videos(path, videos: Sequence[Video],
                ladder_kbps: Sequence[float]) -> None:
  """Writes a video catalog and its nominal ladder (see the module docstring).

  Raises:
    ValueError if the catalog would not pass load_videos' validation (for
    example a chunk size above 2**31 - 1 bytes, which int32 cannot hold).
  """
  if not videos:
    raise ValueError("save_videos: no videos")
  ladder = np.asarray(ladder_kbps, np.float64)
  num_levels = ladder.shape[0] if ladder.ndim == 1 else -1
  max_chunks = max(v.num_chunks for v in videos)
  sizes = np.zeros((len(videos), max_chunks, max(num_levels, 1)), np.int64)
  retention = np.zeros((len(videos), max_chunks + 1), np.float64)
  for i, v in enumerate(videos):
    if v.num_levels != num_levels:
      raise ValueError(f"save_videos: video {i} ({v.name!r}) has "
                       f"{v.num_levels} levels, the ladder has {num_levels}")
    if v.retention.shape != (v.num_chunks + 1,):
      raise ValueError(f"save_videos: video {i} ({v.name!r}) has retention "
                       f"shape {v.retention.shape}, expected "
                       f"({v.num_chunks + 1},)")
    sizes[i, :v.num_chunks] = v.chunk_sizes
    retention[i, :v.num_chunks + 1] = v.retention
  if sizes.max() > _INT32_MAX or sizes.min() < 0:
    raise ValueError("save_videos: chunk sizes must fit in int32 (0 .. 2**31-1)")
  arrays = _format_arrays(VIDEOS_FORMAT)
  arrays["names"] = np.array([v.name for v in videos], dtype=np.str_)
  arrays["num_chunks"] = np.array([v.num_chunks for v in videos], np.int32)
  arrays["chunk_sizes"] = sizes.astype(np.int32)
  arrays["retention"] = retention
  arrays["ladder_kbps"] = ladder
  try:
    _validate_videos(path, arrays)
  except DataError as e:
    raise ValueError(f"save_videos: refusing to write invalid data: {e}") from e
  write_npz(path, arrays)


def load_videos(path) -> tuple[list[Video], np.ndarray]:
  """Reads and validates a compact video catalog.

  Returns:
    (videos in file order, ladder_kbps float64 [L]). Each Video has int64
    chunk_sizes [N, L] and float64 retention [N + 1], as the MMGC loader gives.

  Raises:
    DataError naming the file, and the video (index and name) and chunk or
    second where one is at fault, for: an unreadable or truncated archive, a
    wrong format tag or version, missing/unexpected entries, wrong ranks,
    dtypes or inconsistent shapes, num_chunks < 1 or beyond the padded size,
    a chunk size <= 0 (or non-zero padding), a bad ladder, retention outside
    [0, 1], r(0) != 1, an increasing retention, or non-zero retention padding.
  """
  arrays = _read_npz(path, _VIDEO_KEYS, VIDEOS_FORMAT)
  names, num_chunks, sizes, retention, ladder = _validate_videos(path, arrays)
  videos = [
      Video(name=name, chunk_sizes=sizes[i, :n].astype(np.int64),
            retention=retention[i, :n + 1].copy())
      for i, (name, n) in enumerate(zip(names, num_chunks))
  ]
  return videos, ladder.copy()


def _validate_videos(path, arrays):
  names = _check_array(path, arrays, "names", 1, "U")
  num_chunks = _check_array(path, arrays, "num_chunks", 1, "i",
                            ("int32", "int64"))
  sizes = _check_array(path, arrays, "chunk_sizes", 3, "i", ("int32",))
  retention = _check_array(path, arrays, "retention", 2, "f", ("float64",))
  ladder = _check_array(path, arrays, "ladder_kbps", 1, "f", ("float64",))
  num = names.shape[0]
  if num == 0:
    raise DataError(path, "catalog holds no videos")
  names = _check_names(path, names, "video")
  num_levels = ladder.shape[0]
  if num_levels == 0:
    raise DataError(path, "ladder_kbps is empty")
  if not (np.all(np.isfinite(ladder)) and np.all(ladder > 0.0)):
    raise DataError(path, f"ladder_kbps must be finite and > 0, got "
                    f"{ladder.tolist()}")
  if not np.all(np.diff(ladder) > 0.0):
    raise DataError(path, f"ladder_kbps must be strictly increasing (level 0 "
                    f"lowest), got {ladder.tolist()}")
  if num_chunks.shape != (num,):
    raise DataError(path, f"num_chunks has {num_chunks.shape[0]} entries for "
                    f"{num} videos")
  if sizes.shape[0] != num or sizes.shape[2] != num_levels:
    raise DataError(path, f"chunk_sizes has shape {sizes.shape}, expected "
                    f"[{num}, C, {num_levels}] (videos, chunks, levels)")
  max_chunks = sizes.shape[1]
  if retention.shape != (num, max_chunks + 1):
    raise DataError(path, f"retention has shape {retention.shape}, expected "
                    f"({num}, {max_chunks + 1}) (videos, chunks + 1)")
  for i, n in enumerate(num_chunks.tolist()):
    entry = f"video {i} ({names[i]!r})"
    if not 1 <= n <= max_chunks:
      raise DataError(path, f"{entry}: num_chunks must be in 1..{max_chunks}, "
                      f"got {n}")
    s = sizes[i]
    bad = np.argwhere(s[:n] <= 0)
    if bad.size:
      j, lvl = bad[0]
      raise DataError(path, f"{entry}: chunk size must be > 0, got {s[j, lvl]} "
                      f"at chunk {j} level {lvl}")
    if np.any(s[n:] != 0):
      raise DataError(path, f"{entry}: chunk_sizes padding after chunk {n - 1} "
                      "must be 0")
    r = retention[i]
    bad = np.flatnonzero(~(np.isfinite(r[:n + 1]) & (r[:n + 1] >= 0.0) &
                           (r[:n + 1] <= 1.0)))
    if bad.size:
      raise DataError(path, f"{entry}: retention must be in [0, 1], got "
                      f"{r[bad[0]]} at t = {bad[0]}")
    if r[0] != 1.0:
      raise DataError(path, f"{entry}: retention at t = 0 must be 1, got {r[0]}")
    bad = np.flatnonzero(np.diff(r[:n + 1]) > 0.0)
    if bad.size:
      k = bad[0] + 1
      raise DataError(path, f"{entry}: retention must not increase, got {r[k]} "
                      f"after {r[k - 1]} at t = {k}")
    if np.any(r[n + 1:] != 0.0):
      raise DataError(path, f"{entry}: retention padding after t = {n} must "
                      "be 0")
  return names, num_chunks, sizes, retention, ladder


# ----------------------------------------------------------------------------
# Preference-sampler settings (JSON)


def save_preferences(path, sampler, archetype_names: Sequence[str]) -> None:
  """Writes a PreferenceSampler's settings as JSON (fixed key order, LF ends).

  Args:
    path: the .json file.
    sampler: a gfnfeeds.env.preferences.PreferenceSampler.
    archetype_names: one name per row of sampler.means.
  """
  settings = {
      "format": PREFERENCES_FORMAT,
      "version": FORMAT_VERSION,
      "weight_names": list(WEIGHT_NAMES),
      "archetypes": [str(n) for n in archetype_names],
      "means": np.asarray(sampler.means, np.float64).tolist(),
      "probs": np.asarray(sampler.probs, np.float64).tolist(),
      "jitter": np.asarray(sampler.jitter, np.float64).tolist(),
      "low": np.asarray(sampler.low, np.float64).tolist(),
      "high": np.asarray(sampler.high, np.float64).tolist(),
  }
  try:
    _validate_preferences(path, settings)
  except DataError as e:
    raise ValueError(f"save_preferences: refusing to write invalid data: {e}"
                    ) from e
  # json writes floats with repr(), which round-trips float64 exactly.
  Path(path).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def load_preference_settings(path) -> dict:
  """Reads and validates preference settings; returns archetypes (list[str]) and
  float64 arrays means [A, 4], probs [A], jitter/low/high [4].

  Raises:
    DataError naming the file (and the archetype or weight at fault) for:
    unreadable or non-JSON text, a wrong format tag or version, missing or
    unexpected keys, wrong shapes, non-finite numbers, negative probabilities
    or probabilities not summing to 1, negative jitter, low > high, or a mean
    outside [low, high].
  """
  path = Path(path)
  try:
    settings = json.loads(path.read_text(encoding="utf-8"))
  except FileNotFoundError as e:
    raise DataError(path, "file does not exist") from e
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(path, f"cannot read file: {e}") from e
  except json.JSONDecodeError as e:
    raise DataError(path, f"not valid JSON: {e.msg}", e.lineno) from e
  return _validate_preferences(path, settings)


def load_preferences(path):
  """Reads preference settings and builds the PreferenceSampler (jax arrays)."""
  # Imported here: gfnfeeds.env depends on gfnfeeds.data, not the reverse.
  import jax.numpy as jnp

  from gfnfeeds.env.preferences import PreferenceSampler
  s = load_preference_settings(path)
  return PreferenceSampler(means=jnp.asarray(s["means"]),
                           probs=jnp.asarray(s["probs"]),
                           jitter=jnp.asarray(s["jitter"]),
                           low=jnp.asarray(s["low"]), high=jnp.asarray(s["high"]))


def _float_array(path, settings, key: str, shape) -> np.ndarray:
  try:
    a = np.asarray(settings[key], dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise DataError(path, f"{key!r} must hold numbers only ({e})") from e
  if a.shape != shape:
    raise DataError(path, f"{key!r} must have shape {list(shape)}, got "
                    f"{list(a.shape)}")
  if not np.all(np.isfinite(a)):
    raise DataError(path, f"{key!r} must be finite, got {a.tolist()}")
  return a


def _validate_preferences(path, settings) -> dict:
  if not isinstance(settings, dict):
    raise DataError(path, "preference settings must be a JSON object")
  if settings.get("format") != PREFERENCES_FORMAT:
    raise DataError(path, f"format is {settings.get('format')!r}, expected "
                    f"{PREFERENCES_FORMAT!r}")
  if settings.get("version") != FORMAT_VERSION:
    raise DataError(path, f"unsupported {PREFERENCES_FORMAT} version "
                    f"{settings.get('version')!r} (this gfnfeeds reads version "
                    f"{FORMAT_VERSION})")
  _check_keys(path, settings, _PREFERENCE_KEYS, "key")
  if settings["weight_names"] != list(WEIGHT_NAMES):
    raise DataError(path, f"weight_names must be {list(WEIGHT_NAMES)}, got "
                    f"{settings['weight_names']!r}")
  names = settings["archetypes"]
  if not (isinstance(names, list) and names and
          all(isinstance(n, str) and n for n in names)):
    raise DataError(path, "archetypes must be a non-empty list of non-empty "
                    "names")
  if len(set(names)) != len(names):
    raise DataError(path, f"archetype names must be unique, got {names}")
  a = len(names)
  means = _float_array(path, settings, "means", (a, 4))
  probs = _float_array(path, settings, "probs", (a,))
  jitter = _float_array(path, settings, "jitter", (4,))
  low = _float_array(path, settings, "low", (4,))
  high = _float_array(path, settings, "high", (4,))
  if np.any(probs < 0.0) or not math.isclose(float(probs.sum()), 1.0,
                                             abs_tol=1e-9):
    raise DataError(path, f"probs must be >= 0 and sum to 1, got "
                    f"{probs.tolist()}")
  for k, w in enumerate(WEIGHT_NAMES):
    if jitter[k] < 0.0:
      raise DataError(path, f"jitter of {w} must be >= 0, got {jitter[k]}")
    if low[k] > high[k]:
      raise DataError(path, f"low {low[k]} > high {high[k]} for {w}")
    for i, n in enumerate(names):
      if not low[k] <= means[i, k] <= high[k]:
        raise DataError(path, f"archetype {i} ({n!r}): {w} = {means[i, k]} is "
                        f"outside [{low[k]}, {high[k]}]")
  return {"archetypes": list(names), "means": means, "probs": probs,
          "jitter": jitter, "low": low, "high": high}
