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

/* The denoiser: opaque, lives in the arena it was loaded into. */
typedef struct sd_unet_model sd_unet_model;

/* Finds the denoiser of an SD1.x / SD2.x checkpoint in `files` (a single-file checkpoint,
   `model.diffusion_model.*`, or diffusers' unet/diffusion_pytorch_model.safetensors) and
   describes it: channels, levels, resnets per level, attention levels and transformer depth
   from the tensors; attention heads from `meta`'s sd.unet.num_heads / sd.unet.num_head_channels
   (meta NULL: files[0]), else SD1's 8 heads or SD2's 64-wide heads. The description takes a few
   KB of the arena; the files must stay open while the model is used. */
SD_API int sd_unet_load(sd_unet_model **unet, const sd_safetensors *files, int nfiles,
                        const sd_safetensors *meta, sd_arena *a, sd_error *err);

/* Exact arena bytes that sd_unet takes for `batch` latents of h x w (the thread pool is set up
   separately). SIZE_MAX if it cannot be met. */
SD_API size_t sd_unet_arena_bytes(const sd_unet_model *unet, int batch, int h, int w);

/* One denoiser evaluation of a batch (batch 2: classifier-free guidance's unconditional and
   conditional halves in one pass). x [batch, 4, h, w] latents (NCHW), timesteps [batch] (may be
   fractional), context [batch, 77, context_dim] (the text encoder's output); out [batch, 4, h, w]
   gets the prediction (epsilon, or v for v-prediction models). Any h, w: odd sizes are rounded
   up on the way down and come back as diffusers brings them back. The arena is scratch only. */
SD_API int sd_unet(const sd_unet_model *unet, const float *x, const float *timesteps,
                   const float *context, int batch, int h, int w, float *out,
                   sd_pool *pool, sd_arena *a, sd_error *err);

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
    a->used = a->peak = 0;
    if (!memory || skip >= size) {   /* no usable memory: every allocation will fail cleanly */
        a->base = (unsigned char *)memory;
        a->size = 0;
        return;
    }
    a->base = (unsigned char *)memory + skip;
    a->size = size - skip;
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
/* API: none. Everything here is internal (static): the thread pool, GEMM, conv2d, attention,
   norms and activations that the model sections call.

   Activations are float32 and channels-last (NHWC): a [B, H, W, C] image is a [B·H·W, C] matrix,
   so 1x1 convolutions and linear layers are one GEMM, and the transformer blocks of the UNet
   work on the same buffer without transposes. Weights keep PyTorch's layout ([out, in, kh, kw]),
   in whatever float type the file has; kernels convert them as they go (while packing a block
   of the weight into per-thread scratch, never the whole tensor).

   SIMD is chosen at compile time from the compiler's target macros: AVX-512F, AVX2+FMA (with
   F16C for half weights), NEON on aarch64, SSE2 (any x86-64 build without -m flags), else plain
   C (also forced by SD_NO_SIMD). All of it is written once against a tiny vector layer
   (vfloat, vf_*), so every kernel has one body; only the vector layer is per-ISA.

   Determinism: every output element is computed by exactly one task, along a summation order
   that depends only on the shapes (never on the thread count or the task split), so results
   are bit-identical for any number of threads. */

#if !defined(SD_NO_SIMD) && defined(__AVX512F__)
#define SD_SIMD "avx512"
#elif !defined(SD_NO_SIMD) && defined(__AVX2__) && defined(__FMA__)
#define SD_SIMD "avx2"
#elif !defined(SD_NO_SIMD) && defined(__aarch64__) && defined(__ARM_NEON)
#define SD_SIMD "neon"
#elif !defined(SD_NO_SIMD) && defined(__SSE2__)
#define SD_SIMD "sse2"
#else
#define SD_SIMD "c"
#endif

/* The vector layer: vfloat holds VF_WIDTH floats. GEMM_MR is the micro-kernel's row count
   (GEMM_MR x 2 vectors of accumulators fill most of the register file). */
#if defined(__AVX512F__) && !defined(SD_NO_SIMD)
#include <immintrin.h>
#define VF_WIDTH 16
#define GEMM_MR 12
#define VF_HAS_F16 1
#define VF_HAS_BF16 1
typedef __m512 vfloat;
static inline vfloat vf_zero(void) { return _mm512_setzero_ps(); }
static inline vfloat vf_set1(float x) { return _mm512_set1_ps(x); }
static inline vfloat vf_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void vf_store(float *p, vfloat v) { _mm512_storeu_ps(p, v); }
static inline vfloat vf_load_n(const float *p, int n) { return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p); }
static inline void vf_store_n(float *p, vfloat v, int n) { _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), v); }
static inline vfloat vf_add(vfloat a, vfloat b) { return _mm512_add_ps(a, b); }
static inline vfloat vf_sub(vfloat a, vfloat b) { return _mm512_sub_ps(a, b); }
static inline vfloat vf_mul(vfloat a, vfloat b) { return _mm512_mul_ps(a, b); }
static inline vfloat vf_div(vfloat a, vfloat b) { return _mm512_div_ps(a, b); }
static inline vfloat vf_max(vfloat a, vfloat b) { return _mm512_max_ps(a, b); }
static inline vfloat vf_min(vfloat a, vfloat b) { return _mm512_min_ps(a, b); }
static inline vfloat vf_fma(vfloat a, vfloat b, vfloat c) { return _mm512_fmadd_ps(a, b, c); }
static inline float vf_sum(vfloat v) { return _mm512_reduce_add_ps(v); }
static inline vfloat vf_round(vfloat x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vfloat vf_pow2i(vfloat n)   /* 2^n for integral n in [-127, 127]; 2^-127 gives 0 */
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}
static inline vfloat vf_abs(vfloat x) { return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fffffff))); }
static inline vfloat vf_select_neg(vfloat x, vfloat a, vfloat b) { return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ), b, a); }
static inline vfloat vf_load_f16(const void *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
static inline vfloat vf_load_bf16(const void *p)
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

#elif defined(__AVX2__) && defined(__FMA__) && !defined(SD_NO_SIMD)
#include <immintrin.h>
#define VF_WIDTH 8
#define GEMM_MR 6
#define VF_HAS_BF16 1
typedef __m256 vfloat;
static inline vfloat vf_zero(void) { return _mm256_setzero_ps(); }
static inline vfloat vf_set1(float x) { return _mm256_set1_ps(x); }
static inline vfloat vf_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void vf_store(float *p, vfloat v) { _mm256_storeu_ps(p, v); }
static inline vfloat vf_load_n(const float *p, int n)
{
    float t[8] = {0};
    memcpy(t, p, (size_t)n * sizeof(float));
    return _mm256_loadu_ps(t);
}
static inline void vf_store_n(float *p, vfloat v, int n)
{
    float t[8];
    _mm256_storeu_ps(t, v);
    memcpy(p, t, (size_t)n * sizeof(float));
}
static inline vfloat vf_add(vfloat a, vfloat b) { return _mm256_add_ps(a, b); }
static inline vfloat vf_sub(vfloat a, vfloat b) { return _mm256_sub_ps(a, b); }
static inline vfloat vf_mul(vfloat a, vfloat b) { return _mm256_mul_ps(a, b); }
static inline vfloat vf_div(vfloat a, vfloat b) { return _mm256_div_ps(a, b); }
static inline vfloat vf_max(vfloat a, vfloat b) { return _mm256_max_ps(a, b); }
static inline vfloat vf_min(vfloat a, vfloat b) { return _mm256_min_ps(a, b); }
static inline vfloat vf_fma(vfloat a, vfloat b, vfloat c) { return _mm256_fmadd_ps(a, b, c); }
static inline float vf_sum(vfloat v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline vfloat vf_round(vfloat x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vfloat vf_pow2i(vfloat n)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
static inline vfloat vf_abs(vfloat x) { return _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))); }
static inline vfloat vf_select_neg(vfloat x, vfloat a, vfloat b) { return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ)); }
#ifdef __F16C__
#define VF_HAS_F16 1
static inline vfloat vf_load_f16(const void *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
#endif
static inline vfloat vf_load_bf16(const void *p)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

#elif defined(__aarch64__) && defined(__ARM_NEON) && !defined(SD_NO_SIMD)
#include <arm_neon.h>
#define VF_WIDTH 4
#define GEMM_MR 8
#define VF_HAS_F16 1
#define VF_HAS_BF16 1
typedef float32x4_t vfloat;
static inline vfloat vf_zero(void) { return vdupq_n_f32(0.0f); }
static inline vfloat vf_set1(float x) { return vdupq_n_f32(x); }
static inline vfloat vf_load(const float *p) { return vld1q_f32(p); }
static inline void vf_store(float *p, vfloat v) { vst1q_f32(p, v); }
static inline vfloat vf_load_n(const float *p, int n)
{
    float t[4] = {0};
    memcpy(t, p, (size_t)n * sizeof(float));
    return vld1q_f32(t);
}
static inline void vf_store_n(float *p, vfloat v, int n)
{
    float t[4];
    vst1q_f32(t, v);
    memcpy(p, t, (size_t)n * sizeof(float));
}
static inline vfloat vf_add(vfloat a, vfloat b) { return vaddq_f32(a, b); }
static inline vfloat vf_sub(vfloat a, vfloat b) { return vsubq_f32(a, b); }
static inline vfloat vf_mul(vfloat a, vfloat b) { return vmulq_f32(a, b); }
static inline vfloat vf_div(vfloat a, vfloat b) { return vdivq_f32(a, b); }
static inline vfloat vf_max(vfloat a, vfloat b) { return vmaxq_f32(a, b); }
static inline vfloat vf_min(vfloat a, vfloat b) { return vminq_f32(a, b); }
static inline vfloat vf_fma(vfloat a, vfloat b, vfloat c) { return vfmaq_f32(c, a, b); }
static inline float vf_sum(vfloat v) { return vaddvq_f32(v); }
static inline vfloat vf_round(vfloat x) { return vrndnq_f32(x); }
static inline vfloat vf_pow2i(vfloat n)
{
    return vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23));
}
static inline vfloat vf_abs(vfloat x) { return vabsq_f32(x); }
static inline vfloat vf_select_neg(vfloat x, vfloat a, vfloat b) { return vbslq_f32(vcltq_f32(x, vdupq_n_f32(0.0f)), a, b); }
static inline vfloat vf_load_f16(const void *p)
{
    uint16_t h[4];
    memcpy(h, p, sizeof h);
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
}
static inline vfloat vf_load_bf16(const void *p)
{
    uint16_t h[4];
    memcpy(h, p, sizeof h);
    return vreinterpretq_f32_u32(vshlq_n_u32(vmovl_u16(vld1_u16(h)), 16));
}

#elif defined(__SSE2__) && !defined(SD_NO_SIMD)
/* x86-64 without -m flags: SSE2, 4 lanes, no FMA. */
#include <emmintrin.h>
#define VF_WIDTH 4
#define GEMM_MR 6
#define VF_HAS_BF16 1
typedef __m128 vfloat;
static inline vfloat vf_zero(void) { return _mm_setzero_ps(); }
static inline vfloat vf_set1(float x) { return _mm_set1_ps(x); }
static inline vfloat vf_load(const float *p) { return _mm_loadu_ps(p); }
static inline void vf_store(float *p, vfloat v) { _mm_storeu_ps(p, v); }
static inline vfloat vf_load_n(const float *p, int n)
{
    float t[4] = {0};
    memcpy(t, p, (size_t)n * sizeof(float));
    return _mm_loadu_ps(t);
}
static inline void vf_store_n(float *p, vfloat v, int n)
{
    float t[4];
    _mm_storeu_ps(t, v);
    memcpy(p, t, (size_t)n * sizeof(float));
}
static inline vfloat vf_add(vfloat a, vfloat b) { return _mm_add_ps(a, b); }
static inline vfloat vf_sub(vfloat a, vfloat b) { return _mm_sub_ps(a, b); }
static inline vfloat vf_mul(vfloat a, vfloat b) { return _mm_mul_ps(a, b); }
static inline vfloat vf_div(vfloat a, vfloat b) { return _mm_div_ps(a, b); }
static inline vfloat vf_max(vfloat a, vfloat b) { return _mm_max_ps(a, b); }
static inline vfloat vf_min(vfloat a, vfloat b) { return _mm_min_ps(a, b); }
static inline vfloat vf_fma(vfloat a, vfloat b, vfloat c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
static inline float vf_sum(vfloat v)
{
    __m128 s = _mm_add_ps(v, _mm_movehl_ps(v, v));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
static inline vfloat vf_round(vfloat x) { return _mm_cvtepi32_ps(_mm_cvtps_epi32(x)); }   /* |x| < 2^31 here */
static inline vfloat vf_pow2i(vfloat n)
{
    return _mm_castsi128_ps(_mm_slli_epi32(_mm_add_epi32(_mm_cvtps_epi32(n), _mm_set1_epi32(127)), 23));
}
static inline vfloat vf_abs(vfloat x) { return _mm_and_ps(x, _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff))); }
static inline vfloat vf_select_neg(vfloat x, vfloat a, vfloat b)
{
    __m128 m = _mm_cmplt_ps(x, _mm_setzero_ps());
    return _mm_or_ps(_mm_and_ps(m, a), _mm_andnot_ps(m, b));
}
static inline vfloat vf_load_bf16(const void *p)
{
    return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), _mm_loadl_epi64((const __m128i *)p)));
}

#else
/* Plain C: a 4-float struct; compilers turn the lane loops into SSE2 or NEON where they can. */
#define VF_WIDTH 4
#define GEMM_MR 4
typedef struct vfloat { float v[4]; } vfloat;
#define VF_LANES(r, expr) do { for (int l_ = 0; l_ < 4; l_++) (r).v[l_] = (expr); } while (0)
static inline vfloat vf_zero(void) { vfloat r; VF_LANES(r, 0.0f); return r; }
static inline vfloat vf_set1(float x) { vfloat r; VF_LANES(r, x); return r; }
static inline vfloat vf_load(const float *p) { vfloat r; memcpy(r.v, p, sizeof r.v); return r; }
static inline void vf_store(float *p, vfloat v) { memcpy(p, v.v, sizeof v.v); }
static inline vfloat vf_load_n(const float *p, int n) { vfloat r = vf_zero(); memcpy(r.v, p, (size_t)n * sizeof(float)); return r; }
static inline void vf_store_n(float *p, vfloat v, int n) { memcpy(p, v.v, (size_t)n * sizeof(float)); }
static inline vfloat vf_add(vfloat a, vfloat b) { vfloat r; VF_LANES(r, a.v[l_] + b.v[l_]); return r; }
static inline vfloat vf_sub(vfloat a, vfloat b) { vfloat r; VF_LANES(r, a.v[l_] - b.v[l_]); return r; }
static inline vfloat vf_mul(vfloat a, vfloat b) { vfloat r; VF_LANES(r, a.v[l_] * b.v[l_]); return r; }
static inline vfloat vf_div(vfloat a, vfloat b) { vfloat r; VF_LANES(r, a.v[l_] / b.v[l_]); return r; }
static inline vfloat vf_max(vfloat a, vfloat b) { vfloat r; VF_LANES(r, a.v[l_] > b.v[l_] ? a.v[l_] : b.v[l_]); return r; }
static inline vfloat vf_min(vfloat a, vfloat b) { vfloat r; VF_LANES(r, a.v[l_] < b.v[l_] ? a.v[l_] : b.v[l_]); return r; }
static inline vfloat vf_fma(vfloat a, vfloat b, vfloat c) { vfloat r; VF_LANES(r, a.v[l_] * b.v[l_] + c.v[l_]); return r; }
static inline float vf_sum(vfloat v) { return (v.v[0] + v.v[2]) + (v.v[1] + v.v[3]); }
static inline vfloat vf_round(vfloat x) { vfloat r; VF_LANES(r, floorf(x.v[l_] + 0.5f)); return r; }
static inline vfloat vf_pow2i(vfloat n)
{
    vfloat r;
    for (int l = 0; l < 4; l++) { uint32_t b = (uint32_t)((int32_t)n.v[l] + 127) << 23; memcpy(&r.v[l], &b, 4); }
    return r;
}
static inline vfloat vf_abs(vfloat x) { vfloat r; VF_LANES(r, fabsf(x.v[l_])); return r; }
static inline vfloat vf_select_neg(vfloat x, vfloat a, vfloat b) { vfloat r; VF_LANES(r, x.v[l_] < 0 ? a.v[l_] : b.v[l_]); return r; }
#endif

