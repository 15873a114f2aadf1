/* example.c - the command-line program for sd.h.

     ./example --inspect model.safetensors     list the tensors of a file (name, dtype, shape, bytes)

   It also shows how to call the library: the file is mmap'd (or read), an arena is sized and
   allocated once, and every call reports errors through sd_error. */
#define _POSIX_C_SOURCE 200809L
#define SD_IMPLEMENTATION
#include "sd.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Maps a file read-only; falls back to reading it when mmap is not possible. */
static void *map_file(const char *path, size_t *size)
{
    struct stat sb;
    void *p;
    int fd = open(path, O_RDONLY);
    if (fd < 0 || fstat(fd, &sb) != 0) {
        if (fd >= 0) close(fd);
        return NULL;
    }
    *size = (size_t)sb.st_size;
    p = mmap(NULL, *size ? *size : 1, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
        p = malloc(*size ? *size : 1);
        if (p && read(fd, p, *size) != (ssize_t)*size) { free(p); p = NULL; }
    }
    close(fd);
    return p;
}

static int inspect(const char *path)
{
    size_t size = 0, arena_size = 64u << 20;
    void *data = map_file(path, &size), *mem = malloc(arena_size);
    sd_arena arena;
    sd_safetensors st;
    sd_error err;
    if (!data) { fprintf(stderr, "cannot read %s\n", path); return 1; }
    sd_arena_init(&arena, mem, arena_size);
    if (sd_safetensors_open(&st, data, size, &arena, &err)) {
        fprintf(stderr, "%s: %s\n", path, err.message);
        return 1;
    }
    size_t total = 0;
    for (int i = 0; i < st.count; i++) {
        const sd_tensor *t = &st.tensors[i];
        char shape[128] = "";
        for (int d = 0; d < t->ndim; d++)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%lld", d ? ", " : "", (long long)t->shape[d]);
        printf("%-80s %-5s [%s] %zu\n", t->name, sd_dtype_name(t->dtype), shape, t->nbytes);
        total += t->nbytes;
    }
    for (int i = 0; i < st.meta_count; i++) printf("metadata %s = %s\n", st.meta_keys[i], st.meta_values[i]);
    printf("%d tensors, %zu bytes of data, %d metadata entries\n", st.count, total, st.meta_count);
    return 0;
}

static void usage(void)
{
    printf("usage: ./example --inspect FILE.safetensors\n");
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--inspect")) return inspect(argv[2]);
    usage();
    return argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) ? 0 : 1;
}
