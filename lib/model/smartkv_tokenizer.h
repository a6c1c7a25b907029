/* smartkv_tokenizer.h -- the byte-level BPE tokenizer stored in a GGUF file.
 *
 * Supports tokenizer.ggml.model "gpt2" (byte-level BPE with the GPT-2
 * byte-to-unicode mapping) with the pre-tokenizers "gpt2"/"default" (the
 * GPT-2 split regex) and "smollm" and its relatives ("starcoder", "refact",
 * "command-r", "codeshell", "exaone", "minerva": every digit split off first,
 * then the GPT-2 regex).  The split rules are implemented by hand in C over
 * Unicode letter/number tables generated from the Unicode database.
 *
 * Special tokens (control and user-defined entries of the vocabulary, e.g.
 * <|im_start|>) are recognised in the text only with SKV_TOK_SPECIAL.
 */
#ifndef SMARTKV_TOKENIZER_H
#define SMARTKV_TOKENIZER_H

#include "smartkv_gguf.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct skv_tokenizer skv_tokenizer;

/* Token types (tokenizer.ggml.token_type). */
enum skv_token_type {
    SKV_TOKEN_NORMAL = 1, SKV_TOKEN_UNKNOWN = 2, SKV_TOKEN_CONTROL = 3,
    SKV_TOKEN_USER_DEFINED = 4, SKV_TOKEN_UNUSED = 5, SKV_TOKEN_BYTE = 6,
};

#define SKV_TOK_SPECIAL 0x1u  /* encode: match special tokens in the text */
#define SKV_TOK_BOS 0x2u      /* encode: prepend the BOS token */
#define SKV_TOK_RENDER 0x4u   /* decode: render control tokens as their text */

/* Build from a GGUF's tokenizer.* metadata (the result copies what it
 * needs; g may be closed afterwards).  NULL on error, SKV_EUNSUP for
 * tokenizer models or pre-tokenizers not implemented. */
SKV_EXPORT skv_tokenizer *skv_tokenizer_load(const skv_gguf *g);
SKV_EXPORT void skv_tokenizer_free(skv_tokenizer *t);

SKV_EXPORT uint32_t skv_tokenizer_n_vocab(const skv_tokenizer *t);
SKV_EXPORT int32_t skv_tokenizer_bos(const skv_tokenizer *t);   /* -1 if none */
SKV_EXPORT int32_t skv_tokenizer_eos(const skv_tokenizer *t);   /* -1 if none */
/* "gpt2/smollm": tokenizer model and pre-tokenizer, for trace headers. */
SKV_EXPORT const char *skv_tokenizer_name(const skv_tokenizer *t);
/* Id of a token given its exact vocabulary text, or -1. */
SKV_EXPORT int32_t skv_tokenizer_find(const skv_tokenizer *t, const char *text);
/* 1 if id ends a turn or the text (eos, <|im_end|>, <|endoftext|>). */
SKV_EXPORT int skv_tokenizer_is_eog(const skv_tokenizer *t, int32_t id);

/* Encode len bytes of text.  *ids is allocated (free()), *n set.  0 or <0. */
SKV_EXPORT int skv_tokenize(const skv_tokenizer *t, const char *text, size_t len, unsigned flags,
                            int32_t **ids, size_t *n);
/* The bytes of one token (byte-level mapping undone).  Control tokens give
 * "" unless SKV_TOK_RENDER.  Returns the byte count (which may exceed cap;
 * then only cap bytes were written) or <0 for a bad id. */
SKV_EXPORT int skv_token_bytes(const skv_tokenizer *t, int32_t id, unsigned flags, char *buf,
                               size_t cap);
/* Decode ids to a NUL-terminated string (*out allocated, *len bytes). */
SKV_EXPORT int skv_detokenize(const skv_tokenizer *t, const int32_t *ids, size_t n, unsigned flags,
                              char **out, size_t *len);

/* Chat formatting for instruct models whose template is ChatML
 * (<|im_start|>role\ncontent<|im_end|>\n).  A default system message found
 * in the template is inserted when the first message is not "system".
 * *out is allocated (NUL-terminated).  SKV_EUNSUP for other templates. */
typedef struct skv_chat_msg {
    const char *role;
    const char *content;
} skv_chat_msg;
SKV_EXPORT int skv_chat_format(const skv_tokenizer *t, const skv_chat_msg *msgs, size_t n,
                               int add_generation_prompt, char **out);

#ifdef __cplusplus
}
#endif
#endif
