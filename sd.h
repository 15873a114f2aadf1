/* sd.h - Stable Diffusion inference in one C99 header.            MIT license, see end of file.

   Text prompt (optionally an init image) in, image out, on a CPU, with nothing but libc and
   optionally pthreads, and no memory but one arena that the caller hands in.

   USAGE
     In exactly one C or C++ file:
         #define SD_IMPLEMENTATION
         #include "sd.h"
     Everywhere else just #include "sd.h". Keep the implementation in a file of its own: its
     internal helpers are `static` and have plain names (gemm, layernorm, ...).

   CONFIGURATION (define before including the implementation)
     SD_ASSERT(x)     internal consistency checks (default: assert from <assert.h>)
     SD_NO_THREADS    no pthreads; everything runs on the calling thread
     SD_NO_SIMD       plain C kernels only, whatever the compiler targets
     SD_API           decoration of public functions (default: extern)

   CONTRACTS
     Memory   sd.h never calls malloc/free. Everything comes from an sd_arena the caller
              initialises over a block of its own; weights are used in place from the caller's
              safetensors bytes (read or mmap'd), never copied whole.
     Errors   every fallible call returns 0 on success or an SD_ERR_* code, and fills the
              caller's sd_error with a message that says what and where. On failure the arena
              is put back where it was, so the caller's state is intact.
     Input    bad input (malformed files, absurd sizes, wrong shapes) never crashes and never
              reads outside the caller's buffer.

   CONTENTS
     1. Public API and configuration
     2. Arena
     3. safetensors reader (and the small strict JSON parser it needs)
     4. Compute kernels: GEMM, conv2d, norms, attention, activations; thread pool
     5. Tokenizer (CLIP BPE)
     6. Text encoder (CLIP ViT-L/14 for SD1, OpenCLIP ViT-H for SD2)
     7. UNet
     8. VAE (decoder, encoder)
     9. Samplers (DDIM)
    10. Pipeline (txt2img, img2img)
*/
#ifndef SD_H
#define SD_H

#include <stddef.h>
#include <stdint.h>

#ifndef SD_API
#define SD_API extern
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- 1. Public API ------------------------------------------------------------------------ */

enum {
    SD_OK = 0,
    SD_ERR_ARG,          /* a bad argument from the caller (NULL pointer, size out of range) */
    SD_ERR_MEMORY,       /* the arena is too small */
    SD_ERR_FORMAT,       /* malformed file or header */
    SD_ERR_MISSING,      /* a tensor the model needs is not there */
    SD_ERR_SHAPE,        /* a tensor has the wrong shape or dtype */
    SD_ERR_UNSUPPORTED,  /* valid input that sd.h cannot handle */
    SD_ERR_CANCELLED     /* the progress callback asked to stop */
};

/* What went wrong and where. Filled by every fallible call; may be NULL. */
typedef struct sd_error { int code; char message[256]; } sd_error;

/* One block of caller memory, handed out in 64-byte aligned pieces from the bottom up.
   `peak` is the high-water mark of `used`; mark/reset gives stack-like scratch. */
typedef struct sd_arena { unsigned char *base; size_t size, used, peak; } sd_arena;

SD_API void   sd_arena_init(sd_arena *a, void *memory, size_t size);
SD_API void  *sd_arena_alloc(sd_arena *a, size_t bytes, sd_error *err); /* NULL + err if full */
SD_API size_t sd_arena_mark(const sd_arena *a);
SD_API void   sd_arena_reset(sd_arena *a, size_t mark);

/* Element types of safetensors files. */
typedef enum sd_dtype {
    SD_F32, SD_F16, SD_BF16, SD_F64, SD_I64, SD_I32, SD_I16, SD_I8, SD_U8, SD_BOOL, SD_DTYPE_COUNT
} sd_dtype;

#define SD_MAX_DIMS 8

/* A tensor as stored in a file: its bytes stay in the caller's buffer. */
typedef struct sd_tensor {
    const char *name;
    sd_dtype dtype;
    int ndim;
    int64_t shape[SD_MAX_DIMS];
    const void *data;
    size_t nbytes;
} sd_tensor;

/* One opened safetensors file: a table of tensors and the string pairs of `__metadata__`. */
typedef struct sd_safetensors {
    const unsigned char *bytes;  /* the caller's buffer */
    size_t size;
    sd_tensor *tensors;
    int count;
    const char **meta_keys, **meta_values;
    int meta_count;
    int32_t *hash;               /* open addressing table of tensor indices, -1 = empty */
    uint32_t hash_mask;
} sd_safetensors;

/* Parses the header of a safetensors file held in `data` (which must outlive `st`), validating
   every entry. Tables live in the arena; tensor data is pointed to, not copied. */
SD_API int sd_safetensors_open(sd_safetensors *st, const void *data, size_t size,
                               sd_arena *a, sd_error *err);
SD_API const sd_tensor *sd_safetensors_find(const sd_safetensors *st, const char *name);
SD_API const char *sd_safetensors_meta(const sd_safetensors *st, const char *key);

SD_API const char *sd_dtype_name(sd_dtype t);  /* "F32", "F16", ... */
SD_API size_t sd_dtype_size(sd_dtype t);
SD_API int64_t sd_tensor_numel(const sd_tensor *t);
SD_API float sd_f16_to_f32(uint16_t h);
SD_API float sd_bf16_to_f32(uint16_t h);
SD_API uint16_t sd_f32_to_f16(float f); /* round to nearest even */

/* The compute context (threads and their scratch) that stage functions run on; see section 4. */
typedef struct sd_pool sd_pool;

/* PyTorch's CPU random generator, bit for bit: after sd_rng_seed(&r, seed), sd_randn(&r, x, n)
   gives what g = torch.Generator("cpu").manual_seed(seed); torch.randn(n, generator=g) gives
   (float32, any shape of n elements), and further calls continue the same generator, so a seed
   gives the initial latents (and DDIM eta noise) that diffusers draws on the CPU. No global state. */
typedef struct sd_rng {
    uint32_t mt[624];   /* Mersenne Twister (mt19937) state */
    int next;   /* index of the next state word to hand out; 624: twist first */
    int has_spare;   /* short tensors draw normals in pairs and keep the second ... */
    double spare;   /* ... here, as torch's generator does */
} sd_rng;

SD_API void sd_rng_seed(sd_rng *r, uint64_t seed);   /* torch.manual_seed(seed) */
SD_API void sd_randn(sd_rng *r, float *out, size_t n);   /* torch.randn: N(0, 1) */
SD_API void sd_rand(sd_rng *r, float *out, size_t n);   /* torch.rand: uniform in [0, 1) */

/* The training noise schedule every sampler starts from (diffusers' beta_schedule values). */
enum { SD_BETA_SCALED_LINEAR, SD_BETA_LINEAR };
/* How inference timesteps are spread over the training ones (diffusers' timestep_spacing). */
enum { SD_SPACING_LEADING, SD_SPACING_TRAILING, SD_SPACING_LINSPACE };
/* What the UNet predicts: the noise (SD1, SDXL) or v = sqrt(a)·noise - sqrt(1-a)·x0 (SD2 768). */
enum { SD_PREDICT_EPSILON, SD_PREDICT_V };

#define SD_MAX_TRAIN_TIMESTEPS 1000

/* Tables over the training timesteps t = 0 .. num_train_timesteps-1, written once by
   sd_schedule_init and shared by the samplers (float32, as diffusers computes them). */
typedef struct sd_schedule {
    int num_train_timesteps;
    float betas[SD_MAX_TRAIN_TIMESTEPS];   /* noise added at step t */
    float alphas_cumprod[SD_MAX_TRAIN_TIMESTEPS];   /* a_t = prod over s <= t of (1 - beta_s) */
    float sigmas[SD_MAX_TRAIN_TIMESTEPS];   /* sqrt((1 - a_t) / a_t), for Euler / DPM++ */
    float final_alpha_cumprod;   /* a after t = 0, DDIM's last step: a_0 as SD configures it */
                                /* (set_alpha_to_one = false); set it to 1 for set_alpha_to_one */
} sd_schedule;

/* SD uses (1000, 0.00085, 0.012, SD_BETA_SCALED_LINEAR). */
SD_API int sd_schedule_init(sd_schedule *s, int num_train_timesteps, double beta_start,
                            double beta_end, int beta_schedule, sd_error *err);

/* The `steps` timesteps of a DDIM run, first (noisiest) first, as diffusers'
   DDIMScheduler.set_timesteps: leading = i·(T/steps) + steps_offset (SD: 1), trailing, linspace
   (steps_offset only applies to leading). out holds `steps` ints. */
SD_API int sd_ddim_timesteps(const sd_schedule *s, int steps, int spacing, int steps_offset,
                             int *out, sd_error *err);
/* The timestep DDIM steps to from t: t - T/steps whatever the spacing (diffusers does so); < 0
   after the last step. */
SD_API int sd_ddim_prev_timestep(const sd_schedule *s, int t, int steps);

/* One DDIM step (Song et al. 2021, eq. 12) over n floats: from the sample x at timestep t and
   the UNet's prediction, the sample at t_prev (prev_out) and the predicted clean sample x0
   (x0_out, may be NULL). eta = 0 is deterministic; eta > 0 adds sigma_t·noise with noise from
   the caller, or drawn from rng when noise is NULL (torch.randn of n elements, as diffusers
   draws it; prev_out must then not be x or model_out). prev_out may be x otherwise. */
SD_API int sd_ddim_step(const sd_schedule *s, int t, int t_prev, int prediction, float eta,
                        const float *x, const float *model_out, size_t n,
                        const float *noise, sd_rng *rng,
                        float *prev_out, float *x0_out, sd_error *err);

/* img2img: how many of the `steps` timesteps to skip so that `strength` of them remain, as
   diffusers' get_timesteps (strength 1: none skipped). Strength is a double so that 0.7 gives
   int(10 · 0.7) = 7 steps as in Python (0.7f would give 6). */
SD_API int sd_img2img_start(int steps, double strength, int *start, sd_error *err);
/* The forward process q(x_t | x_0): out = sqrt(a_t)·x0 + sqrt(1 - a_t)·noise (scheduler.add_noise). */
SD_API int sd_add_noise(const sd_schedule *s, int t, const float *x0, const float *noise,
                        size_t n, float *out, sd_error *err);

/* Classifier-free guidance: out = uncond + scale·(cond - uncond). */
SD_API void sd_guidance(const float *uncond, const float *cond, float scale, size_t n, float *out);

/* The text encoder of a checkpoint: sizes read from tensor shapes, the rest from the file's
   metadata or the model family, and the weights (views into the caller's file bytes). */
#define SD_TEXT_TOKENS 77   /* token ids per prompt: CLIP's context length */

typedef struct sd_text_encoder {
    int vocab, positions, width, layers, heads, mlp;
    int gelu;             /* 1: gelu (OpenCLIP, SD2), 0: quick_gelu (OpenAI CLIP, SD1) */
    int output_layer;     /* the hidden state the UNet reads: layers (SD1) or layers - 1 (SD2) */
    int output_final_ln;  /* whether that state goes through the final LayerNorm (SD1, SD2: yes) */
    float eps;            /* LayerNorm epsilon */
    sd_tensor token_embedding, position_embedding, final_ln_w, final_ln_b;
    struct sd_clip_layer *layer;   /* [layers], in the arena */
} sd_text_encoder;

/* Finds the text encoder in `files` (a single-file SD1/SD2 checkpoint, or a diffusers
   text_encoder/model.safetensors) and describes it. `meta` is the file whose __metadata__ holds
   sd.version / sd.clip.* (NULL: files[0]); without those keys the SD1/SD2 defaults apply.
   The layer table takes a few KB of the arena; the files must stay open while te is used. */
SD_API int sd_text_encoder_load(sd_text_encoder *te, const sd_safetensors *files, int nfiles,
                                const sd_safetensors *meta, sd_arena *a, sd_error *err);