/* r[i] lane j <-> r[j] lane i: a VF_WIDTH x VF_WIDTH transpose in registers (weight packing). */
#if defined(__AVX512F__) && !defined(SD_NO_SIMD)
static inline void vf_transpose(vfloat *r)
{
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
        __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    /* r[4g + j], 128-bit lane L, now holds column 4L + j of rows 4g..4g+3 */
    for (int j = 0; j < 4; j++) {
        __m512 u0 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88), u1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xdd);
        __m512 u2 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88), u3 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xdd);
        t[j] = _mm512_shuffle_f32x4(u0, u2, 0x88);
        t[j + 8] = _mm512_shuffle_f32x4(u0, u2, 0xdd);
        t[j + 4] = _mm512_shuffle_f32x4(u1, u3, 0x88);
        t[j + 12] = _mm512_shuffle_f32x4(u1, u3, 0xdd);
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}
#elif defined(__AVX2__) && defined(__FMA__) && !defined(SD_NO_SIMD)
static inline void vf_transpose(vfloat *r)
{
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {   /* u[4i + j], 128-bit lane L: column 4L + j of rows 4i..4i+3 */
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
    }
    for (int j = 0; j < 4; j++) {
        r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
        r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
    }
}
#elif defined(__aarch64__) && defined(__ARM_NEON) && !defined(SD_NO_SIMD)
static inline void vf_transpose(vfloat *r)
{
    float32x4x2_t p = vtrnq_f32(r[0], r[1]), q = vtrnq_f32(r[2], r[3]);
    r[0] = vcombine_f32(vget_low_f32(p.val[0]), vget_low_f32(q.val[0]));
    r[1] = vcombine_f32(vget_low_f32(p.val[1]), vget_low_f32(q.val[1]));
    r[2] = vcombine_f32(vget_high_f32(p.val[0]), vget_high_f32(q.val[0]));
    r[3] = vcombine_f32(vget_high_f32(p.val[1]), vget_high_f32(q.val[1]));
}
#elif defined(__SSE2__) && !defined(SD_NO_SIMD)
static inline void vf_transpose(vfloat *r) { _MM_TRANSPOSE4_PS(r[0], r[1], r[2], r[3]); }
#else
static inline void vf_transpose(vfloat *r)
{
    for (int i = 0; i < 4; i++)
        for (int j = i + 1; j < 4; j++) { float t = r[i].v[j]; r[i].v[j] = r[j].v[i]; r[j].v[i] = t; }
}
#endif

/* Conversions to f32 of VF_WIDTH stored values, for the builds that have no vector form. */
#ifndef VF_HAS_F16
static inline vfloat vf_load_f16(const void *p)
{
    float t[VF_WIDTH];
    for (int i = 0; i < VF_WIDTH; i++) { uint16_t h; memcpy(&h, (const char *)p + 2 * i, 2); t[i] = sd_f16_to_f32(h); }
    return vf_load(t);
}
#endif
#ifndef VF_HAS_BF16
static inline vfloat vf_load_bf16(const void *p)
{
    float t[VF_WIDTH];
    for (int i = 0; i < VF_WIDTH; i++) { uint16_t h; memcpy(&h, (const char *)p + 2 * i, 2); t[i] = sd_bf16_to_f32(h); }
    return vf_load(t);
}
#endif

/* 2^x on vectors (softmax): splits x = n + f with |f| <= 1/2, evaluates 2^f with a
   degree-6 polynomial (Cephes exp2f, ~2 ulp) and scales by 2^n built in the exponent bits.
   x <= -126.5 gives exactly 0 (so masked softmax scores vanish), x is clamped at 127.5. */
static inline vfloat vf_exp2(vfloat x)
{
    x = vf_max(vf_min(x, vf_set1(127.5f)), vf_set1(-127.0f));
    vfloat n = vf_round(x), f = vf_sub(x, n);
    vfloat p = vf_set1(1.535336188319500e-4f);
    p = vf_fma(p, f, vf_set1(1.339887440266574e-3f));
    p = vf_fma(p, f, vf_set1(9.618437357674640e-3f));
    p = vf_fma(p, f, vf_set1(5.550332471162809e-2f));
    p = vf_fma(p, f, vf_set1(2.402264791363012e-1f));
    p = vf_fma(p, f, vf_set1(6.931472028550421e-1f));
    p = vf_fma(p, f, vf_set1(1.0f));
    return vf_mul(p, vf_pow2i(n));
}

/* e^x: x = n·ln2 + r with ln2 in two parts (Cody-Waite) so r is exact, then Cephes expf's
   polynomial for e^r; relative error ~1e-7 over the whole range (below e^-87 it gives 0). */
static inline vfloat vf_exp(vfloat x)
{
    x = vf_max(vf_min(x, vf_set1(88.0f)), vf_set1(-88.0f));
    vfloat n = vf_round(vf_mul(x, vf_set1(1.4426950408889634f)));
    vfloat r = vf_fma(n, vf_set1(-0.693359375f), x);
    r = vf_fma(n, vf_set1(2.12194440e-4f), r);
    vfloat p = vf_set1(1.9875691500e-4f);
    p = vf_fma(p, r, vf_set1(1.3981999507e-3f));
    p = vf_fma(p, r, vf_set1(8.3334519073e-3f));
    p = vf_fma(p, r, vf_set1(4.1665795894e-2f));
    p = vf_fma(p, r, vf_set1(1.6666665459e-1f));
    p = vf_fma(p, r, vf_set1(5.0000001201e-1f));
    p = vf_fma(p, vf_mul(r, r), vf_add(r, vf_set1(1.0f)));
    return vf_mul(p, vf_pow2i(n));
}

/* erfc(a) for a >= 0 with relative error < 1.2e-7 everywhere (Numerical Recipes' erfcc, a
   Chebyshev fit): t = 1/(1 + a/2), erfc = t·exp(-a² + P(t)). GELU uses it so that its negative
   tail keeps its relative precision instead of cancelling in 1 + erf. */
static inline vfloat vf_erfc_pos(vfloat a)
{
    vfloat t = vf_div(vf_set1(1.0f), vf_fma(vf_set1(0.5f), a, vf_set1(1.0f)));
    vfloat p = vf_set1(0.17087277f);
    p = vf_fma(p, t, vf_set1(-0.82215223f));
    p = vf_fma(p, t, vf_set1(1.48851587f));
    p = vf_fma(p, t, vf_set1(-1.13520398f));
    p = vf_fma(p, t, vf_set1(0.27886807f));
    p = vf_fma(p, t, vf_set1(-0.18628806f));
    p = vf_fma(p, t, vf_set1(0.09678418f));
    p = vf_fma(p, t, vf_set1(0.37409196f));
    p = vf_fma(p, t, vf_set1(1.00002368f));
    p = vf_fma(p, t, vf_set1(-1.26551223f));
    return vf_mul(t, vf_exp(vf_sub(p, vf_mul(a, a))));
}

static inline vfloat vf_silu(vfloat x) { return vf_div(x, vf_add(vf_set1(1.0f), vf_exp(vf_sub(vf_zero(), x)))); }
/* GELU(x) = x·Φ(x) with Φ(x) = erfc(-x/√2)/2: for x < 0 that is erfc(|x|/√2)/2, else 1 minus it. */
static inline vfloat vf_gelu(vfloat x)
{
    vfloat h = vf_mul(vf_set1(0.5f), vf_erfc_pos(vf_mul(vf_abs(x), vf_set1(0.70710678118654752f))));
    return vf_mul(x, vf_select_neg(x, h, vf_sub(vf_set1(1.0f), h)));
}

/* n values of a float tensor starting at element i, as f32 into dst. */
static void tensor_floats(float *dst, const sd_tensor *t, size_t i, int n)
{
    const unsigned char *src = (const unsigned char *)t->data;
    int k = 0;
    switch (t->dtype) {
    case SD_F32:
        memcpy(dst, src + 4 * i, (size_t)n * 4);
        return;
    case SD_F16:
        src += 2 * i;
        for (; k + VF_WIDTH <= n; k += VF_WIDTH) vf_store(dst + k, vf_load_f16(src + 2 * k));
        for (; k < n; k++) { uint16_t h; memcpy(&h, src + 2 * k, 2); dst[k] = sd_f16_to_f32(h); }
        return;
    case SD_BF16:
        src += 2 * i;
        for (; k + VF_WIDTH <= n; k += VF_WIDTH) vf_store(dst + k, vf_load_bf16(src + 2 * k));
        for (; k < n; k++) { uint16_t h; memcpy(&h, src + 2 * k, 2); dst[k] = sd_bf16_to_f32(h); }
        return;
    default:
        for (; k < n; k++) dst[k] = tensor_get(t, i + (size_t)k);
        return;
    }
}

/* ---- thread pool ---- */

/* A compute context: worker threads and per-thread scratch, set up once per run (from the
   arena) so that kernels never allocate. Workers sleep on a condition variable between
   pool_run calls. The struct must stay where pool_init put it until pool_free, and the arena
   must not be reset below the pool while it lives (worker stacks are in it). */
#define SD_MAX_THREADS 64
#define SD_POOL_SCRATCH_FLOATS (1u << 18)   /* per thread: packed weight blocks, attention tiles */
#ifndef SD_POOL_STACK_BYTES
#define SD_POOL_STACK_BYTES (1u << 20)      /* per worker thread: kernels use a few KiB, sanitizers more */
#endif

#ifndef SD_NO_THREADS
#include <pthread.h>
#if !defined(__cplusplus) && (!defined(_POSIX_C_SOURCE) || _POSIX_C_SOURCE < 200112L)
/* Strict C99 hides this POSIX.1-2001 function; the library has it all the same. */
int pthread_attr_setstack(pthread_attr_t *attr, void *stackaddr, size_t stacksize);
#endif
#endif

typedef void (*pool_task)(void *arg, int task, int thread);

struct sd_pool;
typedef struct pool_worker { struct sd_pool *pool; int index; } pool_worker;

struct sd_pool {
    int threads;
    float *scratch[SD_MAX_THREADS];
    size_t scratch_floats;
#ifndef SD_NO_THREADS
    int started, sync_ready;
    pthread_t tid[SD_MAX_THREADS];
    pool_worker worker[SD_MAX_THREADS];
    pthread_mutex_t lock;
    pthread_cond_t wake, idle;
    pool_task fn;              /* the current job, valid while busy > 0 */
    void *arg;
    int ntasks, next, busy, quit;
    unsigned long generation;  /* bumped by each pool_run, so sleeping workers know it is new */
#endif
};

#ifdef SD_NO_THREADS
#define POOL_THREADS(t) 1
#else
#define POOL_THREADS(t) (t)
#endif
#define POOL_PAGE 4096u

/* Arena bytes pool_init takes for `threads` threads: scratch for each, a stack for each worker. */
static size_t pool_arena_bytes(int threads)
{
    size_t scratch = (SD_POOL_SCRATCH_FLOATS * sizeof(float) + SD_ALIGN - 1) & ~(size_t)(SD_ALIGN - 1);
    size_t stack = ((size_t)SD_POOL_STACK_BYTES + POOL_PAGE + SD_ALIGN - 1) & ~(size_t)(SD_ALIGN - 1);
    if (threads < 1) threads = 1;
    if (threads > SD_MAX_THREADS) threads = SD_MAX_THREADS;
    threads = POOL_THREADS(threads);
    return (size_t)threads * scratch + (size_t)(threads - 1) * stack;
}

#ifndef SD_NO_THREADS
static void *pool_worker_main(void *p)
{
    pool_worker *w = (pool_worker *)p;
    sd_pool *pool = w->pool;
    unsigned long seen = 0;
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        while (!pool->quit && pool->generation == seen) pthread_cond_wait(&pool->wake, &pool->lock);
        if (pool->quit) break;
        seen = pool->generation;
        while (pool->next < pool->ntasks) {
            int task = pool->next++;
            pool_task fn = pool->fn;
            void *arg = pool->arg;
            pthread_mutex_unlock(&pool->lock);
            fn(arg, task, w->index);
            pthread_mutex_lock(&pool->lock);
        }
        if (--pool->busy == 0) pthread_cond_signal(&pool->idle);
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}
#endif

static void pool_free(sd_pool *p)
{
#ifndef SD_NO_THREADS
    if (p->sync_ready) {
        pthread_mutex_lock(&p->lock);
        p->quit = 1;
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
        for (int i = 0; i < p->started; i++) pthread_join(p->tid[i], NULL);
        pthread_cond_destroy(&p->idle);
        pthread_cond_destroy(&p->wake);
        pthread_mutex_destroy(&p->lock);
        p->sync_ready = 0;
    }
    p->started = 0;
#endif
    p->threads = 0;
}

