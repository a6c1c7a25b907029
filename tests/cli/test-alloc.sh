# skv-alloc: pipelines, pass-through, policies, exit codes, messages, bad input.
. "$SKV_TOP/tests/cli/lib.sh"

run skv-trace synth -L 2 -T 300 -o a.skv
expect_rc 0 "synth a small trace"

# pipeline and pass-through
run sh -c 'skv-trace synth -L 2 -T 300 | skv-alloc -p smartkv -b 0.3 | skv-trace info --json -'
expect_rc 0 "synth | alloc | info"
check "allocation chunks appended: 1 ALHD, layers x kv heads ALOC" python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
c = d["chunk_types"]
assert c["ALHD"]["count"] == 1 and c["ALOC"]["count"] == 2 * 3, c
assert d["complete"] and d["crc"] == "ok"' "$T/out"
run skv-alloc -b 0.3 a.skv -o b.skv
expect_rc 0 "alloc to a file"
run sh -c 'skv-alloc -b 0.3 < a.skv | cmp - b.skv'
expect_rc 0 "stdin/stdout equals file output (deterministic)"
# the trace is copied verbatim: everything before a.skv's DONE chunk (44 bytes)
# is a prefix of the output
size=$(wc -c < a.skv)
check "trace chunks passed through byte for byte" \
    sh -c "head -c $((size - 44)) a.skv > p1 && head -c $((size - 44)) b.skv > p2 && cmp p1 p2"
run sh -c 'skv-alloc -b 0.4 b.skv | skv-trace info --json -'
check "re-allocating replaces the allocation" python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))["chunk_types"]
assert c["ALHD"]["count"] == 1 and c["ALOC"]["count"] == 6, c' "$T/out"
run sh -c 'skv-alloc -z -b 0.3 a.skv | skv-trace cat -d | cmp - b.skv'
expect_rc 0 "--compress output decompresses to the same stream"

# --summary
run skv-alloc -b 0.3 --summary a.skv -o c.skv
expect_rc 0 "--summary"
expect_err "beta 0.29" "--summary reports the predicted beta"
expect_err "16-bit" "--summary histogram header"
check "--summary has one row per layer and a total" sh -c \
    "grep -c '^[01] ' '$T/err' | grep -qx 2 && grep -q '^total' '$T/err'"

# every policy, importance mode and option runs and stays within budget
for p in smartkv greedy optimal random position layer-aware; do
    run skv-alloc -p $p -b 0.3 --summary a.skv -o p.skv
    expect_rc 0 "policy $p"
    check "policy $p uses 99.5-100% of the budget" sh -c "sed -n 's/.*bytes, \([0-9.]*\)% used.*/\1/p' '$T/err' | \
        awk '{ n++; if (\$1 > 100 || \$1 < 99.5) badv = 1 } END { exit (n != 1 || badv) }'"
done
run skv-alloc -p uniform:4 --summary a.skv -o p.skv
expect_rc 0 "policy uniform:4 without a budget"
check "uniform:4 puts every token at 4 bits" sh -c "grep '^total' '$T/err' | awk '{exit !(\$2==0 && \$3==0 && \$4==0 && \$5==1800 && \$6==0 && \$7==0)}'"
for m in ema cumulative normalized window oracle; do
    run skv-alloc --importance $m -b 0.3 a.skv -o p.skv
    expect_rc 0 "importance $m"
done
run skv-alloc -b 0.3 --share-layers --bits 2,4,8 --sinks 2 --recent 8 --threads 1 \
    --decay 0.5 --realloc 4 --window 16 --group 32 --k-mode sym --v-mode asym --seed 7 a.skv -o p.skv
expect_rc 0 "all options together"
run skv-alloc -b 2 --summary a.skv -o p.skv
expect_rc 0 "beta >= 1"
check "beta >= 1 stores everything at 16 bits" sh -c "grep '^total' '$T/err' | awk '{exit !(\$7==1800)}'"

# with skv-quant (when it exists) the pipeline composes end to end
if command -v skv-quant >/dev/null 2>&1; then
    run sh -c 'skv-trace synth -L 2 -T 300 | skv-alloc -p smartkv -b 0.3 | skv-quant > cache.skv'
    expect_rc 0 "synth | alloc | quant"
    # what skv-quant wrote equals the allocator's byte model, within the budget
    # (fp16 K+V of 2 layers x 3 kv heads x 300 tokens x 64 dims: 460800 bytes)
    check "quantized bytes equal the predicted bytes, within budget" sh -c "
        sed -n 's/.*packed K\/V \([0-9]*\) bytes.*byte model \([0-9]*\).*/\1 \2/p' '$T/err' |
        awk '{ n++; if (\$1 != \$2 || \$1 > 0.3 * 460800) badv = 1 } END { exit (n != 1 || badv) }'"
else
    skip "synth | alloc | quant" "skv-quant not built on this branch"
fi

