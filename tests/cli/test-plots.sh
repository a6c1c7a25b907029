# The picture scripts: allocation map, attention heat map, pass-key grid.
. "$SKV_TOP/tests/cli/lib.sh"

if ! command -v gnuplot >/dev/null 2>&1; then
    skip "plot-alloc, plot-attention, plot-needle" "gnuplot not installed (scripts/install-deps)"
    exit 0
fi
s=$SKV_TOP/scripts
png() { [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' ')" = 89504e470d0a1a0a ]; }

run skv-trace synth -v -L 2 -T 512 -o t.skv
needles=$(sed -n 's/.*needles at //p' "$T/err")
check "synth -v says where the needles are" sh -c "echo '$needles' | grep -Eq '^[0-9]+(,[0-9]+)*\$'"
skv-alloc -q -b 0.25 t.skv -o a.skv
run "$s/plot-alloc" a.skv map 1 0 "$needles"
check "plot-alloc writes a PNG and an SVG" sh -c "[ $rc = 0 ] && [ -s map.svg ]" 
check "... the PNG is a PNG" png map.png
check "... the SVG has the title and the widths axis" sh -c "grep -q 'Allocation map: layer 1, KV head 0' map.svg && grep -q 'bits' map.svg"
run "$s/plot-alloc" t.skv x
expect_rc 1 "plot-alloc on a trace without an allocation: exit 1"
expect_err "no allocation" "... says so"
run "$s/plot-alloc" a.skv
expect_rc 2 "plot-alloc without OUT_PREFIX: usage"

run "$s/plot-attention" t.skv att 1 mean 16
check "plot-attention writes a PNG and an SVG" sh -c "[ $rc = 0 ] && [ -s att.svg ] && grep -q 'Attention of layer 1' att.svg"
check "... the PNG is a PNG" png att.png
run "$s/plot-attention" t.skv att0 0 3 8
check "plot-attention of one head" sh -c "[ $rc = 0 ] && [ -s att0.png ]"

printf 'cache\tlength\tdepth\tprompt_tokens\tkey\tcorrect\tfp16_correct\tagree\tbeta\n' > n.tsv
for c in fp16 "smartkv b=0.3"; do
    for L in 256 1024; do
        for D in 0 50 100; do
            printf '%s\t%s\t%s\t%s\t1234\t%s\t1\t1\t0.3\n' "$c" $L $D $L $(( (L + D) % 3 > 0 )) >> n.tsv
        done
    done
done
run "$s/plot-needle" n.tsv grid
check "plot-needle: one panel per cache, with its score" sh -c "[ $rc = 0 ] &&
    grep -q '>fp16<' grid.svg && grep -q 'smartkv b=0.3' grid.svg &&
    [ \$(grep -c '4/6, beta 0.30' grid.svg) = 2 ]"
check "... the PNG is a PNG" png grid.png
(head -1 n.tsv; grep '	256	' n.tsv) > n256.tsv
(head -1 n.tsv; grep '	1024	' n.tsv) > n1024.tsv
run "$s/plot-needle" --lengths 256,1024,4096 n256.tsv n1024.tsv grid2
check "plot-needle: one table per length merged, a length not run shown (grey)" sh -c "[ $rc = 0 ] &&
    grep -q '4/6, beta' grid2.svg && grep -q '>4K<' grid2.svg && grep -q 'grey: not run' grid2.svg"
run "$s/plot-needle" t.skv grid
expect_rc 1 "plot-needle on something else: exit 1"

# make demo draws the README's pictures through scripts/pictures (the
# pass-key grid needs the model: without one it says it skips it)
if [ -n "$SKV_VALGRIND" ]; then
    skip "scripts/pictures" "a minute of model-free tools; covered by the plain run"
else
    run env SKV_MODEL=/nonexistent.gguf "$s/pictures" pics
    check "scripts/pictures: the allocation map and the attention heat map, PNG and SVG" sh -c "
        [ $rc = 0 ] && for f in alloc attention; do [ -s pics/\$f.svg ] && [ -s pics/\$f.png ] || exit 1; done"
    check "... and without a model it says it skips the pass-key grid" sh -c "
        grep -q 'pass-key grid is skipped' '$T/err' && [ ! -e pics/needle.png ]"
    check "make demo calls scripts/pictures" grep -q 'scripts/pictures' "$SKV_TOP/scripts/demo"
fi
