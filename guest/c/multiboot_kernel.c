/* multiboot_kernel: print what the boot loader handed over, exit with a status
 * taken from the command line.
 *
 * On debugcon: "cmdline: <cmdline>", "mem: lower=<KiB>K upper=<KiB>K",
 * "loader: <boot_loader_name>", and one "mmap: base=0x... len=0x... type=N" per
 * memory map entry (each line only when its info flag is set). Then it exits
 * through debug-exit with N from a "status=N" word of the command line (exit
 * status (N << 1) | 1), with 0x7E when there is none, and with 0x7F after
 * printing "no multiboot" when EAX did not hold 0x2BADB002. */
#include "runtime.h"

/* Multiboot spec 0.6.96, section 3.3 "Boot information format". */
struct multiboot_info {
    u32 flags;
    u32 mem_lower, mem_upper;     /* flags bit 0 */
    u32 boot_device;              /* bit 1 */
    u32 cmdline;                  /* bit 2 */
    u32 mods_count, mods_addr;    /* bit 3 */
    u32 syms[4];                  /* bit 4 or 5 */
    u32 mmap_length, mmap_addr;   /* bit 6 */
    u32 drives_length, drives_addr;
    u32 config_table;
    u32 boot_loader_name;         /* bit 9 */
};

struct __attribute__((packed)) mmap_entry {
    u32 size; /* of the rest of the entry: the next one is at +size+4 */
    u64 base_addr;
    u64 length;
    u32 type;
};

#define MBI_MEMORY (1u << 0)
#define MBI_CMDLINE (1u << 2)
#define MBI_MMAP (1u << 6)
#define MBI_LOADER_NAME (1u << 9)

#define NO_STATUS 0x7E
#define NOT_MULTIBOOT 0x7F

/* The value of the first "status=N" word (decimal, or hex with 0x), or -1. */
static int status_from(const char *cmdline)
{
    static const char key[] = "status=";
    const char *p = cmdline;
    while (*p) {
        while (*p == ' ')
            p++;
        if (!memcmp(p, key, sizeof key - 1)) {
            const char *v = p + sizeof key - 1;
            unsigned base = 10, value = 0, digits = 0;
            if (v[0] == '0' && (v[1] == 'x' || v[1] == 'X')) {
                base = 16;
                v += 2;
            }
            for (;; v++, digits++) {
                unsigned d;
                if (*v >= '0' && *v <= '9')
                    d = (unsigned)(*v - '0');
                else if (base == 16 && *v >= 'a' && *v <= 'f')
                    d = (unsigned)(*v - 'a' + 10);
                else if (base == 16 && *v >= 'A' && *v <= 'F')
                    d = (unsigned)(*v - 'A' + 10);
                else
                    break;
                value = value * base + d;
            }
            if (digits && (*v == ' ' || *v == 0) && value <= 0xFF)
                return (int)value;
        }
        while (*p && *p != ' ')
            p++;
    }
    return -1;
}

int kmain(u32 magic, u32 info)
{
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC) {
        put_str(debugcon_putc, "no multiboot\n");
        return NOT_MULTIBOOT;
    }
    const struct multiboot_info *mbi = (const struct multiboot_info *)info;
    const char *cmdline = "";

    if (mbi->flags & MBI_CMDLINE)
        cmdline = (const char *)mbi->cmdline;
    put_str(debugcon_putc, "cmdline: ");
    put_str(debugcon_putc, cmdline);
    debugcon_putc('\n');

    if (mbi->flags & MBI_MEMORY) {
        put_str(debugcon_putc, "mem: lower=");
        put_dec(debugcon_putc, mbi->mem_lower);
        put_str(debugcon_putc, "K upper=");
        put_dec(debugcon_putc, mbi->mem_upper);
        put_str(debugcon_putc, "K\n");
    }
    if (mbi->flags & MBI_LOADER_NAME) {
        put_str(debugcon_putc, "loader: ");
        put_str(debugcon_putc, (const char *)mbi->boot_loader_name);
        debugcon_putc('\n');
    }
    if (mbi->flags & MBI_MMAP) {
        u32 at = mbi->mmap_addr, end = mbi->mmap_addr + mbi->mmap_length;
        while (at < end) {
            const struct mmap_entry *e = (const struct mmap_entry *)at;
            put_str(debugcon_putc, "mmap: base=");
            put_hex(debugcon_putc, e->base_addr);
            put_str(debugcon_putc, " len=");
            put_hex(debugcon_putc, e->length);
            put_str(debugcon_putc, " type=");
            put_dec(debugcon_putc, e->type);
            debugcon_putc('\n');
            at += e->size + 4;
        }
    }

    int status = status_from(cmdline);
    if (status < 0) {
        put_str(debugcon_putc, "no status= in the command line\n");
        return NO_STATUS;
    }
    return status;
}
