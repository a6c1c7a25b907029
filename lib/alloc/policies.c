/* policies.c -- the table of allocation policies (one per file in
 * lib/alloc/policy/, listed once by SKV_POLICY_LIST) and their names. */
#include "policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const skv_policy_def *const table[SKV_POLICY_END] = {
#define X(ID, sym) [SKV_POLICY_##ID] = &skv_policy_##sym,
    SKV_POLICY_LIST(X)
#undef X
};

const skv_policy_def *skv_policy_def_of(uint32_t id)
{
    return id > SKV_POLICY_NONE && id < SKV_POLICY_END ? table[id] : NULL;
}

const char *skv_policy_name(uint32_t p)
{
    const skv_policy_def *d = skv_policy_def_of(p);
    return d ? d->name : "unknown";
}

unsigned skv_policy_flags(uint32_t p)
{
    const skv_policy_def *d = skv_policy_def_of(p);
    return d ? d->flags : 0;
}

const char *skv_policy_summary(uint32_t p)
{
    const skv_policy_def *d = skv_policy_def_of(p);
    return d ? d->summary : NULL;
}

int skv_policy_parse(const char *str, uint32_t *policy, uint32_t *ubits)
{
    if (!strncmp(str, "uniform:", 8)) {
        char *end;
        const char *n = str + 8;
        unsigned long v = (*n >= '0' && *n <= '9') ? strtoul(n, &end, 10) : 99;
        if (v > 16 || *end || skv_width_index((uint32_t)v) < 0)
            return skv_error(SKV_EINVAL, "uniform:N needs N in 0, 2, 3, 4, 8, 16 (got '%s')",
                             str);
        *policy = SKV_POLICY_UNIFORM;
        *ubits = (uint32_t)v;
        return 0;
    }
    for (uint32_t p = SKV_POLICY_NONE + 1; p < SKV_POLICY_END; p++)
        if (!(table[p]->flags & SKV_PF_FIXED) && !strcmp(str, table[p]->name)) {
            *policy = p;
            *ubits = 0;
            return 0;
        }
    char names[512];
    size_t w = 0;
    for (uint32_t p = SKV_POLICY_NONE + 1; p < SKV_POLICY_END && w < sizeof names; p++)
        w += (size_t)snprintf(names + w, sizeof names - w, "%s%s%s", w ? ", " : "",
                              table[p]->name, table[p]->flags & SKV_PF_FIXED ? ":N" : "");
    return skv_error(SKV_EINVAL, "unknown policy '%s' (%s)", str, names);
}
