"""Render the pass-key grids of scripts/eval-results (DIR/needle-N.tsv, one
file per length, from `skv-eval needle --tsv`) as a markdown table: one row
per cache, one column per length (the depths' results in order), the cells
of lengths not run printed as "not run (time)", and each cache's agreement
with the fp16 cache over the cells run (scripts/plot-needle draws the same
files).  Standard library only."""
import csv
import glob
import os
import sys

d = sys.argv[1]
LENGTHS = [1024, 2048, 4096, 8192]
DEPTHS = [0, 25, 50, 75, 100]
cells = {}  # (cache, length, depth) -> row
caches = []
for path in sorted(glob.glob(os.path.join(d, "needle-*.tsv"))):
    for r in csv.DictReader(open(path), delimiter="\t"):
        key = (r["cache"], int(r["length"]), int(r["depth"]))
        cells[key] = r
        if r["cache"] not in caches:
            caches.append(r["cache"])
        if int(r["length"]) not in LENGTHS:
            LENGTHS.append(int(r["length"]))
LENGTHS.sort()
if not caches:
    print("no pass-key results in %s (scripts/eval-results runs them)" % d)
    sys.exit(0)
caches.sort(key=lambda c: c != "fp16")
print("\n### Pass-key retrieval (beta 0.25; depths %s%%)\n" % "/".join(map(str, DEPTHS)))
print("| cache | " + " | ".join("%dK" % (n // 1024) if n % 1024 == 0 else str(n)
                                 for n in LENGTHS) + " | agree with fp16 | beta (after prefill) |")
print("|---" * (len(LENGTHS) + 3) + "|")
for c in caches:
    cols, agree, run, betas = [], 0, 0, []
    for n in LENGTHS:
        got = [cells.get((c, n, dp)) for dp in DEPTHS]
        if not any(got):
            cols.append("not run (time)")
        else:
            cols.append(" / ".join("-" if g is None else ("ok" if g["correct"] == "1" else "x")
                                   for g in got))
        for g in got:
            if g is not None:
                run += 1
                agree += g["agree"] == "1"
                betas.append(float(g["beta"]))
    beta = "%.3f" % (sum(betas) / len(betas)) if betas else "-"
    print("| %s | %s | %s | %s |" % (c, " | ".join(cols),
                                    "" if c == "fp16" else "%d/%d" % (agree, run), beta))
