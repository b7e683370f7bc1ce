/*
 * pvm/abi.h - the PVM "Gen A" guest ABI (RFC kvm-pvm, Feb 2024), byte for byte.
 *
 * Freestanding: includes only the compiler's own <stdint.h> and <stddef.h>, so
 * the same header serves host code, guest (unikernel) code and the kmod/
 * module (with the kernel's own types).  Every offset and
 * size is pinned with _Static_assert.  Section numbers (§) refer to
 * shared/docs/pvm-abi.md.
 *
 * Besides the ABI proper, the end of this file defines libpvm's own guest
 * conventions (host-call range, boot-info block, ELF note), marked as such.
 */
#ifndef PVM_ABI_H
#define PVM_ABI_H

#if defined(__KERNEL__)
#include <linux/stddef.h> /* the kmod/ module (deliver.c) */
#include <linux/types.h>
#elif !defined(__ASSEMBLER__)
#include <stddef.h>
#include <stdint.h>
#endif

/* ---- §2 PVM virtual MSRs (Gen A numbering) ---------------------------- */
#define PVM_VIRTUAL_MSR_BASE             0x4b564df0u
#define PVM_VIRTUAL_MSR_MAX_NR           15u
#define MSR_PVM_LINEAR_ADDRESS_RANGE     0x4b564df0u
#define MSR_PVM_VCPU_STRUCT              0x4b564df1u
#define MSR_PVM_SUPERVISOR_RSP           0x4b564df2u
#define MSR_PVM_SUPERVISOR_REDZONE       0x4b564df3u
#define MSR_PVM_EVENT_ENTRY              0x4b564df4u
#define MSR_PVM_RETU_RIP                 0x4b564df5u
#define MSR_PVM_RETS_RIP                 0x4b564df6u
#define MSR_PVM_SWITCH_CR3               0x4b564df7u

/* Standard MSRs with PVM-specific handling (§2). */
#define PVM_MSR_EFER                     0xc0000080u
#define PVM_MSR_STAR                     0xc0000081u
#define PVM_MSR_LSTAR                    0xc0000082u
#define PVM_MSR_CSTAR                    0xc0000083u
#define PVM_MSR_SYSCALL_MASK             0xc0000084u
#define PVM_MSR_FS_BASE                  0xc0000100u
#define PVM_MSR_GS_BASE                  0xc0000101u
#define PVM_MSR_KERNEL_GS_BASE           0xc0000102u
#define PVM_MSR_TSC_AUX                  0xc0000103u
#define PVM_MSR_IA32_SYSENTER_CS         0x00000174u
#define PVM_MSR_IA32_SYSENTER_ESP        0x00000175u
#define PVM_MSR_IA32_SYSENTER_EIP        0x00000176u
#define PVM_MSR_IA32_DEBUGCTL            0x000001d9u
#define PVM_MSR_IA32_TSC                 0x00000010u

/* Value MSR_PVM_RETU_RIP / MSR_PVM_RETS_RIP read back after reset (§2). */
#define PVM_RET_RIP_RESET_READBACK       0xfffffffffffffffeull

/* ---- §8.2 allowed linear-address range --------------------------------- */
#define PVM_LA_RANGE_FILLER_MASK         0xff00ff00ff00ff00ull
#define PVM_LA_RANGE_FIELD(v, n)         ((unsigned)(((v) >> (16 * (n))) & 0x1ffu))
#define PVM_LA_RANGE_PML4_START(v)       PVM_LA_RANGE_FIELD(v, 0)
#define PVM_LA_RANGE_PML4_END(v)         PVM_LA_RANGE_FIELD(v, 1)
#define PVM_LA_RANGE_PML5_START(v)       PVM_LA_RANGE_FIELD(v, 2)
#define PVM_LA_RANGE_PML5_END(v)         PVM_LA_RANGE_FIELD(v, 3)
#define PVM_LA_RANGE_MAKE(p4s, p4e, p5s, p5e)                                   \
    ((uint64_t)(0xfe00u | (p4s)) | ((uint64_t)(0xfe00u | (p4e)) << 16) |        \
     ((uint64_t)(0xfe00u | (p5s)) << 32) | ((uint64_t)(0xfe00u | (p5e)) << 48))

