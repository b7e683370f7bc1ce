/*
 * lib/backends/kvm/kvm.h - the kvm backend: the hypervisor core over a
 * /dev/kvm vCPU (the "trampoline" provider).
 *
 * A KVM VM in long mode whose page tables are the shadow MMU's, built by the
 * library in guest-physical memory the guest cannot map.  All PVM guest code
 * (smod and umod) runs at CPL 3.  Every IDT vector and the SYSCALL entry point
 * at a ring-0 trampoline of one instruction, HLT, which exits to the library
 * (no in-kernel irqchip: HLT always exits).  Which HLT tells the vector; the
 * library reads the frame the hardware pushed and resumes the guest directly
 * at CPL 3 by setting its registers (KVM_CAP_SYNC_REGS where present).  No
 * other ring-0 code ever runs.
 *
 * Guest-physical layout of the KVM VM (one per library vCPU):
 *   [0, max_memory)          the VM's guest-RAM memfd, by memfd offset
 *   [KVM_PRIV_GPA(max), +KVM_PRIV_SIZE)  the private area: GDT, IDT, TSS,
 *                            trampoline, ring-0 stack, page tables
 * Guest-virtual: the guest window is the native backend's (lower half,
 * [KVM_GUEST_LO, KVM_GUEST_HI)), so a guest sees the same machine on both;
 * the private area is mapped supervisor-only at KVM_KBASE (PML4 slot 511).
 *
 * The other mode, for Gen A kvm-pvm hosts, is gena.h; it shares the probe
 * (kvm_host) and the kick helpers declared here.
 */
#ifndef PVM_KVM_H
#define PVM_KVM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KVM_GUEST_LO 0x10000ull
#define KVM_GUEST_HI 0x7f0000000000ull
#define KVM_KBASE 0xffffff8000000000ull

/* Private area, offsets. */
#define KVM_OFF_GDT 0x0000u
#define KVM_OFF_IDT 0x1000u
#define KVM_OFF_TSS 0x2000u
#define KVM_OFF_TRAMP 0x3000u
#define KVM_OFF_STACK 0x4000u          /* two pages; RSP0 is their top */
#define KVM_STACK_TOP 0x6000u
#define KVM_OFF_KPDPT 0x6000u          /* the kernel half, shared by every slot's PML4 */
#define KVM_OFF_KPD 0x7000u
#define KVM_OFF_KPT 0x8000u
#define KVM_OFF_POOL 0x10000u          /* page-table pages */
#define KVM_POOL_PAGES 65536u          /* 256 MiB of address space, touched only as used: 4 slots x 4096 mappings x 3 tables fit */
#define KVM_PRIV_SIZE (KVM_OFF_POOL + (uint64_t)KVM_POOL_PAGES * 4096)
#define KVM_MAPPED_PAGES 6             /* GDT, IDT, TSS, trampoline, stack: mapped at KVM_KBASE */

/* Trampoline: vector v's gate points at KVM_OFF_TRAMP + v, SYSCALL at + KVM_TRAMP_SYSCALL. */
#define KVM_TRAMP_SYSCALL 256u
#define KVM_TRAMP_SIZE 257u

/* Selectors (Linux's layout: the guest's 0x23/0x2b/0x33 are real descriptors). */
#define KVM_SEL_KCODE 0x10u
#define KVM_SEL_KDATA 0x18u
#define KVM_SEL_UCODE32 0x23u
#define KVM_SEL_UDATA 0x2bu
#define KVM_SEL_UCODE 0x33u
#define KVM_SEL_TSS 0x40u
#define KVM_GDT_ENTRIES 10             /* TSS takes two */

/* Page-table entry bits. */
#define KVM_PTE_P (1ull << 0)
#define KVM_PTE_W (1ull << 1)
#define KVM_PTE_U (1ull << 2)
#define KVM_PTE_A (1ull << 5)
#define KVM_PTE_D (1ull << 6)
#define KVM_PTE_PS (1ull << 7)
#define KVM_PTE_NX (1ull << 63)
#define KVM_PTE_ADDR 0x000ffffffffff000ull

/* Guest-physical base of the private area for a VM of @max_memory bytes. */
static inline uint64_t kvm_priv_gpa(uint64_t max_memory)
{
    return (max_memory + (1ull << 30) - 1) & ~((1ull << 30) - 1);
}

/* ---- probe (kvm.c): /dev/kvm as probed once per process --------------------- */

