/*
 * multi-vcpu: two vCPUs increment one counter in shared guest memory with
 * atomic instructions.  Run with `pvm-run --vcpus 2`.
 */
#include <pvm/guest/pvm_guest.h>

#define ROUNDS 100000

static uint64_t counter;
static int done;

static void count(void)
{
    for (int i = 0; i < ROUNDS; i++)
        __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED);
}

int pvm_secondary_main(unsigned id)
{
    if (id == 1) {
        count();
        __atomic_store_n(&done, 1, __ATOMIC_RELEASE);
    }
    return 0;
}

int main(void)
{
    const struct pvm_boot_info *bi = pvm_boot_info();
    if (bi->nr_vcpus < 2) {
        pvm_printf("multi-vcpu: needs 2 vCPUs, got %u (run with --vcpus 2)\n", bi->nr_vcpus);
        return 1;
    }
    count();
    while (!__atomic_load_n(&done, __ATOMIC_ACQUIRE))
        pvm_cpu_relax();
    uint64_t total = __atomic_load_n(&counter, __ATOMIC_RELAXED);
    pvm_printf("multi-vcpu: 2 vCPUs, counter %lu (expected %u)\n", (unsigned long)total, 2 * ROUNDS);
    return total == 2 * ROUNDS ? 0 : 1;
}
