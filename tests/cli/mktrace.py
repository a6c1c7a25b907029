#!/usr/bin/env python3
"""mktrace.py -- small smartkv streams for the CLI tests, written from the
format spec alone (an independent encoder; no numpy needed).

  mktrace.py trace OUT [--layers L --heads H --kv-heads KV --dim D --tokens T
                        --dtype f32|f16 --alloc PATTERN --alloc-tokens N
                        --predict-offset N --nan]
      A trace; with --alloc, ALHD and ALOC chunks after the last layer
      (token t of every head gets width PATTERN[t % len]); the predicted
      bytes are computed here with the byte model of smartkv(5), plus
      --predict-offset.
  mktrace.py list FILE
      One line per chunk: TYPE STORED_BYTES (header, payload and CRC).
"""
import argparse
import random
import struct
import sys
import zlib

SIG = b"\x89SKV\r\n\x1a\n"
CHUNK_MAX = 64 << 20


def chunk(ctype, payload):
    hdr = ctype.encode() + struct.pack("<IQQ", 0, len(payload), len(payload))
    crc = zlib.crc32(hdr + payload) & 0xFFFFFFFF
    return hdr + payload + struct.pack("<I", crc)


def a64(n):
    return (n + 63) & ~63


def row_bytes(bits, d):
    return d * 2 if bits == 16 else (d + 7) // 8 * bits


def par_bytes(bits, d, g, mode):
    return 0 if bits == 16 else (d + g - 1) // g * (4 if mode == 1 else 2)


def payload_bytes(bits, n, d, kg, vg, km, vm):
    return (64 + a64(4 * n) + a64(n * par_bytes(bits, d, kg, km)) + a64(n * row_bytes(bits, d))
            + a64(n * par_bytes(bits, d, vg, vm)) + a64(n * row_bytes(bits, d)))


def bucket_file_bytes(bits, n, *cfg):
    if n == 0 or bits == 0:
        return 0
    mx = 1
    while payload_bytes(bits, mx * 2, *cfg) <= CHUNK_MAX:
        mx *= 2
    lo, hi = mx, mx * 2  # largest count that fits one chunk
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if payload_bytes(bits, mid, *cfg) <= CHUNK_MAX:
            lo = mid
        else:
            hi = mid
    mx = lo
    full, rest = divmod(n, mx)
    total = full * (28 + payload_bytes(bits, mx, *cfg))
    if rest:
        total += 28 + payload_bytes(bits, rest, *cfg)
    return total


def trace(a):
    rnd = random.Random(1234)
    dt = 1 if a.dtype == "f32" else 2
    out = [chunk("HEAD", struct.pack("<HHI", 1, 0, 0) + b"mktrace.py".ljust(32, b"\0"))]
    model = b"mktrace"
    trhd = struct.pack("<IIIIQQIIfIHH", a.layers, a.heads, a.kv_heads, a.dim, a.tokens,
                       a.tokens // 2, dt, 0, 0.0, 0, len(model), 0) + model
    out.append(chunk("TRHD", trhd))
    fmt = "<%d%s" % (a.tokens * a.dim, "f" if dt == 1 else "e")
    for layer in range(a.layers):
        for kind, nh in ((1, a.heads), (2, a.kv_heads), (3, a.kv_heads)):
            for h in range(nh):
                vals = [rnd.uniform(-2, 2) for _ in range(a.tokens * a.dim)]
                if a.nan and kind == 2 and layer == a.layers - 1 and h == 0:
                    vals[5] = float("nan")
                sub = struct.pack("<IIIIQQII", kind, dt, layer, h, 0, a.tokens, a.dim, 0)
                out.append(chunk("TENS", sub + struct.pack(fmt, *vals)))
    if a.alloc:
        pat = [int(x) for x in a.alloc.split(",")]
        n_tok = a.alloc_tokens or a.tokens
        cfg = (a.dim, a.dim, a.dim, 1, 1)
        predicted = 24 + 64 + 4  # PKHD chunk
        for layer in range(a.layers):
            for h in range(a.kv_heads):
                bits = [pat[t % len(pat)] for t in range(n_tok)]
                for w in (2, 3, 4, 8, 16):
                    predicted += bucket_file_bytes(w, bits.count(w), *cfg)
        predicted += a.predict_offset
        text = b"policy=mktrace"
        mask = sum(1 << w for w in (0, 2, 3, 4, 8, 16))  # bit w: width w allowed
        alhd = struct.pack("<dIIQIIIIIIIIQH", 0.25, a.layers, a.kv_heads, n_tok, mask, 0,
                           a.dim, a.dim, a.dim, 1, 1, 0, predicted, len(text)) + text
        out.append(chunk("ALHD", alhd))
        for layer in range(a.layers):
            for h in range(a.kv_heads):
                bits = bytes(pat[t % len(pat)] for t in range(n_tok))
                pad = b"\0" * ((-n_tok) % 4)
                imp = struct.pack("<%df" % n_tok, *[1.0 / (t + 1) for t in range(n_tok)])
                out.append(chunk("ALOC", struct.pack("<IIQ", layer, h, n_tok) + bits + pad + imp))
    offset = len(SIG) + sum(len(c) for c in out)
    out.append(chunk("DONE", struct.pack("<QQ", len(out), offset)))
    with open(a.out, "wb") as f:
        f.write(SIG + b"".join(out))


def listing(path):
    data = open(path, "rb").read()
    if data[:8] != SIG:
        sys.exit("not a smartkv stream")
    off = 8
    while off < len(data):
        ctype = data[off:off + 4].decode()
        size = struct.unpack_from("<Q", data, off + 8)[0]
        print(ctype, 24 + size + 4)
        off += 28 + size


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("trace")
    t.add_argument("out")
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--kv-heads", type=int, default=2)
    t.add_argument("--dim", type=int, default=32)
    t.add_argument("--tokens", type=int, default=40)
    t.add_argument("--dtype", default="f32")
    t.add_argument("--alloc")
    t.add_argument("--alloc-tokens", type=int, default=0)
    t.add_argument("--predict-offset", type=int, default=0)
    t.add_argument("--nan", action="store_true")
    lp = sub.add_parser("list")
    lp.add_argument("file")
    a = ap.parse_args()
    if a.cmd == "trace":
        trace(a)
    else:
        listing(a.file)


if __name__ == "__main__":
    main()
