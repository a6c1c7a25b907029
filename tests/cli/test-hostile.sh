# Hostile but well-formed input (valid CRCs, tests/cli/hostile.py): memory
# bounded by the data read, one set of conformance rules for every reader,
# temporary files on signals, and concurrent writers to one output name.
. "$SKV_TOP/tests/cli/lib.sh"
H="python3 $SKV_TOP/tests/cli/hostile.py"

# Peak RSS (KiB) of a command and its exit status in $rc, from GNU time
# (a wrapper in python or sh would count its own RSS: ru_maxrss survives
# exec).  Without GNU time the RSS checks are skipped, not passed.
if /usr/bin/time -f %M true > /dev/null 2>&1; then have_time=1; else have_time=; fi
peak() {
    if [ -n "$have_time" ]; then
        /usr/bin/time -o "$T/peak" -f %M "$@" > /dev/null 2> "$T/err"; rc=$?
        kb=$(tail -1 "$T/peak")
    else
        "$@" > /dev/null 2> "$T/err"; rc=$?
        kb=
    fi
}
# Without sanitizers or valgrind, an address-space limit keeps a regression
# from taking the machine down: it fails the test instead.
if [ -n "$SKV_SANITIZE$SKV_VALGRIND" ]; then limit=unlimited; else limit=8000000; fi

# ---- items 1 and 2: declared shapes, no data ----
for k in pkhd-big pkhd-big-q trhd-big trhd-big-toks trhd-big-alloc athd-big; do
    $H $k $k.skv || exit 1
