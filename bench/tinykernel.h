/*
 * bench/tinykernel.h - load tinykernel.bin and patch its params block
 * (shared by bench-qemu and bench-kvm).
 */
#ifndef PVM_BENCH_TINYKERNEL_H
#define PVM_BENCH_TINYKERNEL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TK_LOAD_ADDR 0x100000u

struct tk_params {
    char magic[8]; /* "PVMBITER" */
    uint32_t iters, batches;
    uint64_t entry64, pml4;
    uint64_t work; /* compute units before each SYSCALL (0: the plain syscall loop) */
};

struct tk_image {
    uint8_t *data;
    size_t len;
    struct tk_params *params; /* inside data */
};

/* Read @path and find its params block; 0 or -1. */
static inline int tk_load(struct tk_image *k, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    k->len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    k->data = malloc(k->len);
    int ok = k->data && fread(k->data, 1, k->len, f) == k->len;
    fclose(f);
    k->params = NULL;
    for (size_t off = 0; ok && off + sizeof(struct tk_params) <= k->len && off < 8192; off += 8)
        if (!memcmp(k->data + off, "PVMBITER", 8)) {
            k->params = (struct tk_params *)(k->data + off);
            break;
        }
    return ok && k->params ? 0 : -1;
}

#endif
