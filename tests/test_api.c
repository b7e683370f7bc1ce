/* tests/test_api.c - argument checks and error model of the public API (lib/core). */
#include <fcntl.h>
#include <stdbool.h>
#include <unistd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pvm/pvm.h"
#include "testutil.h"

static pvm_vm *new_vm(void)
{
    struct pvm_vm_options o = PVM_VM_OPTIONS_INIT;
    o.backend = PVM_BACKEND_NATIVE;
    o.max_memory = 64ull << 20;
    pvm_vm *vm = NULL;
    ck_assert_int_eq(pvm_vm_create(&vm, &o), 0);
    ck_assert_ptr_nonnull(vm);
    return vm;
}

START_TEST(version)
{
    ck_assert_uint_eq(pvm_version(), PVM_VERSION);
    ck_assert_str_eq(pvm_version_string(), "0.1.0");
    ck_assert_uint_eq(PVM_VERSION, 0x000100);
}
END_TEST

START_TEST(errors_have_names)
{
    ck_assert_str_eq(pvm_strerror(0), "success");
    ck_assert_str_eq(pvm_strerror(PVM_EINVAL), "invalid argument");
    ck_assert_str_eq(pvm_strerror(PVM_ENODEV), "backend not available");
    ck_assert_str_eq(pvm_strerror(-424242), "unknown error");
    ck_assert_str_eq(pvm_err_name(PVM_EEXIST), "PVM_EEXIST");
    ck_assert_str_eq(pvm_err_name(PVM_EBADELF), "PVM_EBADELF");
    ck_assert_int_eq(PVM_EINVAL, -22);
    ck_assert_int_eq(PVM_ENOTSUP, -95);
    static const int all[] = {
#define X(name, val, desc) val,
        PVM_ERRNO_MAP(X)
#undef X
    };
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        ck_assert_str_ne(pvm_strerror(all[i]), "unknown error");
        ck_assert_str_ne(pvm_err_name(all[i]), "PVM_E?");
    }
}
END_TEST

START_TEST(last_error_never_null)
{
    ck_assert_ptr_nonnull(pvm_last_error());
    ck_assert_int_eq(pvm_vm_create(NULL, NULL), PVM_EINVAL);
    ck_assert_str_eq(pvm_last_error(), "pvm_vm_create: NULL out pointer");
    ck_assert_str_eq(pvm_backend_name(PVM_BACKEND_NATIVE), "native");
    ck_assert_ptr_null(pvm_backend_name((enum pvm_backend)7));
}
END_TEST

START_TEST(backend_names)
{
    enum pvm_backend b;
    ck_assert_int_eq(pvm_backend_from_name("kvm", &b), 0);
    ck_assert_int_eq(b, PVM_BACKEND_KVM);
    ck_assert_int_eq(pvm_backend_from_name("native", &b), 0);
    ck_assert_int_eq(b, PVM_BACKEND_NATIVE);
    ck_assert_int_eq(pvm_backend_from_name("kmod", &b), 0);
    ck_assert_int_eq(b, PVM_BACKEND_KMOD);
    ck_assert_str_eq(pvm_backend_name(PVM_BACKEND_KMOD), "kmod");
    ck_assert_int_eq(pvm_backend_from_name("xen", &b), PVM_EINVAL);
    ck_assert_str_eq(pvm_last_error(), "unknown backend \"xen\" (expected auto, native, kvm or kmod)");
    ck_assert_ptr_nonnull(strstr(pvm_last_error(), "\"xen\""));
    ck_assert_int_eq(pvm_backend_from_name(NULL, &b), PVM_EINVAL);
}
END_TEST

static bool have_kvm(void)
{
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd >= 0)
        close(fd);
    return fd >= 0;
}

START_TEST(kvm_probe_says_why)
{
    struct pvm_vm_options o = PVM_VM_OPTIONS_INIT;
    o.backend = PVM_BACKEND_KVM;
    if (!have_kvm()) {
        ck_assert_int_eq(pvm_backend_probe(PVM_BACKEND_KVM), PVM_ENODEV);
        ck_assert_ptr_nonnull(strstr(pvm_last_error(), "kvm: cannot open /dev/kvm: "));
        pvm_vm *vm = (pvm_vm *)0x1;
        ck_assert_int_eq(pvm_vm_create(&vm, &o), PVM_ENODEV);
        ck_assert_ptr_null(vm);
    } else {
        int rc = pvm_backend_probe(PVM_BACKEND_KVM);
        ck_assert_msg(rc == 0 || (rc == PVM_ENODEV && strstr(pvm_last_error(), "kvm: ")), "%d %s", rc,
                      pvm_last_error());
    }
    ck_assert_int_eq(pvm_backend_probe(PVM_BACKEND_NATIVE), 0);
    /* auto keeps native over a standard KVM (and no /dev/pvm here) and says why. */
    if (access("/dev/pvm", F_OK) != 0) {
        ck_assert_int_eq(pvm_backend_probe(PVM_BACKEND_AUTO), 0);
        ck_assert_msg(strstr(pvm_last_error(), "auto: chose native (kmod: cannot open /dev/pvm: ") &&
                          strstr(pvm_last_error(), "; kvm: "), "%s", pvm_last_error());
    }
}
END_TEST

