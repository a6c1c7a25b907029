"""Render scripts/eval-texts: KL (mean beta) of smartkv and position per
text, budget and width ladder, one column per variant; then per variant how
often smartkv beats position at equal bytes (smartkv's beta at most 2% above)
and each policy's geometric mean of KL against the first variant's.
Standard library only.
  eval_texts.py PREFIX "TEXT..." LABEL=FLAGS...   (rows in PREFIX-TEXT-K.tsv)"""
import csv
import math
import re
import sys

prefix, texts, variants = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
names = [v.split("=", 1)[0] for v in variants]
POL = ("smartkv", "position")


def key(r):
    m = re.search(r" bits=([0-9,]+)", r["label"])
    return (float(r["budget"]), m.group(1) if m else "2..16")


# kl[text][(budget, widths)][policy][k] = (kl, beta)
kl = {}
for t in texts:
    kl[t] = {}
    for k in range(len(variants)):
        with open("%s-%s-%d.tsv" % (prefix, t, k + 1)) as fh:
            for r in csv.DictReader(fh, delimiter="\t"):
                if r["label"] != "label" and r["policy"] in POL:
                    kl[t].setdefault(key(r), {}).setdefault(r["policy"], {})[k] = (
                        float(r["kl"]), float(r["beta"]))

print("# %s: %s\n" % (prefix.rsplit("/", 1)[-1], ", ".join(names)))
print("KL of smartkv and its position control, mean beta in brackets; the first "
      "1024 tokens of each text, windows of 512 every 256 (GFDL-1.3: 2048 tokens, one "
      "context).\n")
print("| text | budget | widths | policy | " + " | ".join("%s: KL (beta)" % n for n in names) + " |")
print("|---|---|---|---|" + "---|" * len(names))
for t in texts:
    for b in sorted(kl[t], key=lambda b: (b[0], b[1] != "2..16", b[1])):
        for p in POL:
            got = kl[t][b].get(p, {})
            cells = ["%.4g (%.3f)" % got[k] if k in got else "-" for k in range(len(names))]
            print("| %s | %g | %s | %s | %s |" % (t, b[0], b[1], p, " | ".join(cells)))
print()
for k, n in enumerate(names):
    wins = tot = 0
    for t in texts:
        for b, pol in kl[t].items():
            s, o = pol.get("smartkv", {}).get(k), pol.get("position", {}).get(k)
            if s and o:
                tot += 1
                wins += s[0] < o[0] and s[1] <= 1.02 * o[1]
    line = "- %s: smartkv beats position in %d of %d rows" % (n, wins, tot)
    for p in POL if k else ():
        lg = [math.log(pol[p][k][0] / pol[p][0][0]) for t in texts for pol in kl[t].values()
              if k in pol.get(p, {}) and 0 in pol.get(p, {})]
        if lg:
            line += "; %s KL : %s's, geometric mean %.2f" % (p, names[0], math.exp(sum(lg) / len(lg)))
    print(line)
