# vmcore-build: mode=real base=0x0
#
# irq_window: an interrupt that becomes pending while IF is clear must be taken
# as soon as the guest sets IF, even if the guest never halts. Real mode,
# loaded at 0, 4 KiB of RAM at 0 (profile machines/irq-window.yaml: i8259,
# i8254, irqchip userspace). The PIT fires once (mode 0) while interrupts are
# off; after `sti` the program spins (no hlt) until the handler has run, then
# prints "window ok\n" and exits through debug-exit with 0x14 (status 41).
# KVM takes it through the interrupt-window exit; the software CPU by looking
# again shortly when IF was clear.

        .code16
        .text
        .globl  _start

        .set    IVT, 0x800

_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %ss
        mov     $0xff0, %sp
        cld
        lidt    idtr
        movw    $tick, IVT + 8 * 4
        movw    $0, IVT + 8 * 4 + 2
        mov     $0x11, %al
        out     %al, $0x20
        mov     $0x08, %al
        out     %al, $0x21
        mov     $0x04, %al
        out     %al, $0x21
        mov     $0x01, %al
        out     %al, $0x21
        mov     $0xfe, %al
        out     %al, $0x21
        mov     $0x30, %al                      # PIT channel 0, lobyte/hibyte, mode 0 (one shot)
        out     %al, $0x43
        mov     $0x10, %al                      # 16 counts: ~13 us
        out     %al, $0x40
        mov     $0x00, %al
        out     %al, $0x40
        mov     $20000, %cx                     # let it fire while IF is still clear
1:      loop    1b
        sti
spin:
        cmpw    $1, ticks
        jb      spin
        cli
        mov     $msg, %si
2:      lodsb
        test    %al, %al
        jz      3f
        out     %al, $0xf1
        jmp     2b
3:      mov     $0x501, %dx
        mov     $0x14, %al
        out     %al, %dx
halt:
        hlt
        jmp     halt

tick:
        incw    ticks
        push    %ax
        mov     $0x20, %al
        out     %al, $0x20
        pop     %ax
        iret

ticks:  .word   0
idtr:   .word   0x3ff
        .long   IVT
msg:    .asciz  "window ok\n"
