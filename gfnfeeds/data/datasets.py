"""Resolving the data arguments of the command-line programs.

`--network` takes directories or files of two-column traces (comma-separated,
searched recursively) or a named set of the embedded default data
(`default`, `default:low`, `default:medium`, `default:high`). `--videos` takes an
MMGC-format catalog directory (video_size/ and user_ret/ inside), a compact
`.npz` catalog, or `default`.
"""

from __future__ import annotations

from pathlib import Path

from gfnfeeds.data import traces as trace_io
from gfnfeeds.data import videos as video_io
from gfnfeeds.data.packing import MMGC_LADDER_KBPS
from gfnfeeds.data.types import DataError, NetworkTrace, Video

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = PROJECT_ROOT / "traces"
DEFAULT_CLASSES = ("low", "medium", "high")


def default_network(trace_class: str = "all", data_dir: Path = DEFAULT_DATA_DIR
                    ) -> list[NetworkTrace]:
  """The embedded synthetic traces of one class (or all three)."""
  from gfnfeeds.data import compact  # deferred: only needed for the default data
  classes = DEFAULT_CLASSES if trace_class == "all" else (trace_class,)
  out = []
  for c in classes:
    if c not in DEFAULT_CLASSES:
      raise ValueError(f"unknown default trace class {c!r}; expected one of {DEFAULT_CLASSES}")
    path = data_dir / f"network_{c}.npz"
    if not path.is_file():
      raise DataError(path, "default data missing; regenerate with "
                      "`python -m gfnfeeds.data.synthetic --out=traces`")
    out.extend(compact.load_traces(path))
  return out


def load_network_arg(spec: str, errors: str = "raise"
                     ) -> tuple[list[NetworkTrace], list[str]]:
  """Traces named by a `--network` value; returns (traces, the roots they came from).

  Each trace's name is its path relative to its root (e.g. '0' for
  .../mmgc2022/network/high/0); identical file contents are kept once.
  errors='skip' leaves out files that fail validation (some real FCC files
  hold zero-bandwidth rows) instead of failing on the first.
  """
  spec = spec.strip()
  if spec == "default" or spec.startswith("default:"):
    cls = spec.split(":", 1)[1] if ":" in spec else "all"
    return default_network(cls), [spec]
  roots = [p.strip() for p in spec.split(",") if p.strip()]
  if not roots:
    raise ValueError("--network is empty")
  return trace_io.load_network_traces(roots, errors=errors), roots


def load_videos_arg(spec: str) -> tuple[list[Video], tuple[float, ...]]:
  """Videos named by a `--videos` value; returns (videos, ladder in kbps)."""
  spec = spec.strip()
  if spec == "default":
    from gfnfeeds.data import compact
    path = DEFAULT_DATA_DIR / "videos.npz"
    if not path.is_file():
      raise DataError(path, "default catalog missing; regenerate with "
                      "`python -m gfnfeeds.data.synthetic --out=traces`")
    videos, ladder = compact.load_videos(path)
    return videos, tuple(float(x) for x in ladder)
  path = Path(spec)
  if path.suffix == ".npz":
    from gfnfeeds.data import compact
    videos, ladder = compact.load_videos(path)
    return videos, tuple(float(x) for x in ladder)
  if not path.is_dir():
    raise DataError(path, "--videos must be 'default', a catalog directory or a .npz file")
  return video_io.load_mmgc_videos(path), MMGC_LADDER_KBPS
