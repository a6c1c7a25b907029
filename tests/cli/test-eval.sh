# skv-eval: usage errors without a model; with the real model a few hundred
# tokens of ppl, a tiny needle grid and a resumable two-row sweep.
. "$SKV_TOP/tests/cli/lib.sh"

run skv-eval --help
expect_rc 0 "--help exits 0"
check "--help lists the three commands" sh -c "grep -q 'ppl' '$T/out' && grep -q 'needle' '$T/out' && grep -q 'sweep' '$T/out'"
run skv-eval --version
expect_rc 0 "--version exits 0"
run skv-eval
expect_rc 2 "no command is a usage error"
run skv-eval frobnicate --model m.gguf
expect_rc 2 "an unknown command is a usage error"
expect_err "unknown command" "unknown command named"
run skv-eval ppl --text t.txt
expect_rc 2 "ppl without --model is a usage error"
run skv-eval ppl --model m.gguf
expect_rc 2 "ppl without --text is a usage error"
run skv-eval ppl --model m.gguf --text t.txt --policy bogus
expect_rc 2 "an unknown policy is a usage error"
run skv-eval ppl --model m.gguf --text t.txt --decay 1
expect_rc 2 "decay 1 is a usage error"
run skv-eval ppl --model m.gguf --text t.txt --importance oracle
expect_rc 2 "an offline-only importance mode is a usage error"
run skv-eval ppl --model m.gguf --text t.txt -p razor
expect_rc 2 "razor without --heads is a usage error"
expect_err "needs --heads FILE" "razor without --heads: message"
printf 'layers 1 heads 1\n0 0 2 0\n' > badheads.txt
run skv-eval ppl --model m.gguf --text t.txt -p razor --heads badheads.txt
expect_rc 1 "a bad head-score file is a data error"
expect_err "badheads.txt: line 2:" "bad head-score file: message with its line"
run skv-eval ppl --model m.gguf --text t.txt -p mikv --bits 16
expect_rc 2 "mikv with one width is a usage error"
expect_err "two non-zero widths" "mikv's message says what it needs"
run skv-eval ppl --model m.gguf --text t.txt --tsv --json
expect_rc 2 "--tsv with --json is a usage error"
run skv-eval sweep --model m.gguf --text t.txt
expect_rc 2 "sweep without -o is a usage error"
run skv-eval ppl --model m.gguf --text t.txt -p prune-merge --kmeans-learning-rate 2
expect_rc 2 "a k-means learning rate above 1 is a usage error"
run skv-eval ppl --model m.gguf --text t.txt -p prune-merge:x
expect_rc 2 "prune-merge:x is a usage error"
run skv-eval ppl --model m.gguf --text t.txt -p h2o --kept-bits 4,16
expect_rc 2 "--kept-bits without prune-merge is a usage error"
run skv-eval ppl --model m.gguf --text t.txt -p prune-merge --kept-bits 4,16 --max-cache-size 10
expect_rc 2 "--kept-bits with --max-cache-size is a usage error"
expect_err "spends the budget" "... saying why"
run skv-eval ppl --model m.gguf --text t.txt -p prune-merge --kept-bits 0,4
expect_rc 2 "--kept-bits with 0 is a usage error"
run skv-eval needle --model m.gguf --depths 101
expect_rc 2 "depth beyond 100 is a usage error"
run skv-eval needle --model m.gguf --lengths 1X
expect_rc 2 "a bad length is a usage error"
run skv-eval ppl --model m.gguf --text t.txt -p kivi:5
expect_rc 2 "kivi at 5 bits is a usage error"
run skv-eval ppl --model m.gguf --text t.txt --keys diagonal
expect_rc 2 "an unknown key layout is a usage error"
run skv-eval ppl --model m.gguf --text t.txt --error l2
expect_rc 2 "an unknown error model is a usage error"
run skv-eval ppl --model m.gguf --text t.txt -p atskv
expect_rc 2 "atskv without --weights is a usage error"
run skv-eval ppl --model m.gguf --text t.txt -p atskv --weights nonexistent.skv
expect_rc 1 "missing atskv weights are a data error"
expect_err "nonexistent.skv" "the message names the weights file"
run skv-eval ppl --model m.gguf --text t.txt --grouped --importance atskv
expect_rc 2 "--importance atskv without --weights is a usage error"
run skv-eval sweep --model m.gguf --text t.txt --policies atskv -o x.tsv -j 2 --offload o.bin
expect_rc 2 "--offload with two sweep jobs is a usage error"
run skv-eval ppl --model m.gguf --text t.txt -p atskv --active-bits 3
expect_rc 2 "--active-bits 3 is a usage error"
echo hello > t.txt
cp t.txt same.txt
run skv-eval ppl --model m.gguf --text same.txt -p zack --calib "$T/same.txt"
expect_rc 2 "zack calibrated on the scored text is a usage error"
expect_err "is the scored text" "... saying why"
run skv-eval ppl --model m.gguf --text t.txt -p zack --calib-tokens 1
expect_rc 2 "--calib-tokens 1 is a usage error"
run skv-eval ppl --model nonexistent.gguf --text t.txt
expect_rc 1 "a missing model is a data error"
expect_err "nonexistent.gguf" "missing model message names the file"

