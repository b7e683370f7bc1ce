/*
 * pvm/pvm.h - the libpvm host API.
 *
 * libpvm creates lightweight PVM guests, maps memory into them, injects events
 * and runs their vCPUs.  The PVM Gen A event-delivery ABI (see pvm/abi.h) is
 * handled by the library; the application sees only the exits listed in
 * enum pvm_exit_reason.
 *
 * Conventions
 *  - Every function that can fail returns 0 or a negative PVM_E* code.  After a
 *    failure pvm_last_error() holds a message for the calling thread that says
 *    which argument or operation failed and why.  A failed call leaves no
 *    half-made object behind.
 *  - Handles are opaque and allocated by the library; *_destroy() accepts NULL.
 *    Using a handle after it was destroyed is undefined behaviour.
 *  - Option structs are versioned: initialise them with their *_INIT macro.
 *  - Guest-physical addresses are pvm_gpa_t, guest-virtual ones pvm_gva_t.
 *  - Thread safety is stated per function.  "Any thread" means the function
 *    may be called concurrently with any other function on the same object
 *    except that object's destroy.
 *
 * Nothing here installs process-wide state behind the caller's back, except
 * what pvm_vm_options documents (the native backend's kick signal).
 */
#ifndef PVM_PVM_H
#define PVM_PVM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(PVM_BUILDING_LIBRARY)
#define PVM_EXPORT __attribute__((visibility("default")))
#else
#define PVM_EXPORT
#endif

/* ---- version ---------------------------------------------------------- */

#define PVM_VERSION_MAJOR 0
#define PVM_VERSION_MINOR 1
#define PVM_VERSION_PATCH 0
/** The version this header describes, as one number: 0x00MMmmpp. */
#define PVM_VERSION                                                           \
    ((PVM_VERSION_MAJOR << 16) | (PVM_VERSION_MINOR << 8) | PVM_VERSION_PATCH)

/**
 * The version of the library actually loaded, encoded like PVM_VERSION.
 * Thread safety: any thread.
 */
PVM_EXPORT unsigned pvm_version(void);
/** The loaded library's version as "MAJOR.MINOR.PATCH"; static storage. Any thread. */
PVM_EXPORT const char *pvm_version_string(void);

/* ---- errors ----------------------------------------------------------- */

/*
 * X-macro list of error codes: (NAME, value, description).  Values that have a
 * POSIX meaning use the negative errno; library-specific ones start at -1000.
 */
#define PVM_ERRNO_MAP(X)                                                       \
    X(EPERM, -1, "operation not permitted")                                   \
    X(ENOENT, -2, "no such file or object")                                   \
    X(EIO, -5, "input/output error")                                          \
    X(EBADF, -9, "bad file descriptor")                                       \
    X(EAGAIN, -11, "resource temporarily unavailable")                        \
    X(ENOMEM, -12, "out of memory")                                           \
    X(EFAULT, -14, "bad address")                                             \
    X(EBUSY, -16, "resource busy")                                            \
    X(EEXIST, -17, "overlaps an existing object")                             \
    X(ENODEV, -19, "backend not available")                                   \
    X(EINVAL, -22, "invalid argument")                                        \
    X(ERANGE, -34, "value out of range")                                      \
    X(ENOSYS, -38, "function not implemented")                                \
    X(ENOTSUP, -95, "operation not supported by this backend")                \
    X(EVERSION, -1001, "unsupported option-struct version")                   \
    X(EBADELF, -1002, "invalid or unsupported ELF file")                      \
    X(ESTATE, -1003, "object is in the wrong state for this call")            \
    X(EINTERNAL, -1004, "internal error")                                    \
    X(EBADSNAP, -1005, "invalid, corrupt or truncated snapshot file")

/** Error codes returned (negated) by libpvm functions. */
enum pvm_error {
    PVM_OK = 0,
#define PVM__ERR_ENUM(name, val, desc) PVM_##name = (val),
    PVM_ERRNO_MAP(PVM__ERR_ENUM)
#undef PVM__ERR_ENUM
};

/**
 * A static description of error code @err (0 gives "success"; unknown codes
 * give "unknown error").  Never NULL.  Thread safety: any thread.
 */
PVM_EXPORT const char *pvm_strerror(int err);
/** The symbolic name of @err, e.g. "PVM_EINVAL"; never NULL.  Any thread. */
PVM_EXPORT const char *pvm_err_name(int err);
/**
 * Detail message of the last failed libpvm call made by the calling thread,
 * e.g. "pvm_vm_map_memory: gpa 0x1000 size 0x2000 overlaps the region at
 * 0x0".  Never NULL ("" before any failure); valid until the thread's next
 * libpvm call.  Thread safety: per thread.
 */
PVM_EXPORT const char *pvm_last_error(void);

/* ---- logging ---------------------------------------------------------- */

enum pvm_log_level {
    PVM_LOG_ERROR = 0,
    PVM_LOG_WARN = 1,
    PVM_LOG_INFO = 2,
    PVM_LOG_DEBUG = 3,
    /**
     * One line per guest event the library delivers (vector, mode and RIP it
     * interrupted, entry it went to).  On the native backend a vCPU created
     * while trace messages are wanted runs without the stub fast path, so
     * that every event is seen; otherwise the cost when off is one check per
     * event (docs/benchmarks.md).
     */
    PVM_LOG_TRACE = 4,
};

/** Log sink: @msg is one line without trailing newline, valid only during the call. */
typedef void (*pvm_log_fn)(void *opaque, enum pvm_log_level level, const char *msg);

/**
 * Install a process-wide log sink; messages with level <= @max_level are
 * passed to @fn.  @fn == NULL (the default) discards all messages, except
 * that the environment variable PVM_LOG=error|warn|info|debug|trace sends
 * them to stderr.  @fn may be called from any thread that calls into libpvm.
 * Thread safety: any thread; takes effect for messages issued afterwards.
 */
PVM_EXPORT void pvm_set_log_callback(pvm_log_fn fn, void *opaque, enum pvm_log_level max_level);

