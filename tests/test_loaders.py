"""Tests of the host-side loaders: network traces, the MMGC catalog, the MMGC user model.

Real data is read by path from ../shared (never copied); those tests skip when it
is absent. Malformed inputs are written to tmp_path.
"""

import csv
import random
from pathlib import Path

import numpy as np
import pytest

from gfnfeeds.data import traces as tr
from gfnfeeds.data import users
from gfnfeeds.data import videos as vd
from gfnfeeds.data.types import DataError, NetworkTrace, Video

SHARED = Path(__file__).resolve().parents[2] / "shared"
MMGC = SHARED / "traces" / "mmgc2022"
MMGC_NET = MMGC / "network"
NET = SHARED / "traces" / "network"
SETS = ("high", "low", "medium", "mixed")

DEFAULT_SEEDS = [[51, 92], [14, 71], [60, 20], [82, 86], [74, 74], [87, 99],
                 [23, 2]]
DEFAULT_USER = [12421, 13323, 2905, 3791, 1859, 6000, 1956]
CHUNK_COUNTS = [17, 26, 37, 40, 47, 6, 125]
VIDEO_NAMES = ["1_tj", "2_EDG", "3_gy", "4_dx", "5_ss", "6_jt", "7_yd"]
# r(N) per SIMULATOR.md 3.3, rounded there to 2-3 significant digits.
END_RETENTION = [0.211, 0.253, 0.289, 0.240, 0.061, 0.431, 0.0098]


def _need(path: Path) -> Path:
  if not path.exists():
    pytest.skip(f"shared data not available: {path}")
  return path


@pytest.fixture(scope="module")
def mmgc_traces():
  return tr.load_network_traces(_need(MMGC_NET), dedupe=False)


@pytest.fixture(scope="module")
def mmgc_videos():
  return vd.load_mmgc_videos(_need(MMGC))


@pytest.fixture(scope="module")
def oboe_traces():
  return tr.load_network_traces(_need(NET / "oboe"))


@pytest.fixture
def keep_global_rngs():
  np_state, py_state = np.random.get_state(), random.getstate()
  yield
  np.random.set_state(np_state)
  random.setstate(py_state)


def _assert_error(excinfo, path: Path, line: int | None, fragment: str):
  msg = str(excinfo.value)
  assert path.name in msg, msg
  assert fragment in msg, msg
  if line is not None:
    assert f":{line}:" in msg, msg
    assert excinfo.value.line == line


# ----------------------------------------------------------------------------
# Network traces: real data


def test_mmgc_traces_load(mmgc_traces):
  assert len(mmgc_traces) == 80
  assert [t.name for t in mmgc_traces] == [
      f"{s}/{i}" for s in SETS for i in range(20)]
  for t in mmgc_traces:
    assert len(t) == 5880
    assert t.times_s[0] == 0.0 and t.times_s[-1] == 2939.5
    np.testing.assert_array_equal(np.diff(t.times_s), 0.5)
    assert t.bandwidth_mbps.min() >= 0.2
    assert Path(t.path).is_file() and t.path.endswith(t.name)


def test_mmgc_crlf_files_parse_like_lf(mmgc_traces, tmp_path):
  by_name = {t.name: t for t in mmgc_traces}
  crlf = [p for p in sorted((MMGC_NET / "mixed").iterdir())
          if b"\r\n" in p.read_bytes()]
  assert len(crlf) == 17
  for p in crlf:
    lf = tmp_path / p.name
    lf.write_bytes(p.read_bytes().replace(b"\r\n", b"\n"))
    a, b = by_name[f"mixed/{p.name}"], tr.load_network_trace(lf)
    np.testing.assert_array_equal(a.times_s, b.times_s)
    np.testing.assert_array_equal(a.bandwidth_mbps, b.bandwidth_mbps)
    # The reference parses with bytes.split() and float().
    rows = [line.split() for line in p.read_bytes().splitlines()]
    np.testing.assert_array_equal(a.bandwidth_mbps, [float(r[1]) for r in rows])


