"""A local RTSP test server (GStreamer's gst-rtsp-server), run by the system Python.

Run with /usr/bin/python3 (the venv cannot import gi):

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --path /x [--user U --password P]

Serves a live, moving test pattern on rtsp://127.0.0.1:PORT/PATH, H.264 (or MJPEG) over RTP.
Prints ``READY <port>`` on stdout once it listens; exits 0 on SIGTERM/SIGINT.
tests/live_servers.py (RtspServer) starts and stops it.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

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
    args = parser.parse_args(argv)
    if (args.user is None) != (args.password is None):
        parser.error("--user and --password go together")
    if not args.path.startswith("/"):
        parser.error("--path must start with /")
    return args


def launch_line(args: argparse.Namespace) -> str:
    """The media pipeline: a live, moving source so timestamps advance and frames differ."""
    source = (
        f"videotestsrc is-live=true pattern=ball ! "
        f"video/x-raw,width={args.width},height={args.height},framerate={args.fps}/1"
    )
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
    Gst.init(None)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")  # loopback only
    server.set_service(str(args.port))

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args))
    factory.set_shared(True)  # several clients watch one pipeline
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
