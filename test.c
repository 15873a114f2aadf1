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

#ifndef TEST_HARNESS_ONLY

int main(int argc, char **argv)
{
    if (argc > 1) golden_dir = argv[1];
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail != 0;
}

#endif