/* ---- §3 the PVCS (struct pvm_vcpu_struct), 128 bytes ------------------- */
#define PVM_EVENT_FLAGS_IP_BIT           8
#define PVM_EVENT_FLAGS_IF_BIT           9
#define PVM_EVENT_FLAGS_IP               (1ull << PVM_EVENT_FLAGS_IP_BIT)
#define PVM_EVENT_FLAGS_IF               (1ull << PVM_EVENT_FLAGS_IF_BIT)

#ifndef __ASSEMBLER__
struct pvm_vcpu_struct {
    uint64_t event_flags;   /*   0 */
    uint32_t event_errcode; /*   8 */
    uint32_t event_vector;  /*  12 */
    uint64_t cr2;           /*  16 */
    uint64_t reserved0[5];  /*  24 */
    uint16_t user_cs;       /*  64 */
    uint16_t user_ss;       /*  66 */
    uint32_t reserved1;     /*  68 */
    uint64_t reserved2;     /*  72 */
    uint64_t user_gsbase;   /*  80 */
    uint32_t eflags;        /*  88 */
    uint32_t pkru;          /*  92 */
    uint64_t rip;           /*  96 */
    uint64_t rsp;           /* 104 */
    uint64_t rcx;           /* 112 */
    uint64_t r11;           /* 120 */
};

_Static_assert(sizeof(struct pvm_vcpu_struct) == 128, "PVCS is 128 bytes");
_Static_assert(offsetof(struct pvm_vcpu_struct, event_flags) == 0, "PVCS.event_flags");
_Static_assert(offsetof(struct pvm_vcpu_struct, event_errcode) == 8, "PVCS.event_errcode");
_Static_assert(offsetof(struct pvm_vcpu_struct, event_vector) == 12, "PVCS.event_vector");
_Static_assert(offsetof(struct pvm_vcpu_struct, cr2) == 16, "PVCS.cr2");
_Static_assert(offsetof(struct pvm_vcpu_struct, reserved0) == 24, "PVCS.reserved0");
_Static_assert(offsetof(struct pvm_vcpu_struct, user_cs) == 64, "PVCS.user_cs");
_Static_assert(offsetof(struct pvm_vcpu_struct, user_ss) == 66, "PVCS.user_ss");
_Static_assert(offsetof(struct pvm_vcpu_struct, reserved1) == 68, "PVCS.reserved1");
_Static_assert(offsetof(struct pvm_vcpu_struct, reserved2) == 72, "PVCS.reserved2");
_Static_assert(offsetof(struct pvm_vcpu_struct, user_gsbase) == 80, "PVCS.user_gsbase");
_Static_assert(offsetof(struct pvm_vcpu_struct, eflags) == 88, "PVCS.eflags");
_Static_assert(offsetof(struct pvm_vcpu_struct, pkru) == 92, "PVCS.pkru");
_Static_assert(offsetof(struct pvm_vcpu_struct, rip) == 96, "PVCS.rip");
_Static_assert(offsetof(struct pvm_vcpu_struct, rsp) == 104, "PVCS.rsp");
_Static_assert(offsetof(struct pvm_vcpu_struct, rcx) == 112, "PVCS.rcx");
_Static_assert(offsetof(struct pvm_vcpu_struct, r11) == 120, "PVCS.r11");
#endif /* !__ASSEMBLER__ */

