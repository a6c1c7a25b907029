/* unicode_tab.h -- internal: sorted code point ranges for \p{L} and \p{N}. */
#ifndef SKV_UNICODE_TAB_H
#define SKV_UNICODE_TAB_H
#include <stdint.h>
extern const uint32_t skv_uc_letter_ranges[][2];
extern const unsigned skv_uc_letter_count;
extern const uint32_t skv_uc_number_ranges[][2];
extern const unsigned skv_uc_number_count;
#endif
