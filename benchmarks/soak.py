"""Soak: the pipeline on a live, looping RTSP feed for a long time; fails if memory, file
descriptors, threads or latency creep up (or throughput creeps down).

    python benchmarks/soak.py --minutes 30
    python benchmarks/soak.py --minutes 3 --every 5 --preset road --backend onnxruntime --out soak.csv

What runs: the local GStreamer RTSP test server (tests/rtsp_server.py on the system Python)
serves VIDEO (default: the shared solidWhiteRight.mp4, 221 frames, so it loops every ~15 s at
15 fps) over H.264/RTSP, paced as a live camera, with the wall-clock time burned into the top-left
corner of every frame as 40 black and white blocks (tests/clock_code.py). The segengine
Pipeline (the real PRESET with its real weights, on BACKEND; the overlay is rendered, no sinks)
reads it like any camera. Every EVERY seconds the benchmark samples its own process: RSS, open
file descriptors, OS threads (native ones included), and over the last window the results'
rate, glass-to-glass latency, the pipeline's own capture-to-result latency, the process's CPU
time per result, the CPU every other process used (a neighbour's load), and the source's
counters (frames read, dropped, reconnects, timestamp gaps).

Glass-to-glass latency, per result: the server reads ``time.time()`` (ms) right before it pushes
the frame into its encoder and burns it into the picture; the benchmark reads ``time.time()``
when the pipeline yields that frame's result (decoded, inferred, tracked, lanes fitted, overlay
rendered) and decodes the time from ``result.frame.image``. Both clocks are this machine's
CLOCK_REALTIME, so the difference is the whole path: encode, RTP over TCP, FFmpeg's RTSP demuxer
and decoder, the capture queue, inference and the caller-side stages. Resolution 1 ms (the code
carries whole milliseconds; both clock reads cost microseconds). A frame whose code does not
read (CRC-8 and a contrast check refuse a smeared one), or that repeats the previous one (the
encoder skipped those blocks), is counted as unreadable, never guessed.

At the end: a table of each metric's curve (min, median, max, first, last, slope per minute over
the samples after the warm-up) and a verdict. A metric trends when its robust slope (Theil-Sen:
the median of all pairwise slopes, so a few spikes do not move it) times the judged span exceeds
all of: REL of its median, an absolute floor, and 3 standard errors of that rise (the noise
around the fitted line, from its MAD); METRICS (soak_trends.py) lists REL and the floor of each. Judged:
rss, fds, threads, latency_p50, cpu_per_result (upward) and fps (downward); the rest is reported.
A neighbour's load moves latency, fps and CPU per result too: a trend in one of those while the
other processes' CPU use rose by over a quarter of a core says so; only a quiet machine gives a
clean verdict on them.

Exit codes: 0 no trend; 1 a trend (each named with its start and end level and slope) or the
pipeline failed; 2 bad usage or a setup failure (no RTSP server, no weights); 3 too few samples
after the warm-up to judge; 130/143 after Ctrl-C/SIGTERM, once the table and verdict of what was
sampled are printed. Every thread and the server process are stopped on every path; the server
also ends if this process is killed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/ (the RTSP server, the clock code), when run as a script
SHARED = Path(os.environ.get("SEGENGINE_SHARED", REPO.parent / "shared"))
DEFAULT_VIDEO = SHARED / "data" / "videos" / "udacity_lanelines_solidWhiteRight.mp4"

from benchmarks.soak_sampling import Sampler, Window  # noqa: E402
from benchmarks.soak_trends import Sample, Trend, curve_table, fmt, judge, verdict  # noqa: E402

# -- the report ------------------------------------------------------------------------------


def write_out(path: Path, samples: Sequence[Sample], trends: dict[str, Trend], config: dict, code: int,
              lines: list[str]) -> None:
    rows = [asdict(s) for s in samples]
    if path.suffix == ".csv":
        with open(path, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(Sample.__dataclass_fields__))
            writer.writeheader()
            writer.writerows(rows)
    else:
        def clean(v):
            return None if isinstance(v, float) and not math.isfinite(v) else v

        doc = {"config": config, "exit_code": code, "verdict": lines,
               "trends": {k: {**{f: clean(v) for f, v in asdict(tr).items()}, "slope_per_min": clean(tr.slope_per_min)}
                          for k, tr in trends.items()},
               "samples": [{k: clean(v) for k, v in row.items()} for row in rows]}
        path.write_text(json.dumps(doc, indent=1) + "\n")


# -- running it ------------------------------------------------------------------------------


def write_raw(video: Path, folder: Path, size: tuple[int, int] | None) -> tuple[Path, int, int, int]:
    """The video's frames as back-to-back I420 (resized to ``size`` = (w, h) if given) in ``folder``:
    (the file, width, height, frames)."""
    import av

    path = folder / "frames.i420"
    count = 0
    with av.open(str(video)) as container, open(path, "wb") as out:
        for frame in container.decode(video=0):
            w, h = size or (frame.width, frame.height)
            w, h = w - w % 2, h - h % 2
            out.write(frame.reformat(width=w, height=h, format="yuv420p").to_ndarray().tobytes())
            count += 1
    if not count:
        raise ValueError(f"{video}: no video frames")
    return path, w, h, count


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to measure, from the first result")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples (default 5)")
    parser.add_argument("--warmup", type=float, help="seconds of samples left out of the trends "
                        "(default: 20 %% of the run, at most 120)")
    parser.add_argument("--preset", default="road", help="the preset to run (default road)")
    parser.add_argument("--backend", default="auto", help="auto, onnxruntime, openvino, tensorrt or torch")
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16, int8 (the backend's)")
    parser.add_argument("--interval", default="1", help="run the networks on every Nth frame, or auto")
    parser.add_argument("--no-render", action="store_true", help="skip drawing the overlay")
    parser.add_argument("--video", default=str(DEFAULT_VIDEO),
                        help="what the server loops (default: the shared solidWhiteRight.mp4), or 'synthetic' "
                             "for the server's own moving band")
    parser.add_argument("--size", help="WxH the server serves (default: the video's own; 640x360 for synthetic)")
    parser.add_argument("--fps", type=int, default=15, help="the feed's frame rate (default 15)")
    parser.add_argument("--model-dir", help="weights mirror (default: $SEGENGINE_MODEL_DIR, else the shared "
                        "folder's models/ where there is one)")
    parser.add_argument("--out", action="append", type=Path, default=[],
                        help="write the samples to FILE.csv, or samples + trends + verdict to FILE.json (repeatable)")
    parser.add_argument("--outputs", type=Path, metavar="DIR",
                        help="also write the overlaid MP4 and the JSON lines into DIR (soak.mp4, soak.jsonl)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    parser.add_argument("--progress-every", type=float, default=60.0,
                        help="seconds between status lines when stderr is not a terminal (default 60)")
    args = parser.parse_args(argv)
    if not args.minutes > 0 or not args.every > 0:
        parser.error("--minutes and --every must be > 0")
    if args.every > args.minutes * 60:
        parser.error(f"--every {args.every:g} s is longer than the run ({args.minutes * 60:g} s)")
    for out in args.out:
        if out.suffix not in (".csv", ".json"):
            parser.error(f"--out {out}: the name must end in .csv or .json")
    if args.size:
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            parser.error(f"--size {args.size}: expected WxH, e.g. 960x540")
        args.size = (w, h)
    if args.video != "synthetic" and not Path(args.video).is_file():
        parser.error(f"--video {args.video}: no such file (set SEGENGINE_SHARED, pass a video, or --video synthetic)")
    if args.interval != "auto":
        try:
            args.interval = int(args.interval)
        except ValueError:
            parser.error(f"--interval {args.interval}: a whole number or auto")
    duration = args.minutes * 60
    args.warmup = min(120.0, 0.2 * duration) if args.warmup is None else args.warmup
    if args.warmup < 0 or args.warmup >= duration:
        parser.error(f"--warmup {args.warmup:g} s must be >= 0 and shorter than the run ({duration:g} s)")
    return args


def _exit_now(tmp: Path, code: int) -> None:
    """A second signal during cleanup: the frames file goes, then the process (and with it the server)."""
    shutil.rmtree(tmp, ignore_errors=True)
    os._exit(code)


OUR_THREADS = ("segengine", "capture:", "sink:", "soak-")  # the names the pipeline's and the soak's threads take


def _remove_stale_frames(folder: Path) -> None:
    """Frame files of earlier soaks that were killed (SIGKILL leaves them; ~170 MB each at 960x540)."""
    for stale in folder.glob("soak-*-*"):
        try:
            pid = int(stale.name.split("-")[1])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:  # alive, someone else's
            continue


class Terminated(Exception):
    """SIGTERM, raised in the main thread so that the same cleanup runs as for Ctrl-C."""


def _on_sigterm(_signum, _frame) -> None:
    raise Terminated


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path("/proc/self/statm").exists():
        print("soak: needs Linux (/proc) to sample memory, file descriptors and threads", file=sys.stderr)
        return 2

    from segengine.models.zoo import WeightDirs
    from tests.live_servers import rtsp_unavailable

    reason = rtsp_unavailable()
    if reason is not None:
        print(f"soak: the RTSP test server cannot run: {reason}", file=sys.stderr)
        return 2
    duration = args.minutes * 60
    shared_models = SHARED / "models"
    dirs = WeightDirs.from_env(args.model_dir or os.environ.get("SEGENGINE_MODEL_DIR")
                               or (shared_models if shared_models.is_dir() else None))
    # Ctrl-C ends a soak with its table, whoever started it: a parent that ignores or blocks SIGINT
    # (a CI runner, nohup, a background job) passes that on to its children, and the run would go deaf.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
    run = Run(args, duration)
    try:
        _remove_stale_frames(Path(tempfile.gettempdir()))
        with tempfile.TemporaryDirectory(prefix=f"soak-{os.getpid()}-") as tmp:
            run.execute(Path(tmp), dirs)
    except (KeyboardInterrupt, Terminated) as exc:  # before the pipeline's loop began
        run.interrupted = run.interrupted or ("SIGINT" if isinstance(exc, KeyboardInterrupt) else "SIGTERM")
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, previous_sigterm)
    return run.report(args)


class Run:
    """One soak: the server, the pipeline on the caller's thread, the sampler; then the report."""

    def __init__(self, args: argparse.Namespace, duration: float) -> None:
        self.args, self.duration = args, duration
        self.window = Window()
        self.sampler: Sampler | None = None
        self.interrupted: str | None = None
        self.failure: str | None = None
        self.started = time.monotonic()
        self.startup = float("nan")
        self.config: dict = {}
        self.bar = None
        self._last_line = 0.0

    def execute(self, tmp: Path, dirs) -> None:
        from tqdm import tqdm

        from segengine.backends.base import BackendOptions
        from segengine.capture.factory import open_source
        from segengine.errors import EngineError
        from segengine.pipeline import Pipeline
        from segengine.sinks.factory import open_sinks
        from tests import clock_code
        from tests.live_servers import RtspServer

        args = self.args
        tqdm.monitor_interval = 0  # tqdm's monitor thread would be counted in the thread metric
        try:
            if args.video == "synthetic":
                raw, (width, height), feed = None, args.size or (640, 360), "the server's moving band"
            else:
                raw, width, height, frames = write_raw(Path(args.video), tmp, args.size)
                feed = f"{Path(args.video).name} ({frames} frames) looped"
            clock_code.block_size(width, height)  # too small a frame fails here, not in the server
            server = RtspServer(path="/soak", width=width, height=height, fps=args.fps, raw=raw, clock=True,
                                exit_with_parent=True)
            with server:
                source, sinks = server.url, []
                if args.outputs is not None:  # the real writers too: fragments, fdatasync, JSON lines
                    source = open_source(server.url)
                    source.open()
                    sinks = open_sinks(output=args.outputs / "soak.mp4", json=args.outputs / "soak.jsonl",
                                       show=False, image_dir=None, info=source.info, overwrite=True)
                pipeline = Pipeline(source, preset=args.preset, backend=args.backend, dirs=dirs, sinks=sinks,
                                    render=not args.no_render or bool(sinks), interval=args.interval,
                                    options=BackendOptions(precision=args.precision, dirs=dirs))
                self.config = {
                    "feed": feed, "url": server.url, "width": width, "height": height, "fps": args.fps,
                    "preset": args.preset, "backend": pipeline.choice.name, "backend_reason": pipeline.choice.reason,
                    "precision": args.precision, "interval": args.interval, "render": not args.no_render,
                    "minutes": args.minutes, "every": args.every, "warmup": args.warmup, "machine": _machine(),
                    "started": dt.datetime.now().isoformat(timespec="seconds")}
                print(f"soak: {args.preset} on {pipeline.choice.name} ({pipeline.choice.reason}); feed {server.url}: "
                      f"{feed}, {width}x{height} @ {args.fps} fps, clock burned in; {args.minutes:g} min from the "
                      f"first result, a sample every {args.every:g} s, trends after {args.warmup:g} s; "
                      f"{self.config['machine']}", file=sys.stderr, flush=True)
                self.tty = not args.quiet and sys.stderr.isatty()
                self.bar = tqdm(total=round(self.duration), unit="s", disable=not self.tty, file=sys.stderr,
                                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s{postfix}")
                with pipeline:
                    try:
                        self._consume(pipeline, clock_code)
                    except KeyboardInterrupt:
                        self.interrupted = "SIGINT"
                    except Terminated:
                        self.interrupted = "SIGTERM"
                    finally:
                        # Cleanup is bounded (the pipeline's 5 s deadline, the server's 5 s grace); a
                        # second signal during it ends at once (the server goes too: PR_SET_PDEATHSIG).
                        signal.signal(signal.SIGINT, lambda *_: _exit_now(tmp, 130))
                        signal.signal(signal.SIGTERM, lambda *_: _exit_now(tmp, 143))
                        if self.sampler is not None:
                            self.sampler.stop()
                            self.sampler.join()
                        self.bar.close()
        except EngineError as exc:  # says what was wrong and what to do: no traceback needed
            self.failure = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - reported with its traceback, then the samples so far
            traceback.print_exc()
            self.failure = f"{type(exc).__name__}: {exc}"
        if (self.failure is None and self.interrupted is None and self.sampler is not None
                and self.sampler.samples and self.sampler.samples[-1].t < self.duration - self.args.every):
            self.failure = f"the pipeline's results ended after {self.sampler.samples[-1].t:.0f} s"

    def _consume(self, pipeline, clock_code) -> None:
        """The pipeline's results on this thread, as a user would take them; each one's latency."""
        last_code = None
        for result in pipeline:
            now_ms = time.time_ns() // 1_000_000
            if self.sampler is None:  # the clock starts at the first result (graph built, feed flowing)
                first = time.monotonic()
                self.startup = first - self.started
                self.sampler = Sampler(self.window, self.args.every, first, first + self.duration,
                                       self._on_sample, pipeline.stop)
                self.sampler.start()
            code = clock_code.read_rgb(result.frame.image)
            if code is not None and code == last_code:
                code = None  # the encoder left the code's blocks as they were (skipped): not this frame's time
            last_code = code if code is not None else last_code
            latency = None if code is None else clock_code.latency_ms(code, now_ms)
            if latency is not None and not -1000 < latency < 3_600_000:
                latency = None  # a code that read but cannot be this feed's (a CRC collision)
            self.window.add(latency, result.timings.get("latency", math.nan) * 1e3, result.source)

    def _on_sample(self, s: Sample) -> None:
        text = (f"{s.fps:.1f} fps, g2g p50 {fmt(s.latency_p50, 0)} ms, rss {s.rss:.0f} MB, "
                f"fds {s.fds}, threads {s.threads}, dropped {s.dropped}, reconnects {s.reconnects}")
        if self.tty:
            self.bar.n = min(self.duration, s.t)
            self.bar.set_postfix_str(text)
        elif not self.args.quiet and (s.t - self._last_line >= self.args.progress_every - 1e-3
                                      or s.t >= self.duration - 1e-3):
            self._last_line = s.t
            print(f"soak: {s.t / 60:5.1f} min  {text}", file=sys.stderr, flush=True)

    def report(self, args: argparse.Namespace) -> int:
        interrupted, failure = self.interrupted, self.failure
        signal_code = {"SIGINT": 130, "SIGTERM": 143}.get(interrupted or "", 0)
        samples = self.sampler.samples if self.sampler is not None else []
        if not samples:
            what = failure or (f"interrupted by {interrupted}" if interrupted else "no result from the pipeline")
            print(f"soak: {what}, before the first sample", file=sys.stderr)
            return signal_code or 2
        config, startup = self.config, self.startup
        trends = judge(samples, args.warmup)
        code, lines = verdict(trends, args.warmup)
        if failure:
            code, lines = 1, [f"FAIL: the pipeline failed after {samples[-1].t / 60:.1f} min: {failure}"] + lines
        if interrupted:
            lines.append(f"interrupted by {interrupted} after {samples[-1].t / 60:.1f} of {args.minutes:g} min: "
                         "the verdict covers what was sampled")
        last = samples[-1]
        results = sum(s.results for s in samples)
        unreadable = sum(s.unreadable for s in samples)
        size = f"{config.get('width')}x{config.get('height')}"
        print(f"\nsoak: {len(samples)} samples over {last.t / 60:.1f} min (start-up {startup:.1f} s to the first "
              f"result); {config.get('preset')} on {config.get('backend')}, {size} @ {config.get('fps')} fps")
        print(curve_table(samples, trends))
        print(f"results {results} ({results / max(last.t, 1e-9):.2f} fps); source: {last.frames_read} frames read, "
              f"{last.dropped} dropped ({last.dropped / max(last.frames_read, 1):.1%}), {last.reconnects} reconnects, "
              f"{last.gaps} gaps; clock code unreadable in {unreadable} of {results} results; "
              f"windows without a result: {sum(1 for s in samples if s.results == 0)}")
        print("glass-to-glass: server clock read as the frame went to its encoder -> the pipeline yielding its result "
              "(decoded, inferred, tracked, rendered); same machine's wall clock, 1 ms resolution")
        for line in lines:
            print(line)
        left = [t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
        ours = [name for name in left if name.startswith(OUR_THREADS)]
        if ours:
            print(f"warning: threads of the pipeline or the soak still running after the cleanup: {', '.join(ours)}")
        if len(left) > len(ours):  # e.g. OpenVINO's telemetry starts a concurrent.futures worker at import
            print(f"(threads a library started and keeps: {', '.join(n for n in left if n not in ours)})")
        for out in args.out:
            write_out(out, samples, trends, config, code, lines)
            print(f"samples written to {out}")
        return signal_code or code


if __name__ == "__main__":
    sys.exit(main())