model=${SKV_MODEL:-$SKV_TOP/models/SmolLM2-135M-Instruct.Q4_1.gguf}
text=/usr/share/common-licenses/GPL-3
if [ ! -r "$model" ] || [ ! -r "$text" ]; then
    skip "skv-eval with the real model" "model or $text absent: run scripts/fetch-model"
    exit 0
fi
if [ -n "$SKV_VALGRIND" ]; then
    # hundreds of forward passes take over ten minutes under memcheck; the
    # same cases run in the plain and the ASan/UBSan runs of make check
    skip "skv-eval with the real model" "too slow under valgrind"
    exit 0
fi

run skv-eval ppl --model "$model" --text "$text" --max-tokens 160 --ctx 96 --stride 64 \
    -p uniform:4 --json
expect_rc 0 "ppl uniform:4 on 160 tokens"
check "ppl JSON: every token but the first scored once, fp16 reference, beta below 1" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["tokens"] == 160 and r["scored"] == 159 and r["windows"] == 2, r
assert r["ppl_ref"] > 1 and r["kl"] > 0 and 0 < r["top1"] <= 1, r
assert abs(r["dppl"] - (r["ppl"] - r["ppl_ref"])) < 1e-3, r
assert 0.25 < r["beta_alloc"] < r["beta"] < 1, r
assert r["widths"].startswith("2:0.0% 3:0.0% 4:100.0%"), r
' "$T/out"
check "progress went to stderr" grep -q "ppl: 100%" "$T/err"
run skv-eval ppl --model "$model" --text "$text" --max-tokens 96 --ctx 96 -p fp16 --tsv -q
expect_rc 0 "ppl with the fp16 cache itself"
check "fp16 against itself: KL 0, top-1 1, beta 1" awk -F'\t' 'NR == 2 { exit !($5 == 0 && $8 == 1 && $3 == 1) } END { exit NR != 2 }' "$T/out"
check "quiet: nothing on stderr" test ! -s "$T/err"

run skv-eval ppl --model "$model" --text "$text" --max-tokens 96 --ctx 96 -p prune-merge \
    --max-cache-size 100000 --json -q
expect_rc 0 "ppl with prune-merge that never prunes"
check "prune-merge that never prunes: attends like fp16, bytes = rows + positions + tracking" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["kl"] < 1e-3 and r["top1"] > 0.97, r
# per (layer, KV head) and token: 256 fp16 K+V + 4 position + 3 query heads x 2 epochs x 4
assert abs(r["beta_end"] - 284 / 256) < 1e-6 and abs(r["beta"] - 284 / 256) < 1e-6, r
' "$T/out"
run skv-eval ppl --model "$model" --text "$text" --max-tokens 160 --ctx 160 -p prune-merge:4 \
    -b 0.3 --recent 16 --json -q
