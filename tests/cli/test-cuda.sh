# skv-attend --device cuda: usage errors, the no-device message, and (with a
# GPU and skv-quant) the same outputs as the CPU kernels.
. "$SKV_TOP/tests/cli/lib.sh"

run skv-attend --device gpu x.skv
expect_rc 2 "--device with an unknown name is a usage error"
expect_err "--device must be cpu or cuda" "--device message"
run skv-attend --device cuda --reference x.skv
expect_rc 2 "--device cuda --reference is a usage error"
run skv-attend --device cuda --probs x.skv
expect_rc 2 "--device cuda --probs is a usage error"
run skv-attend --help
check "--help lists --device" grep -q -- "--device NAME" "$T/out"

skv-trace synth -L 2 -T 200 -o t.skv 2> "$T/err"
if ! skv-attend --device cuda -o /dev/null t.skv 2> "$T/cuda.err" && grep -q "no CUDA device available" "$T/cuda.err"; then
    run skv-attend --device cuda -o o.skv t.skv
    expect_rc 1 "no device: --device cuda exits 1"
    expect_err "skv-attend: no CUDA device available" "no device: message"
    check "no device: no output file left" test ! -e o.skv
    skip "--device cuda equals the CPU kernels" "no CUDA device available"
elif ! command -v skv-quant > /dev/null 2>&1; then
    skip "--device cuda equals the CPU kernels" "skv-quant is not built"
else
    run sh -c 'skv-alloc -b 0.25 t.skv | skv-quant -o c.skv'
    expect_rc 0 "make a beta=0.25 cache"
    run skv-attend --tsv -s 150:200 --queries t.skv c.skv -o cpu.tsv
    expect_rc 0 "CPU attention"
    run skv-attend --device cuda --tsv -s 150:200 --queries t.skv c.skv -o gpu.tsv
    expect_rc 0 "CUDA attention"
    check "--device cuda equals the CPU kernels within 1e-3" awk -F '\t' '
        NR == FNR { if ($1 == "out") a[$2 FS $3 FS $4] = $0; next }
        $1 == "out" { split(a[$2 FS $3 FS $4], x, "\t"); e = 0; r = 0
            for (i = 5; i <= NF; i++) { e += ($i - x[i]) ^ 2; r += x[i] ^ 2 }
            if (e > 1e-6 * r + 1e-12) { print "row", $2, $3, $4, sqrt(e / r); bad = 1 }; n++ }
        END { exit bad || n == 0 }' cpu.tsv gpu.tsv
fi