/* ---- basic types ------------------------------------------------------ */

typedef uint64_t pvm_gpa_t; /**< guest-physical address */
typedef uint64_t pvm_gva_t; /**< guest-virtual (linear) address */

typedef struct pvm_vm pvm_vm;     /**< a virtual machine (opaque) */
typedef struct pvm_vcpu pvm_vcpu; /**< one virtual CPU (opaque) */

/* ---- backends --------------------------------------------------------- */

enum pvm_backend {
    PVM_BACKEND_AUTO = 0,   /**< kmod, then kvm, where its guest events beat native's (a one-time calibration), else native */
    PVM_BACKEND_NATIVE = 1, /**< library-as-hypervisor; guest runs at host ring 3 */
    /**
     * /dev/kvm (any standard x86 KVM): the library is the hypervisor as on
     * native, guest code runs at CPL 3 in a KVM vCPU whose page tables are
     * the shadow tables; guest kernel and user get separate address spaces.
     * Every guest event is one KVM exit.  On a Gen A kvm-pvm host the
     * kernel does the PVM ABI itself and the library only programs KVM
     * (docs/design.md; never run: no such host was reachable to test).
     */
    PVM_BACKEND_KVM = 2,
    /**
     * The kmod/ module (/dev/pvm, include/pvm/kmod.h): the library is the
     * hypervisor as on native, guest code runs at ring 3 on the vCPU thread
     * through the module's world switch, and every guest event costs one
     * switch and one return from an ioctl.
     */
    PVM_BACKEND_KMOD = 3,
};

/**
 * Whether @backend can be used on this machine.  Returns 0 if usable, else a
 * negative code (PVM_ENODEV) with pvm_last_error() saying why, e.g. "kvm:
 * cannot open /dev/kvm: No such file or directory (no KVM on this machine)".
 * For PVM_BACKEND_AUTO, 0 leaves in pvm_last_error() which backend auto
 * chose and why it passed over the others.  Where /dev/pvm or /dev/kvm is
 * usable, the first auto choice in a process runs a calibration for each (a
 * throw-away address space or KVM VM, a few milliseconds) that compares a
 * guest event through it with native's.  Auto decides once per process: the
 * first successful auto choice stands (a pvm module loaded later is used by
 * VMs that ask for PVM_BACKEND_KMOD).
 * Thread safety: any thread.
 */
PVM_EXPORT int pvm_backend_probe(enum pvm_backend backend);
/** Name of @backend ("auto", "native", "kvm"), or NULL if out of range.  Any thread. */
PVM_EXPORT const char *pvm_backend_name(enum pvm_backend backend);
/** Parse a backend name; returns 0 and sets *out, or PVM_EINVAL.  Any thread. */
PVM_EXPORT int pvm_backend_from_name(const char *name, enum pvm_backend *out);

/* ---- VM --------------------------------------------------------------- */

#define PVM_VM_OPTIONS_VERSION 1

/** Options for pvm_vm_create().  Initialise with PVM_VM_OPTIONS_INIT. */
struct pvm_vm_options {
    uint32_t version;         /**< PVM_VM_OPTIONS_VERSION */
    enum pvm_backend backend; /**< PVM_BACKEND_AUTO: option, then $PVM_BACKEND, then probing */
    uint32_t max_vcpus;       /**< 1..PVM_MAX_VCPUS; 0 means 64 */
    uint64_t max_memory;      /**< total guest RAM limit in bytes; 0 means 64 GiB */
    /**
     * Signal used to interrupt a running vCPU (pvm_vcpu_kick, injection).
     * native: sent only to the stub processes, never to this process.  kvm:
     * sent to the thread inside pvm_vcpu_run() to end KVM_RUN; the library
     * installs an empty handler for it if it has none (SIG_DFL or SIG_IGN).
     * kmod: not used (the module's KICK sends an IPI, no signal).
     * 0 means SIGUSR2.  SIGKILL, SIGSTOP, SIGSEGV, SIGBUS, SIGILL, SIGTRAP,
     * SIGFPE and SIGSYS are refused (PVM_EINVAL).
     */
    int kick_signal;
};
#define PVM_MAX_VCPUS 256
#define PVM_VM_OPTIONS_INIT                                                   \
    { PVM_VM_OPTIONS_VERSION, PVM_BACKEND_AUTO, 0, 0, 0 }

/**
 * Create a VM.  @opts may be NULL for defaults.  On success *@out is a new
 * VM and 0 is returned.  Errors: PVM_EINVAL (NULL @out, bad field),
 * PVM_EVERSION (unknown opts->version), PVM_ENODEV (the chosen backend is not
 * usable here; pvm_last_error() says why), PVM_ENOMEM.
 * Thread safety: any thread.
 */
PVM_EXPORT int pvm_vm_create(pvm_vm **out, const struct pvm_vm_options *opts);
/**
 * Destroy @vm, its vCPUs and its memory.  NULL is ignored.  No vCPU of @vm
 * may be inside pvm_vcpu_run() (kick them and wait for their threads first).
 * Thread safety: not concurrent with any other call on @vm or its vCPUs.
 */
PVM_EXPORT void pvm_vm_destroy(pvm_vm *vm);
/** The backend @vm runs on (never PVM_BACKEND_AUTO).  Any thread. */
PVM_EXPORT enum pvm_backend pvm_vm_backend(const pvm_vm *vm);

/** Default value of MSR_PVM_LINEAR_ADDRESS_RANGE for guests of @vm. Any thread. */
PVM_EXPORT uint64_t pvm_vm_linear_address_range(const pvm_vm *vm);

/*
 * Lower-half guest-virtual addresses usable on @vm's backend: [*lo, *hi).
 * The native backend reserves the top of the lower half for its stub.
 * Upper-half addresses are governed by MSR_PVM_LINEAR_ADDRESS_RANGE.
 * Any thread.
 */
PVM_EXPORT void pvm_vm_lower_half(const pvm_vm *vm, pvm_gva_t *lo, pvm_gva_t *hi);

