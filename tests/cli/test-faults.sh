# Fault injection: full disks, closed pipes, truncation at and inside every
# chunk, files replaced while read, allocation failures, address-space and
# memory caps.  Every case: the documented exit status, one clear message,
# no crash, no sanitizer or valgrind report, no partial output left behind.
. "$SKV_TOP/tests/cli/lib.sh"

# run with stdout to a given file (run sends it to $T/out)
run_to() { dest=$1; shift; vg "$@" > "$dest" 2> "$T/err"; rc=$?; err=$(cat "$T/err"); }
# exactly one line on stderr, containing TEXT, and nothing from a sanitizer
one_msg() {
    n=$(wc -l < "$T/err")
    if [ "$n" = 1 ] && grep -qF -- "$1" "$T/err" && \
       ! grep -qE 'Sanitizer|runtime error|==[0-9]+==' "$T/err"; then
        ok "$2"
    else
        echo "       wanted one line with: $1 (got $n lines)"
        bad "$2"
    fi
}

skv-trace synth -L 2 -T 64 -H 2 -K 1 -D 16 --needles 1 -o a.skv || exit 1
skv-trace synth -L 2 -T 1024 -o big.skv || exit 1

# ---- ENOSPC: every output path on a full disk ----
run skv-trace synth -L 1 -T 64 -o /dev/full
expect_rc 1 "ENOSPC: synth -o /dev/full"
one_msg "No space left on device" "ENOSPC: synth -o /dev/full, one message"
run_to /dev/full skv-trace synth -L 1 -T 64
expect_rc 1 "ENOSPC: synth > /dev/full"
one_msg "No space left on device" "ENOSPC: synth > /dev/full, one message"
run skv-trace cat a.skv -o /dev/full
expect_rc 1 "ENOSPC: cat -o /dev/full"
run_to /dev/full skv-trace cat --layers 0 --dtype f32 a.skv
expect_rc 1 "ENOSPC: cat --layers --dtype > /dev/full"
one_msg "No space left on device" "ENOSPC: cat with selection, one message"
run_to /dev/full skv-trace info a.skv
expect_rc 1 "ENOSPC: info (text) > /dev/full"
one_msg "write error on standard output: No space left on device" "ENOSPC: info, one message"
run_to /dev/full skv-trace info --json a.skv
expect_rc 1 "ENOSPC: info --json > /dev/full"
run_to /dev/full skv-trace synth --help
expect_rc 1 "ENOSPC: --help > /dev/full"
run skv-trace export --prefix ex a.skv
run skv-trace import --queries ex.q.npy --keys ex.k.npy --values ex.v.npy -o /dev/full
expect_rc 1 "ENOSPC: import -o /dev/full"
one_msg "No space left on device" "ENOSPC: import, one message"

# ---- EPIPE: the reader goes away early ----
for cmd in "synth -L 2 -T 2048" "cat big.skv" "cat -z big.skv" "cat --tokens 0:900 big.skv"; do
    rm -f pipe.err rc.txt
    # shellcheck disable=SC2086
    ( skv-trace $cmd 2> pipe.err; echo $? > rc.txt ) | head -c 100 > /dev/null
    if [ "$(cat rc.txt)" = 1 ] && [ "$(wc -l < pipe.err)" = 1 ] && grep -q "Broken pipe" pipe.err; then
        ok "EPIPE: $cmd | head exits 1 with one message"
    else
        echo "       exit $(cat rc.txt), stderr:"; sed 's/^/       | /' pipe.err | head -3
        bad "EPIPE: $cmd | head exits 1 with one message"
    fi
done

# ---- truncation at every chunk boundary and inside every chunk ----
# cut points: each chunk's first byte (a boundary), inside its header, in the
# middle of its payload, and its last byte (inside the CRC)
python3 - a.skv > cuts.txt <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read()
cuts = [0, 4]
off = 8
while off < len(b):
    size = struct.unpack_from("<Q", b, off + 12)[0]
    end = off + 24 + size + 4
    cuts += [off, off + 12, off + 24 + size // 2, end - 1]
    off = end
print(" ".join(str(c) for c in sorted(set(cuts)) if c < len(b)))
PY
ncut=0 nbad=0
for cut in $(cat cuts.txt); do
    head -c "$cut" a.skv > cut.skv
    # valgrind is slow: there, every second cut point and two readers
    if [ -n "$SKV_VALGRIND" ]; then
        ncut=$((ncut + 1)); [ $((ncut % 2)) = 0 ] || continue
        cmds="info sel"
    else
        cmds="info cat sel export"
    fi
    for c in $cmds; do
        rm -f o.skv ex2.*
        case $c in
        info)   run skv-trace info cut.skv ;;
        cat)    run skv-trace cat -o o.skv - < cut.skv ;;
        sel)    run skv-trace cat --layers 1 --tokens 3:40 -o o.skv cut.skv ;;
        export) run skv-trace export --prefix ex2 cut.skv ;;
        esac
        if [ "$rc" != 1 ] || [ "$(wc -l < "$T/err")" != 1 ] || \
           ! grep -qE 'truncated|empty input' "$T/err" || [ -e o.skv ] || \
           [ -n "$(ls ex2.* 2>/dev/null)" ]; then
            echo "       cut at $cut, $c: exit $rc"; sed 's/^/       | /' "$T/err" | head -3
            nbad=$((nbad + 1))
        fi
    done
