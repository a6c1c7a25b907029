/* fuzz_options -- the CLI's numeric option parsers (bin/tool.c):
 * index sets (--layers 0-3,7), ranges (--tokens 0:4096), lists (--bits
 * 2,4,8), sizes with suffixes (--max-mem 1G, --tokens 8K), integers and
 * reals.  Input: byte 0 picks the parser, bytes 1-2 the limit, the rest is
 * the argument text (cut at the first NUL). */
#include "fuzz.h"
#include "tool.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    if (size < 3)
        return 0;
    unsigned which = data[0] % 6;
    uint64_t limit = (uint64_t)data[1] | (uint64_t)data[2] << 8;
    char *arg = strndup((const char *)data + 3, size - 3);
    FUZZ_ASSERT(arg);
    const char *err = NULL;
    switch (which) {
    case 0: {
        uint8_t *sel = calloc(limit ? limit : 1, 1); /* exact size: ASan sees overruns */
        FUZZ_ASSERT(sel);
        if (tool_parse_index_set(arg, limit, sel, &err) < 0)
            FUZZ_ASSERT(err && *err);
        free(sel);
        break;
    }
    case 1: {
        uint64_t a, b;
        if (tool_parse_range(arg, limit, &a, &b, &err) == 0)
            FUZZ_ASSERT(a < b && b <= limit);
        else
            FUZZ_ASSERT(err && *err);
        break;
    }
    case 2: {
        int max = (int)(limit % 64);
        uint32_t *out = malloc((size_t)(max ? max : 1) * sizeof *out);
        FUZZ_ASSERT(out);
        int n = tool_parse_u32_list(arg, out, max);
        FUZZ_ASSERT(n == -1 || (n >= 1 && n <= max));
        free(out);
        break;
    }
    case 3: {
        uint64_t v;
        if (tool_parse_size(arg, &v) == 0)
            FUZZ_ASSERT(arg[0] >= '0' && arg[0] <= '9');
        break;
    }
    case 4: {
        uint64_t v;
        if (tool_parse_u64(arg, &v) == 0) {
            char back[32];
            snprintf(back, sizeof back, "%llu", (unsigned long long)v);
            /* leading zeros aside, the text is the number */
            const char *p = arg;
            while (p[0] == '0' && p[1])
                p++;
            FUZZ_ASSERT(!strcmp(back, p));
        }
        break;
    }
    default: {
        double d;
        tool_parse_double(arg, &d);
        break;
    }
    }
    free(arg);
    return 0;
}
