# vmcore-build: mode=real base=0x0
#
# one_irq: waits for a single device interrupt on IRQ 5 that nothing in the
# guest asked for: a device's timer armed when the machine was built (t=0 is
# this program's first instruction). Real mode, loaded at 0, 4 KiB of RAM at 0
# (i8259, irqchip userspace, the device on IRQ 5). It programs the PIC (vector
# base 8, only IRQ 5 unmasked), halts until the handler has run, then prints
# "irq 5\n" and exits through debug-exit with 0x15 (status 43). A request that
# arrived before ICW1 is wiped by it: the program then halts for ever.

        .code16
        .text
        .globl  _start

        .set    IVT, 0x800
        .set    VECTOR, 8 + 5

_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %ss
        mov     $0xff0, %sp
        cld
        lidt    idtr
        movw    $irq, IVT + VECTOR * 4
        movw    $0, IVT + VECTOR * 4 + 2
        mov     $0x11, %al                      # ICW1: edge, cascade, ICW4 follows
        out     %al, $0x20
        mov     $0x08, %al                      # ICW2: vectors 8..15
        out     %al, $0x21
        mov     $0x04, %al                      # ICW3: slave on IR2
        out     %al, $0x21
        mov     $0x01, %al                      # ICW4: 8086 mode
        out     %al, $0x21
        mov     $0xdf, %al                      # OCW1: only IRQ 5
        out     %al, $0x21
        sti
wait:
        hlt
        cmpw    $1, seen
        jb      wait
        cli
        mov     $msg, %si
1:      lodsb
        test    %al, %al
        jz      2f
        out     %al, $0xf1
        jmp     1b
2:      mov     $0x501, %dx
        mov     $0x15, %al
        out     %al, %dx
halt:
        hlt
        jmp     halt

irq:
        incw    seen
        push    %ax
        mov     $0x20, %al                      # OCW2: non-specific EOI
        out     %al, $0x20
        pop     %ax
        iret

seen:   .word   0
idtr:   .word   0x3ff
        .long   IVT
msg:    .asciz  "irq 5\n"
