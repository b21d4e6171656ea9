"""A local RTSP test server (GStreamer's gst-rtsp-server), run by the system Python.

Run with /usr/bin/python3 (the venv cannot import gi):

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --path /x [--user U --password P]

Serves a live, moving test pattern on rtsp://127.0.0.1:PORT/PATH, H.264 (or MJPEG) over RTP.
Prints ``READY <port>`` on stdout once it listens; exits 0 on SIGTERM/SIGINT.
tests/live_servers.py (RtspServer) starts and stops it.

With ``--raw FILE`` it serves the I420 frames of FILE (WIDTH×HEIGHT each, back to back) in a loop
instead, and with ``--clock`` it burns the wall-clock time into each frame just before the encoder
(tests/clock_code.py), so a client can measure glass-to-glass latency: both go through an appsrc
fed at FPS by a thread of this process. ``--exit-with-parent``: exit when the process that
started this one dies, even by SIGKILL (Linux), so a crashed benchmark leaves no server behind.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import threading
import time
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import clock_code  # noqa: E402  (beside this file; pure Python)

ROLE = "viewer"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/x")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--codec", choices=("h264", "mjpeg"), default="h264")
    parser.add_argument("--raw", type=Path, help="serve these I420 frames (WIDTHxHEIGHT each) in a loop")
    parser.add_argument("--clock", action="store_true", help="burn the wall-clock time into each frame")
    parser.add_argument("--exit-with-parent", action="store_true", help="exit when the parent process dies")
    args = parser.parse_args(argv)
    if args.width % 2 or args.height % 2:
        parser.error("--width and --height must be even (I420)")
    if args.raw is not None and not args.raw.is_file():
        parser.error(f"--raw {args.raw}: no such file")
    if args.clock:
        try:
            clock_code.block_size(args.width, args.height)
        except ValueError as error:
            parser.error(str(error))
    if (args.user is None) != (args.password is None):
        parser.error("--user and --password go together")
    if not args.path.startswith("/"):
        parser.error("--path must start with /")
    return args


def launch_line(args: argparse.Namespace) -> str:
    """The media pipeline: a live, moving source so timestamps advance and frames differ."""
    caps = f"video/x-raw,width={args.width},height={args.height},framerate={args.fps}/1"
    if uses_appsrc(args):
        # Fed by Feeder; stamped with the running time when pushed (do-timestamp), as a camera
        # would. A slow encoder drops the oldest frame queued here, never blocks the feeder.
        source = (f"appsrc name=src is-live=true format=time do-timestamp=true block=false max-buffers=2 "
                  f"leaky-type=downstream caps={caps},format=I420")
    else:
        source = f"videotestsrc is-live=true pattern=ball ! {caps}"
        # timeoverlay (gst-plugins-base 'pango') is optional: a clock burned in helps debugging only.
        if Gst.ElementFactory.find("timeoverlay") is not None:
            source += " ! timeoverlay"
    if args.codec == "mjpeg":
        # RFC 2435 (rtpjpegpay) carries only 4:2:0/4:2:2 JPEGs: hand jpegenc I420.
        encode = "videoconvert ! video/x-raw,format=I420 ! jpegenc quality=80 ! rtpjpegpay name=pay0 pt=26"
    else:
        # A keyframe every second (key-int-max=fps) so a client that (re)connects gets a
        # picture quickly; config-interval=1 repeats SPS/PPS in-band for the same reason.
        encode = (
            "videoconvert ! video/x-raw,format=I420 ! "
            f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.fps} bitrate=800 ! "
            "rtph264pay name=pay0 pt=96 config-interval=1"
        )
    return f"( {source} ! {encode} )"


def uses_appsrc(args: argparse.Namespace) -> bool:
    return args.raw is not None or args.clock


class Feeder(threading.Thread):
    """Pushes one frame every 1/fps seconds into one media's appsrc until ``stop()``: the next frame
    of --raw (from the start again at its end) or a moving band, with the time burned in (--clock)
    right before the push. Behind schedule it skips ticks rather than bursting."""

    def __init__(self, appsrc: Gst.Element, args: argparse.Namespace) -> None:
        super().__init__(name="feeder", daemon=True)
        self.appsrc, self.args = appsrc, args
        self.size = args.width * args.height * 3 // 2
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        width, height, fps = self.args.width, self.args.height, self.args.fps
        period, duration = 1.0 / fps, Gst.SECOND // fps
        raw = open(self.args.raw, "rb") if self.args.raw is not None else None  # noqa: SIM115 - closed below
        frame = bytearray(self.size)
        band = max(2, height // 8)
        try:
            due, index = time.monotonic(), 0
            while not self._stop.wait(max(0.0, due - time.monotonic())):
                if raw is not None:
                    if raw.readinto(frame) < self.size:
                        raw.seek(0)
                        if raw.readinto(frame) < self.size:
                            print(f"{self.args.raw}: shorter than one {width}x{height} I420 frame", file=sys.stderr)
                            return
                else:  # a bright band moving down a dark picture, neutral chroma
                    top = (index * 4) % (height - band)
                    frame[:width * height] = bytes([60]) * (width * height)
                    frame[top * width:(top + band) * width] = bytes([200]) * (band * width)
                    frame[width * height:] = bytes([128]) * (self.size - width * height)
                if self.args.clock:
                    clock_code.burn_i420(frame, width, height, time.time_ns() // 1_000_000)
                buffer = Gst.Buffer.new_wrapped(bytes(frame))
                buffer.duration = duration
                if self.appsrc.emit("push-buffer", buffer) == Gst.FlowReturn.EOS:
                    return
                index += 1
                due += period
                if due < time.monotonic() - period:  # fell behind (a paused process): no burst
                    due = time.monotonic()
        finally:
            if raw is not None:
                raw.close()


def feed_each_media(factory: GstRtspServer.RTSPMediaFactory, args: argparse.Namespace) -> None:
    """A Feeder for each media the factory makes (one at a time, shared by its clients), stopped
    when the media is unprepared (its last client left)."""

    def configure(_factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
        feeder = Feeder(media.get_element().get_by_name("src"), args)
        media.connect("unprepared", lambda _media: feeder.stop())
        feeder.start()

    factory.connect("media-configure", configure)


def exit_with_parent() -> None:
    """SIGTERM this process when its parent dies (prctl PR_SET_PDEATHSIG), or now if it already has."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, signal.SIGTERM, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
        print(f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}", file=sys.stderr)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def make_auth(user: str, password: str) -> tuple[GstRtspServer.RTSPAuth, GstRtspServer.RTSPPermissions]:
    """Basic auth: the user's token carries ROLE; only ROLE may access/construct the media.

    With no default token set, an unauthenticated request is answered 401.
    """
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", ROLE)
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    permissions = GstRtspServer.RTSPPermissions()
    permissions.add_role(ROLE)
    permissions.add_permission_for_role(ROLE, "media.factory.access", True)
    permissions.add_permission_for_role(ROLE, "media.factory.construct", True)
    return auth, permissions


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.exit_with_parent:
        exit_with_parent()
    Gst.init(None)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")  # loopback only
    server.set_service(str(args.port))

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args))
    factory.set_shared(True)  # several clients watch one pipeline
    if uses_appsrc(args):
        feed_each_media(factory, args)
    # Interleaved TCP and UDP both allowed (the default); tests use TCP.
    if args.user is not None:
        auth, permissions = make_auth(args.user, args.password)
        server.set_auth(auth)
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory(args.path, factory)

    loop = GLib.MainLoop()
    try:
        if server.attach(None) == 0:
            print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
            return 2
    except GLib.Error as error:
        print(f"cannot listen on 127.0.0.1:{args.port}: {error.message}", file=sys.stderr, flush=True)
        return 2

    def quit_loop() -> bool:
        loop.quit()
        return GLib.SOURCE_REMOVE

    # GLib's own signal sources: a Python handler would not run while loop.run() blocks in C.
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, quit_loop)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, quit_loop)

    print(f"READY {args.port}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