struct kvm_cpuid2;
struct kvm_run;
struct kvm_host {
    int rc;                       /* 0: the standard mode can run here; else PVM_ENODEV and why */
    const char *why;
    int fd_ok;                    /* /dev/kvm opened and speaks API 12 */
    int mmap_size;                /* KVM_GET_VCPU_MMAP_SIZE */
    bool immediate_exit;          /* KVM_CAP_IMMEDIATE_EXIT (kicks need it) */
    bool sync_regs;               /* KVM_CAP_SYNC_REGS with regs + sregs */
    bool tdp;                     /* KVM uses nested paging (kvm_amd npt / kvm_intel ept) */
    bool gen_a;                   /* a Gen A kvm-pvm host (kvm_is_gen_a) */
    unsigned phys_bits;
    const struct kvm_cpuid2 *cpuid;   /* KVM_GET_SUPPORTED_CPUID */
    const uint32_t *msrs;             /* KVM_GET_MSR_INDEX_LIST */
    unsigned nr_msrs;
};
const struct kvm_host *kvm_host(void);

/*
 * Gen A detection (pure): KVM_GET_SUPPORTED_CPUID has leaf 0x40000002 with
 * EBX 0x4d5650 ("PVM") and the MSR index list holds all of 0x4b564df0-0x4b564df7.
 */
bool kvm_is_gen_a(const struct kvm_cpuid2 *cpuid, const uint32_t *msrs, unsigned nr_msrs);

/* ---- kicks (kvm.c), shared by both modes (the signal's handler: pvm_hv_install_kick_handler) ---- */

/*
 * End the KVM_RUN on @run promptly: set immediate_exit (a KVM_RUN about to
 * start returns -EINTR at once) and send @sig to the thread in *@tid (0:
 * none).  Any thread, async-signal-safe.
 */
void kvm_kick_run(struct kvm_run *run, const int *tid, int sig);

/* One MSR through KVM_SET_MSRS on @vcpu_fd: 0 or -1 (errno). */
int kvm_set_msr(int vcpu_fd, uint32_t index, uint64_t value);

/* ---- layout.c: the private area's fixed contents (pure) ------------------- */

/* Fill the first KVM_OFF_POOL bytes of the private area at guest-physical @priv_gpa. */
void kvm_layout_build(uint8_t *priv, uint64_t priv_gpa);

/* What a trampoline exit means. */
struct kvm_trap_frame {
    bool syscall;          /* SYSCALL: registers as the instruction left them */
    unsigned vector;       /* else the IDT vector */
    bool has_error;
    uint64_t error_code;
    uint64_t rip, cs, rflags, rsp, ss;  /* the frame the hardware pushed (not for SYSCALL) */
};
/* Does vector @v push an error code? */
bool kvm_vector_has_error(unsigned v);
/*
 * Decode a trampoline exit: @rip is the guest RIP after the HLT, @rsp the
 * ring-0 RSP, @priv the private area.  Returns 0, or -1 if the exit did not
 * come from a trampoline entry with a well-formed frame.
 */
int kvm_decode_exit(const uint8_t *priv, uint64_t rip, uint64_t rsp, struct kvm_trap_frame *out);

/* ---- pagetable.c: one PML4 per slot, tables from the pool (pure) ---------- */

#define KVM_MAX_SLOTS 4

struct kvm_ptables {
    uint8_t *priv;                  /* private area (host) */
    uint64_t priv_gpa;
    uint32_t pml4[KVM_MAX_SLOTS];   /* pool page of each slot's PML4, 0 = none yet */
    uint8_t *owner;                 /* per pool page: slot + 1, 0 = free */
    uint32_t next_free;             /* search hint */
    uint32_t used;
    bool replaced;                  /* kvm_pt_map overwrote a present entry: the TLB may hold it */
};
int kvm_pt_init(struct kvm_ptables *pt, uint8_t *priv, uint64_t priv_gpa);
void kvm_pt_fini(struct kvm_ptables *pt);
/* Guest-physical address of @slot's PML4 (made on first use), 0 when the pool is exhausted. */
uint64_t kvm_pt_root(struct kvm_ptables *pt, unsigned slot);
/* Map [gva, gva+len) to [gpa, gpa+len): @w writable, @x executable; user pages.  0 or -1 (pool full). */
int kvm_pt_map(struct kvm_ptables *pt, unsigned slot, uint64_t gva, uint64_t len, uint64_t gpa, bool w, bool x);
/* Remove every mapping in [gva, gva+len) (a large page overlapping it goes whole). */
void kvm_pt_unmap(struct kvm_ptables *pt, unsigned slot, uint64_t gva, uint64_t len);
/* Drop every mapping of @slot and free its tables. */
void kvm_pt_reset(struct kvm_ptables *pt, unsigned slot);
/* Translate through @slot's tables (tests): 0 and *gpa, or -1. */
int kvm_pt_lookup(const struct kvm_ptables *pt, unsigned slot, uint64_t gva, uint64_t *gpa, uint64_t *pte);

#endif /* PVM_KVM_H */
