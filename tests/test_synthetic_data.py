"""Tests of the compact format and of the generated default data set in traces/.

The committed files must be exactly what the generator writes, load through
the strict compact loaders, and keep their classes; the frozen fitted
statistics must match a fresh fit on the real data (skipped when ../shared is
absent). Malformed compact files are written to tmp_path.
"""

import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

from gfnfeeds.data import compact
from gfnfeeds.data import synthetic as syn
from gfnfeeds.data.packing import MMGC_LADDER_KBPS, pack_catalog
from gfnfeeds.data.traces import TRACE_CLASSES, classify_trace
from gfnfeeds.data.types import DataError, NetworkTrace, Video

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "traces"
SHARED_TRACES = ROOT.parent / "shared" / "traces"
FILES = ("README.md", "network_high.npz", "network_low.npz",
         "network_medium.npz", "preferences.json", "videos.npz")


@pytest.fixture(scope="module")
def dataset():
  return syn.load_default_dataset(DATA)


def _assert_error(excinfo, path: Path, fragment: str):
  msg = str(excinfo.value)
  assert str(path) in msg, msg
  assert fragment in msg, msg


# ----------------------------------------------------------------------------
# The committed data set


def test_regeneration_is_byte_identical(tmp_path):
  assert syn.main([f"--out={tmp_path}"]) == 0
  assert sorted(p.name for p in tmp_path.iterdir()) == list(FILES)
  assert sorted(p.name for p in DATA.iterdir()) == list(FILES)
  for name in FILES:
    assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), (
        f"{name} differs from the committed file: rerun `python -m "
        "gfnfeeds.data.synthetic --out=traces` (or the zlib/numpy version "
        "differs from the one that wrote it)")


def test_total_size_is_small():
  assert sum(p.stat().st_size for p in DATA.iterdir()) < 3_000_000


def test_committed_traces_validate_and_keep_their_class(dataset):
  for c in TRACE_CLASSES:
    traces = dataset["network"][c]
    assert len(traces) == syn.TRACES_PER_CLASS
    assert [t.name for t in traces] == [f"{c}/{i:02d}" for i in range(24)]
    stats = syn.FITTED_STATISTICS["network"][c]
    for t in traces:
      assert classify_trace(t) == c, t.name
      assert len(t) == 2400 and t.times_s[-1] == 1199.5
      np.testing.assert_array_equal(np.diff(t.times_s), 0.5)
      assert t.bandwidth_mbps.min() >= round(stats["floor_mbps"], 4)
      assert t.bandwidth_mbps.max() <= round(stats["cap_mbps"], 4)
    # The generator's within-trace dynamics follow the fit (24 x 2400 samples).
    lag1 = np.mean([syn.lag1_autocorr(np.log(t.bandwidth_mbps)) for t in traces])
    assert abs(lag1 - stats["lag1"]) < 0.05


def test_committed_catalog_validates_and_packs(dataset):
  videos, ladder = dataset["videos"], dataset["ladder_kbps"]
  np.testing.assert_array_equal(ladder, MMGC_LADDER_KBPS)
  assert len(videos) == syn.NUM_VIDEOS
  for v in videos:
    assert 6 <= v.num_chunks <= 125
    assert np.all(np.diff(v.chunk_sizes, axis=1) > 0), v.name  # levels ordered
    assert v.retention[0] == 1.0 and np.all(np.diff(v.retention) <= 0.0)
  catalog = pack_catalog(videos, ladder)
  assert catalog.chunk_sizes.shape == (40, max(v.num_chunks for v in videos), 3)
  np.testing.assert_array_equal(catalog.num_chunks,
                                [v.num_chunks for v in videos])
  np.testing.assert_allclose(np.asarray(catalog.watch_cdf)[:, -1], 1.0)


def test_committed_preferences(dataset):
  from gfnfeeds.env.preferences import ARCHETYPES, archetype_preferences
  expected = archetype_preferences()
  got = dataset["preferences"]
  for field in ("means", "probs", "jitter", "low", "high"):
    np.testing.assert_array_equal(getattr(got, field), getattr(expected, field))
  settings = compact.load_preference_settings(DATA / "preferences.json")
  assert settings["archetypes"] == list(ARCHETYPES)