static int pool_init(sd_pool *p, int threads, sd_arena *a, sd_error *err)
{
    size_t mark = sd_arena_mark(a);
    memset(p, 0, sizeof *p);
    if (threads < 1 || threads > SD_MAX_THREADS) return fail(err, SD_ERR_ARG, "threads = %d: must be 1..%d", threads, SD_MAX_THREADS);
    p->threads = POOL_THREADS(threads);
    p->scratch_floats = SD_POOL_SCRATCH_FLOATS;
    for (int t = 0; t < p->threads; t++)
        if (!(p->scratch[t] = arena_floats(a, p->scratch_floats, err))) { sd_arena_reset(a, mark); return SD_ERR_MEMORY; }
#ifndef SD_NO_THREADS
    if (p->threads > 1) {
        if (pthread_mutex_init(&p->lock, NULL)) {
            sd_arena_reset(a, mark);
            return fail(err, SD_ERR_UNSUPPORTED, "thread pool: pthread_mutex_init failed");
        }
        pthread_cond_init(&p->wake, NULL);
        pthread_cond_init(&p->idle, NULL);
        p->sync_ready = 1;
        for (int t = 1; t < p->threads; t++) {
            unsigned char *stack = (unsigned char *)sd_arena_alloc(a, SD_POOL_STACK_BYTES + POOL_PAGE, err);
            pthread_attr_t attr;
            int rc;
            if (!stack) { pool_free(p); sd_arena_reset(a, mark); return SD_ERR_MEMORY; }
            stack += (POOL_PAGE - (uintptr_t)stack % POOL_PAGE) % POOL_PAGE;
            p->worker[t].pool = p;
            p->worker[t].index = t;
            pthread_attr_init(&attr);
            rc = pthread_attr_setstack(&attr, stack, SD_POOL_STACK_BYTES);
            if (!rc) rc = pthread_create(&p->tid[p->started], &attr, pool_worker_main, &p->worker[t]);
            pthread_attr_destroy(&attr);
            if (rc) {
                pool_free(p);
                sd_arena_reset(a, mark);
                return fail(err, SD_ERR_UNSUPPORTED, "thread pool: cannot start thread %d of %d (error %d)", t, threads, rc);
            }
            p->started++;
        }
    }
#endif
    return SD_OK;
}

/* Runs fn(arg, task, thread) for task = 0..ntasks-1 on the pool's threads (the caller is thread
   0) and returns when all are done. Tasks are handed out first come first served; each task
   writes its own part of the output, so the result does not depend on which thread ran it. */
static void pool_run(sd_pool *pool, pool_task fn, void *arg, int ntasks)
{
#ifndef SD_NO_THREADS
    if (pool->started > 0 && ntasks > 1) {
        pthread_mutex_lock(&pool->lock);
        pool->fn = fn;
        pool->arg = arg;
        pool->ntasks = ntasks;
        pool->next = 0;
        pool->busy = pool->started;
        pool->generation++;
        pthread_cond_broadcast(&pool->wake);
        while (pool->next < pool->ntasks) {
            int task = pool->next++;
            pthread_mutex_unlock(&pool->lock);
            fn(arg, task, 0);
            pthread_mutex_lock(&pool->lock);
        }
        while (pool->busy > 0) pthread_cond_wait(&pool->idle, &pool->lock);
        pthread_mutex_unlock(&pool->lock);
        return;
    }
#endif
    (void)pool;
    for (int t = 0; t < ntasks; t++) fn(arg, t, 0);
}

/* ---- GEMM ---- */

/* y = x·wᵀ is computed BLIS-style: the weight is packed, one block of GEMM_KC_MAX x GEMM_NC at
   a time and converted to f32 on the way, into panels of GEMM_NR columns laid out k-major in
   the thread's scratch; a register-blocked micro-kernel then multiplies GEMM_MR rows of x
   (read in place, one broadcast per element) by a panel, accumulating in registers.
   Convolutions use the same kernel as an implicit GEMM: the K axis runs over (tap, channel),
   and a row of "x" for tap (ky, kx) is just the input pixel that tap sees, or a zero row in the
   padding, so no im2col buffer is ever built. */
#define GEMM_NR (2 * VF_WIDTH)
#define GEMM_KC_MAX 288          /* K per packed block: a 3x3 conv's 9 taps x 32 channels */
#define GEMM_NC 512              /* N per packed block: 288 x 512 floats = 576 KiB, fits L2 */
#define GEMM_SMALL_M 4           /* below this many rows, dot products beat packing */

static const float zero_row[GEMM_KC_MAX] = {0};   /* the input "pixel" in the padding */

#if GEMM_MR == 12
#define GEMM_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#elif GEMM_MR == 8
#define GEMM_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#elif GEMM_MR == 6
#define GEMM_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
#else
#define GEMM_ROWS(X) X(0) X(1) X(2) X(3)
#endif

/* c[0..nr) (+)= v0:v1, + bias, for one row of a tile. */
static inline void tile_store_row(float *c, vfloat v0, vfloat v1, int nr, int load, const float *bias)
{
    if (nr == GEMM_NR) {
        if (load) { v0 = vf_add(vf_load(c), v0); v1 = vf_add(vf_load(c + VF_WIDTH), v1); }
        if (bias) { v0 = vf_add(v0, vf_load(bias)); v1 = vf_add(v1, vf_load(bias + VF_WIDTH)); }
        vf_store(c, v0);
        vf_store(c + VF_WIDTH, v1);
    } else {
        int n0 = nr < VF_WIDTH ? nr : VF_WIDTH, n1 = nr - n0;
        if (load) { v0 = vf_add(vf_load_n(c, n0), v0); if (n1) v1 = vf_add(vf_load_n(c + VF_WIDTH, n1), v1); }
        if (bias) { v0 = vf_add(v0, vf_load_n(bias, n0)); if (n1) v1 = vf_add(v1, vf_load_n(bias + VF_WIDTH, n1)); }
        vf_store_n(c, v0, n0);
        if (n1) vf_store_n(c + VF_WIDTH, v1, n1);
    }
}

/* The micro-kernel: a GEMM_MR x GEMM_NR tile of c (row stride ldc) (+)= Σ_k a_i[k] · bp[k][j].
   The K axis is nseg segments of len values; a[s·GEMM_MR + i] points at row i's values for
   segment s, and bp holds nseg·len packed rows of GEMM_NR. Only rows < mr and columns < nr
   are stored (the others compute on duplicated or zero data); bias (if not NULL) is added. */
static void gemm_tile(const float *const *a, int nseg, int len, const float *bp, float *c, int ldc,
                      int mr, int nr, int load, const float *bias)
{
#define TILE_DECL(i) vfloat c##i##0 = vf_zero(), c##i##1 = vf_zero();
#define TILE_PTR(i) const float *a##i = a[i];
#define TILE_FMA(i) t = vf_set1(a##i[k]); c##i##0 = vf_fma(t, b0, c##i##0); c##i##1 = vf_fma(t, b1, c##i##1);
#define TILE_STORE(i) if (i < mr) tile_store_row(c + (size_t)i * ldc, c##i##0, c##i##1, nr, load, bias);
    GEMM_ROWS(TILE_DECL)
    for (int s = 0; s < nseg; s++, a += GEMM_MR) {
        GEMM_ROWS(TILE_PTR)
        for (int k = 0; k < len; k++, bp += GEMM_NR) {
            vfloat b0 = vf_load(bp), b1 = vf_load(bp + VF_WIDTH), t;
            GEMM_ROWS(TILE_FMA)
        }
    }
    GEMM_ROWS(TILE_STORE)
#undef TILE_DECL
#undef TILE_PTR
#undef TILE_FMA
#undef TILE_STORE
}

/* Packs columns n0..n0+nc of the weight's K block into GEMM_NR-wide k-major panels:
   bp[panel][k][j] = w[n0 + panel·NR + j][src0 + s] where the block's source values s run over
   `len` channels x `taps` taps (PyTorch's [Cout, Cin, kh, kw] order) and the packed k puts the
   taps outermost (k = tap·len + channel), matching the micro-kernel's segments. */
/* Packing goes VF_WIDTH weight rows x VF_WIDTH values at a time: converted as loaded,
   transposed in registers, stored as VF_WIDTH packed k-rows (several times faster than a
   scalar scatter, which matters when few rows of x share each packed block). */
static inline vfloat pack_load(const unsigned char *p, sd_dtype dt, int n)
{
    unsigned char t[4 * VF_WIDTH];
    if (n < VF_WIDTH) { memset(t, 0, sizeof t); memcpy(t, p, (size_t)n * sd_dtype_size(dt)); p = t; }
    if (dt == SD_F32) { float f[VF_WIDTH]; memcpy(f, p, sizeof f); return vf_load(f); }
    return dt == SD_F16 ? vf_load_f16(p) : vf_load_bf16(p);
}

static void pack_weights(float *bp, const sd_tensor *w, int64_t row_len, int n0, int nc, int64_t src0,
                         int len, int taps)
{
    int kb = len * taps, panels = (nc + GEMM_NR - 1) / GEMM_NR;
    size_t es = sd_dtype_size(w->dtype);
    int fast = w->dtype == SD_F32 || w->dtype == SD_F16 || w->dtype == SD_BF16;
    for (int p = 0; p < panels; p++)
        for (int g = 0; g < GEMM_NR; g += VF_WIDTH) {
            float *dst = bp + (size_t)p * kb * GEMM_NR + g;
            int rows = nc - p * GEMM_NR - g;
            int64_t first = (int64_t)(n0 + p * GEMM_NR + g) * row_len + src0;
            for (int s0 = 0; s0 < kb; s0 += VF_WIDTH) {
                int ns = kb - s0 < VF_WIDTH ? kb - s0 : VF_WIDTH;
                vfloat r[VF_WIDTH];
                for (int i = 0; i < VF_WIDTH; i++) {
                    int64_t at = first + (int64_t)i * row_len + s0;
                    if (i >= rows) r[i] = vf_zero();
                    else if (fast) r[i] = pack_load((const unsigned char *)w->data + (size_t)at * es, w->dtype, ns);
                    else {   /* other float types (F64): element by element */
                        float f[VF_WIDTH] = {0};
                        for (int c = 0; c < ns; c++) f[c] = tensor_get(w, (size_t)(at + c));
                        r[i] = vf_load(f);
                    }
                }
                vf_transpose(r);
                for (int c = 0; c < ns; c++) {
                    int s = s0 + c, k = taps == 1 ? s : (s % taps) * len + s / taps;
                    vf_store(dst + (size_t)k * GEMM_NR, r[c]);
                }
            }
        }
}

/* One matmul or convolution, split into a grid of gm x gn tasks over (rows, columns). */
typedef struct gemm_job {
    sd_pool *pool;
    float *y;
    int ldy;
    const float *x;
    int ldx, M, N;
    const sd_tensor *w, *b;
    int accumulate;
    int conv, H, W, Cin, Ho, Wo, k, s, pad;      /* implicit GEMM geometry when conv */
    int64_t row_len;                             /* weight values per output column */
    int depth, taps, nblocks, blen;              /* K = depth x taps, in blocks of blen x taps */
    int gm, gn, mb, nb;                          /* task grid and its block sizes */
} gemm_job;

/* Row pointers of the micro-tile at output rows m.. (mr valid) for the K block starting at
   channel c0: GEMM_MR of them per tap. Rows past mr repeat row m. */
static void gemm_rows(const gemm_job *j, int m, int mr, int c0, const float **rows)
{
    for (int i = 0; i < GEMM_MR; i++) {
        int r = m + (i < mr ? i : 0);
        if (!j->conv) { rows[i] = j->x + (size_t)r * j->ldx + c0; continue; }
        int hw = j->Ho * j->Wo, bi = r / hw, oy = (r % hw) / j->Wo, ox = r % j->Wo;
        for (int ky = 0, t = 0; ky < j->k; ky++) {
            int iy = oy * j->s + ky - j->pad;
            for (int kx = 0; kx < j->k; kx++, t++) {
                int ix = ox * j->s + kx - j->pad;
                rows[t * GEMM_MR + i] = (iy < 0 || iy >= j->H || ix < 0 || ix >= j->W) ? zero_row
                    : j->x + (((size_t)bi * j->H + iy) * j->W + ix) * j->Cin + c0;
            }
        }
    }
}

static void gemm_task(void *arg, int task, int thread)
{
    const gemm_job *j = (const gemm_job *)arg;
    int m_lo = (task / j->gn) * j->mb, n_lo = (task % j->gn) * j->nb;
    int m_hi = m_lo + j->mb < j->M ? m_lo + j->mb : j->M, n_hi = n_lo + j->nb < j->N ? n_lo + j->nb : j->N;
    float *bp = j->pool->scratch[thread], *bias = bp + GEMM_KC_MAX * GEMM_NC;
    const float **rows = (const float **)(void *)(bias + GEMM_NC);
    for (int jc = n_lo; jc < n_hi; jc += GEMM_NC) {
        int nc = n_hi - jc < GEMM_NC ? n_hi - jc : GEMM_NC;
        if (j->b) tensor_floats(bias, j->b, (size_t)jc, nc);
        for (int p = 0; p < j->nblocks; p++) {
            int c0 = p * j->blen, len = j->depth - c0 < j->blen ? j->depth - c0 : j->blen, kb = len * j->taps;
            int load = p > 0 || j->accumulate;
            const float *bb = p == j->nblocks - 1 && j->b ? bias : NULL;
            pack_weights(bp, j->w, j->row_len, jc, nc, (int64_t)c0 * j->taps, len, j->taps);
            for (int m = m_lo; m < m_hi; m += GEMM_MR) {
                int mr = m_hi - m < GEMM_MR ? m_hi - m : GEMM_MR;
                gemm_rows(j, m, mr, c0, rows);
                for (int pn = 0; pn * GEMM_NR < nc; pn++) {
                    int nr = nc - pn * GEMM_NR < GEMM_NR ? nc - pn * GEMM_NR : GEMM_NR;
                    gemm_tile(rows, j->taps, len, bp + (size_t)pn * kb * GEMM_NR,
                              j->y + (size_t)m * j->ldy + jc + pn * GEMM_NR, j->ldy, mr, nr, load,
                              bb ? bb + pn * GEMM_NR : NULL);
                }
            }
        }
    }
}

/* Splits the M x N output over the pool: the grid with the smallest estimated time, counting
   rounds of tasks over the threads, each task's multiply-adds per k, its weight packing (about
   16 multiply-adds' time per packed value) and its rereading of x. */
static void gemm_plan(gemm_job *j, int threads)
{
    int tm = (j->M + GEMM_MR - 1) / GEMM_MR, tn = (j->N + GEMM_NR - 1) / GEMM_NR;
    double best = -1;
    for (int gn = 1; gn <= tn && gn <= 4 * threads; gn++)
        for (int gm = 1; gm <= tm && gm * gn <= 4 * threads; gm++) {
            int mt = (tm + gm - 1) / gm, nt = (tn + gn - 1) / gn, rounds = (gm * gn + threads - 1) / threads;
            double mb = (double)mt * GEMM_MR, nb = (double)nt * GEMM_NR;
            double cost = rounds * (mb * nb + 16.0 * nb + 2.0 * mb);
            if (best < 0 || cost < best * 0.999) {
                best = cost;
                j->gm = (tm + mt - 1) / mt;
                j->gn = (tn + nt - 1) / nt;
                j->mb = mt * GEMM_MR;
                j->nb = nt * GEMM_NR;
            }
        }
}

static void gemm_run(gemm_job *j)
{
    int maxlen = GEMM_KC_MAX / j->taps;
    SD_ASSERT(maxlen >= 1);
    j->nblocks = (j->depth + maxlen - 1) / maxlen;
    j->blen = (j->depth + j->nblocks - 1) / j->nblocks;
    SD_ASSERT((size_t)GEMM_KC_MAX * GEMM_NC + GEMM_NC + (size_t)j->taps * GEMM_MR * 2 <= j->pool->scratch_floats);
    gemm_plan(j, j->pool->threads);
    pool_run(j->pool, gemm_task, j, j->gm * j->gn);
}