def test_dedupe_drops_byte_identical_files():
  _need(MMGC_NET)
  both = tr.load_network_traces([MMGC_NET / "mixed", MMGC_NET / "high"])
  assert len(both) == 39
  assert str(MMGC_NET / "high" / "19") not in {t.path for t in both}
  assert str(MMGC_NET / "mixed" / "19") in {t.path for t in both}
  assert len(tr.load_network_traces(
      [MMGC_NET / "mixed", MMGC_NET / "high"], dedupe=False)) == 40
  # Over all sets: mixed/19 = high/19, mixed/9 = medium/7, mixed/2 = low/16.
  names = {t.name for t in tr.load_network_traces(MMGC_NET)}
  assert len(names) == 77
  assert {"high/19", "medium/7", "low/16"} <= names
  assert not {"mixed/19", "mixed/9", "mixed/2"} & names


def test_index_classes_reproduced():
  with open(_need(NET / "oboe_fcc_index.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  oboe = [r for r in rows if r["source"] == "oboe"]
  fcc = [r for r in rows if r["source"] != "oboe"][::25]
  assert len(oboe) == 428 and len(fcc) == 100
  weighted_differs = 0
  rejected = 0
  for r in oboe + fcc:
    path = NET / r["path"]
    try:
      t = tr.load_network_trace(path)
    except DataError as e:
      # Some FCC traces hold zero-throughput samples, which the loader rejects.
      assert r["source"] != "oboe" and float(r["min_mbps"]) <= 0.0
      assert "bandwidth must be > 0" in str(e)
      rejected += 1
      continue
    assert len(t) == int(r["n_samples"])
    assert tr.classify_trace(t) == r["class_1.5_3"], r["path"]
    assert abs(tr.sample_mean_mbps(t) - float(r["mean_mbps"])) <= 5.1e-5
    weighted = NetworkTrace(t.name, t.times_s, t.bandwidth_mbps)
    weighted_differs += tr.classify_trace(t) != (
        "low" if weighted.mean_mbps < 1.5 else
        "medium" if weighted.mean_mbps < 3.0 else "high")
  assert 0 < rejected < len(fcc)
  assert weighted_differs > 0  # why classify_trace uses the plain mean


def test_load_skip_invalid_files():
  fcc = _need(NET / "fcc" / "cooked_test_traces")
  with pytest.raises(DataError, match="bandwidth must be > 0"):
    tr.load_network_traces(fcc)
  kept = tr.load_network_traces(fcc, errors="skip")
  assert 0 < len(kept) < 500
  assert all(t.bandwidth_mbps.min() > 0 for t in kept)


def test_split_deterministic_and_order_independent(oboe_traces, mmgc_traces):
  traces = oboe_traces + mmgc_traces
  train, test = tr.split_traces(traces)
  assert len(train) + len(test) == len(traces)
  assert 0.15 < len(test) / len(traces) < 0.25
  test_ids = {id(t) for t in test}
  _, test_rev = tr.split_traces(traces[::-1])
  assert {id(t) for t in test_rev} == test_ids
  # A trace's side depends on its own values only: any subset splits the same.
  _, test_sub = tr.split_traces(traces[::3])
  assert {id(t) for t in test_sub} == test_ids & {id(t) for t in traces[::3]}
  # Re-loading gives the same split; another salt gives another.
  again = tr.load_network_traces(NET / "oboe")
  assert [tr.trace_split(t) for t in again] == [
      tr.trace_split(t) for t in oboe_traces]
  assert {id(t) for t in tr.split_traces(traces, salt="other")[1]} != test_ids
  assert tr.split_traces(traces, test_fraction=0.0)[1] == []
  assert tr.split_traces(traces, test_fraction=1.0)[0] == []


def test_filter_traces(oboe_traces):
  counts = {c: len(tr.filter_traces(oboe_traces, trace_class=c))
            for c in tr.TRACE_CLASSES}
  assert sum(counts.values()) == len(oboe_traces)
  # 427 distinct Oboe traces; the index counts 96 / 121 / 211 over 428 files.
  assert abs(counts["low"] - 96) + abs(counts["medium"] - 121) + abs(
      counts["high"] - 211) <= 1
  test_high = tr.filter_traces(oboe_traces, trace_class="high", split="test")
  assert test_high == [t for t in tr.split_traces(oboe_traces)[1]
                       if tr.classify_trace(t) == "high"]
  with pytest.raises(ValueError):
    tr.filter_traces(oboe_traces, trace_class="mid")
  with pytest.raises(ValueError):
    tr.filter_traces(oboe_traces, split="val")


# ----------------------------------------------------------------------------
# Network traces: file discovery and synthetic inputs


def _write(path: Path, data) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(data, str):
    data = data.encode()
  path.write_bytes(data)
  return path


def test_find_trace_files_order_and_filter(tmp_path):
  for name in ["10", "2", "1", "b", "a10", "a2", "LICENSE.MIT", "README.md",
               "x.csv", "y.tsv", "z.json", ".hidden", "sub/3", "sub/1",
               "a_dir/0", ".git/5"]:
    _write(tmp_path / name, "0 1\n1 1\n")
  got = [p.relative_to(tmp_path).as_posix()
         for p in tr.find_trace_files(tmp_path)]
  assert got == ["1", "2", "10", "a10", "a2", "b", "a_dir/0", "sub/1", "sub/3"]


def test_load_network_traces_roots(tmp_path):
  _write(tmp_path / "d" / "s" / "7", "0 1\n1 2\n")
  _write(tmp_path / "d" / "README.md", "not a trace")
  single = _write(tmp_path / "one.txt", "0 3\n1 4\n")
  got = tr.load_network_traces([tmp_path / "d", single])
  assert [t.name for t in got] == ["s/7", "one.txt"]
  assert got[0].path == str(tmp_path / "d" / "s" / "7")
  assert tr.load_network_traces(str(single))[0].name == "one.txt"
  with pytest.raises(DataError, match="does not exist") as e:
    tr.load_network_traces(tmp_path / "missing")
  assert "missing" in str(e.value)
  (tmp_path / "empty").mkdir()
  _write(tmp_path / "empty" / "LICENSE", "MIT")
  with pytest.raises(DataError, match="no trace files") as e:
    tr.load_network_traces([tmp_path / "d", tmp_path / "empty"])
  assert "empty" in str(e.value)


def test_load_network_trace_valid_variants(tmp_path):
  lf = _write(tmp_path / "lf", "0 1.5\n0.7 2\n3.25\t0.5\n\n  \n")
  crlf = _write(tmp_path / "crlf", b"0.0 1.5\r\n0.7 2\r\n3.25 0.5\r\n\r\n")
  no_nl = _write(tmp_path / "no_nl", "0 1.5\n0.7  2\n3.25 5e-1")
  for p in (lf, crlf, no_nl):
    t = tr.load_network_trace(p, name="x")
    assert t.name == "x" and t.path == str(p)
    assert t.times_s.dtype == np.float64
    np.testing.assert_array_equal(t.times_s, [0.0, 0.7, 3.25])
    np.testing.assert_array_equal(t.bandwidth_mbps, [1.5, 2.0, 0.5])
  assert tr.load_network_trace(lf).name == "lf"


@pytest.mark.parametrize("data, line, fragment", [
    ("", 1, "empty file"),
    ("\n \r\n", 1, "empty file"),
    ("0 1\n0.5 1 2\n", 2, "expected 2 fields"),
    ("0 1\n0.5\n", 2, "expected 2 fields"),
    ("0 1\n\n1 2\n", 2, "expected 2 fields"),
    ("0 1\n0.5 abc\n", 2, "bandwidth is not a number: 'abc'"),
    ("0 1\nx 2\n", 2, "time is not a number"),
    ("0 1\n0.5 1_0\n", 2, "not a number"),
    ("0 1\n0.5 nan\n", 2, "bandwidth must be finite, got nan"),
    ("0 1\ninf 2\n", 2, "time must be finite"),
    ("0 1\n1 1e999\n", 2, "bandwidth must be finite"),
    ("0 1\n0.5 2\n1 -1.5\n", 3, "bandwidth must be > 0, got -1.5"),
    ("0 0\n0.5 2\n", 1, "bandwidth must be > 0, got 0"),
    ("0 1\n0.5 2\n0.5 2\n", 3, "time must be strictly increasing"),
    ("0 1\n2 2\n1 2\n", 3, "time must be strictly increasing, got 1 after 2"),
    ("0 1\n", 1, "need at least 2 rows, got 1"),
    ("0 1\r\n0.5 2\r\n1 x\r\n", 3, "not a number"),
    (b"0 1\n\xff 2\n", 2, "not a UTF-8"),
])
def test_load_network_trace_rejects(tmp_path, data, line, fragment):
  path = _write(tmp_path / "bad_trace", data)
  with pytest.raises(DataError) as e:
    tr.load_network_trace(path)
  _assert_error(e, path, line, fragment)


# ----------------------------------------------------------------------------
# Videos


def test_mmgc_catalog(mmgc_videos):
  assert [v.name for v in mmgc_videos] == VIDEO_NAMES
  assert [v.num_chunks for v in mmgc_videos] == CHUNK_COUNTS
  for v, end in zip(mmgc_videos, END_RETENTION):
    assert v.num_levels == 3 and v.chunk_sizes.dtype == np.int64
    assert (v.chunk_sizes > 0).all()
    assert v.retention.dtype == np.float64
    assert v.retention.shape == (v.num_chunks + 1,)
    assert v.retention[0] == 1.0 and (np.diff(v.retention) <= 0).all()
    assert v.retention[-1] == pytest.approx(end, rel=0.02)
  assert mmgc_videos[0].chunk_sizes[0, 0] == 67815
  assert mmgc_videos[6].retention[-1] == 0.009827472
  # SIMULATOR.md 3.2: mean kbps at level 0 of 1_tj and level 2 of 7_yd.
  kbps = [v.chunk_sizes.mean(axis=0) * 8 / 1000 for v in mmgc_videos]
  assert kbps[0][0] == pytest.approx(896, abs=1)
  assert kbps[6][2] == pytest.approx(1906, abs=1)


def _catalog(root: Path, size_dir="video_size", videos=None) -> Path:
  videos = videos or {"a": ([[100, 200], [110, 210], [120, 220]],
                            "0\t1\n1\t0.8\n2\t0.8\n3\t0.5\n4 0")}
  for name, (sizes, ret) in videos.items():
    for lvl in range(len(sizes[0])):
      _write(root / size_dir / name / f"video_size_{lvl}",
             "".join(f"{row[lvl]}\n" for row in sizes))
    _write(root / "user_ret" / name, ret)
  return root


def test_catalog_variants(tmp_path):
  root = _catalog(tmp_path / "c1")
  _write(root / "video_size" / ".DS_Store", b"\x00\x01")
  _write(root / "user_ret" / ".DS_Store", b"\x00\x01")
  (v,) = vd.load_mmgc_videos(root)
  assert isinstance(v, Video) and v.name == "a"
  np.testing.assert_array_equal(v.chunk_sizes, [[100, 200], [110, 210],
                                                [120, 220]])
  np.testing.assert_array_equal(v.retention, [1.0, 0.8, 0.8, 0.5])
  (v1,) = vd.load_mmgc_videos(root, num_levels=1)
  assert v1.num_levels == 1
  two = _catalog(tmp_path / "c2", size_dir="short_video_size", videos={
      "b": ([[5]], "0 1\n1  0.25\n2 0\n"),
      "a": ([[7], [8]], "0 1\r\n1 0.5\r\n2 0.5\r\n3 0\r\n"),
  })
  assert [(v.name, v.num_chunks) for v in vd.load_mmgc_videos(two)] == [
      ("a", 2), ("b", 1)]


RET = "0\t1\n1\t0.8\n2\t0.8\n3\t0.5\n4 0"


@pytest.mark.parametrize("file, data, line, fragment", [
    ("video_size/a/video_size_1", "200\n2.5e2\n220\n", 2, "not an integer"),
    ("video_size/a/video_size_0", "100\nabc\n120\n", 2, "not an integer"),
    ("video_size/a/video_size_0", "100\n0\n120\n", 2, "must be > 0, got 0"),
    ("video_size/a/video_size_0", "100\n-5\n120\n", 2, "must be > 0"),
    ("video_size/a/video_size_0", "100 3\n110\n120\n", 1, "expected 1 field"),
    ("video_size/a/video_size_0", "", 1, "empty file"),
    ("video_size/a/video_size_1", "200\n210\n", None, "has 2 chunks but"),
    ("user_ret/a", "0\t1\n1\t0.8\n2\t0.8\n3\t0.5\n", 4, "missing end marker"),
    ("user_ret/a", "0\t1\n1\t0.8\n2\t0.8\n3\t0.5\n4 0.1", 5,
     "missing end marker"),
    ("user_ret/a", "0\t0.9\n1\t0.8\n2\t0.8\n3\t0.5\n4 0", 1,
     "at t = 0 must be 1"),
    ("user_ret/a", "0\t1\n1\t0.8\n2\t0.9\n3\t0.5\n4 0", 3, "must not increase"),
    ("user_ret/a", "0\t1\n1\t1.2\n2\t0.8\n3\t0.5\n4 0", 2, "in [0, 1]"),
    ("user_ret/a", "0\t1\n1\t0.8\n2\t0.8\n3\t-0.1\n4 0", 4, "in [0, 1]"),
    ("user_ret/a", "0\t1\n1\t0.8\n3\t0.8\n3\t0.5\n4 0", 3, "expected t = 2"),
    ("user_ret/a", "0\t1\n1\t0.8\n2\tx\n3\t0.5\n4 0", 3, "not a number"),
    ("user_ret/a", "0\t1\n1\t0.8\n2\t0.8\n3 0", 4, "has 3 chunks"),
    ("user_ret/a", "0\t1\n1\t0.8\n2\t0.8\n3\t0.5\n4\t0.5\n5 0", 6,
     "has 3 chunks"),
    ("user_ret/a", "0\t1\n1\t0.8 7\n2\t0.8\n3\t0.5\n4 0", 2,
     "expected 2 fields"),
])
def test_catalog_rejects_bad_files(tmp_path, file, data, line, fragment):
  root = _catalog(tmp_path)
  path = _write(root / file, data)
  with pytest.raises(DataError) as e:
    vd.load_mmgc_videos(root)
  _assert_error(e, path, line, fragment)


def test_catalog_rejects_bad_layout(tmp_path):
  root = _catalog(tmp_path / "gap")
  _write(root / "video_size" / "a" / "video_size_3", "1\n2\n3\n")
  with pytest.raises(DataError, match="missing level file") as e:
    vd.load_mmgc_videos(root)
  assert "video_size_2" in str(e.value)
  with pytest.raises(DataError, match="video_size_2"):
    vd.load_mmgc_videos(_catalog(tmp_path / "few"), num_levels=3)

  root = _catalog(tmp_path / "no_ret")
  _write(root / "video_size" / "b" / "video_size_0", "1\n")
  with pytest.raises(DataError, match="no retention file") as e:
    vd.load_mmgc_videos(root)
  assert str(root / "video_size" / "b") in str(e.value)

  root = _catalog(tmp_path / "no_sizes")
  _write(root / "user_ret" / "b", "0 1\n1 0\n")
  with pytest.raises(DataError, match="no size folder") as e:
    vd.load_mmgc_videos(root)
  assert str(root / "user_ret" / "b") in str(e.value)

  root = _catalog(tmp_path / "levels", videos={
      "a": ([[1, 2]], "0 1\n1 0.5\n2 0\n"), "b": ([[1]], "0 1\n1 0.5\n2 0\n")})
  with pytest.raises(DataError, match="has 1 levels"):
    vd.load_mmgc_videos(root)

  with pytest.raises(DataError, match="does not exist"):
    vd.load_mmgc_videos(tmp_path / "nowhere")
  (tmp_path / "bare").mkdir()
  with pytest.raises(DataError, match="no size folder"):
    vd.load_mmgc_videos(tmp_path / "bare")


# ----------------------------------------------------------------------------
# The MMGC user model


def _reference_style_duration(name: str, seed_pair) -> int:
  """The reference's per-video procedure, on the global RNGs, from the raw file."""
  user_time, retention_text = [], []
  for line in (MMGC / "user_ret" / name).read_text().splitlines():
    user_time.append(float(line.split()[0]) * 1000.0)
    retention_text.append(line.split()[1])
  prop = np.diff(1.0 - np.array(retention_text).astype("float64")).ravel()
  np.random.seed(seed_pair[0])
  interval = np.random.choice(user_time[:-1], p=prop)
  if interval == user_time[-2]:
    return int(interval)
  random.seed(int(seed_pair[1]))
  return int(random.uniform(interval, interval + 1000))


def test_watch_probabilities(mmgc_videos):
  for v in mmgc_videos:
    p = users.watch_probabilities(v)
    assert p.shape == (v.num_chunks + 1,) and (p >= 0).all()
    assert abs(p.sum() - 1.0) < 1e-12
    assert p[-1] == pytest.approx(v.retention[-1], abs=1e-15)
    np.testing.assert_allclose(p[:-1], -np.diff(v.retention), atol=1e-15)


def test_default_seeds_and_user(mmgc_videos, keep_global_rngs):
  assert users.mmgc_default_seeds().tolist() == DEFAULT_SEEDS
  assert users.mmgc_default_user(mmgc_videos).dtype == np.int64
  assert users.mmgc_default_user(mmgc_videos).tolist() == DEFAULT_USER
  assert sum(DEFAULT_USER) == 42255
  assert [_reference_style_duration(n, s)
          for n, s in zip(VIDEO_NAMES, DEFAULT_SEEDS)] == DEFAULT_USER


def test_watch_duration_matches_global_rng_procedure(mmgc_videos,
                                                     keep_global_rngs):
  seeds = np.random.RandomState(7).randint(10000, size=(40, 2))
  for v in mmgc_videos:
    for s in seeds:
      assert users.mmgc_watch_duration(v, s[0], s[1]) == (
          _reference_style_duration(v.name, s))


def test_user_model_leaves_global_rngs_alone(mmgc_videos, keep_global_rngs):
  np.random.seed(123)
  random.seed(456)
  np.random.random()  # a mid-stream state, not a freshly seeded one
  np_before, py_before = np.random.get_state(), random.getstate()
  users.mmgc_default_user(mmgc_videos)
  users.mmgc_user_samples(mmgc_videos, 3)
  np_after = np.random.get_state()
  assert all(np.array_equal(a, b) for a, b in zip(np_before, np_after))
  assert random.getstate() == py_before


def test_user_samples(mmgc_videos, keep_global_rngs):
  # The reference sequence (test_user_samples right after run.py's import),
  # replayed on the global RNGs, for the first 5 samples.
  np.random.seed(42)
  np.random.randint(100, size=(7, 2))
  seed_for_sample = np.random.randint(10000, size=(1001, 1))
  expected = []
  for j in range(5):
    np.random.seed(seed_for_sample[j])
    seeds = np.random.randint(10000, size=(7, 2))
    expected.append([_reference_style_duration(VIDEO_NAMES[i], seeds[i])
                     for i in range(7)])

  # Deterministic whatever ran before, and in any call order.
  np.random.seed(0)
  random.seed(0)
  first = users.mmgc_user_samples(mmgc_videos, 5)
  default = users.mmgc_default_user(mmgc_videos)
  np.random.random(100)
  more = users.mmgc_user_samples(mmgc_videos, 50)
  assert first.dtype == np.int64 and first.shape == (5, 7)
  assert first.tolist() == expected
  np.testing.assert_array_equal(more[:5], first)
  assert default.tolist() == DEFAULT_USER
  assert more.shape == (50, 7)
  limits = np.array(CHUNK_COUNTS) * 1000
  assert ((more >= 0) & (more <= limits)).all()
  assert users.mmgc_user_samples(mmgc_videos, 0).shape == (0, 7)
  with pytest.raises(ValueError):
    users.mmgc_user_samples(mmgc_videos, 1002)


def test_session_cycles_through_short_catalog(mmgc_videos):
  two = mmgc_videos[:2]
  got = users.mmgc_default_user(two)
  seeds = users.mmgc_default_seeds()
  assert got.tolist() == [users.mmgc_watch_duration(two[i % 2], *seeds[i])
                          for i in range(7)]
  with pytest.raises(ValueError):
    users.mmgc_default_user([])