/* ---- guest memory ----------------------------------------------------- */

#define PVM_MEM_READONLY (1u << 0) /**< guest writes fault (#PF W) */
#define PVM_MEM_NOEXEC   (1u << 1) /**< guest instruction fetches fault */

/**
 * Allocate @size bytes (a multiple of 4096) of memfd-backed memory that can
 * be mapped into @vm on every backend.  *@host_out receives the host address
 * (zero-filled, read-write for the host).  Freed by pvm_vm_free_memory() or
 * pvm_vm_destroy().  Errors: PVM_EINVAL, PVM_ENOMEM (beyond max_memory).
 * Thread safety: any thread.
 */
PVM_EXPORT int pvm_vm_alloc_memory(pvm_vm *vm, size_t size, void **host_out);
/**
 * Free memory from pvm_vm_alloc_memory().  Fails with PVM_EBUSY while any
 * part of it is mapped into the guest, PVM_EINVAL if @host is not the start
 * of an allocation.  Thread safety: any thread.
 */
PVM_EXPORT int pvm_vm_free_memory(pvm_vm *vm, void *host);

/**
 * Map host memory [@host, @host + @size) at guest-physical @gpa.  @gpa,
 * @host and @size must be 4 KiB aligned and @size non-zero; the region must
 * not overlap an existing one (PVM_EEXIST).  @flags: PVM_MEM_*.  Backends
 * that run guest code outside this process (native) require @host to lie
 * inside an allocation from pvm_vm_alloc_memory() (else PVM_ENOTSUP).
 * The memory must stay valid until unmapped.
 * Thread safety: any thread; vCPUs see the new region on their next exit.
 */
PVM_EXPORT int pvm_vm_map_memory(pvm_vm *vm, pvm_gpa_t gpa, void *host, size_t size, uint32_t flags);
/**
 * Remove the region that starts at @gpa and has exactly @size bytes
 * (PVM_ENOENT if there is none).  Guest TLB entries for it are dropped.
 * Thread safety: any thread.
 */
PVM_EXPORT int pvm_vm_unmap_memory(pvm_vm *vm, pvm_gpa_t gpa, size_t size);
/**
 * Host pointer for guest-physical [@gpa, @gpa + @size), which must lie inside
 * one region; NULL otherwise (pvm_last_error() says why).  Any thread.
 */
PVM_EXPORT void *pvm_vm_gpa_to_host(pvm_vm *vm, pvm_gpa_t gpa, size_t size);

/* ---- vCPU state ------------------------------------------------------- */

/** General registers, guest view (RFLAGS.IF in smod is the virtual IF). */
struct pvm_regs {
    uint64_t rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t rip, rflags;
};

enum pvm_mode {
    PVM_MODE_SUPERVISOR = 0, /**< smod: the guest kernel (CPL 0 as the guest sees it) */
    PVM_MODE_USER = 1,       /**< umod: guest user mode (CPL 3) */
};

/** Segment and control state. */
struct pvm_sregs {
    uint32_t mode;      /**< enum pvm_mode */
    uint16_t cs, ss;    /**< guest-visible selectors (smod: from STAR; umod: hardware) */
    uint16_t ds, es, fs, gs;
    uint64_t fs_base, gs_base;
    uint64_t cr0, cr2, cr3, cr4, efer;
};

/** One CPUID leaf of the table the VMM provides. */
struct pvm_cpuid_entry {
    uint32_t function, index; /**< leaf (EAX) and subleaf (ECX) */
    uint32_t flags;           /**< PVM_CPUID_FLAG_* */
    uint32_t eax, ebx, ecx, edx;
};
#define PVM_CPUID_FLAG_SIGNIFICANT_INDEX (1u << 0) /**< match @index too */

#define PVM_VCPU_OPTIONS_VERSION 1
/** Options for pvm_vcpu_create(); initialise with PVM_VCPU_OPTIONS_INIT. */
struct pvm_vcpu_options {
    uint32_t version; /**< PVM_VCPU_OPTIONS_VERSION */
    uint32_t id;      /**< vCPU id (< max_vcpus), unique within the VM */
};
#define PVM_VCPU_OPTIONS_INIT { PVM_VCPU_OPTIONS_VERSION, 0 }

/**
 * Create a vCPU of @vm in the PVM reset state (§9.3 of pvm-abi.md, already
 * in 64-bit smod: libpvm guests start in long mode).  Errors: PVM_EINVAL,
 * PVM_EVERSION, PVM_EEXIST (id in use), PVM_ERANGE (id >= max_vcpus),
 * PVM_ENOMEM.  Thread safety: any thread.
 */
PVM_EXPORT int pvm_vcpu_create(pvm_vcpu **out, pvm_vm *vm, const struct pvm_vcpu_options *opts);
/** Destroy @vcpu (NULL ignored); it must not be running.  Not concurrent with calls on @vcpu. */
PVM_EXPORT void pvm_vcpu_destroy(pvm_vcpu *vcpu);
/** The id given at creation.  Any thread. */
PVM_EXPORT uint32_t pvm_vcpu_id(const pvm_vcpu *vcpu);
/** The VM @vcpu belongs to.  Any thread. */
PVM_EXPORT pvm_vm *pvm_vcpu_vm(const pvm_vcpu *vcpu);

/*
 * State accessors.  Thread safety: only from the thread that runs @vcpu (or
 * any thread while no thread runs it); PVM_EBUSY if called while it runs.
 */
