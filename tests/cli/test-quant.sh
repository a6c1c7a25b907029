# test-quant.sh -- skv-quant: packing, the way back, budgets, bad input.
. "$SKV_TOP/tests/cli/lib.sh"

mk() { python3 "$SKV_TOP/tests/cli/mktrace.py" "$@"; }
# Sum of the stored bytes of the given chunk types in a stream.
chunk_bytes() { python3 "$SKV_TOP/tests/cli/mktrace.py" list "$1" |
    awk -v types="$2" 'BEGIN { n = split(types, t, ","); for (i = 1; i <= n; i++) want[t[i]] = 1 }
                       want[$1] { s += $2 } END { print s + 0 }'; }

if ! command -v python3 >/dev/null 2>&1; then
    skip "skv-quant CLI tests" "python3 not found (needed to build test inputs)"
    exit 0
fi
mk trace t.skv
mk trace ta.skv --alloc 2,4,0,8,16,3,2,2
mk trace t16.skv --dtype f16 --dim 24 --tokens 33

run skv-quant --help
expect_rc 0 "--help exits 0"
check "--help lists the options" grep -q -- "--drop-queries" "$T/out"
run skv-quant --version
expect_rc 0 "--version exits 0"

# ---- uniform ----
run skv-quant --uniform 4 --keep-queries -o c.skv t.skv
expect_rc 0 "uniform 4"
expect_err "beta" "uniform 4 reports beta"
expect_err "4-bit 160 (100.0%)" "uniform 4 histogram"
bytes=$(chunk_bytes c.skv PKHD,PBKT)
expect_err "packed K/V $bytes bytes" "reported bytes are the PKHD+PBKT bytes in the file"
check "no TENS K/V left (only Q blocks: 2 layers x 4 heads)" \
    test "$(python3 "$SKV_TOP/tests/cli/mktrace.py" list c.skv | grep -c '^TENS')" = 8

run skv-quant -q --uniform 16 --drop-queries -o c16.skv t.skv
expect_rc 0 "uniform 16 without queries"
check "-q is quiet" test ! -s "$T/err"
check "--drop-queries leaves no TENS chunks" \
    sh -c "! python3 '$SKV_TOP/tests/cli/mktrace.py' list c16.skv | grep -q '^TENS'"

run skv-quant --uniform 3 --group 8 --k-mode sym --v-mode asym -o cg.skv t.skv
expect_rc 0 "uniform 3 with groups of 8 and sym keys"
run skv-quant --uniform 2 --k-group 16 --v-group 32 -z t16.skv
expect_rc 1 "group 16 does not divide head_dim 24"
expect_err "t16.skv" "the group error names the input"
run skv-quant --uniform 2 --k-group 8 --v-group 24 -z -o cz.skv t16.skv
expect_rc 0 "compressed output, fp16 trace"

# ---- the way back ----
run skv-quant -d -o back.skv c.skv
expect_rc 0 "-d dequantizes"
run skv-quant -q --uniform 8 -o again.skv back.skv
expect_rc 0 "the dequantized trace is a valid trace"
run skv-quant -d -o x.skv c16.skv
expect_rc 1 "-d on a cache without queries fails"
expect_err "c16.skv: the cache has no queries" "... and says why, naming the file"
check "... leaving no output" test ! -e x.skv
run skv-quant -d -o x.skv t.skv
expect_rc 1 "-d on a plain trace fails"
expect_err "t.skv: this stream is a plain trace" "... naming the file"

# ---- allocations ----
run skv-quant --keep-queries --keep-alloc -o ca.skv ta.skv
expect_rc 0 "quantize by the allocation"
expect_err "requested beta 0.2500, policy=mktrace" "the allocation is reported"
expect_err "0-bit 20 (12.5%) 2-bit 60 (37.5%)" "its histogram"
check "allocation chunks pass through with --keep-alloc" \
    sh -c "python3 '$SKV_TOP/tests/cli/mktrace.py' list ca.skv | grep -q '^ALOC'"
run sh -c "skv-quant -d ca.skv | skv-quant -q > ca2.skv"
expect_rc 0 "-d keeps the allocation: quantize | -d | quantize"
run skv-quant -q --uniform 4 -o cu.skv ta.skv
expect_rc 0 "--uniform overrides an allocation"
check "... and drops its chunks" \
    sh -c "! python3 '$SKV_TOP/tests/cli/mktrace.py' list cu.skv | grep -q '^AL'"

# ---- bad input ----
run skv-quant -o x.skv t.skv
expect_rc 1 "trace without allocation"
expect_err "t.skv: no allocation" "... says so, naming the file"
check "... no output left" test ! -e x.skv
mk trace tshape.skv --alloc 2,4 --alloc-tokens 39
run skv-quant -o x.skv tshape.skv
expect_rc 1 "allocation for another shape"
expect_err "tshape.skv: the allocation is for another shape" "... says so"
mk trace tpred.skv --alloc 2,4 --predict-offset 64
run skv-quant -o x.skv tpred.skv
expect_rc 1 "allocation whose predicted bytes differ from the byte model"
expect_err "disagree on the byte model" "... says so"
mk trace tnan.skv --nan
run skv-quant --uniform 4 -o x.skv tnan.skv
expect_rc 1 "NaN in the keys"
expect_err "tnan.skv: value nan is not finite or beyond the fp16 range (K of layer 1 kv head 0, token 0, channel 5)" "... located exactly"
check "... no output left" test ! -e x.skv
head -c 3000 ta.skv > cut.skv
run skv-quant -o x.skv cut.skv
expect_rc 1 "truncated input"
expect_err "cut.skv: truncated" "... named"
head -c 5000 ca.skv > cutc.skv
run skv-quant -d -o x.skv cutc.skv
expect_rc 1 "truncated cache"
expect_err "cutc.skv: truncated" "... named"
run skv-quant --uniform 4 -o x.skv c.skv
expect_rc 1 "a cache is not a trace"
expect_err "c.skv: this stream holds a packed cache" "... says so"
run skv-quant --uniform 4 -o x.skv nonexistent.skv
expect_rc 1 "missing input"
expect_err "nonexistent.skv: cannot open" "... named"
run sh -c "skv-quant --uniform 4 < t.skv > /dev/full"
expect_rc 1 "write error"

# ---- usage ----
run skv-quant --group 8 t.skv
expect_rc 2 "--group needs --uniform"
run skv-quant --uniform 5 t.skv
expect_rc 2 "--uniform 5"
run skv-quant -d --uniform 4 c.skv
expect_rc 2 "-d with --uniform"
run skv-quant --k-mode both --uniform 4 t.skv
expect_rc 2 "bad mode"
run skv-quant -z12 --uniform 4 t.skv
expect_rc 2 "bad compression level"
run skv-quant t.skv ta.skv
expect_rc 2 "two inputs"
run skv-quant --bogus
expect_rc 2 "unknown option"

# ---- with skv-trace (once it exists) ----
if command -v skv-trace >/dev/null 2>&1; then
    run sh -c "skv-trace synth --tokens 64 | skv-quant -q --uniform 4 --keep-queries | skv-quant -d > p.skv"
    expect_rc 0 "skv-trace synth | skv-quant --uniform 4 | skv-quant -d"
    run skv-quant -q --uniform 8 -o p2.skv p.skv
    expect_rc 0 "... gives a trace"
else
    skip "skv-trace synth | skv-quant pipeline" "skv-trace not built yet"
fi
