/*
 * pvm/guest/console.h - console output, printf, exit and panic via host calls.
 */
#ifndef PVM_GUEST_CONSOLE_H
#define PVM_GUEST_CONSOLE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/** Write @len bytes to the host console (PVM_HOSTCALL_CONSOLE_WRITE). */
void pvm_console_write(const char *buf, size_t len);
void pvm_puts(const char *s); /**< writes @s without adding a newline */

/**
 * Tiny printf: %d %i %u %x %X %o %p %s %c %%, flags '-' '0', a width, and the
 * length modifiers l, ll, z.  Output of one call is written in chunks of up
 * to 256 bytes.  Returns the number of characters produced.
 */
int pvm_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int pvm_vprintf(const char *fmt, va_list ap);
/** snprintf with the same conversions; always NUL-terminates when @n > 0. */
int pvm_snprintf(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int pvm_vsnprintf(char *buf, size_t n, const char *fmt, va_list ap);

/** Exit status pvm_panic() reports to the host. */
#define PVM_PANIC_STATUS 255

/** End the guest with @status (PVM_HOSTCALL_EXIT); never returns. */
__attribute__((noreturn)) void pvm_exit(int status);
/** Print "panic: <message>" and exit with PVM_PANIC_STATUS. */
__attribute__((noreturn, format(printf, 1, 2))) void pvm_panic(const char *fmt, ...);

/** Guest assertion: failures report file:line to the host console. */
#define PVM_ASSERT(cond)                                                        \
    do {                                                                        \
        if (!(cond))                                                            \
            pvm_panic("%s:%d: assertion failed: %s", __FILE__, __LINE__, #cond);\
    } while (0)

#endif /* PVM_GUEST_CONSOLE_H */
