# scripts/install-deps with a fake apt-get: it waits for the dpkg lock
# (DPkg::Lock::Timeout) instead of failing, keeps apt-get's chatter out of
# the output, and shows it when apt-get fails.
. "$SKV_TOP/tests/cli/lib.sh"

if [ "$(id -u)" != 0 ]; then
    skip "install-deps with a fake apt-get" "not root: install-deps only prints what to install"
else
    mkdir fake
    # nothing is installed: every check fails, so install-deps calls apt-get
    for c in pkg-config dpkg-query gnuplot cc; do printf '#!/bin/sh\nexit 1\n' > fake/$c; done
    printf '#!/bin/sh\necho "$*" >> "%s/apt.log"\ni=0; while [ $i -lt 200 ]; do echo "Get:$i http://deb.debian.org noise"; i=$((i+1)); done\n[ -z "$APT_FAIL" ] || { echo "E: Could not get lock /var/lib/dpkg/lock-frontend"; exit 100; }\n' "$T" > fake/apt-get
    printf '#!/bin/sh\nexit 1\n' > fake/python3
    chmod +x fake/*
    run env PATH="$T/fake:$PATH" CC="$T/fake/cc" sh "$SKV_TOP/scripts/install-deps"
    expect_rc 0 "install-deps with a working apt-get"
    check "apt-get update and install are told to wait for the dpkg lock" sh -c "
        grep -c 'DPkg::Lock::Timeout=600' apt.log | grep -qx 2 && grep -q 'install -y' apt.log"
    check "apt-get's 400 lines of output are not shown (3 lines in all)" sh -c "
        [ \$(cat '$T/out' '$T/err' | wc -l) -le 3 ] && ! grep -q noise '$T/err'"
    run env PATH="$T/fake:$PATH" CC="$T/fake/cc" APT_FAIL=1 sh "$SKV_TOP/scripts/install-deps"
    expect_rc 1 "a failing apt-get: exit 1"
    check "... with the end of its output, the lock error included" sh -c "
        grep -q 'apt-get .*update.* failed' '$T/err' && grep -q 'Could not get lock' '$T/err' &&
        [ \$(wc -l < '$T/err') -le 20 ]"
fi
