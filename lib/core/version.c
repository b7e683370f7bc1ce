/* lib/core/version.c */
#include "core.h"

#define PVM__STR2(x) #x
#define PVM__STR(x) PVM__STR2(x)

unsigned pvm_version(void)
{
    return PVM_VERSION;
}

const char *pvm_version_string(void)
{
    return PVM__STR(PVM_VERSION_MAJOR) "." PVM__STR(PVM_VERSION_MINOR) "." PVM__STR(PVM_VERSION_PATCH);
}
