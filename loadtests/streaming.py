"""Streamed and long-form transcription: live latency, whole-recording speed, SSE, in one run.

Starts the real server once (local placement, speech-ctc only, loopback) and measures:
  1. live streams over gRPC TranscribeStream at 1, 4 and 16 streams at once, each fed its own
     espeak-ng recording (loadtests/recording.py, a different seed per stream) in 100 ms s16le
     chunks in real time: chunk k leaves when a microphone would have it, at (k + 1) x 100 ms.
     Per point: the time from the true end of each utterance's speech to the arrival of the
     segment that holds that end (p50 / p90 / p99 / max over every stream's utterances; the
     speech end is where the utterance's noiseless rendering falls silent: espeak-ng ends each
     clip with about 0.4 s of silence, which the recording's utterance times include), the
     time to each stream's first segment text, the final transcript's WER per stream (mean),
     failed streams, and the CPU the server used (psutil, the server and its children);
  2. whole recordings over POST /v1/transcribe: a 60 s one and a 590 s one (10 recordings of
     59 s; max_audio_seconds is 600), median wall time of 3 and the real-time factor; the
     60 s recording's WER sent whole vs utterance by utterance;
  3. POST /v1/transcribe?stream=true of the 60 s recording as a whole file (server-sent
     events): time to the first event and to the transcript event (median of 3).
Writes reports/streaming/streaming.md, .json and .png (latency after speech end vs streams).
Not a test: numbers depend on the machine. About 4 minutes with the defaults (each live point
is one pass of its recording, 60 s plus the tail); `--quick` (1 and 4 streams, 30 s
recordings, a 118 s long recording, 1 repeat): about 1.5 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import inspect
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np
import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import service.protocols.proto.stubs  # noqa: E402, F401
from loadtests.payloads import wav  # noqa: E402
from loadtests.recording import Recording, build_recording  # noqa: E402
from loadtests.server import Server, start_server, stop_server  # noqa: E402
from service.processing.speech import SAMPLE_RATE, error_rates  # noqa: E402
from service.processing.vad import Segmenter  # noqa: E402
from service.protocols.proto.gen import deepserve_pb2 as pb  # noqa: E402
from service.protocols.proto.gen import deepserve_pb2_grpc  # noqa: E402

MIN_SILENCE_S = inspect.signature(Segmenter).parameters["min_silence_s"].default
"""How long a pause the segmenter waits for before it closes a segment (part of every lag)."""

MODEL = "speech-ctc"
CHUNK_S = 0.1
LIVE_SEED = 5000
LONG_SEED = 6000
LONG_PART_S = 59.0
SILENCE_DB = -50.0
"""Below this (of an utterance's peak) its noiseless rendering counts as silent."""
TAIL_S = 120.0
"""A live stream may run this long past its last chunk before the client gives up."""


# --- measurements -----------------------------------------------------------------------------


@dataclass
class StreamResult:
    """One live stream: when each utterance's text arrived, and how it ended."""

    lags_s: list[float] = field(default_factory=list)
    """Per matched utterance: arrival of its segment minus the true end of its speech."""
    unmatched: int = 0
    """Utterances whose true end lies in no segment."""
    extra_segments: int = 0
    """Segments with text that hold no utterance's end."""
    first_text_s: float | None = None
    """From the stream's start (its first chunk's audio) to its first segment with text."""
    first_utterance_s: float | None = None
    """From the stream's start to the segment holding the first utterance's end."""
    final_after_last_chunk_s: float | None = None
    wer: float | None = None
    error: str = ""


@dataclass
class LivePoint:
    streams: int
    recording_s: float
    utterances: int
    matched: int
    lag_p50_s: float
    lag_p90_s: float
    lag_p99_s: float
    lag_max_s: float
    first_text_median_s: float
    first_text_max_s: float
    first_utterance_median_s: float
    """From the stream's start to the arrival of its first utterance's text."""
    first_speech_end_median_s: float
    """When the first utterance's speech ends in the audio (first text cannot come earlier)."""
    final_after_last_chunk_max_s: float
    mean_wer: float
    max_wer: float
    failed: int
    errors: list[str]
    extra_segments: int
    """Segments with text that hold no utterance's end (split utterances, noise)."""
    server_cpu_cores: float
    """CPU seconds of the server's processes per wall second over the point."""
    server_processes: int
    client_cpu_cores: float
    """This process (the streams' client) likewise."""
    machine_cpu_percent: float
    """All cores, every process on the machine (others' work included)."""
    wall_s: float


@dataclass
class WholeRun:
    label: str
    audio_s: float
    walls_s: list[float]
    median_s: float
    rtf: float
    """Median wall time / audio length."""
    segments: int
    wer: float
    statuses: list[int]


@dataclass
class SseRun:
    audio_s: float
    first_event_s: list[float]
    transcript_s: list[float]
    events: int
    wer: float


def pcm_chunks(audio: np.ndarray) -> list[bytes]:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = round(CHUNK_S * SAMPLE_RATE) * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


@dataclass
class LiveRecording:
    """A recording with the true end of each utterance's speech."""

    recording: Recording
    speech_ends_s: list[float]
    """Per utterance: the end of its speech (before espeak-ng's trailing silence)."""


def live_recording(seconds: float, seed: int) -> LiveRecording:
    """build_recording(seconds, seed), and where each utterance's speech ends: its clip
    rendered again without noise (as build_recording renders it, from the same specs), up to
    its last sample above SILENCE_DB of its peak."""
    from export.data import speech

    recording = build_recording(seconds, seed)
    specs = iter(speech.make_specs("test", 400, seed))
    ends = []
    for start, end, text in recording.utterances:
        spec = next(specs)
        assert spec.text == text, (spec.text, text)  # the same specs, in the same order
        clean = speech.synthesize(spec.text, spec.voice, spec.speed, spec.pitch)
        quiet = dataclasses.replace(spec, snr_db=None, lead_s=0.0, trail_s=0.0)
        clip = np.abs(speech.render(quiet, clean))
        assert abs(len(clip) / SAMPLE_RATE - (end - start)) < 1e-3, (text, len(clip))
        loud = np.flatnonzero(clip > clip.max() * 10.0 ** (SILENCE_DB / 20.0))
        ends.append(start + (int(loud[-1]) + 1) / SAMPLE_RATE if len(loud) else end)
    return LiveRecording(recording, ends)


def utterance_lags(
    live: LiveRecording, segments: list[tuple[float, pb.TranscribedSegment]]
) -> tuple[list[float], int, int]:
    """For each utterance, its segment's arrival minus its true speech end (the segment is the
    one whose [start_s, end_s] holds that end); how many utterances no segment holds; how many
    segments with text hold no utterance's end."""
    lags, unmatched, used = [], 0, set()
    for end in live.speech_ends_s:
        found = next(((at, s) for at, s in segments if s.start_s <= end <= s.end_s), None)
        if found is None:
            unmatched += 1
        else:
            lags.append(found[0] - end)
            used.add(found[1].index)
    extra = sum(1 for _, s in segments if s.text and s.index not in used)
    return lags, unmatched, extra


async def live_stream(target: str, live: LiveRecording, offset_s: float) -> StreamResult:
    """Feed `recording` in real time (chunk k sent at (k + 1) x CHUNK_S after the start, when a
    microphone would have it); times are seconds of the recording's own clock."""
    recording = live.recording
    chunks = pcm_chunks(recording.audio)
    await asyncio.sleep(offset_s)
    started = time.monotonic()
    sent_all = 0.0

    async def messages():
        nonlocal sent_all
        for index, chunk in enumerate(chunks):
            await asyncio.sleep(max(0.0, started + (index + 1) * CHUNK_S - time.monotonic()))
            yield pb.AudioChunk(audio=chunk, model=MODEL if index == 0 else "")
        sent_all = time.monotonic() - started

    result = StreamResult()
    segments: list[tuple[float, pb.TranscribedSegment]] = []
    final: pb.TranscribeResponse | None = None
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = deepserve_pb2_grpc.InferenceStub(channel)
            call = stub.TranscribeStream(messages(), timeout=recording.seconds + TAIL_S)
            async for event in call:
                at = time.monotonic() - started
                if event.HasField("segment"):
                    segments.append((at, event.segment))
                    if result.first_text_s is None and event.segment.text:
                        result.first_text_s = at
                elif event.HasField("transcript"):
                    final = event.transcript
                    result.final_after_last_chunk_s = at - sent_all
    except grpc.aio.AioRpcError as error:
        result.error = f"{error.code().name}: {error.details()}"
        return result
    if final is None:
        result.error = "the stream ended without a transcript event"
        return result
    if [s.index for _, s in segments] != list(range(len(final.segments))):
        result.error = f"{len(segments)} segment events, {len(final.segments)} in the transcript"
    result.lags_s, result.unmatched, result.extra_segments = utterance_lags(live, segments)
    first_end = live.speech_ends_s[0]
    result.first_utterance_s = next(
        (at for at, s in segments if s.start_s <= first_end <= s.end_s), None
    )
    result.wer = error_rates([recording.transcript], [final.text])["wer"]
    return result


def median(values: list[float | None]) -> float:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else float("nan")


def cpu_seconds(server: Server) -> tuple[float, int]:
    """(user + system CPU seconds, count) of the server and every process it started."""
    root = psutil.Process(server.process.pid)
    total, count = 0.0, 0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
        count += 1
    return total, count


def own_cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def live_point(server: Server, recordings: list[LiveRecording], streams: int) -> LivePoint:
    """`streams` live streams at once, started within one chunk of each other (staggered so
    that their chunks interleave), each with its own recording."""

    async def run() -> list[StreamResult]:
        return await asyncio.gather(
            *(
                live_stream(server.grpc_target, recordings[i], i * CHUNK_S / streams)
                for i in range(streams)
            )
        )

    (cpu_before, _), machine_before = cpu_seconds(server), psutil.cpu_times()
    client_before = own_cpu_seconds()
    started = time.monotonic()
    results = asyncio.run(run())
    wall = time.monotonic() - started
    cpu_after, processes = cpu_seconds(server)
    server_cores = (cpu_after - cpu_before) / wall
    client_cores = (own_cpu_seconds() - client_before) / wall
    machine_after = psutil.cpu_times()
    busy = sum(machine_after) - machine_after.idle - (sum(machine_before) - machine_before.idle)
    machine_percent = 100.0 * busy / max(1e-9, sum(machine_after) - sum(machine_before))

    ok = [r for r in results if not r.error]
    lags = [lag for r in ok for lag in r.lags_s]
    firsts = [r.first_text_s for r in ok if r.first_text_s is not None]
    wers = [r.wer for r in ok if r.wer is not None]
    tails = [r.final_after_last_chunk_s for r in ok if r.final_after_last_chunk_s is not None]

    def pct(q: float) -> float:
        return float(np.percentile(lags, q)) if lags else float("nan")

    used = recordings[:streams]
    point = LivePoint(
        streams=streams,
        recording_s=used[0].recording.seconds,
        utterances=sum(len(r.speech_ends_s) for r in used),
        matched=len(lags),
        lag_p50_s=pct(50),
        lag_p90_s=pct(90),
        lag_p99_s=pct(99),
        lag_max_s=max(lags, default=float("nan")),
        first_text_median_s=median(firsts),
        first_text_max_s=max(firsts, default=float("nan")),
        first_utterance_median_s=median([r.first_utterance_s for r in ok]),
        first_speech_end_median_s=statistics.median(r.speech_ends_s[0] for r in used),
        final_after_last_chunk_max_s=max(tails, default=float("nan")),
        mean_wer=statistics.fmean(wers) if wers else float("nan"),
        max_wer=max(wers, default=float("nan")),
        failed=len(results) - len(ok),
        errors=[r.error for r in results if r.error],
        extra_segments=sum(r.extra_segments for r in ok),
        server_cpu_cores=server_cores,
        server_processes=processes,
        client_cpu_cores=client_cores,
        machine_cpu_percent=machine_percent,
        wall_s=wall,
    )
    print(
        f"live x{streams:<2} lag p50 {point.lag_p50_s:.3f} p90 {point.lag_p90_s:.3f} "
        f"p99 {point.lag_p99_s:.3f} max {point.lag_max_s:.3f} s; first text "
        f"{point.first_text_median_s:.2f} s; WER {point.mean_wer:.4f}; failed {point.failed}; "
        f"matched {point.matched}/{point.utterances} (+{point.extra_segments}); server "
        f"{server_cores:.2f} cores ({processes} processes), client {client_cores:.2f}",
        flush=True,
    )
    return point


def post_transcribe(server: Server, audio: np.ndarray) -> tuple[float, int, dict]:
    """(wall seconds, status, answer) of one POST /v1/transcribe of `audio` as a WAV."""
    data = wav(audio)
    started = time.monotonic()
    response = requests.post(
        f"{server.url}/v1/transcribe",
        data=data,
        headers={"Content-Type": "audio/wav"},
        timeout=300,
    )
    wall = time.monotonic() - started
    answer = response.json() if response.status_code == 200 else {"error": response.text[:300]}
    return wall, response.status_code, answer


def whole_run(server: Server, label: str, recording: Recording, repeats: int) -> WholeRun:
    walls, statuses, answer = [], [], {}
    for _ in range(repeats):
        wall, status, reply = post_transcribe(server, recording.audio)
        walls.append(wall)
        statuses.append(status)
        if status == 200:
            answer = reply
        else:
            print(f"{label}: HTTP {status} after {wall:.1f} s: {reply}", flush=True)
    ok_walls = [w for w, s in zip(walls, statuses) if s == 200] or walls
    median = statistics.median(ok_walls)
    text = answer.get("text", "")
    run = WholeRun(
        label=label,
        audio_s=recording.seconds,
        walls_s=walls,
        median_s=median,
        rtf=median / recording.seconds,
        segments=len(answer.get("segments", [])),
        wer=error_rates([recording.transcript], [text])["wer"] if answer else float("nan"),
        statuses=statuses,
    )
    print(
        f"whole {label}: {recording.seconds:.0f} s audio, median {median:.2f} s "
        f"(RTF {run.rtf:.4f}), {run.segments} segments, WER {run.wer:.4f}, HTTP {statuses}",
        flush=True,
    )
    return run


def one_by_one_wer(server: Server, recording: Recording) -> tuple[float, float]:
    """(WER, total wall seconds) with each utterance sent alone, as utterance_audio cuts it."""
    texts, started = [], time.monotonic()
    for index in range(len(recording.utterances)):
        _, status, answer = post_transcribe(server, recording.utterance_audio(index))
        texts.append(answer.get("text", "") if status == 200 else "")
    wall = time.monotonic() - started
    return error_rates([recording.transcript], [" ".join(t for t in texts if t)])["wer"], wall


def sse_run(server: Server, recording: Recording, repeats: int) -> SseRun:
    data = wav(recording.audio)
    firsts, finals, events, text = [], [], 0, ""
    for _ in range(repeats):
        started = time.monotonic()
        first, count, kind = None, 0, ""
        with requests.post(
            f"{server.url}/v1/transcribe?stream=true",
            data=data,
            headers={"Content-Type": "audio/wav"},
            stream=True,
            timeout=300,
        ) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.startswith(b"event: "):
                    kind = line[7:].decode()
                    first = first if first is not None else time.monotonic() - started
                elif line.startswith(b"data: "):
                    count += 1
                    if kind == "transcript":
                        finals.append(time.monotonic() - started)
                        text = json.loads(line[6:])["text"]
                    elif kind == "error":
                        raise RuntimeError(f"SSE error event: {line[6:].decode()}")
        firsts.append(first if first is not None else float("nan"))
        events = count
    run = SseRun(
        audio_s=recording.seconds,
        first_event_s=firsts,
        transcript_s=finals,
        events=events,
        wer=error_rates([recording.transcript], [text])["wer"],
    )
    print(
        f"sse: first event {statistics.median(firsts):.3f} s, transcript "
        f"{statistics.median(finals):.3f} s, {events} events",
        flush=True,
    )
    return run


def long_recording(parts: int) -> Recording:
    """`parts` recordings of LONG_PART_S end to end (utterance times shifted)."""
    pieces = [build_recording(LONG_PART_S, seed=LONG_SEED + i) for i in range(parts)]
    audio, utterances, voices, offset = [], [], [], 0.0
    for piece in pieces:
        audio.append(piece.audio)
        utterances += [
            (start + offset, end + offset, text) for start, end, text in piece.utterances
        ]
        voices += piece.voices
        offset += piece.seconds
    return Recording(np.concatenate(audio), utterances, voices)


# --- report -----------------------------------------------------------------------------------


def markdown(report: dict, command: str) -> str:
    live = [LivePoint(**p) for p in report["live"]]
    lines = [
        f"speech-ctc, local placement, one server, loopback (`{command}`, "
        f"{report['run_s'] / 60:.1f} min). Recordings: espeak-ng commands and digit strings, "
        "held-out voices, pauses of 0.5-1.5 s, noise at 30 dB SNR (loadtests/recording.py).",
        "",
        "**Live streams** (gRPC TranscribeStream, 100 ms s16le chunks in real time, each stream "
        "its own recording; chunk k sent at (k + 1) x 100 ms). *Lag* = arrival of the segment "
        "holding an utterance's speech end minus that end (includes the "
        f"{MIN_SILENCE_S:g} s of silence the VAD waits for, its hangover after the speech, and "
        "up to 100 ms of chunking). *Extra*: "
        "segments with text that hold no utterance's end. *First text*: from the stream's "
        "start to its first segment with text, and to the text of its first utterance, whose "
        "speech ends at the median shown. CPU: the server's "
        "processes / this client (cores), and the whole machine (others' work included).",
        "",
        "| streams | audio s | utterances matched (extra) | lag p50 s | p90 s | p99 s | max s | "
        "first text s (median / max) | 1st utterance text s | its speech end s | "
        "final after last chunk s (max) | "
        "WER mean (max) | failed | CPU server / client | machine CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in live:
        lines.append(
            f"| {p.streams} | {p.recording_s:.0f} | {p.matched}/{p.utterances} "
            f"({p.extra_segments}) | "
            f"{p.lag_p50_s:.3f} | {p.lag_p90_s:.3f} | {p.lag_p99_s:.3f} | {p.lag_max_s:.3f} | "
            f"{p.first_text_median_s:.2f} / {p.first_text_max_s:.2f} | "
            f"{p.first_utterance_median_s:.2f} | {p.first_speech_end_median_s:.2f} | "
            f"{p.final_after_last_chunk_max_s:.3f} | "
            f"{p.mean_wer:.4f} ({p.max_wer:.4f}) | {p.failed} | {p.server_cpu_cores:.2f} / "
            f"{p.client_cpu_cores:.2f} | "
            f"{p.machine_cpu_percent:.0f} |"
        )
    errors = [e for p in live for e in p.errors]
    if errors:
        lines += ["", "Failed streams: " + "; ".join(sorted(set(errors)))]
    repeats = report["repeats"]
    lines += [
        "",
        f"**Whole recordings** (POST /v1/transcribe, WAV; median of {repeats}; RTF = wall / "
        "audio length).",
        "",
        "| recording | audio s | wall s (median) | walls s | RTF | segments | WER | HTTP |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for w in (WholeRun(**w) for w in report["whole"]):
        walls = ", ".join(f"{x:.2f}" for x in w.walls_s)
        statuses = ", ".join(str(s) for s in w.statuses)
        lines.append(
            f"| {w.label} | {w.audio_s:.0f} | {w.median_s:.2f} | {walls} | {w.rtf:.4f} | "
            f"{w.segments} | {w.wer:.4f} | {statuses} |"
        )
    obo = report["one_by_one"]
    lines += [
        "",
        f"WER of the {report['whole'][0]['audio_s']:.0f} s recording: whole "
        f"{report['whole'][0]['wer']:.4f}, one by one {obo['wer']:.4f} ({obo['utterances']} "
        f"utterances, each alone with 0.25 s around it; {obo['wall_s']:.1f} s in all).",
    ]
    sse = SseRun(**report["sse"])
    lines += [
        "",
        f"**Server-sent events** (POST /v1/transcribe?stream=true, the {sse.audio_s:.0f} s "
        f"recording as a whole file; median of {len(sse.first_event_s)}).",
        "",
        "| first event s | transcript event s | events | WER |",
        "|---|---|---|---|",
        f"| {statistics.median(sse.first_event_s):.3f} | "
        f"{statistics.median(sse.transcript_s):.3f} | {sse.events} | {sse.wer:.4f} |",
    ]
    if report["server_log_errors"]:
        lines += ["", f"Server log: {len(report['server_log_errors'])} error lines (see JSON)."]
    return "\n".join(lines)


def plot(live: list[LivePoint], out: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    streams = [p.streams for p in live]
    for values, label in (
        ([p.lag_p50_s for p in live], "p50"),
        ([p.lag_p99_s for p in live], "p99"),
        ([p.lag_max_s for p in live], "max"),
    ):
        ax.plot(streams, values, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(streams, [str(s) for s in streams])
    ax.set_xlabel("concurrent live streams (real time, 100 ms chunks)")
    ax.set_ylabel("segment arrival after speech end (s)")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.set_title("speech-ctc TranscribeStream: latency after speech end")
    fig.tight_layout()
    fig.savefig(out / "streaming.png", dpi=100)
    plt.close(fig)
    return True


def log_errors(server: Server) -> list[str]:
    needles = ("Traceback", "ERROR", "Exception")
    return [line for line in server.log().splitlines() if any(n in line for n in needles)][:50]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 4 streams, 30 s recordings")
    parser.add_argument("--streams", default=None, help="live points (default 1,4,16)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "streaming")
    args = parser.parse_args()
    levels = [int(s) for s in (args.streams or ("1,4" if args.quick else "1,4,16")).split(",")]
    seconds, long_parts, repeats = (30.0, 2, 1) if args.quick else (60.0, 10, 3)
    command = "python loadtests/streaming.py" + (" --quick" if args.quick else "")

    run_started = time.monotonic()
    print("building recordings ...", flush=True)
    lives = [live_recording(seconds, seed=LIVE_SEED + i) for i in range(max(levels))]
    recording = lives[0].recording
    long = long_recording(long_parts)
    env = {"DEEPSERVE_MODELS": json.dumps([MODEL]), "DEEPSERVE_PLACEMENT": "local"}
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), env)
        try:
            post_transcribe(server, recording.utterance_audio(0))  # warm-up
            live = [live_point(server, lives, n) for n in levels]
            whole = [
                whole_run(server, f"{seconds:.0f} s", recording, repeats),
                whole_run(server, f"{long.seconds:.0f} s", long, repeats),
            ]
            obo_wer, obo_wall = one_by_one_wer(server, recording)
            print(f"one by one: WER {obo_wer:.4f} ({obo_wall:.1f} s)", flush=True)
            sse = sse_run(server, recording, repeats)
            errors = log_errors(server)
        finally:
            stop_server(server)
    report = {
        "run_s": time.monotonic() - run_started,
        "quick": args.quick,
        "repeats": repeats,
        "chunk_s": CHUNK_S,
        "live_seeds": [LIVE_SEED + i for i in range(max(levels))],
        "live": [asdict(p) for p in live],
        "whole": [asdict(w) for w in whole],
        "one_by_one": {
            "wer": obo_wer,
            "wall_s": obo_wall,
            "utterances": len(recording.utterances),
        },
        "sse": asdict(sse),
        "server_log_errors": errors,
    }
    table = markdown(report, command)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "streaming.md").write_text(table + "\n")
    (args.out / "streaming.json").write_text(json.dumps(report, indent=2))
    plotted = plot(live, args.out)
    print("\n" + table)
    print(f"\nwrote {args.out}/streaming.md, .json" + (", .png" if plotted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
