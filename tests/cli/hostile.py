#!/usr/bin/env python3
"""hostile.py -- small, well-formed (valid CRC) but hostile smartkv streams
for tests/cli/test-hostile.sh, written from smartkv(5) alone.

  hostile.py KIND OUT      write one stream; KIND is one of the names in
                           KINDS below (run without arguments to list them)

Each stream is a few hundred bytes whose headers declare shapes up to the
documented limits, or whose chunks break one rule of smartkv(5) while every
CRC is right."""
import struct
import sys
import zlib

SIG = b"\x89SKV\r\n\x1a\n"
BIG = dict(L=1024, H=1024, KV=1024, D=1024, T=1 << 24)


def chunk(ctype, payload):
    hdr = ctype.encode() + struct.pack("<IQQ", 0, len(payload), len(payload))
    return hdr + payload + struct.pack("<I", zlib.crc32(hdr + payload) & 0xFFFFFFFF)


def head(reserved=0):
    return chunk("HEAD", struct.pack("<HHI", 1, 0, reserved) + b"hostile.py".ljust(32, b"\0"))


def stream(chunks, head_reserved=0):
    out = [head(head_reserved)] + chunks
    off = len(SIG) + sum(len(c) for c in out)
    out.append(chunk("DONE", struct.pack("<QQ", len(out), off)))
    return SIG + b"".join(out)


def trhd(L, H, KV, D, T, dtype=2, flags=0, reserved=0):
    return chunk("TRHD", struct.pack("<IIIIQQIIfIHH", L, H, KV, D, T, T // 2, dtype, flags,
                                     0.0, reserved, 4, 0) + b"host")


def pkhd(L, KV, D, T, reserved=0, cache_bytes=92, n_stored=0):
    fp16 = 2 * L * KV * T * D * 2
    return chunk("PKHD", struct.pack("<IIIIIIIIQQQQ", D, D, D, 1, 1, L, KV, reserved, T,
                                     cache_bytes, fp16, n_stored))


def a64(n):
    return (n + 63) // 64 * 64


def pbkt16(layer, h, D, idx):
    """A 16-bit bucket (no quantizer parameters) of the tokens idx, with the
    settings pkhd() writes (groups of D, mode 1)."""
    n, row = len(idx), 2 * D
    kp = 64 + a64(4 * n)
    vp = kp + a64(n * row)
    p = struct.pack("<10I", layer, h, 16, n, D, D, D, 1, 1, 0) + b"\0" * 24
    p += struct.pack("<%dI" % n, *idx).ljust(kp - 64, b"\0")
    rows = b"".join(struct.pack("<%de" % D, *[(t % 7 - 3) / 4.0] * D) for t in idx)
    p += rows.ljust(vp - kp, b"\0") + rows.ljust(a64(n * row), b"\0")
    return chunk("PBKT", p)


def packed_one_bucket(L, KV, D, T, idx):
    """A packed cache without queries that declares L x KV heads of T tokens
    and holds one small 16-bit bucket, in its last (layer, KV head)."""
    b = pbkt16(L - 1, KV - 1, D, idx)
    return stream([trhd(L, KV, KV, D, T, flags=0x4 | 0x8),
                   pkhd(L, KV, D, T, cache_bytes=92 + len(b), n_stored=len(idx)), b])


def tens(kind, layer, h, row0, rows, D, dtype=1, reserved=0, seed=0, poke=None):
    fmt = "<%d%s" % (rows * D, "f" if dtype == 1 else "e")
    vals = [((i * 7 + seed) % 13 - 6) / 8.0 for i in range(rows * D)]
    if poke:
        vals[poke[0]] = poke[1]
    return chunk("TENS", struct.pack("<IIIIQQII", kind, dtype, layer, h, row0, rows, D,
                                     reserved) + struct.pack(fmt, *vals))


def small_trace_chunks(L=1, H=2, KV=1, D=8, T=4, order=None, poke=None):
    """TRHD and the layers of a tiny f32 trace; `order` edits the TENS list;
    poke = (kind, element, value) sets one value of layer 0, head 0."""
    ts = []
    for layer in range(L):
        for kind, nh in ((1, H), (2, KV), (3, KV)):
            for h in range(nh):
                p = poke[1:] if poke and poke[0] == kind and layer == 0 and h == 0 else None
                ts.append(tens(kind, layer, h, 0, T, D, seed=layer * 31 + kind * 7 + h, poke=p))
    if order:
        ts = order(ts)
    return [trhd(L, H, KV, D, T, dtype=1)] + ts


