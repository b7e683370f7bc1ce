/*
 * timer: counts timer interrupts (vector 32, injected by `pvm-run --timer-hz`)
 * using the IF/IP protocol: pvm_irq_halt() waits with interrupts enabled, and
 * an interrupt that arrives while they are disabled is delivered by
 * pvm_irq_enable() (the hypervisor set PVCS IP, §5.7).
 */
#include <pvm/guest/pvm_guest.h>

#define TICKS 5

static volatile unsigned ticks;

static void on_timer(struct pvm_frame *f)
{
    (void)f;
    ticks++;
}

static uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

int main(void)
{
    pvm_set_trap_handler(32, on_timer);

    /* 1. Halt until TICKS interrupts were handled. */
    while (ticks < TICKS)
        pvm_irq_halt();
    pvm_printf("timer: %u ticks with irq_halt\n", TICKS);

    /* 2. Interrupts off: the next tick must wait, with IP set, until irq_enable. */
    pvm_irq_disable();
    unsigned before = ticks;
    uint64_t start = rdtsc();
    while (!(*(volatile uint64_t *)&pvm_pvcs()->event_flags & PVM_EVENT_FLAGS_IP)) {
        if (rdtsc() - start > 20000000000ull) { /* several seconds at any clock rate */
            pvm_printf("timer: no interrupt became pending while disabled\n");
            return 1;
        }
        pvm_cpu_relax();
    }
    if (ticks != before) {
        pvm_printf("timer: interrupt delivered while disabled\n");
        return 1;
    }
    pvm_irq_enable();
    if (ticks == before) {
        pvm_printf("timer: pending interrupt not delivered by irq_enable\n");
        return 1;
    }
    pvm_printf("timer: pending interrupt delivered on irq_enable\n");
    pvm_irq_disable();
    return 0;
}