expect_rc 0 "ppl with prune-merge:4 at beta 0.3"
check "prune-merge beta 0.3: pruned by the window end, KL > 0" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["beta_end"] < 0.45 and r["beta"] < 1 and r["kl"] > 0, r
assert r["cache"] == "prune-merge beta=0.3 K=4 P=16 D=32 sinks=4 recent=16", r
' "$T/out"
cp "$T/out" pm16.json
run skv-eval ppl --model "$model" --text "$text" --max-tokens 160 --ctx 160 -p prune-merge:4 \
    -b 0.3 --recent 16 --kept-bits 4,8,16 --json -q
expect_rc 0 "ppl with prune-merge:4 and mixed precision (--kept-bits 4,8,16) at beta 0.3"
check "merge + mixed precision: rows below 16 bits, at the budget of the fp16 run" python3 -c '
import json, sys
r, f = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
assert r["cache"] == "prune-merge beta=0.3 K=4 P=16 D=32 sinks=4 recent=16 bits=4,8,16", r
assert r["beta_end"] < 0.45 and r["kl"] > 0, r
assert abs(r["beta_end"] - f["beta_end"]) < 0.05, (r["beta_end"], f["beta_end"])
w = dict(x.rstrip("%").split(":") for x in r["widths"].split())
assert float(w["4"]) + float(w["8"]) > 0 and float(w["2"]) == 0, w
' "$T/out" pm16.json
# atskv: a predictor trained on the model's own trace (all layers, tiny fit)
run skv-trace record --model "$model" --text "$text" --tokens 120 --hidden -o hid.skv
expect_rc 0 "record all layers with hidden states"
run skv-alloc train --model "$model" --t0 8 --horizon 8 --stride 4 --samples 2000 \
    --hidden-dims 4 -o w.skv hid.skv
expect_rc 0 "train relevance weights"
run skv-eval ppl --model "$model" --text "$text" --max-tokens 160 --ctx 160 --sinks 2 \
    --recent 8 -p atskv -b 0.3 --weights w.skv --json -q
expect_rc 0 "ppl with atskv"
check "atskv JSON: active beta held at the window end, passive tier reported" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["cache"] == "atskv beta=0.3 R=16" and r["scored"] == 159 and r["windows"] == 1, r
assert r["beta_end"] <= 0.3 + 1e-9 and r["beta"] > r["beta_end"], r
assert r["passive_rows"] > 0 and r["passive_bytes"] > 0 and r["passive_evictions"] >= r["passive_rows"], r
assert r["passive_recalls"] >= 0 and r["kl"] > 0 and 0 < r["top1"] <= 1, r
assert r["widths"].startswith("2:0.0%"), r
' "$T/out"
cp "$T/out" atskv.json
# ATSKV offline: skv-alloc -p atskv on the trace, the learned relevance as importance
run skv-alloc -p atskv -b 0.3 --weights w.skv --model "$model" --json -v -o hid.alloc.skv hid.skv
expect_rc 0 "skv-alloc -p atskv on a trace with hidden states"
check "skv-alloc -p atskv: within the budget, tokens kept at 16 bits, the rest evicted" python3 -c '
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
assert 0.25 < r["beta"] <= 0.3, r
for l in r["layers"]:
    assert l[1] == l[2] == l[3] == l[4] == 0 and l[0] > 0 and l[5] > 0, l
' "$T/err"
run skv-trace record --model "$model" --text "$text" --tokens 40 -o nohid.skv
run skv-alloc -p atskv -b 0.3 --weights w.skv -o x.skv nohid.skv
expect_rc 1 "skv-alloc -p atskv on a trace without hidden states is a data error"
expect_err "hidden states" "the message says what is missing"
# the passive tier in a file: the same numbers, bytes written, the file removed
run skv-eval ppl --model "$model" --text "$text" --max-tokens 160 --ctx 160 --sinks 2 \
    --recent 8 -p atskv -b 0.3 --weights w.skv --json -q --offload off.bin
