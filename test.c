/* test.c - every test of sd.h. `./test [GOLDEN_DIR]` (default ../shared/golden) runs the checks
   that need no data, then every golden file it finds under GOLDEN_DIR, and ends with the line
   `N passed, N failed`. Tests never time anything; benchmarks live in example.c. */
#define SD_IMPLEMENTATION
#include "sd.h"

#include <dirent.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- harness ------------------------------------------------------------------------------ */

static int n_pass, n_fail;
static const char *golden_dir = "../shared/golden";
static const char *merges_path;   /* CLIP merges.txt, found by find_merges() */

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

static int file_exists(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f) fclose(f);
    return f != NULL;
}

/* A test arena over one malloc'd block; free_arena() gives both back. */
typedef struct test_block { sd_arena arena; void *memory; } test_block;

static sd_arena *test_arena(size_t bytes)
{
    test_block *t = (test_block *)malloc(sizeof *t);
    if (!t || !(t->memory = malloc(bytes))) { fprintf(stderr, "out of memory for a %zu-byte test arena\n", bytes); exit(2); }
    sd_arena_init(&t->arena, t->memory, bytes);
    return &t->arena;
}

static void free_arena(sd_arena *a)
{
    if (!a) return;
    free(((test_block *)a)->memory);
    free(a);
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
    size_t hcap = 1 << 20, hlen = 0, dcap = 0, dlen = 0;
    char *h = (char *)malloc(hcap);
    unsigned char *data;
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

#if defined(SD_FUZZ)
/* libFuzzer entry points (`make fuzz`): SD_FUZZ=1 the safetensors reader. Each input must give
   SD_OK with every tensor inside the buffer, or an error; never a crash or an invalid read. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static sd_arena *a;
    sd_safetensors st;
    sd_error err;
    if (!a) a = test_arena(1 << 24);
    sd_arena_reset(a, 0);
    if (sd_safetensors_open(&st, data, size, a, &err) == SD_OK)
        for (int i = 0; i < st.count; i++) {
            const sd_tensor *t = sd_safetensors_find(&st, st.tensors[i].name);
            if (t != &st.tensors[i] || (const uint8_t *)t->data + t->nbytes > data + size) __builtin_trap();
            if (t->dtype == SD_F16 && t->nbytes >= 2) (void)tensor_get(t, t->nbytes / 2 - 1);
        }
    return 0;
}
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

/* Opens the bytes and expects failure with a message containing `needle`. */
static void expect_bad(const char *what, const unsigned char *b, size_t size, const char *needle)
{
    sd_arena *a = test_arena(1 << 16);
    sd_safetensors st;
    sd_error err = {0, ""};
    size_t used = a->used;
    int rc = sd_safetensors_open(&st, b, size, a, &err);
    CHECK(rc != SD_OK, "%s: accepted", what);
    CHECK(rc == SD_OK || err.code == rc, "%s: error code not filled", what);
    CHECK(rc == SD_OK || !needle || strstr(err.message, needle), "%s: message '%s' lacks '%s'", what, err.message, needle);
    CHECK(a->used == used && st.count == 0, "%s: arena or table not restored", what);
    free_arena(a);
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

    /* every truncation of it fails cleanly */
    int truncs_ok = 1;
    for (size_t n = 0; n < size; n++) {
        unsigned char *c = (unsigned char *)malloc(n ? n : 1);
        memcpy(c, b, n);
        a = test_arena(1 << 16);
        if (sd_safetensors_open(&st, c, n, a, &err) == SD_OK) truncs_ok = 0;
        free_arena(a);
        free(c);
    }
    CHECK(truncs_ok, "every truncation of a valid file is rejected");

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
    if (!m) { printf("skip: no %s\n", path); return; }
    json j = {m, m, m + size, NULL};
    int files = 0, tensors = 0;
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
            golden_file *g = golden_open(key);
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
            if (g) files++;
            golden_close(g);
        } while (json_eat(&j, ','));
        json_eat(&j, '}');
    } while (json_eat(&j, ','));
    CHECK(!j.error, "manifest.json parses: %s", j.error ? j.error : "");
    printf("manifest: %d golden files, %d tensors checked\n", files, tensors);
    free(m);
}

/* The F32, F16 and converted copies of each model hold the same numbers (the goldens apply to
   all of them), and an F32 file written by the test opens and reads back identically. */
static void test_model_files(void)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models", golden_dir);
    DIR *d = opendir(dir);
    struct dirent *e;
    if (!d) { printf("skip: no %s\n", dir); return; }
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 17 || strcmp(e->d_name + n - 17, "-fp16.safetensors")) continue;
        char rel[512], rel32[512];
        snprintf(rel, sizeof rel, "models/%s", e->d_name);
        snprintf(rel32, sizeof rel32, "models/%.*s.safetensors", (int)(n - 17), e->d_name);
        golden_file *f16 = golden_open(rel), *f32 = golden_open(rel32);
        if (!f16) continue;
        size_t size;
        unsigned char *conv = rewrite_file(&f16->st, SD_F32, NULL, NULL, &size);
        sd_arena *a = test_arena(1 << 24);
        sd_safetensors st;
        sd_error err;
        int rc = sd_safetensors_open(&st, conv, size, a, &err);
        CHECK(rc == SD_OK, "%s converted to F32 opens: %s", rel, rc ? err.message : "");
        int same = 1, floats = 0;
        for (int i = 0; rc == SD_OK && i < f16->st.count; i++) {
            const sd_tensor *h = &f16->st.tensors[i], *c = sd_safetensors_find(&st, h->name);
            const sd_tensor *o = f32 ? sd_safetensors_find(&f32->st, h->name) : NULL;
            if (!c || c->ndim != h->ndim) { same = 0; continue; }
            if (h->dtype != SD_F16) continue;
            floats++;
            for (int64_t k = 0; k < sd_tensor_numel(h); k++) {
                float v = tensor_get(h, (size_t)k);
                if (tensor_get(c, (size_t)k) != v || (o && tensor_get(o, (size_t)k) != v)) { same = 0; break; }
            }
        }
        CHECK(same && floats > 0, "%s: F16, F32 copy%s hold identical numbers", rel, f32 ? " and the F32 file" : "");
        CHECK(!f32 || f32->st.count == f16->st.count, "%s: same tensor count in F32 and F16 files", rel);
        CHECK(sd_safetensors_meta(&f16->st, "sd.version") != NULL, "%s has sd.version metadata", rel);
        free_arena(a);
        free(conv);
        golden_close(f16);
        golden_close(f32);
    }
    closedir(d);
}

int main(int argc, char **argv)
{
    if (argc > 1) golden_dir = argv[1];
    printf("golden set: %s\n", golden_dir);
    test_arena_basics();
    test_f16();
    test_safetensors_malformed();
    test_golden_manifest();
    test_model_files();
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail != 0;
}

#endif
