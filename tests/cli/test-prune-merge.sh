# prune-merge offline: skv-alloc -p prune-merge | skv-quant | skv-attend, the
# CNTR chunk (centroids) in the byte model, and hostile CNTR chunks rejected
# by the cache reader and the conformance checker.
. "$SKV_TOP/tests/cli/lib.sh"

run skv-trace synth -L 2 -H 4 -K 2 -D 32 -T 400 -o tr.skv
expect_rc 0 "synth a small trace"

run sh -c 'skv-trace synth -L 2 -H 4 -K 2 -D 32 -T 400 | skv-alloc -p prune-merge -b 0.3 |
           skv-quant > pm.skv && skv-attend -s 380:400 --queries tr.skv pm.skv > out.skv'
expect_rc 0 "skv-trace synth | skv-alloc -p prune-merge | skv-quant | skv-attend"
run skv-trace info --json pm.skv
check "one CNTR chunk per (layer, KV head), 8 centroids each" python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
c = d["chunk_types"]
assert c["CNTR"]["count"] == 2 * 2, c
assert d["complete"] and d["crc"] == "ok"' "$T/out"
run skv-stats mem -O json pm.skv
check "skv-stats mem: centroids inside the total, total = byte model, beta <= 0.3" python3 -c '
import json, sys
m = json.load(open(sys.argv[1]))
assert m["centroids"]["n"] == 4 * 8 and m["centroids"]["bytes"] > 0, m["centroids"]
assert m["bytes"] == m["model_bytes"], m
assert sum(m["kinds"].values()) == m["bytes"], m["kinds"]
assert m["bytes"] <= 0.3 * m["fp16_bytes"], m' "$T/out"
run skv-stats compare out.skv out.skv
expect_rc 0 "attention outputs of the merged cache read back"

run sh -c 'skv-alloc -p prune-merge:0 -b 0.3 tr.skv | skv-quant | skv-trace info --json -'
check "prune-merge:0 prunes only (no CNTR chunk)" python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))["chunk_types"]
assert "CNTR" not in c and c["PBKT"]["count"] > 0, c' "$T/out"

# merge + mixed precision: B kept tokens, smartkv spends -b over 4/8/16 bits
run sh -c 'skv-alloc -p prune-merge --max-cache-size 150 -b 0.3 --bits 4,8,16 tr.skv | skv-quant > mx.skv'
expect_rc 0 "prune-merge --max-cache-size with -b: mixed precision"
run skv-stats mem -O json mx.skv
check "mixed: several widths, centroids, within the budget" python3 -c '
import json, sys
m = json.load(open(sys.argv[1]))
rows = {w["bits"]: w["rows"] for w in m["widths"]}
assert rows[4] + rows[8] > 0 and rows[16] > 0, rows
assert m["centroids"]["n"] > 0 and m["bytes"] == m["model_bytes"], m
assert m["bytes"] <= 0.3 * m["fp16_bytes"], m' "$T/out"
run skv-attend -s 380:400 --queries tr.skv mx.skv
expect_rc 0 "attention on the mixed merged cache"

# what a merged cache cannot do, said plainly
run skv-quant -d pm.skv
expect_rc 1 "skv-quant -d on a merged cache fails"
expect_err "centroids" "... saying that a trace cannot hold centroids"
run skv-attend --reference -s 399 --queries tr.skv pm.skv
expect_rc 1 "skv-attend --reference on a merged cache fails"
expect_err "centroids" "... naming the centroids"
run skv-alloc -p prune-merge --pruning-interval 16 tr.skv
expect_rc 2 "--pruning-interval is skv-eval's (usage error)"
run skv-alloc -p smartkv --num-clusters 4 tr.skv
expect_rc 2 "--num-clusters without prune-merge (usage error)"
run skv-alloc -p prune-merge -b 0.01 tr.skv
expect_rc 1 "a budget below the protected tokens and centroids"
expect_err "below the smallest prune-merge cache" "... says so"