PVM_EXPORT int pvm_vcpu_get_regs(pvm_vcpu *vcpu, struct pvm_regs *regs);
PVM_EXPORT int pvm_vcpu_set_regs(pvm_vcpu *vcpu, const struct pvm_regs *regs);
PVM_EXPORT int pvm_vcpu_get_sregs(pvm_vcpu *vcpu, struct pvm_sregs *sregs);
/** Set segment/control state; a mode or CR3 change takes effect as on kvm-pvm KVM_SET_SREGS. */
PVM_EXPORT int pvm_vcpu_set_sregs(pvm_vcpu *vcpu, const struct pvm_sregs *sregs);
/**
 * Read or write an MSR as the host (host-initiated: the PVM write checks that
 * apply only to guest writes are skipped, §2).  Covers all eight PVM MSRs,
 * STAR/LSTAR/CSTAR/SYSCALL_MASK, FS/GS/KERNEL_GS base, TSC_AUX, EFER and
 * SYSENTER_*.  PVM_ENOENT for an MSR the backend does not know, PVM_EINVAL
 * for a value the MSR cannot hold.
 */
PVM_EXPORT int pvm_vcpu_get_msr(pvm_vcpu *vcpu, uint32_t index, uint64_t *value);
PVM_EXPORT int pvm_vcpu_set_msr(pvm_vcpu *vcpu, uint32_t index, uint64_t value);
/**
 * Install the CPUID table the guest's synthetic CPUID reads (replaces the
 * previous one).  Leaves 0x40000000 (EAX = 0x40000002, "KVMKVMKVM") and
 * 0x40000002 (EBX = 0x4d5650) are present by default and may be overridden.
 * At most 256 entries.  The table is copied.
 */
PVM_EXPORT int pvm_vcpu_set_cpuid(pvm_vcpu *vcpu, const struct pvm_cpuid_entry *entries, size_t n);

/* ---- running ---------------------------------------------------------- */

enum pvm_exit_reason {
    PVM_EXIT_NONE = 0,
    PVM_EXIT_HYPERCALL = 1,  /**< a host call (hypercall the library does not own) */
    PVM_EXIT_IO = 2,         /**< port I/O (emulated IN/OUT) */
    PVM_EXIT_MMIO = 3,       /**< access to guest-physical memory with no region */
    PVM_EXIT_HALT = 4,       /**< HLT with nothing that can wake the vCPU */
    PVM_EXIT_SHUTDOWN = 5,   /**< triple fault; see exit.shutdown.reason */
    PVM_EXIT_KICKED = 6,     /**< pvm_vcpu_kick() was called */
    PVM_EXIT_INTERNAL_ERROR = 7, /**< the backend failed; see exit.internal */
    PVM_EXIT_DEBUG = 8,      /**< a single step or a caught exception; see exit.debug and pvm_vcpu_set_guest_debug() */
};

#define PVM_EXIT_MSG_MAX 160

/**
 * Why pvm_vcpu_run() returned.  For HYPERCALL, IO (in) and MMIO (read) exits
 * the application writes the result into the struct (hypercall.ret,
 * io.data, mmio.data) and passes the same struct to the next
 * pvm_vcpu_run(), which completes the instruction with it.  An application
 * that moves RIP (pvm_vcpu_set_regs) after an IO or MMIO exit abandons the
 * instruction, as on KVM: no IN/read result is written and the new RIP is
 * not advanced.
 */
struct pvm_exit {
    uint32_t reason; /**< enum pvm_exit_reason */
    uint32_t pad;
    union {
        struct {
            uint64_t nr;      /**< RAX */
            uint64_t args[6]; /**< RBX, R10, RDX, RSI, RDI, R8 */
            uint64_t ret;     /**< in: value for RAX (initialised to nr, i.e. RAX unchanged) */
        } hypercall;
        struct {
            uint16_t port;
            uint8_t size;     /**< 1, 2 or 4 */
            uint8_t is_write; /**< 1 = OUT */
            uint32_t data;    /**< OUT: value written; IN: value to return */
        } io;
        struct {
            uint64_t gpa;
            uint8_t size;     /**< 1, 2, 4 or 8 */
            uint8_t is_write;
            uint8_t pad[6];
            uint64_t data;    /**< write: value; read: value to return */
        } mmio;
        struct {
            uint64_t rip;     /**< guest RIP when the vCPU stopped */
            char reason[PVM_EXIT_MSG_MAX];
        } shutdown;
        struct {
            int code;         /**< negative PVM_E* */
            char msg[PVM_EXIT_MSG_MAX];
        } internal;
        struct {
            uint32_t vector;  /**< 1 (#DB) for a completed single step; else the caught exception */
            uint8_t has_error_code;
            uint8_t pad[3];
            uint32_t error_code;
            uint32_t pad2;
            uint64_t rip;     /**< guest RIP: the faulting instruction, or after it for #BP (INT3) */
            uint64_t cr2;     /**< #PF: the faulting address */
        } debug;
    } u;
};

/**
 * Run @vcpu until an exit the application must see; fills *@exit and returns
 * 0, or returns a negative code if the call itself was invalid (NULL args,
 * PVM_EBUSY when another thread is running @vcpu).  A backend failure is an
 * exit (PVM_EXIT_INTERNAL_ERROR), not a return code.  After a SHUTDOWN or
 * INTERNAL_ERROR exit, further runs return the same exit.  An exit means the
 * guest is stopped until the next pvm_vcpu_run(): the library confirms it
 * before returning (and before calling a host-call handler), so a guest
 * cannot fake an exit and keep running; one that tries loses the vCPU
 * (PVM_EXIT_INTERNAL_ERROR).
 * Thread safety: one thread runs a given vCPU at a time; different vCPUs may
 * run concurrently on different threads.
 */
PVM_EXPORT int pvm_vcpu_run(pvm_vcpu *vcpu, struct pvm_exit *exit);

/**
 * Make the current or next pvm_vcpu_run() of @vcpu return PVM_EXIT_KICKED
 * promptly.  Returns 0, or PVM_EINVAL for a NULL @vcpu (pvm_last_error()
 * says so).  Thread safety: any thread, and async-signal-safe.
 */
PVM_EXPORT int pvm_vcpu_kick(pvm_vcpu *vcpu);

enum pvm_event_type {
    PVM_EVENT_EXCEPTION = 0, /**< vector 0..31 */
    PVM_EVENT_INTERRUPT = 1, /**< external interrupt, vector 32..255 */
    PVM_EVENT_NMI = 2,       /**< vector 2, masked until ERETU/ERETS */
};

