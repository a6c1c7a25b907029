/* cuda_loader.c -- the smartkv_cuda.h API in the core library: each call
 * forwards to the CUDA backend libsmartkv-cuda.so, loaded with dlopen on
 * first use (cuda_backend.h).  Without a loadable backend every function
 * fails with SKV_ENODEV and a message that says why (not built, not found,
 * or its CUDA libraries missing on this machine).
 *
 * Where the backend is looked for, in order: $SKV_CUDA_BACKEND (a path);
 * beside the object that holds this code (libsmartkv.so, or the executable
 * for the static tools) and in ../lib from it (bin/ -> lib/ in the build
 * tree and in PREFIX); the install LIBDIR; then the dynamic loader's own
 * search (LD_LIBRARY_PATH, ld.so.cache). */
#define _GNU_SOURCE /* dladdr */
#include <limits.h>
#include "cuda_backend.h"
#include "smartkv_error.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef SKV_CUDA_LIBDIR
#define SKV_CUDA_LIBDIR ""
#endif

static pthread_once_t once = PTHREAD_ONCE_INIT;
static skv_cuda_ops ops;
static int loaded;
static char why[1536]; /* why there is no backend, repeated on every call */

static int host_error(int code, const char *msg)
{
    return skv_error(code, "%s", msg);
}

static const skv_cuda_host host = {SKV_CUDA_BACKEND_ABI, host_error, skv_malloc, skv_calloc,
                                   skv_realloc, skv_pbkt_max_tokens};

/* Try one path: 1 loaded, 0 not there, -1 there but unusable (why says). */
static int try_open(const char *path)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        /* "cannot open shared object file" about the file itself: keep looking */
        if (e && strstr(e, path) && strstr(e, "No such file"))
            return 0;
        snprintf(why, sizeof why, "no CUDA backend: cannot load %.600s: %.800s", path,
                 e ? e : "unknown error");
        return -1;
    }
    skv_cuda_backend_open_fn open_fn;
    *(void **)&open_fn = dlsym(h, SKV_CUDA_BACKEND_ENTRY);
    if (!open_fn || open_fn(&host, &ops) < 0 || ops.abi != SKV_CUDA_BACKEND_ABI) {
        snprintf(why, sizeof why, "no CUDA backend: %.1000s is not a smartkv CUDA backend "
                 "of this version (ABI %u)", path, SKV_CUDA_BACKEND_ABI);
        dlclose(h);
        return -1;
    }
    loaded = 1; /* never closed: its code may be running in other threads */
    return 1;
}

static void load(void)
{
    const char *env = getenv("SKV_CUDA_BACKEND");
    if (env && *env) {
        if (try_open(env) == 0)
            snprintf(why, sizeof why, "no CUDA backend: SKV_CUDA_BACKEND=%.1000s does not "
                     "exist", env);
        return;
    }
    /* the object holding this code (libsmartkv.so, or a static tool), and the
     * running program: the backend beside them or in ../lib */
    char dirs[4][1024] = {"", "", "", ""}, path[1100], buf[1024];
    Dl_info di;
    if (dladdr((void *)load, &di) && di.dli_fname && strchr(di.dli_fname, '/') &&
        realpath(di.dli_fname, buf)) {
        *strrchr(buf, '/') = '\0';
        snprintf(dirs[0], sizeof dirs[0], "%.1000s", buf);
        snprintf(dirs[1], sizeof dirs[1], "%.1000s/../lib", buf);
    }
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n > 0) {
        buf[n] = '\0';
        *strrchr(buf, '/') = '\0';
        snprintf(dirs[2], sizeof dirs[2], "%.1000s/../lib", buf);
    }
    snprintf(dirs[3], sizeof dirs[3], "%s", SKV_CUDA_LIBDIR);
    char tried[1024] = "";
    for (int i = 0; i < 4; i++) {
        int dup = !dirs[i][0];
        for (int j = 0; j < i && !dup; j++)
            dup = !strcmp(dirs[i], dirs[j]);
        if (dup)
            continue;
        snprintf(path, sizeof path, "%.1000s/%s", dirs[i], SKV_CUDA_BACKEND_FILE);
        if (try_open(path) != 0)
            return;
        size_t k = strlen(tried);
        snprintf(tried + k, sizeof tried - k, "%s%.300s", k ? ", " : "", dirs[i]);
    }
    if (try_open(SKV_CUDA_BACKEND_FILE) == 0)
        snprintf(why, sizeof why, "no CUDA backend: %s is not in %s or on the library path "
                 "(build it with nvcc: make CUDA=1; or set SKV_CUDA_BACKEND)",
                 SKV_CUDA_BACKEND_FILE, tried[0] ? tried : "(no directory)");
}

