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
# the CUDA code is a backend loaded at run time: nothing else links CUDA
for f in "$SKV_TOP"/bin/skv-* "$SKV_TOP/lib/libsmartkv.so"; do
    case $f in *.c) continue ;; esac
    check "${f##*/} links no CUDA library (the backend is loaded at run time)" \
        sh -c "! ldd '$f' | grep -Eq 'libcuda|libcublas'"
done
run sh -c "SKV_CUDA_BACKEND=/nonexistent/libsmartkv-cuda.so skv-attend --device cuda -o o.skv t.skv"
expect_rc 1 "a missing backend: --device cuda exits 1"
expect_err "skv-attend: no CUDA backend: SKV_CUDA_BACKEND=/nonexistent/libsmartkv-cuda.so does not exist" \
    "a missing backend: the message says so"
printf 'not an ELF file\n' > fake.so
run sh -c "SKV_CUDA_BACKEND=\$PWD/fake.so skv-attend --device cuda -o o.skv t.skv"
expect_err "no CUDA backend: cannot load" "an unloadable backend: the message says why"
check "no output file left" test ! -e o.skv
backend=$SKV_TOP/lib/libsmartkv-cuda.so
if [ -f "$backend" ]; then
    check "the backend exports its entry only" sh -c "
        nm -D --defined-only '$backend' | awk '\$2 ~ /^[TDBR]\$/ {print \$3}' | grep -v '^_' |
        grep -vx skv_cuda_backend_open | { ! grep .; }"
    check "the backend links cudart and cuBLAS" sh -c "readelf -d '$backend' | grep -q 'libcudart' &&
        readelf -d '$backend' | grep -q 'libcublas'"
else
    skip "the backend's symbols and libraries" "not built (no nvcc)"
fi
if ! skv-attend --device cuda -o /dev/null t.skv 2> "$T/cuda.err" && grep -q "no CUDA" "$T/cuda.err"; then
    run skv-attend --device cuda -o o.skv t.skv
    expect_rc 1 "no device: --device cuda exits 1"
    expect_err "skv-attend: no CUDA" "no device: message"
    check "no device: no output file left" test ! -e o.skv
    skip "--device cuda equals the CPU kernels" "$(cat "$T/cuda.err")"
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

# pkg-config --static: the private libraries link a static program, no CUDA
if command -v pkg-config >/dev/null && command -v cc >/dev/null &&
   make -s -C "$SKV_TOP" smartkv.pc >/dev/null 2>&1; then
    check "smartkv.pc names no CUDA library" sh -c "! grep -Eq 'cudart|cublas' '$SKV_TOP/smartkv.pc'"
    printf '#include "smartkv.h"\n#include <stdio.h>\nint main(void) { skv_set_max_mem(0); puts(SKV_LIB_VERSION); return skv_cuda_available() > 0 ? 3 : 0; }\n' > pc.c
    # the library of a SANITIZE=1 build needs the sanitizer runtimes at link time
    san=; [ -n "$SKV_SANITIZE" ] && san="-fsanitize=address,undefined"
    run sh -c "cc $san pc.c \$(printf -- '-I%s ' '$SKV_TOP/lib' '$SKV_TOP'/lib/*/) '$SKV_TOP/lib/libsmartkv.a' \
        \$(PKG_CONFIG_PATH='$SKV_TOP' pkg-config --static --libs-only-l smartkv | sed 's/-lsmartkv//') -o pc && ./pc"
    check "a program linked with pkg-config --static flags builds and runs" sh -c "[ $rc = 0 ] || [ $rc = 3 ]"
else
    skip "pkg-config --static" "pkg-config or cc missing"
fi
