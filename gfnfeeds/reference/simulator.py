"""Plain-Python reference simulator of one MMGC2022 short-video session.

A straightforward event loop written from SIMULATOR.md section 5, using only
Python ints, floats and lists. It is the parity oracle for the JAX simulator
and its speed peer in benchmarks, so it stays readable rather than fast.

Semantics (SIMULATOR.md section 5, one fresh session):
  * Network (5.3): one trace cursor (ptr, last_t) per session; row k holds on
    (t[k-1], t[k]]; bytes are accumulated slot by slot with a strict `>` test;
    the trace wraps to ptr=1, last_t=t[0]; delay_ms = floor(elapsed*1000 +
    rtt + 0.5). By default only transmission moves the cursor.
  * Playback (5.4): integer ms; the downloading chunk is not playable during
    its own download; swipes happen inside an action; a stall makes the whole
    leftover of the action rebuffering; the session ends when the last video
    is swiped and the leftover time is dropped.
  * Scoring (5.2): quality and smoothness are computed before the transition.
  * Waste (5.5): at a swipe, the downloaded chunks j >= ceil(w/1000).

Deviations and options:
  * Quirk 1 of section 9 is not replicated: the session starts fresh.
  * reference_quirks=False (clean mode) fixes quirk 2 (the video transition
    costs |BR[this] - BR[next chunk 0]|) and quirk 4 (an in-flight chunk of a
    video swiped during its download is wasted once, at the swipe).
    reference_quirks=True reproduces the reference. Quirks 3, 5, 6, 7 always
    behave as the reference.
  * wall_clock_trace=True: a sleep of s ms, and the RTT of a download after
    its transmission, advance the trace cursor by s ms (resp. rtt_ms, not
    rounded), crossing rows and wrapping, without sending bytes. A row
    boundary reached exactly moves the cursor to the next row, as a download
    that fills a slot exactly does.
  * Invalid actions (SYSTEM.md section 3) run as a sleep of invalid_sleep_ms:
    a download outside the window, of a fully downloaded video or at a level
    outside the ladder; a sleep that is negative, NaN or in (0, 1) ms (the
    reference does a 0 ms no-op there, which can loop forever). They earn no
    quality, download nothing and are counted.
  * Sleeps of 1 ms or more are truncated to whole ms (quirk 7).
  * The abort guard ends the session when QoE_w < min_qoe after a step; the
    score keeps its computed value and `aborted` is reported separately.
"""

from __future__ import annotations

import dataclasses
import math
import operator

CHUNK_MS = 1000


@dataclasses.dataclass
class ReferenceSession:
  """Inputs of one session, all plain Python.

  Attributes:
    trace_times: seconds, strictly increasing, at least 2 rows.
    trace_mbps: row k holds on (t[k-1], t[k]]; row 0 is unused.
    chunk_sizes: [session video i][chunk j][level l] bytes.
    watch_ms: hidden watch duration per session video, 0 <= w <= 1000*chunks.
    bitrates_kbps: nominal ladder used for quality and smoothness.
    weights: (alpha quality, beta rebuffer, gamma smoothness, theta per megabit).
    window: queue window (the playing video plus window-1 next ones).
    rtt_ms: dead time added to every download.
    payload: fraction of the trace bandwidth that carries chunk bytes.
    start_row: the cursor starts at ptr=start_row, last_t=t[start_row-1].
    reference_quirks: reproduce SIMULATOR.md section 9 items 2 and 4.
    wall_clock_trace: sleeps and the RTT also advance the trace cursor.
    min_qoe: the session aborts when QoE_w falls below this after a step.
    invalid_sleep_ms: how long an invalid action sleeps.
  """

  trace_times: list[float]
  trace_mbps: list[float]
  chunk_sizes: list[list[list[int]]]
  watch_ms: list[int]
  bitrates_kbps: list[float] = (750.0, 1200.0, 1850.0)
  weights: tuple = (1.0, 1.85, 1.0, 0.5)
  window: int = 5
  rtt_ms: float = 80.0
  payload: float = 0.95
  start_row: int = 1
  reference_quirks: bool = False
  wall_clock_trace: bool = False
  min_qoe: float = -1e4
  invalid_sleep_ms: int = 500

  def __post_init__(self):
    t, bw = self.trace_times, self.trace_mbps
    if len(t) < 2 or len(t) != len(bw):
      raise ValueError("the trace needs >= 2 rows and as many times as bandwidths")
    if any(b <= a for a, b in zip(t, t[1:])):
      raise ValueError("trace_times must be strictly increasing")
    if any(not b > 0 for b in bw[1:]):
      raise ValueError("trace_mbps must be > 0 on rows 1..n-1")
    if not 1 <= self.start_row < len(t):
      raise ValueError(f"start_row must lie in [1, {len(t) - 1}]")
    if not self.watch_ms or len(self.watch_ms) != len(self.chunk_sizes):
      raise ValueError("need one watch duration per session video, at least one video")
    levels = len(self.bitrates_kbps)
    for i, (video, w) in enumerate(zip(self.chunk_sizes, self.watch_ms)):
      if not video or any(len(chunk) != levels or min(chunk) < 0 for chunk in video):
        raise ValueError(f"video {i}: chunks need {levels} non-negative sizes")
      if not 0 <= w <= CHUNK_MS * len(video):
        raise ValueError(f"video {i}: watch_ms {w} outside [0, {CHUNK_MS * len(video)}]")
    if len(self.weights) != 4:
      raise ValueError("weights are (alpha, beta, gamma, theta)")
    if self.window < 1 or self.payload <= 0 or self.rtt_ms < 0 or self.invalid_sleep_ms < 1:
      raise ValueError("need window >= 1, payload > 0, rtt_ms >= 0, invalid_sleep_ms >= 1")