def test_frozen_statistics_match_the_real_data():
  if not (SHARED_TRACES / "mmgc2022").is_dir():
    pytest.skip(f"real data not found at {SHARED_TRACES}")
  fitted = syn.fit_statistics(SHARED_TRACES)

  def compare(frozen, fresh, where):
    if isinstance(frozen, dict):
      assert frozen.keys() == fresh.keys(), where
      for k in frozen:
        compare(frozen[k], fresh[k], f"{where}.{k}")
    elif isinstance(frozen, list):
      assert len(frozen) == len(fresh), where
      for i, (a, b) in enumerate(zip(frozen, fresh)):
        compare(a, b, f"{where}[{i}]")
    else:
      # Frozen floats keep 6 significant digits.
      assert math.isclose(frozen, fresh, rel_tol=1e-5, abs_tol=1e-9), (
          f"{where}: frozen {frozen} != fitted {fresh}; update "
          "FITTED_STATISTICS (--fit) and regenerate traces/")

  compare(syn.FITTED_STATISTICS, fitted, "FITTED_STATISTICS")


def test_generation_depends_on_the_seed():
  a = syn.generate_dataset(seed=0, traces_per_class=1, num_videos=2)
  b = syn.generate_dataset(seed=1, traces_per_class=1, num_videos=2)
  c = syn.generate_dataset(seed=0, traces_per_class=2, num_videos=2)
  assert not np.array_equal(a["network"]["low"][0].bandwidth_mbps,
                            b["network"]["low"][0].bandwidth_mbps)
  # Independent streams per part: more traces leave the videos unchanged.
  np.testing.assert_array_equal(a["videos"][1].chunk_sizes,
                                c["videos"][1].chunk_sizes)
  np.testing.assert_array_equal(a["network"]["high"][0].bandwidth_mbps,
                                c["network"]["high"][0].bandwidth_mbps)


def test_retention_curve_model():
  r = syn.retention_curve(30, early_frac=0.4, engaged_full=0.3, scale_s=3.7,
                          shape=1.46)
  assert r.shape == (31,) and r[0] == 1.0 and np.all(np.diff(r) <= 0.0)
  assert r[-1] == pytest.approx(0.4 * math.exp(-(30 / 3.7)**1.46) + 0.6 * 0.3)


# ----------------------------------------------------------------------------
# The compact format


def _traces():
  return [
      NetworkTrace("a", np.array([0.0, 0.5, 1.0]), np.array([1.0, 2.5, 0.2])),
      NetworkTrace("b/c", np.array([0.0, 1.3]), np.array([3.0, 4.0])),
  ]


def _videos():
  return [
      Video("v0", np.array([[10, 20], [11, 22], [9, 30]]),
            np.array([1.0, 0.8, 0.5, 0.5])),
      Video("v1", np.array([[5, 7]]), np.array([1.0, 0.0])),
  ]


def test_traces_round_trip_and_deterministic(tmp_path):
  path = tmp_path / "t.npz"
  compact.save_traces(path, _traces())
  first = path.read_bytes()
  compact.save_traces(path, _traces())
  assert path.read_bytes() == first
  got = compact.load_traces(path)
  assert [t.name for t in got] == ["a", "b/c"]
  for a, b in zip(got, _traces()):
    assert a.times_s.dtype == a.bandwidth_mbps.dtype == np.float64
    np.testing.assert_array_equal(a.times_s, b.times_s)
    np.testing.assert_array_equal(a.bandwidth_mbps, b.bandwidth_mbps)
    assert a.path == str(path)
  # A plain zip of .npy members: numpy reads it without pickle.
  with np.load(path, allow_pickle=False) as npz:
    assert str(npz["format"]) == compact.TRACES_FORMAT
    np.testing.assert_array_equal(npz["offsets"], [0, 3, 5])
  for info in zipfile.ZipFile(path).infolist():
    assert info.date_time == (1980, 1, 1, 0, 0, 0)
  compact.save_traces(path, _traces(), bandwidth_dtype=np.float32)
  got = compact.load_traces(path)
  np.testing.assert_array_equal(got[0].bandwidth_mbps,
                                np.float32([1.0, 2.5, 0.2]).astype(np.float64))


def test_videos_round_trip(tmp_path):
  path = tmp_path / "v.npz"
  compact.save_videos(path, _videos(), [750.0, 1200.0])
  videos, ladder = compact.load_videos(path)
  np.testing.assert_array_equal(ladder, [750.0, 1200.0])
  for a, b in zip(videos, _videos()):
    assert a.name == b.name and a.chunk_sizes.dtype == np.int64
    np.testing.assert_array_equal(a.chunk_sizes, b.chunk_sizes)
    np.testing.assert_array_equal(a.retention, b.retention)