/* Same offsets as plain numbers, for assembly (.S files include this header). */
#define PVCS_event_flags    0
#define PVCS_event_errcode  8
#define PVCS_event_vector   12
#define PVCS_cr2            16
#define PVCS_user_cs        64
#define PVCS_user_ss        66
#define PVCS_user_gsbase    80
#define PVCS_eflags         88
#define PVCS_pkru           92
#define PVCS_rip            96
#define PVCS_rsp            104
#define PVCS_rcx            112
#define PVCS_r11            120

/* ---- §4 supervisor event frame, 64 bytes (lowest address first) -------- */
#ifndef __ASSEMBLER__
struct pvm_supervisor_event {
    uint64_t errcode; /*  0: (vector << 32) | error code */
    uint64_t rip;     /*  8 */
    uint64_t cs;      /* 16: STAR[47:32] & ~3 */
    uint64_t rflags;  /* 24: guest view, virtual IF */
    uint64_t rsp;     /* 32 */
    uint64_t ss;      /* 40: (STAR[47:32] & ~3) + 8 */
    uint64_t rcx;     /* 48 */
    uint64_t r11;     /* 56 */
};

_Static_assert(sizeof(struct pvm_supervisor_event) == 64, "frame is 64 bytes");
_Static_assert(offsetof(struct pvm_supervisor_event, errcode) == 0, "frame.errcode");
_Static_assert(offsetof(struct pvm_supervisor_event, rip) == 8, "frame.rip");
_Static_assert(offsetof(struct pvm_supervisor_event, cs) == 16, "frame.cs");
_Static_assert(offsetof(struct pvm_supervisor_event, rflags) == 24, "frame.rflags");
_Static_assert(offsetof(struct pvm_supervisor_event, rsp) == 32, "frame.rsp");
_Static_assert(offsetof(struct pvm_supervisor_event, ss) == 40, "frame.ss");
_Static_assert(offsetof(struct pvm_supervisor_event, rcx) == 48, "frame.rcx");
_Static_assert(offsetof(struct pvm_supervisor_event, r11) == 56, "frame.r11");
#endif /* !__ASSEMBLER__ */

#define PVM_FRAME_errcode 0
#define PVM_FRAME_rip     8
#define PVM_FRAME_cs      16
#define PVM_FRAME_rflags  24
#define PVM_FRAME_rsp     32
#define PVM_FRAME_ss      40
#define PVM_FRAME_rcx     48
#define PVM_FRAME_r11     56
#define PVM_FRAME_SIZE    64

/* ---- §5.2 / §5.6 event entry ------------------------------------------- */
#define PVM_ENTRY_USER                   0    /* any umod event but SYSCALL */
#define PVM_ENTRY_SUPERVISOR_EXCEPTION   256  /* smod, vector < 32 */
#define PVM_ENTRY_SUPERVISOR_INTERRUPT   512  /* smod, vector >= 32 */
#define PVM_ENTRY_RFLAGS                 0x2ull
#define PVM_ENTRY_R11                    0x202ull

/* ---- §1.1 Linux host user selectors ------------------------------------ */
#define PVM_USER32_CS                    0x23u
#define PVM_USER_DS                      0x2bu
#define PVM_USER_CS                      0x33u

/* ---- §7 hypercalls ----------------------------------------------------- */
#define PVM_HC_SPECIAL_BASE              0x17088200ull
#define PVM_HC_SPECIAL_MAX_NR            256u
#define PVM_HC_LOAD_PGTBL                (PVM_HC_SPECIAL_BASE + 0)
#define PVM_HC_IRQ_WIN                   (PVM_HC_SPECIAL_BASE + 1)
#define PVM_HC_IRQ_HALT                  (PVM_HC_SPECIAL_BASE + 2)
#define PVM_HC_TLB_FLUSH                 (PVM_HC_SPECIAL_BASE + 3)
#define PVM_HC_TLB_FLUSH_CURRENT         (PVM_HC_SPECIAL_BASE + 4)
#define PVM_HC_TLB_INVLPG                (PVM_HC_SPECIAL_BASE + 5)
#define PVM_HC_LOAD_GS                   (PVM_HC_SPECIAL_BASE + 6)
#define PVM_HC_RDMSR                     (PVM_HC_SPECIAL_BASE + 7)
#define PVM_HC_WRMSR                     (PVM_HC_SPECIAL_BASE + 8)
#define PVM_HC_LOAD_TLS                  (PVM_HC_SPECIAL_BASE + 9)
#define PVM_LOAD_PGTBL_FLAGS_TLB         (1ull << 0)
#define PVM_LOAD_PGTBL_FLAGS_LA57        (1ull << 1)

