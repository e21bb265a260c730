"""Tests of the plain-Python reference simulator and the MMGC starter policies.

The MMGC data and the reference step logs are read by path from ../shared (never
copied into the project); tests that need them are skipped when it is absent.
"""

import csv
import dataclasses
import functools
import math
import random
from fractions import Fraction
from pathlib import Path

import pytest

from gfnfeeds.reference.simulator import ReferenceSession, ReferenceSimulator
from gfnfeeds.reference.starters import FixedPreload, NoSave, run_session

SHARED = Path(__file__).resolve().parents[2] / "shared"
MMGC = SHARED / "traces" / "mmgc2022"
FIXTURES = SHARED / "reference_fixtures"
DEFAULT_WATCH_MS = [12421, 13323, 2905, 3791, 1859, 6000, 1956]

FIXTURE_RUNS = {
    "steps_no_save_high_0.csv": ("high/0", lambda retention: NoSave()),
    "steps_fixed_preload_low_0.csv": ("low/0", FixedPreload),
}


def _require_shared():
  if not (MMGC.is_dir() and FIXTURES.is_dir()):
    pytest.skip(f"shared MMGC data not found at {SHARED}")


@functools.cache
def load_trace(name):
  """(times_s, mbps) of network/<name>, one float() per whitespace-split field."""
  times, mbps = [], []
  for line in (MMGC / "network" / name).read_text().split("\n"):
    fields = line.split()
    if fields:
      times.append(float(fields[0]))
      mbps.append(float(fields[1]))
  return times, mbps


@functools.cache
def load_catalog():
  """(chunk_sizes[video][chunk][level], retention[video]) of the 7 MMGC videos."""
  dirs = sorted(p.name for p in (MMGC / "video_size").iterdir())
  sizes, retention = [], []
  for d in dirs:
    levels = [[int(x) for x in (MMGC / "video_size" / d / f"video_size_{l}").read_text().split()]
              for l in range(3)]
    sizes.append([list(chunk) for chunk in zip(*levels)])
    text = (MMGC / "user_ret" / d).read_text()
    rows = [line.split() for line in text.split("\n") if line.split()]
    retention.append([float(r[1]) for r in rows[:-1]])  # the last row is the end marker
  return sizes, retention


def mmgc_session(trace, watch_ms=DEFAULT_WATCH_MS, **kwargs):
  times, mbps = load_trace(trace)
  sizes, _ = load_catalog()
  return ReferenceSession(times, mbps, [sizes[i % 7] for i in range(len(watch_ms))],
                          list(watch_ms), **kwargs)


def read_fixture(name):
  """(rows as dicts, final metrics dict) of a reference step log."""
  lines = (FIXTURES / name).read_text().splitlines()
  rows = list(csv.DictReader(lines[:-1]))
  assert lines[-1].startswith("# final:")
  final = dict(kv.split("=") for kv in lines[-1][len("# final:"):].split())
  return rows, {k: float(v) for k, v in final.items()}


def action_of(row):
  return int(row["download_video_id"]), int(row["bitrate"]), int(float(row["sleep_ms"]))


def observed(sim):
  """(head timeline, ';'-joined queue buffers) as the step logs print them."""
  slots = sim.slots()
  head = slots[0].play_timeline_ms if slots else -1
  return head, ";".join(str(s.buffer_ms) for s in slots)


def replay(session, rows):
  sim = ReferenceSimulator(session)
  return sim, [sim.step(*action_of(row)) for row in rows]


# --- (1) step-level parity with the reference logs ------------------------------


