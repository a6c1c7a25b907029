# skv-trace: pipelines, exit codes, messages, bad input.
. "$SKV_TOP/tests/cli/lib.sh"

run skv-trace synth -L 2 -T 300 -o a.skv
expect_rc 0 "synth to a file"
run skv-trace info a.skv
expect_rc 0 "info on a file"
check "info shows the shape" grep -q "2 layers, 9 query heads, 3 kv heads" "$T/out"
run sh -c 'skv-trace synth -L 2 -T 300 | skv-trace info -'
expect_rc 0 "synth | info -"
run sh -c 'skv-trace synth -L 2 -T 300 | cmp - a.skv'
expect_rc 0 "synth is deterministic (stdout equals file)"
run skv-trace info --json a.skv
check "info --json is valid JSON" python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["trace"]["tokens"]==300' "$T/out"

# cat: selection, compression round trip
run sh -c 'skv-trace cat -z a.skv | skv-trace cat -d | cmp - a.skv'
expect_rc 0 "cat -z | cat -u restores the bytes"
run sh -c 'skv-trace cat --layers 1 --tokens 10:20 a.skv | skv-trace info --json -'
check "cat --layers --tokens selects" python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["trace"]; assert (t["layers"],t["tokens"])==(1,10), t' "$T/out"
run skv-trace cat --layers 0-5 a.skv -o x.skv
expect_rc 2 "cat --layers out of range is a usage error"
expect_err "index out of range" "cat --layers message"
run skv-trace cat --tokens 20:10 a.skv -o x.skv
expect_rc 2 "cat --tokens backwards is a usage error"
check "no output left after a usage error" test ! -e x.skv

# usage errors
run skv-trace
expect_rc 2 "no command"
run skv-trace frobnicate
expect_rc 2 "unknown command"
run skv-trace synth --tokens abc
expect_rc 2 "bad number"
run skv-trace synth --heads 9 --kv-heads 4
expect_rc 2 "kv heads must divide heads"
run skv-trace synth --help
expect_rc 0 "--help exits 0"
run skv-trace --version
expect_rc 0 "--version exits 0"

# bad input: data errors exit 1 with "tool: FILE: message"
printf 'hello\n' > text.txt
run skv-trace info text.txt
expect_rc 1 "text file"
expect_err "skv-trace info: text.txt: not a smartkv stream (bad signature)" "text file message"
: > empty.skv
run skv-trace info empty.skv
expect_rc 1 "empty file"
expect_err "empty input" "empty file message"
run skv-trace info missing.skv
expect_rc 1 "missing file"
expect_err "missing.skv: cannot open" "missing file message"
run skv-trace info .
expect_rc 1 "directory"
size=$(wc -c < a.skv)
head -c $((size / 2)) a.skv > half.skv
run skv-trace info half.skv
expect_rc 1 "truncated file"
expect_err "truncated" "truncated file message"
head -c $((size - 1)) a.skv > short.skv
run skv-trace info short.skv
expect_rc 1 "file missing its last byte"
# a flipped bit inside the payload names the chunk and offset
cp a.skv flip.skv
printf '\377' | dd of=flip.skv bs=1 seek=5000 conv=notrunc 2>/dev/null
run skv-trace info flip.skv
expect_rc 1 "flipped bit"
expect_err "CRC mismatch in chunk TENS at byte offset" "flipped bit message"
run sh -c 'cat half.skv | skv-trace cat -o out.skv'
expect_rc 1 "truncated pipe input"
check "no partial output after a failed cat" test ! -e out.skv
run sh -c 'cat half.skv | skv-trace cat > piped.skv'
expect_rc 1 "truncated input to stdout exits 1"
run skv-trace info piped.skv
expect_rc 1 "the partial stdout stream has no end chunk"

