# vmcore-build: mode=protected base=0x1000
#
# unclaimed_sweep (hostile): an access at a new address every time, none of them
# claimed.  32-bit flat protected mode, image at 0x1000 (machines/hostile/
# unclaimed-sweep.yaml: no devices at all).  Iteration i writes then reads port
# i & 0xFFFF, and writes then reads the MMIO byte at 0x10000000 + 17 * i (a new
# address each time, a new page every 241 iterations; past 4 GiB it starts over).
# A VMM that records or warns about every new unclaimed address grows without
# bound under it.
# The iteration count is the little-endian dword at offset 2 of the binary
# (skipped by the first jmp); 0 runs for ever.  After the count: HLT.

        .code32
        .text
        .globl  _start

        .set    SWEEP_BASE, 0x10000000
        .set    STRIDE, 17

_start:
        jmp     1f
count:  .long   0                       # offset 2: iterations, 0 = endless
1:
        mov     count, %ebp
        xor     %ebx, %ebx              # i
        mov     $SWEEP_BASE, %edi
again:
        mov     %bx, %dx                # port i & 0xFFFF
        out     %al, %dx
        in      %dx, %al
        mov     %al, (%edi)
        mov     (%edi), %al
        add     $STRIDE, %edi
        jnc     2f
        mov     $SWEEP_BASE, %edi       # wrapped past 4 GiB: sweep again
2:
        inc     %ebx
        test    %ebp, %ebp
        jz      again                   # endless
        cmp     %ebp, %ebx
        jb      again
halt:
        hlt
        jmp     halt
