/* example.c - the command-line program for sd.h, and an example of its API.

     ./example -m model.safetensors -p "a lighthouse at dusk" -o out.png
     ./example -m diffusers_folder/ -p "a cat" -W 768 -H 512 --steps 30 -s 42
     ./example -m model.safetensors -i photo.png --strength 0.6 -p "oil painting"
     ./example -m sd-v1-5-inpainting.safetensors -i photo.png --mask mask.png -p "a red sofa"
     ./example -m instruct-pix2pix.safetensors -i photo.png -p "make it snowy" --image-cfg-scale 1.5
     ./example -m model-q8_0.gguf -p "a cat"        (stable-diffusion.cpp's GGUF files, quantized too)
     ./example -m sd-turbo.safetensors --turbo --taesd taesd/ --preview steps/ -p "a fox"
     ./example -m model.safetensors --embd-dir embeddings/ -p "a portrait, mystyle" -n "easynegative"
     ./example -m lcm_dreamshaper_v7.safetensors -p "a cat"       (LCM: 4 steps, no negative pass)
     ./example --inspect model.safetensors
     ./example --convert model.safetensors model-q8_0.gguf --type q8_0   (then -m model-q8_0.gguf)
     ./example -m model.safetensors --type q4_0 --quant-mode fast -p "a cat"   (quantized while loading)

   How it uses the library: files are mmap'd read-only (sd.h uses the weights in place), the
   model is loaded into one arena, the exact arena size of a generation is asked for and
   allocated once, and every call reports errors through sd_error. PNG/PPM files are read and
   written by the code at the end of this file (no zlib needed). The benchmark, and the writer of
   full-size checkpoints with random weights it measures, are a program of their own built on this
   file: tools/bench.c (`make bench`). */
#define _POSIX_C_SOURCE 200809L
#ifndef _DEFAULT_SOURCE
#define _DEFAULT_SOURCE   /* madvise */
#endif
#define SD_IMPLEMENTATION
#include "sd.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define EXAMPLE_VERSION "0.1.0"

static uint8_t *image_read(const char *path, int *w, int *h, char *err, size_t errcap);
static int image_write(const char *path, const uint8_t *rgb, int w, int h, const char *parameters, char *err, size_t errcap);

/* The files mapped (not read into memory), so that their pages can be given back. */
static struct { const void *p; size_t size; } mappings[16];

/* Tells the kernel that the pages of a mapped file are not needed now (they are read from the
   page cache again if they are): after load-time quantization the original weights of a
   checkpoint sit unused in its mapping. Not for a file that was read into memory instead. */
static void release_pages(const void *p)
{
    for (int i = 0; i < 16; i++)
        if (mappings[i].p == p && p) madvise((void *)(uintptr_t)p, mappings[i].size, MADV_DONTNEED);
}

/* Unmaps a file map_file_how mapped, and forgets it (its addresses may be reused). */
static void unmap_file(void *p, size_t size)
{
    for (int i = 0; i < 16; i++)
        if (mappings[i].p == p) mappings[i].p = NULL;
    munmap(p, size ? size : 1);
}

/* Maps a file read-only; falls back to reading it when mmap is not possible (*mapped = 0). */
static void *map_file_how(const char *path, size_t *size, int *mapped)
{
    struct stat sb;
    void *p;
    int fd = open(path, O_RDONLY);
    *mapped = 0;
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        if (fd >= 0) close(fd);
        return NULL;
    }
    *size = (size_t)sb.st_size;
    p = mmap(NULL, *size ? *size : 1, PROT_READ, MAP_PRIVATE, fd, 0);
    *mapped = p != MAP_FAILED;
    /* Weights are streamed: each UNet evaluation reads every tensor once, layer after layer.
       Said so, the kernel reads ahead further and, short of memory (a cgroup's limit), drops
       the pages read longest ago first rather than keeping those of layers touched more often:
       in a 192 MB cgroup a 512x512 SD 1.5 step then reads about 1.1 times the UNet's 1.7 GB of
       weights from the disk, not 1.5 times. */
    if (p != MAP_FAILED) posix_madvise(p, *size ? *size : 1, POSIX_MADV_SEQUENTIAL);
    for (int i = 0; i < 16 && *mapped; i++)
        if (!mappings[i].p) { mappings[i].p = p, mappings[i].size = *size ? *size : 1; break; }
    if (p == MAP_FAILED) {
        p = malloc(*size ? *size : 1);
        if (p && read(fd, p, *size) != (ssize_t)*size) { free(p); p = NULL; }
    }
    close(fd);
    return p;
}

static void *map_file(const char *path, size_t *size)
{
    int mapped;
    return map_file_how(path, size, &mapped);
}

/* --read-weights: the model's files stay on the disk, neither mapped nor read whole; sd.h asks
   for each weight's bytes where it uses them (sd_source.read), as it would on a machine without
   mmap. pread reads at an offset without moving a shared file position: it is thread-safe. */
static int weight_fds[SD_MAX_FILES];

static int read_weights(void *user, int file, uint64_t offset, void *dst, size_t size)
{
    unsigned char *d = (unsigned char *)dst;
    (void)user;
    while (size) {
        ssize_t n = pread(weight_fds[file], d, size, (off_t)offset);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        d += n, offset += (uint64_t)n, size -= (size_t)n;
    }
    return 0;
}

/* File i of src, opened for read_weights (its size from the file). */
static int open_weights(sd_source *src, int i, const char *path)
{
    struct stat sb;
    int fd = open(path, O_RDONLY);
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        if (fd >= 0) close(fd);
        return 0;
    }
    weight_fds[i] = fd;
    src->data[i] = NULL, src->size[i] = (size_t)sb.st_size;
    src->read = read_weights;
    return 1;
}

