# The option vocabulary every tool shares (smartkv(7)) and the messages
# of the common error paths: one line per error, the right exit status.
. "$SKV_TOP/tests/cli/lib.sh"

model=${SKV_MODEL:-$SKV_TOP/models/SmolLM2-135M-Instruct.Q4_1.gguf}
tools="skv-trace skv-alloc skv-quant skv-attend skv-stats skv-eval"

# -h/--help and -V/--version everywhere (skv-alloc and skv-eval refused -h, -V)
for t in $tools; do
    for h in -h --help; do
        run $t $h
        check "$t $h exits 0 with a usage" sh -c "[ $rc = 0 ] && grep -q Usage '$T/out'"
    done
    for v in -V --version; do
        run $t $v
        check "$t $v prints the version" sh -c "[ $rc = 0 ] && grep -q '(smartkv)' '$T/out'"
    done
done
for c in synth import export info cat record; do
    run skv-trace $c -h
    check "skv-trace $c -h" sh -c "[ $rc = 0 ] && grep -q Usage '$T/out'"
done
for c in "skv-eval ppl" "skv-stats mem"; do
    run $c -h
    check "$c -h" sh -c "[ $rc = 0 ] && grep -q Usage '$T/out'"
done

# the shared options appear in every --help
for t in "skv-trace synth" "skv-trace cat" "skv-trace record" skv-alloc skv-quant skv-attend \
         "skv-stats compare" skv-eval; do
    run $t --help
    check "$t --help lists -q, -v, --max-mem, -h, -V" sh -c "grep -q -- '-q, --quiet' '$T/out' &&
        grep -q -- '-v, --verbose' '$T/out' && grep -q -- '--max-mem' '$T/out' &&
        grep -q -- '-V, --version' '$T/out'"
done
for t in "skv-trace record" skv-alloc skv-attend skv-eval; do
    run $t --help
    check "$t --help lists -@, --threads" grep -q -- '-@, --threads' "$T/out"
done

# an unknown option or a missing value: one message and the hint, exit 2
skv-trace synth -L 2 -T 300 -o a.skv
for t in "skv-trace synth" "skv-trace info" skv-alloc skv-quant skv-attend "skv-stats mem" "skv-eval ppl"; do
    run $t --frob a.skv
    check "$t --frob: exit 2, two lines (message, hint)" sh -c "[ $rc = 2 ] &&
        [ \$(wc -l < '$T/err') = 2 ] && grep -q \"unknown option '--frob'\" '$T/err' &&
        grep -q -- '--help' '$T/err'"
    run $t -Y a.skv
    check "$t -Y: one message" sh -c "[ $rc = 2 ] && [ \$(wc -l < '$T/err') = 2 ] &&
        grep -q \"unknown option '-Y'\" '$T/err'"
done
run skv-alloc a.skv -o
check "missing value of -o" sh -c "[ $rc = 2 ] && [ \$(wc -l < '$T/err') = 2 ] &&
    grep -q \"option '-o' needs a value\" '$T/err'"
run skv-alloc a.skv --output
check "missing value of --output" sh -c "[ $rc = 2 ] && grep -q \"option '--output' needs a value\" '$T/err'"
run skv-alloc a.skv --summary=3
check "a value given to a flag" sh -c "[ $rc = 2 ] && grep -q \"option '--summary' takes no value\" '$T/err'"
run skv-quant --k a.skv
check "an ambiguous abbreviation" sh -c "[ $rc = 2 ] && grep -q \"option '--k' is ambiguous\" '$T/err'"

# -@ / --threads with the same meaning everywhere; old clashing letters are gone
run skv-alloc -@ 1 -b 0.3 a.skv -o b.skv
expect_rc 0 "skv-alloc -@ 1"
run skv-attend -@ 2 -s 299 a.skv -o at.skv
expect_rc 0 "skv-attend -@ 2"
run skv-attend --threads 1 -s 299 a.skv -o at1.skv
expect_rc 0 "skv-attend --threads 1"
check "-@ 2 and --threads 1 give the same outputs" cmp at.skv at1.skv
run skv-attend -j 2 a.skv -o x.skv
expect_rc 2 "skv-attend -j (was --threads; -j is --jobs) is refused"
run skv-alloc -@ 0 a.skv -o x.skv
expect_rc 2 "-@ 0 is a usage error"

# -O FMT and --json wherever a report is printed
run skv-trace info -O json a.skv
check "skv-trace info -O json" python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$T/out"
run skv-trace info --json a.skv
check "skv-trace info --json" python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$T/out"
run skv-trace info -O tsv a.skv
expect_rc 2 "skv-trace info -O tsv is refused"
expect_err "is not one of text, json" "-O names the allowed formats"
run skv-alloc -b 0.3 --json a.skv -o b.skv
check "skv-alloc --json: the summary as JSON on stderr" python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert len(d["layers"]) == 2 and sum(d["total"]) == 2 * 3 * 300, d
assert abs(d["beta"] - d["bytes"] / d["fp16_bytes"]) < 1e-6 and d["bytes"] <= d["budget_bytes"], d' "$T/err"
run skv-alloc -b 0.3 -v a.skv -o b.skv
check "skv-alloc -v prints the summary" grep -q '^total' "$T/err"
run skv-quant --json b.skv -o c.skv
check "skv-quant --json: the beta report as JSON" python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert abs(d["beta"] - d["cache_bytes"] / d["fp16_bytes"]) < 1e-6 and d["rows_per_width"], d' "$T/err"
run skv-quant -q b.skv -o c.skv
check "skv-quant -q: nothing on stderr" sh -c "[ $rc = 0 ] && [ ! -s '$T/err' ]"
run skv-attend --json -s 298:300 --probs a.skv -o at.json
check "skv-attend --json: outputs and probabilities" python3 -c '
import json, sys
d = json.load(open("at.json"))
assert d["steps"] == [298, 299] and len(d["outputs"]) == 2 * 9 * 2, d["steps"]
o = d["outputs"][0]
assert len(o["out"]) == 64 and len(o["prob"]) == 300 and abs(sum(o["prob"]) - 1) < 1e-3'
run skv-attend -O tsv -s 299 a.skv -o at.tsv
check "skv-attend -O tsv equals --tsv" sh -c "skv-attend --tsv -s 299 a.skv | cmp - at.tsv"
run skv-attend -s 299 a.skv -o r.skv
run skv-stats compare -O json r.skv r.skv
check "skv-stats -O json" python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))["overall"]["rel_l2"] == 0' "$T/out"