/* For a few rows (time embeddings) packing costs more than it saves: plain dot products,
   one task per 64 output columns. */
typedef struct gemv_job {
    sd_pool *pool;
    float *y;
    int ldy;
    const float *x;
    int ldx, M, N, K, accumulate;
    const sd_tensor *w, *b;
} gemv_job;

static void gemv_task(void *arg, int task, int thread)
{
    const gemv_job *j = (const gemv_job *)arg;
    float *tmp = j->pool->scratch[thread];
    int n_hi = (task + 1) * 64 < j->N ? (task + 1) * 64 : j->N;
    for (int n = task * 64; n < n_hi; n++) {
        vfloat acc[GEMM_SMALL_M];
        for (int m = 0; m < j->M; m++) acc[m] = vf_zero();
        for (int k0 = 0; k0 < j->K; k0 += GEMM_KC_MAX) {
            int len = j->K - k0 < GEMM_KC_MAX ? j->K - k0 : GEMM_KC_MAX, k;
            tensor_floats(tmp, j->w, (size_t)n * j->K + k0, len);
            for (int m = 0; m < j->M; m++) {
                const float *xr = j->x + (size_t)m * j->ldx + k0;
                for (k = 0; k + VF_WIDTH <= len; k += VF_WIDTH) acc[m] = vf_fma(vf_load(xr + k), vf_load(tmp + k), acc[m]);
                if (k < len) acc[m] = vf_fma(vf_load_n(xr + k, len - k), vf_load_n(tmp + k, len - k), acc[m]);
            }
        }
        float bias = j->b ? tensor_get(j->b, (size_t)n) : 0.0f;
        for (int m = 0; m < j->M; m++) {
            float *yo = j->y + (size_t)m * j->ldy + n, v = vf_sum(acc[m]);
            if (j->accumulate) v = *yo + v;
            *yo = j->b ? v + bias : v;
        }
    }
}

/* Row i of weight matrix w ([N, K], any float dtype) as float32 into out[0..K). */
static void weight_row(const sd_tensor *w, int64_t i, int64_t K, float *out)
{
    tensor_floats(out, w, (size_t)(i * K), (int)K);
}

/* y[m, n] (+)= sum_k x[m, k] · w[n, k] + b[n]: a linear layer, and every convolution's core.
   x has row stride ldx, y row stride ldy; b may be NULL. */
static void matmul(sd_pool *pool, float *y, int ldy, const float *x, int ldx, int M, int N, int K,
                   const sd_tensor *w, const sd_tensor *b, int accumulate)
{
    if (M <= 0 || N <= 0) return;
    if (M < GEMM_SMALL_M) {
        gemv_job g;
        g.pool = pool; g.y = y; g.ldy = ldy; g.x = x; g.ldx = ldx; g.M = M; g.N = N; g.K = K;
        g.accumulate = accumulate; g.w = w; g.b = b;
        pool_run(pool, gemv_task, &g, (N + 63) / 64);
        return;
    }
    gemm_job j;
    memset(&j, 0, sizeof j);
    j.pool = pool; j.y = y; j.ldy = ldy; j.x = x; j.ldx = ldx; j.M = M; j.N = N;
    j.w = w; j.b = b; j.accumulate = accumulate;
    j.row_len = K; j.depth = K; j.taps = 1;
    if (K <= 0) {   /* an empty sum: y = (y) + b */
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++)
                y[(size_t)m * ldy + n] = (accumulate ? y[(size_t)m * ldy + n] : 0.0f) + (b ? tensor_get(b, (size_t)n) : 0.0f);
        return;
    }
    gemm_run(&j);
}

/* y[M, N] = x[M, K] · wᵀ + b for a linear layer with weight [N, K] (or a [N, K, 1, 1] conv). */
static void linear(sd_pool *pool, float *y, const float *x, int M, int N, int K,
                   const sd_tensor *w, const sd_tensor *b)
{
    matmul(pool, y, N, x, K, M, N, K, w, b, 0);
}

/* 2-D convolution, NHWC: x [B, H, W, Cin] → y [B, Ho, Wo, Cout] with w [Cout, Cin, k, k],
   stride s, zero padding `pad` before and `pad_end` after each spatial axis (the VAE encoder's
   downsampler pads (0, 1)). Ho = (H + pad + pad_end - k) / s + 1. An implicit GEMM: output
   pixels are rows, K runs over the k·k taps and Cin channels, and the kernel reads each tap's
   input pixel in place (bounded scratch: one packed weight block per thread). */
static void conv2d(sd_pool *pool, float *y, const float *x, int B, int H, int W, int Cin,
                   const sd_tensor *w, const sd_tensor *b, int Cout, int k, int s, int pad, int pad_end)
{
    int Ho = (H + pad + pad_end - k) / s + 1, Wo = (W + pad + pad_end - k) / s + 1;
    if (B <= 0 || Ho <= 0 || Wo <= 0 || Cout <= 0 || H + pad + pad_end < k) return;
    if (k == 1 && s == 1 && pad == 0 && pad_end == 0) {
        matmul(pool, y, Cout, x, Cin, B * H * W, Cout, Cin, w, b, 0);
        return;
    }
    SD_ASSERT(k * k <= GEMM_KC_MAX);
    gemm_job j;
    memset(&j, 0, sizeof j);
    j.pool = pool; j.y = y; j.ldy = Cout; j.x = x; j.M = B * Ho * Wo; j.N = Cout;
    j.w = w; j.b = b;
    j.conv = 1; j.H = H; j.W = W; j.Cin = Cin; j.Ho = Ho; j.Wo = Wo; j.k = k; j.s = s; j.pad = pad;
    j.row_len = (int64_t)Cin * k * k; j.depth = Cin; j.taps = k * k;
    gemm_run(&j);
}

/* ---- activations ---- */

#define ELEMENTWISE(name, expr)                                                        \
    static void name(float *x, size_t n)                                                \
    {                                                                                   \
        size_t i = 0;                                                                   \
        for (; i + VF_WIDTH <= n; i += VF_WIDTH) { vfloat v = vf_load(x + i); vf_store(x + i, expr); } \
        if (i < n) { vfloat v = vf_load_n(x + i, (int)(n - i)); vf_store_n(x + i, expr, (int)(n - i)); } \
    }
ELEMENTWISE(silu, vf_silu(v))
ELEMENTWISE(gelu, vf_gelu(v))
/* CLIP's activation: x · sigmoid(1.702 x). */
ELEMENTWISE(quick_gelu, vf_div(v, vf_add(vf_set1(1.0f), vf_exp(vf_mul(vf_set1(-1.702f), v)))))
#undef ELEMENTWISE

static void add(float *y, const float *x, size_t n)
{
    size_t i = 0;
    for (; i + VF_WIDTH <= n; i += VF_WIDTH) vf_store(y + i, vf_add(vf_load(y + i), vf_load(x + i)));
    if (i < n) vf_store_n(y + i, vf_add(vf_load_n(y + i, (int)(n - i)), vf_load_n(x + i, (int)(n - i))), (int)(n - i));
}

/* ---- norms ---- */

/* GroupNorm over NHWC: for each batch item, channels split into `groups` contiguous groups,
   each normalised over (H·W, C/groups) with biased variance; then per-channel affine and
   optionally SiLU (the UNet and VAE always follow GroupNorm with SiLU except before attention).
   y may equal x. One task per batch item and block of whole groups (at least 16 channels, a
   cache line): it sums each channel over the pixels, shifted by the group's first value for a
   stable one-pass variance, in float over 256 pixels and in double across them, then
   normalises its channels. */
typedef struct groupnorm_job {
    float *y;
    const float *x;
    int HW, C, groups, cg, gpt, with_silu;
    const sd_tensor *gamma, *beta;
    float eps;
    sd_pool *pool;
} groupnorm_job;

static void groupnorm_task(void *arg, int task, int thread)
{
    const groupnorm_job *j = (const groupnorm_job *)arg;
    int nblk = (j->groups + j->gpt - 1) / j->gpt, b = task / nblk, g0 = (task % nblk) * j->gpt;
    int g1 = g0 + j->gpt < j->groups ? g0 + j->gpt : j->groups, c0 = g0 * j->cg, cb = (g1 - g0) * j->cg;
    int cpad = (cb + VF_WIDTH - 1) / VF_WIDTH * VF_WIDTH;
    const float *xb = j->x + (size_t)b * j->HW * j->C + c0;
    float *yb = j->y + (size_t)b * j->HW * j->C + c0;
    double *dsum = (double *)(void *)j->pool->scratch[thread], *dsq = dsum + cpad;
    float *fs = (float *)(void *)(dsq + cpad), *fq = fs + cpad, *shift = fq + cpad, *scale = shift + cpad, *offset = scale + cpad;
    for (int c = 0; c < cpad; c++) {
        dsum[c] = dsq[c] = 0;
        shift[c] = c < cb ? xb[(c / j->cg) * j->cg] : 0.0f;
    }
    for (int p0 = 0; p0 < j->HW; p0 += 256) {
        int p1 = p0 + 256 < j->HW ? p0 + 256 : j->HW;
        for (int c = 0; c < cpad; c++) fs[c] = fq[c] = 0.0f;
        for (int p = p0; p < p1; p++) {
            const float *row = xb + (size_t)p * j->C;
            for (int c = 0; c < cb; c += VF_WIDTH) {
                vfloat v = cb - c >= VF_WIDTH ? vf_load(row + c) : vf_load_n(row + c, cb - c);
                vfloat d = vf_sub(v, vf_load(shift + c));
                vf_store(fs + c, vf_add(vf_load(fs + c), d));
                vf_store(fq + c, vf_fma(d, d, vf_load(fq + c)));
            }
        }
        for (int c = 0; c < cb; c++) { dsum[c] += fs[c]; dsq[c] += fq[c]; }
    }
    for (int g = 0; g < g1 - g0; g++) {
        double s = 0, q = 0, n = (double)j->HW * j->cg;
        for (int c = g * j->cg; c < (g + 1) * j->cg; c++) { s += dsum[c]; q += dsq[c]; }
        double mean = s / n, var = q / n - mean * mean;
        float rstd = (float)(1.0 / sqrt((var > 0 ? var : 0) + j->eps));
        float m = (float)(mean + shift[g * j->cg]);
        tensor_floats(scale + g * j->cg, j->gamma, (size_t)(c0 + g * j->cg), j->cg);
        tensor_floats(offset + g * j->cg, j->beta, (size_t)(c0 + g * j->cg), j->cg);
        for (int c = g * j->cg; c < (g + 1) * j->cg; c++) {
            scale[c] *= rstd;
            offset[c] -= m * scale[c];
        }
    }
    for (int p = 0; p < j->HW; p++) {
        const float *row = xb + (size_t)p * j->C;
        float *out = yb + (size_t)p * j->C;
        int c = 0;
        for (; c + VF_WIDTH <= cb; c += VF_WIDTH) {
            vfloat v = vf_fma(vf_load(row + c), vf_load(scale + c), vf_load(offset + c));
            vf_store(out + c, j->with_silu ? vf_silu(v) : v);
        }
        if (c < cb) {
            vfloat v = vf_fma(vf_load_n(row + c, cb - c), vf_load(scale + c), vf_load(offset + c));
            vf_store_n(out + c, j->with_silu ? vf_silu(v) : v, cb - c);
        }
    }
}

static void groupnorm(sd_pool *pool, float *y, const float *x, int B, int HW, int C, int groups,
                      const sd_tensor *gamma, const sd_tensor *beta, float eps, int with_silu)
{
    groupnorm_job j;
    if (B <= 0 || HW <= 0 || C <= 0) return;
    SD_ASSERT(groups > 0 && C % groups == 0);
    SD_ASSERT((size_t)C * 10 + 64 <= pool->scratch_floats);
    j.y = y; j.x = x; j.HW = HW; j.C = C; j.groups = groups; j.cg = C / groups;
    j.gpt = j.cg >= 16 ? 1 : (16 + j.cg - 1) / j.cg;
    j.with_silu = with_silu; j.gamma = gamma; j.beta = beta; j.eps = eps; j.pool = pool;
    pool_run(pool, groupnorm_task, &j, B * ((groups + j.gpt - 1) / j.gpt));
}

/* LayerNorm over the last axis of x [M, C] (CLIP and the UNet's transformer blocks). y may equal x.
   Two passes over each row (mean, then squared deviations) keep the variance exact enough. */
static void layernorm(float *y, const float *x, int M, int C, const sd_tensor *gamma,
                      const sd_tensor *beta, float eps)
{
    float g[256], bt[256];
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * C;
        float *yr = y + (size_t)m * C;
        vfloat s = vf_zero(), q = vf_zero();
        int c = 0;
        for (; c + VF_WIDTH <= C; c += VF_WIDTH) s = vf_add(s, vf_load(xr + c));
        if (c < C) s = vf_add(s, vf_load_n(xr + c, C - c));
        float meanf = vf_sum(s) / (float)C, qs;
        vfloat mean = vf_set1(meanf);
        for (c = 0; c + VF_WIDTH <= C; c += VF_WIDTH) { vfloat d = vf_sub(vf_load(xr + c), mean); q = vf_fma(d, d, q); }
        qs = vf_sum(q);
        for (; c < C; c++) qs += (xr[c] - meanf) * (xr[c] - meanf);
        vfloat rstd = vf_set1(1.0f / sqrtf(qs / (float)C + eps));
        for (int c0 = 0; c0 < C; c0 += 256) {
            int n = C - c0 < 256 ? C - c0 : 256, k = 0;
            tensor_floats(g, gamma, (size_t)c0, n);
            tensor_floats(bt, beta, (size_t)c0, n);
            for (; k + VF_WIDTH <= n; k += VF_WIDTH)
                vf_store(yr + c0 + k, vf_fma(vf_mul(vf_sub(vf_load(xr + c0 + k), mean), rstd), vf_load(g + k), vf_load(bt + k)));
            if (k < n)
                vf_store_n(yr + c0 + k, vf_fma(vf_mul(vf_sub(vf_load_n(xr + c0 + k, n - k), mean), rstd),
                                               vf_load_n(g + k, n - k), vf_load_n(bt + k, n - k)), n - k);
        }
    }
}

/* GEGLU (the UNet's feed-forward): x [M, 2C] holds the value half then the gate half of the
   projection; y [M, C] = value · gelu(gate). y may equal x (rows are read before written). */
static void geglu(float *y, const float *x, int M, int C)
{
    for (int m = 0; m < M; m++) {
        const float *xv = x + (size_t)m * 2 * C, *xg = xv + C;
        float *yr = y + (size_t)m * C;
        int c = 0;
        for (; c + VF_WIDTH <= C; c += VF_WIDTH) vf_store(yr + c, vf_mul(vf_load(xv + c), vf_gelu(vf_load(xg + c))));
        if (c < C) vf_store_n(yr + c, vf_mul(vf_load_n(xv + c, C - c), vf_gelu(vf_load_n(xg + c, C - c))), C - c);
    }
}