/* Generic KVM hypercalls (§7.3) and their error returns. */
#define PVM_KVM_HC_VAPIC_POLL_IRQ        1
#define PVM_KVM_HC_MMU_OP                2
#define PVM_KVM_HC_FEATURES              3
#define PVM_KVM_HC_PPC_MAP_MAGIC_PAGE    4
#define PVM_KVM_HC_KICK_CPU              5
#define PVM_KVM_HC_CLOCK_PAIRING         9
#define PVM_KVM_HC_SEND_IPI              10
#define PVM_KVM_HC_SCHED_YIELD           11
#define PVM_KVM_HC_MAP_GPA_RANGE         12
#define PVM_KVM_ENOSYS                   1000
#define PVM_KVM_EOPNOTSUPP               95
#define PVM_KVM_EPERM                    1

/* ---- §6, §8.1 synthetic CPUID and detection ----------------------------- */
#define PVM_SYNTHETIC_CPUID_BYTES        0x0f, 0x01, 0x3c, 0x25, 0x50, 0x56, 0x4d, 0xff, 0x0f, 0xa2
#define PVM_SYNTHETIC_CPUID_LEN          10
#define PVM_SYNTHETIC_CPUID_ADDRESS      0xffffffffff4d5650ull
#define PVM_KVM_CPUID_SIGNATURE          0x40000000u
#define PVM_KVM_CPUID_FEATURES           0x40000001u
#define PVM_KVM_CPUID_VENDOR_FEATURES    0x40000002u
#define PVM_CPUID_SIGNATURE              0x4d5650u /* 'P','V','M',0 in EBX */
#define PVM_KVM_SIGNATURE_EBX            0x4b4d564bu /* "KVMK" */
#define PVM_KVM_SIGNATURE_ECX            0x564b4d56u /* "VMKV" */
#define PVM_KVM_SIGNATURE_EDX            0x0000004du /* "M\0\0\0" */

/* ---- x86 architectural numbers used by the ABI ------------------------- */
#define PVM_VEC_DE   0
#define PVM_VEC_DB   1
#define PVM_VEC_NMI  2
#define PVM_VEC_BP   3
#define PVM_VEC_OF   4
#define PVM_VEC_BR   5
#define PVM_VEC_UD   6
#define PVM_VEC_NM   7
#define PVM_VEC_DF   8
#define PVM_VEC_TS   10
#define PVM_VEC_NP   11
#define PVM_VEC_SS   12
#define PVM_VEC_GP   13
#define PVM_VEC_PF   14
#define PVM_VEC_MF   16
#define PVM_VEC_AC   17
#define PVM_VEC_MC   18
#define PVM_VEC_XM   19
#define PVM_VEC_INT80 0x80

/* #PF error-code bits */
#define PVM_PFEC_P    (1u << 0)
#define PVM_PFEC_W    (1u << 1)
#define PVM_PFEC_U    (1u << 2)
#define PVM_PFEC_RSVD (1u << 3)
#define PVM_PFEC_I    (1u << 4)
#define PVM_PFEC_PK   (1u << 5)

