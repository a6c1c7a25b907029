"""Render skv-eval sweep rows (scripts/eval-results) as markdown tables and
check the method's claims.  Standard library only."""
import csv
import sys

only_baselines = sys.argv[1] == "--baselines-only"
rows = list(csv.DictReader(open(sys.argv[-1]), delimiter="\t"))
by = {r["label"]: r for r in rows}


def f(r, k):
    return float(r[k])


def line(r, name=None):
    return "| %s | %.3f | %.3f | %.3f | %.3f | %+.3f | %.4g | %.3f |" % (
        name or r["label"], f(r, "beta"), f(r, "beta_alloc"), f(r, "beta_end"), f(r, "ppl"),
        f(r, "dppl"), f(r, "kl"), f(r, "top1"))


HEAD = ("| cache | beta (mean) | beta (after realloc) | beta (window end) | PPL | dPPL | "
        "KL (nats/token) | top-1 |\n|---|---|---|---|---|---|---|---|")


def table(title, labels):
    present = [l for l in labels if l in by]
    if not present:
        return
    print("\n### " + title + "\n")
    print(HEAD)
    for l in present:
        print(line(by[l]))


# every baseline in its default setting (R = 16, default widths), fixed
# layouts first, then by budget
BASE = ["fp16", "q8_0", "uniform:8", "kivi:4", "q4_0", "uniform:4", "kivi:2", "uniform:2",
        "streaming", "h2o", "snapkv", "mikv", "smartkv"]


def baselines(title):
    for r in rows:  # fixed layouts spend no budget (older rows recorded the default)
        if r["policy"] in ("q8_0", "q4_0") or r["policy"].startswith(("uniform", "kivi")):
            r["budget"] = "0"
    # the method (scripts/eval-method): grouped layout, one width ladder per
    # budget range (0..16 at 0.2, 2..16 at 0.3, 4,8,16 at 0.5)
    M = " kch+rot vrot kv range protect=8 p8"
    meth = {"0.2": " bits=0,2,3,4,8,16" + M, "0.3": M, "0.5": " bits=4,8,16" + M}
    sel = [r for r in rows if r["policy"] in BASE and r["budget"] in ("0", "0.2", "0.3", "0.5")
           and ((not any(t in r["label"] for t in (" bits=", " ideal", " sinks=", " group=",
                                                   " kch", " ktok"))
                 and (r["realloc"] == "16" or r["policy"].startswith("kivi"))
                 and r["label"].count("ema:") <= 1
                 and ("ema:" not in r["label"] or "ema:0.9 " in r["label"]))
                or (r["policy"] == "smartkv" and r["label"].endswith(" R=32" + meth.get(r["budget"], "?"))))]
    if not sel:
        return
    sel.sort(key=lambda r: (float(r["budget"]), BASE.index(r["policy"]), -f(r, "beta")))
    tracked_table(title, sel)


def tracked_table(title, sel):
    """Rows with the tracking state's share of beta beside it."""
    print("\n### " + title + "\n")
    print("| cache | beta (mean) | of it tracking | beta (window end) | PPL | dPPL | "
          "KL (nats/token) | top-1 |\n|---|---|---|---|---|---|---|---|")
    for r in sel:
        print("| %s | %.3f | %.3f | %.3f | %.3f | %+.3f | %.4g | %.3f |" % (
            r["label"], f(r, "beta"), f(r, "meta_frac"), f(r, "beta_end"), f(r, "ppl"),
            f(r, "dppl"), f(r, "kl"), f(r, "top1")))


# the seeds' baselines (skv-eval(1)), default settings, by budget
SEED = ["sliding", "dynamickv", "uncomp", "razor", "rocketkv", "prune-merge:8", "zack", "atskv"]


def seeds(title):
    sel = [r for r in rows if r["policy"] in SEED and r["budget"] in ("0.2", "0.3", "0.5")
           and " bits=" not in r["label"]]
    if not sel:
        return
    sel.sort(key=lambda r: (float(r["budget"]), SEED.index(r["policy"])))
    tracked_table(title, sel)


def atskv_vs_h2o():
    """ATSKV against h2o at equal measured bytes: for each atskv row, the
    h2o row (any budget, its tracking state counted) with the fewest bytes
    that are no fewer than ATSKV's."""
    at = sorted((r for r in rows if r["policy"] == "atskv" and " bits=" not in r["label"]),
                key=lambda r: f(r, "beta"))
    h2 = sorted((r for r in rows if r["policy"] == "h2o" and r["realloc"] == "16"
                 and " bits=" not in r["label"]), key=lambda r: f(r, "beta"))
    if not at or not h2:
        return
    wins, det = 0, []
    for a in at:
        h = next((r for r in h2 if f(r, "beta") >= f(a, "beta")), None)
        if h is None:
            det.append("beta %.3f: KL %.4g, no h2o row with as many bytes" % (f(a, "beta"), f(a, "kl")))
            continue
        wins += f(a, "kl") < f(h, "kl")
        det.append("beta %.3f vs %.3f: KL %.4g vs %.4g" % (f(a, "beta"), f(h, "beta"), f(a, "kl"),
                                                       f(h, "kl")))
    print("\n- **%s** ATSKV beats h2o at equal measured bytes (h2o's cheapest row with no fewer "
          "bytes): %d/%d atskv rows; %s" % ("PASS" if wins == len(at) else "FAIL", wins, len(at),
                                            "; ".join(det)))