static int is_dir(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int inspect(const char *path)
{
    size_t size = 0;
    void *data = map_file(path, &size), *mem;
    sd_arena arena;
    sd_safetensors st;
    sd_error err;
    sd_source src;
    if (!data) { fprintf(stderr, "cannot read %s: %s\n", path, strerror(errno)); return 1; }
    memset(&src, 0, sizeof src);   /* what a model of this one file would need: its tables fit */
    src.data[0] = data;
    src.size[0] = size;
    src.count = 1;
    size_t arena_size = sd_model_arena_bytes(&src);
    if (!(mem = malloc(arena_size))) { fprintf(stderr, "cannot allocate %zu bytes\n", arena_size); return 1; }
    sd_arena_init(&arena, mem, arena_size);
    int gguf = size >= 4 && !memcmp(data, "GGUF", 4);
    if ((gguf ? sd_gguf_open : sd_safetensors_open)(&st, data, size, &arena, &err)) {
        fprintf(stderr, "%s: %s\n", path, err.message);
        return 1;
    }
    size_t total = 0;
    for (int i = 0; i < st.count; i++) {
        const sd_tensor *t = &st.tensors[i];
        char shape[128] = "";
        for (int d = 0; d < t->ndim; d++)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%lld", d ? ", " : "", (long long)t->shape[d]);
        printf("%-80s %-5s [%s] %zu\n", t->name, sd_dtype_name(t->dtype), shape, t->nbytes);   /* PyTorch's shape order */
        total += t->nbytes;
    }
    for (int i = 0; i < st.meta_count; i++) printf("metadata %s = %s\n", st.meta_keys[i], st.meta_values[i]);
    printf("%d tensors, %zu bytes of data, %d metadata entries\n", st.count, total, st.meta_count);
    return 0;
}

/* --convert: one checkpoint (safetensors or GGUF) written as a GGUF file, its weights quantized
   as sd_quantize_choice picks them (convolution weights too, unlike stable-diffusion.cpp's
   converter), its other tensors as they are, under the same names, with the source's sd.*
   metadata. One tensor in memory at a time. */
static int convert(const char *in, const char *out, sd_dtype type)
{
    size_t size = 0, total = 0;
    void *data = map_file(in, &size), *mem;
    sd_arena arena;
    sd_safetensors st;
    sd_error err;
    sd_source src;
    double t0 = now();
    if (!data) { fprintf(stderr, "cannot read %s: %s\n", in, strerror(errno)); return 1; }
    memset(&src, 0, sizeof src);
    src.data[0] = data, src.size[0] = size, src.count = 1;
    size_t arena_size = sd_model_arena_bytes(&src);
    if (!(mem = malloc(arena_size))) { fprintf(stderr, "cannot allocate %zu bytes\n", arena_size); return 1; }
    sd_arena_init(&arena, mem, arena_size);
    if ((size >= 4 && !memcmp(data, "GGUF", 4) ? sd_gguf_open : sd_safetensors_open)(&st, data, size, &arena, &err)) {
        fprintf(stderr, "%s: %s\n", in, err.message);
        return 1;
    }
    sd_tensor *t = (sd_tensor *)malloc((size_t)(st.count ? st.count : 1) * sizeof *t);
    const char **keys = (const char **)malloc((size_t)(st.meta_count + 1) * sizeof *keys), **values = (const char **)malloc((size_t)(st.meta_count + 1) * sizeof *values);
    int n = 0, nkv = 0, quantized = 0, skipped = 0;
    if (!t || !keys || !values) { fprintf(stderr, "out of memory\n"); return 1; }
    for (int i = 0; i < st.meta_count; i++)
        if (!strncmp(st.meta_keys[i], "sd.", 3)) keys[nkv] = st.meta_keys[i], values[nkv++] = st.meta_values[i];
    for (int i = 0; i < st.count; i++) {
        sd_tensor one = st.tensors[i];
        if (!strncmp(one.name, "model_ema.", 10)) { skipped++; continue; }   /* the EMA copy of the UNet: sd.h runs the other */
        one.dtype = sd_quantize_choice(&st.tensors[i], type);
        if (one.dtype != st.tensors[i].dtype) {
            one.nbytes = sd_dtype_block(one.dtype, NULL) * (size_t)(sd_tensor_numel(&one) / 32);
            quantized++;
        }
        if (!sd_gguf_header(NULL, 0, &one, 1, NULL, NULL, 0)) { fprintf(stderr, "%s: GGUF has no type %s: '%s' left out\n", in, sd_dtype_name(one.dtype), one.name); skipped++; continue; }
        t[n++] = one;
    }
    size_t header = sd_gguf_header(NULL, 0, t, n, keys, values, nkv);
    unsigned char *head = (unsigned char *)malloc(header), zeros[32] = {0};
    FILE *f = fopen(out, "wb");
    if (!head || !f) { fprintf(stderr, "cannot write %s: %s\n", out, strerror(errno)); return 1; }
    sd_gguf_header(head, header, t, n, keys, values, nkv);
    int ok = fwrite(head, 1, header, f) == header;
    total = header;
    for (int i = 0, k = 0; i < st.count && ok; i++) {
        const sd_tensor *s = &st.tensors[i];
        if (k == n || t[k].name != s->name) continue;   /* left out */
        const sd_tensor *o = &t[k++];
        void *bytes = o->dtype == s->dtype ? (void *)(uintptr_t)s->data : malloc(o->nbytes);
        float *row = o->dtype == s->dtype ? NULL : (float *)malloc((size_t)(sd_tensor_numel(s) / s->shape[0]) * sizeof(float));
        if (!bytes || (o->dtype != s->dtype && (!row || sd_tensor_convert(s, o->dtype, bytes, row)))) { fprintf(stderr, "cannot convert '%s'\n", s->name); return 1; }
        ok = fwrite(bytes, 1, o->nbytes, f) == o->nbytes && fwrite(zeros, 1, (32 - o->nbytes % 32) % 32, f) == (32 - o->nbytes % 32) % 32;
        total += (o->nbytes + 31) / 32 * 32;
        if (o->dtype != s->dtype) { free(bytes); free(row); }
    }
    if (fclose(f) || !ok) { fprintf(stderr, "writing %s failed: %s\n", out, strerror(errno)); return 1; }
    fprintf(stderr, "wrote %s: %d tensors (%d quantized to %s, %d left out), %d metadata keys, %.1f MiB (from %.1f MiB) in %.1f s\n", out, n,
            quantized, sd_dtype_name(type), skipped, nkv, total / 1048576.0, size / 1048576.0, now() - t0);
    free(t); free(keys); free(values); free(head); free(mem);
    return 0;
}

typedef struct options {
    const char *model, *tokenizer, *prompt, *negative, *init, *mask, *output, *preview, *taesd, *embd_dir, *lora_dir, *convert;
    sd_dtype type;   /* --type: load-time quantization (SD_DTYPE_COUNT: none) */
    int quant;       /* --quant-mode */
    int width, height, steps, threads, batch, clip_skip, verbose, have_seed, vae_tile, taesd_preview_only, read_weights;
    int init_width, init_height;   /* the init image's own size */
    int sampler, karras, spacing, plain_prompt, turbo, have_steps, have_cfg, have_sampler, comma_wrap;
    float cfg, image_cfg;
    double strength;
    uint64_t seed;
} options;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: ./example -m MODEL -p PROMPT [options]\n"
        "       ./example --inspect FILE.safetensors|FILE.gguf   tensors (name, type, shape, bytes) and metadata\n"
        "  -m, --model PATH          single-file .safetensors or .gguf checkpoint, or a diffusers folder\n"
        "      --tokenizer FILE      CLIP merges.txt (default: next to the model, then weights/merges.txt)\n"
        "  -p, --prompt TEXT         what to draw\n"
        "  -n, --negative-prompt T   what to avoid (default: empty)\n"
        "  -W, --width N, -H, --height N   image size in pixels, multiples of 8 (default 512)\n"
        "      --steps N             sampling steps (default 20)\n"
        "      --cfg-scale X         classifier-free guidance scale (default 7.5)\n"
        "  -s, --seed N              random seed (default: random, printed)\n"
        "  -t, --threads N           threads (default: all cores)\n"
        "  -i, --init-img FILE       img2img: start from this PNG/PPM (without -W/-H: its size rounded down\n"
        "                            to a multiple of 8; resized otherwise); inpainting and InstructPix2Pix\n"
        "                            models (9 / 8 UNet input channels) need it\n"
        "      --mask FILE           inpainting: PNG/PPM of the init image's size (resized with it),\n"
        "                            white (>= 128) = repaint;\n"
        "                            with an ordinary model the kept area is blended back after each step\n"
        "      --strength X          how much to change the init image, 0..1 (default 0.8; inpainting 1,\n"
        "                            SDXL inpainting 0.9999)\n"
        "      --image-cfg-scale X   InstructPix2Pix: how closely to follow the init image (default 1.5)\n"
        "  -o, --output FILE         .png or .ppm (default output.png; with -b N: output_2.png, ...)\n"
        "  -b, --batch-count N       images to make, seeds seed, seed+1, ...\n"
        "      --clip-skip N         stop the text encoder N-1 layers early (A1111 style)\n"
        "      --sampling-method M   ddim (default), euler, euler_a, dpm++2m, dpm++2m_karras, lcm\n"
        "                            (an LCM-distilled model defaults to lcm, 4 steps, cfg 8.5)\n"
        "      --scheduler S         karras (DPM++ 2M sigmas), or the timestep spacing: leading,\n"
        "                            trailing, linspace (default: the model's config, else the sampler's)\n"
        "      --turbo               SD-Turbo / SDXL-Turbo: euler_a, trailing, 1 step, no guidance\n"
        "      --no-weighting        (text:1.2), [text] and BREAK are plain text\n"
        "      --comma-wrap N        long prompts: end a chunk at a comma in its last N tokens (A1111: 20)\n"
        "      --embd-dir DIR        textual inversion: each DIR/NAME.safetensors is an embedding that the\n"
        "                            word NAME in a prompt calls up (any case, as AUTOMATIC1111)\n"
        "      --vae-tiling [N]      decode in N x N latent tiles (default 32): flat memory, approximate\n");
    fprintf(f,   /* (C99 promises string literals of 4095 bytes only) */
        "      --preview DIR         write each step's image as DIR/step_NN.png: decoded by TAESD with\n"
        "                            --taesd, else the latent seen through a linear map (a rough view)\n"
        "      --taesd FILE|DIR      TAESD, the tiny autoencoder, for previews and the final image (~20x\n"
        "                            faster than the VAE, slightly softer): taesd_decoder.safetensors, a\n"
        "                            folder with the taesd_*/taesdxl_* pair, or a diffusers AutoencoderTiny\n"
        "                            folder; TAESDXL for SDXL models (chosen by the model's family)\n"
        "      --taesd-preview-only  TAESD for --preview only; the final image by the full VAE\n"
        "      --lora-model-dir DIR  where <lora:NAME:w> in the prompt finds NAME.safetensors (A1111 syntax:\n"
        "                            w = strength, <lora:NAME:w:u> UNet strength u, <lora:NAME> = 1)\n"
        "      --quant-mode M        exact (default): float32 products, any weight type; fast: int8 products\n"
        "                            (activations quantized per block of 32, as ggml's q8_0), ~2-3x faster\n"
        "                            with AVX-512 VNNI, error of the order of q8_0's (README)\n"
        "      --type T              quantize the weights while loading: q8_0, q4_0, q4_1, q5_0, q5_1\n"
        "                            (a safetensors model; memory ~1/2 (q8_0) or ~1/4 (q4_0) of f16)\n"
        "      --read-weights        read each weight from the file where it is used (pread) instead of\n"
        "                            mapping the file: memory = the arena alone; safetensors only\n"
        "  --convert IN OUT --type T write IN (.safetensors or .gguf) as a GGUF file with its weights in T\n"
        "                            (convolutions too); run it with -m OUT\n"
        "  -v, --verbose             more detail\n"
        "  -h, --help, --version\n");
}

/* The file names of a diffusers folder that sd.h reads (the first three required; SDXL adds
   text_encoder_2), and their configs (optional). */
#define DIFFUSERS_REQUIRED 3
static const char *const diffusers_parts[] = {
    "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors", "text_encoder_2/model.safetensors",
};
static const char *const diffusers_config_files[] = {
    "unet/config.json", "vae/config.json", "text_encoder/config.json", "text_encoder_2/config.json",
    "scheduler/scheduler_config.json",
};

/* --lora-model-dir: the LoRA files that <lora:NAME:w> tags name, DIR/NAME.safetensors, each
   mapped once (sd.h asks for a file when it plans a generation and again when it runs it). */
#define LORA_DIR_FILES 64
typedef struct lora_dir {
    const char *dir;
    int count;
    char name[LORA_DIR_FILES][256];
    void *data[LORA_DIR_FILES];
    size_t size[LORA_DIR_FILES];
    int mapped[LORA_DIR_FILES];
} lora_dir;

static void lora_dir_close(lora_dir *d)
{
    for (int i = 0; i < d->count; i++) {
        if (d->mapped[i]) unmap_file(d->data[i], d->size[i]);
        else free(d->data[i]);
    }
    d->count = 0;
}

/* What the callbacks of one generation share. */
typedef struct progress_state { double start; const char *preview_dir; int last_image; } progress_state;

/* A step's image as TAESD decoded it, to DIR/step_NN.png. */
static void write_preview_rgb(void *user, int step, const uint8_t *rgb, int width, int height)
{
    char path[4096], err[256];
    snprintf(path, sizeof path, "%s/step_%02d.png", ((const progress_state *)user)->preview_dir, step);
    if (image_write(path, rgb, width, height, NULL, err, sizeof err)) fprintf(stderr, "%s\n", err);
}

/* sd_params.lora_resolve: NAME.safetensors in the LoRA folder. A NAME that would leave the
   folder ('/', '\\', a leading '.') is no LoRA. */
static int lora_from_dir(void *user, const char *name, const void **data, size_t *size)
{
    lora_dir *d = (lora_dir *)user;
    char path[4096];
    int i = 0;
    if (!d || !d->dir || !*name || name[0] == '.' || strchr(name, '/') || strchr(name, '\\') || strlen(name) >= sizeof d->name[0]) return 1;
    while (i < d->count && strcmp(d->name[i], name)) i++;
    if (i == d->count) {
        if (i == LORA_DIR_FILES) return 1;
        snprintf(path, sizeof path, "%s/%s.safetensors", d->dir, name);
        if (!(d->data[i] = map_file_how(path, &d->size[i], &d->mapped[i]))) return 1;
        memcpy(d->name[i], name, strlen(name) + 1);
        d->count++;
    }
    *data = d->data[i];
    *size = d->size[i];
    return 0;
}

/* The usual linear look at SD 1.x/2.x latents (the factors AUTOMATIC1111 and ComfyUI preview
   with): RGB = latent · M, [-1, 1] mapped to [0, 255]. Good enough to watch noise become a picture. */
static void write_preview(void *user, int step, const float *latents, int h, int w)
{
    static const float m[4][3] = {{0.3512f, 0.2297f, 0.3227f}, {0.3250f, 0.4974f, 0.2350f},
                                  {-0.2829f, 0.1762f, 0.2721f}, {-0.2120f, -0.2616f, -0.7177f}};
    const char *dir = ((const progress_state *)user)->preview_dir;
    uint8_t *rgb = (uint8_t *)malloc((size_t)3 * h * w);
    char path[4096], err[256];
    if (!rgb) return;
    for (int i = 0; i < h * w; i++)
        for (int c = 0; c < 3; c++) {
            float v = 0;
            for (int k = 0; k < 4; k++) v += latents[(size_t)k * h * w + i] * m[k][c];
            v = (v + 1) * 127.5f;
            rgb[3 * i + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v + 0.5f);
        }
    snprintf(path, sizeof path, "%s/step_%02d.png", dir, step);
    if (image_write(path, rgb, w, h, NULL, err, sizeof err)) fprintf(stderr, "%s\n", err);
    free(rgb);
}