expect_rc 0 "ppl with atskv --offload"
check "offload JSON: the in-memory run's numbers, the passive blobs written, the file removed" python3 -c '
import json, os, sys
r, m = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
for k in ("kl", "top1", "passive_rows", "passive_bytes", "passive_evictions", "passive_recalls"):
    assert r[k] == m[k], (k, r[k], m[k])
assert r["passive_offload_written"] > 0 and r["passive_offload_file"] <= r["passive_offload_written"], r
assert not os.path.exists("off.bin")
' "$T/out" atskv.json
echo keep > off.bin
run skv-eval ppl --model "$model" --text "$text" --max-tokens 64 --ctx 64 -p atskv -b 0.3 \
    --weights w.skv -q --offload off.bin
expect_rc 1 "an existing offload file is a runtime error"
expect_err "off.bin: cannot create the offload file" "the message names the offload file"
check "an existing offload file is left alone" grep -qx keep off.bin
rm -f off.bin
# a write that fails (file size limit: EFBIG) is an error naming the file,
# and the file is removed
run sh -c 'ulimit -f 8; trap "" XFSZ; exec "$@"' sh skv-eval ppl --model "$model" --text "$text" \
    --max-tokens 160 --ctx 160 --sinks 2 --recent 8 -p atskv -b 0.3 --weights w.skv -q \
    --offload off.bin
expect_rc 1 "a failing offload write is a runtime error"
expect_err "off.bin: cannot write" "the message names the offload file"
check "the offload file is removed after the failure" test ! -e off.bin
# the learned relevance as smartkv's importance in the grouped layout
run skv-eval ppl --model "$model" --text "$text" --max-tokens 96 --ctx 96 -p smartkv \
    --keys channel --kv-split --residual 32 --protect-bits 8 --bits 2,3,4,8,16 -b 0.4 \
    --importance atskv --weights w.skv --json -q
expect_rc 0 "ppl with --importance atskv"
cp "$T/out" imp-compact.json
run skv-eval ppl --model "$model" --text "$text" --max-tokens 96 --ctx 96 -p smartkv \
    --keys channel --kv-split --residual 32 --protect-bits 8 --bits 2,3,4,8,16 -b 0.4 \
    --importance atskv-full --weights w.skv --json -q
expect_rc 0 "ppl with --importance atskv-full"
check "importance atskv(-full) JSON: the state counted in beta, the compact one much smaller" python3 -c '
import json, sys
c, f = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
assert "atskv-full" in f["cache"] and "ema" not in f["cache"], f
assert "atskv" in c["cache"] and "atskv-full" not in c["cache"], c
# full: per token and (layer, KV head) at least the 28-byte tracker against 256 fp16 bytes
assert f["meta_frac"] > 28 / 256 and f["kl"] > 0, f
# compact: at least 1 + 28/32 bytes per token and (layer, KV head); per token the full one
# holds 28 - 1.875 more per (layer, KV head), 2 more per layer and 4 more in all
assert (1 + 28 / 32) / 256 < c["meta_frac"] and c["kl"] > 0, c
assert f["meta_frac"] - c["meta_frac"] > 0.09, (c["meta_frac"], f["meta_frac"])
' imp-compact.json "$T/out"
run skv-eval ppl --model "$model" --text "$text" --max-tokens 96 --ctx 96 -p smartkv \
    --keys channel --kv-split -b 0.4 --importance atskv-compact --weights w.skv -q
expect_rc 2 "an unknown importance is a usage error"
expect_err "atskv-full" "the message lists the importances"
run skv-eval ppl --model "$model" --text "$text" --max-tokens 96 --ctx 96 -p atskv-ema -b 0.3
expect_rc 0 "ppl with the atskv-ema ablation (no weights needed)"
check "text output has the passive line" grep -Eq '^passive +[0-9]+ rows, [0-9]+ bytes .* recalls' "$T/out"

