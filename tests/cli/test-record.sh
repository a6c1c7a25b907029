# skv-trace record: a real model's queries, keys and values.
. "$SKV_TOP/tests/cli/lib.sh"

# errors that need no model
run skv-trace record --help
expect_rc 0 "record --help exits 0"
check "record --help names --model" grep -q -- "--model FILE" "$T/out"
run env SKV_MODEL= skv-trace record --prompt hi -o x.skv
expect_rc 2 "record without --model is a usage error"
run skv-trace record --model m.gguf --prompt hi --text t.txt -o x.skv
expect_rc 2 "record with both --prompt and --text is a usage error"
run skv-trace record --model m.gguf --text t.txt --chat -o x.skv
expect_rc 2 "--chat without --prompt is a usage error"
run skv-trace record --model m.gguf --prompt hi --threads 0 -o x.skv
expect_rc 2 "--threads 0 is a usage error"
printf 'GGUF\003\0\0\0' > bad.gguf
run skv-trace record --model bad.gguf --prompt hi -o x.skv
expect_rc 1 "a truncated GGUF is a data error"
expect_err "bad.gguf: truncated" "truncated GGUF message names the file"
check "no output after a failed record" test ! -e x.skv
run skv-trace record --model nonexistent.gguf --prompt hi -o x.skv
expect_rc 1 "a missing model is a data error"

run skv-trace heads --help
expect_rc 0 "heads --help exits 0"
run env SKV_MODEL= skv-trace heads -o h.txt
expect_rc 2 "heads without --model is a usage error"
run skv-trace heads --model m.gguf -n 1 -o h.txt
expect_rc 2 "heads -n 1 is a usage error"
run skv-trace heads --model bad.gguf -o h.txt
expect_rc 1 "heads with a truncated GGUF is a data error"
check "no scores after a failed heads" test ! -e h.txt

model=${SKV_MODEL:-$SKV_TOP/models/SmolLM2-135M-Instruct.Q4_1.gguf}
if [ ! -r "$model" ]; then
    skip "record with the real model" "model absent: run scripts/fetch-model"
    exit 0
fi

printf 'The quick brown fox jumps over the lazy dog. It was 1999.\n' > fox.txt
run skv-trace record --model "$model" --text fox.txt --layers 2 --threads 2 -o fox.skv
expect_rc 0 "record a text"
run skv-trace info --json fox.skv
check "recorded trace has the model's shape, token ids and post-RoPE keys" python3 -c '
import json, sys
t = json.load(open(sys.argv[1]))["trace"]
assert (t["layers"], t["heads"], t["kv_heads"], t["head_dim"]) == (2, 9, 3, 64), t
assert t["tokens"] == t["prefill"] and 12 <= t["tokens"] <= 30, t
assert t["post_rope"] and t["token_ids"] and t["rope_theta"] == 100000, t
assert t["model"].startswith("SmolLM2-135M-Instruct") and t["tokenizer"] == "gguf:gpt2/smollm", t
' "$T/out"
run sh -c "skv-trace record --model '$model' --text - --tokens 5 --layers 1 --dtype f32 < fox.txt | skv-trace info --json -"
check "--tokens, --dtype and stdin/stdout" python3 -c '
import json, sys
t = json.load(open(sys.argv[1]))["trace"]
assert t["tokens"] == 5 and t["dtype"] == "f32" and t["layers"] == 1, t
' "$T/out"
run skv-trace record --model "$model" --prompt "The capital of France is" --generate 6 --layers 1 -o gen.skv
expect_rc 0 "record a generation"
run skv-trace info --json gen.skv
check "generation: prefill is the prompt, the rest decode steps" python3 -c '
import json, sys
t = json.load(open(sys.argv[1]))["trace"]
assert t["prefill"] == 5 and t["tokens"] == 11, t
' "$T/out"
# a recorded trace carries token ids: the fused path on an allocation of it
# (the demo's pipeline) packs a temporary cache without them
run sh -c 'skv-alloc -b 1 gen.skv -o gen.alloc.skv && skv-attend --packed -s 8:11 gen.alloc.skv -o gen.att.skv'
expect_rc 0 "skv-attend --packed on an allocated trace with token ids"
run env SKV_PROGRESS_INTERVAL=0 skv-trace record --model "$model" --prompt "Say hi" --chat --generate 4 --layers 1 --progress -o chat.skv
expect_rc 0 "record a chat turn with --progress"
expect_err "skv-trace record: done: " "progress lines on stderr (off a terminal, with --progress)"
run skv-trace record --model "$model" --prompt "" -o empty.skv
expect_rc 1 "an empty prompt is a data error"
check "no output for an empty prompt" test ! -e empty.skv
run skv-trace record --model "$model" --text fox.txt --layers 2 --hidden -o hid.skv
expect_rc 0 "record with --hidden"
run skv-trace info --json hid.skv
check "--hidden: one hidn block per layer of n_embd f16 per token, the trace unchanged" python3 -c '
import json, sys
j = json.load(open(sys.argv[1])); t = j["trace"]; h = j["chunk_types"]["hidn"]
assert h["count"] == 2 and h["raw_bytes"] == 2 * (40 + t["tokens"] * 576 * 2), h
assert j["chunk_types"]["TENS"]["count"] == 2 * (9 + 3 + 3), j
' "$T/out"
run sh -c "skv-trace cat hid.skv | skv-alloc -p uniform:8 | skv-trace info -"
expect_rc 0 "a trace with hidn chunks passes through skv-alloc"

