/*
 * tests/test_hostile.c - the guest is hostile: randomized inputs against the
 * two places that parse what a guest controls.
 *
 *  - the machine model, fed random register files, PVCS contents, MSR writes,
 *    instruction bytes and events (every entry point);
 *  - the ELF loader, fed thousands of mutated and truncated copies of a real
 *    guest image.
 *
 * Each case must end in a defined outcome (a valid result, or a negative
 * code with a message) without touching memory it does not own: run under
 * -DPVM_ASAN=ON -DPVM_UBSAN=ON to make that last part strict.  The seed is
 * printed; PVM_TEST_SEED overrides it; PVM_TEST_VERBOSE=1 prints every loader outcome.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pvm/pvm.h"
#include "test_machine_fake.h"

static uint64_t rng_state;

static uint64_t rnd(void)
{
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static void seed(void)
{
    const char *s = getenv("PVM_TEST_SEED");
    rng_state = s ? strtoull(s, NULL, 0) : 0x600dbeefcafef00dull;
    if (!rng_state)
        rng_state = 1;
    printf("seed 0x%llx\n", (unsigned long long)rng_state);
}

/* An address that is usually inside the fake RAM, sometimes just outside or anywhere. */
static uint64_t rnd_addr(void)
{
    switch (rnd() % 4) {
    case 0: return rnd();
    case 1: return FAKE_RAM_SIZE - (rnd() % 64);
    default: return rnd() % FAKE_RAM_SIZE;
    }
}

static const uint32_t msrs[] = {
    MSR_PVM_LINEAR_ADDRESS_RANGE, MSR_PVM_VCPU_STRUCT, MSR_PVM_SUPERVISOR_RSP, MSR_PVM_SUPERVISOR_REDZONE,
    MSR_PVM_EVENT_ENTRY, MSR_PVM_RETU_RIP, MSR_PVM_RETS_RIP, MSR_PVM_SWITCH_CR3, PVM_MSR_STAR, PVM_MSR_LSTAR,
    PVM_MSR_CSTAR, PVM_MSR_SYSCALL_MASK, PVM_MSR_FS_BASE, PVM_MSR_GS_BASE, PVM_MSR_KERNEL_GS_BASE,
    PVM_MSR_TSC_AUX, PVM_MSR_EFER, 0x4b564df8, 0x4b564dff, 0x12345678,
};

/* Privileged and ordinary instruction bytes the #GP emulator and MMIO decoder must cope with. */
static const uint8_t insns[][12] = {
    { 0x0f, 0x30 }, { 0x0f, 0x32 }, { 0xfa }, { 0xfb }, { 0xf4 }, { 0x0f, 0x22, 0xd8 }, { 0x0f, 0x20, 0xd8 },
    { 0x0f, 0x01, 0x38 }, { 0xe4, 0x60 }, { 0xec }, { 0xef }, { 0x66, 0xe5, 0x10 },
    { 0x0f, 0x01, 0x3c, 0x25, 0x50, 0x56, 0x4d, 0xff, 0x0f, 0xa2 }, { 0x48, 0x8b, 0x04, 0x25, 0, 0, 0x20, 0 },
    { 0x88, 0x20 }, { 0x0f, 0xb6, 0x06 }, { 0xc7, 0x00, 1, 2, 3, 4 }, { 0xf3, 0xa4 }, { 0x0f, 0x0b },
};

static void randomize_state(void)
{
    for (int i = 0; i < PVM_NR_GPRS; i++)
        cpu->gpr[i] = rnd() % 3 ? rnd_addr() : rnd();
    if (rnd() % 3 == 0)
        cpu->gpr[PVM_RAX] = PVM_HC_SPECIAL_BASE + rnd() % 12; /* the PVM hypercalls, incl. IRQ_HALT */
    cpu->rip = rnd_addr();
    cpu->rflags = rnd();
    if (rnd() % 2)
        cpu->mode = PVM_MODE_USER, cpu->cs = rnd() % 2 ? PVM_USER_CS : PVM_USER32_CS;
    if (rnd() % 8 == 0)
        cpu->cs = (uint16_t)rnd(); /* state a provider would never report: must be refused, not trusted */
    /* Random PVCS (and sometimes the PVCS somewhere odd). */
    for (unsigned i = 0; i < 16; i++)
        wr64(PVCS_GPA + 8 * i, rnd());
    for (unsigned n = rnd() % 6; n--;)
        pvm_m_wrmsr(cpu, &mem, msrs[rnd() % (sizeof(msrs) / sizeof(msrs[0]))], rnd() % 2 ? rnd() : rnd_addr(),
                    rnd() % 4 == 0);
    /* Instruction bytes at RIP when RIP is in RAM. */
    if (cpu->rip < FAKE_RAM_SIZE - 16) {
        const uint8_t *b = insns[rnd() % (sizeof(insns) / sizeof(insns[0]))];
        put_bytes(cpu->rip, b, 12);
    }
    if (rnd() % 4 == 0) {
        struct pvm_event ev = { .type = (uint32_t)(rnd() % 4), .vector = (uint8_t)rnd(),
                                .has_error_code = (uint8_t)(rnd() % 2), .error_code = (uint32_t)rnd(),
                                .cr2 = rnd() };
        pvm_m_queue_event(cpu, &ev);
    }
}