# write errors
run skv-trace synth -L 1 -T 64 -o /dev/full
expect_rc 1 "write to /dev/full"
expect_err "No space left on device" "/dev/full message"
run sh -c '( skv-trace synth -L 4 -T 4096 2> pipe.err; echo $? > rc.txt ) | head -c 10 > /dev/null; cat rc.txt'
check "closed pipe: synth exits 1" grep -qx 1 "$T/out"
check "closed pipe: one clear message" sh -c 'test "$(wc -l < pipe.err)" = 1 && grep -q "write error: Broken pipe" pipe.err'
mkdir -p ro && chmod 555 ro
if [ "$(id -u)" != 0 ]; then
    run skv-trace synth -L 1 -T 64 -o ro/x.skv
    expect_rc 1 "unwritable directory"
else
    skip "unwritable directory" "running as root"
fi

# numpy interop: numpy writes -> import -> export -> numpy compares bit-exact
PY=
for p in python3 /usr/bin/python3; do
    if $p -c 'import numpy' 2>/dev/null; then PY=$p; break; fi
done
if [ -z "$PY" ]; then
    skip "numpy interop" "numpy not installed"
else
    for dt in float16 float32; do
        $PY - "$dt" <<'PYEOF'
import numpy as np, sys
dt = sys.argv[1]
rng = np.random.default_rng(7)
q = rng.standard_normal((3, 6, 33, 16)).astype(dt)
k = rng.standard_normal((3, 2, 33, 16)).astype(dt)
v = rng.standard_normal((3, 2, 33, 16)).astype(dt)
k[0, 0, 0, 0] = -0.0
np.save("q.npy", q); np.save("k.npy", k); np.save("v.npy", v)
PYEOF
        run skv-trace import --queries q.npy --keys k.npy --values v.npy --prefill 30 -o imp.skv
        expect_rc 0 "import $dt"
        run skv-trace export --prefix exp imp.skv
        expect_rc 0 "export $dt"
        check "numpy round trip is bit-exact ($dt)" $PY -c '
import numpy as np
for n in "qkv":
    a = np.load(n + ".npy"); b = np.load("exp." + n + ".npy")
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    assert a.tobytes() == b.tobytes(), n
'
    done
    # export of a synthetic f16 trace matches what numpy reads
    run skv-trace export --prefix syn a.skv
    check "export of synth gives [layers][heads][tokens][dim]" $PY -c '
import numpy as np
q = np.load("syn.q.npy"); k = np.load("syn.k.npy")
assert q.shape == (2, 9, 300, 64) and k.shape == (2, 3, 300, 64) and q.dtype == np.float16
'
    # bad .npy inputs
    $PY -c '
import numpy as np
np.save("i32.npy", np.zeros((1, 2, 3, 4), np.int32))
np.save("f64.npy", np.zeros((1, 2, 3, 4)))
np.save("three.npy", np.zeros((2, 3, 4), np.float32))
np.save("kbad.npy", np.zeros((3, 4, 33, 16), np.float16))
np.save("big.npy", np.zeros((1, 2, 3, 4), ">f4"))
a = np.asfortranarray(np.zeros((3, 2, 33, 16), np.float32)); np.save("fort.npy", a)
'
    run skv-trace import --queries i32.npy --keys k.npy --values v.npy -o x.skv
    expect_rc 1 "import int32"
    expect_err "i32.npy: npy dtype '<i4' is not float16 or float32" "int32 message"
    run skv-trace import --queries f64.npy --keys k.npy --values v.npy -o x.skv
    expect_rc 1 "import float64"
    run skv-trace import --queries big.npy --keys k.npy --values v.npy -o x.skv
    expect_err "big-endian" "big-endian message"
    run skv-trace import --queries three.npy --keys k.npy --values v.npy -o x.skv
    expect_err "expected shape [layers][heads][tokens][dim]" "3-d array message"
    run skv-trace import --queries q.npy --keys fort.npy --values fort.npy -o x.skv
    expect_err "Fortran order" "Fortran order message"
    run skv-trace import --queries q.npy --keys kbad.npy --values v.npy -o x.skv
    expect_rc 1 "shape mismatch"
    head -c 200 q.npy > cut.npy
    run skv-trace import --queries cut.npy --keys k.npy --values v.npy -o x.skv
    expect_rc 1 "truncated npy"
    expect_err "does not match its header" "truncated npy message"
    check "no output after failed imports" test ! -e x.skv
fi
