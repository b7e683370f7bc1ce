/*
 * lib/guest/console.c - console output, printf, exit and panic.
 */
#include <stdbool.h>

#include "pvm/guest/pvm_guest.h"

void pvm_console_write(const char *buf, size_t len)
{
    if (len)
        pvm_hostcall(PVM_HOSTCALL_CONSOLE_WRITE, buf, len);
}

void pvm_puts(const char *s)
{
    pvm_console_write(s, strlen(s));
}

void pvm_exit(int status)
{
    pvm_hostcall(PVM_HOSTCALL_EXIT, (uint64_t)(int64_t)status);
    /* The host did not stop us: stop this vCPU for good. */
    pvm_cpu_stop();
}

/* Output sink of the formatter: a bounded buffer, optionally flushed to the console. */
struct sink {
    char *buf;
    size_t cap, len;
    size_t total;
    bool console;
};

static void put(struct sink *s, char c)
{
    s->total++;
    if (s->console && s->len == s->cap) {
        pvm_console_write(s->buf, s->len);
        s->len = 0;
    }
    if (s->len < s->cap)
        s->buf[s->len++] = c;
}

static void put_padded(struct sink *s, const char *str, size_t n, int width, bool left, char pad)
{
    int fill = width > (int)n ? width - (int)n : 0;
    if (!left)
        while (fill-- > 0)
            put(s, pad);
    for (size_t i = 0; i < n; i++)
        put(s, str[i]);
    if (left)
        while (fill-- > 0)
            put(s, ' ');
}

static void format(struct sink *s, const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            put(s, *fmt);
            continue;
        }
        bool left = false;
        char pad = ' ';
        int width = 0, lng = 0;
        for (fmt++; *fmt == '-' || *fmt == '0'; fmt++) {
            if (*fmt == '-')
                left = true;
            else
                pad = '0';
        }
        for (; *fmt >= '0' && *fmt <= '9'; fmt++)
            width = width * 10 + (*fmt - '0');
        for (; *fmt == 'l' || *fmt == 'z'; fmt++)
            lng++;
        char tmp[24];
        const char *str = tmp;
        size_t n = 0;
        unsigned base = 10;
        bool neg = false, upper = false;
        unsigned long long v = 0;
        switch (*fmt) {
        case 'd': case 'i': {
            long long x = lng ? va_arg(ap, long long) : va_arg(ap, int);
            neg = x < 0;
            v = neg ? -(unsigned long long)x : (unsigned long long)x;
            goto number;
        }
        case 'p':
            v = (uintptr_t)va_arg(ap, void *);
            base = 16;
            put(s, '0');
            put(s, 'x');
            goto number;
        case 'X':
            upper = true;
            /* fall through */
        case 'x':
            base = 16;
            goto unsigned_arg;
        case 'o':
            base = 8;
            goto unsigned_arg;
        case 'u':
        unsigned_arg:
            v = lng ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned);
        number: {
            const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
            char *p = tmp + sizeof(tmp);
            do {
                *--p = digits[v % base];
                v /= base;
            } while (v);
            if (neg) {
                if (pad == '0' && !left) {
                    put(s, '-');
                    width = width > 0 ? width - 1 : 0;
                } else {
                    *--p = '-';
                }
            }
            str = p;
            n = (size_t)(tmp + sizeof(tmp) - p);
            put_padded(s, str, n, width, left, pad);
            break;
        }
        case 's':
            str = va_arg(ap, const char *);
            if (!str)
                str = "(null)";
            n = strlen(str);
            put_padded(s, str, n, width, left, ' ');
            break;
        case 'c':
            tmp[0] = (char)va_arg(ap, int);
            put_padded(s, tmp, 1, width, left, ' ');
            break;
        case '%':
            put(s, '%');
            break;
        case 0:
            return;
        default:
            put(s, '%');
            put(s, *fmt);
            break;
        }
    }
}

int pvm_vsnprintf(char *buf, size_t n, const char *fmt, va_list ap)
{
    struct sink s = { buf, n ? n - 1 : 0, 0, 0, false };
    format(&s, fmt, ap);
    if (n)
        buf[s.len] = 0;
    return (int)s.total;
}

int pvm_snprintf(char *buf, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = pvm_vsnprintf(buf, n, fmt, ap);
    va_end(ap);
    return r;
}

int pvm_vprintf(const char *fmt, va_list ap)
{
    char buf[256];
    struct sink s = { buf, sizeof(buf), 0, 0, true };
    format(&s, fmt, ap);
    pvm_console_write(buf, s.len);
    return (int)s.total;
}

int pvm_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = pvm_vprintf(fmt, ap);
    va_end(ap);
    return r;
}

void pvm_panic(const char *fmt, ...)
{
    va_list ap;
    pvm_puts("panic: ");
    va_start(ap, fmt);
    pvm_vprintf(fmt, ap);
    va_end(ap);
    pvm_puts("\n");
    pvm_exit(PVM_PANIC_STATUS);
}