# hostile CNTR chunks: each edit keeps the CRCs right, so the decoders see it
edit() {
    python3 - "$1" "$2" "$3" <<'PY'
import struct, sys, zlib
src, dst, how = sys.argv[1:4]
b = bytearray(open(src, "rb").read())
off, chunks = 8, []
while off < len(b):
    typ = bytes(b[off:off+4]).decode()
    flags, size, raw = struct.unpack_from("<IQQ", b, off + 4)
    chunks.append([typ, flags, bytearray(b[off+24:off+24+size])])
    off += 28 + size
if how == "alhd-k0":  # the merge flag with no clusters
    struct.pack_into("<I", [c for c in chunks if c[0] == "ALHD"][0][2], 52, 0)
    p, n = bytearray(64), 0
else:
    p = [c for c in chunks if c[0] == "CNTR"][0][2]
    n = struct.unpack_from("<I", p, 12)[0]
a = (4 * n + 63) // 64 * 64
if how == "count0":
    struct.pack_into("<I", p, 64, 0)
elif how == "count-huge":
    struct.pack_into("<I", p, 64, 0x7fffffff)
elif how == "part":
    struct.pack_into("<I", p, 36, 1)
elif how == "last-stored":   # the first centroid's last member: token 0, a sink
    struct.pack_into("<I", p, 64 + a, 0)
elif how == "last-order":
    struct.pack_into("<I", p, 64 + a + 4, struct.unpack_from("<I", p, 64 + a)[0])
elif how == "pad":
    p[64 + 4 * n] = 1
elif how == "dup":
    i = [k for k, c in enumerate(chunks) if c[0] == "CNTR"][0]
    chunks.insert(i + 1, list(chunks[i]))
elif how == "n-big":
    struct.pack_into("<I", p, 12, n + 1)
elif how == "layer-big":   # a layer the header does not have
    struct.pack_into("<I", p, 0, 99)
elif how == "members":     # counts summing to n_tokens: more than the evicted tokens
    cnt = struct.unpack_from("<%dI" % n, p, 64)
    struct.pack_into("<I", p, 64, 400 - sum(cnt[1:]))
elif how == "late":        # layer 0's centroids after layer 1's buckets
    c = chunks.pop([k for k, c in enumerate(chunks) if c[0] == "CNTR"][0])
    chunks.insert(len(chunks) - 1, c)
out = bytearray(b[:8])
for k, (typ, flags, pay) in enumerate(chunks):
    if typ == "DONE":
        pay = struct.pack("<QQ", k, len(out))
    h = typ.encode() + struct.pack("<IQQ", flags, len(pay), len(pay))
    out += h + pay + struct.pack("<I", zlib.crc32(h + pay) & 0xffffffff)
open(dst, "wb").write(out)
PY
}
for how in count0:"has no members" count-huge:"member count above n_tokens" \
           part:"part is 1" last-stored:"last member is a stored token" \
           last-order:"not ascending" pad:"padding bytes" dup:"out of order" \
           n-big:"payload is" layer-big:"out of range" \
           members:"more members than the head's evicted tokens" \
           late:"out of order"; do
    h=${how%%:*}
    msg=${how#*:}
    edit pm.skv bad-$h.skv $h
    run skv-attend -s 399 --queries tr.skv bad-$h.skv
    expect_rc 1 "hostile CNTR ($h) rejected by skv-attend"
    expect_err "$msg" "... with the message '$msg'"
    run skv-trace info bad-$h.skv
    expect_rc 1 "hostile CNTR ($h) rejected by skv-trace info (the checker)"
    run skv-stats mem bad-$h.skv
    expect_rc 1 "hostile CNTR ($h) rejected by skv-stats mem (layer reader)"
    expect_err "bad-$h.skv: " "... naming the file"
done
skv-alloc -p prune-merge -b 0.3 tr.skv > al.skv
edit al.skv bad-alhd.skv alhd-k0
run skv-quant bad-alhd.skv
expect_rc 1 "an ALHD with the merge flag and no clusters is rejected by skv-quant"
expect_err "clusters 0" "... naming the clusters field"
run skv-trace info bad-alhd.skv
expect_rc 1 "... and by skv-trace info"
