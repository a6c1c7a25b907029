# Sweeps beyond one process: --shard I/N runs under GNU parallel and as a
# Slurm job array (scripts/sweep-slurm), and skv-eval merge turns the shard
# tables into the table of the one-process sweep.
. "$SKV_TOP/tests/cli/lib.sh"

model=${SKV_MODEL:-$SKV_TOP/models/SmolLM2-135M-Instruct.Q4_1.gguf}
text=/usr/share/common-licenses/GPL-3
grid="--max-tokens 64 --ctx 64 --policies uniform:8,uniform:4,uniform:2,smartkv --budgets 0.3,0.5"

# the stable columns: everything but the timings (seconds, ref_seconds,
# track_frac, realloc_frac), rows sorted by label
stable() { cut -f1-20 "$1" | sort; }

run skv-eval merge -o m.tsv
expect_rc 2 "merge without tables: usage"
printf 'not\ta table\n' > bad.tsv
run skv-eval merge -o m.tsv bad.tsv
expect_rc 1 "merge of a file that is not a sweep table: exit 1"
expect_err "bad.tsv: not a skv-eval sweep table" "... naming it"

if [ ! -f "$model" ] || [ ! -f "$text" ]; then
    skip "sharded sweeps" "no model at $model or no $text"
    exit 0
fi
# shellcheck disable=SC2086
run skv-eval sweep -q -@ 1 --model "$model" --text "$text" $grid -o one.tsv
expect_rc 0 "the one-process sweep"
check "it has 5 rows (3 uniform, smartkv at 2 budgets)" test "$(wc -l < one.tsv)" = 6

if command -v parallel >/dev/null 2>&1; then
    # shellcheck disable=SC2086
    run sh -c "seq 0 3 | parallel -j 2 skv-eval sweep -q -@ 1 --model '$model' --text '$text' \
        $grid --shard {}/4 -o par.{}.tsv"
    expect_rc 0 "4 shards under GNU parallel"
    check "every shard wrote its rows, none twice" sh -c "
        [ \$(cat par.[0-3].tsv | grep -vc '^label') = 5 ]"
    run skv-eval merge -o par.tsv par.0.tsv par.1.tsv par.2.tsv par.3.tsv
    expect_rc 0 "merge the 4 shards"
    check "the merged table equals the one-process sweep (timings aside)" sh -c "
        stable() { cut -f1-20 \"\$1\" | sort; }; stable par.tsv > a; stable one.tsv > b; cmp a b"
    run skv-eval merge -o par.tsv par.0.tsv
    check "merging again adds nothing" sh -c "[ $rc = 0 ] && [ \$(wc -l < par.tsv) = 6 ]"
else
    skip "4 shards under GNU parallel" "GNU parallel not installed (scripts/install-deps)"
fi

# a single-node Slurm (Debian's slurm-wlm and munge), started here as root
if [ "$(id -u)" != 0 ] || ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 ||
   ! command -v munged >/dev/null 2>&1; then
    skip "sweep-slurm on a single-node Slurm" "slurm-wlm and munge not installed or not root (scripts/install-deps --ci installs them)"
    exit 0
fi
if ! sh "$SKV_TOP/tests/cli/slurm-up" "$T/slurm" > slurm-up.log 2>&1; then
    sed 's/^/       | /' slurm-up.log | tail -5
    skip "sweep-slurm on a single-node Slurm" "could not start slurmctld/slurmd here (see above)"
    sh "$SKV_TOP/tests/cli/slurm-up" --down "$T/slurm" > /dev/null 2>&1
    exit 0
fi
export SLURM_CONF="$T/slurm/slurm.conf"
# shellcheck disable=SC2086
run "$SKV_TOP/scripts/sweep-slurm" -n 4 --wait -o "$T/slurm.tsv" -- -q -@ 1 --model "$model" \
    --text "$text" $grid
expect_rc 0 "scripts/sweep-slurm: a 4-task array, then the merge"
check "the Slurm table equals the one-process sweep (timings aside)" sh -c "
    stable() { cut -f1-20 \"\$1\" | sort; }; stable '$T/slurm.tsv' > a; stable one.tsv > b; cmp a b"
sh "$SKV_TOP/tests/cli/slurm-up" --down "$T/slurm" > /dev/null 2>&1