run skv-eval needle --model "$model" --lengths 128 --depths 0,100 -p uniform:8 --tsv -q
expect_rc 0 "needle grid with uniform:8"
check "needle TSV: header + 2 fp16 + 2 uniform:8 cells, same keys per cell" python3 -c '
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
assert len(rows) == 4, rows
assert [r["cache"] for r in rows] == ["fp16"] * 2 + ["uniform:8 R=16"] * 2, rows
assert rows[0]["key"] == rows[2]["key"] and rows[1]["key"] == rows[3]["key"], rows
for r in rows:
    assert 100 < int(r["prompt_tokens"]) <= 128 and r["correct"] in ("0", "1"), r
    assert r["agree"] == str(int(r["correct"] == r["fp16_correct"])), r
' "$T/out"

run skv-eval sweep --model "$model" --text "$text" --max-tokens 64 --ctx 64 \
    --policies uniform:8,uniform:2 -o sw.tsv -q
expect_rc 0 "sweep of two rows"
check "sweep TSV has the plot-pareto header and two rows" sh -c "head -1 sw.tsv | grep -q '^label	policy	beta	bytes	kl' && test \$(wc -l < sw.tsv) = 3"
check "the 2-bit row is worse than the 8-bit one" awk -F'\t' '$2 == "uniform:8" { a = $5 } $2 == "uniform:2" { b = $5 } END { exit !(b > a) }' sw.tsv
cp sw.tsv sw0.tsv
run skv-eval sweep --model "$model" --text "$text" --max-tokens 64 --ctx 64 \
    --policies uniform:8,uniform:2,uniform:4 -j 2 -o sw.tsv
expect_rc 0 "sweep resumes"
expect_err "2 already in sw.tsv, 1 to run" "resumed sweep skips done rows"
check "resumed sweep appended one row, kept the others" sh -c "test \$(wc -l < sw.tsv) = 4 && grep -c 'uniform:8' sw.tsv | grep -qx 1"

# every baseline keeps the JSON fields, with eviction in the online cache
for p in q8_0 q4_0 streaming h2o snapkv mikv sliding dynamickv uncomp razor rocketkv; do
    run skv-eval ppl --model "$model" --text "$text" --max-tokens 80 --ctx 80 -p $p -b 0.3 --json \
        --heads "$SKV_TOP/results/heads/SmolLM2-135M-Instruct.Q4_1.txt"
    expect_rc 0 "ppl $p on 80 tokens"
    check "ppl $p JSON: kl, ppl, ppl_ref, top1 and beta present and sane" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
for k in ("kl", "ppl", "ppl_ref", "top1", "beta", "beta_end", "bytes", "fp16_bytes"):
    assert k in r, k
# beta counts the tracking state too (meta_frac); the cache itself is below fp16
assert r["kl"] >= 0 and r["ppl"] > 1 and 0 <= r["top1"] <= 1 and 0 < r["beta"] - r["meta_frac"] < 1, r
if sys.argv[2] in ("streaming", "h2o", "snapkv", "sliding", "dynamickv", "uncomp", "razor", "rocketkv"):
    assert r["widths"].endswith("16:100.0%"), r  # stored rows: all fp16, the rest evicted
' "$T/out" $p
done
# zack: bases from another text (the default Apache-2.0), rank from -b
run skv-eval ppl --model "$model" --text "$text" --max-tokens 200 --ctx 200 -p zack -b 0.3 \
    --calib-tokens 128 --json -q
expect_rc 0 "ppl with zack"
check "zack: its label, no tracking state, within beta 0.3 at the window end, some KL" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["cache"] == "zack beta=0.3 R=16" and r["meta_frac"] == 0, r
# the rank fits beta at the window end; earlier the fp16 window weighs more
assert 0.1 < r["beta_end"] <= 0.3 < r["beta"] and r["kl"] > 0, r
' "$T/out"
run skv-eval ppl --model "$model" --text "$text" --max-tokens 64 --ctx 64 -p zack \
    --calib nonexistent.txt -q