/** An event to inject; see pvm_vcpu_inject(). */
struct pvm_event {
    uint32_t type;           /**< enum pvm_event_type */
    uint8_t vector;
    uint8_t has_error_code;
    uint16_t pad;
    uint32_t error_code;
    uint32_t pad2;
    uint64_t cr2;            /**< for #PF (vector 14) */
};

/**
 * Queue @event for @vcpu.  It is delivered per the PVM rules: exceptions at
 * the next entry; interrupts when deliverable (umod, or smod with the virtual
 * IF set; otherwise PVCS.event_flags.IP is set and delivery waits for
 * IRQ_WIN/ERETU/ERETS/IRQ_HALT); NMIs when the NMI mask is clear.  A running
 * or halted vCPU is interrupted promptly.  Errors: PVM_EINVAL (bad type or
 * vector: exceptions 0..31 except 2, interrupts 32..255), PVM_EBUSY (an
 * exception is already queued).  Thread safety: any thread.
 */
PVM_EXPORT int pvm_vcpu_inject(pvm_vcpu *vcpu, const struct pvm_event *event);

/* ---- debugging -------------------------------------------------------- */

#define PVM_GUEST_DEBUG_VERSION 1
/** Single-step: run one guest instruction, then exit with PVM_EXIT_DEBUG (vector 1). */
#define PVM_GUEST_DEBUG_SINGLESTEP (1u << 0)

/**
 * What pvm_vcpu_set_guest_debug() intercepts; initialise with
 * PVM_GUEST_DEBUG_INIT (everything off).
 */
struct pvm_guest_debug {
    uint32_t version;    /**< PVM_GUEST_DEBUG_VERSION */
    uint32_t flags;      /**< PVM_GUEST_DEBUG_* */
    /**
     * Bit v set: exception vector v (0..31, not 2) raised by guest code in
     * smod (catch_smod) or umod (catch_umod) exits with PVM_EXIT_DEBUG
     * before the guest sees it, with the vCPU state as it was at the fault.
     * Set bit 3 (#BP) for software breakpoints.  Exceptions the library
     * handles itself (a #GP it emulates, a #PF the shadow MMU fixes) and
     * exceptions injected with pvm_vcpu_inject() are never caught.
     */
    uint32_t catch_smod;
    uint32_t catch_umod;
};
#define PVM_GUEST_DEBUG_INIT { PVM_GUEST_DEBUG_VERSION, 0, 0, 0 }

/**
 * Turn guest debugging on (or off with @dbg NULL or all-zero) for @vcpu, as
 * KVM_SET_GUEST_DEBUG does.  While it is on, pvm_vcpu_run() returns
 * PVM_EXIT_DEBUG for what @dbg selects, and the native backend's stub fast
 * path is off for @vcpu (every event passes the hypervisor core).
 *
 * Single-step sets the trap flag for the guest's next instruction (the
 * guest still reads its own TF); the step ends after one instruction, after
 * an instruction the library emulates or completes (a host call, port I/O,
 * MMIO, HLT), or at the first instruction of an event handler the step
 * entered.  The #DB of the step never reaches the guest.  To pass a caught
 * exception on to the guest, pvm_vcpu_inject() it (it is not caught again).
 * Errors: PVM_EINVAL (NULL @vcpu, an unknown flag, bit 2 (NMI) set), PVM_EVERSION,
 * PVM_EBUSY (running), PVM_ENOTSUP (a backend that runs the ABI in the
 * kernel).  Thread safety: as the state accessors.
 */
PVM_EXPORT int pvm_vcpu_set_guest_debug(pvm_vcpu *vcpu, const struct pvm_guest_debug *dbg);

/* ---- guest-virtual access --------------------------------------------- */

/**
 * Copy @len bytes between @buf and guest-virtual @gva, translated through
 * the vCPU's current page tables with supervisor privilege.  PVM_EFAULT if
 * any byte is not mapped (nothing is copied then for reads; writes may be
 * partial).  For host-call arguments.  Thread safety: as the state accessors.
 */
PVM_EXPORT int pvm_vcpu_read_guest(pvm_vcpu *vcpu, pvm_gva_t gva, void *buf, size_t len);
PVM_EXPORT int pvm_vcpu_write_guest(pvm_vcpu *vcpu, pvm_gva_t gva, const void *buf, size_t len);
/** Translate @gva to a guest-physical address (supervisor walk, no A/D update). */
PVM_EXPORT int pvm_vcpu_translate(pvm_vcpu *vcpu, pvm_gva_t gva, pvm_gpa_t *gpa);

/* ---- host calls ------------------------------------------------------- */

/**
 * Host-call handler: called on the vCPU's thread for a hypercall in the
 * host-call range (pvm/abi.h PVM_HOSTCALL_BASE).  @nr is the host-call
 * number (RAX - PVM_HOSTCALL_BASE), @args the six arguments.  Return 0 and
 * set *@ret (written to RAX), or return non-zero to make pvm_vcpu_run()
 * return PVM_EXIT_HYPERCALL instead.
 */
typedef int (*pvm_hostcall_fn)(void *opaque, pvm_vcpu *vcpu, uint32_t nr,
                               const uint64_t args[6], uint64_t *ret);
/** Install (or with NULL remove) the VM's host-call handler.  Not concurrent with running vCPUs. */
PVM_EXPORT int pvm_vm_set_hostcall_handler(pvm_vm *vm, pvm_hostcall_fn fn, void *opaque);

/* ---- ELF loading ------------------------------------------------------ */

#define PVM_LOAD_OPTIONS_VERSION 1
/** Options for pvm_vm_load_elf(); initialise with PVM_LOAD_OPTIONS_INIT. */
struct pvm_load_options {
    uint32_t version;        /**< PVM_LOAD_OPTIONS_VERSION */
    uint32_t pad;
    uint64_t ram_size;       /**< guest RAM to allocate and map at GPA 0; 0 = 64 MiB */
    const char *cmdline;     /**< copied into the boot-info block; may be NULL */
    uint64_t stack_size;     /**< boot stack per vCPU; 0 = 64 KiB */
};
#define PVM_LOAD_OPTIONS_INIT { PVM_LOAD_OPTIONS_VERSION, 0, 0, NULL, 0 }

