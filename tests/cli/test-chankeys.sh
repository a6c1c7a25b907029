# test-chankeys.sh -- keys per channel in the packed cache (format 1.2):
# skv-alloc kivi:N | skv-quant | skv-attend | skv-stats end to end, the byte
# model recomputed here from smartkv(5), the fused kernels against float64
# attention on the same rows, usage errors, malformed groups and versions
# (valid CRCs), and the CUDA refusal.
. "$SKV_TOP/tests/cli/lib.sh"

if ! command -v python3 >/dev/null 2>&1; then
    skip "keys-per-channel CLI tests" "python3 not found (needed to edit test inputs)"
    exit 0
fi
# the byte model of a bucket of n rows (smartkv(5) PACKED CACHES) at bits,
# d channels, keys per channel over kt rows (k_group kg for the partial
# group's rows), values per token in groups of vg: file bytes of one chunk
bucket_bytes() { python3 - "$@" <<'PY'
import sys
bits, n, d, kt, kg, vg = map(int, sys.argv[1:7])
A = lambda x: (x + 63) // 64 * 64
R = 2 * d if bits == 16 else (d + 7) // 8 * bits
kp = 0 if bits == 16 else n // kt * 4 * d + n % kt * (d // kg) * 4
vp = 0 if bits == 16 else n * (d // vg) * 4
print(28 + 64 + A(4 * n) + A(kp) + A(n * R) + A(vp) + A(n * R))
PY
}
chunk_bytes() { python3 "$SKV_TOP/tests/cli/mktrace.py" list "$1" |
    awk -v types="$2" 'BEGIN { n = split(types, t, ","); for (i = 1; i <= n; i++) want[t[i]] = 1 }
                       want[$1] { s += $2 } END { print s + 0 }'; }
# worst relative L2 error of skv-stats compare A B
worst() { skv-stats compare "$1" "$2" | awk 'NR > 2 && $3 + 0 > m { m = $3 + 0 } END { printf "%g\n", m }'; }

skv-trace synth -L 2 -H 4 -K 2 -D 64 -T 150 -o t.skv || exit 1

# ---- kivi:2 end to end: 150 tokens, residual 32 -> 128 quantized, 22 fp16 ----
run skv-alloc -p kivi:2 --residual 32 -o a.skv t.skv
expect_rc 0 "skv-alloc -p kivi:2"
run skv-quant -o c.skv a.skv
expect_rc 0 "skv-quant of a kivi:2 allocation"
expect_err "2-bit 512 (85.3%) 16-bit 88 (14.7%)" "kivi:2 quantizes floor(T/R)*R tokens, the rest fp16"
expect_err "keys=channel key-tokens=32" "the allocation says keys per channel"
run skv-trace info c.skv
expect_rc 0 "skv-trace info accepts the cache"
check "the cache is format 1.3" grep -q "smartkv 1.3" "$T/out"
# per (layer, KV head): 128 rows at 2 bits (4 key groups, values in groups
# of 32 channels) and 22 at 16 bits; plus the PKHD chunk (92 bytes)
b2=$(bucket_bytes 2 128 64 32 64 32) b16=$(bucket_bytes 16 22 64 32 64 32)
want=$((92 + 4 * (b2 + b16)))
got=$(chunk_bytes c.skv PKHD,PBKT)
if [ "$got" = "$want" ]; then ok "cache bytes follow smartkv(5) ($got)"; else
    echo "       file $got bytes, smartkv(5) gives $want"; bad "cache bytes follow smartkv(5)"; fi
run skv-stats mem c.skv
expect_rc 0 "skv-stats mem on a kivi cache"
check "skv-stats mem counts every byte ($want)" grep -q "c.skv: $want bytes (byte model $want)" "$T/out"
# scales: 4 groups * 64 channels * 4 bytes (keys) + 128 rows * 2 groups * 4 (values), per head
check "skv-stats mem counts the group scales and zero points" \
    grep -Eq "scales +$((4 * (4 * 64 * 4 + 128 * 2 * 4))) " "$T/out"

# ---- attention: fused kernels against float64 on the same rows ----
run skv-attend -s all -r --queries t.skv -o ref.skv c.skv
expect_rc 0 "skv-attend --reference on a kivi cache"
for k in scalar avx2; do
    run skv-attend -s all -k $k --queries t.skv -o $k.skv c.skv
    expect_rc 0 "skv-attend -k $k on a kivi cache"
    e=$(worst $k.skv ref.skv)
    if awk -v e="$e" 'BEGIN { exit !(e < 1e-5) }'; then ok "$k kernel = float64 (rel_l2 $e)"
    else echo "       rel_l2 $e (bound 1e-5)"; bad "$k kernel = float64"; fi
done
# the attention of the trace itself, and per-token keys at the same width
run skv-attend -s all -r -o exact.skv t.skv
run skv-quant -u 2 --keep-queries -o u2.skv t.skv
run skv-attend -s all -o u2a.skv u2.skv
ek=$(worst scalar.skv exact.skv) eu=$(worst u2a.skv exact.skv)
echo "  info kivi:2 rel_l2 $ek, uniform:2 (keys per token) $eu (synthetic trace)"

# ---- skv-quant --keys channel ----
run skv-quant -u 4 --keys channel --key-tokens 16 --keep-queries -o c4.skv t.skv
expect_rc 0 "skv-quant -u 4 --keys channel --key-tokens 16"
b4=$(bucket_bytes 4 150 64 16 64 64)
got=$(chunk_bytes c4.skv PKHD,PBKT)
if [ "$got" = "$((92 + 4 * b4))" ]; then ok "a partial key group (150 = 9*16 + 6) costs what smartkv(5) says"
else echo "       file $got, smartkv(5) $((92 + 4 * b4))"; bad "partial key group bytes"; fi
run skv-attend -s all -k scalar -o c4a.skv c4.skv
run skv-attend -s all -r -o c4r.skv c4.skv
e=$(worst c4a.skv c4r.skv)
if awk -v e="$e" 'BEGIN { exit !(e < 1e-5) }'; then ok "partial group: kernel = float64 (rel_l2 $e)"
else echo "       rel_l2 $e"; bad "partial group: kernel = float64"; fi
run skv-quant -d -o back.skv c4.skv
expect_rc 0 "skv-quant -d on a cache with keys per channel"

# ---- usage errors (exit 2) ----
run skv-quant --keys channel -o x.skv t.skv
expect_rc 2 "--keys without --uniform is a usage error"
run skv-quant -u 4 --key-tokens 16 -o x.skv t.skv
expect_rc 2 "--key-tokens without --keys channel"
run skv-quant -u 4 --keys diagonal -o x.skv t.skv
expect_rc 2 "--keys takes token or channel"
expect_err "--keys: token or channel" "--keys names its values"
run skv-quant -u 4 --keys channel --key-tokens 1 -o x.skv t.skv
expect_rc 2 "--key-tokens 1 is out of range"
run skv-quant -u 4 --keys channel --k-mode sym -o x.skv t.skv
expect_rc 2 "--keys channel with --k-mode"
run skv-alloc -p kivi:16 -o x.skv t.skv
expect_rc 2 "kivi:16 is a usage error"
run skv-alloc -p kivi:2 --residual 40 -o x.skv t.skv
expect_rc 2 "a residual that is not a multiple of the key group"
expect_err "multiple of the key group" "the residual error says why"
run skv-alloc -p kivi:2 --keys token -o x.skv t.skv
expect_rc 2 "kivi with --keys token"
check "no output after usage errors" test ! -e x.skv

# ---- malformed groups and versions (valid CRCs): tool: FILE: what (where) ----
poke c.skv bad1.skv PKHD 0 28 5       # k_tokens 5 in the PKHD, 32 in the buckets
poke c.skv bad2.skv PBKT 0 40 1       # a key group of one row
poke c.skv bad3.skv PKHD 0 12 1       # per-token keys with k_tokens set
poke c.skv bad4.skv PBKT 1 56 7       # reserved PBKT bytes
poke c.skv bad5.skv PKHD 0 16 4       # values per channel
poke c.skv bad6.skv HEAD 0 2 4 u16    # format 1.4
for cmd in "skv-attend --queries t.skv -o o.skv" "skv-stats mem" "skv-trace info" "skv-quant -d -o o.skv"; do
    for i in 1 2 3 4 5 6; do
        # shellcheck disable=SC2086
        run $cmd bad$i.skv
        expect_rc 1 "$cmd rejects bad$i.skv"
    done
done
check "no output from a rejected input" test ! -e o.skv
run skv-attend --queries t.skv -o o.skv bad1.skv
expect_err "skv-attend: bad1.skv: PBKT chunk at byte" "mismatched k_tokens: file and byte offset"
expect_err "quantizer settings differ from the PKHD" "mismatched k_tokens: what"
run skv-attend --queries t.skv -o o.skv bad2.skv
expect_err "key group of 1 tokens" "a one-row key group is named"
run skv-stats mem bad3.skv
expect_err "reserved" "k_tokens without keys per channel: the field is named"
run skv-trace info bad4.skv
expect_err "reserved" "reserved PBKT bytes are named"
run skv-trace info bad5.skv
expect_err "unknown V quantization mode 4" "values per channel are refused"
run skv-attend --queries t.skv -o o.skv bad6.skv
expect_err "format version 1.4 is newer than this reader (1.0 to 1.3)" "a newer minor version is refused by name"
poke t.skv old.skv HEAD 0 2 0 u16     # a 1.0 stream is still read
run skv-trace info old.skv
expect_rc 0 "a 1.0 stream is read"

# ---- no GPU path for keys per channel ----
run skv-attend --device cuda -o o.skv c.skv
expect_rc 1 "--device cuda refuses keys per channel"
expect_err "skv-attend: c.skv: keys per channel (k_mode 4, format 1.2) have no CUDA kernel" \
    "the CUDA refusal says why, before looking for a device"
check "no output after the CUDA refusal" test ! -e o.skv