/* Exact arena bytes that sd_text_encode / sd_text_encoder_hidden take for n_prompts prompts
   (the thread pool is set up separately). SIZE_MAX if it cannot be met. */
SD_API size_t sd_text_encoder_arena_bytes(const sd_text_encoder *te, int n_prompts);

/* ids [n_prompts, 77] → out [n_prompts, 77, width]: the UNet's context. clip_skip 0 or 1 is the
   model's own output (SD1: last layer, SD2: penultimate, both through the final LayerNorm);
   clip_skip N stops N - 1 layers earlier, then the final LayerNorm (A1111/ComfyUI "clip skip"). */
SD_API int sd_text_encode(const sd_text_encoder *te, const int32_t *ids, int n_prompts, int clip_skip,
                          float *out, sd_pool *pool, sd_arena *a, sd_error *err);

/* The hidden state after `layer` layers (0 = token + position embeddings), through the final
   LayerNorm when final_ln is set: any layer, e.g. SDXL's penultimate without the LayerNorm. */
SD_API int sd_text_encoder_hidden(const sd_text_encoder *te, const int32_t *ids, int n_prompts,
                                  int layer, int final_ln, float *out, sd_pool *pool,
                                  sd_arena *a, sd_error *err);

#ifdef __cplusplus
}
#endif
#endif /* SD_H */

/* ============================================================================================ */
#ifdef SD_IMPLEMENTATION
#ifndef SD_IMPLEMENTATION_DONE
#define SD_IMPLEMENTATION_DONE

#include <math.h>
#include <stdarg.h>
#include <stdio.h>   /* vsnprintf only: the core does no I/O */
#include <string.h>

#ifndef SD_ASSERT
#include <assert.h>
#define SD_ASSERT(x) assert(x)
#endif

/* Helpers that some builds (tests, tools) use and others do not. */
#if defined(__GNUC__) || defined(__clang__)
#define SD_MAYBE_UNUSED __attribute__((unused))
#else
#define SD_MAYBE_UNUSED
#endif

