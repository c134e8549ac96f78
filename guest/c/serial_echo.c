/* serial_echo: interrupt-driven echo on COM1 (16550 at 0x3F8, IRQ 4).
 *
 * 115200 8N1, FIFOs on (receive trigger 1 byte), the received-data interrupt
 * enabled and OUT2 set (on the PC it gates the UART's interrupt onto IRQ 4).
 * Prints "echo ready\n" on the serial port, then echoes every byte it receives
 * from the IRQ handler. A 'q' is echoed too, then "bye\n" and debug-exit 0x11
 * (exit status 35). */
#include "runtime.h"

#define COM1 0x3F8
#define COM1_IRQ 4

/* 16550 registers (datasheet, "Register Summary"); DLL/DLM when LCR.DLAB is set. */
#define RBR 0 /* read */
#define THR 0 /* write */
#define DLL 0
#define IER 1
#define DLM 1
#define IIR 2 /* read */
#define FCR 2 /* write */
#define LCR 3
#define MCR 4
#define LSR 5
#define MSR 6

#define LCR_DLAB 0x80
#define LCR_8N1 0x03
#define FCR_ENABLE_CLEAR 0x07 /* enable FIFOs, clear both, receive trigger 1 byte */
#define IER_RX_DATA 0x01
#define MCR_DTR_RTS_OUT2 0x0B
#define LSR_DR 0x01
#define LSR_THRE 0x20
#define IIR_NO_INTERRUPT 0x01

#define DIVISOR_115200 1 /* 1.8432 MHz / 16 / 115200 */

static volatile int quit;

static void serial_putc(char c)
{
    while (!(inb(COM1 + LSR) & LSR_THRE))
        ;
    outb(COM1 + THR, (u8)c);
}

static void on_serial(void)
{
    /* Read IIR until it reports no interrupt pending, draining RBR while LSR.DR:
     * reading RBR is what clears the received-data interrupt; reading LSR and MSR
     * clears the line- and modem-status ones (16550 datasheet, table "Interrupt
     * Control Functions"). */
    while (!(inb(COM1 + IIR) & IIR_NO_INTERRUPT)) {
        while (inb(COM1 + LSR) & LSR_DR) {
            char c = (char)inb(COM1 + RBR);
            if (quit)
                continue; /* after 'q': drop the rest */
            serial_putc(c);
            if (c == 'q')
                quit = 1;
        }
        (void)inb(COM1 + MSR);
    }
}

int kmain(u32 magic, u32 info)
{
    (void)magic;
    (void)info;
    idt_init();
    pic_init();

    outb(COM1 + IER, 0);
    outb(COM1 + LCR, LCR_DLAB);
    outb(COM1 + DLL, DIVISOR_115200 & 0xFF);
    outb(COM1 + DLM, DIVISOR_115200 >> 8);
    outb(COM1 + LCR, LCR_8N1);
    outb(COM1 + FCR, FCR_ENABLE_CLEAR);
    outb(COM1 + MCR, MCR_DTR_RTS_OUT2);
    outb(COM1 + IER, IER_RX_DATA);
    irq_set_handler(COM1_IRQ, on_serial);
    pic_unmask(COM1_IRQ);

    for (const char *s = "echo ready\n"; *s; s++)
        serial_putc(*s);
    while (!quit)
        wait_for_interrupt();
    for (const char *s = "bye\n"; *s; s++)
        serial_putc(*s);
    return 0x11;
}
