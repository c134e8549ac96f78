# vmcore-build: mode=real base=0x0
#
# fwcfg_bad_dma (hostile): fw-cfg DMA descriptors that are nowhere.  Real mode,
# loaded at 0, 4 KiB of RAM (machines/hostile/fwcfg-bad-dma.yaml: fw-cfg with DMA
# at 0x514).  Each iteration writes a descriptor address to the DMA address
# register, high half (0) at 0x514 then low half at 0x518 (the write that starts
# the operation), big-endian as the register wants.  The addresses are
# 0xF0000000 + 16 * i: a new one each time, all outside guest memory, so every
# operation fails before it starts.  A VMM that warns about each one fills its
# log without bound.
# The iteration count is the little-endian dword at offset 2 of the binary
# (skipped by the first jmp); 0 runs for ever.  After the count: HLT.

        .code16
        .text
        .globl  _start

        .set    DMA_HIGH, 0x514
        .set    DMA_LOW, 0x518
        .set    BAD_BASE, 0xF0000000

_start:
        jmp     1f
count:  .long   0                       # offset 2: iterations, 0 = endless
1:
        xor     %ax, %ax
        mov     %ax, %ds
        mov     count, %ebp
        xor     %ebx, %ebx              # i
        mov     $BAD_BASE, %esi
again:
        xor     %eax, %eax
        mov     $DMA_HIGH, %dx
        out     %eax, %dx               # high half: 0 (does not start an operation)
        mov     %esi, %eax
        bswap   %eax                    # the register is big-endian
        mov     $DMA_LOW, %dx
        out     %eax, %dx               # low half: runs the (bad) descriptor
        add     $16, %esi
        jnc     2f
        mov     $BAD_BASE, %esi         # wrapped past 4 GiB: again from the start
2:
        inc     %ebx
        test    %ebp, %ebp
        jz      again
        cmp     %ebp, %ebx
        jb      again
halt:
        hlt
        jmp     halt