/** What pvm_vm_load_elf() produced. */
struct pvm_load_info {
    pvm_gva_t entry;         /**< ELF entry point */
    pvm_gpa_t boot_info_gpa; /**< struct pvm_boot_info of vCPU 0 */
    pvm_gpa_t pt_root;       /**< initial page-table root (CR3) */
    void *ram;               /**< host address of guest RAM (GPA 0) */
    uint64_t ram_size;
};

/**
 * Load the ELF64 x86-64 executable @path (or the image [@image, +@size) with
 * pvm_vm_load_elf_image) into a fresh @vm: allocates RAM at GPA 0, copies the
 * segments with their permissions (W^X enforced), builds initial page tables
 * (the image at its link addresses plus a direct map of all RAM), and writes a
 * boot-info block.  Errors: PVM_ENOENT/PVM_EIO (file), PVM_EBADELF (with the
 * reason in pvm_last_error()), PVM_ERANGE (segments outside RAM or the allowed
 * address range), PVM_ESTATE (@vm already has memory).  Thread safety: not
 * concurrent with other calls on @vm.
 */
PVM_EXPORT int pvm_vm_load_elf(pvm_vm *vm, const char *path, const struct pvm_load_options *opts,
                               struct pvm_load_info *info);
PVM_EXPORT int pvm_vm_load_elf_image(pvm_vm *vm, const void *image, size_t size,
                                     const struct pvm_load_options *opts, struct pvm_load_info *info);
/**
 * Put @vcpu in the boot state for a VM prepared by pvm_vm_load_elf(): smod,
 * CR3 = the initial root, RIP = entry (or @entry if non-zero), RSP = top of
 * its own boot stack, RDI = GVA of its boot-info block, RSI = vCPU id.
 * Thread safety: as the state accessors.
 */
PVM_EXPORT int pvm_vcpu_setup_boot(pvm_vcpu *vcpu, pvm_gva_t entry);

/**
 * Address of symbol @name (a function or object with a value) in the ELF
 * loaded into @vm.  Returns 0 and sets *@gva, PVM_ENOENT if there is no such
 * symbol (or the ELF was stripped), PVM_ESTATE if nothing was loaded.
 * Thread safety: any thread once pvm_vm_load_elf() has returned.
 */
PVM_EXPORT int pvm_vm_elf_symbol(pvm_vm *vm, const char *name, pvm_gva_t *gva);

/**
 * Write an ELF core file of @vm to @path (created with mode 0600, replaced if
 * it exists) that gdb opens with the guest's ELF ("gdb guest.elf core"): the
 * guest memory vCPU 0's page tables map, as PT_LOAD segments by
 * guest-virtual address, and each vCPU's registers as an NT_PRSTATUS note
 * (vCPU n is gdb's "LWP n+1").  For crash dumps: call it after a
 * PVM_EXIT_SHUTDOWN or PVM_EXIT_INTERNAL_ERROR, or any time no vCPU runs.
 * Returns 0, PVM_EBUSY if a vCPU is running, PVM_ERANGE if the guest's page
 * tables map more than 16384 segments or 4 GiB or span more than 65536
 * tables (hostile tables cannot make it loop), PVM_EIO (the file is removed).
 * Thread safety: no vCPU of @vm may run; do not unmap memory meanwhile.
 */
PVM_EXPORT int pvm_vm_write_core(pvm_vm *vm, const char *path);
/**
 * Put @vcpu in the boot state (as pvm_vcpu_setup_boot) to call the guest
 * function at @fn with @nargs (at most 6) integer arguments in RDI, RSI,
 * RDX, RCX, R8, R9.  Its return address is the SDK's pvm_return_to_host, so
 * the function's return value reaches the host as a PVM_HOSTCALL_EXIT host
 * call (PVM_EXIT_HYPERCALL with u.hypercall.args[0] = RAX, unless a host-call
 * handler takes it).  The function runs without the SDK's boot-time setup
 * (no PVCS, no event handlers): it should compute and may use host calls.
 * Errors: PVM_EINVAL, PVM_ESTATE (nothing loaded), PVM_ENOENT (the guest has
 * no pvm_return_to_host), PVM_ERANGE (no boot area for this vCPU id).
 * Thread safety: as the state accessors.
 */
PVM_EXPORT int pvm_vcpu_setup_call(pvm_vcpu *vcpu, pvm_gva_t fn, const uint64_t *args, size_t nargs);

/* ---- GDB remote stub -------------------------------------------------- */

/** What a pvm_gdb_exit_fn tells pvm_gdb_serve() to do next. */
enum pvm_gdb_action {
    PVM_GDB_RESUME = 0, /**< the exit is handled (results written into it): run on */
    PVM_GDB_PARK = 1,   /**< this vCPU has nothing more to do: it stays stopped until gdb resumes it again */
    PVM_GDB_FINISH = 2, /**< the guest is done, *@status (0..255) its exit status: gdb is told, the session ends */
    PVM_GDB_STOP = 3,   /**< stop every vCPU and report gdb signal number *@status (e.g. 11, SIGSEGV) */
};

/**
 * Called by pvm_gdb_serve() on the thread that runs @vcpu for each exit it
 * does not own itself (HYPERCALL, IO, MMIO, HALT): handle it as a
 * pvm_vcpu_run() loop would.  The state accessors may be used on @vcpu.
 */
typedef enum pvm_gdb_action (*pvm_gdb_exit_fn)(void *opaque, pvm_vcpu *vcpu, struct pvm_exit *exit,
                                               int *status);

/** Exceptions that stop the guest by default: #DE, #UD, #GP and #PF raised in smod. */
#define PVM_GDB_CATCH_DEFAULT ((1u << 0) | (1u << 6) | (1u << 13) | (1u << 14))