done
size=$(wc -c < pkhd-big.skv)
for spec in "pkhd-big-q:skv-quant -d -o o.skv" "pkhd-big-q:skv-attend -o o.skv" \
            "pkhd-big-q:skv-attend --reference -o o.skv" "pkhd-big-q:skv-stats mem" \
            "pkhd-big:skv-quant -d -o o.skv" "pkhd-big:skv-stats mem" \
            "trhd-big:skv-quant --uniform 4 -o o.skv" "trhd-big:skv-attend -o o.skv" \
            "trhd-big:skv-attend --reference -o o.skv" "trhd-big-toks:skv-quant --uniform 4 -o o.skv" \
            "trhd-big:skv-trace info" "athd-big:skv-stats compare athd-big.skv" \
            "trhd-big-alloc:skv-alloc -o o.skv" "trhd-big-alloc:skv-alloc --policy uniform:4 -o o.skv"; do
    k=${spec%%:*} cmd=${spec#*:}
    size=$(wc -c < $k.skv)
    # shellcheck disable=SC2086
    peak sh -c "ulimit -v $limit; exec $cmd $k.skv"
    if [ -n "$SKV_SANITIZE$SKV_VALGRIND" ] || [ -z "$have_time" ]; then
        skip "$cmd $k: peak RSS" "sanitizers and valgrind change the RSS, or no GNU time"
    elif [ "$kb" -lt 16384 ]; then
        ok "$cmd $k ($size-byte input): peak RSS $kb KiB < 16 MiB"
    else
        echo "       peak RSS $kb KiB for a $size-byte input"
        bad "$cmd $k: peak RSS bounded"
    fi
    if grep -qE 'memory|Sanitizer|==[0-9]+==' "$T/err"; then
        bad "$cmd $k: no memory error"
    else
        ok "$cmd $k: $(head -c 100 "$T/err")"
    fi
done
run skv-quant --uniform 4 -o o.skv trhd-big.skv
expect_err "stream ends inside layer 0" "trace header alone: 'stream ends inside layer 0', not 'out of memory'"
run skv-alloc -o o.skv trhd-big-alloc.skv
expect_err "stream ends inside layer 0" "skv-alloc on a header alone: 'stream ends inside layer 0'"
run skv-stats mem pkhd-big.skv
expect_rc 0 "a cache with every token evicted is valid (skv-stats mem)"

# a valid cache of one 2-token bucket that declares 16M tokens: the readers
# hold its rows, not a width per declared token (16 MiB before), so a 1 MiB
# cap is enough for every tool that loads or checks it
$H pkhd-bucket pb.skv && $H pkhd-big-bucket pbb.skv || exit 1
for cmd in "skv-stats mem" "skv-trace info" "skv-trace cat -o o.skv"; do
    # shellcheck disable=SC2086
    SKV_MAX_MEM=1M run $cmd pb.skv
    expect_rc 0 "$cmd: a $(wc -c < pb.skv)-byte cache declaring 16M tokens loads under a 1 MiB cap"
    # and declaring 1024 x 1024 (layer, KV head) pairs, one bucket in the last
    # shellcheck disable=SC2086
    SKV_MAX_MEM=1M run $cmd pbb.skv
    expect_rc 0 "$cmd: the same declaring 2^20 (layer, KV head) pairs loads under a 1 MiB cap"
done
SKV_MAX_MEM=1M run skv-stats mem pb.skv
check "skv-stats mem counts the 16777214 evicted tokens without a map of them" \
    grep -qE "0-bit +16777214 " "$T/out"
for cmd in "skv-quant -d -o o.skv" "skv-attend -o o.skv" "skv-attend --reference -o o.skv"; do
    # shellcheck disable=SC2086
    SKV_MAX_MEM=1M run $cmd pb.skv
    expect_rc 1 "$cmd on the one-bucket cache: exit 1"
    expect_err "no queries" "$cmd on the one-bucket cache: the missing queries, not memory"
done
if [ -z "$SKV_SANITIZE$SKV_VALGRIND" ] && [ -n "$have_time" ]; then
    peak skv-stats mem pb.skv; kb1=$kb
    if [ "$rc" = 0 ] && [ "$kb1" -lt 8192 ]; then
        ok "skv-stats mem on the one-bucket cache: peak RSS $kb1 KiB < 8 MiB (16 MiB of tokens declared)"
    else
        echo "       exit $rc, peak RSS $kb1 KiB"
        bad "skv-stats mem on the one-bucket cache: peak RSS bounded by the data"
    fi
fi

# which file an error names: the input for what is wrong with the data
# ("stream ends inside ..."), the output only when a write to it failed
for mode in "" "--reference" "--json"; do
    # shellcheck disable=SC2086
    run skv-attend $mode -o out.x trhd-big.skv
    expect_rc 1 "skv-attend $mode: a header without data"
    expect_err "skv-attend: trhd-big.skv: stream ends inside layer 0" \
        "skv-attend $mode names the input, not the output, for 'stream ends inside'"
    check "skv-attend $mode leaves no output" test ! -e out.x
done
if [ -c /dev/full ]; then
    skv-trace synth -L 1 -T 16 -H 2 -K 1 -D 8 -o tiny.skv || exit 1
    for mode in "" "--json"; do
        # shellcheck disable=SC2086
        run skv-attend $mode -o /dev/full tiny.skv
        expect_rc 1 "skv-attend $mode -o /dev/full: exit 1"
        expect_err "skv-attend: /dev/full: write error" "skv-attend $mode names the output on a write error"
    done
    run skv-alloc --policy uniform:4 -o /dev/full tiny.skv
    expect_rc 1 "skv-alloc -o /dev/full: exit 1"
    expect_err "skv-alloc: /dev/full: write error" "skv-alloc names the output on a write error"
    skv-quant -q --uniform 4 --keep-queries -o tinyc.skv tiny.skv || exit 1
    run skv-stats mem -o /dev/full tinyc.skv
    expect_err "skv-stats: /dev/full: write error" "skv-stats names the output on a write error"
    check "a failed text write removes no device (/dev/full is still a character device)" \
        test -c /dev/full
    run skv-attend -o o.skv --queries trhd-big.skv tinyc.skv
    expect_rc 1 "skv-attend --queries with another trace's header"
    expect_err "skv-attend: trhd-big.skv: " "skv-attend names the --queries file for its errors"
else
    skip "write errors name the output" "no /dev/full"
fi

# peak RSS against input size: 100 times the input costs no more memory
skv-trace synth -L 1 -T 64 -H 2 -K 1 -D 16 -o small.skv || exit 1
skv-trace synth -L 1 -T 6400 -H 2 -K 1 -D 16 -o large.skv || exit 1
if [ -z "$SKV_SANITIZE$SKV_VALGRIND" ] && [ -n "$have_time" ]; then
    peak skv-trace info trhd-big.skv; base=$kb
    peak skv-quant --uniform 4 -o o.skv large.skv; kl=$kb
    peak skv-quant --uniform 4 -o o.skv trhd-big.skv; kh=$kb
    if [ "$kh" -le "$kl" ]; then
        ok "peak RSS: hostile 204-byte header $kh KiB <= 1.3 MB trace $kl KiB (info: $base KiB)"
    else
        echo "       hostile header $kh KiB, real trace $kl KiB"
        bad "peak RSS grows with the data, not the header"
    fi
fi

# ---- item 3, 5, 6: one set of rules for every reader ----
for k in crit crit-mid res-head res-trhd res-tens res-alhd res-athd tens-dup tens-swap \
         tens-del trhd-dim aloc-layer aloc-head aloc-n7 aloc-width7 aloc-twice aloc-missing \
         aloc-pad aloc-nan; do
    $H $k $k.skv || exit 1
    run skv-trace info $k.skv
    expect_rc 1 "info rejects $k"
    run skv-trace cat -o c-$k.skv $k.skv
    expect_rc 1 "cat rejects $k"
    check "cat leaves no output for $k" test ! -e c-$k.skv
    run skv-trace export --prefix x-$k $k.skv
    expect_rc 1 "export rejects $k"
done
run skv-trace info crit.skv
expect_err "unknown critical chunk ZZZZ" "info names the unknown critical chunk"
# reserved fields in the tools that load the stream, not only info and cat
$H res-pkhd res-pkhd.skv || exit 1
for cmd in "skv-trace info" "skv-stats mem" "skv-quant -d -o o.skv"; do
    # shellcheck disable=SC2086
    run $cmd res-pkhd.skv
    expect_rc 1 "$cmd rejects a non-zero PKHD reserved field"
    expect_err "reserved" "$cmd says which field (PKHD reserved)"
done
run skv-stats compare res-athd.skv res-athd.skv
expect_rc 1 "skv-stats compare rejects a non-zero ATHD reserved field"
expect_err "reserved bytes 60..63" "skv-stats compare names the ATHD field"
run skv-attend --reference -o o.skv res-trhd.skv
expect_rc 1 "skv-attend rejects a non-zero TRHD reserved field"
run skv-alloc -o o.skv res-head.skv
expect_rc 1 "skv-alloc rejects a non-zero HEAD reserved field"
$H ancillary anc.skv && $H ok ok.skv || exit 1
run skv-trace info anc.skv
expect_rc 0 "an unknown ancillary chunk is accepted"
run skv-trace cat -o c.skv anc.skv
expect_rc 0 "cat passes an ancillary chunk"
for k in crit res-trhd res-tens tens-swap aloc-twice; do
    run skv-quant --uniform 4 -o o.skv $k.skv
    expect_rc 1 "skv-quant rejects $k too"
done

# ---- values: one rule for skv-alloc and skv-quant ----
# every Q, K and V value finite and within the fp16 range; both tools refuse
# the same traces with the same message, naming the value and its place
for k in val-q-nan val-q-big val-k-inf val-k-big val-v-nan val-v-big; do
    $H $k $k.skv || exit 1
    run skv-alloc --policy uniform:4 -o a.skv $k.skv
    expect_rc 1 "skv-alloc rejects $k"
    check "skv-alloc leaves no output for $k" test ! -e a.skv
    amsg=$err
    run skv-quant --uniform 4 -o q.skv $k.skv
    expect_rc 1 "skv-quant rejects $k"
    qmsg=$err
    kind=$(echo "$k" | cut -d- -f2 | tr qkv QKV)
    case $amsg in
    "skv-alloc: $k.skv: value "*" is not finite or beyond the fp16 range ($kind of layer 0 "*"head 0, token 1, channel 5)")
        ok "skv-alloc names the file, the value and its place ($k)" ;;
    *) echo "       got: $amsg"; bad "skv-alloc names the file, the value and its place ($k)" ;;
    esac
    check "skv-quant's message is skv-alloc's ($k)" test "${qmsg#skv-quant: }" = "${amsg#skv-alloc: }"
