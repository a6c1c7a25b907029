/* smartkv.h -- libsmartkv, the library under the skv-* tools.
 * Include this one header; each module has its own smartkv_<module>.h. */
#ifndef SMARTKV_H
#define SMARTKV_H

#define SKV_LIB_VERSION "0.1.0"

#include "smartkv_error.h"
#include "smartkv_format.h"
#include "smartkv_trace.h"
#include "smartkv_pack.h"
#include "smartkv_synth.h"
#include "smartkv_npy.h"
#include "smartkv_quant.h"
#include "smartkv_alhd.h"
#include "smartkv_cache.h"
#include "smartkv_gguf.h"
#include "smartkv_tokenizer.h"
#include "smartkv_model.h"
#include "smartkv_softmax.h"
#include "smartkv_attend.h"
#include "smartkv_stats.h"
#include "smartkv_importance.h"
#include "smartkv_alloc.h"
#include "smartkv_relevance.h"
#include "smartkv_cuda.h"
#include "smartkv_merge.h"
#include "smartkv_evalcache.h"
#include "smartkv_eval.h"
#include "smartkv_atskv.h"
#include "smartkv_check.h"

#endif