# messages
run skv-attend -s 10:5 a.skv -o x.skv
check "-s 10:5: an empty range, no made-up token count" sh -c "[ $rc = 2 ] &&
    grep -q 'is empty' '$T/err' && ! grep -q 16777216 '$T/err'"
run skv-attend -s 400 a.skv -o x.skv
check "-s beyond the trace names its real token count" sh -c "[ $rc != 0 ] && grep -q 'has 300 tokens' '$T/err'"
run skv-eval frob
check "skv-eval frob: unknown command, not a missing --model" sh -c "[ $rc = 2 ] &&
    grep -q \"unknown command 'frob'\" '$T/err' && ! grep -q -- '--model' '$T/err'"
if [ -r "$model" ]; then
    run skv-eval ppl --model "$model" --text nosuch
    expect_rc 1 "skv-eval --text nosuch: exit 1"
    expect_err "skv-eval: nosuch: cannot open: No such file" "skv-eval --text nosuch says what the others say"
else
    skip "skv-eval --text nosuch says what the others say" "no model at $model: run scripts/fetch-model"
fi
run skv-alloc nosuch
expect_err "skv-alloc: nosuch: cannot open: No such file" "skv-alloc nosuch: the same wording"
printf 'GGUF\003\0\0\0' > bad.gguf
run skv-trace record --model bad.gguf --prompt hi -o x.skv
check "a GGUF error names the file once" sh -c "[ $rc = 1 ] && [ \$(grep -o bad.gguf '$T/err' | wc -l) = 1 ]"
run skv-eval ppl --model bad.gguf --text a.skv
check "skv-eval: a GGUF error names the file once" sh -c "[ $rc = 1 ] && [ \$(grep -o bad.gguf '$T/err' | wc -l) = 1 ]"
if [ -f "$model" ]; then
    run skv-trace record --model "$model" --prompt "hello there" -L 99 -o x.skv
    check "record -L 99 on a 30-layer model: exit 1, says so" sh -c "[ $rc = 1 ] &&
        grep -q 'the model has 30 layers' '$T/err' && [ ! -e x.skv ]"
else
    skip "record -L beyond the model" "no model at $model"
fi

# nothing reaches stdout before the input is known to be a trace
run sh -c 'skv-alloc -b 0.3 < r.skv > o.skv'
check "skv-alloc on attention outputs: exit 1 and an empty stdout" sh -c "[ $rc = 1 ] && [ ! -s o.skv ]"
run sh -c 'skv-trace cat -L 0 < r.skv > o.skv'
check "skv-trace cat -L on a non-trace: nothing on stdout" sh -c "[ $rc != 0 ] && [ ! -s o.skv ]"
run sh -c 'skv-attend < b.skv > o.skv'
expect_rc 0 "skv-attend still streams to stdout"
check "... and its output is a stream" skv-stats compare o.skv o.skv

# binary input from a terminal is refused at once, as zstd does
if script -qec true /dev/null > /dev/null 2>&1; then
    for c in "skv-alloc -o /dev/null" "skv-quant -o /dev/null" "skv-attend -o /dev/null" \
             "skv-trace info" "skv-trace cat -o /dev/null" "skv-stats mem -"; do
        run timeout 10 script -qec "$c" /dev/null
        check "$c with a terminal as input: refused (exit 2), no wait" sh -c "[ $rc = 2 ] &&
            grep -q 'standard input is a terminal' '$T/out'"
    done
else
    skip "binary input from a terminal" "script(1) cannot allocate a terminal here"
fi

# every long option in a --help is in the tool's man page, and smartkv(7) exists
for t in "skv-trace synth" "skv-trace import" "skv-trace export" "skv-trace info" "skv-trace cat" \
         "skv-trace record" skv-alloc skv-quant skv-attend "skv-stats compare" skv-eval; do
    page=$SKV_TOP/man/man1/${t%% *}.1
    missing=
    for o in $($t --help | grep -o -- '--[a-z][a-z0-9-]*' | sort -u); do
        grep -q -- "$(echo "$o" | sed 's/-/\\\\-/g')" "$page" || missing="$missing $o"
    done
    check "$t: every option of --help is in ${page##*/}${missing:+ (missing:$missing)}" test -z "$missing"
done
check "smartkv(7) lists the letters" grep -qF -- '\-@ \fIN\fR	\-\-threads' "$SKV_TOP/man/man7/smartkv.7"
