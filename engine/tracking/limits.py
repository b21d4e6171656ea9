"""The bounds ``segengine track`` holds a detections file to, in one place.

A detections file comes from anywhere (another tool, a hand edit, a run killed half-way), so
every number in it is checked before it sizes an allocation or a loop. The bounds are far
beyond any real sequence and small enough that a hostile line fails fast, with the bound
named in the error, instead of filling memory or spinning for hours:

- frame numbers are whole numbers 0 … ``MAX_FRAME`` (10,000,000: 4.6 days at 25 fps);
- consecutive frames of a MOT/MOTS file are at most ``MAX_FRAME_GAP`` apart (250,000 frames,
  ≈ 2.8 h at 25 fps): the frames in between are tracked as empty, one step each;
- a mask (MOTS height × width, JSONL ``size``) has sides 1 … ``MAX_MASK_SIDE`` (16,384 px)
  and at most ``MAX_MASK_PIXELS`` (2^26, 64 Mpx: a 8192 × 8192 frame);
- at most ``MAX_DETECTIONS`` (2,000) detections a frame, and the frame's masks on the tracker's
  1/4 grid together at most ``MAX_FRAME_MASK_CELLS`` (2^28 cells, 256 MiB);
- box coordinates, scores and JSONL pts are finite; coordinates within ±``MAX_COORDINATE`` px,
  pts within ±``MAX_SECONDS``; class ids 0 … ``MAX_CLASS_ID``;
- frame rates (--fps, seqinfo.ini's frameRate) are ``MIN_FPS`` … ``MAX_FPS`` (0.001 … 100,000);
- a line is at most ``MAX_LINE_BYTES`` (64 MiB: a JSONL line with many 4K masks is a few MiB);
  a longer one is refused after reading that much of it, not all of it;
- JSON nests at most ``MAX_JSON_DEPTH`` (32) levels (a segengine line needs 7).
"""

from __future__ import annotations

MAX_FRAME = 10_000_000
MAX_FRAME_GAP = 250_000
MAX_MASK_SIDE = 16_384
MAX_MASK_PIXELS = 1 << 26
MAX_DETECTIONS = 2_000
MAX_FRAME_MASK_CELLS = 1 << 28
MAX_COORDINATE = 1e6
MAX_SECONDS = 1e8
MAX_CLASS_ID = 1_000_000
MAX_LINE_BYTES = 64 << 20
MIN_FPS, MAX_FPS = 0.001, 100_000.0
MAX_JSON_DEPTH = 32
