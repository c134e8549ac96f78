# vmcore-build: mode=real base=0x0
#
# pit_storm (hostile): the PIT at its highest rate.  Real mode, loaded at 0,
# 4 KiB of RAM (machines/hostile/pit-storm.yaml: i8259, i8254, irqchip
# userspace).  Programs the PIC (vectors 8-15, only IRQ 0 unmasked) and PIT
# channel 0 in mode 2 with divisor 1 (counted as 2: about 597 kHz), then takes
# IRQ 0 while halting with interrupts on; the handler counts and EOIs.  The IRQ
# line changes on every tick the VMM runs, whether or not the guest keeps up: a
# VMM that logs each change grows without bound.  The image sits where the IVT
# would, so the program points IDTR at its own table at 0x800.
# The tick count is the little-endian dword at offset 2 of the binary (skipped
# by the first jmp); 0 takes ticks for ever.  After the count: CLI, HLT.

        .code16
        .text
        .globl  _start

        .set    IVT, 0x800

_start:
        jmp     1f
count:  .long   0                       # offset 2: ticks to take, 0 = endless
1:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %ss
        mov     $0xff0, %sp
        lidt    idtr
        movw    $tick, IVT + 8 * 4              # IRQ 0 -> vector 8 -> tick
        movw    $0, IVT + 8 * 4 + 2
        mov     $0x11, %al                      # ICW1: edge, cascade, ICW4 follows
        out     %al, $0x20
        mov     $0x08, %al                      # ICW2: vectors 8..15
        out     %al, $0x21
        mov     $0x04, %al                      # ICW3: slave on IR2
        out     %al, $0x21
        mov     $0x01, %al                      # ICW4: 8086 mode
        out     %al, $0x21
        mov     $0xfe, %al                      # OCW1: only IRQ 0
        out     %al, $0x21
        mov     $0x34, %al                      # PIT channel 0, lobyte/hibyte, mode 2
        out     %al, $0x43
        mov     $0x01, %al                      # divisor 1
        out     %al, $0x40
        xor     %al, %al
        out     %al, $0x40
        mov     count, %ebp
        xor     %ebx, %ebx                      # ticks taken (the handler counts)
        sti
wait:
        hlt
        test    %ebp, %ebp
        jz      wait                            # endless
        cmp     %ebp, %ebx
        jb      wait
        cli
halt:
        hlt
        jmp     halt

tick:
        inc     %ebx
        push    %ax
        mov     $0x20, %al                      # OCW2: non-specific EOI
        out     %al, $0x20
        pop     %ax
        iret

idtr:   .word   0x3ff
        .long   IVT