expect_rc 1 "zack with a missing calibration text is a data error"
expect_err "nonexistent.txt" "... naming it"
run skv-eval ppl --model "$model" --text "$text" --max-tokens 96 --ctx 96 -p kivi:2 --json -q
expect_rc 0 "ppl with kivi:2"
check "kivi:2: grouped layout, no tracking state, beta at the window end below 0.5" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["cache"] == "kivi:2 residual=32" and r["meta_frac"] == 0 and 0.1 < r["beta_end"] < 0.5, r
' "$T/out"
run skv-eval sweep -q --model "$model" --text "$text" --max-tokens 96 --ctx 96 \
    --policies kivi:2,uniform-protect:4 -o sw.tsv
expect_rc 0 "sweep of kivi:2 (residual 32 whatever --realloc says) and uniform-protect:4"
check "sweep: kivi:2 residual=32 and uniform-protect:4 rows" sh -c \
    "grep -q '^kivi:2 residual=32	' sw.tsv && grep -q '^uniform-protect:4 R=16	' sw.tsv"
run skv-eval ppl --model "$model" --text "$text" --max-tokens 96 --ctx 96 -p smartkv -b 0.2 \
    --keys channel --kv-split --residual 32 --protect-bits 8 --bits 0,2,3,4,8,16 --json -q
expect_rc 0 "ppl with smartkv, 8-bit sinks and residual, eviction allowed"
check "protect-bits 8 and eviction: the label says so, beta after each reallocation within 0.2" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["beta_alloc"] <= 0.2 and r["cache"].endswith("protect=8"), r
' "$T/out"
run skv-eval ppl --model "$model" --text "$text" --max-tokens 96 --ctx 96 -p smartkv -b 0.3 \
    --keys channel --rotate --rotate-values --kv-split --residual 32 --protect-bits 8 \
    --param-bits 8 --bits 3,4,8,16 --json -q
expect_rc 0 "ppl with the method's configuration (rotated keys and values, 8-bit parameters)"
check "the label names the rotations and 8-bit parameters; beta after each reallocation within 0.3" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["beta_alloc"] <= 0.3 and r["cache"].endswith("kch+rot vrot kv protect=8 p8"), r
' "$T/out"
run skv-eval ppl --model "$model" --text "$text" --max-tokens 160 --ctx 160 -p smartkv -b 0.3 \
    --keys channel --rotate --rotate-values --kv-split --residual 32 --protect-bits 8 \
    --param-bits 8 --bits 2,3,4,8,16 --replan 2 --json -q
expect_rc 0 "ppl with the method's configuration and --replan 2"
check "replan 2: the label says so; beta after each reallocation within 0.3" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["beta_alloc"] <= 0.3 and r["cache"].endswith("p8 replan=2") and r["reallocs"] == 4, r
' "$T/out"
run skv-eval ppl --model "$model" --text "$text" --max-tokens 160 --ctx 160 -p smartkv -b 0.3 \
    --keys channel --rotate --rotate-values --kv-split --residual 32 --protect-bits 8 \
    --param-bits 8 --bits 2,3,4,8,16 --error imp-range --head-weight 0.5 --clip --recency 0.25 \
    --json -q
expect_rc 0 "ppl with the method's configuration (--head-weight 0.5, --clip, --recency 0.25)"
check "head weights, clip and the recency prior: the label says so; their state counted; beta after each reallocation within 0.3" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["beta_alloc"] <= 0.3 and r["cache"].endswith("range rec=0.25 protect=8 clip p8 hw=0.5") and r["meta_frac"] > 0, r
' "$T/out"
cp "$T/out" method-flags.json
run skv-eval ppl --model "$model" --text "$text" --max-tokens 160 --ctx 160 -p smartkv -b 0.3 \
    --bits 2,3,4,8,16 --method --json -q
expect_rc 0 "ppl with --method"
check "--method is the method's flags: the same cache, the same numbers (timings aside)" python3 -c '
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
t = ("seconds", "ref_seconds", "track_frac", "realloc_frac")
d = [k for k in set(a) | set(b) if k not in t and a.get(k) != b.get(k)]
assert not d and a["cache"].endswith("kch+rot vrot kv range rec=0.25 protect=8 clip p8 hw=0.5"), (d, a, b)
' "$T/out" method-flags.json
run skv-eval ppl --model "$model" --text "$text" --max-tokens 96 --ctx 96 -p smartkv -b 0.3 \
    --keys token --method --residual 16 --json -q
