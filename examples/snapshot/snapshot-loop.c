/*
 * snapshot-loop - a request loop over one snapshot: boot snap-server.elf
 * once, snapshot it when it asks for its first request, then for every
 * request: restore, answer the pending "next request" host call, run to the
 * reply.  Restores cost O(pages the last request wrote), not O(guest RAM).
 *
 *   snapshot-loop snap-server.elf N...    (prints the number of primes <= N)
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <pvm/abi.h>
#include <pvm/pvm.h>

#define HC_NEXT  PVM_HOSTCALL(PVM_HOSTCALL_USER_FIRST + 1)
#define HC_REPLY PVM_HOSTCALL(PVM_HOSTCALL_USER_FIRST + 2)

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* Run until host call @want; console writes are printed on the way. */
static int run_until(pvm_vcpu *cpu, struct pvm_exit *e, uint64_t want)
{
    for (;;) {
        if (pvm_vcpu_run(cpu, e) < 0)
            return -1;
        if (e->reason != PVM_EXIT_HYPERCALL)
            return -1;
        if (e->u.hypercall.nr == want)
            return 0;
        e->u.hypercall.ret = (uint64_t)-38; /* -ENOSYS: nothing else is served here */
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s snap-server.elf N...\n", argv[0]);
        return 2;
    }
    pvm_vm *vm;
    pvm_vcpu *cpu;
    struct pvm_exit e;
    memset(&e, 0, sizeof(e));
    if (pvm_vm_create(&vm, NULL) < 0 || pvm_vm_load_elf(vm, argv[1], NULL, NULL) < 0 ||
        pvm_vcpu_create(&cpu, vm, NULL) < 0 || pvm_vcpu_setup_boot(cpu, 0) < 0) {
        fprintf(stderr, "%s: %s\n", argv[0], pvm_last_error());
        return 1;
    }
    pvm_snapshot *snap;
    double t0 = now_us();
    if (run_until(cpu, &e, HC_NEXT) < 0 || pvm_vm_snapshot(vm, &snap) < 0) {
        fprintf(stderr, "%s: set-up failed: %s\n", argv[0], pvm_last_error());
        return 1;
    }
    fprintf(stderr, "boot and set-up: %.0f us\n", now_us() - t0);
    const struct pvm_exit ready = e; /* the "next request" call the snapshot waits in */
    for (int i = 2; i < argc; i++) {
        t0 = now_us();
        if (pvm_vm_restore(vm, snap) < 0) {
            fprintf(stderr, "%s: restore: %s\n", argv[0], pvm_last_error());
            return 1;
        }
        double t1 = now_us();
        e = ready;
        e.u.hypercall.ret = strtoull(argv[i], NULL, 0);
        if (run_until(cpu, &e, HC_REPLY) < 0) {
            fprintf(stderr, "%s: request %s failed (exit %u)\n", argv[0], argv[i], e.reason);
            return 1;
        }
        double t2 = now_us();
        printf("primes <= %s: %" PRIu64 " (requests served by this run: %" PRIu64 ")\n", argv[i],
               e.u.hypercall.args[0], e.u.hypercall.args[1]);
        fprintf(stderr, "restore %.1f us, request %.1f us\n", t1 - t0, t2 - t1);
    }
    pvm_snapshot_free(snap);
    pvm_vm_destroy(vm);
    return 0;
}
