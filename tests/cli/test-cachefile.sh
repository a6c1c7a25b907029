# A cache file holds the cache: no queries and no allocation record unless
# asked (--keep-queries, --keep-alloc), within 2% of its byte model;
# skv-attend and skv-quant -d take the queries from the trace (--queries).
. "$SKV_TOP/tests/cli/lib.sh"

types() { python3 "$SKV_TOP/tests/cli/mktrace.py" list "$1" | awk '{print $1}' | sort | uniq -c; }

skv-trace synth -L 4 -T 4096 -o t.skv
skv-alloc -b 0.25 t.skv -o a.skv
run skv-quant --json a.skv -o c.skv
expect_rc 0 "quantize by the allocation (defaults)"
cp "$T/err" report.json
check "the default cache has no queries (no TENS) and no ALOC, but its ALHD" sh -c "
    ! python3 '$SKV_TOP/tests/cli/mktrace.py' list c.skv | grep -q '^TENS' &&
    ! python3 '$SKV_TOP/tests/cli/mktrace.py' list c.skv | grep -q '^ALOC' &&
    python3 '$SKV_TOP/tests/cli/mktrace.py' list c.skv | grep -q '^ALHD'"
check "the cache file is within 2% of its byte model (4 layers, 4096 tokens)" python3 -c '
import json, os, sys
d = json.load(open("report.json"))
size = os.path.getsize("c.skv")
r = size / d["model_bytes"]
print("file %d bytes, byte model %d, ratio %.4f" % (size, d["model_bytes"], r))
assert 1 <= r <= 1.02, r'
run skv-quant -q --keep-queries --keep-alloc a.skv -o ck.skv
expect_rc 0 "--keep-queries --keep-alloc"
check "... keeps TENS (queries) and ALOC" sh -c "
    python3 '$SKV_TOP/tests/cli/mktrace.py' list ck.skv | grep -q '^TENS' &&
    python3 '$SKV_TOP/tests/cli/mktrace.py' list ck.skv | grep -q '^ALOC'"
check "... and is much larger than the cache alone" \
    sh -c "[ \$(wc -c < ck.skv) -gt \$((2 * \$(wc -c < c.skv))) ]"
run skv-quant -q --keep-queries --drop-queries a.skv -o x.skv
expect_rc 2 "--keep-queries with --drop-queries is a usage error"

# skv-attend: a cache without queries needs its trace
run skv-attend -s 4000: c.skv -o x.skv
expect_rc 1 "attention on a cache without queries fails"
expect_err "give its trace with --queries TRACE" "... and says what to do"
run skv-attend -s 4000: --queries t.skv c.skv -o q1.skv
expect_rc 0 "--queries TRACE"
run skv-attend -s 4000: ck.skv -o q2.skv
expect_rc 0 "the same steps on the cache that kept its queries"
check "--queries TRACE gives the same bytes as a cache with queries (label included)" cmp q1.skv q2.skv
run sh -c 'skv-attend -s 4000: --queries - c.skv < t.skv > q3.skv'
expect_rc 0 "--queries - reads the trace from stdin"
check "... the same outputs" cmp q1.skv q3.skv
skv-trace synth -L 4 -T 2048 -o short.skv
run skv-attend --queries short.skv c.skv -o x.skv
expect_rc 1 "--queries with another shape: exit 1"
expect_err "short.skv: the trace's shape" "... naming the trace"
run skv-attend --queries c.skv c.skv -o x.skv
expect_rc 1 "--queries with a cache: exit 1"
run skv-attend --queries - - -o x.skv
expect_rc 2 "--queries - with the cache on stdin too: usage"

# skv-quant -d: the way back needs the queries too
run skv-quant -d c.skv -o x.skv
expect_rc 1 "-d on the default cache fails"
expect_err "--keep-queries" "... and names --keep-queries"
run skv-quant -d --queries t.skv c.skv -o back.skv
expect_rc 0 "-d --queries TRACE"
run skv-quant -d ck.skv -o back2.skv
check "-d --queries equals -d of a cache with queries (except the allocation)" sh -c "
    skv-trace cat -L 0-3 back.skv -o b1.skv && skv-trace cat -L 0-3 back2.skv -o b2.skv 2>/dev/null;
    skv-attend -s 4000: back.skv -o r1.skv && skv-attend -s 4000: back2.skv -o r2.skv &&
    skv-stats compare -O json r1.skv r2.skv | grep -q '\"rel_l2\": 0,'"
check "a cache without ALOC dequantizes to a trace without a partial allocation" sh -c "
    ! python3 '$SKV_TOP/tests/cli/mktrace.py' list back.skv | grep -q '^AL'"
run skv-quant -q --uniform 4 back.skv -o x.skv
expect_rc 0 "... which skv-quant takes again"
run skv-quant --queries t.skv a.skv -o x.skv
expect_rc 2 "--queries without -d is a usage error"
