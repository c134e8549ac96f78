# vmcore-build: mode=real base=0x0
#
# rm_timer: PIT interrupts through the i8259 in real mode. Real mode, loaded at
# 0, entry 0, 4 KiB of RAM at 0 (profile machines/rm-timer.yaml: i8259, i8254,
# irqchip userspace). The image sits where the IVT would, so the program
# points IDTR at its own table at 0x800. It programs the PIC (vector base 8),
# the PIT (channel 0, mode 2, 1 kHz), takes 10 IRQ 0 interrupts while halting,
# prints "rm ticks: 10\n" on debugcon 0xF1 and exits through debug-exit with
# 0x13 (status 39). On KVM without an in-kernel irqchip this exercises
# KVM_INTERRUPT injection from the userspace PIC and the HLT wait.

        .code16
        .text
        .globl  _start

        .set    IVT, 0x800
        .set    TICKS_WANTED, 10

_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %ss
        mov     $0xff0, %sp
        cld
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
        mov     $0xa9, %al                      # 1193 = 0x04a9: 1 kHz
        out     %al, $0x40
        mov     $0x04, %al
        out     %al, $0x40
        sti
wait:
        hlt
        cmpw    $TICKS_WANTED, ticks
        jb      wait
        cli
        mov     $msg, %si
1:      lodsb
        test    %al, %al
        jz      2f
        out     %al, $0xf1
        jmp     1b
2:      mov     $0x501, %dx
        mov     $0x13, %al
        out     %al, %dx
halt:
        hlt
        jmp     halt

tick:
        incw    ticks
        push    %ax
        mov     $0x20, %al                      # OCW2: non-specific EOI
        out     %al, $0x20
        pop     %ax
        iret

ticks:  .word   0
idtr:   .word   0x3ff
        .long   IVT
msg:    .asciz  "rm ticks: 10\n"