done
$H val-v-max vmax.skv || exit 1
run skv-alloc --policy uniform:4 -o a.skv vmax.skv
expect_rc 0 "skv-alloc accepts -65504 (the fp16 limit)"
run skv-quant --uniform 4 -o q.skv a.skv
expect_rc 0 "skv-quant packs skv-alloc's output at the fp16 limit"
run skv-alloc -b 0.3 -o a.skv val-k-big.skv
expect_rc 1 "skv-alloc rejects val-k-big with an adaptive policy too"
expect_err "is not finite or beyond the fp16 range" "... with the same message"

# ---- item 4: allocation contents, in every reader ----
for k in cache-aloc-layer cache-aloc-head cache-aloc-n7 cache-aloc-width7 cache-aloc-n; do
    $H $k $k.skv || exit 1
    for cmd in "skv-quant -d -o o.skv" "skv-attend -o o.skv" "skv-stats mem"; do
        # shellcheck disable=SC2086
        run $cmd $k.skv
        expect_rc 1 "$cmd rejects $k"
        expect_err "the cache's allocation" "$cmd names the cache's allocation ($k)"
    done
done
$H cache-aloc-ok cok.skv || exit 1
run skv-stats mem cok.skv
expect_rc 0 "a cache with a valid allocation loads"
for k in aloc-layer4095 aloc-width9 aloc-width32 aloc-width128 aloc-n513; do
    $H $k $k.skv || exit 1
done
for k in aloc-layer aloc-head aloc-n7 aloc-width7 aloc-twice aloc-missing aloc-pad aloc-nan \
         aloc-layer4095 aloc-width9 aloc-width32 aloc-width128 aloc-n513; do
    run skv-trace info $k.skv
    expect_rc 1 "skv-trace info rejects $k"
    run skv-quant --uniform 4 -o o.skv $k.skv
    expect_rc 1 "skv-quant rejects $k (an allocation is checked even with --uniform)"
    run skv-attend --reference -o o.skv $k.skv
    expect_rc 1 "skv-attend --reference rejects $k"
    run skv-alloc --policy uniform:4 -o o.skv $k.skv
    expect_rc 1 "skv-alloc rejects $k"
