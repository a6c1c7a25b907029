/* fuzz_libopts -- option parsers in the library: skv_steps_parse ("LAST",
 * "all", "a:b", lists), skv_width_mask_parse ("2,4,8"), skv_policy_parse
 * ("smartkv", "uniform:4"), skv_dtype_parse.  Input: byte 0 picks the
 * parser, bytes 1-2 n_tokens, the rest is the text. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    if (size < 3)
        return 0;
    /* up to 4096 tokens: "all" and long ranges stay cheap per input */
    uint64_t n_tokens = ((uint64_t)data[1] | (uint64_t)data[2] << 8) % 4097;
    char *s = strndup((const char *)data + 3, size - 3);
    FUZZ_ASSERT(s);
    switch (data[0] % 4) {
    case 0: {
        uint64_t *steps = NULL, n = 0;
        if (skv_steps_parse(s, n_tokens, &steps, &n) == 0) {
            FUZZ_ASSERT(n >= 1 && n <= n_tokens);
            for (uint64_t i = 0; i < n; i++)
                FUZZ_ASSERT(steps[i] < n_tokens && (i == 0 || steps[i] > steps[i - 1]));
        }
        free(steps);
        break;
    }
    case 1: {
        uint32_t mask;
        if (skv_width_mask_parse(s, &mask) == 0) {
            FUZZ_ASSERT((mask & ~SKV_WIDTH_MASK_ALL) == 0);
            char buf[64], again_s[64];
            skv_width_mask_format(mask, buf, sizeof buf);
            uint32_t again;
            snprintf(again_s, sizeof again_s, "%s", buf);
            if (mask & ~1u) /* a list with a width other than 0 formats and parses back */
                FUZZ_ASSERT(skv_width_mask_parse(again_s, &again) < 0 || again == mask);
        }
        break;
    }
    case 2: {
        uint32_t policy, bits = 0;
        if (skv_policy_parse(s, &policy, &bits) == 0)
            FUZZ_ASSERT(skv_policy_name(policy) != NULL);
        break;
    }
    default:
        skv_dtype_parse(s);
        break;
    }
    free(s);
    return 0;
}
