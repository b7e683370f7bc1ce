/*
 * snap-server: a guest that pays for its set-up once (a prime sieve over
 * 1 MiB of RAM) and then serves requests from its host, one host call per
 * request.  snapshot-loop.c snapshots it once it waits for its first
 * request and restores that snapshot before every request, so each request
 * meets the same freshly set-up guest: "served" is always 1.
 */
#include <pvm/guest/pvm_guest.h>

#define HC_NEXT  (PVM_HOSTCALL_USER_FIRST + 1) /* returns the next request n, or -1: exit */
#define HC_REPLY (PVM_HOSTCALL_USER_FIRST + 2) /* a0 = primes <= n, a1 = requests served in this run */
#define LIMIT (1u << 20)

static unsigned char composite[LIMIT];
static uint64_t served;

int main(void)
{
    for (uint64_t i = 2; i * i < LIMIT; i++)
        if (!composite[i])
            for (uint64_t j = i * i; j < LIMIT; j += i)
                composite[j] = 1;
    for (;;) {
        uint64_t n = pvm_hostcall(HC_NEXT);
        if (n == (uint64_t)-1)
            return 0;
        uint64_t count = 0;
        for (uint64_t i = 2; i <= n && i < LIMIT; i++)
            count += !composite[i];
        served++;
        pvm_hostcall(HC_REPLY, count, served);
    }
}