/* Nearest-neighbour 2x upsampling, NHWC: x [B, H, W, C] → y [B, 2H, 2W, C]. */
static void upsample2x(float *y, const float *x, int B, int H, int W, int C)
{
    size_t row = (size_t)2 * W * C;
    for (int b = 0; b < B; b++)
        for (int iy = 0; iy < H; iy++) {
            float *o = y + ((size_t)b * 2 * H + 2 * iy) * row;
            const float *in = x + ((size_t)b * H + iy) * W * C;
            for (int ix = 0; ix < W; ix++) {
                memcpy(o + (size_t)2 * ix * C, in + (size_t)ix * C, (size_t)C * sizeof(float));
                memcpy(o + (size_t)(2 * ix + 1) * C, in + (size_t)ix * C, (size_t)C * sizeof(float));
            }
            memcpy(o + row, o, row * sizeof(float));
        }
}

/* ---- attention ---- */

/* Multi-head scaled dot-product attention. For batch item b, head h and query i:
   out[b, i, h·d : h·d+d] = Σ_j softmax_j(q_i · k_j / √d) v_j over keys j < Nk (j ≤ i when causal).
   q, k, v, out are row-major with row strides ldq, ldk, ldv, ldo (so fused q/k/v projections
   can be read in place); rows of batch item b start at b·Nq (queries) and b·Nk (keys/values).

   Flash-style: one task per (b, h, block of ATT_QB queries). The block's queries are packed
   transposed (d x QB), so scores for GEMM_MR keys at a time come from the GEMM micro-kernel
   with queries along the vector lanes; keys go by in blocks of ATT_BK with a running max and
   sum per query (softmax in base 2, the 1/√d·log2(e) folded into the packed queries), and
   the output is accumulated transposed (d x QB). The Nq x Nk score matrix never exists. */
#define ATT_QB GEMM_NR
#define ATT_BK 128

typedef struct attention_job {
    sd_pool *pool;
    float *out;
    const float *q, *k, *v;
    int ldo, ldq, ldk, ldv, Nq, Nk, heads, d, causal, qblocks;
} attention_job;

/* ot[c][i] = ot[c][i]·alpha_i + Σ_j v[j][c] · p[j][i] for c < d, j < bk. */
static void attention_pv(float *ot, int d, const float *v, int ldv, const float *p, int bk, vfloat al0, vfloat al1)
{
    int c0 = 0;
#define PV_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define PV_DECL(r) vfloat o##r##0 = vf_mul(vf_load(o + r * ATT_QB), al0), o##r##1 = vf_mul(vf_load(o + r * ATT_QB + VF_WIDTH), al1);
#define PV_FMA(r) t = vf_set1(vr[r]); o##r##0 = vf_fma(t, p0, o##r##0); o##r##1 = vf_fma(t, p1, o##r##1);
#define PV_STORE(r) vf_store(o + r * ATT_QB, o##r##0); vf_store(o + r * ATT_QB + VF_WIDTH, o##r##1);
    for (; c0 + 8 <= d; c0 += 8) {
        float *o = ot + (size_t)c0 * ATT_QB;
        PV_ROWS(PV_DECL)
        for (int j = 0; j < bk; j++) {
            const float *vr = v + (size_t)j * ldv + c0;
            vfloat p0 = vf_load(p + (size_t)j * ATT_QB), p1 = vf_load(p + (size_t)j * ATT_QB + VF_WIDTH), t;
            PV_ROWS(PV_FMA)
        }
        PV_ROWS(PV_STORE)
    }
#undef PV_ROWS
#undef PV_DECL
#undef PV_FMA
#undef PV_STORE
    for (; c0 < d; c0++) {
        float *o = ot + (size_t)c0 * ATT_QB;
        vfloat o0 = vf_mul(vf_load(o), al0), o1 = vf_mul(vf_load(o + VF_WIDTH), al1);
        for (int j = 0; j < bk; j++) {
            vfloat t = vf_set1(v[(size_t)j * ldv + c0]);
            o0 = vf_fma(t, vf_load(p + (size_t)j * ATT_QB), o0);
            o1 = vf_fma(t, vf_load(p + (size_t)j * ATT_QB + VF_WIDTH), o1);
        }
        vf_store(o, o0);
        vf_store(o + VF_WIDTH, o1);
    }
}

static void attention_task(void *arg, int task, int thread)
{
    const attention_job *j = (const attention_job *)arg;
    int qb = task % j->qblocks, h = (task / j->qblocks) % j->heads, b = task / j->qblocks / j->heads, d = j->d;
    int q0 = qb * ATT_QB, nq = j->Nq - q0 < ATT_QB ? j->Nq - q0 : ATT_QB;
    int nk = j->causal && q0 + nq < j->Nk ? q0 + nq : j->Nk;   /* keys any query of the block sees */
    float *qt = j->pool->scratch[thread], *ot = qt + (size_t)d * ATT_QB, *st = ot + (size_t)d * ATT_QB;
    float *mrow = st + (size_t)(ATT_BK + GEMM_MR) * ATT_QB, *lrow = mrow + ATT_QB;
    const float *rows[GEMM_MR];
    const float *kbase = j->k + (size_t)b * j->Nk * j->ldk + (size_t)h * d;
    const float *vbase = j->v + (size_t)b * j->Nk * j->ldv + (size_t)h * d;
    float sc = 1.4426950408889634f / sqrtf((float)d);
    for (int c = 0; c < d; c++)
        for (int i = 0; i < ATT_QB; i++)
            qt[(size_t)c * ATT_QB + i] = i < nq ? j->q[((size_t)b * j->Nq + q0 + i) * j->ldq + (size_t)h * d + c] * sc : 0.0f;
    memset(ot, 0, (size_t)d * ATT_QB * sizeof(float));
    vfloat m0 = vf_set1(-INFINITY), m1 = m0, l0 = vf_zero(), l1 = vf_zero();
    for (int kb0 = 0; kb0 < nk; kb0 += ATT_BK) {
        int bk = nk - kb0 < ATT_BK ? nk - kb0 : ATT_BK;
        for (int jt = 0; jt < bk; jt += GEMM_MR) {
            for (int r = 0; r < GEMM_MR; r++) rows[r] = kbase + (size_t)(kb0 + jt + (jt + r < bk ? r : 0)) * j->ldk;
            gemm_tile(rows, 1, d, qt, st + (size_t)jt * ATT_QB, ATT_QB, GEMM_MR, ATT_QB, 0, NULL);
        }
        if (j->causal && kb0 + bk - 1 > q0)
            for (int jj = 0; jj < bk; jj++)
                for (int i = 0; i < ATT_QB; i++)
                    if (kb0 + jj > q0 + i) st[(size_t)jj * ATT_QB + i] = -INFINITY;
        vfloat n0 = m0, n1 = m1, s0 = vf_zero(), s1 = vf_zero();
        for (int jj = 0; jj < bk; jj++) {
            n0 = vf_max(n0, vf_load(st + (size_t)jj * ATT_QB));
            n1 = vf_max(n1, vf_load(st + (size_t)jj * ATT_QB + VF_WIDTH));
        }
        for (int jj = 0; jj < bk; jj++) {
            float *sr = st + (size_t)jj * ATT_QB;
            vfloat e0 = vf_exp2(vf_sub(vf_load(sr), n0)), e1 = vf_exp2(vf_sub(vf_load(sr + VF_WIDTH), n1));
            vf_store(sr, e0);
            vf_store(sr + VF_WIDTH, e1);
            s0 = vf_add(s0, e0);
            s1 = vf_add(s1, e1);
        }
        vfloat a0 = vf_exp2(vf_sub(m0, n0)), a1 = vf_exp2(vf_sub(m1, n1));
        l0 = vf_fma(l0, a0, s0);
        l1 = vf_fma(l1, a1, s1);
        m0 = n0;
        m1 = n1;
        attention_pv(ot, d, vbase + (size_t)kb0 * j->ldv, j->ldv, st, bk, a0, a1);
    }
    vf_store(lrow, vf_div(vf_set1(1.0f), l0));
    vf_store(lrow + VF_WIDTH, vf_div(vf_set1(1.0f), l1));
    for (int i = 0; i < nq; i++) {
        float *o = j->out + ((size_t)b * j->Nq + q0 + i) * j->ldo + (size_t)h * d;
        for (int c = 0; c < d; c++) o[c] = nk > 0 ? ot[(size_t)c * ATT_QB + i] * lrow[i] : 0.0f;
    }
}