/* Fills err (if given) and returns code, so that failures read `return fail(err, ...)`. */
static int fail(sd_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

/* ---- 2. Arena ----------------------------------------------------------------------------- */

#define SD_ALIGN 64

SD_API void sd_arena_init(sd_arena *a, void *memory, size_t size)
{
    /* Start at the first 64-byte boundary so every piece is aligned in absolute terms. */
    uintptr_t p = (uintptr_t)memory, q = (p + SD_ALIGN - 1) & ~(uintptr_t)(SD_ALIGN - 1);
    size_t skip = (size_t)(q - p);
    a->base = (unsigned char *)memory + (skip <= size ? skip : size);
    a->size = skip <= size ? size - skip : 0;
    a->used = a->peak = 0;
}

SD_API void *sd_arena_alloc(sd_arena *a, size_t bytes, sd_error *err)
{
    size_t left = a->size - a->used, need;
    if (bytes > (size_t)-1 - SD_ALIGN) need = (size_t)-1;
    else need = (bytes + SD_ALIGN - 1) & ~(size_t)(SD_ALIGN - 1);
    if (need > left) {
        fail(err, SD_ERR_MEMORY, "arena too small: asked for %zu bytes, %zu of %zu left",
             bytes, left, a->size);
        return NULL;
    }
    void *p = a->base + a->used;
    a->used += need;
    if (a->used > a->peak) a->peak = a->used;
    return p;
}

SD_API size_t sd_arena_mark(const sd_arena *a) { return a->used; }

SD_API void sd_arena_reset(sd_arena *a, size_t mark)
{
    SD_ASSERT(mark <= a->used);
    a->used = mark;
}

/* Allocation helpers that read better in model code: count × size with overflow check. */
static void *arena_array(sd_arena *a, size_t count, size_t size, sd_error *err)
{
    if (size && count > (size_t)-1 / size) {
        fail(err, SD_ERR_MEMORY, "arena: %zu x %zu bytes overflows size_t", count, size);
        return NULL;
    }
    return sd_arena_alloc(a, count * size, err);
}
#define arena_floats(a, n, err) ((float *)arena_array((a), (size_t)(n), sizeof(float), (err)))

/* ---- 3. safetensors reader ---------------------------------------------------------------- */
/* Format: 8-byte little-endian header length N, N bytes of JSON
   {"name": {"dtype": "F16", "shape": [..], "data_offsets": [begin, end]}, ...,
    "__metadata__": {"key": "value", ...}}, then the data region that the offsets index. */

static const struct { const char *name; size_t size; } dtype_info[SD_DTYPE_COUNT] = {
    {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F64", 8}, {"I64", 8},
    {"I32", 4}, {"I16", 2}, {"I8", 1}, {"U8", 1}, {"BOOL", 1},
};

SD_API const char *sd_dtype_name(sd_dtype t) { return (unsigned)t < SD_DTYPE_COUNT ? dtype_info[t].name : "?"; }
SD_API size_t sd_dtype_size(sd_dtype t) { return (unsigned)t < SD_DTYPE_COUNT ? dtype_info[t].size : 0; }

SD_API int64_t sd_tensor_numel(const sd_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

SD_API float sd_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 31, man = h & 0x3ff, bits;
    if (exp == 31) bits = sign | 0x7f800000u | (man << 13);           /* inf, nan */
    else if (exp) bits = sign | ((exp + 112) << 23) | (man << 13);    /* normal */
    else if (!man) bits = sign;                                       /* zero */
    else {                                                            /* subnormal: normalise */
        exp = 113;
        while (!(man & 0x400)) { man <<= 1; exp--; }
        bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

SD_API float sd_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

SD_API uint16_t sd_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, e = (x >> 23) & 0xff, man = x & 0x7fffff;
    if (e == 255) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    int exp = (int)e - 127 + 15;
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {                                   /* subnormal or zero in f16 */
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        int shift = 14 - exp;
        uint32_t half = man >> shift, rest = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rest > mid || (rest == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((uint32_t)exp << 10) | (man >> 13), rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (half & 1))) half++;   /* may carry into exp: ok */
    return (uint16_t)(sign | half);
}

/* Element i of a float tensor of any float dtype, as f32 (for small vectors: norms, biases). */
SD_MAYBE_UNUSED static float tensor_get(const sd_tensor *t, size_t i)
{
    switch (t->dtype) {
    case SD_F32: { float v; memcpy(&v, (const char *)t->data + 4 * i, 4); return v; }
    case SD_F16: { uint16_t v; memcpy(&v, (const char *)t->data + 2 * i, 2); return sd_f16_to_f32(v); }
    case SD_BF16: { uint16_t v; memcpy(&v, (const char *)t->data + 2 * i, 2); return sd_bf16_to_f32(v); }
    case SD_F64: { double v; memcpy(&v, (const char *)t->data + 8 * i, 8); return (float)v; }
    default: return 0.0f;
    }
}

/* A strict JSON reader over [p, end): just what safetensors headers (and the tests' JSON files)
   need. Every function returns 0 on success and leaves `error` set on the first failure. */
typedef struct json {
    const char *start, *p, *end;
    const char *error;   /* static message, NULL while all is well */
} json;

static int json_fail(json *j, const char *msg)
{
    if (!j->error) j->error = msg;
    return -1;
}

static void json_ws(json *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

/* Consumes character c after optional whitespace; returns 1 if it was there. */
static int json_eat(json *j, char c)
{
    json_ws(j);
    if (j->p < j->end && *j->p == c) { j->p++; return 1; }
    return 0;
}

static int json_hex4(json *j, uint32_t *v)
{
    *v = 0;
    if (j->end - j->p < 4) return json_fail(j, "truncated \\u escape");
    for (int i = 0; i < 4; i++) {
        char c = *j->p++;
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return json_fail(j, "bad hex digit in \\u escape");
        *v = *v * 16 + (uint32_t)d;
    }
    return 0;
}

/* Reads a string, decoding escapes to UTF-8 into out[0..cap) (out may be NULL to measure).
   *len gets the decoded length; the output is NUL-terminated when it fits. */
static int json_string(json *j, char *out, size_t cap, size_t *len)
{
    size_t n = 0;
    json_ws(j);
    if (j->p >= j->end || *j->p != '"') return json_fail(j, "expected a string");
    j->p++;
    for (;;) {
        if (j->p >= j->end) return json_fail(j, "unterminated string");
        unsigned char c = (unsigned char)*j->p++;
        uint32_t cp;
        if (c == '"') break;
        if (c < 0x20) return json_fail(j, "control character in string");
        if (c != '\\') { if (out && n < cap) out[n] = (char)c; n++; continue; }
        if (j->p >= j->end) return json_fail(j, "unterminated escape");
        switch (*j->p++) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = 8; break;
        case 'f': cp = 12; break;
        case 'n': cp = 10; break;
        case 'r': cp = 13; break;
        case 't': cp = 9; break;
        case 'u':
            if (json_hex4(j, &cp)) return -1;
            if (cp >= 0xd800 && cp < 0xdc00) {        /* high surrogate: a low one must follow */
                uint32_t lo;
                if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u')
                    return json_fail(j, "lone surrogate in \\u escape");
                j->p += 2;
                if (json_hex4(j, &lo)) return -1;
                if (lo < 0xdc00 || lo >= 0xe000) return json_fail(j, "lone surrogate in \\u escape");
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp < 0xe000) {
                return json_fail(j, "lone surrogate in \\u escape");
            }
            break;
        default: return json_fail(j, "unknown escape in string");
        }
        unsigned char u[4];
        int k;
        if (cp < 0x80) { u[0] = (unsigned char)cp; k = 1; }
        else if (cp < 0x800) { u[0] = (unsigned char)(0xc0 | cp >> 6); u[1] = (unsigned char)(0x80 | (cp & 63)); k = 2; }
        else if (cp < 0x10000) { u[0] = (unsigned char)(0xe0 | cp >> 12); u[1] = (unsigned char)(0x80 | ((cp >> 6) & 63)); u[2] = (unsigned char)(0x80 | (cp & 63)); k = 3; }
        else { u[0] = (unsigned char)(0xf0 | cp >> 18); u[1] = (unsigned char)(0x80 | ((cp >> 12) & 63)); u[2] = (unsigned char)(0x80 | ((cp >> 6) & 63)); u[3] = (unsigned char)(0x80 | (cp & 63)); k = 4; }
        for (int i = 0; i < k; i++, n++) if (out && n < cap) out[n] = (char)u[i];
    }
    if (out && n < cap) out[n] = 0;
    *len = n;
    return 0;
}

/* Reads a non-negative integer (no sign, fraction or exponent), failing above 2^63. */
static int json_uint(json *j, uint64_t *v)
{
    json_ws(j);
    const char *s = j->p;
    *v = 0;
    if (j->p >= j->end || *j->p < '0' || *j->p > '9') return json_fail(j, "expected a non-negative integer");
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        uint64_t d = (uint64_t)(*j->p - '0');
        if (*v > (UINT64_C(0x7fffffffffffffff) - d) / 10) return json_fail(j, "integer too large");
        *v = *v * 10 + d;
        j->p++;
    }
    if (j->p - s > 1 && *s == '0') return json_fail(j, "leading zero in number");
    if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E')) return json_fail(j, "expected an integer");
    return 0;
}

/* Skips any JSON value (used by the tests for files whose fields they do not need). */
SD_MAYBE_UNUSED static int json_skip(json *j, int depth)
{
    size_t len;
    uint64_t v;
    if (depth > 64) return json_fail(j, "nesting too deep");
    json_ws(j);
    if (j->p >= j->end) return json_fail(j, "unexpected end of JSON");
    switch (*j->p) {
    case '"': return json_string(j, NULL, 0, &len);
    case '{': case '[': {
        char close = *j->p == '{' ? '}' : ']';
        j->p++;
        if (json_eat(j, close)) return 0;
        do {
            if (close == '}') {
                if (json_string(j, NULL, 0, &len)) return -1;
                if (!json_eat(j, ':')) return json_fail(j, "expected ':'");
            }
            if (json_skip(j, depth + 1)) return -1;
        } while (json_eat(j, ','));
        return json_eat(j, close) ? 0 : json_fail(j, "expected ',' or closing bracket");
    }
    case 't': case 'f': case 'n': {
        const char *w = *j->p == 't' ? "true" : *j->p == 'f' ? "false" : "null";
        size_t n = strlen(w);
        if ((size_t)(j->end - j->p) < n || memcmp(j->p, w, n)) return json_fail(j, "bad literal");
        j->p += n;
        return 0;
    }
    case '-': j->p++; /* fall through */
    default:
        if (json_uint(j, &v) && !(j->error && !strcmp(j->error, "expected an integer"))) return -1;
        j->error = NULL;   /* a fraction or exponent is fine here */
        if (j->p < j->end && *j->p == '.') { j->p++; while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++; }
        if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
            j->p++;
            if (j->p < j->end && (*j->p == '+' || *j->p == '-')) j->p++;
            while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
        }
        return 0;
    }
}

static uint32_t hash_string(const char *s)
{
    uint32_t h = 2166136261u;   /* FNV-1a */
    while (*s) h = (h ^ (unsigned char)*s++) * 16777619u;
    return h;
}

/* One pass over the header. With st->tensors NULL it only validates and counts (so that the
   second pass can allocate exact tables); otherwise it fills them. */
static int st_parse(sd_safetensors *st, json *j, size_t data_size, sd_arena *a,
                    int *n_tensors, int *n_meta, sd_error *err)
{
    char name[1024], field[32], dt[16];
    size_t len;
    *n_tensors = *n_meta = 0;
    if (!json_eat(j, '{')) { json_fail(j, "header is not a JSON object"); goto bad_json; }
    if (json_eat(j, '}')) goto done;
    do {
        const char *entry = j->p;
        if (json_string(j, name, sizeof name, &len)) goto bad_json;
        if (len >= sizeof name) return fail(err, SD_ERR_FORMAT, "safetensors: tensor name longer than %zu bytes at header byte %ld", sizeof name - 1, (long)(entry - j->start));
        if (strlen(name) != len) return fail(err, SD_ERR_FORMAT, "safetensors: NUL byte in a name at header byte %ld", (long)(entry - j->start));
        if (!json_eat(j, ':') || !json_eat(j, '{')) { json_fail(j, "expected ':' and an object after a name"); goto bad_json; }
        if (!strcmp(name, "__metadata__")) {
            if (json_eat(j, '}')) continue;
            do {
                const char *k = j->p, *v;
                size_t klen, vlen;
                if (json_string(j, NULL, 0, &klen) || !json_eat(j, ':')) { json_fail(j, "expected ':' in __metadata__"); goto bad_json; }
                v = j->p;
                json_ws(j);
                if (j->p < j->end && *j->p != '"') return fail(err, SD_ERR_FORMAT, "safetensors: __metadata__ value at header byte %ld is not a string", (long)(j->p - j->start));
                if (json_string(j, NULL, 0, &vlen)) goto bad_json;
                if (st->tensors) {   /* second pass: decode key and value into the arena */
                    json kj = *j, vj = *j;
                    char *ks = (char *)sd_arena_alloc(a, klen + 1, err), *vs = (char *)sd_arena_alloc(a, vlen + 1, err);
                    if (!ks || !vs) return SD_ERR_MEMORY;
                    kj.p = k; vj.p = v;
                    json_string(&kj, ks, klen + 1, &klen);
                    json_string(&vj, vs, vlen + 1, &vlen);
                    st->meta_keys[*n_meta] = ks;
                    st->meta_values[*n_meta] = vs;
                }
                (*n_meta)++;
            } while (json_eat(j, ','));
            if (!json_eat(j, '}')) { json_fail(j, "expected ',' or '}' in __metadata__"); goto bad_json; }
            continue;
        }
        /* a tensor entry */
        sd_tensor t;
        int have = 0;   /* bit 0 dtype, 1 shape, 2 data_offsets */
        uint64_t begin = 0, end = 0;
        memset(&t, 0, sizeof t);
        t.dtype = SD_DTYPE_COUNT;
        if (json_eat(j, '}')) return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s' has no dtype, shape or data_offsets", name);
        do {
            if (json_string(j, field, sizeof field, &len)) goto bad_json;
            if (len >= sizeof field) field[0] = 0;
            if (!json_eat(j, ':')) { json_fail(j, "expected ':'"); goto bad_json; }
            if (!strcmp(field, "dtype")) {
                if (json_string(j, dt, sizeof dt, &len)) goto bad_json;
                for (int d = 0; d < SD_DTYPE_COUNT; d++)
                    if (len < sizeof dt && !strcmp(dt, dtype_info[d].name)) t.dtype = (sd_dtype)d;
                if (t.dtype == SD_DTYPE_COUNT)
                    return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s' has unknown dtype '%.15s'", name, len < sizeof dt ? dt : "(too long)");
                have |= 1;
            } else if (!strcmp(field, "shape")) {
                if (!json_eat(j, '[')) { json_fail(j, "shape is not an array"); goto bad_json; }
                if (!json_eat(j, ']')) {
                    do {
                        uint64_t v;
                        if (t.ndim == SD_MAX_DIMS) return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s' has more than %d dimensions", name, SD_MAX_DIMS);
                        if (json_uint(j, &v)) goto bad_json;
                        t.shape[t.ndim++] = (int64_t)v;
                    } while (json_eat(j, ','));
                    if (!json_eat(j, ']')) { json_fail(j, "expected ',' or ']' in shape"); goto bad_json; }
                }
                have |= 2;
            } else if (!strcmp(field, "data_offsets")) {
                if (!json_eat(j, '[') || json_uint(j, &begin) || !json_eat(j, ',') || json_uint(j, &end) || !json_eat(j, ']')) {
                    json_fail(j, "data_offsets is not [begin, end]");
                    goto bad_json;
                }
                have |= 4;
            } else {
                return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s' has unknown field '%.31s'", name, field);
            }
        } while (json_eat(j, ','));
        if (!json_eat(j, '}')) { json_fail(j, "expected ',' or '}' in a tensor entry"); goto bad_json; }
        if (have != 7) return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s' lacks %s", name, !(have & 1) ? "dtype" : !(have & 2) ? "shape" : "data_offsets");
        /* sizes: product of dims times element size, checked for overflow at every step */
        uint64_t bytes = sd_dtype_size(t.dtype);
        for (int d = 0; d < t.ndim; d++) {
            uint64_t n = (uint64_t)t.shape[d];
            if (n && bytes > UINT64_C(0x7fffffffffffffff) / n) return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s': size of shape overflows", name);
            bytes *= n;
        }
        if (begin > end) return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s': data_offsets [%llu, %llu] are reversed", name, (unsigned long long)begin, (unsigned long long)end);
        if (end > data_size) return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s': data_offsets end %llu is past the data region (%zu bytes)", name, (unsigned long long)end, data_size);
        if (end - begin != bytes) return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s': %llu bytes in data_offsets but shape x %s needs %llu", name, (unsigned long long)(end - begin), dtype_info[t.dtype].name, (unsigned long long)bytes);
        if (st->tensors) {
            size_t at = (size_t)((const unsigned char *)j->end - st->bytes) + (size_t)begin;   /* file offset of the data */
            char *s = (char *)sd_arena_alloc(a, strlen(name) + 1, err);
            if (!s) return SD_ERR_MEMORY;
            if (at % sd_dtype_size(t.dtype))
                return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s' at file offset %zu is not aligned for %s (sd.h uses data in place and will not copy it)", name, at, dtype_info[t.dtype].name);
            if ((uintptr_t)(st->bytes + at) % sd_dtype_size(t.dtype))
                return fail(err, SD_ERR_ARG, "safetensors: the caller's buffer is not aligned for tensor '%s' (%s); pass a buffer from malloc or mmap", name, dtype_info[t.dtype].name);
            memcpy(s, name, strlen(name) + 1);
            t.name = s;
            t.data = st->bytes + at;
            t.nbytes = (size_t)bytes;
            st->tensors[*n_tensors] = t;
        }
        (*n_tensors)++;
        if (*n_tensors > 1000000) return fail(err, SD_ERR_FORMAT, "safetensors: more than a million tensors");
    } while (json_eat(j, ','));
    if (!json_eat(j, '}')) { json_fail(j, "expected ',' or '}' after an entry"); goto bad_json; }
done:
    json_ws(j);
    if (j->p != j->end) { json_fail(j, "trailing bytes after the header object"); goto bad_json; }
    return 0;
bad_json:
    return fail(err, SD_ERR_FORMAT, "safetensors: bad header JSON at byte %ld: %s", (long)(j->p - j->start), j->error ? j->error : "syntax error");
}

static int st_compare_offsets(const sd_tensor *x, const sd_tensor *y)
{
    const unsigned char *a = (const unsigned char *)x->data, *b = (const unsigned char *)y->data;
    return a < b ? -1 : a > b ? 1 : x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* Sort indices by data offset (heap sort: no recursion, no libc qsort callback casts). */
static void st_sort_by_offset(const sd_tensor *t, int32_t *idx, int n)
{
    for (int k = n / 2 - 1, m = n;; ) {
        int root;
        if (k >= 0) root = k--;
        else { if (--m <= 0) break; int32_t s = idx[0]; idx[0] = idx[m]; idx[m] = s; root = 0; }
        for (;;) {
            int c = 2 * root + 1;
            if (c >= m) break;
            if (c + 1 < m && st_compare_offsets(&t[idx[c + 1]], &t[idx[c]]) > 0) c++;
            if (st_compare_offsets(&t[idx[c]], &t[idx[root]]) <= 0) break;
            int32_t s = idx[c]; idx[c] = idx[root]; idx[root] = s;
            root = c;
        }
    }
}

/* Checks that the tensors cover the data region exactly: no overlaps, no holes, no tail. */
static int st_check_coverage(const sd_safetensors *st, const unsigned char *region, size_t data_size,
                             sd_arena *a, sd_error *err)
{
    size_t pos = 0, mark = sd_arena_mark(a);
    int32_t *idx = (int32_t *)arena_array(a, (size_t)st->count + 1, sizeof(int32_t), err);
    if (!idx) return SD_ERR_MEMORY;
    for (int i = 0; i < st->count; i++) idx[i] = i;
    st_sort_by_offset(st->tensors, idx, st->count);
    for (int i = 0; i < st->count; i++) {
        const sd_tensor *t = &st->tensors[idx[i]];
        size_t off = (size_t)((const unsigned char *)t->data - region);
        if (off < pos) return fail(err, SD_ERR_FORMAT, "safetensors: tensor '%s' at data offset %zu overlaps the tensor before it (which ends at %zu)", t->name, off, pos);
        if (off > pos) return fail(err, SD_ERR_FORMAT, "safetensors: hole in the data region before tensor '%s' (it starts at %zu, the data before ends at %zu)", t->name, off, pos);
        pos += t->nbytes;
    }
    sd_arena_reset(a, mark);   /* the index was scratch */
    if (pos != data_size) return fail(err, SD_ERR_FORMAT, "safetensors: data region is %zu bytes but the tensors cover %zu", data_size, pos);
    return SD_OK;
}

static int st_open(sd_safetensors *st, const unsigned char *b, size_t size, sd_arena *a, sd_error *err)
{
    uint64_t hlen = 0;
    int nt, nm, rc;
    uint32_t cap = 16;
    if (size < 8) return fail(err, SD_ERR_FORMAT, "safetensors: file of %zu bytes is shorter than the 8-byte header length", size);
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | b[i];
    if (hlen > 100u << 20) return fail(err, SD_ERR_FORMAT, "safetensors: header length %llu is absurd (over 100 MB)", (unsigned long long)hlen);
    if (hlen > size - 8) return fail(err, SD_ERR_FORMAT, "safetensors: header length %llu is larger than the %zu bytes after it", (unsigned long long)hlen, size - 8);
    st->bytes = b;
    st->size = size;
    json j = { (const char *)b + 8, (const char *)b + 8, (const char *)b + 8 + hlen, NULL };
    size_t data_size = size - 8 - (size_t)hlen;
    if ((rc = st_parse(st, &j, data_size, a, &nt, &nm, err))) return rc;

    /* the second pass fills tables sized by the first */
    while (cap < 2u * (uint32_t)nt) cap *= 2;
    st->tensors = (sd_tensor *)arena_array(a, (size_t)nt + 1, sizeof(sd_tensor), err);
    st->meta_keys = (const char **)arena_array(a, (size_t)nm + 1, sizeof(char *), err);
    st->meta_values = (const char **)arena_array(a, (size_t)nm + 1, sizeof(char *), err);
    st->hash = (int32_t *)arena_array(a, cap, sizeof(int32_t), err);
    if (!st->tensors || !st->meta_keys || !st->meta_values || !st->hash) return SD_ERR_MEMORY;
    j.p = j.start;
    if ((rc = st_parse(st, &j, data_size, a, &nt, &nm, err))) return rc;
    st->count = nt;
    st->meta_count = nm;
    st->hash_mask = cap - 1;
    memset(st->hash, 0xff, cap * sizeof(int32_t));
    for (int i = 0; i < nt; i++) {
        uint32_t h = hash_string(st->tensors[i].name) & st->hash_mask;
        for (; st->hash[h] >= 0; h = (h + 1) & st->hash_mask)
            if (!strcmp(st->tensors[st->hash[h]].name, st->tensors[i].name))
                return fail(err, SD_ERR_FORMAT, "safetensors: duplicate tensor name '%s'", st->tensors[i].name);
        st->hash[h] = i;
    }
    return st_check_coverage(st, b + 8 + hlen, data_size, a, err);
}

SD_API int sd_safetensors_open(sd_safetensors *st, const void *data, size_t size,
                               sd_arena *a, sd_error *err)
{
    if (!st || !a || (!data && size)) return fail(err, SD_ERR_ARG, "safetensors: NULL argument");
    size_t mark = sd_arena_mark(a);
    memset(st, 0, sizeof *st);
    int rc = st_open(st, (const unsigned char *)data, size, a, err);
    if (rc) {
        sd_arena_reset(a, mark);
        memset(st, 0, sizeof *st);
    }
    return rc;
}

SD_API const sd_tensor *sd_safetensors_find(const sd_safetensors *st, const char *name)
{
    if (!st || !st->hash || !name) return NULL;
    for (uint32_t h = hash_string(name) & st->hash_mask; st->hash[h] >= 0; h = (h + 1) & st->hash_mask)
        if (!strcmp(st->tensors[st->hash[h]].name, name)) return &st->tensors[st->hash[h]];
    return NULL;
}

SD_API const char *sd_safetensors_meta(const sd_safetensors *st, const char *key)
{
    if (!st || !key) return NULL;
    for (int i = 0; i < st->meta_count; i++)
        if (!strcmp(st->meta_keys[i], key)) return st->meta_values[i];
    return NULL;
}


/* Model weights are looked up by name in one or more opened files (a single checkpoint, or the
   unet/vae/text_encoder files of a diffusers folder). `prefix` is prepended to every name
   ("model.diffusion_model." in single files); `diffusers` says which of the two name maps applies.
   The first missing or mis-shaped tensor is recorded in err; loaders fetch everything, then check. */
typedef struct weights {
    const sd_safetensors *files[4];
    int nfiles;
    const char *prefix;
    int diffusers;
    sd_error *err;
    int failed;     /* SD_OK until the first problem */
} weights;

static const sd_tensor *weights_find(const weights *w, const char *name)
{
    char full[512];
    snprintf(full, sizeof full, "%s%s", w->prefix ? w->prefix : "", name);
    for (int i = 0; i < w->nfiles; i++) {
        const sd_tensor *t = sd_safetensors_find(w->files[i], full);
        if (t) return t;
    }
    return NULL;
}

/* The tensor named by fmt, checked to be a float tensor of shape [d0, d1, d2, d3] where a 0 ends
   the shape and -1 accepts any size. A linear weight [N, K] is also accepted as a 1x1
   convolution [N, K, 1, 1] and vice versa, since checkpoints store both. NULL on failure. */
static const sd_tensor *need(weights *w, int64_t d0, int64_t d1, int64_t d2, int64_t d3, const char *fmt, ...)
{
    char name[400];
    int64_t want[4] = {d0, d1, d2, d3};
    int nd = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    while (nd < 4 && want[nd] != 0) nd++;
    const sd_tensor *t = weights_find(w, name);
    if (w->failed) return t;
    if (!t) {
        w->failed = fail(w->err, SD_ERR_MISSING, "missing tensor '%s%s'", w->prefix ? w->prefix : "", name);
        return NULL;
    }
    if (t->dtype != SD_F32 && t->dtype != SD_F16 && t->dtype != SD_BF16) {
        w->failed = fail(w->err, SD_ERR_SHAPE, "tensor '%s' is %s; sd.h needs F32, F16 or BF16", t->name, sd_dtype_name(t->dtype));
        return NULL;
    }
    int ok = 1, tnd = t->ndim;
    if (nd == 2 && tnd == 4 && t->shape[2] == 1 && t->shape[3] == 1) tnd = 2;   /* 1x1 conv as linear */
    if (nd == 4 && tnd == 2 && want[2] == 1 && want[3] == 1) nd = 2;            /* linear as 1x1 conv */
    ok = tnd == nd;
    for (int i = 0; ok && i < nd; i++) ok = want[i] < 0 || t->shape[i] == want[i];
    if (!ok) {
        char got[128] = "", exp[128] = "";
        for (int i = 0; i < t->ndim; i++) snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        for (int i = 0; i < nd; i++) {
            if (want[i] < 0) snprintf(exp + strlen(exp), sizeof exp - strlen(exp), "%s*", i ? ", " : "");
            else snprintf(exp + strlen(exp), sizeof exp - strlen(exp), "%s%lld", i ? ", " : "", (long long)want[i]);
        }
        w->failed = fail(w->err, SD_ERR_SHAPE, "tensor '%s' has shape [%s], expected [%s]", t->name, got, exp);
        return NULL;
    }
    return t;
}

/* Like need() for tensors that may be absent (returns NULL without an error). */
static const sd_tensor *maybe(weights *w, int64_t d0, int64_t d1, int64_t d2, int64_t d3, const char *fmt, ...)
{
    char name[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (!weights_find(w, name)) return NULL;
    return need(w, d0, d1, d2, d3, "%s", name);
}

/* A view of rows [r0, r0 + n) of a 2-D (or [N, K, 1, 1]) weight, or of a 1-D bias: how the fused
   q/k/v `in_proj` of OpenCLIP is split without copying. */
static sd_tensor tensor_rows(const sd_tensor *t, int64_t r0, int64_t n)
{
    sd_tensor v = *t;
    size_t row = sd_dtype_size(t->dtype);
    for (int i = 1; i < t->ndim; i++) row *= (size_t)t->shape[i];
    v.data = (const char *)t->data + (size_t)r0 * row;
    v.shape[0] = n;
    v.nbytes = (size_t)n * row;
    return v;
}

/* ---- 4. Compute kernels ------------------------------------------------------------------- */
/* Activations are float32 and channels-last (NHWC): a [B, H, W, C] image is a [B·H·W, C] matrix,
   so 1x1 convolutions and linear layers are one GEMM, and the transformer blocks of the UNet
   work on the same buffer without transposes. Weights keep PyTorch's layout ([out, in, kh, kw]),
   in whatever float type the file has; kernels convert them as they go. */

/* A compute context: worker threads and per-thread scratch, set up once per run (from the
   arena) so that kernels never allocate. */
#define SD_MAX_THREADS 64
#define SD_POOL_SCRATCH_FLOATS (1u << 18)   /* per thread: attention scores for 4096+ keys, tiles */

struct sd_pool {
    int threads;
    float *scratch[SD_MAX_THREADS];
    size_t scratch_floats;
};

typedef void (*pool_task)(void *arg, int task, int thread);

/* Arena bytes pool_init takes for `threads` threads. */
static size_t pool_arena_bytes(int threads)
{
    return (size_t)threads * (SD_POOL_SCRATCH_FLOATS * sizeof(float) + SD_ALIGN);
}

static int pool_init(sd_pool *p, int threads, sd_arena *a, sd_error *err)
{
    memset(p, 0, sizeof *p);
    if (threads < 1 || threads > SD_MAX_THREADS) return fail(err, SD_ERR_ARG, "threads = %d: must be 1..%d", threads, SD_MAX_THREADS);
    p->threads = threads;
    p->scratch_floats = SD_POOL_SCRATCH_FLOATS;
    for (int t = 0; t < threads; t++)
        if (!(p->scratch[t] = arena_floats(a, p->scratch_floats, err))) return SD_ERR_MEMORY;
    return SD_OK;
}

static void pool_free(sd_pool *p) { (void)p; }

/* Runs fn(arg, task, thread) for task = 0..ntasks-1. Each task writes its own part of the output,
   so the result does not depend on how tasks are spread over threads. */
static void pool_run(sd_pool *pool, pool_task fn, void *arg, int ntasks)
{
    (void)pool;
    for (int t = 0; t < ntasks; t++) fn(arg, t, 0);
}

/* Row i of weight matrix w ([N, K], any float dtype) as float32 into out[0..K). */
static void weight_row(const sd_tensor *w, int64_t i, int64_t K, float *out)
{
    for (int64_t k = 0; k < K; k++) out[k] = tensor_get(w, (size_t)(i * K + k));
}

/* y[m, n] (+)= sum_k x[m, k] · w[n, k] + b[n]: a linear layer, and every convolution's core.
   x has row stride ldx, y row stride ldy; b may be NULL. */
static void matmul(sd_pool *pool, float *y, int ldy, const float *x, int ldx, int M, int N, int K,
                   const sd_tensor *w, const sd_tensor *b, int accumulate)
{
    (void)pool;
    for (int n = 0; n < N; n++) {
        float bias = b ? tensor_get(b, (size_t)n) : 0.0f;
        for (int m = 0; m < M; m++) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++) acc += x[(size_t)m * ldx + k] * tensor_get(w, (size_t)n * K + k);
            y[(size_t)m * ldy + n] = (accumulate ? y[(size_t)m * ldy + n] : 0.0f) + acc + bias;
        }
    }
}

/* y[M, N] = x[M, K] · wᵀ + b for a linear layer with weight [N, K] (or a [N, K, 1, 1] conv). */
static void linear(sd_pool *pool, float *y, const float *x, int M, int N, int K,
                   const sd_tensor *w, const sd_tensor *b)
{
    matmul(pool, y, N, x, K, M, N, K, w, b, 0);
}

/* 2-D convolution, NHWC: x [B, H, W, Cin] → y [B, Ho, Wo, Cout] with w [Cout, Cin, k, k],
   stride s, zero padding `pad` before and `pad_end` after each spatial axis (the VAE encoder's
   downsampler pads (0, 1)). Ho = (H + pad + pad_end - k) / s + 1. */
static void conv2d(sd_pool *pool, float *y, const float *x, int B, int H, int W, int Cin,
                   const sd_tensor *w, const sd_tensor *b, int Cout, int k, int s, int pad, int pad_end)
{
    int Ho = (H + pad + pad_end - k) / s + 1, Wo = (W + pad + pad_end - k) / s + 1;
    (void)pool;
    for (int bi = 0; bi < B; bi++)
        for (int oy = 0; oy < Ho; oy++)
            for (int ox = 0; ox < Wo; ox++)
                for (int co = 0; co < Cout; co++) {
                    float acc = b ? tensor_get(b, (size_t)co) : 0.0f;
                    for (int ky = 0; ky < k; ky++) {
                        int iy = oy * s + ky - pad;
                        if (iy < 0 || iy >= H) continue;
                        for (int kx = 0; kx < k; kx++) {
                            int ix = ox * s + kx - pad;
                            if (ix < 0 || ix >= W) continue;
                            const float *px = x + (((size_t)bi * H + iy) * W + ix) * Cin;
                            for (int ci = 0; ci < Cin; ci++)
                                acc += px[ci] * tensor_get(w, (((size_t)co * Cin + ci) * k + ky) * k + kx);
                        }
                    }
                    y[(((size_t)bi * Ho + oy) * Wo + ox) * Cout + co] = acc;
                }
}

static float silu1(float x) { return x / (1.0f + expf(-x)); }
static float gelu1(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

static void silu(float *x, size_t n) { for (size_t i = 0; i < n; i++) x[i] = silu1(x[i]); }
static void gelu(float *x, size_t n) { for (size_t i = 0; i < n; i++) x[i] = gelu1(x[i]); }
static void quick_gelu(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
}

static void add(float *y, const float *x, size_t n) { for (size_t i = 0; i < n; i++) y[i] += x[i]; }

/* GroupNorm over NHWC: for each batch item, channels split into `groups` contiguous groups,
   each normalised over (H·W, C/groups) with biased variance; then per-channel affine and
   optionally SiLU (the UNet and VAE always follow GroupNorm with SiLU except before attention).
   y may equal x. Statistics in double: a group holds up to 512·512·4 values. */
static void groupnorm(sd_pool *pool, float *y, const float *x, int B, int HW, int C, int groups,
                      const sd_tensor *gamma, const sd_tensor *beta, float eps, int with_silu)
{
    int cg = C / groups;
    (void)pool;
    for (int b = 0; b < B; b++)
        for (int g = 0; g < groups; g++) {
            const float *xb = x + (size_t)b * HW * C + (size_t)g * cg;
            float *yb = y + (size_t)b * HW * C + (size_t)g * cg;
            double sum = 0, sq = 0;
            for (int i = 0; i < HW; i++)
                for (int c = 0; c < cg; c++) sum += xb[(size_t)i * C + c];
            double mean = sum / ((double)HW * cg);
            for (int i = 0; i < HW; i++)
                for (int c = 0; c < cg; c++) { double d = xb[(size_t)i * C + c] - mean; sq += d * d; }
            float rstd = (float)(1.0 / sqrt(sq / ((double)HW * cg) + eps));
            for (int c = 0; c < cg; c++) {
                float ga = tensor_get(gamma, (size_t)(g * cg + c)) * rstd, be = tensor_get(beta, (size_t)(g * cg + c));
                for (int i = 0; i < HW; i++) {
                    float v = (xb[(size_t)i * C + c] - (float)mean) * ga + be;
                    yb[(size_t)i * C + c] = with_silu ? silu1(v) : v;
                }
            }
        }
}

/* LayerNorm over the last axis of x [M, C] (CLIP and the UNet's transformer blocks). y may equal x. */
static void layernorm(float *y, const float *x, int M, int C, const sd_tensor *gamma,
                      const sd_tensor *beta, float eps)
{
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * C;
        float *yr = y + (size_t)m * C;
        double sum = 0, sq = 0;
        for (int c = 0; c < C; c++) sum += xr[c];
        double mean = sum / C;
        for (int c = 0; c < C; c++) sq += (xr[c] - mean) * (xr[c] - mean);
        float rstd = (float)(1.0 / sqrt(sq / C + eps));
        for (int c = 0; c < C; c++)
            yr[c] = (xr[c] - (float)mean) * rstd * tensor_get(gamma, (size_t)c) + tensor_get(beta, (size_t)c);
    }
}

/* GEGLU (the UNet's feed-forward): x [M, 2C] holds the value half then the gate half of the
   projection; y [M, C] = value · gelu(gate). y may equal x (rows are read before written). */
static void geglu(float *y, const float *x, int M, int C)
{
    for (int m = 0; m < M; m++)
        for (int c = 0; c < C; c++) y[(size_t)m * C + c] = x[(size_t)m * 2 * C + c] * gelu1(x[(size_t)m * 2 * C + C + c]);
}

/* Nearest-neighbour 2x upsampling, NHWC: x [B, H, W, C] → y [B, 2H, 2W, C]. */
static void upsample2x(float *y, const float *x, int B, int H, int W, int C)
{
    for (int b = 0; b < B; b++)
        for (int oy = 0; oy < 2 * H; oy++)
            for (int ox = 0; ox < 2 * W; ox++)
                memcpy(y + (((size_t)b * 2 * H + oy) * 2 * W + ox) * C,
                       x + (((size_t)b * H + oy / 2) * W + ox / 2) * C, (size_t)C * sizeof(float));
}

/* Multi-head scaled dot-product attention. For batch item b, head h and query i:
   out[b, i, h·d : h·d+d] = Σ_j softmax_j(q_i · k_j / √d) v_j over keys j < Nk (j ≤ i when causal).
   q, k, v, out are row-major with row strides ldq, ldk, ldv, ldo (so fused q/k/v projections
   can be read in place); rows of batch item b start at b·Nq (queries) and b·Nk (keys/values). */
static void attention(sd_pool *pool, float *out, int ldo, const float *q, int ldq, const float *k,
                      int ldk, const float *v, int ldv, int B, int Nq, int Nk, int heads, int d,
                      int causal)
{
    float scale = 1.0f / sqrtf((float)d), *scratch = pool->scratch[0];
    SD_ASSERT((size_t)Nk <= pool->scratch_floats);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < Nq; i++) {
                const float *qi = q + ((size_t)b * Nq + i) * ldq + h * d;
                float *oi = out + ((size_t)b * Nq + i) * ldo + h * d;
                int n = causal ? (i + 1 < Nk ? i + 1 : Nk) : Nk;
                float mx = -INFINITY, sum = 0.0f;
                for (int j = 0; j < n; j++) {
                    const float *kj = k + ((size_t)b * Nk + j) * ldk + h * d;
                    float s = 0.0f;
                    for (int c = 0; c < d; c++) s += qi[c] * kj[c];
                    scratch[j] = s * scale;
                    if (scratch[j] > mx) mx = scratch[j];
                }
                for (int j = 0; j < n; j++) { scratch[j] = expf(scratch[j] - mx); sum += scratch[j]; }
                for (int c = 0; c < d; c++) oi[c] = 0.0f;
                for (int j = 0; j < n; j++) {
                    const float *vj = v + ((size_t)b * Nk + j) * ldv + h * d;
                    float p = scratch[j] / sum;
                    for (int c = 0; c < d; c++) oi[c] += p * vj[c];
                }
            }
}