/* Without the module: the kmod backend says so and what to do; a VM on it fails cleanly. */
START_TEST(kmod_probe_says_why)
{
    if (access("/dev/pvm", F_OK) == 0)
        return; /* the module is loaded (tests/kmod/kmod-backend-e2e runs the backend itself) */
    ck_assert_int_eq(pvm_backend_probe(PVM_BACKEND_KMOD), PVM_ENODEV);
    ck_assert_str_eq(pvm_last_error(), "kmod: cannot open /dev/pvm: No such file or directory "
                                       "(the pvm module is not loaded: kmod/README.md)");
    struct pvm_vm_options o = PVM_VM_OPTIONS_INIT;
    o.backend = PVM_BACKEND_KMOD;
    pvm_vm *vm = (pvm_vm *)0x1;
    ck_assert_int_eq(pvm_vm_create(&vm, &o), PVM_ENODEV);
    ck_assert_ptr_null(vm);
}
END_TEST

START_TEST(auto_picks_native_and_env_overrides)
{
    pvm_vm *vm = NULL;
    unsetenv("PVM_BACKEND");
    ck_assert_int_eq(pvm_vm_create(&vm, NULL), 0);
    ck_assert_int_eq(pvm_vm_backend(vm), PVM_BACKEND_NATIVE);
    pvm_vm_destroy(vm);
    setenv("PVM_BACKEND", "kvm", 1);
    if (have_kvm()) {
        ck_assert_int_eq(pvm_vm_create(&vm, NULL), 0);
        ck_assert_int_eq(pvm_vm_backend(vm), PVM_BACKEND_KVM);
        pvm_vm_destroy(vm);
    } else {
        ck_assert_int_eq(pvm_vm_create(&vm, NULL), PVM_ENODEV);
    }
    setenv("PVM_BACKEND", "bogus", 1);
    ck_assert_int_eq(pvm_vm_create(&vm, NULL), PVM_EINVAL);
    ck_assert_ptr_nonnull(strstr(pvm_last_error(), "$PVM_BACKEND"));
    unsetenv("PVM_BACKEND");
}
END_TEST

START_TEST(options_checked)
{
    pvm_vm *vm = NULL;
    struct pvm_vm_options o = PVM_VM_OPTIONS_INIT;
    o.version = 99;
    ck_assert_int_eq(pvm_vm_create(&vm, &o), PVM_EVERSION);
    ck_assert_ptr_nonnull(strstr(pvm_last_error(), "version 99"));
    o = (struct pvm_vm_options)PVM_VM_OPTIONS_INIT;
    o.max_vcpus = PVM_MAX_VCPUS + 1;
    ck_assert_int_eq(pvm_vm_create(&vm, &o), PVM_EINVAL);
    o = (struct pvm_vm_options)PVM_VM_OPTIONS_INIT;
    o.max_memory = 12345;
    ck_assert_int_eq(pvm_vm_create(&vm, &o), PVM_EINVAL);
    o = (struct pvm_vm_options)PVM_VM_OPTIONS_INIT;
    o.kick_signal = SIGKILL;
    ck_assert_int_eq(pvm_vm_create(&vm, &o), PVM_EINVAL);
    o.kick_signal = SIGSEGV; /* reserved for guest faults */
    ck_assert_int_eq(pvm_vm_create(&vm, &o), PVM_EINVAL);
    o.kick_signal = SIGSYS;
    ck_assert_int_eq(pvm_vm_create(&vm, &o), PVM_EINVAL);
    o.kick_signal = SIGRTMIN + 1;
    ck_assert_int_eq(pvm_vm_create(&vm, &o), 0);
    pvm_vm_destroy(vm);
    vm = NULL;
    o = (struct pvm_vm_options)PVM_VM_OPTIONS_INIT;
    o.backend = (enum pvm_backend)17;
    ck_assert_int_eq(pvm_vm_create(&vm, &o), PVM_EINVAL);
    ck_assert_ptr_null(vm);
}
END_TEST

