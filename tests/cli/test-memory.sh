# Memory bounded by a layer: every tool runs under a memory cap (SKV_MAX_MEM,
# the live heap) of 4 layers' float32 Q, K and V on a trace of 16 layers,
# where holding the trace (or the cache with its queries) would need 4 times
# the cap; and what it writes is what it writes without a cap.
. "$SKV_TOP/tests/cli/lib.sh"

# one layer: (4 + 2 + 2) heads x T tokens x 64 dims x 4 bytes
if [ -n "$SKV_VALGRIND" ]; then n=1024; else n=2048; fi
layer=$((8 * n * 64 * 4))
cap=$((4 * layer))
skv-trace synth -L 16 -H 4 -K 2 -T $n -o t.skv
skv-alloc -q -b 0.25 t.skv -o a.skv
skv-quant -q a.skv -o c.skv
skv-quant -q --keep-queries a.skv -o cq.skv
skv-attend -q -s $((n - 8)): --queries t.skv c.skv -o o.skv
skv-attend -q -r -s $((n - 8)): t.skv -o r.skv
skv-alloc -q -p prune-merge -b 0.25 t.skv -o pa.skv
skv-quant -q pa.skv -o pc.skv
skv-attend -q -s $((n - 8)): --queries t.skv pc.skv -o po.skv
export SKV_MAX_MEM=$cap
run skv-alloc -q -p prune-merge -b 0.25 t.skv -o pa1.skv
check "skv-alloc -p prune-merge within 4 layers: the same allocation" sh -c "[ $rc = 0 ] && cmp pa.skv pa1.skv"
run sh -c 'cat pa.skv | skv-quant -q > pc1.skv'
check "skv-quant (pipe) of a merging allocation within 4 layers: the same cache, centroids too" \
    sh -c "[ $rc = 0 ] && cmp pc.skv pc1.skv"
run skv-attend -q -s $((n - 8)): --queries t.skv pc.skv -o po1.skv
check "skv-attend on a merged cache within 4 layers: the same outputs" sh -c "[ $rc = 0 ] && cmp po.skv po1.skv"
run skv-stats mem pc.skv
check "skv-stats mem on a merged cache within 4 layers: total = byte model, centroids counted" sh -c "[ $rc = 0 ] &&
    grep -q centroids '$T/out' &&
    sed -n '1s/^pc.skv: \\([0-9]*\\) bytes (byte model \\([0-9]*\\)).*/\\1 \\2/p' '$T/out' |
        awk '{ ok = \$1 == \$2 && \$1 > 0 } END { exit !ok }'"
run skv-quant -q a.skv -o c1.skv
check "skv-quant (file) within 4 layers: the same cache" sh -c "[ $rc = 0 ] && cmp c.skv c1.skv"
run sh -c 'cat a.skv | skv-quant -q > c2.skv'
check "skv-quant (pipe) within 4 layers: the same cache" sh -c "[ $rc = 0 ] && cmp c.skv c2.skv"
run sh -c 'cat a.skv | skv-quant -q --keep-queries > c3.skv'
check "skv-quant --keep-queries (pipe) within 4 layers: the same cache" sh -c "[ $rc = 0 ] && cmp cq.skv c3.skv"
run skv-quant -q -u 4 t.skv -o u.skv
expect_rc 0 "skv-quant --uniform within 4 layers"
run skv-quant -q -d --queries t.skv c.skv -o d.skv
expect_rc 0 "skv-quant -d --queries within 4 layers"
run skv-quant -q -d cq.skv -o d2.skv
check "skv-quant -d (queries in the cache) within 4 layers: the same trace" sh -c "[ $rc = 0 ] && cmp d.skv d2.skv"
run skv-attend -q -s $((n - 8)): --queries t.skv c.skv -o o1.skv
check "skv-attend --queries within 4 layers: the same outputs" sh -c "[ $rc = 0 ] && cmp o.skv o1.skv"
run skv-attend -q -s $((n - 8)): cq.skv -o o2.skv
check "skv-attend on a cache with queries within 4 layers: the same outputs" sh -c "[ $rc = 0 ] && cmp o.skv o2.skv"
run sh -c "cat a.skv | skv-attend -q --packed -s $((n - 8)): > o3.skv"
check "skv-attend --packed on an allocated trace (pipe) within 4 layers: the same outputs" \
    sh -c "[ $rc = 0 ] && cmp o.skv o3.skv"
run skv-attend -q -r -s $((n - 8)): t.skv -o r1.skv
check "skv-attend --reference within 4 layers" sh -c "[ $rc = 0 ] && cmp r.skv r1.skv"
run skv-attend -q -r -s $((n - 8)): --queries t.skv c.skv -o rq.skv
expect_rc 0 "skv-attend --reference on a packed cache within 4 layers"
run skv-stats mem cq.skv
check "skv-stats mem (a cache with its queries) within 4 layers: the total is the byte model" sh -c "[ $rc = 0 ] &&
    sed -n '1s/^cq.skv: \\([0-9]*\\) bytes (byte model \\([0-9]*\\)).*/\\1 \\2/p' '$T/out' |
        awk '{ ok = \$1 == \$2 && \$1 > 0 } END { exit !ok }'"
run skv-alloc -q -b 0.25 t.skv -o a1.skv
check "skv-alloc within 4 layers: the same allocation" sh -c "[ $rc = 0 ] && cmp a.skv a1.skv"
# 16 threads' scores scratch alone passes the cap (as on a 16-core machine):
# fewer threads run, the allocation is the same
run skv-alloc -q -@ 16 -b 0.25 t.skv -o a2.skv
check "skv-alloc -@ 16 within 4 layers: fewer threads, the same allocation" sh -c "[ $rc = 0 ] && cmp a.skv a2.skv"
run skv-trace info t.skv
expect_rc 0 "skv-trace info within 4 layers"
# the cap is real: a tool that must hold more fails, saying why
# (a quarter of a layer, half of one layer's queries: one request exceeds
# it, so it is refused also where the live heap cannot be read, as under
# valgrind)
export SKV_MAX_MEM=$((layer / 4))
run skv-quant -q a.skv -o c4.skv
check "a cap below one layer: skv-quant fails (exit 1), no output" sh -c "[ $rc = 1 ] && [ ! -e c4.skv ]"
expect_err "memory cap" "... saying why"
unset SKV_MAX_MEM
run skv-quant -q --uniform 4 a.skv -o u2.skv
check "... and an allocated trace quantized --uniform: the allocation is checked, not used" \
    sh -c "[ $rc = 0 ] && cmp u.skv u2.skv"
