/* policies.c -- the table of allocation policies (one per file in
 * lib/alloc/policy/, listed once by SKV_POLICY_LIST) and their names. */
#include "policy.h"
#include "smartkv_error.h"

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

void skv_policy_format(uint32_t p, uint32_t ubits, char *buf, size_t n)
{
    const skv_policy_def *d = skv_policy_def_of(p);
    if (d && (d->flags & SKV_PF_FIXED) && !d->bits)
        snprintf(buf, n, "%s:%u", d->name, ubits);
    else
        snprintf(buf, n, "%s", d ? d->name : "?");
}

int skv_policy_parse(const char *str, uint32_t *policy, uint32_t *ubits)
{
    /* NAME:N for the policies whose width is in the name */
    for (uint32_t p = SKV_POLICY_NONE + 1; p < SKV_POLICY_END; p++) {
        size_t k = strlen(table[p]->name);
        if (!(table[p]->flags & SKV_PF_FIXED) || table[p]->bits ||
            strncmp(str, table[p]->name, k) != 0 || str[k] != ':')
            continue;
        char *end = NULL;
        const char *n = str + k + 1;
        unsigned long v = (*n >= '0' && *n <= '9') ? strtoul(n, &end, 10) : 99;
        if (v > 16 || (end && *end) || skv_width_index((uint32_t)v) < 0)
            return skv_error(SKV_EINVAL, "%s:N needs N in 0, 2, 3, 4, 8, 16 (got '%s')",
                             table[p]->name, str);
        *policy = p;
        *ubits = (uint32_t)v;
        return 0;
    }
    for (uint32_t p = SKV_POLICY_NONE + 1; p < SKV_POLICY_END; p++)
        if ((!(table[p]->flags & SKV_PF_FIXED) || table[p]->bits) &&
            !strcmp(str, table[p]->name)) {
            *policy = p;
            *ubits = table[p]->bits;
            return 0;
        }
    char names[512];
    size_t w = 0;
    for (uint32_t p = SKV_POLICY_NONE + 1; p < SKV_POLICY_END && w < sizeof names; p++)
        w += (size_t)snprintf(names + w, sizeof names - w, "%s%s%s", w ? ", " : "",
                              table[p]->name,
                              (table[p]->flags & SKV_PF_FIXED) && !table[p]->bits ? ":N" : "");
    return skv_error(SKV_EINVAL, "unknown policy '%s' (%s)", str, names);
}

uint32_t skv_policy_imp_mode(uint32_t policy, uint32_t mode)
{
    unsigned f = skv_policy_flags(policy);
    return f & SKV_PF_CUMULATIVE ? SKV_IMP_CUMULATIVE : f & SKV_PF_VOTES ? SKV_IMP_WINDOW : mode;
}

int skv_alloc_cfg_resolve(skv_alloc_cfg *c)
{
    const skv_policy_def *d = skv_policy_def_of(c->policy);
    if (!d)
        return skv_error(SKV_EINVAL, "unknown policy %u", c->policy);
    if ((d->flags & SKV_PF_FIXED) && d->bits) {
        c->uniform_bits = d->bits;
        c->width_mask = 1u << d->bits;
    }
    if ((d->flags & SKV_PF_LAYOUT) && d->qmode == SKV_QMODE_CHAN) {
        /* KIVI: keys per channel (k_group: the partial group's rows), values
         * per token in groups of d->group channels (the whole row when
         * head_dim is not a multiple) */
        uint32_t hd = c->qcfg.head_dim;
        c->qcfg.k_mode = SKV_QMODE_CHAN;
        c->qcfg.k_tokens = c->qcfg.k_tokens ? c->qcfg.k_tokens : 32;
        c->qcfg.v_mode = SKV_QMODE_ASYM;
        c->qcfg.v_group = hd && hd % d->group ? hd : d->group;
        if (c->uniform_bits < 2 || c->uniform_bits > 8)
            return skv_error(SKV_EINVAL, "%s:N needs N in 2, 3, 4, 8 (got %u)", d->name,
                             c->uniform_bits);
        if (c->recent % c->qcfg.k_tokens)
            return skv_error(SKV_EINVAL, "%s: the residual (--recent %u) must be a multiple of "
                             "the key group (%u tokens)", d->name, c->recent, c->qcfg.k_tokens);
        c->width_mask = 1u << c->uniform_bits | 1u << 16;
    } else if (d->flags & SKV_PF_LAYOUT) {
        c->qcfg.k_group = c->qcfg.v_group = d->group;
        c->qcfg.k_mode = c->qcfg.v_mode = d->qmode;
    }
    if (d->flags & (SKV_PF_EVICT | SKV_PF_LOWBIT)) {
        uint32_t m = c->width_mask & SKV_WIDTH_MASK_ALL, top = 0, low = 0;
        for (int i = SKV_NBITS - 1; i > 0; i--)
            if (m & (1u << skv_bit_widths[i])) {
                if (!top)
                    top = skv_bit_widths[i];
                low = skv_bit_widths[i];
            }
        if (!top || ((d->flags & SKV_PF_LOWBIT) && low == top))
            return skv_error(SKV_EINVAL, "policy %s needs %s in the allowed widths", d->name,
                             d->flags & SKV_PF_LOWBIT ? "two non-zero widths" : "a non-zero width");
        c->width_mask = (1u << top) | (d->flags & SKV_PF_LOWBIT ? 1u << low : 1u);
    }
    return 0;
}
