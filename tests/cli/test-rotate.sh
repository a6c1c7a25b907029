# test-rotate.sh -- the randomized Hadamard rotation in the packed cache
# (format 1.3, skv-quant --rotate / --rotate-values): skv-alloc | skv-quant
# --rotate | skv-attend | skv-stats end to end, the rotation fields and the
# byte model recomputed here from smartkv(5), the fused kernels against the
# float64 reference on the same rows, usage errors, hostile rotation fields
# and a truncated cache (valid CRCs), and the CUDA refusal.
. "$SKV_TOP/tests/cli/lib.sh"

if ! command -v python3 >/dev/null 2>&1; then
    skip "rotation CLI tests" "python3 not found (needed to read and edit test inputs)"
    exit 0
fi
# fields FILE: the rotation fields as smartkv(5) places them, one line
# "k_mode rotate | rotate seed reserved-zero per PBKT..." (uncompressed file)
fields() { python3 - "$1" <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read()
p, out = 8, []
while p < len(b):
    typ = b[p:p + 4].decode()
    size = struct.unpack_from("<Q", b, p + 8)[0]
    q = b[p + 24:p + 24 + size]
    if typ == "PKHD":
        out.append("pkhd %d %d" % struct.unpack_from("<HH", q, 12))
    elif typ == "PBKT":
        rot, seed = struct.unpack_from("<IQ", q, 44)
        out.append("pbkt %d %d %s" % (rot, seed, "zero" if q[56:64] == bytes(8) else "nonzero"))
    p += 24 + size + 4
print(" ".join(sorted(set(out))))
PY
}
chunk_bytes() { python3 "$SKV_TOP/tests/cli/mktrace.py" list "$1" |
    awk -v types="$2" 'BEGIN { n = split(types, t, ","); for (i = 1; i <= n; i++) want[t[i]] = 1 }
                       want[$1] { s += $2 } END { print s + 0 }'; }
# worst relative L2 error of skv-stats compare A B
worst() { skv-stats compare "$1" "$2" | awk 'NR > 2 && $3 + 0 > m { m = $3 + 0 } END { printf "%g\n", m }'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

skv-trace synth -L 2 -H 4 -K 2 -D 64 -T 150 --outliers 4 -o t.skv || exit 1
run skv-attend -s all -r -o exact.skv t.skv
expect_rc 0 "the trace's own attention (float64)"

# ---- skv-alloc | skv-quant --rotate | skv-attend | skv-stats ----
skv-alloc -p smartkv -b 0.5 t.skv 2> "$T/err" | vg skv-quant --rotate -o c.skv - 2>> "$T/err"
rc=$?
expect_rc 0 "skv-alloc | skv-quant --rotate"
skv-alloc -p smartkv -b 0.5 -o a.skv t.skv 2> /dev/null
run skv-quant -o c0.skv a.skv
expect_rc 0 "the same allocation without rotation"
f=$(fields c.skv)
check "rotation fields as smartkv(5) says (PKHD k_mode 1 rotate 1; PBKT rotate 1 seed 1, 56..63 zero)" \
    test "$f" = "pbkt 1 1 zero pkhd 1 1"
check "no rotation fields without --rotate" test "$(fields c0.skv)" = "pbkt 0 0 zero pkhd 1 0"
b1=$(chunk_bytes c.skv PKHD,PBKT) b0=$(chunk_bytes c0.skv PKHD,PBKT)
check "the rotation costs no byte ($b1 = $b0, the allocation's byte model)" test "$b1" = "$b0"
run skv-stats mem c.skv
expect_rc 0 "skv-stats mem on a rotated cache"
check "skv-stats mem counts every byte ($b1)" grep -q "c.skv: $b1 bytes (byte model $b1)" "$T/out"
run skv-attend -s all --queries t.skv -o a1.skv c.skv
expect_rc 0 "skv-attend on a rotated cache"
run skv-attend -s all --queries t.skv -o a0.skv c0.skv
run skv-stats compare a1.skv exact.skv
expect_rc 0 "skv-stats compare on the rotated cache's attention"
e1=$(worst a1.skv exact.skv) e0=$(worst a0.skv exact.skv)
echo "  info smartkv beta 0.5: worst head rel_l2 $e0 unrotated, $e1 rotated keys (synthetic trace, 4 outlier channels)"

# ---- every kernel and --reference agree on a rotated cache ----
run skv-quant -u 3 --rotate --rotate-values --seed 77 --keys channel --key-tokens 16 -o cr.skv t.skv
expect_rc 0 "skv-quant -u 3 --rotate --rotate-values --keys channel"
check "keys per channel with both rotations (PBKT rotate 3 seed 77)" \
    test "$(fields cr.skv)" = "pbkt 3 77 zero pkhd 4 3"
run skv-attend -s all -r --queries t.skv -o ref.skv cr.skv
expect_rc 0 "skv-attend --reference on a rotated cache"
for k in scalar avx2; do
    run skv-attend -s all -k $k --queries t.skv -o $k.skv cr.skv
    expect_rc 0 "skv-attend -k $k on a rotated cache"
    e=$(worst $k.skv ref.skv)
    if lt "$e" 1e-5; then ok "$k kernel = float64 on rotated rows (rel_l2 $e)"
    else echo "       rel_l2 $e (bound 1e-5)"; bad "$k kernel = float64 on rotated rows"; fi
done
# 16 bits: rotated and back, attention as the trace's (fp16 rounding only)
run skv-quant -u 16 --rotate --rotate-values --keep-queries -o c16.skv t.skv
run skv-attend -s all -o a16.skv c16.skv
e=$(worst a16.skv exact.skv)
if lt "$e" 1e-3; then ok "16-bit rotated cache attends like the trace (rel_l2 $e)"
else echo "       rel_l2 $e (bound 1e-3)"; bad "16-bit rotated cache attends like the trace"; fi
run skv-quant -d -o d16.skv c16.skv
expect_rc 0 "skv-quant -d rotates the rows back"
run skv-attend -s all -r -o ad16.skv d16.skv
e=$(worst ad16.skv exact.skv)
if lt "$e" 1e-3; then ok "the decoded trace is in the model's basis (rel_l2 $e)"
else echo "       rel_l2 $e (bound 1e-3)"; bad "the decoded trace is in the model's basis"; fi

# ---- usage and refusals ----
run skv-quant -u 2 --seed 3 -o x.skv t.skv
expect_rc 2 "--seed without a rotation is a usage error"
run skv-quant -d --rotate -o x.skv c.skv
expect_rc 2 "-d --rotate is a usage error"
skv-trace synth -L 1 -H 2 -K 1 -D 48 -T 20 -o odd.skv || exit 1
run skv-quant -u 2 --rotate -o x.skv odd.skv
expect_rc 1 "head_dim 48 is refused"
expect_err "skv-quant: odd.skv: the Hadamard rotation needs a power-of-two head_dim, not 48" \
    "the head_dim refusal names the file and the head_dim"
check "no output after the refusals" test ! -e x.skv

# ---- hostile rotation fields (valid CRCs) and a truncated cache ----
poke cr.skv bad1.skv PBKT 0 44 4          # unknown flag
poke cr.skv bad2.skv PKHD 0 14 1 u16      # PKHD says keys only, the buckets both
poke cr.skv bad3.skv PBKT 1 48 99 u64     # a second seed
poke cr.skv bad4.skv PBKT 0 56 1          # reserved bytes
poke cr.skv bad5.skv PKHD 0 14 8 u16      # unknown PKHD flag
poke c0.skv bad6.skv PBKT 0 48 5 u64      # a seed without a rotation
python3 -c 'import sys; b = open("cr.skv", "rb").read(); open("bad7.skv", "wb").write(b[:len(b) * 2 // 3])'
for cmd in "skv-attend --queries t.skv -o o.skv" "skv-stats mem" "skv-trace info" "skv-quant -d -o o.skv"; do
    for i in 1 2 3 4 5 6 7; do
        # shellcheck disable=SC2086
        run $cmd bad$i.skv
        expect_rc 1 "$cmd rejects bad$i.skv"
    done
done
check "no output from a rejected input" test ! -e o.skv
run skv-trace info bad1.skv
expect_err "skv-trace info: bad1.skv: PBKT chunk at byte" "bad flags: file and byte offset"
expect_err "unknown rotation flags 0x4" "bad flags: what"
run skv-attend --queries t.skv -o o.skv bad2.skv
expect_err "rotation flags 0x3 differ from the PKHD chunk's 0x1" "PKHD and PBKT flags that differ are named"
run skv-stats mem bad3.skv
expect_err "rotation seed 99 differs from the first bucket's 77" "a second seed is named"
run skv-trace info bad4.skv
expect_err "reserved" "reserved PBKT bytes are named"
run skv-quant -d -o o.skv bad5.skv
expect_err "unknown rotation flags 0x8" "an unknown PKHD flag is named"
run skv-trace info bad6.skv
expect_err "rotation seed 5 without a rotation" "a seed without a rotation is named"
run skv-attend --queries t.skv -o o.skv bad7.skv
expect_err "skv-attend: bad7.skv:" "a truncated rotated cache names the file"

# ---- no GPU path for rotated caches ----
run skv-attend --device cuda -o o.skv c.skv
expect_rc 1 "--device cuda refuses a rotated cache"
expect_err "skv-attend: c.skv: rotated keys (skv-quant --rotate, format 1.3) have no CUDA kernel" \
    "the CUDA refusal says why, before looking for a device"
check "no output after the CUDA refusal" test ! -e o.skv