def alhd(L, KV, T, D, reserved=0):
    text = b"policy=hostile"
    mask = sum(1 << w for w in (0, 2, 3, 4, 8, 16))
    # predicted bytes are not checked by the readers tested here
    return chunk("ALHD", struct.pack("<dIIQIIIIIIIIQH", 0.25, L, KV, T, mask, 0, D, D, D, 1, 1,
                                     reserved, 0, len(text)) + text)


def aloc(layer, h, n, widths, nbits=None):
    nb = n if nbits is None else nbits
    bits = bytes(widths[t % len(widths)] for t in range(nb))
    pad = b"\0" * ((-nb) % 4)
    imp = struct.pack("<%df" % nb, *[1.0] * nb)
    return chunk("ALOC", struct.pack("<IIQ", layer, h, n) + bits + pad + imp)


def alloc_trace(edit):
    """A tiny trace (1 layer, 1 KV head, 4 tokens) with an allocation; edit()
    returns the ALOC chunks to use."""
    return stream(small_trace_chunks() + [alhd(1, 1, 4, 8)] + edit())


def packed_with_alloc(alocs):
    """A packed cache without queries whose allocation chunks are alocs:
    TRHD, ALHD, ALOC..., PKHD with no PBKT (every token evicted)."""
    return stream([trhd(1, 2, 1, 8, 4, flags=0x4 | 0x8), alhd(1, 1, 4, 8)] + alocs +
                  [pkhd(1, 1, 8, 4)])


def athd(L, H, KV, D, T, steps, reserved=0):
    p = struct.pack("<IIIIIIQQQQHHI", 1, 0, L, H, KV, D, T, steps, 0, 0, 0, 0, reserved)
    p += b"".join(struct.pack("<Q", T - steps + i) for i in range(steps))
    return chunk("ATHD", p)