done
[ $nbad = 0 ] && ok "truncation at $(wc -w < cuts.txt) cut points: exit 1, one 'truncated' message, no output" \
    || bad "truncation at every chunk boundary and inside every chunk ($nbad failures)"

# ---- a file replaced or changed while it is being read ----
# cat opens its input (and reads the stream header) before its output; a
# FIFO as output holds it there until we have changed the input.
replace_case() {  # replace_case WHAT ACTION -- runs cat big.skv -o fifo
    action=$2
    cp orig.skv big.skv
    rm -f fifo; mkfifo fifo
    # started directly (not through the vg function) so $! is its pid
    set -- skv-trace cat big.skv -o fifo
    [ -n "$SKV_VALGRIND" ] && set -- valgrind -q --error-exitcode=99 --leak-check=full --suppressions="$SKV_TOP/tests/cli/valgrind.supp" \
        --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect "$@"
    "$@" 2> "$T/err" &
    pid=$!
    i=0
    until ls -l /proc/$pid/fd 2>/dev/null | grep -q 'big\.skv'; do
        i=$((i + 1)); [ $i -lt 3000 ] || break; sleep 0.01
    done
    eval "$action"
    # never block for ever on the FIFO if the tool is already gone
    if kill -0 $pid 2>/dev/null; then timeout 120 cat fifo > rep.out; else : > rep.out; fi
    wait $pid; rc=$?
}
cp big.skv orig.skv
skv-trace synth -L 2 -T 1024 --seed 9 -o other.skv
replace_case "renamed over" "mv other.skv big.skv"
expect_rc 0 "file renamed over while read: the open file is read to its end"
check "file renamed over while read: output is the original" cmp rep.out orig.skv
replace_case "truncated in place" ": > big.skv"
expect_rc 1 "file truncated in place while read: exit 1"
one_msg "truncated" "file truncated in place while read: one message"
replace_case "overwritten in place" \
    "printf 'XXXXXXXX' | dd of=big.skv bs=1 seek=70000 conv=notrunc 2>/dev/null"
expect_rc 1 "file overwritten in place while read: exit 1"
one_msg "CRC mismatch" "file overwritten in place while read: CRC error"
rm -f fifo
cp orig.skv big.skv

# ---- allocation failures: fail the k-th library allocation, k = 1, 2, ... ----
oom_sweep() {  # oom_sweep NAME ARGS...: sweep until the command succeeds
    name=$1; shift
    k=1 nbad=0
    step=1; [ -n "$SKV_VALGRIND" ] && step=3
    while [ $k -lt 400 ]; do
        rm -f o.skv
        SKV_FAIL_ALLOC=$k run "$@"
        [ "$rc" = 0 ] && break
        if [ "$rc" != 1 ] || [ "$(wc -l < "$T/err")" != 1 ] || \
           ! grep -qE 'out of memory|no memory' "$T/err" || [ -e o.skv ]; then
            echo "       SKV_FAIL_ALLOC=$k: exit $rc"; sed 's/^/       | /' "$T/err" | head -3
            nbad=$((nbad + 1))
        fi
        k=$((k + step))
    done
    if [ "$rc" = 0 ] && [ $nbad = 0 ]; then
        ok "allocation failure 1..$((k - 1)) in $name: exit 1, 'out of memory', no output"
    else
        bad "allocation failures in $name ($nbad bad, last exit $rc at k=$k)"
    fi
}
oom_sweep "synth" skv-trace synth -L 1 -T 64 -H 2 -K 1 -D 16 --needles 1 -o o.skv
oom_sweep "info" skv-trace info a.skv
oom_sweep "cat" skv-trace cat -z a.skv -o o.skv
oom_sweep "cat with selection" skv-trace cat --layers 1 --tokens 3:40 --dtype bf16 a.skv -o o.skv
oom_sweep "export" skv-trace export --prefix ex3 a.skv
oom_sweep "import" skv-trace import --queries ex.q.npy --keys ex.k.npy --values ex.v.npy -o o.skv

# ---- address-space limit (ulimit -v) ----
if [ -n "$SKV_SANITIZE$SKV_VALGRIND" ]; then
    skip "ulimit -v" "sanitizers and valgrind reserve more address space than the limit"