def test_writers_refuse_invalid_data(tmp_path):
  bad = [NetworkTrace("x", np.array([0.0, 1.0]), np.array([1.0, -1.0]))]
  with pytest.raises(ValueError, match="bandwidth must be finite and > 0"):
    compact.save_traces(tmp_path / "t.npz", bad)
  with pytest.raises(ValueError, match="levels"):
    compact.save_videos(tmp_path / "v.npz", _videos(), [750.0])
  assert not list(tmp_path.iterdir())


def _trace_arrays():
  return {
      "format": np.asarray(compact.TRACES_FORMAT),
      "version": np.asarray(1, np.int64),
      "names": np.array(["a", "b"]),
      "offsets": np.array([0, 3, 5], np.int64),
      "times_s": np.array([0.0, 0.5, 1.0, 0.0, 1.0]),
      "bandwidth_mbps": np.array([1.0, 2.0, 3.0, 4.0, 5.0]),
  }


def _video_arrays():
  return {
      "format": np.asarray(compact.VIDEOS_FORMAT),
      "version": np.asarray(1, np.int64),
      "names": np.array(["v0", "v1"]),
      "num_chunks": np.array([3, 1], np.int32),
      "chunk_sizes": np.array([[[10, 20], [11, 22], [9, 30]],
                               [[5, 7], [0, 0], [0, 0]]], np.int32),
      "retention": np.array([[1.0, 0.8, 0.5, 0.5], [1.0, 0.0, 0.0, 0.0]]),
      "ladder_kbps": np.array([750.0, 1200.0]),
  }


def _set(arrays, key, index, value):
  a = arrays[key].copy()
  a[index] = value
  arrays[key] = a
  return arrays


TRACE_CASES = {
    "negative bandwidth": (
        lambda a: _set(a, "bandwidth_mbps", 4, -2.0),
        "trace 1 ('b'): bandwidth must be finite and > 0, got -2.0 at row 1"),
    "zero bandwidth": (lambda a: _set(a, "bandwidth_mbps", 0, 0.0),
                       "trace 0 ('a'): bandwidth must be finite and > 0"),
    "nan bandwidth": (lambda a: _set(a, "bandwidth_mbps", 1, np.nan),
                      "bandwidth must be finite"),
    "time not increasing": (
        lambda a: _set(a, "times_s", 2, 0.5),
        "trace 0 ('a'): time must be strictly increasing, got 0.5 after 0.5 "
        "at row 2"),
    "wrong tag": (lambda a: {**a, "format": np.asarray("gfnfeeds.other")},
                  "format is 'gfnfeeds.other', expected 'gfnfeeds.traces'"),
    "wrong version": (lambda a: {**a, "version": np.asarray(2, np.int64)},
                      "unsupported gfnfeeds.traces version 2"),
    "no tag": (lambda a: {k: v for k, v in a.items() if k != "format"},
               "no format/version entry"),
    "missing entry": (lambda a: {k: v for k, v in a.items() if k != "offsets"},
                      "missing entry 'offsets'"),
    "extra entry": (lambda a: {**a, "x": np.zeros(2)}, "unexpected entry 'x'"),
    "bad offsets": (lambda a: _set(a, "offsets", 2, 4),
                    "offsets must run from 0 to the row count 5"),
    "short trace": (lambda a: _set(a, "offsets", 1, 4),
                    "trace 1 ('b'): need at least 2 rows, got 1"),
    "row mismatch": (lambda a: {**a, "times_s": a["times_s"][:4]},
                     "times_s has 4 rows but bandwidth_mbps has 5"),
    "wrong dtype": (lambda a: {**a, "offsets": a["offsets"].astype(np.float64)},
                    "entry 'offsets' must be int64, got float64"),
    "duplicate names": (lambda a: {**a, "names": np.array(["a", "a"])},
                        "trace 1 ('a'): duplicate name"),
}


@pytest.mark.parametrize("case", sorted(TRACE_CASES))
def test_bad_trace_files_raise(tmp_path, case):
  mutate, fragment = TRACE_CASES[case]
  path = tmp_path / "bad_traces.npz"
  compact.write_npz(path, mutate(_trace_arrays()))
  with pytest.raises(DataError) as excinfo:
    compact.load_traces(path)
  _assert_error(excinfo, path, fragment)


