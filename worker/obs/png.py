"""A tiny raster canvas and PNG codec in pure Python (zlib + struct), for `worker report`.

The report's PNG must be written on any machine where only the project's pip
dependencies are installed, so there is no plotting library here: lines, dashes,
rectangles and a 5×7 bitmap font on an RGB canvas, written as an 8-bit truecolour
PNG. :func:`read_png` decodes the PNGs this module and headless Chromium write (8-bit
RGB / RGBA, not interlaced), for tests.

>>> canvas = Canvas(40, 20)
>>> _ = canvas.line(0, 0, 39, 19, (255, 0, 0))
>>> _ = canvas.text(2, 2, "v2", (0, 0, 0))
>>> width, height, pixels = read_png(canvas.png())
>>> width, height, pixels[0][0], pixels[19][39], pixels[10][0]
(40, 20, (255, 0, 0), (255, 0, 0), (255, 255, 255))
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

Color = tuple[int, int, int]

WHITE: Color = (255, 255, 255)

# The classic 5×7 LCD font: five column bytes per glyph (bit 0 = top row), ASCII 32-126.
_FONT_HEX = (
    "0000000000 00005f0000 0007000700 147f147f14 242a7f2a12 2313086462 3649552250 0005030000"
    " 001c224100 0041221c00 082a1c2a08 08083e0808 0050300000 0808080808 0060600000 2010080402"
    " 3e5149453e 00427f4000 4261514946 2141454b31 1814127f10 2745454539 3c4a494930 0171090503"
    " 3649494936 064949291e 0036360000 0056360000 0008142241 1414141414 4122140800 0201510906"
    " 324979413e 7e1111117e 7f49494936 3e41414122 7f4141221c 7f49494941 7f09090101 3e41415132"
    " 7f0808087f 00417f4100 2040413f01 7f08142241 7f40404040 7f0204027f 7f0408107f 3e4141413e"
    " 7f09090906 3e4151215e 7f09192946 4649494931 01017f0101 3f4040403f 1f2040201f 7f2018207f"
    " 6314081463 0304780403 6151494543 00007f4141 0204081020 41417f0000 0402010204 4040404040"
    " 0001020400 2054545478 7f48444438 3844444420 384444487f 3854545418 087e090102 081454543c"
    " 7f08040478 00447d4000 2040443d00 007f102844 00417f4000 7c04180478 7c08040478 3844444438"
    " 7c14141408 081414187c 7c08040408 4854545420 043f444020 3c4040207c 1c2040201c 3c4030403c"
    " 4428102844 0c5050503c 4464544c44 0008364100 00007f0000 0041360800 0201020402"
)
FONT: dict[str, bytes] = {chr(32 + i): bytes.fromhex(g) for i, g in enumerate(_FONT_HEX.split())}
FONT["→"] = bytes.fromhex("08082a1c08")
FONT["·"] = bytes.fromhex("0000080000")
GLYPH_W = 6  # advance at scale 1 (5×7 glyph + 1 pixel gap)


class Canvas:
    """An RGB raster, white at first; coordinates in pixels, origin top left."""

    def __init__(self, width: int, height: int, background: Color = WHITE) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(background) * (width * height))

    def set(self, x: int, y: int, color: Color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = 3 * (y * self.width + x)
            self.pixels[i:i + 3] = bytes(color)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """Fill the rectangle with corners (x0, y0) and (x1, y1), both included."""
        (x0, x1), (y0, y1) = sorted((x0, x1)), sorted((y0, y1))
        x0, x1, y0, y1 = max(0, x0), min(self.width - 1, x1), max(0, y0), min(self.height - 1, y1)
        if x0 > x1 or y0 > y1:
            return  # outside the canvas: a row written past the right edge would wrap to the next
        row = bytes(color) * (x1 - x0 + 1)
        for y in range(y0, y1 + 1):
            i = 3 * (y * self.width + x0)
            self.pixels[i:i + len(row)] = row

    def line(self, x0: float, y0: float, x1: float, y1: float, color: Color, width: int = 1,
             dash: tuple[int, int] | None = None, phase: float = 0.0) -> float:
        """A straight line (Bresenham), ``width`` pixels thick; ``dash`` = (on, off)
        pixels. Returns the dash phase at the end, to continue a dashed polyline."""
        x0, y0, x1, y1 = round(x0), round(y0), round(x1), round(y1)
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        half = (width - 1) // 2
        period = sum(dash) if dash else 0
        while True:
            if not dash or phase % period < dash[0]:
                if width == 1:
                    self.set(x0, y0, color)
                else:
                    self.rect(x0 - half, y0 - half, x0 - half + width - 1, y0 - half + width - 1, color)
            if x0 == x1 and y0 == y1:
                return phase
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy
            phase += 1

    def polyline(self, points: Sequence[tuple[float, float]], color: Color, width: int = 1,
                 dash: tuple[int, int] | None = None) -> None:
        phase = 0.0
        for (xa, ya), (xb, yb) in zip(points, points[1:], strict=False):
            phase = self.line(xa, ya, xb, yb, color, width, dash, phase)
        if len(points) == 1:
            x, y = points[0]
            self.rect(round(x) - 1, round(y) - 1, round(x) + 1, round(y) + 1, color)

    def text(self, x: int, y: int, text: str, color: Color, scale: int = 1) -> int:
        """Draw ``text`` with its top-left corner at (x, y); returns the x after it.
        Characters outside the font are drawn as '?'."""
        for char in text:
            glyph = FONT.get(char, FONT["?"])
            for col, bits in enumerate(glyph):
                for row in range(7):
                    if bits >> row & 1:
                        self.rect(x + col * scale, y + row * scale, x + (col + 1) * scale - 1,
                                  y + (row + 1) * scale - 1, color)
            x += GLYPH_W * scale
        return x

    def png(self) -> bytes:
        """The canvas as a PNG file (8-bit RGB, filter 0 on every row)."""
        stride = 3 * self.width
        raw = b"".join(b"\x00" + bytes(self.pixels[y * stride:(y + 1) * stride]) for y in range(self.height))
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6))
                + _chunk(b"IEND", b""))


def text_width(text: str, scale: int = 1) -> int:
    return len(text) * GLYPH_W * scale


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def read_png(data: bytes) -> tuple[int, int, list[list[tuple[int, int, int]]]]:
    """Decode an 8-bit RGB or RGBA, non-interlaced PNG: (width, height, rows of RGB)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat = 8, []
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color_type, _c, _f, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or color_type not in (2, 6) or interlace:
                raise ValueError(f"unsupported PNG: depth {depth}, colour type {color_type}, "
                                 f"interlace {interlace}")
            channels = 3 if color_type == 2 else 4
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    rows: list[list[tuple[int, int, int]]] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        _unfilter(kind, line, previous, channels)
        rows.append([tuple(line[i:i + 3]) for i in range(0, stride, channels)])
        previous = line
    return width, height, rows


def _unfilter(kind: int, line: bytearray, prev: bytearray, bpp: int) -> None:
    if kind == 0:
        return
    for i in range(len(line)):
        a = line[i - bpp] if i >= bpp else 0
        b = prev[i]
        if kind == 1:
            line[i] = (line[i] + a) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + b) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (a + b) // 2) & 0xFF
        elif kind == 4:
            c = prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        else:
            raise ValueError(f"bad PNG filter type {kind}")
