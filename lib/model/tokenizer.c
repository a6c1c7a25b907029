/* tokenizer.c -- byte-level BPE (GPT-2 style) from GGUF metadata.
 *
 * Encoding: split off special tokens (optional), pre-tokenize each piece of
 * ordinary text into words with the model's split rules, map each word's
 * bytes through the GPT-2 byte-to-unicode table, and apply the ranked merges
 * (lowest rank first, leftmost on ties) until none applies.
 */
#include "smartkv_tokenizer.h"
#include "unicode_tab.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------- hash tables ---------------- */

typedef struct strmap {     /* token text -> id, open addressing */
    int32_t *slot;          /* -1 empty */
    uint32_t mask;
} strmap;

typedef struct pairmap {    /* (left id, right id) -> merge rank and result */
    uint64_t *key;          /* UINT64_MAX empty */
    uint32_t *rank;
    int32_t *result;
    uint32_t mask;
} pairmap;

enum pre_kind { PRE_GPT2 = 1, PRE_DIGITS_GPT2 = 2 };

struct skv_tokenizer {
    uint32_t n_vocab;
    char *arena;            /* all token texts, NUL-separated */
    uint32_t *off, *len;    /* per token */
    uint8_t *type;          /* per token, enum skv_token_type */
    strmap map;
    pairmap merges;
    int32_t byte_tok[256];  /* id of the single mapped char of each byte */
    uint32_t byte_cp[256];  /* GPT-2 byte -> code point */
    int16_t cp_byte[512];   /* code point (< 512) -> byte, -1 if none */
    int32_t *special;       /* ids of control/user-defined tokens, longest first */
    uint32_t n_special;
    int32_t bos, eos, eot, eom, unk;
    int pre;
    char name[64];
    char *chat_system;      /* default system message, or NULL */
    int chatml;
};

static uint32_t hash_bytes(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 16777619u;
    }
    return h;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static uint32_t table_size(uint64_t n)
{
    uint32_t s = 16;
    while (s < 2 * n)
        s <<= 1;
    return s;
}

static int32_t map_get(const skv_tokenizer *t, const char *s, size_t n)
{
    uint32_t i = hash_bytes(s, n) & t->map.mask;
    for (;;) {
        int32_t id = t->map.slot[i];
        if (id < 0)
            return -1;
        if (t->len[id] == n && !memcmp(t->arena + t->off[id], s, n))
            return id;
        i = (i + 1) & t->map.mask;
    }
}

static const uint32_t *merge_find(const pairmap *m, int32_t a, int32_t b)
{
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint32_t i = (uint32_t)mix64(k) & m->mask;
    for (;;) {
        if (m->key[i] == UINT64_MAX)
            return NULL;
        if (m->key[i] == k)
            return &m->rank[i];
        i = (i + 1) & m->mask;
    }
}

/* ---------------- UTF-8 and character classes ---------------- */

/* Decode one code point at s[0..n); returns its length (1 for an invalid
 * byte, whose value is then reported as 0xFFFD|0x80000000 = "other"). */
static size_t utf8_next(const uint8_t *s, size_t n, uint32_t *cp)
{
    uint8_t c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t len = c >= 0xF0 && c < 0xF5 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 && c < 0xE0 ? 2 : 0;
    if (c >= 0xF5)
        len = 0;
    if (!len || len > n)
        goto bad;
    uint32_t v = c & (0x7F >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            goto bad;
        v = v << 6 | (s[i] & 0x3F);
    }
    if ((len == 3 && (v < 0x800 || (v >= 0xD800 && v <= 0xDFFF))) || (len == 4 && (v < 0x10000 || v > 0x10FFFF)))
        goto bad;
    *cp = v;
    return len;
bad:
    *cp = 0x8000FFFDu;
    return 1;
}

