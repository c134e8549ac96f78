# vmcore-build: mode=protected base=0x1000
#
# mmio: MMIO round trips.  32-bit flat protected mode (cpu.mode: protected),
# image at 0x1000, entry 0x1000; RAM 0..64 KiB, ESP = 0x8000.  A 16-byte
# scratch register block (provided by the tests) must sit at guest-physical
# 0x10000000, outside every memory slot, so each access is an MMIO exit:
#   dword write 0x11223344 at +0, dword read at +0   (4-byte exits)
#   byte write 0xAB at +8,        byte read at +8    (1-byte exits)
# Prints "mmio ok\n" if both reads return what was written, else "mmio BAD\n";
# then halts.

        .code32
        .text
        .globl  _start

        .set    SCRATCH, 0x10000000

_start:
        cld
        movl    $0x11223344, SCRATCH
        mov     SCRATCH, %eax
        cmp     $0x11223344, %eax
        jne     bad
        movb    $0xab, SCRATCH + 8
        mov     SCRATCH + 8, %al
        cmp     $0xab, %al
        jne     bad
        mov     $okmsg, %esi
        jmp     print
bad:
        mov     $badmsg, %esi
print:
        lodsb
        test    %al, %al
        jz      halt
        out     %al, $0xf1
        jmp     print
halt:
        hlt
        jmp     halt

okmsg:  .asciz  "mmio ok\n"
badmsg: .asciz  "mmio BAD\n"