/* Page-table entry bits (4-level x86-64 paging). */
#define PVM_PTE_P     (1ull << 0)
#define PVM_PTE_W     (1ull << 1)
#define PVM_PTE_U     (1ull << 2)
#define PVM_PTE_PWT   (1ull << 3)
#define PVM_PTE_PCD   (1ull << 4)
#define PVM_PTE_A     (1ull << 5)
#define PVM_PTE_D     (1ull << 6)
#define PVM_PTE_PS    (1ull << 7)
#define PVM_PTE_G     (1ull << 8)
#define PVM_PTE_NX    (1ull << 63)
#define PVM_PTE_ADDR  0x000ffffffffff000ull

/* ======================================================================= */
/* libpvm guest conventions (not part of PVM Gen A).                       */
/* ======================================================================= */

/*
 * Hypercall number spaces (RAX of an smod SYSCALL):
 *   [PVM_HC_SPECIAL_BASE, +256)      PVM hypercalls, handled by the library;
 *   [0, PVM_KVM_HC_RANGE_END)        generic KVM hypercalls, handled as KVM does
 *                                    (unknown numbers return -KVM_ENOSYS);
 *   [PVM_HOSTCALL_BASE, +2^32)       host calls: delivered to the application
 *                                    (handler or PVM_EXIT_HYPERCALL).
 * Any other number also reaches the application as PVM_EXIT_HYPERCALL.
 * Host-call arguments: RBX, R10, RDX, RSI, RDI, R8 (a0..a5); result in RAX.
 */
#define PVM_KVM_HC_RANGE_END             0x10000ull
#define PVM_HOSTCALL_BASE                0x4c50564d00000000ull /* "MVPL" */
#define PVM_HOSTCALL(n)                  (PVM_HOSTCALL_BASE + (uint32_t)(n))

/* Host calls every libpvm launcher understands (pvm-run, the SDK console). */
#define PVM_HOSTCALL_CONSOLE_WRITE       0   /* a0 = gva of bytes, a1 = length   */
#define PVM_HOSTCALL_EXIT                1   /* a0 = exit status                  */
#define PVM_HOSTCALL_USER_FIRST          0x100 /* application-defined from here */

/* Boot-info block the loader places in guest memory; RDI holds its GVA at entry. */
#define PVM_BOOT_MAGIC                   0x544f4f424d5650ull /* "PVMBOOT" */
#define PVM_BOOT_MAX_REGIONS             16
#define PVM_BOOT_CMDLINE_MAX             1024

#ifndef __ASSEMBLER__
struct pvm_boot_region {
    uint64_t gpa;
    uint64_t size;
    uint32_t type; /* 1 = RAM usable by the guest, 2 = reserved (image, tables) */
    uint32_t pad;
};
_Static_assert(sizeof(struct pvm_boot_region) == 24, "boot region");

struct pvm_boot_info {
    uint64_t magic;          /* PVM_BOOT_MAGIC */
    uint32_t version;        /* 1 */
    uint32_t vcpu_id;
    uint32_t nr_vcpus;
    uint32_t nr_regions;
    uint64_t la_range;       /* value of MSR_PVM_LINEAR_ADDRESS_RANGE */
    uint64_t direct_map_base;/* GVA where the loader mapped all RAM 1:1 (gva = base + gpa) */
    uint64_t free_gpa;       /* first GPA not used by image or boot tables */
    uint64_t ram_size;
    uint64_t pt_root;        /* GPA of the initial page-table root (CR3) */
    struct pvm_boot_region regions[PVM_BOOT_MAX_REGIONS];
    char cmdline[PVM_BOOT_CMDLINE_MAX];
};
_Static_assert(offsetof(struct pvm_boot_info, regions) == 64, "boot regions");
_Static_assert(sizeof(struct pvm_boot_info) == 64 + 24 * 16 + 1024, "boot info");
#endif /* !__ASSEMBLER__ */

/* ELF note stamped into every SDK guest; the loader checks it. */
#define PVM_ELF_NOTE_NAME                "libpvm"
#define PVM_ELF_NOTE_TYPE_ABI            0x50564d01u
#define PVM_ABI_GENERATION_A             1u

#endif /* PVM_ABI_H */