@pytest.mark.parametrize("fixture", sorted(FIXTURE_RUNS))
def test_replay_reproduces_reference_log(fixture):
  _require_shared()
  rows, final = read_fixture(fixture)
  sim = ReferenceSimulator(mmgc_session(FIXTURE_RUNS[fixture][0], reference_quirks=True))
  for row in rows:
    assert sim.metrics()["qoe"] == pytest.approx(float(row["qoe_before"]), abs=1e-9), row["step"]
    r = sim.step(*action_of(row))
    got = (r.delay_ms, r.rebuf_ms, r.video_size, int(r.end_of_video), r.play_video_id,
           r.wasted_bytes, r.quality_kbps, r.smooth_kbps, *observed(sim))
    want = tuple(int(float(row[k])) for k in (
        "delay_ms", "rebuf_ms", "video_size_bytes", "end_of_video", "play_video_id_after",
        "wasted_bytes_step")) + (float(row["quality_kbps"]), float(row["smooth_kbps"]),
                                 int(float(row["play_timeline_head_after_ms"])),
                                 row["buffers_ms_after"])
    assert got == want, f"step {row['step']}"
    assert not r.invalid
  assert sim.done and not sim.metrics()["aborted"]
  m = sim.metrics()
  assert m["score"] == pytest.approx(final["score"], abs=1e-6)
  assert m["qoe"] == pytest.approx(final["qoe"], abs=1e-6)
  assert m["bandwidth_bytes"] == final["bandwidth_usage_bytes"]
  assert m["wasted_bytes"] == final["wasted_bytes"]
  assert m["download_watch_ratio"] == pytest.approx(final["download_watch_ratio"], abs=1e-9)
  assert m["steps"] == len(rows) and m["invalid_actions"] == 0
  assert m["startup_delay_ms"] == int(float(rows[0]["rebuf_ms"]))
  assert m["total_played_ms"] == sum(DEFAULT_WATCH_MS)


# --- (2) the starter policies reproduce the logged decisions --------------------


class Recorder:
  """Wraps a policy and records its actions."""

  def __init__(self, policy):
    self.policy, self.actions = policy, []

  def act(self, last, sim):
    action = self.policy.act(last, sim)
    self.actions.append(action)
    return action


@pytest.mark.parametrize("fixture", sorted(FIXTURE_RUNS))
def test_starter_policy_reproduces_logged_actions(fixture):
  _require_shared()
  rows, final = read_fixture(fixture)
  trace, make_policy = FIXTURE_RUNS[fixture]
  sim = ReferenceSimulator(mmgc_session(trace, reference_quirks=True))
  policy = Recorder(make_policy(load_catalog()[1]))
  results = run_session(sim, policy)
  assert policy.actions == [action_of(row) for row in rows]
  assert len(results) == len(rows) and results[-1].done
  assert sim.metrics()["score"] == pytest.approx(final["score"], abs=1e-6)


# --- (3) clean mode differs only where quirks 2 and 4 apply ----------------------


@pytest.mark.parametrize("fixture", sorted(FIXTURE_RUNS))
def test_clean_mode_differs_only_by_double_counted_waste(fixture):
  _require_shared()
  rows, _ = read_fixture(fixture)
  trace = FIXTURE_RUNS[fixture][0]
  quirk_sim, quirk = replay(mmgc_session(trace, reference_quirks=True), rows)
  clean_sim, clean = replay(mmgc_session(trace), rows)
  double_counted = 0
  for row, q, c in zip(rows, quirk, clean):
    vid, _, sleep = action_of(row)
    swiped_in_flight = sleep == 0 and vid < q.play_video_id
    extra = q.video_size if swiped_in_flight else 0
    assert c == dataclasses.replace(q, wasted_bytes=q.wasted_bytes - extra), row["step"]
    double_counted += extra
  assert double_counted > 0  # both logs end with a download of the last video
  qm, cm = quirk_sim.metrics(), clean_sim.metrics()
  assert cm["wasted_bytes"] == qm["wasted_bytes"] - double_counted
  assert cm == {**qm, "wasted_bytes": cm["wasted_bytes"]}
  if fixture == "steps_no_save_high_0.csv":  # SIMULATOR.md 5.5: 734,630 + 270,735
    assert (quirk[-1].wasted_bytes, clean[-1].wasted_bytes) == (1_005_365, 734_630)


def tiny_session(**kwargs):
  """Two 2-chunk videos on a flat 8 Mbps trace; video 0 ends inside chunk 1."""
  sizes = [[[10_000, 20_000, 30_000]] * 2, [[10_000, 20_000, 30_000]] * 2]
  return ReferenceSession([0.0, 100.0], [8.0, 8.0], sizes, [1500, 2000], **kwargs)