/* The backend's table, or NULL with the reason set as the error. */
static const skv_cuda_ops *backend(void)
{
    pthread_once(&once, load);
    if (loaded)
        return &ops;
    skv_error(SKV_ENODEV, "%s", why);
    return NULL;
}

int skv_cuda_available(void)
{
    const skv_cuda_ops *o = backend();
    return o ? o->available() : SKV_ENODEV;
}

int skv_cuda_device_info(char *name, size_t name_len, int *n_sm, double *peak_gbs)
{
    const skv_cuda_ops *o = backend();
    if (o)
        return o->device_info(name, name_len, n_sm, peak_gbs);
    if (name && name_len)
        name[0] = 0;
    if (n_sm)
        *n_sm = 0;
    if (peak_gbs)
        *peak_gbs = 0;
    return SKV_ENODEV;
}

skv_cuda_cache *skv_cuda_cache_upload(const skv_cuda_shape *shape, const uint8_t *const *payloads,
                                      const uint64_t *sizes, size_t n_payloads)
{
    const skv_cuda_ops *o = backend();
    return o ? o->cache_upload(shape, payloads, sizes, n_payloads) : NULL;
}

uint64_t skv_cuda_cache_bytes(const skv_cuda_cache *c)
{
    return c && loaded ? ops.cache_bytes(c) : 0;
}

void skv_cuda_cache_free(skv_cuda_cache *c)
{
    if (c && loaded)
        ops.cache_free(c);
}

int skv_cuda_attend(skv_cuda_cache *c, uint32_t layer0, uint32_t n_layers, uint32_t n_steps,
                    const uint64_t *pos, const float *q, float *out, float *mass, float *gpu_ms)
{
    const skv_cuda_ops *o = backend();
    return o ? o->attend(c, layer0, n_layers, n_steps, pos, q, out, mass, gpu_ms) : SKV_ENODEV;
}

int skv_cuda_attend_repeat(skv_cuda_cache *c, int reps, float *gpu_ms)
{
    const skv_cuda_ops *o = backend();
    return o ? o->attend_repeat(c, reps, gpu_ms) : SKV_ENODEV;
}

int skv_cuda_pack(const skv_qcfg *cfg, uint32_t layer, uint32_t kv_head, uint32_t bits,
                  uint32_t part, const uint32_t *idx, uint32_t n, const float *k, const float *v,
                  uint8_t *out, uint64_t size)
{
    const skv_cuda_ops *o = backend();
    return o ? o->pack(cfg, layer, kv_head, bits, part, idx, n, k, v, out, size) : SKV_ENODEV;
}

skv_cuda_dense *skv_cuda_dense_upload(const skv_cuda_shape *shape, const float *k, const float *v)
{
    const skv_cuda_ops *o = backend();
    return o ? o->dense_upload(shape, k, v) : NULL;
}

uint64_t skv_cuda_dense_bytes(const skv_cuda_dense *d)
{
    return d && loaded ? ops.dense_bytes(d) : 0;
}

void skv_cuda_dense_free(skv_cuda_dense *d)
{
    if (d && loaded)
        ops.dense_free(d);
}

int skv_cuda_dense_attend(skv_cuda_dense *d, int method, uint32_t n_steps, const uint64_t *pos,
                          const float *q, float *out, float *gpu_ms)
{
    const skv_cuda_ops *o = backend();
    return o ? o->dense_attend(d, method, n_steps, pos, q, out, gpu_ms) : SKV_ENODEV;
}

int skv_cuda_dense_repeat(skv_cuda_dense *d, int method, int reps, float *gpu_ms)
{
    const skv_cuda_ops *o = backend();
    return o ? o->dense_repeat(d, method, reps, gpu_ms) : SKV_ENODEV;
}

int skv_cuda_copy_bandwidth(uint64_t bytes, int reps, double *gbs)
{
    const skv_cuda_ops *o = backend();
    if (o)
        return o->copy_bandwidth(bytes, reps, gbs);
    if (gbs)
        *gbs = 0;
    return SKV_ENODEV;
}
