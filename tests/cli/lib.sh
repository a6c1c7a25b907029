# tests/cli/lib.sh -- helpers for CLI test scripts (sourced).
#   run CMD...              run a command, capture $out $err $rc (stdout to file $T/out)
#   expect_rc N "what"      check the last exit status
#   expect_err "text" "what" stderr of the last run contains text
#   ok "what" / bad "what"  record a result; skip "what" "why" records a skip
#   check "what" CMD...     ok if CMD succeeds, bad otherwise
# Tools run under valgrind when SKV_VALGRIND=1.
: "${T:?run through tests/cli/run}"
ok()   { echo "pass $1" >> "$SKV_RESULTS"; echo "  ok   $1"; }
bad()  { echo "fail $1" >> "$SKV_RESULTS"; echo "  FAIL $1"; [ -s "$T/err" ] && sed 's/^/       | /' "$T/err" | head -5; }
skip() { echo "skip $1" >> "$SKV_RESULTS"; echo "  skip $1 ($2)"; }
vg() {
    if [ -n "$SKV_VALGRIND" ]; then
        case $1 in skv-*) set -- valgrind -q --error-exitcode=99 --leak-check=full --suppressions="$SKV_TOP/tests/cli/valgrind.supp" \
            --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect \
            "$@" ;; esac
    fi
    "$@"
}
run() { vg "$@" > "$T/out" 2> "$T/err"; rc=$?; err=$(cat "$T/err"); }
expect_rc() { if [ "$rc" = "$1" ]; then ok "$2"; else echo "       exit $rc, wanted $1"; bad "$2"; fi; }
expect_err() { if grep -qF -- "$1" "$T/err"; then ok "$2"; else echo "       stderr lacks: $1"; bad "$2"; fi; }
check() { what=$1; shift; if "$@" > "$T/check.out" 2>&1; then ok "$what"; else sed 's/^/       | /' "$T/check.out" | head -5; bad "$what"; fi; }

# poke FILE OUT TYPE NTH OFFSET VALUE [u16|u64]: set a payload field of the
# NTH chunk of TYPE (from 0) and make its CRC right again (python3)
poke() { python3 - "$@" <<'PY'
import struct, sys, zlib
src, dst, ctype, nth, off, val = sys.argv[1:7]
nth, off, val = int(nth), int(off), int(val, 0)
fmt = {"u16": "<H", "u64": "<Q"}.get((sys.argv[7:] or ["u32"])[0], "<I")
b = bytearray(open(src, "rb").read())
p, k = 8, 0
while p < len(b):
    size = struct.unpack_from("<Q", b, p + 8)[0]
    if b[p:p + 4].decode() == ctype:
        if k == nth:
            struct.pack_into(fmt, b, p + 24 + off, val)
            struct.pack_into("<I", b, p + 24 + size, zlib.crc32(bytes(b[p:p + 24 + size])) & 0xFFFFFFFF)
            break
        k += 1
    p += 24 + size + 4
open(dst, "wb").write(bytes(b))
PY
}