VIDEO_CASES = {
    "increasing retention": (
        lambda a: _set(a, "retention", (0, 3), 0.6),
        "video 0 ('v0'): retention must not increase, got 0.6 after 0.5 at t = 3"),
    "retention above 1": (lambda a: _set(a, "retention", (0, 1), 1.5),
                          "retention must be in [0, 1], got 1.5 at t = 1"),
    "r(0) not 1": (lambda a: _set(a, "retention", (1, 0), 0.9),
                   "video 1 ('v1'): retention at t = 0 must be 1, got 0.9"),
    "retention padding": (lambda a: _set(a, "retention", (1, 3), 0.1),
                          "video 1 ('v1'): retention padding after t = 1"),
    "zero size": (lambda a: _set(a, "chunk_sizes", (0, 1, 1), 0),
                  "video 0 ('v0'): chunk size must be > 0, got 0 at chunk 1 "
                  "level 1"),
    "size padding": (lambda a: _set(a, "chunk_sizes", (1, 2, 0), 3),
                     "video 1 ('v1'): chunk_sizes padding after chunk 0"),
    "num_chunks too large": (lambda a: _set(a, "num_chunks", 1, 4),
                             "num_chunks must be in 1..3, got 4"),
    "shape mismatch": (lambda a: {**a, "retention": a["retention"][:, :3]},
                       "retention has shape (2, 3), expected (2, 4)"),
    "levels mismatch": (lambda a: {**a, "ladder_kbps": np.array([750.0])},
                        "chunk_sizes has shape (2, 3, 2), expected [2, C, 1]"),
    "ladder not increasing": (
        lambda a: {**a, "ladder_kbps": np.array([750.0, 700.0])},
        "ladder_kbps must be strictly increasing"),
    "sizes not int32": (
        lambda a: {**a, "chunk_sizes": a["chunk_sizes"].astype(np.int64)},
        "entry 'chunk_sizes' must be int32, got int64"),
    "trace tag": (lambda a: {**a, "format": np.asarray(compact.TRACES_FORMAT)},
                  "format is 'gfnfeeds.traces', expected 'gfnfeeds.videos'"),
}


@pytest.mark.parametrize("case", sorted(VIDEO_CASES))
def test_bad_video_files_raise(tmp_path, case):
  mutate, fragment = VIDEO_CASES[case]
  path = tmp_path / "bad_videos.npz"
  compact.write_npz(path, mutate(_video_arrays()))
  with pytest.raises(DataError) as excinfo:
    compact.load_videos(path)
  _assert_error(excinfo, path, fragment)


@pytest.mark.parametrize("cut", [0, 10, 100, -40])
def test_truncated_file_raises(tmp_path, cut):
  good = tmp_path / "good.npz"
  compact.save_traces(good, _traces())
  raw = good.read_bytes()
  path = tmp_path / "truncated.npz"
  path.write_bytes(raw[:cut] if cut >= 0 else raw[:len(raw) + cut])
  with pytest.raises(DataError) as excinfo:
    compact.load_traces(path)
  _assert_error(excinfo, path, "not a readable .npz archive")


def test_non_archives_raise(tmp_path):
  text = tmp_path / "trace.txt"
  text.write_text("0 1.0\n0.5 2.0\n")
  with pytest.raises(DataError) as excinfo:
    compact.load_traces(text)
  _assert_error(excinfo, text, "not a readable .npz archive")
  npy = tmp_path / "array.npz"
  with open(npy, "wb") as f:
    np.save(f, np.zeros(3))
  with pytest.raises(DataError) as excinfo:
    compact.load_videos(npy)
  _assert_error(excinfo, npy, "single .npy array")
  with pytest.raises(DataError) as excinfo:
    compact.load_traces(tmp_path / "missing.npz")
  _assert_error(excinfo, tmp_path / "missing.npz", "does not exist")


def test_bad_preferences_raise(tmp_path):
  import json
  good = json.loads((DATA / "preferences.json").read_text())
  cases = {
      "probs": ({**good, "probs": [0.5, 0.5, 0.5, 0.5]}, "sum to 1"),
      "tag": ({**good, "format": "gfnfeeds.traces"}, "format is 'gfnfeeds.traces'"),
      "bounds": ({**good, "means": [[9.0, 1, 1, 1]] + good["means"][1:]},
                 "archetype 0 ('quality_seeker'): alpha = 9.0 is outside"),
      "shape": ({**good, "jitter": [0.1, 0.2]}, "'jitter' must have shape [4]"),
  }
  for name, (settings, fragment) in cases.items():
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(settings))
    with pytest.raises(DataError) as excinfo:
      compact.load_preference_settings(path)
    _assert_error(excinfo, path, fragment)
  path = tmp_path / "broken.json"
  path.write_text("{\n  \"format\": \n")
  with pytest.raises(DataError) as excinfo:
    compact.load_preference_settings(path)
  _assert_error(excinfo, path, "not valid JSON")