#define PVM_GDB_OPTIONS_VERSION 1
/** Options for pvm_gdb_serve(); initialise with PVM_GDB_OPTIONS_INIT. */
struct pvm_gdb_options {
    uint32_t version;       /**< PVM_GDB_OPTIONS_VERSION */
    /**
     * Exceptions (bit = vector, as pvm_guest_debug.catch_smod) that stop the
     * VM before the guest sees them, raised in smod and umod ("monitor catch"
     * changes them during the session).  #BP is always caught for
     * breakpoints, and a triple fault always stops the VM.
     */
    uint32_t catch_smod;
    uint32_t catch_umod;
    /**
     * Exit handler; NULL: PVM_HOSTCALL_EXIT finishes with status args[0] &
     * 0xff, other host calls return -ENOSYS (-38), IO and MMIO stop with
     * SIGSEGV, HALT parks the vCPU.
     */
    pvm_gdb_exit_fn on_exit;
    void *opaque;           /**< passed to @on_exit */
};
#define PVM_GDB_OPTIONS_INIT { PVM_GDB_OPTIONS_VERSION, PVM_GDB_CATCH_DEFAULT, 0, NULL, NULL }

/** How a pvm_gdb_serve() session ended. */
enum pvm_gdb_end {
    PVM_GDB_END_FINISHED = 0,     /**< the exit handler returned PVM_GDB_FINISH (status in *@status) */
    PVM_GDB_END_DETACHED = 1,     /**< gdb detached (D): the vCPUs may be run on without gdb */
    PVM_GDB_END_KILLED = 2,       /**< gdb killed the guest (k) */
    PVM_GDB_END_CRASHED = 3,      /**< a vCPU triple-faulted or failed, and gdb resumed it after the report */
    PVM_GDB_END_DISCONNECTED = 4, /**< the connection closed or failed mid-session */
};

/**
 * Serve the GDB remote serial protocol on @fd (a connected stream socket,
 * not closed here) for @vm until the session ends; *@end says how and, for
 * PVM_GDB_END_FINISHED, *@status holds the guest's exit status.
 *
 * Every vCPU of @vm is debugged, each as a gdb thread (vCPU n is thread
 * n+1); they must exist and no thread may run them.  The VM starts stopped
 * where the vCPUs are.  pvm_gdb_serve() runs them itself, one thread each,
 * all-stop: when one stops (breakpoint, step, caught exception, Ctrl-C,
 * triple fault) every vCPU is kicked and stops.  Host calls, IO, MMIO and
 * halts go to @opts->on_exit.  gdb gets registers in the x86-64 layout
 * with fs_base/gs_base and the PVM mode, CR0/2/3/4, EFER and PVM MSRs
 * (read-only) from its target description; memory by guest-virtual address
 * through the selected vCPU's page tables (supervisor access, page
 * protections ignored, as a debugger writes code); software breakpoints
 * (Z0/z0: INT3 written into guest memory, hidden from memory reads,
 * restored when removed and at the end of the session); single-step and
 * continue (vCont, s, c, with a signal to pass a caught exception on to the
 * guest); "monitor catch".  Packets with a bad checksum are answered '-',
 * unknown ones with an empty reply; a client that disconnects ends the
 * session with the vCPUs stopped and the breakpoints removed.  At the end,
 * guest debugging is off on every vCPU (pvm_vcpu_set_guest_debug).
 *
 * Writes to @fd use MSG_NOSIGNAL: a closed connection raises no SIGPIPE.
 * Returns 0 (the session ended, see *@end), or PVM_EINVAL (NULL arguments,
 * bad options), PVM_EVERSION, PVM_ESTATE (no vCPU), PVM_EBUSY (a vCPU is
 * running), PVM_ENOTSUP (the backend cannot debug), PVM_ENOMEM.
 * Thread safety: one session per VM; no other thread may run its vCPUs or
 * change its memory map meanwhile.
 */
PVM_EXPORT int pvm_gdb_serve(pvm_vm *vm, int fd, const struct pvm_gdb_options *opts, enum pvm_gdb_end *end,
                             int *status);

/* ---- snapshots -------------------------------------------------------- */

/**
 * A snapshot of a VM (opaque): its guest RAM, memory layout (allocations
 * and regions), and every vCPU's complete state: registers, segment and
 * control state, all MSRs the model keeps (the PVM MSRs of the PVCS
 * protocol included), the CPUID table, pending exceptions, NMIs and
 * interrupts (queued injections too), an incomplete exit awaiting its
 * answer, and the FPU/SSE/AVX state.  Not included: the host-call handler,
 * the ELF symbols and boot layout of pvm_vm_load_elf() (a VM created from a
 * snapshot has none: pvm_vcpu_setup_call() gives PVM_ESTATE there), and
 * memory the application maps from outside pvm_vm_alloc_memory().
 * A snapshot is immutable and reference counted: VMs created from it or
 * restored to it keep it alive after pvm_snapshot_free().
 */
typedef struct pvm_snapshot pvm_snapshot;

/**
 * Take a snapshot of @vm into *@out (free with pvm_snapshot_free()).  The VM
 * must be quiescent: no vCPU inside pvm_vcpu_run() (PVM_EBUSY otherwise,
 * and nothing is taken); the caller must not start one until this returns.
 * A vCPU stopped at an exit the application has not answered (a host call,
 * port input, an MMIO read) is saved with it: after a restore, answer it by
 * passing the same exit to pvm_vcpu_run().  From now on @vm records the
 * guest pages written (the first guest write to each page faults once), so
 * that pvm_vm_restore() to this snapshot copies back only those.
 * Writes the application makes through host pointers it held before (from
 * pvm_vm_alloc_memory() or pvm_load_info.ram) are not seen: write guest
 * memory through pvm_vcpu_write_guest() or a pointer from
 * pvm_vm_gpa_to_host(), which counts its whole range as written.
 * Errors: PVM_EINVAL, PVM_EBUSY, PVM_ENOTSUP (the backend cannot: the Gen A
 * kvm-pvm mode; or a region not from pvm_vm_alloc_memory()), PVM_ESTATE (a vCPU stopped
 * for good: SHUTDOWN or INTERNAL_ERROR), PVM_ERANGE (more than 1 TiB of
 * guest RAM, 4096 allocations or 4096 regions), PVM_ENOMEM.
 * Thread safety: no vCPU of @vm may run; not concurrent with other calls on @vm.
 */