static void attention(sd_pool *pool, float *out, int ldo, const float *q, int ldq, const float *k,
                      int ldk, const float *v, int ldv, int B, int Nq, int Nk, int heads, int d,
                      int causal)
{
    attention_job j;
    if (B <= 0 || Nq <= 0 || heads <= 0 || d <= 0) return;
    SD_ASSERT((size_t)(2 * d + ATT_BK + GEMM_MR + 2) * ATT_QB <= pool->scratch_floats);
    j.pool = pool; j.out = out; j.q = q; j.k = k; j.v = v;
    j.ldo = ldo; j.ldq = ldq; j.ldk = ldk; j.ldv = ldv; j.Nq = Nq; j.Nk = Nk; j.heads = heads; j.d = d;
    j.causal = causal; j.qblocks = (Nq + ATT_QB - 1) / ATT_QB;
    pool_run(pool, attention_task, &j, B * heads * j.qblocks);
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
/* The denoiser of latent diffusion (Rombach et al. 2022, Fig. 3; Ronneberger et al.'s U-Net
   with Ho et al.'s time embedding): the noisy latent goes down through levels of ResNet blocks
   and spatial transformers that attend to the text, halving the size between levels, through a
   middle block, and back up, each up block also taking the activations that the down path
   saved at its size (the skip connections). Every ResNet block adds a projection of the
   timestep's sinusoidal embedding. Activations are NHWC inside; the API speaks NCHW. */

#define UNET_MAX_LEVELS 6
#define UNET_MAX_RESNETS 4                     /* per up level (one more than per down level) */
#define UNET_MAX_SKIPS (1 + UNET_MAX_LEVELS * UNET_MAX_RESNETS)
#define UNET_GROUPS 32                         /* GroupNorm groups everywhere in the UNet */
#define UNET_MAX_CHANNELS 16384                /* SD's widest: 2560 (concatenated), 10240 (GEGLU) */
#define UNET_MAX_HEAD_DIM 1024                 /* SD's widest: 160 */

/* The projections of a multi-head attention layer: q from the image tokens, k and v from the
   same tokens (self-attention) or from the text context (cross-attention). */
typedef struct unet_attention { const sd_tensor *q, *k, *v, *out_w, *out_b; } unet_attention;

/* diffusers' BasicTransformerBlock: LayerNorm→self-attention, LayerNorm→cross-attention,
   LayerNorm→GEGLU feed-forward, each added to the residual stream. */
typedef struct unet_block {
    const sd_tensor *norm1_w, *norm1_b, *norm2_w, *norm2_b, *norm3_w, *norm3_b;
    unet_attention self, cross;
    const sd_tensor *ff1_w, *ff1_b, *ff2_w, *ff2_b;
    int ff_inner;                              /* GEGLU width: ff.net.0.proj gives twice this */
} unet_block;

/* Transformer2DModel: GroupNorm, proj_in (1x1 conv in SD1, linear in SD2: the same GEMM in
   NHWC), `depth` blocks over the h·w positions as tokens, proj_out, added to the input. */
typedef struct unet_transformer {
    const sd_tensor *norm_w, *norm_b, *proj_in_w, *proj_in_b, *proj_out_w, *proj_out_b;
    unet_block *blocks;                        /* [depth], in the arena */
    int depth;                                 /* 0: no transformer here */
    int channels, inner, heads, head_dim;
} unet_transformer;

/* ResnetBlock2D with time embedding: GroupNorm-SiLU-conv3x3, + linear(SiLU(temb)),
   GroupNorm-SiLU-conv3x3, plus the input (through a 1x1 conv when channels change). */
typedef struct unet_resnet {
    const sd_tensor *norm1_w, *norm1_b, *conv1_w, *conv1_b, *time_w, *time_b;
    const sd_tensor *norm2_w, *norm2_b, *conv2_w, *conv2_b, *skip_w, *skip_b;   /* skip_w NULL: identity */
    int cin, cout;
} unet_resnet;

/* One resolution: its down resnets (+ transformers) and downsampler, and the up path's
   resnets (+ transformers) at the same size and the upsampler that leaves it. */
typedef struct unet_level {
    unet_resnet down[UNET_MAX_RESNETS], up[UNET_MAX_RESNETS];
    unet_transformer down_attn[UNET_MAX_RESNETS], up_attn[UNET_MAX_RESNETS];
    const sd_tensor *downsample_w, *downsample_b;   /* NULL at the lowest level */
    const sd_tensor *upsample_w, *upsample_b;       /* NULL at the top level */
} unet_level;

struct sd_unet_model {
    int in_channels, out_channels, model_channels, time_dim, context_dim;
    int levels, resnets;                        /* resnets per down level; up levels have one more */
    const sd_tensor *time1_w, *time1_b, *time2_w, *time2_b;
    const sd_tensor *conv_in_w, *conv_in_b, *norm_out_w, *norm_out_b, *conv_out_w, *conv_out_b;
    unet_level level[UNET_MAX_LEVELS];
    unet_resnet mid[2];
    unet_transformer mid_attn;
};

/* ---- loading: one description, two name maps ---- */

enum { UNET_DOWN_RES, UNET_DOWN_ATTN, UNET_DOWNSAMPLE, UNET_MID_RES, UNET_MID_ATTN,
       UNET_UP_RES, UNET_UP_ATTN, UNET_UPSAMPLE };

/* The key prefix of one part of the UNet. The original (LDM) layout numbers input_blocks and
   output_blocks consecutively (conv_in is input block 0; each level has `resnets` blocks and then
   the downsampler; up level i = diffusers' up_blocks.i has resnets+1 blocks, the last of which
   also holds the upsampler); diffusers names blocks by level. */
static const char *unet_part(char *buf, size_t n, const weights *w, const sd_unet_model *u,
                             int part, int l, int j)
{
    int nres = u->resnets, up = u->levels - 1 - l;   /* diffusers' up block of level l */
    if (w->diffusers) {
        switch (part) {
        case UNET_DOWN_RES: snprintf(buf, n, "down_blocks.%d.resnets.%d.", l, j); break;
        case UNET_DOWN_ATTN: snprintf(buf, n, "down_blocks.%d.attentions.%d.", l, j); break;
        case UNET_DOWNSAMPLE: snprintf(buf, n, "down_blocks.%d.downsamplers.0.conv.", l); break;
        case UNET_MID_RES: snprintf(buf, n, "mid_block.resnets.%d.", j); break;
        case UNET_MID_ATTN: snprintf(buf, n, "mid_block.attentions.0."); break;
        case UNET_UP_RES: snprintf(buf, n, "up_blocks.%d.resnets.%d.", up, j); break;
        case UNET_UP_ATTN: snprintf(buf, n, "up_blocks.%d.attentions.%d.", up, j); break;
        default: snprintf(buf, n, "up_blocks.%d.upsamplers.0.conv.", up); break;
        }
    } else {
        switch (part) {
        case UNET_DOWN_RES: snprintf(buf, n, "input_blocks.%d.0.", 1 + l * (nres + 1) + j); break;
        case UNET_DOWN_ATTN: snprintf(buf, n, "input_blocks.%d.1.", 1 + l * (nres + 1) + j); break;
        case UNET_DOWNSAMPLE: snprintf(buf, n, "input_blocks.%d.0.op.", (l + 1) * (nres + 1)); break;
        case UNET_MID_RES: snprintf(buf, n, "middle_block.%d.", j == 0 ? 0 : u->mid_attn.depth ? 2 : 1); break;
        case UNET_MID_ATTN: snprintf(buf, n, "middle_block.1."); break;
        case UNET_UP_RES: snprintf(buf, n, "output_blocks.%d.0.", up * (nres + 1) + j); break;
        case UNET_UP_ATTN: snprintf(buf, n, "output_blocks.%d.1.", up * (nres + 1) + j); break;
        default: snprintf(buf, n, "output_blocks.%d.%d.conv.", up * (nres + 1) + nres, u->level[l].up_attn[0].depth ? 2 : 1); break;
        }
    }
    return buf;
}

/* Whether `prefix` + `suffix` names a tensor in the checkpoint. */
static int unet_has(const weights *w, const char *prefix, const char *suffix)
{
    char name[512];
    snprintf(name, sizeof name, "%s%s", prefix, suffix);
    return weights_find(w, name) != NULL;
}

/* Dimension i of t as a channel count: 0 (and an error) when t is missing or the size absurd. */
static int unet_dim(weights *w, const sd_tensor *t, int i)
{
    if (!t || w->failed) return 0;
    if (t->shape[i] < 1 || t->shape[i] > UNET_MAX_CHANNELS) {
        w->failed = fail(w->err, SD_ERR_UNSUPPORTED, "tensor '%s': size %lld of dimension %d is outside 1..%d",
                         t->name, (long long)t->shape[i], i, UNET_MAX_CHANNELS);
        return 0;
    }
    return (int)t->shape[i];
}

/* A GroupNorm's weight and bias over C channels, which the 32 groups must divide. */
static void unet_groupnorm(weights *w, const sd_tensor **g, const sd_tensor **b, int C, const char *p, const char *name)
{
    *g = need(w, C, 0, 0, 0, "%s%s.weight", p, name);
    *b = need(w, C, 0, 0, 0, "%s%s.bias", p, name);
    if (!w->failed && C % UNET_GROUPS)
        w->failed = fail(w->err, SD_ERR_UNSUPPORTED, "tensor '%s': %d channels do not split into %d groups",
                         (*g)->name, C, UNET_GROUPS);
}

static void load_resnet(weights *w, const sd_unet_model *u, unet_resnet *r, const char *p, int cin)
{
    static const char *const names[2][6] = {
        {"in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0", "out_layers.3", "skip_connection"},
        {"norm1", "conv1", "time_emb_proj", "norm2", "conv2", "conv_shortcut"}};
    const char *const *n = names[w->diffusers ? 1 : 0];
    r->cin = cin;
    if (!w->failed && cin > UNET_MAX_CHANNELS)   /* an up resnet's input: two widths added */
        w->failed = fail(w->err, SD_ERR_UNSUPPORTED, "UNet block '%s%s': %d input channels, more than %d",
                         w->prefix ? w->prefix : "", p, cin, UNET_MAX_CHANNELS);
    unet_groupnorm(w, &r->norm1_w, &r->norm1_b, cin, p, n[0]);
    r->conv1_w = need(w, -1, cin, 3, 3, "%s%s.weight", p, n[1]);
    r->cout = unet_dim(w, r->conv1_w, 0);
    if (w->failed) return;
    r->conv1_b = need(w, r->cout, 0, 0, 0, "%s%s.bias", p, n[1]);
    r->time_w = need(w, r->cout, u->time_dim, 0, 0, "%s%s.weight", p, n[2]);
    r->time_b = need(w, r->cout, 0, 0, 0, "%s%s.bias", p, n[2]);
    unet_groupnorm(w, &r->norm2_w, &r->norm2_b, r->cout, p, n[3]);
    r->conv2_w = need(w, r->cout, r->cout, 3, 3, "%s%s.weight", p, n[4]);
    r->conv2_b = need(w, r->cout, 0, 0, 0, "%s%s.bias", p, n[4]);
    r->skip_w = r->skip_b = NULL;
    if (cin != r->cout) {
        r->skip_w = need(w, r->cout, cin, 1, 1, "%s%s.weight", p, n[5]);
        r->skip_b = need(w, r->cout, 0, 0, 0, "%s%s.bias", p, n[5]);
    }
}

static void load_attention(weights *w, unet_attention *at, const char *p, int D, int kv_dim)
{
    at->q = need(w, D, D, 0, 0, "%sto_q.weight", p);
    at->k = need(w, D, kv_dim, 0, 0, "%sto_k.weight", p);
    at->v = need(w, D, kv_dim, 0, 0, "%sto_v.weight", p);
    at->out_w = need(w, D, D, 0, 0, "%sto_out.0.weight", p);
    at->out_b = need(w, D, 0, 0, 0, "%sto_out.0.bias", p);
}

static void load_transformer(weights *w, sd_unet_model *u, unet_transformer *t, const char *p, int C, sd_arena *a)
{
    char q[300];
    t->channels = C;
    unet_groupnorm(w, &t->norm_w, &t->norm_b, C, p, "norm");
    t->proj_in_w = need(w, -1, C, 0, 0, "%sproj_in.weight", p);
    t->inner = unet_dim(w, t->proj_in_w, 0);
    if (w->failed) return;
    int D = t->inner;
    t->proj_in_b = need(w, D, 0, 0, 0, "%sproj_in.bias", p);
    t->proj_out_w = need(w, C, D, 0, 0, "%sproj_out.weight", p);
    t->proj_out_b = need(w, C, 0, 0, 0, "%sproj_out.bias", p);
    for (t->depth = 0; t->depth < 64; t->depth++) {
        snprintf(q, sizeof q, "%stransformer_blocks.%d.", p, t->depth);
        if (!unet_has(w, q, "norm1.weight")) break;
    }
    if (t->depth == 0) t->depth = 1;   /* so that need() names the missing block */
    t->blocks = (unet_block *)arena_array(a, (size_t)t->depth, sizeof(unet_block), w->err);
    if (!t->blocks) { w->failed = SD_ERR_MEMORY; return; }
    for (int i = 0; i < t->depth && !w->failed; i++) {
        unet_block *b = &t->blocks[i];
        snprintf(q, sizeof q, "%stransformer_blocks.%d.", p, i);
        b->norm1_w = need(w, D, 0, 0, 0, "%snorm1.weight", q);
        b->norm1_b = need(w, D, 0, 0, 0, "%snorm1.bias", q);
        b->norm2_w = need(w, D, 0, 0, 0, "%snorm2.weight", q);
        b->norm2_b = need(w, D, 0, 0, 0, "%snorm2.bias", q);
        b->norm3_w = need(w, D, 0, 0, 0, "%snorm3.weight", q);
        b->norm3_b = need(w, D, 0, 0, 0, "%snorm3.bias", q);
        if (!u->context_dim)   /* the text width, read off the first cross-attention */
            u->context_dim = unet_dim(w, need(w, D, -1, 0, 0, "%sattn2.to_k.weight", q), 1);
        snprintf(q, sizeof q, "%stransformer_blocks.%d.attn1.", p, i);
        load_attention(w, &b->self, q, D, D);
        snprintf(q, sizeof q, "%stransformer_blocks.%d.attn2.", p, i);
        load_attention(w, &b->cross, q, D, u->context_dim);
        snprintf(q, sizeof q, "%stransformer_blocks.%d.ff.net.", p, i);
        b->ff1_w = need(w, -1, D, 0, 0, "%s0.proj.weight", q);
        int two_f = unet_dim(w, b->ff1_w, 0);
        if (w->failed) return;
        if (two_f % 2) {
            w->failed = fail(w->err, SD_ERR_SHAPE, "tensor '%s' has an odd number of rows; GEGLU needs value and gate halves",
                             b->ff1_w->name);
            return;
        }
        b->ff_inner = two_f / 2;
        b->ff1_b = need(w, two_f, 0, 0, 0, "%s0.proj.bias", q);
        b->ff2_w = need(w, D, b->ff_inner, 0, 0, "%s2.weight", q);
        b->ff2_b = need(w, D, 0, 0, 0, "%s2.bias", q);
    }
}

/* A transformer if the checkpoint has one at prefix p (depth stays 0 otherwise). */
static void maybe_transformer(weights *w, sd_unet_model *u, unet_transformer *t, const char *p, int C, sd_arena *a)
{
    memset(t, 0, sizeof *t);
    if (!w->failed && unet_has(w, p, "proj_in.weight")) load_transformer(w, u, t, p, C, a);
}

/* An integer from the file's metadata, or dflt when absent or not a plain integer. */
static int meta_int(const sd_safetensors *meta, const char *key, int dflt)
{
    const char *s = meta ? sd_safetensors_meta(meta, key) : NULL;
    int sign = 1, v = 0;
    if (!s) return dflt;
    if (*s == '-') { sign = -1; s++; }
    if (!*s) return dflt;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > 100000000) return dflt;
        v = v * 10 + (*s - '0');
    }
    return sign * v;
}

/* Heads of a transformer. The tensors cannot tell: the metadata may fix the number of heads
   (SD1 style) or the head size (SD2 style); without it SD2 (linear proj_in, or a 1024-wide
   OpenCLIP context) uses head dim 64 and SD1 8 heads. */
static void set_heads(weights *w, const sd_unet_model *u, const sd_safetensors *meta, unet_transformer *t)
{
    int heads = meta_int(meta, "sd.unet.num_heads", -1), head_dim = meta_int(meta, "sd.unet.num_head_channels", -1);
    if (!t->depth || w->failed) return;
    if (heads <= 0 && head_dim <= 0) {
        if (t->proj_in_w->ndim == 2 || u->context_dim == 1024) head_dim = 64;   /* SD2 */
        else heads = 8;                                                          /* SD1 */
    }
    if (heads > 0) head_dim = t->inner / heads;
    else heads = t->inner / head_dim;
    if (heads < 1 || head_dim < 1 || head_dim > UNET_MAX_HEAD_DIM || heads * head_dim != t->inner)
        w->failed = fail(w->err, SD_ERR_UNSUPPORTED, "tensor '%s': %d channels are not %d attention heads of %d (of at most %d)",
                         t->proj_in_w->name, t->inner, heads, head_dim, UNET_MAX_HEAD_DIM);
    t->heads = heads;
    t->head_dim = head_dim;
}

/* Reads the architecture off the checkpoint (which tensors exist, their shapes), checking every
   tensor the forward pass will touch. */
static void describe_unet(weights *w, sd_unet_model *u, const sd_safetensors *meta, sd_arena *a)
{
    char p[128];
    const char *conv1 = w->diffusers ? "conv1.weight" : "in_layers.2.weight";
    int dif = w->diffusers, skip_ch[UNET_MAX_SKIPS], nskip = 0, ch;

    if (weights_find(w, dif ? "add_embedding.linear_1.weight" : "label_emb.0.0.weight")) {
        w->failed = fail(w->err, SD_ERR_UNSUPPORTED, "SDXL UNet (size and pooled-text conditioning) is not supported yet");
        return;
    }
    /* stem: conv_in and the time MLP */
    u->conv_in_w = need(w, -1, -1, 3, 3, "%s.weight", dif ? "conv_in" : "input_blocks.0.0");
    u->model_channels = unet_dim(w, u->conv_in_w, 0);
    u->in_channels = unet_dim(w, u->conv_in_w, 1);
    u->conv_in_b = need(w, u->model_channels, 0, 0, 0, "%s.bias", dif ? "conv_in" : "input_blocks.0.0");
    u->time1_w = need(w, -1, u->model_channels, 0, 0, "%s.weight", dif ? "time_embedding.linear_1" : "time_embed.0");
    u->time_dim = unet_dim(w, u->time1_w, 0);
    if (w->failed) return;
    u->time1_b = need(w, u->time_dim, 0, 0, 0, "%s.bias", dif ? "time_embedding.linear_1" : "time_embed.0");
    u->time2_w = need(w, u->time_dim, u->time_dim, 0, 0, "%s.weight", dif ? "time_embedding.linear_2" : "time_embed.2");
    u->time2_b = need(w, u->time_dim, 0, 0, 0, "%s.bias", dif ? "time_embedding.linear_2" : "time_embed.2");
    if (!w->failed && u->model_channels % 2)
        w->failed = fail(w->err, SD_ERR_UNSUPPORTED, "tensor '%s': the sinusoidal time embedding needs an even width, not %d",
                         u->conv_in_w->name, u->model_channels);

    /* resnets per level (counted at level 0), then levels */
    while (u->resnets < UNET_MAX_RESNETS && unet_has(w, unet_part(p, sizeof p, w, u, UNET_DOWN_RES, 0, u->resnets), conv1)) u->resnets++;
    if (u->resnets == UNET_MAX_RESNETS && !w->failed)
        w->failed = fail(w->err, SD_ERR_UNSUPPORTED, "UNet with %d or more resnets per level", UNET_MAX_RESNETS);
    if (u->resnets == 0) u->resnets = 1;   /* so that need() names what is missing */
    while (u->levels < UNET_MAX_LEVELS && unet_has(w, unet_part(p, sizeof p, w, u, UNET_DOWN_RES, u->levels, 0), conv1)) u->levels++;
    if (u->levels == UNET_MAX_LEVELS && unet_has(w, unet_part(p, sizeof p, w, u, UNET_DOWN_RES, UNET_MAX_LEVELS, 0), conv1) && !w->failed)
        w->failed = fail(w->err, SD_ERR_UNSUPPORTED, "UNet with more than %d levels", UNET_MAX_LEVELS);
    if (u->levels == 0) u->levels = 1;

    /* down path; the channels of every skip connection it leaves, for the up path's inputs */
    ch = u->model_channels;
    skip_ch[nskip++] = ch;
    for (int l = 0; l < u->levels && !w->failed; l++) {
        unet_level *lv = &u->level[l];
        for (int j = 0; j < u->resnets && !w->failed; j++) {
            load_resnet(w, u, &lv->down[j], unet_part(p, sizeof p, w, u, UNET_DOWN_RES, l, j), ch);
            ch = lv->down[j].cout;
            maybe_transformer(w, u, &lv->down_attn[j], unet_part(p, sizeof p, w, u, UNET_DOWN_ATTN, l, j), ch, a);
            skip_ch[nskip++] = ch;
        }
        if (l < u->levels - 1) {
            unet_part(p, sizeof p, w, u, UNET_DOWNSAMPLE, l, 0);
            lv->downsample_w = need(w, ch, ch, 3, 3, "%sweight", p);
            lv->downsample_b = need(w, ch, 0, 0, 0, "%sbias", p);
            skip_ch[nskip++] = ch;
        }
    }
    /* middle: resnet, transformer, resnet */
    load_resnet(w, u, &u->mid[0], unet_part(p, sizeof p, w, u, UNET_MID_RES, 0, 0), ch);
    ch = u->mid[0].cout;
    maybe_transformer(w, u, &u->mid_attn, unet_part(p, sizeof p, w, u, UNET_MID_ATTN, 0, 0), ch, a);
    load_resnet(w, u, &u->mid[1], unet_part(p, sizeof p, w, u, UNET_MID_RES, 0, 1), ch);
    ch = u->mid[1].cout;
    /* up path: each resnet takes the running activation concatenated with the latest skip */
    for (int l = u->levels - 1; l >= 0 && !w->failed; l--) {
        unet_level *lv = &u->level[l];
        for (int j = 0; j <= u->resnets && !w->failed; j++) {
            load_resnet(w, u, &lv->up[j], unet_part(p, sizeof p, w, u, UNET_UP_RES, l, j), ch + skip_ch[--nskip]);
            ch = lv->up[j].cout;
            maybe_transformer(w, u, &lv->up_attn[j], unet_part(p, sizeof p, w, u, UNET_UP_ATTN, l, j), ch, a);
        }
        if (l > 0) {
            unet_part(p, sizeof p, w, u, UNET_UPSAMPLE, l, 0);
            lv->upsample_w = need(w, ch, ch, 3, 3, "%sweight", p);
            lv->upsample_b = need(w, ch, 0, 0, 0, "%sbias", p);
        }
    }
    /* head: GroupNorm-SiLU-conv back to latent channels */
    if (w->failed) return;
    unet_groupnorm(w, &u->norm_out_w, &u->norm_out_b, ch, "", dif ? "conv_norm_out" : "out.0");
    u->conv_out_w = need(w, -1, ch, 3, 3, "%s.weight", dif ? "conv_out" : "out.2");
    u->out_channels = unet_dim(w, u->conv_out_w, 0);
    u->conv_out_b = need(w, u->out_channels, 0, 0, 0, "%s.bias", dif ? "conv_out" : "out.2");

    for (int l = 0; l < u->levels; l++)
        for (int j = 0; j <= u->resnets; j++) {
            if (j < u->resnets) set_heads(w, u, meta, &u->level[l].down_attn[j]);
            set_heads(w, u, meta, &u->level[l].up_attn[j]);
        }
    set_heads(w, u, meta, &u->mid_attn);
}