done
run skv-attend --reference -o o.skv ok.skv
expect_rc 0 "skv-attend --reference on the valid small trace"

# ---- item 7: temporary files and signals ----
# a writer blocked on its input (a FIFO held open): its temporary exists
tmps() { ls -a | grep -c '^out\.skv\.tmp' ; }
for sig in TERM INT HUP; do
    rm -f fifo out.skv
    mkfifo fifo
    # the first 200 bytes of a stream, then the writer holds the FIFO open
    ( head -c 200 large.skv; sleep 30 ) > fifo &
    feeder=$!
    # background jobs of sh ignore SIGINT, and nohup leaves SIGHUP ignored
    # (the tool keeps an ignored signal ignored): start it with all three at
    # their defaults
    python3 -c 'import os, signal, sys
for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
    signal.signal(s, signal.SIG_DFL)
os.execvp(sys.argv[1], sys.argv[1:])' skv-trace cat -o out.skv fifo 2> "$T/err" &
    pid=$!
    n=0
    while [ "$(tmps)" = 0 ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n + 1)); done
    have=$(tmps)
    kill -$sig $pid
    wait $pid
    st=$?
    kill $feeder 2> /dev/null
    wait $feeder 2> /dev/null
    if [ "$have" = 1 ] && [ "$(tmps)" = 0 ] && [ ! -e out.skv ] && [ $st -gt 128 ]; then
        ok "SIG$sig removes the temporary file (exit $st)"
    else
        echo "       temporaries before $have, after $(tmps), exit $st"
        bad "SIG$sig removes the temporary file"
    fi
done
if [ -z "$SKV_VALGRIND" ]; then
    rm -f fifo out.skv
    mkfifo fifo
    ( head -c 200 large.skv; sleep 30 ) > fifo &
    feeder=$!
    skv-trace cat -o out.skv fifo 2> /dev/null &
    pid=$!
    n=0
    while [ "$(tmps)" = 0 ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n + 1)); done
    kill -KILL $pid
    wait $pid 2> /dev/null
    kill $feeder 2> /dev/null
    wait $feeder 2> /dev/null
    check "kill -9 leaves a stale out.skv.tmpXXXXXX (documented)" test "$(tmps)" = 1
    run skv-trace cat -o out.skv small.skv
    expect_rc 0 "a later run is unaffected by the stale temporary"
    check "the later run wrote the whole stream" cmp out.skv small.skv
    rm -f out.skv.tmp*
fi

# fsync before the rename (the data is on disk before the name points to
# it), and SKV_NO_FSYNC=1 skips it
if command -v strace > /dev/null 2>&1 && strace -f -o /dev/null true 2> /dev/null; then
    strace -f -e trace=fsync,fdatasync,rename,renameat,renameat2 -o st.log \
        skv-trace cat -o fs.skv small.skv 2> /dev/null
    check "the output is fsynced before its rename" \
        awk '/fsync\(/ && !f { f = NR } /rename/ { r = NR } END { exit !(f && r && f < r) }' st.log
    SKV_NO_FSYNC=1 strace -f -e trace=fsync,fdatasync,rename,renameat,renameat2 -o st.log \
        skv-trace cat -o fs.skv small.skv 2> /dev/null
    check "SKV_NO_FSYNC=1: renamed without fsync" \
        awk '/fsync\(/ { f = 1 } /rename/ { r = 1 } END { exit !(!f && r) }' st.log
else
    skip "fsync before rename" "no strace, or ptrace not permitted"
fi

# ---- concurrent writers to one output name ----
rm -f out.skv
skv-trace synth -L 1 -T 64 -H 2 -K 1 -D 16 --seed 2 -o s2.skv || exit 1
skv-trace synth -L 1 -T 64 -H 2 -K 1 -D 16 --seed 3 -o s3.skv || exit 1
for i in 1 2 3 4; do
    for f in small s2 s3 large; do skv-trace cat -o out.skv $f.skv & done
done
wait
run skv-trace info out.skv
expect_rc 0 "16 concurrent writers: the output is one complete stream"
if cmp -s out.skv small.skv || cmp -s out.skv s2.skv || cmp -s out.skv s3.skv || \
   cmp -s out.skv large.skv; then
    ok "16 concurrent writers: the output is one of the inputs, whole"
else
    bad "16 concurrent writers: the output is one of the inputs, whole"
fi
check "16 concurrent writers: no temporary left" test "$(tmps)" = 0