KINDS = {
    # items 1 and 2: declared shapes with no data behind them
    "pkhd-big": lambda: stream([trhd(**BIG, flags=0x4 | 0x8), pkhd(BIG["L"], BIG["KV"], BIG["D"],
                                                                     BIG["T"])]),
    "pkhd-big-q": lambda: stream([trhd(**BIG, flags=0x4), pkhd(BIG["L"], BIG["KV"], BIG["D"],
                                                               BIG["T"])]),
    "trhd-big": lambda: stream([trhd(**BIG)]),
    "trhd-big-toks": lambda: stream([trhd(**BIG, flags=0x2)]),
    # the most tokens an allocation can hold (smartkv(5) LIMITS: ALOC n)
    "trhd-big-alloc": lambda: stream([trhd(**dict(BIG, T=13421769))]),
    # a valid cache of one small bucket: memory for the rows read, none per
    # declared token (16M) and, with one (layer, KV head), none per head
    "pkhd-bucket": lambda: packed_one_bucket(1, 1, 8, 1 << 24, [5, (1 << 24) - 1]),
    "pkhd-big-bucket": lambda: packed_one_bucket(1024, 1024, 8, 1 << 24, [5, (1 << 24) - 1]),
    "athd-big": lambda: stream([athd(1024, 1024, 1024, 1024, 1 << 24, 1)]),
    # item 3: an unknown critical chunk in a valid trace
    "crit": lambda: stream(small_trace_chunks() + [chunk("ZZZZ", b"x")]),
    "crit-mid": lambda: stream(small_trace_chunks()[:2] + [chunk("Zyxw", b"")] +
                               small_trace_chunks()[2:]),
    "ancillary": lambda: stream(small_trace_chunks() + [chunk("zzzz", b"x")]),
    # item 4: ALOC contents
    "aloc-layer": lambda: alloc_trace(lambda: [aloc(1 << 31, 0, 4, [4])]),
    "aloc-head": lambda: alloc_trace(lambda: [aloc(0, 1024, 4, [4])]),
    "aloc-n7": lambda: alloc_trace(lambda: [aloc(0, 0, 7, [4])]),
    "aloc-width7": lambda: alloc_trace(lambda: [aloc(0, 0, 4, [4, 7])]),
    "aloc-twice": lambda: alloc_trace(lambda: [aloc(0, 0, 4, [4]), aloc(0, 0, 4, [4])]),
    "aloc-missing": lambda: alloc_trace(lambda: []),
    "aloc-pad": lambda: alloc_trace(lambda: [chunk("ALOC", struct.pack("<IIQ", 0, 0, 3) +
                                                   bytes([4, 4, 4, 9]) + struct.pack("<3f", 1, 1, 1))]),
    "aloc-nan": lambda: alloc_trace(lambda: [chunk("ALOC", struct.pack("<IIQ", 0, 0, 4) +
                                                   bytes([4] * 4) + struct.pack("<4f", 1, 1, float("nan"), 1))]),
    "cache-aloc-layer": lambda: packed_with_alloc([aloc(1 << 31, 0, 4, [0])]),
    "cache-aloc-width7": lambda: packed_with_alloc([aloc(0, 0, 4, [0, 7])]),
    "cache-aloc-n": lambda: packed_with_alloc([aloc(0, 0, (1 << 64) - 28, [0], nbits=4)]),
    "cache-aloc-head": lambda: packed_with_alloc([aloc(0, 1024, 4, [0])]),
    "cache-aloc-n7": lambda: packed_with_alloc([aloc(0, 0, 7, [0])]),
    "aloc-layer4095": lambda: alloc_trace(lambda: [aloc(4095, 0, 4, [4])]),
    "aloc-width9": lambda: alloc_trace(lambda: [aloc(0, 0, 4, [4, 9])]),
    "aloc-width32": lambda: alloc_trace(lambda: [aloc(0, 0, 4, [32])]),
    "aloc-width128": lambda: alloc_trace(lambda: [aloc(0, 0, 4, [128, 4])]),
    "aloc-n513": lambda: alloc_trace(lambda: [aloc(0, 0, 513, [4])]),
    "cache-aloc-ok": lambda: packed_with_alloc([aloc(0, 0, 4, [0])]),
    # values outside what skv-alloc and skv-quant accept (one rule for both):
    # Q finite, K and V finite and within the f16 range (element 13 is
    # token 1, channel 5)
    "val-q-nan": lambda: stream(small_trace_chunks(poke=(1, 13, float("nan")))),
    "val-q-big": lambda: stream(small_trace_chunks(poke=(1, 13, 1e30))),
    "val-k-inf": lambda: stream(small_trace_chunks(poke=(2, 13, float("inf")))),
    "val-k-big": lambda: stream(small_trace_chunks(poke=(2, 13, 70000.0))),
    "val-v-nan": lambda: stream(small_trace_chunks(poke=(3, 13, float("nan")))),
    "val-v-big": lambda: stream(small_trace_chunks(poke=(3, 13, -65520.0))),
    "val-v-max": lambda: stream(small_trace_chunks(poke=(3, 13, -65504.0))),
    # item 5: reserved fields
    "res-head": lambda: stream(small_trace_chunks(), head_reserved=1),
    "res-trhd": lambda: stream([trhd(1, 2, 1, 8, 4, dtype=1, reserved=5)] +
                               small_trace_chunks()[1:]),
    "res-tens": lambda: stream(small_trace_chunks()[:1] + [tens(1, 0, 0, 0, 4, 8, reserved=1)] +
                               small_trace_chunks()[2:]),
    "res-alhd": lambda: stream(small_trace_chunks() + [alhd(1, 1, 4, 8, reserved=3),
                                                       aloc(0, 0, 4, [4])]),
    "res-athd": lambda: stream([athd(1, 1, 1, 8, 4, 1, reserved=1)]),
    "res-pkhd": lambda: stream([trhd(1, 2, 1, 8, 4, flags=0x4 | 0x8), pkhd(1, 1, 8, 4, reserved=1)]),
    # item 6: structure that only a full reader checked
    "tens-dup": lambda: stream(small_trace_chunks(order=lambda ts: ts[:2] + ts[1:])),
    "tens-swap": lambda: stream(small_trace_chunks(order=lambda ts: [ts[1], ts[0]] + ts[2:])),
    "tens-del": lambda: stream(small_trace_chunks(order=lambda ts: ts[:-1])),
    "trhd-dim": lambda: stream([trhd(1, 2, 1, 2698045876, 4, dtype=1)]),
    "ok": lambda: stream(small_trace_chunks()),
}

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in KINDS:
        sys.exit("usage: hostile.py KIND OUT\nkinds: " + " ".join(KINDS))
    with open(sys.argv[2], "wb") as f:
        f.write(KINDS[sys.argv[1]]())
