#!/usr/bin/python3
"""model-ref.py -- an independent float64 NumPy forward pass of a Llama GGUF
model (F32, Q8_0 and Q4_1 tensors), to cross-check lib/model/model.c by hand:

    /usr/bin/python3 scripts/model-ref.py MODEL.gguf 504,3575,282,4649,314

prints the argmax and top-5 token ids of the last position's logits and
saves them to ref_logits.npy.  Slow (about a minute); not part of make check.
"""
import struct, sys, numpy as np
f = open(sys.argv[1], 'rb').read()
p = 0
def rd(fmt):
    global p
    v = struct.unpack_from('<' + fmt, f, p); p += struct.calcsize('<' + fmt); return v[0]
def rs():
    global p
    n = rd('Q'); s = f[p:p + n]; p += n; return s.decode('utf-8', 'replace')
TY = {0:'B',1:'b',2:'H',3:'h',4:'I',5:'i',6:'f',7:'?',10:'Q',11:'q',12:'d'}
def rv(t):
    if t == 8: return rs()
    if t == 9:
        at = rd('I'); n = rd('Q'); return [rv(at) for _ in range(n)]
    return rd(TY[t])
p = 4; ver = rd('I'); nt = rd('Q'); nkv = rd('Q'); kv = {}
for i in range(nkv):
    k = rs(); t = rd('I'); kv[k] = rv(t)
infos = []
for i in range(nt):
    name = rs(); nd = rd('I'); dims = [rd('Q') for _ in range(nd)]; ty = rd('I'); off = rd('Q')
    infos.append((name, dims, ty, off))
data0 = (p + 31) // 32 * 32
def tensor(name):
    for n, dims, ty, off in infos:
        if n == name: break
    ne = int(np.prod(dims)); base = data0 + off
    if ty == 0:
        a = np.frombuffer(f, np.float32, ne, base)
    elif ty == 8:  # q8_0
        nb = ne // 32
        raw = np.frombuffer(f, np.uint8, nb * 34, base).reshape(nb, 34)
        d = raw[:, :2].copy().view(np.float16).astype(np.float32)
        q = raw[:, 2:].view(np.int8).astype(np.float32)
        a = (q * d).reshape(-1)
    elif ty == 3:  # q4_1
        nb = ne // 32
        raw = np.frombuffer(f, np.uint8, nb * 20, base).reshape(nb, 20)
        d = raw[:, 0:2].copy().view(np.float16).astype(np.float32)
        m = raw[:, 2:4].copy().view(np.float16).astype(np.float32)
        qs = raw[:, 4:]
        q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.float32)
        a = (q * d + m).reshape(-1)
    else:
        raise Exception(ty)
    return a.reshape(list(reversed(dims))).astype(np.float64)
L = kv['llama.block_count']; E = kv['llama.embedding_length']; H = kv['llama.attention.head_count']
KVH = kv['llama.attention.head_count_kv']; hd = E // H; theta = kv['llama.rope.freq_base']
eps = kv['llama.attention.layer_norm_rms_epsilon']
ids = [int(x) for x in sys.argv[2].split(',')]
T = len(ids)
emb = tensor('token_embd.weight')
x = emb[ids]
def rms(x, w): return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w
pos = np.arange(T)[:, None]
inv = theta ** (-np.arange(0, hd, 2) / hd)
ang = pos * inv[None, :]
cos, sin = np.cos(ang), np.sin(ang)
def rope(v):  # v [T, heads, hd], adjacent pairs
    a, b = v[..., 0::2], v[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    out = np.empty_like(v)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out
for l in range(L):
    g = lambda n: tensor('blk.%d.%s' % (l, n))
    h = rms(x, g('attn_norm.weight'))
    q = rope((h @ g('attn_q.weight').T).reshape(T, H, hd))
    k = rope((h @ g('attn_k.weight').T).reshape(T, KVH, hd))
    v = (h @ g('attn_v.weight').T).reshape(T, KVH, hd)
    att = np.zeros((T, H, hd))
    for hh in range(H):
        kk = k[:, hh // (H // KVH)]; vv = v[:, hh // (H // KVH)]
        s = q[:, hh] @ kk.T / np.sqrt(hd)
        s = s + np.triu(np.full((T, T), -np.inf), 1)
        pr = np.exp(s - s.max(-1, keepdims=True)); pr /= pr.sum(-1, keepdims=True)
        att[:, hh] = pr @ vv
    x = x + att.reshape(T, E) @ g('attn_output.weight').T
    h = rms(x, g('ffn_norm.weight'))
    gt = h @ g('ffn_gate.weight').T; up = h @ g('ffn_up.weight').T
    x = x + (gt / (1 + np.exp(-gt)) * up) @ g('ffn_down.weight').T
x = rms(x, tensor('output_norm.weight'))
logits = x[-1] @ emb.T
np.save('ref_logits.npy', logits)
print('argmax', logits.argmax(), 'top5', np.argsort(-logits)[:5])