/* Describes the UNet that w (files + prefix + layout) holds, heads from `meta` (may be NULL).
   The lead's model loader calls this with the weights of the checkpoint it opened. */
static int unet_load(sd_unet_model **out, weights *w, const sd_safetensors *meta, sd_arena *a)
{
    size_t mark = sd_arena_mark(a);
    sd_unet_model *u = (sd_unet_model *)arena_array(a, 1, sizeof *u, w->err);
    if (!u) return SD_ERR_MEMORY;
    memset(u, 0, sizeof *u);
    describe_unet(w, u, meta, a);
    if (w->failed) {
        sd_arena_reset(a, mark);
        return w->failed;
    }
    *out = u;
    return SD_OK;
}

SD_API int sd_unet_load(sd_unet_model **unet, const sd_safetensors *files, int nfiles,
                        const sd_safetensors *meta, sd_arena *a, sd_error *err)
{
    weights w;
    const char *version;
    if (!unet || !files || nfiles < 1 || nfiles > 4 || !a)
        return fail(err, SD_ERR_ARG, "sd_unet_load: NULL argument or nfiles = %d not in 1..4", nfiles);
    memset(&w, 0, sizeof w);
    for (int i = 0; i < nfiles; i++) w.files[i] = &files[i];
    w.nfiles = nfiles;
    w.err = err;
    if (!meta) meta = &files[0];
    version = sd_safetensors_meta(meta, "sd.version");
    if (version && strcmp(version, "1") && strcmp(version, "2"))
        return fail(err, SD_ERR_UNSUPPORTED, "UNet of a model with sd.version = '%.20s': sd.h handles SD1 and SD2", version);
    /* a single-file checkpoint keeps the UNet under model.diffusion_model.; diffusers' unet file has no prefix */
    w.prefix = "model.diffusion_model.";
    if (!weights_find(&w, "input_blocks.0.0.weight")) {
        w.prefix = "";
        w.diffusers = 1;
        if (!weights_find(&w, "conv_in.weight"))
            return fail(err, SD_ERR_MISSING, "no UNet: no tensor named '%sinput_blocks.0.0.weight' or 'conv_in.weight'",
                        "model.diffusion_model.");
    }
    return unet_load(unet, &w, meta, a);
}

/* ---- the forward pass ---- */

/* Test hook: sees named intermediate activations (NHWC; [B, C] vectors as H = W = 1). */
typedef void (*unet_probe)(void *user, const char *name, const float *x, int B, int H, int W, int C);

/* A skip connection: a down-path output, kept on the arena's stack until its up resnet. */
typedef struct unet_skip { float *x; int H, W, C; size_t mark; } unet_skip;

/* The state of one forward pass. Arena layout, bottom up: the time embedding, the up path's
   running activation h (sized for its largest use), the stack of skip connections, then
   per-block scratch that each block gives back when it returns. */
typedef struct unet_run {
    const sd_unet_model *u;
    sd_pool *pool;
    sd_arena *a;
    sd_error *err;
    int rc;                     /* first failure; every block returns at once after one */
    int B;
    const float *context;       /* [B, 77, context_dim] */
    float *temb;                /* SiLU(time embedding) [B, time_dim]: what every resnet takes */
    float *h;                   /* the middle and up path's activation [B, H, W, C] */
    int H, W, C;
    unet_skip skip[UNET_MAX_SKIPS];
    int nskip;
    unet_probe probe;
    void *probe_user;
} unet_run;

static float *run_alloc(unet_run *r, size_t n)
{
    float *p;
    if (r->rc) return NULL;
    if (!(p = arena_floats(r->a, n, r->err))) r->rc = SD_ERR_MEMORY;
    return p;
}

static void run_probe(unet_run *r, const char *name, int index, const float *x, int H, int W, int C)
{
    char s[64];
    if (!r->probe || r->rc) return;
    if (index >= 0) snprintf(s, sizeof s, "%s.%d", name, index);
    else snprintf(s, sizeof s, "%s", name);
    r->probe(r->probe_user, s, x, r->B, H, W, C);
}

static float *push_skip(unet_run *r, int H, int W, int C)
{
    unet_skip *s = &r->skip[r->nskip];
    size_t mark = sd_arena_mark(r->a);
    float *x = run_alloc(r, (size_t)r->B * H * W * C);
    if (!x) return NULL;
    s->x = x; s->H = H; s->W = W; s->C = C; s->mark = mark;
    r->nskip++;
    return x;
}

static void nchw_to_nhwc(float *y, const float *x, int B, int C, int HW)
{
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int i = 0; i < HW; i++) y[((size_t)b * HW + i) * C + c] = x[((size_t)b * C + c) * HW + i];
}

static void nhwc_to_nchw(float *y, const float *x, int B, int C, int HW)
{
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int i = 0; i < HW; i++) y[((size_t)b * C + c) * HW + i] = x[((size_t)b * HW + i) * C + c];
}

/* y [M, Ca + Cb] = each row of a [M, Ca] followed by the same row of b [M, Cb]: torch.cat on
   the channel axis, in NHWC. */
static void concat_channels(float *y, const float *a, int Ca, const float *b, int Cb, size_t M)
{
    for (size_t i = 0; i < M; i++) {
        memcpy(y + i * (Ca + Cb), a + i * Ca, (size_t)Ca * sizeof(float));
        memcpy(y + i * (Ca + Cb) + Ca, b + i * Cb, (size_t)Cb * sizeof(float));
    }
}

/* Nearest-neighbour resize, NHWC, picking source pixels as PyTorch's interpolate(size=...) does
   (source = floor(dst · in/out) in float32). The up path needs it when a size was odd on the way
   down: 5 rows were halved to 3, and 3 must come back to 5, not 6. */
static int nearest_source(int o, int in, int out)
{
    int i = (int)floorf((float)o * ((float)in / (float)out));
    return i < in - 1 ? i : in - 1;
}

static void resize_nearest(float *y, const float *x, int B, int H, int W, int C, int Ho, int Wo)
{
    for (int b = 0; b < B; b++)
        for (int oy = 0; oy < Ho; oy++)
            for (int ox = 0; ox < Wo; ox++)
                memcpy(y + (((size_t)b * Ho + oy) * Wo + ox) * C,
                       x + (((size_t)b * H + nearest_source(oy, H, Ho)) * W + nearest_source(ox, W, Wo)) * C,
                       (size_t)C * sizeof(float));
}

/* ResnetBlock2D: y = conv(SiLU(GN(conv(SiLU(GN(x))) + linear(SiLU(temb))))) + skip(x).
   x [B, H, W, cin] and y [B, H, W, cout] must not overlap. */
static void time_resnet(unet_run *r, const unet_resnet *p, const float *x, float *y, int H, int W)
{
    int B = r->B, HW = H * W, M = B * HW;
    size_t mark = sd_arena_mark(r->a), after_e;
    float *e = run_alloc(r, (size_t)B * p->cout), *t;
    after_e = sd_arena_mark(r->a);
    if (!(t = run_alloc(r, (size_t)M * p->cin))) return;
    groupnorm(r->pool, t, x, B, HW, p->cin, UNET_GROUPS, p->norm1_w, p->norm1_b, 1e-5f, 1);
    conv2d(r->pool, y, t, B, H, W, p->cin, p->conv1_w, p->conv1_b, p->cout, 3, 1, 1, 1);
    /* the timestep, projected to this block's channels, shifts every position */
    linear(r->pool, e, r->temb, B, p->cout, r->u->time_dim, p->time_w, p->time_b);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < HW; i++) add(y + ((size_t)b * HW + i) * p->cout, e + (size_t)b * p->cout, (size_t)p->cout);
    sd_arena_reset(r->a, after_e);
    if (!(t = run_alloc(r, (size_t)M * p->cout))) return;
    groupnorm(r->pool, t, y, B, HW, p->cout, UNET_GROUPS, p->norm2_w, p->norm2_b, 1e-5f, 1);
    conv2d(r->pool, y, t, B, H, W, p->cout, p->conv2_w, p->conv2_b, p->cout, 3, 1, 1, 1);
    if (p->skip_w) matmul(r->pool, y, p->cout, x, p->cin, M, p->cout, p->cin, p->skip_w, p->skip_b, 1);
    else add(y, x, (size_t)M * p->cout);
    sd_arena_reset(r->a, mark);
}

/* BasicTransformerBlock on the token stream hs [B·n, D] (n = H·W tokens per image), in place. */
static void basic_transformer_block(unet_run *r, const unet_transformer *t, const unet_block *blk, float *hs, int n)
{
    int B = r->B, M = B * n, D = t->inner, F = blk->ff_inner, Mc = B * SD_TEXT_TOKENS, Cc = r->u->context_dim;
    size_t mark = sd_arena_mark(r->a);
    float *x, *q, *k, *v, *g;
    /* self-attention over the image's own positions; the attention output overwrites x, the
       LayerNorm output, which q, k and v no longer need */
    x = run_alloc(r, (size_t)M * D); q = run_alloc(r, (size_t)M * D);
    k = run_alloc(r, (size_t)M * D); v = run_alloc(r, (size_t)M * D);
    if (!v) return;
    layernorm(x, hs, M, D, blk->norm1_w, blk->norm1_b, 1e-5f);
    linear(r->pool, q, x, M, D, D, blk->self.q, NULL);
    linear(r->pool, k, x, M, D, D, blk->self.k, NULL);
    linear(r->pool, v, x, M, D, D, blk->self.v, NULL);
    attention(r->pool, x, D, q, D, k, D, v, D, B, n, n, t->heads, t->head_dim, 0);
    matmul(r->pool, hs, D, x, D, M, D, D, blk->self.out_w, blk->self.out_b, 1);
    sd_arena_reset(r->a, mark);
    /* cross-attention: queries from the image, keys and values from the text */
    x = run_alloc(r, (size_t)M * D); q = run_alloc(r, (size_t)M * D);
    k = run_alloc(r, (size_t)Mc * D); v = run_alloc(r, (size_t)Mc * D);
    if (!v) return;
    layernorm(x, hs, M, D, blk->norm2_w, blk->norm2_b, 1e-5f);
    linear(r->pool, q, x, M, D, D, blk->cross.q, NULL);
    linear(r->pool, k, r->context, Mc, D, Cc, blk->cross.k, NULL);
    linear(r->pool, v, r->context, Mc, D, Cc, blk->cross.v, NULL);
    attention(r->pool, x, D, q, D, k, D, v, D, B, n, SD_TEXT_TOKENS, t->heads, t->head_dim, 0);
    matmul(r->pool, hs, D, x, D, M, D, D, blk->cross.out_w, blk->cross.out_b, 1);
    sd_arena_reset(r->a, mark);
    /* feed-forward: GEGLU to 4·D, back to D */
    x = run_alloc(r, (size_t)M * D); g = run_alloc(r, (size_t)M * 2 * F);
    if (!g) return;
    layernorm(x, hs, M, D, blk->norm3_w, blk->norm3_b, 1e-5f);
    linear(r->pool, g, x, M, 2 * F, D, blk->ff1_w, blk->ff1_b);
    geglu(g, g, M, F);
    matmul(r->pool, hs, D, g, F, M, D, F, blk->ff2_w, blk->ff2_b, 1);
    sd_arena_reset(r->a, mark);
}

/* Transformer2DModel on x [B, H, W, C], in place: x += proj_out(blocks(proj_in(GN(x)))). */
static void spatial_transformer(unet_run *r, const unet_transformer *t, float *x, int H, int W)
{
    int B = r->B, n = H * W, M = B * n;
    size_t mark = sd_arena_mark(r->a), after_hs;
    float *hs = run_alloc(r, (size_t)M * t->inner), *xn;
    after_hs = sd_arena_mark(r->a);
    if (!(xn = run_alloc(r, (size_t)M * t->channels))) return;
    groupnorm(r->pool, xn, x, B, n, t->channels, UNET_GROUPS, t->norm_w, t->norm_b, 1e-6f, 0);
    linear(r->pool, hs, xn, M, t->inner, t->channels, t->proj_in_w, t->proj_in_b);
    sd_arena_reset(r->a, after_hs);
    for (int i = 0; i < t->depth; i++) basic_transformer_block(r, t, &t->blocks[i], hs, n);
    if (!r->rc) matmul(r->pool, x, t->channels, hs, t->inner, M, t->channels, t->inner, t->proj_out_w, t->proj_out_b, 1);
    sd_arena_reset(r->a, mark);
}

