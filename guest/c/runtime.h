/* The C guests' runtime: port I/O, output, interrupts, the PIC and the PIT, exit.
 * Freestanding: only the compiler's own <stdint.h>. */
#ifndef VMCORE_GUEST_RUNTIME_H
#define VMCORE_GUEST_RUNTIME_H

#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

#define DEBUGCON_PORT 0xF1
#define DEBUG_EXIT_PORT 0x501 /* writing v exits with status (v << 1) | 1 */

#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002

/* Port I/O */
static inline void outb(u16 port, u8 value) { __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port)); }
static inline u8 inb(u16 port)
{
    u8 value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }

/* Wait for an interrupt with interrupts otherwise off: STI's one-instruction
 * shadow (Intel SDM vol. 2, STI) means an interrupt pending before the HLT wakes
 * it instead of being taken between the test and the halt. Returns with IF=0. */
static inline void wait_for_interrupt(void) { __asm__ volatile("sti; hlt; cli" ::: "memory"); }

/* Output: a character sink and helpers that format into one. */
typedef void (*putc_fn)(char c);
void debugcon_putc(char c);
void put_str(putc_fn out, const char *s);
void put_dec(putc_fn out, u32 value);
void put_hex(putc_fn out, u64 value); /* 0x..., no leading zeros */
void put_dec2(putc_fn out, u32 value); /* two digits, zero-padded */

/* Leave the VM through debug-exit; halts for ever if nothing is there. */
__attribute__((noreturn)) void exit(u32 value);

/* Interrupts: vectors 0-31 are exceptions (fatal: printed on debugcon, exit 0x7E),
 * 32-47 the PIC's IRQ 0-15. */
#define IRQ_BASE_MASTER 0x20
#define IRQ_BASE_SLAVE 0x28
typedef void (*irq_handler)(void);
void idt_init(void);
void irq_set_handler(unsigned irq, irq_handler handler);

/* 8259A pair (master 0x20/0x21, slave 0xA0/0xA1): remapped to vectors 0x20/0x28,
 * every line masked until pic_unmask(). */
void pic_init(void);
void pic_unmask(unsigned irq);
void pic_mask(unsigned irq);

/* 8254 channel 0 (IRQ 0), counting 1.193182 MHz. */
#define PIT_HZ 1193182
#define PIT_MODE_RATE 2 /* mode 2, rate generator */
void pit_start(u8 mode, u16 count);

/* What gcc may call even in freestanding code (GCC manual, "Standards"). */
void *memset(void *dst, int c, unsigned long n);
void *memcpy(void *dst, const void *src, unsigned long n);
void *memmove(void *dst, const void *src, unsigned long n);
int memcmp(const void *a, const void *b, unsigned long n);

#endif