/* Sinusoidal embedding of a timestep (UNet time embedding, SDXL size conditioning):
   freq_i = exp(-ln(10000)·i/(dim/2)), out = [cos(t·freq), sin(t·freq)] (flip_sin_to_cos, shift 0),
   computed in float32 as diffusers does. */
static void timestep_embedding(float *out, float t, int dim)
{
    int half = dim / 2;
    for (int i = 0; i < half; i++) {
        float freq = expf(-9.210340371976184f * (float)i / (float)half);
        float arg = t * freq;
        out[i] = cosf(arg);
        out[half + i] = sinf(arg);
    }
}

/* ---- 5. Tokenizer (CLIP BPE) ------------------------------------------------------------- */

/* ---- 6. Text encoder --------------------------------------------------------------------- */
/* CLIP's text transformer (Radford et al. 2021, §2.4: a GPT-2 style pre-LayerNorm transformer)
   turns the 77 token ids of a prompt into 77 vectors that the UNet attends to. SD1 uses OpenAI's
   ViT-L/14 text tower (width 768, 12 layers, 12 heads, quick_gelu) and reads its last layer;
   SD2 uses OpenCLIP's ViT-H/14 tower (width 1024, 24 layers, 16 heads, gelu) and reads the
   penultimate one. Both pass the state they read through the final LayerNorm. One layer is
       x += out_proj(attention(LN1(x)))     causal: a token sees itself and the tokens before it
       x += fc2(act(fc1(LN2(x))))
   Checkpoints store it under two name maps: HF transformers' (SD1 files, every diffusers
   folder) and OpenCLIP's (SD2 files, with q/k/v fused in one in_proj matrix). */