/* Sinusoidal embedding of each batch item's timestep → linear–SiLU–linear. */
static void unet_time_embedding(unet_run *r, const float *timesteps)
{
    const sd_unet_model *u = r->u;
    int B = r->B, C0 = u->model_channels, T = u->time_dim;
    float *temb = run_alloc(r, (size_t)B * T);
    size_t mark = sd_arena_mark(r->a);
    float *f = run_alloc(r, (size_t)B * C0), *hid = run_alloc(r, (size_t)B * T);
    if (!hid) return;
    for (int b = 0; b < B; b++) timestep_embedding(f + (size_t)b * C0, timesteps[b], C0);
    run_probe(r, "time_proj", -1, f, 1, 1, C0);
    linear(r->pool, hid, f, B, T, C0, u->time1_w, u->time1_b);
    silu(hid, (size_t)B * T);
    linear(r->pool, temb, hid, B, T, T, u->time2_w, u->time2_b);
    run_probe(r, "time_embedding", -1, temb, 1, 1, T);
    silu(temb, (size_t)B * T);
    r->temb = temb;
    sd_arena_reset(r->a, mark);
}

/* conv_in on the NCHW input; its output is the first skip connection. */
static void unet_input(unet_run *r, const float *x, int H, int W)
{
    const sd_unet_model *u = r->u;
    float *y = push_skip(r, H, W, u->model_channels);
    size_t mark = sd_arena_mark(r->a);
    float *t = run_alloc(r, (size_t)r->B * H * W * u->in_channels);
    if (!t) return;
    nchw_to_nhwc(t, x, r->B, u->in_channels, H * W);
    conv2d(r->pool, y, t, r->B, H, W, u->in_channels, u->conv_in_w, u->conv_in_b, u->model_channels, 3, 1, 1, 1);
    sd_arena_reset(r->a, mark);
    run_probe(r, "conv_in", -1, y, H, W, u->model_channels);
}

/* Down level l: resnets (each followed by a transformer where the level has attention), then a
   stride-2 conv (sizes round up: 5 → 3). Every output is kept as a skip connection. */
static void unet_down_block(unet_run *r, int l)
{
    const unet_level *lv = &r->u->level[l];
    for (int j = 0; j < r->u->resnets && !r->rc; j++) {
        const unet_skip *in = &r->skip[r->nskip - 1];
        float *y = push_skip(r, in->H, in->W, lv->down[j].cout);
        time_resnet(r, &lv->down[j], in->x, y, in->H, in->W);
        if (lv->down_attn[j].depth) spatial_transformer(r, &lv->down_attn[j], y, in->H, in->W);
    }
    if (lv->downsample_w && !r->rc) {
        const unet_skip *in = &r->skip[r->nskip - 1];
        float *y = push_skip(r, (in->H + 1) / 2, (in->W + 1) / 2, in->C);
        if (y) conv2d(r->pool, y, in->x, r->B, in->H, in->W, in->C, lv->downsample_w, lv->downsample_b, in->C, 3, 2, 1, 1);
    }
    if (!r->rc) {
        const unet_skip *out = &r->skip[r->nskip - 1];
        run_probe(r, "down_blocks", l, out->x, out->H, out->W, out->C);
    }
}

/* Resnet, transformer, resnet at the lowest resolution; the result becomes h. */
static void unet_mid_block(unet_run *r)
{
    const sd_unet_model *u = r->u;
    if (r->rc) return;
    const unet_skip *in = &r->skip[r->nskip - 1];
    size_t mark = sd_arena_mark(r->a);
    float *m = run_alloc(r, (size_t)r->B * in->H * in->W * u->mid[0].cout);
    time_resnet(r, &u->mid[0], in->x, m, in->H, in->W);
    if (u->mid_attn.depth) spatial_transformer(r, &u->mid_attn, m, in->H, in->W);
    time_resnet(r, &u->mid[1], m, r->h, in->H, in->W);
    r->H = in->H; r->W = in->W; r->C = u->mid[1].cout;
    sd_arena_reset(r->a, mark);
    run_probe(r, "mid_block", -1, r->h, r->H, r->W, r->C);
}

/* Up level l: each resnet takes h concatenated (channels) with the latest skip, which is then
   dropped; then nearest upsampling to the next skip's size and a conv. */
static void unet_up_block(unet_run *r, int l)
{
    const unet_level *lv = &r->u->level[l];
    int B = r->B;
    for (int j = 0; j <= r->u->resnets && !r->rc; j++) {
        const unet_skip *s = &r->skip[r->nskip - 1];
        size_t M = (size_t)B * r->H * r->W;
        float *cat = run_alloc(r, M * (size_t)(r->C + s->C));
        if (!cat) return;
        concat_channels(cat, r->h, r->C, s->x, s->C, M);
        time_resnet(r, &lv->up[j], cat, r->h, r->H, r->W);
        r->C = lv->up[j].cout;
        sd_arena_reset(r->a, s->mark);   /* drops the skip and the concatenation above it */
        r->nskip--;
        if (lv->up_attn[j].depth) spatial_transformer(r, &lv->up_attn[j], r->h, r->H, r->W);
    }
    if (lv->upsample_w && !r->rc) {
        const unet_skip *next = &r->skip[r->nskip - 1];   /* diffusers' upsample_size */
        size_t mark = sd_arena_mark(r->a);
        float *t = run_alloc(r, (size_t)B * next->H * next->W * r->C);
        if (!t) return;
        if (next->H == 2 * r->H && next->W == 2 * r->W) upsample2x(t, r->h, B, r->H, r->W, r->C);
        else resize_nearest(t, r->h, B, r->H, r->W, r->C, next->H, next->W);
        r->H = next->H; r->W = next->W;
        conv2d(r->pool, r->h, t, B, r->H, r->W, r->C, lv->upsample_w, lv->upsample_b, r->C, 3, 1, 1, 1);
        sd_arena_reset(r->a, mark);
    }
    run_probe(r, "up_blocks", r->u->levels - 1 - l, r->h, r->H, r->W, r->C);
}

/* GroupNorm-SiLU-conv_out to the latent channels, NCHW into out. */
static void unet_output(unet_run *r, float *out)
{
    const sd_unet_model *u = r->u;
    int B = r->B, HW = r->H * r->W;
    size_t mark = sd_arena_mark(r->a);
    if (r->rc) return;
    float *t = run_alloc(r, (size_t)B * HW * r->C);
    if (!t) return;
    groupnorm(r->pool, t, r->h, B, HW, r->C, UNET_GROUPS, u->norm_out_w, u->norm_out_b, 1e-5f, 0);
    run_probe(r, "conv_norm_out", -1, t, r->H, r->W, r->C);
    silu(t, (size_t)B * HW * r->C);
    conv2d(r->pool, r->h, t, B, r->H, r->W, r->C, u->conv_out_w, u->conv_out_b, u->out_channels, 3, 1, 1, 1);
    run_probe(r, "conv_out", -1, r->h, r->H, r->W, u->out_channels);
    nhwc_to_nchw(out, r->h, B, u->out_channels, HW);
    sd_arena_reset(r->a, mark);
}

/* ---- arena bytes: the forward pass's allocations, replayed on sizes alone ---- */

static void unet_sizes(const sd_unet_model *u, int h, int w, int *H, int *W)
{
    H[0] = h; W[0] = w;
    for (int l = 1; l < u->levels; l++) { H[l] = (H[l - 1] + 1) / 2; W[l] = (W[l - 1] + 1) / 2; }
}

/* Floats per batch item of h: the largest of the mid output, the up resnets' and upsamplers'
   outputs and conv_out's. */
static size_t unet_h_floats(const sd_unet_model *u, int h, int w)
{
    int H[UNET_MAX_LEVELS], W[UNET_MAX_LEVELS], last = u->levels - 1;
    size_t most;
    unet_sizes(u, h, w, H, W);
    most = (size_t)H[last] * W[last] * u->mid[1].cout;
    for (int l = 0; l < u->levels; l++) {
        size_t HW = (size_t)H[l] * W[l];
        for (int j = 0; j <= u->resnets; j++) if (HW * u->level[l].up[j].cout > most) most = HW * u->level[l].up[j].cout;
        if (l > 0 && (size_t)H[l - 1] * W[l - 1] * u->level[l].up[u->resnets].cout > most)
            most = (size_t)H[l - 1] * W[l - 1] * u->level[l].up[u->resnets].cout;
    }
    if ((size_t)h * w * u->out_channels > most) most = (size_t)h * w * u->out_channels;
    return most;
}

static uint64_t fbytes(uint64_t n) { return (n * sizeof(float) + SD_ALIGN - 1) / SD_ALIGN * SD_ALIGN; }
static uint64_t max64(uint64_t a, uint64_t b) { return a > b ? a : b; }

static uint64_t resnet_scratch(const unet_resnet *p, uint64_t B, uint64_t HW)
{
    return fbytes(B * p->cout) + max64(fbytes(B * HW * p->cin), fbytes(B * HW * p->cout));
}

static uint64_t transformer_scratch(const unet_transformer *t, uint64_t B, uint64_t HW)
{
    uint64_t M = B * HW, D = (uint64_t)t->inner, most = fbytes(M * t->channels);
    if (!t->depth) return 0;
    for (int i = 0; i < t->depth; i++) {
        most = max64(most, 4 * fbytes(M * D));                                        /* self-attention */
        most = max64(most, 2 * fbytes(M * D) + 2 * fbytes(B * SD_TEXT_TOKENS * D));     /* cross-attention */
        most = max64(most, fbytes(M * D) + fbytes(M * 2 * (uint64_t)t->blocks[i].ff_inner));   /* GEGLU */
    }
    return fbytes(M * D) + most;
}

static uint64_t unet_bytes(const sd_unet_model *u, int batch, int h, int w)
{
    int H[UNET_MAX_LEVELS], W[UNET_MAX_LEVELS], n = 0, last = u->levels - 1;
    uint64_t B = (uint64_t)batch, skips[UNET_MAX_SKIPS], stack = 0, base, peak, HW;
    unet_sizes(u, h, w, H, W);
    base = fbytes(B * u->time_dim);                                            /* temb */
    peak = base + fbytes(B * u->model_channels) + fbytes(B * u->time_dim);     /* its scratch */
    base += fbytes(B * unet_h_floats(u, h, w));                                /* h */
    HW = (uint64_t)h * w;
    stack += skips[n++] = fbytes(B * HW * u->model_channels);
    peak = max64(peak, base + stack + fbytes(B * HW * u->in_channels));
    for (int l = 0; l < u->levels; l++) {
        const unet_level *lv = &u->level[l];
        HW = (uint64_t)H[l] * W[l];
        for (int j = 0; j < u->resnets; j++) {
            stack += skips[n++] = fbytes(B * HW * lv->down[j].cout);
            peak = max64(peak, base + stack + resnet_scratch(&lv->down[j], B, HW));
            peak = max64(peak, base + stack + transformer_scratch(&lv->down_attn[j], B, HW));
        }
        if (lv->downsample_w) stack += skips[n++] = fbytes(B * H[l + 1] * W[l + 1] * lv->down[u->resnets - 1].cout);
    }
    HW = (uint64_t)H[last] * W[last];
    base += fbytes(B * HW * u->mid[0].cout);                                   /* the mid block's m */
    peak = max64(peak, base + stack + resnet_scratch(&u->mid[0], B, HW));
    peak = max64(peak, base + stack + transformer_scratch(&u->mid_attn, B, HW));
    peak = max64(peak, base + stack + resnet_scratch(&u->mid[1], B, HW));
    base -= fbytes(B * HW * u->mid[0].cout);
    for (int l = last; l >= 0; l--) {
        const unet_level *lv = &u->level[l];
        HW = (uint64_t)H[l] * W[l];
        for (int j = 0; j <= u->resnets; j++) {
            peak = max64(peak, base + stack + fbytes(B * HW * lv->up[j].cin) + resnet_scratch(&lv->up[j], B, HW));
            stack -= skips[--n];
            peak = max64(peak, base + stack + transformer_scratch(&lv->up_attn[j], B, HW));
        }
        if (l > 0) peak = max64(peak, base + stack + fbytes(B * H[l - 1] * W[l - 1] * lv->up[u->resnets].cout));
    }
    return max64(peak, base + fbytes(B * h * w * u->level[0].up[u->resnets].cout));   /* norm_out */
}

#define UNET_MAX_POSITIONS (1 << 24)   /* batch · h · w */

SD_API size_t sd_unet_arena_bytes(const sd_unet_model *unet, int batch, int h, int w)
{
    uint64_t n;
    if (!unet || batch < 1 || h < 1 || w < 1 || (int64_t)batch * h * w > UNET_MAX_POSITIONS) return (size_t)-1;
    n = unet_bytes(unet, batch, h, w);
    return n > (uint64_t)(size_t)-1 ? (size_t)-1 : (size_t)n;
}

/* One pass of the denoiser: time embedding, conv_in, down path, middle, up path, conv_out.
   sd_unet checks the arena first; here an allocation that fails ends the pass with
   SD_ERR_MEMORY. probe (may be NULL) sees the diffusers modules' outputs, for tests. */
static int unet_forward(const sd_unet_model *u, const float *x, const float *timesteps, const float *context,
                        int batch, int h, int w, float *out, sd_pool *pool, sd_arena *a, sd_error *err,
                        unet_probe probe, void *probe_user)
{
    unet_run r;
    memset(&r, 0, sizeof r);
    r.u = u; r.pool = pool; r.a = a; r.err = err; r.B = batch; r.context = context;
    r.probe = probe; r.probe_user = probe_user;

    unet_time_embedding(&r, timesteps);
    r.h = run_alloc(&r, (size_t)batch * unet_h_floats(u, h, w));
    unet_input(&r, x, h, w);
    for (int l = 0; l < u->levels; l++) unet_down_block(&r, l);
    unet_mid_block(&r);
    for (int l = u->levels - 1; l >= 0; l--) unet_up_block(&r, l);
    unet_output(&r, out);
    return r.rc;
}

SD_API int sd_unet(const sd_unet_model *unet, const float *x, const float *timesteps, const float *context,
                   int batch, int h, int w, float *out, sd_pool *pool, sd_arena *a, sd_error *err)
{
    int rc;
    size_t need, left, mark;
    if (!unet || !x || !timesteps || !context || !out || !pool || !a) return fail(err, SD_ERR_ARG, "sd_unet: NULL argument");
    if (batch < 1 || h < 1 || w < 1 || (int64_t)batch * h * w > UNET_MAX_POSITIONS)
        return fail(err, SD_ERR_ARG, "sd_unet: a batch of %d latents of %dx%d is out of range (at most %d positions in all)",
                    batch, h, w, UNET_MAX_POSITIONS);
    need = sd_unet_arena_bytes(unet, batch, h, w);
    left = a->size - a->used;
    if (need > left)
        return fail(err, SD_ERR_MEMORY, "sd_unet: a batch of %d latents of %dx%d needs %zu arena bytes, %zu are left",
                    batch, h, w, need, left);
    mark = sd_arena_mark(a);
    rc = unet_forward(unet, x, timesteps, context, batch, h, w, out, pool, a, err, NULL, NULL);
    sd_arena_reset(a, mark);
    return rc;
}


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