# usage errors: exit 2
run skv-alloc -b 0.01 a.skv -o x.skv
expect_rc 1 "budget below the smallest cache (depends on the data: exit 1)"
expect_err "below the smallest cache" "budget message"
check "no output left after the budget error" test ! -e x.skv
run skv-alloc -b 0 a.skv -o x.skv
expect_rc 2 "beta 0"
run skv-alloc -b abc a.skv -o x.skv
expect_rc 2 "beta not a number"
run skv-alloc --bits 2,5 a.skv -o x.skv
expect_rc 2 "width 5"
expect_err "width 5 is not one of 0, 2, 3, 4, 8, 16" "width message"
run skv-alloc -p uniform:5 a.skv -o x.skv
expect_rc 2 "uniform:5"
run skv-alloc -p uniform:3 --bits 2,4 a.skv -o x.skv
expect_rc 2 "uniform width outside --bits"
expect_err "not in --bits" "uniform width message"
run skv-alloc -p bogus a.skv -o x.skv
expect_rc 2 "unknown policy"
expect_err "unknown policy 'bogus'" "policy message"
run skv-alloc --importance bogus a.skv -o x.skv
expect_rc 2 "unknown importance mode"
run skv-alloc --decay 1 a.skv -o x.skv
expect_rc 2 "decay 1"
run skv-alloc --realloc 0 a.skv -o x.skv
expect_rc 2 "realloc 0"
run skv-alloc --group 48 a.skv -o x.skv
expect_rc 1 "group not dividing head_dim (the trace's: exit 1)"
expect_err "does not divide head_dim 64" "group message"
run skv-alloc -p layer-aware --share-layers a.skv -o x.skv
expect_rc 2 "layer-aware with --share-layers"
run skv-alloc --frobnicate a.skv
expect_rc 2 "unknown option"
run skv-alloc a.skv b.skv
expect_rc 2 "two inputs"
check "no output left after usage errors" test ! -e x.skv
run skv-alloc --help
expect_rc 0 "--help exits 0"
check "--help lists every option" sh -c "for o in policy budget importance decay realloc \
    window share-layers bits sinks recent seed threads group k-mode v-mode summary output \
    compress; do grep -q -- \"--\$o\" '$T/out' || exit 1; done"
run skv-alloc --version
expect_rc 0 "--version exits 0"

# bad input: exit 1, "skv-alloc: FILE: message"
size=$(wc -c < a.skv)
head -c $((size / 2)) a.skv > half.skv
run skv-alloc -b 0.3 half.skv -o x.skv
expect_rc 1 "truncated trace"
expect_err "skv-alloc: half.skv: truncated" "truncated message"
check "no output left after a truncated input" test ! -e x.skv
printf 'hello\n' > text.txt
run skv-alloc text.txt -o x.skv
expect_rc 1 "not a trace"
expect_err "skv-alloc: text.txt: not a smartkv stream" "not-a-trace message"
run skv-alloc missing.skv -o x.skv
expect_rc 1 "missing file"
expect_err "missing.skv: cannot open" "missing file message"
run sh -c 'skv-alloc -b 0.3 a.skv | head -c 5000 | skv-alloc -b 0.3 -o x.skv'
expect_rc 1 "truncated pipe input"
expect_err "skv-alloc: (stdin): truncated" "truncated pipe message"

# the baselines offline: each packs, attends, and fits its budget
run skv-alloc -p atskv -b 0.3 -o x.skv nothing.skv
expect_rc 2 "skv-alloc -p atskv without --weights is a usage error"
for p in q4_0 streaming h2o snapkv mikv sliding dynamickv uncomp rocketkv; do
    run sh -c "skv-alloc -p $p -b 0.3 --threads 1 a.skv | skv-quant -o b.skv && skv-attend -s 8:16 --queries a.skv b.skv -o o.skv"
    expect_rc 0 "$p: allocate, pack and attend"
    check "$p: the packed cache fits beta 0.3" grep -q 'b\.skv: beta 0\.\(2[0-9]*\|3000\) ' "$T/err"
done
# razor: head scores from a file (skv-trace heads); 2 layers x 9 query heads
{ echo "layers 2 heads 9"; for l in 0 1; do for h in 0 1 2 3 4 5 6 7 8; do
    if [ $l$h = 14 ]; then echo "$l $h 0.9 0"; else echo "$l $h 0 0"; fi; done; done; } > heads.txt
run sh -c "skv-alloc -p razor --heads heads.txt -b 0.3 --threads 1 --json a.skv | skv-quant -o b.skv && skv-attend -s 8:16 --queries a.skv b.skv -o o.skv"
expect_rc 0 "razor: allocate, pack and attend"
check "razor: the packed cache fits beta 0.3" grep -q 'b\.skv: beta 0\.\(2[0-9]*\|3000\) ' "$T/err"
run skv-alloc -p razor --heads heads.txt -b 0.3 --threads 1 --json a.skv -o x.skv
check "razor: KV head 1 of layer 1 (query heads 3..5, one of them a retrieval head) keeps all 300 tokens" python3 -c '
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
assert r["layers"][1][-1] >= 300 and r["layers"][0][-1] < 300, r["layers"]
' "$T/err"
run skv-alloc -p razor -b 0.3 a.skv -o x.skv
expect_rc 2 "razor without --heads"
printf 'layers 3 heads 9\n' > h3.txt
run skv-alloc -p razor --heads h3.txt -b 0.3 a.skv -o x.skv
expect_rc 1 "truncated head-score file"
expect_err "h3.txt: ends after 0 of 27 heads" "truncated head-score file: message"
{ echo "layers 3 heads 9"; for l in 0 1 2; do for h in 0 1 2 3 4 5 6 7 8; do echo "$l $h 0 0"; done; done; } > h3.txt
rm -f x.skv
run skv-alloc -p razor --heads h3.txt -b 0.3 a.skv -o x.skv
expect_rc 1 "head scores of another shape"
expect_err "do not fit 2 layers" "head scores of another shape: message"
check "no output left after the failure" test ! -e x.skv
run skv-alloc -p q8_0 -b 0.3 a.skv -o x.skv
expect_rc 1 "q8_0 does not fit beta 0.3"
run skv-alloc -p mikv --bits 16 a.skv -o x.skv
expect_rc 2 "mikv needs two widths"
