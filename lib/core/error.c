/* lib/core/error.c - error names, descriptions and the per-thread detail message. */
#include <stdio.h>
#include <string.h>

#include "core.h"

static _Thread_local char last_error[512];

const char *pvm_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
#define PVM__ERR_DESC(name, val, desc) case (val): return desc;
        PVM_ERRNO_MAP(PVM__ERR_DESC)
#undef PVM__ERR_DESC
    }
    return "unknown error";
}

const char *pvm_err_name(int err)
{
    switch (err) {
    case 0:
        return "PVM_OK";
#define PVM__ERR_NAME(name, val, desc) case (val): return "PVM_" #name;
        PVM_ERRNO_MAP(PVM__ERR_NAME)
#undef PVM__ERR_NAME
    }
    return "PVM_E?";
}

const char *pvm_last_error(void)
{
    return last_error;
}

void pvm__clear_error(void)
{
    last_error[0] = '\0';
}

void pvm__set_error_const(const char *msg)
{
    /* A plain byte copy: no formatting, no logging, no locks (async-signal-safe callers). */
    size_t i = 0;
    for (; msg[i] && i + 1 < sizeof(last_error); i++)
        last_error[i] = msg[i];
    last_error[i] = '\0';
}

int pvm__verror(int code, const char *fmt, va_list ap)
{
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    pvm__log(PVM_LOG_DEBUG, "%s (%s)", last_error, pvm_err_name(code));
    return code;
}

int pvm__error(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pvm__verror(code, fmt, ap);
    va_end(ap);
    return code;
}