@pytest.mark.parametrize("quirks, transition", [(True, 1850.0), (False, 1100.0)])
def test_quirk2_transition_when_next_chunk0_came_first(quirks, transition):
  sim = ReferenceSimulator(tiny_session(reference_quirks=quirks))
  assert sim.step(0, 0, 0).smooth_kbps == 0.0
  # Video 1's chunk 0 (1850) before video 0's last watched chunk (750): no
  # transition is known yet, so it is charged when video 0's chunk 1 comes.
  assert sim.step(1, 2, 0).smooth_kbps == 0.0
  assert sim.step(0, 0, 0).smooth_kbps == transition
  assert sim.step(1, 2, 0).smooth_kbps == 0.0


@pytest.mark.parametrize("quirks", [True, False])
def test_transition_in_order_is_the_same_in_both_modes(quirks):
  sim = ReferenceSimulator(tiny_session(reference_quirks=quirks))
  sim.step(0, 0, 0)
  assert sim.step(0, 0, 0).smooth_kbps == 0.0
  assert sim.step(1, 2, 0).smooth_kbps == 1100.0


# --- (4) invariants over random action sequences ---------------------------------


def random_action(rng, sim):
  """(action, expected kind) with kind in {'download', 'sleep', 'invalid'}."""
  slots = sim.slots()
  open_slots = [s for s in slots if s.chunk_counter < s.num_chunks]
  full_slots = [s for s in slots if s.chunk_counter == s.num_chunks]
  u = rng.random()
  if u < 0.65 and open_slots:
    return (rng.choice(open_slots).video_id, rng.randrange(3), 0), "download"
  if u < 0.8:
    return (sim.play_video_id, 0, rng.randint(1, 1500)), "sleep"
  start, end = sim.play_video_id, sim.play_video_id + sim.queue_len
  choices = [
      (rng.choice([start - 1, end, end + 3]), 0, 0),
      (slots[0].video_id, rng.choice([-1, 3, 7]), 0),
      (start, 0, rng.choice([-1, -500, 0.5])),
  ]
  if full_slots:
    choices.append((rng.choice(full_slots).video_id, 1, 0))
  return rng.choice(choices), "invalid"