static int progress_bar(void *user, int step, int steps)
{
    double t = now() - ((const progress_state *)user)->start;
    if (isatty(2)) {
        int filled = 30 * step / steps;
        fprintf(stderr, "\r  |%.*s%*s| %d/%d  %.2f s/it  ETA %.0f s ", filled, "==============================",
                30 - filled, "", step, steps, t / step, t / step * (steps - step));
        if (step == steps) fputc('\n', stderr);
    }
    /* the denoising of the last image is done: the VAE decoder needs its own weights only, so the
       pages of the text encoder and UNet weights go back to the kernel now rather than sitting
       in memory beside the decoder's activations (the decoder's pages come back from the page
       cache as it reads them) */
    if (step == steps && ((const progress_state *)user)->last_image)
        for (int i = 0; i < 16; i++) release_pages(mappings[i].p);
    return 0;
}

/* --type: the model's weights quantized into an arena of their own (kept for the run), and the
   files' pages given back: the weights the model now uses are the quantized ones. */
static int quantize_model(const options *o, sd_model *model, const sd_source *src)
{
    sd_arena qa;
    sd_error err;
    double t0 = now();
    size_t need = sd_model_quantize_arena_bytes(model, o->type);
    void *mem = need ? malloc(need + SD_ARENA_ALIGN) : NULL;
    if (!mem) { fprintf(stderr, "cannot allocate %zu bytes for the quantized weights\n", need); return 1; }
    sd_arena_init(&qa, mem, need + SD_ARENA_ALIGN);
    if (sd_model_quantize(model, o->type, &qa, &err)) { fprintf(stderr, "%s: %s\n", o->model, err.message); return 1; }
    for (int i = 0; i < src->count; i++) release_pages(src->data[i]);
    fprintf(stderr, "weights quantized to %s: %.1f MiB in %.1f s\n", sd_dtype_name(o->type), qa.used / 1048576.0, now() - t0);
    return 0;
}

/* Loads the model files (one checkpoint, or a diffusers folder's parts) and merges.txt. */
static int load_model(const options *o, sd_model **model, sd_arena *arena)
{
    sd_source src;
    sd_error err;
    char path[4096];
    memset(&src, 0, sizeof src);
    if (is_dir(o->model)) {
        for (size_t i = 0; i < sizeof diffusers_parts / sizeof *diffusers_parts; i++) {
            snprintf(path, sizeof path, "%s/%s", o->model, diffusers_parts[i]);
            if (o->read_weights ? open_weights(&src, src.count, path) : (src.data[src.count] = map_file(path, &src.size[src.count])) != NULL) src.count++;
            else if (i < DIFFUSERS_REQUIRED) {
                fprintf(stderr, "cannot read %s: %s\n", path, strerror(errno));
                return 1;
            }
        }
        for (size_t i = 0; i < sizeof diffusers_config_files / sizeof *diffusers_config_files; i++) {
            snprintf(path, sizeof path, "%s/%s", o->model, diffusers_config_files[i]);
            if ((src.config[src.config_count] = (const char *)map_file(path, &src.config_size[src.config_count]))) src.config_count++;
        }
    } else if (o->read_weights ? !open_weights(&src, 0, o->model) : !(src.data[0] = map_file(o->model, &src.size[0]))) {
        fprintf(stderr, "cannot read %s: %s\n", o->model, strerror(errno));
        return 1;
    } else {
        src.count = 1;
    }
    /* merges.txt: as given, else a diffusers folder's tokenizer/, else beside the model, else weights/ */
    const char *candidates[4] = {o->tokenizer, NULL, NULL, "weights/merges.txt"};
    char a[4096], b[4096];
    snprintf(a, sizeof a, "%s/tokenizer/merges.txt", o->model);
    snprintf(b, sizeof b, "%.*s/merges.txt", (int)(strrchr(o->model, '/') ? strrchr(o->model, '/') - o->model : 1),
             strrchr(o->model, '/') ? o->model : ".");
    candidates[1] = a;
    candidates[2] = b;
    for (int i = 0; i < 4 && !src.merges; i++)
        if (candidates[i] && (src.merges = (const char *)map_file(candidates[i], &src.merges_size)) && o->verbose)
            fprintf(stderr, "tokenizer: %s\n", candidates[i]);
    if (!src.merges) {
        fprintf(stderr, "no merges.txt: pass --tokenizer FILE or run `sh weights/download.sh merges`\n");
        return 1;
    }
    size_t size = sd_model_arena_bytes(&src);
    void *mem = malloc(size);
    if (!mem) { fprintf(stderr, "cannot allocate %zu bytes for the model tables\n", size); return 1; }
    sd_arena_init(arena, mem, size);
    if (sd_model_load(model, &src, arena, &err)) {
        fprintf(stderr, "%s: %s\n", o->model, err.message);
        return 1;
    }
    if (o->type != SD_DTYPE_COUNT && quantize_model(o, *model, &src)) return 1;
    return 0;
}

/* --taesd FILE|DIR: a decoder file (the original taesd_decoder.safetensors, or a diffusers file,
   which holds the encoder too), or a folder: diffusers' AutoencoderTiny (its safetensors file and
   config.json) or the original pair NAME_decoder / NAME_encoder.safetensors, taesdxl_* first for
   SDXL models, taesd_* first for the others. Only the file names tell TAESD from TAESDXL: the
   model's family decides (xl), and a name that says otherwise gets a warning. */
static int load_taesd(const options *o, int xl, sd_taesd **taesd, sd_arena *arena)
{
    static const char *const names[2] = {"taesd", "taesdxl"};
    char dec[4096], enc[4096] = "", cfg[4096] = "";
    void *data[2] = {NULL, NULL}, *config = NULL;
    size_t size[2] = {0, 0}, config_size = 0;
    sd_safetensors st[2];
    sd_error err;
    snprintf(dec, sizeof dec, "%s", o->taesd);
    if (is_dir(o->taesd)) {
        snprintf(dec, sizeof dec, "%s/diffusion_pytorch_model.safetensors", o->taesd);
        snprintf(cfg, sizeof cfg, "%s/config.json", o->taesd);
        for (int i = 0; i < 2 && access(dec, R_OK); i++) {   /* not diffusers: the original pair */
            snprintf(dec, sizeof dec, "%s/%s_decoder.safetensors", o->taesd, names[i ^ xl]);
            snprintf(enc, sizeof enc, "%s/%s_encoder.safetensors", o->taesd, names[i ^ xl]);
            cfg[0] = 0;
        }
    }
    const char *said = strstr(dec, "taesdxl") ? "TAESDXL" : strstr(dec, "taesd") ? "TAESD" : NULL;
    if (said && (said[5] == 'X') != xl)
        fprintf(stderr, "warning: %s looks like %s, but this %s model needs %s: the colours will be off\n", dec, said,
                xl ? "SDXL" : "SD 1.x/2.x", xl ? "TAESDXL" : "TAESD");
    if (!(data[1] = map_file(dec, &size[1]))) { fprintf(stderr, "cannot read %s: %s\n", dec, strerror(errno)); return 1; }
    if (*enc) data[0] = map_file(enc, &size[0]);   /* optional: img2img only */
    if (*cfg) config = map_file(cfg, &config_size);
    void *mem = malloc(4u << 20);
    if (!mem) { fprintf(stderr, "out of memory\n"); return 1; }
    sd_arena_init(arena, mem, 4u << 20);
    for (int i = 1; i >= 0; i--)
        if (data[i] && sd_safetensors_open(&st[i], data[i], size[i], arena, &err)) { fprintf(stderr, "%s: %s\n", i ? dec : enc, err.message); return 1; }
    int both = !*enc && sd_safetensors_find(&st[1], "encoder.layers.0.weight");   /* a diffusers file: both halves */
    if (sd_taesd_load(taesd, both ? &st[1] : data[0] ? &st[0] : NULL, &st[1], (const char *)config, config_size,
                      xl ? SD_TAESD_XL : SD_TAESD_SD, arena, &err)) {
        fprintf(stderr, "%s: %s\n", o->taesd, err.message);
        return 1;
    }
    if (o->verbose) fprintf(stderr, "taesd: %s%s%s\n", dec, data[0] ? " + " : "", data[0] ? enc : "");
    return 0;
}

static int compare_embedding_names(const void *x, const void *y)
{
    return strcmp(((const sd_embedding_file *)x)->name, ((const sd_embedding_file *)y)->name);
}

/* The embeddings of --embd-dir: every NAME.safetensors in it, named NAME (AUTOMATIC1111's rule).
   Files this model cannot use (another family's, or broken) are skipped with a note, as A1111
   skips them; the rest are loaded together into their own arena. */
static int load_embeddings(const char *dir, const sd_model *model, int verbose, sd_embeddings **set, sd_arena *arena)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    sd_embedding_file *files = NULL;
    int n = 0, cap = 0;
    sd_error err;
    *set = NULL;
    if (!d) { fprintf(stderr, "--embd-dir %s: %s\n", dir, strerror(errno)); return 1; }
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        char path[4096];
        if (len <= 12 || strcmp(e->d_name + len - 12, ".safetensors")) continue;
        if (n == cap && !(files = (sd_embedding_file *)realloc(files, (size_t)(cap = cap ? 2 * cap : 16) * sizeof *files))) return 1;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        char *name = (char *)malloc(len - 11);
        if (!name || !(files[n].data = map_file(path, &files[n].size))) { fprintf(stderr, "cannot read %s: %s\n", path, strerror(errno)); free(name); continue; }
        memcpy(name, e->d_name, len - 12);
        name[len - 12] = 0;
        files[n].name = name;
        /* this file alone, to skip it if it does not fit */
        size_t bytes = sd_embeddings_arena_bytes(&files[n], 1);
        void *mem = malloc(bytes + SD_ARENA_ALIGN);
        sd_embeddings *one;
        sd_arena_init(arena, mem, bytes + SD_ARENA_ALIGN);
        if (mem && sd_embeddings_load(&one, model, &files[n], 1, arena, &err)) {
            fprintf(stderr, "note: skipped %s: %s\n", path, err.message);
            free(name);
        } else if (mem) n++;
        free(mem);
    }
    closedir(d);
    qsort(files, (size_t)n, sizeof *files, compare_embedding_names);   /* a fixed order, whatever readdir's */
    size_t bytes = sd_embeddings_arena_bytes(files, n);
    void *mem = malloc(bytes + SD_ARENA_ALIGN);
    if (!mem) return 1;
    sd_arena_init(arena, mem, bytes + SD_ARENA_ALIGN);
    if (sd_embeddings_load(set, model, files, n, arena, &err)) { fprintf(stderr, "%s: %s\n", dir, err.message); return 1; }
    fprintf(stderr, "embeddings: %d from %s%s", n, dir, verbose && n ? ":" : "\n");
    for (int i = 0; verbose && i < n; i++) fprintf(stderr, " %s%s", files[i].name, i + 1 < n ? "" : "\n");
    return 0;   /* the names and mapped files stay for the set's lifetime: the program's */
}

