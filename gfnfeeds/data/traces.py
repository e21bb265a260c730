"""Loaders, classes and the train/test split for two-column network traces.

The format is the Pensieve/MMGC one: one sample per line, `time_s bandwidth_mbps`,
whitespace separated (SIMULATOR.md 3.1, SYSTEM.md 4).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from gfnfeeds.data.types import DataError, NetworkTrace

TRACE_CLASSES = ("low", "medium", "high")
SPLITS = ("train", "test")
DEFAULT_SPLIT_SALT = "gfnfeeds-split-v1"

_IGNORED_SUFFIXES = (".md", ".csv", ".tsv", ".json")
# Python's float() also accepts '1_000'; a trace file never should.
_NUMBER_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)


def parse_number(path, field: str, what: str, line: int) -> float:
  """Parses one finite decimal number; raises DataError naming `what` otherwise."""
  if not _NUMBER_RE.fullmatch(field):
    try:
      value = float(field)
    except ValueError:
      value = None
    if value is None or math.isfinite(value):
      raise DataError(path, f"{what} is not a number: {field!r}", line)
    raise DataError(path, f"{what} must be finite, got {field}", line)
  value = float(field)
  if not math.isfinite(value):
    raise DataError(path, f"{what} must be finite, got {field}", line)
  return value


def read_data_lines(path) -> list[tuple[int, list[str]]]:
  """Returns (1-based line number, whitespace-split fields) for each line of a text file.

  LF, CRLF and CR line ends are accepted. Trailing blank lines are dropped; any
  other blank line is kept (with no fields) so the caller reports it. Raises
  DataError if the file cannot be read, is not UTF-8, or has no data lines.
  """
  try:
    raw = Path(path).read_bytes()
  except OSError as e:
    raise DataError(path, f"cannot read file: {e.strerror or e}") from e
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw[: e.start].count(b"\n") + 1
    raise DataError(path, "not a UTF-8 text file", line) from e
  rows = [(i + 1, line.split()) for i, line in enumerate(text.splitlines())]
  while rows and not rows[-1][1]:
    rows.pop()
  if not rows:
    raise DataError(path, "empty file (no data lines)", 1)
  return rows


def _parse_trace_rows_fast(rows) -> tuple[np.ndarray, np.ndarray] | None:
  """Parses valid trace rows in bulk; returns None if any check fails."""
  if len(rows) < 2 or any(len(fields) != 2 for _, fields in rows):
    return None
  tokens = [x for _, fields in rows for x in fields]
  joined = "".join(tokens)
  # Outside ASCII, float() also reads other scripts' digits; '_' is a digit
  # separator to float(). Both go to the slow path, which rejects them.
  if not joined.isascii() or "_" in joined:
    return None
  try:
    values = np.array([float(x) for x in tokens], dtype=np.float64)
  except ValueError:
    return None
  values = values.reshape(-1, 2)
  times, bandwidth = values[:, 0].copy(), values[:, 1].copy()
  if not (np.all(np.isfinite(values)) and np.all(bandwidth > 0.0) and
          np.all(np.diff(times) > 0.0)):
    return None
  return times, bandwidth


def _parse_trace_rows(path, rows) -> tuple[np.ndarray, np.ndarray]:
  """Parses trace rows one by one, raising DataError at the first bad line."""
  times = np.empty(len(rows), dtype=np.float64)
  bandwidth = np.empty(len(rows), dtype=np.float64)
  prev_field = ""
  for k, (line, fields) in enumerate(rows):
    if len(fields) != 2:
      raise DataError(
          path, f"expected 2 fields (time_s bandwidth_mbps), got {len(fields)}",
          line)
    t = parse_number(path, fields[0], "time", line)
    bw = parse_number(path, fields[1], "bandwidth", line)
    if bw <= 0.0:
      raise DataError(path, f"bandwidth must be > 0, got {fields[1]}", line)
    if k > 0 and not t > times[k - 1]:
      raise DataError(
          path,
          f"time must be strictly increasing, got {fields[0]} after "
          f"{prev_field}", line)
    prev_field = fields[0]
    times[k] = t
    bandwidth[k] = bw
  if len(rows) < 2:
    raise DataError(path, f"need at least 2 rows, got {len(rows)}", rows[-1][0])
  return times, bandwidth


def load_network_trace(path, name: str | None = None) -> NetworkTrace:
  """Reads and validates one `time_s bandwidth_mbps` trace file.

  Args:
    path: the file.
    name: the trace name; defaults to the file name.

  Returns:
    The trace, with float64 times and bandwidths exactly as Python's float()
    parses them (as the MMGC reference does).

  Raises:
    DataError naming the file and 1-based line for: an empty file, a line without
    exactly 2 fields, a non-numeric or non-finite field, a bandwidth <= 0, a time
    not strictly greater than the previous one, or fewer than 2 rows.
  """
  path = Path(path)
  rows = read_data_lines(path)
  parsed = _parse_trace_rows_fast(rows)
  times, bandwidth = parsed if parsed is not None else _parse_trace_rows(
      path, rows)
  return NetworkTrace(
      name=path.name if name is None else name,
      times_s=times,
      bandwidth_mbps=bandwidth,
      path=str(path))


def _is_trace_file_name(name: str) -> bool:
  return not (name.startswith(".") or name.startswith("LICENSE") or
              name.lower().endswith(_IGNORED_SUFFIXES))


def _file_sort_key(name: str):
  # All-digit names (MMGC: 0..19, trace id = file name) sort numerically and
  # before the others, which sort lexicographically.
  if name.isascii() and name.isdigit():
    return (0, int(name), name)
  return (1, 0, name)


def find_trace_files(root) -> list[Path]:
  """Lists the trace files under `root`, recursively, in a fixed order.

  Skips hidden files and directories, LICENSE* and *.md/.csv/.tsv/.json files.
  Within a directory, its files come first (all-digit names numerically, then
  the rest lexicographically), then its subdirectories in lexicographic order,
  each expanded the same way.
  """
  root = Path(root)
  files, dirs = [], []
  with os.scandir(root) as entries:
    for entry in entries:
      if entry.name.startswith("."):
        continue
      if entry.is_dir():
        dirs.append(entry.name)
      elif entry.is_file() and _is_trace_file_name(entry.name):
        files.append(entry.name)
  out = [root / f for f in sorted(files, key=_file_sort_key)]
  for d in sorted(dirs):
    out.extend(find_trace_files(root / d))
  return out


def load_network_traces(roots, dedupe: bool = True,
                        errors: str = "raise") -> list[NetworkTrace]:
  """Loads every trace file under one or more roots.

  Args:
    roots: a path or a list of paths; a directory is searched with
      find_trace_files, a file is loaded as is.
    dedupe: keep only the first of several files with byte-identical contents
      (sha256), in load order.
    errors: 'raise' to fail on the first invalid file; 'skip' to leave invalid
      files out (the real FCC sets contain zero-bandwidth samples).

  Returns:
    The traces in root order, then find_trace_files order. A trace's name is its
    path relative to its root as a posix string (the file name for a file root).

  Raises:
    DataError if a root does not exist or holds no trace files, or (errors='raise')
    if a file is invalid.
  """
  if errors not in ("raise", "skip"):
    raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
  if isinstance(roots, (str, os.PathLike)):
    roots = [roots]
  seen: set[bytes] = set()
  traces = []
  for root in map(Path, roots):
    if not root.exists():
      raise DataError(root, "trace root does not exist")
    if root.is_dir():
      files = find_trace_files(root)
      if not files:
        raise DataError(root, "trace root contains no trace files")
      names = [f.relative_to(root).as_posix() for f in files]
    else:
      files, names = [root], [root.name]
    for file, name in zip(files, names):
      if dedupe:
        digest = hashlib.sha256(file.read_bytes()).digest()
        if digest in seen:
          continue
      try:
        trace = load_network_trace(file, name=name)
      except DataError:
        if errors == "raise":
          raise
        continue
      if dedupe:
        seen.add(digest)
      traces.append(trace)
  return traces


def sample_mean_mbps(trace: NetworkTrace) -> float:
  """Plain (unweighted) mean of all bandwidth samples, row 0 included."""
  return float(np.mean(trace.bandwidth_mbps))


def classify_trace(trace: NetworkTrace, low: float = 1.5,
                   high: float = 3.0) -> str:
  """Returns 'low' if the mean is < low, 'medium' if < high, else 'high'.

  The mean is sample_mean_mbps (the plain mean of every row), not the
  time-weighted NetworkTrace.mean_mbps: the plain mean reproduces all 2928 class
  labels of traces/network/oboe_fcc_index.csv, the time-weighted one differs on
  42 of them (irregular sampling).
  """
  mean = sample_mean_mbps(trace)
  if mean < low:
    return "low"
  if mean < high:
    return "medium"
  return "high"


def split_uniform(trace: NetworkTrace, salt: str = DEFAULT_SPLIT_SALT) -> float:
  """Maps a trace's contents to a number in [0, 1).

  The number is the first 53 bits of sha256(times as little-endian float64 bytes
  + bandwidths likewise + salt as UTF-8), divided by 2**53. It depends on the
  values only, not on the name, path, line ends or other traces.
  """
  h = hashlib.sha256()
  h.update(np.ascontiguousarray(trace.times_s, dtype="<f8").tobytes())
  h.update(np.ascontiguousarray(trace.bandwidth_mbps, dtype="<f8").tobytes())
  h.update(salt.encode("utf-8"))
  return (int.from_bytes(h.digest()[:8], "big") >> 11) / float(1 << 53)


def trace_split(trace: NetworkTrace, test_fraction: float = 0.2,
                salt: str = DEFAULT_SPLIT_SALT) -> str:
  """Returns 'test' if split_uniform(trace, salt) < test_fraction, else 'train'."""
  return "test" if split_uniform(trace, salt) < test_fraction else "train"


def split_traces(traces: Iterable[NetworkTrace], test_fraction: float = 0.2,
                 salt: str = DEFAULT_SPLIT_SALT
                 ) -> tuple[list[NetworkTrace], list[NetworkTrace]]:
  """Splits traces into (train, test) with trace_split, keeping input order."""
  if not 0.0 <= test_fraction <= 1.0:
    raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
  train, test = [], []
  for trace in traces:
    (test if trace_split(trace, test_fraction, salt) == "test" else train).append(
        trace)
  return train, test


def filter_traces(traces: Sequence[NetworkTrace], trace_class: str = "all",
                  split: str = "all", test_fraction: float = 0.2,
                  salt: str = DEFAULT_SPLIT_SALT, low: float = 1.5,
                  high: float = 3.0) -> list[NetworkTrace]:
  """Keeps the traces of one class ('low'/'medium'/'high'/'all') and one split.

  split is 'train', 'test' or 'all'; classes come from classify_trace(low, high),
  splits from trace_split(test_fraction, salt). Input order is kept.
  """
  if trace_class != "all" and trace_class not in TRACE_CLASSES:
    raise ValueError(
        f"trace_class must be 'all' or one of {TRACE_CLASSES}, got {trace_class!r}")
  if split != "all" and split not in SPLITS:
    raise ValueError(f"split must be 'all' or one of {SPLITS}, got {split!r}")
  return [
      t for t in traces
      if (trace_class == "all" or classify_trace(t, low, high) == trace_class)
      and (split == "all" or trace_split(t, test_fraction, salt) == split)
  ]
