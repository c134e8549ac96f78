# vmcore-build: mode=protected base=0x1000
#
# mmio_unaligned: MMIO accesses that are not naturally aligned, and one that
# crosses a page.  32-bit flat protected mode, image at 0x1000, RAM 0..64 KiB,
# ESP = 0x8000.  The tests put a recording register block (sizes 1, 2, 4, 8) at
# 0x10000000..0x10001fff and a dword-only block at 0x10002000..0x1000200f.
# vmcore splits an unaligned MMIO access as QEMU's TCG does, on both
# accelerators: a write into single bytes, low address first; a read into the
# two naturally aligned units of its size around it.  Aligned ones arrive whole.
# Prints "done\n" and halts; what the devices saw is the result.

        .code32
        .text
        .globl  _start

        .set    SCRATCH, 0x10000000
        .set    STRICT, 0x10002000

_start:
        cld
        movl    $0x11223344, SCRATCH + 1        # unaligned dword write: 4 bytes
        movw    $0x5566, SCRATCH + 7            # unaligned word write: 2 bytes
        movl    SCRATCH + 1, %eax               # unaligned dword read: 4 bytes
        movl    %eax, SCRATCH + 8               # aligned dword write: whole
        movl    $0xaabbccdd, SCRATCH + 0xffe    # crosses a page: 4 bytes
        movw    SCRATCH + 0xfff, %ax            # unaligned word read across the page
        movw    %ax, SCRATCH + 0x10             # aligned word write: whole
        movl    $0x01020304, STRICT + 2         # dword-only device: 4 byte writes, rejected
        movl    STRICT + 1, %eax                # read as the two dwords around it
        movl    %eax, SCRATCH + 0x20            # aligned: whole
        mov     $msg, %esi
print:
        lodsb
        test    %al, %al
        jz      halt
        out     %al, $0xf1
        jmp     print
halt:
        hlt
        jmp     halt

msg:    .asciz  "done\n"
