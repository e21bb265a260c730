"""Loader for MMGC2022-format video catalogs (SIMULATOR.md 3.2, 3.3).

A catalog directory holds `video_size/<video>/video_size_<level>` (one chunk
size in bytes per line; the original repository calls the folder
`short_video_size/`) and `user_ret/<video>` (rows `t r` for t = 0..N, then the
end marker `N+1 0`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from gfnfeeds.data.traces import parse_number, read_data_lines
from gfnfeeds.data.types import DataError, Video

SIZE_DIR_NAMES = ("video_size", "short_video_size")
RETENTION_DIR_NAME = "user_ret"

_LEVEL_FILE_RE = re.compile(r"video_size_(\d+)")
_INT_RE = re.compile(r"[+-]?\d+")


def _visible(path: Path) -> list[Path]:
  # The original repository ships .DS_Store files next to the data.
  return sorted(p for p in path.iterdir() if not p.name.startswith("."))


def load_chunk_sizes(path) -> np.ndarray:
  """Reads one size file: one positive integer (bytes) per line, int64 [num_chunks]."""
  sizes = []
  for line, fields in read_data_lines(path):
    if len(fields) != 1:
      raise DataError(path, f"expected 1 field (chunk size), got {len(fields)}",
                      line)
    if not _INT_RE.fullmatch(fields[0]):
      raise DataError(path, f"chunk size is not an integer: {fields[0]!r}", line)
    size = int(fields[0])
    if size <= 0:
      raise DataError(path, f"chunk size must be > 0, got {size}", line)
    sizes.append(size)
  return np.asarray(sizes, dtype=np.int64)


def load_retention(path, num_chunks: int) -> np.ndarray:
  """Reads a retention file and returns r(0..N), float64 [N+1] (end marker dropped).

  Rows are `t r`; t must be 0, 1, ..., N+1 in order, the last row must be the
  end marker `N+1 0`, N must equal num_chunks, r must lie in [0, 1] with
  r(0) = 1 and never increase. Values are parsed with float(), as the
  reference does.
  """
  rows = read_data_lines(path)
  r = np.empty(len(rows), dtype=np.float64)
  for k, (line, fields) in enumerate(rows):
    if len(fields) != 2:
      raise DataError(path, f"expected 2 fields (t r), got {len(fields)}", line)
    t = parse_number(path, fields[0], "t", line)
    if t != k:
      raise DataError(path, f"expected t = {k}, got {fields[0]}", line)
    r[k] = parse_number(path, fields[1], "retention", line)
    if not 0.0 <= r[k] <= 1.0:
      raise DataError(path, f"retention must be in [0, 1], got {fields[1]}",
                      line)
    if k == 0 and r[k] != 1.0:
      raise DataError(path, f"retention at t = 0 must be 1, got {fields[1]}",
                      line)
    if k > 0 and r[k] > r[k - 1]:
      raise DataError(
          path, f"retention must not increase, got {fields[1]} after "
          f"{rows[k - 1][1][1]}", line)
  last_line, last_fields = rows[-1]
  if len(rows) < 2 or r[-1] != 0.0:
    raise DataError(
        path, f"missing end marker: the last row must be 'N+1 0' (here "
        f"'{num_chunks + 1} 0'), the file ends with '{' '.join(last_fields)}'",
        last_line)
  n = len(rows) - 2
  if n != num_chunks:
    raise DataError(
        path, f"retention covers N = {n} seconds but the video has "
        f"{num_chunks} chunks", last_line)
  return r[:-1].copy()


def _level_files(video_dir: Path) -> dict[int, Path]:
  levels = {}
  for p in _visible(video_dir):
    m = _LEVEL_FILE_RE.fullmatch(p.name)
    if m and p.is_file():
      levels[int(m.group(1))] = p
  return levels


def load_mmgc_video(name: str, video_dir, retention_path,
                    num_levels: int | None = None) -> Video:
  """Loads one video from its size directory and its retention file.

  Args:
    name: the video's name.
    video_dir: directory with video_size_0 .. video_size_{L-1}.
    retention_path: its user_ret file.
    num_levels: load levels 0..num_levels-1 (each must exist; others are
      ignored); None loads all, which must be numbered 0..L-1 without gaps.
  """
  video_dir = Path(video_dir)
  levels = _level_files(video_dir)
  if not levels:
    raise DataError(video_dir, "no video_size_<level> files")
  count = (max(levels) + 1) if num_levels is None else num_levels
  if count < 1:
    raise ValueError(f"num_levels must be >= 1, got {num_levels}")
  missing = [lvl for lvl in range(count) if lvl not in levels]
  if missing:
    raise DataError(video_dir / f"video_size_{missing[0]}",
                    f"missing level file (levels must be 0..{count - 1})")
  columns = [load_chunk_sizes(levels[lvl]) for lvl in range(count)]
  for lvl in range(1, count):
    if len(columns[lvl]) != len(columns[0]):
      raise DataError(
          levels[lvl], f"has {len(columns[lvl])} chunks but video_size_0 has "
          f"{len(columns[0])}")
  chunk_sizes = np.stack(columns, axis=1)
  retention = load_retention(retention_path, num_chunks=len(columns[0]))
  return Video(name=name, chunk_sizes=chunk_sizes, retention=retention)


def load_mmgc_videos(root, num_levels: int | None = None) -> list[Video]:
  """Loads an MMGC-format catalog, videos sorted lexicographically by name.

  Args:
    root: directory holding `video_size/` (or `short_video_size/`) and `user_ret/`.
    num_levels: see load_mmgc_video; with None, every video must have the same
      number of levels.

  Raises:
    DataError naming the file (and line) for any malformed or missing file, a
    video with sizes but no retention file or the reverse, or an empty catalog.
  """
  root = Path(root)
  if not root.is_dir():
    raise DataError(root, "catalog directory does not exist")
  size_dirs = [root / d for d in SIZE_DIR_NAMES if (root / d).is_dir()]
  if not size_dirs:
    raise DataError(root, f"no size folder ({' or '.join(SIZE_DIR_NAMES)})")
  if len(size_dirs) > 1:
    raise DataError(root, f"both {' and '.join(SIZE_DIR_NAMES)} exist; keep one")
  size_dir = size_dirs[0]
  ret_dir = root / RETENTION_DIR_NAME
  if not ret_dir.is_dir():
    raise DataError(ret_dir, "retention folder does not exist")

  size_names = {p.name for p in _visible(size_dir) if p.is_dir()}
  ret_names = {p.name for p in _visible(ret_dir) if p.is_file()}
  only_sizes = sorted(size_names - ret_names)
  if only_sizes:
    raise DataError(size_dir / only_sizes[0],
                    f"video has chunk sizes but no retention file "
                    f"{ret_dir / only_sizes[0]}")
  only_ret = sorted(ret_names - size_names)
  if only_ret:
    raise DataError(ret_dir / only_ret[0],
                    f"video has a retention file but no size folder "
                    f"{size_dir / only_ret[0]}")
  if not size_names:
    raise DataError(size_dir, "catalog contains no videos")

  videos = [
      load_mmgc_video(name, size_dir / name, ret_dir / name, num_levels)
      for name in sorted(size_names)
  ]
  if num_levels is None:
    for v in videos:
      if v.num_levels != videos[0].num_levels:
        raise DataError(
            size_dir / v.name, f"has {v.num_levels} levels but "
            f"{videos[0].name} has {videos[0].num_levels}")
  return videos
