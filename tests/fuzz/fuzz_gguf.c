/* fuzz_gguf -- the GGUF reader (skv_gguf_open_mem) and, on a file that
 * parses, the typed getters and the tokenizer built from its metadata. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    skv_gguf *g = skv_gguf_open_mem(data, size, "fuzz.gguf");
    if (!g)
        return 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const skv_gguf_tensor *t = &g->tensors[i];
        /* every tensor lies inside the buffer */
        FUZZ_ASSERT((const uint8_t *)t->data >= g->base &&
                    t->nbytes <= g->size - (size_t)((const uint8_t *)t->data - g->base));
    }
    uint32_t u32;
    char buf[64];
    skv_gguf_get_u32(g, "general.alignment", &u32);
    skv_gguf_get_strbuf(g, "general.architecture", buf, sizeof buf);
    skv_tokenizer *t = skv_tokenizer_load(g);
    if (t) {
        int32_t *ids = NULL;
        size_t n = 0;
        static const char text[] = "Hello, world! <|im_end|> 123 \xc3\xa9";
        if (skv_tokenize(t, text, sizeof text - 1, SKV_TOK_SPECIAL | SKV_TOK_BOS, &ids, &n) == 0) {
            char out[256];
            for (size_t i = 0; i < n; i++)
                FUZZ_ASSERT(skv_token_bytes(t, ids[i], SKV_TOK_RENDER, out, sizeof out) >= 0);
        }
        free(ids);
        skv_tokenizer_free(t);
    }
    skv_gguf_close(g);
    return 0;
}
