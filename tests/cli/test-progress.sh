# Progress of long steps: a bar on a terminal, lines with --progress (every
# SKV_PROGRESS_INTERVAL seconds; 0 here: at every 100 ms tick), nothing
# with -q, nothing by default off a terminal.
. "$SKV_TOP/tests/cli/lib.sh"

export SKV_PROGRESS_INTERVAL=0
# inputs big enough that each step runs for several 100 ms ticks; under
# valgrind (about 30x slower) smaller ones do, and keep the run short
if [ -n "$SKV_VALGRIND" ]; then nb=2048 nt=1024 n4=2048; else nb=16384 nt=2048 n4=4096; fi
s1=$((nt / 2)) s4=$((n4 / 2))
run skv-trace synth --progress -L 3 -T $nb -o big.skv
expect_rc 0 "synth --progress"
check "synth --progress: lines with the count, the rate and the end" sh -c "
    grep -Eq '^skv-trace synth: [0-9]+ of 3 layers \\([0-9]+%\\), [0-9.]+ layers/s' '$T/err' &&
    grep -q '^skv-trace synth: done: 3 layers in ' '$T/err'"
check "... and it wrote the same trace as without" sh -c "skv-trace synth -L 3 -T $nb | cmp - big.skv"
rm -f big.skv
skv-trace synth -L 3 -T $nt -o t.skv
skv-trace synth -L 2 -T $n4 -o t4.skv
run skv-trace synth -q --progress -L 3 -T $nt -o q.skv
check "-q: nothing on stderr, even with --progress" sh -c "[ $rc = 0 ] && [ ! -s '$T/err' ]"
run skv-trace synth -L 3 -T $nt -o q.skv
check "off a terminal without --progress: nothing" sh -c "[ $rc = 0 ] && [ ! -s '$T/err' ]"

for c in "skv-trace cat t.skv -o c.skv" "skv-trace info t.skv"; do
    run $c --progress
    check "${c%% t.skv*} --progress: a done line with the bytes read and the rate" sh -c "[ $rc = 0 ] &&
        grep -Eq ': done: [0-9.]+ [KM]B in [0-9]+s \\([0-9.]+ [KMGT]?B/s\\)' '$T/err'"
done
# the slower steps also report on the way (a 100 ms tick)
for c in "skv-alloc -b 0.3 t4.skv -o a4.skv" "skv-attend --reference -s $s4: t4.skv -o r.skv"; do
    run $c --progress
    check "${c%% -*} --progress: lines with the input read, rate, and the end" sh -c "[ $rc = 0 ] &&
        grep -Eq ' of [0-9.]+ [KM]B \\([0-9]+%\\), [0-9.]+ [KMGT]?B/s' '$T/err' &&
        grep -Eq ': done: [0-9.]+ [KM]B in ' '$T/err'"
done
# these two runs are not under valgrind (a shell and script(1) start the
# tool), so with valgrind's small inputs they end before a tick: timing
# checks, run by the plain and sanitizer runs only
if [ -n "$SKV_VALGRIND" ]; then
    skip "skv-alloc --progress < FILE: the size of standard input is known" \
        "a timing check; valgrind runs use inputs too small for a tick"
else
run sh -c 'skv-alloc --progress -b 0.3 < t4.skv > b.skv'
check "skv-alloc --progress < FILE: the size of standard input is known" sh -c "
    grep -Eq ' of [0-9.]+ [KM]B \\(' '$T/err' && cmp a4.skv b.skv"
fi
run skv-quant --progress --uniform 4 t.skv -o u.skv
check "skv-quant --progress --uniform: the write step, in layers" \
    grep -q '^skv-quant: writing: done: 3 layers in ' "$T/err"
skv-alloc -b 0.3 t.skv -o a.skv
run skv-quant --progress a.skv -o c.skv
# the bytes of the "done" line of step $1 (K, M, G: powers of 1024)
done_bytes() {
    sed -n "s/^$1: done: \([0-9.]*\) \([KMG]*\)B in .*/\1 \2/p" "$T/err" | awk '{
        m = $2 == "K" ? 1024 : $2 == "M" ? 1048576 : $2 == "G" ? 1073741824 : 1
        printf "%.0f\n", $1 * m }'
}
n=$(done_bytes 'skv-quant: reading')
check "skv-quant --progress: the whole input read for the allocation, then the layers written" \
    sh -c "[ $rc = 0 ] && [ ${n:-0} -ge $(($(wc -c < a.skv) * 9 / 10)) ] &&
        grep -q '^skv-quant: writing: done: 3 layers in ' '$T/err'"
run skv-quant -q --progress a.skv -o c.skv
check "skv-quant -q --progress: nothing" sh -c "[ $rc = 0 ] && [ ! -s '$T/err' ]"
run skv-stats mem --progress c.skv
check "skv-stats mem --progress: the cache read, and the end" sh -c "[ $rc = 0 ] &&
    grep -Eq '^skv-stats mem: done: [0-9.]+ [KM]B in ' '$T/err'"
skv-attend -s $s1: --queries t.skv c.skv -o o.skv
run skv-stats compare --progress o.skv o.skv
check "skv-stats compare --progress: each file read" sh -c "[ $rc = 0 ] &&
    [ \$(grep -c '^skv-stats: reading: done: ' '$T/err') = 2 ]"

if [ -n "$SKV_VALGRIND" ]; then
    skip "progress bar on a terminal" "a timing check; valgrind runs use inputs too small for a tick"
elif script -qec true /dev/null > /dev/null 2>&1; then
    # one thread: with 16 the run ended inside the first 100 ms tick
    run script -qec "SKV_PROGRESS_INTERVAL=0 skv-attend -@ 1 --reference -s $s1: t.skv -o /dev/null" /dev/null
    check "on a terminal: a bar redrawn in place, with the percentage and rate" sh -c "[ $rc = 0 ] &&
        grep -q 'skv-attend: \\[#* *\\] *[0-9]*% ' '$T/out' && tr '\\r' '\\n' < '$T/out' | grep -c '%' | grep -qv '^[01]\$'"
    run script -qec "SKV_PROGRESS_INTERVAL=0 skv-attend --no-progress --reference -s $s1: t.skv -o /dev/null" /dev/null
    check "on a terminal with --no-progress: no bar" sh -c "[ $rc = 0 ] && ! grep -q '%' '$T/out'"
    run script -qec "SKV_PROGRESS_INTERVAL=0 skv-attend -q --reference -s $s1: t.skv -o /dev/null" /dev/null
    check "on a terminal with -q: no bar" sh -c "[ $rc = 0 ] && ! grep -q '%' '$T/out'"
else
    skip "progress bar on a terminal" "script(1) cannot allocate a terminal here"
fi

model=${SKV_MODEL:-$SKV_TOP/models/SmolLM2-135M-Instruct.Q4_1.gguf}
if [ -f "$model" ]; then
    run skv-trace record --progress -@ 1 -m "$model" --prompt "The quick brown fox jumps over the lazy dog" -L 2 -o rec.skv
    check "record --progress off a terminal: lines and the end" sh -c "[ $rc = 0 ] &&
        grep -q '^skv-trace record: done: ' '$T/err'"
else
    skip "record --progress" "no model at $model"
fi