typedef struct sd_clip_layer {
    sd_tensor ln1_w, ln1_b, q_w, q_b, k_w, k_b, v_w, v_b, out_w, out_b;
    sd_tensor ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;
} clip_layer;

/* Where each tensor of layer %d lives under the two name maps, and its shape in terms of the
   width D and the MLP size F (0: a vector). `part` ≥ 0 marks q, k, v: OpenCLIP stores them as
   thirds of in_proj, in that order, which are used in place as row views. */
static const struct clip_tensor_name {
    size_t field;
    char rows, cols;
    int part;
    const char *hf, *openclip;
} clip_layer_names[] = {
    {offsetof(clip_layer, ln1_w), 'D', 0, -1, "encoder.layers.%d.layer_norm1.weight", "transformer.resblocks.%d.ln_1.weight"},
    {offsetof(clip_layer, ln1_b), 'D', 0, -1, "encoder.layers.%d.layer_norm1.bias", "transformer.resblocks.%d.ln_1.bias"},
    {offsetof(clip_layer, q_w), 'D', 'D', 0, "encoder.layers.%d.self_attn.q_proj.weight", "transformer.resblocks.%d.attn.in_proj_weight"},
    {offsetof(clip_layer, q_b), 'D', 0, 0, "encoder.layers.%d.self_attn.q_proj.bias", "transformer.resblocks.%d.attn.in_proj_bias"},
    {offsetof(clip_layer, k_w), 'D', 'D', 1, "encoder.layers.%d.self_attn.k_proj.weight", "transformer.resblocks.%d.attn.in_proj_weight"},
    {offsetof(clip_layer, k_b), 'D', 0, 1, "encoder.layers.%d.self_attn.k_proj.bias", "transformer.resblocks.%d.attn.in_proj_bias"},
    {offsetof(clip_layer, v_w), 'D', 'D', 2, "encoder.layers.%d.self_attn.v_proj.weight", "transformer.resblocks.%d.attn.in_proj_weight"},
    {offsetof(clip_layer, v_b), 'D', 0, 2, "encoder.layers.%d.self_attn.v_proj.bias", "transformer.resblocks.%d.attn.in_proj_bias"},
    {offsetof(clip_layer, out_w), 'D', 'D', -1, "encoder.layers.%d.self_attn.out_proj.weight", "transformer.resblocks.%d.attn.out_proj.weight"},
    {offsetof(clip_layer, out_b), 'D', 0, -1, "encoder.layers.%d.self_attn.out_proj.bias", "transformer.resblocks.%d.attn.out_proj.bias"},
    {offsetof(clip_layer, ln2_w), 'D', 0, -1, "encoder.layers.%d.layer_norm2.weight", "transformer.resblocks.%d.ln_2.weight"},
    {offsetof(clip_layer, ln2_b), 'D', 0, -1, "encoder.layers.%d.layer_norm2.bias", "transformer.resblocks.%d.ln_2.bias"},
    {offsetof(clip_layer, fc1_w), 'F', 'D', -1, "encoder.layers.%d.mlp.fc1.weight", "transformer.resblocks.%d.mlp.c_fc.weight"},
    {offsetof(clip_layer, fc1_b), 'F', 0, -1, "encoder.layers.%d.mlp.fc1.bias", "transformer.resblocks.%d.mlp.c_fc.bias"},
    {offsetof(clip_layer, fc2_w), 'D', 'F', -1, "encoder.layers.%d.mlp.fc2.weight", "transformer.resblocks.%d.mlp.c_proj.weight"},
    {offsetof(clip_layer, fc2_b), 'D', 0, -1, "encoder.layers.%d.mlp.fc2.bias", "transformer.resblocks.%d.mlp.c_proj.bias"},
};

/* The model-level tensors: [0] tokens [vocab, D], [1] positions [positions, D], [2..3] final LN. */
static const char *const clip_top_names[2][4] = {
    {"embeddings.token_embedding.weight", "embeddings.position_embedding.weight", "final_layer_norm.weight", "final_layer_norm.bias"},
    {"token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias"},
};

