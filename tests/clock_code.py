"""A wall-clock time burned into a video frame as black and white blocks, and read back.

The RTSP test server (tests/rtsp_server.py ``--clock``, run by the system Python, which has no
numpy) draws it into each I420 frame just before the frame goes to the encoder; whoever receives
the decoded RGB picture reads it back (``read_rgb``, numpy) and so knows when that picture was
made, to the millisecond, on the same machine's clock (``time.time``): glass-to-glass latency.

Layout, in the top-left corner: two rows of 20 data blocks, each row followed by a row of the
same blocks inverted (4 rows of ``block`` × ``block`` pixels, starting one block in from the left).
The 40 bits are the time in milliseconds modulo 2**32 (49.7 days: ``latency_ms`` puts it back
next to the receiver's clock) and a CRC-8 of it. A bit is read as "its block is brighter than
its inverted twin", so no threshold depends on the encoder's levels; a read is refused when any
pair differs by less than ``MIN_CONTRAST`` (a block smeared by the encoder) or the CRC fails.
Blocks are 16 pixels where the frame is wide enough (352 pixels and more), aligned to H.264's
macroblocks, which keeps them intact at the low bitrates of the test server.

Pure Python except ``read_rgb``: the server imports this file too.
"""

from __future__ import annotations

from typing import Any

COLUMNS, DATA_ROWS = 20, 2
BITS = COLUMNS * DATA_ROWS  # 32 bits of milliseconds + 8 of CRC
BLACK, WHITE = 16, 235  # video-range luma: RGB 0 and 255 once converted
MIN_CONTRAST = 48  # a bit and its inverted twin must differ this much (0..255 RGB) to be read
WRAP = 1 << 32


def block_size(width: int, height: int) -> int:
    """Side of one block in pixels: 16 where it fits, else the largest even size that does (>= 4)."""
    size = min(16, width // (COLUMNS + 2), height // (2 * DATA_ROWS + 1))
    size -= size % 2  # even: the chroma planes are half size
    if size < 4:
        raise ValueError(f"a {width}x{height} frame is too small for the clock code (at least 88x20 pixels)")
    return size


def crc8(data: bytes) -> int:
    """CRC-8, polynomial 0x07 (ATM HEC without the final XOR)."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def bits_of(ms: int) -> list[int]:
    """The 40 bits drawn for time ``ms`` (milliseconds), most significant first."""
    value = ms % WRAP
    word = value << 8 | crc8(value.to_bytes(4, "big"))
    return [(word >> (BITS - 1 - i)) & 1 for i in range(BITS)]


def value_of(bits: list[int]) -> int | None:
    """The milliseconds (mod 2**32) in 40 read bits, or None when their CRC does not match."""
    word = 0
    for bit in bits:
        word = word << 1 | int(bit)
    value, crc = word >> 8, word & 0xFF
    return value if crc8(value.to_bytes(4, "big")) == crc else None


def burn_i420(frame: bytearray, width: int, height: int, ms: int) -> None:
    """Draw time ``ms`` into an I420 frame (Y plane, then U and V at half size), in place.

    The chroma under the code is set neutral, so the blocks are grey levels whatever the picture."""
    b = block_size(width, height)
    x0 = b
    bits = bits_of(ms)
    for block_row in range(2 * DATA_ROWS):
        data_row, inverted = divmod(block_row, 2)
        line = b"".join(bytes([WHITE if bit ^ inverted else BLACK]) * b
                        for bit in bits[data_row * COLUMNS:(data_row + 1) * COLUMNS])
        for y in range(block_row * b, (block_row + 1) * b):
            start = y * width + x0
            frame[start:start + len(line)] = line
    cw, grey = width // 2, bytes([128]) * (COLUMNS * b // 2)
    for plane in (width * height, width * height + cw * (height // 2)):
        for y in range(2 * DATA_ROWS * b // 2):
            start = plane + y * cw + x0 // 2
            frame[start:start + len(grey)] = grey


def read_rgb(image: Any) -> int | None:
    """The milliseconds (mod 2**32) burned into a decoded H×W×3 uint8 picture, or None if unreadable."""
    import numpy as np

    height, width = image.shape[:2]
    b = block_size(width, height)
    strip = image[:2 * DATA_ROWS * b, b:b + COLUMNS * b].astype(np.float32).mean(axis=2)
    quarter = b // 4  # the middle of each block: its edges carry the encoder's ringing
    blocks = strip.reshape(2 * DATA_ROWS, b, COLUMNS, b)[:, quarter:b - quarter, :, quarter:b - quarter]
    means = blocks.mean(axis=(1, 3))  # (4, 20)
    contrast = means[0::2] - means[1::2]  # each data row against its inverted twin
    if float(np.abs(contrast).min()) < MIN_CONTRAST:
        return None
    return value_of([int(bit) for bit in (contrast > 0).ravel()])


def latency_ms(code: int, now_ms: int) -> int:
    """Milliseconds from the time in ``code`` (mod 2**32) to ``now_ms``; negative if ``code`` is later."""
    age = (now_ms - code) % WRAP
    return age - WRAP if age >= WRAP // 2 else age