if only_baselines:
    baselines("Baselines")
    seeds("The seeds' baselines")
    atskv_vs_h2o()
    sys.exit(0)

B = ["0.25", "0.3", "0.4", "0.5"]
W = " bits=4,8,16"
table("Uniform widths and the fp16 reference",
      ["fp16", "uniform:8 R=16", "uniform-protect:8 R=16", "uniform:4 R=16",
       "uniform-protect:4 R=16", "uniform:2 R=16", "uniform-protect:2 R=16"])
table("smartkv vs random, default widths 2,3,4,8,16",
      [f"{p} beta={b} ema:0.9 R=16" for b in B for p in ("smartkv", "random")])
table("smartkv vs random, widths 4,8,16",
      [f"{p} beta={b} ema:0.9 R=16{W}" for b in B for p in ("smartkv", "random")])
table("Importance ablations (smartkv, widths 4,8,16, beta 0.4)",
      [f"smartkv beta=0.4 ema:{d} R=16{W}" for d in ("0.85", "0.9", "0.95")] +
      [f"smartkv beta=0.4 ema:0.9 R={r}{W}" for r in ("8", "32", "64")] +
      [f"smartkv beta=0.4 normalized R=16{W}"])
table("Real cache vs idealised (requantize from full precision)",
      [f"smartkv beta={b} ema:0.9 R=16{W}{s}" for b in ("0.3", "0.5") for s in ("", " ideal")])

baselines("Baselines at equal budgets (fixed layouts first)")
seeds("The seeds' baselines at equal budgets")
atskv_vs_h2o()

print("\n### Claims\n")


def claim(text, ok, detail):
    print("- **%s** %s: %s" % ("PASS" if ok else "FAIL", text, detail))


u4, u8 = by.get("uniform:4 R=16"), by.get("uniform:8 R=16")
for tag, sfx in (("widths 2..16", ""), ("widths 4,8,16", W)):
    s = by.get(f"smartkv beta=0.3 ema:0.9 R=16{sfx}")
    if s and u4:
        ok = f(s, "kl") < f(u4, "kl") and f(s, "beta") <= f(u4, "beta")
        claim(f"smartkv at beta 0.3 ({tag}) beats uniform 4-bit on KL at equal or fewer bytes", ok,
              "KL %.4g vs %.4g; beta %.3f vs %.3f (mean while scoring)" % (
                  f(s, "kl"), f(u4, "kl"), f(s, "beta"), f(u4, "beta")))
    s = by.get(f"smartkv beta=0.5 ema:0.9 R=16{sfx}")
    if s and u8:
        ok = f(s, "kl") <= 1.25 * f(u8, "kl")
        claim(f"smartkv at beta 0.5 ({tag}) matches uniform 8-bit (KL within 1.25x)", ok,
              "KL %.4g vs %.4g (x%.1f), dPPL %+.3f vs %+.3f; beta %.3f vs %.3f" % (
                  f(s, "kl"), f(u8, "kl"), f(s, "kl") / max(f(u8, "kl"), 1e-30), f(s, "dppl"),
                  f(u8, "dppl"), f(s, "beta"), f(u8, "beta")))
    wins, tot, det = 0, 0, []
    for b in B:
        s = by.get(f"smartkv beta={b} ema:0.9 R=16{sfx}")
        r = by.get(f"random beta={b} ema:0.9 R=16{sfx}")
        if s and r:
            tot += 1
            wins += f(s, "kl") < f(r, "kl")
            det.append("beta %s: KL %.4g vs %.4g (beta %.3f vs %.3f)" % (
                b, f(s, "kl"), f(r, "kl"), f(s, "beta"), f(r, "beta")))
    if tot:
        claim(f"smartkv beats random at equal bytes ({tag})", wins == tot,
              "%d/%d budgets; " % (wins, tot) + "; ".join(det))

# the baselines at equal budgets (same beta requested; mean beta printed)
for p in ("streaming", "h2o", "snapkv", "mikv"):
    wins, tot, det = 0, 0, []
    for b in ("0.2", "0.3", "0.5"):
        s = next((r for r in rows if r["label"] == f"smartkv beta={b} ema:0.9 R=16"), None)
        o = next((r for r in rows if r["policy"] == p and r["budget"] == b
                  and r["realloc"] == "16" and " bits=" not in r["label"]), None)
        if s and o:
            tot += 1
            wins += f(s, "kl") < f(o, "kl")
            det.append("beta %s: KL %.4g vs %.4g (beta %.3f vs %.3f)" % (
                b, f(s, "kl"), f(o, "kl"), f(s, "beta"), f(o, "beta")))
    if tot:
        claim(f"smartkv (widths 2..16) beats {p} on KL at equal budgets", wins == tot,
              "%d/%d budgets; " % (wins, tot) + "; ".join(det))