def check_random_session(rng, session):
  sim = ReferenceSimulator(session)
  n, watch = len(session.watch_ms), session.watch_ms
  downloads, total_reward, doubles = [], 0.0, 0
  kinds = {"download": 0, "sleep": 0, "invalid": 0}
  while not sim.done:
    assert sim.metrics()["steps"] < 5000
    before = {s.video_id: s for s in sim.slots()}
    (vid, level, sleep), kind = random_action(rng, sim)
    r = sim.step(vid, level, sleep)
    kinds[kind] += 1
    total_reward += r.reward
    assert r.invalid == (kind == "invalid")
    if kind == "download":
      slot = before[vid]
      downloads.append((vid, slot.chunk_counter, level))
      assert r.video_size == sim.chunk_size(vid, slot.chunk_counter, level)
      if vid < r.play_video_id and session.reference_quirks:
        doubles += r.video_size
    else:
      assert r.video_size == 0 and r.quality_kbps == r.smooth_kbps == 0.0
      assert r.delay_ms == (session.invalid_sleep_ms if kind == "invalid" else sleep)
    m = sim.metrics()
    for s in sim.slots():
      assert s.buffer_ms >= 0
      assert s.buffer_ms == 1000 * s.chunk_counter - s.play_timeline_ms
      assert 0 <= s.play_timeline_ms <= watch[s.video_id]
      assert s.preload_size == sum(sim.chunk_size(s.video_id, j, l) for j, l in enumerate(s.levels))
    assert m["total_wall_ms"] == m["total_played_ms"] + m["total_rebuf_ms"] + m["dropped_ms"]
    assert m["dropped_ms"] == 0 or sim.done
    assert m["bandwidth_bytes"] == sum(sim.chunk_size(*d) for d in downloads)
    assert m["wasted_bytes"] - doubles <= m["bandwidth_bytes"]
    watched = sum(watch[:min(n, sim.play_video_id + session.window)])
    if watched:
      assert m["download_watch_ratio"] == 1000 * len(downloads) / watched
  m = sim.metrics()
  assert m["steps"] == sum(kinds.values()) and m["invalid_actions"] == kinds["invalid"]
  assert m["score"] == pytest.approx(total_reward, abs=1e-9 * max(1.0, abs(total_reward)))
  assert m["score"] == m["qoe"] - session.weights[3] * (m["bandwidth_bytes"] * 8 / 1e6)
  if not m["aborted"]:
    assert m["total_played_ms"] == sum(watch)
    wasted = sum(session.chunk_sizes[v][j][l] for v, j, l in downloads if j >= -(-watch[v] // 1000))
    assert m["wasted_bytes"] == wasted + doubles
  return kinds


@pytest.mark.parametrize("trace", ["high/0", "medium/3", "low/7", "mixed/2"])
def test_invariants_over_random_actions(trace):
  _require_shared()
  rng = random.Random(trace)
  times, mbps = load_trace(trace)
  sizes, _ = load_catalog()
  seen = {"download": 0, "sleep": 0, "invalid": 0}
  for _ in range(6):
    n = rng.randint(1, 9)
    videos = [sizes[(i + rng.randrange(7)) % 7] for i in range(n)]
    session = ReferenceSession(
        times, mbps, videos,
        [rng.choice([0, 1000, rng.randint(0, 1000 * len(v)), 1000 * len(v)]) for v in videos],
        weights=(rng.uniform(0.5, 1.5), rng.uniform(0.5, 6), rng.uniform(0, 2),
                 rng.uniform(0, 1.5)),
        window=rng.randint(1, 6), start_row=rng.randrange(1, len(times)),
        reference_quirks=rng.random() < 0.5, wall_clock_trace=rng.random() < 0.5)
    for kind, count in check_random_session(rng, session).items():
      seen[kind] += count
  assert min(seen.values()) > 0


def test_invalid_actions_run_as_sleeps():
  sim = ReferenceSimulator(tiny_session(invalid_sleep_ms=300))
  for action in [(-1, 0, 0), (2, 0, 0), (0, 3, 0), (0, -1, 0), (0, 0, -5), (0, 0, 0.5)]:
    r = sim.step(*action)
    assert r.invalid and r.delay_ms == 300 and r.video_size == 0 and r.quality_kbps == 0.0
  assert sim.metrics()["invalid_actions"] == 6
  assert sim.metrics()["total_rebuf_ms"] == 1800 == sim.metrics()["startup_delay_ms"]
  sim.step(0, 0, 0)
  sim.step(0, 0, 0)
  r = sim.step(0, 0, 0)  # video 0 is fully downloaded
  assert r.invalid and r.delay_ms == 300
  assert not sim.step(1, 0, 0).invalid  # video 1 is in the 5-video window


class Sleeper:
  def act(self, last, sim):
    return sim.play_video_id, 0, 1000


def test_abort_guard_keeps_the_computed_score():
  sim = ReferenceSimulator(tiny_session(min_qoe=-5.0))
  results = run_session(sim, Sleeper())
  m = sim.metrics()
  assert m["aborted"] and results[-1].done and len(results) == 3
  assert m["qoe"] == pytest.approx(-3 * 1.85) and m["score"] == m["qoe"]
  with pytest.raises(RuntimeError):
    sim.step(0, 0, 1000)


# --- (5) trace wrap-around against a hand computation ----------------------------

# Rows 1..4 carry 1e6, 2e6, 0.5e6, 1e6 B/s over 0.5 s each: 500 kB, 1 MB,
# 250 kB, 500 kB per slot, 2.25 MB per 2-s period. Row 0 is never used.
WRAP_TIMES = [0.0, 0.5, 1.0, 1.5, 2.0]
WRAP_MBPS = [99.0, 8.0, 16.0, 4.0, 8.0]


def wrap_session(sizes, **kwargs):
  kwargs = {"payload": 1.0, **kwargs}
  chunks = [[s, s, s] for s in sizes]
  return ReferenceSession(WRAP_TIMES, WRAP_MBPS, [chunks], [1000 * len(chunks)], **kwargs)


def test_wrap_around_hand_computed_delays():
  sim = ReferenceSimulator(wrap_session([3_000_000] * 3))
  # 1: 4 slots (2.25 MB), wrap, slot 1 (2.75 MB), 0.25 MB of slot 2 at 2 MB/s = 2.625 s.
  # 2: rest of slot 2 .. slot 4 (1.5 MB), slots 1, 2 end exactly at 3 MB: the
  #    strict test moves on to slot 3 and sends 0 s of it: 2.375 s.
  # 3: slots 3, 4, 1, 2, 3, 4 = 3 MB exactly, wrapping twice: 3 s.
  assert [sim.step(0, 0, 0).delay_ms for _ in range(3)] == [2705, 2455, 3080]


def test_wall_clock_trace_hand_computed_delays():
  sim = ReferenceSimulator(wrap_session([3_000_000] * 3, wall_clock_trace=True, rtt_ms=125.0))
  assert sim.step(0, 0, 1500).delay_ms == 1500  # cursor to row 4 at t=1.5
  # slots 4, 1, 2, 3, 4 (2.75 MB), 0.25 MB of slot 1: 2.75 s; the RTT moves to t=0.375.
  assert sim.step(0, 0, 0).delay_ms == 2875
  # 0.125 s of slot 1, slots 2, 3, 4, 1, then 0.625 MB of slot 2: 2.4375 s -> 2562.5 ms
  # rounds half up.
  assert sim.step(0, 0, 0).delay_ms == 2563


def exact_delays(actions, sizes, start_row, wall_clock, rtt_ms):
  """Delays of `actions` by exact arithmetic on the unwrapped periodic trace."""
  t = [Fraction(x) for x in WRAP_TIMES]
  rate = [Fraction(int(b * 1e6 / 8)) for b in WRAP_MBPS]
  period, per_period = t[-1] - t[0], sum(rate[k] * (t[k] - t[k - 1]) for k in range(1, 5))

  def sent_by(tau):  # bytes the link carries over [t0, tau]
    laps, x = divmod(tau - t[0], period)
    total = laps * per_period
    for k in range(1, 5):
      total += rate[k] * max(Fraction(0), min(x, t[k] - t[0]) - (t[k - 1] - t[0]))
    return total

  def time_at(target):  # earliest tau with sent_by(tau) == target
    laps, rest = divmod(target, per_period)
    tau = t[0] + laps * period
    for k in range(1, 5):
      chunk = rate[k] * (t[k] - t[k - 1])
      if rest <= chunk:
        return tau + rest / rate[k]
      rest -= chunk
      tau += t[k] - t[k - 1]
    raise AssertionError

  tau, chunk, delays = t[start_row - 1], 0, []
  for sleep in actions:
    if sleep:
      tau += Fraction(sleep, 1000) if wall_clock else 0
      delays.append(sleep)
      continue
    end = time_at(sent_by(tau) + sizes[chunk])
    delays.append(math.floor((end - tau) * 1000 + Fraction(rtt_ms) + Fraction(1, 2)))
    tau = end + (Fraction(rtt_ms, 1000) if wall_clock else 0)
    chunk += 1
  return delays


@pytest.mark.parametrize("wall_clock", [False, True])
@pytest.mark.parametrize("start_row", [1, 3])
def test_wrap_around_many_laps_matches_exact_arithmetic(wall_clock, start_row):
  # Sizes in multiples of 62.5 kB keep every time a multiple of 1/32 s, exact in floats.
  sizes = [62_500 * (7 + (13 * j) % 41) for j in range(60)]
  rng = random.Random(start_row)
  actions = [rng.choice([0, 0, 0, 250, 1375]) for _ in range(80)]
  sim = ReferenceSimulator(wrap_session(sizes, start_row=start_row, wall_clock_trace=wall_clock,
                                        rtt_ms=125.0, min_qoe=-math.inf))
  delays = [sim.step(0, 0, sleep).delay_ms for sleep in actions]
  assert delays == exact_delays(actions, sizes, start_row, wall_clock, 125)
  laps = sum(sizes[:actions.count(0)]) / 2_250_000
  assert laps > 20