static size_t utf8_put(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static int in_ranges(uint32_t cp, const uint32_t (*r)[2], unsigned n)
{
    unsigned lo = 0, hi = n;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (cp < r[mid][0])
            hi = mid;
        else if (cp > r[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

enum { C_OTHER = 0, C_LETTER = 1, C_NUMBER = 2, C_SPACE = 3 };

static int is_white(uint32_t c)   /* Unicode White_Space */
{
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

static int char_class(uint32_t c)
{
    if (c & 0x80000000u)
        return C_OTHER;
    if (c < 128) {
        if ((c | 32) >= 'a' && (c | 32) <= 'z')
            return C_LETTER;
        if (c >= '0' && c <= '9')
            return C_NUMBER;
        return is_white(c) ? C_SPACE : C_OTHER;
    }
    if (is_white(c))
        return C_SPACE;
    if (in_ranges(c, skv_uc_letter_ranges, skv_uc_letter_count))
        return C_LETTER;
    if (in_ranges(c, skv_uc_number_ranges, skv_uc_number_count))
        return C_NUMBER;
    return C_OTHER;
}

/* ---------------- loading ---------------- */

static void bytes_to_unicode(skv_tokenizer *t)
{
    int n = 0;
    for (int i = 0; i < 512; i++)
        t->cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        t->byte_cp[b] = keep ? (uint32_t)b : (uint32_t)(256 + n++);
        t->cp_byte[t->byte_cp[b]] = (int16_t)b;
    }
}

/* Sort key for special tokens: longer first, then lower id. */
static int cmp_special(const void *a, const void *b)
{
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int32_t opt_id(const skv_gguf *g, const char *key, uint32_t n_vocab)
{
    uint32_t v;
    if (!skv_gguf_find(g, key) || skv_gguf_get_u32(g, key, &v) < 0 || v >= n_vocab)
        return -1;
    return (int32_t)v;
}

static int load_chat(skv_tokenizer *t, const skv_gguf *g)
{
    const char *tpl;
    uint64_t n;
    if (!skv_gguf_find(g, "tokenizer.chat_template") ||
        skv_gguf_get_str(g, "tokenizer.chat_template", &tpl, &n) < 0)
        return 0;
    char *s = skv_malloc((size_t)n + 1);
    if (!s)
        return SKV_ENOMEM;
    memcpy(s, tpl, (size_t)n);
    s[n] = 0;
    t->chatml = strstr(s, "<|im_start|>") && strstr(s, "<|im_end|>");
    /* A literal default system turn: '<|im_start|>system\n...<|im_end|> */
    const char *mark = "'<|im_start|>system\n";
    char *p = strstr(s, mark);
    if (t->chatml && p && strstr(s, "!= 'system'")) {
        p += strlen(mark);
        char *e = strstr(p, "<|im_end|>");
        if (e) {
            t->chat_system = skv_malloc((size_t)(e - p) + 1);
            if (!t->chat_system) {
                free(s);
                return SKV_ENOMEM;
            }
            memcpy(t->chat_system, p, (size_t)(e - p));
            t->chat_system[e - p] = 0;
        }
    }
    free(s);
    return 0;
}

skv_tokenizer *skv_tokenizer_load(const skv_gguf *g)
{
    char model[32] = "", pre[32] = "default";
    if (skv_gguf_get_strbuf(g, "tokenizer.ggml.model", model, sizeof model) < 0)
        return NULL;
    if (strcmp(model, "gpt2") != 0) {
        skv_error(SKV_EUNSUP, "%s: tokenizer model \"%s\" is not supported (only byte-level BPE, "
                  "\"gpt2\")", g->path, model);
        return NULL;
    }
    if (skv_gguf_find(g, "tokenizer.ggml.pre"))
        skv_gguf_get_strbuf(g, "tokenizer.ggml.pre", pre, sizeof pre);
    int pk;
    static const char *const digit_pres[] = {"smollm", "starcoder", "refact", "command-r",
                                             "codeshell", "exaone", "minerva"};
    if (!strcmp(pre, "gpt2") || !strcmp(pre, "default") || !strcmp(pre, "mpt") || !strcmp(pre, "olmo"))
        pk = PRE_GPT2;
    else {
        pk = 0;
        for (size_t i = 0; i < sizeof digit_pres / sizeof digit_pres[0]; i++)
            if (!strcmp(pre, digit_pres[i]))
                pk = PRE_DIGITS_GPT2;
    }
    if (!pk) {
        skv_error(SKV_EUNSUP, "%s: pre-tokenizer \"%s\" is not supported (gpt2, smollm and "
                  "relatives are)", g->path, pre);
        return NULL;
    }
    const skv_gguf_kv *tok = skv_gguf_find(g, "tokenizer.ggml.tokens");
    const skv_gguf_kv *mer = skv_gguf_find(g, "tokenizer.ggml.merges");
    const skv_gguf_kv *typ = skv_gguf_find(g, "tokenizer.ggml.token_type");
    if (!tok || tok->v.type != SKV_GGUF_ARRAY || tok->v.elem_type != SKV_GGUF_STRING) {
        skv_error(SKV_EFORMAT, "%s: tokenizer.ggml.tokens is missing or not a string array", g->path);
        return NULL;
    }
    if (!mer || mer->v.type != SKV_GGUF_ARRAY || mer->v.elem_type != SKV_GGUF_STRING) {
        skv_error(SKV_EFORMAT, "%s: tokenizer.ggml.merges is missing or not a string array", g->path);
        return NULL;
    }
    if (tok->v.len == 0 || tok->v.len > (1u << 24)) {
        skv_error(SKV_ELIMIT, "%s: vocabulary of %llu tokens (need 1..2^24)", g->path,
                  (unsigned long long)tok->v.len);
        return NULL;
    }
    if (typ && (typ->v.type != SKV_GGUF_ARRAY || typ->v.len != tok->v.len)) {
        skv_error(SKV_EFORMAT, "%s: tokenizer.ggml.token_type has %llu entries for %llu tokens",
                  g->path, (unsigned long long)typ->v.len, (unsigned long long)tok->v.len);
        return NULL;
    }
    skv_tokenizer *t = skv_calloc(1, sizeof *t);
    if (!t)
        return NULL;
    uint32_t nv = (uint32_t)tok->v.len;
    uint64_t nm = mer->v.len;
    const char **ptrs = NULL, **mptrs = NULL;
    uint32_t *mlens = NULL;
    t->n_vocab = nv;
    t->pre = pk;
    snprintf(t->name, sizeof t->name, "%s/%s", model, pre);
    bytes_to_unicode(t);
    ptrs = skv_malloc(nv * sizeof *ptrs);
    t->off = skv_malloc(nv * sizeof *t->off);
    t->len = skv_malloc(nv * sizeof *t->len);
    t->type = skv_malloc(nv);
    if (!ptrs || !t->off || !t->len || !t->type)
        goto fail;
    if (skv_gguf_array_strings(tok, ptrs, t->len) < 0)
        goto fail;
    size_t total = 0;
    for (uint32_t i = 0; i < nv; i++) {
        if (memchr(ptrs[i], 0, t->len[i]) || t->len[i] > 4096) {
            skv_error(SKV_EFORMAT, "%s: token %u is empty-invalid (NUL byte or longer than 4096)",
                      g->path, i);
            goto fail;
        }
        total += t->len[i] + 1;
    }
    if (!(t->arena = skv_malloc(total)))
        goto fail;
    total = 0;
    for (uint32_t i = 0; i < nv; i++) {
        t->off[i] = (uint32_t)total;
        memcpy(t->arena + total, ptrs[i], t->len[i]);
        t->arena[total + t->len[i]] = 0;
        total += t->len[i] + 1;
        int64_t ty = SKV_TOKEN_NORMAL;
        if (typ && skv_gguf_array_int(typ, i, &ty) < 0)
            goto fail;
        t->type[i] = (uint8_t)(ty >= 1 && ty <= 6 ? ty : SKV_TOKEN_NORMAL);
    }
    /* vocabulary map (first occurrence wins on duplicates) */
    t->map.mask = table_size(nv) - 1;
    if (!(t->map.slot = skv_malloc(((size_t)t->map.mask + 1) * sizeof(int32_t))))
        goto fail;
    memset(t->map.slot, 0xff, ((size_t)t->map.mask + 1) * sizeof(int32_t));
    for (uint32_t i = 0; i < nv; i++) {
        if (map_get(t, t->arena + t->off[i], t->len[i]) >= 0)
            continue;
        uint32_t h = hash_bytes(t->arena + t->off[i], t->len[i]) & t->map.mask;
        while (t->map.slot[h] >= 0)
            h = (h + 1) & t->map.mask;
        t->map.slot[h] = (int32_t)i;
    }
    for (int b = 0; b < 256; b++) {
        char buf[4];
        size_t n = utf8_put(t->byte_cp[b], buf);
        t->byte_tok[b] = map_get(t, buf, n);
    }
    /* merges */
    if (nm > (1u << 24)) {
        skv_error(SKV_ELIMIT, "%s: %llu merges (limit 2^24)", g->path, (unsigned long long)nm);
        goto fail;
    }
    mptrs = skv_malloc((nm ? nm : 1) * sizeof *mptrs);
    mlens = skv_malloc((nm ? nm : 1) * sizeof *mlens);
    if (!mptrs || !mlens)
        goto fail;
    if (skv_gguf_array_strings(mer, mptrs, mlens) < 0)
        goto fail;
    t->merges.mask = table_size(nm) - 1;
    size_t ms = (size_t)t->merges.mask + 1;
    t->merges.key = skv_malloc(ms * sizeof(uint64_t));
    t->merges.rank = skv_malloc(ms * sizeof(uint32_t));
    t->merges.result = skv_malloc(ms * sizeof(int32_t));
    if (!t->merges.key || !t->merges.rank || !t->merges.result)
        goto fail;
    memset(t->merges.key, 0xff, ms * sizeof(uint64_t));
    {
        char buf[8200];
        for (uint64_t r = 0; r < nm; r++) {
            const char *s = mptrs[r];
            uint32_t n = mlens[r];
            const char *sp = memchr(s, ' ', n);
            if (!sp || n > sizeof buf)
                continue;   /* malformed merge: ignored */
            size_t la = (size_t)(sp - s), lb = n - la - 1;
            int32_t a = map_get(t, s, la), b = map_get(t, sp + 1, lb);
            memcpy(buf, s, la);
            memcpy(buf + la, sp + 1, lb);
            int32_t c = map_get(t, buf, la + lb);
            if (a < 0 || b < 0 || c < 0 || merge_find(&t->merges, a, b))
                continue;
            uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
            uint32_t i = (uint32_t)mix64(k) & t->merges.mask;
            while (t->merges.key[i] != UINT64_MAX)
                i = (i + 1) & t->merges.mask;
            t->merges.key[i] = k;
            t->merges.rank[i] = (uint32_t)r;
            t->merges.result[i] = c;
        }
    }
    /* special tokens, longest first */
    for (uint32_t i = 0; i < nv; i++)
        if ((t->type[i] == SKV_TOKEN_CONTROL || t->type[i] == SKV_TOKEN_USER_DEFINED) && t->len[i])
            t->n_special++;
    if (!(t->special = skv_malloc((t->n_special ? t->n_special : 1) * sizeof(int32_t))))
        goto fail;
    t->n_special = 0;
    for (uint32_t i = 0; i < nv; i++)
        if ((t->type[i] == SKV_TOKEN_CONTROL || t->type[i] == SKV_TOKEN_USER_DEFINED) && t->len[i])
            t->special[t->n_special++] = (int32_t)i;
    {
        uint64_t *keys = skv_malloc((t->n_special ? t->n_special : 1) * sizeof *keys);
        if (!keys)
            goto fail;
        for (uint32_t i = 0; i < t->n_special; i++)
            keys[i] = (uint64_t)(UINT32_MAX - t->len[t->special[i]]) << 32 | (uint32_t)t->special[i];
        qsort(keys, t->n_special, sizeof *keys, cmp_special);
        for (uint32_t i = 0; i < t->n_special; i++)
            t->special[i] = (int32_t)(keys[i] & 0xffffffffu);
        free(keys);
    }
    t->bos = opt_id(g, "tokenizer.ggml.bos_token_id", nv);
    t->eos = opt_id(g, "tokenizer.ggml.eos_token_id", nv);
    t->unk = opt_id(g, "tokenizer.ggml.unknown_token_id", nv);
    t->eot = skv_tokenizer_find(t, "<|im_end|>");
    if (t->eot < 0)
        t->eot = skv_tokenizer_find(t, "<|eot_id|>");
    t->eom = skv_tokenizer_find(t, "<|endoftext|>");
    if (load_chat(t, g) < 0)
        goto fail;
    free(ptrs);
    free(mptrs);
    free(mlens);
    return t;
fail:
    free(ptrs);
    free(mptrs);
    free(mlens);
    skv_tokenizer_free(t);
    return NULL;
}

void skv_tokenizer_free(skv_tokenizer *t)
{
    if (!t)
        return;
    free(t->arena);
    free(t->off);
    free(t->len);
    free(t->type);
    free(t->map.slot);
    free(t->merges.key);
    free(t->merges.rank);
    free(t->merges.result);
    free(t->special);
    free(t->chat_system);
    free(t);
}

uint32_t skv_tokenizer_n_vocab(const skv_tokenizer *t) { return t->n_vocab; }
int32_t skv_tokenizer_bos(const skv_tokenizer *t) { return t->bos; }
int32_t skv_tokenizer_eos(const skv_tokenizer *t) { return t->eos; }
const char *skv_tokenizer_name(const skv_tokenizer *t) { return t->name; }

int32_t skv_tokenizer_find(const skv_tokenizer *t, const char *text)
{
    return map_get(t, text, strlen(text));
}

int skv_tokenizer_is_eog(const skv_tokenizer *t, int32_t id)
{
    return id >= 0 && (id == t->eos || id == t->eot || id == t->eom);
}

/* ---------------- encoding ---------------- */

typedef struct ids_buf {
    int32_t *v;
    size_t n, cap;
} ids_buf;

static int push(ids_buf *b, int32_t id)
{
    if (b->n == b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 256;
        int32_t *p = skv_realloc(b->v, nc * sizeof *p);
        if (!p)
            return SKV_ENOMEM;
        b->v = p;
        b->cap = nc;
    }
    b->v[b->n++] = id;
    return 0;
}

/* BPE over one pre-tokenized word. */
static int bpe_word(const skv_tokenizer *t, const uint8_t *w, size_t n, ids_buf *out,
                    int32_t **scratch, size_t *scap)
{
    if (n > *scap) {
        int32_t *p = skv_realloc(*scratch, n * sizeof *p);
        if (!p)
            return SKV_ENOMEM;
        *scratch = p;
        *scap = n;
    }
    int32_t *sym = *scratch;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        /* A byte the vocabulary lacks (never seen in training, e.g. 0xFF)
         * becomes the unknown token, or is dropped when there is none. */
        int32_t id = t->byte_tok[w[i]] >= 0 ? t->byte_tok[w[i]] : t->unk;
        if (id >= 0)
            sym[m++] = id;
    }
    for (;;) {
        uint32_t best = UINT32_MAX;
        size_t at = 0;
        int32_t res = -1;
        for (size_t i = 0; i + 1 < m; i++) {
            const uint32_t *r = merge_find(&t->merges, sym[i], sym[i + 1]);
            if (r && *r < best) {
                best = *r;
                at = i;
                res = t->merges.result[r - t->merges.rank];
            }
        }
        if (best == UINT32_MAX)
            break;
        sym[at] = res;
        memmove(sym + at + 1, sym + at + 2, (m - at - 2) * sizeof *sym);
        m--;
    }
    for (size_t i = 0; i < m; i++)
        if (push(out, sym[i]) < 0)
            return SKV_ENOMEM;
    return 0;
}

/* Split [s, e) of the code point array with the GPT-2 regex
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * and BPE each match. */
typedef struct cpseq {
    uint32_t *cp;
    uint8_t *cls;
    size_t *off;   /* byte offset of each code point; off[n] = end */
} cpseq;

static int gpt2_split(const skv_tokenizer *t, const uint8_t *text, const cpseq *q, size_t s,
                      size_t e, ids_buf *out, int32_t **scratch, size_t *scap)
{
    size_t i = s;
    while (i < e) {
        uint32_t c = q->cp[i];
        int k = q->cls[i];
        size_t j = i + 1;
        int next = i + 1 < e ? q->cls[i + 1] : -1;
        if (c == '\'' && i + 1 < e) {
            uint32_t c1 = q->cp[i + 1], c2 = i + 2 < e ? q->cp[i + 2] : 0;
            if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd')
                j = i + 2;
            else if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
                j = i + 3;
            if (j > i + 1)
                goto emit;
        }
        if (k == C_LETTER || k == C_NUMBER || k == C_OTHER ||
            (c == ' ' && (next == C_LETTER || next == C_NUMBER || next == C_OTHER))) {
            int want = k == C_SPACE ? next : k;
            j = k == C_SPACE ? i + 2 : i + 1;
            while (j < e && q->cls[j] == want)
                j++;
            goto emit;
        }
        /* whitespace run */
        j = i;
        while (j < e && q->cls[j] == C_SPACE)
            j++;
        if (j < e && j - i > 1)
            j--;   /* \s+(?!\S): leave the last one to prefix the next word */
    emit:;
        int rc = bpe_word(t, text + q->off[i], q->off[j] - q->off[i], out, scratch, scap);
        if (rc < 0)
            return rc;
        i = j;
    }
    return 0;
}

static int encode_plain(const skv_tokenizer *t, const uint8_t *text, size_t len, ids_buf *out,
                        cpseq *q, int32_t **scratch, size_t *scap)
{
    size_t n = 0;
    for (size_t p = 0; p < len;) {
        uint32_t cp;
        size_t l = utf8_next(text + p, len - p, &cp);
        q->cp[n] = cp;
        q->cls[n] = (uint8_t)char_class(cp);
        q->off[n] = p;
        n++;
        p += l;
    }
    q->off[n] = len;
    if (t->pre == PRE_GPT2)
        return gpt2_split(t, text, q, 0, n, out, scratch, scap);
    /* \p{N} first: every number character is a piece of its own. */
    size_t s = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || q->cls[i] == C_NUMBER) {
            int rc = gpt2_split(t, text, q, s, i, out, scratch, scap);
            if (rc < 0)
                return rc;
            if (i < n && (rc = gpt2_split(t, text, q, i, i + 1, out, scratch, scap)) < 0)
                return rc;
            s = i + 1;
        }
    }
    return 0;
}

int skv_tokenize(const skv_tokenizer *t, const char *text, size_t len, unsigned flags,
                 int32_t **ids, size_t *n)
{
    ids_buf out = {0};
    cpseq q = {0};
    int32_t *scratch = NULL;
    size_t scap = 0;
    int rc = 0;
    *ids = NULL;
    *n = 0;
    if (flags & SKV_TOK_BOS) {
        if (t->bos < 0) {
            rc = skv_error(SKV_EINVAL, "tokenizer: the model has no BOS token");
            goto done;
        }
        if ((rc = push(&out, t->bos)) < 0)
            goto done;
    }
    q.cp = skv_malloc((len + 1) * sizeof *q.cp);
    q.cls = skv_malloc(len + 1);
    q.off = skv_malloc((len + 1) * sizeof *q.off);
    if (!q.cp || !q.cls || !q.off) {
        rc = SKV_ENOMEM;
        goto done;
    }
    const uint8_t *u = (const uint8_t *)text;
    size_t start = 0;
    for (size_t p = 0; p <= len;) {
        int32_t hit = -1;
        if (p < len && (flags & SKV_TOK_SPECIAL)) {
            for (uint32_t k = 0; k < t->n_special; k++) {
                int32_t id = t->special[k];
                const char *s = t->arena + t->off[id];
                if ((uint8_t)s[0] == u[p] && t->len[id] <= len - p && !memcmp(s, u + p, t->len[id])) {
                    hit = id;
                    break;
                }
            }
        }
        if (hit < 0 && p < len) {
            p++;
            continue;
        }
        if (p > start && (rc = encode_plain(t, u + start, p - start, &out, &q, &scratch, &scap)) < 0)
            goto done;
        if (hit < 0)
            break;
        if ((rc = push(&out, hit)) < 0)
            goto done;
        p += t->len[hit];
        start = p;
    }
    *ids = out.v;
    *n = out.n;
    out.v = NULL;
done:
    free(out.v);
    free(q.cp);
    free(q.cls);
    free(q.off);
    free(scratch);
    return rc;
}

/* ---------------- decoding ---------------- */

int skv_token_bytes(const skv_tokenizer *t, int32_t id, unsigned flags, char *buf, size_t cap)
{
    if (id < 0 || (uint32_t)id >= t->n_vocab)
        return skv_error(SKV_EINVAL, "tokenizer: token id %d out of range (vocabulary %u)", id,
                         t->n_vocab);
    const uint8_t *s = (const uint8_t *)t->arena + t->off[id];
    size_t n = t->len[id], w = 0;
    if (t->type[id] == SKV_TOKEN_CONTROL && !(flags & SKV_TOK_RENDER))
        return 0;
    if (t->type[id] == SKV_TOKEN_CONTROL || t->type[id] == SKV_TOKEN_USER_DEFINED) {
        for (size_t i = 0; i < n; i++, w++)
            if (w < cap)
                buf[w] = (char)s[i];
        return (int)w;
    }
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t l = utf8_next(s + i, n - i, &cp);
        if (cp < 512 && t->cp_byte[cp] >= 0) {
            if (w < cap)
                buf[w] = (char)t->cp_byte[cp];
            w++;
        } else {
            for (size_t k = 0; k < l; k++, w++)
                if (w < cap)
                    buf[w] = (char)s[i + k];
        }
        i += l;
    }
    return (int)w;
}

int skv_detokenize(const skv_tokenizer *t, const int32_t *ids, size_t n, unsigned flags,
                   char **out, size_t *len)
{
    size_t cap = 64, w = 0;
    char *s = skv_malloc(cap);
    if (!s)
        return SKV_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        int k = skv_token_bytes(t, ids[i], flags, s + w, cap - w - 1);
        if (k < 0) {
            free(s);
            return k;
        }
        if ((size_t)k > cap - w - 1) {
            size_t nc = (w + (size_t)k + 1) * 2;
            char *p = skv_realloc(s, nc);
            if (!p) {
                free(s);
                return SKV_ENOMEM;
            }
            s = p;
            cap = nc;
            k = skv_token_bytes(t, ids[i], flags, s + w, cap - w - 1);
        }
        w += (size_t)k;
    }
    s[w] = 0;
    *out = s;
    if (len)
        *len = w;
    return 0;
}

/* ---------------- chat ---------------- */

int skv_chat_format(const skv_tokenizer *t, const skv_chat_msg *msgs, size_t n,
                    int add_generation_prompt, char **out)
{
    if (!t->chatml)
        return skv_error(SKV_EUNSUP, "tokenizer: the model's chat template is not ChatML");
    size_t need = 64 + (t->chat_system ? strlen(t->chat_system) : 0);
    for (size_t i = 0; i < n; i++)
        need += strlen(msgs[i].role) + strlen(msgs[i].content) + 32;
    char *s = skv_malloc(need);
    if (!s)
        return SKV_ENOMEM;
    size_t w = 0;
    if (t->chat_system && (n == 0 || strcmp(msgs[0].role, "system") != 0))
        w += (size_t)sprintf(s + w, "<|im_start|>system\n%s<|im_end|>\n", t->chat_system);
    for (size_t i = 0; i < n; i++)
        w += (size_t)sprintf(s + w, "<|im_start|>%s\n%s<|im_end|>\n", msgs[i].role, msgs[i].content);
    if (add_generation_prompt)
        sprintf(s + w, "<|im_start|>assistant\n");
    *out = s;
    return 0;
}