@dataclasses.dataclass(frozen=True)
class StepResult:
  """Outcome of one action.

  quality_kbps and smooth_kbps are the terms scored before the move (0 for a
  sleep); quality, rebuffer_s, smoothness and megabits are the unweighted
  reward components; reward is this step's increment of score_w.
  """

  delay_ms: int
  rebuf_ms: int
  video_size: int
  end_of_video: bool
  play_video_id: int
  wasted_bytes: int
  quality_kbps: float
  smooth_kbps: float
  quality: float
  rebuffer_s: float
  smoothness: float
  megabits: float
  reward: float
  invalid: bool
  done: bool


@dataclasses.dataclass(frozen=True)
class SlotView:
  """Client-visible state of one queue slot (a copy)."""

  video_id: int
  buffer_ms: int
  play_timeline_ms: int
  chunk_counter: int
  num_chunks: int
  levels: list[int]
  preload_size: int


class ReferenceSimulator:
  """One session of SIMULATOR.md section 5, stepped action by action."""

  def __init__(self, session: ReferenceSession):
    self._s = session
    n = len(session.watch_ms)
    self._n = n
    self._ptr = session.start_row
    self._last_t = session.trace_times[session.start_row - 1]
    self._start = 0  # play_video_id: the head of the queue
    self._entered = min(session.window, n)  # videos that have entered the queue
    self._counter = [0] * n
    self._levels = [[] for _ in range(n)]
    self._buffer = [0] * n
    self._timeline = [0] * n
    self._preload = [0] * n
    self._last_chunk_level = [-1] * n
    self._qoe = 0.0
    self._quality = 0.0
    self._rebuffer_s = 0.0
    self._smoothness = 0.0
    self._bytes = 0
    self._wasted = 0
    self._downloaded_ms = 0
    self._steps = 0
    self._invalid = 0
    self._aborted = False
    self._startup_ms = 0
    self._played_ms = 0
    self._rebuf_ms = 0
    self._wall_ms = 0
    self._dropped_ms = 0

  # --- Observation (client-visible, read-only copies) -----------------------

  @property
  def done(self) -> bool:
    return self._start >= self._n or self._aborted

  @property
  def play_video_id(self) -> int:
    return self._start

  @property
  def queue_len(self) -> int:
    return max(0, min(self._s.window, self._n - self._start))

  @property
  def num_videos(self) -> int:
    return self._n

  @property
  def num_levels(self) -> int:
    return len(self._s.bitrates_kbps)

  @property
  def bitrates_kbps(self) -> tuple:
    return tuple(self._s.bitrates_kbps)

  def num_chunks(self, video_id: int) -> int:
    """Number of chunks of session video video_id (catalog information)."""
    return len(self._s.chunk_sizes[video_id])

  def chunk_size(self, video_id: int, chunk: int, level: int) -> int:
    """Bytes of chunk `chunk` of session video video_id at `level` (catalog information)."""
    return self._s.chunk_sizes[video_id][chunk][level]

  def slots(self) -> list[SlotView]:
    """The queue window, index 0 = the playing video; empty once the session is over."""
    return [
        SlotView(
            video_id=v,
            buffer_ms=self._buffer[v],
            play_timeline_ms=self._timeline[v],
            chunk_counter=self._counter[v],
            num_chunks=len(self._s.chunk_sizes[v]),
            levels=list(self._levels[v]),
            preload_size=self._preload[v],
        )
        for v in range(self._start, self._start + self.queue_len)
    ]

  # --- Stepping --------------------------------------------------------------

  def step(self, video_id_abs: int, level: int, sleep_ms) -> StepResult:
    """Runs one action: a download if sleep_ms == 0, else a sleep of sleep_ms ms."""
    if self.done:
      raise RuntimeError("the session is over")
    s = self._s
    played_before = self._played_ms
    sleep_len = self._sleep_length(sleep_ms)
    invalid = sleep_len is None or (
        sleep_len == 0 and not self._valid_download(video_id_abs, level))
    if invalid:
      sleep_len = s.invalid_sleep_ms
      self._invalid += 1

    if sleep_len == 0:
      quality_kbps, smooth_kbps = self._score_download(video_id_abs, level)
      delay, rebuf, size, end_of_video, wasted = self._download(video_id_abs, level)
    else:
      quality_kbps, smooth_kbps, size, delay = 0.0, 0.0, 0, sleep_len
      if s.wall_clock_trace:
        self._advance_cursor(sleep_len / 1000)
      rebuf, wasted = self._play(sleep_len)
      end_of_video = self.done or self._counter[self._start] >= len(s.chunk_sizes[self._start])

    alpha, beta, gamma, theta = s.weights
    quality = quality_kbps / 1000
    rebuffer_s = rebuf / 1000
    smoothness = smooth_kbps / 1000
    megabits = size * 8 / 1e6
    qoe_step = alpha * quality - beta * rebuffer_s - gamma * smoothness
    self._qoe += qoe_step
    self._quality += quality
    self._rebuffer_s += rebuffer_s
    self._smoothness += smoothness
    self._bytes += size
    self._wasted += wasted
    self._steps += 1
    self._wall_ms += delay
    if played_before == 0 and self._played_ms == 0:
      self._startup_ms += rebuf
    if self._qoe < s.min_qoe:
      self._aborted = True
    return StepResult(
        delay_ms=delay,
        rebuf_ms=rebuf,
        video_size=size,
        end_of_video=end_of_video,
        play_video_id=self._start,
        wasted_bytes=wasted,
        quality_kbps=quality_kbps,
        smooth_kbps=smooth_kbps,
        quality=quality,
        rebuffer_s=rebuffer_s,
        smoothness=smoothness,
        megabits=megabits,
        reward=qoe_step - theta * megabits,
        invalid=invalid,
        done=self.done,
    )

  def _sleep_length(self, sleep_ms):
    """0 for a download, the whole ms of a valid sleep, None for an invalid sleep."""
    if sleep_ms == 0:
      return 0
    if not 1 <= sleep_ms < math.inf:  # negative, NaN, infinite or a sub-ms no-op
      return None
    return int(sleep_ms)

  def _valid_download(self, video_id, level) -> bool:
    video_id, level = operator.index(video_id), operator.index(level)
    in_window = self._start <= video_id < self._start + self.queue_len
    return (in_window and 0 <= level < self.num_levels
            and self._counter[video_id] < len(self._s.chunk_sizes[video_id]))

  def _score_download(self, vid: int, level: int) -> tuple[float, float]:
    """Quality and smoothness (kbps) of downloading the next chunk of vid (5.2 step 1).

    Also records the level of vid's last watched chunk for the next video's
    transition term, as the reference does at this point.
    """
    br = self._s.bitrates_kbps
    c = self._counter[vid]
    m = self._s.watch_ms[vid] // CHUNK_MS  # the last chunk the user reaches
    if c > m:
      return 0.0, 0.0
    quality = float(br[level])
    smooth = 0.0
    if c == m:
      self._last_chunk_level[vid] = level
      nxt = vid + 1
      if nxt < self._start + self.queue_len and self._counter[nxt] > 0:
        next_kbps = br[self._levels[nxt][0]]
        # Quirk 2: the reference charges the full next bitrate, not the switch.
        smooth += next_kbps if self._s.reference_quirks else abs(quality - next_kbps)
    if c == 0:
      prev = self._last_chunk_level[vid - 1] if vid > 0 else -1
      if prev != -1:
        smooth += abs(quality - br[prev])
    else:
      smooth += abs(quality - br[self._levels[vid][c - 1]])
    return quality, smooth

  def _download(self, vid: int, level: int):
    """Downloads the next chunk of vid while playing (5.3-5.5).

    Returns (delay_ms, rebuf_ms, size, end_of_video, wasted_bytes).
    """
    s = self._s
    c = self._counter[vid]
    size = s.chunk_sizes[vid][c][level]
    # The level is recorded at the start, so a swipe during this download
    # already counts the in-flight chunk as waste (5.5).
    self._levels[vid].append(level)
    elapsed = self._transmit(size)
    delay = math.floor(elapsed * 1000 + s.rtt_ms + 0.5)
    if s.wall_clock_trace:
      self._advance_cursor(s.rtt_ms / 1000)
    rebuf, wasted = self._play(delay)
    self._downloaded_ms += CHUNK_MS
    if vid < self._start:  # swiped away during its own download
      if s.reference_quirks:
        wasted += size  # quirk 4: counted a second time
      end_of_video = True
    else:
      self._counter[vid] += 1
      self._buffer[vid] += CHUNK_MS
      self._preload[vid] += size
      end_of_video = self._counter[vid] >= len(s.chunk_sizes[vid])
    return delay, rebuf, size, end_of_video, wasted

  def _transmit(self, size: int) -> float:
    """Seconds to send `size` bytes from the trace cursor, moving the cursor (5.3)."""
    t, bw, frac = self._s.trace_times, self._s.trace_mbps, self._s.payload
    elapsed = 0.0
    sent = 0.0
    while True:
      throughput = bw[self._ptr] * 1e6 / 8
      slot = t[self._ptr] - self._last_t
      payload = throughput * slot * frac
      if sent + payload > size:
        rest = (size - sent) / (throughput * frac)
        elapsed += rest
        self._last_t += rest
        return elapsed
      sent += payload
      elapsed += slot
      self._next_row()

  def _advance_cursor(self, seconds: float) -> None:
    """Moves the trace cursor by `seconds` without sending (wall_clock_trace mode)."""
    t = self._s.trace_times
    while True:
      slot = t[self._ptr] - self._last_t
      if seconds < slot:
        self._last_t += seconds
        return
      seconds -= slot
      self._next_row()

  def _next_row(self) -> None:
    t = self._s.trace_times
    self._last_t = t[self._ptr]
    self._ptr += 1
    if self._ptr == len(t):
      self._ptr = 1
      self._last_t = t[0]

  def _play(self, duration_ms: int) -> tuple[int, int]:
    """Plays for duration_ms of wall clock (5.4); returns (rebuf_ms, wasted_bytes)."""
    watch = self._s.watch_ms
    left = duration_ms
    wasted = 0
    stalled = False
    while left > 0 and not stalled and self._start < self._n:
      h = self._start
      remain = watch[h] - self._timeline[h]
      x = min(left, remain)
      played = min(self._buffer[h], x)
      stalled = self._buffer[h] < x
      self._timeline[h] += played
      self._buffer[h] = max(self._buffer[h] - x, 0)
      self._played_ms += played
      left -= played
      if played == remain:
        wasted += self._swipe()
    if stalled:
      self._rebuf_ms += left
      return left, wasted
    self._dropped_ms += left  # nonzero only when the last video was swiped
    return 0, wasted

  def _swipe(self) -> int:
    """Removes the head video (its watch time is reached); returns its wasted bytes (5.5)."""
    h = self._start
    sizes = self._s.chunk_sizes[h]
    first_unwatched = -(-self._s.watch_ms[h] // CHUNK_MS)
    wasted = sum(sizes[j][lv] for j, lv in enumerate(self._levels[h]) if j >= first_unwatched)
    self._start += 1
    self._entered = min(self._n, self._start + self._s.window)
    return wasted

  # --- Metrics ---------------------------------------------------------------

  def metrics(self) -> dict:
    """Per-session metrics so far (SYSTEM.md section 5); score = qoe - theta * megabits."""
    theta = self._s.weights[3]
    megabits = self._bytes * 8 / 1e6
    watched_ms = sum(self._s.watch_ms[:self._entered])
    return {
        "score": self._qoe - theta * megabits,
        "qoe": self._qoe,
        "quality": self._quality,
        "rebuffer_s": self._rebuffer_s,
        "smoothness": self._smoothness,
        "megabits": megabits,
        "bandwidth_bytes": self._bytes,
        "wasted_bytes": self._wasted,
        "download_watch_ratio": self._downloaded_ms / watched_ms if watched_ms else math.inf,
        "total_downloaded_ms": self._downloaded_ms,
        "total_watched_ms": watched_ms,
        "steps": self._steps,
        "invalid_actions": self._invalid,
        "aborted": self._aborted,
        "startup_delay_ms": self._startup_ms,
        "total_played_ms": self._played_ms,
        "total_rebuf_ms": self._rebuf_ms,
        "total_wall_ms": self._wall_ms,
        "dropped_ms": self._dropped_ms,
    }