static void check_outcome(enum pvm_m_result r)
{
    ck_assert_int_ge(r, PVM_M_RESUME);
    ck_assert_int_le(r, PVM_M_SHUTDOWN);
    ck_assert(cpu->mode == PVM_MODE_SUPERVISOR || cpu->mode == PVM_MODE_USER);
    if (r == PVM_M_SHUTDOWN || r == PVM_M_EXIT) {
        ck_assert_uint_ge(cpu->exit.reason, PVM_EXIT_HYPERCALL);
        ck_assert_uint_le(cpu->exit.reason, PVM_EXIT_INTERNAL_ERROR);
    }
    if (r == PVM_M_SHUTDOWN) {
        ck_assert_uint_eq(cpu->exit.reason, PVM_EXIT_SHUTDOWN);
        ck_assert(memchr(cpu->exit.u.shutdown.reason, 0, sizeof(cpu->exit.u.shutdown.reason)));
        ck_assert_uint_gt(strlen(cpu->exit.u.shutdown.reason), 0);
    }
    if (r == PVM_M_EXIT && cpu->exit.reason == PVM_EXIT_INTERNAL_ERROR)
        ck_assert(memchr(cpu->exit.u.internal.msg, 0, sizeof(cpu->exit.u.internal.msg)));
}

START_TEST(model_survives_random_guests)
{
    seed();
    unsigned outcomes[4] = { 0 };
    for (int iter = 0; iter < 6000; iter++) {
        fake_setup();
        randomize_state();
        enum pvm_m_result r;
        switch (rnd() % 6) {
        case 0: r = pvm_m_syscall(cpu, &mem); break;
        case 1: r = pvm_m_exception(cpu, &mem, rnd() % 2 ? PVM_VEC_GP : (unsigned)(rnd() % 40), rnd() % 2, (uint32_t)rnd(), rnd_addr()); break;
        case 2: r = pvm_m_int80(cpu, &mem); break;
        case 3: r = pvm_m_check_events(cpu, &mem); break;
        case 4: r = pvm_m_mmio(cpu, &mem, rnd(), rnd() % 2); break;
        default: r = pvm_m_deliver(cpu, &mem, (unsigned)(rnd() % 256), rnd() % 2, (uint32_t)rnd()); break;
        }
        check_outcome(r);
        outcomes[r]++;
        /* Complete whatever exit is outstanding with random data, as an application might. */
        if (r == PVM_M_EXIT) {
            struct pvm_exit e = cpu->exit;
            e.u.io.data = (uint32_t)rnd();
            pvm_m_complete(cpu, &e);
        }
        free(fm.ram);
        free(cpu);
    }
    /* Every kind of outcome must have been reached, or the fuzzing is too narrow. */
    for (int i = 0; i < 4; i++)
        ck_assert_msg(outcomes[i] > 5, "outcome %d reached only %u times", i, outcomes[i]);
}
END_TEST

/* ---- the loader --------------------------------------------------------- */

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f, "%s", path);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*len);
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_eq(fread(b, 1, *len, f), *len);
    fclose(f);
    return b;
}

START_TEST(loader_survives_mutated_images)
{
    seed();
    size_t len;
    uint8_t *orig = read_file(PVM_TEST_BINARY_DIR "/examples/hello.elf", &len);
    uint8_t *img = malloc(len);
    ck_assert_ptr_nonnull(img);
    int fds = pvm_test_count_fds();
    unsigned ok = 0, rejected = 0;
    for (int iter = 0; iter < 2000; iter++) {
        memcpy(img, orig, len);
        size_t n = len;
        unsigned flips = 1 + (unsigned)(rnd() % 8);
        for (unsigned i = 0; i < flips; i++) {
            /* Mostly the headers (ELF, program and section headers live at both ends). */
            size_t at = rnd() % 2 ? rnd() % 256 : (rnd() % 2 ? len - 1 - rnd() % 1024 : rnd() % len);
            if (at < len)
                img[at] = (uint8_t)rnd();
        }
        if (rnd() % 8 == 0)
            n = rnd() % len; /* truncated */
        pvm_vm *vm = NULL;
        struct pvm_vm_options o = PVM_VM_OPTIONS_INIT;
        o.max_memory = 256ull << 20;
        o.max_vcpus = 1;
        ck_assert_int_eq(pvm_vm_create(&vm, &o), 0);
        struct pvm_load_options lo = PVM_LOAD_OPTIONS_INIT;
        lo.ram_size = 16ull << 20;
        int rc = pvm_vm_load_elf_image(vm, img, n, &lo, NULL);
        if (getenv("PVM_TEST_VERBOSE"))
            printf("%d %d %s\n", iter, rc, rc ? pvm_last_error() : "");
        if (rc == 0) {
            ok++;
        } else {
            rejected++;
            ck_assert_int_lt(rc, 0);
            ck_assert_str_ne(pvm_strerror(rc), "unknown error");
            ck_assert_msg(strlen(pvm_last_error()) > 0, "rc %d (%s) without a message", rc, pvm_err_name(rc));
        }
        pvm_vm_destroy(vm);
    }
    printf("loader: %u accepted, %u rejected\n", ok, rejected);
    ck_assert_uint_gt(rejected, 300);
    ck_assert_uint_gt(ok, 10); /* mutations of unused bytes still load */
    ck_assert_int_eq(pvm_test_count_fds(), fds);
    free(img);
    free(orig);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("hostile");
    TCase *tc = tcase_create("random");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, model_survives_random_guests);
    tcase_add_test(tc, loader_survives_mutated_images);
    suite_add_tcase(s, tc);
    return pvm_test_run_suite(s);
}