START_TEST(destroy_null_is_safe)
{
    pvm_vm_destroy(NULL);
    pvm_vm_destroy(NULL);
    pvm_vcpu_destroy(NULL);
}
END_TEST

START_TEST(alloc_memory_checks)
{
    pvm_vm *vm = new_vm();
    void *p = NULL;
    ck_assert_int_eq(pvm_vm_alloc_memory(vm, 0, &p), PVM_EINVAL);
    ck_assert_int_eq(pvm_vm_alloc_memory(vm, 100, &p), PVM_EINVAL);
    ck_assert_int_eq(pvm_vm_alloc_memory(NULL, 4096, &p), PVM_EINVAL);
    ck_assert_int_eq(pvm_vm_alloc_memory(vm, 4096, NULL), PVM_EINVAL);
    ck_assert_int_eq(pvm_vm_alloc_memory(vm, 128ull << 20, &p), PVM_ENOMEM);
    ck_assert_ptr_nonnull(strstr(pvm_last_error(), "max_memory"));
    ck_assert_int_eq(pvm_vm_alloc_memory(vm, 1 << 20, &p), 0);
    ck_assert_uint_eq(((unsigned char *)p)[4095], 0);
    memset(p, 0xab, 1 << 20);
    ck_assert_int_eq(pvm_vm_free_memory(vm, (char *)p + 4096), PVM_EINVAL);
    ck_assert_int_eq(pvm_vm_free_memory(vm, p), 0);
    ck_assert_int_eq(pvm_vm_free_memory(vm, p), PVM_EINVAL);
    pvm_vm_destroy(vm);
}
END_TEST

START_TEST(map_memory_checks)
{
    pvm_vm *vm = new_vm();
    uint8_t *p;
    ck_assert_int_eq(pvm_vm_alloc_memory(vm, 1 << 20, (void **)&p), 0);
    ck_assert_int_eq(pvm_vm_map_memory(NULL, 0, p, 4096, 0), PVM_EINVAL);
    ck_assert_int_eq(pvm_vm_map_memory(vm, 0, NULL, 4096, 0), PVM_EINVAL);
    ck_assert_int_eq(pvm_vm_map_memory(vm, 0x800, p, 4096, 0), PVM_EINVAL);
    ck_assert_int_eq(pvm_vm_map_memory(vm, 0, p + 8, 4096, 0), PVM_EINVAL);
    ck_assert_int_eq(pvm_vm_map_memory(vm, 0, p, 4095, 0), PVM_EINVAL);
    ck_assert_int_eq(pvm_vm_map_memory(vm, 0, p, 0, 0), PVM_EINVAL);
    ck_assert_int_eq(pvm_vm_map_memory(vm, 0, p, 4096, 0x80), PVM_EINVAL);
    ck_assert_int_eq(pvm_vm_map_memory(vm, 0xfffffffffffff000ull, p, 8192, 0), PVM_ERANGE);
    /* A region must come from pvm_vm_alloc_memory on native. */
    static uint8_t outside[8192] __attribute__((aligned(4096)));
    ck_assert_int_eq(pvm_vm_map_memory(vm, 0, outside, 4096, 0), PVM_ENOTSUP);
    ck_assert_ptr_nonnull(strstr(pvm_last_error(), "pvm_vm_alloc_memory"));
    /* Larger than the allocation. */
    ck_assert_int_eq(pvm_vm_map_memory(vm, 0, p, 2 << 20, 0), PVM_ENOTSUP);

    ck_assert_int_eq(pvm_vm_map_memory(vm, 0x10000, p, 0x10000, 0), 0);
    ck_assert_int_eq(pvm_vm_map_memory(vm, 0x1f000, p + 0x10000, 0x2000, 0), PVM_EEXIST);
    ck_assert_ptr_nonnull(strstr(pvm_last_error(), "overlaps the region at gpa 0x10000"));
    ck_assert_int_eq(pvm_vm_map_memory(vm, 0xf000, p + 0x10000, 0x2000, 0), PVM_EEXIST);
    ck_assert_int_eq(pvm_vm_map_memory(vm, 0x0, p + 0x10000, 0x100000 - 0x10000, 0), PVM_EEXIST);
    /* Adjacent on both sides is fine. */
    ck_assert_int_eq(pvm_vm_map_memory(vm, 0x20000, p + 0x20000, 0x1000, PVM_MEM_READONLY), 0);
    ck_assert_int_eq(pvm_vm_map_memory(vm, 0xf000, p + 0x30000, 0x1000, PVM_MEM_NOEXEC), 0);

    ck_assert_ptr_eq(pvm_vm_gpa_to_host(vm, 0x10000, 0x10000), p);
    ck_assert_ptr_eq(pvm_vm_gpa_to_host(vm, 0x1fff8, 8), p + 0xfff8);
    ck_assert_ptr_null(pvm_vm_gpa_to_host(vm, 0x1fff8, 16)); /* crosses into the next region */
    ck_assert_ptr_null(pvm_vm_gpa_to_host(vm, 0x30000, 1));
    ck_assert_ptr_eq(pvm_vm_gpa_to_host(vm, 0x20000, 1), p + 0x20000);

    ck_assert_int_eq(pvm_vm_free_memory(vm, p), PVM_EBUSY);
    ck_assert_int_eq(pvm_vm_unmap_memory(vm, 0x10000, 0x1000), PVM_ENOENT);
    ck_assert_int_eq(pvm_vm_unmap_memory(vm, 0x10000, 0x10000), 0);
    ck_assert_ptr_null(pvm_vm_gpa_to_host(vm, 0x10000, 1));
    ck_assert_int_eq(pvm_vm_unmap_memory(vm, 0x20000, 0x1000), 0);
    ck_assert_int_eq(pvm_vm_unmap_memory(vm, 0xf000, 0x1000), 0);
    ck_assert_int_eq(pvm_vm_free_memory(vm, p), 0);
    pvm_vm_destroy(vm);
}
END_TEST

