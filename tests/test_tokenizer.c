/* test_tokenizer.c -- byte-level BPE on the real model's vocabulary.
 * Expected ids are looked up by their vocabulary text (the split rules and
 * merges are what is tested), never copied from a run. */
#include "smartkv.h"
#include "model_path.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static skv_gguf *g;
static skv_tokenizer *tk;

static void setup(void)
{
    g = skv_gguf_open(test_model_path());
    ck_assert_msg(g != NULL, "%s", skv_errmsg());
    tk = skv_tokenizer_load(g);
    ck_assert_msg(tk != NULL, "%s", skv_errmsg());
}

static void teardown(void)
{
    skv_tokenizer_free(tk);
    skv_gguf_close(g);
}

static int32_t id_of(const char *text)
{
    int32_t id = skv_tokenizer_find(tk, text);
    ck_assert_msg(id >= 0, "'%s' is not in the vocabulary", text);
    return id;
}

/* Encode and compare with the ids of the given vocabulary strings. */
static void expect(const char *text, unsigned flags, const char *const *pieces, size_t n)
{
    int32_t *ids;
    size_t k;
    ck_assert_int_eq(skv_tokenize(tk, text, strlen(text), flags, &ids, &k), 0);
    char got[512] = "";
    for (size_t i = 0; i < k; i++) {
        char one[64];
        int b = skv_token_bytes(tk, ids[i], SKV_TOK_RENDER, one, sizeof one - 1);
        one[b < 0 ? 0 : b > 62 ? 62 : b] = 0;
        snprintf(got + strlen(got), sizeof got - strlen(got), "[%s]", one);
    }
    ck_assert_msg(k == n, "'%s': %zu tokens %s, wanted %zu", text, k, got, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(ids[i] == id_of(pieces[i]), "'%s': token %zu is %s, wanted '%s'", text, i,
                      got, pieces[i]);
    free(ids);
}
#define EXPECT(text, flags, ...)                                               \
    do {                                                                       \
        const char *const p_[] = {__VA_ARGS__};                                \
        expect(text, flags, p_, sizeof p_ / sizeof p_[0]);                     \
    } while (0)

START_TEST(test_metadata)
{
    ck_assert_uint_eq(skv_tokenizer_n_vocab(tk), 49152);
    ck_assert_int_eq(skv_tokenizer_eos(tk), id_of("<|im_end|>"));
    ck_assert_int_eq(skv_tokenizer_bos(tk), id_of("<|im_start|>"));
    ck_assert_str_eq(skv_tokenizer_name(tk), "gpt2/smollm");
    ck_assert(skv_tokenizer_is_eog(tk, id_of("<|im_end|>")));
    ck_assert(!skv_tokenizer_is_eog(tk, id_of("Ġthe")));
}
END_TEST

START_TEST(test_known_splits)
{
    /* 'Ġ' is the byte-level form of a space, 'Ċ' of a newline */
    EXPECT("Hello world", 0, "Hello", "Ġworld");
    EXPECT("The capital of France is", 0, "The", "Ġcapital", "Ġof", "ĠFrance", "Ġis");
    /* digits are split one by one, a space before a number stands alone */
    EXPECT("12345", 0, "1", "2", "3", "4", "5");
    EXPECT("in 2024", 0, "in", "Ġ", "2", "0", "2", "4");
    /* contractions, runs of spaces, newlines */
    EXPECT("don't", 0, "don", "'t");
    EXPECT("a  b", 0, "a", "Ġ", "Ġb");
    /* \s+(?!\S) leaves the last newline of a run to stand alone */
    EXPECT("x\n\ny", 0, "x", "Ċ", "Ċ", "y");
    EXPECT("x\n\n", 0, "x", "ĊĊ");
    /* special tokens only when asked */
    EXPECT("<|im_start|>user\n", SKV_TOK_SPECIAL, "<|im_start|>", "user", "Ċ");
    int32_t *ids;
    size_t k;
    ck_assert_int_eq(skv_tokenize(tk, "<|im_start|>", 12, 0, &ids, &k), 0);
    ck_assert_uint_gt(k, 1);
    for (size_t i = 0; i < k; i++)
        ck_assert_int_ne(ids[i], id_of("<|im_start|>"));
    free(ids);
    ck_assert_int_eq(skv_tokenize(tk, "", 0, 0, &ids, &k), 0);
    ck_assert_uint_eq(k, 0);
    free(ids);
}
END_TEST

static void roundtrip(const char *text, size_t len, size_t max_tokens)
{
    int32_t *ids;
    size_t k, n;
    char *back;
    ck_assert_int_eq(skv_tokenize(tk, text, len, 0, &ids, &k), 0);
    ck_assert_uint_le(k, len);
    if (max_tokens)
        ck_assert_uint_le(k, max_tokens);
    ck_assert_int_eq(skv_detokenize(tk, ids, k, 0, &back, &n), 0);
    ck_assert_uint_eq(n, len);
    ck_assert_msg(!memcmp(back, text, len), "round trip changed the text");
    free(back);
    free(ids);
}

START_TEST(test_roundtrip)
{
    FILE *f = fopen("/usr/share/common-licenses/GPL-3", "rb");
    if (f) {
        static char buf[40000];
        size_t n = fread(buf, 1, sizeof buf, f);
        fclose(f);
        /* English prose: a BPE vocabulary of 49K compresses it well */
        roundtrip(buf, n, n / 3);
    } else {
        printf("SKIP: /usr/share/common-licenses/GPL-3 absent: GPL round trip not run\n");
    }
    const char *u = "Ünïcödé façade — “quotes” 日本語のテキスト 한국어 Ελληνικά ١٢٣ ½ 😀🎉!!\r\n\t end  ";
    roundtrip(u, strlen(u), 0);
    const char *code = "def f(x):\n    return x**2  # comment\n\n\n\tif a<=b: print(\"ok\")\n";
    roundtrip(code, strlen(code), 0);
    /* random text: code points from the first four planes, spaces, tabs, newlines */
    char text[2400];
    srand(3);
    for (int rep = 0; rep < 20; rep++) {
        size_t n = 0;
        while (n < sizeof text - 8) {
            uint32_t r = (uint32_t)rand(), cp;
            switch (r % 4) {
            case 0: cp = " \t\n\r"[r / 4 % 4]; break;
            case 1: cp = 0x21 + r / 4 % 94; break;
            default: cp = 0xA0 + r / 4 % 0x3FF60; break;
            }
            if (cp >= 0xD800 && cp < 0xE000)
                continue;
            if (cp < 0x80) {
                text[n++] = (char)cp;
            } else if (cp < 0x800) {
                text[n++] = (char)(0xC0 | cp >> 6);
                text[n++] = (char)(0x80 | (cp & 63));
            } else if (cp < 0x10000) {
                text[n++] = (char)(0xE0 | cp >> 12);
                text[n++] = (char)(0x80 | (cp >> 6 & 63));
                text[n++] = (char)(0x80 | (cp & 63));
            } else {
                text[n++] = (char)(0xF0 | cp >> 18);
                text[n++] = (char)(0x80 | (cp >> 12 & 63));
                text[n++] = (char)(0x80 | (cp >> 6 & 63));
                text[n++] = (char)(0x80 | (cp & 63));
            }
        }
        roundtrip(text, n, 0);
    }
    /* invalid UTF-8 whose bytes the vocabulary has: stray continuation bytes */
    roundtrip("\x80" "a\xbf" " b\xc3", 7, 0);
    /* a byte with no token (0xFF never occurs in UTF-8) becomes <|endoftext|> */
    int32_t *ids;
    size_t k;
    ck_assert_int_eq(skv_tokenize(tk, "a\xff", 2, 0, &ids, &k), 0);
    ck_assert_uint_eq(k, 2);
    ck_assert_int_eq(ids[1], id_of("<|endoftext|>"));
    free(ids);
}
END_TEST

START_TEST(test_chat_template)
{
    skv_chat_msg m[2] = {{"user", "Hi"}, {"assistant", "Hello!"}};
    char *s;
    ck_assert_int_eq(skv_chat_format(tk, m, 1, 1, &s), 0);
    ck_assert_str_eq(s, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained "
                        "by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                        "<|im_start|>assistant\n");
    free(s);
    skv_chat_msg sys[2] = {{"system", "Be brief."}, {"user", "Hi"}};
    ck_assert_int_eq(skv_chat_format(tk, sys, 2, 0, &s), 0);
    ck_assert_str_eq(s, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
    free(s);
    ck_assert_int_eq(skv_chat_format(tk, m, 2, 0, &s), 0);
    int32_t *ids;
    size_t k;
    ck_assert_int_eq(skv_tokenize(tk, s, strlen(s), SKV_TOK_SPECIAL, &ids, &k), 0);
    int starts = 0;
    for (size_t i = 0; i < k; i++)
        starts += ids[i] == id_of("<|im_start|>");
    ck_assert_int_eq(starts, 3);
    free(ids);
    free(s);
}
END_TEST

START_TEST(test_bad_ids)
{
    char b[8];
    ck_assert_int_lt(skv_token_bytes(tk, -1, 0, b, sizeof b), 0);
    ck_assert_int_lt(skv_token_bytes(tk, 49152, 0, b, sizeof b), 0);
    /* control tokens decode to nothing unless rendered */
    ck_assert_int_eq(skv_token_bytes(tk, id_of("<|im_end|>"), 0, b, sizeof b), 0);
    ck_assert_int_eq(skv_token_bytes(tk, id_of("<|im_end|>"), SKV_TOK_RENDER, b, sizeof b), 10);
}
END_TEST

int main(void)
{
    if (!test_model_path()) {
        report_skip("tokenizer", 5);
        return 0;
    }
    Suite *su = suite_create("tokenizer");
    TCase *tc = tcase_create("bpe");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_metadata);
    tcase_add_test(tc, test_known_splits);
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_chat_template);
    tcase_add_test(tc, test_bad_ids);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf != 0;
}