enum { CLIP_OUT_LAST, CLIP_OUT_PENULTIMATE, CLIP_OUT_PENULTIMATE_NO_LN };

/* Scans the tensor names under w's prefix that start with `stem`: returns how many there are,
   or with count_layers, one more than the highest N of any "<stem>N." (so that a missing tensor
   in the last layer is reported instead of silently dropping the layer). */
static int clip_scan(const weights *w, const char *stem, int count_layers)
{
    char start[256];
    int n = 0;
    snprintf(start, sizeof start, "%s%s", w->prefix ? w->prefix : "", stem);
    size_t len = strlen(start);
    for (int f = 0; f < w->nfiles; f++)
        for (int i = 0; i < w->files[f]->count; i++) {
            const char *s = w->files[f]->tensors[i].name;
            long v = 0;
            if (strncmp(s, start, len)) continue;
            if (!count_layers) { n++; continue; }
            for (s += len; *s >= '0' && *s <= '9' && v < 100000; s++) v = v * 10 + (*s - '0');
            if (*s == '.' && v + 1 > n) n = (int)v + 1;
        }
    return n;
}

/* Metadata value `<ns>.<key>` (ns "sd.clip"; SDXL's second encoder will use "sd.clip2"). */
static const char *clip_meta(const sd_safetensors *meta, const char *ns, const char *key)
{
    char full[128];
    snprintf(full, sizeof full, "%s.%s", ns, key);
    return meta ? sd_safetensors_meta(meta, full) : NULL;
}

/* A positive integer metadata value into *v (left alone when the key is absent). */
static int clip_meta_int(const sd_safetensors *meta, const char *ns, const char *key, int *v, sd_error *err)
{
    const char *s = clip_meta(meta, ns, key), *p;
    long n = 0;
    if (!s) return SD_OK;
    for (p = s; *p >= '0' && *p <= '9' && n < 1000000; p++) n = n * 10 + (*p - '0');
    if (p == s || *p || n < 1 || n >= 1000000)
        return fail(err, SD_ERR_FORMAT, "metadata %s.%s = '%.40s' is not a positive integer", ns, key, s);
    *v = (int)n;
    return SD_OK;
}

/* A decimal like "1e-05" or "0.00001" (metadata layer_norm_eps), without the C locale's say in
   it; 0 when it is not a number in (0, 1). */
static float clip_parse_eps(const char *s)
{
    double m = 0;
    int scale = 0, exp = 0, sign = 1, digits = 0;
    for (; *s >= '0' && *s <= '9'; s++, digits++) m = m * 10 + (*s - '0');
    if (*s == '.') for (s++; *s >= '0' && *s <= '9'; s++, digits++, scale--) m = m * 10 + (*s - '0');
    if (!digits || digits > 30) return 0;
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '-' || *s == '+') sign = *s++ == '-' ? -1 : 1;
        if (*s < '0' || *s > '9') return 0;
        for (; *s >= '0' && *s <= '9' && exp < 100; s++) exp = exp * 10 + (*s - '0');
    }
    if (*s) return 0;
    for (scale += sign * exp; scale < 0; scale++) m /= 10;
    for (; scale > 0; scale--) m *= 10;
    return m > 0 && m < 1 ? (float)m : 0;
}

/* Describes the text encoder that w (files + prefix) holds; which name map applies is told by the
   names present, since SD1 single files and diffusers folders share HF's. What shapes cannot tell comes from
   `meta` under namespace ns (heads, hidden_act, output, layer_norm_eps), else from the family:
   OpenCLIP towers (SD2's ViT-H; width >= 1024 also when converted to HF names) use gelu, OpenAI's
   ViT-L quick_gelu; both have 64-wide heads. SD2 reads the penultimate layer, except in HF names:
   diffusers' converted SD2 encoder has 23 of the 24 layers, so its last is SD2's penultimate.
   The lead's model loader calls this with the weights of the checkpoint it opened. */
static int text_encoder_init(sd_text_encoder *te, weights *w, const sd_safetensors *meta,
                             const char *ns, sd_arena *a)
{
    sd_error *err = w->err;
    size_t mark = sd_arena_mark(a);
    int rc = SD_OK, oc = clip_scan(w, "transformer.resblocks.", 0) || weights_find(w, clip_top_names[1][0]);   /* OpenCLIP names? */
    const char *const *top = clip_top_names[oc];
    const char *version = meta ? sd_safetensors_meta(meta, "sd.version") : NULL, *s;
    const sd_tensor *t;
    const struct clip_tensor_name *fc1 = &clip_layer_names[12];   /* gives the MLP size */
    int64_t D, F;
    int openclip, output, heads = 0, head_dim = 64, layers;
    char name[256];

    memset(te, 0, sizeof *te);
    if (w->failed) return w->failed;
    /* sizes: vocab and width from the token table, positions, MLP size from layer 0, layer count */
    if (!(t = need(w, -1, -1, 0, 0, "%s", top[0]))) goto missing;
    te->token_embedding = *t;
    D = t->shape[1];
    if (t->shape[0] < 1 || t->shape[0] > (1 << 24) || D < 1 || D > (1 << 16)) {
        rc = fail(err, SD_ERR_UNSUPPORTED, "tensor '%s' has shape [%lld, %lld]: vocabulary or width out of range", t->name, (long long)t->shape[0], (long long)D);
        goto bad;
    }
    te->vocab = (int)t->shape[0];
    te->width = (int)D;
    if (!(t = need(w, -1, D, 0, 0, "%s", top[1]))) goto missing;
    te->position_embedding = *t;
    if (t->shape[0] < SD_TEXT_TOKENS) {
        rc = fail(err, SD_ERR_SHAPE, "tensor '%s' has %lld positions; prompts have %d tokens", t->name, (long long)t->shape[0], SD_TEXT_TOKENS);
        goto bad;
    }
    te->positions = t->shape[0] > (1 << 20) ? 1 << 20 : (int)t->shape[0];
    SD_ASSERT(fc1->field == offsetof(clip_layer, fc1_w));
    snprintf(name, sizeof name, oc ? fc1->openclip : fc1->hf, 0);
    if (!(t = need(w, -1, D, 0, 0, "%s", name))) goto missing;
    F = t->shape[0];
    if (F < 1 || F > (1 << 18)) { rc = fail(err, SD_ERR_UNSUPPORTED, "tensor '%s': MLP size %lld out of range", t->name, (long long)F); goto bad; }
    te->mlp = (int)F;
    te->layers = clip_scan(w, oc ? "transformer.resblocks." : "encoder.layers.", 1);
    if (te->layers > 1000) { rc = fail(err, SD_ERR_UNSUPPORTED, "text encoder with %d layers", te->layers); goto bad; }

    /* every layer through the name map */
    te->layer = (clip_layer *)arena_array(a, (size_t)te->layers, sizeof(clip_layer), err);
    if (!te->layer) { rc = SD_ERR_MEMORY; goto bad; }
    for (int l = 0; l < te->layers && !w->failed; l++)
        for (size_t i = 0; i < sizeof clip_layer_names / sizeof clip_layer_names[0] && !w->failed; i++) {
            const struct clip_tensor_name *m = &clip_layer_names[i];
            int64_t rows = m->rows == 'F' ? F : D, cols = m->cols == 'F' ? F : m->cols ? D : 0;
            int fused = oc && m->part >= 0;
            sd_tensor *dst = (sd_tensor *)((char *)&te->layer[l] + m->field);
            snprintf(name, sizeof name, oc ? m->openclip : m->hf, l);
            t = need(w, fused ? 3 * rows : rows, cols, 0, 0, "%s", name);
            if (t && !w->failed) *dst = fused ? tensor_rows(t, m->part * rows, rows) : *t;
        }
    if (!w->failed && (t = need(w, D, 0, 0, 0, "%s", top[2]))) te->final_ln_w = *t;
    if (!w->failed && (t = need(w, D, 0, 0, 0, "%s", top[3]))) te->final_ln_b = *t;
    if (w->failed) goto missing;

    /* what shapes cannot tell: family defaults, then the metadata */
    openclip = oc || te->width >= 1024;
    layers = te->layers;
    if (version && !strcmp(version, "1")) openclip = 0;
    if (version && !strcmp(version, "2")) openclip = 1;
    te->gelu = openclip;
    output = version && !strcmp(version, "xl") ? CLIP_OUT_PENULTIMATE_NO_LN
           : openclip && oc ? CLIP_OUT_PENULTIMATE : CLIP_OUT_LAST;
    te->eps = 1e-5f;
    if ((rc = clip_meta_int(meta, ns, "heads", &heads, err)) || (rc = clip_meta_int(meta, ns, "head_dim", &head_dim, err)) ||
        (rc = clip_meta_int(meta, ns, "layers", &layers, err))) goto bad;
    if ((s = clip_meta(meta, ns, "hidden_act"))) {
        if (!strcmp(s, "gelu")) te->gelu = 1;
        else if (!strcmp(s, "quick_gelu")) te->gelu = 0;
        else { rc = fail(err, SD_ERR_UNSUPPORTED, "metadata %s.hidden_act = '%.40s': sd.h knows gelu and quick_gelu", ns, s); goto bad; }
    }
    if ((s = clip_meta(meta, ns, "output"))) {
        if (!strcmp(s, "last")) output = CLIP_OUT_LAST;
        else if (!strcmp(s, "penultimate")) output = CLIP_OUT_PENULTIMATE;
        else if (!strcmp(s, "penultimate_no_final_ln")) output = CLIP_OUT_PENULTIMATE_NO_LN;
        else { rc = fail(err, SD_ERR_UNSUPPORTED, "metadata %s.output = '%.40s': sd.h knows last, penultimate, penultimate_no_final_ln", ns, s); goto bad; }
    }
    if ((s = clip_meta(meta, ns, "layer_norm_eps")) && !(te->eps = clip_parse_eps(s))) {
        rc = fail(err, SD_ERR_FORMAT, "metadata %s.layer_norm_eps = '%.40s' is not a small positive number", ns, s);
        goto bad;
    }
    if (layers != te->layers) { rc = fail(err, SD_ERR_SHAPE, "metadata %s.layers = %d but the checkpoint has %d text encoder layers", ns, layers, te->layers); goto bad; }
    if (!heads && te->width % head_dim) {
        rc = fail(err, SD_ERR_SHAPE, "text encoder width %d is not a multiple of the head size %d (metadata %s.heads would say how many heads)", te->width, head_dim, ns);
        goto bad;
    }
    te->heads = heads ? heads : te->width / head_dim;
    if (te->heads < 1 || te->width % te->heads) { rc = fail(err, SD_ERR_SHAPE, "text encoder width %d does not split into %d heads", te->width, te->heads); goto bad; }
    te->output_layer = output == CLIP_OUT_LAST ? te->layers : te->layers - 1;
    te->output_final_ln = output != CLIP_OUT_PENULTIMATE_NO_LN;
    if (te->output_layer < 1) { rc = fail(err, SD_ERR_UNSUPPORTED, "the text encoder's output is its penultimate layer but it has %d layer", te->layers); goto bad; }
    return SD_OK;
missing:
    rc = w->failed;
bad:
    sd_arena_reset(a, mark);
    memset(te, 0, sizeof *te);
    return rc;
}

