/*
 * pvm/guest/string.h - the few libc string functions the SDK provides.
 *
 * The compiler may emit calls to memcpy/memset/memmove/memcmp even with
 * -fno-builtin, so the runtime defines them under their usual names.
 */
#ifndef PVM_GUEST_STRING_H
#define PVM_GUEST_STRING_H

#include <stddef.h>

void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);

#endif
