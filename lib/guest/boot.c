/*
 * lib/guest/boot.c - from _start to main(): PVM detection, per-vCPU PVCS
 * and PVM MSR setup (pvm-abi.md §9.4 "guest-side per-CPU setup").
 */
#include <stdbool.h>
#include <stdint.h>

#include "pvm/guest/pvm_guest.h"
#include "percpu.h"
#include "runtime.h"

/* The ABI note the loader checks (pvm/abi.h "ELF note"). */
struct pvm_abi_note {
    uint32_t namesz, descsz, type;
    char name[8];               /* "libpvm\0", padded to 4 bytes */
    uint32_t generation, sdk_version;
};
__attribute__((used, section(".note.pvm"), aligned(4)))
static const struct pvm_abi_note abi_note = {
    sizeof(PVM_ELF_NOTE_NAME), 8, PVM_ELF_NOTE_TYPE_ABI, PVM_ELF_NOTE_NAME,
    PVM_ABI_GENERATION_A, PVM_SDK_VERSION,
};

struct pvm_percpu pvm__percpu[PVM_GUEST_MAX_VCPUS];

/* Shared by all vCPUs; written by vCPU 0 before runtime_ready is set. */
uint64_t pvm__direct_map_base;
uint64_t pvm__kernel_root;
static volatile int runtime_ready;

int main(int argc, char **argv) __attribute__((weak));
int pvm_secondary_main(unsigned cpu_id) __attribute__((weak));
int pvm_secondary_main(unsigned cpu_id)
{
    (void)cpu_id;
    return 0;
}

/* Entry code and symbols of entry.S. */
extern char pvm__event_entry[], pvm__syscall_entry[], pvm__eretu[], pvm__erets[];

/* §8.1: synthetic CPUID leaves 0x40000000 and 0x40000002. */
static bool pvm_detect(void)
{
    uint32_t r[4];
    pvm_cpuid(PVM_KVM_CPUID_SIGNATURE, 0, r);
    if (r[1] != PVM_KVM_SIGNATURE_EBX || r[2] != PVM_KVM_SIGNATURE_ECX ||
        r[3] != PVM_KVM_SIGNATURE_EDX || r[0] < PVM_KVM_CPUID_VENDOR_FEATURES)
        return false;
    pvm_cpuid(PVM_KVM_CPUID_VENDOR_FEATURES, 0, r);
    return r[1] == PVM_CPUID_SIGNATURE;
}

const struct pvm_boot_info *pvm_boot_info(void)
{
    const struct pvm_boot_info *bi;
    __asm__ volatile("movq %%gs:%c1, %0" : "=r"(bi) : "i"(PERCPU_BOOT_INFO));
    return bi;
}

void pvm_cpu_stop(void)
{
    pvm_irq_disable();
    for (;;)
        __asm__ volatile("hlt" ::: "memory"); /* privileged: the host sees HALT */
}

static void setup_cpu(struct pvm_percpu *pc, const struct pvm_boot_info *bi, unsigned id,
                      uint64_t stack_top)
{
    pc->self = pc;
    pc->cpu_id = id;
    pc->boot = bi;
    /* smod GS base now, and on every umod->smod switch (§1.3 step 4). */
    pvm_wrmsr(PVM_MSR_GS_BASE, (uint64_t)pc);
    pvm_wrmsr(PVM_MSR_KERNEL_GS_BASE, (uint64_t)pc);

    /* STAR: supervisor CS/SS 0x10/0x18; ((STAR >> 48) | 3) + 16 must be 0x33 (§2). */
    pvm_wrmsr(PVM_MSR_STAR, ((uint64_t)PVM_USER32_CS << 48) | ((uint64_t)KERNEL_CS << 32));
    pvm_wrmsr(MSR_PVM_VCPU_STRUCT, pvm_virt_to_phys(&pc->pvcs));
    pvm_wrmsr(MSR_PVM_EVENT_ENTRY, (uint64_t)pvm__event_entry);
    pvm_wrmsr(MSR_PVM_SUPERVISOR_REDZONE, 16);
    pvm_wrmsr(MSR_PVM_RETU_RIP, (uint64_t)pvm__eretu);
    pvm_wrmsr(MSR_PVM_RETS_RIP, (uint64_t)pvm__erets);
    pvm_wrmsr(PVM_MSR_LSTAR, (uint64_t)pvm__syscall_entry);
    /* Overwritten by every ERETU; the boot stack until then. */
    pvm_wrmsr(MSR_PVM_SUPERVISOR_RSP, stack_top);
}

/* Split the command line at spaces into argv (argv[0] = "guest"). */
#define MAX_ARGS 32
static char cmdline_copy[PVM_BOOT_CMDLINE_MAX];
static char *argv_buf[MAX_ARGS + 1];

static int split_cmdline(const char *cmdline)
{
    int argc = 0;
    size_t i;
    argv_buf[argc++] = "guest";
    for (i = 0; i < sizeof(cmdline_copy) - 1 && cmdline[i]; i++)
        cmdline_copy[i] = cmdline[i];
    cmdline_copy[i] = 0;
    for (char *p = cmdline_copy; *p && argc < MAX_ARGS;) {
        while (*p == ' ')
            *p++ = 0;
        if (!*p)
            break;
        argv_buf[argc++] = p;
        while (*p && *p != ' ')
            p++;
    }
    argv_buf[argc] = 0;
    return argc;
}

void pvm__boot(const struct pvm_boot_info *bi, uint64_t id)
{
    uint64_t rsp;
    __asm__ volatile("movq %%rsp, %0" : "=r"(rsp));

    if (!pvm_detect()) {
        /* Not PVM: nothing to report to; stop without touching anything. */
        for (;;)
            __asm__ volatile("ud2");
    }
    if (bi->magic != PVM_BOOT_MAGIC || bi->version != 1 || id >= PVM_GUEST_MAX_VCPUS) {
        static const char msg[] = "pvm guest: bad boot info or vCPU id\n";
        pvm_hostcall(PVM_HOSTCALL_CONSOLE_WRITE, msg, sizeof(msg) - 1);
        pvm_hostcall(PVM_HOSTCALL_EXIT, PVM_PANIC_STATUS);
        for (;;)
            __asm__ volatile("ud2");
    }
    if (id == 0) {
        pvm__direct_map_base = bi->direct_map_base;
        pvm__kernel_root = bi->pt_root;
    } else {
        while (!runtime_ready)
            pvm_cpu_relax();
    }
    setup_cpu(&pvm__percpu[id], bi, (unsigned)id, rsp);

    if (id != 0) {
        pvm_secondary_main((unsigned)id);
        pvm_cpu_stop();
    }
    pvm__page_alloc_init(bi->free_gpa, bi->ram_size);
    int argc = split_cmdline(bi->cmdline);
    __atomic_store_n(&runtime_ready, 1, __ATOMIC_RELEASE);
    pvm_exit(main ? main(argc, argv_buf) : 0);
}