/* AUTOMATIC1111's "parameters" text, so that web UIs and viewers show how an image was made. */
static void parameters_text(char *buf, size_t cap, const options *o, uint64_t seed)
{
    const char *name = strrchr(o->model, '/') ? strrchr(o->model, '/') + 1 : o->model;
    int n = snprintf(buf, cap, "%s\n", o->prompt);
    if (o->negative && *o->negative) n += snprintf(buf + n, cap > (size_t)n ? cap - n : 0, "Negative prompt: %s\n", o->negative);
    static const char *const samplers[5] = {"DDIM", "Euler", "Euler a", "DPM++ 2M", "LCM"};
    snprintf(buf + n, cap > (size_t)n ? cap - n : 0, "Steps: %d, Sampler: %s%s, CFG scale: %g, Seed: %llu, Size: %dx%d, Model: %s%s",
             o->steps, samplers[o->sampler], o->karras ? " Karras" : "", o->cfg, (unsigned long long)seed, o->width, o->height,
             name, o->init && o->strength > 0 ? ", Denoising strength: " : "");
    if (o->init && o->strength > 0) snprintf(buf + strlen(buf), cap - strlen(buf), "%g", o->strength);
}

/* The Lanczos-3 kernel. */
static double lanczos3(double x)
{
    const double pi = 3.14159265358979323846;
    if (x == 0) return 1;
    if (x <= -3 || x >= 3) return 0;
    return 3 * sin(pi * x) * sin(pi * x / 3) / (pi * pi * x * x);
}

/* One axis of a resize: n lines of `len` samples, `channels` interleaved, from `in` source samples
   to `out`; src steps by `stride` between samples. Each output sample is a Lanczos-3 weighted sum,
   the kernel widened by the scale when shrinking (antialiasing), as PIL's resize(LANCZOS) does. */
static void resample_axis(const float *src, float *dst, int in, int out, int lines, int channels, size_t src_step, size_t src_line,
                          size_t dst_step, size_t dst_line)
{
    double scale = (double)in / out, widen = scale > 1 ? scale : 1, support = 3 * widen;
    for (int o = 0; o < out; o++) {
        double center = (o + 0.5) * scale, weights[64], total = 0;
        int first = (int)floor(center - support + 0.5), last = (int)floor(center + support + 0.5), taps = 0;
        if (first < 0) first = 0;
        if (last > in) last = in;
        if (last - first > 64) last = first + 64;
        for (int i = first; i < last; i++) total += weights[taps++] = lanczos3((i + 0.5 - center) / widen);
        for (int l = 0; l < lines; l++)
            for (int c = 0; c < channels; c++) {
                double v = 0;
                for (int t = 0; t < taps; t++) v += weights[t] * src[(size_t)l * src_line + (size_t)(first + t) * src_step + c];
                dst[(size_t)l * dst_line + (size_t)o * dst_step + c] = (float)(total != 0 ? v / total : 0);
            }
    }
}

/* img (channels x w x h, 8-bit, interleaved) resized to dw x dh with Lanczos-3, as diffusers' and
   AUTOMATIC1111's image preprocessing does (PIL); the old buffer is freed. NULL if out of memory. */
static uint8_t *image_resize(uint8_t *img, int channels, int w, int h, int dw, int dh)
{
    float *a = (float *)malloc((size_t)w * h * channels * sizeof(float)), *b = (float *)malloc((size_t)dw * h * channels * sizeof(float));
    float *c = (float *)malloc((size_t)dw * dh * channels * sizeof(float));
    uint8_t *out = (uint8_t *)malloc((size_t)dw * dh * channels);
    if (a && b && c && out) {
        for (size_t i = 0; i < (size_t)w * h * channels; i++) a[i] = img[i];
        resample_axis(a, b, w, dw, h, channels, channels, (size_t)w * channels, channels, (size_t)dw * channels);   /* rows */
        resample_axis(b, c, h, dh, dw, channels, (size_t)dw * channels, channels, (size_t)dw * channels, channels);  /* columns */
        for (size_t i = 0; i < (size_t)dw * dh * channels; i++) out[i] = (uint8_t)(c[i] < 0 ? 0 : c[i] > 255 ? 255 : c[i] + 0.5f);
    } else {
        free(out);
        out = NULL;
    }
    free(a); free(b); free(c); free(img);
    return out;
}

/* The init image at the generation's size: -W/-H if given, else its own size rounded down to a
   multiple of 8; resized when that differs (said on stderr). */
static uint8_t *init_read(options *o)
{
    int w, h;
    char msg[512];
    uint8_t *rgb = image_read(o->init, &w, &h, msg, sizeof msg);
    if (!rgb) { fprintf(stderr, "%s\n", msg); return NULL; }
    o->init_width = w;
    o->init_height = h;
    if (!o->width) o->width = w < 8 ? 8 : w / 8 * 8;
    if (!o->height) o->height = h < 8 ? 8 : h / 8 * 8;
    if (o->width == w && o->height == h) return rgb;
    fprintf(stderr, "%s: %dx%d resized to %dx%d\n", o->init, w, h, o->width, o->height);
    if (!(rgb = image_resize(rgb, 3, w, h, o->width, o->height))) fprintf(stderr, "out of memory resizing %s\n", o->init);
    return rgb;
}

/* An inpainting mask as 8-bit grey, PIL's convert("L") luma of the file's RGB (grey files give
   their own values), which must have the init image's size; resized with it. */
static uint8_t *mask_read(const options *o)
{
    int w, h;
    char msg[512];
    uint8_t *rgb = image_read(o->mask, &w, &h, msg, sizeof msg), *grey;
    if (!rgb) { fprintf(stderr, "%s\n", msg); return NULL; }
    if (w != o->init_width || h != o->init_height) {
        fprintf(stderr, "%s is %dx%d but the init image is %dx%d: the mask must have the image's size\n", o->mask, w, h,
                o->init_width, o->init_height);
        free(rgb);
        return NULL;
    }
    grey = rgb;   /* in place: pixel i is read before byte i is written */
    for (size_t i = 0; i < (size_t)w * h; i++)
        grey[i] = (uint8_t)((rgb[3 * i] * 19595u + rgb[3 * i + 1] * 38470u + rgb[3 * i + 2] * 7471u + 0x8000u) >> 16);
    if ((w != o->width || h != o->height) && !(grey = image_resize(grey, 1, w, h, o->width, o->height)))
        fprintf(stderr, "out of memory resizing %s\n", o->mask);
    return grey;
}

static int run(options *o)
{
    sd_arena model_arena, arena, taesd_arena, embd_arena;
    sd_model *model;
    sd_taesd *taesd = NULL;
    sd_embeddings *embeddings = NULL;
    sd_model_info info;
    sd_params p;
    sd_error err;
    uint8_t *init = NULL, *mask = NULL;
    if (load_model(o, &model, &model_arena)) return 1;
    sd_model_get_info(model, &info);
    if (o->taesd && load_taesd(o, info.version == SD_VERSION_XL, &taesd, &taesd_arena)) return 1;
    if (o->embd_dir && load_embeddings(o->embd_dir, model, o->verbose, &embeddings, &embd_arena)) return 1;
    if (info.guidance_dim) {   /* LCM-distilled: what LatentConsistencyModelPipeline runs by default */
        if (!o->have_sampler) o->sampler = SD_SAMPLER_LCM;
        if (!o->have_steps) o->steps = 4;
        if (!o->have_cfg) o->cfg = 8.5f;
    }
    if (o->init && !(init = init_read(o))) return 1;
    if (o->mask && !o->init) { fprintf(stderr, "--mask needs an init image (-i)\n"); return 1; }
    if (o->mask && !(mask = mask_read(o))) return 1;
    if (!o->width) o->width = 512;
    if (!o->height) o->height = 512;
    sd_params_init(&p);
    p.prompt = o->prompt;
    p.negative_prompt = o->negative;
    p.width = o->width;
    p.height = o->height;
    p.steps = o->steps;
    p.guidance = o->cfg;
    p.threads = o->threads;
    p.clip_skip = o->clip_skip;
    p.vae_tile = o->vae_tile;
    p.sampler = o->sampler;
    p.karras = o->karras;
    p.spacing = o->spacing;
    p.weighting = !o->plain_prompt;
    p.comma_wrap = o->comma_wrap;
    p.init_rgb = init;
    p.strength = o->strength;
    p.mask = mask;
    p.image_guidance = o->image_cfg;
    p.quant = o->quant;
    p.taesd = taesd;
    p.taesd_use = o->taesd_preview_only ? SD_TAESD_USE_PREVIEW : SD_TAESD_USE_ALL;
    p.progress = progress_bar;
    p.preview = o->preview && !taesd ? write_preview : NULL;
    p.preview_rgb = o->preview && taesd ? write_preview_rgb : NULL;   /* (its decodes are part of the plan) */
    p.embeddings = embeddings;
    lora_dir loras;
    progress_state state = {now(), o->preview, 0};
    char warnings[2048];
    memset(&loras, 0, sizeof loras);
    loras.dir = o->lora_dir;
    p.lora_resolve = lora_from_dir;
    p.lora_user = &loras;
    p.user = &state;
    p.warnings = warnings;
    p.warnings_size = sizeof warnings;
    size_t need = sd_generate_arena_bytes(model, &p);
    if (!need) {   /* sd_generate says why */
        uint8_t dummy;
        sd_arena none;
        sd_arena_init(&none, NULL, 0);
        sd_generate(model, &p, &none, &dummy, &err);
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    fprintf(stderr, "model: %s%s (%s prediction%s), text %d wide x %d layers, VAE scale %g\n",
            info.version == SD_VERSION_XL ? "SDXL" : info.version == SD_VERSION_2 ? "SD 2" : "SD 1",
            info.unet_in_channels == 9 ? " inpainting" : info.unet_in_channels == 8 ? " InstructPix2Pix" : info.guidance_dim ? " LCM" : "",
            info.prediction == SD_PREDICT_V ? "v" : "epsilon", info.diffusers ? ", diffusers folder" : "",
            info.text_width, info.text_layers, info.vae_scale);
    fprintf(stderr, "%dx%d, %d steps, cfg %g, %d threads, arena %.1f MiB (+%.1f MiB model tables)\n", p.width, p.height,
            p.steps, p.guidance, p.threads, need / 1048576.0, model_arena.used / 1048576.0);
    void *mem = malloc(need + SD_ARENA_ALIGN);
    uint8_t *rgb = (uint8_t *)malloc((size_t)3 * p.width * p.height);
    if (!mem || !rgb) { fprintf(stderr, "cannot allocate %zu bytes\n", need); return 1; }
    sd_arena_init(&arena, mem, need + SD_ARENA_ALIGN);
    for (int i = 0; i < o->batch; i++) {
        char path[4096], params[8192], msg[512];
        state.start = now();
        state.last_image = i == o->batch - 1;
        p.seed = o->seed + (uint64_t)i;
        fprintf(stderr, "seed %llu\n", (unsigned long long)p.seed);
        if (sd_generate(model, &p, &arena, rgb, &err)) { fprintf(stderr, "%s\n", err.message); return 1; }
        if (i == 0 && *warnings) fprintf(stderr, "%s", warnings);
        const char *dot = strrchr(o->output, '.');
        if (i == 0) snprintf(path, sizeof path, "%s", o->output);
        else snprintf(path, sizeof path, "%.*s_%d%s", (int)(dot ? dot - o->output : (long)strlen(o->output)), o->output, i + 1, dot ? dot : "");
        parameters_text(params, sizeof params, o, p.seed);
        if (image_write(path, rgb, p.width, p.height, params, msg, sizeof msg)) { fprintf(stderr, "%s\n", msg); return 1; }
        fprintf(stderr, "wrote %s in %.1f s (peak arena %.1f MiB)\n", path, now() - state.start, arena.peak / 1048576.0);
    }
    free(rgb);   /* the arena, the model and what it maps stay until exit: the process's lifetime */
    lora_dir_close(&loras);
    return 0;
}

static int parse_int(const char *s, int lo, int hi, const char *flag)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "%s wants an integer in %d..%d, got '%s'\n", flag, lo, hi, s);
        exit(1);
    }
    return (int)v;
}

