# vmcore-build: mode=real base=0x0
#
# pio_read_loop (benchmark): port-read exits.  Real mode, loaded at 0, entry
# 0, 4 KiB of RAM, no stack.  Reads a byte from port 0x80 (unclaimed; the VMM
# answers it with its default) 100000 times, then halts.  No output.
# The count is the little-endian dword at offset 2 of the binary (the
# immediate of the first instruction); a benchmark may patch it.

        .code16
        .text
        .globl  _start
_start:
        mov     $100000, %ecx           # 66 B9 imm32: the count sits at offset 2
again:
        in      $0x80, %al
        dec     %ecx
        jnz     again
halt:
        hlt
        jmp     halt