expect_rc 0 "ppl with options around --method"
check "options given with --method win wherever they stand (keys per token, R = 16)" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert " R=16 ktok+rot vrot kv range rec=0.25 protect=8 clip p8 hw=0.5" in r["cache"], r
' "$T/out"
run skv-eval ppl --model "$model" --text "$text" --max-tokens 160 --ctx 160 -p smartkv -b 0.3 \
    --keys channel --rotate --kv-split --residual 32 --protect-bits 8 --error imp-range \
    --recency 0.25 --keys-by-age --json -q
expect_rc 0 "ppl with --keys-by-age"
check "keys by age: the label says so; beta after each reallocation within 0.3" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["beta_alloc"] <= 0.3 and r["cache"].endswith("range rec=0.25 kage protect=8"), r
' "$T/out"
run skv-eval ppl --model "$model" --text "$text" --max-tokens 96 --ctx 96 -p smartkv -b 0.3 \
    --keys channel --residual 32 --keys-by-age -q
expect_rc 2 "--keys-by-age without --kv-split is a usage error"
run skv-eval ppl --model "$model" --text "$text" --max-tokens 96 --ctx 96 -p random -b 0.3 \
    --keys channel --kv-split --residual 32 --recency 0.25 --imp-power 2 --keys-by-age --json -q
expect_rc 0 "ppl with random in the grouped layout, --recency, --imp-power and --keys-by-age given"
check "random tracks nothing in the grouped layout: its label shows none of them" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert " rec=" not in r["cache"] and " p2" not in r["cache"] and " kage" not in r["cache"] and r["cache"].startswith("random"), r
' "$T/out"
run skv-eval ppl --model "$model" --text "$text" --max-tokens 96 --ctx 96 -p smartkv -b 0.3 \
    --keys channel --head-weight 1.5 -q
expect_rc 2 "--head-weight above 1 is a usage error"
run skv-eval ppl --model "$model" --text "$text" --max-tokens 96 --ctx 96 -p smartkv -b 0.3 \
    --keys channel --replan 0 -q
expect_rc 2 "--replan 0 is a usage error"
run skv-eval ppl --model "$model" --text "$text" --max-tokens 96 --ctx 96 -p smartkv -b 0.3 \
    --keys channel --param-bits 12 -q
expect_rc 2 "--param-bits other than 8 or 16 is a usage error"
run skv-eval ppl --model "$model" --text "$text" --max-tokens 96 --ctx 96 -p smartkv -b 0.2 \
    --keys channel --residual 32 --bits 0,2,4,8,16 -q
expect_rc 2 "eviction in the grouped layout without --kv-split is a usage error"
run skv-eval ppl --model "$model" --text "$text" --max-tokens 96 --ctx 96 -p smartkv -b 0.3 \
    --keys channel --kv-split --error logit --residual 32 --json -q
expect_rc 0 "ppl with smartkv in the grouped layout"
check "grouped smartkv: tracking state counted, under 0.01 of fp16" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert 0 < r["meta_frac"] < 0.01 and r["beta"] > r["meta_frac"], r
' "$T/out"
run skv-eval ppl --model "$model" --text "$text" --max-tokens 96 --ctx 96 -p smartkv -b 0.3 \
    --keys channel --rotate --rotate-values --kv-split --error imp-range --residual 32 \
    --protect-bits 8 --param-bits 8 --bits 0,2,3,4,8,16 --json -q
expect_rc 0 "ppl with the method (imp-range error model, eviction allowed)"
check "imp-range: the cache label says so; beta and KL in range" python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert " range " in r["cache"] and 0 < r["beta"] < 1 and r["kl"] >= 0, r
' "$T/out"
run skv-eval ppl --model "$model" --text "$text" --max-tokens 96 --ctx 96 -p smartkv -b 0.15 \
    --keys channel --residual 32 -q
expect_rc 1 "a budget below the smallest cache the settings allow is an error"
expect_err "below the smallest cache" "the error says why"