START_TEST(no_fd_leak_vm)
{
    int before = pvm_test_count_fds();
    for (int i = 0; i < 50; i++) {
        pvm_vm *vm = new_vm();
        void *p;
        ck_assert_int_eq(pvm_vm_alloc_memory(vm, 1 << 16, &p), 0);
        ck_assert_int_eq(pvm_vm_map_memory(vm, 0, p, 1 << 16, 0), 0);
        pvm_vm_destroy(vm);
    }
    ck_assert_int_eq(pvm_test_count_fds(), before);
}
END_TEST

static int log_count;
static char log_last[256];
static void log_cb(void *opaque, enum pvm_log_level level, const char *msg)
{
    (void)opaque;
    (void)level;
    log_count++;
    snprintf(log_last, sizeof(log_last), "%s", msg);
}

START_TEST(log_callback)
{
    pvm_set_log_callback(log_cb, NULL, PVM_LOG_DEBUG);
    log_count = 0;
    pvm_vm *vm = NULL;
    ck_assert_int_eq(pvm_vm_create(&vm, NULL) == 0 ? 0 : 1, 0);
    void *p;
    ck_assert_int_eq(pvm_vm_alloc_memory(vm, 3, &p), PVM_EINVAL);
    ck_assert_int_ge(log_count, 1);
    ck_assert_ptr_nonnull(strstr(log_last, "PVM_EINVAL"));
    pvm_set_log_callback(log_cb, NULL, PVM_LOG_ERROR);
    int n = log_count;
    ck_assert_int_eq(pvm_vm_alloc_memory(vm, 3, &p), PVM_EINVAL);
    ck_assert_int_eq(log_count, n); /* debug messages filtered */
    pvm_set_log_callback(NULL, NULL, PVM_LOG_ERROR);
    pvm_vm_destroy(vm);
}
END_TEST