SD_API int sd_text_encoder_load(sd_text_encoder *te, const sd_safetensors *files, int nfiles,
                                const sd_safetensors *meta, sd_arena *a, sd_error *err)
{
    /* where the text encoder sits: SD1 single file (HF names), SD2 single file (OpenCLIP names),
       diffusers text_encoder/model.safetensors */
    static const char *const prefixes[] = {"cond_stage_model.transformer.text_model.", "cond_stage_model.model.", "text_model."};
    weights w;
    const char *version;
    if (!te || !files || nfiles < 1 || nfiles > 4 || !a) return fail(err, SD_ERR_ARG, "sd_text_encoder_load: NULL argument or nfiles = %d not in 1..4", nfiles);
    memset(te, 0, sizeof *te);
    memset(&w, 0, sizeof w);
    for (int i = 0; i < nfiles; i++) w.files[i] = &files[i];
    w.nfiles = nfiles;
    w.err = err;
    if (!meta) meta = &files[0];
    version = sd_safetensors_meta(meta, "sd.version");
    if (version && strcmp(version, "1") && strcmp(version, "2"))
        return fail(err, SD_ERR_UNSUPPORTED, "text encoder of a model with sd.version = '%.20s': sd.h handles SD1 and SD2", version);
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        w.prefix = prefixes[i];
        if (clip_scan(&w, "", 0)) return text_encoder_init(te, &w, meta, "sd.clip", a);
    }
    return fail(err, SD_ERR_MISSING, "no text encoder: no tensor named '%s*', '%s*' or '%s*'", prefixes[0], prefixes[1], prefixes[2]);
}

/* One aligned arena piece of n floats, as sd_arena_alloc rounds it. */
static size_t clip_piece(size_t floats)
{
    return (floats * sizeof(float) + SD_ALIGN - 1) & ~(size_t)(SD_ALIGN - 1);
}

SD_API size_t sd_text_encoder_arena_bytes(const sd_text_encoder *te, int n_prompts)
{
    if (!te || !te->layer || n_prompts < 1 || n_prompts > (1 << 16)) return (size_t)-1;
    size_t rows = (size_t)n_prompts * SD_TEXT_TOKENS, big = te->width > te->mlp ? (size_t)te->width : (size_t)te->mlp;
    if (rows > (size_t)-1 / 16 / big) return (size_t)-1;
    /* h, q, k, v [rows, width] and the MLP's hidden layer [rows, mlp]; the residual stream is `out` */
    return 4 * clip_piece(rows * (size_t)te->width) + clip_piece(rows * (size_t)te->mlp);
}

/* One transformer layer on the residual stream x [B·77, D]; h, q, k, v [B·77, D] and
   mlp [B·77, F] are scratch. */
static void clip_layer_forward(const sd_text_encoder *te, const clip_layer *L, float *x, int B,
                               float *h, float *q, float *k, float *v, float *mlp, sd_pool *pool)
{
    int M = B * SD_TEXT_TOKENS, D = te->width, F = te->mlp;
    /* causal self-attention */
    layernorm(h, x, M, D, &L->ln1_w, &L->ln1_b, te->eps);
    linear(pool, q, h, M, D, D, &L->q_w, &L->q_b);
    linear(pool, k, h, M, D, D, &L->k_w, &L->k_b);
    linear(pool, v, h, M, D, D, &L->v_w, &L->v_b);
    attention(pool, h, D, q, D, k, D, v, D, B, SD_TEXT_TOKENS, SD_TEXT_TOKENS, te->heads, D / te->heads, 1);
    linear(pool, q, h, M, D, D, &L->out_w, &L->out_b);
    add(x, q, (size_t)M * D);
    /* MLP */
    layernorm(h, x, M, D, &L->ln2_w, &L->ln2_b, te->eps);
    linear(pool, mlp, h, M, F, D, &L->fc1_w, &L->fc1_b);
    if (te->gelu) gelu(mlp, (size_t)M * F);
    else quick_gelu(mlp, (size_t)M * F);
    linear(pool, h, mlp, M, D, F, &L->fc2_w, &L->fc2_b);
    add(x, h, (size_t)M * D);
}

SD_API int sd_text_encoder_hidden(const sd_text_encoder *te, const int32_t *ids, int n_prompts,
                                  int layer, int final_ln, float *out, sd_pool *pool,
                                  sd_arena *a, sd_error *err)
{
    if (!te || !te->layer || !ids || !out || !pool || !a) return fail(err, SD_ERR_ARG, "text encoder: NULL argument (or encoder not loaded)");
    if (n_prompts < 1 || n_prompts > (1 << 16)) return fail(err, SD_ERR_ARG, "text encoder: n_prompts = %d not in 1..65536", n_prompts);
    if (layer < 0 || layer > te->layers) return fail(err, SD_ERR_ARG, "text encoder: layer %d not in 0..%d", layer, te->layers);
    for (int i = 0; i < n_prompts * SD_TEXT_TOKENS; i++)
        if (ids[i] < 0 || ids[i] >= te->vocab)
            return fail(err, SD_ERR_ARG, "text encoder: token id %ld at prompt %d, position %d is outside the vocabulary (0..%d)",
                        (long)ids[i], i / SD_TEXT_TOKENS, i % SD_TEXT_TOKENS, te->vocab - 1);
    int M = n_prompts * SD_TEXT_TOKENS, D = te->width;
    size_t mark = sd_arena_mark(a);
    float *h = arena_floats(a, (size_t)M * D, err), *q = h ? arena_floats(a, (size_t)M * D, err) : NULL;
    float *k = q ? arena_floats(a, (size_t)M * D, err) : NULL, *v = k ? arena_floats(a, (size_t)M * D, err) : NULL;
    float *mlp = v ? arena_floats(a, (size_t)M * te->mlp, err) : NULL;
    if (!mlp) { sd_arena_reset(a, mark); return SD_ERR_MEMORY; }

    /* token embedding + learned position embedding (positions 0..76, whatever position_ids say) */
    for (int i = 0; i < M; i++) {
        float *x = out + (size_t)i * D;
        weight_row(&te->token_embedding, ids[i], D, x);
        for (int c = 0; c < D; c++) x[c] += tensor_get(&te->position_embedding, (size_t)(i % SD_TEXT_TOKENS) * D + c);
    }
    for (int l = 0; l < layer; l++) clip_layer_forward(te, &te->layer[l], out, n_prompts, h, q, k, v, mlp, pool);
    if (final_ln) layernorm(out, out, M, D, &te->final_ln_w, &te->final_ln_b, te->eps);
    sd_arena_reset(a, mark);
    return SD_OK;
}

SD_API int sd_text_encode(const sd_text_encoder *te, const int32_t *ids, int n_prompts, int clip_skip,
                          float *out, sd_pool *pool, sd_arena *a, sd_error *err)
{
    if (!te || !te->layer) return fail(err, SD_ERR_ARG, "sd_text_encode: encoder not loaded");
    int layer = te->output_layer - (clip_skip > 1 ? clip_skip - 1 : 0);
    if (clip_skip < 0 || layer < 1)
        return fail(err, SD_ERR_ARG, "sd_text_encode: clip_skip %d not in 0..%d (the output is layer %d of %d)", clip_skip,
                    te->output_layer, te->output_layer, te->layers);
    return sd_text_encoder_hidden(te, ids, n_prompts, layer, te->output_final_ln, out, pool, a, err);
}


/* ---- 7. UNet ----------------------------------------------------------------------------- */

/* ---- 8. VAE ------------------------------------------------------------------------------ */

/* ---- 9. Samplers ---------------------------------------------------------------------------- */
/* Diffusion adds Gaussian noise over T training steps: x_t = sqrt(a_t)·x_0 + sqrt(1 - a_t)·noise,
   with a_t the cumulative product of (1 - beta) (Ho et al. 2020, eq. 4). A sampler walks back
   from pure noise over a few of those timesteps, asking the UNet at each one what the noise is.
   The tables are computed in float32 the way PyTorch computes diffusers' (they come out bit for
   bit); the sampler steps follow diffusers' schedulers, which define SD's behaviour. */

/* Random numbers: initial noise exactly as PyTorch draws it on the CPU, so that a seed gives the image diffusers
   gives. The generator is the 32-bit Mersenne Twister (Matsumoto & Nishimura 1998), seeded with
   the low 32 bits of the seed. torch.randn then takes one of two roads:
   - 16 elements or more (every latent): one float uniform per element, then Box–Muller on blocks
     of 16 (elements j and j+8 of a block form a pair). A length that is not a multiple of 16 gets
     its last 16 elements drawn again and transformed again. On x86-64 (AVX2) PyTorch evaluates
     log, sin and cos there with the single-precision Cephes polynomials of avx_mathfun.h, built
     with fused multiply-adds; the functions below repeat those operations one by one, which is
     what makes the numbers bit-exact. (PyTorch builds without AVX2, on ARM for one, use libm's
     logf/sinf/cosf there instead, so their noise differs slightly from this.)
   - fewer than 16: Box–Muller in double precision on 53-bit uniforms, one normal per element;
     each pair's second value is kept in the generator for the next short draw.
   All float arithmetic here must be IEEE single precision (SSE or NEON, not x87; no -ffast-math). */

#define MT_N 624
#define MT_M 397

SD_API void sd_rng_seed(sd_rng *r, uint64_t seed)
{
    r->mt[0] = (uint32_t)seed;   /* torch keeps only the low 32 bits: 2^32 + 7 seeds like 7 */
    for (int i = 1; i < MT_N; i++)
        r->mt[i] = 1812433253u * (r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) + (uint32_t)i;
    r->next = MT_N;
    r->has_spare = 0;
    r->spare = 0;
}

