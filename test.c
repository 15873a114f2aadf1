/* test.c - every test of sd.h. `./test [GOLDEN_DIR] [--only GROUP,...]` (default ../shared/golden,
   every group) runs the checks that need no data, then every golden file it finds under GOLDEN_DIR,
   and ends with the line `N passed, N failed`; the groups and the other modes are listed above
   main(). Tests never time anything; benchmarks live in tools/bench.c. */
#define main example_main   /* example.c's CLI and image files are tested here too */
#include "example.c"
#undef main

#include <ctype.h>
#include <dirent.h>
#include <pthread.h>
#include <sys/wait.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- harness ------------------------------------------------------------------------------ */

static int n_pass, n_fail;
static const char *golden_dir = "../shared/golden";
static const char *merges_path;   /* CLIP merges.txt: $SD_MERGES, weights/, or ../shared/clip/ */

#define CHECK(cond, ...) check_((cond) != 0, __FILE__, __LINE__, __VA_ARGS__)
static int check_(int ok, const char *file, int line, const char *fmt, ...)
{
    if (ok) { n_pass++; return 1; }
    va_list ap;
    n_fail++;
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 0;
}

/* Reads a whole file into malloc'd memory (the tests may use malloc; sd.h may not). */
static unsigned char *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    long n;
    *size = 0;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = (unsigned char *)malloc((size_t)n + 1);
        if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n) { *size = (size_t)n; buf[n] = 0; }
        else { free(buf); buf = NULL; }
    }
    fclose(f);
    return buf;
}

/* A file in memory served as sd_source.read serves one (the read-callback tests). */
typedef struct memory_file { const unsigned char *b; size_t n; } memory_file;
SD_MAYBE_UNUSED static int memory_read(void *user, int file, uint64_t offset, void *dst, size_t size)
{
    const memory_file *f = (const memory_file *)user;
    if (file || offset > f->n || size > f->n - offset) return -1;
    memcpy(dst, f->b + offset, size);
    return 0;
}

static int file_exists(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f) fclose(f);
    return f != NULL;
}

/* A test arena with exactly `bytes` free, over one malloc'd block; free_arena() gives both back. */
typedef struct test_block { sd_arena arena; void *memory; } test_block;

static sd_arena *test_arena(size_t bytes)
{
    test_block *t = (test_block *)malloc(sizeof *t);
    if (!t || !(t->memory = malloc(bytes + SD_ARENA_ALIGN))) { fprintf(stderr, "out of memory for a %zu-byte test arena\n", bytes); exit(2); }
    /* start it aligned, so that exactly `bytes` are free (what the *_arena_bytes functions count) */
    uintptr_t p = ((uintptr_t)t->memory + SD_ARENA_ALIGN - 1) & ~(uintptr_t)(SD_ARENA_ALIGN - 1);
    sd_arena_init(&t->arena, (void *)p, bytes);
    return &t->arena;
}

static void free_arena(sd_arena *a)
{
    if (!a) return;
    free(((test_block *)a)->memory);
    free(a);
}

/* A one-thread pool for tests that call a kernel outside a stage (layout changes of probes). */
static sd_pool *host_pool(void)
{
    static sd_pool pool;
    static sd_arena *arena;
    if (!arena && pool_init(&pool, 1, arena = test_arena(pool_arena_bytes(1)), NULL)) { fprintf(stderr, "host pool\n"); exit(2); }
    return &pool;
}

/* A golden file opened from GOLDEN_DIR/rel, with its bytes and table; NULL if absent. */
typedef struct golden_file {
    unsigned char *bytes;
    size_t size;
    sd_safetensors st;
    sd_arena *arena;
    char path[1024];
} golden_file;

static golden_file *golden_open(const char *rel)
{
    golden_file *g = (golden_file *)calloc(1, sizeof *g);
    sd_error err;
    snprintf(g->path, sizeof g->path, "%s/%s", golden_dir, rel);
    g->bytes = read_file(g->path, &g->size);
    if (!g->bytes) { free(g); return NULL; }
    g->arena = test_arena(1u << 24);
    if (sd_safetensors_open(&g->st, g->bytes, g->size, g->arena, &err)) {
        CHECK(0, "%s: %s", g->path, err.message);
        free(g->bytes); free(g);
        return NULL;
    }
    return g;
}

static void golden_close(golden_file *g)
{
    if (!g) return;
    free(g->bytes);
    free_arena(g->arena);
    free(g);
}

static int ends_with(const char *s, const char *tail)
{
    size_t n = strlen(s), k = strlen(tail);
    return n >= k && !strcmp(s + n - k, tail);
}

/* Whether a file in a model's golden folder is a whole-pipeline golden (txt2img_*, img2img_*, and
   LCM's lcm_txt2img_*, lcm_pipeline_*, which hold the same tensors). Other files there (lora_*,
   ti_*, lcm_unet, inpaint_*, ...) belong to tests of their own. */
static int is_pipeline_golden(const char *name)
{
    return (!strncmp(name, "txt2img_", 8) || !strncmp(name, "img2img_", 8) || !strncmp(name, "lcm_txt2img_", 12) ||
            !strncmp(name, "lcm_pipeline_", 13)) && ends_with(name, ".safetensors");
}

/* A golden set may hold any part of the layout (golden README §7). Each golden file a test
   checks is a case; a run that meets none fails (the directory is wrong), and each kind of
   golden the set lacks gets one note: line, however many tests would have used it. */
static int n_cases;

static void note_absent(const char *kind, const char *fmt, ...)
{
    static char noted[64][512];
    static int count;
    va_list ap;
    for (int i = 0; i < count; i++) if (!strcmp(noted[i], kind)) return;
    if (count < 64) snprintf(noted[count++], sizeof noted[0], "%s", kind);
    printf("note: ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
}

/* The models of GOLDEN_DIR/models, by NAME: NAME.safetensors (F32), NAME-fp16.safetensors and the
   diffusers folder NAME-diffusers/ (unet/, vae/, text_encoder/ as sd.h reads them), each layout
   optional. Anything else there (add-on folders such as taesd/, files of other formats) is for
   tests that know it: noted once and skipped. Read once, sorted by name. */
enum { LAYOUT_F32, LAYOUT_F16, LAYOUT_DIFFUSERS, LAYOUTS };
typedef struct golden_model {
    char name[256];
    char path[LAYOUTS][1400];   /* "" where the model has no such layout */
    int loads;                  /* sd_model_load takes it: 1, refuses it: -1, not tried yet: 0 */
} golden_model;

static golden_model *golden_models;
static int golden_model_count = -1;   /* -1: not read yet */

static int compare_strings(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int golden_models_read(void)
{
    char dir[1100], skipped[1024] = "";
    char *names[512];
    int n = 0;
    if (golden_model_count >= 0) return golden_model_count;
    golden_model_count = 0;
    snprintf(dir, sizeof dir, "%s/models", golden_dir);
    DIR *d = opendir(dir);
    if (!d) return 0;
    for (struct dirent *e; n < 512 && (e = readdir(d)); )
        if (e->d_name[0] != '.' && strlen(e->d_name) < 250) {
            names[n] = (char *)malloc(strlen(e->d_name) + 1);
            memcpy(names[n++], e->d_name, strlen(e->d_name) + 1);
        }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, compare_strings);
    golden_models = (golden_model *)calloc((size_t)n + 1, sizeof *golden_models);
    for (int i = 0; i < n; i++) {
        char name[256], path[1400];
        size_t len = strlen(names[i]);
        int layout = -1;
        snprintf(name, sizeof name, "%s", names[i]);
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (ends_with(name, "-fp16.safetensors")) layout = LAYOUT_F16, name[len - 17] = 0;
        else if (ends_with(name, ".safetensors")) layout = LAYOUT_F32, name[len - 12] = 0;
        else if (ends_with(name, "-diffusers")) {
            char part[1700];
            layout = LAYOUT_DIFFUSERS, name[len - 10] = 0;
            for (int k = 0; k < DIFFUSERS_REQUIRED && layout >= 0; k++) {
                snprintf(part, sizeof part, "%s/%s", path, diffusers_parts[k]);
                if (!file_exists(part)) layout = -1;
            }
        }
        if (layout < 0 || !*name) {
            size_t used = strlen(skipped);
            snprintf(skipped + used, sizeof skipped - used, "%s%s", used ? ", " : "", names[i]);
            continue;
        }
        int k = 0;
        while (k < golden_model_count && strcmp(golden_models[k].name, name)) k++;
        if (k == golden_model_count) snprintf(golden_models[golden_model_count++].name, sizeof golden_models[0].name, "%s", name);
        snprintf(golden_models[k].path[layout], sizeof golden_models[k].path[layout], "%s", path);
    }
    for (int i = 0; i < n; i++) free(names[i]);
    if (*skipped) printf("note: %s: %s: not checkpoints (NAME[-fp16].safetensors) or diffusers pipeline folders (NAME-diffusers/ with unet/, vae/, "
                         "text_encoder/); the tests of models skip them\n", dir, skipped);
    return golden_model_count;
}

/* The model's single checkpoint file, F16 first (smaller, faster to read); NULL if it has none. */
static const char *golden_model_file(const golden_model *m)
{
    return *m->path[LAYOUT_F16] ? m->path[LAYOUT_F16] : *m->path[LAYOUT_F32] ? m->path[LAYOUT_F32] : NULL;
}

/* Whether GOLDEN_DIR/NAME/FILE exists. */
static int golden_exists(const char *name, const char *file)
{
    char path[1600];
    snprintf(path, sizeof path, "%s/%s/%s", golden_dir, name, file);
    return file_exists(path);
}

/* GOLDEN_DIR/rel is neither a file nor a folder: golden_open(rel) gave NULL because the file is
   not there, not because it is malformed. */
static int golden_absent(const char *rel)
{
    char path[1600];
    DIR *d;
    snprintf(path, sizeof path, "%s/%s", golden_dir, rel);
    if ((d = opendir(path))) closedir(d);
    return !d && !file_exists(path);
}

static void note_no_models(void)
{
    note_absent("models", "no checkpoints in %s/models (NAME[-fp16].safetensors, NAME-diffusers/): the tests of models skipped", golden_dir);
}

/* How many pipeline goldens GOLDEN_DIR/NAME/ folders hold. */
static int count_pipeline_goldens(void)
{
    DIR *top = opendir(golden_dir);
    struct dirent *d, *f;
    int n = 0;
    while (top && (d = readdir(top))) {
        char sub[1400];
        snprintf(sub, sizeof sub, "%s/%s", golden_dir, d->d_name);
        DIR *dir = d->d_name[0] != '.' ? opendir(sub) : NULL;
        while (dir && (f = readdir(dir))) n += is_pipeline_golden(f->d_name);
        if (dir) closedir(dir);
    }
    if (top) closedir(top);
    return n;
}

static void note_no_pipeline_goldens(void)
{
    note_absent("pipeline goldens", "no pipeline goldens (NAME/txt2img_*, img2img_*) in %s: the checks that use them skipped", golden_dir);
}

/* A whole model loaded as users load it (sd_model_load), from a single file or a diffusers folder. */
#define DIFFUSERS_PARTS (int)(sizeof diffusers_parts / sizeof *diffusers_parts)
#define DIFFUSERS_CONFIGS (int)(sizeof diffusers_config_files / sizeof *diffusers_config_files)

typedef struct loaded_model {
    unsigned char *bytes, *merges;
    unsigned char *keep[DIFFUSERS_PARTS + DIFFUSERS_CONFIGS];   /* a diffusers folder's files and configs */
    size_t size, merges_size;
    sd_arena *arena;
    sd_model *model;
} loaded_model;

/* A model from a diffusers folder (example.c's list of parts and configs). */
static int open_diffusers_model(loaded_model *lm, const char *dir)
{
    unsigned char **keep = lm->keep;
    sd_source src;
    sd_error err;
    char path[1600];
    memset(lm, 0, sizeof *lm);
    memset(&src, 0, sizeof src);
    for (int i = 0; i < DIFFUSERS_PARTS; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, diffusers_parts[i]);
        if ((keep[i] = read_file(path, &src.size[src.count]))) src.data[src.count++] = keep[i];
        else if (i < DIFFUSERS_REQUIRED) return -1;
    }
    for (int i = 0; i < DIFFUSERS_CONFIGS; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, diffusers_config_files[i]);
        if ((keep[DIFFUSERS_PARTS + i] = read_file(path, &src.config_size[src.config_count])))
            src.config[src.config_count++] = (const char *)keep[DIFFUSERS_PARTS + i];
    }
    lm->merges = read_file(merges_path, &lm->merges_size);
    if (!lm->merges) return -1;
    src.merges = (const char *)lm->merges;
    src.merges_size = lm->merges_size;
    lm->arena = test_arena(sd_model_arena_bytes(&src));
    int rc = sd_model_load(&lm->model, &src, lm->arena, &err);
    if (rc == SD_ERR_UNSUPPORTED) printf("note: %s: %s; skipped\n", dir, err.message);
    else CHECK(rc == SD_OK, "%s: %s", dir, err.message);
    return rc;
}

static int open_test_model(loaded_model *lm, const char *path)
{
    sd_source src;
    sd_error err;
    memset(lm, 0, sizeof *lm);
    lm->bytes = read_file(path, &lm->size);
    lm->merges = read_file(merges_path, &lm->merges_size);
    if (!lm->bytes || !lm->merges) return -1;
    memset(&src, 0, sizeof src);
    src.data[0] = lm->bytes;
    src.size[0] = lm->size;
    src.count = 1;
    src.merges = (const char *)lm->merges;
    src.merges_size = lm->merges_size;
    lm->arena = test_arena(sd_clip_vocab_arena_bytes(lm->merges_size) + (1u << 22));
    int rc = sd_model_load(&lm->model, &src, lm->arena, &err);
    if (rc == SD_ERR_UNSUPPORTED) printf("note: %s: %s; skipped\n", path, err.message);
    else CHECK(rc == SD_OK, "%s: %s", path, err.message);
    return rc;
}

static void unload_model(loaded_model *lm)
{
    free(lm->bytes);
    free(lm->merges);
    free_arena(lm->arena);
    for (int i = 0; i < DIFFUSERS_PARTS + DIFFUSERS_CONFIGS; i++) free(lm->keep[i]);
}

/* Loads model gm from its single file or its diffusers folder; the first try notes in gm->loads
   whether sd_model_load took it. Returns what open_*_model returned. */
static int load_golden_model(loaded_model *lm, golden_model *gm, int diffusers)
{
    int rc = diffusers ? open_diffusers_model(lm, gm->path[LAYOUT_DIFFUSERS]) : open_test_model(lm, golden_model_file(gm));
    if (!gm->loads) gm->loads = rc ? -1 : 1;
    return rc;
}

/* Whether sd_model_load takes model gm (tried once; a model it refuses gets its note then). */
static int golden_model_loads(golden_model *gm)
{
    loaded_model lm;
    if (!gm->loads && (golden_model_file(gm) || *gm->path[LAYOUT_DIFFUSERS])) {
        load_golden_model(&lm, gm, !golden_model_file(gm));
        unload_model(&lm);
    }
    return gm->loads > 0;
}

/* A named F32 tensor of a golden file (fails the test and returns NULL if missing). */
static const float *golden_f32(golden_file *g, const char *name, int64_t *numel)
{
    const sd_tensor *t = sd_safetensors_find(&g->st, name);
    if (!CHECK(t && t->dtype == SD_F32, "%s: no F32 tensor '%s'", g->path, name)) return NULL;
    if (numel) *numel = sd_tensor_numel(t);
    return (const float *)t->data;
}

/* max|got - want| / max|want| <= tol, the golden README's measure; prints the worst element. */
static int check_close(const char *what, const float *got, const float *want, int64_t n, double tol)
{
    double maxdiff = 0, maxref = 0;
    int64_t worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (!(d <= maxdiff)) { maxdiff = d; worst = i; }   /* also catches NaN */
        if (fabs(want[i]) > maxref) maxref = fabs(want[i]);
    }
    double rel = maxref > 0 ? maxdiff / maxref : maxdiff;
    return CHECK(rel <= tol, "%s: max|diff|/max|golden| = %.3g > %.3g (element %lld: got %.8g, want %.8g)",
                 what, rel, tol, (long long)worst, n ? got[worst] : 0.0, n ? want[worst] : 0.0);
}

/* ---- building safetensors files in memory (for malformed-file and loader tests) ----------- */

/* Writes a safetensors file with the given header JSON (padded to 8 bytes) followed by `data_size` bytes of data
   (copied from data, or zero when data is NULL). The header is used verbatim. */
static unsigned char *make_file(const char *header, const void *data, size_t data_size, size_t *size)
{
    size_t n = strlen(header), h = (n + 7) / 8 * 8;   /* padded with spaces, as writers do */
    unsigned char *b = (unsigned char *)calloc(8 + h + data_size + 1, 1);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(b + 8, header, n);
    memset(b + 8 + n, ' ', h - n);
    if (data) memcpy(b + 8 + h, data, data_size);
    *size = 8 + h + data_size;
    return b;
}

/* A copy of an opened file with each tensor passed through `edit` (which may rename it, change
   its shape or dtype, or drop it by returning 0) and float tensors converted to `to` when
   to != SD_DTYPE_COUNT. The data region is rebuilt, 8-byte aligned; the metadata is kept. */
typedef int (*tensor_edit)(sd_tensor *t, char *name, size_t cap, void *user);

static unsigned char *rewrite_file(const sd_safetensors *st, sd_dtype to, tensor_edit edit, void *user, size_t *size)
{
    size_t hcap = 4096, hlen = 0, dcap = 0, dlen = 0;
    unsigned char *data;
    for (int i = 0; i < st->meta_count; i++) hcap += 6 * (strlen(st->meta_keys[i]) + strlen(st->meta_values[i])) + 8;   /* escapes */
    hcap += (size_t)st->count * (512 + 300);   /* a name (edits may rename it) and up to 8 dims and 2 offsets */
    char *h = (char *)malloc(hcap);
    for (int i = 0; i < st->count; i++) dcap += st->tensors[i].nbytes * 2 + 8;
    data = (unsigned char *)malloc(dcap + 1);
#define HPUT(...) (hlen += (size_t)snprintf(h + hlen, hcap - hlen, __VA_ARGS__))
    HPUT("{");
    if (st->meta_count) {
        HPUT("\"__metadata__\":{");
        for (int i = 0; i < st->meta_count; i++) {
            HPUT("%s\"%s\":\"", i ? "," : "", st->meta_keys[i]);
            for (const char *c = st->meta_values[i]; *c; c++) {   /* JSON-escape the value */
                if (*c == '"' || *c == '\\') HPUT("\\%c", *c);
                else if ((unsigned char)*c < 0x20) HPUT("\\u%04x", *c);
                else HPUT("%c", *c);
            }
            HPUT("\"");
        }
        HPUT("}");
    }
    /* largest elements first, as writers do, so that every tensor is aligned without holes */
    for (size_t align = 8; align >= 1; align /= 2)
    for (int i = 0; i < st->count; i++) {
        sd_tensor t = st->tensors[i];
        char name[512];
        snprintf(name, sizeof name, "%s", t.name);
        int is_float = t.dtype == SD_F32 || t.dtype == SD_F16 || t.dtype == SD_BF16;
        sd_dtype out = is_float && to != SD_DTYPE_COUNT ? to : t.dtype;
        if (sd_dtype_size(out) != align) continue;
        if (edit && !edit(&t, name, sizeof name, user)) continue;
        if (out != t.dtype) {
            int64_t n = sd_tensor_numel(&st->tensors[i]);
            for (int64_t k = 0; k < n; k++) {
                float v = tensor_get(&st->tensors[i], (size_t)k);
                uint32_t bits;
                uint16_t u;
                memcpy(&bits, &v, 4);
                u = out == SD_F16 ? sd_f32_to_f16(v) : (uint16_t)(bits >> 16);   /* bf16 truncates */
                if (out == SD_F32) memcpy(data + dlen + 4 * k, &v, 4);
                else memcpy(data + dlen + 2 * k, &u, 2);
            }
            t.nbytes = (size_t)n * sd_dtype_size(out);
        } else {
            memcpy(data + dlen, t.data, t.nbytes);
        }
        HPUT("%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", hlen > 1 ? "," : "", name, sd_dtype_name(out));
        for (int d = 0; d < t.ndim; d++) HPUT("%s%lld", d ? "," : "", (long long)t.shape[d]);
        HPUT("],\"data_offsets\":[%zu,%zu]}", dlen, dlen + t.nbytes);
        dlen += t.nbytes;
    }
    HPUT("}");
#undef HPUT
    unsigned char *b = make_file(h, data, dlen, size);
    free(h);
    free(data);
    return b;
}

/* Rewrites every chunk CRC of a PNG to match its bytes (damage that only the inflater can see). */
static void png_fix_crcs(uint8_t *png, size_t size)
{
    for (size_t p = 8; size - p >= 12;) {
        uint32_t len = get_be32(png + p);
        if (len > size - p - 12) return;
        uint32_t crc = png_crc32(png + p + 4, len + 4u);
        for (int k = 0; k < 4; k++) png[p + 8 + len + k] = (uint8_t)(crc >> (24 - 8 * k));
        p += 12 + (size_t)len;
    }
}

#if defined(SD_FUZZ)
/* libFuzzer entry points (`make fuzz`). SD_FUZZ=1: the safetensors reader, where each input must
   give SD_OK with every tensor inside the buffer, or an error. SD_FUZZ=2: the tokenizer, arbitrary
   bytes as a prompt in both paddings with a scratch arena of exactly sd_clip_scratch_bytes(size):
   it must always succeed, deterministically, with well-formed ids; then as an A1111-syntax prompt
   (sd_prompt_chunks): chunks of valid ids and finite weights, or SD_ERR_ARG. SD_FUZZ=3: the GGUF
   reader, as SD_FUZZ=1 (and every block-typed tensor's first and last values decoded), which
   must also open in an arena of exactly the bytes gguf_arena_bytes plans, filling it exactly.
   SD_FUZZ=4: the CLI's PNG and PPM readers; 5 and 6: the LoRA and embedding readers (below).
   Never a crash or a bad read. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
#if SD_FUZZ == 1 || SD_FUZZ == 3
static int fuzz_read(void *user, int file, uint64_t offset, void *dst, size_t size)
{
    const memory_file *f = (const memory_file *)user;
    if (file || offset > f->n || size > f->n - offset) __builtin_trap();   /* sd.h asked for bytes past the file */
    memcpy(dst, f->b + offset, size);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static sd_arena *a;
    sd_safetensors st;
    sd_error err;
    if (!a) a = test_arena(1 << 24);
    sd_arena_reset(a, 0);
    int rc = (SD_FUZZ == 1 ? sd_safetensors_open : sd_gguf_open)(&st, data, size, a, &err);
    for (int i = 0; rc == SD_OK && i < st.count; i++) {   /* found by name, inside the buffer, readable */
        const sd_tensor *t = sd_safetensors_find(&st, st.tensors[i].name);
        if (t != &st.tensors[i] || (const uint8_t *)t->data < data || (const uint8_t *)t->data + t->nbytes > data + size) __builtin_trap();
        int64_t n = sd_tensor_numel(t);
        float v[DTYPE_MAX_BLOCK];
        if (n > 0) (void)tensor_get(t, (size_t)n - 1);
        if (dtype_is_block(t->dtype) && n > 0) tensor_floats(v, t, 0, n < DTYPE_MAX_BLOCK ? (int)n : DTYPE_MAX_BLOCK);
    }
#if SD_FUZZ == 1
    {   /* the same bytes read through a callback (sd_source.read): the same verdict and table, every
           read inside the file */
        memory_file mf = {data, size};
        sd_source src;
        sd_safetensors rs;
        memset(&src, 0, sizeof src);
        src.size[0] = size, src.read = fuzz_read, src.read_user = &mf;
        size_t mark = sd_arena_mark(a);
        int rrc = st_open_read(&rs, &src, 0, a, &err);
        if (rc == SD_OK && (rrc != SD_OK || rs.count != st.count)) __builtin_trap();
        for (int i = 0; rrc == SD_OK && i < rs.count; i++) {
            const sd_tensor *t = &rs.tensors[i];
            if (t->data || t->offset + t->nbytes > size || (rc == SD_OK && t->offset != st.tensors[i].offset)) __builtin_trap();
            if (sd_tensor_numel(t) > 0) (void)tensor_get(t, (size_t)sd_tensor_numel(t) - 1);
        }
        if (rrc == SD_OK && a->used - mark > safetensors_arena_bound(data, size) + 2 * SD_ALIGN + 8 + safetensors_header_bytes(data, size) + sizeof(sd_reader))
            __builtin_trap();
    }
#endif
#if SD_FUZZ == 3
    size_t plan = (size_t)gguf_arena_bytes(data, size);
    sd_arena *exact = test_arena(plan);
    if (sd_gguf_open(&st, data, size, exact, &err) != rc || (rc == SD_OK && exact->peak != plan)) __builtin_trap();
    free_arena(exact);
#endif
    return 0;
}
#elif SD_FUZZ == 5 || SD_FUZZ == 6
/* The add-on readers against the tiny SD1 model ($SD_FUZZ_MODEL or weights/test's): any bytes as
   a LoRA file (SD_FUZZ=5: sd_lora_load) or an embedding file (6: sd_embeddings_load), in an arena
   of exactly the bound their *_arena_bytes gives, load or give an error message, and leave the
   arena as it was when they fail. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static loaded_model lm;
    static int ready;
    sd_error err;
    if (!ready) {
        const char *path = getenv("SD_FUZZ_MODEL") ? getenv("SD_FUZZ_MODEL") : "weights/test/models/tiny-sd1-fp16.safetensors";
        merges_path = getenv("SD_MERGES") ? getenv("SD_MERGES") : "weights/merges.txt";
        if (open_test_model(&lm, path)) { fprintf(stderr, "fuzz: cannot load %s\n", path); abort(); }
        ready = 1;
    }
    int rc;
    size_t bound;
    sd_arena *a;
#if SD_FUZZ == 5
    sd_lora lora = {data, size, 0.8f, 0.8f, "fuzz"};
    sd_lora_set *set = NULL;
    bound = sd_lora_arena_bytes(&lora, 1);
    a = test_arena(bound);
    rc = sd_lora_load(&set, lm.model->unet, lm.model->te, lm.model->encoders, &lora, 1, a, &err);
    if (!rc && (!set || !sd_lora_warnings(set))) __builtin_trap();
#else
    sd_embedding_file file = {"fuzzword", data, size};
    sd_embeddings *set = NULL;
    bound = sd_embeddings_arena_bytes(&file, 1);
    a = test_arena(bound);
    rc = sd_embeddings_load(&set, lm.model, &file, 1, a, &err);
    if (!rc && !set) __builtin_trap();
#endif
    if (rc && (a->used != 0 || !err.message[0])) __builtin_trap();   /* a failure says why and gives the arena back */
    free_arena(a);
    return 0;
}
#elif SD_FUZZ == 4
/* The CLI's image readers: any bytes as a PNG and as a PPM give an image whose every byte can be
   read (w x h x 3, at most IMAGE_MAX_PIXELS), or an error message. The PNG is also read with its
   chunks' CRCs made right, so that mutations reach the inflater and the filters behind them. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *fixed = (uint8_t *)malloc(size ? size : 1);
    memcpy(fixed, data, size);
    if (size >= 8) png_fix_crcs(fixed, size);
    for (int k = 0; k < 3; k++) {
        char err[256] = "";
        int w = -1, h = -1;
        uint8_t *rgb = (k == 2 ? ppm_decode : png_decode)(k == 1 ? fixed : data, size, &w, &h, err, sizeof err);
        if (rgb) {
            if (w < 1 || h < 1 || (uint64_t)w * (uint64_t)h > IMAGE_MAX_PIXELS) __builtin_trap();
            unsigned sum = 0;
            for (size_t i = 0; i < (size_t)w * h * 3; i += 4093) sum += rgb[i];
            sum += rgb[(size_t)w * h * 3 - 1];
            (void)sum;
            free(rgb);
        } else if (!err[0]) {
            __builtin_trap();   /* a refusal says why */
        }
    }
    free(fixed);
    return 0;
}
#else
static void fuzz_die(const char *what, const char *message)
{
    fprintf(stderr, "fuzz: %s: %s\n", what, message);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static sd_clip_vocab *vocab;
    static sd_arena *vocab_arena;   /* kept, so that the leak checker sees it is still in use */
    sd_error err;
    if (!vocab) {   /* loaded once from $SD_MERGES or weights/merges.txt */
        size_t n;
        const char *path = getenv("SD_MERGES") ? getenv("SD_MERGES") : "weights/merges.txt";
        unsigned char *merges = read_file(path, &n);
        if (!merges) fuzz_die(path, "cannot read merges.txt (set SD_MERGES)");
        vocab_arena = test_arena(sd_clip_vocab_arena_bytes(n));
        if (sd_clip_vocab_load(&vocab, merges, n, NULL, 0, vocab_arena, &err)) fuzz_die("merges", err.message);
        free(merges);   /* the vocabulary keeps no pointer into it */
    }
    sd_arena *scratch = test_arena(sd_clip_scratch_bytes(size));
    for (int pad = 0; pad < 2; pad++) {
        int32_t ids[SD_CLIP_CONTEXT], again[SD_CLIP_CONTEXT];
        size_t length;
        if (sd_clip_tokenize(vocab, (const char *)data, size, (sd_clip_pad)pad, ids, &length, scratch, &err)) fuzz_die("tokenize", err.message);
        if (scratch->used != 0) fuzz_die("tokenize", "scratch arena not reset");
        size_t count = length - 2;
        if (length < 2 || ids[0] != SD_CLIP_BOS || ids[1 + (count < 75 ? count : 75)] != SD_CLIP_EOS) fuzz_die("ids", "bad frame");
        for (int i = 0; i < SD_CLIP_CONTEXT; i++) if (ids[i] < 0 || ids[i] >= SD_CLIP_VOCAB_SIZE) fuzz_die("ids", "id out of range");
        if (sd_clip_tokenize(vocab, (const char *)data, size, (sd_clip_pad)pad, again, &length, scratch, &err) || memcmp(ids, again, sizeof ids))
            fuzz_die("tokenize", "not deterministic");
    }
    free_arena(scratch);
    /* the same bytes as an A1111-syntax prompt: chunks, or a clear SD_ERR_ARG (bad weight, too deep, too long) */
    sd_arena *pa = test_arena(sd_prompt_arena_bytes(size));
    int32_t *cids;
    float *cw;
    int chunks, rc = sd_prompt_chunks(vocab, (const char *)data, size, SD_CLIP_PAD_EOS, 1, 20, 1, &cids, &cw, &chunks, pa, &err);
    if (rc && rc != SD_ERR_ARG) fuzz_die("prompt chunks", err.message);
    if (rc && pa->used != 0) fuzz_die("prompt chunks", "arena not given back after an error");
    for (int c = 0; !rc && c < chunks; c++) {
        if (cids[c * SD_CLIP_CONTEXT] != SD_CLIP_BOS) fuzz_die("prompt chunks", "a chunk without BOS");
        for (int i = 0; i < SD_CLIP_CONTEXT; i++)
            if (cids[c * SD_CLIP_CONTEXT + i] < 0 || cids[c * SD_CLIP_CONTEXT + i] >= SD_CLIP_VOCAB_SIZE || !isfinite(cw[c * SD_CLIP_CONTEXT + i]))
                fuzz_die("prompt chunks", "id out of range or weight not finite");
    }
    free_arena(pa);
    return 0;
}
#endif
#elif !defined(TEST_HARNESS_ONLY)

/* ---- 2. arena ----------------------------------------------------------------------------- */

static void test_arena_basics(void)
{
    static unsigned char mem[4096 + 63];
    sd_arena a;
    sd_error err;
    sd_arena_init(&a, mem + 1, sizeof mem - 1);
    void *p = sd_arena_alloc(&a, 1, &err), *q = sd_arena_alloc(&a, 100, &err);
    CHECK(p && q && (uintptr_t)p % 64 == 0 && (uintptr_t)q % 64 == 0, "arena pieces are 64-byte aligned");
    CHECK((char *)q - (char *)p == 64, "a 1-byte piece takes one 64-byte slot");
    size_t m = sd_arena_mark(&a);
    CHECK(sd_arena_alloc(&a, 1000, &err) != NULL, "allocation under the limit works");
    size_t peak = a.peak;
    sd_arena_reset(&a, m);
    CHECK(a.used == m && a.peak == peak, "reset restores used and keeps the high-water mark");
    memset(&err, 0, sizeof err);
    CHECK(sd_arena_alloc(&a, 1u << 20, &err) == NULL && err.code == SD_ERR_MEMORY, "too large a request fails");
    CHECK(strstr(err.message, "1048576") && strstr(err.message, "left"), "the error says what was asked and what was left: %s", err.message);
    CHECK(a.used == m, "a failed allocation changes nothing");
    CHECK(sd_arena_alloc(&a, (size_t)-1, &err) == NULL, "SIZE_MAX does not wrap around");
    CHECK(arena_array(&a, (size_t)1 << 40, (size_t)1 << 40, &err) == NULL && err.code == SD_ERR_MEMORY, "count x size overflow is caught");
}

/* ---- 3. safetensors ----------------------------------------------------------------------- */

static void test_f16(void)
{
    /* every f16 bit pattern survives f16 -> f32 -> f16 (NaNs stay NaN) */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = sd_f16_to_f32((uint16_t)h);
        uint16_t back = sd_f32_to_f16(f);
        if (f == f ? back != h : (back & 0x7c00) != 0x7c00 || !(back & 0x3ff)) bad++;
    }
    CHECK(bad == 0, "f16 round trip: %d patterns differ", bad);
    CHECK(sd_f16_to_f32(0x3c00) == 1.0f && sd_f16_to_f32(0xc000) == -2.0f && sd_f16_to_f32(0x0001) == 5.9604644775390625e-8f, "f16 values");
    CHECK(sd_f32_to_f16(1.0009765625f + 0.00048828125f) == 0x3c02 && sd_f32_to_f16(1.00048828125f) == 0x3c00, "f16 rounds to nearest even");
    CHECK(sd_f32_to_f16(65520.0f) == 0x7c00 && sd_f32_to_f16(65519.0f) == 0x7bff, "f16 overflow to inf");
    CHECK(sd_bf16_to_f32(0x3f80) == 1.0f, "bf16 value");
}

/* A reader: sd_safetensors_open or sd_gguf_open. */
typedef int (*file_opener)(sd_safetensors *st, const void *data, size_t size, sd_arena *a, sd_error *err);

/* Opens the bytes with `open` and expects failure with a message containing `needle`. */
static void expect_bad_open(file_opener open, const char *what, const unsigned char *b, size_t size, const char *needle)
{
    sd_arena *a = test_arena(1 << 16);
    sd_safetensors st;
    sd_error err = {0, ""};
    size_t used = a->used;
    int rc = open(&st, b, size, a, &err);
    CHECK(rc != SD_OK, "%s: accepted", what);
    CHECK(rc == SD_OK || err.code == rc, "%s: error code not filled", what);
    CHECK(rc == SD_OK || !needle || strstr(err.message, needle), "%s: message '%s' lacks '%s'", what, err.message, needle);
    CHECK(a->used == used && st.count == 0, "%s: arena or table not restored", what);
    free_arena(a);
}

static void expect_bad(const char *what, const unsigned char *b, size_t size, const char *needle)
{
    expect_bad_open(sd_safetensors_open, what, b, size, needle);
}

/* Every strict prefix of a valid file is refused (each in a buffer of its own size, so that the
   sanitizers see any read past it). */
static void check_truncations(file_opener open, const char *what, const unsigned char *b, size_t size)
{
    int truncs_ok = 1;
    sd_safetensors st;
    sd_error err;
    for (size_t n = 0; n < size; n++) {
        unsigned char *c = (unsigned char *)malloc(n ? n : 1);
        memcpy(c, b, n);
        sd_arena *a = test_arena(1 << 16);
        if (open(&st, c, n, a, &err) == SD_OK) truncs_ok = 0;
        free_arena(a);
        free(c);
    }
    CHECK(truncs_ok, "every truncation of %s is rejected", what);
}

static void expect_bad_header(const char *what, const char *header, size_t data_size, const char *needle)
{
    size_t size;
    unsigned char *b = make_file(header, NULL, data_size, &size);
    expect_bad(what, b, size, needle);
    free(b);
}

static void test_safetensors_malformed(void)
{
    /* a small valid file: three tensors and metadata */
    const char *good = "{\"__metadata__\":{\"k\":\"v\\u00e9\\n\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                       "\"b\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[16,22]},\"c\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[24,32]},"
                       "\"pad\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[22,24]}}";
    size_t size;
    unsigned char *b = make_file(good, NULL, 32, &size);
    sd_arena *a = test_arena(1 << 16);
    sd_safetensors st;
    sd_error err;
    int rc = sd_safetensors_open(&st, b, size, a, &err);
    CHECK(rc == SD_OK, "small valid file: %s", rc ? err.message : "");
    if (rc == SD_OK) {
        const sd_tensor *t = sd_safetensors_find(&st, "b");
        CHECK(st.count == 4 && t && t->dtype == SD_F16 && t->ndim == 1 && t->shape[0] == 3 && t->nbytes == 6, "tensor b parsed");
        t = sd_safetensors_find(&st, "c");
        CHECK(t && t->ndim == 0 && sd_tensor_numel(t) == 1, "0-dim tensor parsed");
        CHECK(sd_safetensors_meta(&st, "k") && !strcmp(sd_safetensors_meta(&st, "k"), "v\xc3\xa9\n"), "metadata escapes decoded");
        CHECK(!sd_safetensors_find(&st, "d") && !sd_safetensors_meta(&st, "x"), "absent names are not found");
    }
    free_arena(a);

    check_truncations(sd_safetensors_open, "a valid safetensors file", b, size);

    /* random byte flips in the header never crash (the sanitizers watch) and never succeed
       silently with a table that points outside the buffer */
    uint32_t rng = 12345;
    int flips_ok = 1;
    for (int i = 0; i < 3000; i++) {
        unsigned char *c = (unsigned char *)malloc(size);
        memcpy(c, b, size);
        for (int k = 0; k < 1 + i % 3; k++) {
            rng = rng * 1664525u + 1013904223u;
            size_t at = 8 + (rng >> 8) % (strlen(good));
            rng = rng * 1664525u + 1013904223u;
            c[at] = (unsigned char)(rng >> 24);
        }
        a = test_arena(1 << 16);
        if (sd_safetensors_open(&st, c, size, a, &err) == SD_OK)
            for (int t = 0; t < st.count; t++)
                if ((const unsigned char *)st.tensors[t].data < c || (const unsigned char *)st.tensors[t].data + st.tensors[t].nbytes > c + size) flips_ok = 0;
        free_arena(a);
        free(c);
    }
    CHECK(flips_ok, "byte flips never give tensors outside the buffer");
    free(b);

    /* each validation case */
    unsigned char tiny[16] = {0};
    expect_bad("empty file", tiny, 0, "shorter");
    tiny[0] = 100;
    expect_bad("header length past the end", tiny, 16, "larger than");
    memset(tiny, 0xff, 8);
    expect_bad("absurd header length", tiny, 16, "absurd");
    expect_bad_header("not an object", "[]", 0, "not a JSON object");
    expect_bad_header("truncated JSON", "{\"a\":{\"dtype\":\"F32\",\"sha", 0, "bad header JSON");
    expect_bad_header("bad escape", "{\"a\\q\":{}}", 0, "escape");
    expect_bad_header("lone surrogate", "{\"a\\ud800\":{}}", 0, "surrogate");
    expect_bad_header("control char in string", "{\"a\nb\":{}}", 0, "control");
    expect_bad_header("unknown dtype", "{\"a\":{\"dtype\":\"F8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "unknown dtype");
    expect_bad_header("missing data_offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "lacks data_offsets");
    expect_bad_header("unknown field", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4, "unknown field");
    expect_bad_header("offset past the data", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "past the data region");
    expect_bad_header("reversed offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, "reversed");
    expect_bad_header("length != shape x dtype", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "needs");
    expect_bad_header("overlap", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "overlaps");
    expect_bad_header("hole", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12, "hole");
    expect_bad_header("bytes after the last tensor", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, "cover");
    expect_bad_header("shape product overflow", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", 4, "overflow");
    expect_bad_header("huge number", "{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,4]}}", 4, "too large");
    expect_bad_header("negative dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "non-negative");
    expect_bad_header("fractional dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "integer");
    expect_bad_header("more than 8 dims", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, "more than 8");
    expect_bad_header("duplicate name", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "duplicate");
    expect_bad_header("misaligned data", "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}} ", 6, "not aligned");
    expect_bad_header("metadata value not a string", "{\"__metadata__\":{\"k\":1}}", 0, "not a string");
    expect_bad_header("trailing bytes", "{}x", 0, "trailing");
    expect_bad_header("leading zero", "{\"a\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", 4, "leading zero");

    /* arena too small: clear error, arena untouched */
    b = make_file(good, NULL, 32, &size);
    a = test_arena(256);
    rc = sd_safetensors_open(&st, b, size, a, &err);
    CHECK(rc == SD_ERR_MEMORY && a->used == 0 && strstr(err.message, "arena"), "small arena: rc %d, '%s'", rc, err.message);
    free_arena(a);
    free(b);

    /* lookups stay right (and hashed) with thousands of tensors */
    {
        int n = 3000;
        size_t cap = (size_t)n * 80 + 16, len = 0;
        char *h = (char *)malloc(cap);
        len += (size_t)snprintf(h + len, cap - len, "{");
        for (int i = 0; i < n; i++)
            len += (size_t)snprintf(h + len, cap - len, "%s\"layer.%d.weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[%d,%d]}", i ? "," : "", i, 4 * i, 4 * i + 4);
        snprintf(h + len, cap - len, "}");
        b = make_file(h, NULL, (size_t)4 * n, &size);
        a = test_arena(1 << 20);
        rc = sd_safetensors_open(&st, b, size, a, &err);
        int found = 0;
        for (int i = 0; rc == SD_OK && i < n; i++) {
            char name[64];
            snprintf(name, sizeof name, "layer.%d.weight", i);
            const sd_tensor *t = sd_safetensors_find(&st, name);
            found += t && (const unsigned char *)t->data == b + size - 4 * (size_t)n + 4 * (size_t)i;
        }
        CHECK(found == n, "3000-tensor file: %d of %d found at their offsets (%s)", found, n, rc ? err.message : "ok");
        free_arena(a);
        free(b);
        free(h);
    }
}

/* Every tensor of every golden file against manifest.json (dtype, shape, metadata). */
typedef struct manifest_walk { const char *file; int checked, missing; } manifest_walk;

static void check_manifest_tensors(json *j, golden_file *g, manifest_walk *w)
{
    char name[256], field[64], dt[32];
    size_t len;
    if (!json_eat(j, '{') || json_eat(j, '}')) return;
    do {
        int64_t shape[SD_MAX_DIMS];
        int nd = 0;
        dt[0] = 0;
        json_string(j, name, sizeof name, &len);
        json_eat(j, ':');
        json_eat(j, '{');
        do {
            json_string(j, field, sizeof field, &len);
            json_eat(j, ':');
            if (!strcmp(field, "dtype")) json_string(j, dt, sizeof dt, &len);
            else if (!strcmp(field, "shape")) {
                json_eat(j, '[');
                if (!json_eat(j, ']')) {
                    do { uint64_t v; json_uint(j, &v); if (nd < SD_MAX_DIMS) shape[nd++] = (int64_t)v; } while (json_eat(j, ','));
                    json_eat(j, ']');
                }
            } else json_skip(j, 0);
        } while (json_eat(j, ','));
        json_eat(j, '}');
        const sd_tensor *t = sd_safetensors_find(&g->st, name);
        static const char *torch_names[SD_DTYPE_COUNT] = {"float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"};
        int ok = t && t->ndim == nd && !strcmp(torch_names[t->dtype], dt);
        for (int d = 0; ok && d < nd; d++) ok = t->shape[d] == shape[d];
        if (!t) w->missing++;
        else CHECK(ok, "%s: tensor '%s' does not match manifest.json (%s)", w->file, name, dt);
        w->checked++;
    } while (json_eat(j, ','));
    json_eat(j, '}');
}

static void test_golden_manifest(void)
{
    char path[1024];
    size_t size, len;
    snprintf(path, sizeof path, "%s/manifest.json", golden_dir);
    char *m = (char *)read_file(path, &size);
    if (!m) { note_absent("manifest", "no %s, manifest check skipped", path); return; }
    json j = {m, m, m + size, NULL};
    int files = 0, tensors = 0, absent = 0, other = 0;
    char key[512], field[64];
    json_eat(&j, '{');
    do {
        json_string(&j, key, sizeof key, &len);
        json_eat(&j, ':');
        if (strcmp(key, "files")) { json_skip(&j, 0); continue; }
        json_eat(&j, '{');
        do {
            json_string(&j, key, sizeof key, &len);
            json_eat(&j, ':');
            /* a set may hold some of the files listed; files of other formats are not checked here */
            char path2[1600];
            snprintf(path2, sizeof path2, "%s/%s", golden_dir, key);
            int readable = ends_with(key, ".safetensors") && file_exists(path2);
            absent += !file_exists(path2);
            other += file_exists(path2) && !readable;
            golden_file *g = readable ? golden_open(key) : NULL;
            json_eat(&j, '{');
            do {
                json_string(&j, field, sizeof field, &len);
                json_eat(&j, ':');
                if (g && !strcmp(field, "tensors")) {
                    manifest_walk w = {key, 0, 0};
                    check_manifest_tensors(&j, g, &w);
                    CHECK(w.missing == 0 && w.checked == g->st.count, "%s: %d tensors in the file, %d in manifest.json, %d missing", key, g->st.count, w.checked, w.missing);
                    tensors += w.checked;
                } else if (g && !strcmp(field, "metadata")) {
                    char k[256], v[4096];
                    json_eat(&j, '{');
                    if (!json_eat(&j, '}')) {
                        do {
                            json_string(&j, k, sizeof k, &len);
                            json_eat(&j, ':');
                            json_ws(&j);
                            if (j.p < j.end && *j.p == '"') {
                                json_string(&j, v, sizeof v, &len);
                                const char *got = sd_safetensors_meta(&g->st, k);
                                CHECK(len >= sizeof v || (got && !strcmp(got, v)), "%s: metadata '%s' differs from manifest.json", key, k);
                            } else json_skip(&j, 0);
                        } while (json_eat(&j, ','));
                        json_eat(&j, '}');
                    }
                } else json_skip(&j, 0);
            } while (json_eat(&j, ','));
            json_eat(&j, '}');
            if (g) files++, n_cases++;
            golden_close(g);
        } while (json_eat(&j, ','));
        json_eat(&j, '}');
    } while (json_eat(&j, ','));
    CHECK(!j.error, "manifest.json parses: %s", j.error ? j.error : "");
    printf("manifest: %d golden files, %d tensors checked", files, tensors);
    if (absent || other) printf(" (%d listed files absent, %d not safetensors)", absent, other);
    printf("\n");
    free(m);
}

/* The F32, F16 and converted copies of each model hold the same numbers (the goldens apply to
   all of them), and an F32 file written by the test opens and reads back identically. */
static void test_model_files(void)
{
    int n = golden_models_read(), compared = 0;
    if (!n) { note_no_models(); return; }
    for (int i = 0; i < n; i++) {
        const golden_model *gm = &golden_models[i];
        char rel[1400], rel32[1400];
        snprintf(rel, sizeof rel, "models/%.1000s-fp16.safetensors", gm->name);
        snprintf(rel32, sizeof rel32, "models/%.1000s.safetensors", gm->name);
        golden_file *f16 = *gm->path[LAYOUT_F16] ? golden_open(rel) : NULL, *f32 = *gm->path[LAYOUT_F32] ? golden_open(rel32) : NULL;
        golden_file *any = f16 ? f16 : f32;
        if (any && !sd_safetensors_meta(&any->st, "sd.version"))
            printf("  %s: no sd.version metadata (family and sizes then come from the tensors)\n", any->path);
        if (f16) {   /* widened to F32 in memory: the same numbers as the F16 file and the F32 one */
            size_t size;
            unsigned char *conv = rewrite_file(&f16->st, SD_F32, NULL, NULL, &size);
            sd_arena *a = test_arena(1 << 24);
            sd_safetensors st;
            sd_error err;
            int rc = sd_safetensors_open(&st, conv, size, a, &err);
            CHECK(rc == SD_OK, "%s converted to F32 opens: %s", rel, rc ? err.message : "");
            int same = 1, floats = 0;
            for (int k = 0; rc == SD_OK && k < f16->st.count; k++) {
                const sd_tensor *h = &f16->st.tensors[k], *c = sd_safetensors_find(&st, h->name);
                const sd_tensor *o = f32 ? sd_safetensors_find(&f32->st, h->name) : NULL;
                if (!c || c->ndim != h->ndim) { same = 0; continue; }
                if (h->dtype != SD_F16) continue;
                floats++;
                for (int64_t e = 0; e < sd_tensor_numel(h); e++) {
                    float v = tensor_get(h, (size_t)e);
                    if (tensor_get(c, (size_t)e) != v || (o && tensor_get(o, (size_t)e) != v)) { same = 0; break; }
                }
            }
            CHECK(same && floats > 0, "%s: F16, F32 copy%s hold identical numbers", rel, f32 ? " and the F32 file" : "");
            CHECK(!f32 || f32->st.count == f16->st.count, "%s: same tensor count in F32 and F16 files", rel);
            compared++;
            n_cases++;
            free_arena(a);
            free(conv);
        }
        golden_close(f16);
        golden_close(f32);
    }
    printf("models: %d models, %d F16 files checked against their F32 copies\n", n, compared);
}

/* Random numbers against torch: every tensor of GOLDEN_DIR/rng/torch_randn.safetensors named
   randn.seed{S}.{shape}, randn.seed{S}.seq{k}.{shape} (the k-th successive draw from one
   generator) or rand.seed{S}.{shape} must come out bit for bit. Seeds and shapes come from the
   names, so another golden set with other seeds and shapes runs unchanged. */

/* Splits "randn.seed42.seq1.1x4x8x8" into kind "randn", seed 42, seq 1 (-1 if absent), 256 elements. */
static int parse_rng_name(const char *name, char *kind, size_t cap, uint64_t *seed, int *seq, int64_t *numel)
{
    const char *dot = strchr(name, '.'), *p;
    char *end;
    if (!dot || (size_t)(dot - name) >= cap || strncmp(dot, ".seed", 5)) return 0;
    memcpy(kind, name, (size_t)(dot - name));
    kind[dot - name] = 0;
    *seed = strtoull(dot + 5, &end, 10);
    if (end == dot + 5 || *end != '.') return 0;
    p = end + 1;
    *seq = -1;
    if (!strncmp(p, "seq", 3)) {
        *seq = (int)strtol(p + 3, &end, 10);
        if (end == p + 3 || *end != '.' || *seq < 0) return 0;
        p = end + 1;
    }
    for (*numel = 1;; p = end + 1) {
        long long d = strtoll(p, &end, 10);
        if (end == p || d < 0 || d > (1ll << 30)) return 0;
        *numel *= d;
        if (!*end) return 1;
        if (*end != 'x') return 0;
    }
}

/* Draws the tensor `t` from r as its name's kind says and compares bits. */
static void check_rng_tensor(golden_file *g, const sd_tensor *t, sd_rng *r)
{
    char kind[16];
    uint64_t seed;
    int seq;
    int64_t n, bad = 0, first = -1, max_ulp = 0;
    if (!CHECK(parse_rng_name(t->name, kind, sizeof kind, &seed, &seq, &n), "%s: tensor name '%s' is not kind.seedS[.seqK].shape", g->path, t->name)) return;
    if (!CHECK(t->dtype == SD_F32 && n == sd_tensor_numel(t), "%s: '%s' is not F32 with %lld elements", g->path, t->name, (long long)n)) return;
    float *got = (float *)malloc((size_t)n * sizeof(float) + 1);
    if (!strcmp(kind, "randn")) sd_randn(r, got, (size_t)n);
    else if (!strcmp(kind, "rand")) sd_rand(r, got, (size_t)n);
    else { CHECK(0, "%s: '%s': unknown kind '%s'", g->path, t->name, kind); free(got); return; }
    for (int64_t i = 0; i < n; i++) {
        float w;
        memcpy(&w, (const char *)t->data + 4 * i, 4);
        int32_t a, b;
        memcpy(&a, &got[i], 4);
        memcpy(&b, &w, 4);
        if (a == b) continue;
        if (a < 0) a = INT32_MIN - a;   /* order the bit patterns so that the difference counts ulps */
        if (b < 0) b = INT32_MIN - b;
        int64_t ulp = a > b ? (int64_t)a - b : (int64_t)b - a;
        if (ulp > max_ulp) max_ulp = ulp;
        if (first < 0) first = i;
        bad++;
    }
    CHECK(bad == 0, "%s: %lld of %lld values differ from torch, by up to %lld ulp (first at %lld: got %.9g)",
          t->name, (long long)bad, (long long)n, (long long)max_ulp, (long long)first, first >= 0 ? got[first] : 0.0);
    free(got);
}

static void test_rng(void)
{
    golden_file *g = golden_open("rng/torch_randn.safetensors");
    if (!g) {
        if (golden_absent("rng/torch_randn.safetensors")) note_absent("rng", "no %s/rng/torch_randn.safetensors, rng goldens skipped", golden_dir);
        return;
    }
    n_cases++;
    for (int i = 0; i < g->st.count; i++) {
        const sd_tensor *t = &g->st.tensors[i];
        char kind[16], prefix[96];
        uint64_t seed;
        int seq;
        int64_t n;
        sd_rng r;
        if (!parse_rng_name(t->name, kind, sizeof kind, &seed, &seq, &n)) { check_rng_tensor(g, t, &r); continue; }
        if (seq > 0) continue;   /* drawn after seq0 from the same generator */
        sd_rng_seed(&r, seed);
        if (seq < 0) { check_rng_tensor(g, t, &r); continue; }
        for (int k = 0;; k++) {   /* seq0, seq1, ... until one is missing */
            const sd_tensor *next = NULL;
            snprintf(prefix, sizeof prefix, "%s.seed%llu.seq%d.", kind, (unsigned long long)seed, k);
            for (int j = 0; j < g->st.count && !next; j++)
                if (!strncmp(g->st.tensors[j].name, prefix, strlen(prefix))) next = &g->st.tensors[j];
            if (!next) break;
            check_rng_tensor(g, next, &r);
        }
    }
    golden_close(g);

    /* Seeding resets the generator, including the spare normal of the short road. */
    sd_rng a, b;
    float x[3], y[3];
    sd_rng_seed(&a, 5);
    sd_randn(&a, x, 3);
    sd_rng_seed(&a, 5);
    sd_rng_seed(&b, 5);
    sd_randn(&a, x, 3);
    sd_randn(&b, y, 3);
    CHECK(!memcmp(x, y, sizeof x), "rng: reseeding does not reset the generator");
}

/* The schedule, DDIM and img2img's start against diffusers: GOLDEN_DIR/scheduler/ddim.safetensors
   (tables, timesteps, single steps), the train_sigmas of every scheduler/ file, and every DDIM
   pipeline golden GOLDEN_DIR/NAME/{txt2img,img2img}_*.safetensors (timesteps, guidance, each step,
   img2img's noising). Everything a case needs comes from the file's tensors and metadata. */

#include <dirent.h>

/* Leaves j at the value of `key` in the JSON object `text`; 0 if absent (or not an object). */
static int config_find(json *j, const char *text, const char *key) { return json_find(j, text, strlen(text), key); }

static double config_number(const char *text, const char *key, double dflt)
{
    json j;
    char *end;
    if (!config_find(&j, text, key)) return dflt;
    double v = strtod(j.p, &end);
    return end == j.p ? dflt : v;
}

static const char *config_string(const char *text, const char *key, char *buf, size_t cap, const char *dflt)
{
    json j;
    size_t len;
    if (!config_find(&j, text, key) || *j.p != '"' || json_string(&j, buf, cap, &len) || len >= cap) return dflt;
    return buf;
}

static int spacing_from_name(const char *s)
{
    return !strcmp(s, "leading") ? SD_SPACING_LEADING : !strcmp(s, "trailing") ? SD_SPACING_TRAILING
         : !strcmp(s, "linspace") ? SD_SPACING_LINSPACE : -1;
}

/* What a diffusers DDIMScheduler config (JSON) asks for; absent keys take DDIMScheduler's defaults. */
typedef struct ddim_config { sd_schedule s; int spacing, steps_offset, prediction; } ddim_config;

static int ddim_config_from_json(ddim_config *c, const char *cfg, const char *where)
{
    char buf[64];
    sd_error err;
    const char *beta = config_string(cfg, "beta_schedule", buf, sizeof buf, "linear");
    int schedule = !strcmp(beta, "scaled_linear") ? SD_BETA_SCALED_LINEAR : !strcmp(beta, "linear") ? SD_BETA_LINEAR : -1;
    if (!CHECK(schedule >= 0, "%s: beta_schedule '%s' not supported", where, beta)) return 0;
    if (!CHECK(!sd_schedule_init(&c->s, (int)config_number(cfg, "num_train_timesteps", 1000),
                                 config_number(cfg, "beta_start", 0.0001), config_number(cfg, "beta_end", 0.02), schedule, &err),
               "%s: %s", where, err.message)) return 0;
    json j;
    if (!config_find(&j, cfg, "set_alpha_to_one") || !strncmp(j.p, "true", 4)) c->s.final_alpha_cumprod = 1.0f;
    c->spacing = spacing_from_name(config_string(cfg, "timestep_spacing", buf, sizeof buf, "leading"));
    c->steps_offset = (int)config_number(cfg, "steps_offset", 0);
    const char *pred = config_string(cfg, "prediction_type", buf, sizeof buf, "epsilon");
    c->prediction = !strcmp(pred, "epsilon") ? SD_PREDICT_EPSILON : !strcmp(pred, "v_prediction") ? SD_PREDICT_V : -1;
    return CHECK(c->spacing >= 0 && c->prediction >= 0, "%s: unsupported timestep_spacing or prediction_type in %s", where, cfg);
}

/* An I64 tensor's element i (the golden files store integers as I64). */
static int64_t golden_i64_at(const sd_tensor *t, int64_t i)
{
    int64_t v;
    memcpy(&v, (const char *)t->data + 8 * i, 8);
    return v;
}

static const sd_tensor *golden_i64(golden_file *g, const char *name)
{
    const sd_tensor *t = sd_safetensors_find(&g->st, name);
    return CHECK(t && t->dtype == SD_I64, "%s: no I64 tensor '%s'", g->path, name) ? t : NULL;
}

static void test_ddim_tables(void)
{
    golden_file *g = golden_open("scheduler/ddim.safetensors");
    if (!g) {
        if (golden_absent("scheduler")) note_absent("scheduler", "no %s/scheduler, scheduler goldens skipped", golden_dir);
        else if (golden_absent("scheduler/ddim.safetensors")) note_absent("ddim", "no %s/scheduler/ddim.safetensors, DDIM table goldens skipped", golden_dir);
        return;
    }
    n_cases++;
    ddim_config c;
    const char *cfg = sd_safetensors_meta(&g->st, "config");
    if (!CHECK(cfg, "%s: no config in metadata", g->path) || !ddim_config_from_json(&c, cfg, g->path)) { golden_close(g); return; }
    const float *want;
    int64_t n;
    int T = c.s.num_train_timesteps;
    if ((want = golden_f32(g, "betas", &n)) && CHECK(n == T, "betas: %lld values", (long long)n)) check_close("betas", c.s.betas, want, n, 2e-6);
    if ((want = golden_f32(g, "alphas_cumprod", &n)) && CHECK(n == T, "alphas_cumprod: %lld values", (long long)n)) check_close("alphas_cumprod", c.s.alphas_cumprod, want, n, 2e-6);
    if ((want = golden_f32(g, "final_alpha_cumprod", &n))) check_close("final_alpha_cumprod", &c.s.final_alpha_cumprod, want, 1, 2e-6);

    /* the steps of the single-step goldens: metadata step_timesteps = [751, 501, 251, 1] */
    int step_count = 0;
    const char *st = sd_safetensors_meta(&g->st, "step_timesteps");
    if (st) {
        json j = { st, st, st + strlen(st), NULL };
        uint64_t v;
        if (json_eat(&j, '[') && !json_eat(&j, ']'))
            do { if (json_uint(&j, &v)) break; step_count++; } while (json_eat(&j, ','));
    }

    for (int i = 0; i < g->st.count; i++) {
        const sd_tensor *t = &g->st.tensors[i];
        char spacing[32], pred[32], what[160];
        int steps, tt, len;
        if (sscanf(t->name, "timesteps.%31[a-z].%d%n", spacing, &steps, &len) == 2 && !t->name[len]) {
            int s = spacing_from_name(spacing), *ours = (int *)malloc((size_t)(steps > 0 ? steps : 1) * sizeof(int));
            sd_error err;
            if (CHECK(s >= 0 && t->dtype == SD_I64 && sd_tensor_numel(t) == steps, "%s: unknown spacing or wrong shape", t->name) &&
                CHECK(!sd_ddim_timesteps(&c.s, steps, s, c.steps_offset, ours, &err), "%s: %s", t->name, err.message)) {
                int bad = -1;
                for (int k = 0; k < steps && bad < 0; k++) if (ours[k] != golden_i64_at(t, k)) bad = k;
                CHECK(bad < 0, "%s: entry %d is %d, diffusers has %lld", t->name, bad, bad >= 0 ? ours[bad] : 0,
                      (long long)(bad >= 0 ? golden_i64_at(t, bad) : 0));
            }
            free(ours);
        } else if (sscanf(t->name, "step.%31[a-z_].t%d.prev_sample%n", pred, &tt, &len) == 2 && !t->name[len]) {
            int p = !strcmp(pred, "epsilon") ? SD_PREDICT_EPSILON : !strcmp(pred, "v_prediction") ? SD_PREDICT_V : -1;
            const float *x = golden_f32(g, "step.sample", &n), *e = golden_f32(g, "step.model_output", NULL), *x0_want;
            snprintf(what, sizeof what, "step.%s.t%d.pred_original_sample", pred, tt);
            x0_want = golden_f32(g, what, NULL);
            if (!CHECK(p >= 0 && step_count > 0, "%s: unknown prediction or no step_timesteps metadata", t->name) || !x || !e || !x0_want) continue;
            float *prev = (float *)malloc((size_t)n * sizeof(float)), *x0 = (float *)malloc((size_t)n * sizeof(float));
            sd_error err;
            if (CHECK(!sd_ddim_step(&c.s, tt, sd_ddim_prev_timestep(&c.s, tt, step_count), p, 0, x, e, (size_t)n, NULL, NULL, prev, x0, &err), "%s: %s", t->name, err.message)) {
                check_close(t->name, prev, (const float *)t->data, n, 2e-6);
                check_close(what, x0, x0_want, n, 2e-6);
            }
            free(prev);
            free(x0);
        }
    }
    golden_close(g);
}

/* train_sigmas of every scheduler golden that has them (the Euler / DPM++ files): the shared table. */
static void test_schedule_sigmas(void)
{
    char dirpath[1024];
    snprintf(dirpath, sizeof dirpath, "%s/scheduler", golden_dir);
    DIR *dir = opendir(dirpath);
    struct dirent *f;
    if (!dir) return;
    while ((f = readdir(dir))) {
        size_t len = strlen(f->d_name);
        char rel[1024], what[1100];
        if (len < 12 || strcmp(f->d_name + len - 12, ".safetensors")) continue;
        snprintf(rel, sizeof rel, "scheduler/%s", f->d_name);
        golden_file *g = golden_open(rel);
        const char *cfg = g ? sd_safetensors_meta(&g->st, "config") : NULL;
        const sd_tensor *t = g ? sd_safetensors_find(&g->st, "train_sigmas") : NULL;
        ddim_config c;
        if (t && CHECK(cfg, "%s: no config in metadata", g->path) && ddim_config_from_json(&c, cfg, g->path) &&
            CHECK(t->dtype == SD_F32 && sd_tensor_numel(t) == c.s.num_train_timesteps, "%s: train_sigmas shape", g->path)) {
            snprintf(what, sizeof what, "%s train_sigmas", rel);
            check_close(what, c.s.sigmas, (const float *)t->data, c.s.num_train_timesteps, 2e-6);
        }
        golden_close(g);
    }
    closedir(dir);
}

/* One pipeline golden run with DDIM: its timesteps, img2img noising, CFG and every step. */
static void check_ddim_pipeline(const char *rel)
{
    golden_file *g = golden_open(rel);
    if (!g) return;
    const char *cls = sd_safetensors_meta(&g->st, "scheduler_class"), *sampler = sd_safetensors_meta(&g->st, "sampler");
    const char *cfg = sd_safetensors_meta(&g->st, "scheduler"), *steps_s = sd_safetensors_meta(&g->st, "num_inference_steps");
    const char *strength_s = sd_safetensors_meta(&g->st, "strength"), *guidance_s = sd_safetensors_meta(&g->st, "guidance_scale");
    const char *eta_s = sd_safetensors_meta(&g->st, "eta");
    ddim_config c;
    int steps, start = 0, *ts = NULL;
    sd_error err;
    char what[1200];
    if ((cls && strcmp(cls, "DDIMScheduler")) || (sampler && strcmp(sampler, "ddim"))) goto done;   /* another sampler's golden */
    if (!CHECK(cfg && steps_s && guidance_s, "%s: metadata lacks scheduler, num_inference_steps or guidance_scale", g->path) ||
        !ddim_config_from_json(&c, cfg, g->path)) goto done;
    float eta = eta_s ? strtof(eta_s, NULL) : 0.0f, guidance = strtof(guidance_s, NULL);
    steps = atoi(steps_s);
    if (!CHECK(eta == 0, "%s: eta %g > 0, but the golden holds no step noise", g->path, eta)) goto done;
    ts = (int *)malloc((size_t)(steps > 0 ? steps : 1) * sizeof(int));
    if (!CHECK(!sd_ddim_timesteps(&c.s, steps, c.spacing, c.steps_offset, ts, &err), "%s: %s", g->path, err.message)) goto done;
    if (strength_s && !CHECK(!sd_img2img_start(steps, strtod(strength_s, NULL), &start, &err), "%s: %s", g->path, err.message)) goto done;

    const sd_tensor *gt = golden_i64(g, "timesteps");
    int kept = steps - start, bad = -1;
    if (!gt || !CHECK(sd_tensor_numel(gt) == kept, "%s: %lld timesteps, ours keep %d of %d", g->path, (long long)sd_tensor_numel(gt), kept, steps)) goto done;
    for (int k = 0; k < kept && bad < 0; k++) if (ts[start + k] != golden_i64_at(gt, k)) bad = k;
    if (!CHECK(bad < 0, "%s: timestep %d is %d, diffusers has %lld", g->path, bad, bad >= 0 ? ts[start + bad] : 0,
               (long long)(bad >= 0 ? golden_i64_at(gt, bad) : 0))) goto done;

    int64_t n;
    const float *x = golden_f32(g, "latents_in", &n);
    float *out = (float *)malloc((size_t)n * sizeof(float));
    if (strength_s) {   /* img2img: the init latents noised to the first kept timestep */
        const sd_tensor *lt = golden_i64(g, "latent_timestep");
        const float *x0 = golden_f32(g, "init_latents", NULL), *noise = golden_f32(g, "noise", NULL);
        const float *noisy = golden_f32(g, "noisy_latents", NULL);
        if (lt && CHECK(golden_i64_at(lt, 0) == ts[start], "%s: latent_timestep %lld, ours %d", g->path, (long long)golden_i64_at(lt, 0), ts[start]) &&
            x0 && noise && noisy && x && CHECK(!sd_add_noise(&c.s, ts[start], x0, noise, (size_t)n, out, &err), "%s: %s", g->path, err.message)) {
            snprintf(what, sizeof what, "%s noisy_latents", rel);
            check_close(what, out, noisy, n, 1e-4);
            snprintf(what, sizeof what, "%s latents_in", rel);
            check_close(what, out, x, n, 1e-4);
        }
    }
    for (int k = 0; k < kept && x; k++) {
        char name[64];
        int64_t m;
        snprintf(name, sizeof name, "step%d.unet_out", k);
        const float *unet = golden_f32(g, name, &m);
        snprintf(name, sizeof name, "step%d.noise_pred", k);
        const float *eps = golden_f32(g, name, NULL);
        snprintf(name, sizeof name, "step%d.latents_out", k);
        const float *want = golden_f32(g, name, NULL);
        if (!unet || !eps || !want || !CHECK(m == 2 * n, "%s: step%d.unet_out is not the two CFG halves", g->path, k)) break;
        sd_guidance(unet, unet + n, guidance, (size_t)n, out);
        snprintf(what, sizeof what, "%s step%d noise_pred (guidance %g)", rel, k, guidance);
        check_close(what, out, eps, n, 1e-5);
        int t = ts[start + k];
        if (!CHECK(!sd_ddim_step(&c.s, t, sd_ddim_prev_timestep(&c.s, t, steps), c.prediction, eta, x, eps, (size_t)n,
                                 NULL, NULL, out, NULL, &err), "%s: %s", g->path, err.message)) break;
        snprintf(what, sizeof what, "%s step%d latents_out (t=%d)", rel, k, t);
        check_close(what, out, want, n, 1e-4);
        x = want;   /* the next step starts from diffusers' latents, so errors do not pile up */
    }
    free(out);
done:
    free(ts);
    golden_close(g);
}

/* Every pipeline golden GOLDEN_DIR/NAME/{txt2img,img2img}_*.safetensors through check(rel). */
static void each_pipeline_golden(void (*check)(const char *rel))
{
    DIR *top = opendir(golden_dir);
    struct dirent *d;
    int found = 0;
    while (top && (d = readdir(top))) {
        char sub[1024], rel[1024];
        if (d->d_name[0] == '.') continue;
        snprintf(sub, sizeof sub, "%s/%s", golden_dir, d->d_name);
        DIR *dir = opendir(sub);
        struct dirent *f;
        if (!dir) continue;
        while ((f = readdir(dir))) {
            if (!is_pipeline_golden(f->d_name)) continue;
            snprintf(rel, sizeof rel, "%.500s/%.500s", d->d_name, f->d_name);
            check(rel);
            found++;
        }
        closedir(dir);
    }
    if (top) closedir(top);
    n_cases += found;
    if (!found) note_no_pipeline_goldens();
}

static void test_ddim_pipelines(void) { each_pipeline_golden(check_ddim_pipeline); }

/* Checks that need no golden data: argument errors, and eta > 0 drawing its noise like torch. */
static void test_ddim_api(void)
{
    sd_schedule s;
    sd_error err;
    int ts[1000], start = -1;
    CHECK(sd_schedule_init(&s, 0, 0.00085, 0.012, SD_BETA_SCALED_LINEAR, &err) == SD_ERR_ARG, "schedule: 0 timesteps accepted");
    CHECK(sd_schedule_init(&s, 1000, 0.00085, 0.012, 7, &err) == SD_ERR_ARG, "schedule: unknown beta schedule accepted");
    CHECK(sd_schedule_init(&s, 1000, 0.00085, 0.012, SD_BETA_SCALED_LINEAR, &err) == SD_OK, "schedule: %s", err.message);
    CHECK(sd_ddim_timesteps(&s, 0, SD_SPACING_LEADING, 1, ts, &err) == SD_ERR_ARG, "ddim: 0 steps accepted");
    CHECK(sd_ddim_timesteps(&s, 1001, SD_SPACING_LEADING, 1, ts, &err) == SD_ERR_ARG, "ddim: 1001 steps accepted");
    CHECK(sd_ddim_timesteps(&s, 1000, SD_SPACING_LEADING, 1, ts, &err) == SD_ERR_ARG, "ddim: timestep 1000 (1000 steps + offset 1) accepted");
    CHECK(sd_ddim_timesteps(&s, 4, 9, 1, ts, &err) == SD_ERR_ARG, "ddim: unknown spacing accepted");
    CHECK(sd_ddim_timesteps(&s, 1000, SD_SPACING_TRAILING, 1, ts, &err) == SD_OK && ts[0] == 999 && ts[999] == 0, "ddim: 1000 trailing steps");
    CHECK(sd_img2img_start(10, 0.7, &start, &err) == SD_OK && start == 3, "img2img: strength 0.7 of 10 steps starts at %d, not 3", start);
    CHECK(sd_img2img_start(10, 1.5, &start, &err) == SD_ERR_ARG, "img2img: strength 1.5 accepted");
    CHECK(sd_img2img_start(10, 0.05, &start, &err) == SD_ERR_ARG, "img2img: strength 0.05 of 10 steps (no step left) accepted");

    float x[40], e[40], noise[40], a[40], b[40];
    sd_rng r1, r2;
    for (int i = 0; i < 40; i++) { x[i] = (float)i / 10 - 2; e[i] = (float)(i % 7) / 3 - 1; }
    CHECK(sd_ddim_step(&s, 1000, 750, SD_PREDICT_EPSILON, 0, x, e, 40, NULL, NULL, a, NULL, &err) == SD_ERR_ARG, "ddim step: t=1000 accepted");
    CHECK(sd_ddim_step(&s, 500, 750, SD_PREDICT_EPSILON, 0, x, e, 40, NULL, NULL, a, NULL, &err) == SD_ERR_ARG, "ddim step: t_prev > t accepted");
    CHECK(sd_ddim_step(&s, 751, 501, SD_PREDICT_EPSILON, 0.5f, x, e, 40, NULL, NULL, a, NULL, &err) == SD_ERR_ARG, "ddim step: eta > 0 without noise accepted");
    sd_rng_seed(&r1, 3);
    CHECK(sd_ddim_step(&s, 751, 501, SD_PREDICT_EPSILON, 0.5f, x, e, 40, NULL, &r1, x, NULL, &err) == SD_ERR_ARG, "ddim step: noise drawn over x accepted");
    /* eta > 0 with a generator = with that generator's torch.randn given as noise */
    sd_rng_seed(&r1, 3);
    sd_rng_seed(&r2, 3);
    sd_randn(&r2, noise, 40);
    CHECK(sd_ddim_step(&s, 751, 501, SD_PREDICT_V, 0.5f, x, e, 40, NULL, &r1, a, NULL, &err) == SD_OK &&
          sd_ddim_step(&s, 751, 501, SD_PREDICT_V, 0.5f, x, e, 40, noise, NULL, b, NULL, &err) == SD_OK &&
          !memcmp(a, b, sizeof a), "ddim step: eta noise from the generator differs from the same draw given");
    /* eta = 0 ignores noise; eta > 0 moves the sample */
    CHECK(sd_ddim_step(&s, 751, 501, SD_PREDICT_V, 0, x, e, 40, noise, NULL, b, NULL, &err) == SD_OK && memcmp(a, b, sizeof a),
          "ddim step: eta 0.5 gives the eta 0 result");
}

static void test_ddim(void)
{
    test_ddim_api();
    test_ddim_tables();
    test_schedule_sigmas();
    test_ddim_pipelines();
}

/* The samplers against diffusers: every GOLDEN_DIR/scheduler/ file, by its `class` metadata
   (none: the DDIM file of §3) — Euler, Euler a, DPM++ 2M with or without Karras sigmas, and DDIM
   through the same sampler object, and LCM (check_lcm_scheduler: its file has a layout of its
   own). For each: the timesteps, sigmas and init_noise_sigma of every spacing and step count the
   file holds, and its step sequences (scale_model_input, prev_sample, pred_original_sample per
   step), fed diffusers' sample at every step, then run on from our own outputs (which exercises
   DPM++'s multistep state). Then the checks that need no data: argument errors, Euler a's and
   LCM's noise drawn like torch, img2img noising against the steps. */

static int sampler_kind_from_class(const char *cls)
{
    return !cls || !strcmp(cls, "DDIMScheduler") ? SD_SAMPLER_DDIM
         : !strcmp(cls, "EulerDiscreteScheduler") ? SD_SAMPLER_EULER
         : !strcmp(cls, "EulerAncestralDiscreteScheduler") ? SD_SAMPLER_EULER_A
         : !strcmp(cls, "DPMSolverMultistepScheduler") ? SD_SAMPLER_DPMPP_2M
         : !strcmp(cls, "LCMScheduler") ? SD_SAMPLER_LCM : -1;
}

/* A JSON boolean of the config, or dflt when absent. */
static int config_flag(const char *cfg, const char *key, int dflt)
{
    json j;
    if (!config_find(&j, cfg, key)) return dflt;
    return !strncmp(j.p, "true", 4) ? 1 : !strncmp(j.p, "false", 5) ? 0 : dflt;
}

/* The config option (if any) that asks for a variant of the scheduler these samplers are not. */
static const char *sampler_config_unsupported(int kind, const char *cfg)
{
    char buf[64];
    if (config_flag(cfg, "rescale_betas_zero_snr", 0)) return "rescale_betas_zero_snr";
    if (kind == SD_SAMPLER_EULER) {
        if (strcmp(config_string(cfg, "interpolation_type", buf, sizeof buf, "linear"), "linear")) return "interpolation_type";
        if (strcmp(config_string(cfg, "timestep_type", buf, sizeof buf, "discrete"), "discrete")) return "timestep_type";
        if (config_flag(cfg, "use_karras_sigmas", 0)) return "use_karras_sigmas";
    }
    if (kind == SD_SAMPLER_DPMPP_2M) {
        if (strcmp(config_string(cfg, "algorithm_type", buf, sizeof buf, "dpmsolver++"), "dpmsolver++")) return "algorithm_type";
        if (strcmp(config_string(cfg, "solver_type", buf, sizeof buf, "midpoint"), "midpoint")) return "solver_type";
        if (strcmp(config_string(cfg, "final_sigmas_type", buf, sizeof buf, "zero"), "zero")) return "final_sigmas_type";
        if (config_number(cfg, "solver_order", 2) != 2) return "solver_order";
        if (config_flag(cfg, "use_lu_lambdas", 0)) return "use_lu_lambdas";
        if (config_flag(cfg, "thresholding", 0)) return "thresholding";
        json j;   /* a finite lambda_min_clipped cuts the top timesteps (cosine schedules) */
        if (config_find(&j, cfg, "lambda_min_clipped") && strncmp(j.p, "\"-inf\"", 6) && strncmp(j.p, "-Infinity", 9)) return "lambda_min_clipped";
    }
    if (kind == SD_SAMPLER_LCM) {   /* sd.h's LCM is the released models' schedule */
        if (config_number(cfg, "original_inference_steps", 50) != 50) return "original_inference_steps";
        if (config_number(cfg, "timestep_scaling", 10) != 10) return "timestep_scaling";
        if (config_flag(cfg, "thresholding", 0)) return "thresholding";
        if (config_flag(cfg, "clip_sample", 0)) return "clip_sample";
    }
    return NULL;
}

/* Timestep i of a golden timesteps tensor: F32 (Euler's fractional ones) or I64. */
static double golden_timestep_at(const sd_tensor *t, int64_t i)
{
    return t->dtype == SD_F32 ? ((const float *)t->data)[i] : (double)golden_i64_at(t, i);
}

/* Our timesteps equal diffusers' exactly (the UNet embeds them as they are). */
static void check_sampler_timesteps(const char *what, const sd_sampler *smp, const sd_tensor *t)
{
    int bad = -1;
    if (!CHECK(t && (t->dtype == SD_F32 || t->dtype == SD_I64) && sd_tensor_numel(t) == smp->steps,
               "%s: not %d timesteps (F32 or I64)", what, smp->steps)) return;
    for (int k = 0; k < smp->steps && bad < 0; k++) if ((double)smp->timesteps[k] != golden_timestep_at(t, k)) bad = k;
    CHECK(bad < 0, "%s: entry %d is %.9g, diffusers has %.9g", what, bad, bad >= 0 ? smp->timesteps[bad] : 0.0,
          bad >= 0 ? golden_timestep_at(t, bad) : 0.0);
}

/* seq.{pt}.*: ten steps of one prediction type from diffusers' initial noise and model outputs. */
static void check_sampler_sequence(golden_file *g, int kind, const ddim_config *c, int karras, const char *pt)
{
    int prediction = !strcmp(pt, "epsilon") ? SD_PREDICT_EPSILON : !strcmp(pt, "v_prediction") ? SD_PREDICT_V : -1;
    const sd_tensor *gts = sd_safetensors_find(&g->st, "seq.timesteps");
    char name[128], what[1300];
    sd_sampler smp;
    sd_error err;
    int64_t n, m;
    if (!CHECK(prediction >= 0 && gts, "%s: unknown prediction type '%s' or no seq.timesteps", g->path, pt)) return;
    int steps = (int)sd_tensor_numel(gts);
    if (!CHECK(!sd_sampler_init(&smp, &c->s, kind, steps, c->spacing, c->steps_offset, karras, prediction, 0, &err),
               "%s seq: %s", g->path, err.message)) return;
    snprintf(what, sizeof what, "%s seq.timesteps", g->path);
    check_sampler_timesteps(what, &smp, gts);
    const float *want = golden_f32(g, "seq.sigmas", &m);
    snprintf(what, sizeof what, "%s seq.sigmas", g->path);
    if (want && CHECK(m == steps + 1, "%s: %lld values", what, (long long)m)) check_close(what, smp.sigmas, want, m, 2e-6);
    snprintf(what, sizeof what, "%s seq.init_noise_sigma", g->path);
    if ((want = golden_f32(g, "seq.init_noise_sigma", NULL))) check_close(what, &smp.init_noise_sigma, want, 1, 2e-6);

    const float *initial = golden_f32(g, "seq.initial_noise", &n);
    if (!initial) return;
    float *buf = (float *)malloc((size_t)n * 5 * sizeof(float));
    float *x = buf, *out = buf + n, *x0 = buf + 2 * n, *history = buf + 3 * n, *scaled = buf + 4 * n;
    for (int64_t i = 0; i < n; i++) x[i] = initial[i] * smp.init_noise_sigma;
    snprintf(name, sizeof name, "seq.%s.step0.sample", pt);
    snprintf(what, sizeof what, "%s %s (initial noise · init_noise_sigma)", g->path, name);
    if ((want = golden_f32(g, name, &m)) && CHECK(m == n, "%s: size", what)) check_close(what, x, want, n, 2e-6);

    /* pass 0: each step from diffusers' sample (single steps, 2e-6); pass 1: the whole chain
       from our own outputs, where float32 rounding may pile up over ten steps — 1e-5, a few
       times the fp32-vs-fp64 spread the README gives for these sequences (<= 3e-6) */
    for (int pass = 0; pass < 2; pass++) {
        double tol = pass ? 1e-5 : 2e-6;
        if (pass && !CHECK(!sd_sampler_init(&smp, &c->s, kind, steps, c->spacing, c->steps_offset, karras, prediction, 0, &err),
                           "%s: %s", g->path, err.message)) break;
        for (int64_t i = 0; pass && i < n; i++) x[i] = initial[i] * smp.init_noise_sigma;
        for (int k = 0; k < steps; k++) {
            const float *sample, *model, *noise, *want_prev, *want_x0, *want_scaled;
            snprintf(name, sizeof name, "seq.%s.step%d.sample", pt, k);
            if (!(sample = golden_f32(g, name, &m)) || !CHECK(m == n, "%s %s: size", g->path, name)) break;
            snprintf(name, sizeof name, "seq.step%d.model_output", k);
            if (!(model = golden_f32(g, name, &m)) || !CHECK(m == n, "%s %s: size", g->path, name)) break;
            snprintf(name, sizeof name, "seq.step%d.noise", k);
            noise = sd_safetensors_find(&g->st, name) ? golden_f32(g, name, &m) : NULL;
            if (!CHECK(kind != SD_SAMPLER_EULER_A || (noise && m == n), "%s: Euler a without %s", g->path, name)) break;
            snprintf(name, sizeof name, "seq.%s.step%d.prev_sample", pt, k);
            want_prev = golden_f32(g, name, NULL);
            snprintf(name, sizeof name, "seq.%s.step%d.pred_original_sample", pt, k);
            want_x0 = golden_f32(g, name, NULL);
            snprintf(name, sizeof name, "seq.%s.step%d.scaled_input", pt, k);
            want_scaled = golden_f32(g, name, NULL);
            if (!want_prev || !want_x0 || !want_scaled) break;
            if (!pass) memcpy(x, sample, (size_t)n * sizeof(float));
            float scale = sd_sampler_input_scale(&smp, k);
            for (int64_t i = 0; i < n; i++) scaled[i] = x[i] * scale;
            const char *how = pass ? "chained" : "single";
            snprintf(what, sizeof what, "%s %s step%d scaled_input (%s)", g->path, pt, k, how);
            check_close(what, scaled, want_scaled, n, tol);
            if (!CHECK(!sd_sampler_step(&smp, k, x, model, (size_t)n, noise, NULL, history, out, x0, &err),
                       "%s %s step%d: %s", g->path, pt, k, err.message)) break;
            snprintf(what, sizeof what, "%s %s step%d prev_sample (%s, t=%g)", g->path, pt, k, how, smp.timesteps[k]);
            check_close(what, out, want_prev, n, tol);
            snprintf(what, sizeof what, "%s %s step%d pred_original_sample (%s, t=%g)", g->path, pt, k, how, smp.timesteps[k]);
            check_close(what, x0, want_x0, n, tol);
            memcpy(x, out, (size_t)n * sizeof(float));
        }
    }
    free(buf);
}

/* DDIM's single-step goldens (§3) through the sampler: step.{pt}.t{T}.* at the step whose timestep is T. */
static void check_sampler_ddim_step(golden_file *g, const ddim_config *c, const sd_tensor *t, const char *pt, int tt)
{
    int prediction = !strcmp(pt, "epsilon") ? SD_PREDICT_EPSILON : !strcmp(pt, "v_prediction") ? SD_PREDICT_V : -1;
    const char *st = sd_safetensors_meta(&g->st, "step_timesteps");
    int steps = 0, k = -1;
    sd_sampler smp;
    sd_error err;
    char name[160];
    int64_t n;
    if (st) {   /* metadata step_timesteps = [751, 501, 251, 1]: one run of that many steps */
        json j = { st, st, st + strlen(st), NULL };
        uint64_t v;
        if (json_eat(&j, '[') && !json_eat(&j, ']'))
            do { if (json_uint(&j, &v)) break; steps++; } while (json_eat(&j, ','));
    }
    if (!CHECK(prediction >= 0 && steps > 0, "%s: unknown prediction or no step_timesteps metadata", t->name)) return;
    if (!CHECK(!sd_sampler_init(&smp, &c->s, SD_SAMPLER_DDIM, steps, c->spacing, c->steps_offset, 0, prediction, 0, &err),
               "%s: %s", t->name, err.message)) return;
    for (int i = 0; i < steps; i++) if (smp.timesteps[i] == tt) k = i;
    const float *x = golden_f32(g, "step.sample", &n), *e = golden_f32(g, "step.model_output", NULL), *want_x0;
    snprintf(name, sizeof name, "step.%s.t%d.pred_original_sample", pt, tt);
    want_x0 = golden_f32(g, name, NULL);
    if (!CHECK(k >= 0, "%s: timestep %d is not among our %d", t->name, tt, steps) || !x || !e || !want_x0) return;
    float *out = (float *)malloc((size_t)n * 2 * sizeof(float));
    if (CHECK(!sd_sampler_step(&smp, k, x, e, (size_t)n, NULL, NULL, NULL, out, out + n, &err), "%s: %s", t->name, err.message)) {
        check_close(t->name, out, (const float *)t->data, n, 2e-6);
        check_close(name, out + n, want_x0, n, 2e-6);
    }
    free(out);
}

/* LCMScheduler's file (README §11.4): the boundary scalings at given timesteps, each n-step
   schedule with its scalings, and the n-step sequences of both prediction types from the given
   model outputs and per-step noise: each step from diffusers' sample, then the chain from ours. */
static void check_lcm_scheduler(golden_file *g, const ddim_config *c)
{
    char name[160], what[1300];
    sd_sampler smp;
    sd_error err;
    int64_t n, m;
    const float *want;
    if ((want = golden_f32(g, "alphas_cumprod", &n)) && CHECK(n == c->s.num_train_timesteps, "%s: alphas_cumprod size", g->path))
        check_close("lcm alphas_cumprod", c->s.alphas_cumprod, want, n, 2e-6);
    const sd_tensor *bt = golden_i64(g, "boundary.timesteps");
    const float *bskip = golden_f32(g, "boundary.c_skip", NULL), *bout = golden_f32(g, "boundary.c_out", NULL);
    if (bt && bskip && bout && sd_tensor_numel(bt) <= 64) {
        float skip[64], out[64];
        for (int64_t i = 0; i < sd_tensor_numel(bt); i++) sd_lcm_scalings((float)golden_i64_at(bt, i), &skip[i], &out[i]);
        check_close("lcm boundary.c_skip", skip, bskip, sd_tensor_numel(bt), 2e-6);
        check_close("lcm boundary.c_out", out, bout, sd_tensor_numel(bt), 2e-6);
        CHECK(skip[0] == 1 && out[0] == 0 && golden_i64_at(bt, 0) == 0, "lcm: at t = 0 c_skip %g, c_out %g: the step must return x", skip[0], out[0]);
    }
    for (int i = 0; i < g->st.count; i++) {
        const sd_tensor *t = &g->st.tensors[i];
        char pt[32];
        int steps, len = 0;
        if (sscanf(t->name, "timesteps.%d%n", &steps, &len) == 1 && len && !t->name[len]) {
            float skip[64], out[64];
            snprintf(what, sizeof what, "%s %s", g->path, t->name);
            if (!CHECK(steps <= 64 && !sd_sampler_init(&smp, &c->s, SD_SAMPLER_LCM, steps, c->spacing, c->steps_offset, 0, c->prediction, 0, &err),
                       "%s: %s", what, err.message)) continue;
            check_sampler_timesteps(what, &smp, t);
            for (int k = 0; k < steps; k++) sd_lcm_scalings(smp.timesteps[k], &skip[k], &out[k]);
            snprintf(name, sizeof name, "c_skip.%d", steps);
            if ((want = golden_f32(g, name, &m)) && CHECK(m == steps, "%s: %s size", g->path, name)) check_close(name, skip, want, m, 2e-6);
            snprintf(name, sizeof name, "c_out.%d", steps);
            if ((want = golden_f32(g, name, &m)) && CHECK(m == steps, "%s: %s size", g->path, name)) check_close(name, out, want, m, 2e-6);
            continue;
        }
        if (sscanf(t->name, "seq%d.%31[a-z_].step0.prev_sample%n", &steps, pt, &len) != 2 || !len || t->name[len]) continue;
        int prediction = !strcmp(pt, "epsilon") ? SD_PREDICT_EPSILON : !strcmp(pt, "v_prediction") ? SD_PREDICT_V : -1;
        const float *initial = golden_f32(g, "seq.initial_sample", &n);
        if (!CHECK(prediction >= 0 && steps >= 1 && steps <= 50, "%s: %s: unknown prediction or steps", g->path, t->name) || !initial) continue;
        float *buf = (float *)malloc((size_t)n * 3 * sizeof(float)), *x = buf, *out = buf + n, *denoised = buf + 2 * n;
        /* pass 0: single steps from diffusers' samples (2e-6); pass 1: the chain from ours (1e-5) */
        for (int pass = 0; pass < 2; pass++) {
            double tol = pass ? 1e-5 : 2e-6;
            if (!CHECK(!sd_sampler_init(&smp, &c->s, SD_SAMPLER_LCM, steps, c->spacing, c->steps_offset, 0, prediction, 0, &err), "%s: %s", g->path, err.message)) break;
            memcpy(x, initial, (size_t)n * sizeof(float));
            for (int k = 0; k < steps; k++) {
                const float *model, *noise = NULL, *want_prev, *want_denoised;
                snprintf(name, sizeof name, "seq.step%d.model_output", k);
                if (!(model = golden_f32(g, name, &m)) || !CHECK(m == n, "%s %s: size", g->path, name)) break;
                snprintf(name, sizeof name, "seq.step%d.noise", k);
                if (k + 1 < steps && !(noise = golden_f32(g, name, NULL))) break;
                snprintf(name, sizeof name, "seq%d.%s.step%d.prev_sample", steps, pt, k);
                want_prev = golden_f32(g, name, NULL);
                snprintf(name, sizeof name, "seq%d.%s.step%d.denoised", steps, pt, k);
                want_denoised = golden_f32(g, name, NULL);
                if (!want_prev || !want_denoised) break;
                if (!CHECK(!sd_sampler_step(&smp, k, x, model, (size_t)n, noise, NULL, NULL, out, denoised, &err), "%s: %s", g->path, err.message)) break;
                snprintf(what, sizeof what, "%s seq%d %s step%d prev_sample (%s, t=%g)", g->path, steps, pt, k, pass ? "chained" : "single", smp.timesteps[k]);
                check_close(what, out, want_prev, n, tol);
                snprintf(what, sizeof what, "%s seq%d %s step%d denoised (%s)", g->path, steps, pt, k, pass ? "chained" : "single");
                check_close(what, denoised, want_denoised, n, tol);
                CHECK(k + 1 < steps || !memcmp(out, denoised, (size_t)n * sizeof(float)), "%s seq%d: the last step is not its denoised latents", g->path, steps);
                memcpy(x, pass ? out : want_prev, (size_t)n * sizeof(float));
            }
        }
        free(buf);
    }
}

static void check_sampler_file(const char *rel)
{
    golden_file *g = golden_open(rel);
    if (!g) return;
    const char *cls = sd_safetensors_meta(&g->st, "class"), *cfg = sd_safetensors_meta(&g->st, "config"), *why;
    int kind = sampler_kind_from_class(cls);
    ddim_config c;
    if (kind < 0) { note_absent(g->path, "%s: scheduler class %s not implemented, skipped", g->path, cls); goto done; }
    if (!CHECK(cfg, "%s: no config in metadata", g->path) || !ddim_config_from_json(&c, cfg, g->path)) goto done;
    if ((why = sampler_config_unsupported(kind, cfg))) { note_absent(g->path, "%s: config %s not implemented, skipped", g->path, why); goto done; }
    if (kind == SD_SAMPLER_LCM) { check_lcm_scheduler(g, &c); goto done; }
    int karras = config_flag(cfg, "use_karras_sigmas", 0);
    json j;
    if (kind != SD_SAMPLER_DDIM && !config_find(&j, cfg, "timestep_spacing")) c.spacing = SD_SPACING_LINSPACE;   /* their default */
    for (int i = 0; i < g->st.count; i++) {
        const sd_tensor *t = &g->st.tensors[i];
        char spacing[32], pt[32], what[1200];
        int steps, tt, len, s;
        sd_sampler smp;
        sd_error err;
        len = 0;   /* %n is only written when the whole pattern matched */
        if (sscanf(t->name, "step.%31[a-z_].t%d.prev_sample%n", pt, &tt, &len) == 2 && len && !t->name[len] && kind == SD_SAMPLER_DDIM) {
            check_sampler_ddim_step(g, &c, t, pt, tt);
            continue;
        }
        if (sscanf(t->name, "seq.%31[a-z_].step0.sample%n", pt, &len) == 1 && len && !t->name[len]) {
            check_sampler_sequence(g, kind, &c, karras, pt);
            continue;
        }
        int table = sscanf(t->name, "timesteps.%31[a-z].%d%n", spacing, &steps, &len) == 2 ? 0
                  : sscanf(t->name, "sigmas.%31[a-z].%d%n", spacing, &steps, &len) == 2 ? 1
                  : sscanf(t->name, "init_noise_sigma.%31[a-z].%d%n", spacing, &steps, &len) == 2 ? 2 : -1;
        if (table < 0 || t->name[len]) continue;
        snprintf(what, sizeof what, "%s %s", g->path, t->name);
        if (!CHECK((s = spacing_from_name(spacing)) >= 0, "%s: unknown spacing", what) ||
            !CHECK(!sd_sampler_init(&smp, &c.s, kind, steps, s, c.steps_offset, karras, c.prediction, 0, &err), "%s: %s", what, err.message))
            continue;
        if (table == 0) check_sampler_timesteps(what, &smp, t);
        else if (CHECK(t->dtype == SD_F32 && sd_tensor_numel(t) == (table == 1 ? steps + 1 : 1), "%s: shape", what))
            check_close(what, table == 1 ? smp.sigmas : &smp.init_noise_sigma, (const float *)t->data, sd_tensor_numel(t), 2e-6);
    }
done:
    golden_close(g);
}

static void test_sampler_goldens(void)
{
    char dirpath[512], rel[300];
    snprintf(dirpath, sizeof dirpath, "%s/scheduler", golden_dir);
    DIR *dir = opendir(dirpath);
    struct dirent *f;
    if (!dir) { note_absent("scheduler", "no %s/scheduler, scheduler goldens skipped", golden_dir); return; }
    while ((f = readdir(dir))) {
        size_t len = strlen(f->d_name);
        if (len < 12 || strcmp(f->d_name + len - 12, ".safetensors")) continue;
        snprintf(rel, sizeof rel, "scheduler/%s", f->d_name);
        check_sampler_file(rel);
        n_cases++;
    }
    closedir(dir);
}

/* The sampler's part of a pipeline golden that uses Euler, Euler a, DPM++ or LCM (DDIM ones are
   check_ddim_pipeline's): timesteps, sigmas, init_noise_sigma, the initial latents, and per step
   the UNet's scaled input, the guidance (when the golden ran two halves) and the step from
   diffusers' inputs — no model needed. */
static void check_sampler_pipeline(const char *rel)
{
    golden_file *g = golden_open(rel);
    if (!g) return;
    const char *cls = sd_safetensors_meta(&g->st, "scheduler_class"), *cfg = sd_safetensors_meta(&g->st, "scheduler");
    const char *steps_s = sd_safetensors_meta(&g->st, "num_inference_steps"), *guidance_s = sd_safetensors_meta(&g->st, "guidance_scale");
    int kind = cls ? sampler_kind_from_class(cls) : SD_SAMPLER_DDIM;
    char what[1300], name[64];
    ddim_config c;
    sd_sampler smp;
    sd_error err;
    int64_t n, m;
    json j;
    if (kind <= SD_SAMPLER_DDIM || sd_safetensors_meta(&g->st, "strength")) goto done;   /* DDIM, unknown, or img2img */
    if (!CHECK(cfg && steps_s && guidance_s, "%s: metadata lacks scheduler, num_inference_steps or guidance_scale", g->path) ||
        !ddim_config_from_json(&c, cfg, g->path)) goto done;
    if (sampler_config_unsupported(kind, cfg)) { note_absent(g->path, "%s: scheduler config not implemented, skipped", g->path); goto done; }
    if (!config_find(&j, cfg, "timestep_spacing")) c.spacing = SD_SPACING_LINSPACE;
    int steps = atoi(steps_s);
    float guidance = strtof(guidance_s, NULL);
    if (!CHECK(!sd_sampler_init(&smp, &c.s, kind, steps, c.spacing, c.steps_offset, config_flag(cfg, "use_karras_sigmas", 0), c.prediction, 0, &err),
               "%s: %s", g->path, err.message)) goto done;
    snprintf(what, sizeof what, "%s timesteps", rel);
    check_sampler_timesteps(what, &smp, sd_safetensors_find(&g->st, "timesteps"));
    const float *want = kind != SD_SAMPLER_LCM ? golden_f32(g, "sigmas", &m) : NULL;   /* LCM's golden has none */
    snprintf(what, sizeof what, "%s sigmas", rel);
    if (want && CHECK(m == steps + 1, "%s: %lld values", what, (long long)m)) check_close(what, smp.sigmas, want, m, 2e-6);
    snprintf(what, sizeof what, "%s init_noise_sigma", rel);
    if (kind != SD_SAMPLER_LCM && (want = golden_f32(g, "init_noise_sigma", NULL))) check_close(what, &smp.init_noise_sigma, want, 1, 2e-6);
    if (sd_safetensors_find(&g->st, "w_embedding")) {   /* an LCM model's guidance input (~1e-3 absolute, README §11.5) */
        const float *w = golden_f32(g, "w", NULL), *we = golden_f32(g, "w_embedding", &m);
        float emb[4096];
        double worst = 0;
        if (w && we && CHECK(m <= 4096, "%s: w_embedding size", g->path)) {
            sd_guidance_embedding(guidance - 1.0f, (int)m, emb);
            for (int64_t i = 0; i < m; i++) worst = fmax(worst, fabs((double)emb[i] - we[i]));
            CHECK(w[0] == guidance - 1.0f && worst <= 1e-3, "%s: w %g (guidance %g), w_embedding %.3g from ours", rel, w[0], guidance, worst);
        }
    }
    const float *initial = golden_f32(g, "initial_latents", &n), *x = golden_f32(g, "latents_in", &m);
    if (!initial || !x || !CHECK(m == n, "%s: latents_in size", g->path)) goto done;
    float *buf = (float *)malloc((size_t)n * 4 * sizeof(float)), *out = buf, *x0 = buf + n, *history = buf + 2 * n, *eps = buf + 3 * n;
    for (int64_t i = 0; i < n; i++) out[i] = initial[i] * smp.init_noise_sigma;
    snprintf(what, sizeof what, "%s latents_in (initial_latents · init_noise_sigma)", rel);
    check_close(what, out, x, n, 2e-6);
    for (int k = 0; k < steps; k++) {
        const float *unet, *noise_pred, *scaled = NULL, *latents_out, *x0_want = NULL, *noise = NULL;
        snprintf(name, sizeof name, "step%d.unet_out", k);
        if (!(unet = golden_f32(g, name, &m)) || !CHECK(m == 2 * n || m == n, "%s: %s is neither one prediction nor the two CFG halves", g->path, name)) break;
        snprintf(name, sizeof name, "step%d.noise_pred", k);
        noise_pred = m == n ? unet : golden_f32(g, name, NULL);   /* no CFG (guidance <= 1, LCM models): the UNet's output */
        snprintf(name, sizeof name, "step%d.scaled_input", k);
        if (kind != SD_SAMPLER_LCM && !(scaled = golden_f32(g, name, NULL))) break;   /* LCM's input scale is 1 */
        snprintf(name, sizeof name, "step%d.latents_out", k);
        latents_out = golden_f32(g, name, NULL);
        snprintf(name, sizeof name, "step%d.noise", k);
        if ((kind == SD_SAMPLER_EULER_A || (kind == SD_SAMPLER_LCM && k + 1 < steps)) && !(noise = golden_f32(g, name, NULL))) break;
        snprintf(name, sizeof name, kind == SD_SAMPLER_LCM ? "step%d.denoised" : "step%d.pred_original_sample", k);
        if (sd_safetensors_find(&g->st, name)) x0_want = golden_f32(g, name, NULL);
        if (!noise_pred || !latents_out) break;
        float scale = sd_sampler_input_scale(&smp, k);
        for (int64_t i = 0; i < n && scaled; i++) out[i] = x[i] * scale;
        snprintf(what, sizeof what, "%s step%d scaled_input", rel, k);
        if (scaled) check_close(what, out, scaled, n, 2e-6);
        if (m == 2 * n) {
            sd_guidance(unet, unet + n, guidance, (size_t)n, eps);
            snprintf(what, sizeof what, "%s step%d noise_pred (guidance %g)", rel, k, guidance);
            check_close(what, eps, noise_pred, n, 1e-5);
        }
        if (!CHECK(!sd_sampler_step(&smp, k, x, noise_pred, (size_t)n, noise, NULL, history, out, x0, &err), "%s: %s", g->path, err.message)) break;
        snprintf(what, sizeof what, "%s step%d latents_out (t=%g)", rel, k, smp.timesteps[k]);
        check_close(what, out, latents_out, n, 2e-6);
        snprintf(what, sizeof what, "%s step%d %s", rel, k, kind == SD_SAMPLER_LCM ? "denoised" : "pred_original_sample");
        if (x0_want) check_close(what, x0, x0_want, n, 2e-6);
        x = latents_out;   /* the next step starts from diffusers' latents */
    }
    free(buf);
done:
    golden_close(g);
}

static void test_sampler_pipelines(void) { each_pipeline_golden(check_sampler_pipeline); }

/* Argument errors: each a clear SD_ERR_ARG (or _UNSUPPORTED), never a crash. */
static void test_sampler_errors(const sd_schedule *s)
{
    sd_sampler smp, euler, euler_a, dpm;
    sd_schedule blank;
    sd_error err;
    float x[64], e[64], out[64], hist[64];
    sd_rng r;
    memset(&blank, 0, sizeof blank);
    for (int i = 0; i < 64; i++) { x[i] = (float)i / 16 - 2; e[i] = (float)(i % 5) / 2 - 1; }
    sd_rng_seed(&r, 1);
#define BAD(call, code, what) CHECK((call) == (code) && err.message[0], "sampler: %s accepted", what)
    BAD(sd_sampler_init(NULL, s, SD_SAMPLER_EULER, 10, SD_SPACING_LINSPACE, 1, 0, SD_PREDICT_EPSILON, 0, &err), SD_ERR_ARG, "NULL sampler");
    BAD(sd_sampler_init(&smp, NULL, SD_SAMPLER_EULER, 10, SD_SPACING_LINSPACE, 1, 0, SD_PREDICT_EPSILON, 0, &err), SD_ERR_ARG, "NULL schedule");
    BAD(sd_sampler_init(&smp, &blank, SD_SAMPLER_EULER, 10, SD_SPACING_LINSPACE, 1, 0, SD_PREDICT_EPSILON, 0, &err), SD_ERR_ARG, "a blank schedule");
    BAD(sd_sampler_init(&smp, s, SD_SAMPLER_LCM + 1, 10, SD_SPACING_LINSPACE, 1, 0, SD_PREDICT_EPSILON, 0, &err), SD_ERR_ARG, "an unknown kind");
    BAD(sd_sampler_init(&smp, s, SD_SAMPLER_LCM, 51, SD_SPACING_LEADING, 1, 0, SD_PREDICT_EPSILON, 0, &err), SD_ERR_ARG, "51 LCM steps (of 50 distilled)");
    BAD(sd_sampler_init(&smp, s, SD_SAMPLER_LCM, 4, SD_SPACING_LEADING, 1, 1, SD_PREDICT_EPSILON, 0, &err), SD_ERR_UNSUPPORTED, "Karras with LCM");
    BAD(sd_sampler_init(&smp, s, -1, 10, SD_SPACING_LINSPACE, 1, 0, SD_PREDICT_EPSILON, 0, &err), SD_ERR_ARG, "kind -1");
    BAD(sd_sampler_init(&smp, s, SD_SAMPLER_EULER, 0, SD_SPACING_LINSPACE, 1, 0, SD_PREDICT_EPSILON, 0, &err), SD_ERR_ARG, "0 steps");
    BAD(sd_sampler_init(&smp, s, SD_SAMPLER_EULER, 1001, SD_SPACING_LINSPACE, 1, 0, SD_PREDICT_EPSILON, 0, &err), SD_ERR_ARG, "1001 steps");
    BAD(sd_sampler_init(&smp, s, SD_SAMPLER_EULER, 10, 3, 1, 0, SD_PREDICT_EPSILON, 0, &err), SD_ERR_ARG, "an unknown spacing");
    BAD(sd_sampler_init(&smp, s, SD_SAMPLER_EULER, 10, SD_SPACING_LINSPACE, 1, 0, 2, 0, &err), SD_ERR_ARG, "an unknown prediction");
    BAD(sd_sampler_init(&smp, s, SD_SAMPLER_EULER_A, 10, SD_SPACING_LINSPACE, 1, 1, SD_PREDICT_EPSILON, 0, &err), SD_ERR_UNSUPPORTED, "Karras with Euler a");
    BAD(sd_sampler_init(&smp, s, SD_SAMPLER_EULER, 10, SD_SPACING_LINSPACE, 1, 0, SD_PREDICT_EPSILON, 0.5f, &err), SD_ERR_ARG, "eta with Euler");
    BAD(sd_sampler_init(&smp, s, SD_SAMPLER_DDIM, 10, SD_SPACING_LEADING, 1, 0, SD_PREDICT_EPSILON, -1, &err), SD_ERR_ARG, "eta -1");
    BAD(sd_sampler_init(&smp, s, SD_SAMPLER_DDIM, 10, SD_SPACING_LEADING, 1, 0, SD_PREDICT_EPSILON, NAN, &err), SD_ERR_ARG, "eta NaN");
    BAD(sd_sampler_init(&smp, s, SD_SAMPLER_EULER, 1000, SD_SPACING_LEADING, 1, 0, SD_PREDICT_EPSILON, 0, &err), SD_ERR_ARG, "timestep 1000 (1000 leading steps + offset 1)");
    BAD(sd_sampler_init(&smp, s, SD_SAMPLER_DPMPP_2M, 1000, SD_SPACING_LINSPACE, 1, 0, SD_PREDICT_EPSILON, 0, &err), SD_ERR_ARG, "1000 DPM++ linspace steps (1001 points)");
    CHECK(!sd_sampler_init(&smp, s, SD_SAMPLER_DPMPP_2M, 1000, SD_SPACING_TRAILING, 1, 0, SD_PREDICT_EPSILON, 0, &err) &&
          smp.timesteps[0] == 999 && smp.timesteps[999] == 0, "sampler: 1000 trailing DPM++ steps");

    if (!CHECK(!sd_sampler_init(&euler, s, SD_SAMPLER_EULER, 4, SD_SPACING_LINSPACE, 1, 0, SD_PREDICT_EPSILON, 0, &err) &&
               !sd_sampler_init(&euler_a, s, SD_SAMPLER_EULER_A, 4, SD_SPACING_LINSPACE, 1, 0, SD_PREDICT_EPSILON, 0, &err) &&
               !sd_sampler_init(&dpm, s, SD_SAMPLER_DPMPP_2M, 4, SD_SPACING_LINSPACE, 1, 1, SD_PREDICT_V, 0, &err),
               "sampler: %s", err.message)) return;
    BAD(sd_sampler_step(&euler, -1, x, e, 64, NULL, NULL, NULL, out, NULL, &err), SD_ERR_ARG, "step -1");
    BAD(sd_sampler_step(&euler, 4, x, e, 64, NULL, NULL, NULL, out, NULL, &err), SD_ERR_ARG, "step 4 of 4");
    BAD(sd_sampler_step(&euler, 0, NULL, e, 64, NULL, NULL, NULL, out, NULL, &err), SD_ERR_ARG, "NULL latents");
    BAD(sd_sampler_step(&euler, 0, x, NULL, 64, NULL, NULL, NULL, out, NULL, &err), SD_ERR_ARG, "NULL model output");
    BAD(sd_sampler_step(&euler_a, 0, x, e, 64, NULL, NULL, NULL, out, NULL, &err), SD_ERR_ARG, "Euler a without noise or generator");
    BAD(sd_sampler_step(&euler_a, 0, x, e, 64, NULL, &r, NULL, x, NULL, &err), SD_ERR_ARG, "Euler a noise drawn over its input");
    BAD(sd_sampler_step(&euler_a, 3, x, e, 64, NULL, NULL, NULL, out, NULL, &err), SD_ERR_ARG, "Euler a's last step without noise");
    BAD(sd_sampler_step(&dpm, 0, x, e, 64, NULL, NULL, NULL, out, NULL, &err), SD_ERR_ARG, "DPM++ without history");
    BAD(sd_sampler_step(&dpm, 0, x, e, 64, NULL, NULL, out, out, NULL, &err), SD_ERR_ARG, "DPM++ history = out");
    BAD(sd_sampler_step(&dpm, 0, x, e, 32, NULL, NULL, x + 16, out, NULL, &err), SD_ERR_ARG, "DPM++ history overlapping the latents");
    BAD(sd_sampler_add_noise(&euler, 4, x, e, 64, out, &err), SD_ERR_ARG, "add noise at step 4 of 4");
    BAD(sd_sampler_add_noise(&euler, 0, x, NULL, 64, out, &err), SD_ERR_ARG, "add noise without noise");
#undef BAD
    CHECK(sd_sampler_step(&dpm, 0, x, e, 64, NULL, NULL, hist, x, NULL, &err) == SD_OK, "sampler: DPM++ in place: %s", err.message);
    CHECK(sd_sampler_input_scale(NULL, 0) == 1 && sd_sampler_input_scale(&euler, -1) == 1 && sd_sampler_input_scale(&euler, 4) == 1 &&
          sd_sampler_input_scale(&dpm, 0) == 1 && sd_sampler_input_scale(&euler, 0) < 0.1f,
          "sampler: input scale outside the steps, for DPM++ or at sigma 14.6 is off");
}

/* Noise drawn from the generator = the same torch.randn draws given: Euler a draws at every step,
   the last too; LCM at every step but the last (its last needs neither noise nor generator). */
static void test_sampler_step_noise(const sd_schedule *s)
{
    enum { N = 40 };
    static const int kinds[2] = {SD_SAMPLER_EULER_A, SD_SAMPLER_LCM};
    for (int q = 0; q < 2; q++) {
        sd_sampler a, b;
        sd_rng r1, r2;
        sd_error err;
        float x[N], e[N], noise[N], out1[N], out2[N], after1, after2;
        int kind = kinds[q], lcm = kind == SD_SAMPLER_LCM;
        const char *name = lcm ? "lcm" : "euler a";
        for (int i = 0; i < N; i++) { x[i] = (float)i / 8 - 2.5f; e[i] = (float)(i % 7) / 3 - 1; }
        if (!CHECK(!sd_sampler_init(&a, s, kind, 3, SD_SPACING_TRAILING, 1, 0, SD_PREDICT_EPSILON, 0, &err) &&
                   !sd_sampler_init(&b, s, kind, 3, SD_SPACING_TRAILING, 1, 0, SD_PREDICT_EPSILON, 0, &err), "%s: %s", name, err.message)) continue;
        sd_rng_seed(&r1, 77);
        sd_rng_seed(&r2, 77);
        int same = 1;
        for (int k = 0; k < 3; k++) {
            int draws = !lcm || k < 2;
            if (draws) sd_randn(&r2, noise, N);
            same &= !sd_sampler_step(&a, k, x, e, N, NULL, draws ? &r1 : NULL, NULL, out1, NULL, &err) &&
                    !sd_sampler_step(&b, k, x, e, N, draws ? noise : NULL, NULL, NULL, out2, NULL, &err) && !memcmp(out1, out2, sizeof out1);
        }
        sd_randn(&r1, &after1, 1);
        sd_randn(&r2, &after2, 1);
        CHECK(same && after1 == after2, "%s: generator noise differs from the same draws given, or the steps drew a different count", name);
        /* fresh noise moves the result (before the last step) */
        for (int i = 0; i < N; i++) noise[i] = 0;
        CHECK(!sd_sampler_step(&b, 0, x, e, N, noise, NULL, NULL, out2, NULL, &err) && memcmp(out1, out2, sizeof out1),
              "%s: the noise has no effect", name);
    }
}

/* img2img: latents noised to step k by sd_sampler_add_noise, denoised by a model that predicts the
   very noise added (epsilon) or the matching v, give back the clean latents as x0 — for every
   sampler and both prediction types, from the middle of the run. */
static void test_sampler_img2img(const sd_schedule *s)
{
    enum { N = 48 };
    static const char *names[] = { "DDIM", "Euler", "Euler a", "DPM++ 2M", "LCM" };
    float x0[N], noise[N], xt[N], model[N], out[N], got[N], hist[N], zero[N];
    sd_sampler smp;
    sd_error err;
    for (int i = 0; i < N; i++) { x0[i] = (float)((i * 37) % 17) / 8 - 1; noise[i] = (float)((i * 11) % 13) / 4 - 1.5f; zero[i] = 0; }
    for (int kind = SD_SAMPLER_DDIM; kind <= SD_SAMPLER_LCM; kind++)
        for (int p = SD_PREDICT_EPSILON; p <= SD_PREDICT_V; p++) {
            int spacing = kind == SD_SAMPLER_DDIM ? SD_SPACING_LEADING : SD_SPACING_LINSPACE, start = -1;
            if (!CHECK(!sd_img2img_start(10, 0.6, &start, &err) &&
                       !sd_sampler_init(&smp, s, kind, 10, spacing, 1, 0, p, 0, &err) &&
                       !sd_sampler_add_noise(&smp, start, x0, noise, N, xt, &err), "img2img %s: %s", names[kind], err.message)) continue;
            /* v = alpha·noise - sigma·alpha·x0 with alpha = sqrt(a_t) = 1/sqrt(sigma² + 1) */
            float sigma = kind == SD_SAMPLER_DDIM || kind == SD_SAMPLER_LCM ? s->sigmas[(int)smp.timesteps[start]] : smp.sigmas[start];
            float alpha = 1.0f / sqrtf(sigma * sigma + 1.0f);
            for (int i = 0; i < N; i++) model[i] = p == SD_PREDICT_EPSILON ? noise[i] : alpha * noise[i] - sigma * alpha * x0[i];
            char what[96];
            snprintf(what, sizeof what, "img2img %s %s: x0 back from the noised latents", names[kind], p ? "v" : "epsilon");
            if (CHECK(!sd_sampler_step(&smp, start, xt, model, N, zero, NULL, hist, out, got, &err), "%s: %s", what, err.message))
                check_close(what, got, x0, N, 1e-5);
        }
}

/* DPM++ 2M's second order uses the previous step's x0: step 1 after step 0 differs from step 1 alone. */
static void test_sampler_dpm_state(const sd_schedule *s)
{
    enum { N = 32 };
    sd_sampler smp;
    sd_error err;
    float x[N], e[N], hist[N], a[N], b[N];
    for (int i = 0; i < N; i++) { x[i] = (float)i / 4 - 4; e[i] = (float)((i * 5) % 9) / 4 - 1; }
    int ok = !sd_sampler_init(&smp, s, SD_SAMPLER_DPMPP_2M, 5, SD_SPACING_LINSPACE, 1, 0, SD_PREDICT_EPSILON, 0, &err) &&
             !sd_sampler_step(&smp, 1, x, e, N, NULL, NULL, hist, a, NULL, &err) &&   /* no history: first order */
             !sd_sampler_init(&smp, s, SD_SAMPLER_DPMPP_2M, 5, SD_SPACING_LINSPACE, 1, 0, SD_PREDICT_EPSILON, 0, &err) &&
             !sd_sampler_step(&smp, 0, x, x, N, NULL, NULL, hist, b, NULL, &err) &&
             !sd_sampler_step(&smp, 1, x, e, N, NULL, NULL, hist, b, NULL, &err);
    CHECK(ok && memcmp(a, b, sizeof a), "dpm++ 2m: step 1 ignores step 0's x0 (%s)", ok ? "same result" : err.message);
}

static void test_samplers(void)
{
    sd_schedule s;
    sd_error err;
    if (!CHECK(!sd_schedule_init(&s, 1000, 0.00085, 0.012, SD_BETA_SCALED_LINEAR, &err), "schedule: %s", err.message)) return;
    test_sampler_errors(&s);
    test_sampler_step_noise(&s);
    test_sampler_img2img(&s);
    test_sampler_dpm_state(&s);
    test_sampler_goldens();
    test_sampler_pipelines();
}

/* ---- text encoder ------------------------------------------------------------------------ */

/* A growing string for building safetensors headers in memory. */
typedef struct te_text { char *p; size_t n, cap; } te_text;

static void te_put(te_text *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (t->n + (size_t)k + 1 > t->cap) {
        t->cap = 2 * (t->n + (size_t)k + 1);
        t->p = (char *)realloc(t->p, t->cap);
        if (!t->p) { fprintf(stderr, "out of memory\n"); exit(2); }
    }
    va_start(ap, fmt);
    vsnprintf(t->p + t->n, (size_t)k + 1, fmt, ap);
    va_end(ap);
    t->n += (size_t)k;
}

static void te_put_json_string(te_text *t, const char *s)
{
    te_put(t, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') te_put(t, "\\%c", c);
        else if (c < 0x20) te_put(t, "\\u%04x", c);
        else te_put(t, "%c", c);
    }
    te_put(t, "\"");
}

/* A safetensors file rebuilt in memory from an opened one, keeping its metadata: 2-byte float
   tensors widened to F32 when to_f32, the tensor named `drop` left out, the 2-D tensor named
   `transpose` declared with its two dimensions swapped (same bytes, wrong shape). Tensors are laid
   out by element size, largest first, so every one stays aligned. malloc'd; *size gets its length. */
static unsigned char *te_rebuild(const sd_safetensors *st, int to_f32, const char *drop,
                                 const char *transpose, size_t *size)
{
    te_text h = {NULL, 0, 0};
    size_t offset = 0, data_start;
    te_put(&h, "{\"__metadata__\":{");
    for (int i = 0; i < st->meta_count; i++) {
        te_put(&h, i ? "," : "");
        te_put_json_string(&h, st->meta_keys[i]);
        te_put(&h, ":");
        te_put_json_string(&h, st->meta_values[i]);
    }
    te_put(&h, "}");
    for (size_t esize = 8; esize >= 1; esize /= 2)
        for (int i = 0; i < st->count; i++) {
            const sd_tensor *t = &st->tensors[i];
            int widen = to_f32 && (t->dtype == SD_F16 || t->dtype == SD_BF16);
            int swap = transpose && !strcmp(t->name, transpose) && t->ndim == 2;
            size_t n = widen ? t->nbytes * 2 : t->nbytes;
            if ((widen ? 4 : sd_dtype_size(t->dtype)) != esize || (drop && !strcmp(t->name, drop))) continue;
            te_put(&h, ",");
            te_put_json_string(&h, t->name);
            te_put(&h, ":{\"dtype\":\"%s\",\"shape\":[", widen ? "F32" : sd_dtype_name(t->dtype));
            for (int d = 0; d < t->ndim; d++)
                te_put(&h, "%s%lld", d ? "," : "", (long long)t->shape[swap ? t->ndim - 1 - d : d]);
            te_put(&h, "],\"data_offsets\":[%zu,%zu]}", offset, offset + n);
            offset += n;
        }
    te_put(&h, "}");
    while (h.n % 8) te_put(&h, " ");
    data_start = 8 + h.n;
    unsigned char *out = (unsigned char *)malloc(data_start + offset + 1);
    if (!out) { fprintf(stderr, "out of memory\n"); exit(2); }
    for (int i = 0; i < 8; i++) out[i] = (unsigned char)((uint64_t)h.n >> (8 * i));
    memcpy(out + 8, h.p, h.n);
    offset = data_start;
    for (size_t esize = 8; esize >= 1; esize /= 2)
        for (int i = 0; i < st->count; i++) {
            const sd_tensor *t = &st->tensors[i];
            int widen = to_f32 && (t->dtype == SD_F16 || t->dtype == SD_BF16);
            if ((widen ? 4 : sd_dtype_size(t->dtype)) != esize || (drop && !strcmp(t->name, drop))) continue;
            if (!widen) { memcpy(out + offset, t->data, t->nbytes); offset += t->nbytes; continue; }
            for (size_t k = 0; k < t->nbytes / 2; k++, offset += 4) {
                float f = tensor_get(t, k);
                memcpy(out + offset, &f, 4);
            }
        }
    free(h.p);
    *size = offset;
    return out;
}

/* A file with nothing but the given __metadata__ JSON object (for metadata error cases). */
static unsigned char *te_meta_file(const char *meta_json, size_t *size)
{
    te_text h = {NULL, 0, 0};
    te_put(&h, "{\"__metadata__\":%s}", meta_json);
    unsigned char *out = (unsigned char *)malloc(8 + h.n);
    if (!out) { fprintf(stderr, "out of memory\n"); exit(2); }
    for (int i = 0; i < 8; i++) out[i] = (unsigned char)((uint64_t)h.n >> (8 * i));
    memcpy(out + 8, h.p, h.n);
    *size = 8 + h.n;
    free(h.p);
    return out;
}

/* Loads the text encoder of `bytes` (metadata from meta, or the file itself) into te; the
   tables live in *arena, which the caller frees. Returns the load status, err filled. */
static int te_load_bytes(sd_text_encoder *te, sd_safetensors *st, const unsigned char *bytes, size_t size,
                         const sd_safetensors *meta, sd_arena *arena, sd_error *err)
{
    int rc = sd_safetensors_open(st, bytes, size, arena, err);
    if (rc) return rc;
    return sd_text_encoder_load(te, st, 1, meta, 0, arena, err);
}

/* Every output of GOLDEN/NAME/text_encoder.safetensors from the encoder te. */
static void te_check_goldens(const sd_text_encoder *te, golden_file *g, const char *label)
{
    const sd_tensor *idt = sd_safetensors_find(&g->st, "input_ids");
    const char *context = sd_safetensors_meta(&g->st, "context_used_by_sd");
    char what[512];
    sd_error err;
    sd_pool pool;
    if (!CHECK(idt && idt->dtype == SD_I64 && idt->ndim == 2 && idt->shape[1] == SD_TEXT_TOKENS && idt->shape[0] > 0,
               "%s: input_ids is not I64 [n, %d]", g->path, SD_TEXT_TOKENS)) return;
    int n = (int)idt->shape[0], layers = te->layers, compared = 0;
    size_t count = (size_t)n * SD_TEXT_TOKENS, numel = count * (size_t)te->width;
    int32_t *ids = (int32_t *)malloc(count * sizeof *ids);
    float *out = (float *)malloc(numel * sizeof *out), *out2 = (float *)malloc(numel * sizeof *out2);
    for (size_t i = 0; i < count; i++) { int64_t v; memcpy(&v, (const char *)idt->data + 8 * i, 8); ids[i] = (int32_t)v; }
    /* the layers are the model's; the golden may hold any of their hidden states, but none past them */
    for (int i = 0; i < g->st.count; i++) {
        int k, len = 0;
        if (sscanf(g->st.tensors[i].name, "hidden_states.%d%n", &k, &len) == 1 && !g->st.tensors[i].name[len])
            CHECK(k >= 0 && k <= layers, "%s: the golden has hidden_states.%d, the encoder %d layers", label, k, layers);
    }

    size_t bytes = sd_text_encoder_arena_bytes(te, n, 0);
    sd_arena *pa = test_arena(pool_arena_bytes(1) + SD_ALIGN), *a = test_arena(bytes + SD_ALIGN);
    CHECK(pool_init(&pool, 1, pa, &err) == SD_OK, "pool_init");

    /* every hidden state, then the final LayerNorm of the last and penultimate ones */
    for (int k = 0; k <= layers + 2; k++) {
        int layer = k <= layers ? k : k == layers + 1 ? layers : layers - 1, ln = k > layers;
        char gname[64];
        int64_t gn = 0;
        if (k <= layers) snprintf(gname, sizeof gname, "hidden_states.%d", k);
        else snprintf(gname, sizeof gname, "%s", k == layers + 1 ? "last_hidden_state" : "penultimate_hidden_state");
        if (!sd_safetensors_find(&g->st, gname) || layer < 0) continue;
        const float *want = golden_f32(g, gname, &gn);
        if (!want || !CHECK((size_t)gn == numel, "%s: %s has %lld values, expected %zu", label, gname, (long long)gn, numel)) continue;
        int rc = sd_text_encoder_hidden(te, ids, n, layer, ln, out, &pool, a, &err);
        char full[600];
        snprintf(full, sizeof full, "%s %s", label, gname);
        if (CHECK(rc == SD_OK, "%s: %s", full, err.message)) check_close(full, out, want, (int64_t)numel, 1e-5);
        compared++;
    }

    CHECK(compared > 0, "%s: no hidden_states.K, last_hidden_state or penultimate_hidden_state", g->path);

    /* the UNet's context, what the golden says the pipeline uses */
    int64_t gn = 0;
    const float *want = CHECK(context != NULL, "%s: no context_used_by_sd metadata", g->path) ? golden_f32(g, context, &gn) : NULL;
    if (want && CHECK((size_t)gn == numel, "%s: context size", label)) {
        int rc = sd_text_encode(te, ids, n, 0, out, NULL, &pool, a, &err);
        snprintf(what, sizeof what, "%s context (%s)", label, context);
        if (CHECK(rc == SD_OK, "%s: %s", what, err.message)) check_close(what, out, want, (int64_t)numel, 1e-5);
        /* clip_skip 1 is the same; clip_skip 2 is one layer earlier through the final LayerNorm */
        rc = sd_text_encode(te, ids, n, 1, out2, NULL, &pool, a, &err);
        CHECK(rc == SD_OK && !memcmp(out, out2, numel * sizeof *out), "%s: clip_skip 1 differs from 0", label);
        rc = sd_text_encode(te, ids, n, 2, out, NULL, &pool, a, &err);
        CHECK(rc == SD_OK, "%s: clip_skip 2: %s", label, err.message);
        rc = sd_text_encoder_hidden(te, ids, n, te->output_layer - 1, 1, out2, &pool, a, &err);
        CHECK(rc == SD_OK && !memcmp(out, out2, numel * sizeof *out), "%s: clip_skip 2 is not layer %d + final LayerNorm", label, te->output_layer - 1);
        rc = sd_text_encode(te, ids, n, te->output_layer + 1, out, NULL, &pool, a, &err);
        CHECK(rc == SD_ERR_ARG && strstr(err.message, "clip_skip"), "%s: clip_skip %d past the first layer: rc %d (%s)", label, te->output_layer + 1, rc, rc ? err.message : "");
    }
    CHECK(a->used == 0 && a->peak == bytes, "%s: arena used %zu, peak %zu, sd_text_encoder_arena_bytes %zu", label, a->used, a->peak, bytes);

    /* exactly that many bytes are enough, one less is a clean error */
    unsigned char *block = (unsigned char *)malloc(bytes + SD_ALIGN);
    unsigned char *aligned = block + (SD_ALIGN - (uintptr_t)block % SD_ALIGN) % SD_ALIGN;
    sd_arena exact;
    sd_arena_init(&exact, aligned, bytes);
    sd_arena_init(&exact, aligned, bytes);
    CHECK(sd_text_encode(te, ids, n, 0, out, NULL, &pool, &exact, &err) == SD_OK, "%s: encode in an arena of exactly %zu bytes: %s", label, bytes, err.message);
    sd_arena_init(&exact, aligned, bytes - 1);
    CHECK(sd_text_encode(te, ids, n, 0, out, NULL, &pool, &exact, &err) == SD_ERR_MEMORY && exact.used == 0,
          "%s: an arena one byte short gives SD_ERR_MEMORY and is left as it was", label);
    free(block);

    /* a token id outside the vocabulary is an error naming where it is */
    ids[SD_TEXT_TOKENS + 5] = te->vocab;
    int rc = sd_text_encode(te, ids, n > 1 ? 2 : 1, 0, out, NULL, &pool, a, &err);
    CHECK(n < 2 || (rc == SD_ERR_ARG && strstr(err.message, "prompt 1, position 5")), "%s: bad token id: rc %d (%s)", label, rc, rc ? err.message : "");
    ids[0] = -1;
    rc = sd_text_encode(te, ids, 1, 0, out, NULL, &pool, a, &err);
    CHECK(rc == SD_ERR_ARG && strstr(err.message, "prompt 0, position 0"), "%s: negative token id: rc %d", label, rc);

    free_arena(a);
    free_arena(pa);
    free(ids);
    free(out);
    free(out2);
}

/* A missing tensor and a mis-shaped one, in copies of the model file, give errors naming them. */
static void te_check_errors(const sd_text_encoder *te, const sd_safetensors *st, const sd_safetensors *meta, const char *label)
{
    const clip_layer *last = &te->layer[te->layers - 1];
    const char *names[3] = {last->ln1_w.name, last->v_b.name, te->token_embedding.name};
    char want[600];
    sd_error err;
    for (int i = 0; i < 4; i++) {
        size_t size;
        unsigned char *bytes = te_rebuild(st, 0, i < 3 ? names[i] : NULL, i == 3 ? last->fc1_w.name : NULL, &size);
        sd_arena *arena = test_arena(1u << 24);
        sd_safetensors copy;
        sd_text_encoder broken;
        int rc = te_load_bytes(&broken, &copy, bytes, size, meta == st ? NULL : meta, arena, &err);
        if (i < 3) {
            snprintf(want, sizeof want, "missing tensor '%s'", names[i]);
            CHECK(rc == SD_ERR_MISSING && strstr(err.message, want), "%s without %s: rc %d, '%s'", label, names[i], rc, rc ? err.message : "");
        } else {
            snprintf(want, sizeof want, "tensor '%s' has shape [%d, %d], expected [%d, %d]", last->fc1_w.name, te->width, te->mlp, te->mlp, te->width);
            CHECK(rc == SD_ERR_SHAPE && strstr(err.message, want), "%s with %s transposed: rc %d, '%s'", label, last->fc1_w.name, rc, rc ? err.message : "");
        }
        CHECK(broken.layer == NULL, "%s: a failed load leaves the encoder empty", label);
        free_arena(arena);
        free(bytes);
    }
}

/* Metadata the encoder cannot use is an error saying which key. Cases whose premise the model
   does not meet (5 heads that do not split its width, SD1's head size 64 that does not either)
   are skipped with a note. */
static void te_check_bad_metadata(const sd_text_encoder *model_te, const unsigned char *model, size_t model_size, const char *label)
{
    static const struct { const char *json, *key; int code; } cases[] = {
        {"{\"sd.clip.heads\":\"5\"}", "heads", SD_ERR_SHAPE},
        {"{\"sd.clip.heads\":\"four\"}", "sd.clip.heads", SD_ERR_FORMAT},
        {"{\"sd.clip.hidden_act\":\"relu\"}", "sd.clip.hidden_act", SD_ERR_UNSUPPORTED},
        {"{\"sd.clip.output\":\"first\"}", "sd.clip.output", SD_ERR_UNSUPPORTED},
        {"{\"sd.clip.layer_norm_eps\":\"1e-5x\"}", "sd.clip.layer_norm_eps", SD_ERR_FORMAT},
        {"{\"sd.clip.layers\":\"99\"}", "sd.clip.layers", SD_ERR_SHAPE},
        {"{\"sd.version\":\"3\"}", "sd.version", SD_ERR_UNSUPPORTED},
        {"{\"sd.version\":\"1\"}", "head size 64", SD_ERR_SHAPE},   /* SD1's defaults, on a model they do not fit */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int width = model_te->width;
        const char *premise = i == 0 && width % 5 == 0 ? "5 heads split the width"
                            : i == 5 && model_te->layers == 99 ? "the model has 99 layers"
                            : i == 7 && width % 64 == 0 ? "SD1's head size 64 splits the width" : NULL;
        if (premise) {
            printf("  %s: metadata %s: %s (%d), case skipped\n", label, cases[i].json, premise, i == 5 ? model_te->layers : width);
            continue;
        }
        size_t size;
        unsigned char *mbytes = te_meta_file(cases[i].json, &size);
        sd_arena *arena = test_arena(1u << 24);
        sd_safetensors mst, st;
        sd_text_encoder te;
        sd_error err;
        int rc = sd_safetensors_open(&mst, mbytes, size, arena, &err);
        if (CHECK(rc == SD_OK, "metadata file %s: %s", cases[i].json, err.message)) {
            rc = te_load_bytes(&te, &st, model, model_size, &mst, arena, &err);
            CHECK(rc == cases[i].code && strstr(err.message, cases[i].key), "%s with metadata %s: rc %d, '%s'", label, cases[i].json, rc, rc ? err.message : "");
            /* a file without a text encoder */
            rc = sd_text_encoder_load(&te, &mst, 1, NULL, 0, arena, &err);
            CHECK(rc == SD_ERR_MISSING || rc == SD_ERR_UNSUPPORTED, "metadata-only file as a checkpoint: rc %d", rc);
        }
        free_arena(arena);
        free(mbytes);
    }
}

/* Golden I64 [n, 77] token ids as int32; NULL (and a failure) when absent or malformed. */
static int32_t *te_golden_ids(golden_file *g, const char *name, int *n)
{
    const sd_tensor *t = sd_safetensors_find(&g->st, name);
    if (!CHECK(t && t->dtype == SD_I64 && t->ndim == 2 && t->shape[1] == SD_TEXT_TOKENS && t->shape[0] > 0,
               "%s: %s is not I64 [n, %d]", g->path, name, SD_TEXT_TOKENS)) return NULL;
    *n = (int)t->shape[0];
    int32_t *ids = (int32_t *)malloc((size_t)*n * SD_TEXT_TOKENS * sizeof *ids);
    for (int64_t i = 0; i < *n * SD_TEXT_TOKENS; i++) { int64_t v; memcpy(&v, (const char *)t->data + 8 * i, 8); ids[i] = (int32_t)v; }
    return ids;
}

/* SDXL's two encoders (§8 of the golden README): every hidden state of each, the pooled output
   before and after text_projection, and the UNet's context = both penultimate states side by
   side; the pooled call's arena bytes exact. The encoders are `loaded` (a model's), or loaded
   here from files with meta. */
static void te_check_xl(const sd_text_encoder *loaded, const sd_safetensors *files, int nfiles, const sd_safetensors *meta, golden_file *g, const char *label)
{
    sd_text_encoder te[2];
    sd_error err;
    sd_arena *arena = test_arena(1u << 20), *pa = test_arena(pool_arena_bytes(1) + SD_ALIGN);
    sd_pool pool;
    int n = 0, n2 = 0;
    int32_t *ids[2] = {te_golden_ids(g, "input_ids", &n), te_golden_ids(g, "input_ids_2", &n2)};
    char what[900], name[64];
    CHECK(pool_init(&pool, 1, pa, &err) == SD_OK, "pool_init");
    for (int e = 0; e < 2; e++)
        if (loaded) te[e] = loaded[e];
        else if (!CHECK(sd_text_encoder_load(&te[e], files, nfiles, meta, e, arena, &err) == SD_OK, "%s: encoder %d: %s", label, e, err.message)) goto done;
    if (!ids[0] || !ids[1] || !CHECK(n == n2 && te[1].proj_dim > 0 && te[0].proj_dim == 0, "%s: ids, or a projection on the wrong encoder", label)) goto done;
    size_t rows = (size_t)n * SD_TEXT_TOKENS, D = (size_t)(te[0].width + te[1].width);
    float *ctx = (float *)malloc(rows * D * sizeof(float)), *pooled = (float *)malloc((size_t)n * te[1].proj_dim * sizeof(float));
    for (int e = 0; e < 2; e++) {
        size_t W = (size_t)te[e].width, off = e ? (size_t)te[0].width : 0;
        float *out = (float *)malloc(rows * W * sizeof(float));
        sd_arena *a = test_arena(sd_text_encoder_arena_bytes(&te[e], n, e == 1) + SD_ALIGN);
        /* the hidden states the golden holds (of the model's layers, none past them), the last through the final LayerNorm */
        for (int i = 0; i < g->st.count; i++) {
            int k, te_k, len = 0;
            if (sscanf(g->st.tensors[i].name, "te%d.hidden_states.%d%n", &te_k, &k, &len) == 2 && te_k == e + 1 && !g->st.tensors[i].name[len])
                CHECK(k >= 0 && k <= te[e].layers, "%s: the golden has %s, encoder %d has %d layers", label, g->st.tensors[i].name, e, te[e].layers);
        }
        for (int l = 0; l <= te[e].layers + 1; l++) {
            int64_t gn;
            int layer = l <= te[e].layers ? l : te[e].layers;
            snprintf(name, sizeof name, l <= te[e].layers ? "te%d.hidden_states.%d" : "te%d.last_hidden_state", e + 1, l);
            if (!sd_safetensors_find(&g->st, name)) continue;
            const float *want = golden_f32(g, name, &gn);
            snprintf(what, sizeof what, "%s %s", label, name);
            if (want && CHECK((size_t)gn == rows * W, "%s: size", what) &&
                CHECK(sd_text_encoder_hidden(&te[e], ids[e], n, layer, l > te[e].layers, out, &pool, a, &err) == SD_OK, "%s: %s", what, err.message))
                check_close(what, out, want, (int64_t)(rows * W), 1e-5);
        }
        /* the model's output: the penultimate state, no final LayerNorm */
        snprintf(what, sizeof what, "%s encoder %d", label, e);
        CHECK(te[e].output_layer == te[e].layers - 1 && !te[e].output_final_ln, "%s: output is layer %d%s, not the penultimate without LayerNorm",
              what, te[e].output_layer, te[e].output_final_ln ? " + final LN" : "");
        if (CHECK(sd_text_encode(&te[e], ids[e], n, 0, out, e ? pooled : NULL, &pool, a, &err) == SD_OK, "%s: %s", what, err.message))
            for (size_t r = 0; r < rows; r++) memcpy(ctx + r * D + off, out + r * W, W * sizeof(float));
        CHECK(a->used == 0 && a->peak == sd_text_encoder_arena_bytes(&te[e], n, e == 1), "%s: arena peak %zu, predicted %zu", what, a->peak,
              sd_text_encoder_arena_bytes(&te[e], n, e == 1));
        free_arena(a);
        free(out);
    }
    int64_t gn;
    const float *want = golden_f32(g, "prompt_embeds", &gn);
    snprintf(what, sizeof what, "%s prompt_embeds", label);
    if (want && CHECK((size_t)gn == rows * D, "%s: size", what)) check_close(what, ctx, want, gn, 1e-5);
    want = golden_f32(g, "te2.text_embeds", &gn);
    snprintf(what, sizeof what, "%s te2.text_embeds (pooled)", label);
    if (want && CHECK(gn == (int64_t)n * te[1].proj_dim, "%s: size", what)) check_close(what, pooled, want, gn, 1e-5);
    CHECK(sd_text_encode(&te[0], ids[0], n, 0, ctx, pooled, &pool, arena, &err) == SD_ERR_ARG, "%s: pooled from encoder 0 (no projection) must be refused", label);
    free(ctx);
    free(pooled);
done:
    free(ids[0]);
    free(ids[1]);
    pool_free(&pool);
    free_arena(pa);
    free_arena(arena);
}

/* One layout of a model of GOLDEN/models: its text encoder against GOLDEN/NAME/text_encoder.safetensors,
   as stored and (for F16 files) widened to F32, plus the error cases. A single file's hyperparameters
   are its metadata; a diffusers folder's come from its config.json files, so it is tested as
   sd_model_load reads it. */
static void te_check_model(const golden_model *gm, int layout)
{
    char path[1600], label[700], rel[300];
    size_t size = 0;
    unsigned char *bytes = NULL;
    sd_error err;
    sd_safetensors st;
    const sd_safetensors *meta = NULL;   /* none beyond the file's own */
    sd_text_encoder te;
    loaded_model lm;
    int diffusers = layout == LAYOUT_DIFFUSERS, rc;
    golden_file *g = NULL;
    sd_arena *arena = test_arena(1u << 24);

    memset(&lm, 0, sizeof lm);
    snprintf(label, sizeof label, "%s", strrchr(gm->path[layout], '/') + 1);
    snprintf(path, sizeof path, "%s%s", gm->path[layout], diffusers ? "/text_encoder/model.safetensors" : "");
    if (!CHECK((bytes = read_file(path, &size)) != NULL, "cannot read %s", path)) goto done;
    if (!CHECK(sd_safetensors_open(&st, bytes, size, arena, &err) == SD_OK, "%s: %s", path, err.message)) goto done;
    if (diffusers) {
        if (open_diffusers_model(&lm, gm->path[layout])) goto done;   /* a note or a failure there */
        meta = lm.model->meta;
    }
    snprintf(rel, sizeof rel, "%.250s/text_encoder.safetensors", gm->name);
    if (!(g = golden_open(rel))) goto done;
    n_cases++;
    const char *version = sd_safetensors_meta(meta ? meta : &st, "sd.version");
    if (diffusers ? lm.model->encoders == 2 : version && !strcmp(version, "xl")) {   /* SDXL: the second encoder is in the same file, or in text_encoder_2/ */
        te_check_xl(diffusers ? lm.model->te : NULL, &st, 1, meta, g, label);
        goto done;
    }
    if (diffusers) te = lm.model->te[0];
    else if ((rc = sd_text_encoder_load(&te, &st, 1, meta, 0, arena, &err)) == SD_ERR_UNSUPPORTED) {
        printf("note: text encoder of %s: %s; skipped\n", label, err.message);
        goto done;
    } else if (!CHECK(rc == SD_OK, "%s: load: %s", label, err.message)) goto done;
    int has_f16 = 0;
    te_check_goldens(&te, g, label);
    te_check_errors(&te, &st, meta ? meta : &st, label);
    te_check_bad_metadata(&te, bytes, size, label);
    for (int i = 0; i < st.count; i++) has_f16 |= st.tensors[i].dtype == SD_F16 || st.tensors[i].dtype == SD_BF16;
    if (has_f16) {
        size_t wsize;
        unsigned char *wide = te_rebuild(&st, 1, NULL, NULL, &wsize);
        sd_arena *warena = test_arena(1u << 24);
        sd_safetensors wst;
        sd_text_encoder wte;
        snprintf(label + strlen(label), sizeof label - strlen(label), " (as F32)");
        rc = te_load_bytes(&wte, &wst, wide, wsize, meta, warena, &err);
        if (CHECK(rc == SD_OK && wte.token_embedding.dtype == SD_F32, "%s: load: %s", label, rc ? err.message : "not F32"))
            te_check_goldens(&wte, g, label);
        free_arena(warena);
        free(wide);
    }
done:
    golden_close(g);
    unload_model(&lm);
    free_arena(arena);
    free(bytes);
}

static void test_text_encoder(void)
{
    int n = golden_models_read(), before = n_fail, checked = 0;
    for (int i = 0; i < n; i++) {
        if (!golden_exists(golden_models[i].name, "text_encoder.safetensors")) {
            if (n > 1) printf("  text encoder: %s: no %s/text_encoder.safetensors, skipped\n", golden_models[i].name, golden_models[i].name);
            continue;
        }
        for (int k = 0; k < LAYOUTS; k++)
            if (*golden_models[i].path[k]) te_check_model(&golden_models[i], k);
        checked++;
    }
    if (!checked) {
        if (!n) note_no_models();
        else note_absent("text_encoder", "no model of %s/models has a NAME/text_encoder.safetensors, text encoder goldens skipped", golden_dir);
        return;
    }
    printf("text encoder: %d models, %s\n", checked, n_fail == before ? "ok" : "FAILED");
}

/* Tests of section 4 (compute kernels): each kernel against a plain double-precision reference
   on random shapes with odd sizes, every weight dtype, and bit-identical results for 1..4
   threads. Tolerances are max|diff|/max|ref|: 2e-5 for sums of products in float (K up to a
   few hundred), 1e-5 for the elementwise functions (their polynomials are good to ~2e-7). */

static uint64_t kt_rng = 0x9e3779b97f4a7c15ull;
static float kt_rand(void)   /* uniform in [-1, 1) */
{
    kt_rng ^= kt_rng << 13; kt_rng ^= kt_rng >> 7; kt_rng ^= kt_rng << 17;
    return (float)((kt_rng >> 40) / 8388608.0 - 1.0);
}
static float *kt_floats(size_t n, float scale)
{
    float *p = (float *)malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = kt_rand() * scale;
    return p;
}

/* A weight tensor of random values stored as dtype (data malloc'd; free with kt_free_tensor). */
static sd_tensor kt_tensor(sd_dtype dtype, int64_t d0, int64_t d1, int64_t d2, int64_t d3, float scale)
{
    sd_tensor t;
    memset(&t, 0, sizeof t);
    t.name = "test";
    t.dtype = dtype;
    t.ndim = d3 ? 4 : d1 ? 2 : 1;
    t.shape[0] = d0; t.shape[1] = d1; t.shape[2] = d2; t.shape[3] = d3;
    int64_t n = d0 * (d1 ? d1 : 1) * (d2 ? d2 : 1) * (d3 ? d3 : 1);
    t.nbytes = (size_t)n * sd_dtype_size(dtype);
    unsigned char *p = (unsigned char *)malloc(t.nbytes + 2);
    p += 2 * (dtype != SD_F32);  /* half types at an odd 2-byte offset: kernels must not assume alignment */
    for (int64_t i = 0; i < n; i++) {
        float v = kt_rand() * scale;
        if (dtype == SD_F32) memcpy(p + 4 * i, &v, 4);
        else if (dtype == SD_F16) { uint16_t h = sd_f32_to_f16(v); memcpy(p + 2 * i, &h, 2); }
        else if (dtype == SD_F64) { double d = v; memcpy(p + 8 * i, &d, 8); }
        else { uint32_t b; memcpy(&b, &v, 4); uint16_t h = (uint16_t)(b >> 16); memcpy(p + 2 * i, &h, 2); }
    }
    t.data = p;
    return t;
}
static void kt_free_tensor(sd_tensor *t)
{
    if (t->data) free((unsigned char *)t->data - 2 * (t->dtype != SD_F32));
    t->data = NULL;
}

/* max|got - ref| / max|ref| <= tol over n values. */
static int kt_close(const char *what, const float *got, const double *ref, size_t n, double tol)
{
    double md = 0, mr = 0;
    size_t worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(got[i] - ref[i]);
        if (!(d <= md)) { md = d; worst = i; }
        if (fabs(ref[i]) > mr) mr = fabs(ref[i]);
    }
    double rel = mr > 0 ? md / mr : md;
    return CHECK(rel <= tol, "%s: max|diff|/max|ref| = %.3g > %.3g (element %zu: got %.8g, want %.8g)",
                 what, rel, tol, worst, n ? got[worst] : 0.0, n ? ref[worst] : 0.0);
}

typedef struct kt_pool { sd_pool pool; sd_arena *arena; } kt_pool;
static kt_pool *kt_pool_new(int threads)
{
    kt_pool *p = (kt_pool *)malloc(sizeof *p);
    sd_error err;
    p->arena = test_arena(pool_arena_bytes(threads) + SD_ALIGN);
    int rc = pool_init(&p->pool, threads, p->arena, &err);
    CHECK(rc == SD_OK, "pool_init(%d): %s", threads, rc ? err.message : "");
    CHECK(p->arena->used == pool_arena_bytes(threads), "pool_init(%d) used %zu bytes, pool_arena_bytes says %zu",
          threads, p->arena->used, pool_arena_bytes(threads));
    return p;
}
static void kt_pool_free(kt_pool *p) { pool_free(&p->pool); free_arena(p->arena); free(p); }

static const sd_dtype kt_dtypes[3] = {SD_F32, SD_F16, SD_BF16};

/* A weight's values as floats, decoded once (malloc'd): the references read them value by value,
   and tensor_get decodes a whole block for each one of a block type. */
static float *kt_values(const sd_tensor *w)
{
    size_t n = (size_t)sd_tensor_numel(w);
    float *v = (float *)malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i += 1u << 20) tensor_floats(v + i, w, i, (int)(n - i < (1u << 20) ? n - i : 1u << 20));
    return v;
}

/* ref[M, N] = x[M, K] · wᵀ in double, contiguous rows. */
static void kt_matmul_ref(double *ref, const float *x, const sd_tensor *w, int M, int N, int K)
{
    float *wv = kt_values(w);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += (double)x[(size_t)m * K + k] * wv[(size_t)n * K + k];
            ref[(size_t)m * N + n] = s;
        }
    free(wv);
}

/* matmul: y (+)= x·wᵀ + b with row strides, odd sizes, every dtype, bias or not, accumulate or not. */
static void test_kernels_matmul(sd_pool *pool)
{
    static const int shapes[][3] = {
        {1, 1, 1}, {1, 17, 63}, {2, 65, 3}, {3, 33, 300}, {4, 1, 5}, {5, 3, 1}, {13, 31, 17},
        {17, 65, 63}, {63, 17, 289}, {65, 96, 577}, {100, 130, 64}, {12, 32, 288}, {37, 100, 1000},
        {64, 9, 2400}, {77, 100, 700}, {200, 33, 50}, {130, 1, 3},
    };
    for (int si = 0; si < (int)(sizeof shapes / sizeof shapes[0]); si++)
        for (int di = 0; di < 3; di++) {
            int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
            int ldx = K + (si % 3), ldy = N + 2 * (si % 2), acc = (si + di) % 2, with_bias = (si + di) % 3 != 0;
            sd_tensor w = kt_tensor(kt_dtypes[di], N, K, 0, 0, 1.0f), b = kt_tensor(kt_dtypes[(di + 1) % 3], N, 0, 0, 0, 1.0f);
            float *x = kt_floats((size_t)M * ldx, 1.0f), *y = kt_floats((size_t)M * ldy, 1.0f);
            double *ref = (double *)malloc((size_t)M * ldy * sizeof(double));
            float *yg = (float *)malloc((size_t)M * ldy * sizeof(float));
            for (int m = 0; m < M; m++)
                for (int n = 0; n < ldy; n++) {
                    double s = n < N ? (acc ? y[(size_t)m * ldy + n] : 0.0) + (with_bias ? tensor_get(&b, (size_t)n) : 0.0) : y[(size_t)m * ldy + n];
                    for (int k = 0; n < N && k < K; k++) s += (double)x[(size_t)m * ldx + k] * tensor_get(&w, (size_t)n * K + k);
                    ref[(size_t)m * ldy + n] = s;
                }
            matmul(pool, y, ldy, x, ldx, M, N, K, &w, with_bias ? &b : NULL, acc);
            char what[128];
            snprintf(what, sizeof what, "matmul M=%d N=%d K=%d w=%s acc=%d bias=%d", M, N, K, sd_dtype_name(w.dtype), acc, with_bias);
            kt_close(what, y, ref, (size_t)M * ldy, 2e-6 * sqrt((double)K + 1));
            (void)yg;
            free(x); free(y); free(ref); free(yg);
            kt_free_tensor(&w); kt_free_tensor(&b);
        }
    {   /* F64 weights take the element-by-element packing path */
        sd_tensor w = kt_tensor(SD_F64, 40, 33, 0, 0, 1.0f);
        float *x = kt_floats(20 * 33, 1.0f), y[20 * 40];
        double ref[20 * 40];
        kt_matmul_ref(ref, x, &w, 20, 40, 33);
        matmul(pool, y, 40, x, 33, 20, 40, 33, &w, NULL, 0);
        kt_close("matmul 20x40x33 w=F64", y, ref, 20 * 40, 1e-5);
        free(x);
        kt_free_tensor(&w);
    }
    /* linear is matmul with packed rows */
    {
        sd_tensor w = kt_tensor(SD_F16, 20, 7, 0, 0, 1.0f);
        float *x = kt_floats(9 * 7, 1.0f), y[9 * 20];
        double ref[9 * 20];
        kt_matmul_ref(ref, x, &w, 9, 20, 7);
        linear(pool, y, x, 9, 20, 7, &w, NULL);
        kt_close("linear 9x20x7", y, ref, 9 * 20, 1e-5);
        float row[7];
        weight_row(&w, 3, 7, row);
        int ok = 1;
        for (int k = 0; k < 7; k++) ok &= row[k] == tensor_get(&w, 3 * 7 + k);
        CHECK(ok, "weight_row of an F16 tensor differs from tensor_get");
        free(x);
        kt_free_tensor(&w);
    }
}

static void kt_conv_ref(double *ref, const float *x, int B, int H, int W, int Cin, const sd_tensor *w,
                        const sd_tensor *b, int Cout, int k, int s, int pad, int pad_end)
{
    int Ho = (H + pad + pad_end - k) / s + 1, Wo = (W + pad + pad_end - k) / s + 1;
    for (int bi = 0; bi < B; bi++)
        for (int oy = 0; oy < Ho; oy++)
            for (int ox = 0; ox < Wo; ox++)
                for (int co = 0; co < Cout; co++) {
                    double acc = b ? tensor_get(b, (size_t)co) : 0.0;
                    for (int ky = 0; ky < k; ky++)
                        for (int kx = 0; kx < k; kx++) {
                            int iy = oy * s + ky - pad, ix = ox * s + kx - pad;
                            if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                            for (int ci = 0; ci < Cin; ci++)
                                acc += (double)x[(((size_t)bi * H + iy) * W + ix) * Cin + ci] *
                                       tensor_get(w, (((size_t)co * Cin + ci) * k + ky) * k + kx);
                        }
                    ref[(((size_t)bi * Ho + oy) * Wo + ox) * Cout + co] = acc;
                }
}

static void test_kernels_conv(sd_pool *pool)
{
    /* B H W Cin Cout k s pad pad_end */
    static const int shapes[][9] = {
        {1, 5, 7, 3, 4, 3, 1, 1, 1}, {2, 9, 6, 17, 33, 3, 1, 1, 1}, {1, 8, 8, 40, 65, 3, 2, 1, 1},
        {1, 9, 7, 33, 17, 3, 2, 0, 1}, {2, 4, 5, 63, 8, 1, 1, 0, 0}, {1, 1, 1, 5, 3, 3, 1, 1, 1},
        {1, 3, 17, 70, 31, 3, 1, 1, 1}, {1, 6, 6, 4, 5, 1, 2, 0, 0}, {1, 13, 11, 9, 40, 3, 2, 1, 1},
        /* more than 32 output pixels: the packed path (fewer take dot products) */
        {2, 19, 17, 7, 20, 3, 2, 1, 1}, {1, 21, 19, 6, 9, 3, 2, 0, 1}, {1, 10, 9, 70, 31, 3, 1, 1, 1},
        {1, 20, 20, 4, 5, 1, 2, 0, 0}, {1, 9, 8, 3, 4, 3, 1, 1, 1},
    };
    for (int si = 0; si < (int)(sizeof shapes / sizeof shapes[0]); si++)
        for (int di = 0; di < 3; di++) {
            const int *S = shapes[si];
            int B = S[0], H = S[1], W = S[2], Cin = S[3], Cout = S[4], k = S[5], s = S[6], pad = S[7], pe = S[8];
            int Ho = (H + pad + pe - k) / s + 1, Wo = (W + pad + pe - k) / s + 1;
            size_t ny = (size_t)B * Ho * Wo * Cout;
            sd_tensor w = kt_tensor(kt_dtypes[di], Cout, Cin, k, k, 1.0f), b = kt_tensor(SD_F32, Cout, 0, 0, 0, 1.0f);
            float *x = kt_floats((size_t)B * H * W * Cin, 1.0f), *y = kt_floats(ny, 1.0f);
            double *ref = (double *)malloc(ny * sizeof(double));
            int with_bias = si % 2 == 0;
            kt_conv_ref(ref, x, B, H, W, Cin, &w, with_bias ? &b : NULL, Cout, k, s, pad, pe);
            conv2d(pool, y, x, B, H, W, Cin, &w, with_bias ? &b : NULL, Cout, k, s, pad, pe);
            char what[160];
            snprintf(what, sizeof what, "conv2d %dx%dx%dx%d -> %d k=%d s=%d pad=(%d,%d) w=%s", B, H, W, Cin, Cout, k, s, pad, pe,
                     sd_dtype_name(w.dtype));
            kt_close(what, y, ref, ny, 2e-6 * sqrt((double)Cin * k * k + 1));
            free(x); free(y); free(ref);
            kt_free_tensor(&w); kt_free_tensor(&b);
        }
}

static void kt_attention_ref(double *ref, const float *q, int ldq, const float *k, int ldk, const float *v, int ldv,
                             int B, int Nq, int Nk, int heads, int d, int causal, int ldo)
{
    double *s = (double *)malloc((size_t)Nk * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < Nq; i++) {
                int n = causal ? (i + 1 < Nk ? i + 1 : Nk) : Nk;
                double mx = -1e300, sum = 0;
                for (int j = 0; j < n; j++) {
                    double a = 0;
                    for (int c = 0; c < d; c++)
                        a += (double)q[((size_t)b * Nq + i) * ldq + h * d + c] * k[((size_t)b * Nk + j) * ldk + h * d + c];
                    s[j] = a / sqrt((double)d);
                    if (s[j] > mx) mx = s[j];
                }
                for (int j = 0; j < n; j++) { s[j] = exp(s[j] - mx); sum += s[j]; }
                for (int c = 0; c < d; c++) {
                    double o = 0;
                    for (int j = 0; j < n; j++) o += s[j] * v[((size_t)b * Nk + j) * ldv + h * d + c];
                    ref[((size_t)b * Nq + i) * ldo + h * d + c] = o / sum;
                }
            }
    free(s);
}

static void test_kernels_attention(sd_pool *pool)
{
    /* B Nq Nk heads d causal */
    static const int shapes[][6] = {
        {1, 1, 1, 1, 1, 0}, {2, 17, 77, 3, 40, 0}, {1, 65, 63, 2, 17, 1}, {1, 200, 200, 1, 64, 1},
        {1, 33, 300, 2, 8, 0}, {2, 40, 3, 1, 80, 0}, {1, 129, 130, 1, 3, 1}, {1, 7, 129, 8, 5, 0},
        {1, 40, 1101, 2, 40, 0}, {2, 33, 77, 2, 160, 0}, {1, 300, 300, 3, 64, 1}, {1, 5, 40, 1, ATTQ_MAX_D + 4, 0}, {1, 3, 20000, 1, 40, 0},
    };
    double worst = 0;
    uint64_t rng = 0;
    for (int si = 0; si < (int)(sizeof shapes / sizeof shapes[0]); si++) {
        const int *S = shapes[si];
        if (si == 8) rng = kt_rng;   /* the kernel tests after this one draw what they drew before the last shapes were added */
        int B = S[0], Nq = S[1], Nk = S[2], heads = S[3], d = S[4], causal = S[5];
        int hd = heads * d, ldq = hd + si % 2, ldk = hd + 3 * (si % 2), ldv = hd + 1, ldo = hd + 2;
        float *q = kt_floats((size_t)B * Nq * ldq, 2.0f), *k = kt_floats((size_t)B * Nk * ldk, 2.0f);
        float *v = kt_floats((size_t)B * Nk * ldv, 1.0f), *o = kt_floats((size_t)B * Nq * ldo, 1.0f);
        double *ref = (double *)malloc((size_t)B * Nq * ldo * sizeof(double));
        for (size_t i = 0; i < (size_t)B * Nq * ldo; i++) ref[i] = o[i];   /* the gaps between rows stay untouched */
        kt_attention_ref(ref, q, ldq, k, ldk, v, ldv, B, Nq, Nk, heads, d, causal, ldo);
        attention(pool, o, ldo, q, ldq, k, ldk, v, ldv, B, Nq, Nk, heads, d, causal);
        char what[128];
        snprintf(what, sizeof what, "attention B=%d Nq=%d Nk=%d heads=%d d=%d causal=%d", B, Nq, Nk, heads, d, causal);
        kt_close(what, o, ref, (size_t)B * Nq * ldo, 1e-5);
        /* the fast mode: int8 products, within a bound of the exact result (measured worst 0.034:
           a causal query that sees few keys, whose small softmax weights round to multiples of
           1/127 of the largest); heads wider than ATTQ_MAX_D, or whose quantized keys and values
           do not fit the thread's scratch, stay float32, to the bit */
        float *f = (float *)malloc((size_t)B * Nq * ldo * sizeof(float)), md = 0, mr = 0;
        for (size_t i = 0; i < (size_t)B * Nq * ldo; i++) f[i] = (float)ref[i];   /* the gaps as in o */
        sd_pool_set_quant(pool, SD_QUANT_FAST);
        attention(pool, f, ldo, q, ldq, k, ldk, v, ldv, B, Nq, Nk, heads, d, causal);
        sd_pool_set_quant(pool, SD_QUANT_EXACT);
        for (size_t i = 0; i < (size_t)B * Nq * ldo; i++) {
            md = fabsf(f[i] - (float)ref[i]) > md ? fabsf(f[i] - (float)ref[i]) : md;
            mr = fabsf((float)ref[i]) > mr ? fabsf((float)ref[i]) : mr;
        }
        if (d > ATTQ_MAX_D || attq_plan(d, Nk).bytes > pool->scratch_floats * sizeof(float))
            CHECK(!memcmp(f, o, (size_t)B * Nq * ldo * sizeof(float)), "fast %s: a head too wide or with too many keys differs from the float32 path", what);
        else
            CHECK(md <= 0.05f * mr, "fast %s: max|fast - exact| / max|exact| = %.4f > 0.05", what, md / mr);
        worst = md / mr > worst ? md / mr : worst;
        free(q); free(k); free(v); free(o); free(f); free(ref);
    }
    kt_rng = rng;
    printf("  fast attention: worst max|fast - exact| / max|exact| %.4f\n", worst);
}

static void test_kernels_norms(sd_pool *pool)
{
    /* GroupNorm: B HW C groups */
    static const int gshapes[][4] = {{1, 1, 4, 2}, {2, 300, 40, 4}, {1, 17, 96, 32}, {1, 600, 320, 32}, {2, 5, 10, 1}, {1, 9, 2560, 32}};
    for (int si = 0; si < (int)(sizeof gshapes / sizeof gshapes[0]); si++)
        for (int with_silu = 0; with_silu < 2; with_silu++) {
            int B = gshapes[si][0], HW = gshapes[si][1], C = gshapes[si][2], G = gshapes[si][3], cg = C / G;
            size_t n = (size_t)B * HW * C;
            sd_tensor ga = kt_tensor(kt_dtypes[si % 3], C, 0, 0, 0, 1.0f), be = kt_tensor(SD_F32, C, 0, 0, 0, 1.0f);
            float *x = kt_floats(n, 3.0f), *y = (float *)malloc(n * sizeof(float));
            double *ref = (double *)malloc(n * sizeof(double));
            for (size_t i = 0; i < n; i++) x[i] += 50.0f;   /* a mean far from 0 next to the spread: the variance must not cancel */
            for (int b = 0; b < B; b++)
                for (int g = 0; g < G; g++) {
                    double s = 0, q = 0;
                    for (int p = 0; p < HW; p++)
                        for (int c = g * cg; c < (g + 1) * cg; c++) s += x[((size_t)b * HW + p) * C + c];
                    double mean = s / ((double)HW * cg);
                    for (int p = 0; p < HW; p++)
                        for (int c = g * cg; c < (g + 1) * cg; c++) { double d = x[((size_t)b * HW + p) * C + c] - mean; q += d * d; }
                    double rstd = 1.0 / sqrt(q / ((double)HW * cg) + 1e-5);
                    for (int p = 0; p < HW; p++)
                        for (int c = g * cg; c < (g + 1) * cg; c++) {
                            size_t i = ((size_t)b * HW + p) * C + c;
                            double v = (x[i] - mean) * rstd * tensor_get(&ga, (size_t)c) + tensor_get(&be, (size_t)c);
                            ref[i] = with_silu ? v / (1 + exp(-v)) : v;
                        }
                }
            groupnorm(pool, y, x, B, HW, C, G, &ga, &be, 1e-5f, with_silu);
            char what[128];
            snprintf(what, sizeof what, "groupnorm B=%d HW=%d C=%d groups=%d silu=%d", B, HW, C, G, with_silu);
            kt_close(what, y, ref, n, 1e-5);
            groupnorm(pool, x, x, B, HW, C, G, &ga, &be, 1e-5f, with_silu);   /* in place */
            CHECK(memcmp(x, y, n * sizeof(float)) == 0, "%s: in place differs", what);
            free(x); free(y); free(ref);
            kt_free_tensor(&ga); kt_free_tensor(&be);
        }
    /* LayerNorm: M C */
    static const int lshapes[][2] = {{1, 1}, {3, 17}, {77, 768}, {5, 1025}, {2, 300}};
    for (int si = 0; si < (int)(sizeof lshapes / sizeof lshapes[0]); si++) {
        int M = lshapes[si][0], C = lshapes[si][1];
        size_t n = (size_t)M * C;
        sd_tensor ga = kt_tensor(kt_dtypes[si % 3], C, 0, 0, 0, 1.0f), be = kt_tensor(kt_dtypes[(si + 1) % 3], C, 0, 0, 0, 1.0f);
        float *x = kt_floats(n, 2.0f), *y = (float *)malloc(n * sizeof(float));
        double *ref = (double *)malloc(n * sizeof(double));
        for (size_t i = 0; i < n; i++) x[i] += 3.0f;
        for (int m = 0; m < M; m++) {
            double s = 0, q = 0;
            for (int c = 0; c < C; c++) s += x[(size_t)m * C + c];
            double mean = s / C;
            for (int c = 0; c < C; c++) q += (x[(size_t)m * C + c] - mean) * (x[(size_t)m * C + c] - mean);
            double rstd = 1.0 / sqrt(q / C + 1e-5);
            for (int c = 0; c < C; c++)
                ref[(size_t)m * C + c] = (x[(size_t)m * C + c] - mean) * rstd * tensor_get(&ga, (size_t)c) + tensor_get(&be, (size_t)c);
        }
        layernorm_span(y, x, M, C, &ga, &be, 1e-5f);
        char what[64];
        snprintf(what, sizeof what, "layernorm M=%d C=%d", M, C);
        kt_close(what, y, ref, n, 1e-5);
        layernorm_span(x, x, M, C, &ga, &be, 1e-5f);
        CHECK(memcmp(x, y, n * sizeof(float)) == 0, "%s: in place differs", what);
        free(x); free(y); free(ref);
        kt_free_tensor(&ga); kt_free_tensor(&be);
    }
}

static void test_kernels_elementwise(void)
{
    static const size_t sizes[] = {1, 3, 17, 63, 65, 1000};
    for (int si = 0; si < 6; si++) {
        size_t n = sizes[si];
        float *x = kt_floats(n, 8.0f), *y = (float *)malloc(n * sizeof(float)), *z = kt_floats(n, 1.0f);
        double *ref = (double *)malloc(3 * n * sizeof(double));
        char what[64];
        if (n > 2) { x[0] = 0.0f; x[1] = -30.0f; x[2] = 30.0f; }
        for (int f = 0; f < 4; f++) {
            memcpy(y, x, n * sizeof(float));
            for (size_t i = 0; i < n; i++) {
                double v = x[i];
                ref[i] = f == 0 ? v / (1 + exp(-v)) : f == 1 ? 0.5 * v * (1 + erf(v / sqrt(2.0)))
                       : f == 2 ? v / (1 + exp(-1.702 * v)) : v + z[i];
            }
            if (f == 0) silu_span(y, n);
            if (f == 1) gelu_span(y, n);
            if (f == 2) quick_gelu_span(y, n);
            if (f == 3) add_span(y, z, n);
            snprintf(what, sizeof what, "%s n=%zu", f == 0 ? "silu" : f == 1 ? "gelu" : f == 2 ? "quick_gelu" : "add", n);
            double mr = 0;   /* 1e-6 of the largest value, or absolute below 1: a lone input deep in
                                the negative tail (output ~1e-6) is not judged by its ulps */
            for (size_t i = 0; i < n; i++) mr = fmax(mr, fabs(ref[i]));
            kt_close(what, y, ref, n, mr < 1.0 && mr > 0 ? 1e-6 / mr : 1e-6);
        }
        /* GEGLU in place over rows of 2C */
        int C = (int)n, M = 3;
        float *g = kt_floats((size_t)M * 2 * C, 4.0f);
        for (int m = 0; m < M; m++)
            for (int c = 0; c < C; c++) {
                double a = g[(size_t)m * 2 * C + c], t = g[(size_t)m * 2 * C + C + c];
                ref[(size_t)m * C + c] = a * 0.5 * t * (1 + erf(t / sqrt(2.0)));
            }
        geglu_span(g, g, M, C);
        snprintf(what, sizeof what, "geglu in place M=3 C=%d", C);
        kt_close(what, g, ref, (size_t)M * C, 1e-6);
        free(x); free(y); free(z); free(ref); free(g);
    }
    {   /* upsample2x */
        int B = 2, H = 3, W = 5, C = 7;
        float *x = kt_floats((size_t)B * H * W * C, 1.0f), *y = (float *)malloc((size_t)B * 4 * H * W * C * sizeof(float));
        upsample2x_span(y, x, B, H, W, C);
        int ok = 1;
        for (int b = 0; b < B; b++)
            for (int oy = 0; oy < 2 * H; oy++)
                for (int ox = 0; ox < 2 * W; ox++)
                    for (int c = 0; c < C; c++)
                        ok &= y[(((size_t)b * 2 * H + oy) * 2 * W + ox) * C + c] == x[(((size_t)b * H + oy / 2) * W + ox / 2) * C + c];
        CHECK(ok, "upsample2x: output differs from nearest neighbour");
        free(x); free(y);
    }
    {   /* timestep embedding */
        float e[320];
        double ref[320];
        timestep_embedding(e, 981.0f, 320);
        for (int i = 0; i < 160; i++) {
            double f = exp(-log(10000.0) * i / 160.0);
            ref[i] = cos(981.0 * f);
            ref[160 + i] = sin(981.0 * f);
        }
        kt_close("timestep_embedding t=981 dim=320", e, ref, 320, 2e-4);   /* float argument up to ~981 rad */
    }
}

/* pool_run hands out every task exactly once, run after run (workers sleep between runs). */
typedef struct kt_count { int hits[8], run; } kt_count;
static void kt_count_task(void *arg, int task, int thread)
{
    kt_count *c = (kt_count *)arg;
    (void)thread;
    c->hits[task] += c->run;
}
static void test_kernels_pool(void)
{
    for (int threads = 1; threads <= 4; threads++) {
        kt_pool *p = kt_pool_new(threads);
        kt_count c;
        int ok = 1;
        memset(&c, 0, sizeof c);
        for (c.run = 1; c.run <= 300; c.run++) {
            int n = c.run % 8 + 1;
            pool_run(&p->pool, kt_count_task, &c, n);
            for (int t = 0; t < 8; t++) ok &= c.hits[t] == (t < n ? c.run : 0), c.hits[t] = 0;
        }
        CHECK(ok, "pool_run with %d threads: a task ran twice or not at all", threads);
        kt_pool_free(p);
    }
}

/* The threaded forms of the elementwise and row-wise kernels equal the plain ones, bit for bit. */
static void test_kernels_spread(void)
{
    kt_pool *p = kt_pool_new(3);
    size_t n = 200000;
    int M = 300, C = 320, GM = 75, GC = 1280, H = 10, W = 64, UC = 64;
    sd_tensor ga = kt_tensor(SD_F16, C, 0, 0, 0, 1.0f), be = kt_tensor(SD_BF16, C, 0, 0, 0, 1.0f);
    float *x = kt_floats(n, 6.0f), *z = kt_floats(n, 1.0f), *a = (float *)malloc(n * sizeof(float)), *b = (float *)malloc(n * sizeof(float));
    float *ua = (float *)malloc((size_t)4 * H * W * UC * sizeof(float)), *ub = (float *)malloc((size_t)4 * H * W * UC * sizeof(float));
    const char *names[4] = {"silu", "gelu", "quick_gelu", "add"};
    for (int f = 0; f < 4; f++) {
        memcpy(a, x, n * sizeof(float));
        memcpy(b, x, n * sizeof(float));
        if (f == 0) { silu_span(a, n); silu(&p->pool, b, n); }
        if (f == 1) { gelu_span(a, n); gelu(&p->pool, b, n); }
        if (f == 2) { quick_gelu_span(a, n); quick_gelu(&p->pool, b, n); }
        if (f == 3) { add_span(a, z, n); add(&p->pool, b, z, n); }
        CHECK(memcmp(a, b, n * sizeof(float)) == 0, "%s differs from the single-threaded form", names[f]);
    }
    layernorm_span(a, x, M, C, &ga, &be, 1e-5f);
    layernorm(&p->pool, b, x, M, C, &ga, &be, 1e-5f);
    CHECK(memcmp(a, b, (size_t)M * C * sizeof(float)) == 0, "layernorm over the pool differs from layernorm_span");
    geglu_span(a, x, GM, GC);
    geglu(&p->pool, b, x, GM, GC);
    CHECK(memcmp(a, b, (size_t)GM * GC * sizeof(float)) == 0, "geglu over the pool differs from geglu_span");
    memcpy(b, x, (size_t)GM * 2 * GC * sizeof(float));
    geglu(&p->pool, b, b, GM, GC);
    CHECK(memcmp(a, b, (size_t)GM * GC * sizeof(float)) == 0, "geglu over the pool in place differs from geglu_span");
    upsample2x_span(ua, x, 1, H, W, UC);
    upsample2x(&p->pool, ub, x, 1, H, W, UC);
    CHECK(memcmp(ua, ub, (size_t)4 * H * W * UC * sizeof(float)) == 0, "upsample2x over the pool differs from upsample2x_span");
    free(x); free(z); free(a); free(b); free(ua); free(ub);
    kt_free_tensor(&ga); kt_free_tensor(&be);
    kt_pool_free(p);
}

/* Every threaded kernel gives bit-identical results with 1..4 threads. */
static void test_kernels_threads(void)
{
    int M = 150, N = 300, K = 600, B = 1, H = 13, W = 17, Cin = 40, Cout = 70, Nq = 150, heads = 3, d = 24, HW = 700, C = 64;
    sd_tensor w = kt_tensor(SD_F16, N, K, 0, 0, 1.0f), b = kt_tensor(SD_F32, N, 0, 0, 0, 1.0f);
    sd_tensor cw = kt_tensor(SD_BF16, Cout, Cin, 3, 3, 1.0f), cb = kt_tensor(SD_F16, Cout, 0, 0, 0, 1.0f);
    float *x = kt_floats((size_t)M * K, 1.0f), *cx = kt_floats((size_t)B * H * W * Cin, 1.0f);
    float *qkv = kt_floats((size_t)Nq * 3 * heads * d, 2.0f), *gx = kt_floats((size_t)HW * C, 3.0f);
    size_t ny = (size_t)M * N, nc = (size_t)B * H * W * Cout, na = (size_t)Nq * heads * d, ng = (size_t)HW * C;
    sd_tensor qw = kt_tensor(SD_F16, N, 640, 0, 0, 1.0f), qcw = kt_tensor(SD_F16, Cout, 64, 3, 3, 1.0f);
    float *qx = kt_floats((size_t)M * 640, 1.0f), *qcx = kt_floats((size_t)B * H * W * 64, 1.0f);
    size_t total = ny + nc + 2 * na + ng + 2 * (size_t)((H + 1) / 2) * ((W + 1) / 2) * Cout + ny + ny + nc + 2 * na;
    /* zeroed: the second stride-2 conv (pad 0, 1) leaves the end of its share unwritten */
    float *first = (float *)calloc(total, sizeof(float)), *out = (float *)calloc(total, sizeof(float));
    for (int threads = 1; threads <= 4; threads++) {
        kt_pool *p = kt_pool_new(threads);
        float *o = threads == 1 ? first : out;
        int hd = heads * d, Ho = (H + 1) / 2, Wo = (W + 1) / 2;
        matmul(&p->pool, o, N, x, K, M, N, K, &w, &b, 0);
        conv2d(&p->pool, o + ny, cx, B, H, W, Cin, &cw, &cb, Cout, 3, 1, 1, 1);
        attention(&p->pool, o + ny + nc, hd, qkv, 3 * hd, qkv + hd, 3 * hd, qkv + 2 * hd, 3 * hd, 1, Nq, Nq, heads, d, 0);
        attention(&p->pool, o + ny + nc + na, hd, qkv, 3 * hd, qkv + hd, 3 * hd, qkv + 2 * hd, 3 * hd, 1, Nq, Nq, heads, d, 1);
        groupnorm(&p->pool, o + ny + nc + 2 * na, gx, 1, HW, C, 32, &cb, &b, 1e-6f, 1);
        conv2d(&p->pool, o + ny + nc + 2 * na + ng, cx, B, H, W, Cin, &cw, NULL, Cout, 3, 2, 1, 1);
        conv2d(&p->pool, o + ny + nc + 2 * na + ng + (size_t)Ho * Wo * Cout, cx, B, H, W, Cin, &cw, &cb, Cout, 3, 2, 0, 1);
        float *fast = o + total - ny - nc - 2 * na, *tail = fast - ny;
        memcpy(tail, o, ny * sizeof(float));
        matmul(&p->pool, tail, N, x, K, M, N, K, &w, NULL, 1);
        matmul(&p->pool, tail, N, x, K, 20, N, K, &w, &b, 1);   /* few rows: dot products */
        sd_pool_set_quant(&p->pool, SD_QUANT_FAST);   /* and the int8 products */
        matmul(&p->pool, fast, N, qx, 640, M, N, 640, &qw, &b, 0);
        conv2d(&p->pool, fast + ny, qcx, B, H, W, 64, &qcw, &cb, Cout, 3, 1, 1, 1);
        attention(&p->pool, fast + ny + nc, hd, qkv, 3 * hd, qkv + hd, 3 * hd, qkv + 2 * hd, 3 * hd, 1, Nq, Nq, heads, d, 0);
        attention(&p->pool, fast + ny + nc + na, hd, qkv, 3 * hd, qkv + hd, 3 * hd, qkv + 2 * hd, 3 * hd, 1, Nq, Nq, heads, d, 1);
        if (threads > 1)
            CHECK(memcmp(first, out, total * sizeof(float)) == 0, "kernels with %d threads differ from 1 thread", threads);
        kt_pool_free(p);
    }
    {   /* an arena one byte short fails cleanly and gives its bytes back */
        sd_arena *a = test_arena(pool_arena_bytes(3) + SD_ALIGN);
        sd_pool pool;
        sd_error err;
        a->size = pool_arena_bytes(3) - 1;
        CHECK(pool_init(&pool, 3, a, &err) == SD_ERR_MEMORY && a->used == 0, "pool_init with a short arena: want SD_ERR_MEMORY");
        pool_free(&pool);
        CHECK(pool_init(&pool, 0, a, &err) == SD_ERR_ARG, "pool_init(0 threads): want SD_ERR_ARG");
        free_arena(a);
    }
    free(x); free(cx); free(qkv); free(gx); free(first); free(out); free(qx); free(qcx);
    kt_free_tensor(&w); kt_free_tensor(&b); kt_free_tensor(&cw); kt_free_tensor(&cb); kt_free_tensor(&qw); kt_free_tensor(&qcw);
}

/* LoRA updates (lora_update): two adapters on one weight (another LoRA's chained after the
   first), ranks so large that the [rows, rank] products go through the scratch in several
   chunks of rows, for a linear layer and a strided convolution whose chunks start inside a batch
   item (the last of 16 rows: the dot-product path) — against W·x + b + Σ s·up·(down·x) in double. */
static void kt_lora_case(sd_pool *pool, int conv)
{
    /* linear: M x K -> N; conv: B H W Cin -> Cout, 3x3, stride 2, padding 1 */
    int B = 2, H = 21, W = 19, Cin = 9, k = conv ? 3 : 1, s = conv ? 2 : 1, Ho = conv ? 11 : 0, Wo = conv ? 10 : 0;
    int M = conv ? B * Ho * Wo : 700, K = conv ? Cin : 300, N = conv ? 10 : 200, ranks[2] = {conv ? 3855 : 1000, 7};
    size_t nx = conv ? (size_t)B * H * W * Cin : (size_t)M * K, KK = (size_t)K * k * k;
    sd_tensor w = kt_tensor(SD_F16, N, K, conv ? k : 0, conv ? k : 0, 1.0f), b = kt_tensor(SD_F32, N, 0, 0, 0, 1.0f), down[2], up[2];
    float *x = kt_floats(nx, 1.0f), *y = (float *)malloc((size_t)M * N * sizeof(float)), scale[2] = {0.37f, -1.25f};
    double *ref = (double *)malloc((size_t)M * N * sizeof(double)), *t = (double *)malloc((size_t)M * sizeof(double));
    lora_adapter ad[2];
    int32_t slot[16];
    sd_lora_set set;
    memset(&set, 0, sizeof set);
    memset(ad, 0, sizeof ad);
    for (int i = 0; i < 16; i++) slot[i] = -1;
    for (int a = 0; a < 2; a++) {
        down[a] = kt_tensor(a ? SD_BF16 : SD_F32, ranks[a], K, conv ? k : 0, conv ? k : 0, 1.0f / (float)sqrt((double)KK));
        up[a] = kt_tensor(SD_F16, N, ranks[a], 0, 0, 1.0f / (float)sqrt((double)ranks[a]));
        ad[a].base = &w, ad[a].down = &down[a], ad[a].up = &up[a], ad[a].rank = ranks[a], ad[a].scale = scale[a];
    }
    ad[0].next = &ad[1];
    slot[lora_hash(&w) & 15] = 0;
    set.adapters = ad, set.count = 2, set.slot = slot, set.mask = 15;
    /* the reference: the convolution (or product) with the base weight, plus each adapter's */
    if (conv) kt_conv_ref(ref, x, B, H, W, Cin, &w, &b, N, k, s, 1, 1);
    else
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) {
                double acc = tensor_get(&b, (size_t)n);
                for (int c = 0; c < K; c++) acc += (double)x[(size_t)m * K + c] * tensor_get(&w, (size_t)n * K + c);
                ref[(size_t)m * N + n] = acc;
            }
    for (int a = 0; a < 2; a++)
        for (int r = 0; r < ranks[a]; r++) {
            sd_tensor one = down[a];   /* row r of down as a 1-output layer */
            one.shape[0] = 1;
            one.data = (const char *)down[a].data + (size_t)r * KK * sd_dtype_size(down[a].dtype);
            if (conv) kt_conv_ref(t, x, B, H, W, Cin, &one, NULL, 1, k, s, 1, 1);
            else kt_matmul_ref(t, x, &one, M, 1, K);
            for (int m = 0; m < M; m++)
                for (int n = 0; n < N; n++) ref[(size_t)m * N + n] += scale[a] * tensor_get(&up[a], (size_t)n * ranks[a] + r) * t[m];
        }
    float *scratch = (float *)malloc(SD_LORA_SCRATCH_BYTES);
    pool->lora = &set, pool->lora_scratch = scratch;
    if (conv) conv2d(pool, y, x, B, H, W, Cin, &w, &b, N, k, s, 1, 1);
    else linear(pool, y, x, M, N, K, &w, &b);
    pool->lora = NULL, pool->lora_scratch = NULL;
    kt_close(conv ? "conv2d 3x3 s2 + two LoRAs (rank 3855: 3 chunks of 68 rows and one of 16, dot products; rank 7)" : "linear + two LoRAs (rank 1000 in 3 chunks, rank 7)",
             y, ref, (size_t)M * N, 2e-6 * sqrt((double)KK + ranks[0]));
    for (int a = 0; a < 2; a++) { kt_free_tensor(&down[a]); kt_free_tensor(&up[a]); }
    kt_free_tensor(&w); kt_free_tensor(&b);
    free(scratch); free(x); free(y); free(ref); free(t);
}

static void test_kernels_lora(sd_pool *pool)
{
    uint64_t rng = kt_rng;   /* the kernel tests after this one draw what they drew before it was added */
    kt_lora_case(pool, 0);
    kt_lora_case(pool, 1);
    kt_rng = rng;
}

/* GGUF's block types through the GEMM on this build's SIMD path: a matmul with a block-typed
   weight gives the bits of the matmul with its dequantized f32 copy (K = 2304: packed K blocks of
   288 start inside 256-value blocks; few rows take the dot-product path). The bytes are random,
   but no byte has the exponent bits of an fp16 inf or NaN, so every scale is finite. The values
   themselves are checked against ggml's in test_gguf. */
/* A block-typed [N, K] weight of random bytes, none with the exponent bits of an fp16 inf or NaN
   (free its data). */
static sd_tensor kt_block_tensor(sd_dtype dtype, int64_t N, int64_t K)
{
    sd_tensor w;
    memset(&w, 0, sizeof w);
    w.name = "test";
    w.dtype = dtype;
    w.ndim = 2;
    w.shape[0] = N;
    w.shape[1] = K;
    w.nbytes = dtype_bytes(w.dtype, (uint64_t)N * K);
    unsigned char *bytes = (unsigned char *)malloc(w.nbytes);
    for (size_t i = 0; i < w.nbytes; i++) {
        uint32_t r = (uint32_t)((kt_rand() + 1.0f) * 32768.0f);
        bytes[i] = (unsigned char)((r & 0x80) | (r >> 8) % 0x3c);
    }
    w.data = bytes;
    return w;
}

static void test_kernels_blocks(sd_pool *pool)
{
    enum { N = 24, K = 2304 };
    int ok = 1;
    for (int d = 0; d < SD_DTYPE_COUNT; d++) {
        if (!dtype_is_block((sd_dtype)d)) continue;
        sd_tensor w = kt_block_tensor((sd_dtype)d, N, K);
        unsigned char *bytes = (unsigned char *)(uintptr_t)w.data;
        sd_tensor f = w;
        float *values = (float *)malloc((size_t)N * K * sizeof(float));
        tensor_floats(values, &w, 0, N * K);
        f.dtype = SD_F32;
        f.data = values;
        f.nbytes = (size_t)N * K * sizeof(float);
        for (int M = 3; M <= 50; M += 47) {
            float *x = kt_floats((size_t)M * K, 1.0f), *y = (float *)malloc((size_t)M * N * sizeof(float)), *yf = (float *)malloc((size_t)M * N * sizeof(float));
            linear(pool, y, x, M, N, K, &w, NULL);
            linear(pool, yf, x, M, N, K, &f, NULL);
            if (memcmp(y, yf, (size_t)M * N * sizeof(float))) { ok = 0; printf("  matmul M=%d with a %s weight differs from its f32 copy\n", M, sd_dtype_name(w.dtype)); }
            free(x); free(y); free(yf);
        }
        {   /* as a 3x3 conv [N, K/9, 3, 3] (conv2d_rows: K blocks of 1152 values, longer than the GEMM_PIECE dequantized at a time) */
            int Cin = K / 9, H = 4, W = 5;
            float *x = kt_floats((size_t)H * W * Cin, 1.0f), *y = (float *)malloc((size_t)H * W * N * sizeof(float)), *yf = (float *)malloc((size_t)H * W * N * sizeof(float));
            sd_tensor wc = w, fc = f;
            wc.ndim = fc.ndim = 4;
            wc.shape[1] = fc.shape[1] = Cin;
            wc.shape[2] = wc.shape[3] = fc.shape[2] = fc.shape[3] = 3;
            conv2d_rows(pool, y, N, x, 0, H, W, Cin, &wc, NULL, N, 3, 1, 1, 0, H, W, 0);
            conv2d_rows(pool, yf, N, x, 0, H, W, Cin, &fc, NULL, N, 3, 1, 1, 0, H, W, 0);
            if (memcmp(y, yf, (size_t)H * W * N * sizeof(float))) { ok = 0; printf("  conv with a %s weight differs from its f32 copy\n", sd_dtype_name(w.dtype)); }
            free(x); free(y); free(yf);
        }
        free(bytes);
        free(values);
    }
    CHECK(ok, "matmul and conv with block-typed weights = with their f32 values, bit for bit");
}


/* The fast mode (SD_QUANT_FAST) in double: x and w quantized per block of 32 along K as the
   kernels quantize (d = a/127, v·(127/a) rounded half to even, in float, a = max|v| or 1e-30; q8_0, q4_0
   and q5_0 linear weights with their blocks' own d; a convolution's blocks are 32 channels of
   one tap), the int8 products summed exactly. What is left between this and the kernels is the
   float summation of the block sums, so the bound is tight. */
static float kq_quant(const float *v, int given, float d, int *q)
{
    float amax = 1e-30f, inv;   /* at least 1e-30, as the kernels take it */
    for (int e = 0; e < 32; e++) amax = fabsf(v[e]) > amax ? fabsf(v[e]) : amax;
    if (given) inv = d != 0.0f ? 1.0f / d : 1.0f;
    else { inv = 127.0f / amax; d = amax / 127.0f; }
    for (int e = 0; e < 32; e++) q[e] = (int)nearbyintf(v[e] * inv);
    return d;
}

/* The weight block of column n covering K values k0..k0+31 (linear) or channels c0..c0+31 of
   tap t (conv: taps > 1). */
static float kq_weight(const sd_tensor *w, const float *wv, int n, int64_t K, int taps, int64_t k0, int t, int *q)
{
    float v[32];
    for (int e = 0; e < 32; e++)
        v[e] = wv[(size_t)(taps == 1 ? n * K + k0 + e : (n * (K / taps) + k0 + e) * taps + t)];
    if (taps == 1 && (w->dtype == SD_Q8_0 || w->dtype == SD_Q4_0 || w->dtype == SD_Q5_0)) {
        const unsigned char *b = (const unsigned char *)w->data + dtype_bytes(w->dtype, (uint64_t)(n * K + k0));
        return kq_quant(v, 1, sd_f16_to_f32((uint16_t)(b[0] | b[1] << 8)), q);
    }
    return kq_quant(v, 0, 0.0f, q);
}

/* y (+)= x·wᵀ + b in the fast mode's arithmetic; rows of x are given by pointer per (row, tap)
   (NULL: padding) so that one function serves matmul and conv2d. */
static void kq_ref(double *ref, int ldr, const float *const *rows, int M, int N, int64_t K, int taps, const sd_tensor *w,
                   const sd_tensor *b, const float *y0, int ldy)
{
    int64_t depth = K / taps, blocks = (depth + 31) / 32;
    int qx[32], *qw = (int *)malloc((size_t)N * taps * blocks * 32 * sizeof(int));
    double *dws = (double *)malloc((size_t)N * taps * blocks * sizeof(double));
    float zeros[32] = {0}, *wv = kt_values(w);
    for (int n = 0; n < N; n++)   /* the weight's blocks, quantized once */
        for (int t = 0; t < taps; t++)
            for (int64_t c = 0; c < blocks; c++) {
                size_t at = ((size_t)n * taps + t) * blocks + c;
                dws[at] = kq_weight(w, wv, n, K, taps, c * 32, t, qw + at * 32);
            }
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = (y0 ? y0[(size_t)m * ldy + n] : 0.0) + (b ? tensor_get(b, (size_t)n) : 0.0);
            for (int t = 0; t < taps; t++)
                for (int64_t c0 = 0; c0 < depth; c0 += 32) {
                    const float *xr = rows[(size_t)m * taps + t];
                    size_t at = ((size_t)n * taps + t) * blocks + c0 / 32;
                    const int *qwb = qw + at * 32;
                    double dx = kq_quant(xr ? xr + c0 : zeros, 0, 0.0f, qx), dw = dws[at];
                    long dot = 0;
                    for (int e = 0; e < 32; e++) dot += (long)qx[e] * qwb[e];
                    s += dx * dw * (double)dot;
                }
            ref[(size_t)m * ldr + n] = s;
        }
    free(qw), free(dws), free(wv);
}

static void test_kernels_q8(sd_pool *pool)
{
    static const int mshapes[][3] = {{33, 1, 32}, {40, 17, 64}, {100, 33, 288}, {77, 100, 320}, {150, 70, 608},
                                     {64, 9, 2304}, {50, 1030, 96}, {13 * 12 + 5, 64, 1024}};
    static const sd_dtype dts[] = {SD_F32, SD_F16, SD_BF16, SD_Q8_0, SD_Q4_0, SD_Q5_0, SD_Q4_1, SD_Q5_1, SD_Q4_K, SD_Q6_K};
    double worst = 0;
    sd_pool_set_quant(pool, SD_QUANT_FAST);
    for (int si = 0; si < (int)(sizeof mshapes / sizeof mshapes[0]); si++)
        for (int di = 0; di < (int)(sizeof dts / sizeof dts[0]); di++) {
            int M = mshapes[si][0], N = mshapes[si][1], K = mshapes[si][2], ldx = K + si % 3, ldy = N + 2 * (si % 2);
            int acc = (si + di) % 2, with_bias = (si + di) % 3 != 0;
            if (dtype_is_block(dts[di]) && K % 256 && dts[di] >= SD_Q2_K) continue;
            sd_tensor w = dtype_is_block(dts[di]) ? kt_block_tensor(dts[di], N, K) : kt_tensor(dts[di], N, K, 0, 0, 1.0f);
            sd_tensor b = kt_tensor(SD_F16, N, 0, 0, 0, 1.0f);
            float *x = kt_floats((size_t)M * ldx, 1.0f), *y = kt_floats((size_t)M * ldy, 1.0f), *y0 = (float *)malloc((size_t)M * ldy * sizeof(float));
            double *ref = (double *)malloc((size_t)M * ldy * sizeof(double)), *exact = (double *)malloc((size_t)M * N * sizeof(double));
            const float **rows = (const float **)malloc((size_t)M * sizeof(float *));
            for (int m = 0; m < M; m++) rows[m] = x + (size_t)m * ldx;
            memcpy(y0, y, (size_t)M * ldy * sizeof(float));
            for (size_t i = 0; i < (size_t)M * ldy; i++) ref[i] = y[i];
            kq_ref(ref, ldy, rows, M, N, K, 1, &w, with_bias ? &b : NULL, acc ? y0 : NULL, ldy);
            matmul(pool, y, ldy, x, ldx, M, N, K, &w, with_bias ? &b : NULL, acc);
            char what[160];
            snprintf(what, sizeof what, "fast matmul M=%d N=%d K=%d w=%s acc=%d bias=%d", M, N, K, sd_dtype_name(w.dtype), acc, with_bias);
            kt_close(what, y, ref, (size_t)M * ldy, 2e-6 * sqrt(K / 32.0 + 1));
            /* and its distance from the exact product: quantization error, a few per mille of the largest output */
            float *wv = kt_values(&w);
            for (int m = 0; m < M; m++)
                for (int n = 0; n < N; n++) {
                    double s = acc ? y0[(size_t)m * ldy + n] : 0.0;
                    for (int k = 0; k < K; k++) s += (double)x[(size_t)m * ldx + k] * wv[(size_t)n * K + k];
                    exact[(size_t)m * N + n] = s + (with_bias ? tensor_get(&b, (size_t)n) : 0.0);
                }
            free(wv);
            for (int m = 0; m < M; m++) memmove(y + (size_t)m * N, y + (size_t)m * ldy, (size_t)N * sizeof(float));
            double md = 0, mx = 0;
            for (size_t i = 0; i < (size_t)M * N; i++) { md = fmax(md, fabs(y[i] - exact[i])); mx = fmax(mx, fabs(exact[i])); }
            worst = fmax(worst, md / mx);
            CHECK(md <= 0.02 * mx, "%s: max|fast - exact| / max|exact| = %.3g", what, md / mx);
            free(x); free(y); free(y0); free(ref); free(exact); free(rows);
            kt_free_tensor(&b);
            if (dtype_is_block(w.dtype)) free((void *)(uintptr_t)w.data); else kt_free_tensor(&w);
        }
    {   /* convolutions: B H W Cin Cout k s pad pad_end */
        static const int cshapes[][9] = {{2, 7, 9, 32, 20, 3, 1, 1, 1}, {1, 17, 16, 64, 40, 3, 2, 1, 1}, {1, 21, 15, 96, 33, 3, 2, 0, 1},
                                         {2, 6, 6, 32, 8, 1, 1, 0, 0}, {1, 12, 13, 64, 70, 3, 1, 1, 1},
                                         /* K chunks of 128 channels (9 taps) packed 32 channels at a time: 128 + 128 + 64;
                                            96 + 64 at stride 2; 800 pixels wide, whose chunks shrink to 96 channels so
                                            that a tile's input rows fit the band */
                                         {1, 6, 7, 320, 40, 3, 1, 1, 1}, {1, 9, 8, 160, 33, 3, 2, 1, 1}, {1, 3, 800, 256, 8, 3, 1, 1, 1}};
        for (int si = 0; si < (int)(sizeof cshapes / sizeof cshapes[0]); si++)
            for (int di = 0; di < 4; di++) {
                const int *S = cshapes[si];
                int B = S[0], H = S[1], W = S[2], Cin = S[3], Cout = S[4], k = S[5], s = S[6], pad = S[7], pe = S[8], taps = k * k;
                int Ho = (H + pad + pe - k) / s + 1, Wo = (W + pad + pe - k) / s + 1, M = B * Ho * Wo;
                sd_tensor w = di < 3 ? kt_tensor(kt_dtypes[di], Cout, Cin, k, k, 1.0f) : kt_block_tensor(SD_Q8_0, Cout, (int64_t)Cin * taps);
                sd_tensor b = kt_tensor(SD_F32, Cout, 0, 0, 0, 1.0f);
                float *x = kt_floats((size_t)B * H * W * Cin, 1.0f), *y = (float *)malloc((size_t)M * Cout * sizeof(float));
                double *ref = (double *)malloc((size_t)M * Cout * sizeof(double));
                const float **rows = (const float **)malloc((size_t)M * taps * sizeof(float *));
                for (int m = 0; m < M; m++)
                    for (int t = 0; t < taps; t++) {
                        int bi = m / (Ho * Wo), oy = m % (Ho * Wo) / Wo, ox = m % Wo, iy = oy * s + t / k - pad, ix = ox * s + t % k - pad;
                        rows[(size_t)m * taps + t] = iy < 0 || iy >= H || ix < 0 || ix >= W ? NULL : x + (((size_t)bi * H + iy) * W + ix) * Cin;
                    }
                kq_ref(ref, Cout, rows, M, Cout, (int64_t)Cin * taps, taps, &w, si % 2 ? &b : NULL, NULL, 0);
                conv2d(pool, y, x, B, H, W, Cin, &w, si % 2 ? &b : NULL, Cout, k, s, pad, pe);
                char what[160];
                snprintf(what, sizeof what, "fast conv2d %dx%dx%dx%d -> %d k=%d s=%d pad=(%d,%d) w=%s", B, H, W, Cin, Cout, k, s, pad, pe, sd_dtype_name(w.dtype));
                kt_close(what, y, ref, (size_t)M * Cout, 2e-6 * sqrt(Cin * taps / 32.0 + 1));
                if (B == 1 && pad == pe) {   /* a band of output rows from a band of input rows, with ReLU (TAESD's convs): the same bits, clamped */
                    int y0 = Ho / 3, n = Ho - y0 - Ho / 4, x_y0 = y0 * s - pad > 0 ? y0 * s - pad : 0, same = 1;
                    float *band = (float *)malloc((size_t)n * Wo * Cout * sizeof(float));
                    conv2d_rows(pool, band, Cout, x + (size_t)x_y0 * W * Cin, x_y0, H, W, Cin, &w, si % 2 ? &b : NULL, Cout, k, s, pad, y0, n, Wo, CONV_RELU);
                    for (size_t i = 0; i < (size_t)n * Wo * Cout; i++) {
                        float v = y[(size_t)y0 * Wo * Cout + i];
                        same &= band[i] == (v < 0.0f ? 0.0f : v);
                    }
                    CHECK(same, "%s: output rows %d..%d with ReLU from input rows %d on differ from the whole conv's", what, y0, y0 + n - 1, x_y0);
                    free(band);
                }
                free(x); free(y); free(ref); free(rows);
                kt_free_tensor(&b);
                if (dtype_is_block(w.dtype)) free((void *)(uintptr_t)w.data); else kt_free_tensor(&w);
            }
    }
    {   /* the VAE's upsampling phases read a band of exactly (rows + 2) x (W + 2) pixels: not one past
           it (ASan watches the exact buffer), and the same bits as from a band with room after it */
        int rows = 5, W = 7, C = 64, N = 40, same = 1;
        size_t band = (size_t)(rows + 2) * (W + 2) * C;
        sd_tensor wp = kt_tensor(SD_F32, N, C, 2, 2, 1.0f), bias = kt_tensor(SD_F32, N, 0, 0, 0, 1.0f);
        float *xb = kt_floats(band, 1.0f), *roomy = (float *)calloc(band + (size_t)4 * C, sizeof(float));
        float *y = (float *)malloc((size_t)rows * W * N * sizeof(float)), *y2 = (float *)malloc((size_t)rows * W * N * sizeof(float));
        memcpy(roomy, xb, band * sizeof(float));
        for (int ph = 0; ph < 4; ph++) {
            vae_phase_conv(pool, y, N, xb, rows, W, C, ph >> 1, ph & 1, &wp, &bias, N);
            vae_phase_conv(pool, y2, N, roomy, rows, W, C, ph >> 1, ph & 1, &wp, &bias, N);
            same &= !memcmp(y, y2, (size_t)rows * W * N * sizeof(float));
        }
        CHECK(same, "fast mode: the upsampling phases of an exactly sized band differ from those of a larger buffer");
        free(xb), free(roomy), free(y), free(y2);
        kt_free_tensor(&wp), kt_free_tensor(&bias);
    }
    {   /* what stays exact in the fast mode: few rows (dot products), depths not a multiple of 32 */
        sd_tensor w = kt_tensor(SD_F16, 40, 36, 0, 0, 1.0f), cw = kt_tensor(SD_F16, 8, 4, 3, 3, 1.0f), w64 = kt_tensor(SD_F16, 40, 64, 0, 0, 1.0f);
        float *x = kt_floats(100 * 64, 1.0f), a[100 * 40], e[100 * 40];
        int ok = 1;
        for (int pass = 0; pass < 2; pass++) {
            sd_pool_set_quant(pool, pass ? SD_QUANT_EXACT : SD_QUANT_FAST);
            float *o = pass ? e : a;
            matmul(pool, o, 40, x, 36, 100, 40, 36, &w, NULL, 0);
            matmul(pool, o + 4000 - Q8_MIN_M * 40, 40, x, 64, Q8_MIN_M, 40, 64, &w64, NULL, 0);   /* K = 64, but few rows */
            conv2d(pool, o, x, 1, 10, 9, 4, &cw, NULL, 8, 3, 1, 1, 1);
        }
        ok = !memcmp(a, e, sizeof a);
        CHECK(ok, "fast mode: K = 36, 4-channel convolutions and %d-row products differ from the exact mode", Q8_MIN_M);
        free(x);
        kt_free_tensor(&w); kt_free_tensor(&cw); kt_free_tensor(&w64);
    }
    sd_pool_set_quant(pool, SD_QUANT_EXACT);
    printf("  fast mode (%s, Q8_MR %d): worst max|fast - exact| / max|exact| %.4f\n", SD_SIMD, Q8_MR, worst);
}

static void test_kernels(void)
{
    kt_pool *p = kt_pool_new(2);
    test_kernels_matmul(&p->pool);
    test_kernels_blocks(&p->pool);
    test_kernels_q8(&p->pool);
    test_kernels_conv(&p->pool);
    test_kernels_attention(&p->pool);
    test_kernels_norms(&p->pool);
    test_kernels_lora(&p->pool);
    kt_pool_free(p);
    test_kernels_elementwise();
    test_kernels_pool();
    test_kernels_spread();
    test_kernels_threads();
}

/* UNet tests: every model under GOLDEN_DIR/models/ that has GOLDEN_DIR/NAME/unet.safetensors,
   in every layout present (NAME.safetensors, NAME-fp16.safetensors, NAME-diffusers/unet/...). */

typedef struct unet_probe_check { golden_file *g; const char *label; int checked; } unet_probe_check;

/* Compares an intermediate activation with case0.debug.NAME when the golden has it. */
static void unet_check_debug(void *user, const char *name, const float *x, int B, int H, int W, int C)
{
    unet_probe_check *pc = (unet_probe_check *)user;
    char key[128], what[512];
    snprintf(key, sizeof key, "case0.debug.%s", name);
    const sd_tensor *t = sd_safetensors_find(&pc->g->st, key);
    if (!t) return;
    int64_t n = (int64_t)B * C * H * W;
    if (!CHECK(t->dtype == SD_F32 && sd_tensor_numel(t) == n, "%s: %s has %lld values, the UNet gave %lld", pc->label, key, (long long)sd_tensor_numel(t), (long long)n)) return;
    float *nchw = (float *)malloc((size_t)n * sizeof(float));
    nhwc_to_nchw(host_pool(), nchw, x, B, C, H * W);
    snprintf(what, sizeof what, "%s %s", pc->label, key);
    check_close(what, nchw, (const float *)t->data, n, 2e-5);
    free(nchw);
    pc->checked++;
}

/* An arena over exactly `bytes` (64-aligned, so sd_arena_init skips nothing). */
static sd_arena unet_exact_arena(void **block, size_t bytes)
{
    sd_arena a;
    unsigned char *m = (unsigned char *)malloc(bytes + 64);
    *block = m;
    sd_arena_init(&a, m + (64 - (uintptr_t)m % 64) % 64, bytes);
    return a;
}

/* Sets up case c of a golden on the pool (the LoRA tests put each case's LoRAs on it); 0 if the
   case cannot run. */
typedef int (*unet_case_setup)(void *user, int c, sd_pool *pool);

/* Every case of one golden file through one checkpoint (setup, when given, before each). */
static void unet_run_cases(const sd_unet_model *u, golden_file *g, const char *label, sd_pool *pool, unet_case_setup setup, void *user)
{
    char key[64];
    for (int c = 0;; c++) {
        snprintf(key, sizeof key, "case%d.x", c);
        const sd_tensor *tx = sd_safetensors_find(&g->st, key);
        if (!tx) { CHECK(c > 0, "%s: no case0.x", g->path); break; }
        if (setup && !setup(user, c, pool)) continue;
        snprintf(key, sizeof key, "case%d.timesteps", c);
        const sd_tensor *tt = sd_safetensors_find(&g->st, key);
        snprintf(key, sizeof key, "case%d.context", c);
        const float *ctx = golden_f32(g, key, NULL);
        snprintf(key, sizeof key, "case%d.out", c);
        int64_t nout;
        const float *want = golden_f32(g, key, &nout);
        if (!CHECK(tx->ndim == 4 && tt && tt->dtype == SD_I64 && tt->shape[0] == tx->shape[0], "%s: case%d inputs malformed", g->path, c) || !ctx || !want) continue;
        int B = (int)tx->shape[0], h = (int)tx->shape[2], w = (int)tx->shape[3];
        float t[16];
        if (!CHECK(B <= 16 && nout == (int64_t)B * u->out_channels * h * w && sd_tensor_numel(tx) == (int64_t)B * u->in_channels * h * w,
                   "%s: case%d shapes do not fit the model", g->path, c)) continue;
        for (int b = 0; b < B; b++) { int64_t v; memcpy(&v, (const char *)tt->data + 8 * b, 8); t[b] = (float)v; }
        /* SDXL: y from the pooled text embedding and the size ids, as the pipeline builds it */
        unet_probe_check pc = {g, label, 0};
        float *y = NULL;
        snprintf(key, sizeof key, "case%d.text_embeds", c);
        const sd_tensor *tpool = sd_safetensors_find(&g->st, key);
        if (CHECK(!tpool == !sd_unet_add_dim(u), "%s: case%d: text_embeds %s but the UNet's added conditioning is %d wide", g->path, c,
                  tpool ? "given" : "absent", sd_unet_add_dim(u)) && tpool) {
            const float *pooled = golden_f32(g, key, NULL);
            snprintf(key, sizeof key, "case%d.time_ids", c);
            const float *ids = golden_f32(g, key, NULL);
            int P = tpool->ndim == 2 ? (int)tpool->shape[1] : 0;
            sd_error yerr = {0, ""};
            y = (float *)malloc((size_t)B * sd_unet_add_dim(u) * sizeof(float));
            for (int b = 0; b < B && ids && pooled; b++)
                CHECK(sd_unet_add_vector(u, pooled + (size_t)b * P, P, ids + 6 * b, y + (size_t)b * sd_unet_add_dim(u), &yerr) == SD_OK,
                      "%s: case%d: %s", g->path, c, yerr.message);
            /* the size ids' embeddings, [B·6, each] in the golden: what follows the pooled part of each y */
            int64_t ne;
            const float *emb = c == 0 && sd_safetensors_find(&g->st, "case0.debug.add_time_proj") ? golden_f32(g, "case0.debug.add_time_proj", &ne) : NULL;
            int each = (sd_unet_add_dim(u) - P) / 6;
            if (emb && CHECK(ne == (int64_t)B * 6 * each, "%s: add_time_proj size", g->path)) {
                float *got = (float *)malloc((size_t)ne * sizeof(float));
                char what[400];
                for (int b = 0; b < B; b++) memcpy(got + (size_t)b * 6 * each, y + (size_t)b * sd_unet_add_dim(u) + P, (size_t)6 * each * sizeof(float));
                snprintf(what, sizeof what, "%s case0.debug.add_time_proj", label);
                check_close(what, got, emb, ne, 2e-5);
                free(got);
                pc.checked++;
            }
        }
        /* LCM: the guidance embedding as diffusers computed it (timestep_cond) */
        snprintf(key, sizeof key, "case%d.timestep_cond", c);
        const sd_tensor *tcond = sd_safetensors_find(&g->st, key);
        if (!CHECK(!tcond == !sd_unet_guidance_dim(u) && (!tcond || sd_tensor_numel(tcond) == (int64_t)B * sd_unet_guidance_dim(u)),
                   "%s: case%d: timestep_cond %s but the UNet's guidance embedding is %d wide", g->path, c, tcond ? "given" : "absent",
                   sd_unet_guidance_dim(u))) { free(y); continue; }
        sd_unet_cond cond = {ctx, SD_TEXT_TOKENS, y, tcond ? golden_f32(g, key, NULL) : NULL};

        /* exactly the advertised arena bytes suffice, and all of them are used */
        size_t need = sd_unet_arena_bytes(u, B, h, w, SD_TEXT_TOKENS);
        void *block;
        sd_arena a = unet_exact_arena(&block, need);
        float *out = (float *)calloc((size_t)nout, sizeof(float));
        sd_error err = {0, ""};
        int rc;
        if (c == 0) rc = unet_forward(u, (const float *)tx->data, t, &cond, B, h, w, out, pool, &a, &err, unet_check_debug, &pc);
        else rc = sd_unet(u, (const float *)tx->data, t, &cond, B, h, w, out, pool, &a, &err);
        if (CHECK(rc == SD_OK, "%s case%d: %s", label, c, err.message)) {
            char what[400];
            snprintf(what, sizeof what, "%s case%d.out", label, c);
            check_close(what, out, want, nout, 2e-5);
            CHECK(a.peak == need, "%s case%d: sd_unet_arena_bytes says %zu, the pass peaked at %zu", label, c, need, a.peak);
            int ndebug = 0;
            for (int i = 0; i < g->st.count; i++) ndebug += !strncmp(g->st.tensors[i].name, "case0.debug.", 12);
            if (c == 0) CHECK(pc.checked == ndebug, "%s: %d of the golden's %d debug tensors compared", label, pc.checked, ndebug);
        }
        /* one byte less fails cleanly up front; and inside the pass (bypassing that check) too */
        sd_arena_init(&a, a.base, need - 1);
        CHECK(sd_unet(u, (const float *)tx->data, t, &cond, B, h, w, out, pool, &a, &err) == SD_ERR_MEMORY && a.used == 0,
              "%s case%d: sd_unet with one byte too few: %s", label, c, err.message);
        if (c == 0) {   /* the pass's own allocations fail cleanly too (it stops where it first peaks) */
            sd_arena_init(&a, a.base, need - 1);
            CHECK(unet_forward(u, (const float *)tx->data, t, &cond, B, h, w, out, pool, &a, &err, NULL, NULL) == SD_ERR_MEMORY,
                  "%s: a forward pass one byte short should fail with SD_ERR_MEMORY", label);
        }
        free(y);
        free(out);
        free(block);
    }
}

/* Sizes that do not halve evenly: 13x11 goes down as 7x6, 4x3, 2x2 and must come back up to
   the skips' sizes (nearest resize as PyTorch's interpolate(size=...)); no golden has such a
   size, so this checks the resize rule itself and that the pass runs within its arena bytes. */
static void unet_check_odd_size(const sd_unet_model *u, const float *context, sd_pool *pool, const char *label)
{
    static const int in5from3[5] = {0, 0, 1, 1, 2}, in7from4[7] = {0, 0, 1, 1, 2, 2, 3};
    int h = 13, w = 11, n = u->in_channels * h * w, ok = 1;
    for (int o = 0; o < 5; o++) ok &= nearest_source(o, 3, 5) == in5from3[o];
    for (int o = 0; o < 7; o++) ok &= nearest_source(o, 4, 7) == in7from4[o];
    for (int o = 0; o < 6; o++) ok &= nearest_source(o, 3, 6) == o / 2;
    CHECK(ok, "nearest_source does not pick PyTorch's source pixels");
    float *x = (float *)malloc((size_t)n * sizeof(float)), *out = (float *)malloc((size_t)u->out_channels * h * w * sizeof(float)), t = 321.5f;
    for (int i = 0; i < n; i++) x[i] = (float)((i * 7919) % 1000) / 500.0f - 1.0f;
    size_t need = sd_unet_arena_bytes(u, 1, h, w, SD_TEXT_TOKENS);
    void *block;
    sd_arena a = unet_exact_arena(&block, need);
    sd_error err = {0, ""};
    float *y = (float *)calloc((size_t)sd_unet_add_dim(u) + 1, sizeof(float));   /* SDXL: some added conditioning */
    for (int i = 0; i < sd_unet_add_dim(u); i++) y[i] = (float)(i % 7) / 7.0f;
    float *guidance = (float *)calloc((size_t)sd_unet_guidance_dim(u) + 1, sizeof(float));   /* LCM: guidance 8 */
    sd_guidance_embedding(7.0f, sd_unet_guidance_dim(u), guidance);
    sd_unet_cond cond = {context, SD_TEXT_TOKENS, sd_unet_add_dim(u) ? y : NULL, sd_unet_guidance_dim(u) ? guidance : NULL};
    if (CHECK(sd_unet(u, x, &t, &cond, 1, h, w, out, pool, &a, &err) == SD_OK, "%s at %dx%d: %s", label, h, w, err.message)) {
        int finite = 1;
        for (int i = 0; i < u->out_channels * h * w; i++) finite &= out[i] == out[i] && fabsf(out[i]) < 1e6f;
        CHECK(finite && a.peak == need, "%s at %dx%d: output not finite, or arena peak %zu != %zu", label, h, w, a.peak, need);
    }
    free(block);
    free(out);
    free(x);
    free(y);
    free(guidance);
}

/* Reverses the shape of tensor `name` in a safetensors header in place (same length), or renames
   it by changing its last character: broken checkpoints built in memory. */
static int unet_corrupt(unsigned char *bytes, const char *name, int rename)
{
    uint64_t hlen = 0;
    char key[300];
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | bytes[i];
    snprintf(key, sizeof key, "\"%s\"", name);
    char *hdr = (char *)bytes + 8, *end = hdr + hlen, *p = NULL;
    for (char *s = hdr; s + strlen(key) <= end; s++) if (!memcmp(s, key, strlen(key))) { p = s; break; }
    if (!p) return 0;
    if (rename) { p[strlen(key) - 2] = '_'; return 1; }
    char *sh = strstr(p, "\"shape\":[");
    if (!sh || sh > end) return 0;
    sh += 9;
    char *close = strchr(sh, ']');
    long dims[8];
    int nd = 0;
    for (char *q = sh; q < close && nd < 8; ) { dims[nd++] = strtol(q, &q, 10); if (*q == ',') q++; }
    char buf[128] = "";
    for (int i = nd - 1; i >= 0; i--) snprintf(buf + strlen(buf), sizeof buf - strlen(buf), "%ld%s", dims[i], i ? "," : "");
    if ((long)strlen(buf) != close - sh) return 0;
    memcpy(sh, buf, strlen(buf));
    return 1;
}

/* A missing and a mis-shaped tensor are reported by name, and nothing is left in the arena. */
static void unet_check_broken(const unsigned char *bytes, size_t size, int diffusers, const char *label)
{
    const char *pre = diffusers ? "" : "model.diffusion_model.";
    const char *victims[2][2] = {{"out.2.weight", "time_embed.0.weight"}, {"conv_out.weight", "time_embedding.linear_1.weight"}};
    for (int rename = 1; rename >= 0; rename--) {
        char name[200];
        snprintf(name, sizeof name, "%s%s", pre, victims[diffusers][rename ? 0 : 1]);
        unsigned char *copy = (unsigned char *)malloc(size);
        memcpy(copy, bytes, size);
        if (!CHECK(unet_corrupt(copy, name, rename), "%s: could not find '%s' to break", label, name)) { free(copy); continue; }
        sd_arena *a = test_arena(1u << 22);
        sd_safetensors st;
        sd_unet_model *u = NULL;
        sd_error err = {0, ""};
        int rc = sd_safetensors_open(&st, copy, size, a, &err);
        size_t used = a->used;
        if (CHECK(rc == SD_OK, "%s: broken copy does not open: %s", label, err.message)) {
            rc = sd_unet_load(&u, &st, 1, NULL, a, &err);
            CHECK(rc == (rename ? SD_ERR_MISSING : SD_ERR_SHAPE) && strstr(err.message, name) && a->used == used,
                  "%s: %s '%s' gave code %d, message '%s'", label, rename ? "missing" : "mis-shaped", name, rc, err.message);
        }
        free_arena(a);
        free(copy);
    }
}

/* One layout of a model against GOLDEN_DIR/NAME/unet.safetensors: every case (case0 with the
   debug activations), an odd size, and broken copies of the file. */
/* conv_in widened to `channels` inputs, the new ones with zero weights (f16 or f32 as the file's). */
typedef struct widen_edit { const char *name; int channels; void *data; } widen_edit;

static int widen_conv_in(sd_tensor *t, char *name, size_t cap, void *user)
{
    widen_edit *e = (widen_edit *)user;
    (void)cap;
    if (strcmp(name, e->name) || t->ndim != 4) return 1;
    size_t es = sd_dtype_size(t->dtype), tap = (size_t)(t->shape[2] * t->shape[3]) * es, in = (size_t)t->shape[1];
    unsigned char *w = (unsigned char *)calloc((size_t)t->shape[0] * e->channels * tap, 1);
    for (int64_t o = 0; o < t->shape[0]; o++) memcpy(w + (size_t)o * e->channels * tap, (const unsigned char *)t->data + (size_t)o * in * tap, in * tap);
    t->shape[1] = e->channels;
    t->nbytes = (size_t)t->shape[0] * e->channels * tap;
    t->data = e->data = w;
    return 1;
}

/* Inpainting (9) and InstructPix2Pix (8) UNets in this file's layout: a copy whose conv_in takes
   the extra channels with zero weights loads with those channels and gives the 4-channel UNet's
   output whatever the extra channels hold. */
static void unet_check_wide_input(const sd_safetensors *st, const sd_unet_model *u4, const sd_safetensors *meta, const char *label, sd_pool *pool)
{
    const char *conv_in = sd_safetensors_find(st, "conv_in.weight") ? "conv_in.weight" : "model.diffusion_model.input_blocks.0.0.weight";
    int h = 8, w = 8, B = 2, add = sd_unet_add_dim(u4);
    size_t hw = (size_t)h * w, nctx = (size_t)B * SD_TEXT_TOKENS * u4->context_dim;
    float *ctx = kt_floats(nctx, 1), *y = kt_floats((size_t)B * add + 1, 1), *x4 = kt_floats((size_t)B * 4 * hw, 1), *xw = kt_floats((size_t)B * 9 * hw, 1);
    float *out4 = (float *)malloc((size_t)B * 4 * hw * sizeof(float)), *outw = (float *)malloc((size_t)B * 4 * hw * sizeof(float)), t[2] = {700, 300};
    sd_unet_cond cond = {ctx, SD_TEXT_TOKENS, add ? y : NULL, NULL};
    sd_arena *a = test_arena(sd_unet_arena_bytes(u4, B, h, w, SD_TEXT_TOKENS));
    sd_error err;
    int ok = sd_unet(u4, x4, t, &cond, B, h, w, out4, pool, a, &err) == SD_OK;
    for (int ch = 8; ch <= 9 && ok; ch++) {
        widen_edit e = {conv_in, ch, NULL};
        size_t size;
        unsigned char *bytes = rewrite_file(st, SD_DTYPE_COUNT, widen_conv_in, &e, &size);
        sd_arena *ta = test_arena(1u << 24);
        sd_safetensors wide;
        sd_unet_model *uw;
        for (int b = 0; b < B; b++) memcpy(xw + (size_t)b * ch * hw, x4 + (size_t)b * 4 * hw, 4 * hw * sizeof(float));   /* then random extra channels */
        if (CHECK(sd_safetensors_open(&wide, bytes, size, ta, &err) == SD_OK && sd_unet_load(&uw, &wide, 1, meta, ta, &err) == SD_OK,
                  "%s with %d input channels: %s", label, ch, err.message)) {
            CHECK(uw->in_channels == ch, "%s: the widened UNet reads %d input channels, not %d", label, uw->in_channels, ch);
            char what[400];
            snprintf(what, sizeof what, "%s with %d input channels (zero weights on the extra ones)", label, ch);
            if (CHECK(sd_unet(uw, xw, t, &cond, B, h, w, outw, pool, a, &err) == SD_OK, "%s: %s", what, err.message))
                check_close(what, outw, out4, (int64_t)B * 4 * hw, 1e-6);
        }
        free_arena(ta);
        free(bytes);
        free(e.data);
    }
    free_arena(a);
    free(ctx); free(y); free(x4); free(xw); free(out4); free(outw);
}

static void unet_test_file(const golden_model *gm, int layout, sd_pool *pool)
{
    char rel[512], label[300], path[1600];
    snprintf(rel, sizeof rel, "%.200s/unet.safetensors", gm->name);
    golden_file *g = golden_open(rel);
    if (!g) return;
    n_cases++;
    snprintf(path, sizeof path, "%s%s", gm->path[layout], layout == LAYOUT_DIFFUSERS ? "/unet/diffusion_pytorch_model.safetensors" : "");
    size_t size;
    unsigned char *bytes = read_file(path, &size);
    sd_arena *a = test_arena(1u << 24);
    sd_safetensors st;
    sd_unet_model *u = NULL;
    sd_error err = {0, ""};
    snprintf(label, sizeof label, "unet %.250s", strrchr(gm->path[layout], '/') + 1);
    /* a diffusers unet/ file keeps its heads in config.json: what sd_model_load reads from there */
    loaded_model lm;
    const sd_safetensors *meta = NULL;
    memset(&lm, 0, sizeof lm);
    int usable = layout != LAYOUT_DIFFUSERS || !open_diffusers_model(&lm, gm->path[layout]);   /* else noted or failed there */
    if (layout == LAYOUT_DIFFUSERS && usable) meta = lm.model->meta;
    if (usable && CHECK(bytes != NULL, "%s: cannot read", path) &&
        CHECK(sd_safetensors_open(&st, bytes, size, a, &err) == SD_OK, "%s: %s", path, err.message)) {
        int rc = sd_unet_load(&u, &st, 1, meta, a, &err);
        if (rc == SD_ERR_UNSUPPORTED) printf("note: %s: %s; skipped\n", label, err.message);
        else if (CHECK(rc == SD_OK, "%s: %s", label, err.message)) {
            unet_run_cases(u, g, label, pool, NULL, NULL);
            const float *ctx = golden_f32(g, "case0.context", NULL);
            if (ctx) unet_check_odd_size(u, ctx, pool, label);
            unet_check_broken(bytes, size, !sd_safetensors_find(&st, "model.diffusion_model.input_blocks.0.0.weight"), label);
            if (u->in_channels == 4) unet_check_wide_input(&st, u, meta, label, pool);
        }
    }
    free_arena(a);
    free(bytes);
    unload_model(&lm);
    golden_close(g);
}

static void test_unet(void)
{
    sd_arena *pa = test_arena(pool_arena_bytes(1) + 64);
    sd_pool pool;
    sd_error err;
    int n = golden_models_read(), checked = 0;
    if (!CHECK(pool_init(&pool, 1, pa, &err) == SD_OK, "pool: %s", err.message)) { free_arena(pa); return; }
    /* each model with a unet golden, in every layout present */
    for (int i = 0; i < n; i++) {
        if (!golden_exists(golden_models[i].name, "unet.safetensors")) continue;
        for (int k = 0; k < LAYOUTS; k++)
            if (*golden_models[i].path[k]) unet_test_file(&golden_models[i], k, &pool);
        checked++;
    }
    if (!checked && !n) note_no_models();
    else if (!checked) note_absent("unet", "no model of %s/models has a NAME/unet.safetensors, UNet goldens skipped", golden_dir);
    /* arguments */
    {
        float x = 0;
        unsigned char mem[256];
        sd_arena a;
        sd_arena_init(&a, mem, sizeof mem);
        sd_unet_cond cond = {&x, SD_TEXT_TOKENS, NULL, NULL};
        CHECK(sd_unet(NULL, &x, &x, &cond, 2, 8, 8, &x, &pool, &a, &err) == SD_ERR_ARG, "sd_unet(NULL model) should be SD_ERR_ARG");
        CHECK(sd_unet_arena_bytes(NULL, 2, 8, 8, SD_TEXT_TOKENS) == (size_t)-1, "sd_unet_arena_bytes(NULL) should be SIZE_MAX");
    }
    pool_free(&pool);
    free_arena(pa);
}

/* Tests of the CLIP tokenizer (section 5). */

#define LIT(s) (s), sizeof(s) - 1   /* a string literal and its length, NULs included */

/* The vocabulary every tokenizer test uses, loaded once from merges_path (and its sibling
   vocab.json when there is one, SD_TEXT_TOKENS); NULL when merges.txt is not there. */
static sd_clip_vocab *tok_vocab;
static sd_arena *tok_vocab_arena;

static int32_t tok_id_of(const char *token)
{
    int32_t id;
    for (id = 0; id < SD_CLIP_VOCAB_SIZE; id++) {
        size_t n = 0;
        const char *s = sd_clip_token_text(tok_vocab, id, &n);
        if (s && n == strlen(token) && !memcmp(s, token, n)) return id;
    }
    return -1;
}

/* Tokenizes text[0..size) into ids[77] with an arena of exactly the documented scratch size. */
static int tok_run(const char *text, size_t size, sd_clip_pad pad, int32_t *ids, size_t *length, sd_error *err)
{
    sd_arena *a = test_arena(sd_clip_scratch_bytes(size));
    int rc = sd_clip_tokenize(tok_vocab, text, size, pad, ids, length, a, err);
    CHECK(a->used == 0, "tokenizer: scratch arena not reset (%zu bytes used)", a->used);
    free_arena(a);
    return rc;
}

/* All ids (untruncated) of text[0..size). Caller frees. */
static int32_t *tok_all(const char *text, size_t size, sd_clip_pad pad, size_t *count)
{
    sd_arena *a = test_arena(sd_clip_scratch_bytes(size));
    sd_error err;
    int32_t *ids;
    *count = 0;
    if (sd_clip_token_ids(tok_vocab, text, size, pad, NULL, 0, count, a, &err)) {
        CHECK(0, "sd_clip_token_ids: %s", err.message);
        free_arena(a);
        return NULL;
    }
    ids = (int32_t *)malloc((*count + 1) * sizeof(int32_t));
    if (sd_clip_token_ids(tok_vocab, text, size, pad, ids, *count, count, a, &err)) CHECK(0, "sd_clip_token_ids: %s", err.message);
    free_arena(a);
    return ids;
}

static int tok_same(const char *a, size_t na, const char *b, size_t nb, sd_clip_pad pad)
{
    size_t ca, cb;
    int32_t *x = tok_all(a, na, pad, &ca), *y = tok_all(b, nb, pad, &cb);
    int same = x && y && ca == cb && (ca == 0 || !memcmp(x, y, ca * sizeof(int32_t)));
    free(x);
    free(y);
    return same;
}

/* The token texts of ids, joined, with "</w>" turned into a space: the cleaned-up text back,
   for prompts of printable ASCII. */
static void tok_detokenize(const int32_t *ids, size_t n, char *out, size_t cap)
{
    size_t i, w = 0;
    for (i = 0; i < n; i++) {
        size_t len, j;
        const char *s = sd_clip_token_text(tok_vocab, ids[i], &len);
        for (j = 0; s && j < len && w + 1 < cap; j++) {
            if (j + 4 <= len && !memcmp(s + j, "</w>", 4)) { out[w++] = ' '; j += 3; }
            else out[w++] = s[j];
        }
    }
    out[w] = 0;
}

/* Golden prompt i of tokenizer.safetensors (its UTF-8 bytes as a U8 tensor); NULL, and a
   failure, when it is not there. */
static const sd_tensor *golden_prompt(golden_file *g, int i)
{
    char name[32];
    snprintf(name, sizeof name, "prompt.%d", i);
    const sd_tensor *p = sd_safetensors_find(&g->st, name);
    return CHECK(p && p->dtype == SD_U8, "%s: no U8 tensor %s", g->path, name) ? p : NULL;
}

static void test_tokenizer_golden(void)
{
    golden_file *g = golden_open("tokenizer/tokenizer.safetensors");
    const char *count_text;
    const sd_tensor *ids1, *ids2, *len1, *len2;
    char *untruncated_json, *next_untruncated;
    int n, i, bad = 0;
    if (!g) {
        if (golden_absent("tokenizer/tokenizer.safetensors")) note_absent("tokenizer", "no %s/tokenizer/tokenizer.safetensors, golden prompts skipped", golden_dir);
        return;
    }
    n_cases++;
    count_text = sd_safetensors_meta(&g->st, "n_prompts");
    ids1 = sd_safetensors_find(&g->st, "input_ids_sd1");
    ids2 = sd_safetensors_find(&g->st, "input_ids_sd2");
    len1 = sd_safetensors_find(&g->st, "length_sd1");
    len2 = sd_safetensors_find(&g->st, "length_sd2");
    n = count_text ? atoi(count_text) : 0;
    if (!CHECK(n > 0 && ids1 && ids2 && len1 && len2 && ids1->dtype == SD_I64 && ids2->dtype == SD_I64 &&
               len1->dtype == SD_I64 && len2->dtype == SD_I64 && sd_tensor_numel(ids1) == (int64_t)n * 77 &&
               sd_tensor_numel(ids2) == (int64_t)n * 77 && sd_tensor_numel(len1) == n && sd_tensor_numel(len2) == n,
               "%s: n_prompts, input_ids_sd1/sd2 [n,77] and length_sd1/sd2 [n] (I64) expected", g->path)) {
        golden_close(g);
        return;
    }
    {   /* prompts.json (for debugging) also has the untruncated SD1 count of each prompt */
        char path[1024];
        size_t size;
        snprintf(path, sizeof path, "%s/tokenizer/prompts.json", golden_dir);
        untruncated_json = (char *)read_file(path, &size);
        next_untruncated = untruncated_json;
    }
    for (i = 0; i < n; i++) {
        const sd_tensor *p = golden_prompt(g, i);
        int mode;
        if (!p) continue;
        for (mode = 0; mode < 2; mode++) {
            const sd_tensor *want = mode ? ids2 : ids1, *want_len = mode ? len2 : len1;
            int32_t got[77];
            size_t length = 0;
            sd_error err;
            int k, at = -1;
            int64_t w[77], wl;
            int rc = tok_run((const char *)p->data, p->nbytes, mode ? SD_CLIP_PAD_EXCLAMATION : SD_CLIP_PAD_EOS, got, &length, &err);
            memcpy(w, (const int64_t *)want->data + 77 * i, sizeof w);
            memcpy(&wl, (const int64_t *)want_len->data + i, sizeof wl);
            for (k = 0; k < 77 && at < 0 && !rc; k++) if (got[k] != w[k]) at = k;
            /* (the goldens' length counts the 77 ids before padding; ours is untruncated) */
            if (!CHECK(rc == 0 && at < 0 && (int64_t)(length < 77 ? length : 77) == wl,
                       "tokenizer golden prompt %d (%s) \"%.*s\": %s at position %d: expected %lld, got %d; length expected %lld, got %zu",
                       i, mode ? "sd2" : "sd1", (int)(p->nbytes > 200 ? 200 : p->nbytes), (const char *)p->data,
                       rc ? err.message : "ids differ", at, at >= 0 ? (long long)w[at] : 0LL, at >= 0 ? got[at] : 0,
                       (long long)wl, length))
                bad++;
            if (mode == 0 && next_untruncated && (next_untruncated = strstr(next_untruncated, "\"n_tokens_untruncated\":"))) {
                long want_untruncated = strtol(next_untruncated + 23, NULL, 10);
                next_untruncated += 23;
                CHECK(rc == 0 && (long)length == want_untruncated, "tokenizer golden prompt %d: untruncated length %zu, prompts.json has %ld",
                      i, length, want_untruncated);
            }
        }
    }
    free(untruncated_json);
    printf("tokenizer: %d golden prompts, %d of %d tokenizations match\n", n, 2 * n - bad, 2 * n);
    golden_close(g);
}

/* Prompts of our own, each with a result that follows from the rules. */
static void test_tokenizer_cases(void)
{
    int32_t ids[77], ref[77];
    size_t length, i, count;
    sd_error err;
    char text[20001], back[20001];
    int32_t cat = tok_id_of("cat</w>"), excl = tok_id_of("!</w>");
    int ok;

    /* empty and blank prompts: BOS, EOS, padding */
    CHECK(tok_run(LIT(""), SD_CLIP_PAD_EOS, ids, &length, &err) == 0 && length == 2 && ids[0] == SD_CLIP_BOS &&
          ids[1] == SD_CLIP_EOS && ids[76] == SD_CLIP_EOS, "tokenizer: empty prompt");
    CHECK(tok_run(NULL, 0, SD_CLIP_PAD_EXCLAMATION, ids, &length, &err) == 0 && length == 2 && ids[1] == SD_CLIP_EOS &&
          ids[2] == 0 && ids[76] == 0, "tokenizer: NULL empty prompt, sd2 padding");
    CHECK(tok_run(LIT(" \t\n\r\n \xc2\xa0\xe3\x80\x80 "), SD_CLIP_PAD_EOS, ids, &length, &err) == 0 && length == 2,
          "tokenizer: a prompt of only (Unicode) spaces has no tokens");

    /* 10,000 characters: "cat " 2500 times is 2500 tokens, cut to 75 */
    for (i = 0; i < 10000; i++) text[i] = "cat "[i % 4];
    ok = tok_run(text, 10000, SD_CLIP_PAD_EOS, ids, &length, &err) == 0;
    for (i = 1; ok && i < 76; i++) ok = ids[i] == cat;
    CHECK(ok && cat >= 0 && length == 2502 && ids[0] == SD_CLIP_BOS && ids[76] == SD_CLIP_EOS,
          "tokenizer: 10,000 characters (length %zu)", length);
    /* one 10,000-letter word: its tokens spell it back */
    for (i = 0; i < 10000; i++) text[i] = (char)('a' + (i * 7 + i / 13) % 26);
    {
        int32_t *all = tok_all(text, 10000, SD_CLIP_PAD_EOS, &count);
        tok_detokenize(all, count, back, sizeof back);
        CHECK(all && count > 1000 && strlen(back) == 10001 && !memcmp(back, text, 10000) && back[10000] == ' ',
              "tokenizer: a 10,000-letter word spells itself back (%zu tokens)", count);
        free(all);
    }
    /* printable ASCII round trip: lower-cased, whitespace collapsed */
    {
        const char *s = "A Photo of  an ASTRONAUT riding a horse on MARS,\t4k, (masterpiece:1.2)";
        int32_t *all = tok_all(s, strlen(s), SD_CLIP_PAD_EOS, &count);
        tok_detokenize(all, count, back, sizeof back);
        CHECK(!strcmp(back, "a photo of an astronaut riding a horse on mars , 4 k , ( masterpiece : 1 . 2 ) "),
              "tokenizer: round trip gives \"%s\"", back);
        free(all);
    }

    /* invalid UTF-8 reads as U+FFFD per maximal invalid subsequence (Python's errors="replace") */
    CHECK(tok_same(LIT("a\xed\xa0\x80z"), LIT("a\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdz"), SD_CLIP_PAD_EOS),
          "tokenizer: UTF-8-encoded surrogate = three U+FFFD");
    CHECK(tok_same(LIT("a\xc0\xafz"), LIT("a\xef\xbf\xbd\xef\xbf\xbdz"), SD_CLIP_PAD_EOS), "tokenizer: overlong '/' = two U+FFFD");
    CHECK(tok_same(LIT("x\xf0\x9f\x90 y\xe2\x82"), LIT("x\xef\xbf\xbd y\xef\xbf\xbd"), SD_CLIP_PAD_EOS),
          "tokenizer: truncated sequences = one U+FFFD each");
    CHECK(tok_same(LIT("\xff\xfe\x80"), LIT("\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"), SD_CLIP_PAD_EOS), "tokenizer: stray bytes");
    CHECK(!tok_same(LIT("a\xed\xa0\x80z"), LIT("az"), SD_CLIP_PAD_EOS), "tokenizer: invalid bytes are not dropped");
    /* NUL bytes inside the length are characters, which ftfy removes as control characters */
    CHECK(tok_same(LIT("nul\0char"), LIT("nulchar"), SD_CLIP_PAD_EOS) && !tok_same(LIT("nul\0char"), LIT("nul"), SD_CLIP_PAD_EOS),
          "tokenizer: NUL inside the prompt");

    /* special tokens: literal ones are cut out; SD2 makes every '!' the pad token 0 */
    CHECK(tok_run(LIT("a!!<|endoftext|>b"), SD_CLIP_PAD_EXCLAMATION, ids, &length, &err) == 0 && length == 7 &&
          ids[2] == 0 && ids[3] == 0 && ids[4] == SD_CLIP_EOS && ids[6] == SD_CLIP_EOS && ids[7] == 0,
          "tokenizer: sd2 '!' and <|endoftext|>");
    CHECK(tok_run(LIT("a!"), SD_CLIP_PAD_EOS, ids, &length, &err) == 0 && length == 4 && ids[2] == excl,
          "tokenizer: sd1 keeps '!' a byte symbol");
    CHECK(tok_run(LIT("\xef\xbc\x81"), SD_CLIP_PAD_EXCLAMATION, ids, &length, &err) == 0 && length == 3 && ids[1] == excl,
          "tokenizer: fullwidth '!' becomes '!' after the special-token split, so it stays a byte symbol");

    /* clean-up rules, each against a plainer spelling of the same prompt */
    CHECK(tok_same(LIT("caf&eacute; &amp; cr&Egrave;me"), LIT("caf\xc3\xa9 & cr\xc3\xa8me"), SD_CLIP_PAD_EOS), "tokenizer: entities");
    CHECK(tok_same(LIT("<i>caf&eacute;</i>"), LIT("<i>caf& eacute;</i>"), SD_CLIP_PAD_EOS), "tokenizer: no entities where '<' is");
    CHECK(tok_same(LIT("caf\xc3\x83\xc2\xa9 \xe2\x80\x9cok\xe2\x80\x9d"), LIT("caf\xc3\xa9 \"ok\""), SD_CLIP_PAD_EOS),
          "tokenizer: mojibake and curly quotes");
    CHECK(tok_same(LIT("\xe2\x82\xac caf\xc3\x83\xc2\xa9"), LIT("\xe2\x82\xac caf\xc3\xa9"), SD_CLIP_PAD_EOS),
          "tokenizer: mojibake next to text that no single encoding explains");
    CHECK(tok_same(LIT("voil\xc3\x83 le travail"), LIT("voil\xc3\xa0 le travail"), SD_CLIP_PAD_EOS) &&
          !tok_same(LIT("voil\xc3\x83 le travail"), LIT("voil\xc3\xa0le travail"), SD_CLIP_PAD_EOS),
          "tokenizer: mojibake whose byte A0 became a space");
    CHECK(tok_same(LIT("\xc3\xa2\xe2\x82\xac\xc5\x93 like this \xc3\xa2\xe2\x82\xac\xef\xbf\xbd"), LIT("\" like this \xef\xbf\xbd"),
                   SD_CLIP_PAD_EOS),
          "tokenizer: mojibake that lost a byte");
    CHECK(tok_same(LIT("\xef\xac\x81ne \xef\xbc\xa6\xef\xbd\x95\xef\xbd\x8c\xef\xbd\x8c"), LIT("fine full"), SD_CLIP_PAD_EOS),
          "tokenizer: ligature and fullwidth letters");
    CHECK(tok_same(LIT("E\xcc\x81TE\xcc\x81 \xce\x9f\xce\x94\xce\x9f\xce\xa3"), LIT("\xc3\xa9t\xc3\xa9 \xce\xbf\xce\xb4\xce\xbf\xcf\x82"),
                   SD_CLIP_PAD_EOS),
          "tokenizer: NFC, lower-casing and final sigma");
    CHECK(!tok_same(LIT("\xce\x9f\xce\x94\xce\x9f\xce\xa3"), LIT("\xce\xbf\xce\xb4\xce\xbf\xcf\x83"), SD_CLIP_PAD_EOS),
          "tokenizer: a final capital sigma is not a medial sigma");
    CHECK(tok_same(LIT("\x1b[31mred\x1b[0m"), LIT("red"), SD_CLIP_PAD_EOS), "tokenizer: terminal escapes");
    CHECK(tok_same(LIT("\xc4\xb0stanbul"), LIT("i\xcc\x87stanbul"), SD_CLIP_PAD_EOS), "tokenizer: dotted capital I");

    /* the 77-id form agrees with the untruncated list */
    {
        const char *s = "a majestic lion, golden hour, 35mm, f/1.8, bokeh, highly detailed, trending on artstation";
        int32_t *all = tok_all(s, strlen(s), SD_CLIP_PAD_EOS, &count);
        ok = tok_run(s, strlen(s), SD_CLIP_PAD_EOS, ref, &length, &err) == 0 && length == count + 2 && all;
        for (i = 0; ok && i < count; i++) ok = ref[1 + i] == all[i];
        CHECK(ok && ref[1 + count] == SD_CLIP_EOS, "tokenizer: sd_clip_tokenize = [BOS] + sd_clip_token_ids + [EOS]");
        free(all);
    }
}

static void test_tokenizer_errors(const unsigned char *merges, size_t size)
{
    sd_error err;
    int32_t ids[77];
    size_t length = 99, used;
    sd_arena *a;
    sd_clip_vocab *v;
    unsigned char *m;
    char text[1000];
    int rc;

    /* a scratch arena that is too small: a clear error, the arena as it was */
    memset(text, 'x', sizeof text);
    a = test_arena(4096);
    sd_arena_alloc(a, 100, &err);
    used = a->used;
    rc = sd_clip_tokenize(tok_vocab, text, sizeof text, SD_CLIP_PAD_EOS, ids, &length, a, &err);
    CHECK(rc == SD_ERR_MEMORY && a->used == used && length == 0 && strstr(err.message, "arena"),
          "tokenizer: small scratch arena gives SD_ERR_MEMORY and is restored (rc %d, %s)", rc, err.message);
    rc = sd_clip_vocab_load(&v, merges, size, NULL, 0, a, &err);
    CHECK(rc == SD_ERR_MEMORY && a->used == used && !v, "tokenizer: vocabulary in a small arena gives SD_ERR_MEMORY");
    free_arena(a);
    CHECK(sd_clip_tokenize(NULL, "a", 1, SD_CLIP_PAD_EOS, ids, &length, tok_vocab_arena, &err) == SD_ERR_ARG,
          "tokenizer: NULL vocabulary");

    /* malformed merges.txt: each with its own message, the arena as it was */
    m = (unsigned char *)malloc(size + 64);
    a = test_arena(sd_clip_vocab_arena_bytes(size + 64));
    used = a->used;
#define BAD_MERGES(what, len, expect) do { \
        rc = sd_clip_vocab_load(&v, m, (len), NULL, 0, a, &err); \
        CHECK(rc == SD_ERR_FORMAT && !v && a->used == used && strstr(err.message, expect), \
              "tokenizer: %s gives \"%s\" (rc %d: %s)", what, expect, rc, err.message); \
    } while (0)
    memcpy(m, merges, size);
    BAD_MERGES("empty merges.txt", 0, "#version");
    m[0] = 'x';
    BAD_MERGES("no header", size, "#version");
    memcpy(m, merges, size);
    {
        size_t line2 = (size_t)((const unsigned char *)memchr(m, '\n', size) - m) + 1, sp;
        for (sp = line2; m[sp] != ' '; sp++) {}
        m[sp] = '_';
        BAD_MERGES("a line without a space", size, "line 2: expected two symbols");
        m[sp] = ' ';
        m[line2] = 0xC3; m[line2 + 1] = 0x28;
        BAD_MERGES("invalid UTF-8", size, "invalid UTF-8 at byte");
        memcpy(m, merges, line2);                /* line 2 with a symbol no line made */
        memcpy(m + line2, "\xd0\x80", 2);
        memcpy(m + line2 + 2, merges + line2 + 1, size - line2 - 1);
        BAD_MERGES("an unknown symbol", size + 1, "line 2: '\xd0\x80' is not a symbol");
        memcpy(m, merges, size);
    }
    {
        size_t half = size / 2;
        while (m[half] != '\n') half++;
        BAD_MERGES("a cut file", half, "merges, but CLIP's vocabulary has 48894");
    }
    memcpy(m + size, "\na b", 4);
    BAD_MERGES("an extra line", size + 4, "more than the 48894 merges");
    memcpy(m + size, "\n\n", 2);
    rc = sd_clip_vocab_load(&v, m, size + 1, NULL, 0, a, &err);
    CHECK(rc == 0 && v, "tokenizer: merges.txt may end with a line break (%s)", rc ? err.message : "");
    {   /* CRLF line ends, as in some copies of the hub file */
        size_t i, w = 0;
        unsigned char *crlf = (unsigned char *)malloc(2 * size);
        for (i = 0; i < size; i++) { if (merges[i] == '\n') crlf[w++] = '\r'; crlf[w++] = merges[i]; }
        sd_arena_reset(a, used);
        free_arena(a);
        a = test_arena(sd_clip_vocab_arena_bytes(w));
        rc = sd_clip_vocab_load(&v, crlf, w, NULL, 0, a, &err);
        CHECK(rc == 0 && v && sd_clip_token_text(v, 49405, &i) && i > 0, "tokenizer: CRLF merges.txt (%s)", rc ? err.message : "");
        free(crlf);
    }
#undef BAD_MERGES
    free_arena(a);
    free(m);
}

static void test_tokenizer(void)
{
    size_t size = 0, json_size = 0;
    unsigned char *merges = merges_path ? read_file(merges_path, &size) : NULL, *json = NULL;
    char json_path[1024];
    sd_error err;
    int rc;
    if (!merges) { note_absent("merges", "no merges.txt (%s): tests that need the tokenizer skipped", merges_path); return; }
    snprintf(json_path, sizeof json_path, "%s", merges_path);
    if (strrchr(json_path, '/')) strcpy(strrchr(json_path, '/') + 1, "vocab.json");
    else strcpy(json_path, "vocab.json");
    json = read_file(json_path, &json_size);
    tok_vocab_arena = test_arena(sd_clip_vocab_arena_bytes(size));
    rc = sd_clip_vocab_load(&tok_vocab, merges, size, json, json_size, tok_vocab_arena, &err);
    if (!CHECK(rc == 0, "tokenizer: loading %s%s: %s", merges_path, json ? " and vocab.json" : "", err.message)) {
        free(merges); free(json); free_arena(tok_vocab_arena);
        return;
    }
    CHECK(tok_vocab_arena->peak <= sd_clip_vocab_arena_bytes(size), "tokenizer: vocabulary arena peak %zu over the bound",
          tok_vocab_arena->peak);
    if (json) {   /* a vocab.json that disagrees is refused */
        unsigned char *bad = (unsigned char *)malloc(json_size);
        char *p;
        sd_clip_vocab *v;
        sd_arena *a = test_arena(sd_clip_vocab_arena_bytes(size));
        memcpy(bad, json, json_size);
        p = strstr((char *)bad, "\"cat</w>\": 2368");
        if (CHECK(p != NULL, "tokenizer: vocab.json has no \"cat</w>\": 2368")) {
            p[12] = '9';
            rc = sd_clip_vocab_load(&v, merges, size, bad, json_size, a, &err);
            CHECK(rc == SD_ERR_FORMAT && strstr(err.message, "cat</w>") && a->used == 0 && !v,
                  "tokenizer: inconsistent vocab.json refused (%s)", err.message);
        }
        free(bad);
        free_arena(a);
    }
    test_tokenizer_golden();
    test_tokenizer_cases();
    test_tokenizer_errors(merges, size);
    free(merges);
    free(json);
    free_arena(tok_vocab_arena);
    tok_vocab = NULL;
}

/* Tests of the prompt section: A1111's attention syntax (parse), chunking of long prompts
   (against the tokenizer, and on every golden tokenizer prompt), the weighting rule (against a
   double-precision reference) and bad arguments. Needs merges.txt; the golden prompts are used
   when GOLDEN_DIR/tokenizer/tokenizer.safetensors exists. */

static sd_clip_vocab *pt_vocab;

/* The parse of a prompt, in an arena of its own; rc, with *runs copied to `out` (texts point into
   `store`, a caller buffer). */
typedef struct pt_run { char text[64]; size_t size; double weight; int chunk_break; } pt_run;

static int pt_parse(const sd_clip_vocab *v, const char *text, size_t size, pt_run *out, int cap, int *count, sd_error *err)
{
    sd_arena *a = test_arena(4096 + 64 * size);
    sd_prompt_run *runs;
    int rc = sd_prompt_parse(v, text, size, &runs, count, a, err), i;
    for (i = 0; !rc && i < *count && i < cap; i++) {
        out[i].size = runs[i].size;
        memcpy(out[i].text, runs[i].text, runs[i].size < sizeof out[i].text ? runs[i].size : sizeof out[i].text);
        out[i].weight = runs[i].weight;
        out[i].chunk_break = runs[i].chunk_break;
    }
    if (rc) CHECK(a->used == 0, "prompt parse: the arena is given back on an error");
    free_arena(a);
    return rc;
}

/* Expected parses, derived by hand from A1111's modules/prompt_parser.py (parse_prompt_attention,
   its regex `re_attention` with ":\s*([+-]?[.\d]+)\s*\)" and `re_break` = "\s*\bBREAK\b\s*"):
   every text piece starts at 1.0, closing ( multiplies the pieces made since it opened by 1.1
   (or the number), ] by 1/1.1, unclosed ones multiply at the end (round first), then neighbours
   of equal weight merge. Weights are the Python floats A1111 gets (the product in its order,
   e.g. 1.0 * 1.1 * 1.1 = 1.2100000000000002); the first six cases are its own docstring. */
typedef struct pt_case {
    const char *prompt;
    int vocab;                     /* 1: with the vocabulary's Unicode classes, 0: ASCII only */
    int count;
    struct { const char *text; double weight; int chunk_break; } run[9];
} pt_case;

static const pt_case pt_cases[] = {
    {"normal text", 1, 1, {{"normal text", 1.0, 0}}},
    {"an (important) word", 1, 3, {{"an ", 1.0, 0}, {"important", 1.1, 0}, {" word", 1.0, 0}}},
    {"(unbalanced", 1, 1, {{"unbalanced", 1.1, 0}}},
    {"\\(literal\\]", 1, 1, {{"(literal]", 1.0, 0}}},
    {"(unnecessary)(parens)", 1, 1, {{"unnecessaryparens", 1.1, 0}}},
    {"a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", 1, 9,
     {{"a ", 1.0, 0}, {"house", 1.5730000000000004, 0}, {" ", 1.1, 0}, {"on", 1.0, 0}, {" a ", 1.1, 0},
      {"hill", 0.55, 0}, {", sun, ", 1.1, 0}, {"sky", 1.4641000000000006, 0}, {".", 1.1, 0}}},
    /* nesting multiplies, innermost first */
    {"((a))", 1, 1, {{"a", 1.2100000000000002, 0}}},
    {"((a)b)", 1, 2, {{"a", 1.2100000000000002, 0}, {"b", 1.1, 0}}},
    {"[a]", 1, 1, {{"a", 0.9090909090909091, 0}}},
    {"[[a]]", 1, 1, {{"a", 0.8264462809917354, 0}}},
    {"(a [b] c:1.2)", 1, 3, {{"a ", 1.2, 0}, {"b", 1.0909090909090908, 0}, {" c", 1.2, 0}}},
    {"([a)]", 1, 1, {{"a", 1.0, 0}}},                         /* 1.1 then 1/1.1: the two stacks interleave */
    /* explicit weights */
    {"(a:1.5)", 1, 1, {{"a", 1.5, 0}}},
    {"(a:-0.5) b", 1, 2, {{"a", -0.5, 0}, {" b", 1.0, 0}}},
    {"(a: 1.5 )", 1, 1, {{"a", 1.5, 0}}},
    {"(a:+2)", 1, 1, {{"a", 2.0, 0}}},
    {"(a:.5)", 1, 1, {{"a", 0.5, 0}}},
    {"(a:0)", 1, 1, {{"a", 0.0, 0}}},
    {"(a:1.1)(b)", 1, 1, {{"ab", 1.1, 0}}},                  /* float("1.1") == 1.1: merged */
    {"(a:1.5x)", 1, 1, {{"a:1.5x", 1.1, 0}}},                /* no number before ")": text, then ")" */
    {"[a:1.5]", 1, 1, {{"a:1.5", 0.9090909090909091, 0}}},   /* a weight needs ")" */
    {"(a:1.5]", 1, 1, {{"a:1.5]", 1.1, 0}}},
    {"a:1.2.3)", 1, 1, {{"a:1.2.3)", 1.0, 0}}},              /* no ( open: the match is text */
    {"(:1.5)", 1, 1, {{"", 1.0, 0}}},
    {"(a:\xef\xbc\x91.\xef\xbc\x95)", 1, 1, {{"a", 1.5, 0}}},   /* fullwidth digits are \d and float() reads them */
    {"(a:\xef\xbc\x91.\xef\xbc\x95)", 0, 1, {{"a:\xef\xbc\x91.\xef\xbc\x95", 1.1, 0}}},
    /* unbalanced brackets */
    {"(a", 1, 1, {{"a", 1.1, 0}}},
    {"[((a:1.3)", 1, 1, {{"a", 1.3, 0}}},                     /* round ones first: the other order gives 1.3000000000000003 */
    {"[a", 1, 1, {{"a", 0.9090909090909091, 0}}},
    {"a)", 1, 1, {{"a)", 1.0, 0}}},
    {"a]", 1, 1, {{"a]", 1.0, 0}}},
    {"()", 1, 1, {{"", 1.0, 0}}},
    /* escapes; a lone backslash is dropped */
    {"\\(a\\)", 1, 1, {{"(a)", 1.0, 0}}},
    {"a\\\\b", 1, 1, {{"a\\b", 1.0, 0}}},
    {"a\\b", 1, 1, {{"ab", 1.0, 0}}},
    {"\\", 1, 1, {{"", 1.0, 0}}},
    {"a:b", 1, 1, {{"a:b", 1.0, 0}}},
    /* BREAK: upper case, a word of its own, the spaces around it dropped */
    {"a BREAK b", 1, 2, {{"a", 1.0, 0}, {"b", 1.0, 1}}},
    {"a BREAKfast", 1, 1, {{"a BREAKfast", 1.0, 0}}},
    {"a break Break b", 1, 1, {{"a break Break b", 1.0, 0}}},
    {"_BREAK BREAK_", 1, 1, {{"_BREAK BREAK_", 1.0, 0}}},
    {"BREAK", 1, 2, {{"", 1.0, 0}, {"", 1.0, 1}}},
    {"a BREAK BREAK b", 1, 3, {{"a", 1.0, 0}, {"", 1.0, 1}, {"b", 1.0, 1}}},
    {"a,BREAK,b", 1, 2, {{"a,", 1.0, 0}, {",b", 1.0, 1}}},
    {"a\xc2\xa0" "BREAK\n\tb", 1, 2, {{"a", 1.0, 0}, {"b", 1.0, 1}}},
    {"(a) BREAK (b)", 1, 4, {{"a", 1.1, 0}, {"", 1.0, 0}, {"", 1.0, 1}, {"b", 1.1, 0}}},
    /* (A1111 would make this "break" with weight -1.1; here BREAK is a break wherever it stands) */
    {"(a BREAK b)", 1, 2, {{"a", 1.1, 0}, {"b", 1.1, 1}}},
    /* \b is Python's Unicode \w: a CJK letter is a word character, CJK punctuation is not */
    {"\xe6\x97\xa5\xe6\x9c\xac" "BREAK", 1, 1, {{"\xe6\x97\xa5\xe6\x9c\xac" "BREAK", 1.0, 0}}},
    {"\xe6\x97\xa5\xe6\x9c\xac" "BREAK", 0, 2, {{"\xe6\x97\xa5\xe6\x9c\xac", 1.0, 0}, {"", 1.0, 1}}},
    {"\xe3\x80\x82" "BREAK x", 1, 2, {{"\xe3\x80\x82", 1.0, 0}, {"x", 1.0, 1}}},
    /* empty and blank prompts, and bytes that are not UTF-8 */
    {"", 1, 1, {{"", 1.0, 0}}},
    {" \t ", 1, 1, {{" \t ", 1.0, 0}}},
    {"caf\xff (x)", 1, 2, {{"caf\xff ", 1.0, 0}, {"x", 1.1, 0}}},
};

static void test_prompt_parse(void)
{
    pt_run got[16];
    sd_error err;
    int c, i, count, rc;
    for (c = 0; c < (int)(sizeof pt_cases / sizeof pt_cases[0]); c++) {
        const pt_case *k = &pt_cases[c];
        int ok;
        rc = pt_parse(k->vocab ? pt_vocab : NULL, k->prompt, strlen(k->prompt), got, 16, &count, &err);
        ok = rc == 0 && count == k->count;
        for (i = 0; ok && i < count; i++)
            ok = got[i].size == strlen(k->run[i].text) && !memcmp(got[i].text, k->run[i].text, got[i].size) &&
                 got[i].weight == k->run[i].weight && got[i].chunk_break == k->run[i].chunk_break;
        if (!CHECK(ok, "prompt parse \"%s\"%s: %s, %d runs (expected %d)", k->prompt, k->vocab ? "" : " (no vocabulary)",
                   rc ? err.message : "runs differ", rc ? 0 : count, k->count))
            for (i = 0; !rc && i < count && i < 16; i++)
                fprintf(stderr, "    got (\"%.*s\", %.17g, %d)\n", (int)got[i].size, got[i].text, got[i].weight, got[i].chunk_break);
    }
    /* a NUL byte is text */
    rc = pt_parse(pt_vocab, "a\0(b)", 5, got, 16, &count, &err);
    CHECK(rc == 0 && count == 2 && got[0].size == 2 && !memcmp(got[0].text, "a\0", 2) && got[1].weight == 1.1,
          "prompt parse: NUL inside the prompt");
    /* weights Python's float() refuses: A1111 raises ValueError, here an error that names them */
    rc = pt_parse(pt_vocab, "x (a:1.2.3)", 11, got, 16, &count, &err);
    CHECK(rc == SD_ERR_ARG && strstr(err.message, "1.2.3") && strstr(err.message, "byte 5"), "prompt parse: weight 1.2.3 (%s)", err.message);
    rc = pt_parse(pt_vocab, "(a:-.)", 6, got, 16, &count, &err);
    CHECK(rc == SD_ERR_ARG && strstr(err.message, "-."), "prompt parse: weight -. (%s)", err.message);
    /* nesting: SD_PROMPT_MAX_NESTING open brackets are fine, one more is an error */
    {
        char deep[SD_PROMPT_MAX_NESTING + 2];
        memset(deep, '(', sizeof deep);
        deep[SD_PROMPT_MAX_NESTING] = 'a';
        rc = pt_parse(pt_vocab, deep, SD_PROMPT_MAX_NESTING + 1, got, 16, &count, &err);
        CHECK(rc == 0 && count == 1 && got[0].weight > 1e10, "prompt parse: %d open brackets", SD_PROMPT_MAX_NESTING);
        rc = pt_parse(pt_vocab, deep, sizeof deep, got, 16, &count, &err);
        CHECK(rc == SD_ERR_ARG && strstr(err.message, "brackets"), "prompt parse: too deep (%s)", err.message);
    }
    /* bad arguments, a small arena */
    {
        sd_arena *a = test_arena(256);
        sd_prompt_run *runs = NULL;
        count = 7;
        CHECK(sd_prompt_parse(pt_vocab, NULL, 1, &runs, &count, a, &err) == SD_ERR_ARG && count == 0, "prompt parse: NULL text");
        CHECK(sd_prompt_parse(pt_vocab, "a", 1, NULL, &count, a, &err) == SD_ERR_ARG, "prompt parse: NULL runs");
        CHECK(sd_prompt_parse(pt_vocab, "a", 1, &runs, NULL, a, &err) == SD_ERR_ARG, "prompt parse: NULL count");
        CHECK(sd_prompt_parse(pt_vocab, "a", 1, &runs, &count, NULL, &err) == SD_ERR_ARG, "prompt parse: NULL arena");
        CHECK(sd_prompt_parse(pt_vocab, "a", (size_t)SD_PROMPT_MAX_BYTES + 1, &runs, &count, a, &err) == SD_ERR_ARG &&
              strstr(err.message, "longer"), "prompt parse: oversized prompt (%s)", err.message);
        CHECK(sd_prompt_parse(NULL, NULL, 0, &runs, &count, a, &err) == 0 && count == 1 && runs[0].size == 0 && runs[0].weight == 1.0,
              "prompt parse: NULL empty prompt");
        sd_arena_reset(a, 0);
        rc = sd_prompt_parse(pt_vocab, "a long prompt (that does not fit)", 33, &runs, &count, a, &err);
        CHECK(rc == SD_ERR_MEMORY && a->used == 0 && !runs && count == 0, "prompt parse: small arena (%s)", err.message);
        free_arena(a);
    }
}

/* sd_prompt_chunks in an arena of sd_prompt_arena_bytes(size) (checking that bound), results
   copied to ids/weights (SD_PROMPT_MAX_CHUNKS x 77 each). */
static int pt_chunks(const char *text, size_t size, sd_clip_pad pad, int weighting, int wrap, int min_chunks,
                     int32_t *ids, float *weights, int *chunks, sd_error *err)
{
    size_t bound = sd_prompt_arena_bytes(size);
    sd_arena *a = test_arena(bound);
    int32_t *i32 = NULL;
    float *w = NULL;
    int rc = sd_prompt_chunks(pt_vocab, text, size, pad, weighting, wrap, min_chunks, &i32, &w, chunks, a, err);
    CHECK(a->peak <= bound, "prompt chunks: arena peak %zu over sd_prompt_arena_bytes %zu", a->peak, bound);
    if (!rc) {
        memcpy(ids, i32, (size_t)*chunks * 77 * sizeof *ids);
        memcpy(weights, w, (size_t)*chunks * 77 * sizeof *weights);
    } else CHECK(a->used == 0 && !i32 && !w && *chunks == 0, "prompt chunks: nothing left behind on an error");
    free_arena(a);
    return rc;
}

/* All token ids of a text (sd_clip_token_ids); count in *n. */
static int32_t pt_ids_buf[8192];
static size_t pt_ids(const char *text, size_t size, sd_clip_pad pad)
{
    sd_arena *a = test_arena(sd_clip_scratch_bytes(size));
    size_t n = 0;
    sd_error err;
    if (sd_clip_token_ids(pt_vocab, text, size, pad, pt_ids_buf, 8192, &n, a, &err)) CHECK(0, "prompt: token ids: %s", err.message);
    free_arena(a);
    return n;
}

/* Whether chunk c of ids holds [BOS] toks [EOS] padding with weights 1 at BOS, EOS and padding. */
static int pt_chunk_is(const int32_t *ids, const float *w, int c, const int32_t *toks, int n, sd_clip_pad pad)
{
    const int32_t *id = ids + 77 * c;
    const float *cw = w + 77 * c;
    int i;
    if (id[0] != SD_CLIP_BOS || cw[0] != 1.0f || id[1 + n] != SD_CLIP_EOS || cw[1 + n] != 1.0f) return 0;
    for (i = 0; i < n; i++) if (id[1 + i] != toks[i]) return 0;
    for (i = 2 + n; i < 77; i++) if (id[i] != (pad == SD_CLIP_PAD_EXCLAMATION ? 0 : SD_CLIP_EOS) || cw[i] != 1.0f) return 0;
    return 1;
}

static int pt_all_ones(const float *w, int n)
{
    for (int i = 0; i < n; i++) if (w[i] != 1.0f) return 0;
    return 1;
}

/* Every golden tokenizer prompt: weighting off, or on for prompts without syntax, gives exactly
   sd_clip_tokenize's 77 ids (chunked past 75 tokens); both paddings. */
static void test_prompt_golden(void)
{
    golden_file *g = golden_open("tokenizer/tokenizer.safetensors");
    static int32_t ids[SD_PROMPT_MAX_CHUNKS * 77];
    static float w[SD_PROMPT_MAX_CHUNKS * 77];
    const char *count_text;
    int n, i, compared = 0, plain = 0, long_ones = 0;
    if (!g) {
        if (golden_absent("tokenizer/tokenizer.safetensors")) note_absent("tokenizer", "no %s/tokenizer/tokenizer.safetensors, golden prompts skipped", golden_dir);
        return;
    }
    n_cases++;
    count_text = sd_safetensors_meta(&g->st, "n_prompts");
    n = count_text ? atoi(count_text) : 0;
    CHECK(n > 0, "%s: no n_prompts", g->path);
    for (i = 0; i < n; i++) {
        const sd_tensor *p = golden_prompt(g, i);
        int mode;
        if (!p) continue;
        for (mode = 0; mode < 2; mode++) {
            sd_clip_pad pad = mode ? SD_CLIP_PAD_EXCLAMATION : SD_CLIP_PAD_EOS;
            const char *text = (const char *)p->data;
            int32_t ref[77];
            size_t length, count, k;
            int chunks, weighting, rc, ok;
            sd_error err;
            sd_arena *a = test_arena(sd_clip_scratch_bytes(p->nbytes));
            rc = sd_clip_tokenize(pt_vocab, text, p->nbytes, pad, ref, &length, a, &err);
            free_arena(a);
            if (!CHECK(rc == 0, "prompt golden %d: tokenize: %s", i, err.message)) continue;
            for (weighting = 0; weighting < 2; weighting++) {
                if (weighting) {   /* only prompts whose parse is the whole text as one run */
                    pt_run runs[2];
                    int nr;
                    if (pt_parse(pt_vocab, text, p->nbytes, runs, 2, &nr, &err) || nr != 1 || runs[0].size != p->nbytes ||
                        runs[0].weight != 1.0)
                        continue;
                    plain += !mode;
                }
                rc = pt_chunks(text, p->nbytes, pad, weighting, 0, 0, ids, w, &chunks, &err);
                count = length - 2;
                ok = rc == 0 && chunks == (count ? (int)((count + 74) / 75) : 1) && !memcmp(ids, ref, sizeof ref) &&
                     pt_all_ones(w, chunks * 77);
                if (ok && count > 75) {   /* the later chunks hold the rest of the tokens */
                    size_t all = pt_ids(text, p->nbytes, pad);
                    long_ones += !mode && !weighting;
                    for (k = 0; ok && k < all; k++) ok = ids[77 * (k / 75) + 1 + k % 75] == pt_ids_buf[k];
                }
                compared++;
                CHECK(ok, "prompt golden %d (%s, weighting %d) \"%.60s\": %s, %d chunks", i, mode ? "sd2" : "sd1", weighting,
                      text, rc ? err.message : "ids differ from sd_clip_tokenize", rc ? 0 : chunks);
            }
        }
    }
    printf("prompt: %d golden prompts (%d without syntax, %d longer than 75 tokens), %d chunkings compared\n", n, plain,
           long_ones, compared);
    golden_close(g);
}

static void test_prompt_chunks(void)
{
    static int32_t ids[SD_PROMPT_MAX_CHUNKS * 77];
    static float w[SD_PROMPT_MAX_CHUNKS * 77];
    static char text[64 * 75 * 4 + 64];
    int32_t cat[1], dog[1], comma[1], toks[75];
    size_t n, i;
    int chunks, rc, ok, c;
    sd_error err;

    if (!CHECK(pt_ids("cat", 3, SD_CLIP_PAD_EOS) == 1, "prompt: 'cat' is one token")) return;
    cat[0] = pt_ids_buf[0];
    pt_ids("dog", 3, SD_CLIP_PAD_EOS); dog[0] = pt_ids_buf[0];
    pt_ids(",", 1, SD_CLIP_PAD_EOS); comma[0] = pt_ids_buf[0];
    for (i = 0; i < 75; i++) toks[i] = cat[0];

    /* plain prompts of 1..200 tokens: 75 to a chunk, a new chunk only when a token finds one full */
    {
        static const int lengths[] = {0, 1, 74, 75, 76, 150, 151, 200};
        for (c = 0; c < (int)(sizeof lengths / sizeof lengths[0]); c++) {
            int len = lengths[c], want = len ? (len + 74) / 75 : 1, k;
            for (i = 0; i < (size_t)len; i++) memcpy(text + 4 * i, "cat ", 4);
            rc = pt_chunks(text, 4 * (size_t)len, SD_CLIP_PAD_EOS, 1, 20, 0, ids, w, &chunks, &err);
            ok = rc == 0 && chunks == want;
            for (k = 0; ok && k < chunks; k++) ok = pt_chunk_is(ids, w, k, toks, k < chunks - 1 ? 75 : len - 75 * (chunks - 1), SD_CLIP_PAD_EOS);
            CHECK(ok, "prompt chunks: %d tokens give %d chunks (%s, got %d)", len, want, rc ? err.message : "ids differ", chunks);
        }
    }
    /* the 200-token prompt is three chunks, the first of them sd_clip_tokenize's ids */
    {
        int32_t ref[77];
        sd_arena *a = test_arena(sd_clip_scratch_bytes(800));
        for (i = 0; i < 200; i++) memcpy(text + 4 * i, "cat ", 4);
        rc = sd_clip_tokenize(pt_vocab, text, 800, SD_CLIP_PAD_EXCLAMATION, ref, NULL, a, &err);
        free_arena(a);
        rc = rc ? rc : pt_chunks(text, 800, SD_CLIP_PAD_EXCLAMATION, 1, 0, 0, ids, w, &chunks, &err);
        CHECK(rc == 0 && chunks == 3 && !memcmp(ids, ref, sizeof ref) && pt_chunk_is(ids, w, 2, toks, 50, SD_CLIP_PAD_EXCLAMATION),
              "prompt chunks: 200 tokens, sd2 padding");
    }
    /* min_chunks pads with the chunks of "" (a negative prompt as long as the positive one) */
    {
        int32_t empty[77];
        sd_arena *a = test_arena(sd_clip_scratch_bytes(0));
        sd_clip_tokenize(pt_vocab, "", 0, SD_CLIP_PAD_EOS, empty, NULL, a, &err);
        free_arena(a);
        rc = pt_chunks("", 0, SD_CLIP_PAD_EOS, 1, 20, 3, ids, w, &chunks, &err);
        CHECK(rc == 0 && chunks == 3 && !memcmp(ids, empty, sizeof empty) && !memcmp(ids + 77, empty, sizeof empty) &&
              !memcmp(ids + 154, empty, sizeof empty) && pt_all_ones(w, 3 * 77), "prompt chunks: \"\" padded to 3 chunks");
        rc = pt_chunks("(cat)", 5, SD_CLIP_PAD_EOS, 1, 20, 2, ids, w, &chunks, &err);
        CHECK(rc == 0 && chunks == 2 && ids[1] == cat[0] && w[1] == 1.1f && pt_chunk_is(ids, w, 1, toks, 0, SD_CLIP_PAD_EOS),
              "prompt chunks: a weighted prompt padded to 2 chunks");
        for (i = 0; i < 200; i++) memcpy(text + 4 * i, "cat ", 4);
        rc = pt_chunks(text, 800, SD_CLIP_PAD_EOS, 1, 20, 2, ids, w, &chunks, &err);
        CHECK(rc == 0 && chunks == 3, "prompt chunks: min_chunks below the count changes nothing");
    }
    /* weights: each token carries its run's weight (as a float), 1 at BOS/EOS/padding */
    rc = pt_chunks("a (cat:1.5) [dog] (a:-0.5)", 26, SD_CLIP_PAD_EOS, 1, 20, 0, ids, w, &chunks, &err);
    CHECK(rc == 0 && chunks == 1 && ids[2] == cat[0] && ids[3] == dog[0] && ids[5] == SD_CLIP_EOS && w[0] == 1.0f && w[1] == 1.0f &&
          w[2] == 1.5f && w[3] == (float)(1 / 1.1) && w[4] == -0.5f && w[5] == 1.0f && w[76] == 1.0f,
          "prompt chunks: weights per token (%s)", rc ? err.message : "");
    /* weighting off: the syntax characters are text, BREAK a word */
    {
        const char *s = "a (cat:1.5) BREAK [dog]";
        int32_t ref[77];
        sd_arena *a = test_arena(sd_clip_scratch_bytes(strlen(s)));
        sd_clip_tokenize(pt_vocab, s, strlen(s), SD_CLIP_PAD_EOS, ref, NULL, a, &err);
        free_arena(a);
        rc = pt_chunks(s, strlen(s), SD_CLIP_PAD_EOS, 0, 20, 0, ids, w, &chunks, &err);
        CHECK(rc == 0 && chunks == 1 && !memcmp(ids, ref, sizeof ref) && pt_all_ones(w, 77), "prompt chunks: weighting off");
    }
    /* BREAK: a new chunk (an empty one too), none for a BREAK at the end or right after a full chunk */
    rc = pt_chunks("cat BREAK dog", 13, SD_CLIP_PAD_EOS, 1, 20, 0, ids, w, &chunks, &err);
    CHECK(rc == 0 && chunks == 2 && pt_chunk_is(ids, w, 0, cat, 1, SD_CLIP_PAD_EOS) && pt_chunk_is(ids, w, 1, dog, 1, SD_CLIP_PAD_EOS),
          "prompt chunks: cat BREAK dog");
    rc = pt_chunks("BREAK dog", 9, SD_CLIP_PAD_EOS, 1, 20, 0, ids, w, &chunks, &err);
    CHECK(rc == 0 && chunks == 2 && pt_chunk_is(ids, w, 0, cat, 0, SD_CLIP_PAD_EOS) && pt_chunk_is(ids, w, 1, dog, 1, SD_CLIP_PAD_EOS),
          "prompt chunks: BREAK first gives an empty chunk");
    rc = pt_chunks("cat BREAK BREAK dog BREAK", 25, SD_CLIP_PAD_EOS, 1, 20, 0, ids, w, &chunks, &err);
    CHECK(rc == 0 && chunks == 3 && pt_chunk_is(ids, w, 1, cat, 0, SD_CLIP_PAD_EOS) && pt_chunk_is(ids, w, 2, dog, 1, SD_CLIP_PAD_EOS),
          "prompt chunks: two BREAKs in a row, one at the end");
    for (i = 0; i < 75; i++) memcpy(text + 4 * i, "cat ", 4);
    memcpy(text + 300, "BREAK dog", 9);
    rc = pt_chunks(text, 309, SD_CLIP_PAD_EOS, 1, 20, 0, ids, w, &chunks, &err);
    CHECK(rc == 0 && chunks == 2 && pt_chunk_is(ids, w, 0, toks, 75, SD_CLIP_PAD_EOS) && pt_chunk_is(ids, w, 1, dog, 1, SD_CLIP_PAD_EOS),
          "prompt chunks: BREAK after exactly 75 tokens");
    /* comma_wrap: 70 cats, a comma, 10 dogs. The 76th token finds the chunk full with the comma 5
       tokens back: with wrap >= 5 the 4 dogs after the comma move on; with 0 or 4 they stay. */
    {
        int wraps[4] = {20, 5, 4, 0}, k;
        int32_t first[75], second[10];
        for (i = 0; i < 70; i++) memcpy(text + 4 * i, "cat ", 4);
        memcpy(text + 280, ", ", 2);
        for (i = 0; i < 10; i++) memcpy(text + 282 + 4 * i, "dog ", 4);
        for (k = 0; k < 4; k++) {
            int moved = wraps[k] >= 5;
            for (i = 0; i < 75; i++) first[i] = i < 70 ? cat[0] : i == 70 ? comma[0] : dog[0];
            for (i = 0; i < 10; i++) second[i] = dog[0];
            rc = pt_chunks(text, 322, SD_CLIP_PAD_EOS, 1, wraps[k], 0, ids, w, &chunks, &err);
            CHECK(rc == 0 && chunks == 2 && pt_chunk_is(ids, w, 0, first, moved ? 71 : 75, SD_CLIP_PAD_EOS) &&
                  pt_chunk_is(ids, w, 1, second, moved ? 10 : 6, SD_CLIP_PAD_EOS),
                  "prompt chunks: comma_wrap %d (%s)", wraps[k], rc ? err.message : "ids differ");
        }
    }
    /* invalid UTF-8 and odd bytes reach the tokenizer unchanged */
    {
        n = pt_ids("caf\xff\xed\xa0\x80", 7, SD_CLIP_PAD_EOS);
        rc = pt_chunks("(caf\xff\xed\xa0\x80)", 9, SD_CLIP_PAD_EOS, 1, 20, 0, ids, w, &chunks, &err);
        ok = rc == 0 && chunks == 1 && n > 1 && pt_chunk_is(ids, w, 0, pt_ids_buf, (int)n, SD_CLIP_PAD_EOS);
        for (i = 0; ok && i < n; i++) ok = w[1 + i] == 1.1f;
        CHECK(ok, "prompt chunks: invalid UTF-8 inside brackets");
    }
    /* the limit: SD_PROMPT_MAX_CHUNKS full chunks are fine, a token or a BREAK more is not */
    for (i = 0; i < SD_PROMPT_MAX_CHUNKS * 75; i++) memcpy(text + 4 * i, "cat ", 4);
    n = 4 * (size_t)SD_PROMPT_MAX_CHUNKS * 75;
    rc = pt_chunks(text, n, SD_CLIP_PAD_EOS, 1, 20, 0, ids, w, &chunks, &err);
    CHECK(rc == 0 && chunks == SD_PROMPT_MAX_CHUNKS && pt_chunk_is(ids, w, SD_PROMPT_MAX_CHUNKS - 1, toks, 75, SD_CLIP_PAD_EOS),
          "prompt chunks: %d full chunks", SD_PROMPT_MAX_CHUNKS);
    memcpy(text + n, "cat", 3);
    rc = pt_chunks(text, n + 3, SD_CLIP_PAD_EOS, 0, 0, 0, ids, w, &chunks, &err);
    CHECK(rc == SD_ERR_ARG && strstr(err.message, "chunks"), "prompt chunks: one token too many (%s)", err.message);
    memcpy(text + n, "BREAK", 5);
    rc = pt_chunks(text, n + 5, SD_CLIP_PAD_EOS, 1, 0, 0, ids, w, &chunks, &err);
    CHECK(rc == 0 && chunks == SD_PROMPT_MAX_CHUNKS, "prompt chunks: a BREAK at the end of %d full chunks", SD_PROMPT_MAX_CHUNKS);
    memcpy(text + n, "BREAK a", 7);
    rc = pt_chunks(text, n + 7, SD_CLIP_PAD_EOS, 1, 0, 0, ids, w, &chunks, &err);
    CHECK(rc == SD_ERR_ARG && strstr(err.message, "chunks"), "prompt chunks: BREAK into chunk %d (%s)", SD_PROMPT_MAX_CHUNKS + 1, err.message);
    for (i = 0; i < 70; i++) memcpy(text + 8 * i, "BREAK a ", 8);
    rc = pt_chunks(text, 560, SD_CLIP_PAD_EOS, 1, 0, 0, ids, w, &chunks, &err);
    CHECK(rc == SD_ERR_ARG, "prompt chunks: 70 BREAKs");

    /* bad arguments and a small arena */
    {
        sd_arena *a = test_arena(1 << 16);
        int32_t *pi = NULL;
        float *pw = NULL;
        chunks = 5;
        CHECK(sd_prompt_chunks(NULL, "a", 1, SD_CLIP_PAD_EOS, 1, 20, 0, &pi, &pw, &chunks, a, &err) == SD_ERR_ARG && chunks == 0,
              "prompt chunks: NULL vocabulary");
        CHECK(sd_prompt_chunks(pt_vocab, NULL, 1, SD_CLIP_PAD_EOS, 1, 20, 0, &pi, &pw, &chunks, a, &err) == SD_ERR_ARG, "prompt chunks: NULL text");
        CHECK(sd_prompt_chunks(pt_vocab, "a", 1, SD_CLIP_PAD_EOS, 1, 20, 0, NULL, &pw, &chunks, a, &err) == SD_ERR_ARG, "prompt chunks: NULL ids");
        CHECK(sd_prompt_chunks(pt_vocab, "a", 1, SD_CLIP_PAD_EOS, 1, 20, 0, &pi, &pw, NULL, a, &err) == SD_ERR_ARG, "prompt chunks: NULL count");
        CHECK(sd_prompt_chunks(pt_vocab, "a", 1, SD_CLIP_PAD_EOS, 1, 20, 0, &pi, &pw, &chunks, NULL, &err) == SD_ERR_ARG, "prompt chunks: NULL arena");
        CHECK(sd_prompt_chunks(pt_vocab, "a", 1, SD_CLIP_PAD_EOS, 1, 75, 0, &pi, &pw, &chunks, a, &err) == SD_ERR_ARG, "prompt chunks: comma_wrap 75");
        CHECK(sd_prompt_chunks(pt_vocab, "a", 1, SD_CLIP_PAD_EOS, 1, -1, 0, &pi, &pw, &chunks, a, &err) == SD_ERR_ARG, "prompt chunks: comma_wrap -1");
        CHECK(sd_prompt_chunks(pt_vocab, "a", 1, SD_CLIP_PAD_EOS, 1, 20, SD_PROMPT_MAX_CHUNKS + 1, &pi, &pw, &chunks, a, &err) == SD_ERR_ARG,
              "prompt chunks: min_chunks too large");
        CHECK(sd_prompt_chunks(pt_vocab, "a", 1, SD_CLIP_PAD_EOS, 1, 20, -1, &pi, &pw, &chunks, a, &err) == SD_ERR_ARG, "prompt chunks: min_chunks -1");
        CHECK(sd_prompt_chunks(pt_vocab, "a", 1, (sd_clip_pad)7, 1, 20, 0, &pi, &pw, &chunks, a, &err) == SD_ERR_ARG, "prompt chunks: padding 7");
        CHECK(sd_prompt_chunks(pt_vocab, "a", (size_t)SD_PROMPT_MAX_BYTES + 1, SD_CLIP_PAD_EOS, 1, 20, 0, &pi, &pw, &chunks, a, &err) ==
                  SD_ERR_ARG, "prompt chunks: oversized prompt");
        CHECK(a->used == 0, "prompt chunks: bad arguments take no arena");
        rc = sd_prompt_chunks(pt_vocab, "(cat)", 5, SD_CLIP_PAD_EOS, 1, 20, 0, &pi, NULL, &chunks, a, &err);
        CHECK(rc == 0 && chunks == 1 && pi && pi[1] == cat[0], "prompt chunks: weights may be NULL");
        free_arena(a);
        /* every arena too small for the call fails cleanly and is given back as it was */
        for (n = 64, ok = 1; ok && n < 65536; n += 256) {
            a = test_arena(n);
            sd_arena_alloc(a, 64, &err);
            rc = sd_prompt_chunks(pt_vocab, "(cat) BREAK dog", 15, SD_CLIP_PAD_EOS, 1, 20, 2, &pi, &pw, &chunks, a, &err);
            ok = rc == SD_ERR_MEMORY && a->used == 64 && !pi && !pw && chunks == 0;
            free_arena(a);
        }
        CHECK(rc == 0 && chunks == 2, "prompt chunks: small arenas give SD_ERR_MEMORY and are restored (%zu bytes: %s)", n, rc ? err.message : "");
    }
}

/* The weighting rule against a double-precision reference: keep the chunk's mean, scale each
   token's row by its weight. */
static void test_prompt_weight(void)
{
    enum { T = 77, W = 48 };
    static float z[T * W], orig[T * W], want[T * W];
    float weights[T];
    uint32_t seed = 12345;
    double before = 0, after = 0;
    int t, c, trial;
    for (trial = 0; trial < 3; trial++) {
        for (t = 0; t < T * W; t++) {
            seed = seed * 1664525u + 1013904223u;
            z[t] = orig[t] = (float)((seed >> 8) / 16777216.0 * 4.0 - 1.5);   /* mean about 0.5 */
        }
        for (t = 0; t < T; t++) {
            seed = seed * 1664525u + 1013904223u;
            weights[t] = t == 0 || t > 20 ? 1.0f : trial == 2 ? -0.5f : (float)(0.5 + (seed >> 8) / 16777216.0);
        }
        before = after = 0;
        for (t = 0; t < T * W; t++) before += orig[t];
        for (t = 0; t < T; t++) for (c = 0; c < W; c++) after += (double)orig[t * W + c] * weights[t];
        for (t = 0; t < T; t++) for (c = 0; c < W; c++) want[t * W + c] = (float)((double)orig[t * W + c] * weights[t] * (before / after));
        sd_prompt_weight(z, weights, T, W);
        check_close("prompt weight: against a double reference", z, want, T * W, 1e-6);
        {   /* the mean is kept */
            double m = 0;
            for (t = 0; t < T * W; t++) m += z[t];
            CHECK(fabs(m - before) <= 1e-5 * fabs(before), "prompt weight: mean kept (%g vs %g)", m / (T * W), before / (T * W));
        }
    }
    /* all weights 1: untouched, bit for bit (NaN and -0 included) */
    for (t = 0; t < T; t++) weights[t] = 1.0f;
    memcpy(z, orig, sizeof z);
    z[5] = -0.0f; z[7] = (float)NAN; memcpy(orig, z, sizeof z);
    sd_prompt_weight(z, weights, T, W);
    CHECK(!memcmp(z, orig, sizeof z), "prompt weight: all weights 1 leave the output untouched");
    /* a weighted sum of exactly 0 is not divided by */
    {
        float zz[2] = {1.0f, 1.0f}, ww[2] = {1.0f, -1.0f};
        sd_prompt_weight(zz, ww, 2, 1);
        CHECK(zz[0] == 1.0f && zz[1] == -1.0f, "prompt weight: weighted mean 0");
        sd_prompt_weight(NULL, ww, 2, 1);
        sd_prompt_weight(zz, NULL, 2, 1);
        sd_prompt_weight(zz, ww, 0, 1);
        CHECK(zz[0] == 1.0f && zz[1] == -1.0f, "prompt weight: NULL and empty arguments do nothing");
    }
}

static void test_prompt(void)
{
    size_t size = 0;
    unsigned char *merges = merges_path ? read_file(merges_path, &size) : NULL;
    sd_arena *va;
    sd_error err;
    test_prompt_weight();
    if (!merges) { note_absent("merges", "no merges.txt (%s): tests that need the tokenizer skipped", merges_path); return; }
    va = test_arena(sd_clip_vocab_arena_bytes(size));
    if (!CHECK(sd_clip_vocab_load(&pt_vocab, merges, size, NULL, 0, va, &err) == 0, "prompt: loading %s: %s", merges_path, err.message)) {
        free(merges);
        free_arena(va);
        return;
    }
    test_prompt_parse();
    test_prompt_chunks();
    test_prompt_golden();
    {   /* nested weights past any float: refused, not turned into inf */
        const char *huge = "((((((((((((a:1000000000000000000000000000000):1000000000000000000000000000000)))))))))))";
        sd_arena *a = test_arena(sd_prompt_arena_bytes(strlen(huge)));
        int32_t *ids;
        float *w;
        int chunks, rc = sd_prompt_chunks(pt_vocab, huge, strlen(huge), SD_CLIP_PAD_EOS, 1, 0, 1, &ids, &w, &chunks, a, &err);
        CHECK(rc == SD_ERR_ARG && strstr(err.message, "weight") && a->used == 0, "prompt: a weight of 1e60: rc %d (%s)", rc, rc ? err.message : "");
        free_arena(a);
    }
    free(merges);
    free_arena(va);
    pt_vocab = NULL;
}

/* Tests of section 8 (VAE): every model under GOLDEN_DIR/models that has a GOLDEN_DIR/NAME/vae.safetensors,
   every decode/encode case in it (with its debug activations), arena sizes, tiled decoding, and the
   errors of broken files. */

#include <dirent.h>

/* A test arena of exactly `bytes` bytes of space (its memory aligned, so none is lost). */
static sd_arena *vae_exact_arena(size_t bytes)
{
    sd_arena *a = test_arena(bytes + SD_ALIGN);
    void *p = (void *)(((uintptr_t)a->base + SD_ALIGN - 1) & ~(uintptr_t)(SD_ALIGN - 1));
    sd_arena_init(a, p, bytes);
    return a;
}

/* Compares the probe's NHWC activations with a golden NCHW "PREFIX.debug.STAGE" when the file has one. */
typedef struct vae_debug { golden_file *g; const char *label, *prefix; double tol; int seen; } vae_debug;

static void vae_debug_probe(void *user, const char *stage, const float *x, int h, int w, int c)
{
    vae_debug *d = (vae_debug *)user;
    char name[160], what[400];
    snprintf(name, sizeof name, "%s.debug.%s", d->prefix, stage);
    const sd_tensor *t = sd_safetensors_find(&d->g->st, name);
    if (!t) return;
    d->seen++;
    int64_t n = (int64_t)h * w * c;
    if (!CHECK(t->dtype == SD_F32 && sd_tensor_numel(t) == n, "%s: golden %s has %lld values, the stage %d x %d x %d",
               d->label, name, (long long)sd_tensor_numel(t), c, h, w)) return;
    float *nchw = (float *)malloc((size_t)n * sizeof(float));
    nhwc_to_nchw(host_pool(), nchw, x, 1, c, h * w);
    snprintf(what, sizeof what, "%s %s", d->label, name);
    check_close(what, nchw, (const float *)t->data, n, d->tol);
    free(nchw);
}

/* How many "PREFIX.debug.*" tensors the golden file has (all of which the probe must meet). */
static int vae_debug_count(golden_file *g, const char *prefix)
{
    char p[160];
    int n = 0;
    snprintf(p, sizeof p, "%s.debug.", prefix);
    for (int i = 0; i < g->st.count; i++) n += !strncmp(g->st.tensors[i].name, p, strlen(p));
    return n;
}

/* Decode case i of a golden file ("decode{i}.decoder_input" [1, channels, h, w], "decode{i}.image"):
   the input, NULL after the last; *want NULL (the test failed) when the case is malformed. */
static const sd_tensor *golden_decode_case(golden_file *g, int i, int channels, const float **want, int64_t *n, const char *label)
{
    char name[64];
    snprintf(name, sizeof name, "decode%d.decoder_input", i);
    const sd_tensor *zt = sd_safetensors_find(&g->st, name);
    *want = NULL;
    if (!zt) return NULL;
    snprintf(name, sizeof name, "decode%d.image", i);
    *want = golden_f32(g, name, n);
    if (*want && !CHECK(zt->ndim == 4 && zt->shape[1] == channels, "%s: decode%d input shape", label, i)) *want = NULL;
    return zt;
}

/* Edits of a checkpoint's tensors for rewrite_file(), to make broken and alternative files. */
typedef struct vae_edit {
    const char *keep;           /* only tensors whose name starts with this (NULL: all) */
    const char *strip;          /* prefix taken off every name */
    const char *drop;           /* tensors whose (edited) name starts with this are left out */
    const char *reshape;        /* this tensor (edited name) gets dims 0 and 1 halved and doubled */
    const char *const *rename;  /* pairs of substrings: from, to; NULL-terminated */
} vae_edit;

static int vae_edit_tensor(sd_tensor *t, char *name, size_t cap, void *user)
{
    const vae_edit *e = (const vae_edit *)user;
    char buf[512];
    if (e->keep && strncmp(name, e->keep, strlen(e->keep))) return 0;
    if (e->strip && !strncmp(name, e->strip, strlen(e->strip))) memmove(name, name + strlen(e->strip), strlen(name) - strlen(e->strip) + 1);
    for (int i = 0; e->rename && e->rename[i]; i += 2) {
        char *at = strstr(name, e->rename[i]);
        if (!at) continue;
        snprintf(buf, sizeof buf, "%.*s%s%s", (int)(at - name), name, e->rename[i + 1], at + strlen(e->rename[i]));
        snprintf(name, cap, "%s", buf);
    }
    if (e->drop && !strncmp(name, e->drop, strlen(e->drop))) return 0;
    if (e->reshape && !strcmp(name, e->reshape) && t->ndim >= 2) { t->shape[0] /= 2; t->shape[1] *= 2; }
    return 1;
}

/* Loads the VAE of an edited copy of st (weights converted to `to` unless SD_DTYPE_COUNT); *bytes
   keeps the file, which the VAE points into. */
static int vae_load_edited(const sd_safetensors *st, sd_dtype to, const vae_edit *e, sd_arena *a, sd_vae **v,
                           unsigned char **bytes, sd_safetensors *out, sd_error *err)
{
    size_t size;
    *bytes = rewrite_file(st, to, vae_edit_tensor, (void *)e, &size);
    int rc = sd_safetensors_open(out, *bytes, size, a, err);
    if (!CHECK(rc == SD_OK, "edited file does not open: %s", err->message)) return rc;
    return sd_vae_load(v, out, a, err);
}

/* Decodes an 8x8 latent (cheap) with v; the image is malloc'd. */
static float *vae_small_decode(const sd_vae *v, const float *z, sd_pool *pool)
{
    int f = vae_scale(&v->config);
    size_t bytes = sd_vae_decode_arena_bytes(&v->config, 8, 8);
    sd_arena *a = vae_exact_arena(bytes);
    float *img = (float *)calloc((size_t)3 * 64 * f * f, sizeof(float));
    sd_error err;
    int rc = sd_vae_decode(v, z, 8, 8, img, pool, a, &err);
    CHECK(rc == SD_OK, "8x8 decode: %s", rc ? err.message : "");
    free_arena(a);
    return img;
}

/* Loader errors and alternative layouts, on edited copies of the model's VAE tensors. */
static void vae_test_files(const char *label, const sd_safetensors *st, const sd_vae *v, sd_pool *pool)
{
    int original = !strncmp(v->decoder.conv_in.w->name, "first_stage_model.", 18);
    const char *keep = original ? "first_stage_model." : NULL;
    float z[4 * 64];
    if (v->config.embed_dim != 4 || vae_scale(&v->config) != 8) return;   /* the sizes below are SD's */
    for (int i = 0; i < 4 * 64; i++) z[i] = (float)sin(0.37 * i) * 3.0f;
    float *ref = vae_small_decode(v, z, pool);
    sd_arena *a = test_arena(1 << 20);
    sd_safetensors st2;
    sd_vae *v2;
    sd_error err;
    unsigned char *bytes;
    char want[400];

    /* a missing tensor is named */
    const char *gone = v->decoder.mid1.conv1.w->name;
    vae_edit e = {keep, NULL, gone, NULL, NULL};
    int rc = vae_load_edited(st, SD_DTYPE_COUNT, &e, a, &v2, &bytes, &st2, &err);
    snprintf(want, sizeof want, "'%s'", gone);
    CHECK(rc == SD_ERR_MISSING && strstr(err.message, want), "%s: without %s: rc %d, '%s'", label, gone, rc, err.message);
    free(bytes);
    sd_arena_reset(a, 0);

    /* so is a tensor of the wrong shape */
    const char *bent = v->decoder.attn.q.w->name;
    vae_edit e2 = {keep, NULL, NULL, bent, NULL};
    rc = vae_load_edited(st, SD_DTYPE_COUNT, &e2, a, &v2, &bytes, &st2, &err);
    snprintf(want, sizeof want, "'%s' has shape", bent);
    CHECK(rc == SD_ERR_SHAPE && strstr(err.message, want), "%s: reshaped %s: rc %d, '%s'", label, bent, rc, err.message);
    free(bytes);
    sd_arena_reset(a, 0);

    /* metadata that contradicts the tensors: one ResNet fewer in the level the loader counts them in */
    if (sd_safetensors_meta(st, "sd.vae.num_res_blocks")) {
        char last[300];
        const vae_level *l0 = &v->decoder.level[original ? v->config.levels - 1 : 0];   /* up.0 / up_blocks.0 */
        snprintf(last, sizeof last, "%s", l0->res[l0->resnets - 1].conv1.w->name);
        *strrchr(last, '.') = 0;
        *strrchr(last, '.') = 0;   /* the block's prefix */
        vae_edit e3 = {keep, NULL, last, NULL, NULL};
        rc = vae_load_edited(st, SD_DTYPE_COUNT, &e3, a, &v2, &bytes, &st2, &err);
        CHECK(rc == SD_ERR_FORMAT && strstr(err.message, "sd.vae.num_res_blocks"), "%s: without %s: rc %d, '%s'", label, last, rc, err.message);
        free(bytes);
        sd_arena_reset(a, 0);
    }

    /* bf16 weights work too (rounded, so only close to the f16/f32 result) */
    vae_edit e7 = {keep, NULL, NULL, NULL, NULL};
    rc = vae_load_edited(st, SD_BF16, &e7, a, &v2, &bytes, &st2, &err);
    if (CHECK(rc == SD_OK && v2->decoder.conv_in.w->dtype == SD_BF16, "%s: bf16 copy: %s", label, rc ? err.message : "")) {
        float *img = vae_small_decode(v2, z, pool);
        snprintf(want, sizeof want, "%s: bf16 weights vs f16", label);
        check_close(want, img, ref, 3 * 64 * 64, 0.05);
        free(img);
    }
    free(bytes);
    sd_arena_reset(a, 0);

    /* the other spellings of the same weights decode bit-identically: a standalone original-layout
       VAE (no prefix), or diffusers' pre-0.14 attention names */
    static const char *const old_names[] = {"to_q.", "query.", "to_k.", "key.", "to_v.", "value.", "to_out.0.", "proj_attn.", NULL};
    vae_edit e4 = {keep, "first_stage_model.", NULL, NULL, original ? NULL : old_names};
    rc = vae_load_edited(st, SD_DTYPE_COUNT, &e4, a, &v2, &bytes, &st2, &err);
    if (CHECK(rc == SD_OK, "%s: %s: %s", label, original ? "without prefix" : "old attention names", rc ? err.message : "")) {
        CHECK(v2->decoder.attn.q.w != NULL && (original || strstr(v2->decoder.attn.q.w->name, "query")),
              "%s: renamed attention not used", label);
        float *img = vae_small_decode(v2, z, pool);
        CHECK(!memcmp(img, ref, sizeof(float) * 3 * 64 * 64), "%s: renamed copy decodes differently", label);
        free(img);
    }
    free(bytes);
    sd_arena_reset(a, 0);

    /* a decoder-only file loads, and encoding says why it cannot */
    vae_edit e5 = {keep, "first_stage_model.", "encoder.", NULL, NULL};
    rc = vae_load_edited(st, SD_DTYPE_COUNT, &e5, a, &v2, &bytes, &st2, &err);
    if (CHECK(rc == SD_OK && !v2->config.has_encoder, "%s: decoder-only file: rc %d %s", label, rc, rc ? err.message : "")) {
        float img[3 * 64 * 64], mom[8 * 64];
        memset(img, 0, sizeof img);
        rc = sd_vae_encode(v2, img, 64, 64, mom, pool, a, &err);
        CHECK(rc == SD_ERR_UNSUPPORTED && strstr(err.message, "encoder"), "%s: encode without encoder: rc %d '%s'", label, rc, err.message);
    }
    free(bytes);
    sd_arena_reset(a, 0);

    /* a file with no VAE at all */
    vae_edit e6 = {keep, NULL, original ? "first_stage_model." : "decoder.", NULL, NULL};
    rc = vae_load_edited(st, SD_DTYPE_COUNT, &e6, a, &v2, &bytes, &st2, &err);
    CHECK(rc == SD_ERR_MISSING && strstr(err.message, "no VAE"), "%s: no VAE: rc %d '%s'", label, rc, err.message);
    free(bytes);
    free_arena(a);
    free(ref);
}

/* Arena sizes are exact: a run succeeds with exactly the bytes asked for and fails cleanly with one
   byte fewer (the arena left as it was); the tiled decode equals the plain one when one tile covers all. */
static void vae_test_memory(const char *label, const sd_vae *v, sd_pool *pool)
{
    const sd_vae_config *c = &v->config;
    int f = vae_scale(c), h = 8, w = 12;
    float *z = (float *)malloc(sizeof(float) * c->embed_dim * h * w);
    float *img = (float *)malloc(sizeof(float) * 3 * h * w * f * f), *img2 = (float *)malloc(sizeof(float) * 3 * h * w * f * f);
    float *mom = (float *)malloc(sizeof(float) * 2 * c->embed_dim * h * w);
    sd_error err;
    for (int i = 0; i < c->embed_dim * h * w; i++) z[i] = (float)cos(0.21 * i) * 4.0f;
    for (int k = 0; k < 3; k++) {   /* decode, tiled decode (tiles 8, overlap 4: 2 tiles), encode */
        size_t bytes = k == 0 ? sd_vae_decode_arena_bytes(c, h, w) : k == 1 ? sd_vae_decode_tiled_arena_bytes(c, h, w, 8, 4)
                     : sd_vae_encode_arena_bytes(c, f * h, f * w);
        const char *what = k == 0 ? "decode" : k == 1 ? "tiled decode" : "encode";
        for (int less = 0; less < 2; less++) {
            sd_arena *a = vae_exact_arena(bytes - (size_t)less);
            int rc = k == 0 ? sd_vae_decode(v, z, h, w, img, pool, a, &err)
                   : k == 1 ? sd_vae_decode_tiled(v, z, h, w, 8, 4, img, pool, a, &err)
                   : sd_vae_encode(v, img2, f * h, f * w, mom, pool, a, &err);
            if (less) CHECK(rc == SD_ERR_MEMORY && a->used == 0 && strstr(err.message, "arena"),
                            "%s: %s with %zu - 1 bytes: rc %d, used %zu, '%s'", label, what, bytes, rc, a->used, err.message);
            else CHECK(rc == SD_OK && a->used == 0 && a->peak == bytes, "%s: %s with exactly %zu bytes: rc %d, peak %zu (%s)",
                       label, what, bytes, rc, a->peak, rc ? err.message : "");
            free_arena(a);
        }
        if (k == 0) memcpy(img2, img, sizeof(float) * 3 * h * w * f * f);   /* keep the plain decode */
    }
    /* one tile covering the whole latent is the plain decode, bit for bit */
    sd_arena *a = test_arena(sd_vae_decode_tiled_arena_bytes(c, h, w, 16, 4) + SD_ALIGN);
    int rc = sd_vae_decode_tiled(v, z, h, w, 16, 4, img, pool, a, &err);
    CHECK(rc == SD_OK && !memcmp(img, img2, sizeof(float) * 3 * h * w * f * f), "%s: one-tile decode differs from the plain one (%s)", label, rc ? err.message : "");
    /* two threads give the same bits as one */
    sd_arena *pa = test_arena(pool_arena_bytes(2) + SD_ALIGN);
    sd_pool pool2;
    if (CHECK(pool_init(&pool2, 2, pa, &err) == SD_OK, "pool of 2: %s", err.message)) {
        rc = sd_vae_decode(v, z, h, w, img, &pool2, a, &err);
        CHECK(rc == SD_OK && !memcmp(img, img2, sizeof(float) * 3 * h * w * f * f), "%s: decode with 2 threads differs from 1 (%s)", label, rc ? err.message : "");
        pool_free(&pool2);
    }
    free_arena(pa);
    /* bad arguments are refused, not crashed on */
    CHECK(sd_vae_decode(v, z, 0, w, img, pool, a, &err) == SD_ERR_ARG, "%s: decode of a 0-row latent accepted", label);
    CHECK(sd_vae_decode(v, NULL, h, w, img, pool, a, &err) == SD_ERR_ARG, "%s: NULL latents accepted", label);
    CHECK(sd_vae_decode_tiled(v, z, h, w, 8, 8, img, pool, a, &err) == SD_ERR_ARG, "%s: overlap = tile accepted", label);
    CHECK(sd_vae_encode(v, img2, f * h + 4, f * w, mom, pool, a, &err) == SD_ERR_ARG, "%s: encode of %d rows accepted", label, f * h + 4);
    CHECK(a->used == 0, "%s: refused calls took arena memory", label);
    free_arena(a);
    free(z); free(img); free(img2); free(mom);
}

/* Tiled decoding of a golden latent against its untiled golden image. Each tile's GroupNorms and
   mid-block attention see only the tile, so the result is close to the untiled one, not equal:
   with tiles of 2/3 x 2/5 of the 24x40 latent (random weights, whose attention is sharp) the
   measured deviation is 0.25 of max|image| at the worst pixel and 0.02 on average; the bounds
   below (0.3, 0.03) leave room for other summation orders, not for a blending bug (weights not
   divided by their sum, for one, give 0.66 and 0.04). */
static void vae_test_tiled(const char *label, const sd_vae *v, golden_file *g, sd_pool *pool)
{
    const sd_tensor *zt = sd_safetensors_find(&g->st, "decode1.decoder_input");
    const sd_tensor *it = sd_safetensors_find(&g->st, "decode1.image");
    if (!zt || !it || zt->ndim != 4) return;
    int h = (int)zt->shape[2], w = (int)zt->shape[3], f = vae_scale(&v->config), tile = h / 2 + 4, overlap = h / 4;
    size_t n = (size_t)3 * h * w * f * f, bytes = sd_vae_decode_tiled_arena_bytes(&v->config, h, w, tile, overlap);
    float *img = (float *)malloc(n * sizeof(float));
    sd_arena *a = vae_exact_arena(bytes);
    sd_error err;
    int rc = sd_vae_decode_tiled(v, (const float *)zt->data, h, w, tile, overlap, img, pool, a, &err);
    if (CHECK(rc == SD_OK, "%s: tiled decode: %s", label, rc ? err.message : "")) {
        const float *ref = (const float *)it->data;
        double maxd = 0, sum = 0, maxref = 0;
        for (size_t i = 0; i < n; i++) {
            double d = fabs((double)img[i] - ref[i]);
            sum += d;
            if (!(d <= maxd)) maxd = d;
            if (fabs(ref[i]) > maxref) maxref = fabs(ref[i]);
        }
        printf("  %s: tiled decode of %dx%d in %dx%d tiles (overlap %d): max|diff|/max|untiled| %.3g, mean|diff| %.3g, %zu arena bytes\n",
               label, h, w, tile, tile, overlap, maxd / maxref, sum / n, bytes);
        CHECK(maxd <= 0.3 * maxref && sum / n <= 0.03 * maxref, "%s: tiled decode too far from the untiled one: max %.3g, mean %.3g (max|untiled| %.3g)",
              label, maxd, sum / n, maxref);
    }
    free_arena(a);
    free(img);
}

/* The blending weights of tiled decoding add up to one at every pixel (so no seam or brightness
   step can show), and the tiles cover the axis with at least the asked overlap. */
static void vae_test_tile_weights(void)
{
    static const int cases[][3] = {{40, 16, 6}, {24, 16, 6}, {100, 32, 8}, {33, 32, 0}, {64, 64, 16}, {65, 20, 9}, {7, 3, 2}};
    const int f = 8;
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int n = cases[k][0], tile = cases[k][1], overlap = cases[k][2], count = vae_tile_count(n, tile, overlap), ok = 1;
        float *sum = (float *)calloc((size_t)n * f, sizeof(float)), *wt = (float *)malloc((size_t)tile * f * sizeof(float));
        for (int i = 0; i < count; i++) {
            int s = vae_tile_start(i, count, n, tile);
            ok &= s >= 0 && s + tile <= n && (i == 0 || s <= vae_tile_start(i - 1, count, n, tile) + tile - overlap);
            vae_tile_weights(wt, i, count, n, tile, overlap, f);
            for (int p = 0; p < tile * f; p++) sum[s * f + p] += wt[p];
        }
        ok &= vae_tile_start(count - 1, count, n, tile) + tile == n;
        for (int p = 0; p < n * f; p++) ok &= fabsf(sum[p] - 1.0f) < 1e-5f;
        CHECK(ok, "tiles over %d latent pixels (tile %d, overlap %d, %d tiles): coverage or weights wrong", n, tile, overlap, count);
        free(sum);
        free(wt);
    }
}

/* The banded decoder against a plain one. vae_decoder_forward works in bands of rows; where a
   level's first ResNet changes the channel count it makes the upsampled image a channel slice at
   a time with the shortcut folded into the upsampling conv, or, at the finest level, band by band
   three times over (vae_stream_resnet), as it recomputes conv1 in the finest level's other
   ResNets. The reference below is the decoder as it was: whole tensors, one conv2d per conv, the
   upsampling held whole (vae_resnet_forward, and the 3x3 conv of the upsampled image itself
   rather than the phases' 2x2 convs that vae_upsample_forward, vae_upsample_resnet and
   vae_stream_resnet run). With
   a latent large enough that every banded loop runs several bands, the two agree to 1e-5 of the
   image's largest value, and 1, 2 and 4 threads give the same bytes. */
static void vae_reference_upsample(vae_run *r, const vae_conv *conv, int H, int W, int C)
{
    int H2 = 2 * H, W2 = 2 * W;
    size_t n = (size_t)H * W * C;
    if (vae_needs(r, 4 * n, 4 * n, 0, 0)) return;
    for (int y = 0; y < H2; y++)
        for (int x = 0; x < W2; x++) memcpy(r->s + ((size_t)y * W2 + x) * C, r->x + ((size_t)(y / 2) * W + x / 2) * C, C * sizeof(float));
    conv2d(r->pool, r->x, r->s, 1, H2, W2, C, conv->w, conv->b, C, 3, 1, 1, 1);
}

static void vae_reference_pass(vae_run *r, const sd_vae *v, const float *z, int h, int w, float *image)
{
    const vae_stack *d = &v->decoder;
    const sd_vae_config *c = &v->config;
    int H = h, W = w;
    vae_post_quant(r, v, z, h, w);
    vae_conv_in(r, &d->conv_in, H, W, c->z_channels, d->mid1.cin);
    vae_mid_forward(r, d, H, W);
    for (int i = 0; i < c->levels; i++) {
        const vae_level *l = &d->level[i];
        for (int j = 0; j < l->resnets; j++) vae_resnet_forward(r, &l->res[j], H, W);
        if (l->resample) {
            vae_reference_upsample(r, &l->resample_conv, H, W, l->channels);
            H *= 2;
            W *= 2;
        }
    }
    size_t P = (size_t)H * W;
    if (!vae_needs(r, P * c->channels[0], P * 3, 0, 0)) {
        groupnorm(r->pool, r->x, r->x, 1, H * W, c->channels[0], r->groups, d->norm_out.w, d->norm_out.b, r->eps, 1);
        conv2d(r->pool, r->s, r->x, 1, H, W, c->channels[0], d->conv_out.w, d->conv_out.b, 3, 3, 1, 1, 1);
        memcpy(r->x, r->s, P * 3 * sizeof(float));   /* where vae_write_image reads */
    }
    vae_write_image(r, image, H, W);
}

static void vae_reference_decode(const sd_vae *v, const float *z, int h, int w, float *image, sd_pool *pool)
{
    vae_run r;
    memset(&r, 0, sizeof r);
    r.planning = 1;
    r.groups = v->config.norm_groups;
    r.eps = v->config.norm_eps;
    vae_reference_pass(&r, v, NULL, h, w, NULL);
    r.base = r.x = (float *)malloc((r.cap + 16) * sizeof(float));
    r.planning = 0;
    r.pool = pool;
    vae_reference_pass(&r, v, z, h, w, image);
    free(r.base);
}

static void vae_test_bands(const char *label, const sd_vae *v, int h, int w)
{
    const sd_vae_config *c = &v->config;
    int f = vae_scale(c);
    size_t n = (size_t)3 * f * h * f * w;
    float *z = (float *)malloc(sizeof(float) * c->embed_dim * h * w), *ref = (float *)malloc(n * sizeof(float));
    float *img[3] = {(float *)malloc(n * sizeof(float)), (float *)malloc(n * sizeof(float)), (float *)malloc(n * sizeof(float))};
    char what[200];
    sd_error err;
    for (int i = 0; i < c->embed_dim * h * w; i++) z[i] = (float)(sin(0.37 * i) + cos(0.011 * i * i)) * 3.0f;
    size_t bytes = sd_vae_decode_arena_bytes(c, h, w);
    sd_arena *a = vae_exact_arena(bytes);
    for (int k = 0; k < 3; k++) {   /* 1, 2 and 4 threads */
        int threads = 1 << k;
        sd_arena *pa = test_arena(pool_arena_bytes(threads) + SD_ALIGN);
        sd_pool pool;
        if (!CHECK(pool_init(&pool, threads, pa, &err) == SD_OK, "pool of %d: %s", threads, err.message)) { free_arena(pa); continue; }
        if (k == 0) vae_reference_decode(v, z, h, w, ref, &pool);
        int rc = sd_vae_decode(v, z, h, w, img[k], &pool, a, &err);
        CHECK(rc == SD_OK && a->peak == bytes, "%s: banded decode %dx%d, %d threads: rc %d, peak %zu of %zu (%s)", label, h, w, threads, rc,
              a->peak, bytes, rc ? err.message : "");
        if (k == 0) {
            snprintf(what, sizeof what, "%s: banded decode %dx%d against the plain one", label, h, w);
            check_close(what, img[0], ref, (int64_t)n, 1e-5);
        } else {
            CHECK(!memcmp(img[k], img[0], n * sizeof(float)), "%s: banded decode %dx%d with %d threads differs from 1", label, h, w, threads);
        }
        pool_free(&pool);
        free_arena(pa);
    }
    printf("  %s: banded decode %dx%d: %zu arena bytes\n", label, h, w, bytes);
    free_arena(a);
    free(z); free(ref); free(img[0]); free(img[1]); free(img[2]);
}

/* A VAE of random f32 weights, without files: the configuration's decoder, every tensor filled
   with values of about the size a trained model has (convs ~ 1/sqrt(fan in), GroupNorm scales
   near 1). Freed with vae_random_free. */
typedef struct vae_random { sd_vae v; sd_tensor t[512]; float *data[512]; int n; uint32_t seed; } vae_random;

static const sd_tensor *vae_random_tensor(vae_random *m, int64_t d0, int64_t d1, int k, float scale, float center)
{
    sd_tensor *t = &m->t[m->n];
    size_t count = (size_t)d0 * (d1 ? (size_t)d1 * k * k : 1);
    float *p = (float *)malloc(count * sizeof(float));
    for (size_t i = 0; i < count; i++) {
        m->seed = m->seed * 1664525u + 1013904223u;
        p[i] = center + scale * ((float)(m->seed >> 8) / 8388608.0f - 1.0f);
    }
    memset(t, 0, sizeof *t);
    t->name = "random";
    t->dtype = SD_F32;
    t->ndim = d1 ? 4 : 1;
    t->shape[0] = d0;
    if (d1) { t->shape[1] = d1; t->shape[2] = t->shape[3] = k; }
    t->data = p;
    t->nbytes = count * sizeof(float);
    m->data[m->n++] = p;
    return t;
}

static void vae_random_conv(vae_random *m, vae_conv *c, int cout, int cin, int k)
{
    c->w = vae_random_tensor(m, cout, cin, k, 1.7f / sqrtf((float)(cin * k * k)), 0.0f);
    c->b = vae_random_tensor(m, cout, 0, 0, 0.1f, 0.0f);
}

static void vae_random_norm(vae_random *m, vae_norm *nm, int C)
{
    nm->w = vae_random_tensor(m, C, 0, 0, 0.3f, 1.0f);
    nm->b = vae_random_tensor(m, C, 0, 0, 0.3f, 0.0f);
}

static void vae_random_resnet(vae_random *m, vae_resnet *r)
{
    vae_random_norm(m, &r->norm1, r->cin);
    vae_random_conv(m, &r->conv1, r->cout, r->cin, 3);
    vae_random_norm(m, &r->norm2, r->cout);
    vae_random_conv(m, &r->conv2, r->cout, r->cout, 3);
    if (r->cin != r->cout) vae_random_conv(m, &r->shortcut, r->cout, r->cin, 1);
}

static int vae_random_make(vae_random *m, const sd_vae_config *c)
{
    sd_error err;
    memset(m, 0, sizeof *m);
    m->seed = 12345;
    if (!CHECK(vae_describe(&m->v, c, &err) == SD_OK, "random VAE: %s", err.message)) return 0;
    vae_stack *d = &m->v.decoder;
    int L = c->levels;
    vae_random_conv(m, &m->v.post_quant_conv, c->z_channels, c->embed_dim, 1);
    vae_random_conv(m, &d->conv_in, d->mid1.cin, c->z_channels, 3);
    vae_random_resnet(m, &d->mid1);
    vae_random_norm(m, &d->attn.norm, d->attn.channels);
    vae_conv *proj[4] = {&d->attn.q, &d->attn.k, &d->attn.v, &d->attn.out};
    for (int i = 0; i < 4; i++) vae_random_conv(m, proj[i], d->attn.channels, d->attn.channels, 1);
    vae_random_resnet(m, &d->mid2);
    for (int i = 0; i < L; i++) {
        vae_level *l = &d->level[i];
        for (int j = 0; j < l->resnets; j++) vae_random_resnet(m, &l->res[j]);
        if (l->resample) vae_random_conv(m, &l->resample_conv, l->channels, l->channels, 3);
    }
    vae_random_norm(m, &d->norm_out, c->channels[0]);
    vae_random_conv(m, &d->conv_out, 3, c->channels[0], 3);
    m->v.config.has_encoder = 0;
    return 1;
}

static void vae_random_free(vae_random *m)
{
    for (int i = 0; i < m->n; i++) free(m->data[i]);
}

/* Random VAEs whose finest level changes the channel count (the streamed upsampling path), with
   GroupNorm groups of 2 and 4 channels, one whose channels shrink twice (the folded upsampling
   path below the finest level), and one whose finest level has a third of the channels of the
   one below: there the output's block must be longer than the output for narrow bands (2 rows
   in an image 2200 pixels wide) not to overwrite the input rows a later band reads. */
static void vae_test_random_bands(void)
{
    static const struct { int levels, channels[3], groups, h, w; } cases[4] = {
        {2, {32, 64, 0}, 16, 40, 24},
        {3, {16, 32, 64}, 8, 20, 12},
        {2, {48, 96, 0}, 16, 17, 21},
        {2, {32, 96, 0}, 16, 3, 1100},
    };
    for (int k = 0; k < 4; k++) {
        sd_vae_config c;
        vae_random *m = (vae_random *)malloc(sizeof *m);
        char label[64];
        sd_vae_config_default(&c);
        c.levels = cases[k].levels;
        memcpy(c.channels, cases[k].channels, sizeof cases[k].channels);
        c.num_res_blocks = 1;
        c.norm_groups = cases[k].groups;
        c.has_encoder = 0;
        snprintf(label, sizeof label, "random VAE %d levels %d..%d", c.levels, c.channels[0], c.channels[c.levels - 1]);
        if (vae_random_make(m, &c)) {
            vae_test_bands(label, &m->v, cases[k].h, cases[k].w);
            vae_test_bands(label, &m->v, 1, k + 1);   /* a few pixels: one band, GEMMs of few rows */
            if (k == 0) vae_test_bands(label, &m->v, 3, 1100);   /* 2200 pixels wide: bands of 2 rows */
            if (k == 3) CHECK(vae_stream_xoff(6, 2200, 96, 32, 2) > (size_t)6 * 2200 * 32 - (size_t)3 * 1100 * 96,
                              "%s: the output's block is no longer than the output", label);
        }
        vae_random_free(m);
        free(m);
    }
}

/* Every decode{i} and encode{i} case of a golden vae.safetensors, through one model file. */
static void vae_test_model(const char *label, const char *model_path, const char *golden_rel, int extras)
{
    size_t size;
    unsigned char *bytes = read_file(model_path, &size);
    sd_arena *meta = test_arena(8u << 20), *pool_arena = test_arena(pool_arena_bytes(1) + SD_ALIGN);
    sd_safetensors st;
    sd_vae *v = NULL;
    sd_error err;
    sd_pool pool;
    golden_file *g = golden_open(golden_rel);
    char name[128], what[400];
    if (!CHECK(bytes && g, "%s: cannot read %s or %s", label, model_path, golden_rel)) goto done;
    n_cases++;
    if (!CHECK(sd_safetensors_open(&st, bytes, size, meta, &err) == SD_OK, "%s: %s", label, err.message)) goto done;
    int rc = sd_vae_load(&v, &st, meta, &err);
    if (rc == SD_ERR_UNSUPPORTED) { printf("note: VAE of %s: %s; skipped\n", label, err.message); goto done; }
    if (!CHECK(rc == SD_OK, "%s: load: %s", label, err.message)) goto done;
    if (!CHECK(pool_init(&pool, 1, pool_arena, &err) == SD_OK, "pool: %s", err.message)) goto done;
    const sd_vae_config *c = &v->config;
    const char *gs = sd_safetensors_meta(&g->st, "scaling_factor");
    if (sd_safetensors_meta(&st, "sd.vae.scaling_factor") && gs)
        CHECK(fabs(c->scaling_factor - atof(gs)) < 1e-7, "%s: scaling factor %g, golden %s", label, (double)c->scaling_factor, gs);
    printf("  %s: VAE %d levels, channels %d..%d, %d ResNets/level, z %d, scaling %g%s, weights %s\n", label, c->levels,
           c->channels[0], c->channels[c->levels - 1], c->num_res_blocks, c->z_channels, (double)c->scaling_factor,
           sd_safetensors_meta(&st, "sd.vae.scaling_factor") ? "" : " (default: no metadata)", sd_dtype_name(v->decoder.conv_in.w->dtype));

    for (int i = 0;; i++) {   /* decode cases */
        int64_t n;
        const float *want;
        const sd_tensor *zt = golden_decode_case(g, i, c->embed_dim, &want, &n, label);
        if (!zt) break;
        if (!want) continue;
        int h = (int)zt->shape[2], w = (int)zt->shape[3];
        size_t need = sd_vae_decode_arena_bytes(c, h, w);
        sd_arena *a = vae_exact_arena(need);
        float *img = (float *)malloc((size_t)n * sizeof(float));
        snprintf(name, sizeof name, "decode%d", i);
        vae_debug d = {g, label, name, 2e-5, 0};
        int rc = vae_decode_run(v, (const float *)zt->data, h, w, img, &pool, vae_debug_probe, &d, a, &err);
        if (CHECK(rc == SD_OK, "%s: decode%d: %s", label, i, rc ? err.message : "")) {
            CHECK(n == (int64_t)3 * h * w * vae_scale(c) * vae_scale(c), "%s: decode%d image size", label, i);
            snprintf(what, sizeof what, "%s decode%d.image (%dx%d)", label, i, h, w);
            check_close(what, img, want, n, 2e-5);
            CHECK(d.seen == vae_debug_count(g, name), "%s: %d of %d debug tensors of decode%d met", label, d.seen, vae_debug_count(g, name), i);
        }
        free(img);
        free_arena(a);
    }

    for (int i = 0; c->has_encoder; i++) {   /* encode cases */
        snprintf(name, sizeof name, "encode%d.image_uint8", i);
        const sd_tensor *ut = sd_safetensors_find(&g->st, name);
        if (!ut) break;
        if (!CHECK(ut->dtype == SD_U8 && ut->ndim == 3 && ut->shape[2] == 3, "%s: %s shape", label, name)) continue;
        int H = (int)ut->shape[0], W = (int)ut->shape[1], f = vae_scale(c), e = c->embed_dim;
        size_t P = (size_t)H * W, p = P / ((size_t)f * f);
        const uint8_t *u8 = (const uint8_t *)ut->data;
        float *x = (float *)malloc(3 * P * sizeof(float)), *mom = (float *)malloc(2 * e * p * sizeof(float));
        float *post = (float *)malloc(3 * e * p * sizeof(float));
        for (size_t k = 0; k < P; k++)   /* HWC uint8 → NCHW in [-1, 1], as diffusers' VaeImageProcessor */
            for (int ch = 0; ch < 3; ch++) x[ch * P + k] = 2.0f * ((float)u8[k * 3 + ch] / 255.0f) - 1.0f;
        sd_arena *a = vae_exact_arena(sd_vae_encode_arena_bytes(c, H, W));
        snprintf(name, sizeof name, "encode%d", i);
        vae_debug d = {g, label, name, 1e-4, 0};
        int rc = vae_encode_run(v, x, H, W, mom, &pool, vae_debug_probe, &d, a, &err);
        if (CHECK(rc == SD_OK, "%s: encode%d: %s", label, i, rc ? err.message : "")) {
            static const char *const parts[4] = {"moments", "mean", "logvar", "std"};
            sd_vae_posterior(mom, e, H / f, W / f, post, post + e * p, post + 2 * e * p);
            for (int k = 0; k < 4; k++) {
                int64_t n;
                snprintf(what, sizeof what, "encode%d.%s", i, parts[k]);
                const float *want = golden_f32(g, what, &n);
                if (!want || !CHECK(n == (int64_t)(k ? e : 2 * e) * (int64_t)p, "%s: %s size", label, what)) continue;
                snprintf(what, sizeof what, "%s encode%d.%s (%dx%d)", label, i, parts[k], H, W);
                check_close(what, k ? post + (k - 1) * e * p : mom, want, n, 1e-4);
            }
            CHECK(d.seen == vae_debug_count(g, name), "%s: %d of %d debug tensors of encode%d met", label, d.seen, vae_debug_count(g, name), i);
        }
        free_arena(a);
        free(x); free(mom); free(post);
    }

    /* sampling, as the img2img goldens did it: init_latents = scaling · (mean + std · noise) */
    if (sd_safetensors_meta(&st, "sd.vae.scaling_factor")) {
        char dir[1024], sub[128], rel2[420];
        snprintf(sub, sizeof sub, "%.127s", golden_rel);
        *strrchr(sub, '/') = 0;   /* the model's golden folder */
        snprintf(dir, sizeof dir, "%s/%s", golden_dir, sub);
        DIR *dd = opendir(dir);
        struct dirent *de;
        while (dd && (de = readdir(dd))) {
            if (strncmp(de->d_name, "img2img_", 8) || !strstr(de->d_name, ".safetensors")) continue;
            snprintf(rel2, sizeof rel2, "%.127s/%.280s", sub, de->d_name);
            golden_file *gi = golden_open(rel2);
            int64_t n1, n2, n3, n4;
            const float *m = gi ? golden_f32(gi, "posterior_mean", &n1) : NULL, *s = gi ? golden_f32(gi, "posterior_std", &n2) : NULL;
            const float *nz = gi ? golden_f32(gi, "posterior_noise", &n3) : NULL, *want = gi ? golden_f32(gi, "init_latents", &n4) : NULL;
            if (m && s && nz && want && CHECK(n1 == n2 && n2 == n3 && n3 == n4, "%s: %s sizes", label, rel2)) {
                float *lat = (float *)malloc((size_t)n1 * sizeof(float));
                sd_vae_sample(m, s, nz, (size_t)n1, lat);
                for (int64_t k = 0; k < n1; k++) lat[k] *= c->scaling_factor;
                snprintf(name, sizeof name, "%s init_latents", label);
                check_close(name, lat, want, n1, 1e-6);
                free(lat);
            }
            golden_close(gi);
        }
        if (dd) closedir(dd);
    }

    if (extras) {
        vae_test_memory(label, v, &pool);
        vae_test_tiled(label, v, g, &pool);
        vae_test_bands(label, v, 40, 24);
    }
    vae_test_files(label, &st, v, &pool);
    pool_free(&pool);
done:
    golden_close(g);
    free_arena(meta);
    free_arena(pool_arena);
    free(bytes);
}

/* Arena bytes from the configuration alone, for the real SD VAE; tiled memory does not grow. */
static void vae_test_sizes(void)
{
    sd_vae_config c;
    sd_vae_config_default(&c);
    size_t d512 = sd_vae_decode_arena_bytes(&c, 64, 64), d1024 = sd_vae_decode_arena_bytes(&c, 128, 128);
    size_t e512 = sd_vae_encode_arena_bytes(&c, 512, 512), t = sd_vae_decode_tiled_arena_bytes(&c, 128, 128, 64, 16);
    printf("  SD VAE (128, 256, 512, 512): decode 512x512 %zu bytes (%.1f MiB), 1024x1024 %zu (%.1f MiB); encode 512x512 %zu (%.1f MiB); "
           "tiled 64/16 decode %zu (%.1f MiB)\n", d512, d512 / 1048576.0, d1024, d1024 / 1048576.0, e512, e512 / 1048576.0, t, t / 1048576.0);
    /* the decoder holds one 128-channel tensor at full size (128 MiB) and bands: with the image
       and the thread pool, under 165 MB for the whole 512x512 txt2img */
    CHECK(d512 >= (size_t)512 * 512 * 128 * 4 && d512 <= (size_t)150 << 20, "decode 512x512: %zu bytes", d512);
    CHECK(d1024 >= 4 * (size_t)512 * 512 * 128 * 4 && d1024 <= (size_t)536 << 20, "decode 1024x1024: %zu bytes", d1024);
    CHECK(t == sd_vae_decode_tiled_arena_bytes(&c, 512, 384, 64, 16), "tiled decode memory grows with the image");
    CHECK(sd_vae_decode_arena_bytes(&c, 0, 64) == 0 && sd_vae_encode_arena_bytes(&c, 500, 512) == 0, "invalid sizes give 0 bytes");
    c.channels[1] = 100;   /* not a multiple of 32 groups */
    CHECK(sd_vae_decode_arena_bytes(&c, 64, 64) == 0, "an invalid configuration gives 0 bytes");
}

static void test_vae(void)
{
    int n = golden_models_read(), extras = 1, checked = 0;
    vae_test_sizes();
    vae_test_tile_weights();
    vae_test_random_bands();
    for (int i = 0; i < n; i++) {
        const golden_model *gm = &golden_models[i];
        char rel[600], path[1600];
        snprintf(rel, sizeof rel, "%.500s/vae.safetensors", gm->name);
        if (!golden_exists(gm->name, "vae.safetensors")) {
            if (n > 1) printf("  %s: no %s, skipped\n", gm->name, rel);
            continue;
        }
        for (int k = 0; k < LAYOUTS; k++) {
            if (!*gm->path[k]) continue;
            snprintf(path, sizeof path, "%s%s", gm->path[k], k == LAYOUT_DIFFUSERS ? "/vae/diffusion_pytorch_model.safetensors" : "");
            vae_test_model(strrchr(gm->path[k], '/') + 1, path, rel, extras);
            extras = 0;   /* sizes and tiling once, on the first model */
        }
        checked++;
    }
    if (!checked && !n) note_no_models();
    else if (!checked) note_absent("vae", "no model of %s/models has a NAME/vae.safetensors, VAE goldens skipped", golden_dir);
}

/* Whole pipelines against diffusers: every txt2img_* / img2img_* golden GOLDEN_DIR/NAME/ of every
   model NAME of GOLDEN_DIR/models/ that sd_model_load takes, through its single file and its
   diffusers folder. Parameters come from each golden's metadata; initial latents and img2img noise
   from its tensors (or, for a golden that only gives a seed, from our torch-exact generator). */

static const char *meta_or(golden_file *g, const char *key, const char *dflt)
{
    const char *v = sd_safetensors_meta(&g->st, key);
    return v ? v : dflt;
}

/* A pipeline golden's sampler: diffusers' scheduler class and its config (or the golden set's own
   name, when no class is given), and whether it uses Karras sigmas; -1 when sd.h has no such sampler. */
static int golden_sampler(golden_file *g, int *karras)
{
    const char *cfg = meta_or(g, "scheduler", "{}"), *name = sd_safetensors_meta(&g->st, "sampler");
    int kind = sampler_kind_from_class(meta_or(g, "scheduler_class", "DDIMScheduler"));
    *karras = config_flag(cfg, "use_karras_sigmas", 0);
    if (name && !sd_safetensors_meta(&g->st, "scheduler_class")) {
        static const char *const names[5] = {"ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras"};
        int k = 0;
        while (k < 5 && strcmp(name, names[k])) k++;
        kind = k < 4 ? k : k == 4 ? SD_SAMPLER_DPMPP_2M : -1;
        *karras |= k == 4;
    }
    return kind >= 0 && sampler_config_unsupported(kind, cfg) ? -1 : kind;
}

/* Every step's latents of a run (what the preview callback sees), for the step{k}.latents_out goldens. */
typedef struct golden_steps { float *latents; int steps, seen; size_t lat; } golden_steps;

static void golden_collect(void *user, int step, const float *latents, int h, int w)
{
    golden_steps *s = (golden_steps *)user;
    (void)h; (void)w;
    if (step >= 1 && step <= s->steps) memcpy(s->latents + (size_t)(step - 1) * s->lat, latents, s->lat * sizeof(float));
    s->seen = step;
}

/* The TAESD that the TAESD tests set for run_golden's decodes (and img2img encodes), or NULL. */
static const sd_taesd *pipeline_taesd;

/* Runs one golden's generation with `threads` threads; fills rgb (and latents, image and each
   step's latents when given). */
static int run_golden_steps(const sd_model *m, golden_file *g, int threads, int vae_tile, int quant, uint8_t *rgb, float *latents, float *image,
                            golden_steps *steps, sd_error *err)
{
    sd_params p;
    ddim_config c;
    char lora_path[1100];
    lora_dir loras;
    sd_params_init(&p);
    p.quant = quant;
    p.prompt = meta_or(g, "prompt", "");
    /* LoRA goldens: the prompt with AUTOMATIC1111's <lora:NAME:w> tags, the files from GOLDEN_DIR/lora as the CLI finds them */
    memset(&loras, 0, sizeof loras);
    if (sd_safetensors_meta(&g->st, "a1111_prompt")) {
        snprintf(lora_path, sizeof lora_path, "%s/lora", golden_dir);
        loras.dir = lora_path;
        p.prompt = sd_safetensors_meta(&g->st, "a1111_prompt");
        p.lora_resolve = lora_from_dir;
        p.lora_user = &loras;
    }
    p.negative_prompt = meta_or(g, "negative_prompt", "");
    if (!strncmp(p.negative_prompt, "(None", 5)) p.negative_prompt = NULL;   /* how a golden says none was given */
    p.steps = atoi(meta_or(g, "num_inference_steps", "0"));
    p.guidance = strtof(meta_or(g, "guidance_scale", "7.5"), NULL);
    p.width = atoi(meta_or(g, "width", "0"));
    p.height = atoi(meta_or(g, "height", "0"));
    p.seed = strtoull(meta_or(g, "seed", "0"), NULL, 10);
    p.eta = strtof(meta_or(g, "eta", "0"), NULL);
    p.threads = threads;
    p.vae_tile = vae_tile;
    const char *cfg = meta_or(g, "scheduler", "{}");
    if (ddim_config_from_json(&c, cfg, g->path)) p.spacing = c.spacing;
    if (!CHECK((p.sampler = golden_sampler(g, &p.karras)) >= 0, "%s: scheduler not known to the test", g->path)) p.sampler = SD_SAMPLER_DDIM;
    /* SDXL's size conditioning, "[h, w]" in the metadata */
    static const char *const sizes[3] = {"original_size", "crops_coords_top_left", "target_size"};
    int *dst[3] = {p.original_size, p.crop_top_left, p.target_size};
    for (int i = 0; i < 3; i++) {
        const char *v = sd_safetensors_meta(&g->st, sizes[i]);
        if (v) CHECK(sscanf(v, "[%d, %d]", &dst[i][0], &dst[i][1]) == 2, "%s: %s = '%s'", g->path, sizes[i], v);
    }
    /* the per-step noise of Euler a and LCM (which draws none at its last step), given */
    float *step_noise = NULL;
    if (sd_safetensors_find(&g->st, "step0.noise")) {
        int64_t n = 0;
        size_t lat = (size_t)4 * (p.height / 8) * (p.width / 8);
        step_noise = (float *)calloc((size_t)(p.steps > 0 ? p.steps : 1) * lat, sizeof(float));
        for (int k = 0; k < p.steps; k++) {
            char key[64];
            snprintf(key, sizeof key, "step%d.noise", k);
            const float *v = sd_safetensors_find(&g->st, key) ? golden_f32(g, key, &n) : NULL;
            if (v && CHECK((size_t)n == lat, "%s: %s size", g->path, key)) memcpy(step_noise + (size_t)k * lat, v, lat * sizeof(float));
        }
        p.step_noise = step_noise;
    }
    /* the init image (img2img, inpainting, InstructPix2Pix), its mask, and the given draws */
    const sd_tensor *init = sd_safetensors_find(&g->st, "init_image_uint8"), *mask = sd_safetensors_find(&g->st, "mask_uint8");
    p.init_rgb = init ? (const uint8_t *)init->data : NULL;
    p.mask = mask ? (const uint8_t *)mask->data : NULL;
    p.strength = strtod(meta_or(g, "strength", "0"), NULL);
    p.image_guidance = strtof(meta_or(g, "image_guidance_scale", "1.5"), NULL);
    if (!sd_safetensors_meta(&g->st, "seed")) {
        static const char *const given[4] = {"initial_latents", "posterior_noise", "noise", "masked_image_posterior_noise"};
        const float **field[4] = {&p.initial_latents, &p.posterior_noise, &p.noise, &p.masked_image_noise};
        for (int i = 0; i < 4; i++) *field[i] = sd_safetensors_find(&g->st, given[i]) ? golden_f32(g, given[i], NULL) : NULL;
    }
    p.latents_out = latents;
    p.image_out = image;
    p.preview = steps ? golden_collect : NULL;
    p.user = steps;
    p.taesd = pipeline_taesd;
    size_t need = sd_generate_arena_bytes(m, &p);
    sd_arena *a = test_arena(need + 64);
    int rc = sd_generate(m, &p, a, rgb, err);
    CHECK(rc != SD_OK || a->peak == need, "%s: generation peaked at %zu arena bytes, planned %zu", g->path, a->peak, need);
    free_arena(a);
    free(step_noise);
    lora_dir_close(&loras);
    return rc;
}

static int run_golden(const sd_model *m, golden_file *g, int threads, int vae_tile, int quant, uint8_t *rgb, float *latents, float *image, sd_error *err)
{
    return run_golden_steps(m, g, threads, vae_tile, quant, rgb, latents, image, NULL, err);
}

static int pipelines_checked;

/* The fast mode's bounds on the pipeline goldens (max|x - golden| / max|golden|; uint8 levels):
   the worst of every golden measured with the int8 kernel's K in chunks of 288 values and of
   1152 (tiny-sd2's txt2img_4steps: 0.123, 0.168, 59; tiny-sd1's worst 0.067, 0.085, 18;
   tiny-sdxl's 0.032, 0.057, 22; README) and a quarter more. Tiny models with random weights
   magnify errors, and chaotically: K chunks of 1152 values instead of 288 (the same int8
   products, summed in float in another order) moved tiny-sd2's latents from 0.088 to 0.123 and
   tiny-sd1's 256x256 ones from 0.048 to 0.035. The full-size random SD 1.5 moves by 1.9 % (UNet). */
#define FAST_LATENTS 0.155
#define FAST_IMAGE 0.21
#define FAST_UINT8 74

/* max|x - want| / max|want| */
static double rel_to_max(const float *x, const float *want, int64_t n)
{
    double d = 0, r = 0;
    for (int64_t i = 0; i < n; i++) { d = fmax(d, fabs((double)x[i] - want[i])); r = fmax(r, fabs((double)want[i])); }
    return r > 0 ? d / r : d;
}

/* The same generation in the fast mode (int8 products) against the golden, within the bounds the
   README gives: what quantizing the activations (and requantizing the weights) moves, measured
   on every golden. Also prints the figures. lat, img, rgb: scratch of the golden's sizes. */
static void check_pipeline_fast(const sd_model *m, golden_file *g, const char *rel, float *lat, float *img, uint8_t *rgb)
{
    int64_t nl, ni, nu;
    sd_error err;
    const float *want_lat = golden_f32(g, "final_latents", &nl), *want_img = golden_f32(g, "image_decoded", &ni);
    const sd_tensor *want_u8 = sd_safetensors_find(&g->st, "image_uint8");
    nu = sd_tensor_numel(want_u8);
    if (!CHECK(run_golden(m, g, 2, 0, SD_QUANT_FAST, rgb, lat, img, &err) == SD_OK, "%s fast mode: %s", rel, err.message)) return;
    int worst = 0;
    for (int64_t i = 0; i < nu; i++) worst = abs((int)rgb[i] - (int)((const uint8_t *)want_u8->data)[i]) > worst ? abs((int)rgb[i] - (int)((const uint8_t *)want_u8->data)[i]) : worst;
    double dl = rel_to_max(lat, want_lat, nl), di = rel_to_max(img, want_img, ni);
    printf("  fast mode %s: final_latents %.4f, image_decoded %.4f of max, image_uint8 max diff %d\n", rel, dl, di, worst);
    CHECK(dl <= FAST_LATENTS && di <= FAST_IMAGE && worst <= FAST_UINT8, "%s fast mode: final_latents %.4f (bound %g), image_decoded %.4f (%g), "
          "image_uint8 %d (%d)", rel, dl, FAST_LATENTS, di, FAST_IMAGE, worst, FAST_UINT8);
}

/* One pipeline golden end to end; 0 when it was skipped (absent, or a scheduler sd.h lacks). */
static int check_pipeline(const sd_model *m, const char *rel)
{
    golden_file *g = golden_open(rel);
    char what[1400];
    sd_error err;
    if (!g) return 0;
    int karras;
    if (golden_sampler(g, &karras) < 0) {   /* a scheduler sd.h does not have yet */
        note_absent(g->path, "%s: scheduler %s not implemented, skipped", g->path, meta_or(g, "scheduler_class", meta_or(g, "sampler", "?")));
        golden_close(g);
        return 0;
    }
    int64_t nl, ni, nu;
    const float *want_lat = golden_f32(g, "final_latents", &nl), *want_img = golden_f32(g, "image_decoded", &ni);
    const sd_tensor *want_u8 = sd_safetensors_find(&g->st, "image_uint8");
    if (!want_lat || !want_img || !CHECK(want_u8 != NULL, "%s: no image_uint8", g->path)) { golden_close(g); return 1; }
    nu = sd_tensor_numel(want_u8);
    float *lat = (float *)malloc((size_t)nl * sizeof(float)), *img = (float *)malloc((size_t)ni * sizeof(float));
    uint8_t *rgb = (uint8_t *)malloc((size_t)nu);
    const sd_tensor *ts = sd_safetensors_find(&g->st, "timesteps");
    golden_steps st = {NULL, ts ? (int)sd_tensor_numel(ts) : 0, 0, (size_t)nl};
    st.latents = (float *)calloc((size_t)(st.steps > 0 ? st.steps : 1) * st.lat, sizeof(float));
    int rc = run_golden_steps(m, g, 1, 0, SD_QUANT_EXACT, rgb, lat, img, &st, &err);
    pipelines_checked++;
    n_cases++;
    if (CHECK(rc == SD_OK, "%s: %s", g->path, err.message)) {
        CHECK(!ts || st.seen == st.steps, "%s: %d steps run, the golden's timesteps are %d", rel, st.seen, st.steps);
        for (int k = 0; k < st.seen && k < st.steps; k++) {   /* each step's latents, where the golden has them */
            char name[64];
            snprintf(name, sizeof name, "step%d.latents_out", k);
            snprintf(what, sizeof what, "%s %s", rel, name);
            if (sd_safetensors_find(&g->st, name)) check_close(what, st.latents + (size_t)k * st.lat, golden_f32(g, name, NULL), (int64_t)st.lat, 1e-4);
        }
        snprintf(what, sizeof what, "%s final_latents", rel);
        check_close(what, lat, want_lat, nl, 1e-4);
        snprintf(what, sizeof what, "%s image_decoded", rel);
        check_close(what, img, want_img, ni, 1e-4);
        int worst = 0;
        for (int64_t i = 0; i < nu; i++) {
            int d = abs((int)rgb[i] - (int)((const uint8_t *)want_u8->data)[i]);
            if (d > worst) worst = d;
        }
        CHECK(worst <= 1, "%s image_uint8: a pixel differs by %d", rel, worst);
        check_pipeline_fast(m, g, rel, lat, img, rgb);
    }
    /* prompt ids as the pipeline tokenizes them (SDXL: both tokenizers) */
    for (int e = 0; e < m->encoders; e++) {
        const sd_tensor *pid = sd_safetensors_find(&g->st, e ? "prompt_ids_2" : "prompt_ids");
        if (!CHECK(pid && pid->dtype == SD_I64 && sd_tensor_numel(pid) == SD_CLIP_CONTEXT, "%s: no prompt_ids%s", rel, e ? "_2" : "")) continue;
        int32_t ids[SD_CLIP_CONTEXT];
        sd_arena *a = test_arena(sd_clip_scratch_bytes(1024));
        const char *prompt = meta_or(g, "prompt", "");
        int same = !sd_clip_tokenize(m->vocab, prompt, strlen(prompt), m->pad[e], ids, NULL, a, &err);
        for (int i = 0; same && i < SD_CLIP_CONTEXT; i++) same = ids[i] == ((const int64_t *)pid->data)[i];
        CHECK(same, "%s: prompt_ids%s differ from ours", rel, e ? "_2" : "");
        free_arena(a);
    }
    free(st.latents);
    free(lat);
    free(img);
    free(rgb);
    golden_close(g);
    return 1;
}

static int cancel_at_2(void *user, int step, int steps)
{
    (void)steps;
    ++*(int *)user;
    return step == 2;
}

/* A 64 x 64, 2-step generation of `batch` images from `seed` on 2 threads. */
static int generate64(const sd_model *m, const char *prompt, uint64_t seed, int batch, int quant, uint8_t *rgb)
{
    sd_params p;
    sd_error err;
    sd_params_init(&p);
    p.prompt = prompt;
    p.width = p.height = 64;
    p.steps = 2;
    p.seed = seed;
    p.batch_count = batch;
    p.threads = 2;
    p.quant = quant;
    sd_arena *a = test_arena(sd_generate_arena_bytes(m, &p));
    int rc = sd_generate(m, &p, a, rgb, &err);
    CHECK(rc == SD_OK, "generate 64 x 64: %s", rc ? err.message : "");
    free_arena(a);
    return rc;
}

/* Same bytes for 1, 2 and 4 threads; cancellation; a too-small arena refused before any work. */
static void check_pipeline_contracts(const sd_model *m, const char *rel)
{
    golden_file *g = golden_open(rel);
    sd_error err;
    if (!g) return;
    const sd_tensor *want_u8 = sd_safetensors_find(&g->st, "image_uint8");
    size_t n = want_u8 ? (size_t)sd_tensor_numel(want_u8) : 0;
    uint8_t *rgb[3];
    int rc[3];
    for (int i = 0; i < 3; i++) {
        rgb[i] = (uint8_t *)malloc(n ? n : 1);
        rc[i] = run_golden(m, g, 1 << i, 0, SD_QUANT_EXACT, rgb[i], NULL, NULL, &err);
    }
    CHECK(n && !rc[0] && !rc[1] && !rc[2] && !memcmp(rgb[0], rgb[1], n) && !memcmp(rgb[0], rgb[2], n),
          "%s: 1, 2 and 4 threads give different images", rel);
    for (int i = 0; i < 3; i++) rc[i] = run_golden(m, g, 1 << i, 0, SD_QUANT_FAST, rgb[i], NULL, NULL, &err);
    CHECK(n && !rc[0] && !rc[1] && !rc[2] && !memcmp(rgb[0], rgb[1], n) && !memcmp(rgb[0], rgb[2], n),
          "%s fast mode: 1, 2 and 4 threads give different images", rel);
    for (int i = 0; i < 3; i++) free(rgb[i]);

    /* tiled VAE decode: close to the whole decode (each tile normalises on its own) */
    int64_t ni;
    const float *want_img = golden_f32(g, "image_decoded", &ni);
    float *img = (float *)malloc((size_t)(ni > 0 ? ni : 1) * sizeof(float));
    uint8_t *tiled = (uint8_t *)malloc(n ? n : 1);
    if (want_img && CHECK(run_golden(m, g, 2, 12, SD_QUANT_EXACT, tiled, NULL, img, &err) == SD_OK, "%s tiled decode: %s", rel, err.message)) {
        double worst = 0, sum = 0, ref = 0;
        for (int64_t i = 0; i < ni; i++) {
            double d = fabs((double)img[i] - want_img[i]);
            worst = d > worst ? d : worst;
            sum += d;
            ref = fabs(want_img[i]) > ref ? fabs(want_img[i]) : ref;
        }
        CHECK(worst <= 0.3 * ref && sum / ni <= 0.03 * ref, "%s tiled decode (tile 12): max diff %.3g, mean %.3g of max %.3g", rel, worst, sum / ni, ref);
    }
    free(img);
    free(tiled);

    /* batch_count: image i is the generation with seed + i */
    {
        uint8_t *two = (uint8_t *)malloc(2 * 3 * 64 * 64), *one = (uint8_t *)malloc(3 * 64 * 64);
        int r2 = generate64(m, "a cat", 5, 2, SD_QUANT_EXACT, two), r1 = generate64(m, "a cat", 6, 1, SD_QUANT_EXACT, one);
        CHECK(!r2 && !r1 && !memcmp(two + 3 * 64 * 64, one, 3 * 64 * 64) && memcmp(two, one, 3 * 64 * 64),
              "%s: batch_count 2 from seed 5: the second image is not seed 6's (rc %d, %d)", rel, r2, r1);
        free(two);
        free(one);
    }

    sd_params p;
    int calls = 0;
    uint8_t *out = (uint8_t *)malloc(3 * 64 * 64);
    sd_params_init(&p);
    p.prompt = "a cat";
    p.width = p.height = 64;
    p.steps = 4;
    p.progress = cancel_at_2;
    p.user = &calls;
    size_t need = sd_generate_arena_bytes(m, &p);
    sd_arena *a = test_arena(need);
    size_t used = a->used;
    int r = sd_generate(m, &p, a, out, &err);
    CHECK(r == SD_ERR_CANCELLED && calls == 2 && a->used == used, "cancel at step 2: rc %d after %d calls", r, calls);
    free_arena(a);
    calls = 0;
    a = test_arena(need - 1);
    r = sd_generate(m, &p, a, out, &err);
    CHECK(r == SD_ERR_MEMORY && calls == 0 && strstr(err.message, "arena"), "arena one byte short: rc %d, %d steps ran: %s", r, calls, err.message);
    free_arena(a);
    /* parameters that only the schedule can judge are refused before any work (no arena used) */
    p.progress = NULL;
    for (int k = 0; k < 3; k++) {
        sd_params q = p;
        if (k == 0) q.eta = -1;
        if (k == 1) q.spacing = 7;
        if (k == 2) { q.init_rgb = out; q.strength = 0.1; }   /* 0.1 of 4 steps keeps none */
        a = test_arena(need);
        r = sd_generate(m, &q, a, out, &err);
        CHECK(r == SD_ERR_ARG && a->peak == 0, "bad parameter %d: rc %d, %zu arena bytes used before failing", k, r, a->peak);
        free_arena(a);
    }
    /* the stage functions on a pool from the public API give what one thread gives */
    {
        int32_t ids[SD_CLIP_CONTEXT];
        float *ctx1 = (float *)malloc(sizeof(float) * SD_CLIP_CONTEXT * m->te[0].width), *ctx2 = (float *)malloc(sizeof(float) * SD_CLIP_CONTEXT * m->te[0].width);
        sd_pool *pools[2];
        a = test_arena(sd_pool_arena_bytes(1) + sd_pool_arena_bytes(3) + sd_text_encoder_arena_bytes(&m->te[0], 1, 0) + sd_clip_scratch_bytes(16));
        r = sd_pool_create(&pools[0], 1, a, &err) || sd_pool_create(&pools[1], 3, a, &err) ||
            sd_clip_tokenize(m->vocab, "a cat", 5, m->pad[0], ids, NULL, a, &err) ||
            sd_text_encode(&m->te[0], ids, 1, 0, ctx1, NULL, pools[0], a, &err) || sd_text_encode(&m->te[0], ids, 1, 0, ctx2, NULL, pools[1], a, &err);
        CHECK(!r && !memcmp(ctx1, ctx2, sizeof(float) * SD_CLIP_CONTEXT * m->te[0].width), "sd_pool_create pools: %s", r ? err.message : "results differ");
        sd_pool_destroy(pools[1]);
        sd_pool_destroy(pools[0]);
        free_arena(a);
        free(ctx1);
        free(ctx2);
    }
    p.width = 100;
    CHECK(sd_generate(m, &p, NULL, out, &err) == SD_ERR_ARG && sd_generate_arena_bytes(m, &p) == 0, "width 100 is refused");
    /* sd_model_arena_bytes is enough even for a header of 100,000 tiny metadata pairs: the load then
       fails for what the file lacks, not for memory */
    {
        size_t cap = 100000 * 16 + 64, len = 0, size;
        char *h = (char *)malloc(cap);
        len += (size_t)snprintf(h + len, cap - len, "{\"__metadata__\":{");
        for (int i = 0; i < 100000; i++) len += (size_t)snprintf(h + len, cap - len, "%s\"%x\":\"\"", i ? "," : "", i);
        snprintf(h + len, cap - len, "}}");
        unsigned char *file = make_file(h, NULL, 0, &size);
        sd_source src;
        sd_model *mm;
        memset(&src, 0, sizeof src);
        src.data[0] = file;
        src.size[0] = size;
        src.count = 1;
        src.merges = "#version: 0.2\n";
        src.merges_size = 14;
        a = test_arena(sd_model_arena_bytes(&src));
        r = sd_model_load(&mm, &src, a, &err);
        CHECK(r != SD_OK && r != SD_ERR_MEMORY && a->used == 0, "metadata-heavy file: rc %d (%s)", r, err.message);
        free_arena(a);
        free(file);
        free(h);
    }
    free(out);
    golden_close(g);
}

/* Every pipeline golden of model `name` (GOLDEN_DIR/name/), and the contracts on its first txt2img one. */
static void run_pipeline_goldens(const sd_model *m, const char *name, int contracts)
{
    char sub[1100], rel[1000];
    struct dirent *f;
    snprintf(sub, sizeof sub, "%s/%s", golden_dir, name);
    DIR *dir = opendir(sub);
    while (dir && (f = readdir(dir))) {
        if (!is_pipeline_golden(f->d_name)) continue;
        snprintf(rel, sizeof rel, "%.700s/%.255s", name, f->d_name);
        if (check_pipeline(m, rel) && contracts && !strncmp(f->d_name, "txt2img_", 8)) {
            contracts = 0;
            check_pipeline_contracts(m, rel);
        }
    }
    if (dir) closedir(dir);
}

/* Long and weighted prompts through the pipeline's text stage (every model with a golden folder):
   a 200-token prompt is 3 chunks (231 context tokens), each the encoder's output of its own 77
   ids; a weighted prompt's context is the plain encoding weighted by the rule written out here
   (means in double precision); both run end to end. */
static void check_long_prompts(const sd_model *m, const char *label)
{
    char longp[2000] = "";
    for (int i = 0; i < 200; i++) strcat(longp, i % 2 ? "castle " : "red ");   /* 200 words of one token each */
    sd_params p;
    sd_error err;
    sd_params_init(&p);
    p.prompt = longp;
    p.negative_prompt = "blurry";
    p.width = p.height = 64;
    p.steps = 2;
    static uint8_t grey[3 * 64 * 64], half[64 * 64];   /* inpainting and InstructPix2Pix models take an image (and a mask) */
    memset(grey, 128, sizeof grey);
    for (int i = 0; i < 64 * 64; i++) half[i] = i < 32 * 64 ? 255 : 0;
    if (m->unet->in_channels != 4) p.init_rgb = grey;
    if (m->unet->in_channels == 9) p.mask = half;
    size_t need = sd_generate_arena_bytes(m, &p);
    sd_arena *a = test_arena(need + (1u << 20)), *pa = test_arena(pool_arena_bytes(1) + SD_ALIGN);
    sd_pool pool;
    int C = 0, B = 2, D = m->context_dim, add = sd_unet_add_dim(m->unet);
    CHECK(pool_init(&pool, 1, pa, &err) == SD_OK, "pool");
    if (CHECK(count_chunks(m, &p, B, &C, a, &err) == SD_OK, "%s: %s", label, err.message))
        CHECK(C == 3 && C * SD_TEXT_TOKENS == 231, "%s: a 200-token prompt (%zu bytes) gives %d chunks, expected 3", label, strlen(longp), C);
    /* each chunk is its own 77 ids through the encoder(s) */
    float *ctx = (float *)malloc((size_t)B * C * SD_TEXT_TOKENS * D * sizeof(float)), *y = (float *)malloc((size_t)(B * add + 1) * sizeof(float));
    float *one = (float *)malloc((size_t)SD_TEXT_TOKENS * D * sizeof(float));
    if (C == 3 && CHECK(encode_text(m, &p, B, C, ctx, y, &pool, a, &err) == SD_OK, "%s: %s", label, err.message)) {
        int32_t *ids;
        float *w;
        int got;
        size_t mark = sd_arena_mark(a);
        if (CHECK(sd_prompt_chunks(m->vocab, longp, strlen(longp), m->pad[0], 1, 0, 0, &ids, &w, &got, a, &err) == SD_OK && got == 3, "%s: chunks", label)) {
            int same = 1;
            for (int c = 0; c < 3; c++) {
                CHECK(ids[c * SD_TEXT_TOKENS] == SD_CLIP_BOS, "%s: chunk %d starts with BOS", label, c);
                if (m->encoders == 1 && sd_text_encode(&m->te[0], ids + c * SD_TEXT_TOKENS, 1, 0, one, NULL, &pool, a, &err) == SD_OK)
                    same &= !memcmp(one, ctx + ((size_t)C + c) * SD_TEXT_TOKENS * D, (size_t)SD_TEXT_TOKENS * D * sizeof(float));
            }
            CHECK(same, "%s: the context of chunk c is not the encoder's output for its 77 ids", label);
        }
        sd_arena_reset(a, mark);
    }
    /* weighting: "a (castle:1.5) [at] night" against the plain prompt's encoding, weighted here */
    if (m->encoders == 1) {
        const char *weighted = "a (castle:1.5) [at] night";
        int32_t *ids;
        float *w;
        int got;
        p.prompt = weighted;
        p.negative_prompt = NULL;
        p.guidance = 1;   /* one prompt: no unconditional half */
        size_t mark = sd_arena_mark(a);
        if (CHECK(encode_text(m, &p, 1, 1, ctx, y, &pool, a, &err) == SD_OK, "%s: %s", label, err.message) &&
            CHECK(sd_prompt_chunks(m->vocab, weighted, strlen(weighted), m->pad[0], 1, 0, 1, &ids, &w, &got, a, &err) == SD_OK, "%s: %s", label, err.message) &&
            CHECK(sd_text_encode(&m->te[0], ids, 1, 0, one, NULL, &pool, a, &err) == SD_OK, "%s: %s", label, err.message)) {
            double before = 0, after = 0;
            int weighted_tokens = 0;
            size_t n = (size_t)SD_TEXT_TOKENS * D;
            double *ref = (double *)malloc(n * sizeof(double));
            for (size_t i = 0; i < n; i++) before += one[i];
            /* z *= w in float, as the rule (and A1111's torch) has it: where the context's mean is near 0
               (a full-size model with random weights), the double product's rounding would move the
               ratio of the means far more than the tolerance */
            for (size_t i = 0; i < n; i++) after += ref[i] = (float)(one[i] * w[i / D]);
            for (int t = 0; t < SD_TEXT_TOKENS; t++) weighted_tokens += w[t] != 1.0f;
            CHECK(weighted_tokens >= 2, "%s: '%s' has %d weighted tokens", label, weighted, weighted_tokens);
            float *r = (float *)malloc(n * sizeof(float));
            for (size_t i = 0; i < n; i++) r[i] = (float)(ref[i] * (before / n) / (after / n));
            char what[300];
            snprintf(what, sizeof what, "%s weighted context", label);
            check_close(what, ctx, r, (int64_t)n, 1e-5);
            free(r);
            free(ref);
        }
        sd_arena_reset(a, mark);
        p.prompt = longp;
        p.negative_prompt = "blurry";
        p.guidance = 7.5f;
    }
    /* and the long prompt end to end, and two that tokenize unevenly: "!" is a token of its own
       for SDXL's second tokenizer (so it may need more chunks than the first), and U+1D160 is
       9 tokens per 4 bytes after NFC */
    uint8_t *rgb = (uint8_t *)malloc((size_t)3 * 64 * 64);
    free_arena(a);
    a = test_arena(need);
    CHECK(sd_generate(m, &p, a, rgb, &err) == SD_OK && a->peak <= need, "%s: long prompt generation: %s (peak %zu of %zu)", label, err.message, a->peak, need);
    free_arena(a);
    char uneven[3][1400] = {"", "", ""};
    static const char *const uneven_name[3] = {"30 x '!!!! '", "300 x U+1D160", "100 x '&#x1D160;'"};
    for (int i = 0; i < 30; i++) strcat(uneven[0], "!!!! ");
    for (int i = 0; i < 300; i++) strcat(uneven[1], "\xf0\x9d\x85\xa0");
    for (int i = 0; i < 100; i++) strcat(uneven[2], "&#x1D160;");   /* ASCII at one token per byte */
    for (int k = 0; k < 3; k++) {
        p.prompt = uneven[k];
        need = sd_generate_arena_bytes(m, &p);
        a = test_arena(need);
        CHECK(need && sd_generate(m, &p, a, rgb, &err) == SD_OK && a->peak <= need, "%s: prompt of %s: %s (peak %zu of %zu)", label,
              uneven_name[k], err.message, a->peak, need);
        free_arena(a);
    }
    free(rgb);
    free(ctx);
    free(y);
    free(one);
    pool_free(&pool);
    free_arena(pa);
}

/* SD2 files without a prediction type: the v model is told from the spread of one LayerNorm
   bias (above 0.09 in SD 2.x 768; SD 2.x base and SD-Turbo are epsilon models). */
static void test_sd2_prediction_rule(void)
{
    static const char header[] = "{\"model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias\":"
                                 "{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
    const float narrow[4] = {0.1f, -0.1f, 0.05f, -0.05f}, wide[4] = {0.3f, -0.2f, 0.1f, -0.25f};
    for (int k = 0; k < 2; k++) {
        size_t size;
        unsigned char *bytes = make_file(header, k ? wide : narrow, 16, &size);
        sd_arena *a = test_arena(1 << 16);
        sd_model m;
        sd_error err;
        memset(&m, 0, sizeof m);
        if (CHECK(sd_safetensors_open(&m.files[0], bytes, size, a, &err) == SD_OK, "%s", err.message))
            CHECK(sd2_looks_v(&m) == k, "SD2 prediction rule: a bias spread of %s should read as %s", k ? "0.21" : "0.08", k ? "v" : "epsilon");
        free_arena(a);
        free(bytes);
    }
}

static void test_pipeline(void)
{
    int n = golden_models_read(), models = 0;
    test_sd2_prediction_rule();
    if (!file_exists(merges_path)) { note_absent("merges", "no merges.txt (%s): tests that need the tokenizer skipped", merges_path); return; }
    for (int i = 0; i < n; i++) {   /* each model NAME with a golden folder NAME/ */
        golden_model *gm = &golden_models[i];
        const char *single = golden_model_file(gm);
        loaded_model lm;
        char sub[1400];
        DIR *dir;
        snprintf(sub, sizeof sub, "%s/%s", golden_dir, gm->name);
        if (!(dir = opendir(sub))) continue;
        closedir(dir);
        if (single) {
            if (!load_golden_model(&lm, gm, 0)) {
                models++;
                run_pipeline_goldens(lm.model, gm->name, 1);
                check_long_prompts(lm.model, gm->name);
            }
            unload_model(&lm);
        }
        /* the same goldens through the diffusers folder, when there is one */
        if (*gm->path[LAYOUT_DIFFUSERS]) {
            if (!load_golden_model(&lm, gm, 1)) {
                run_pipeline_goldens(lm.model, gm->name, !single);
                if (!single) check_long_prompts(lm.model, gm->name);
                models++;
            }
            unload_model(&lm);
        }
    }
    if (!pipelines_checked && !count_pipeline_goldens()) note_no_pipeline_goldens();
    else if (!pipelines_checked && !n) note_no_models();
    else if (!pipelines_checked) note_absent("pipeline", "no pipeline golden in %s that sd.h can run (a model in models/ that loads, a scheduler it has), end-to-end runs skipped", golden_dir);
    printf("pipeline: %d models, %d pipeline goldens run end to end\n", models, pipelines_checked);
}

/* ---- textual inversion and LCM (golden README §11.3-11.6) --------------------------------- */
/* The LCM scheduler's goldens run with the other samplers' (check_lcm_scheduler), the LCM
   pipelines with the other pipelines (run_golden); here: the LCM UNet against lcm_unet (with
   diffusers' guidance embedding and with ours), its errors and its diffusers key, and the
   textual-inversion goldens, formats and errors. */

/* An LCM UNet: every case of GOLDEN/name/lcm_unet.safetensors with diffusers' timestep_cond
   (unet_run_cases, debug stages included), then sd_guidance_embedding against timestep_cond
   (~1e-3 absolute, README §11.5: float32 sin of arguments up to 7000) and the UNet's output
   with our embedding. */
static void lcm_unet_goldens(const sd_unet_model *u, golden_file *g, const char *label, sd_pool *pool)
{
    int gd = sd_unet_guidance_dim(u);
    char key[64], what[400];
    unet_run_cases(u, g, label, pool, NULL, NULL);
    for (int c = 0;; c++) {
        int64_t nw, nc, nout;
        snprintf(key, sizeof key, "case%d.w", c);
        if (!sd_safetensors_find(&g->st, key)) break;
        const float *w = golden_f32(g, key, &nw), *want_cond, *want, *ctx;
        snprintf(key, sizeof key, "case%d.timestep_cond", c);
        want_cond = golden_f32(g, key, &nc);
        snprintf(key, sizeof key, "case%d.out", c);
        want = golden_f32(g, key, &nout);
        snprintf(key, sizeof key, "case%d.x", c);
        const sd_tensor *tx = sd_safetensors_find(&g->st, key);
        snprintf(key, sizeof key, "case%d.context", c);
        ctx = golden_f32(g, key, NULL);
        snprintf(key, sizeof key, "case%d.timesteps", c);
        const sd_tensor *tt = golden_i64(g, key);
        if (!w || !want_cond || !want || !tx || !ctx || !tt || !CHECK(nc == nw * gd && tx->ndim == 4 && tx->shape[0] == nw, "%s: case%d shapes", g->path, c)) continue;
        int B = (int)nw, h = (int)tx->shape[2], wd = (int)tx->shape[3];
        float *emb = (float *)malloc((size_t)nc * sizeof(float)), *out = (float *)malloc((size_t)nout * sizeof(float)), t[16];
        double worst = 0;
        for (int b = 0; b < B && b < 16; b++) {
            sd_guidance_embedding(w[b], gd, emb + (size_t)b * gd);
            t[b] = (float)golden_i64_at(tt, b);
        }
        for (int64_t i = 0; i < nc; i++) worst = fmax(worst, fabs((double)emb[i] - want_cond[i]));
        CHECK(worst <= 1e-3, "%s case%d: sd_guidance_embedding is %.3g from timestep_cond (1e-3 allowed)", label, c, worst);
        sd_unet_cond cond = {ctx, SD_TEXT_TOKENS, NULL, emb};
        sd_arena *a = test_arena(sd_unet_arena_bytes(u, B, h, wd, SD_TEXT_TOKENS));
        sd_error err;
        if (CHECK(B <= 16 && sd_unet(u, (const float *)tx->data, t, &cond, B, h, wd, out, pool, a, &err) == SD_OK, "%s case%d: %s", label, c, err.message)) {
            snprintf(what, sizeof what, "%s case%d.out with our guidance embedding", label, c);
            check_close(what, out, want, nout, 2e-5);
        }
        /* without the embedding: a clear error naming the tensor, and the model works after it */
        cond.guidance = NULL;
        int rc = sd_unet(u, (const float *)tx->data, t, &cond, B, h, wd, out, pool, a, &err);
        CHECK(rc == SD_ERR_ARG && strstr(err.message, "time_embedding.cond_proj.weight") && a->used == 0,
              "%s: an LCM UNet without its guidance embedding: rc %d, '%s'", label, rc, err.message);
        cond.guidance = emb;
        CHECK(sd_unet(u, (const float *)tx->data, t, &cond, B, h, wd, out, pool, a, &err) == SD_OK, "%s: after the error: %s", label, err.message);
        free_arena(a);
        free(emb);
        free(out);
    }
    const float *ctx = golden_f32(g, "case0.context", NULL);
    if (ctx) unet_check_odd_size(u, ctx, pool, label);
}

/* The guidance projection under its diffusers name too: the LCM model's cond_proj beside
   tiny-sd1's UNet in both layouts (a second file holding just that tensor) gives the same
   output, which differs from the plain UNet's. */
static void lcm_unet_layouts(const sd_tensor *cond_proj, sd_pool *pool)
{
    static const char *const parts[2] = {"models/tiny-sd1-fp16.safetensors", "models/tiny-sd1-diffusers/unet/diffusion_pytorch_model.safetensors"};
    static const char *const keys[2] = {"model.diffusion_model.time_embedding.cond_proj.weight", "time_embedding.cond_proj.weight"};
    enum { H = 8, W = 8 };
    float x[4 * H * W], ctx[SD_TEXT_TOKENS * 32], out[3][4 * H * W], t = 499, emb[1024];
    int ran = 0;
    if (cond_proj->ndim != 2 || cond_proj->shape[1] > 1024 || cond_proj->shape[0] != 32) return;
    for (int i = 0; i < 4 * H * W; i++) x[i] = (float)((i * 7919) % 1000) / 500.0f - 1.0f;
    for (int i = 0; i < SD_TEXT_TOKENS * 32; i++) ctx[i] = (float)((i * 104729) % 997) / 500.0f - 1.0f;
    sd_guidance_embedding(7.0f, (int)cond_proj->shape[1], emb);
    for (int k = 0; k < 3; k++) {
        char path[1200], header[400];
        size_t size, extra_size;
        snprintf(path, sizeof path, "%s/%s", golden_dir, parts[k % 2]);
        unsigned char *bytes = read_file(path, &size);
        if (!bytes) { printf("note: %s absent, the LCM layout check skipped\n", path); return; }
        snprintf(header, sizeof header, "{\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld,%lld],\"data_offsets\":[0,%zu]}}", keys[k % 2],
                 sd_dtype_name(cond_proj->dtype), (long long)cond_proj->shape[0], (long long)cond_proj->shape[1], cond_proj->nbytes);
        unsigned char *extra = make_file(header, cond_proj->data, cond_proj->nbytes, &extra_size);
        sd_arena *a = test_arena(1u << 24);
        sd_safetensors st[2];
        sd_unet_model *u;
        sd_error err;
        int plain = k == 2;   /* k 2: the diffusers file alone */
        if (CHECK(!sd_safetensors_open(&st[0], bytes, size, a, &err) && !sd_safetensors_open(&st[1], extra, extra_size, a, &err) &&
                  !sd_unet_load(&u, st, plain ? 1 : 2, NULL, a, &err), "%s + %s: %s", parts[k % 2], keys[k % 2], err.message) &&
            CHECK(sd_unet_guidance_dim(u) == (plain ? 0 : (int)cond_proj->shape[1]), "%s: guidance width %d", parts[k % 2], sd_unet_guidance_dim(u))) {
            sd_unet_cond cond = {ctx, SD_TEXT_TOKENS, NULL, plain ? NULL : emb};
            ran += CHECK(sd_unet(u, x, &t, &cond, 1, H, W, out[k], pool, a, &err) == SD_OK, "%s: %s", parts[k % 2], err.message);
        }
        free_arena(a);
        free(extra);
        free(bytes);
    }
    CHECK(ran == 3 && !memcmp(out[0], out[1], sizeof out[0]) && memcmp(out[1], out[2], sizeof out[1]),
          "lcm: cond_proj under the single-file and the diffusers name differ, or has no effect");
}

static void test_lcm(void)
{
    sd_arena *pa = test_arena(pool_arena_bytes(1) + 64);
    sd_pool pool;
    sd_error err;
    int found = 0, n = golden_models_read();
    if (!CHECK(pool_init(&pool, 1, pa, &err) == SD_OK, "pool: %s", err.message)) { free_arena(pa); return; }
    for (int i = 0; i < n; i++) {   /* each model with a NAME/lcm_unet.safetensors */
        const char *path = golden_model_file(&golden_models[i]);
        char rel[600], label[300];
        if (!path || !golden_exists(golden_models[i].name, "lcm_unet.safetensors")) continue;
        snprintf(rel, sizeof rel, "%.500s/lcm_unet.safetensors", golden_models[i].name);
        snprintf(label, sizeof label, "lcm unet %.250s", golden_models[i].name);
        size_t size;
        unsigned char *bytes = read_file(path, &size);
        golden_file *g = golden_open(rel);
        sd_arena *a = test_arena(1u << 24);
        sd_safetensors st;
        sd_unet_model *u;
        if (CHECK(bytes && g, "%s: cannot read it or %s", rel, path) &&
            CHECK(!sd_safetensors_open(&st, bytes, size, a, &err) && !sd_unet_load(&u, &st, 1, NULL, a, &err), "%s: %s", path, err.message) &&
            CHECK(sd_unet_guidance_dim(u) > 0, "%s: no guidance embedding (time_cond_proj_dim)", path)) {
            found++;
            n_cases++;
            lcm_unet_goldens(u, g, label, &pool);
            if (found == 1) lcm_unet_layouts(sd_safetensors_find(&st, "model.diffusion_model.time_embedding.cond_proj.weight"), &pool);
        }
        free_arena(a);
        free(bytes);
        golden_close(g);
    }
    if (!n) note_no_models();
    else if (!found) note_absent("lcm_unet", "no model of %s/models has a NAME/lcm_unet.safetensors: the LCM UNet checks skipped", golden_dir);
    pool_free(&pool);
    free_arena(pa);
}

/* Textual inversion: every GOLDEN/NAME/ti_encode_prompt.safetensors with its model and the
   embedding files its metadata lists, through the stage API (sd_embeddings_prompt_chunks, then
   sd_text_encode with sd_embeddings_text_encoder's description) and the pipeline's text stage;
   then the formats, the planning bound, and bad files. sd.h follows AUTOMATIC1111, the goldens
   diffusers: where diffusers' case-sensitive text match finds other occurrences than A1111's
   token match, the prompt is checked against its lower-cased self instead (README §11.3). */

typedef struct ti_files { sd_embedding_file f[8]; unsigned char *bytes[8]; int n; } ti_files;

static void ti_free_files(ti_files *t) { for (int i = 0; i < t->n; i++) free(t->bytes[i]); t->n = 0; }

/* The files of metadata `embeddings` (a JSON list of {file, token, ...}), named by their tokens,
   which is what the goldens' prompts write. */
static int ti_read_files(golden_file *g, ti_files *out)
{
    const char *list = sd_safetensors_meta(&g->st, "embeddings");
    static char tokens[8][128];
    json j = {list, list, list ? list + strlen(list) : NULL, NULL};
    memset(out, 0, sizeof *out);
    if (!CHECK(list && json_eat(&j, '['), "%s: no embeddings list in metadata", g->path)) return 0;
    do {
        char file[512], path[1600];
        json o;
        json_ws(&j);
        const char *start = j.p;
        if (out->n == 8 || json_skip(&j, 0)) break;
        if (!json_find(&o, start, (size_t)(j.p - start), "file") || !json_scalar(&o, file, sizeof file) ||
            !json_find(&o, start, (size_t)(j.p - start), "token") || !json_scalar(&o, tokens[out->n], sizeof tokens[0])) break;
        snprintf(path, sizeof path, "%s/%s", golden_dir, file);
        if (!(out->bytes[out->n] = read_file(path, &out->f[out->n].size))) {   /* a set without its embeddings/ */
            note_absent("embeddings", "no %s (listed by %s): the textual-inversion goldens skipped", path, g->path);
            ti_free_files(out);
            return 0;
        }
        out->f[out->n].data = out->bytes[out->n];
        out->f[out->n].name = tokens[out->n];
        out->n++;
    } while (json_eat(&j, ','));
    return out->n;
}

/* A set loaded into an arena of exactly sd_embeddings_arena_bytes; NULL (and the arena freed) on failure. */
static sd_embeddings *ti_load(const sd_model *m, const sd_embedding_file *f, int n, sd_arena **arena, sd_error *err)
{
    sd_embeddings *set = NULL;
    *arena = test_arena(sd_embeddings_arena_bytes(f, n));
    if (sd_embeddings_load(&set, m, f, n, *arena, err) != SD_OK) { free_arena(*arena); *arena = NULL; return NULL; }
    return set;
}

/* The 77 ids of a one-chunk prompt for encoder e (0 on success). */
static int ti_ids(const sd_embeddings *set, int e, const char *text, int32_t *ids, sd_error *err)
{
    sd_arena *a = test_arena(sd_prompt_arena_bytes(strlen(text)));
    int32_t *got;
    int chunks, rc = sd_embeddings_prompt_chunks(set, e, text, strlen(text), 1, 0, 1, &got, NULL, &chunks, a, err);
    if (!rc && chunks != 1) rc = fail(err, SD_ERR_ARG, "%d chunks", chunks);
    if (!rc) memcpy(ids, got, SD_CLIP_CONTEXT * sizeof(int32_t));
    free_arena(a);
    return rc;
}

/* How many embeddings a one-chunk ids row calls up (each starts at its first vector id). */
static int ti_matches(const sd_embeddings *set, const int32_t *ids)
{
    int n = 0;
    for (int i = 0; i < SD_CLIP_CONTEXT; i++)
        for (int k = 0; k < set->count; k++) n += ids[i] == set->items[k].first_id;
    return n;
}

/* How many times diffusers' rule finds the tokens in the text: case-sensitive, anywhere. */
static int ti_text_matches(const ti_files *t, const char *text)
{
    int n = 0;
    for (int k = 0; k < t->n; k++)
        for (const char *s = text; (s = strstr(s, t->f[k].name)) != NULL; s += strlen(t->f[k].name)) n++;
    return n;
}

/* Encoder e's context [77, width] (and pooled, if asked) of one ids row, with the set's vectors. */
static int ti_encode(const sd_embeddings *set, int e, const int32_t *ids, int layer0, float *out, float *pooled, sd_error *err)
{
    sd_text_encoder te;
    int rc = sd_embeddings_text_encoder(set, e, &te, err);
    if (rc) return rc;
    sd_arena *a = test_arena(sd_text_encoder_arena_bytes(&te, 1, pooled != NULL));
    if (layer0) {   /* the token embeddings alone: layer 0 less the positions */
        rc = sd_text_encoder_hidden(&te, ids, 1, 0, 0, out, host_pool(), a, err);
        for (int i = 0; !rc && i < SD_TEXT_TOKENS * te.width; i++) out[i] -= tensor_get(&te.position_embedding, (size_t)i);
    } else {
        rc = sd_text_encode(&te, ids, 1, 0, out, pooled, host_pool(), a, err);
    }
    free_arena(a);
    return rc;
}

/* One golden prompt: ids, token embeddings, context (SDXL: both encoders side by side, pooled at
   the end-of-text token). */
static void ti_check_prompt(const sd_model *m, const sd_embeddings *set, const ti_files *t, golden_file *g, int i, const char *text)
{
    int D = m->context_dim, P = m->encoders == 2 ? m->te[1].proj_dim : 0, off = 0;
    char what[1400], lower[512], key[64];
    float *ctx = (float *)calloc((size_t)SD_TEXT_TOKENS * D, sizeof(float)), *x = (float *)malloc((size_t)SD_TEXT_TOKENS * 4096 * sizeof(float));
    float pooled[4096];
    sd_error err;
    size_t len = strlen(text);
    for (size_t c = 0; c <= len && c < sizeof lower; c++) lower[c] = (char)tolower((unsigned char)text[c]);
    lower[sizeof lower - 1] = 0;
    for (int e = 0; e < m->encoders; e++) {
        int32_t ids[SD_CLIP_CONTEXT], low[SD_CLIP_CONTEXT];
        int W = m->te[e].width;
        snprintf(key, sizeof key, e ? "input_ids_2" : "input_ids");
        const sd_tensor *gid = golden_i64(g, key);
        if (!gid || !CHECK(!ti_ids(set, e, text, ids, &err), "%s prompt %d: %s", g->path, i, err.message)) break;
        int ours = ti_matches(set, ids), theirs = ti_text_matches(t, text), golden_ti = 0;
        for (int k = 0; k < SD_CLIP_CONTEXT; k++) golden_ti += golden_i64_at(gid, (int64_t)i * SD_CLIP_CONTEXT + k) >= SD_CLIP_VOCAB_SIZE;
        if (ours != theirs) {   /* A1111 and diffusers read this prompt differently */
            if (e == 0) printf("  %s prompt %d '%s': AUTOMATIC1111's rule finds %d embeddings, diffusers' %d: checked as A1111 reads it\n",
                               g->path, i, text, ours, theirs);
            CHECK(!ti_ids(set, e, lower, low, &err) && !memcmp(ids, low, sizeof ids) && ti_text_matches(t, lower) == ours,
                  "%s prompt %d: not read as its lower-cased self '%s' (case-insensitive, as A1111)", g->path, i, lower);
            CHECK(theirs || !golden_ti, "%s prompt %d: the golden has learned tokens diffusers' rule would not give", g->path, i);
            continue;
        }
        int same = 1;
        for (int k = 0; k < SD_CLIP_CONTEXT; k++) same &= ids[k] == golden_i64_at(gid, (int64_t)i * SD_CLIP_CONTEXT + k);
        CHECK(same && ours, "%s prompt %d '%s': %s differ from diffusers' (%d embeddings found)", g->path, i, text, key, ours);
        snprintf(key, sizeof key, e ? "inputs_embeds_2" : "inputs_embeds");
        const float *want = golden_f32(g, key, NULL);
        if (want && CHECK(!ti_encode(set, e, ids, 1, x, NULL, &err), "%s: %s", g->path, err.message)) {
            snprintf(what, sizeof what, "%s prompt %d %s", g->path, i, key);
            check_close(what, x, want + (size_t)i * SD_TEXT_TOKENS * W, (int64_t)SD_TEXT_TOKENS * W, 1e-6);
        }
        if (!CHECK(!ti_encode(set, e, ids, 0, x, e == 1 ? pooled : NULL, &err), "%s: %s", g->path, err.message)) break;
        for (int r = 0; r < SD_TEXT_TOKENS; r++) memcpy(ctx + (size_t)r * D + off, x + (size_t)r * W, (size_t)W * sizeof(float));
        off += W;
        if (e == 1) {   /* pooled at the end-of-text token (sgm/A1111), not diffusers' argmax (the learned token) */
            const float *eos = golden_f32(g, "pooled_prompt_embeds_at_eos", NULL), *quirk = golden_f32(g, "pooled_prompt_embeds", NULL);
            snprintf(what, sizeof what, "%s prompt %d pooled_prompt_embeds_at_eos", g->path, i);
            if (eos) check_close(what, pooled, eos + (size_t)i * P, P, 1e-5);
            double diff = 0, ref = 0;
            for (int k = 0; quirk && k < P; k++) diff = fmax(diff, fabs(pooled[k] - quirk[(size_t)i * P + k])), ref = fmax(ref, fabs(quirk[(size_t)i * P + k]));
            CHECK(!quirk || diff > 0.1 * ref, "%s prompt %d: pooled where diffusers pools (the learned token), not at the end-of-text token", g->path, i);
        }
    }
    if (off == D) {
        const float *want = golden_f32(g, "prompt_embeds", NULL);
        snprintf(what, sizeof what, "%s prompt %d prompt_embeds", g->path, i);
        if (want) check_close(what, ctx, want + (size_t)i * SD_TEXT_TOKENS * D, (int64_t)SD_TEXT_TOKENS * D, 1e-5);
    }
    free(ctx);
    free(x);
}

/* The CFG case through the pipeline's text stage (encode_text, as sd_generate runs it): negative
   first, then the prompt; SDXL's y begins with the pooled embedding. */
static void ti_check_negative(const sd_model *m, const sd_embeddings *set, golden_file *g)
{
    const sd_tensor *tp = sd_safetensors_find(&g->st, "neg.prompt"), *tn = sd_safetensors_find(&g->st, "neg.negative_prompt");
    char prompt[512], negative[512], what[1400];
    sd_params p;
    sd_error err;
    int C = 0, D = m->context_dim, add = sd_unet_add_dim(m->unet);
    if (!tp || !tn || tp->nbytes >= sizeof prompt || tn->nbytes >= sizeof negative) return;
    memcpy(prompt, tp->data, tp->nbytes), prompt[tp->nbytes] = 0;
    memcpy(negative, tn->data, tn->nbytes), negative[tn->nbytes] = 0;
    sd_params_init(&p);
    p.prompt = prompt;
    p.negative_prompt = negative;
    p.width = p.height = 64;
    p.embeddings = set;
    sd_arena *a = test_arena(sd_generate_arena_bytes(m, &p) + (1u << 20));
    float *ctx = (float *)malloc((size_t)2 * SD_TEXT_TOKENS * D * sizeof(float)), *y = (float *)malloc((size_t)(2 * add + 1) * sizeof(float));
    if (CHECK(!count_chunks(m, &p, 2, &C, a, &err) && C == 1 && !encode_text(m, &p, 2, 1, ctx, y, host_pool(), a, &err),
              "%s negative case: %s (%d chunks)", g->path, err.message, C)) {
        const float *neg = golden_f32(g, "neg.negative_prompt_embeds", NULL), *pos = golden_f32(g, "neg.prompt_embeds", NULL);
        snprintf(what, sizeof what, "%s neg.negative_prompt_embeds (pipeline)", g->path);
        if (neg) check_close(what, ctx, neg, (int64_t)SD_TEXT_TOKENS * D, 1e-5);
        snprintf(what, sizeof what, "%s neg.prompt_embeds (pipeline)", g->path);
        if (pos) check_close(what, ctx + (size_t)SD_TEXT_TOKENS * D, pos, (int64_t)SD_TEXT_TOKENS * D, 1e-5);
        const float *npool = add ? golden_f32(g, "neg.negative_pooled_prompt_embeds", NULL) : NULL;
        snprintf(what, sizeof what, "%s neg.negative_pooled_prompt_embeds (pipeline)", g->path);
        if (npool) check_close(what, y, npool, m->te[1].proj_dim, 1e-5);
    }
    free(ctx);
    free(y);
    free_arena(a);
}

/* A safetensors file of one F32 tensor `name` [rows, width] (rows 0: [width]) of values v(i). */
static unsigned char *ti_make(const char *name, int rows, int width, float scale, size_t *size)
{
    int n = (rows ? rows : 1) * width;
    float *v = (float *)malloc((size_t)n * sizeof(float));
    char header[300];
    for (int i = 0; i < n; i++) v[i] = scale * (float)((i * 7919) % 1000 - 500) / 500.0f;
    if (rows) snprintf(header, sizeof header, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":[0,%zu]}}", name, rows, width, (size_t)n * 4);
    else snprintf(header, sizeof header, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[0,%zu]}}", name, width, (size_t)n * 4);
    unsigned char *b = make_file(header, v, (size_t)n * 4, size);
    free(v);
    return b;
}

/* A generation with the plan checked: the peak is the plan when the prompts take the chunks
   their lengths allow for, else below it (embeddings with more vectors than name tokens make that
   bound loose). */
static int ti_generate_planned(const sd_model *m, const sd_params *p, uint8_t *rgb, const char *label, sd_error *err)
{
    size_t need = sd_generate_arena_bytes(m, p);
    sd_arena *a = test_arena(need);
    int C = 0, rc = need ? sd_generate(m, p, a, rgb, err) : SD_ERR_ARG, exact;
    size_t peak = a->peak;
    sd_arena_reset(a, 0);
    exact = !count_chunks(m, p, p->guidance > 1 ? 2 : 1, &C, a, err) && C == chunk_bound(m->vocab, p, 0);
    CHECK(rc == SD_OK && (exact ? peak == need : peak < need), "%s: '%s': %s (peak %zu, plan %zu, %d of %d chunks)", label, p->prompt,
          rc ? err->message : "", peak, need, C, chunk_bound(m->vocab, p, 0));
    free_arena(a);
    return rc;
}

/* Generation with a set: a prompt naming no embedding gives the image the set-less run gives; a
   prompt with one gives another. 64x64, 2 steps. */
static void ti_check_generate(const sd_model *m, const sd_embeddings *set, const char *with, const char *label)
{
    uint8_t rgb[3][3 * 64 * 64];
    sd_error err;
    for (int k = 0; k < 3; k++) {
        sd_params p;
        sd_params_init(&p);
        p.prompt = k == 2 ? with : "a photo of <tiny-dog>, no embedding here";
        p.negative_prompt = "blurry";
        p.width = p.height = 64;
        p.steps = 2;
        p.embeddings = k ? set : NULL;
        ti_generate_planned(m, &p, rgb[k], label, &err);
    }
    CHECK(!memcmp(rgb[0], rgb[1], sizeof rgb[0]) && memcmp(rgb[1], rgb[2], sizeof rgb[0]),
          "%s: a word that names no embedding is not plain text, or '%s' changes nothing", label, with);
}

/* Formats, chunking and planning on one SD1/SD2 model (one text encoder of width W). */
static void ti_check_formats(const sd_model *m, const char *label)
{
    int W = m->te[0].width;
    size_t sz[4];
    sd_error err;
    sd_arena *a;
    /* the same vectors as emb_params, string_to_param.*, and diffusers' [n, width] */
    unsigned char *f[3] = {ti_make("emb_params", 2, W, 0.5f, &sz[0]), ti_make("string_to_param.*", 2, W, 0.5f, &sz[1]), ti_make("<cat>", 2, W, 0.5f, &sz[2])};
    int32_t ids[3][SD_CLIP_CONTEXT];
    float *ctx[3];
    for (int k = 0; k < 3; k++) {
        sd_embedding_file e = {"tinything", f[k], sz[k]};
        sd_embeddings *set = ti_load(m, &e, 1, &a, &err);
        ctx[k] = (float *)malloc((size_t)SD_TEXT_TOKENS * W * sizeof(float));
        CHECK(set && !ti_ids(set, 0, "a (TinyThing:1.2) cat", ids[k], &err) && ids[k][2] == SD_CLIP_VOCAB_SIZE && ids[k][3] == SD_CLIP_VOCAB_SIZE + 1 &&
              !ti_encode(set, 0, ids[k], 0, ctx[k], NULL, &err), "%s: embedding format %d: %s", label, k, err.message);
        free_arena(a);
    }
    CHECK(!memcmp(ctx[0], ctx[1], (size_t)SD_TEXT_TOKENS * W * 4) && !memcmp(ctx[0], ctx[2], (size_t)SD_TEXT_TOKENS * W * 4),
          "%s: emb_params, string_to_param.* and a diffusers tensor give different contexts", label);
    for (int k = 0; k < 3; k++) free(ctx[k]);

    /* never across two chunks: 74 words and a 2-vector embedding: it starts the second chunk */
    {
        sd_embedding_file e = {"tinything", f[0], sz[0]};
        sd_embeddings *set = ti_load(m, &e, 1, &a, &err);
        char text[800] = "";
        int32_t *out;
        int chunks = 0;
        for (int i = 0; i < 74; i++) strcat(text, "cat ");
        strcat(text, "tinything");
        sd_arena *s = test_arena(sd_prompt_arena_bytes(strlen(text)));
        CHECK(set && !sd_embeddings_prompt_chunks(set, 0, text, strlen(text), 1, 0, 1, &out, NULL, &chunks, s, &err) && chunks == 2 &&
              out[75] == SD_CLIP_EOS && out[77 + 1] == SD_CLIP_VOCAB_SIZE && out[77 + 2] == SD_CLIP_VOCAB_SIZE + 1 && out[77 + 3] == SD_CLIP_EOS,
              "%s: an embedding that does not fit in the chunk must start the next (%d chunks): %s", label, chunks, err.message);
        free_arena(s);
        free_arena(a);
    }
    /* planning: a one-token name of 75 vectors takes a chunk per use; the plan covers it, the run peaks at it */
    {
        unsigned char *big = ti_make("emb_params", 75, W, 0.3f, &sz[3]);
        sd_embedding_file e = {"x", big, sz[3]};
        sd_embeddings *set = ti_load(m, &e, 1, &a, &err);
        sd_params p;
        uint8_t rgb[3 * 64 * 64];
        sd_params_init(&p);
        p.prompt = "x x x x x";
        p.width = p.height = 64;
        p.steps = 1;
        p.embeddings = set;
        sd_arena *g = test_arena(sd_generate_arena_bytes(m, &p));
        int C = 0;
        CHECK(set && !count_chunks(m, &p, 2, &C, g, &err) && C == 5, "%s: 'x x x x x' with a 75-vector x is %d chunks, not 5: %s", label, C, err.message);
        if (set) ti_generate_planned(m, &p, rgb, label, &err);
        free_arena(g);
        free_arena(a);
        free(big);
    }
    /* bad files: the wrong width, too many vectors, a truncated file, no usable tensor; then a good load */
    {
        size_t n1, n2, n3;
        unsigned char *wide = ti_make("emb_params", 2, W + 8, 0.5f, &n1), *many = ti_make("emb_params", 76, W, 0.5f, &n2);
        unsigned char *two = make_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                                       NULL, 8, &n3);
        const struct { const char *why; sd_embedding_file f; int code; const char *needle; } bad[] = {
            {"a vector of the wrong width", {"wide", wide, n1}, SD_ERR_SHAPE, "emb_params"},
            {"76 vectors", {"many", many, n2}, SD_ERR_UNSUPPORTED, "emb_params"},
            {"a truncated file", {"cut", f[0], sz[0] - 9}, SD_ERR_FORMAT, "cut"},
            {"two tensors, none of the known names", {"two", two, n3}, SD_ERR_MISSING, "two"},
            {"a name without tokens", {"   ", f[0], sz[0]}, SD_ERR_ARG, "name"},
        };
        for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
            sd_embeddings *set = (sd_embeddings *)&err;   /* must come back NULL */
            sd_embedding_file files[2] = {{"fine", f[0], sz[0]}, bad[k].f};
            a = test_arena(sd_embeddings_arena_bytes(files, 2));
            int rc = sd_embeddings_load(&set, m, files, 2, a, &err);
            CHECK(rc == bad[k].code && !set && a->used == 0 && strstr(err.message, bad[k].needle) && strstr(err.message, bad[k].f.name),
                  "%s: %s: rc %d, '%s'", label, bad[k].why, rc, err.message);
            free_arena(a);
        }
        sd_embedding_file good = {"fine", f[0], sz[0]};
        sd_embeddings *set = ti_load(m, &good, 1, &a, &err);
        CHECK(set != NULL, "%s: a good embedding after the bad ones: %s", label, err.message);
        if (set) ti_check_generate(m, set, "a fine cat", label);
        free_arena(a);
        free(wide);
        free(many);
        free(two);
    }
    for (int k = 0; k < 3; k++) free(f[k]);
}

static void test_ti(void)
{
    int found = 0, n = golden_models_read();
    sd_error err;
    for (int i = 0; i < n; i++) {   /* each model with a NAME/ti_encode_prompt.safetensors */
        const char *path = golden_model_file(&golden_models[i]);
        char rel[600];
        loaded_model lm = {0};
        ti_files t;
        sd_arena *a;
        if (!path || !golden_exists(golden_models[i].name, "ti_encode_prompt.safetensors")) continue;
        snprintf(rel, sizeof rel, "%.500s/ti_encode_prompt.safetensors", golden_models[i].name);
        golden_file *g = golden_open(rel);
        if (!g || open_test_model(&lm, path) || !ti_read_files(g, &t)) { unload_model(&lm); golden_close(g); continue; }
        sd_embeddings *set = ti_load(lm.model, t.f, t.n, &a, &err);
        if (CHECK(set != NULL, "%s: %s", rel, err.message)) {
            found++;
            n_cases++;
            for (int k = 0;; k++) {
                char key[32], text[512];
                snprintf(key, sizeof key, "prompt.%d", k);
                const sd_tensor *tp = sd_safetensors_find(&g->st, key);
                if (!tp || tp->nbytes >= sizeof text) break;
                memcpy(text, tp->data, tp->nbytes);
                text[tp->nbytes] = 0;
                ti_check_prompt(lm.model, set, &t, g, k, text);
            }
            ti_check_negative(lm.model, set, g);
            ti_check_generate(lm.model, set, t.f[0].name, rel);
            /* the other family's files are refused by name; the model works on */
            sd_embeddings *other = NULL;
            size_t bytes;
            int wrong_kind = 0;
            char other_path[1200];
            snprintf(other_path, sizeof other_path, "%s/embeddings/%s", golden_dir, lm.model->encoders == 2 ? "tinystyle.safetensors" : "tinyxl.safetensors");
            unsigned char *ob = read_file(other_path, &bytes);
            if (ob) {
                sd_embedding_file of = {"other", ob, bytes};
                sd_arena *oa = test_arena(sd_embeddings_arena_bytes(&of, 1));
                int rc = sd_embeddings_load(&other, lm.model, &of, 1, oa, &err);
                wrong_kind = rc == SD_ERR_SHAPE && !other && strstr(err.message, lm.model->encoders == 2 ? "emb_params" : "clip_l");
                CHECK(wrong_kind, "%s: %s loaded for a model of %d text encoders: rc %d, '%s'", rel, other_path, lm.model->encoders, rc, err.message);
                free_arena(oa);
                free(ob);
            }
            if (lm.model->encoders == 1) ti_check_formats(lm.model, rel);
        }
        free_arena(a);
        ti_free_files(&t);
        unload_model(&lm);
        golden_close(g);
    }
    if (!n) note_no_models();
    else if (!found) note_absent("ti", "no model of %s/models has a NAME/ti_encode_prompt.safetensors with its embeddings: textual inversion skipped", golden_dir);
}

/* example.c's image files: round trips, the golden init images, PNGs made by python's zlib
   (tools/png_cases.py), and corrupt files, which must give errors, not crashes. */

static const char *png_cases_dir;   /* $SD_PNG_CASES: `python3 tools/png_cases.py DIR` writes them */

static uint32_t png_test_rand(uint32_t *s) { *s ^= *s << 13, *s ^= *s >> 17, *s ^= *s << 5; return *s; }   /* xorshift32 */

/* Where `needle` occurs in the n bytes at p, or NULL. */
static const uint8_t *png_test_find(const uint8_t *p, size_t n, const void *needle, size_t k)
{
    for (size_t i = 0; i + k <= n; i++)
        if (!memcmp(p + i, needle, k)) return p + i;
    return NULL;
}

/* Noise (which the encoder must store) and gradients (which it must compress) survive
   png_encode + png_decode unchanged, at odd sizes. */
static void test_png_roundtrip(void)
{
    static const int sizes[][2] = {{1, 1}, {3, 7}, {100, 33}, {7, 3}, {64, 64}};
    uint32_t seed = 7;
    char err[256];
    for (int k = 0; k < 5; k++)
        for (int smooth = 0; smooth < 2; smooth++) {
            int w = sizes[k][0], h = sizes[k][1], w2 = 0, h2 = 0;
            size_t n = (size_t)w * h * 3, size = 0;
            uint8_t *rgb = (uint8_t *)malloc(n), *png, *back;
            for (size_t i = 0; i < n; i++) rgb[i] = (uint8_t)(smooth ? (i / 3 % w) * 2 + (i / 3 / w) * 3 + i % 3 * 40 : png_test_rand(&seed));
            png = png_encode(rgb, w, h, "parameters", "a photo of a cat\nSteps: 20", &size, err, sizeof err);
            if (!CHECK(png != NULL, "png_encode %dx%d: %s", w, h, err)) { free(rgb); continue; }
            back = png_decode(png, size, &w2, &h2, err, sizeof err);
            CHECK(back && w2 == w && h2 == h && !memcmp(back, rgb, n), "PNG round trip %dx%d (%s): %s", w, h, smooth ? "smooth" : "noise", back ? "pixels differ" : err);
            if (w * h > 1000) {   /* the first deflate block's type, just after the IDAT header and zlib's 2 bytes */
                const uint8_t *idat = png_test_find(png, size, "IDAT", 4);
                int btype = idat ? idat[6] >> 1 & 3 : -1;
                CHECK(btype == (smooth ? 1 : 0), "%dx%d %s image: deflate block type %d", w, h, smooth ? "smooth" : "noise", btype);
                if (smooth) CHECK(size < n / 3, "%dx%d gradient compressed only to %zu of %zu bytes", w, h, size, n);
            }
            free(rgb), free(png), free(back);
        }
}

/* Files: png_write and ppm_write then image_read; text chunks as tEXt (Latin-1) or iTXt (UTF-8). */
static void test_png_files(void)
{
    static const char *png_path = "/tmp/png_test_roundtrip.png", *ppm_path = "/tmp/png_test_roundtrip.ppm";
    int w = 0, h = 0;
    uint8_t rgb[5 * 3 * 3], *back;
    size_t size;
    char err[256];
    uint32_t seed = 3;
    for (size_t i = 0; i < sizeof rgb; i++) rgb[i] = (uint8_t)png_test_rand(&seed);
    CHECK(image_write(png_path, rgb, 5, 3, "caf\xc3\xa9, Steps: 4", err, sizeof err) == 0, "%s", err);
    back = image_read(png_path, &w, &h, err, sizeof err);
    CHECK(back && w == 5 && h == 3 && !memcmp(back, rgb, sizeof rgb), "PNG file round trip: %s", back ? "pixels differ" : err);
    free(back);
    CHECK(image_write(ppm_path, rgb, 5, 3, NULL, err, sizeof err) == 0, "%s", err);
    back = image_read(ppm_path, &w, &h, err, sizeof err);
    CHECK(back && w == 5 && h == 3 && !memcmp(back, rgb, sizeof rgb), "PPM file round trip: %s", back ? "pixels differ" : err);
    free(back);
    remove(png_path), remove(ppm_path);
    CHECK(!image_read("/nonexistent/x.png", &w, &h, err, sizeof err) && strstr(err, "/nonexistent/x.png"), "missing file: %s", err);
    CHECK(image_write("/nonexistent/x.png", rgb, 5, 3, NULL, err, sizeof err) == -1 && strstr(err, "/nonexistent/x.png"), "unwritable file: %s", err);

    uint8_t *png = png_encode(rgb, 5, 3, "parameters", "caf\xc3\xa9 \xff", &size, err, sizeof err);   /* \xff: not UTF-8 */
    CHECK(png && png_test_find(png, size, "tEXtparameters\0caf\xe9 \xff", 21), "Latin-1 text is not a tEXt chunk");
    free(png);
    png = png_encode(rgb, 5, 3, "parameters", "\xe7\x8c\xab \xff", &size, err, sizeof err);   /* a stray byte in UTF-8 text */
    CHECK(png && png_test_find(png, size, "\0\0\0\0\xe7\x8c\xab \xc3\xbf", 10), "a stray byte is not Latin-1 in UTF-8");
    free(png);
    png = png_encode(rgb, 5, 3, "parameters", "\xe7\x8c\xab, caf\xc3\xa9", &size, err, sizeof err);   /* a CJK character */
    CHECK(png && png_test_find(png, size, "iTXtparameters\0\0\0\0\0\xe7\x8c\xab, caf\xc3\xa9", 29), "non-Latin-1 text is not a UTF-8 iTXt chunk");
    free(png);
    CHECK(!png_encode(rgb, 0, 3, NULL, NULL, &size, err, sizeof err), "a 0x3 PNG was written");
}

/* The init images of the img2img goldens, written by PIL, decode to their init_image_uint8. */
static char png_golden_path[1400];   /* the smallest of them, for test_png_corrupt */
static size_t png_golden_bytes;

static void test_png_golden(void)
{
    DIR *top = opendir(golden_dir), *sub;
    struct dirent *d, *e;
    int found = 0;
    while (top && (d = readdir(top)))
        if (d->d_name[0] != '.') {
            char dir[1024];
            snprintf(dir, sizeof dir, "%s/%s", golden_dir, d->d_name);
            if (!(sub = opendir(dir))) continue;
            while ((e = readdir(sub))) {
                char rel[520], png[1400], steps[64] = "";
                const char *size_token = strrchr(e->d_name, '_');
                const sd_tensor *t;
                golden_file *g;
                int w = 0, h = 0;
                if (strncmp(e->d_name, "img2img_", 8) || !ends_with(e->d_name, ".safetensors")) continue;
                snprintf(rel, sizeof rel, "%s/%s", d->d_name, e->d_name);
                if (!(g = golden_open(rel))) continue;
                if ((t = sd_safetensors_find(&g->st, "init_image_uint8"))) {
                    char err[512];
                    uint8_t *rgb;
                    sscanf(e->d_name + 8, "%63[^_]", steps);   /* img2img_10steps_s0.6_128x128 -> img2img_init_10steps_128x128.png */
                    snprintf(png, sizeof png, "%s/img2img_init_%s_%.*s.png", dir, steps, (int)(strlen(size_token) - 13), size_token + 1);
                    if (!file_exists(png)) { printf("  %s: no %s beside it, skipped\n", rel, png); golden_close(g); continue; }
                    rgb = image_read(png, &w, &h, err, sizeof err);
                    size_t bytes = 0;
                    free(read_file(png, &bytes));
                    if (!*png_golden_path || bytes < png_golden_bytes || (bytes == png_golden_bytes && strcmp(png, png_golden_path) < 0)) {
                        snprintf(png_golden_path, sizeof png_golden_path, "%s", png);
                        png_golden_bytes = bytes;
                    }
                    found++;
                    n_cases++;
                    if (CHECK(rgb, "%s", err) && CHECK(t->dtype == SD_U8 && t->ndim == 3 && t->shape[0] == h && t->shape[1] == w && t->shape[2] == 3, "%s: %dx%d does not match init_image_uint8's shape", png, w, h))
                        CHECK(!memcmp(rgb, t->data, t->nbytes), "%s differs from init_image_uint8 of %s", png, rel);
                    free(rgb);
                }
                golden_close(g);
            }
            closedir(sub);
        }
    if (top) closedir(top);
    if (!found && !count_pipeline_goldens()) note_no_pipeline_goldens();
    else if (!found) note_absent("png", "no img2img golden with init_image_uint8 and its PNG in %s, golden PNG checks skipped", golden_dir);
    else printf("png: %d golden init images checked\n", found);
}

/* tools/png_cases.py's cases: NAME.png decodes to NAME.ppm exactly, or is refused with NAME.err's text. */
static void test_png_generated(void)
{
    DIR *dir = png_cases_dir ? opendir(png_cases_dir) : NULL;
    struct dirent *e;
    int good = 0, bad = 0;
    if (!dir) { printf("note: no PNG cases (SD_PNG_CASES, made by tools/png_cases.py), those checks skipped\n"); return; }
    while ((e = readdir(dir))) {
        char path[1024], other[1024], err[256], *want_err;
        size_t n = strlen(e->d_name), size;
        int w = 0, h = 0, w2 = 0, h2 = 0;
        uint8_t *rgb, *want;
        if (!ends_with(e->d_name, ".png")) continue;
        snprintf(path, sizeof path, "%s/%s", png_cases_dir, e->d_name);
        rgb = image_read(path, &w, &h, err, sizeof err);
        snprintf(other, sizeof other, "%s/%.*s.err", png_cases_dir, (int)n - 4, e->d_name);
        if ((want_err = (char *)read_file(other, &size))) {
            CHECK(!rgb && strstr(err, want_err), "%s: want an error with '%s', got %s", path, want_err, rgb ? "an image" : err);
            bad++;
        } else {
            snprintf(other, sizeof other, "%s/%.*s.ppm", png_cases_dir, (int)n - 4, e->d_name);
            want = image_read(other, &w2, &h2, err + 128, 128);
            if (CHECK(rgb && want, "%s: %s", path, rgb ? err + 128 : err))
                CHECK(w == w2 && h == h2 && !memcmp(rgb, want, (size_t)w * h * 3), "%s does not decode to %s", path, other);
            free(want);
            good++;
        }
        free(want_err);
        free(rgb);
    }
    closedir(dir);
    CHECK(good >= 50 && bad >= 10, "only %d good and %d bad cases in %s", good, bad, png_cases_dir);
    printf("png: %d generated PNGs decoded exactly, %d bad ones refused\n", good, bad);
}

/* Every truncation and every flipped bit of a PNG is an error; damage behind valid CRCs (which
   only the inflater and the Adler-32 can catch) gives an error or an image, never a crash. The
   corrupt copy lives in a buffer of exactly its size, so ASan sees any read past the end. */
static void test_png_corrupt_one(const char *what, const uint8_t *png, size_t size)
{
    char err[256];
    int w, h, truncated_ok = 1, flipped_ok = 1, crc_fixed_errors = 0, crc_fixed_runs = 0;
    uint32_t seed = 11;
    const uint8_t *idat = png_test_find(png, size, "IDAT", 4);
    size_t idat_at = idat ? (size_t)(idat - png) + 4 : 0, idat_size = idat && idat_at + 4 <= size ? get_be32(idat - 4) : 0;
    size_t step = size < 10000 ? 1 : 97, flips = 0, cuts = 0;   /* sample big files: each try costs a CRC */
    for (size_t n = 0; n < size; n += n + 100 < size ? step : 1, cuts++) {
        uint8_t *copy = (uint8_t *)malloc(n ? n : 1), *rgb;
        memcpy(copy, png, n);
        if ((rgb = png_decode(copy, n, &w, &h, err, sizeof err))) truncated_ok = CHECK(0, "%s cut to %zu of %zu bytes decoded", what, n, size);
        free(rgb), free(copy);
    }
    for (size_t i = 0; i < size && flipped_ok; i += step)
        for (int bit = 0; bit < 8; bit++, flips++) {
            uint8_t *copy = (uint8_t *)malloc(size), *rgb;
            memcpy(copy, png, size);
            copy[i] ^= (uint8_t)(1 << bit);
            if ((rgb = png_decode(copy, size, &w, &h, err, sizeof err))) flipped_ok = CHECK(0, "%s with bit %d of byte %zu flipped decoded", what, bit, i);
            free(rgb), free(copy);
        }
    for (int run = 0; run < (size < 10000 ? 3000 : 300); run++, crc_fixed_runs++) {
        uint8_t *copy = (uint8_t *)malloc(size), *rgb;
        int damage = 1 + (int)(png_test_rand(&seed) % 4);
        memcpy(copy, png, size);
        while (damage--) {   /* mostly in the (first) IDAT chunk's data, where the inflater is */
            size_t at = idat_size && run % 4 ? idat_at + png_test_rand(&seed) % idat_size : png_test_rand(&seed) % size;
            copy[at] = run % 3 ? (uint8_t)(copy[at] ^ (1u << png_test_rand(&seed) % 8)) : (uint8_t)png_test_rand(&seed);
        }
        png_fix_crcs(copy, size);
        rgb = png_decode(copy, size, &w, &h, err, sizeof err);
        if (rgb) CHECK(w > 0 && h > 0 && (uint64_t)w * h <= IMAGE_MAX_PIXELS, "%s: damaged copy decoded to %dx%d", what, w, h);
        else crc_fixed_errors++;
        free(rgb), free(copy);
    }
    CHECK(truncated_ok && flipped_ok, "%s: corrupt copies decoded", what);
    printf("png: %s: %zu truncations and %zu bit flips refused; %d of %d damaged copies with fixed CRCs refused\n",
           what, cuts, flips, crc_fixed_errors, crc_fixed_runs);
}

static void test_png_corrupt(void)
{
    uint8_t rgb[20 * 10 * 3], *png;
    size_t size;
    char err[256], path[1024];
    for (int i = 0; i < 20 * 10 * 3; i++) rgb[i] = (uint8_t)(i % 60 * 4 + i / 60);
    png = png_encode(rgb, 20, 10, "parameters", "test", &size, err, sizeof err);
    if (CHECK(png, "%s", err)) test_png_corrupt_one("png_encode's 20x10 PNG", png, size);
    free(png);
    if (*png_golden_path && (png = read_file(png_golden_path, &size))) {   /* a PIL-written one from the golden set */
        int w = 0, h = 0;
        uint8_t *rgb2 = png_decode(png, size, &w, &h, err, sizeof err);
        char what[64];
        snprintf(what, sizeof what, "PIL's %dx%d PNG", w, h);
        free(rgb2);
        test_png_corrupt_one(what, png, size);
        free(png);
    }
    snprintf(path, sizeof path, "%s/big_dynamic.png", png_cases_dir);
    if ((png = read_file(path, &size))) test_png_corrupt_one("zlib level 9 300x200 PNG", png, size);
    free(png);
    /* the PPM reader, too: every truncation of a small file */
    static const char ppm[] = "P6 # comment\n2 1\n255\nabcdef";
    for (size_t n = 0; n < sizeof ppm - 1; n++) {
        uint8_t *copy = (uint8_t *)malloc(n ? n : 1), *out;
        int w, h;
        memcpy(copy, ppm, n);
        out = ppm_decode(copy, n, &w, &h, err, sizeof err);
        CHECK(!out, "PPM cut to %zu bytes decoded", n);
        free(out), free(copy);
    }
    int w = 0, h = 0;
    uint8_t *out = ppm_decode((const uint8_t *)ppm, sizeof ppm - 1, &w, &h, err, sizeof err);
    CHECK(out && w == 2 && h == 1 && !memcmp(out, "abcdef", 6), "PPM with a comment: %s", out ? "wrong pixels" : err);
    free(out);
}

static void test_png(void)
{
    test_png_roundtrip();
    test_png_files();
    test_png_golden();
    test_png_generated();
    test_png_corrupt();
}

/* ---- example.c end to end -------------------------------------------------------------- */

/* Runs `./example ARGS` with stderr to errfile; the exit status, and the number of lines on stderr. */
static int run_example(const char *args, const char *errfile, int *err_lines)
{
    char cmd[8192];
    size_t n;
    snprintf(cmd, sizeof cmd, "./example %s >/dev/null 2>%s", args, errfile);
    int rc = system(cmd);
    unsigned char *e = read_file(errfile, &n);
    *err_lines = 0;
    for (size_t i = 0; e && i < n; i++) *err_lines += e[i] == '\n';
    free(e);
    return rc == -1 ? -1 : WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

static int opendir_exists(const char *path)
{
    DIR *d = opendir(path);
    if (d) closedir(d);
    return d != NULL;
}

/* s in single quotes for the shell ('\'' for each quote inside). */
static void shell_quote(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    if (cap < 3) return;
    out[n++] = '\'';
    for (; *s && n + 6 < cap; s++) {
        if (*s == '\'') { memcpy(out + n, "'\\''", 4); n += 4; }
        else out[n++] = *s;
    }
    out[n++] = '\'';
    out[n] = 0;
}

static int file_contains(const char *path, const char *needle)
{
    size_t n, k = strlen(needle);
    unsigned char *b = read_file(path, &n);
    int found = 0;
    for (size_t i = 0; b && !found && i + k <= n; i++) found = !memcmp(b + i, needle, k);
    free(b);
    return found;
}

/* The CLI with a seed golden's settings gives diffusers' pixels; img2img from PNG and PPM agree;
   each kind of bad input gives one line on stderr and a non-zero exit. */
/* The CLI's inpainting: a seeded inpainting golden (README §10, its _init.png and _mask.png
   beside it) drawn through --mask with the golden's seed, and a mask of another size refused. */
static void check_cli_inpainting(const char *dir, const char *merges)
{
    char sub[1400], rel[1400], args[16000], errf[1400], out[1400], init[1400], mask[1400];
    int n = golden_models_read(), lines, rc, done = 0;
    snprintf(errf, sizeof errf, "%s/stderr.txt", dir);
    for (int i = 0; i < n && !done; i++) {
        golden_model *gm = &golden_models[i];
        snprintf(sub, sizeof sub, "%s/%s", golden_dir, gm->name);
        DIR *in = golden_model_file(gm) && golden_model_loads(gm) ? opendir(sub) : NULL;
        struct dirent *f;
        while (in && (f = readdir(in)) && !done) {
            if (strncmp(f->d_name, "inpaint_", 8) || !ends_with(f->d_name, ".safetensors")) continue;
            snprintf(rel, sizeof rel, "%.600s/%.600s", gm->name, f->d_name);
            golden_file *g = golden_open(rel);
            const sd_tensor *want = g ? sd_safetensors_find(&g->st, "image_uint8") : NULL;
            if (!want || !sd_safetensors_meta(&g->st, "seed") || strcmp(meta_or(g, "model", ""), gm->name)) { golden_close(g); continue; }
            size_t stem = strlen(g->path) - 12;
            snprintf(init, sizeof init, "%.*s_init.png", (int)stem, g->path);
            snprintf(mask, sizeof mask, "%.*s_mask.png", (int)stem, g->path);
            snprintf(out, sizeof out, "%s/inpaint.png", dir);
            char prompt[1500], negative[1500];
            shell_quote(prompt, sizeof prompt, meta_or(g, "prompt", ""));
            shell_quote(negative, sizeof negative, meta_or(g, "negative_prompt", ""));
            snprintf(args, sizeof args, "-m %s --tokenizer %s -p %s -n %s -i %s --mask %s --steps %s --strength %s --cfg-scale %s -s %s -t 2 -o %s",
                     golden_model_file(gm), merges, prompt, negative, init, mask, meta_or(g, "num_inference_steps", "0"),
                     meta_or(g, "strength", "1"), meta_or(g, "guidance_scale", "7.5"), meta_or(g, "seed", "0"), out);
            rc = run_example(args, errf, &lines);
            int w = 0, h = 0, worst = 256;
            char e[256];
            uint8_t *rgb = rc == 0 ? image_read(out, &w, &h, e, sizeof e) : NULL;
            if (rgb && (int64_t)w * h * 3 == sd_tensor_numel(want)) {
                worst = 0;
                for (int64_t k = 0; k < sd_tensor_numel(want); k++) {
                    int d = abs((int)rgb[k] - (int)((const uint8_t *)want->data)[k]);
                    worst = d > worst ? d : worst;
                }
            }
            CHECK(worst <= 1, "CLI --mask with -s %s: exit %d, the image differs from %s's by %d", meta_or(g, "seed", ""), rc, rel, worst);
            /* a mask of another size than the image */
            uint8_t small[16 * 16 * 3] = {0};
            snprintf(mask, sizeof mask, "%s/small_mask.ppm", dir);
            if (!image_write(mask, small, 16, 16, NULL, e, sizeof e)) {
                snprintf(args, sizeof args, "-m %s --tokenizer %s -p x -i %s --mask %s -o %s", golden_model_file(gm), merges, init, mask, out);
                rc = run_example(args, errf, &lines);
                CHECK(rc != 0 && lines == 1 && file_contains(errf, "the mask must have the image's size"), "CLI mask of another size: exit %d", rc);
            }
            free(rgb);
            golden_close(g);
            n_cases++;
            done = 1;
        }
        if (in) closedir(in);
    }
    if (!done) note_absent("cli inpainting", "no seeded inpainting golden with its model in %s, the CLI --mask check skipped", golden_dir);
}

static void test_cli(void)
{
    char dir[] = "/tmp/sdh_cli_XXXXXX", golden[1200] = "", model[1400] = "", path[1400], args[6000], errf[1400];
    int lines, rc;
    if (!file_exists("./example") || !file_exists(merges_path)) { printf("note: ./example or merges.txt missing, CLI tests skipped\n"); return; }
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp failed"); return; }
    snprintf(errf, sizeof errf, "%s/stderr.txt", dir);

    /* a DDIM txt2img golden whose noise diffusers drew from a seed (the first by name), with a model
       that loads: its single file, else its diffusers folder */
    int n = golden_models_read();
    for (int i = 0; i < n && !*golden; i++) {
        golden_model *gm = &golden_models[i];
        char sub[1400];
        snprintf(sub, sizeof sub, "%s/%s", golden_dir, gm->name);
        DIR *in = opendir(sub);
        struct dirent *f;
        while (in && (f = readdir(in))) {
            char rel[1100];
            if (strncmp(f->d_name, "txt2img_", 8) || !is_pipeline_golden(f->d_name)) continue;
            snprintf(rel, sizeof rel, "%.500s/%.500s", gm->name, f->d_name);
            if (*golden && strcmp(rel, golden) > 0) continue;
            golden_file *g = golden_open(rel);
            const char *cls = g ? sd_safetensors_meta(&g->st, "scheduler_class") : NULL, *smp = g ? sd_safetensors_meta(&g->st, "sampler") : NULL;
            if (g && sd_safetensors_meta(&g->st, "seed") && (!cls || !strcmp(cls, "DDIMScheduler")) && (!smp || !strcmp(smp, "ddim")))
                snprintf(golden, sizeof golden, "%s", rel);
            golden_close(g);
        }
        if (in) closedir(in);
        if (*golden && !golden_model_loads(gm)) *golden = 0;
        if (*golden) snprintf(model, sizeof model, "%s", golden_model_file(gm) ? golden_model_file(gm) : gm->path[LAYOUT_DIFFUSERS]);
    }
    for (int i = 0; i < n && !*model; i++)   /* else any model that loads, for the checks below */
        if (golden_model_loads(&golden_models[i]))
            snprintf(model, sizeof model, "%s", golden_model_file(&golden_models[i]) ? golden_model_file(&golden_models[i]) : golden_models[i].path[LAYOUT_DIFFUSERS]);
    if (*golden) {
        golden_file *g = golden_open(golden);
        n_cases++;
        const sd_tensor *want = sd_safetensors_find(&g->st, "image_uint8");
        snprintf(path, sizeof path, "%s/seed.png", dir);
        char prompt[1500], negative[1500];
        shell_quote(prompt, sizeof prompt, meta_or(g, "prompt", ""));
        shell_quote(negative, sizeof negative, meta_or(g, "negative_prompt", ""));
        snprintf(args, sizeof args, "-m %s --tokenizer %s -p %s -n %s -W %s -H %s --steps %s --cfg-scale %s -s %s -t 2 -o %s",
                 model, merges_path, prompt, negative, meta_or(g, "width", "0"),
                 meta_or(g, "height", "0"), meta_or(g, "num_inference_steps", "0"), meta_or(g, "guidance_scale", "7.5"),
                 meta_or(g, "seed", "0"), path);
        rc = run_example(args, errf, &lines);
        int w = 0, h = 0, worst = 256;
        char msg[256];
        uint8_t *rgb = rc == 0 ? image_read(path, &w, &h, msg, sizeof msg) : NULL;
        if (CHECK(rgb && want && (int64_t)w * h * 3 == sd_tensor_numel(want), "CLI seed run of %s: exit %d", golden, rc)) {
            worst = 0;
            for (int64_t i = 0; i < sd_tensor_numel(want); i++) {
                int diff = abs((int)rgb[i] - (int)((const uint8_t *)want->data)[i]);
                if (diff > worst) worst = diff;
            }
        }
        CHECK(worst <= 1, "CLI -s %s image differs from %s's image_uint8 by %d", meta_or(g, "seed", ""), golden, worst);
        snprintf(msg, sizeof msg, "Seed: %s, Size: %sx%s", meta_or(g, "seed", ""), meta_or(g, "width", ""), meta_or(g, "height", ""));
        CHECK(file_contains(path, "tEXtparameters") && file_contains(path, meta_or(g, "prompt", "?")) && file_contains(path, msg),
              "CLI PNG lacks the parameters chunk with prompt and '%s'", msg);
        free(rgb);

        /* img2img: the same init image as PNG and as PPM gives the same picture */
        uint8_t *out[2] = {NULL, NULL};
        for (int k = 0; k < 2 && want && w > 0; k++) {
            char init[1400], outp[1400], e[256];
            int ow, oh;
            snprintf(init, sizeof init, "%s/init.%s", dir, k ? "ppm" : "png");
            snprintf(outp, sizeof outp, "%s/i2i_%d.ppm", dir, k);
            const sd_tensor *px = want;   /* any RGB8 picture of the right size will do */
            if (image_write(init, (const uint8_t *)px->data, w, h, NULL, e, sizeof e)) { CHECK(0, "%s", e); break; }
            snprintf(args, sizeof args, "-m %s --tokenizer %s -p 'a cat' -i %s --strength 0.5 --steps 4 -s 7 -t 1 -o %s", model, merges_path, init, outp);
            rc = run_example(args, errf, &lines);
            out[k] = rc == 0 ? image_read(outp, &ow, &oh, e, sizeof e) : NULL;
            CHECK(out[k] && ow == w && oh == h, "CLI img2img from %s: exit %d", init, rc);
        }
        CHECK(out[0] && out[1] && !memcmp(out[0], out[1], (size_t)w * h * 3), "CLI img2img from PNG and from PPM differ");
        free(out[0]);
        free(out[1]);
        golden_close(g);
    } else {
        if (!count_pipeline_goldens()) note_no_pipeline_goldens();
        else note_absent("cli", "no DDIM txt2img golden with a seed and a model that loads in %s, CLI image checks skipped", golden_dir);
    }

    /* bad input: one line on stderr, non-zero exit */
    snprintf(path, sizeof path, "%s/not_a_model.txt", dir);
    FILE *f = fopen(path, "wb");
    if (f) { fputs("hello\n", f); fclose(f); }
    const char *m = *model ? model : "no-model.safetensors";   /* the cases that need one are skipped then */
    if (!*model && !n) note_no_models();
    else if (!*model) note_absent("cli model", "no model that loads in %s/models: the CLI runs that need one skipped", golden_dir);
    /* files that lie: a header that says 2 GB of JSON in a 1 KB file, and a model cut to 1 KB */
    char liar[1400], cut[1400];
    snprintf(liar, sizeof liar, "%s/liar.safetensors", dir);
    snprintf(cut, sizeof cut, "%s/cut.safetensors", dir);
    if ((f = fopen(liar, "wb"))) {
        unsigned char head[1024] = {0x00, 0x00, 0x00, 0x80};   /* header length 2^31, little-endian */
        memset(head + 8, '{', sizeof head - 8);
        fwrite(head, 1, sizeof head, f);
        fclose(f);
    }
    size_t msize = 0;
    unsigned char *mbytes = *model && file_exists(model) ? read_file(model, &msize) : NULL;
    if (mbytes && (f = fopen(cut, "wb"))) { fwrite(mbytes, 1, msize < 1024 ? msize : 1024, f); fclose(f); }
    free(mbytes);
    struct { char args[3000]; const char *needle; } bad[11];
    snprintf(bad[0].args, sizeof bad[0].args, "--bogus");                                         bad[0].needle = "unknown option";
    snprintf(bad[1].args, sizeof bad[1].args, "-m");                                              bad[1].needle = "needs a value";
    snprintf(bad[2].args, sizeof bad[2].args, "-m %s --tokenizer %s -p x -W 100", m, merges_path); bad[2].needle = "multiples of 8";
    snprintf(bad[3].args, sizeof bad[3].args, "-m %s/missing.safetensors -p x", dir);            bad[3].needle = "cannot read";
    snprintf(bad[4].args, sizeof bad[4].args, "-m %s --tokenizer %s -p x", path, merges_path);   bad[4].needle = "safetensors";
    snprintf(bad[5].args, sizeof bad[5].args, "-m %s --tokenizer %s -p x -i %s", m, merges_path, path); bad[5].needle = "not a PNG";
    snprintf(bad[6].args, sizeof bad[6].args, "-m %s -p x --sampling-method lms", m);            bad[6].needle = "not one of";
    snprintf(bad[7].args, sizeof bad[7].args, "-m %s -p x --scheduler karras", m);               bad[7].needle = "dpm++2m only";
    snprintf(bad[8].args, sizeof bad[8].args, "-m %s --tokenizer %s -p x", liar, merges_path);  bad[8].needle = "header";
    snprintf(bad[9].args, sizeof bad[9].args, "-m %s --tokenizer %s -p x", cut, merges_path);   bad[9].needle = "cut.safetensors";
    snprintf(bad[10].args, sizeof bad[10].args, "-m %s --tokenizer %s -p x --embd-dir %s/none", m, merges_path, dir); bad[10].needle = "--embd-dir";
    for (int i = 0; i < 11; i++) {
        if (!*model && (i == 2 || i == 5 || i == 9 || i == 10)) continue;   /* checked once the model is loaded */
        rc = run_example(bad[i].args, errf, &lines);
        CHECK(rc != 0 && lines == 1 && file_contains(errf, bad[i].needle), "CLI '%s': exit %d, %d lines on stderr, want one with '%s'",
              bad[i].args, rc, lines, bad[i].needle);
    }
    /* each sampler by name, recorded in the PNG as A1111 names it; --turbo's one step */
    static const char *const methods[][2] = {{"euler", "Sampler: Euler,"}, {"euler_a", "Sampler: Euler a,"},
                                              {"dpm++2m_karras", "Sampler: DPM++ 2M Karras,"}, {"ddim --turbo", "Sampler: DDIM, CFG scale: 0,"},
                                              {"lcm --cfg-scale 1", "Sampler: LCM, CFG scale: 1,"}};
    for (int i = 0; i < 5 && *model; i++) {
        snprintf(path, sizeof path, "%s/sampler_%d.png", dir, i);
        snprintf(args, sizeof args, "-m %s --tokenizer %s -p 'a (red:1.2) cat BREAK on a mat' -W 64 -H 64 --steps 3 -s 1 -t 1 --sampling-method %s -o %s",
                 m, merges_path, methods[i][0], path);
        rc = run_example(args, errf, &lines);
        CHECK(rc == 0 && file_contains(path, methods[i][1]), "CLI --sampling-method %s: exit %d, or no '%s' in the PNG", methods[i][0], rc, methods[i][1]);
    }
    /* --embd-dir: the golden embeddings, of which this SD1-family model takes the SD1 ones and skips the SDXL one */
    char embd[1200];
    snprintf(embd, sizeof embd, "%s/embeddings", golden_dir);
    if (*model && opendir_exists(embd)) {
        snprintf(path, sizeof path, "%s/ti.png", dir);
        snprintf(args, sizeof args, "-m %s --tokenizer %s -p 'a TinyStyle cat' -W 64 -H 64 --steps 2 -s 1 -t 1 --embd-dir %s -v -o %s",
                 m, merges_path, embd, path);
        rc = run_example(args, errf, &lines);
        CHECK(rc == 0 && file_contains(errf, "embeddings: 2 from") && file_contains(errf, "tinystyle") && file_contains(errf, "skipped"),
              "CLI --embd-dir %s: exit %d, or its stderr does not list 2 embeddings and one skipped", embd, rc);
    }
    /* -i without -W/-H: the init image's size rounded down to a multiple of 8, said on stderr */
    if (*model) {
        uint8_t odd[100 * 75 * 3];
        char e[256], outp[1400];
        int ow = 0, oh = 0;
        for (size_t i = 0; i < sizeof odd; i++) odd[i] = (uint8_t)(i * 7 % 251);
        snprintf(path, sizeof path, "%s/odd.ppm", dir);
        snprintf(outp, sizeof outp, "%s/odd_out.ppm", dir);
        if (!image_write(path, odd, 100, 75, NULL, e, sizeof e)) {
            snprintf(args, sizeof args, "-m %s --tokenizer %s -p x -i %s --steps 2 -s 1 -t 1 -o %s", m, merges_path, path, outp);
            rc = run_example(args, errf, &lines);
            uint8_t *o = rc == 0 ? image_read(outp, &ow, &oh, e, sizeof e) : NULL;
            CHECK(o && ow == 96 && oh == 72 && file_contains(errf, "resized to 96x72"), "CLI -i of a 100x75 image: exit %d, %dx%d", rc, ow, oh);
            free(o);
        }
        snprintf(args, sizeof args, "-m %s --tokenizer %s -p x --mask %s", m, merges_path, path);
        rc = run_example(args, errf, &lines);
        CHECK(rc != 0 && lines == 1 && file_contains(errf, "needs an init image"), "CLI --mask without -i: exit %d", rc);
    }
    check_cli_inpainting(dir, merges_path);
    snprintf(args, sizeof args, "rm -rf %s", dir);
    if (system(args)) printf("note: could not remove %s\n", dir);
}

/* GGUF: the reader against hand-made files (every value type, every malformed case), the
   dequantizer and the GEMM on every block type, a model written as GGUF by the test (its
   pipeline and CLI runs), and, when GOLDEN_DIR/gguf/ is there, stable-diffusion.cpp's files:
   their tables, dequantized tensors and pipelines (golden README section 13). */

/* A GGUF file being written: GGUF's little-endian fields into a growing buffer. */
typedef struct gguf_buf { unsigned char *b; size_t len, cap; } gguf_buf;

static void gb_put(gguf_buf *o, const void *p, size_t n)
{
    if (o->len + n > o->cap) {
        o->cap = (o->len + n) * 2 + 256;
        o->b = (unsigned char *)realloc(o->b, o->cap);
    }
    if (n) memcpy(o->b + o->len, p, n);
    o->len += n;
}
static void gb_uint(gguf_buf *o, uint64_t v, int bytes)
{
    unsigned char c[8];
    for (int i = 0; i < bytes; i++) c[i] = (unsigned char)(v >> 8 * i);
    gb_put(o, c, (size_t)bytes);
}
static void gb_str(gguf_buf *o, const char *s) { gb_uint(o, strlen(s), 8); gb_put(o, s, strlen(s)); }
static void gb_kv(gguf_buf *o, const char *key, uint32_t type) { gb_str(o, key); gb_uint(o, type, 4); }   /* the value follows */
static void gb_kv_str(gguf_buf *o, const char *key, const char *value) { gb_kv(o, key, GGUF_STRING); gb_str(o, value); }

/* A tensor to write: ne[0] innermost; offset -1 places it at the next multiple of the alignment. */
typedef struct gguf_spec { const char *name; uint32_t type; int n_dims; uint64_t ne[4]; const void *data; size_t nbytes; int64_t offset; } gguf_spec;

/* Version 3: header, the n_kv pairs already in kv, tensor infos, padding, data (no padding after
   the last tensor, so that every strict prefix cuts something off). *infos_end (may be NULL)
   gets where the tensor infos end. */
static unsigned char *gguf_write(const gguf_buf *kv, uint64_t n_kv, const gguf_spec *t, int nt, uint64_t alignment, size_t *size,
                                 size_t *infos_end)
{
    gguf_buf o = {NULL, 0, 0};
    uint64_t *at = (uint64_t *)calloc((size_t)nt + 1, sizeof(uint64_t)), end = 0, pos = 0;
    gb_put(&o, "GGUF", 4);
    gb_uint(&o, 3, 4);
    gb_uint(&o, (uint64_t)nt, 8);
    gb_uint(&o, n_kv, 8);
    if (kv) gb_put(&o, kv->b, kv->len);
    for (int i = 0; i < nt; i++) {
        at[i] = t[i].offset >= 0 ? (uint64_t)t[i].offset : (pos + alignment - 1) / alignment * alignment;
        pos = at[i] + t[i].nbytes;
        if (pos > end) end = pos;
        gb_str(&o, t[i].name);
        gb_uint(&o, (uint64_t)t[i].n_dims, 4);
        for (int d = 0; d < t[i].n_dims; d++) gb_uint(&o, d < 4 ? t[i].ne[d] : 1, 8);   /* (a 5th dim for a malformed case) */
        gb_uint(&o, t[i].type, 4);
        gb_uint(&o, at[i], 8);
    }
    size_t start = (o.len + alignment - 1) / alignment * alignment;
    if (infos_end) *infos_end = o.len;
    unsigned char *b = (unsigned char *)calloc(start + end + 1, 1);
    memcpy(b, o.b, o.len);
    for (int i = 0; i < nt; i++) if (t[i].nbytes) memcpy(b + start + at[i], t[i].data, t[i].nbytes);
    *size = start + end;
    free(o.b);
    free(at);
    return b;
}

static uint32_t ggml_type_of(sd_dtype t)
{
    for (size_t k = 0; k < sizeof gguf_types / sizeof gguf_types[0]; k++) if (gguf_types[k].dtype == t) return gguf_types[k].ggml;
    return 9999;
}

/* An opened safetensors model as GGUF, the way stable-diffusion.cpp's converter lays it out
   (ne reversed, 32-byte alignment), its metadata as string pairs, plus n_extra pairs of `extra`. */
static unsigned char *gguf_from_safetensors(const sd_safetensors *st, const gguf_buf *extra, uint64_t n_extra, size_t *size)
{
    gguf_buf kv = {NULL, 0, 0};
    gguf_spec *t = (gguf_spec *)calloc((size_t)st->count + 1, sizeof *t);
    for (int i = 0; i < st->meta_count; i++) gb_kv_str(&kv, st->meta_keys[i], st->meta_values[i]);
    if (extra) gb_put(&kv, extra->b, extra->len);
    for (int i = 0; i < st->count; i++) {
        const sd_tensor *s = &st->tensors[i];
        t[i].name = s->name;
        t[i].type = ggml_type_of(s->dtype);
        t[i].n_dims = s->ndim;
        for (int d = 0; d < s->ndim; d++) t[i].ne[d] = (uint64_t)s->shape[s->ndim - 1 - d];
        t[i].data = s->data;
        t[i].nbytes = s->nbytes;
        t[i].offset = -1;
    }
    unsigned char *b = gguf_write(&kv, (uint64_t)st->meta_count + n_extra, t, st->count, 32, size, NULL);
    free(kv.b);
    free(t);
    return b;
}

/* Opens GGUF bytes in an arena of exactly what gguf_arena_bytes plans, which it must fill exactly. */
static int gguf_open_planned(sd_safetensors *st, const unsigned char *b, size_t size, sd_arena **a, sd_error *err, const char *what)
{
    size_t plan = (size_t)gguf_arena_bytes(b, size);
    *a = test_arena(plan);
    int rc = sd_gguf_open(st, b, size, *a, err);
    if (CHECK(rc == SD_OK, "%s: %s", what, rc ? err->message : ""))
        CHECK((*a)->peak == plan, "%s: the open peaked at %zu arena bytes, gguf_arena_bytes planned %zu", what, (*a)->peak, plan);
    return rc;
}

/* The small valid file of the reader tests: every value type among its pairs, an alignment of
   64, four tensors of four types (q8_0 rows of made-up blocks). */
static unsigned char *gguf_small(size_t *size, gguf_buf *extra, uint64_t n_extra)
{
    static float f32[3] = {1.5f, -2.0f, 0.25f};
    static uint16_t f16[4] = {0x3c00, 0xc000, 0x0001, 0x8000}, bf16[4] = {0x3f80, 0xbf80, 0x4049, 0x0000};
    static unsigned char q8[3 * 34];
    for (int r = 0; r < 3; r++) {
        q8[34 * r] = 0x00; q8[34 * r + 1] = (unsigned char)(r == 1 ? 0xb8 : 0x38);   /* d = 0.5, -0.5, 0.5 */
        for (int e = 0; e < 32; e++) q8[34 * r + 2 + e] = (unsigned char)(int8_t)(e - 16 + r);
    }
    gguf_buf kv = {NULL, 0, 0};
    gb_kv(&kv, "general.alignment", GGUF_U32); gb_uint(&kv, 64, 4);
    gb_kv(&kv, "v.u8", GGUF_U8); gb_uint(&kv, 200, 1);
    gb_kv(&kv, "v.i8", GGUF_I8); gb_uint(&kv, (uint8_t)-5, 1);
    gb_kv(&kv, "v.u16", GGUF_U16); gb_uint(&kv, 65535, 2);
    gb_kv(&kv, "v.i16", GGUF_I16); gb_uint(&kv, (uint16_t)-300, 2);
    gb_kv(&kv, "v.u32", GGUF_U32); gb_uint(&kv, 4000000000u, 4);
    gb_kv(&kv, "v.i32", GGUF_I32); gb_uint(&kv, (uint32_t)-70000, 4);
    gb_kv(&kv, "v.f32", GGUF_F32); gb_uint(&kv, 0x3f000000u, 4);
    gb_kv(&kv, "v.bool", GGUF_BOOL); gb_uint(&kv, 1, 1);
    gb_kv_str(&kv, "general.name", "tiny \xc3\xa9");
    gb_kv(&kv, "v.array_u8", GGUF_ARRAY); gb_uint(&kv, GGUF_U8, 4); gb_uint(&kv, 3, 8); gb_uint(&kv, 0x030201, 3);
    gb_kv(&kv, "v.array_str", GGUF_ARRAY); gb_uint(&kv, GGUF_STRING, 4); gb_uint(&kv, 2, 8); gb_str(&kv, "a"); gb_str(&kv, "bc");
    gb_kv(&kv, "v.array_bool", GGUF_ARRAY); gb_uint(&kv, GGUF_BOOL, 4); gb_uint(&kv, 2, 8); gb_uint(&kv, 0x0100, 2);
    gb_kv(&kv, "v.u64", GGUF_U64); gb_uint(&kv, UINT64_MAX, 8);
    gb_kv(&kv, "v.i64", GGUF_I64); gb_uint(&kv, (uint64_t)INT64_MIN, 8);
    gb_kv(&kv, "v.f64", GGUF_F64); gb_uint(&kv, 0x3fd0000000000000ull, 8);   /* 0.25 */
    if (extra) gb_put(&kv, extra->b, extra->len);
    gguf_spec t[4] = {
        {"blk.q8", 8, 2, {32, 3, 1, 1}, q8, sizeof q8, -1},
        {"b.f32", 0, 1, {3, 1, 1, 1}, f32, sizeof f32, -1},
        {"c.f16", 1, 4, {2, 2, 1, 1}, f16, sizeof f16, -1},
        {"d.bf16", 30, 1, {4, 1, 1, 1}, bf16, sizeof bf16, -1},
    };
    unsigned char *b = gguf_write(&kv, 16 + n_extra, t, 4, 64, size, NULL);
    free(kv.b);
    return b;
}

/* One malformed variant of a file: a copy with `n` bytes at `at` replaced by v (little-endian). */
static void expect_bad_gguf_patch(const char *what, const unsigned char *b, size_t size, size_t at, uint64_t v, int n, const char *needle)
{
    unsigned char *c = (unsigned char *)malloc(size);
    memcpy(c, b, size);
    for (int i = 0; i < n; i++) c[at + (size_t)i] = (unsigned char)(v >> 8 * i);
    expect_bad_open(sd_gguf_open, what, c, size, needle);
    free(c);
}

/* A file of one key-value pair (the bytes given) and no tensors, expected to be refused. */
static void expect_bad_gguf_kv(const char *what, const gguf_buf *kv, uint64_t n_kv, const char *needle)
{
    size_t size;
    unsigned char *b = gguf_write(kv, n_kv, NULL, 0, 32, &size, NULL);
    expect_bad_open(sd_gguf_open, what, b, size, needle);
    free(b);
}

/* A file of the tensors given (one pair: alignment), expected to be refused; offset_past_end
   moves the last tensor's offset past the end of the file. */
static void expect_bad_gguf_tensors(const char *what, const gguf_spec *t, int nt, uint64_t alignment, int offset_past_end, const char *needle)
{
    size_t size, infos;
    gguf_buf kv = {NULL, 0, 0};
    gb_kv(&kv, "general.alignment", GGUF_U32);
    gb_uint(&kv, alignment, 4);
    unsigned char *b = gguf_write(&kv, 1, t, nt, alignment, &size, &infos);
    for (int i = 0; offset_past_end && i < 8; i++) b[infos - 8 + (size_t)i] = (unsigned char)((uint64_t)(size + 63) / 32 * 32 >> 8 * i);
    expect_bad_open(sd_gguf_open, what, b, size, needle);
    free(b);
    free(kv.b);
}

static void test_gguf_reader(void)
{
    size_t size;
    unsigned char *b = gguf_small(&size, NULL, 0);
    sd_safetensors st;
    sd_arena *a;
    sd_error err;
    if (gguf_open_planned(&st, b, size, &a, &err, "small GGUF") == SD_OK) {
        static const char *const want[][2] = {
            {"v.u8", "200"}, {"v.i8", "-5"}, {"v.u16", "65535"}, {"v.i16", "-300"}, {"v.u32", "4000000000"}, {"v.i32", "-70000"},
            {"v.f32", "0.5"}, {"v.bool", "true"}, {"general.name", "tiny \xc3\xa9"}, {"v.u64", "18446744073709551615"},
            {"v.i64", "-9223372036854775808"}, {"v.f64", "0.25"}, {"general.alignment", "64"}};
        int meta_ok = st.meta_count == 13 && !sd_safetensors_meta(&st, "v.array_u8") && !sd_safetensors_meta(&st, "v.array_str");
        for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
            const char *v = sd_safetensors_meta(&st, want[i][0]);
            if (!v || strcmp(v, want[i][1])) { meta_ok = 0; printf("  metadata %s = %s, want %s\n", want[i][0], v ? v : "(none)", want[i][1]); }
        }
        CHECK(meta_ok, "GGUF metadata: scalars as text, arrays skipped (%d pairs)", st.meta_count);
        const sd_tensor *q = sd_safetensors_find(&st, "blk.q8"), *f = sd_safetensors_find(&st, "b.f32");
        const sd_tensor *h = sd_safetensors_find(&st, "c.f16"), *g = sd_safetensors_find(&st, "d.bf16");
        CHECK(st.count == 4 && q && f && h && g, "small GGUF: four tensors found");
        if (q && f && h && g) {
            CHECK(q->dtype == SD_Q8_0 && q->ndim == 2 && q->shape[0] == 3 && q->shape[1] == 32 && q->nbytes == 102, "q8_0 [3, 32], 102 bytes");
            CHECK(h->dtype == SD_F16 && h->ndim == 4 && h->shape[0] == 1 && h->shape[1] == 1 && h->shape[2] == 2 && h->shape[3] == 2, "f16 ne [2,2,1,1] reads as [1,1,2,2]");
            size_t data = (size_t)((const unsigned char *)q->data - b);
            CHECK(data % 64 == 0 && (const unsigned char *)f->data == b + data + 128 && (const unsigned char *)h->data == b + data + 192 &&
                  (const unsigned char *)g->data == b + data + 256, "tensors at the data section + their offsets, 64-aligned");
            float v[96], one = tensor_get(f, 2);
            tensor_floats(v, q, 0, 96);
            int ok = one == 0.25f && tensor_get(h, 2) == sd_f16_to_f32(1) && tensor_get(g, 2) == sd_bf16_to_f32(0x4049);
            for (int e = 0; e < 96; e++) ok &= v[e] == (float)(e % 32 - 16 + e / 32) * (e / 32 == 1 ? -0.5f : 0.5f);
            CHECK(ok, "small GGUF: values read back");
        }
        CHECK(sd_safetensors_open(&st, b, size, a, &err) != SD_OK && strstr(err.message, "GGUF"), "safetensors reader names a GGUF file: %s", err.message);
    }
    free_arena(a);
    check_truncations(sd_gguf_open, "a valid GGUF file", b, size);

    /* random byte changes in the header and infos: an error, or a table inside the buffer */
    uint32_t rng = 777;
    int flips_ok = 1;
    size_t header = size;   /* the bytes before the data section */
    a = test_arena(1 << 16);
    if (sd_gguf_open(&st, b, size, a, &err) == SD_OK) header = (size_t)((const unsigned char *)st.tensors[0].data - b);
    free_arena(a);
    for (int i = 0; i < 3000; i++) {
        unsigned char *c = (unsigned char *)malloc(size);
        memcpy(c, b, size);
        for (int k = 0; k < 1 + i % 3; k++) {
            rng = rng * 1664525u + 1013904223u;
            size_t at = (rng >> 8) % header;
            rng = rng * 1664525u + 1013904223u;
            c[at] = (unsigned char)(rng >> 24);
        }
        a = test_arena(1 << 16);
        if (sd_gguf_open(&st, c, size, a, &err) == SD_OK)
            for (int t = 0; t < st.count; t++) {
                const sd_tensor *x = &st.tensors[t];
                if ((const unsigned char *)x->data < c || (const unsigned char *)x->data + x->nbytes > c + size) flips_ok = 0;
                if (dtype_is_block(x->dtype) && x->nbytes) (void)tensor_get(x, (size_t)sd_tensor_numel(x) - 1);
            }
        free_arena(a);
        free(c);
    }
    CHECK(flips_ok, "GGUF byte changes never give tensors outside the buffer");

    /* version 2 has the same layout */
    b[4] = 2;
    a = test_arena(1 << 16);
    CHECK(sd_gguf_open(&st, b, size, a, &err) == SD_OK && st.count == 4, "a version 2 file opens: %s", err.message);
    free_arena(a);
    b[4] = 3;

    /* the header's fields, each made wrong */
    expect_bad_gguf_patch("no magic", b, size, 0, 'X', 1, "magic");
    expect_bad_gguf_patch("version 1", b, size, 4, 1, 4, "version 1");
    expect_bad_gguf_patch("big-endian version", b, size, 4, 0x03000000, 4, "big-endian");
    expect_bad_gguf_patch("version 4", b, size, 4, 4, 4, "version 4");
    expect_bad_gguf_patch("a huge tensor count", b, size, 8, (uint64_t)1 << 40, 8, "cannot fit");
    expect_bad_gguf_patch("one tensor too many", b, size, 8, 5, 8, "gguf:");
    expect_bad_gguf_patch("a huge n_kv", b, size, 16, (uint64_t)1 << 50, 8, "cannot fit");
    expect_bad_gguf_patch("n_kv one too many", b, size, 16, 17, 8, "gguf:");
    expect_bad_gguf_patch("n_kv one too few", b, size, 16, 15, 8, "gguf:");
    unsigned char tiny[24] = {'G', 'G', 'U', 'F', 3};
    expect_bad_open(sd_gguf_open, "empty file", tiny, 0, "magic");
    expect_bad_open(sd_gguf_open, "header cut short", tiny, 20, "shorter");

    /* key-value pairs */
    gguf_buf kv = {NULL, 0, 0};
    gb_kv(&kv, "x", 13); gb_uint(&kv, 0, 4);
    expect_bad_gguf_kv("unknown value type", &kv, 1, "unknown value type");
    kv.len = 0; gb_kv(&kv, "x", GGUF_BOOL); gb_uint(&kv, 2, 1);
    expect_bad_gguf_kv("a bool of 2", &kv, 1, "bool");
    kv.len = 0; gb_kv(&kv, "x", GGUF_ARRAY); gb_uint(&kv, GGUF_BOOL, 4); gb_uint(&kv, 2, 8); gb_uint(&kv, 0x0201, 2);
    expect_bad_gguf_kv("a bool of 2 in an array", &kv, 1, "bool");
    kv.len = 0; gb_kv(&kv, "x", GGUF_ARRAY); gb_uint(&kv, GGUF_ARRAY, 4); gb_uint(&kv, 0, 8);
    expect_bad_gguf_kv("an array of arrays", &kv, 1, "arrays");
    kv.len = 0; gb_kv(&kv, "x", GGUF_ARRAY); gb_uint(&kv, 77, 4); gb_uint(&kv, 0, 8);
    expect_bad_gguf_kv("an array of an unknown type", &kv, 1, "unknown type");
    kv.len = 0; gb_kv(&kv, "x", GGUF_ARRAY); gb_uint(&kv, GGUF_U32, 4); gb_uint(&kv, (uint64_t)1 << 61, 8);
    expect_bad_gguf_kv("a huge array", &kv, 1, "cannot fit");
    kv.len = 0; gb_kv(&kv, "x", GGUF_ARRAY); gb_uint(&kv, GGUF_STRING, 4); gb_uint(&kv, 1, 8); gb_uint(&kv, 100, 8);
    expect_bad_gguf_kv("a string past the end in an array", &kv, 1, "cut off");
    kv.len = 0; gb_kv_str(&kv, "x", "1"); gb_kv_str(&kv, "x", "2");
    expect_bad_gguf_kv("a key twice", &kv, 2, "twice");
    kv.len = 0; gb_kv_str(&kv, "", "1");
    expect_bad_gguf_kv("an empty key", &kv, 1, "empty key");
    kv.len = 0; gb_uint(&kv, 3, 8); gb_put(&kv, "a\0b", 3); gb_uint(&kv, GGUF_U8, 4); gb_uint(&kv, 0, 1);
    expect_bad_gguf_kv("a NUL in a key", &kv, 1, "NUL");
    kv.len = 0; gb_kv(&kv, "x", GGUF_STRING); gb_uint(&kv, (uint64_t)1 << 62, 8);
    expect_bad_gguf_kv("a string longer than the file", &kv, 1, "cut off");
    kv.len = 0; gb_kv(&kv, "general.alignment", GGUF_U32); gb_uint(&kv, 48, 4);
    expect_bad_gguf_kv("alignment 48", &kv, 1, "power of two");
    kv.len = 0; gb_kv(&kv, "general.alignment", GGUF_U32); gb_uint(&kv, 0, 4);
    expect_bad_gguf_kv("alignment 0", &kv, 1, "power of two");
    kv.len = 0; gb_kv(&kv, "general.alignment", GGUF_U64); gb_uint(&kv, 32, 8);
    expect_bad_gguf_kv("alignment as u64", &kv, 1, "u32");
    free(kv.b);

    /* tensor infos */
    static const unsigned char zeros[4096];
    gguf_spec t[2] = {{"a", 0, 1, {4, 1, 1, 1}, zeros, 16, -1}, {"b", 0, 1, {4, 1, 1, 1}, zeros, 16, -1}};
    gguf_spec bad = t[0];
    bad.n_dims = 5; expect_bad_gguf_tensors("5 dimensions", &bad, 1, 32, 0, "dimensions");
    bad = t[0]; bad.n_dims = 2; bad.ne[0] = (uint64_t)1 << 40; bad.ne[1] = (uint64_t)1 << 40;
    expect_bad_gguf_tensors("dims whose product overflows", &bad, 1, 32, 0, "overflow");
    bad = t[0]; bad.n_dims = 3; bad.ne[0] = 0; bad.ne[1] = (uint64_t)1 << 40; bad.ne[2] = (uint64_t)1 << 40; bad.nbytes = 0;
    expect_bad_gguf_tensors("an empty tensor whose other dims overflow", &bad, 1, 32, 0, "overflow");
    bad = t[0]; bad.ne[0] = (uint64_t)1 << 63;
    expect_bad_gguf_tensors("a dim past int64", &bad, 1, 32, 0, "overflow");
    bad = t[0]; bad.ne[0] = (uint64_t)1 << 40;
    expect_bad_gguf_tensors("a tensor larger than the file", &bad, 1, 32, 0, "larger than the file");
    bad = t[0]; bad.type = 16;
    expect_bad_gguf_tensors("ggml type 16", &bad, 1, 32, 0, "'a' has ggml type 16");
    bad = t[0]; bad.type = 4;
    expect_bad_gguf_tensors("ggml type 4 (gone)", &bad, 1, 32, 0, "ggml type 4");
    bad = t[0]; bad.type = 8; bad.ne[0] = 16; bad.n_dims = 2; bad.ne[1] = 2; bad.nbytes = 34;
    expect_bad_gguf_tensors("q8_0 rows of 16", &bad, 1, 32, 0, "not a whole number of 32-value blocks");
    bad = t[0]; bad.type = 12; bad.ne[0] = 32; bad.nbytes = 18;
    expect_bad_gguf_tensors("q4_K rows of 32", &bad, 1, 32, 0, "256-value blocks");
    bad = t[0]; bad.type = 8; bad.n_dims = 0; bad.nbytes = 34;
    expect_bad_gguf_tensors("a 0-dim q8_0", &bad, 1, 32, 0, "whole number");
    bad = t[0]; bad.offset = 8;
    expect_bad_gguf_tensors("misaligned offset", &bad, 1, 32, 0, "not a multiple of the alignment");
    expect_bad_gguf_tensors("offset past the end", t, 1, 32, 1, "past the end");
    bad = t[0]; bad.offset = 1; bad.nbytes = 16;
    expect_bad_gguf_tensors("f32 at an odd offset (alignment 1)", &bad, 1, 1, 0, "not aligned for F32");
    gguf_spec two[2] = {t[0], t[1]};
    two[1].name = "a";
    expect_bad_gguf_tensors("the same name twice", two, 2, 32, 0, "duplicate tensor name 'a'");
    two[1] = t[1]; two[1].offset = 0;
    expect_bad_gguf_tensors("two tensors at one offset", two, 2, 32, 0, "overlaps");
    two[0].ne[0] = 12; two[0].nbytes = 48; two[1].offset = 32;
    expect_bad_gguf_tensors("a tensor reaching into the next", two, 2, 32, 0, "overlaps");
    bad = t[0]; bad.name = "";
    expect_bad_gguf_tensors("an empty name", &bad, 1, 32, 0, "name of 0 bytes");
    free(b);

    /* metadata-heavy: 30000 more pairs of every kind; the plan still fits the open exactly */
    gguf_buf extra = {NULL, 0, 0};
    for (int i = 0; i < 30000; i++) {
        char key[64], value[200];
        snprintf(key, sizeof key, "extra.%d", i);
        if (i % 3 == 0) { memset(value, 'a' + i % 26, (size_t)(i % 150)); value[i % 150] = 0; gb_kv_str(&extra, key, value); }
        else if (i % 3 == 1) { gb_kv(&extra, key, GGUF_F64); gb_uint(&extra, (uint64_t)i * 0x9e3779b97f4a7c15ull, 8); }
        else { gb_kv(&extra, key, GGUF_ARRAY); gb_uint(&extra, GGUF_STRING, 4); gb_uint(&extra, 2, 8); gb_str(&extra, key); gb_str(&extra, "x"); }
    }
    b = gguf_small(&size, &extra, 30000);
    if (gguf_open_planned(&st, b, size, &a, &err, "small GGUF with 30000 more pairs") == SD_OK)
        CHECK(st.meta_count == 13 + 20000 && sd_safetensors_meta(&st, "extra.29997") && strlen(sd_safetensors_meta(&st, "extra.29997")) == 29997 % 150,
              "30000 more pairs: %d kept as metadata", st.meta_count);
    free_arena(a);
    free(b);
    free(extra.b);
}

/* The raw bytes of one type in the blocks golden, made an [N, 256] tensor (N = 4 rows times
   `copies`), and the matching values. */
static int gguf_blocks_tensor(golden_file *g, const char *type, int copies, sd_tensor *t, float **values)
{
    char key[64];
    snprintf(key, sizeof key, "%s.raw", type);
    const sd_tensor *raw = sd_safetensors_find(&g->st, key);
    snprintf(key, sizeof key, "%s.values", type);
    const sd_tensor *val = sd_safetensors_find(&g->st, key);
    memset(t, 0, sizeof *t);
    t->dtype = SD_DTYPE_COUNT;
    for (int d = 0; d < SD_DTYPE_COUNT; d++) {   /* "q4_K" is Q4_K, "bf16" BF16 */
        const char *name = sd_dtype_name((sd_dtype)d);
        size_t i = 0;
        while (name[i] && (name[i] == type[i] || name[i] == type[i] - 'a' + 'A')) i++;
        if (!name[i] && !type[i]) t->dtype = (sd_dtype)d;
    }
    if (!CHECK(raw && val && t->dtype != SD_DTYPE_COUNT && val->ndim == 2 && val->shape[1] == 256 && val->dtype == SD_F32, "%s: no usable %s.raw / %s.values", g->path, type, type))
        return 0;
    int64_t rows = val->shape[0];
    unsigned char *bytes = (unsigned char *)malloc(raw->nbytes * (size_t)copies);
    *values = (float *)malloc((size_t)(rows * 256 * copies) * sizeof(float));
    for (int c = 0; c < copies; c++) {
        memcpy(bytes + raw->nbytes * (size_t)c, raw->data, raw->nbytes);
        memcpy(*values + (size_t)(rows * 256 * c), val->data, (size_t)rows * 256 * sizeof(float));
    }
    t->name = type;
    t->ndim = 2;
    t->shape[0] = rows * copies;
    t->shape[1] = 256;
    t->data = bytes;
    t->nbytes = raw->nbytes * (size_t)copies;
    return CHECK(dtype_bytes(t->dtype, (uint64_t)(rows * 256)) == raw->nbytes, "%s: %s.raw has %zu bytes", g->path, type, raw->nbytes);
}

static int floats_equal(const float *a, const float *b, size_t n)   /* as floats: -0.0 == +0.0 */
{
    for (size_t i = 0; i < n; i++) if (!(a[i] == b[i])) return 0;
    return 1;
}

/* Every type's bytes through the dequantizer the kernels use (whole rows, pieces cut inside
   blocks, single elements), through a GGUF file holding all of them, and through the GEMM:
   a matmul with the block-typed weight equals the matmul with its f32 values bit for bit
   (packed and dot-product paths, 1 and 3 threads). */
static void check_gguf_blocks(const char *rel)
{
    static const char *const types[13] = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K"};
    golden_file *g = golden_open(rel);
    if (!g) return;
    gguf_spec spec[13];
    sd_tensor kept[13];
    float *kept_values[13];
    int nt = 0, checked = 0;
    kt_pool *pools[2] = {kt_pool_new(1), kt_pool_new(3)};
    for (int k = 0; k < 13; k++) {
        sd_tensor t;
        float *values, out[10 * 4 * 256];
        if (!gguf_blocks_tensor(g, types[k], 10, &t, &values)) continue;
        size_t n = (size_t)sd_tensor_numel(&t), per = (size_t)dtype_info[t.dtype].block;
        tensor_floats(out, &t, 0, (int)n);
        int ok = floats_equal(out, values, n);
        static const size_t cuts[][2] = {{1, 30}, {17, 300}, {255, 2}, {300, 700}, {1023, 1}, {31, 33}};
        for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
            tensor_floats(out, &t, cuts[c][0], (int)cuts[c][1]);
            ok &= floats_equal(out, values + cuts[c][0], cuts[c][1]);
        }
        for (size_t e = 0; e < n; e += 97) ok &= tensor_get(&t, e) == values[e];
        CHECK(ok, "%s: %s dequantized (whole, cut at %zu-value block edges, one by one) = ggml's values", rel, types[k], per);
        /* the GEMM: M = 3 (dot products) and 70 (packed panels), N = 40, K = 256 */
        sd_tensor f = t;
        f.dtype = SD_F32;
        f.data = values;
        f.nbytes = n * sizeof(float);
        for (int p = 0; p < 2; p++)
            for (int M = 3; M <= 70; M += 67) {
                float *x = kt_floats((size_t)M * 256, 1.0f), *y = (float *)malloc((size_t)M * 40 * sizeof(float)), *yf = (float *)malloc((size_t)M * 40 * sizeof(float));
                linear(&pools[p]->pool, y, x, M, 40, 256, &t, NULL);
                linear(&pools[p]->pool, yf, x, M, 40, 256, &f, NULL);
                CHECK(!memcmp(y, yf, (size_t)M * 40 * sizeof(float)), "%s: matmul with a %s weight differs from its f32 values (M %d, %d threads)",
                      rel, types[k], M, pools[p]->pool.threads);
                free(x); free(y); free(yf);
            }
        /* the first 4 rows go into a GGUF file of all the types */
        spec[nt].name = types[k];
        spec[nt].type = ggml_type_of(t.dtype);
        spec[nt].n_dims = 2;
        spec[nt].ne[0] = 256;
        spec[nt].ne[1] = 4;
        spec[nt].data = t.data;
        spec[nt].nbytes = t.nbytes / 10;
        spec[nt].offset = -1;
        kept[nt] = t;
        kept_values[nt++] = values;
        checked++;
    }
    size_t size;
    unsigned char *file = gguf_write(NULL, 0, spec, nt, 32, &size, NULL);
    sd_safetensors st;
    sd_arena *a;
    sd_error err;
    if (gguf_open_planned(&st, file, size, &a, &err, "a GGUF of every block type") == SD_OK) {
        int ok = st.count == nt;
        for (int k = 0; ok && k < nt; k++) {
            const sd_tensor *t = sd_safetensors_find(&st, spec[k].name);
            float out[4 * 256];
            ok = t && t->dtype == kept[k].dtype && t->shape[0] == 4 && t->shape[1] == 256 && t->nbytes == spec[k].nbytes;
            if (ok) tensor_floats(out, t, 0, 1024);
            ok = ok && floats_equal(out, kept_values[k], 1024);
        }
        CHECK(ok, "a GGUF of the %d types reads back every value", nt);
    }
    free_arena(a);
    free(file);
    for (int k = 0; k < nt; k++) { free((void *)kept[k].data); free(kept_values[k]); }
    kt_pool_free(pools[0]);
    kt_pool_free(pools[1]);
    printf("gguf: %s: %d weight types dequantized and multiplied\n", rel, checked);
    golden_close(g);
}

/* A GGUF file of stable-diffusion.cpp's against its dequant golden: the table (names, types,
   dims, offsets, sizes) exactly, the selected tensors' values and raw bytes, and every tensor's
   CRC-32 (after -0.0 -> +0.0) and max |value|. */
static void check_gguf_dequant(const char *rel)
{
    golden_file *g = golden_open(rel);
    if (!g) return;
    const char *file = sd_safetensors_meta(&g->st, "gguf_file");
    char path[1200];
    size_t size;
    snprintf(path, sizeof path, "%s/%s", golden_dir, file ? file : "?");
    unsigned char *b = read_file(path, &size);
    const sd_tensor *names = sd_safetensors_find(&g->st, "all.names"), *type = golden_i64(g, "all.ggml_type"), *nd = golden_i64(g, "all.n_dims");
    const sd_tensor *ne = golden_i64(g, "all.ne"), *off = golden_i64(g, "all.data_offset"), *nb = golden_i64(g, "all.nbytes"), *crc = golden_i64(g, "all.crc32");
    const float *absmax = golden_f32(g, "all.absmax", NULL);
    sd_safetensors st;
    sd_arena *a = NULL;
    sd_error err;
    if (!CHECK(b && names && type && nd && ne && off && nb && crc && absmax, "%s: GGUF %s or a table missing", rel, path)) goto done;
    if (gguf_open_planned(&st, b, size, &a, &err, path)) goto done;
    int64_t n = sd_tensor_numel(type);
    int bad = 0, values = 0;
    const char *name = (const char *)names->data, *names_end = name + names->nbytes;
    CHECK(st.count == n, "%s: %d tensors, the golden lists %lld", path, st.count, (long long)n);
    for (int i = 0; i < st.count && i < n; i++) {
        const sd_tensor *t = &st.tensors[i];
        const char *nl = memchr(name, '\n', (size_t)(names_end - name));
        size_t len = nl ? (size_t)(nl - name) : (size_t)(names_end - name);
        int ok = strlen(t->name) == len && !memcmp(t->name, name, len);
        name += len + 1;
        ok &= golden_i64_at(type, i) == ggml_type_of(t->dtype) && golden_i64_at(nd, i) == t->ndim;
        for (int d = 0; d < 4; d++) ok &= golden_i64_at(ne, 4 * i + d) == (d < t->ndim ? t->shape[t->ndim - 1 - d] : 1);
        ok &= golden_i64_at(off, i) == (const unsigned char *)t->data - b && golden_i64_at(nb, i) == (int64_t)t->nbytes;
        size_t count = (size_t)sd_tensor_numel(t);
        float *v = (float *)malloc((count ? count : 1) * sizeof(float)), m = 0;
        tensor_floats(v, t, 0, (int)count);
        for (size_t k = 0; k < count; k++) { v[k] += 0.0f; if (fabsf(v[k]) > m) m = fabsf(v[k]); }
        ok &= png_crc32((const uint8_t *)v, count * sizeof(float)) == (uint32_t)golden_i64_at(crc, i) && m == absmax[i];
        char key[600];
        snprintf(key, sizeof key, "tensor.%s", t->name);
        const sd_tensor *sel = sd_safetensors_find(&g->st, key);
        if (sel) {
            ok &= sd_tensor_numel(sel) == (int64_t)count && sel->ndim == t->ndim && floats_equal(v, (const float *)sel->data, count);
            for (int d = 0; d < t->ndim; d++) ok &= sel->shape[d] == t->shape[d];
            snprintf(key, sizeof key, "raw.%s", t->name);
            const sd_tensor *raw = sd_safetensors_find(&g->st, key);
            ok &= raw && raw->nbytes == t->nbytes && !memcmp(raw->data, t->data, t->nbytes);
            values++;
        }
        free(v);
        if (!ok && bad++ < 5) CHECK(0, "%s: tensor %d '%s' (%s) differs from the golden's table or values", path, i, t->name, sd_dtype_name(t->dtype));
    }
    CHECK(bad == 0, "%s: %d of %d tensors differ", path, bad, st.count);
    CHECK(values > 0, "%s: no tensor.* values checked", rel);
    printf("gguf: %s: %d tensors, table and CRCs exact, %d selected tensors equal\n", file, st.count, values);
done:
    free_arena(a);
    free(b);
    golden_close(g);
}

/* A GGUF model with the sd.* hyperparameters that it lacks: the golden's model_metadata as a
   second file of `__metadata__` only (what sd_source documents for such files). */
static int gguf_model_load(loaded_model *lm, unsigned char *gguf, size_t size, const char *meta_json, unsigned char **meta_file)
{
    sd_source src;
    sd_error err;
    size_t msize = 0;
    memset(lm, 0, sizeof *lm);
    memset(&src, 0, sizeof src);
    lm->bytes = gguf;
    lm->size = size;
    lm->merges = read_file(merges_path, &lm->merges_size);
    src.data[0] = gguf;
    src.size[0] = size;
    src.count = 1;
    *meta_file = NULL;
    if (meta_json) {
        size_t hl = strlen(meta_json) + 32;
        char *h = (char *)malloc(hl);
        snprintf(h, hl, "{\"__metadata__\":%s}", meta_json);
        *meta_file = make_file(h, NULL, 0, &msize);
        free(h);
        src.data[src.count] = *meta_file;
        src.size[src.count++] = msize;
    }
    if (!lm->merges) return -1;
    src.merges = (const char *)lm->merges;
    src.merges_size = lm->merges_size;
    size_t plan = sd_model_arena_bytes(&src);
    lm->arena = test_arena(plan);
    int rc = sd_model_load(&lm->model, &src, lm->arena, &err);
    CHECK(rc == SD_OK, "GGUF model: %s", rc ? err.message : "");
    CHECK(lm->arena->peak <= plan, "GGUF model: loading peaked at %zu arena bytes, sd_model_arena_bytes planned %zu", lm->arena->peak, plan);
    return rc;
}

/* A pipeline golden of a GGUF file, run end to end from that file. */
static void check_gguf_pipeline(const char *rel)
{
    golden_file *g = golden_open(rel);
    if (!g) return;
    const char *file = sd_safetensors_meta(&g->st, "gguf_file"), *meta = sd_safetensors_meta(&g->st, "model_metadata");
    char path[1200];
    size_t size;
    loaded_model lm;
    unsigned char *meta_file;
    snprintf(path, sizeof path, "%s/%s", golden_dir, file ? file : "?");
    unsigned char *b = read_file(path, &size);
    if (CHECK(b && meta, "%s: GGUF %s or model_metadata missing", rel, path)) {
        if (gguf_model_load(&lm, b, size, meta, &meta_file) == SD_OK) check_pipeline(lm.model, rel);
        unload_model(&lm);   /* b with it */
        free(meta_file);
    } else {
        free(b);
    }
    golden_close(g);
}

/* A model of the golden set written as GGUF by the test (F16 tensors, its metadata as pairs, and
   20000 more pairs): sd_model_arena_bytes plans its loading, the tensors are the same bytes, a
   pipeline golden passes, and the CLI lists it and draws from it what it draws from the
   safetensors file. */
static void test_gguf_model(void)
{
    char path[1200], rel[1200] = "", dir[] = "/tmp/sdh_gguf_XXXXXX";
    snprintf(path, sizeof path, "%s/models/tiny-sd1-fp16.safetensors", golden_dir);
    golden_file *g = golden_open("models/tiny-sd1-fp16.safetensors");
    if (!g || !file_exists(merges_path)) { note_absent("gguf model", "no %s or merges.txt, the GGUF model checks skipped", path); golden_close(g); return; }
    gguf_buf extra = {NULL, 0, 0};
    for (int i = 0; i < 20000; i++) {
        char key[64];
        snprintf(key, sizeof key, "filler.%05d", i);
        gb_kv_str(&extra, key, i % 2 ? "some text that a writer left" : "");
    }
    size_t size;
    unsigned char *b = gguf_from_safetensors(&g->st, &extra, 20000, &size), *meta_file;
    free(extra.b);
    loaded_model lm;
    if (gguf_model_load(&lm, b, size, NULL, &meta_file) == SD_OK) {
        const sd_safetensors *st = &lm.model->files[0];
        int same = st->count == g->st.count;
        for (int i = 0; same && i < g->st.count; i++) {
            const sd_tensor *s = &g->st.tensors[i], *t = sd_safetensors_find(st, s->name);
            same = t && t->dtype == s->dtype && t->ndim == s->ndim && t->nbytes == s->nbytes && !memcmp(t->data, s->data, s->nbytes);
            for (int d = 0; same && d < s->ndim; d++) same = t->shape[d] == s->shape[d];
        }
        CHECK(same, "tiny-sd1 as GGUF: every tensor the same as in the safetensors file");
        /* the first txt2img golden of tiny-sd1 */
        char sub[1300];
        snprintf(sub, sizeof sub, "%s/tiny-sd1", golden_dir);
        DIR *d = opendir(sub);
        struct dirent *f;
        while (d && !*rel && (f = readdir(d)))
            if (!strncmp(f->d_name, "txt2img_", 8) && is_pipeline_golden(f->d_name)) snprintf(rel, sizeof rel, "tiny-sd1/%.255s", f->d_name);
        if (d) closedir(d);
        if (*rel) check_pipeline(lm.model, rel);
        printf("gguf: tiny-sd1 written as GGUF (%zu bytes, 20000 extra pairs): same tensors%s%s\n", size, *rel ? ", pipeline " : "", rel);
    }
    /* the CLI: --inspect lists it, -m draws the same image as from the safetensors file */
    if (file_exists("./example") && mkdtemp(dir)) {
        char gpath[1300], args[4000], out[2][1300], errf[1300];
        int lines, rc;
        snprintf(gpath, sizeof gpath, "%s/tiny.gguf", dir);
        snprintf(errf, sizeof errf, "%s/stderr.txt", dir);
        FILE *fp = fopen(gpath, "wb");
        if (fp) { fwrite(b, 1, size, fp); fclose(fp); }
        char cmd[5400];
        snprintf(cmd, sizeof cmd, "./example --inspect %s > %s/inspect.txt 2>%s", gpath, dir, errf);
        rc = system(cmd);
        snprintf(args, sizeof args, "%s/inspect.txt", dir);
        CHECK(rc == 0 && file_contains(args, "model.diffusion_model.out.2.weight") && file_contains(args, "F16") &&
              file_contains(args, "metadata sd.version = 1"), "CLI --inspect of a GGUF file: exit %d", rc);
        uint8_t *img[2] = {NULL, NULL};
        int w = 0, h = 0;
        for (int k = 0; k < 2; k++) {
            char e[256];
            snprintf(out[k], sizeof out[k], "%s/out%d.ppm", dir, k);
            snprintf(args, sizeof args, "-m %s --tokenizer %s -p 'a red castle' -W 64 -H 64 --steps 2 -s 5 -t 2 -o %s", k ? gpath : path, merges_path, out[k]);
            rc = run_example(args, errf, &lines);
            img[k] = rc == 0 ? image_read(out[k], &w, &h, e, sizeof e) : NULL;
            CHECK(img[k] != NULL, "CLI -m %s: exit %d", k ? "tiny.gguf" : path, rc);
        }
        CHECK(img[0] && img[1] && !memcmp(img[0], img[1], (size_t)w * h * 3), "CLI: the GGUF copy draws another image than the safetensors file");
        free(img[0]);
        free(img[1]);
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        if (system(cmd)) printf("note: could not remove %s\n", dir);
    }
    unload_model(&lm);
    free(meta_file);
    golden_close(g);
}

/* sd.h's quantization. sd_quantize against the bytes stable-diffusion.cpp's converter wrote: q8_0
   (its converter runs ggml's reference quantizer for q8_0) on the blocks golden and on every q8_0
   tensor of tiny-sd1-q8_0.gguf; the other types (where that converter passes a dummy importance
   matrix, which makes ggml search for scales, so its bytes differ) against the reference rules
   written out again here. Then the GGUF writer: a model written in q8_0 and q4_0 reads back
   with the same tensors, and draws what load-time quantization of the same file draws. */
static void test_gguf_quantize(void)
{
    golden_file *g = golden_open("gguf/tiny-sd1-blocks.safetensors");
    int64_t n = 0;
    const float *src = g ? golden_f32(g, "source", &n) : NULL;
    if (src && CHECK(n == 1024, "blocks golden: source has %lld values", (long long)n)) {
        static const sd_dtype types[5] = {SD_Q8_0, SD_Q4_0, SD_Q4_1, SD_Q5_0, SD_Q5_1};
        unsigned char out[1200];
        float back[1024];
        const sd_tensor *raw = sd_safetensors_find(&g->st, "q8_0.raw");
        size_t bytes = sd_quantize(SD_Q8_0, src, 1024, out);
        CHECK(raw && bytes == raw->nbytes && !memcmp(out, raw->data, bytes), "sd_quantize q8_0 = stable-diffusion.cpp's bytes of the blocks golden");
        for (int k = 1; k < 5; k++) {
            sd_dtype t = types[k];
            int ok = sd_quantize(t, src, 1024, out) == dtype_bytes(t, 1024), with_min = t == SD_Q4_1 || t == SD_Q5_1, top = t == SD_Q4_0 || t == SD_Q4_1 ? 15 : 31;
            sd_tensor v;
            memset(&v, 0, sizeof v);
            v.dtype = t, v.ndim = 1, v.shape[0] = 1024, v.data = out, v.nbytes = dtype_bytes(t, 1024);
            tensor_floats(back, &v, 0, 1024);
            for (int b = 0; ok && b < 32; b++) {   /* the reference rules, block by block */
                const float *x = src + 32 * b;
                float m = 0, lo = x[0], hi = x[0], d;
                for (int e = 0; e < 32; e++) {
                    if (fabsf(x[e]) > fabsf(m)) m = x[e];
                    lo = fminf(lo, x[e]), hi = fmaxf(hi, x[e]);
                }
                d = with_min ? (hi - lo) / (float)top : m / -(float)(top + 1) * 2.0f;
                float id = d != 0 ? 1.0f / d : 0.0f, dh = sd_f16_to_f32(sd_f32_to_f16(d)), mh = sd_f16_to_f32(sd_f32_to_f16(lo));
                for (int e = 0; ok && e < 32; e++) {
                    float f = with_min ? (x[e] - lo) * id + 0.5f : x[e] * id + (float)(top + 1) / 2.0f + 0.5f;
                    int q = f >= (float)top ? top : (int)f;
                    float want = with_min ? (float)q * dh + mh : (float)(q - (top + 1) / 2) * dh;
                    if (back[32 * b + e] != want) { ok = 0; printf("  %s block %d value %d: %g, want %g\n", sd_dtype_name(t), b, e, back[32 * b + e], want); }
                }
            }
            CHECK(ok, "sd_quantize %s: each block as ggml's reference quantizer makes it", sd_dtype_name(t));
        }
    }
    golden_close(g);

    /* the q8_0 tensors of stable-diffusion.cpp's tiny-sd1-q8_0.gguf, from tiny-sd1-fp16 */
    char path[1200];
    size_t gsize;
    snprintf(path, sizeof path, "%s/gguf/tiny-sd1-q8_0.gguf", golden_dir);
    unsigned char *gg = read_file(path, &gsize);
    golden_file *fp16 = golden_open("models/tiny-sd1-fp16.safetensors");
    if (gg && fp16) {
        sd_arena *a = test_arena(gguf_arena_bytes(gg, gsize) + (1 << 20));
        sd_safetensors st;
        sd_error err;
        int same = 0, checked = 0;
        if (CHECK(sd_gguf_open(&st, gg, gsize, a, &err) == SD_OK, "tiny-sd1-q8_0.gguf: %s", err.message))
            for (int i = 0; i < st.count; i++) {
                const sd_tensor *q = &st.tensors[i], *f = sd_safetensors_find(&fp16->st, q->name);
                if (q->dtype != SD_Q8_0 || !f || f->ndim < 2) continue;   /* (its 1-D norm weights: sd.h leaves those alone) */
                unsigned char *mine = (unsigned char *)malloc(q->nbytes);
                float *row = (float *)malloc((size_t)(sd_tensor_numel(f) / f->shape[0]) * sizeof(float));
                checked++;
                same += sd_quantize_choice(f, SD_Q8_0) == SD_Q8_0 && sd_tensor_convert(f, SD_Q8_0, mine, row) == SD_OK && !memcmp(mine, q->data, q->nbytes);
                free(mine);
                free(row);
            }
        CHECK(checked > 100 && same == checked, "sd_tensor_convert q8_0 = stable-diffusion.cpp's bytes for %d of its %d q8_0 matrices", same, checked);
        free_arena(a);
    } else note_absent("gguf quantize", "no %s or models/tiny-sd1-fp16.safetensors: the converter's bytes unchecked", path);
    free(gg);

    /* the writer: tiny-sd1 in q8_0 and q4_0 as sd.h's GGUF, against load-time quantization */
    snprintf(path, sizeof path, "%s/models/tiny-sd1-fp16.safetensors", golden_dir);
    if (!fp16 || !file_exists(merges_path)) { golden_close(fp16); return; }
    for (int k = 0; k < 2; k++) {
        sd_dtype type = k ? SD_Q4_0 : SD_Q8_0;
        const sd_safetensors *st = &fp16->st;
        sd_tensor *t = (sd_tensor *)malloc((size_t)st->count * sizeof *t);
        int quantized = 0;
        size_t data = 0;
        for (int i = 0; i < st->count; i++) {
            t[i] = st->tensors[i];
            t[i].dtype = sd_quantize_choice(&st->tensors[i], type);
            if (t[i].dtype != st->tensors[i].dtype) quantized++, t[i].nbytes = dtype_bytes(type, (uint64_t)sd_tensor_numel(&t[i]));
            data += (t[i].nbytes + 31) / 32 * 32;
        }
        /* without the heads in the metadata, as a converted SD 1.5 download is (tiny-sd1 has SD1's 8):
           the quantized [C, C, 1, 1] proj_in, 2-D in the file, must not read as SD2's linear one */
        const char **keys = (const char **)malloc(((size_t)st->meta_count + 1) * sizeof *keys), **values = (const char **)malloc(((size_t)st->meta_count + 1) * sizeof *values);
        int nkv = 0;
        for (int i = 0; i < st->meta_count; i++)
            if (strncmp(st->meta_keys[i], "sd.unet.num_head", 16)) keys[nkv] = st->meta_keys[i], values[nkv++] = st->meta_values[i];
        size_t head = sd_gguf_header(NULL, 0, t, st->count, keys, values, nkv);
        unsigned char *file = (unsigned char *)calloc(head + data, 1);
        int ok = head && nkv < st->meta_count && sd_gguf_header(file, head, t, st->count, keys, values, nkv) == head;
        free(keys), free(values);
        for (int i = 0, at = (int)head; ok && i < st->count; at += (int)((t[i].nbytes + 31) / 32 * 32), i++) {
            float *row = (float *)malloc((size_t)(sd_tensor_numel(&st->tensors[i]) / (st->tensors[i].shape[0] ? st->tensors[i].shape[0] : 1) + 1) * sizeof(float));
            ok = sd_tensor_convert(&st->tensors[i], t[i].dtype, file + at, row) == SD_OK;
            free(row);
        }
        CHECK(ok && quantized > 300, "GGUF writer: tiny-sd1 in %s (%d tensors quantized)", sd_dtype_name(type), quantized);
        loaded_model gm, sm;
        unsigned char *meta_file;
        if (ok && gguf_model_load(&gm, file, head + data, NULL, &meta_file) == SD_OK) {
            const sd_safetensors *back = &gm.model->files[0];
            int same = back->count == st->count, convs = 0;
            for (int i = 0; same && i < st->count; i++) {
                const sd_tensor *b = sd_safetensors_find(back, t[i].name);
                int conv = dtype_is_block(t[i].dtype) && t[i].ndim == 4;
                convs += conv;
                same = b && b->dtype == t[i].dtype && b->nbytes == t[i].nbytes && b->ndim == (conv ? 2 : t[i].ndim) &&
                       (conv ? b->shape[0] == t[i].shape[0] && b->shape[1] == sd_tensor_numel(&t[i]) / t[i].shape[0] : b->shape[0] == t[i].shape[0]);
                if (same && dtype_is_block(b->dtype)) {   /* it dequantizes to the quantized values (the bytes are the same) */
                    size_t at = (size_t)((const unsigned char *)b->data - file);
                    same = at >= head && !memcmp(b->data, file + at, b->nbytes);
                }
            }
            CHECK(same && convs > 100, "GGUF writer, %s: read back with the same tensors (%d convolution weights as [Cout, Cin·k·k])", sd_dtype_name(type), convs);
            CHECK(!strcmp(sd_safetensors_meta(back, "sd.version") ? sd_safetensors_meta(back, "sd.version") : "", "1"), "GGUF writer: the sd.* metadata kept");
            if (open_test_model(&sm, path) == SD_OK) {
                sd_error err;
                size_t need = sd_model_quantize_arena_bytes(sm.model, type);
                sd_arena *qa = test_arena(need);
                int rc = sd_model_quantize(sm.model, type, qa, &err);
                CHECK(rc == SD_OK && qa->used == need, "sd_model_quantize %s: rc %d, used %zu of the %zu planned: %s", sd_dtype_name(type), rc, qa->used, need, rc ? err.message : "");
                for (int q = 0; q < 2 && rc == SD_OK; q++) {
                    uint8_t a[3 * 64 * 64], b2[3 * 64 * 64];
                    if (generate64(gm.model, "a red castle", 11, 1, q, a) == SD_OK && generate64(sm.model, "a red castle", 11, 1, q, b2) == SD_OK)
                        CHECK(!memcmp(a, b2, sizeof a), "%s %s mode: sd.h's GGUF file and load-time quantization draw different images",
                              sd_dtype_name(type), q ? "fast" : "exact");
                }
                /* a LoCon LoRA (3x3 down convs) on the file's [Cout, Cin·k·k] convolution weights */
                char lpath[1300];
                size_t lsize;
                snprintf(lpath, sizeof lpath, "%s/lora/tiny-sd1_locon_r8.safetensors", golden_dir);
                unsigned char *locon = rc == SD_OK ? read_file(lpath, &lsize) : NULL;
                if (locon) {
                    uint8_t img[2][3 * 64 * 64];
                    int lrc[2];
                    for (int f = 0; f < 2; f++) {
                        sd_params p;
                        sd_lora l = {locon, lsize, 0.8f, 0.8f, "tiny-sd1_locon_r8"};
                        sd_params_init(&p);
                        p.prompt = "a red castle", p.width = p.height = 64, p.steps = 2, p.seed = 11, p.threads = 2;
                        p.loras = &l, p.lora_count = 1;
                        const sd_model *m = f ? sm.model : gm.model;
                        sd_arena *la = test_arena(sd_generate_arena_bytes(m, &p));
                        lrc[f] = sd_generate(m, &p, la, img[f], &err);
                        CHECK(lrc[f] == SD_OK, "%s: a LoCon LoRA on the %s: %s", sd_dtype_name(type), f ? "load-time quantized model" : "GGUF file",
                              lrc[f] ? err.message : "");
                        free_arena(la);
                    }
                    CHECK(lrc[0] || lrc[1] || !memcmp(img[0], img[1], sizeof img[0]), "%s: a LoCon LoRA draws differently on sd.h's GGUF file", sd_dtype_name(type));
                    free(locon);
                }
                free_arena(qa);
                unload_model(&sm);
            }
            unload_model(&gm);
            free(meta_file);
        } else free(file);
        free(t);
    }
    golden_close(fp16);
}

/* GOLDEN_DIR/gguf/: every dequant.safetensors and pipeline golden of every GGUF file, and the blocks golden. */
static void test_gguf(void)
{
    char top[1100], sub[1400], rel[1400];
    struct dirent *e, *f;
    test_gguf_reader();
    test_gguf_model();
    test_gguf_quantize();
    snprintf(top, sizeof top, "%s/gguf", golden_dir);
    DIR *d = opendir(top);
    if (!d) { note_absent("gguf", "no %s, GGUF golden checks skipped", top); return; }
    int pipelines = pipelines_checked;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(rel, sizeof rel, "gguf/%.255s", e->d_name);
        if (!strcmp(e->d_name, "tiny-sd1-blocks.safetensors")) { check_gguf_blocks(rel); n_cases++; continue; }
        snprintf(sub, sizeof sub, "%s/%.255s", top, e->d_name);
        DIR *in = opendir(sub);
        while (in && (f = readdir(in))) {
            snprintf(rel, sizeof rel, "gguf/%.255s/%.255s", e->d_name, f->d_name);
            if (!strcmp(f->d_name, "dequant.safetensors")) check_gguf_dequant(rel), n_cases++;
            else if (is_pipeline_golden(f->d_name)) check_gguf_pipeline(rel), n_cases++;
        }
        if (in) closedir(in);
    }
    closedir(d);
    printf("gguf: %d pipeline goldens run from GGUF files\n", pipelines_checked - pipelines);
}

/* ---- image-guided generation: inpainting and InstructPix2Pix --------------------------------- */
/* Every GOLDEN_DIR/NAME/inpaint_* and ip2p_* golden (README §10) on the model its `model`
   metadata names: the mask and masked-image stages exactly, the VAE posteriors and latents, each
   recorded step's UNet call from its stored input, and the whole pipeline through sd_generate. */

static int is_image_guided_golden(const char *name)
{
    return (!strncmp(name, "inpaint_", 8) || !strncmp(name, "ip2p_", 5)) && ends_with(name, ".safetensors");
}

/* Compares a golden tensor exactly (float32 ==). */
static void check_exact(const char *what, const float *got, const float *want, int64_t n)
{
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad += got[i] != want[i];
    CHECK(!bad, "%s: %lld of %lld values differ", what, (long long)bad, (long long)n);
}

/* The encoder's posterior of image [3, H, W], and its sample with `noise` times the VAE scale. */
static void ig_check_posterior(const sd_model *m, golden_file *g, const float *image, int H, int W, const char *prefix,
                               const char *noise_name, const char *latents_name, sd_pool *pool)
{
    char name[128], what[1600];
    int h = H / 8, w = W / 8;
    size_t lat = (size_t)4 * h * w;
    float *moments = (float *)malloc(2 * lat * sizeof(float)), *mean = (float *)malloc(lat * sizeof(float));
    float *std = (float *)malloc(lat * sizeof(float)), *sample = (float *)malloc(lat * sizeof(float));
    sd_arena *a = test_arena(sd_vae_encode_arena_bytes(sd_vae_get_config(m->vae), H, W));
    sd_error err;
    if (CHECK(sd_vae_encode(m->vae, image, H, W, moments, pool, a, &err) == SD_OK, "%s: encode: %s", g->path, err.message)) {
        sd_vae_posterior(moments, 4, h, w, mean, NULL, std);
        snprintf(name, sizeof name, "%sposterior_mean", prefix);
        snprintf(what, sizeof what, "%s %s", g->path, name);
        const float *want = sd_safetensors_find(&g->st, name) ? golden_f32(g, name, NULL) : NULL;
        if (want) check_close(what, mean, want, (int64_t)lat, 1e-4);
        snprintf(name, sizeof name, "%sposterior_std", prefix);
        snprintf(what, sizeof what, "%s %s", g->path, name);
        if ((want = sd_safetensors_find(&g->st, name) ? golden_f32(g, name, NULL) : NULL)) check_close(what, std, want, (int64_t)lat, 1e-4);
        const float *noise = noise_name && sd_safetensors_find(&g->st, noise_name) ? golden_f32(g, noise_name, NULL) : NULL;
        want = latents_name && sd_safetensors_find(&g->st, latents_name) ? golden_f32(g, latents_name, NULL) : NULL;
        if (noise && want) {
            sd_vae_sample(mean, std, noise, lat, sample);
            for (size_t i = 0; i < lat; i++) sample[i] *= m->info.vae_scale;
            snprintf(what, sizeof what, "%s %s", g->path, latents_name);
            check_close(what, sample, want, (int64_t)lat, 1e-4);
        } else if (want) {   /* InstructPix2Pix: the unscaled mode */
            snprintf(what, sizeof what, "%s %s", g->path, latents_name);
            check_close(what, mean, want, (int64_t)lat, 1e-4);
        }
    }
    free_arena(a);
    free(moments); free(mean); free(std); free(sample);
}

/* Each recorded step's UNet call from its stored input and the golden's text encodings. */
static void ig_check_unet_steps(const sd_model *m, golden_file *g, int H, int W, sd_pool *pool)
{
    const sd_tensor *in0 = sd_safetensors_find(&g->st, "step0.unet_input"), *ts = sd_safetensors_find(&g->st, "timesteps");
    if (!CHECK(in0 && in0->ndim == 4 && ts && ts->dtype == SD_I64, "%s: no step0.unet_input / timesteps", g->path)) return;
    int B = (int)in0->shape[0], ch = (int)in0->shape[1], h = H / 8, w = W / 8, D = m->context_dim, add = sd_unet_add_dim(m->unet);
    if (!CHECK(ch == m->unet->in_channels && in0->shape[2] == h && in0->shape[3] == w && B >= 1 && B <= 3,
               "%s: step0.unet_input [%d, %d, ...] does not fit the %d-channel UNet at %dx%d", g->path, B, ch, m->unet->in_channels, H, W)) return;
    const float *pe = golden_f32(g, "prompt_embeds", NULL), *ne = B > 1 ? golden_f32(g, "negative_prompt_embeds", NULL) : NULL;
    if (!pe || (B > 1 && !ne)) return;
    size_t ctx_n = (size_t)SD_TEXT_TOKENS * D, lat = (size_t)4 * h * w;
    float *ctx = (float *)malloc((size_t)B * ctx_n * sizeof(float)), *y = (float *)malloc(((size_t)B * add + 1) * sizeof(float));
    float *out = (float *)malloc((size_t)B * lat * sizeof(float)), t[3];
    for (int b = 0; b < B; b++)   /* (uncond, cond) as CFG; InstructPix2Pix (text, negative, negative) */
        memcpy(ctx + (size_t)b * ctx_n, negative_row(B, b) ? ne : pe, ctx_n * sizeof(float));
    if (add) {   /* SDXL: pooled text and the size ids */
        const float *pp = golden_f32(g, "pooled_prompt_embeds", NULL), *np = golden_f32(g, "negative_pooled_prompt_embeds", NULL);
        const float *ids = golden_f32(g, "add_time_ids", NULL);
        for (int b = 0; pp && np && ids && b < B; b++)
            CHECK(sd_unet_add_vector(m->unet, negative_row(B, b) ? np : pp, m->te[1].proj_dim, ids + 6 * b, y + (size_t)b * add, NULL) == SD_OK,
                  "%s: added conditioning", g->path);
    }
    sd_unet_cond cond = {ctx, SD_TEXT_TOKENS, add ? y : NULL, NULL};
    sd_arena *a = test_arena(sd_unet_arena_bytes(m->unet, B, h, w, SD_TEXT_TOKENS));
    int steps = (int)sd_tensor_numel(ts);
    for (int k = 0; k < steps; k++) {
        char name[64], what[1600];
        snprintf(name, sizeof name, "step%d.unet_input", k);
        const sd_tensor *in = sd_safetensors_find(&g->st, name);
        snprintf(name, sizeof name, "step%d.unet_out", k);
        if (!in || !sd_safetensors_find(&g->st, name)) continue;
        const float *want = golden_f32(g, name, NULL);
        for (int b = 0; b < B; b++) t[b] = (float)golden_i64_at(ts, k);
        sd_error err;
        snprintf(what, sizeof what, "%s %s (from the stored input)", g->path, name);
        if (CHECK(sd_unet(m->unet, (const float *)in->data, t, &cond, B, h, w, out, pool, a, &err) == SD_OK, "%s: %s", what, err.message))
            check_close(what, out, want, (int64_t)B * lat, 2e-5);
    }
    free_arena(a);
    free(ctx); free(y); free(out);
}

/* The stages of an inpainting or InstructPix2Pix golden before and inside the loop (the whole
   run is check_pipeline's). */
static void check_image_guided(const sd_model *m, golden_file *g, sd_pool *pool)
{
    char what[1600];
    int H = atoi(meta_or(g, "height", "0")), W = atoi(meta_or(g, "width", "0"));
    const sd_tensor *init = sd_safetensors_find(&g->st, "init_image_uint8"), *mask = sd_safetensors_find(&g->st, "mask_uint8");
    if (!CHECK(init && init->dtype == SD_U8 && sd_tensor_numel(init) == (int64_t)3 * H * W, "%s: no init_image_uint8 [%d, %d, 3]", g->path, H, W)) return;
    if (mask && !CHECK(mask->dtype == SD_U8 && sd_tensor_numel(mask) == (int64_t)H * W, "%s: mask_uint8 is not [%d, %d]", g->path, H, W)) return;
    size_t plane = (size_t)H * W, hw = plane / 64;
    float *img = (float *)malloc(3 * plane * sizeof(float)), *mb = (float *)malloc(plane * sizeof(float)), *ml = (float *)malloc(hw * sizeof(float));
    const uint8_t *rgb = (const uint8_t *)init->data, *mk = mask ? (const uint8_t *)mask->data : NULL;

    /* the stages before the loop */
    if (mk) {
        sd_inpaint_mask(mk, H, W, mb, ml);
        snprintf(what, sizeof what, "%s mask_binarized", g->path);
        if (sd_safetensors_find(&g->st, "mask_binarized")) check_exact(what, mb, golden_f32(g, "mask_binarized", NULL), (int64_t)plane);
        snprintf(what, sizeof what, "%s mask_latent", g->path);
        if (sd_safetensors_find(&g->st, "mask_latent")) check_exact(what, ml, golden_f32(g, "mask_latent", NULL), (int64_t)hw);
        sd_masked_image(rgb, mk, H, W, img);
        snprintf(what, sizeof what, "%s masked_image", g->path);
        if (sd_safetensors_find(&g->st, "masked_image")) check_exact(what, img, golden_f32(g, "masked_image", NULL), (int64_t)(3 * plane));
        ig_check_posterior(m, g, img, H, W, "masked_image_", "masked_image_posterior_noise", "masked_image_latents", pool);
    }
    sd_masked_image(rgb, NULL, H, W, img);
    ig_check_posterior(m, g, img, H, W, "", "posterior_noise", mask ? "init_latents" : "image_latents", pool);
    if (sd_safetensors_find(&g->st, "step0.unet_out")) ig_check_unet_steps(m, g, H, W, pool);

    free(img); free(mb); free(ml);
}

/* Inputs that do not fit the model: clear errors before any work, nothing written. */
static void check_image_guided_errors(const sd_model *m, const char *label)
{
    sd_params p;
    sd_error err;
    int ch = m->unet->in_channels;
    uint8_t rgb[3 * 64 * 64], mask[64 * 64], out[3 * 64 * 64];
    memset(rgb, 100, sizeof rgb);
    memset(mask, 255, sizeof mask);
    memset(out, 7, sizeof out);
    sd_params_init(&p);
    p.prompt = "a cat";
    p.width = p.height = 64;
    p.steps = 2;
    sd_arena *a = test_arena(1u << 20);
    if (ch != 4) {   /* no init image */
        CHECK(sd_generate(m, &p, a, out, &err) == SD_ERR_ARG && strstr(err.message, "init image") && a->peak == 0,
              "%s: a %d-channel model without an init image: %s", label, ch, err.message);
    } else {   /* a mask without an init image */
        p.mask = mask;
        CHECK(sd_generate(m, &p, a, out, &err) == SD_ERR_ARG && strstr(err.message, "mask") && a->peak == 0,
              "%s: a mask without an init image: %s", label, err.message);
    }
    p.init_rgb = rgb;
    p.mask = ch == 8 ? mask : NULL;
    if (ch == 8) CHECK(sd_generate(m, &p, a, out, &err) == SD_ERR_ARG && strstr(err.message, "no mask"), "%s: a mask for InstructPix2Pix: %s", label, err.message);
    if (ch == 9) CHECK(sd_generate(m, &p, a, out, &err) == SD_ERR_ARG && strstr(err.message, "mask"), "%s: inpainting without a mask: %s", label, err.message);
    p.strength = 1.5;
    p.mask = ch == 9 ? mask : NULL;
    CHECK(sd_generate(m, &p, a, out, &err) == SD_ERR_ARG, "%s: strength 1.5 accepted", label);
    CHECK(out[0] == 7 && out[sizeof out - 1] == 7 && a->peak == 0, "%s: a refused call wrote its output or took memory", label);
    free_arena(a);
    /* masks of all 0 and all 1 run (inpainting and the blend) */
    if (ch != 8) {
        for (int v = 0; v < 2; v++) {
            memset(mask, v ? 255 : 0, sizeof mask);
            p.mask = mask;
            p.strength = 0;
            size_t need = sd_generate_arena_bytes(m, &p);
            sd_arena *b = test_arena(need);
            int rc = sd_generate(m, &p, b, out, &err);
            CHECK(rc == SD_OK && b->peak == need, "%s: a mask of all %d: %s (peak %zu of %zu)", label, v * 255, rc ? err.message : "ok", b->peak, need);
            free_arena(b);
        }
    }
}

static void test_image_guided(void)
{
    int n = golden_models_read(), files = 0;
    DIR *top = opendir(golden_dir);
    struct dirent *d;
    sd_pool *pool = host_pool();
    while (top && (d = readdir(top))) {
        char sub[1400];
        if (d->d_name[0] == '.') continue;
        snprintf(sub, sizeof sub, "%s/%s", golden_dir, d->d_name);
        DIR *dir = opendir(sub);
        struct dirent *f;
        while (dir && (f = readdir(dir))) {
            if (!is_image_guided_golden(f->d_name)) continue;
            char rel[1400];
            snprintf(rel, sizeof rel, "%.600s/%.600s", d->d_name, f->d_name);
            golden_file *g = golden_open(rel);
            if (!g) continue;
            const char *model = meta_or(g, "model", d->d_name);
            golden_model *gm = NULL;
            for (int i = 0; i < n; i++) if (!strcmp(golden_models[i].name, model)) gm = &golden_models[i];
            loaded_model lm;
            if (!gm || !golden_model_file(gm)) {
                note_absent(model, "%s: its model %s is not in %s/models, skipped", rel, model, golden_dir);
            } else if (!load_golden_model(&lm, gm, 0)) {
                files++;
                check_image_guided(lm.model, g, pool);
                check_pipeline(lm.model, rel);
                unload_model(&lm);
            }
            golden_close(g);
        }
        if (dir) closedir(dir);
    }
    if (top) closedir(top);
    /* the errors, on one model of each kind present */
    int seen[10] = {0};
    for (int i = 0; i < n; i++) {
        loaded_model lm;
        if (!golden_model_file(&golden_models[i]) || load_golden_model(&lm, &golden_models[i], 0)) continue;
        int ch = lm.model->unet->in_channels;
        if (!seen[ch]++) check_image_guided_errors(lm.model, golden_models[i].name);
        unload_model(&lm);
    }
    n_cases += files;
    if (!files) note_absent("image-guided", "no inpainting or InstructPix2Pix goldens (NAME/inpaint_*, ip2p_*) in %s, skipped", golden_dir);
    else printf("image-guided: %d inpainting and InstructPix2Pix goldens, every stage\n", files);
}

/* ---- one model, many threads ----------------------------------------------------------------- */
/* A loaded model is read-only: sd_generate calls on one sd_model from several threads at once,
   each with its own arena (and pool), give the bytes of the same calls one after another. make
   tsan runs this group under ThreadSanitizer. */

typedef struct gen_job { const sd_model *m; sd_params p; uint8_t *rgb; int rc; } gen_job;

#ifndef SD_NO_THREADS
static void *gen_thread(void *arg)
{
    gen_job *j = (gen_job *)arg;
    sd_error err;
    sd_arena *a = test_arena(sd_generate_arena_bytes(j->m, &j->p));
    j->rc = sd_generate(j->m, &j->p, a, j->rgb, &err);
    free_arena(a);
    return NULL;
}
#endif

static void test_threads(void)
{
#ifdef SD_NO_THREADS
    printf("note: SD_NO_THREADS: the concurrent sd_generate checks skipped\n");
#else
    int n = golden_models_read(), done = 0;
    for (int i = 0; i < n && !done; i++) {
        golden_model *gm = &golden_models[i];
        loaded_model lm;
        if (!golden_model_file(gm) || load_golden_model(&lm, gm, 0)) continue;
        if (lm.model->unet->in_channels != 4) { unload_model(&lm); continue; }
        enum { JOBS = 4 };
        gen_job job[JOBS];
        size_t px = (size_t)3 * 64 * 64, esize[2];
        uint8_t *ref = (uint8_t *)malloc(JOBS * px);
        /* two embedding sets of one name, other vectors: each thread reads its own (one text encoder) */
        unsigned char *ebytes[2] = {NULL, NULL};
        sd_arena *earena[2] = {NULL, NULL};
        sd_embeddings *set[2] = {NULL, NULL};
        sd_error err;
        for (int k = 0; k < 2 && lm.model->encoders == 1; k++) {
            ebytes[k] = ti_make("emb_params", 2 + k, lm.model->te[0].width, 0.4f + 0.5f * k, &esize[k]);
            sd_embedding_file f = {"mystyle", ebytes[k], esize[k]};
            set[k] = ti_load(lm.model, &f, 1, &earena[k], &err);
        }
        for (int k = 0; k < JOBS; k++) {   /* four different generations, Euler a drawing from each seed */
            job[k].m = lm.model;
            sd_params_init(&job[k].p);
            job[k].p.prompt = k % 2 ? "a red castle on a hill, mystyle" : "a (blue:1.2) boat BREAK at sea, mystyle";
            job[k].p.embeddings = set[k % 2];
            job[k].p.width = job[k].p.height = 64;
            job[k].p.steps = 3;
            job[k].p.sampler = SD_SAMPLER_EULER_A;
            job[k].p.seed = 100 + (uint64_t)k;
            job[k].p.threads = 1 + k % 2;   /* pools of one and of two threads inside */
            job[k].rgb = (uint8_t *)malloc(px);
            gen_thread(&job[k]);
            memcpy(ref + k * px, job[k].rgb, px);
            CHECK(job[k].rc == SD_OK, "threads: generation %d alone", k);
        }
        for (int count = 2; count <= JOBS; count += 2) {
            pthread_t tid[JOBS];
            for (int k = 0; k < count; k++) {
                memset(job[k].rgb, 0, px);
                CHECK(pthread_create(&tid[k], NULL, gen_thread, &job[k]) == 0, "threads: pthread_create");
            }
            for (int k = 0; k < count; k++) pthread_join(tid[k], NULL);
            for (int k = 0; k < count; k++)
                CHECK(job[k].rc == SD_OK && !memcmp(job[k].rgb, ref + k * px, px), "threads: %s: generation %d of %d at once differs from it alone",
                      gm->name, k, count);
        }
        for (int k = 0; k < JOBS; k++) free(job[k].rgb);
        for (int k = 0; k < 2; k++) free_arena(earena[k]), free(ebytes[k]);
        free(ref);
        unload_model(&lm);
        n_cases++;
        done = 1;
        printf("threads: 2 and 4 generations at once on one %s model give the bytes of each alone%s\n", gm->name,
               set[0] ? " (two of them with one embedding set, two with another)" : "");
    }
    if (!done) note_absent("threads", "no model that loads in %s/models: the concurrent sd_generate checks skipped", golden_dir);
#endif
}

/* ---- weights through a callback ------------------------------------------------------------ */
/* A model whose file is not in memory (sd_source.read): a callback that serves the file's bytes
   with pread and counts, per tensor, the bytes it was asked for. The generation must give the
   bytes of the in-memory model; loading reads the header alone; one generation reads each UNet
   weight matrix exactly once per UNet evaluation (no re-reads within a layer); a failed read is
   SD_ERR_IO and leaves the model usable; the plan covers the stage; stage functions refuse a
   pool without a stage and, given one, equal the in-memory ones. */

typedef struct counting_reader {
    int fd;
    const sd_safetensors *table;   /* the same file opened in memory: offsets of its tensors */
    int32_t *order;                /* tensor indices by offset */
    uint64_t *bytes;               /* bytes read of each tensor */
    uint64_t header, calls;        /* bytes read before the data region, and all reads */
    long fail_after;               /* fail every read after this many more (-1: never) */
    pthread_mutex_t lock;
} counting_reader;

static int counting_read(void *user, int file, uint64_t offset, void *dst, size_t size)
{
    counting_reader *r = (counting_reader *)user;
    int fail = 0;
    pthread_mutex_lock(&r->lock);
    r->calls++;
    if (r->fail_after == 0) fail = 1;
    else if (r->fail_after > 0) r->fail_after--;
    for (int lo = 0, hi = r->table->count; ; ) {   /* the first tensor that ends after offset */
        if (lo == hi) {
            for (int k = lo; k < r->table->count; k++) {
                const sd_tensor *t = &r->table->tensors[r->order[k]];
                uint64_t a = t->offset > offset ? t->offset : offset, b = t->offset + t->nbytes < offset + size ? t->offset + t->nbytes : offset + size;
                if (t->offset >= offset + size) break;
                if (b > a) r->bytes[r->order[k]] += b - a;
            }
            break;
        }
        int mid = (lo + hi) / 2;
        const sd_tensor *t = &r->table->tensors[r->order[mid]];
        if (t->offset + t->nbytes <= offset) lo = mid + 1; else hi = mid;
    }
    if (r->table->count && offset < r->table->tensors[r->order[0]].offset) {
        uint64_t end = r->table->tensors[r->order[0]].offset;
        r->header += (offset + size < end ? offset + size : end) - offset;
    }
    pthread_mutex_unlock(&r->lock);
    if (file != 0 || fail) return -1;
    return pread(r->fd, dst, size, (off_t)offset) == (ssize_t)size ? 0 : -1;
}

static uint64_t reader_tensor_bytes(counting_reader *r, int one_d)
{
    uint64_t n = 0;
    for (int i = 0; i < r->table->count; i++) if ((r->table->tensors[i].ndim <= 1) == one_d) n += r->bytes[i];
    return n;
}

static void reader_reset(counting_reader *r)
{
    memset(r->bytes, 0, (size_t)r->table->count * sizeof *r->bytes);
    r->header = r->calls = 0;
}

static void test_reader(void)
{
    int n = golden_models_read(), done = 0;
    for (int i = 0; i < n && !done; i++) {
        golden_model *gm = &golden_models[i];
        loaded_model lm;
        const char *path = golden_model_file(gm);
        if (!path || load_golden_model(&lm, gm, 0)) continue;
        if (lm.model->unet->in_channels != 4 || lm.model->unet->guidance_dim) { unload_model(&lm); continue; }
        done = 1;
        sd_arena *qarena[2] = {NULL, NULL};   /* the models' quantized weights, once quantized (below) */
        counting_reader cr;
        memset(&cr, 0, sizeof cr);
        pthread_mutex_init(&cr.lock, NULL);
        cr.fd = open(path, O_RDONLY);
        cr.table = &lm.model->files[0];
        cr.fail_after = -1;
        cr.order = (int32_t *)malloc(((size_t)cr.table->count + 1) * sizeof *cr.order);
        cr.bytes = (uint64_t *)calloc((size_t)cr.table->count + 1, sizeof *cr.bytes);
        for (int k = 0; k < cr.table->count; k++) cr.order[k] = k;
        for (int k = 1; k < cr.table->count; k++)   /* by offset (insertion sort: ~1000 tensors) */
            for (int j = k; j > 0 && cr.table->tensors[cr.order[j - 1]].offset > cr.table->tensors[cr.order[j]].offset; j--) {
                int32_t s = cr.order[j]; cr.order[j] = cr.order[j - 1]; cr.order[j - 1] = s;
            }
        CHECK(cr.fd >= 0, "reader: cannot open %s", path);

        /* load: the header only, into an arena of what sd_model_arena_bytes says */
        sd_source src;
        sd_error err;
        sd_model *sm = NULL;
        memset(&src, 0, sizeof src);
        src.size[0] = lm.size, src.count = 1, src.read = counting_read, src.read_user = &cr;
        src.merges = (const char *)lm.merges, src.merges_size = lm.merges_size;
        size_t plan = sd_model_arena_bytes(&src);
        sd_arena *ma = test_arena(plan);
        reader_reset(&cr);
        int rc = sd_model_load(&sm, &src, ma, &err);
        CHECK(rc == SD_OK, "reader: %s: sd_model_load through the callback: %s", gm->name, rc ? err.message : "");
        if (rc) { free_arena(ma); unload_model(&lm); break; }
        uint64_t head = 8 + cr.table->tensors[cr.order[0]].offset;   /* the length, then the length and the header */
        CHECK(reader_tensor_bytes(&cr, 0) == 0 && cr.header == head, "reader: %s: loading read %llu bytes of weight matrices and %llu "
              "of the header (want 0 and %llu)", gm->name, (unsigned long long)reader_tensor_bytes(&cr, 0), (unsigned long long)cr.header,
              (unsigned long long)head);
        CHECK(ma->peak <= plan, "reader: %s: loading took %zu arena bytes, sd_model_arena_bytes said %zu", gm->name, ma->peak, plan);

        /* a generation: the in-memory model's bytes, in exact and fast mode; the UNet read once per step */
        enum { STEPS = 2 };
        size_t px = (size_t)3 * 64 * 64;
        uint8_t *want = (uint8_t *)malloc(px), *got = (uint8_t *)malloc(px);
        for (int mode = 0; mode < 2; mode++) {
            sd_params p;
            sd_params_init(&p);
            p.prompt = "a lighthouse at dusk";
            p.width = p.height = 64, p.steps = STEPS, p.seed = 7, p.threads = 2, p.quant = mode ? SD_QUANT_FAST : SD_QUANT_EXACT;
            size_t need_mem = sd_generate_arena_bytes(lm.model, &p), need = sd_generate_arena_bytes(sm, &p), stage = sd_pool_stage_bytes(sm);
            CHECK(stage >= SD_WEIGHT_STAGE_BYTES && need >= need_mem + stage && need <= need_mem + stage + SD_ARENA_ALIGN,
                  "reader: %s: plan %zu with the stage (%zu), %zu without", gm->name, need, stage, need_mem);
            sd_arena *a = test_arena(need_mem);
            CHECK(sd_generate(lm.model, &p, a, want, &err) == SD_OK, "reader: %s: in memory: %s", gm->name, err.message);
            free_arena(a);
            a = test_arena(need);
            reader_reset(&cr);
            rc = sd_generate(sm, &p, a, got, &err);
            CHECK(rc == SD_OK && !memcmp(got, want, px), "reader: %s: %s mode through the callback: %s", gm->name, mode ? "fast" : "exact",
                  rc ? err.message : "not the in-memory bytes");
            CHECK(a->peak <= need, "reader: %s: the run took %zu arena bytes, the plan said %zu", gm->name, a->peak, need);
            free_arena(a);
            /* every UNet matrix once per evaluation; the feed-forward's two a whole number of times,
               once per block of rows (its 8·D-wide hidden layer runs a block at a time) */
            int unet = 0, once = 0, most = 1;
            uint64_t unet_bytes = 0;
            for (int k = 0; k < cr.table->count; k++) {
                const sd_tensor *t = &cr.table->tensors[k];
                if (t->ndim < 2 || strncmp(t->name, "model.diffusion_model.", 22)) continue;
                uint64_t per = (uint64_t)STEPS * t->nbytes, times = cr.bytes[k] / per;
                int ff = strstr(t->name, ".ff.net.") != NULL;
                unet++, unet_bytes += t->nbytes;
                if (cr.bytes[k] % per == 0 && (times == 1 || (ff && times >= 1 && times <= 16))) once++, most = times > (uint64_t)most ? (int)times : most;
                else CHECK(0, "reader: %s: UNet weight %s: %llu bytes read in %d steps, %zu per step expected", gm->name, t->name,
                           (unsigned long long)cr.bytes[k], STEPS, t->nbytes);
            }
            CHECK(unet > 0 && once == unet, "reader: %s: %d of %d UNet weight matrices read once per evaluation", gm->name, once, unet);
            if (!mode)
                printf("reader: %s: %d-step 64x64 through the callback: the in-memory bytes; %llu reads, %.2f MB of a %.2f MB file "
                       "(UNet matrices %.2f MB per step, each read once, the feed-forward's up to %dx; vectors %.2f MB in all)\n", gm->name,
                       STEPS, (unsigned long long)cr.calls, (cr.header + reader_tensor_bytes(&cr, 0) + reader_tensor_bytes(&cr, 1)) / 1e6,
                       lm.size / 1e6, unet_bytes / 1e6, most, reader_tensor_bytes(&cr, 1) / 1e6);
        }

        /* a failed read: SD_ERR_IO, then the model works again */
        {
            sd_params p;
            sd_params_init(&p);
            p.prompt = "a lighthouse at dusk";
            p.width = p.height = 64, p.steps = STEPS, p.seed = 7, p.threads = 2;
            sd_arena *a = test_arena(sd_generate_arena_bytes(sm, &p));
            cr.fail_after = 50;
            rc = sd_generate(sm, &p, a, got, &err);
            CHECK(rc == SD_ERR_IO && strstr(err.message, "read callback") && a->used == 0,
                  "reader: %s: a failing callback gave %d (%s), arena at %zu", gm->name, rc, rc ? err.message : "", a->used);
            cr.fail_after = -1;
            rc = sd_generate(sm, &p, a, got, &err);
            sd_generate(lm.model, &p, a, want, &err);
            CHECK(rc == SD_OK && !memcmp(got, want, px), "reader: %s: after a failed read the next generation differs", gm->name);
#ifndef SD_NO_THREADS
            /* two at once on the streamed model: the bytes of each alone */
            gen_job job[2];
            pthread_t tid[2];
            for (int k = 0; k < 2; k++) {
                job[k].m = sm, job[k].p = p, job[k].p.seed = 11 + (uint64_t)k, job[k].rgb = (uint8_t *)malloc(px);
                CHECK(pthread_create(&tid[k], NULL, gen_thread, &job[k]) == 0, "reader: pthread_create");
            }
            for (int k = 0; k < 2; k++) {
                pthread_join(tid[k], NULL);
                p.seed = 11 + (uint64_t)k;
                sd_generate(lm.model, &p, a, want, &err);
                CHECK(job[k].rc == SD_OK && !memcmp(job[k].rgb, want, px), "reader: %s: generation %d of 2 at once differs", gm->name, k);
                free(job[k].rgb);
            }
#endif
            free_arena(a);
        }

        /* a LoRA on it, and load-time quantization of it: what the in-memory model gives */
        {
            char lpath[1300];
            size_t lsize = 0;
            snprintf(lpath, sizeof lpath, "%s/lora/tiny-sd1_kohya_r4.safetensors", golden_dir);
            unsigned char *lbytes = !strcmp(gm->name, "tiny-sd1") ? read_file(lpath, &lsize) : NULL;
            for (int pass = 0; pass < 2; pass++) {
                sd_params p;
                sd_lora l = {lbytes, lsize, 0.7f, 0.7f, "tiny-sd1_kohya_r4"};
                sd_params_init(&p);
                p.prompt = "a lighthouse at dusk";
                p.width = p.height = 64, p.steps = STEPS, p.seed = 9, p.threads = 2;
                if (pass == 0) {
                    if (!lbytes) continue;
                    p.loras = &l, p.lora_count = 1;
                } else {   /* (last: the models stay quantized) */
                    sd_model *both[2] = {lm.model, sm};
                    for (int k = 0; k < 2; k++) {
                        qarena[k] = test_arena(sd_model_quantize_arena_bytes(both[k], SD_Q8_0));
                        CHECK(sd_model_quantize(both[k], SD_Q8_0, qarena[k], &err) == SD_OK, "reader: sd_model_quantize: %s", err.message);
                    }
                }
                sd_arena *a = test_arena(sd_generate_arena_bytes(sm, &p));
                rc = sd_generate(sm, &p, a, got, &err);
                sd_generate(lm.model, &p, a, want, &err);
                CHECK(rc == SD_OK && !memcmp(got, want, px), "reader: %s: %s through the callback: %s", gm->name,
                      pass ? "load-time q8_0" : "a LoRA", rc ? err.message : "not the in-memory bytes");
                free_arena(a);
            }
            printf("reader: %s: %sload-time q8_0 quantization through the callback: the in-memory bytes\n", gm->name, lbytes ? "a LoRA and " : "");
            free(lbytes);
        }

        /* a stage function: refused on a pool without a stage, equal to the in-memory one with it */
        {
            const sd_unet_model *u0 = lm.model->unet, *u1 = sm->unet;
            int h = 8, w = 8, C = u0->context_dim, add = sd_unet_add_dim(u0);
            float *x = (float *)calloc((size_t)4 * h * w, sizeof(float)), *ctx = (float *)calloc((size_t)77 * C, sizeof(float));
            float *y = add ? (float *)calloc((size_t)add, sizeof(float)) : NULL, t = 500.0f;
            float *o0 = (float *)malloc((size_t)4 * h * w * sizeof(float)), *o1 = (float *)malloc((size_t)4 * h * w * sizeof(float));
            for (int k = 0; k < 4 * h * w; k++) x[k] = sinf((float)k);
            for (int k = 0; k < 77 * C; k++) ctx[k] = cosf((float)k * 0.37f);
            sd_unet_cond cond;
            memset(&cond, 0, sizeof cond);
            cond.context = ctx, cond.context_len = 77, cond.y = y;
            size_t ub = sd_unet_arena_bytes(u0, 1, h, w, 77);
            sd_arena *a = test_arena(sd_pool_arena_bytes(2) + sd_pool_stage_bytes(sm) + ub + 4 * SD_ARENA_ALIGN);
            sd_pool *pool;
            sd_pool_create(&pool, 2, a, &err);
            CHECK(sd_unet(u0, x, &t, &cond, 1, h, w, o0, pool, a, &err) == SD_OK, "reader: sd_unet in memory: %s", err.message);
            rc = sd_unet(u1, x, &t, &cond, 1, h, w, o1, pool, a, &err);
            CHECK(rc == SD_ERR_ARG && strstr(err.message, "sd_pool_set_stage"), "reader: sd_unet without a stage gave %d", rc);
            CHECK(sd_pool_set_stage(pool, sm, a, &err) == SD_OK, "reader: sd_pool_set_stage: %s", err.message);
            rc = sd_unet(u1, x, &t, &cond, 1, h, w, o1, pool, a, &err);
            CHECK(rc == SD_OK && !memcmp(o0, o1, (size_t)4 * h * w * sizeof(float)), "reader: sd_unet through the callback: %s",
                  rc ? err.message : "not the in-memory output");
            sd_pool_destroy(pool);
            free_arena(a);
            free(x), free(ctx), free(y), free(o0), free(o1);
        }
        free(want), free(got);
        free_arena(ma);

        /* loading errors: a failing header read, a GGUF file, a header longer than the file; the arena as it was */
        {
            sd_arena *a = test_arena(plan);
            cr.fail_after = 1;
            rc = sd_model_load(&sm, &src, a, &err);
            CHECK(rc == SD_ERR_IO && a->used == 0 && !sm, "reader: a header read that fails gave %d (%s)", rc, rc ? err.message : "");
            cr.fail_after = -1;
            src.size[0] = 100;
            rc = sd_model_load(&sm, &src, a, &err);
            CHECK(rc == SD_ERR_FORMAT && a->used == 0, "reader: a file cut to 100 bytes gave %d (%s)", rc, rc ? err.message : "");
            src.size[0] = lm.size;
            static const unsigned char gguf[32] = "GGUF\3";
            memory_file mf = {gguf, sizeof gguf};
            sd_source gs = src;
            gs.read = memory_read, gs.read_user = &mf, gs.size[0] = sizeof gguf;
            rc = sd_model_load(&sm, &gs, a, &err);
            CHECK(rc == SD_ERR_UNSUPPORTED && strstr(err.message, "GGUF") && a->used == 0, "reader: a GGUF file through the callback gave %d (%s)",
                  rc, rc ? err.message : "");
            free_arena(a);
        }
        close(cr.fd);
        free(cr.order), free(cr.bytes);
        pthread_mutex_destroy(&cr.lock);
        unload_model(&lm);
        free_arena(qarena[0]), free_arena(qarena[1]);
        n_cases++;
    }
    if (!done) note_absent("reader", "no txt2img model file that loads in %s/models: the read-callback checks skipped", golden_dir);
}

/* ./test --rewrite IN OUT [--f32] [--drop NAME]... [--bump NAME] [--meta KEY=VALUE]...: a copy of
   a safetensors file with 2-byte floats widened to F32, tensors left out, one tensor's first value
   moved by 1 % of its largest magnitude (a change no tolerance accepts), or metadata set. make
   test-subsets builds golden sets with it (no python needed). */
typedef struct rewrite_opts { const char *drop[64]; int ndrop; } rewrite_opts;

static int rewrite_keep(sd_tensor *t, char *name, size_t cap, void *user)
{
    const rewrite_opts *o = (const rewrite_opts *)user;
    (void)t, (void)cap;
    for (int i = 0; i < o->ndrop; i++) if (!strcmp(name, o->drop[i])) return 0;
    return 1;
}

static int rewrite_main(int argc, char **argv)
{
    rewrite_opts o;
    const char *bump = NULL, *meta[64];
    int f32 = 0, nmeta = 0;
    size_t size, out_size;
    sd_safetensors st, out_st;
    sd_error err;
    memset(&o, 0, sizeof o);
    if (argc < 4) { fprintf(stderr, "usage: ./test --rewrite IN OUT [--f32] [--drop NAME]... [--bump NAME] [--meta KEY=VALUE]...\n"); return 2; }
    for (int i = 4; i < argc; i++) {
        if (!strcmp(argv[i], "--f32")) f32 = 1;
        else if (!strcmp(argv[i], "--drop") && i + 1 < argc && o.ndrop < 64) o.drop[o.ndrop++] = argv[++i];
        else if (!strcmp(argv[i], "--bump") && i + 1 < argc) bump = argv[++i];
        else if (!strcmp(argv[i], "--meta") && i + 1 < argc && strchr(argv[i + 1], '=') && nmeta < 64) meta[nmeta++] = argv[++i];
        else { fprintf(stderr, "--rewrite: bad option '%s'\n", argv[i]); return 2; }
    }
    unsigned char *in = read_file(argv[2], &size);
    if (!in) { fprintf(stderr, "cannot read %s\n", argv[2]); return 1; }
    sd_arena *a = test_arena(1u << 26);
    if (sd_safetensors_open(&st, in, size, a, &err)) { fprintf(stderr, "%s: %s\n", argv[2], err.message); return 1; }
    for (int i = 0; i < o.ndrop; i++)
        if (!sd_safetensors_find(&st, o.drop[i])) { fprintf(stderr, "%s has no tensor '%s'\n", argv[2], o.drop[i]); return 1; }
    /* the metadata table, with KEY=VALUE pairs set (replaced or added) */
    const char **keys = (const char **)malloc((size_t)(st.meta_count + nmeta + 1) * sizeof *keys);
    const char **values = (const char **)malloc((size_t)(st.meta_count + nmeta + 1) * sizeof *values);
    memcpy(keys, st.meta_keys, (size_t)st.meta_count * sizeof *keys);
    memcpy(values, st.meta_values, (size_t)st.meta_count * sizeof *values);
    for (int i = 0; i < nmeta; i++) {
        char *eq = strchr(meta[i], '=');
        int k = 0;
        *eq = 0;
        while (k < st.meta_count && strcmp(keys[k], meta[i])) k++;
        if (k == st.meta_count) keys[st.meta_count++] = meta[i];
        values[k] = eq + 1;
    }
    st.meta_keys = keys;
    st.meta_values = values;
    unsigned char *out = rewrite_file(&st, f32 ? SD_F32 : SD_DTYPE_COUNT, rewrite_keep, &o, &out_size);
    if (sd_safetensors_open(&out_st, out, out_size, a, &err)) { fprintf(stderr, "rewritten %s: %s\n", argv[2], err.message); return 1; }
    if (bump) {
        const sd_tensor *t = sd_safetensors_find(&out_st, bump);
        if (!t || t->dtype != SD_F32 || !t->nbytes) { fprintf(stderr, "%s has no F32 tensor '%s' to bump\n", argv[2], bump); return 1; }
        float first, top = 0;
        for (size_t k = 0; k < t->nbytes / 4; k++) top = fmaxf(top, fabsf(tensor_get(t, k)));
        memcpy(&first, t->data, 4);
        first += 0.01f * (top > 0 ? top : 1);
        memcpy((unsigned char *)t->data, &first, 4);   /* t->data points into out, our own copy */
    }
    FILE *f = fopen(argv[3], "wb");
    int ok = f && fwrite(out, 1, out_size, f) == out_size;
    if (f && fclose(f)) ok = 0;
    if (!ok) fprintf(stderr, "cannot write %s\n", argv[3]);
    free(in);
    free(out);
    free(keys);
    free(values);
    free_arena(a);
    return !ok;
}

/* ---- TAESD ----------------------------------------------------------------------------------- */
/* The tiny autoencoder against diffusers' AutoencoderTiny (GOLDEN/taesd/, §12 of the golden
   README): decodes, encodes and their layers, the 8-bit round trip of AutoencoderTiny.forward,
   both file layouts (bit-identical), plans against measured peaks at many sizes, files of the
   wrong kind, and the pipelines decoded (and img2img encoded) through TAESD. */

/* A TAESD as users have it: models/NAME/NAME_{encoder,decoder}.safetensors (the original pair)
   or models/NAME-diffusers/ (one safetensors file and config.json). */
typedef struct taesd_model {
    unsigned char *bytes[2], *config;
    size_t size[2], config_size;
    sd_safetensors st[2];
    sd_arena *arena;
    sd_taesd *t;
} taesd_model;

static void taesd_close(taesd_model *m)
{
    free(m->bytes[0]);
    free(m->bytes[1]);
    free(m->config);
    free_arena(m->arena);
    memset(m, 0, sizeof *m);
}

/* Loads the model from GOLDEN/models/`name` (and `-diffusers`); 1 on success, 0 if absent. */
static int taesd_open(taesd_model *m, const char *name, int diffusers)
{
    char path[1300];
    sd_error err;
    int parts = diffusers ? 1 : 2, rc = SD_OK;
    memset(m, 0, sizeof *m);
    for (int i = 0; i < parts; i++) {
        if (diffusers) snprintf(path, sizeof path, "%s/models/%s-diffusers/diffusion_pytorch_model.safetensors", golden_dir, name);
        else snprintf(path, sizeof path, "%s/models/%s/%s_%s.safetensors", golden_dir, name, name, i ? "decoder" : "encoder");
        if (!(m->bytes[i] = read_file(path, &m->size[i]))) { taesd_close(m); return 0; }
    }
    if (diffusers) {
        snprintf(path, sizeof path, "%s/models/%s-diffusers/config.json", golden_dir, name);
        m->config = read_file(path, &m->config_size);
    }
    m->arena = test_arena(1 << 20);
    for (int i = 0; i < parts && !rc; i++) rc = sd_safetensors_open(&m->st[i], m->bytes[i], m->size[i], m->arena, &err);
    if (!rc) rc = sd_taesd_load(&m->t, &m->st[0], &m->st[parts - 1], (const char *)m->config, m->config_size,
                                strstr(name, "taesdxl") ? SD_TAESD_XL : SD_TAESD_SD, m->arena, &err);
    if (!CHECK(rc == SD_OK, "TAESD %s%s: %s", name, diffusers ? "-diffusers" : "", err.message)) { taesd_close(m); return 0; }
    return 1;
}

/* Checks the probe's rows [y0, y0 + rows) (NHWC) against the golden tensor (NCHW) named by
   printf(name, prefix, layer) ("decode2.debug.layers.4"; a pipeline's "decoder_clamped"), as
   max|diff| / max|golden over the whole tensor|; `seen` counts the layers met to their last row. */
typedef struct taesd_debug { golden_file *g; const char *label, *name, *prefix; double tol; int seen; } taesd_debug;

static void taesd_debug_probe(void *user, const char *layer, const float *x, int y0, int rows, int H, int W, int C)
{
    taesd_debug *d = (taesd_debug *)user;
    char name[160];
    snprintf(name, sizeof name, d->name, d->prefix, layer);
    const sd_tensor *t = sd_safetensors_find(&d->g->st, name);
    if (!t) return;
    d->seen += y0 + rows == H;
    if (!CHECK(t->dtype == SD_F32 && sd_tensor_numel(t) == (int64_t)C * H * W, "%s: golden %s is not %d x %d x %d", d->label, name, C, H, W)) return;
    const float *want = (const float *)t->data;
    double ref = 0, diff = 0;
    for (int64_t i = 0; i < sd_tensor_numel(t); i++) ref = fabs(want[i]) > ref ? fabs(want[i]) : ref;
    for (int c = 0; c < C; c++)
        for (int y = y0; y < y0 + rows; y++)
            for (int xx = 0; xx < W; xx++) {
                double e = fabs((double)x[((size_t)(y - y0) * W + xx) * C + c] - want[((size_t)c * H + y) * W + xx]);
                if (!(e <= diff)) diff = e;
            }
    CHECK(diff <= d->tol * ref, "%s %s rows %d..%d: max|diff| %.3g > %.3g x max|golden| %.3g", d->label, name, y0, y0 + rows - 1, diff, d->tol, ref);
}

/* One pass with an arena of exactly its plan: the result (malloc'd), checked to peak at the plan. */
static float *taesd_pass(const sd_taesd *t, int decode, const float *in, int h, int w, sd_pool *pool, taesd_probe probe, void *user,
                         const char *label)
{
    int oh = decode ? 8 * h : (h + 7) / 8, ow = decode ? 8 * w : (w + 7) / 8, oc = decode ? 3 : t->info.latent_channels;
    size_t need = decode ? sd_taesd_decode_arena_bytes(t, h, w) : sd_taesd_encode_arena_bytes(t, h, w);
    sd_arena *a = vae_exact_arena(need);
    float *out = (float *)calloc((size_t)oc * oh * ow, sizeof(float));
    sd_error err;
    int rc = taesd_run_pass(t, decode, in, h, w, out, pool, probe, user, a, &err);
    CHECK(need > 0 && rc == SD_OK && a->peak == need && a->used == 0, "%s: %s %d x %d: %s (plan %zu, peak %zu)", label,
          decode ? "decode" : "encode", h, w, rc ? err.message : "ok", need, a->peak);
    free_arena(a);
    return out;
}

/* uint8 HWC → [-1, 1] NCHW, as diffusers' VaeImageProcessor. */
static float *taesd_image_from_u8(const uint8_t *u8, int H, int W)
{
    size_t P = (size_t)H * W;
    float *x = (float *)malloc(3 * P * sizeof(float));
    for (size_t k = 0; k < P; k++)
        for (int c = 0; c < 3; c++) x[c * P + k] = (float)u8[k * 3 + c] / 255.0f * 2.0f - 1.0f;
    return x;
}

/* The decode, encode and forward cases of GOLDEN/taesd/FILE for model m. */
static void taesd_check_golden(const taesd_model *m, golden_file *g, const char *label, sd_pool *pool)
{
    char name[160], what[400];
    int lat = m->t->info.latent_channels;
    for (int i = 0;; i++) {
        int64_t n;
        const float *want;
        const sd_tensor *zt = golden_decode_case(g, i, lat, &want, &n, label);
        if (!zt) break;
        if (!want) continue;
        int h = (int)zt->shape[2], w = (int)zt->shape[3];
        snprintf(name, sizeof name, "decode%d", i);
        taesd_debug d = {g, label, "%s.debug.%s", name, 2e-5, 0};
        float *img = taesd_pass(m->t, 1, (const float *)zt->data, h, w, pool, taesd_debug_probe, &d, label);
        CHECK(n == (int64_t)3 * 64 * h * w, "%s: decode%d image size", label, i);
        snprintf(what, sizeof what, "%s decode%d.image (%dx%d latents)", label, i, h, w);
        check_close(what, img, want, n, 2e-5);
        CHECK(d.seen == vae_debug_count(g, name), "%s: %d of %d debug tensors of decode%d met", label, d.seen, vae_debug_count(g, name), i);
        free(img);
    }
    for (int i = 0; m->t->info.has_encoder; i++) {
        snprintf(name, sizeof name, "encode%d.image_uint8", i);
        const sd_tensor *ut = sd_safetensors_find(&g->st, name);
        if (!ut) break;
        if (!CHECK(ut->dtype == SD_U8 && ut->ndim == 3 && ut->shape[2] == 3, "%s: %s shape", label, name)) continue;
        int H = (int)ut->shape[0], W = (int)ut->shape[1];
        int64_t n;
        float *x = taesd_image_from_u8((const uint8_t *)ut->data, H, W);
        snprintf(name, sizeof name, "encode%d", i);
        taesd_debug d = {g, label, "%s.debug.%s", name, 2e-5, 0};
        float *z = taesd_pass(m->t, 0, x, H, W, pool, taesd_debug_probe, &d, label);
        snprintf(name, sizeof name, "encode%d.latents", i);
        const float *want = golden_f32(g, name, &n);
        snprintf(what, sizeof what, "%s encode%d.latents (%dx%d image)", label, i, H, W);
        if (want && CHECK(n == (int64_t)lat * ((H + 7) / 8) * ((W + 7) / 8), "%s: %s size", label, name)) check_close(what, z, want, n, 1e-4);
        snprintf(name, sizeof name, "encode%d", i);
        CHECK(d.seen == vae_debug_count(g, name), "%s: %d of %d debug tensors of encode%d met", label, d.seen, vae_debug_count(g, name), i);
        /* AutoencoderTiny.forward on this case: latents to 8 bits and back, then decoded */
        const sd_tensor *fi = sd_safetensors_find(&g->st, "forward.image_uint8_index");
        if (fi && fi->dtype == SD_I64 && ((const int64_t *)fi->data)[0] == i) {
            int64_t nf, ni;
            const float *scaled = golden_f32(g, "forward.latents_scaled", &nf), *zin = golden_f32(g, "forward.decoder_input", NULL);
            const float *fimg = golden_f32(g, "forward.image", &ni);
            const sd_tensor *q = sd_safetensors_find(&g->st, "forward.latents_uint8");
            if (scaled && zin && fimg && CHECK(q && q->dtype == SD_U8 && sd_tensor_numel(q) == nf && nf == n, "%s: forward tensors", label)) {
                float *s = (float *)malloc((size_t)nf * sizeof(float)), *dq = (float *)malloc((size_t)nf * sizeof(float));
                int worst = 0, exact = 1;
                for (int64_t k = 0; k < nf; k++) {
                    float v = z[k] / (2 * 3.0f) + 0.5f;   /* scale_latents: / (2·latent_magnitude) + latent_shift */
                    s[k] = v < 0 ? 0 : v > 1 ? 1 : v;
                    int u = (int)nearbyintf(s[k] * 255.0f), gq = ((const uint8_t *)q->data)[k];   /* torch.round: half to even */
                    worst = abs(u - gq) > worst ? abs(u - gq) : worst;
                    dq[k] = ((float)gq / 255.0f - 0.5f) * 6.0f;   /* unscale_latents */
                    exact &= dq[k] == zin[k];
                }
                snprintf(what, sizeof what, "%s forward.latents_scaled", label);
                check_close(what, s, scaled, nf, 2e-5);
                CHECK(worst <= 1, "%s forward.latents_uint8: a value is %d steps off", label, worst);
                CHECK(exact, "%s forward.decoder_input is not (q/255 - 0.5)·6 of the golden's q", label);
                float *img = taesd_pass(m->t, 1, zin, H / 8, W / 8, pool, NULL, NULL, label);
                snprintf(what, sizeof what, "%s forward.image", label);
                check_close(what, img, fimg, ni, 2e-5);
                free(img);
                free(s);
                free(dq);
            }
        }
        free(x);
        free(z);
    }
}

/* TAESD's layers on whole tensors with the plain kernels (nearest 2x upsampling then a 3x3 conv,
   ReLU and the skip as steps of their own): the reference for the banded, fused passes. */
static float *taesd_ref_conv(sd_pool *pool, float *x, int *H, int *W, int cin, const vae_conv *c, int cout, int s, int with_relu)
{
    int Ho = (*H - 1) / s + 1, Wo = (*W - 1) / s + 1;
    size_t n = (size_t)Ho * Wo * cout;
    float *y = (float *)malloc(n * sizeof(float));
    conv2d(pool, y, x, 1, *H, *W, cin, c->w, c->b, cout, 3, s, 1, 1);
    if (with_relu) relu(pool, y, n);
    free(x);
    *H = Ho, *W = Wo;
    return y;
}

static float *taesd_ref_block(sd_pool *pool, const taesd_layer *b, float *x, int H, int W, int C)
{
    size_t n = (size_t)H * W * C;
    float *t = (float *)malloc(n * sizeof(float));
    int h = H, w = W;
    memcpy(t, x, n * sizeof(float));
    for (int j = 0; j < 3; j++) t = taesd_ref_conv(pool, t, &h, &w, C, &b->conv[j], C, 1, j < 2);
    add(pool, t, x, n);
    relu(pool, t, n);
    free(x);
    return t;
}

static float *taesd_reference(const sd_taesd *t, int decode, const float *in, int H, int W, sd_pool *pool)
{
    const taesd_layer *L = decode ? t->decoder : t->encoder;
    int C = t->info.channels, lat = t->info.latent_channels, cin = decode ? lat : 3, n = decode ? TAESD_DECODER_LAYERS : TAESD_ENCODER_LAYERS;
    size_t P = (size_t)H * W;
    float *x = (float *)malloc(P * cin * sizeof(float)), *out;
    for (size_t i = 0; i < P; i++)
        for (int c = 0; c < cin; c++) x[i * cin + c] = decode ? tanhf(in[c * P + i] / 3.0f) * 3.0f : (in[c * P + i] + 1.0f) / 2.0f;
    for (int i = decode; i < n; i++) {
        const unsigned char kind = (decode ? taesd_decoder_kinds : taesd_encoder_kinds)[i];
        int last = i == n - 1, first = i == decode;
        if (kind == TAESD_CONV) x = taesd_ref_conv(pool, x, &H, &W, first ? cin : C, &L[i].conv[0], last ? (decode ? 3 : lat) : C, 1, 0);
        else if (kind == TAESD_RELU) relu(pool, x, (size_t)H * W * C);
        else if (kind == TAESD_BLOCK) x = taesd_ref_block(pool, &L[i], x, H, W, C);
        else if (kind == TAESD_DOWN || kind == TAESD_UP_CONV) x = taesd_ref_conv(pool, x, &H, &W, C, &L[i].conv[0], C, kind == TAESD_DOWN ? 2 : 1, 0);
        else if (kind == TAESD_UP) {
            float *u = (float *)malloc((size_t)4 * H * W * C * sizeof(float));
            upsample2x(pool, u, x, 1, H, W, C);
            free(x);
            x = u, H *= 2, W *= 2;
        }
    }
    int oc = decode ? 3 : lat;
    P = (size_t)H * W;
    out = (float *)malloc(P * oc * sizeof(float));
    for (size_t i = 0; i < P; i++)
        for (int c = 0; c < oc; c++) out[c * P + i] = decode ? x[i * 3 + c] * 2.0f - 1.0f : x[i * oc + c] * t->info.scaling_factor;
    free(x);
    return out;
}

/* Plans against the measured peaks at many sizes (odd ones, one band and several), public calls
   with an arena one byte short, and the same bits for 1 and 3 threads. */
static void taesd_check_memory(const taesd_model *m, sd_pool *pool)
{
    static const int dec[][2] = {{1, 1}, {3, 5}, {2, 7}, {9, 5}, {17, 3}, {12, 20}, {64, 64}};
    static const int enc[][2] = {{8, 8}, {13, 21}, {1, 1}, {24, 40}, {131, 67}, {70, 9}, {512, 512}};
    sd_error err;
    for (int k = 0; k < 7; k++) {
        int h = dec[k][0], w = dec[k][1], H = enc[k][0], W = enc[k][1];
        size_t nz = (size_t)4 * h * w, nx = (size_t)3 * H * W;
        float *z = (float *)malloc(nz * sizeof(float)), *x = (float *)malloc(nx * sizeof(float));
        for (size_t i = 0; i < nz; i++) z[i] = (float)sin(0.7 * (double)i) * 4.0f;
        for (size_t i = 0; i < nx; i++) x[i] = (float)cos(0.3 * (double)i);
        float *img = taesd_pass(m->t, 1, z, h, w, pool, NULL, NULL, "TAESD plan"), *lat = taesd_pass(m->t, 0, x, H, W, pool, NULL, NULL, "TAESD plan");
        if (k < 6) {   /* the bands, the phases of the upsampling convs and the fused ReLU and skip against whole tensors */
            char what[160];
            float *ri = taesd_reference(m->t, 1, z, h, w, pool), *rl = taesd_reference(m->t, 0, x, H, W, pool);
            snprintf(what, sizeof what, "TAESD decode %d x %d against whole tensors", h, w);
            check_close(what, img, ri, (int64_t)192 * h * w, 1e-5);
            snprintf(what, sizeof what, "TAESD encode %d x %d against whole tensors", H, W);
            check_close(what, lat, rl, (int64_t)4 * ((H + 7) / 8) * ((W + 7) / 8), 1e-5);
            free(ri);
            free(rl);
        }
        if (k < 5) {   /* the public calls: the same results, and the arena checked first */
            size_t need = sd_taesd_decode_arena_bytes(m->t, h, w);
            sd_arena *a = vae_exact_arena(need - 1);
            float *again = (float *)malloc((size_t)192 * h * w * sizeof(float));
            int rc = sd_taesd_decode(m->t, z, h, w, again, pool, a, &err);
            CHECK(rc == SD_ERR_MEMORY && a->peak == 0, "TAESD decode %d x %d with one byte short: rc %d, peak %zu", h, w, rc, a->peak);
            free_arena(a);
            a = vae_exact_arena(need);
            rc = sd_taesd_decode(m->t, z, h, w, again, pool, a, &err);
            CHECK(rc == SD_OK && !memcmp(img, again, (size_t)192 * h * w * sizeof(float)), "TAESD sd_taesd_decode %d x %d: %s", h, w, rc ? err.message : "differs");
            free_arena(a);
            free(again);
            need = sd_taesd_encode_arena_bytes(m->t, H, W);
            a = vae_exact_arena(need - 1);
            CHECK(sd_taesd_encode(m->t, x, H, W, z, pool, a, &err) == SD_ERR_MEMORY && a->peak == 0, "TAESD encode %d x %d with one byte short", H, W);
            free_arena(a);
        }
        if (k == 6) {
            size_t d = sd_taesd_decode_arena_bytes(m->t, 64, 64), d2 = sd_taesd_decode_arena_bytes(m->t, 128, 128);
            size_t e = sd_taesd_encode_arena_bytes(m->t, 512, 512);
            printf("  TAESD arena: decode 512x512 %.1f MiB, 1024x1024 %.1f MiB; encode 512x512 %.1f MiB\n", d / 1048576.0, d2 / 1048576.0, e / 1048576.0);
            /* a 4h x 4w level (three C-channel tensors, 48 MiB at 512 x 512) and bands; the VAE takes ~240 MB */
            CHECK(d < (64u << 20) && e < (64u << 20) && d2 < (256u << 20), "TAESD arena: decode 512 %zu, encode 512 %zu, decode 1024 %zu bytes", d, e, d2);
        }
        free(img); free(lat); free(z); free(x);
    }
    CHECK(sd_taesd_decode_arena_bytes(m->t, 0, 4) == 0 && sd_taesd_encode_arena_bytes(m->t, 5, -1) == 0 && sd_taesd_decode_arena_bytes(NULL, 4, 4) == 0,
          "TAESD plans of impossible sizes are 0");
    /* threads: the same bits */
    {
        sd_arena *pa = test_arena(pool_arena_bytes(3) + SD_ALIGN);
        sd_pool p3;
        float z[4 * 6 * 10];
        for (int i = 0; i < 4 * 60; i++) z[i] = (float)sin(1.3 * i) * 2.0f;
        if (CHECK(pool_init(&p3, 3, pa, &err) == SD_OK, "pool: %s", err.message)) {
            float *a = taesd_pass(m->t, 1, z, 6, 10, pool, NULL, NULL, "TAESD 1 thread"), *b = taesd_pass(m->t, 1, z, 6, 10, &p3, NULL, NULL, "TAESD 3 threads");
            CHECK(!memcmp(a, b, (size_t)3 * 48 * 80 * sizeof(float)), "TAESD decode: 1 and 3 threads differ");
            float *ea = taesd_pass(m->t, 0, a, 48, 80, pool, NULL, NULL, "TAESD 1 thread"), *eb = taesd_pass(m->t, 0, a, 48, 80, &p3, NULL, NULL, "TAESD 3 threads");
            CHECK(!memcmp(ea, eb, (size_t)4 * 60 * sizeof(float)), "TAESD encode: 1 and 3 threads differ");
            free(a); free(b); free(ea); free(eb);
            pool_free(&p3);
        }
        free_arena(pa);
    }
}

/* Loads `which` (encoder, decoder) of an edited copy of file st; the error it gives. */
static int taesd_load_edited(const sd_safetensors *st, const vae_edit *e, int as_decoder, const char *config, sd_error *err)
{
    size_t size;
    unsigned char *bytes = rewrite_file(st, SD_DTYPE_COUNT, vae_edit_tensor, (void *)e, &size);
    sd_arena *a = test_arena(1 << 20);
    sd_safetensors f;
    sd_taesd *t;
    int rc = sd_safetensors_open(&f, bytes, size, a, err);
    size_t mark = a->used;
    if (!rc) rc = sd_taesd_load(&t, as_decoder ? NULL : &f, as_decoder ? &f : NULL, config, config ? strlen(config) : 0, SD_TAESD_SD, a, err);
    if (rc) CHECK(a->used == mark, "TAESD load failed but kept %zu arena bytes", a->used - mark);
    free_arena(a);
    free(bytes);
    return rc;
}

/* Files of the wrong kind, broken files and configs: errors that say what and where. */
static void taesd_check_errors(const taesd_model *orig, const taesd_model *diff)
{
    sd_error err;
    sd_arena *a = test_arena(1 << 20);
    sd_taesd *t;
    struct { const sd_safetensors *enc, *dec; int rc; const char *needle; } cases[4] = {
        {NULL, &orig->st[0], SD_ERR_ARG, "is a TAESD encoder"},   /* the encoder file given as the decoder */
        {&orig->st[1], NULL, SD_ERR_ARG, "is a TAESD decoder"},
        {NULL, NULL, SD_ERR_ARG, "no file"},
        {&orig->st[0], &orig->st[1], SD_ERR_ARG, "variant"},
    };
    for (int k = 0; k < 4; k++) {
        int rc = sd_taesd_load(&t, cases[k].enc, cases[k].dec, NULL, 0, k == 3 ? 7 : SD_TAESD_SD, a, &err);
        CHECK(rc == cases[k].rc && strstr(err.message, cases[k].needle) && a->used == 0, "TAESD bad load %d: rc %d, '%s'", k, rc, err.message);
    }
    /* a VAE given as TAESD: the tiny models' own */
    {
        char path[1300];
        size_t size;
        snprintf(path, sizeof path, "%s/models/tiny-sd1-fp16.safetensors", golden_dir);
        unsigned char *bytes = read_file(path, &size);
        sd_safetensors st;
        if (bytes && CHECK(sd_safetensors_open(&st, bytes, size, a, &err) == SD_OK, "%s", err.message)) {
            int rc = sd_taesd_load(&t, NULL, &st, NULL, 0, SD_TAESD_SD, a, &err);
            CHECK(rc == SD_ERR_ARG && strstr(err.message, "VAE") && strstr(err.message, "first_stage_model.decoder.conv_in.weight"),
                  "a checkpoint given as TAESD: rc %d, '%s'", rc, err.message);
        }
        sd_arena_reset(a, 0);
        free(bytes);
    }
    /* missing and mis-shaped tensors, by name; keys shifted by one (a loader's classic mistake) */
    static const char *const shift[] = {"decoder.layers.", "", NULL};
    static const struct { int diffusers, as_decoder; vae_edit e; int rc; const char *needle; } broken[] = {
        {0, 1, {NULL, NULL, "8.conv.2.bias", NULL, NULL}, SD_ERR_MISSING, "'8.conv.2.bias'"},
        {0, 1, {NULL, NULL, NULL, "12.weight", NULL}, SD_ERR_SHAPE, "'12.weight' has shape [32, 128, 3, 3], expected [64, 64, 3, 3]"},
        {0, 0, {NULL, NULL, "14.bias", NULL, NULL}, SD_ERR_MISSING, "'14.bias'"},
        {1, 1, {NULL, NULL, "decoder.layers.17.conv.4.weight", NULL, NULL}, SD_ERR_MISSING, "'decoder.layers.17.conv.4.weight'"},
        {1, 0, {"encoder.", NULL, NULL, NULL, NULL}, SD_ERR_MISSING, "has no decoder"},
        {1, 1, {"decoder.", NULL, NULL, NULL, shift}, SD_ERR_MISSING, "'1.weight'"},
    };
    for (size_t k = 0; k < sizeof broken / sizeof *broken; k++) {
        const taesd_model *m = broken[k].diffusers ? diff : orig;
        if (!m->t) continue;
        const sd_safetensors *st = broken[k].diffusers ? &m->st[0] : &m->st[broken[k].as_decoder];
        int rc = taesd_load_edited(st, &broken[k].e, broken[k].as_decoder || k == 4, NULL, &err);
        CHECK(rc == broken[k].rc && strstr(err.message, broken[k].needle), "TAESD broken file %zu: rc %d, '%s' (want '%s')", k, rc, err.message, broken[k].needle);
    }
    /* a truncated file does not open */
    {
        sd_safetensors st;
        int rc = sd_safetensors_open(&st, orig->bytes[1], orig->size[1] / 2, a, &err);
        CHECK(rc != SD_OK, "a truncated TAESD file opens");
        sd_arena_reset(a, 0);
    }
    /* config.json that describes another model */
    if (diff->t) {
        static const struct { const char *config; int rc; const char *needle; } configs[] = {
            {"{\"latent_channels\": 16}", SD_ERR_SHAPE, "latent_channels is '16'"},
            {"{\"act_fn\": \"silu\"}", SD_ERR_UNSUPPORTED, "act_fn is 'silu'"},
            {"{\"num_decoder_blocks\": [3, 3, 3, 3]}", SD_ERR_UNSUPPORTED, "num_decoder_blocks"},
            {"{\"scaling_factor\": \"big\"}", SD_ERR_FORMAT, "scaling_factor"},
            {"[1, 2]", SD_ERR_FORMAT, "not a JSON object"},
        };
        vae_edit all = {NULL, NULL, NULL, NULL, NULL};
        for (size_t k = 0; k < sizeof configs / sizeof *configs; k++) {
            int rc = taesd_load_edited(&diff->st[0], &all, 1, configs[k].config, &err);
            CHECK(rc == configs[k].rc && strstr(err.message, configs[k].needle), "TAESD config %zu: rc %d, '%s'", k, rc, err.message);
        }
        int rc = sd_taesd_load(&t, NULL, &diff->st[0], "{\"scaling_factor\": 0.5}", 23, SD_TAESD_SD, a, &err);
        CHECK(rc == SD_OK && t->info.scaling_factor == 0.5f && !t->info.has_encoder, "TAESD config scaling_factor 0.5: rc %d", rc);
        sd_arena_reset(a, 0);
    }
    /* a half that was not loaded */
    if (!sd_taesd_load(&t, &orig->st[0], NULL, NULL, 0, SD_TAESD_SD, a, &err)) {
        float z[4] = {0}, img[192];
        sd_arena *b = test_arena(1 << 20);
        int rc = sd_taesd_decode(t, z, 1, 1, img, host_pool(), b, &err);
        CHECK(rc == SD_ERR_UNSUPPORTED && strstr(err.message, "without a decoder") && sd_taesd_decode_arena_bytes(t, 1, 1) == 0,
              "TAESD encoder alone decoding: rc %d, '%s'", rc, err.message);
        free_arena(b);
    }
    free_arena(a);
}

/* The pipelines whose final image (and img2img's init latents) TAESD made: GOLDEN/taesd/txt2img_*,
   img2img_*, with the model (metadata pipeline_model) and TAESD (vae) they name. */
static void taesd_check_pipelines(sd_pool *pool)
{
    char dir[1100], rel[1400], path[1400], name[64];
    struct dirent *f;
    snprintf(dir, sizeof dir, "%s/taesd", golden_dir);
    DIR *d = opendir(dir);
    int ran = 0;
    while (d && (f = readdir(d))) {
        if (!is_pipeline_golden(f->d_name)) continue;
        snprintf(rel, sizeof rel, "taesd/%.255s", f->d_name);
        golden_file *g = golden_open(rel);
        loaded_model lm;
        taesd_model tm;
        const char *model = meta_or(g, "pipeline_model", ""), *vae = meta_or(g, "vae", "");
        snprintf(path, sizeof path, "%s/%s", golden_dir, model);
        snprintf(name, sizeof name, "%.60s", strncmp(vae, "models/", 7) ? vae : vae + 7);
        if (!file_exists(path) || !taesd_open(&tm, name, 0)) { printf("  %s: no %s or %s, skipped\n", rel, model, vae); golden_close(g); continue; }
        if (!open_test_model(&lm, path)) {
            pipeline_taesd = tm.t;
            check_pipeline(lm.model, rel);
            pipeline_taesd = NULL;
            ran++;
            /* the decode from the golden's own decoder input, and its clamp ("decoder_clamped") */
            const sd_tensor *zt = sd_safetensors_find(&g->st, "decoder_input");
            int64_t n;
            const float *want = golden_f32(g, "image_decoded", &n);
            if (zt && want && zt->ndim == 4) {
                taesd_debug dbg = {g, rel, "%s_%s", "decoder", 2e-5, 0};
                float *img = taesd_pass(tm.t, 1, (const float *)zt->data, (int)zt->shape[2], (int)zt->shape[3], pool, taesd_debug_probe, &dbg, rel);
                char what[1500];
                snprintf(what, sizeof what, "%s image_decoded from decoder_input", rel);
                check_close(what, img, want, n, 2e-5);
                CHECK(dbg.seen == 1, "%s: decoder_clamped not compared", rel);
                free(img);
            }
            /* img2img: TAESD's latents of the init image, as they are */
            const sd_tensor *init = sd_safetensors_find(&g->st, "init_image_uint8");
            const float *enc = sd_safetensors_find(&g->st, "encoder_latents") ? golden_f32(g, "encoder_latents", &n) : NULL;
            if (init && enc && init->ndim == 3) {
                int H = (int)init->shape[0], W = (int)init->shape[1];
                float *x = taesd_image_from_u8((const uint8_t *)init->data, H, W), *z = taesd_pass(tm.t, 0, x, H, W, pool, NULL, NULL, rel);
                char what[1500];
                snprintf(what, sizeof what, "%s encoder_latents", rel);
                check_close(what, z, enc, n, 1e-4);
                free(x);
                free(z);
            }
        }
        unload_model(&lm);
        taesd_close(&tm);
        golden_close(g);
    }
    if (d) closedir(d);
    printf("  TAESD: %d pipeline goldens decoded through TAESD\n", ran);
}

/* sd_generate with a TAESD: previews, each use alone, img2img's noise (the generator's first
   draw, as there is no posterior to sample), and TAESDs that do not fit the model. */
typedef struct taesd_previews { int calls, last_step, width, height; uint8_t *last; } taesd_previews;

static void taesd_preview_cb(void *user, int step, const uint8_t *rgb, int width, int height)
{
    taesd_previews *v = (taesd_previews *)user;
    v->calls++;
    v->last_step = step;
    if (width == v->width && height == v->height) memcpy(v->last, rgb, (size_t)3 * width * height);
}

static int taesd_generate(const sd_model *m, const sd_params *p, uint8_t *rgb, sd_error *err)
{
    size_t need = sd_generate_arena_bytes(m, p);
    sd_arena *a = vae_exact_arena(need);
    int rc = need ? sd_generate(m, p, a, rgb, err) : sd_generate(m, p, NULL, rgb, err);
    CHECK(rc != SD_OK || a->peak == need, "TAESD generation peaked at %zu arena bytes, planned %zu", a->peak, need);
    free_arena(a);
    return rc;
}

static void taesd_check_generation(const sd_model *m, const sd_taesd *t, const sd_taesd *txl)
{
    enum { S = 64 };
    sd_params p;
    sd_error err;
    uint8_t *vae = (uint8_t *)malloc(3 * S * S), *tiny = (uint8_t *)malloc(3 * S * S), *other = (uint8_t *)malloc(3 * S * S);
    taesd_previews v = {0, 0, S, S, (uint8_t *)malloc(3 * S * S)};
    sd_params_init(&p);
    p.prompt = "a cat";
    p.width = p.height = S;
    p.steps = 3;
    p.seed = 9;
    p.preview_rgb = taesd_preview_cb;
    p.user = &v;
    int rc = taesd_generate(m, &p, vae, &err);   /* no TAESD: no RGB previews */
    CHECK(rc == SD_OK && v.calls == 0, "generation without TAESD: rc %d, %d RGB previews", rc, v.calls);
    p.taesd = t;
    rc = taesd_generate(m, &p, tiny, &err);
    CHECK(rc == SD_OK && v.calls == 3 && v.last_step == 3 && !memcmp(v.last, tiny, 3 * S * S) && memcmp(tiny, vae, 3 * S * S),
          "TAESD generation: rc %d (%s), %d previews, the last %s the image", rc, rc ? err.message : "", v.calls, memcmp(v.last, tiny, 3 * S * S) ? "is not" : "is");
    v.calls = 0;
    p.taesd_use = SD_TAESD_USE_PREVIEW;   /* previews only: the VAE's image */
    rc = taesd_generate(m, &p, other, &err);
    CHECK(rc == SD_OK && v.calls == 3 && !memcmp(other, vae, 3 * S * S) && !memcmp(v.last, tiny, 3 * S * S),
          "TAESD previews only: rc %d, %d previews, image %s the VAE's", rc, v.calls, memcmp(other, vae, 3 * S * S) ? "is not" : "is");
    v.calls = 0;
    p.taesd_use = SD_TAESD_USE_DECODE;
    rc = taesd_generate(m, &p, other, &err);
    CHECK(rc == SD_OK && v.calls == 0 && !memcmp(other, tiny, 3 * S * S), "TAESD final image only: rc %d, %d previews", rc, v.calls);
    /* img2img through TAESD's encoder: no posterior, so the noise is the generator's first draw */
    {
        size_t lat = (size_t)4 * (S / 8) * (S / 8);
        float *noise = (float *)malloc(lat * sizeof(float));
        sd_rng r;
        sd_rng_seed(&r, 11);
        sd_randn(&r, noise, lat);
        sd_params q = p;
        q.taesd_use = SD_TAESD_USE_ALL;
        q.preview_rgb = NULL;
        q.init_rgb = vae;
        q.strength = 0.5;
        q.seed = 11;
        rc = taesd_generate(m, &q, tiny, &err);
        q.noise = noise;
        int rc2 = taesd_generate(m, &q, other, &err);
        CHECK(rc == SD_OK && rc2 == SD_OK && !memcmp(tiny, other, 3 * S * S), "TAESD img2img: the noise is not the seed's first draw (rc %d, %d)", rc, rc2);
        free(noise);
    }
    /* TAESDs that do not fit */
    sd_taesd fake = *t;
    fake.info.latent_channels = 16;   /* as TAESD3 / TAEF1 */
    const sd_taesd *wrong[3] = {txl, &fake, t};
    static const char *const needle[3] = {"TAESDXL", "16 latent channels", "taesd_use"};
    for (int k = 0; k < 3; k++) {
        if (!wrong[k]) continue;
        p.taesd = wrong[k];
        p.taesd_use = k == 2 ? 8 : SD_TAESD_USE_ALL;
        rc = sd_generate(m, &p, NULL, other, &err);
        CHECK(rc != SD_OK && strstr(err.message, needle[k]) && sd_generate_arena_bytes(m, &p) == 0, "a TAESD that does not fit (%d): rc %d, '%s'", k, rc, err.message);
    }
    free(vae); free(tiny); free(other); free(v.last);
}

/* The CLI's --taesd (a file, the original pair's folder, a diffusers folder when there is one),
   --preview with it, --taesd-preview-only, the warning for a TAESD of the other family (when
   there is TAESDXL) and an encoder given alone. */
static void taesd_check_cli(int diffusers, int xl)
{
    char dir[] = "/tmp/sdh_taesd_XXXXXX", model[1200], base[3000], args[6000], errf[1400], path[1400];
    int lines, rc;
    snprintf(model, sizeof model, "%s/models/tiny-sd1-fp16.safetensors", golden_dir);
    if (!file_exists("./example") || !file_exists(merges_path) || !file_exists(model)) { printf("note: ./example, merges.txt or tiny-sd1 missing, TAESD CLI checks skipped\n"); return; }
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp failed"); return; }
    snprintf(errf, sizeof errf, "%s/stderr.txt", dir);
    snprintf(base, sizeof base, "-m %s --tokenizer %s -p 'a cat' -W 64 -H 48 --steps 2 -s 3 -t 2", model, merges_path);
    static const char *const taesd[5] = {"taesd", "taesd/taesd_decoder.safetensors", "taesd --taesd-preview-only", "", "taesd-diffusers"};
    uint8_t *img[5] = {NULL, NULL, NULL, NULL, NULL}, *step2[5] = {NULL, NULL, NULL, NULL, NULL};
    for (int k = 0; k < 4 + diffusers; k++) {
        char e[256];
        int w = 0, h = 0, pw = 0, ph = 0;
        if (*taesd[k]) snprintf(args, sizeof args, "%s --taesd %s/models/%s --preview %s -o %s/out%d.png", base, golden_dir, taesd[k], dir, dir, k);
        else snprintf(args, sizeof args, "%s -o %s/out%d.png", base, dir, k);
        rc = run_example(args, errf, &lines);
        snprintf(path, sizeof path, "%s/out%d.png", dir, k);
        img[k] = rc == 0 ? image_read(path, &w, &h, e, sizeof e) : NULL;
        snprintf(path, sizeof path, "%s/step_02.png", dir);
        step2[k] = rc == 0 && *taesd[k] ? image_read(path, &pw, &ph, e, sizeof e) : NULL;
        remove(path);
        CHECK(img[k] && w == 64 && h == 48 && (!*taesd[k] || (step2[k] && pw == 64 && ph == 48)), "CLI --taesd %s: exit %d, preview %dx%d", taesd[k], rc, pw, ph);
    }
    if (img[0] && img[1] && img[2] && img[3] && step2[0] && step2[2]) {
        size_t n = (size_t)3 * 64 * 48;
        CHECK(!memcmp(img[0], img[1], n) && (!diffusers || (img[4] && !memcmp(img[0], img[4], n))),
              "CLI --taesd: the original pair, the decoder file%s give different images", diffusers ? " and the diffusers folder" : "");
        CHECK(!memcmp(step2[0], img[0], n) && memcmp(img[0], img[3], n), "CLI --taesd: the last preview is not the final image, or the VAE's is the same");
        CHECK(!memcmp(img[2], img[3], n) && !memcmp(step2[2], img[0], n), "CLI --taesd-preview-only: the final image is not the VAE's, or the preview not TAESD's");
    }
    for (int k = 0; k < 5; k++) { free(img[k]); free(step2[k]); }
    /* TAESDXL on an SD 1 model: a warning, then it runs; an encoder alone: an error */
    snprintf(args, sizeof args, "%s --taesd %s/models/taesdxl -o %s/xl.png", base, golden_dir, dir);
    rc = xl ? run_example(args, errf, &lines) : 0;
    CHECK(!xl || (rc == 0 && file_contains(errf, "warning") && file_contains(errf, "TAESDXL")), "CLI --taesd taesdxl with an SD 1 model: exit %d, no warning", rc);
    snprintf(args, sizeof args, "%s --taesd %s/models/taesd/taesd_encoder.safetensors -o %s/x.png", base, golden_dir, dir);
    rc = run_example(args, errf, &lines);
    CHECK(rc != 0 && lines == 1 && file_contains(errf, "encoder"), "CLI --taesd with the encoder file: exit %d, %d lines", rc, lines);
    snprintf(args, sizeof args, "%s --taesd-preview-only -o %s/x.png", base, dir);
    rc = run_example(args, errf, &lines);
    CHECK(rc != 0 && lines == 1 && file_contains(errf, "needs --taesd"), "CLI --taesd-preview-only alone: exit %d", rc);
    snprintf(args, sizeof args, "rm -rf %s", dir);
    if (system(args)) printf("note: could not remove %s\n", dir);
}

static void test_taesd(void)
{
    char path[1200];
    taesd_model orig, diff, xl;
    sd_arena *pa = test_arena(pool_arena_bytes(1) + SD_ALIGN);
    sd_pool pool;
    sd_error err;
    snprintf(path, sizeof path, "%s/models/taesd/taesd_decoder.safetensors", golden_dir);
    if (!file_exists(path)) { printf("note: no TAESD in %s (models/taesd/), TAESD tests skipped\n", golden_dir); free_arena(pa); return; }
    if (!CHECK(pool_init(&pool, 1, pa, &err) == SD_OK, "pool: %s", err.message)) { free_arena(pa); return; }
    int have[3] = {taesd_open(&orig, "taesd", 0), taesd_open(&diff, "taesd", 1), taesd_open(&xl, "taesdxl", 0)};
    const taesd_model *models[3] = {&orig, &diff, &xl};
    static const char *const goldens[3] = {"taesd/taesd.safetensors", "taesd/taesd.safetensors", "taesd/taesdxl.safetensors"};
    static const char *const labels[3] = {"taesd", "taesd-diffusers", "taesdxl"};
    int files = 0;
    for (int k = 0; k < 3; k++) {
        golden_file *g = have[k] ? golden_open(goldens[k]) : NULL;
        if (!g) continue;
        printf("  %s: %d channels, %d latent channels, %s\n", labels[k], models[k]->t->info.channels, models[k]->t->info.latent_channels, goldens[k]);
        taesd_check_golden(models[k], g, labels[k], &pool);
        golden_close(g);
        files++;
    }
    if (!files) printf("note: no TAESD goldens in %s/taesd/, decode and encode cases skipped\n", golden_dir);
    if (have[0] && have[1]) {   /* the two layouts: the same numbers, to the bit */
        float z[4 * 5 * 7];
        for (int i = 0; i < 4 * 35; i++) z[i] = (float)sin(0.9 * i) * 3.0f;
        float *a = taesd_pass(orig.t, 1, z, 5, 7, &pool, NULL, NULL, "taesd"), *b = taesd_pass(diff.t, 1, z, 5, 7, &pool, NULL, NULL, "taesd-diffusers");
        float *ea = taesd_pass(orig.t, 0, a, 40, 56, &pool, NULL, NULL, "taesd"), *eb = taesd_pass(diff.t, 0, a, 40, 56, &pool, NULL, NULL, "taesd-diffusers");
        CHECK(!memcmp(a, b, (size_t)3 * 40 * 56 * sizeof(float)) && !memcmp(ea, eb, sizeof z), "TAESD: the original files and the diffusers folder differ");
        free(a); free(b); free(ea); free(eb);
    }
    if (have[0]) {
        taesd_check_memory(&orig, &pool);
        taesd_check_errors(&orig, &diff);
        taesd_check_pipelines(&pool);
        snprintf(path, sizeof path, "%s/models/tiny-sd1-fp16.safetensors", golden_dir);
        loaded_model lm;
        memset(&lm, 0, sizeof lm);
        if (file_exists(path) && !open_test_model(&lm, path)) taesd_check_generation(lm.model, orig.t, have[2] ? xl.t : NULL);
        else printf("note: no tiny-sd1 model, TAESD generation checks skipped\n");
        unload_model(&lm);
        taesd_check_cli(have[1], have[2]);
    }
    for (int k = 0; k < 3; k++) if (have[k]) taesd_close((taesd_model *)models[k]);
    pool_free(&pool);
    free_arena(pa);
}

/* The test groups, in the order they run; `--only a,b` runs some of them. golden: reads the golden set. */
/* ---- LoRA (golden README §11) ------------------------------------------------------------------ */
/* The goldens GOLDEN_DIR/NAME/lora_*: the text encoder(s) and the UNet with the LoRAs each case's
   A1111 tags name (files from GOLDEN_DIR/lora, found as the CLI finds them), and whole pipelines
   with the tags in the prompt, in every layout of the model (single file: original names;
   diffusers folder: diffusers names); then bad LoRAs, which must fail cleanly and leave the
   model as it was. */

static int opendir_ok(const char *path)
{
    DIR *d = opendir(path);
    if (d) closedir(d);
    return d != NULL;
}

/* The LoRAs of one case, read from its tags with the pipeline's own tag reader, in an arena of
   exactly sd_lora_arena_bytes. */
typedef struct lora_case {
    sd_lora list[8];
    char names[8][256];
    int n;
    sd_arena *arena;
    sd_lora_set *set;
} lora_case;

static int lora_case_load(lora_case *lc, const sd_model *m, const char *tags, lora_dir *dir, sd_error *err)
{
    size_t end = prompt_tags_end(tags), kind, len;
    int rc;
    memset(lc, 0, sizeof *lc);
    for (size_t i = 0; tags[i] && lc->n < 8; i += len ? len : 1) {
        sd_lora *l = &lc->list[lc->n];
        if (!(len = prompt_tag(m->vocab, tags, i, end, &kind))) continue;
        if ((rc = lora_tag(tags + i, len, kind, lc->names[lc->n], sizeof lc->names[0], l, err))) return rc;
        if (lora_from_dir(dir, lc->names[lc->n], &l->data, &l->size)) return fail(err, SD_ERR_MISSING, "no LoRA '%s' in %s", lc->names[lc->n], dir->dir);
        l->name = lc->names[lc->n++];
    }
    lc->arena = test_arena(sd_lora_arena_bytes(lc->list, lc->n));
    return sd_lora_load(&lc->set, m->unet, m->te, m->encoders, lc->list, lc->n, lc->arena, err);
}

/* The A1111 tags of case c in a golden's "cases" metadata (a JSON list of objects with "a1111"). */
static int lora_case_tags(golden_file *g, int c, char *buf, size_t cap)
{
    const char *s = sd_safetensors_meta(&g->st, "cases");
    for (int i = 0; s && (s = strstr(s, "\"a1111\": \"")) != NULL; i++) {
        size_t n;
        s += 10;
        if (i < c) continue;
        n = strcspn(s, "\"");
        if (n >= cap) return 0;
        memcpy(buf, s, n);
        buf[n] = 0;
        return 1;
    }
    return 0;
}

/* GOLDEN/NAME/lora_text_encoder: each layer's hidden state of each encoder, and what the UNet
   gets (SD1: the last state; SDXL: prompt_embeds and the pooled embedding), per case. */
static void lora_check_text(const sd_model *m, golden_file *g, lora_dir *dir, sd_pool *pool, const char *label)
{
    int n = 0, n2 = 0, xl = m->encoders == 2, cases = 0;
    int32_t *ids[2] = {te_golden_ids(g, "input_ids", &n), xl ? te_golden_ids(g, "input_ids_2", &n2) : NULL};
    char tags[300], name[96], what[1200];
    sd_error err;
    if (!ids[0] || (xl && (!ids[1] || n2 != n))) { free(ids[0]); free(ids[1]); return; }
    size_t rows = (size_t)n * SD_TEXT_TOKENS, D = (size_t)m->context_dim, bytes = 0;
    float *out = (float *)malloc(rows * D * sizeof(float)), *ctx = (float *)malloc(rows * D * sizeof(float));
    float *pooled = (float *)malloc((size_t)n * (xl ? m->te[1].proj_dim : 1) * sizeof(float));
    for (int e = 0; e < m->encoders; e++) bytes = max_size(bytes, sd_text_encoder_arena_bytes(&m->te[e], n, e == 1));
    sd_arena *a = test_arena(bytes);
    for (int c = 0; lora_case_tags(g, c, tags, sizeof tags); c++, cases++) {
        lora_case lc;
        if (!CHECK(lora_case_load(&lc, m, tags, dir, &err) == SD_OK && sd_pool_set_lora(pool, lc.set, NULL, &err) == SD_OK,
                   "%s case%d %s: %s", label, c, tags, err.message)) { free_arena(lc.arena); continue; }
        for (int e = 0; e < m->encoders; e++) {
            const sd_text_encoder *te = &m->te[e];
            size_t W = (size_t)te->width, off = e ? (size_t)m->te[0].width : 0;
            for (int l = 1; l <= te->layers; l++) {
                int64_t gn;
                if (xl) snprintf(name, sizeof name, "case%d.te%d.hidden_states.%d", c, e + 1, l);
                else snprintf(name, sizeof name, "case%d.hidden_states.%d", c, l);
                if (!sd_safetensors_find(&g->st, name)) continue;
                const float *want = golden_f32(g, name, &gn);
                snprintf(what, sizeof what, "%s %s (%s)", label, name, tags);
                if (want && CHECK((size_t)gn == rows * W, "%s: size", what) &&
                    CHECK(sd_text_encoder_hidden(te, ids[e], n, l, 0, out, pool, a, &err) == SD_OK, "%s: %s", what, err.message))
                    check_close(what, out, want, gn, 1e-5);
            }
            /* the encoder's output, as the pipeline takes it */
            if (CHECK(sd_text_encode(te, ids[e], n, 0, out, e == 1 ? pooled : NULL, pool, a, &err) == SD_OK, "%s case%d: %s", label, c, err.message))
                for (size_t r = 0; r < rows; r++) memcpy(ctx + r * D + off, out + r * W, W * sizeof(float));
        }
        CHECK(a->used == 0 && a->peak <= bytes, "%s case%d: the text encoder's arena peaked at %zu of %zu", label, c, a->peak, bytes);
        static const char *const outputs[2][2] = {{"last_hidden_state", NULL}, {"prompt_embeds", "pooled_prompt_embeds"}};
        for (int k = 0; k < 2 && outputs[xl][k]; k++) {
            int64_t gn;
            snprintf(name, sizeof name, "case%d.%s", c, outputs[xl][k]);
            const float *want = golden_f32(g, name, &gn);
            snprintf(what, sizeof what, "%s %s (%s)", label, name, tags);
            if (want && CHECK((size_t)gn == (k ? (size_t)n * m->te[1].proj_dim : rows * D), "%s: size", what))
                check_close(what, k ? pooled : ctx, want, gn, 1e-5);
        }
        sd_pool_set_lora(pool, NULL, NULL, &err);
        free_arena(lc.arena);
    }
    CHECK(cases > 0, "%s: no cases in %s", label, g->path);
    free_arena(a);
    free(ids[0]);
    free(ids[1]);
    free(out);
    free(ctx);
    free(pooled);
}

/* GOLDEN/NAME/lora_unet through unet_run_cases, each case's LoRAs put on the pool first. */
typedef struct lora_unet_run { const sd_model *m; golden_file *g; lora_dir *dir; lora_case lc; const char *label; } lora_unet_run;

static int lora_unet_setup(void *user, int c, sd_pool *pool)
{
    lora_unet_run *r = (lora_unet_run *)user;
    char tags[512];
    sd_error err;
    sd_pool_set_lora(pool, NULL, NULL, &err);
    free_arena(r->lc.arena);
    r->lc.arena = NULL;
    if (!CHECK(lora_case_tags(r->g, c, tags, sizeof tags), "%s: no a1111 tags for case%d", r->label, c)) return 0;
    return CHECK(lora_case_load(&r->lc, r->m, tags, r->dir, &err) == SD_OK && sd_pool_set_lora(pool, r->lc.set, NULL, &err) == SD_OK,
                 "%s case%d %s: %s", r->label, c, tags, err.message);
}

/* And without the LoRAs the same pool gives out_no_lora: the base path is untouched. */
static void lora_check_unet(const sd_model *m, golden_file *g, lora_dir *dir, sd_pool *pool, const char *label)
{
    lora_unet_run r;
    sd_error err;
    memset(&r, 0, sizeof r);
    r.m = m, r.g = g, r.dir = dir, r.label = label;
    unet_run_cases(m->unet, g, label, pool, lora_unet_setup, &r);
    sd_pool_set_lora(pool, NULL, NULL, &err);
    free_arena(r.lc.arena);
    const sd_tensor *tx = sd_safetensors_find(&g->st, "case0.x");
    int64_t nout, ny = 0;
    const float *want = golden_f32(g, "case0.out_no_lora", &nout), *ctx = golden_f32(g, "case0.context", NULL);
    const float *pooled = sd_unet_add_dim(m->unet) ? golden_f32(g, "case0.text_embeds", &ny) : NULL, *sizes = pooled ? golden_f32(g, "case0.time_ids", NULL) : NULL;
    const sd_tensor *tt = sd_safetensors_find(&g->st, "case0.timesteps");
    if (!tx || !want || !ctx || !tt || (sd_unet_add_dim(m->unet) && !sizes)) return;
    int B = (int)tx->shape[0], h = (int)tx->shape[2], w = (int)tx->shape[3], add = sd_unet_add_dim(m->unet);
    float t[2] = {(float)golden_i64_at(tt, 0), (float)golden_i64_at(tt, 1)}, *y = (float *)malloc((size_t)(B * add + 1) * sizeof(float));
    float *out = (float *)malloc((size_t)nout * sizeof(float));
    for (int b = 0; b < B && pooled; b++) sd_unet_add_vector(m->unet, pooled + b * (ny / B), (int)(ny / B), sizes + 6 * b, y + b * add, &err);
    sd_unet_cond cond = {ctx, SD_TEXT_TOKENS, add ? y : NULL, NULL};
    sd_arena *a = test_arena(sd_unet_arena_bytes(m->unet, B, h, w, SD_TEXT_TOKENS));
    char what[400];
    snprintf(what, sizeof what, "%s case0.out_no_lora (the pool's LoRAs taken off)", label);
    if (CHECK(B == 2 && sd_unet(m->unet, (const float *)tx->data, t, &cond, B, h, w, out, pool, a, &err) == SD_OK, "%s: %s", what, err.message))
        check_close(what, out, want, nout, 2e-5);
    free_arena(a);
    free(out);
    free(y);
}

/* A generation of 2 steps at 64x64 of `prompt` (with tags, or p->loras from `list`). */
static int lora_generate(const sd_model *m, const char *prompt, lora_dir *dir, const sd_lora *list, int count, int resolve,
                         char *warnings, size_t *used, sd_error *err)
{
    sd_params p;
    uint8_t rgb[3 * 64 * 64];
    sd_params_init(&p);
    p.prompt = prompt;
    p.negative_prompt = "blurry";
    p.width = p.height = 64;
    p.steps = 2;
    p.lora_resolve = resolve ? lora_from_dir : NULL;
    p.lora_user = dir;
    p.loras = list;
    p.lora_count = count;
    p.warnings = warnings;
    p.warnings_size = warnings ? 1024 : 0;
    size_t need = sd_generate_arena_bytes(m, &p);
    sd_arena *a = test_arena(need ? need : 4096);
    int rc = sd_generate(m, &p, a, rgb, err);
    *used = a->used;
    CHECK(rc || a->peak == need, "LoRA generation '%s': peak %zu, planned %zu", prompt, a->peak, need);
    free_arena(a);
    return rc;
}

/* A copy of LoRA file `name` from GOLDEN_DIR/lora, changed by unet_corrupt (tensor `victim`
   reshaped, or renamed), or cut to `keep` bytes. */
static unsigned char *lora_broken_copy(const char *name, const char *victim, int rename, size_t keep, size_t *size)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/lora/%s.safetensors", golden_dir, name);
    unsigned char *b = read_file(path, size);
    if (!CHECK(b != NULL, "cannot read %s", path)) return NULL;
    if (keep) *size = keep < *size ? keep : *size;
    if (victim && !CHECK(unet_corrupt(b, victim, rename), "%s: no tensor %s to break", path, victim)) { free(b); return NULL; }
    return b;
}

/* Two generations on one model at the same time, each with LoRAs of its own (the model and the
   weights are shared and read-only): each gives the bytes it gives alone. */
static void lora_check_threads(const sd_model *m)
{
#ifdef SD_NO_THREADS
    (void)m;
#else
    static const char *const prompts[2] = {"a cat <lora:tiny-sd1_kohya_r4:0.7>", "a cat <lora:tiny-sd1_locon_r8:-0.3> <lora:tiny-sd1_peft_r4:1>"};
    gen_job job[4];
    lora_dir *dirs = (lora_dir *)calloc(4, sizeof *dirs);
    char path[1100];
    pthread_t tid[2];
    snprintf(path, sizeof path, "%s/lora", golden_dir);
    for (int k = 0; k < 4; k++) {   /* jobs 2 and 3 again, at once */
        dirs[k].dir = path;
        job[k].m = m;
        sd_params_init(&job[k].p);
        job[k].p.prompt = prompts[k % 2];
        job[k].p.width = job[k].p.height = 64;
        job[k].p.steps = 2;
        job[k].p.threads = 2;
        job[k].p.lora_resolve = lora_from_dir;
        job[k].p.lora_user = &dirs[k];
        job[k].rgb = (uint8_t *)calloc(3 * 64 * 64, 1);
    }
    gen_thread(&job[0]);
    gen_thread(&job[1]);
    int started = !pthread_create(&tid[0], NULL, gen_thread, &job[2]) && !pthread_create(&tid[1], NULL, gen_thread, &job[3]);
    if (CHECK(started, "LoRA: cannot start two threads")) {
        pthread_join(tid[0], NULL);
        pthread_join(tid[1], NULL);
        CHECK(!job[0].rc && !job[1].rc && !job[2].rc && !job[3].rc && memcmp(job[0].rgb, job[1].rgb, 3 * 64 * 64) &&
              !memcmp(job[0].rgb, job[2].rgb, 3 * 64 * 64) && !memcmp(job[1].rgb, job[3].rgb, 3 * 64 * 64),
              "LoRA: two generations at once with different LoRAs do not give what each gives alone (rc %d %d %d %d)", job[0].rc, job[1].rc,
              job[2].rc, job[3].rc);
    }
    for (int k = 0; k < 4; k++) { lora_dir_close(&dirs[k]); free(job[k].rgb); }
    free(dirs);
#endif
}

/* The CLI's --lora-model-dir: a tag finds NAME.safetensors there and changes the image; an
   unknown NAME is an error naming it; a name that would leave the folder is no LoRA. */
static void lora_check_cli(const char *model, const char *lora_path)
{
    char dir[] = "/tmp/sdh_lora_XXXXXX", args[4000], errf[100], png[3][100];
    static const char *const prompts[3] = {"a cat", "a cat <lora:tiny-sd1_kohya_r4:0.9>", "a cat <lora:../lora/tiny-sd1_kohya_r4:0.9>"};
    int lines, rc[3];
    size_t n[3] = {0, 0, 0};
    unsigned char *img[3] = {NULL, NULL, NULL};
    if (!file_exists("./example")) { printf("note: no ./example, the CLI's LoRA check is skipped\n"); return; }
    if (!CHECK(mkdtemp(dir) != NULL, "mkdtemp")) return;
    snprintf(errf, sizeof errf, "%s/err.txt", dir);
    for (int i = 0; i < 3; i++) {
        snprintf(png[i], sizeof png[i], "%s/%d.ppm", dir, i);
        snprintf(args, sizeof args, "-m %s --tokenizer %s --lora-model-dir %s -p '%s' -W 64 -H 64 --steps 2 -s 1 -t 1 -o %s", model,
                 merges_path, lora_path, prompts[i], png[i]);
        rc[i] = run_example(args, errf, &lines);
        img[i] = read_file(png[i], &n[i]);
    }
    CHECK(!rc[0] && !rc[1] && n[0] && n[0] == n[1] && memcmp(img[0], img[1], n[0]), "CLI --lora-model-dir: exit %d, %d, or the tag changed nothing", rc[0], rc[1]);
    CHECK(rc[2] == 1 && !img[2] && file_contains(errf, "no LoRA named '../lora/tiny-sd1_kohya_r4'"), "CLI: a LoRA name with '/' gave exit %d", rc[2]);
    for (int i = 0; i < 3; i++) { free(img[i]); remove(png[i]); }
    remove(errf);
    rmdir(dir);
}

/* Bad LoRAs and tags on tiny-sd1: clear errors naming the file and the tensor (or the tag),
   nothing kept in the arena, and the model as it was (its bytes, and a golden run after). */
static void lora_check_errors(loaded_model *lm, lora_dir *dir, const char *name)
{
    static const char *const q_down = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight";
    static const char *const alpha = "lora_unet_down_blocks_0_attentions_0_proj_in.alpha";
    const sd_model *m = lm->model;
    uint32_t before = hash_bytes((const char *)lm->bytes, lm->size);
    char warnings[1024];
    size_t size, used;
    sd_error err;
    int rc;
    /* tags */
    static const struct { const char *prompt; int resolve, code; const char *needle; } tag_cases[] = {
        {"a cat <lora:nosuch:0.5>", 1, SD_ERR_MISSING, "no LoRA named 'nosuch'"},
        {"a cat <lora:tiny-sd1_kohya_r4:0.5>", 0, SD_ERR_ARG, "no lora_resolve"},
        {"a cat <lora:tiny-sd1_kohya_r4:abc>", 1, SD_ERR_ARG, "not a number"},
        {"a cat <lora:tiny-sd1_kohya_r4:1:1:8>", 1, SD_ERR_UNSUPPORTED, "dyn"},
        {"a cat <lora:tiny-sdxl_kohya_r4:1>", 1, SD_ERR_SHAPE, "LoRA 'tiny-sdxl_kohya_r4': tensor '"},   /* a layer of both, in other shapes */
    };
    for (size_t i = 0; i < sizeof tag_cases / sizeof *tag_cases; i++) {
        rc = lora_generate(m, tag_cases[i].prompt, dir, NULL, 0, tag_cases[i].resolve, NULL, &used, &err);
        CHECK(rc == tag_cases[i].code && strstr(err.message, tag_cases[i].needle) && used == 0, "LoRA '%s': rc %d, '%s'",
              tag_cases[i].prompt, rc, rc ? err.message : "");
    }
    /* broken files through the list */
    static const struct { const char *file, *victim; int rename; size_t keep; int code; const char *needle; } file_cases[] = {
        {"tiny-sd1_kohya_r4", NULL, 0, 5000, SD_ERR_FORMAT, "LoRA 'broken': safetensors: header length"},
        {"tiny-sd1_kohya_r4", NULL, 0, 200000, SD_ERR_FORMAT, "LoRA 'broken': safetensors:"},
        {"tiny-sd1_kohya_r4", "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight", 0, 0, SD_ERR_SHAPE,
         "LoRA 'broken': tensor 'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight' has shape [32, 4]"},
        {"tiny-sd1_kohya_r4", "lora_unet_down_blocks_0_attentions_0_proj_in.alpha", 1, 0, SD_ERR_SHAPE,
         "LoRA 'broken': tensor 'lora_unet_down_blocks_0_attentions_0_proj_in.alph_' matches no layer"},
        {"tiny-sd1_locon_r8", "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight", 1, 0, SD_ERR_MISSING, "has no 'lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight'"},
    };
    (void)q_down, (void)alpha;
    for (size_t i = 0; i < sizeof file_cases / sizeof *file_cases; i++) {
        unsigned char *b = lora_broken_copy(file_cases[i].file, file_cases[i].victim, file_cases[i].rename, file_cases[i].keep, &size);
        sd_lora l = {b, size, 1.0f, 1.0f, "broken"};
        if (!b) continue;
        rc = lora_generate(m, "a cat", dir, &l, 1, 1, NULL, &used, &err);
        CHECK(rc == file_cases[i].code && strstr(err.message, file_cases[i].needle) && used == 0, "broken LoRA %zu (%s): rc %d, '%s'", i,
              file_cases[i].file, rc, rc ? err.message : "");
        free(b);
    }
    /* a LyCORIS kind, and what is skipped with a warning: an embedding bundled in the file, a
       text-encoder layer the model lacks; and a tag of another kind */
    {
        static const char hada[] = "{\"lora_unet_conv_in.hada_w1_a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
        static const char skips[] = "{\"bundle_emb.x.string_to_param.*\":{\"dtype\":\"F32\",\"shape\":[1,32],\"data_offsets\":[0,128]},"
            "\"lora_te_text_model_encoder_layers_7_mlp_fc1.alpha\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[128,132]},"
            "\"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight\":{\"dtype\":\"F32\",\"shape\":[1,32],\"data_offsets\":[132,260]},"
            "\"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight\":{\"dtype\":\"F32\",\"shape\":[128,1],\"data_offsets\":[260,772]}}";
        float zeros[193] = {0};
        unsigned char *f1 = make_file(hada, zeros, 4, &size);
        sd_lora l = {f1, size, 1.0f, 1.0f, "hada"};
        rc = lora_generate(m, "a cat", dir, &l, 1, 1, NULL, &used, &err);
        CHECK(rc == SD_ERR_UNSUPPORTED && strstr(err.message, "'lora_unet_conv_in.hada_w1_a'") && strstr(err.message, "LoHa"), "LoHa tensor: rc %d, '%s'",
              rc, rc ? err.message : "");
        free(f1);
        f1 = make_file(skips, zeros, 772, &size);
        l.data = f1, l.size = size, l.name = "skips";
        rc = lora_generate(m, "a <hypernet:x:1>cat", dir, &l, 1, 1, warnings, &used, &err);
        CHECK(rc == SD_OK && strstr(warnings, "'bundle_emb.x.string_to_param.*'") && strstr(warnings, "layers this model does not have") &&
              strstr(warnings, "removed '<hypernet:x:1>'"), "skipped tensors and tags: rc %d (%s), warnings '%s'", rc, rc ? err.message : "", warnings);
        free(f1);
        rc = lora_generate(m, "a <hypernet:x:1>cat", dir, NULL, 0, 0, warnings, &used, &err);   /* no LoRA at all: no resolver needed */
        CHECK(rc == SD_OK && strstr(warnings, "removed '<hypernet:x:1>'"), "a hypernetwork tag alone: rc %d (%s), warnings '%s'", rc,
              rc ? err.message : "", warnings);
    }
    CHECK(hash_bytes((const char *)lm->bytes, lm->size) == before, "the model's bytes changed");
    run_pipeline_goldens(m, name, 0);   /* and it still gives the goldens */
}

/* Tag reading: A1111's arguments, and removal in one pass. */
static void lora_check_tags(const sd_clip_vocab *v)
{
    static const struct { const char *tag; float te, unet; } args[] = {
        {"<lora:x>", 1, 1}, {"<lora:x:0.8>", 0.8f, 0.8f}, {"<lora:x:0.8:0.5>", 0.8f, 0.5f}, {"<lora:x:-1.5>", -1.5f, -1.5f},
        {"<lora:x:te=0.3:unet=0.4>", 0.3f, 0.4f}, {"<lora:x:0.5:te=0.7>", 0.7f, 0.7f}, {"<lyco:x: 2 >", 2, 2},
    };
    static const struct { const char *in, *out; } strip[] = {
        {"a <lora:x:1>b <hypernet:y:2> c", "a b  c"}, {"<lo<lora:x:1>ra:y:1>", "<lora:y:1>"}, {"<a:> <:b> <a b:c> x<y:z", "<a:> <:b> <a b:c> x<y:z"},
        {"caf\xc3\xa9<\xc3\xa9t\xc3\xa9:1>!", "caf\xc3\xa9!"}, {"BRE<lora:x:1>AK", "BREAK"},
    };
    char name[256], out[128];
    sd_error err;
    for (size_t i = 0; i < sizeof args / sizeof *args; i++) {
        sd_lora l = {NULL, 0, 0, 0, NULL};
        size_t kind, len = prompt_tag(v, args[i].tag, 0, prompt_tags_end(args[i].tag), &kind);
        CHECK(len == strlen(args[i].tag) && lora_tag(args[i].tag, len, kind, name, sizeof name, &l, &err) == SD_OK && !strcmp(name, "x") &&
              l.text_scale == args[i].te && l.unet_scale == args[i].unet, "tag %s: text %g, UNet %g", args[i].tag, l.text_scale, l.unet_scale);
    }
    for (size_t i = 0; i < sizeof strip / sizeof *strip; i++) {
        size_t n = prompt_untagged(v, strip[i].in, out);
        CHECK(!strcmp(out, strip[i].out) && n == strlen(out), "'%s' without tags is '%s', expected '%s'", strip[i].in, out, strip[i].out);
        CHECK(prompt_chunk_bound(v, strip[i].in, 1, 0, NULL) == prompt_chunk_bound(v, out, 0, 0, NULL), "'%s': the dry run's chunk bound differs", strip[i].in);
    }
}

static void test_lora(void)
{
    char rel[1200], lora_path[1100], label[300];
    lora_dir dir;
    sd_arena *pa;
    sd_pool pool;
    sd_error err;
    int before = n_fail, runs = 0, n = golden_models_read();
    snprintf(lora_path, sizeof lora_path, "%s/lora", golden_dir);
    if (!opendir_ok(lora_path)) { note_absent("lora", "no %s: the LoRA goldens are skipped", lora_path); return; }
    memset(&dir, 0, sizeof dir);
    dir.dir = lora_path;
    pa = test_arena(pool_arena_bytes(1) + SD_LORA_SCRATCH_BYTES + SD_ALIGN);
    CHECK(pool_init(&pool, 1, pa, &err) == SD_OK && pool_set_lora(&pool, NULL, pa, &err) == SD_OK, "pool");   /* its scratch, once */
    for (int i = 0; i < n; i++) {
        golden_model *gm = &golden_models[i];
        for (int layout = 0; layout < LAYOUTS; layout++) {   /* every layout: original names, diffusers names */
            static const char *const goldens[2] = {"lora_text_encoder", "lora_unet"};
            loaded_model lm;
            int found = 0;
            snprintf(rel, sizeof rel, "%s/%s", golden_dir, gm->name);
            DIR *gd = opendir(rel);
            for (struct dirent *f; gd && (f = readdir(gd)) != NULL; ) found |= !strncmp(f->d_name, "lora_", 5);
            if (gd) closedir(gd);
            if (!found || !*gm->path[layout]) continue;
            if (layout == LAYOUT_DIFFUSERS ? open_diffusers_model(&lm, gm->path[layout]) : open_test_model(&lm, gm->path[layout])) {
                unload_model(&lm);
                continue;
            }
            snprintf(label, sizeof label, "LoRA on %s", strrchr(gm->path[layout], '/') + 1);
            for (int k = 0; k < 2; k++) {
                snprintf(rel, sizeof rel, "%s/%s.safetensors", gm->name, goldens[k]);
                golden_file *g = golden_open(rel);
                if (!g) continue;
                if (k == 0) lora_check_text(lm.model, g, &dir, &pool, label);
                else lora_check_unet(lm.model, g, &dir, &pool, label);
                golden_close(g);
                runs++, n_cases++;
            }
            snprintf(rel, sizeof rel, "%s/%s", golden_dir, gm->name);
            gd = opendir(rel);
            for (struct dirent *f; gd && (f = readdir(gd)) != NULL; ) {
                char pipe[600];
                if (strncmp(f->d_name, "lora_txt2img_", 13)) continue;
                snprintf(pipe, sizeof pipe, "%s/%.300s", gm->name, f->d_name);
                check_pipeline(lm.model, pipe);
                if (layout == LAYOUT_F16) check_pipeline_contracts(lm.model, pipe);
                runs++, n_cases++;
            }
            if (gd) closedir(gd);
            /* the checks made with the public set's LoRA files: once, on tiny-sd1's single file */
            int have = 1;
            static const char *const files[4] = {"tiny-sd1_kohya_r4", "tiny-sd1_locon_r8", "tiny-sd1_peft_r4", "tiny-sdxl_kohya_r4"};
            for (int k = 0; k < 4; k++) {
                snprintf(rel, sizeof rel, "%s/%s.safetensors", lora_path, files[k]);
                have &= file_exists(rel);
            }
            if (!strcmp(gm->name, "tiny-sd1") && layout == LAYOUT_F16 && !have)
                note_absent("lora files", "not all of %s/tiny-sd1_{kohya_r4,locon_r8,peft_r4}, tiny-sdxl_kohya_r4: the LoRA tag, "
                            "thread, CLI and error checks skipped", lora_path);
            if (!strcmp(gm->name, "tiny-sd1") && layout == LAYOUT_F16 && have) {
                lora_check_tags(lm.model->vocab);
                lora_check_threads(lm.model);
                lora_check_cli(gm->path[layout], lora_path);
                lora_check_errors(&lm, &dir, gm->name);
            }
            unload_model(&lm);
        }
    }
    lora_dir_close(&dir);
    pool_free(&pool);
    free_arena(pa);
    printf("lora: %d goldens run, %s\n", runs, n_fail == before ? "ok" : "FAILED");
}

static const struct test_group { const char *name; void (*run)(void); int golden; } test_groups[] = {
    {"arena", test_arena_basics, 0}, {"f16", test_f16, 0}, {"kernels", test_kernels, 0},
    {"safetensors", test_safetensors_malformed, 0}, {"manifest", test_golden_manifest, 1}, {"models", test_model_files, 1},
    {"rng", test_rng, 1}, {"ddim", test_ddim, 1}, {"samplers", test_samplers, 1}, {"tokenizer", test_tokenizer, 1},
    {"prompt", test_prompt, 1}, {"text_encoder", test_text_encoder, 1}, {"unet", test_unet, 1}, {"vae", test_vae, 1},
    {"pipeline", test_pipeline, 1}, {"lcm", test_lcm, 1}, {"ti", test_ti, 1}, {"image_guided", test_image_guided, 1},
    {"lora", test_lora, 1}, {"taesd", test_taesd, 1}, {"gguf", test_gguf, 1}, {"png", test_png, 1}, {"cli", test_cli, 1},
    {"threads", test_threads, 1}, {"reader", test_reader, 1},
};
#define TEST_GROUPS (int)(sizeof test_groups / sizeof test_groups[0])

/* Usage: ./test [GOLDEN_DIR] [--only GROUP,GROUP...]   every test (default: all groups above)
          ./test --kernels                              the kernel tests alone (one SIMD path)
          ./test --rewrite IN OUT [--f32] [--drop NAME]... [--bump NAME] [--meta KEY=VALUE]...   (above)
   GOLDEN_DIR (default ../shared/golden) may hold any part of the golden layout: every case present
   runs, each kind absent gets one note: line, and the run fails on a mismatch, an unreadable or
   malformed file, or when the groups run meet no golden case at all. */
int main(int argc, char **argv)
{
    int selected[TEST_GROUPS], golden_groups = 0;
    if (argc > 1 && !strcmp(argv[1], "--kernels")) {   /* one SIMD path's kernels alone (make test builds several) */
        printf("kernels (%s)\n", SD_SIMD);
        test_kernels();
        printf("%d passed, %d failed\n", n_pass, n_fail);
        return n_fail != 0;
    }
    if (argc > 1 && !strcmp(argv[1], "--rewrite")) return rewrite_main(argc, argv);
    for (int i = 0; i < TEST_GROUPS; i++) selected[i] = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--only") && i + 1 < argc) {
            const char *tok = argv[++i];
            for (int k = 0; k < TEST_GROUPS; k++) selected[k] = 0;
            while (*tok) {
                size_t len = strcspn(tok, ",");
                int k = 0;
                while (k < TEST_GROUPS && (strlen(test_groups[k].name) != len || strncmp(tok, test_groups[k].name, len))) k++;
                if (k == TEST_GROUPS) {
                    fprintf(stderr, "--only: no test group '%.*s'; the groups are:", (int)len, tok);
                    for (k = 0; k < TEST_GROUPS; k++) fprintf(stderr, " %s", test_groups[k].name);
                    fprintf(stderr, "\n");
                    return 2;
                }
                selected[k] = 1;
                tok += len + (tok[len] == ',');
            }
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "usage: ./test [GOLDEN_DIR] [--only GROUP,...] | --kernels | --rewrite IN OUT [--f32] [--drop NAME]... [--bump NAME] [--meta KEY=VALUE]...\n");
            return 2;
        } else {
            golden_dir = argv[i];
        }
    }
    png_cases_dir = getenv("SD_PNG_CASES");
    merges_path = getenv("SD_MERGES");
    if (!merges_path || !file_exists(merges_path)) merges_path = file_exists("weights/merges.txt") ? "weights/merges.txt" : "../shared/clip/merges.txt";
    printf("golden set: %s, merges: %s\n", golden_dir, merges_path);
    for (int i = 0; i < TEST_GROUPS; i++)
        if (selected[i]) {
            test_groups[i].run();
            golden_groups += test_groups[i].golden;
        }
    if (golden_groups) CHECK(n_cases > 0, "no golden case in %s for the tests run: not a golden set (see the golden README, section 7)", golden_dir);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    free(golden_models);
    return n_fail != 0;
}

#endif