# skv-alloc train: the relevance predictor on the recorded hidden states
run skv-alloc train hid.skv
expect_rc 2 "train without --output is a usage error"
run skv-alloc train --output w.skv --label-q 1 hid.skv
expect_rc 2 "train --label-q 1 is a usage error"
run skv-alloc train --output w.skv fox.skv
expect_rc 1 "train on a trace too short for the sample steps is a data error"
expect_err "too few" "the message says the trace is too short"
run skv-alloc train --output w.skv --t0 2 --horizon 3 --stride 1 fox.skv
expect_rc 1 "train on a trace without hidden states is a data error"
expect_err "record --hidden" "the message says how to record them"
check "no weights after a failed train" test ! -e w.skv
run skv-alloc train --model "$model" --output w.skv --t0 2 --horizon 3 --stride 1 --hidden-dims 4 --eval hid.skv hid.skv
expect_rc 0 "train with a held-out trace"
check "train prints per-layer AUC of EMA and the learned score, and the verdict" sh -c "
grep -Eq '^mean +\| +[01]\.[0-9]{4} +[01]\.[0-9]{4} +\| +\| +[01]\.[0-9]{4} [01]\.[0-9]{4} +[01]\.[0-9]{4}' '$T/out' &&
grep -Eq '^held-out: learned (beats|does NOT beat) EMA' '$T/out'"
check "train prints beta_l per layer: on the grid 2^(k/4), its recall no lower than beta 1's" python3 -c '
import math, re, sys
rows = [l for l in open(sys.argv[1]) if re.match(r"^[0-9]+ ", l)]
assert len(rows) == 2, rows
for l in rows:
    b, rec, r1 = re.search(r"\| +([0-9.]+) ([0-9.]+) \(([0-9.]+)\) \|", l).groups()
    k = 4 * math.log2(float(b))
    assert abs(k - round(k)) < 0.01 and -8 <= round(k) <= 8, l
    assert float(rec) >= float(r1), l
' "$T/out"
run skv-trace info --json w.skv
check "the weights file holds one rlvw chunk per layer" python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
assert j["chunk_types"]["rlvw"]["count"] == 2 and j["complete"], j
' "$T/out"

# RazorAttention's head scores with the model, read back by skv-alloc
run skv-trace heads --model "$model" -n 48 --seed 3 --threads 1 -o h.txt
expect_rc 0 "heads: scores of every head"
check "heads: 30 x 9 scores in [0, 1], some induction head above 0.5" python3 -c '
import sys
rows = [l.split() for l in open(sys.argv[1]) if not l.startswith("#")]
assert rows[0] == ["layers", "30", "heads", "9"], rows[0]
s = [(int(a), int(b), float(c), float(d)) for a, b, c, d in rows[1:]]
assert len(s) == 270 and all(0 <= c <= 1 and 0 <= d <= 1 for _, _, c, d in s)
assert max(c for _, _, c, _ in s) > 0.5, max(c for _, _, c, _ in s)
' h.txt
run skv-trace heads --model "$model" -n 48 --seed 3 --threads 1 -o h2.txt
check "heads: the same seed gives the same file" cmp h.txt h2.txt