/* The next 32-bit word of mt19937: regenerate the whole state every 624 words, then temper. */
static uint32_t mt_next(sd_rng *r)
{
    if ((unsigned)r->next >= MT_N) {
        for (int i = 0; i < MT_N; i++) {
            uint32_t y = (r->mt[i] & 0x80000000u) | (r->mt[(i + 1) % MT_N] & 0x7fffffffu);
            r->mt[i] = r->mt[(i + MT_M) % MT_N] ^ (y >> 1) ^ (y & 1 ? 0x9908b0dfu : 0);
        }
        r->next = 0;
    }
    uint32_t y = r->mt[r->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    return y ^ (y >> 18);
}

/* torch's float uniform in [0, 1): the low 24 bits of one word times 2^-24. */
static float uniform_float(sd_rng *r)
{
    return (float)(mt_next(r) & 0xffffff) * (1.0f / 16777216.0f);
}

/* torch's double uniform in [0, 1): the low 53 bits of two words (the first one high) times 2^-53. */
static double uniform_double(sd_rng *r)
{
    uint64_t hi = mt_next(r);
    uint64_t v = hi << 32 | mt_next(r);
    return (double)(v & ((UINT64_C(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

/* One N(0, 1) value of the short-tensor road: Box–Muller in double, keeping the pair's sine. */
static double normal_double(sd_rng *r)
{
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    double u1 = uniform_double(r), u2 = uniform_double(r);
    double radius = sqrt(-2.0 * log(1.0 - u2)), theta = 2.0 * 3.14159265358979323846 * u1;
    r->spare = radius * sin(theta);
    r->has_spare = 1;
    return radius * cos(theta);
}

static float float_from_bits(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }
static uint32_t bits_from_float(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }

/* Natural log of a positive normal float, Cephes style: x = m·2^e with m in [sqrt(1/2), sqrt(2)),
   log m from a polynomial in m - 1 (which the code keeps in m), plus e·ln 2 in two parts. */
static float cephes_logf(float x)
{
    static const float p[9] = { 7.0376836292e-2f, -1.1514610310e-1f, 1.1676998740e-1f,
                                -1.2420140846e-1f, 1.4249322787e-1f, -1.6668057665e-1f,
                                2.0000714765e-1f, -2.4999993993e-1f, 3.3333331174e-1f };
    uint32_t b = bits_from_float(x);
    float e = (float)((int)(b >> 23) - 127) + 1.0f;
    float m = float_from_bits((b & 0x807fffffu) | 0x3f000000u);   /* mantissa in [0.5, 1) */
    if (m < 0.707106781186547524f) { e -= 1.0f; m = m - 1.0f + m; }
    else m = m - 1.0f;
    float z = m * m, y = p[0];
    for (int i = 1; i < 9; i++) y = fmaf(y, m, p[i]);
    y = y * m;
    y = fmaf(y, z, e * -2.12194440e-4f);
    y = y - z * 0.5f;
    return fmaf(e, 0.693359375f, m + y);
}

/* sin and cos of x >= 0 at once, Cephes style: reduce by multiples of pi/4 in three parts, then
   the sine or cosine polynomial on [-pi/4, pi/4] depending on the octant, with the signs fixed up. */
static void cephes_sincosf(float x, float *sin_out, float *cos_out)
{
    int j = ((int)(x * 1.27323954473516f) + 1) & ~1;   /* nearest even multiple of pi/4 */
    float y = (float)j;
    uint32_t sin_sign = (uint32_t)(j & 4) << 29, cos_sign = (uint32_t)(~(j - 2) & 4) << 29;
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    float z = x * x;
    float c = fmaf(2.443315711809948e-5f, z, -1.388731625493765e-3f);
    c = fmaf(c, z, 4.166664568298827e-2f);
    c = c * z;
    c = fmaf(c, z, -(z * 0.5f)) + 1.0f;
    float s = fmaf(-1.9515295891e-4f, z, 8.3321608736e-3f);
    s = fmaf(s, z, -1.6666654611e-1f);
    s = s * z;
    s = fmaf(s, x, x);
    /* Odd octant pairs swap the polynomials. The vector code selects by masking and adds the
       other lane's +0, which turns a -0 into +0; so does the `+ 0.0f` here. */
    float sin_v = ((j & 2) ? c : s) + 0.0f, cos_v = ((j & 2) ? s : c) + 0.0f;
    *sin_out = float_from_bits(bits_from_float(sin_v) ^ sin_sign);
    *cos_out = float_from_bits(bits_from_float(cos_v) ^ cos_sign);
}

/* Box–Muller on a block of 16 uniforms: u[j] gives the radius and u[j+8] the angle of pair j. */
static void box_muller16(float *u)
{
    const float two_pi = (float)(2.0 * 3.14159265358979323846);
    for (int j = 0; j < 8; j++) {
        float radius = sqrtf(-2.0f * cephes_logf(1.0f - u[j])), s, c;
        cephes_sincosf(two_pi * u[j + 8], &s, &c);
        u[j] = radius * c;
        u[j + 8] = radius * s;
    }
}

SD_API void sd_randn(sd_rng *r, float *out, size_t n)
{
    if (n < 16) {
        for (size_t i = 0; i < n; i++) out[i] = (float)normal_double(r);
        return;
    }
    for (size_t i = 0; i < n; i++) out[i] = uniform_float(r);
    for (size_t i = 0; i + 16 <= n; i += 16) box_muller16(out + i);
    if (n % 16) {
        for (size_t i = n - 16; i < n; i++) out[i] = uniform_float(r);
        box_muller16(out + n - 16);
    }
}

SD_API void sd_rand(sd_rng *r, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++) out[i] = uniform_float(r);
}


/* torch.linspace(a, b, n) in float32 as PyTorch's x86 CPU kernel computes it: the first half
   counts up from a and the second half down from b, each point a fused multiply-add. Vectors of
   8 points, two per loop pass, step on from their first point; what is left after the last pass
   goes point by point. */
static float linspace_point(float a, float b, float step, int n, int i)
{
    return i < n / 2 ? fmaf(step, (float)i, a) : fmaf(-step, (float)(n - 1 - i), b);
}

static void torch_linspace(float a, float b, int n, float *out)
{
    float step = n > 1 ? (b - a) / (float)(n - 1) : 0.0f;
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int v = i; v < i + 16; v += 8) {
            float first = linspace_point(a, b, step, n, v);
            for (int j = 0; j < 8; j++) out[v + j] = first + (float)j * step;
        }
    for (; i < n; i++) out[i] = linspace_point(a, b, step, n, i);
}

SD_API int sd_schedule_init(sd_schedule *s, int num_train_timesteps, double beta_start,
                            double beta_end, int beta_schedule, sd_error *err)
{
    int T = num_train_timesteps;
    if (!s) return fail(err, SD_ERR_ARG, "schedule: NULL argument");
    if (T < 1 || T > SD_MAX_TRAIN_TIMESTEPS)
        return fail(err, SD_ERR_ARG, "schedule: %d training timesteps, expected 1..%d", T, SD_MAX_TRAIN_TIMESTEPS);
    if (!(beta_start > 0 && beta_start <= beta_end && beta_end < 1))
        return fail(err, SD_ERR_ARG, "schedule: betas %g..%g, expected 0 < start <= end < 1", beta_start, beta_end);
    s->num_train_timesteps = T;
    if (beta_schedule == SD_BETA_SCALED_LINEAR) {   /* linear in sqrt(beta): SD's schedule */
        torch_linspace((float)sqrt(beta_start), (float)sqrt(beta_end), T, s->betas);
        for (int t = 0; t < T; t++) s->betas[t] *= s->betas[t];
    } else if (beta_schedule == SD_BETA_LINEAR) {
        torch_linspace((float)beta_start, (float)beta_end, T, s->betas);
    } else {
        return fail(err, SD_ERR_ARG, "schedule: unknown beta schedule %d", beta_schedule);
    }
    double a = 1;   /* torch.cumprod on the CPU accumulates float32 in double */
    for (int t = 0; t < T; t++) {
        a *= 1.0f - s->betas[t];
        s->alphas_cumprod[t] = (float)a;
        s->sigmas[t] = sqrtf((1.0f - s->alphas_cumprod[t]) / s->alphas_cumprod[t]);
    }
    for (int t = T; t < SD_MAX_TRAIN_TIMESTEPS; t++) s->betas[t] = s->alphas_cumprod[t] = s->sigmas[t] = 0;
    s->final_alpha_cumprod = s->alphas_cumprod[0];
    return SD_OK;
}

SD_API int sd_ddim_timesteps(const sd_schedule *s, int steps, int spacing, int steps_offset,
                             int *out, sd_error *err)
{
    if (!s || !out) return fail(err, SD_ERR_ARG, "ddim timesteps: NULL argument");
    int T = s->num_train_timesteps;
    if (steps < 1 || steps > T)
        return fail(err, SD_ERR_ARG, "ddim timesteps: %d steps, expected 1..%d", steps, T);
    for (int i = 0; i < steps; i++) {
        double t;
        if (spacing == SD_SPACING_LEADING) {          /* every T/steps-th, counted from 0, shifted */
            t = (double)(steps - 1 - i) * (T / steps) + steps_offset;
        } else if (spacing == SD_SPACING_TRAILING) {  /* counted back from T: numpy arange(T, 0, -T/steps) - 1 */
            /* (for 62 step counts, 61 the first, numpy's rounding adds a 62nd timestep, -1, which
               diffusers would then use; only the first `steps` are meant) */
            double delta = ((double)T - (double)T / steps) - T;
            t = nearbyint(T + i * delta) - 1;
        } else if (spacing == SD_SPACING_LINSPACE) {  /* numpy linspace(0, T-1, steps), rounded, reversed */
            int k = steps - 1 - i;
            t = steps == 1 ? 0 : k == steps - 1 ? T - 1 : nearbyint(k * ((double)(T - 1) / (steps - 1)));
        } else {
            return fail(err, SD_ERR_ARG, "ddim timesteps: unknown spacing %d", spacing);
        }
        if (t < 0 || t >= T)
            return fail(err, SD_ERR_ARG, "ddim timesteps: timestep %.0f of %d steps (steps_offset %d) is outside 0..%d",
                        t, steps, steps_offset, T - 1);
        out[i] = (int)t;
    }
    return SD_OK;
}

SD_API int sd_ddim_prev_timestep(const sd_schedule *s, int t, int steps)
{
    return s && steps > 0 ? t - s->num_train_timesteps / steps : -1;
}

SD_API int sd_ddim_step(const sd_schedule *s, int t, int t_prev, int prediction, float eta,
                        const float *x, const float *model_out, size_t n,
                        const float *noise, sd_rng *rng,
                        float *prev_out, float *x0_out, sd_error *err)
{
    if (!s || !x || !model_out || !prev_out) return fail(err, SD_ERR_ARG, "ddim step: NULL argument");
    if (t < 0 || t >= s->num_train_timesteps || t_prev >= t)
        return fail(err, SD_ERR_ARG, "ddim step: from timestep %d to %d, expected to < from and 0 <= from < %d",
                    t, t_prev, s->num_train_timesteps);
    if (prediction != SD_PREDICT_EPSILON && prediction != SD_PREDICT_V)
        return fail(err, SD_ERR_ARG, "ddim step: unknown prediction type %d", prediction);
    if (!(eta >= 0 && isfinite(eta))) return fail(err, SD_ERR_ARG, "ddim step: eta %g, expected >= 0", eta);
    if (eta > 0 && !noise && !rng) return fail(err, SD_ERR_ARG, "ddim step: eta %g needs noise or a generator", eta);
    if (eta > 0 && !noise && (prev_out == x || prev_out == model_out))
        return fail(err, SD_ERR_ARG, "ddim step: drawing noise into prev_out would overwrite its input");

    float a_t = s->alphas_cumprod[t], b_t = 1.0f - a_t;
    float a_prev = t_prev >= 0 ? s->alphas_cumprod[t_prev] : s->final_alpha_cumprod, b_prev = 1.0f - a_prev;
    float sa = sqrtf(a_t), sb = sqrtf(b_t), sa_prev = sqrtf(a_prev);
    /* sigma_t of eq. 16: eta = 1 is DDPM's posterior noise, 0 none */
    float sigma = eta * sqrtf((b_prev / b_t) * (1.0f - a_t / a_prev));
    float direction = sqrtf(1.0f - a_prev - sigma * sigma);   /* weight of the noise pointing to x_t */
    if (eta > 0 && !noise) {
        sd_randn(rng, prev_out, n);
        noise = prev_out;
    }
    for (size_t i = 0; i < n; i++) {
        float x0, eps;
        if (prediction == SD_PREDICT_EPSILON) {
            eps = model_out[i];
            x0 = (x[i] - sb * eps) / sa;
        } else {
            x0 = sa * x[i] - sb * model_out[i];
            eps = sa * model_out[i] + sb * x[i];
        }
        float prev = sa_prev * x0 + direction * eps;
        if (eta > 0) prev += sigma * noise[i];
        if (x0_out) x0_out[i] = x0;
        prev_out[i] = prev;
    }
    return SD_OK;
}

SD_API int sd_img2img_start(int steps, double strength, int *start, sd_error *err)
{
    if (!start) return fail(err, SD_ERR_ARG, "img2img: NULL argument");
    if (steps < 1) return fail(err, SD_ERR_ARG, "img2img: %d steps, expected at least 1", steps);
    if (!(strength >= 0 && strength <= 1)) return fail(err, SD_ERR_ARG, "img2img: strength %g is outside [0, 1]", strength);
    int kept = (int)(steps * strength);   /* Python's int() truncates */
    if (kept < 1) return fail(err, SD_ERR_ARG, "img2img: strength %g keeps none of the %d steps", strength, steps);
    *start = steps - kept;
    return SD_OK;
}

SD_API int sd_add_noise(const sd_schedule *s, int t, const float *x0, const float *noise,
                        size_t n, float *out, sd_error *err)
{
    if (!s || !x0 || !noise || !out) return fail(err, SD_ERR_ARG, "add noise: NULL argument");
    if (t < 0 || t >= s->num_train_timesteps)
        return fail(err, SD_ERR_ARG, "add noise: timestep %d is outside 0..%d", t, s->num_train_timesteps - 1);
    float sa = sqrtf(s->alphas_cumprod[t]), sb = sqrtf(1.0f - s->alphas_cumprod[t]);
    for (size_t i = 0; i < n; i++) out[i] = sa * x0[i] + sb * noise[i];
    return SD_OK;
}

SD_API void sd_guidance(const float *uncond, const float *cond, float scale, size_t n, float *out)
{
    for (size_t i = 0; i < n; i++) out[i] = uncond[i] + scale * (cond[i] - uncond[i]);
}

/* ---- 10. Pipeline ------------------------------------------------------------------------ */

#endif /* SD_IMPLEMENTATION_DONE */
#endif /* SD_IMPLEMENTATION */

/*
MIT License

Copyright (c) 2026 the sd.h authors

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT
OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
*/
