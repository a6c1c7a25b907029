"""How well each importance signal forecasts the attention a token will draw.

    python3 forecast_importance.py PREFIX...

Each PREFIX names PREFIX.q.npy and PREFIX.k.npy, a trace's queries and keys
as `skv-trace export` writes them ([layers][heads][tokens][dim], post-RoPE).
Per (layer, KV head) the attention of the full-precision cache (the mean
over the KV head's query heads) is replayed query by query, with the EMA
skv-eval tracks (decay 0.9 per query).  At every 32nd query P (from 128,
with at least 64 queries left) the tokens past the 4 sinks and outside the
32-token residual are scored by:
  - the EMA alone, and the EMA plus a 1/age prior of mass W over the
    tokens held (skv-eval --recency W);
  - 1/age alone (the position policy's weights);
and each is scored by the share of the future attention (queries P ..
P+255) that its top quarter of tokens draws, next to the share the true top
quarter draws (the oracle).  Then, by age, the mean future attention per
query, the mean EMA, and the slope of future attention on the EMA.
Not a test: it prints numbers (scripts/eval-forecast records the traces and runs it).
"""
import sys

import numpy as np

WS = (0.0, 0.25, 0.5, 1.0)
HOR, EVERY, START, MIN_LEFT = 256, 32, 128, 64
SINKS, RESIDUAL, DECAY = 4, 32, 0.9
AGE_BINS = (32, 64, 128, 256, 512, 1024)


def unit_attention(q, k):
    """[T][T] causal attention, mean over the query heads of one KV head."""
    g, t, d = q.shape
    a = np.zeros((t, t))
    mask = np.tri(t, dtype=bool)
    for i in range(g):
        s = np.where(mask, q[i] @ k.T / np.sqrt(d), -np.inf)
        s -= s.max(1, keepdims=True)
        p = np.exp(s)
        a += p / p.sum(1, keepdims=True) / g
    return a


def one_trace(prefix):
    q = np.load(prefix + ".q.npy").astype(np.float64)
    k = np.load(prefix + ".k.npy").astype(np.float64)
    n_layers, n_heads, n_tok, _ = q.shape
    n_kv = k.shape[1]
    grp = n_heads // n_kv
    cap = np.zeros(len(WS) + 2)
    n_cap = 0
    rows = []
    for lay in range(n_layers):
        for h in range(n_kv):
            a = unit_attention(q[lay, h * grp:(h + 1) * grp], k[lay, h])
            ema = np.zeros(n_tok)
            for j in range(n_tok):
                if j >= START and j % EVERY == 0 and j + MIN_LEFT <= n_tok:
                    lo, hi = SINKS, j - RESIDUAL
                    fut = a[j:j + HOR, lo:hi].mean(0)
                    age = j - np.arange(lo, hi)
                    # as skv-eval: the EMA of attention that sums to 1 over
                    # the j tokens held, the prior W / (H_j age), H_j = 1 + ... + 1/j
                    rec = 1.0 / (age * np.sum(1.0 / np.arange(1, j + 1)))
                    e = ema[lo:hi]
                    m = max(1, (hi - lo) // 4)
                    tot = fut.sum()
                    for i, w in enumerate(WS):
                        cap[i] += fut[np.argsort(-(e + w * rec))[:m]].sum() / tot
                    cap[len(WS)] += fut[np.argsort(-rec)[:m]].sum() / tot
                    cap[len(WS) + 1] += fut[np.argsort(-fut)[:m]].sum() / tot
                    n_cap += 1
                    rows.append(np.stack([age, ema[lo:hi], fut], 1))
                ema *= DECAY
                ema[:j + 1] += (1 - DECAY) * a[j, :j + 1]
    return cap / n_cap, np.concatenate(rows)


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: forecast_importance.py PREFIX...")
    for prefix in sys.argv[1:]:
        cap, r = one_trace(prefix)
        name = prefix.rsplit("/", 1)[-1]
        print("%s: share of the next %d queries' attention drawn by each signal's top quarter"
              % (name, HOR))
        print("| signal | share |\n| --- | --- |")
        for i, w in enumerate(WS):
            print("| EMA%s | %.3f |" % (" + 1/age prior, W %g" % w if w else " alone", cap[i]))
        print("| 1/age alone (position) | %.3f |" % cap[len(WS)])
        print("| oracle | %.3f |" % cap[len(WS) + 1])
        age, ema, fut = r[:, 0], r[:, 1], r[:, 2]
        print("\n%s: by age, mean future attention per query, mean EMA, slope of the first on "
              "the second" % name)
        print("| age | tokens | future | EMA | future : EMA | slope |\n| --- | --- | --- | --- | --- | --- |")
        for a0, a1 in zip(AGE_BINS[:-1], AGE_BINS[1:]):
            m = (age >= a0) & (age < a1)
            if m.sum() < 10:
                continue
            slope = np.polyfit(ema[m], fut[m], 1)[0]
            print("| %d-%d | %d | %.2e | %.2e | %.2f | %.2f |"
                  % (a0, a1 - 1, m.sum(), fut[m].mean(), ema[m].mean(),
                     fut[m].mean() / ema[m].mean(), slope))
        print()


if __name__ == "__main__":
    main()
