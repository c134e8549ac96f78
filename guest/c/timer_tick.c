/* timer_tick: 50 PIT interrupts at 1000 Hz through the PIC and the IDT.
 *
 * Counts in the interrupt handler and only halts in the main loop, so the result
 * does not depend on how fast the CPU runs: it prints "ticks: 50" on debugcon
 * and leaves through debug-exit with 0x10 (exit status 33). */
#include "runtime.h"

#define TICKS 50
#define COUNT_1000HZ 1193 /* 1193182 Hz / 1000, rounded down */

static volatile u32 ticks;

static void on_tick(void)
{
    /* Saturate and mask: a tick already pending when the count is reached must
     * not make the total 51. */
    if (ticks < TICKS)
        ticks++;
    if (ticks == TICKS)
        pic_mask(0);
}

int kmain(u32 magic, u32 info)
{
    (void)magic;
    (void)info;
    idt_init();
    pic_init();
    irq_set_handler(0, on_tick);
    pit_start(PIT_MODE_RATE, COUNT_1000HZ);
    pic_unmask(0);
    while (ticks < TICKS)
        wait_for_interrupt();
    put_str(debugcon_putc, "ticks: ");
    put_dec(debugcon_putc, ticks);
    debugcon_putc('\n');
    return 0x10;
}
