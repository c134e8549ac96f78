# vmcore-build: mode=real base=0x0
#
# uart_flood (hostile): a serial port whose host end keeps sending while the
# guest never reads it.  Real mode, loaded at 0, 4 KiB of RAM (machines/hostile/
# uart-flood.yaml: a uart16550 at 0x3F8 whose file backend reads a large input).
# Turns the FIFOs on (so 16 characters fit), then polls LSR (port 0x3FD) without
# ever reading RBR: each poll is an exit, so host input keeps arriving while the
# receiver stays full.  A VMM that reads its host source whatever the room
# queues all of it.
# The poll count is the little-endian dword at offset 2 of the binary (skipped
# by the first jmp); 0 polls for ever.  After the count: HLT.

        .code16
        .text
        .globl  _start

        .set    FCR, 0x3FA
        .set    LSR, 0x3FD

_start:
        jmp     1f
count:  .long   0                       # offset 2: polls, 0 = endless
1:
        xor     %ax, %ax
        mov     %ax, %ds
        mov     count, %ebp
        xor     %ebx, %ebx
        mov     $FCR, %dx
        mov     $0x07, %al              # FIFOs on, both cleared, trigger level 1
        out     %al, %dx
        mov     $LSR, %dx
again:
        in      %dx, %al                # never RBR: nothing is ever taken out
        inc     %ebx
        test    %ebp, %ebp
        jz      again
        cmp     %ebp, %ebx
        jb      again
halt:
        hlt
        jmp     halt
