# vmcore-build: mode=real base=0x0
#
# rm_timer: PIT interrupts through the i8259 in real mode. Real mode, loaded at
# 0, entry 0, 4 KiB of RAM at 0 (profile machines/rm-timer.yaml: i8259, i8254,
# irqchip userspace). The image sits where the IVT would, so the program
# points IDTR at its own table at 0x800. It programs the PIC (vector base 8),
# the PIT (channel 0, mode 0, 1 ms), takes 10 IRQ 0 interrupts while halting,
# prints "rm ticks: 10\n" on debugcon 0xF1 and exits through debug-exit with
# 0x13 (status 39). The tick handler re-arms the one-shot count for ticks 2 to
# 10 only, so no 11th tick can land between the last iret and the cli however
# slow the host is: the bus trace is the same on every run and accelerator. On KVM without an in-kernel irqchip this exercises
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
        mov     $0x30, %al                      # PIT channel 0, lobyte/hibyte, mode 0
        out     %al, $0x43
        call    arm
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
        cmpw    $TICKS_WANTED, ticks
        jae     1f
        call    arm
1:      mov     $0x20, %al                      # OCW2: non-specific EOI
        out     %al, $0x20
        pop     %ax
        iret

# A new count in mode 0 drops OUT and raises it (IRQ 0's edge) 1193 periods on: 1 ms.
arm:
        mov     $0xa9, %al                      # 1193 = 0x04a9
        out     %al, $0x40
        mov     $0x04, %al
        out     %al, $0x40
        ret

ticks:  .word   0
idtr:   .word   0x3ff
        .long   IVT
msg:    .asciz  "rm ticks: 10\n"