static double parse_float(const char *s, double lo, double hi, const char *flag)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "%s wants a number in %g..%g, got '%s'\n", flag, lo, hi, s);
        exit(1);
    }
    return v;
}

int main(int argc, char **argv)
{
    options o;
    memset(&o, 0, sizeof o);
    o.output = "output.png";
    o.steps = 20;
    o.cfg = 7.5f;
    o.image_cfg = 1.5f;
    o.batch = 1;
    o.spacing = -1;
    o.type = SD_DTYPE_COUNT;
    o.threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (o.threads < 1) o.threads = 1;
    if (o.threads > SD_MAX_THREADS) o.threads = SD_MAX_THREADS;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define FLAG(s, l) (!strcmp(a, s) || !strcmp(a, l))
#define VALUE() (v ? (i++, v) : (fprintf(stderr, "%s needs a value\n", a), exit(1), ""))
        if (FLAG("-h", "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--version")) { printf("sd.h example %s (SIMD: %s)\n", EXAMPLE_VERSION, SD_SIMD); return 0; }
        else if (!strcmp(a, "--inspect")) return inspect(VALUE());
        else if (FLAG("-m", "--model")) o.model = VALUE();
        else if (!strcmp(a, "--tokenizer")) o.tokenizer = VALUE();
        else if (FLAG("-p", "--prompt")) o.prompt = VALUE();
        else if (FLAG("-n", "--negative-prompt")) o.negative = VALUE();
        else if (FLAG("-W", "--width")) o.width = parse_int(VALUE(), 8, 8192, a);
        else if (FLAG("-H", "--height")) o.height = parse_int(VALUE(), 8, 8192, a);
        else if (!strcmp(a, "--steps")) { o.steps = parse_int(VALUE(), 1, 1000, a); o.have_steps = 1; }
        else if (!strcmp(a, "--cfg-scale")) { o.cfg = (float)parse_float(VALUE(), 0, 100, a); o.have_cfg = 1; }
        else if (FLAG("-s", "--seed")) { o.seed = strtoull(VALUE(), NULL, 10); o.have_seed = 1; }
        else if (FLAG("-t", "--threads")) o.threads = parse_int(VALUE(), 1, SD_MAX_THREADS, a);
        else if (FLAG("-i", "--init-img")) o.init = VALUE();
        else if (!strcmp(a, "--strength")) o.strength = parse_float(VALUE(), 1e-6, 1, a);
        else if (!strcmp(a, "--mask")) o.mask = VALUE();
        else if (!strcmp(a, "--image-cfg-scale")) o.image_cfg = (float)parse_float(VALUE(), 0, 100, a);
        else if (FLAG("-o", "--output")) o.output = VALUE();
        else if (FLAG("-b", "--batch-count")) o.batch = parse_int(VALUE(), 1, 10000, a);
        else if (!strcmp(a, "--clip-skip")) o.clip_skip = parse_int(VALUE(), 0, 64, a);
        else if (FLAG("-v", "--verbose")) o.verbose = 1;
        else if (!strcmp(a, "--preview")) o.preview = VALUE();
        else if (!strcmp(a, "--taesd")) o.taesd = VALUE();
        else if (!strcmp(a, "--taesd-preview-only")) o.taesd_preview_only = 1;
        else if (!strcmp(a, "--lora-model-dir")) o.lora_dir = VALUE();
        else if (!strcmp(a, "--vae-tiling")) o.vae_tile = v && v[0] >= '0' && v[0] <= '9' ? parse_int(VALUE(), 8, 4096, a) : 32;
        else if (!strcmp(a, "--sampling-method")) {
            static const char *const names[6] = {"ddim", "euler", "euler_a", "dpm++2m", "dpm++2m_karras", "lcm"};
            const char *m = VALUE();
            int k = 0;
            while (k < 6 && strcmp(m, names[k])) k++;
            if (k == 6) { fprintf(stderr, "--sampling-method: '%s' is not one of ddim, euler, euler_a, dpm++2m, dpm++2m_karras, lcm\n", m); return 1; }
            o.sampler = k < 4 ? k : k == 4 ? SD_SAMPLER_DPMPP_2M : SD_SAMPLER_LCM;
            o.karras |= k == 4;
            o.have_sampler = 1;
        } else if (!strcmp(a, "--scheduler")) {
            const char *m = VALUE();
            if (!strcmp(m, "karras")) o.karras = 1;
            else if (!strcmp(m, "leading")) o.spacing = SD_SPACING_LEADING;
            else if (!strcmp(m, "trailing")) o.spacing = SD_SPACING_TRAILING;
            else if (!strcmp(m, "linspace")) o.spacing = SD_SPACING_LINSPACE;
            else if (strcmp(m, "default")) { fprintf(stderr, "--scheduler: '%s' is not one of karras, leading, trailing, linspace, default\n", m); return 1; }
        }
        else if (!strcmp(a, "--turbo")) o.turbo = 1;
        else if (!strcmp(a, "--read-weights")) o.read_weights = 1;
        else if (!strcmp(a, "--no-weighting")) o.plain_prompt = 1;
        else if (!strcmp(a, "--comma-wrap")) o.comma_wrap = parse_int(VALUE(), 0, 74, a);
        else if (!strcmp(a, "--embd-dir")) o.embd_dir = VALUE();
        else if (!strcmp(a, "--quant-mode")) {
            const char *m = VALUE();
            if (!strcmp(m, "exact")) o.quant = SD_QUANT_EXACT;
            else if (!strcmp(m, "fast")) o.quant = SD_QUANT_FAST;
            else { fprintf(stderr, "--quant-mode: '%s' is not exact or fast\n", m); return 1; }
        } else if (!strcmp(a, "--type")) {
            const char *t = VALUE();
            static const sd_dtype types[5] = {SD_Q8_0, SD_Q4_0, SD_Q4_1, SD_Q5_0, SD_Q5_1};
            o.type = SD_DTYPE_COUNT;
            for (int k = 0; k < 5; k++)
                if (!strcasecmp(t, sd_dtype_name(types[k]))) o.type = types[k];
            if (o.type == SD_DTYPE_COUNT) { fprintf(stderr, "--type: '%s' is not one of q8_0, q4_0, q4_1, q5_0, q5_1\n", t); return 1; }
        } else if (!strcmp(a, "--convert")) {
            o.convert = VALUE();
            o.output = i + 1 < argc ? argv[++i] : NULL;
        }
        else { fprintf(stderr, "unknown option '%s' (see --help)\n", a); return 1; }
#undef FLAG
#undef VALUE
    }
    if (o.convert) {
        if (!o.output || o.type == SD_DTYPE_COUNT) { fprintf(stderr, "usage: ./example --convert IN OUT --type q8_0|q4_0|q4_1|q5_0|q5_1\n"); return 1; }
        return convert(o.convert, o.output, o.type);
    }
    if (!o.model || !o.prompt) { usage(stderr); return 1; }
    if (o.taesd_preview_only && !o.taesd) { fprintf(stderr, "--taesd-preview-only needs --taesd FILE|DIR\n"); return 1; }
    if (o.turbo) {   /* what SD-Turbo and SDXL-Turbo were distilled for (their model cards' settings) */
        if (!o.have_steps) o.steps = 1;
        if (!o.have_cfg) o.cfg = 0;
        if (!o.have_sampler) o.sampler = SD_SAMPLER_EULER_A;
        if (o.spacing < 0) o.spacing = SD_SPACING_TRAILING;
    }
    if (o.karras && o.sampler != SD_SAMPLER_DPMPP_2M) { fprintf(stderr, "Karras sigmas are available with dpm++2m only\n"); return 1; }
    if (!o.have_seed) o.seed = ((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 16)) & 0xffffffffu;
    return run(&o);
}

/* ---- image files: PNG and PPM, with the zlib pieces written here ---------------------------- */
/* PNG reading takes 8-bit RGB, RGBA, gray, gray+alpha and palette images (gray and palette also
   at 1, 2 and 4 bits), non-interlaced, every filter and block type; alpha is dropped, as PIL's
   convert("RGB") does for diffusers' load_image. 16-bit and interlaced images are refused with a
   message saying so. Written PNGs carry the generation parameters in a tEXt (or, beyond Latin-1,
   iTXt) chunk named "parameters", as AUTOMATIC1111 writes them. */
#define IMAGE_MAX_PIXELS ((uint64_t)1 << 26)   /* 8192 x 8192: far past what SD makes */

static int image_error(char *err, size_t errcap, const char *fmt, ...)
{
    va_list ap;
    if (err && errcap) { va_start(ap, fmt); vsnprintf(err, errcap, fmt, ap); va_end(ap); }
    return -1;
}

/* ---- checksums and deflate tables shared by both directions -------------------------------- */

/* CRC-32 of PNG chunks (reflected polynomial 0xedb88320); the table is built on first use. */
static uint32_t png_crc32(const uint8_t *p, size_t n)
{
    static uint32_t table[256];
    uint32_t crc = 0xffffffffu;
    if (!table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
    while (n--) crc = table[(crc ^ *p++) & 255] ^ (crc >> 8);
    return ~crc;
}

static uint32_t zlib_adler32(const uint8_t *p, size_t n)
{
    uint32_t a = 1, b = 0;
    while (n) {
        size_t k = n < 5552 ? n : 5552;   /* the most bytes before b can overflow 32 bits */
        n -= k;
        while (k--) { a += *p++; b += a; }
        a %= 65521; b %= 65521;
    }
    return b << 16 | a;
}

static uint32_t get_be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

/* RFC 1951 3.2.5: base values and extra bits of length symbols 257..285 and distance symbols. */
static const uint16_t length_base[29] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
    35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
static const uint8_t length_extra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3,
    4, 4, 4, 4, 5, 5, 5, 5, 0};