PVM_EXPORT int pvm_vm_snapshot(pvm_vm *vm, pvm_snapshot **out);
/**
 * Put @vm back into the state of @snap: RAM, every vCPU's state.  @vm must
 * have the snapshot's layout (the VM it was taken from, or one created from
 * it: same allocations, regions and vCPU ids; PVM_ESTATE otherwise) and be
 * quiescent (PVM_EBUSY).  Restoring the snapshot the VM last took or was
 * last restored to costs O(pages written since), not O(guest RAM); another
 * snapshot costs a full copy.  Events queued with pvm_vcpu_inject() and
 * kicks not yet delivered are replaced by the snapshot's; the host-call
 * handler and what pvm_vm_load_elf() recorded stay the VM's.  A restore that
 * fails changes nothing.
 * Errors: PVM_EINVAL, PVM_EBUSY, PVM_ESTATE, PVM_ENOTSUP (a snapshot of
 * another backend's state format), PVM_EBADSNAP (vCPU state that fails its
 * checks), PVM_ENOMEM.
 * Thread safety: no vCPU of @vm may run; not concurrent with other calls on
 * @vm.  @snap may be used by other threads concurrently (it is immutable).
 */
PVM_EXPORT int pvm_vm_restore(pvm_vm *vm, const pvm_snapshot *snap);
/**
 * Create a VM in the state of @snap, with its vCPUs (find them with
 * pvm_vm_vcpu()).  @opts NULL: the snapshot's backend, max_vcpus and
 * max_memory.  Guest RAM: with max_vcpus 1 on a backend that can (native),
 * the VM shares the snapshot's pages copy-on-write: a page costs memory
 * only once the VM (guest or library) first writes it, and the snapshot's
 * pages themselves are sealed against writes; a VM that shares restores
 * only @snap or a snapshot it took itself (PVM_ENOTSUP otherwise).  Other
 * VMs get a copy of the snapshot's non-zero pages.  Errors: those of
 * pvm_vm_create(), PVM_ENOTSUP (the backend's state format differs),
 * PVM_ERANGE (RAM or vCPU ids beyond the options), PVM_EBADSNAP.  Nothing
 * is left behind on failure.
 * Thread safety: any thread; @snap may be shared.
 */
PVM_EXPORT int pvm_vm_create_from_snapshot(pvm_vm **out, const pvm_snapshot *snap,
                                           const struct pvm_vm_options *opts);
/**
 * Start @n VMs from @snap ahead of time (each with what its first run
 * would start: on native, the stub process of each vCPU), so that
 * pvm_vm_create_from_snapshot(&vm, @snap, NULL) hands one out at once
 * instead of creating it; it creates as usual when none is left, or when
 * it is given options.  The waiting VMs belong to the application's
 * reference: pvm_snapshot_free() destroys those not taken.  At most 4096
 * wait at a time.  Returns 0, or the first error (the VMs started before
 * it stay): those of pvm_vm_create_from_snapshot(), PVM_ERANGE (4096 are
 * waiting), PVM_ENOTSUP (the backend cannot).  Thread safety: any thread.
 */
PVM_EXPORT int pvm_snapshot_prestart(pvm_snapshot *snap, unsigned n);
/**
 * The vCPU of @vm with id @id, or NULL (no such vCPU).  For VMs created
 * from a snapshot.  Thread safety: any thread; the vCPU must not be
 * destroyed meanwhile.
 */
PVM_EXPORT pvm_vcpu *pvm_vm_vcpu(pvm_vm *vm, uint32_t id);
/**
 * The exit @vcpu stopped at and still awaits an answer for (a host call,
 * port input or an MMIO read: the next pvm_vcpu_run() completes it with
 * the struct it is given), or reason PVM_EXIT_NONE if none.  For a VM
 * created from a snapshot file, whose application never saw that exit.
 * Errors: PVM_EINVAL, PVM_EBUSY (running), PVM_ENOTSUP.  Thread safety: as
 * the state accessors.
 */
PVM_EXPORT int pvm_vcpu_pending_exit(pvm_vcpu *vcpu, struct pvm_exit *exit);
/**
 * Write @snap to the file @path (mode 0600; written to a temporary file and
 * renamed, so @path is either the old file or the complete new one).  The
 * format is versioned and CRC32C-checksummed (docs/design.md "Snapshot
 * files"); zero pages are not stored.  Errors: PVM_EINVAL, PVM_EIO.
 * Thread safety: any thread.
 */
PVM_EXPORT int pvm_snapshot_save(const pvm_snapshot *snap, const char *path);
/**
 * Read a snapshot file into *@out.  The file is untrusted: every size and
 * field is checked, and a file that fails any check gives an error and no
 * snapshot.  Errors: PVM_ENOENT/PVM_EIO (the file), PVM_EBADSNAP (not a
 * snapshot, corrupt: checksum, truncated, or a field out of range; the
 * message says which), PVM_EVERSION (another format version), PVM_ENOMEM.
 * vCPU state is checked again by the backend at restore or create.
 * Thread safety: any thread.
 */
PVM_EXPORT int pvm_snapshot_load(pvm_snapshot **out, const char *path);
/**
 * Drop the application's reference to @snap (NULL ignored), and destroy
 * the VMs pvm_snapshot_prestart() started that nobody took.  VMs created
 * from it keep it alive.  Any thread, but not concurrently with other
 * calls on @snap.
 */
PVM_EXPORT void pvm_snapshot_free(pvm_snapshot *snap);

#ifdef __cplusplus
}
#endif
#endif /* PVM_PVM_H */
