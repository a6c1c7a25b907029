# skv-attend and skv-stats: pipelines, agreement with the oracle, bad input.
. "$SKV_TOP/tests/cli/lib.sh"

skv-trace synth -L 2 -T 1000 -o t.skv || bad "synth"

# reference and dense on a trace
run skv-attend --reference -s 990: --probs t.skv -o ref.skv
expect_rc 0 "--reference on a trace"
run skv-attend --dense fp32 -s 990: --probs t.skv -o d32.skv
expect_rc 0 "--dense fp32"
run skv-attend --dense fp16 -s 990: -k scalar t.skv -o d16.skv
expect_rc 0 "--dense fp16 with the scalar kernel"
run skv-stats compare --json ref.skv d32.skv
check "dense fp32 equals the reference within 1e-5" python3 -c '
import json,sys; d=json.load(open(sys.argv[1]))["overall"]
assert d["max_rel"] < 1e-5 and d["cosine"] > 0.99999 and d["top8"] > 0.99, d' "$T/out"
run skv-stats compare ref.skv d16.skv
expect_rc 0 "compare without probabilities"
check "compare table has an overall line" grep -q '^all ' "$T/out"

# the pipeline: synth | alloc | (quant) | attend
if command -v skv-quant >/dev/null 2>&1; then
    run sh -c 'skv-trace synth -L 2 -T 1000 | skv-alloc -b 0.25 | skv-quant --keep-queries | skv-attend -s 990: --probs > out.skv'
    expect_rc 0 "synth | alloc | quant | attend"
else
    skip "synth | alloc | quant | attend" "skv-quant is not built in this tree"
    run sh -c 'skv-trace synth -L 2 -T 1000 | skv-alloc -b 0.25 | skv-attend --packed -s 990: --probs > out.skv'
    expect_rc 0 "synth | alloc | attend --packed"
fi
run skv-stats compare ref.skv out.skv
expect_rc 0 "compare reference with the packed outputs"
run skv-stats compare --tsv ref.skv out.skv
check "compare --tsv has 4 lines (header, 2 layers, all)" test "$(wc -l < "$T/out")" = 4
run skv-attend --tsv -s LAST t.skv
expect_rc 0 "--tsv text dump"
check "--tsv has one out line per layer and head" test "$(grep -c '^out' "$T/out")" = 18

# fused kernel == reference on the dequantized cache, exactly as the
# library packs it: every token 16-bit and fp16 data -> equals the trace oracle
skv-alloc -p uniform:16 t.skv -o u16.skv
run skv-attend --packed -s 990: u16.skv -o p16.skv
expect_rc 0 "16-bit cache"
run skv-stats compare --json ref.skv p16.skv
check "16-bit cache equals --reference within 1e-5" python3 -c '
import json,sys; d=json.load(open(sys.argv[1]))["overall"]; assert d["max_rel"] < 1e-5, d' "$T/out"

# the int8 SIMD kernels give the same bits on every instruction set
# (vpmaddubsw, vpdpbusd; codes unpacked by VBMI or not): a cache of 2-16
# bit rows, keys per token and per channel
skv-alloc -b 0.25 t.skv -o m25.skv && skv-alloc -b 0.25 --keys channel t.skv -o c25.skv ||
    bad "alloc for the int8 kernels"
for c in m25 c25; do
    skv-attend --packed -s 900: -k int8-avx2 --tsv $c.skv > $c-avx2.tsv
    if skv-attend -k int8-vnni -s 999 $c.skv -o /dev/null 2>/dev/null; then
        run sh -c "skv-attend --packed -s 900: -k int8-vnni --tsv $c.skv > $c-vnni.tsv &&
                   SKV_NO_VBMI=1 skv-attend --packed -s 900: -k int8-vnni --tsv $c.skv > $c-novbmi.tsv"
        expect_rc 0 "int8-vnni with and without VBMI ($c)"
        check "int8-avx2, int8-vnni and int8-vnni without VBMI agree bit for bit ($c)" \
            sh -c "cmp $c-avx2.tsv $c-vnni.tsv && cmp $c-vnni.tsv $c-novbmi.tsv"
    else
        skip "int8-vnni agrees with int8-avx2 ($c)" "no VNNI on this CPU"
    fi
done

# sweep and plot
skv-alloc -p uniform:4 t.skv | skv-attend --packed -s 990: --probs -o u4.skv
run skv-stats sweep ref.skv out.skv u4.skv
expect_rc 0 "sweep"
check "sweep marks a Pareto front" grep -q '\*$' "$T/out"
run skv-stats sweep --tsv -o sweep.tsv ref.skv out.skv u4.skv
expect_rc 0 "sweep --tsv"
if command -v gnuplot >/dev/null 2>&1; then
    run "$SKV_TOP/scripts/plot-pareto" sweep.tsv plot
    expect_rc 0 "plot-pareto"
    check "plot-pareto wrote PNG and SVG" test -s plot.png -a -s plot.svg
else
    skip "plot-pareto" "gnuplot not installed"
fi

# usage errors
run skv-attend --steps 5:2 t.skv -o x.skv
expect_rc 2 "backwards steps"
run skv-attend --dense fp8 t.skv -o x.skv
expect_rc 2 "bad --dense type"
run skv-attend --reference --dense fp16 t.skv -o x.skv
expect_rc 2 "--reference with --dense"
run skv-attend --threads 0 t.skv -o x.skv
expect_rc 2 "zero threads"
run skv-attend a b
expect_rc 2 "two inputs"
run skv-stats
expect_rc 2 "skv-stats without a command"
run skv-stats compare ref.skv
expect_rc 2 "compare with one file"
run skv-attend --help
expect_rc 0 "skv-attend --help"
run skv-stats --help
expect_rc 0 "skv-stats --help"
run skv-attend --version
expect_rc 0 "skv-attend --version"

# data errors
run skv-attend -s 1000 t.skv -o x.skv
expect_rc 1 "step beyond the trace"
expect_err "out of range" "step beyond the trace message"
check "no output after a failure" test ! -e x.skv
run skv-attend --packed t.skv -o x.skv
expect_rc 1 "--packed on a trace without an allocation"
expect_err "allocation" "--packed without an allocation message"
printf 'hello\n' > text.txt
run skv-attend text.txt -o x.skv
expect_rc 1 "text input"
expect_err "skv-attend: text.txt: not a smartkv stream" "text input message"
size=$(wc -c < t.skv)
head -c $((size / 2)) t.skv > half.skv
run sh -c 'skv-attend half.skv > piped.skv'
expect_rc 1 "truncated trace"
run skv-stats compare ref.skv piped.skv
expect_rc 1 "a partial stream is not an output"
run skv-stats compare ref.skv t.skv
expect_rc 1 "a trace is not an attention output"
expect_err "ATHD" "a trace is not an attention output message"
skv-attend --reference -s 100 t.skv -o other.skv
run skv-stats compare ref.skv other.skv
expect_rc 1 "different steps"
expect_err "steps differ" "different steps message"
run skv-stats mem t.skv
expect_rc 1 "mem on a trace"
run skv-attend -s LAST t.skv -o /dev/full
expect_rc 1 "write to /dev/full"
