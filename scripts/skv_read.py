"""Minimal reader of smartkv streams for the plotting scripts (smartkv(5)):
chunks, the trace header, and the allocation of one (layer, KV head)."""
import re
import struct
import sys
import zlib

SIG = b"\x89SKV\r\n\x1a\n"


def chunks(path):
    """Yield (type, payload) for every chunk, checking the CRC."""
    with open(path, "rb") as f:
        if f.read(8) != SIG:
            sys.exit("%s: not a smartkv stream" % path)
        while True:
            hdr = f.read(24)
            if not hdr:
                return
            if len(hdr) < 24:
                sys.exit("%s: truncated chunk header" % path)
            ctype = hdr[:4].decode("ascii", "replace")
            flags, size, raw = struct.unpack("<IQQ", hdr[4:])
            data = f.read(size)
            crc = f.read(4)
            if len(data) < size or len(crc) < 4:
                sys.exit("%s: truncated %s chunk" % (path, ctype))
            if zlib.crc32(hdr + data) & 0xFFFFFFFF != struct.unpack("<I", crc)[0]:
                sys.exit("%s: CRC mismatch in a %s chunk" % (path, ctype))
            yield ctype, zlib.decompress(data) if flags & 1 else data
            if ctype == "DONE":
                return


def trhd(p):
    nl, nh, nkv, hd, nt, npre = struct.unpack_from("<IIIIQQ", p)
    return {"layers": nl, "heads": nh, "kv_heads": nkv, "head_dim": hd, "tokens": nt,
            "prefill": npre}


def allocation(path, layer, head):
    """(header, ALHD text, bits[], importance[]) of one (layer, KV head)."""
    h = text = None
    for ctype, p in chunks(path):
        if ctype == "TRHD":
            h = trhd(p)
        elif ctype == "ALHD":
            n = struct.unpack_from("<H", p, 64)[0]
            text = p[66:66 + n].decode("utf-8", "replace")
        elif ctype == "ALOC":
            l, kh, n = struct.unpack_from("<IIQ", p)
            if (l, kh) == (layer, head):
                pad = (n + 3) & ~3
                bits = list(p[16:16 + n])
                imp = struct.unpack_from("<%df" % n, p, 16 + pad)
                return h, text, bits, imp
    sys.exit("%s: no allocation for layer %d KV head %d (run skv-alloc; "
             "skv-quant keeps it only with --keep-alloc)" % (path, layer, head))


def setting(text, key, default):
    m = re.search(r"\b%s=(\d+)" % key, text or "")
    return int(m.group(1)) if m else default