else
    rm -f o.skv
    run sh -c 'ulimit -v 200000 && skv-trace synth -L 1 -H 64 -K 64 -D 1024 -T 65536 -o o.skv'
    expect_rc 1 "ulimit -v: synth of a 16 GB layer fails"
    one_msg "out of memory" "ulimit -v: one 'out of memory' message"
    check "ulimit -v: no output left" test ! -e o.skv
    run sh -c 'ulimit -v 200000 && skv-trace info big.skv && skv-trace cat --dtype f32 big.skv -o o.skv'
    expect_rc 0 "ulimit -v: reading works in bounded memory"
fi

# ---- --threads larger than the machine ----
ncpu=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)
many=$((ncpu * 8))   # the tools accept up to 256
[ $many -le 256 ] || many=256
if command -v skv-alloc >/dev/null && command -v skv-attend >/dev/null; then
    run skv-alloc -p smartkv -b 4 --bits 0,2,4,16 --sinks 1 --recent 1 --threads 1 a.skv -o al1.skv
    expect_rc 0 "skv-alloc --threads 1"
    run skv-alloc -p smartkv -b 4 --bits 0,2,4,16 --sinks 1 --recent 1 --threads $many a.skv -o alN.skv
    expect_rc 0 "skv-alloc --threads $many ($ncpu CPUs)"
    check "skv-alloc: same allocation with 1 and $many threads" cmp al1.skv alN.skv
    run skv-attend -s 0:64 --threads 1 a.skv -o at1.skv
    expect_rc 0 "skv-attend --threads 1"
    run skv-attend -s 0:64 --threads $many a.skv -o atN.skv
    expect_rc 0 "skv-attend --threads $many ($ncpu CPUs)"
    check "skv-attend: same outputs with 1 and $many threads" cmp at1.skv atN.skv
    run skv-attend --threads 99999999999 a.skv -o x.skv
    expect_rc 2 "skv-attend --threads beyond any limit is a usage error"
else
    skip "--threads beyond the machine" "skv-alloc/skv-attend not built"
fi

# ---- the other tools: full disk and allocation failures ----
if command -v skv-quant >/dev/null && command -v skv-stats >/dev/null; then
    skv-alloc -b 4 --bits 0,2,4,16 --sinks 1 --recent 1 a.skv -o al.skv 2>/dev/null
    for cmd in "skv-alloc -p uniform:4 a.skv" "skv-quant -q -u 4 a.skv" "skv-attend a.skv"; do
        # shellcheck disable=SC2086
        run_to /dev/full $cmd
        expect_rc 1 "ENOSPC: $cmd > /dev/full"
        one_msg "No space left on device" "ENOSPC: $cmd, one message"
    done
    skv-quant -q -u 4 --keep-queries al.skv -o q.skv 2>/dev/null
    run_to /dev/full skv-stats mem q.skv
    expect_rc 1 "ENOSPC: skv-stats mem > /dev/full"
    oom_sweep "skv-alloc" skv-alloc -b 4 --bits 0,2,4,16 --sinks 1 --recent 1 a.skv -o o.skv
    oom_sweep "skv-quant" skv-quant -q al.skv -o o.skv
    oom_sweep "skv-quant -d" skv-quant -d q.skv -o o.skv
    oom_sweep "skv-attend (packed)" skv-attend -s 0:8 q.skv -o o.skv
    oom_sweep "skv-stats mem" skv-stats mem q.skv
fi

# ---- memory cap: --max-mem and SKV_MAX_MEM ----
run skv-trace info --max-mem 64K big.skv
expect_rc 1 "--max-mem 64K: a stream with 128 KiB chunks is refused"
one_msg "memory cap" "--max-mem: one message naming the cap"
SKV_MAX_MEM=64K run skv-trace info big.skv
expect_rc 1 "SKV_MAX_MEM=64K refuses it too"
SKV_MAX_MEM=64K run skv-trace info --max-mem 0 big.skv
expect_rc 0 "--max-mem 0 overrides SKV_MAX_MEM"
rm -f o.skv
run skv-trace synth --max-mem 1M -L 1 -T 4096 -o o.skv
expect_rc 1 "synth --max-mem 1M of a 9 MiB layer fails"
check "no output after the cap" test ! -e o.skv
run skv-trace info --max-mem 12x a.skv
expect_rc 2 "--max-mem with a bad size is a usage error"
# a hostile header: a TENS chunk declaring 60 MiB in a 200-byte file
python3 - a.skv hostile.skv <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read()
head_end = 8 + 24 + struct.unpack_from("<Q", b, 8 + 8)[0] + 4
n = 60 << 20
open(sys.argv[2], "wb").write(b[:head_end] + b"TENS" + struct.pack("<IQQ", 0, n, n) + bytes(100))
PY
run skv-trace info --max-mem 2M hostile.skv
expect_rc 1 "hostile header declaring 60 MiB under --max-mem 2M"
one_msg "truncated" "hostile header: truncated, nothing allocated for the declared size"

# ---- numeric options are strict ----
run skv-trace synth --seed ' -1' -o o.skv
expect_rc 2 "--seed ' -1' is a usage error (not 2^64-1)"