static const uint16_t dist_base[30] = {1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193,
    257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
static const uint8_t dist_extra[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8,
    9, 9, 10, 10, 11, 11, 12, 12, 13, 13};

/* PNG filter prediction of byte i of a row from the unfiltered bytes left (a), up (b) and
   up-left (c) of it; bpp is the distance to the same byte of the pixel on the left. */
static int png_predict(int type, const uint8_t *cur, const uint8_t *prev, size_t i, size_t bpp)
{
    int a = i >= bpp ? cur[i - bpp] : 0, b = prev ? prev[i] : 0, c = prev && i >= bpp ? prev[i - bpp] : 0;
    int p = a + b - c, pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
    switch (type) {
    case 1: return a;
    case 2: return b;
    case 3: return (a + b) >> 1;
    case 4: return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;   /* Paeth */
    default: return 0;
    }
}

/* ---- inflate (RFC 1950/1951) into a buffer of the size the PNG header promises -------------- */

typedef struct png_inflater {
    const uint8_t *in;
    size_t in_size, in_pos;
    uint32_t bits;        /* bits not yet used, lowest first; always fewer than 8 between calls */
    int nbits;
    uint8_t *out;
    size_t out_size, out_pos;
    const char *error;    /* the first problem; reading past the end sets it and yields zeros */
} png_inflater;

typedef struct png_huffman { short count[16], symbol[288]; } png_huffman;  /* canonical code */

static unsigned inflate_bits(png_inflater *z, int n)
{
    unsigned v;
    while (z->nbits < n) {
        if (z->in_pos == z->in_size) { if (!z->error) z->error = "the zlib stream is truncated"; return 0; }
        z->bits |= (uint32_t)z->in[z->in_pos++] << z->nbits;
        z->nbits += 8;
    }
    v = z->bits & ((1u << n) - 1);
    z->bits >>= n;
    z->nbits -= n;
    return v;
}

/* Builds the canonical code of the given code lengths (0 = unused); 0 if over-subscribed. */
static int huffman_build(png_huffman *hc, const uint8_t *lengths, int n)
{
    short offset[16];
    int left = 1;
    memset(hc->count, 0, sizeof hc->count);
    for (int i = 0; i < n; i++) hc->count[lengths[i]]++;
    for (int len = 1; len < 16; len++)
        if ((left = 2 * left - hc->count[len]) < 0) return 0;
    offset[1] = 0;
    for (int len = 1; len < 15; len++) offset[len + 1] = (short)(offset[len] + hc->count[len]);
    for (int i = 0; i < n; i++)
        if (lengths[i]) hc->symbol[offset[lengths[i]]++] = (short)i;
    return 1;
}

/* Reads one symbol a bit at a time: codes of each length are consecutive numbers from `first`. */
static int huffman_decode(png_inflater *z, const png_huffman *hc)
{
    int code = 0, first = 0, index = 0;
    for (int len = 1; len < 16; len++) {
        code |= (int)inflate_bits(z, 1);
        if (code - first < hc->count[len]) return hc->symbol[index + code - first];
        index += hc->count[len];
        first = (first + hc->count[len]) << 1;
        code <<= 1;
    }
    if (!z->error) z->error = "invalid Huffman code in the zlib stream";
    return -1;
}

static void inflate_codes(png_inflater *z, const png_huffman *lit, const png_huffman *dist)
{
    for (;;) {
        int sym = huffman_decode(z, lit), d;
        size_t len, distance;
        if (z->error || sym == 256) return;
        if (sym < 256) {
            if (z->out_pos == z->out_size) { z->error = "more image data than the header says"; return; }
            z->out[z->out_pos++] = (uint8_t)sym;
            continue;
        }
        if ((sym -= 257) >= 29) { z->error = "invalid length symbol in the zlib stream"; return; }
        len = length_base[sym] + inflate_bits(z, length_extra[sym]);
        d = huffman_decode(z, dist);
        if (z->error) return;
        if (d >= 30) { z->error = "invalid distance symbol in the zlib stream"; return; }
        distance = dist_base[d] + inflate_bits(z, dist_extra[d]);
        if (z->error) return;
        if (distance > z->out_pos) { z->error = "zlib distance points before the start of the data"; return; }
        if (len > z->out_size - z->out_pos) { z->error = "more image data than the header says"; return; }
        for (; len; len--, z->out_pos++) z->out[z->out_pos] = z->out[z->out_pos - distance];
    }
}

static void inflate_stored(png_inflater *z)
{
    unsigned len;
    z->bits = 0, z->nbits = 0;   /* a stored block starts at the next byte */
    if (z->in_size - z->in_pos < 4) { z->error = "the zlib stream is truncated"; return; }
    len = z->in[z->in_pos] | z->in[z->in_pos + 1] << 8;
    if ((len ^ 0xffffu) != (unsigned)(z->in[z->in_pos + 2] | z->in[z->in_pos + 3] << 8)) { z->error = "stored block length check failed"; return; }
    z->in_pos += 4;
    if (z->in_size - z->in_pos < len) { z->error = "the zlib stream is truncated"; return; }
    if (len > z->out_size - z->out_pos) { z->error = "more image data than the header says"; return; }
    memcpy(z->out + z->out_pos, z->in + z->in_pos, len);
    z->in_pos += len;
    z->out_pos += len;
}

static void inflate_fixed(png_inflater *z)
{
    uint8_t lengths[288];
    png_huffman lit, dist;
    memset(lengths, 8, 144);
    memset(lengths + 144, 9, 112);
    memset(lengths + 256, 7, 24);
    memset(lengths + 280, 8, 8);
    huffman_build(&lit, lengths, 288);
    memset(lengths, 5, 30);
    huffman_build(&dist, lengths, 30);
    inflate_codes(z, &lit, &dist);
}

/* A dynamic block first sends the code lengths of its two codes, themselves Huffman coded. */
static void inflate_dynamic(png_inflater *z)
{
    static const uint8_t order[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
    uint8_t lengths[286 + 30] = {0};
    png_huffman lit, dist;
    int nlit = (int)inflate_bits(z, 5) + 257, ndist = (int)inflate_bits(z, 5) + 1, ncode = (int)inflate_bits(z, 4) + 4;
    if (nlit > 286 || ndist > 30) { if (!z->error) z->error = "bad code counts in a dynamic block"; return; }
    for (int i = 0; i < ncode; i++) lengths[order[i]] = (uint8_t)inflate_bits(z, 3);
    if (!huffman_build(&lit, lengths, 19)) { if (!z->error) z->error = "bad code-length code in a dynamic block"; return; }
    for (int i = 0; i < nlit + ndist;) {
        int sym = huffman_decode(z, &lit), repeat, value = 0;
        if (z->error) return;
        if (sym < 16) { lengths[i++] = (uint8_t)sym; continue; }
        if (sym == 16) {
            if (i == 0) { z->error = "code-length repeat with nothing before it"; return; }
            value = lengths[i - 1];
            repeat = 3 + (int)inflate_bits(z, 2);
        } else repeat = sym == 17 ? 3 + (int)inflate_bits(z, 3) : 11 + (int)inflate_bits(z, 7);
        if (repeat > nlit + ndist - i) { z->error = "code lengths overrun a dynamic block's codes"; return; }
        while (repeat--) lengths[i++] = (uint8_t)value;
    }
    if (!lengths[256]) { z->error = "dynamic block without an end-of-block code"; return; }
    if (!huffman_build(&lit, lengths, nlit) || !huffman_build(&dist, lengths + nlit, ndist)) { z->error = "over-subscribed Huffman code in a dynamic block"; return; }
    inflate_codes(z, &lit, &dist);
}

/* Inflates a whole zlib stream into exactly out_size bytes; NULL or what is wrong. */
static const char *zlib_inflate(const uint8_t *in, size_t in_size, uint8_t *out, size_t out_size)
{
    png_inflater z;
    int last;
    memset(&z, 0, sizeof z);
    z.in = in, z.in_size = in_size, z.out = out, z.out_size = out_size, z.in_pos = 2;
    if (in_size < 2 || (in[0] & 15) != 8 || in[0] >> 4 > 7 || (in[0] << 8 | in[1]) % 31) return "bad zlib header";
    if (in[1] & 32) return "the zlib stream wants a preset dictionary";
    do {
        last = (int)inflate_bits(&z, 1);
        switch (inflate_bits(&z, 2)) {
        case 0: inflate_stored(&z); break;
        case 1: inflate_fixed(&z); break;
        case 2: inflate_dynamic(&z); break;
        default: if (!z.error) z.error = "invalid deflate block type";
        }
    } while (!last && !z.error);
    if (z.error) return z.error;
    if (z.out_pos != out_size) return "less image data than the header says";
    if (z.in_size - z.in_pos < 4) return "the zlib stream is truncated before its Adler-32";
    if (get_be32(in + z.in_pos) != zlib_adler32(out, out_size)) return "Adler-32 mismatch: the image data is corrupt";
    return NULL;
}

/* ---- PNG decoding -------------------------------------------------------------------------- */

/* Sample i of a row of `depth`-bit samples (1, 2, 4 or 8), packed from the high bits down. */
static int png_sample(const uint8_t *row, size_t i, int depth)
{
    return row[i * depth / 8] >> (8 - depth - (int)(i * depth % 8)) & ((1 << depth) - 1);
}

static uint8_t *png_decode(const uint8_t *data, size_t size, int *w_out, int *h_out, char *err, size_t errcap)
{
    uint8_t palette[768], *idat = NULL, *raw = NULL, *rgb = NULL;
    size_t pos = 8, idat_size = 0, idat_cap = 0, stride = 0, bpp = 0;
    uint32_t w = 0, h = 0;
    int depth = 0, color = 0, channels = 0, npalette = 0, ended = 0;
    const char *msg;
    if (size < 8 || memcmp(data, "\x89PNG\r\n\x1a\n", 8)) { image_error(err, errcap, "not a PNG file"); goto fail; }
    while (!ended) {
        const uint8_t *type = data + pos + 4, *body = data + pos + 8;
        uint32_t len;
        if (size - pos < 12) { image_error(err, errcap, "PNG is truncated at byte %zu (no IEND chunk)", pos); goto fail; }
        len = get_be32(data + pos);
        for (int k = 0; k < 4; k++)
            if (!((type[k] | 32) >= 'a' && (type[k] | 32) <= 'z')) { image_error(err, errcap, "PNG chunk at byte %zu has a bad type", pos); goto fail; }
        if (len > 0x7fffffffu || len > size - pos - 12) { image_error(err, errcap, "PNG is truncated in chunk %.4s at byte %zu", type, pos); goto fail; }
        if (get_be32(body + len) != png_crc32(type, len + 4u)) { image_error(err, errcap, "PNG chunk %.4s at byte %zu has a bad CRC: the file is corrupt", type, pos); goto fail; }
        if ((pos == 8) != !memcmp(type, "IHDR", 4)) { image_error(err, errcap, "PNG chunk IHDR is not (only) first"); goto fail; }
        if (!memcmp(type, "IHDR", 4)) {
            static const int valid_depths[7] = {0x1f, 0, 0x18, 0x0f, 0x18, 0, 0x18};   /* OR of the allowed depths */
            if (len != 13) { image_error(err, errcap, "PNG IHDR has %u bytes, not 13", (unsigned)len); goto fail; }
            w = get_be32(body), h = get_be32(body + 4), depth = body[8], color = body[9];
            if (color > 6 || depth > 16 || (depth & (depth - 1)) || !(valid_depths[color] & depth) || body[10] || body[11] || body[12] > 1) { image_error(err, errcap, "PNG has an invalid IHDR (color type %d, bit depth %d)", color, depth); goto fail; }
            if (depth == 16) { image_error(err, errcap, "16-bit PNGs are not supported: save the image with 8 bits per channel"); goto fail; }
            if (body[12]) { image_error(err, errcap, "interlaced (Adam7) PNGs are not supported: save the image without interlacing"); goto fail; }
            if (!w || !h || (uint64_t)w * h > IMAGE_MAX_PIXELS) { image_error(err, errcap, "PNG size %ux%u is empty or too large", (unsigned)w, (unsigned)h); goto fail; }
            channels = color == 2 ? 3 : color == 4 ? 2 : color == 6 ? 4 : 1;
            stride = ((size_t)w * channels * depth + 7) / 8;
            bpp = ((size_t)channels * depth + 7) / 8;
        } else if (!memcmp(type, "PLTE", 4)) {
            if (len == 0 || len % 3 || len > 768) { image_error(err, errcap, "PNG palette has %u bytes", (unsigned)len); goto fail; }
            memcpy(palette, body, len);
            npalette = (int)len / 3;
        } else if (!memcmp(type, "IDAT", 4)) {
            if (len > idat_cap - idat_size) {
                uint8_t *grown = (uint8_t *)realloc(idat, idat_cap = 2 * idat_cap + len);
                if (!grown) { image_error(err, errcap, "out of memory"); goto fail; }
                idat = grown;
            }
            if (len) memcpy(idat + idat_size, body, len);
            idat_size += len;
        } else if (!memcmp(type, "IEND", 4)) ended = 1;
        else if (!(type[0] & 32)) { image_error(err, errcap, "PNG has an unknown critical chunk %.4s", type); goto fail; }
        pos += 12 + (size_t)len;
    }
    if (color == 3 && !npalette) { image_error(err, errcap, "palette PNG without a PLTE chunk"); goto fail; }
    if (!idat_size) { image_error(err, errcap, "PNG has no image data (IDAT)"); goto fail; }
    raw = (uint8_t *)malloc((stride + 1) * h);
    rgb = (uint8_t *)malloc((size_t)w * h * 3);
    if (!raw || !rgb) { image_error(err, errcap, "out of memory for a %ux%u image", (unsigned)w, (unsigned)h); goto fail; }
    if ((msg = zlib_inflate(idat, idat_size, raw, (stride + 1) * h))) { image_error(err, errcap, "PNG image data: %s", msg); goto fail; }
    for (uint32_t y = 0; y < h; y++) {
        uint8_t *row = raw + y * (stride + 1) + 1, *prev = y ? row - (stride + 1) : NULL;
        if (row[-1] > 4) { image_error(err, errcap, "PNG row %u has unknown filter type %d", (unsigned)y, row[-1]); goto fail; }
        for (size_t i = 0; i < stride; i++) row[i] = (uint8_t)(row[i] + png_predict(row[-1], row, prev, i, bpp));
        for (uint32_t x = 0; x < w; x++) {
            uint8_t *o = rgb + ((size_t)y * w + x) * 3;
            int v = png_sample(row, (size_t)x * channels, depth);
            if (color == 3) {
                if (v >= npalette) { image_error(err, errcap, "PNG pixel (%u, %u) has palette index %d of %d", (unsigned)x, (unsigned)y, v, npalette); goto fail; }
                memcpy(o, palette + 3 * v, 3);
            } else if (color == 2 || color == 6) {
                o[0] = (uint8_t)v, o[1] = row[(size_t)x * channels + 1], o[2] = row[(size_t)x * channels + 2];
            } else o[0] = o[1] = o[2] = (uint8_t)(v * 255 / ((1 << depth) - 1));
        }
    }
    free(idat);
    free(raw);
    *w_out = (int)w, *h_out = (int)h;
    return rgb;
fail:
    free(idat);
    free(raw);
    free(rgb);
    return NULL;
}

/* ---- PNG encoding -------------------------------------------------------------------------- */

typedef struct png_buffer {
    uint8_t *data;
    size_t len, cap;
    int failed;           /* out of memory: later writes are dropped */
    uint32_t bits;        /* deflate's bit writer, lowest first */
    int nbits;
} png_buffer;

static void put_bytes(png_buffer *b, const void *p, size_t n)
{
    if (b->failed) return;
    if (n > b->cap - b->len) {
        size_t cap = b->cap * 2 > b->len + n ? b->cap * 2 : b->len + n + 4096;
        uint8_t *grown = (uint8_t *)realloc(b->data, cap);
        if (!grown) { b->failed = 1; return; }
        b->data = grown, b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void put_byte(png_buffer *b, int v) { uint8_t c = (uint8_t)v; put_bytes(b, &c, 1); }
static void put_be32(png_buffer *b, uint32_t v) { uint8_t c[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v}; put_bytes(b, c, 4); }

static void put_bits(png_buffer *b, uint32_t v, int n)
{
    b->bits |= v << b->nbits;
    for (b->nbits += n; b->nbits >= 8; b->nbits -= 8, b->bits >>= 8) put_byte(b, (int)(b->bits & 255));
}

/* Huffman codes go out from their highest bit, unlike every other field of deflate. */
static void put_code(png_buffer *b, uint32_t code, int n)
{
    uint32_t reversed = 0;
    for (int i = 0; i < n; i++) reversed |= (code >> i & 1) << (n - 1 - i);
    put_bits(b, reversed, n);
}

static void put_fixed_symbol(png_buffer *b, int sym)   /* the fixed literal/length code of RFC 1951 3.2.6 */
{
    if (sym < 144) put_code(b, 0x30 + (uint32_t)sym, 8);
    else if (sym < 256) put_code(b, 0x190 + (uint32_t)(sym - 144), 9);
    else if (sym < 280) put_code(b, (uint32_t)(sym - 256), 7);
    else put_code(b, 0xc0 + (uint32_t)(sym - 280), 8);
}

static unsigned hash3(const uint8_t *p) { return ((uint32_t)(p[0] << 16 | p[1] << 8 | p[2]) * 2654435761u) >> 17 & 0x7fff; }

/* Compresses n bytes as a zlib stream: one fixed-Huffman block of greedy LZ77 matches found
   through hash chains, or stored blocks where that is smaller (noise) or memory is short. */
static void zlib_deflate(png_buffer *out, const uint8_t *in, size_t n)
{
    size_t start = out->len + 2;
    int32_t *head = (int32_t *)malloc((1u << 15) * sizeof *head), *prev = (int32_t *)malloc((n ? n : 1) * sizeof *prev);
    put_byte(out, 0x78), put_byte(out, 0x01);
    if (head && prev) {
        memset(head, 0xff, (1u << 15) * sizeof *head);   /* -1: no earlier position */
        put_bits(out, 3, 3);   /* final block, fixed Huffman */
        for (size_t i = 0, best; i < n; i += best) {
            size_t best_dist = 0, max = n - i < 258 ? n - i : 258;
            int32_t cand = i + 3 <= n ? head[hash3(in + i)] : -1;
            best = 0;
            for (int probes = 0; cand >= 0 && i - (size_t)cand <= 32768 && probes < 32; probes++, cand = prev[cand]) {
                size_t len = 0;
                while (len < max && in[(size_t)cand + len] == in[i + len]) len++;
                if (len > best) best = len, best_dist = i - (size_t)cand;
                if (len == max) break;
            }
            if (best >= 3) {
                int s = 28, d = 29;
                while (length_base[s] > best) s--;
                while (dist_base[d] > best_dist) d--;
                put_fixed_symbol(out, 257 + s);
                put_bits(out, (uint32_t)(best - length_base[s]), length_extra[s]);
                put_code(out, (uint32_t)d, 5);
                put_bits(out, (uint32_t)(best_dist - dist_base[d]), dist_extra[d]);
            } else put_fixed_symbol(out, in[i]), best = 1;
            for (size_t j = i; j < i + best && j + 3 <= n; j++) {   /* every position joins its chain */
                unsigned hsh = hash3(in + j);
                prev[j] = head[hsh], head[hsh] = (int32_t)j;
            }
        }
        put_fixed_symbol(out, 256);
        put_bits(out, 0, 7);   /* flush to a byte boundary */
        out->bits = 0, out->nbits = 0;
    }
    if (!head || !prev || out->len - start > n + 5 * (n / 65535 + 1)) {
        out->len = start, out->bits = 0, out->nbits = 0;
        size_t i = 0, k;
        do {
            k = n - i < 65535 ? n - i : 65535;
            put_byte(out, i + k == n);   /* BFINAL on the last, BTYPE 00 = stored */
            put_byte(out, (int)(k & 255)), put_byte(out, (int)(k >> 8));
            put_byte(out, (int)(~k & 255)), put_byte(out, (int)(~k >> 8 & 255));
            put_bytes(out, in + i, k);
        } while ((i += k) < n);
    }
    put_be32(out, zlib_adler32(in, n));
    free(head);
    free(prev);
}

static size_t chunk_begin(png_buffer *b, const char *type) { size_t at = b->len; put_be32(b, 0); put_bytes(b, type, 4); return at; }

static void chunk_end(png_buffer *b, size_t at)
{
    uint32_t n;
    if (b->failed) return;
    n = (uint32_t)(b->len - at - 8);
    b->data[at] = (uint8_t)(n >> 24), b->data[at + 1] = (uint8_t)(n >> 16), b->data[at + 2] = (uint8_t)(n >> 8), b->data[at + 3] = (uint8_t)n;
    put_be32(b, png_crc32(b->data + at + 4, n + 4u));
}

/* Length of the well-formed UTF-8 sequence at s (1 for ASCII), else 0. Stops at a NUL. */
static int utf8_length(const uint8_t *s)
{
    int n = s[0] < 0x80 ? 1 : s[0] < 0xc2 ? 0 : s[0] < 0xe0 ? 2 : s[0] < 0xf0 ? 3 : s[0] < 0xf5 ? 4 : 0;
    for (int k = 1; k < n; k++)
        if ((s[k] & 0xc0) != 0x80) return 0;
    return n;
}

/* A UTF-8 text that fits Latin-1 goes in tEXt, which every tool shows; one beyond Latin-1 in iTXt,
   as PIL (and so AUTOMATIC1111) does. A byte that is not part of valid UTF-8 is taken as Latin-1. */
static void put_text_chunk(png_buffer *b, const char *key, const char *value)
{
    const uint8_t *s = (const uint8_t *)value;
    int itxt = 0, n;
    size_t at;
    for (size_t i = 0; s[i]; i += n ? (size_t)n : 1)
        if ((n = utf8_length(s + i)) > 2 || (n == 2 && s[i] > 0xc3)) itxt = 1;
    at = chunk_begin(b, itxt ? "iTXt" : "tEXt");
    put_bytes(b, key, strlen(key) + 1);
    if (itxt) put_bytes(b, "\0\0\0", 4);   /* uncompressed, no language tag, no translated key */
    for (size_t i = 0; s[i]; i += n ? (size_t)n : 1) {
        n = utf8_length(s + i);
        if (!n && itxt) put_byte(b, 0xc0 | s[i] >> 6), put_byte(b, 0x80 | (s[i] & 0x3f));
        else if (n == 2 && !itxt) put_byte(b, (s[i] & 3) << 6 | (s[i + 1] & 0x3f));
        else put_bytes(b, s + i, n ? (size_t)n : 1);
    }
    chunk_end(b, at);
}

/* Filters each row with the filter whose residuals have the smallest sum of magnitudes (the
   usual heuristic), then deflates; returns the malloc'd PNG bytes. */
static uint8_t *png_encode(const uint8_t *rgb, int w, int h, const char *text_key, const char *text_value,
                           size_t *size, char *err, size_t errcap)
{
    png_buffer b;
    size_t stride = (size_t)w * 3, at, keylen = text_key ? strlen(text_key) : 0;
    uint8_t *filtered, ihdr[13] = {0, 0, 0, 0, 0, 0, 0, 0, 8, 2, 0, 0, 0};   /* 8-bit RGB */
    if (w < 1 || h < 1 || (uint64_t)w * (uint64_t)h > IMAGE_MAX_PIXELS) { image_error(err, errcap, "cannot write a %dx%d PNG", w, h); return NULL; }
    if (text_key && text_value && (keylen < 1 || keylen > 79)) { image_error(err, errcap, "PNG text key must have 1 to 79 bytes"); return NULL; }
    if (!(filtered = (uint8_t *)malloc((stride + 1) * (size_t)h))) { image_error(err, errcap, "out of memory"); return NULL; }
    for (int y = 0; y < h; y++) {
        const uint8_t *row = rgb + (size_t)y * stride, *prev = y ? row - stride : NULL;
        uint8_t *o = filtered + (size_t)y * (stride + 1);
        long best_cost = -1;
        for (int type = 0; type < 5; type++) {
            long cost = 0;
            for (size_t i = 0; i < stride; i++) {
                int r = (uint8_t)(row[i] - png_predict(type, row, prev, i, 3));
                cost += r < 128 ? r : 256 - r;
            }
            if (best_cost < 0 || cost < best_cost) best_cost = cost, o[0] = (uint8_t)type;
        }
        for (size_t i = 0; i < stride; i++) o[i + 1] = (uint8_t)(row[i] - png_predict(o[0], row, prev, i, 3));
    }
    memset(&b, 0, sizeof b);
    put_bytes(&b, "\x89PNG\r\n\x1a\n", 8);
    for (int k = 0; k < 4; k++) ihdr[k] = (uint8_t)((unsigned)w >> (24 - 8 * k)), ihdr[4 + k] = (uint8_t)((unsigned)h >> (24 - 8 * k));
    at = chunk_begin(&b, "IHDR"), put_bytes(&b, ihdr, 13), chunk_end(&b, at);
    if (text_key && text_value) put_text_chunk(&b, text_key, text_value);
    at = chunk_begin(&b, "IDAT"), zlib_deflate(&b, filtered, (stride + 1) * (size_t)h), chunk_end(&b, at);
    at = chunk_begin(&b, "IEND"), chunk_end(&b, at);
    free(filtered);
    if (b.failed) { free(b.data); image_error(err, errcap, "out of memory"); return NULL; }
    *size = b.len;
    return b.data;
}

/* ---- PPM (P6) ------------------------------------------------------------------------------ */

static uint8_t *ppm_decode(const uint8_t *data, size_t size, int *w_out, int *h_out, char *err, size_t errcap)
{
    long v[3];
    size_t pos = 2;
    uint8_t *rgb;
#define PPM_SPACE(c) ((c) == ' ' || (c) == '\t' || (c) == '\n' || (c) == '\r' || (c) == '\v' || (c) == '\f')
    if (size < 2 || data[0] != 'P' || data[1] != '6') { image_error(err, errcap, "not a binary PPM (P6) file"); return NULL; }
    for (int k = 0; k < 3; k++) {
        for (;;) {   /* whitespace and # comments */
            while (pos < size && PPM_SPACE(data[pos])) pos++;
            if (pos == size || data[pos] != '#') break;
            while (pos < size && data[pos] != '\n') pos++;
        }
        if (pos == size || data[pos] < '0' || data[pos] > '9') { image_error(err, errcap, "PPM header is bad at byte %zu", pos); return NULL; }
        for (v[k] = 0; pos < size && data[pos] >= '0' && data[pos] <= '9' && v[k] <= 1 << 24; pos++) v[k] = v[k] * 10 + (data[pos] - '0');
    }
    if (pos == size || !PPM_SPACE(data[pos])) { image_error(err, errcap, "PPM header is bad at byte %zu", pos); return NULL; }
#undef PPM_SPACE
    pos++;
    if (v[2] < 1 || v[2] > 255) { image_error(err, errcap, "PPM maxval %ld is not supported (1..255)", v[2]); return NULL; }
    if (v[0] < 1 || v[1] < 1 || v[0] > 1 << 24 || v[1] > 1 << 24 || (uint64_t)v[0] * (uint64_t)v[1] > IMAGE_MAX_PIXELS) { image_error(err, errcap, "PPM size %ldx%ld is empty or too large", v[0], v[1]); return NULL; }
    if (size - pos < (size_t)v[0] * (size_t)v[1] * 3) { image_error(err, errcap, "PPM is truncated: %zu of %zu pixel bytes", size - pos, (size_t)v[0] * (size_t)v[1] * 3); return NULL; }
    if (!(rgb = (uint8_t *)malloc((size_t)v[0] * (size_t)v[1] * 3))) { image_error(err, errcap, "out of memory"); return NULL; }
    for (size_t i = 0; i < (size_t)v[0] * (size_t)v[1] * 3; i++) rgb[i] = (uint8_t)(data[pos + i] >= v[2] ? 255 : data[pos + i] * 255 / v[2]);
    *w_out = (int)v[0], *h_out = (int)v[1];
    return rgb;
}

/* ---- files --------------------------------------------------------------------------------- */

static uint8_t *read_whole_file(const char *path, size_t *size, char *err, size_t errcap)
{
    FILE *f = fopen(path, "rb");
    uint8_t *data = NULL;
    size_t cap = 0, n;
    *size = 0;
    if (!f) { image_error(err, errcap, "%s: %s", path, strerror(errno)); return NULL; }
    do {
        if (*size == cap) {
            uint8_t *grown = (uint8_t *)realloc(data, cap = cap ? 2 * cap : 1 << 16);
            if (!grown) { free(data); fclose(f); image_error(err, errcap, "%s: out of memory", path); return NULL; }
            data = grown;
        }
        *size += n = fread(data + *size, 1, cap - *size, f);
    } while (n);
    if (ferror(f)) { free(data); data = NULL; image_error(err, errcap, "%s: read error", path); }
    fclose(f);
    return data;
}

static int write_whole_file(const char *path, const void *header, size_t header_size, const void *data, size_t size, char *err, size_t errcap)
{
    FILE *f = fopen(path, "wb");
    if (!f) return image_error(err, errcap, "%s: %s", path, strerror(errno));
    if (fwrite(header, 1, header_size, f) != header_size || fwrite(data, 1, size, f) != size) {
        image_error(err, errcap, "%s: %s", path, strerror(errno));
        fclose(f);
        return -1;
    }
    if (fclose(f)) return image_error(err, errcap, "%s: %s", path, strerror(errno));
    return 0;
}

/* Reads a PNG or binary PPM, told apart by their first bytes; errors name the file. */
static uint8_t *image_read(const char *path, int *w, int *h, char *err, size_t errcap)
{
    char msg[256];
    size_t size;
    uint8_t *data = read_whole_file(path, &size, err, errcap), *rgb;
    if (!data) return NULL;
    if (size >= 2 && data[0] == 'P' && data[1] == '6') rgb = ppm_decode(data, size, w, h, msg, sizeof msg);
    else if (size >= 4 && !memcmp(data, "\x89PNG", 4)) rgb = png_decode(data, size, w, h, msg, sizeof msg);
    else rgb = NULL, snprintf(msg, sizeof msg, "not a PNG or binary PPM (P6) file");
    if (!rgb) image_error(err, errcap, "%s: %s", path, msg);
    free(data);
    return rgb;
}

static int png_write(const char *path, const uint8_t *rgb, int w, int h, const char *text_key, const char *text_value,
                     char *err, size_t errcap)
{
    size_t size;
    uint8_t *png = png_encode(rgb, w, h, text_key, text_value, &size, err, errcap);
    int rc = png ? write_whole_file(path, "", 0, png, size, err, errcap) : -1;
    free(png);
    return rc;
}

static int ppm_write(const char *path, const uint8_t *rgb, int w, int h, char *err, size_t errcap)
{
    char header[64];
    int n = snprintf(header, sizeof header, "P6\n%d %d\n255\n", w, h);
    if (w < 1 || h < 1) return image_error(err, errcap, "cannot write a %dx%d PPM", w, h);
    return write_whole_file(path, header, (size_t)n, rgb, (size_t)w * (size_t)h * 3, err, errcap);
}

/* Writes a .ppm path as PPM, anything else as PNG with `parameters` (AUTOMATIC1111's key, which
   web UIs and image viewers show as the generation settings) when given. */
static int image_write(const char *path, const uint8_t *rgb, int w, int h, const char *parameters, char *err, size_t errcap)
{
    size_t n = strlen(path);
    if (n >= 4 && (!strcmp(path + n - 4, ".ppm") || !strcmp(path + n - 4, ".PPM"))) return ppm_write(path, rgb, w, h, err, errcap);
    return png_write(path, rgb, w, h, parameters ? "parameters" : NULL, parameters, err, errcap);
}