START_TEST(vcpu_args)
{
    pvm_vm *vm = new_vm();
    pvm_vcpu *v = NULL;
    struct pvm_vcpu_options o = PVM_VCPU_OPTIONS_INIT;
    ck_assert_int_eq(pvm_vcpu_create(NULL, vm, &o), PVM_EINVAL);
    ck_assert_int_eq(pvm_vcpu_create(&v, NULL, &o), PVM_EINVAL);
    o.version = 3;
    ck_assert_int_eq(pvm_vcpu_create(&v, vm, &o), PVM_EVERSION);
    o = (struct pvm_vcpu_options)PVM_VCPU_OPTIONS_INIT;
    o.id = 64;
    ck_assert_int_eq(pvm_vcpu_create(&v, vm, &o), PVM_ERANGE);
    o.id = 1;
    ck_assert_int_eq(pvm_vcpu_create(&v, vm, &o), 0);
    ck_assert_uint_eq(pvm_vcpu_id(v), 1);
    ck_assert_ptr_eq(pvm_vcpu_vm(v), vm);
    pvm_vcpu *w = NULL;
    ck_assert_int_eq(pvm_vcpu_create(&w, vm, &o), PVM_EEXIST);
    ck_assert_ptr_null(w);

    struct pvm_regs r;
    ck_assert_int_eq(pvm_vcpu_get_regs(v, NULL), PVM_EINVAL);
    ck_assert_int_eq(pvm_vcpu_get_regs(v, &r), 0);
    ck_assert_uint_eq(r.rflags, 0x2);
    r.rax = 0x1234;
    r.r15 = 0xfeed;
    r.rip = 0x400000;
    ck_assert_int_eq(pvm_vcpu_set_regs(v, &r), 0);
    memset(&r, 0, sizeof(r));
    ck_assert_int_eq(pvm_vcpu_get_regs(v, &r), 0);
    ck_assert_uint_eq(r.rax, 0x1234);
    ck_assert_uint_eq(r.r15, 0xfeed);
    ck_assert_uint_eq(r.rip, 0x400000);

    struct pvm_event ev = { .type = PVM_EVENT_INTERRUPT, .vector = 31 };
    ck_assert_int_eq(pvm_vcpu_inject(v, &ev), PVM_EINVAL);
    ev.vector = 32;
    ev.has_error_code = 1;
    ck_assert_int_eq(pvm_vcpu_inject(v, &ev), PVM_EINVAL);
    ev = (struct pvm_event){ .type = PVM_EVENT_EXCEPTION, .vector = 2 };
    ck_assert_int_eq(pvm_vcpu_inject(v, &ev), PVM_EINVAL);
    ev.vector = 40;
    ck_assert_int_eq(pvm_vcpu_inject(v, &ev), PVM_EINVAL);
    ev.type = 9;
    ck_assert_int_eq(pvm_vcpu_inject(v, &ev), PVM_EINVAL);
    ck_assert_int_eq(pvm_vcpu_inject(v, NULL), PVM_EINVAL);
    ck_assert_int_eq(pvm_vcpu_run(v, NULL), PVM_EINVAL);
    ck_assert_int_eq(pvm_vcpu_run(v, NULL), PVM_EINVAL); /* leaves a message behind ... */
    ck_assert_int_eq(pvm_vcpu_kick(NULL), PVM_EINVAL);   /* ... which the kick replaces with its own */
    ck_assert_str_eq(pvm_last_error(), "pvm_vcpu_kick: NULL vCPU");
    ck_assert_int_eq(pvm_vcpu_kick(v), 0);
    ck_assert_str_eq(pvm_last_error(), "");
    ck_assert_int_eq(pvm_vcpu_set_cpuid(v, NULL, 1), PVM_EINVAL);
    ck_assert_int_eq(pvm_vcpu_set_cpuid(v, (struct pvm_cpuid_entry *)&r, 257), PVM_EINVAL);

    uint64_t val;
    ck_assert_int_eq(pvm_vcpu_get_msr(v, 0x4b564df5, &val), 0);
    ck_assert_uint_eq(val, 0xfffffffffffffffeull);
    ck_assert_int_eq(pvm_vcpu_get_msr(v, 0x4b564df5, NULL), PVM_EINVAL);
    pvm_vcpu_destroy(v);
    /* The id is free again. */
    ck_assert_int_eq(pvm_vcpu_create(&v, vm, &o), 0);
    pvm_vm_destroy(vm); /* destroys v too */
}
END_TEST

int main(void)
{
    Suite *s = suite_create("api");
    TCase *tc = tcase_create("api");
    tcase_add_test(tc, version);
    tcase_add_test(tc, errors_have_names);
    tcase_add_test(tc, last_error_never_null);
    tcase_add_test(tc, backend_names);
    tcase_add_test(tc, kvm_probe_says_why);
    tcase_add_test(tc, kmod_probe_says_why);
    tcase_add_test(tc, auto_picks_native_and_env_overrides);
    tcase_add_test(tc, options_checked);
    tcase_add_test(tc, destroy_null_is_safe);
    tcase_add_test(tc, alloc_memory_checks);
    tcase_add_test(tc, map_memory_checks);
    tcase_add_test(tc, no_fd_leak_vm);
    tcase_add_test(tc, log_callback);
    tcase_add_test(tc, vcpu_args);
    suite_add_tcase(s, tc);
    return pvm_test_run_suite(s);
}
