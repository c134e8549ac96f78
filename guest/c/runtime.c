/* The C guests' runtime; see runtime.h. */
#include "runtime.h"

/* --- output ----------------------------------------------------------------------- */

void debugcon_putc(char c) { outb(DEBUGCON_PORT, (u8)c); }

void put_str(putc_fn out, const char *s)
{
    while (*s)
        out(*s++);
}

void put_dec(putc_fn out, u32 value)
{
    char digits[10];
    int n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    while (n)
        out(digits[--n]);
}

void put_dec2(putc_fn out, u32 value)
{
    out((char)('0' + value / 10 % 10));
    out((char)('0' + value % 10));
}

void put_hex(putc_fn out, u64 value)
{
    int shift = 60;
    out('0');
    out('x');
    while (shift > 0 && !((value >> shift) & 0xF))
        shift -= 4;
    for (; shift >= 0; shift -= 4)
        out("0123456789abcdef"[(value >> shift) & 0xF]);
}

void exit(u32 value)
{
    outb(DEBUG_EXIT_PORT, (u8)value);
    for (;;)
        __asm__ volatile("cli; hlt");
}

/* --- memory helpers gcc may call ------------------------------------------------- */

void *memset(void *dst, int c, unsigned long n)
{
    u8 *d = dst;
    while (n--)
        *d++ = (u8)c;
    return dst;
}

void *memcpy(void *dst, const void *src, unsigned long n)
{
    u8 *d = dst;
    const u8 *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, unsigned long n)
{
    u8 *d = dst;
    const u8 *s = src;
    if (d < s) {
        while (n--)
            *d++ = *s++;
    } else {
        while (n--)
            d[n] = s[n];
    }
    return dst;
}

int memcmp(const void *a, const void *b, unsigned long n)
{
    const u8 *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x - *y;
    return 0;
}

/* --- 8259A PIC ---------------------------------------------------------------------- */

#define PIC_MASTER_CMD 0x20
#define PIC_MASTER_DATA 0x21
#define PIC_SLAVE_CMD 0xA0
#define PIC_SLAVE_DATA 0xA1
#define PIC_EOI 0x20          /* OCW2: non-specific EOI */
#define PIC_READ_ISR 0x0B     /* OCW3: next read of the command port returns the ISR */
#define PIC_CASCADE_IRQ 2

void pic_init(void)
{
    /* 8259A datasheet, "Initialization Command Words": ICW1 (edge, cascade,
     * ICW4 needed), ICW2 (vector base), ICW3 (master: slave on IR2; slave: its
     * id 2), ICW4 (8086 mode, normal EOI). Then OCW1 masks every line. */
    outb(PIC_MASTER_CMD, 0x11);
    outb(PIC_SLAVE_CMD, 0x11);
    outb(PIC_MASTER_DATA, IRQ_BASE_MASTER);
    outb(PIC_SLAVE_DATA, IRQ_BASE_SLAVE);
    outb(PIC_MASTER_DATA, 1 << PIC_CASCADE_IRQ);
    outb(PIC_SLAVE_DATA, PIC_CASCADE_IRQ);
    outb(PIC_MASTER_DATA, 0x01);
    outb(PIC_SLAVE_DATA, 0x01);
    outb(PIC_MASTER_DATA, 0xFF);
    outb(PIC_SLAVE_DATA, 0xFF);
}

void pic_unmask(unsigned irq)
{
    if (irq >= 8) {
        outb(PIC_SLAVE_DATA, inb(PIC_SLAVE_DATA) & ~(1u << (irq - 8)));
        irq = PIC_CASCADE_IRQ;
    }
    outb(PIC_MASTER_DATA, inb(PIC_MASTER_DATA) & ~(1u << irq));
}

void pic_mask(unsigned irq)
{
    if (irq >= 8)
        outb(PIC_SLAVE_DATA, inb(PIC_SLAVE_DATA) | (1u << (irq - 8)));
    else
        outb(PIC_MASTER_DATA, inb(PIC_MASTER_DATA) | (1u << irq));
}

static u8 pic_in_service(u16 cmd_port)
{
    outb(cmd_port, PIC_READ_ISR);
    return inb(cmd_port);
}

/* --- 8254 PIT ----------------------------------------------------------------------- */

#define PIT_CHANNEL0 0x40
#define PIT_CONTROL 0x43

void pit_start(u8 mode, u16 count)
{
    /* Control word (8254 datasheet, "Control Word Format"): counter 0,
     * read/write LSB then MSB, the mode, binary counting. */
    outb(PIT_CONTROL, (u8)((0 << 6) | (3 << 4) | ((mode & 7) << 1)));
    outb(PIT_CHANNEL0, (u8)(count & 0xFF));
    outb(PIT_CHANNEL0, (u8)(count >> 8));
}

/* --- IDT and dispatch ---------------------------------------------------------------- */

#define VECTORS 48
#define CODE_SEL 0x08       /* crt0.S's GDT */
#define GATE_INTERRUPT32 0x8E /* present, DPL 0, 32-bit interrupt gate: IF cleared on entry */

struct frame {
    u32 edi, esi, ebp, esp, ebx, edx, ecx, eax; /* pushal */
    u32 vector, error;                          /* the stub */
    u32 eip, cs, eflags;                        /* the CPU */
};

extern const u32 isr_stubs[VECTORS];
static u64 idt[VECTORS] __attribute__((aligned(8)));
static irq_handler handlers[16];

void idt_init(void)
{
    struct __attribute__((packed)) {
        u16 limit;
        u32 base;
    } pointer;
    for (unsigned v = 0; v < VECTORS; v++) {
        u32 offset = isr_stubs[v];
        idt[v] = (u64)(offset & 0xFFFF) | (u64)CODE_SEL << 16 | (u64)GATE_INTERRUPT32 << 40 |
                 (u64)(offset >> 16) << 48;
    }
    pointer.limit = sizeof(idt) - 1;
    pointer.base = (u32)idt;
    __asm__ volatile("lidt %0" : : "m"(pointer));
}

void irq_set_handler(unsigned irq, irq_handler handler)
{
    if (irq < 16)
        handlers[irq] = handler;
}

void isr_dispatch(struct frame *f);

void isr_dispatch(struct frame *f)
{
    if (f->vector < 32) {
        put_str(debugcon_putc, "exception ");
        put_dec(debugcon_putc, f->vector);
        put_str(debugcon_putc, " error ");
        put_hex(debugcon_putc, f->error);
        put_str(debugcon_putc, " at ");
        put_hex(debugcon_putc, f->eip);
        debugcon_putc('\n');
        exit(0x7E);
    }
    unsigned irq = f->vector - IRQ_BASE_MASTER;
    /* A spurious IRQ 7 (15) has no bit in the master's (slave's) ISR and gets no
     * EOI; a spurious 15 still took the master's cascade line, which does
     * (8259A datasheet, "Interrupt Sequence"; the lowest-priority line reports
     * a request withdrawn before INTA). */
    if (irq == 7 && !(pic_in_service(PIC_MASTER_CMD) & 0x80))
        return;
    if (irq == 15 && !(pic_in_service(PIC_SLAVE_CMD) & 0x80)) {
        outb(PIC_MASTER_CMD, PIC_EOI);
        return;
    }
    if (handlers[irq])
        handlers[irq]();
    if (irq >= 8)
        outb(PIC_SLAVE_CMD, PIC_EOI);
    outb(PIC_MASTER_CMD, PIC_EOI);
}
