# vmcore-build: mode=real base=0x0
#
# popcnt_probe: runs one popcnt and says whether the CPU had it: "popcnt 8\n" (the
# count of 0xff) and debug-exit 0x12 (status 37), or, when popcnt is an invalid
# opcode, "popcnt #UD\n" from the #UD handler and debug-exit 0x14 (status 41).
# Real mode, loaded at 0, 4 KiB of RAM at 0 (machines/popcnt-probe.yaml); the
# IVT is at 0x800. QEMU's qemu64 model has no POPCNT: a CPU model that leaves a
# feature out must make its instructions fault, not only hide its CPUID bit.

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
        movw    $invalid, IVT + 6 * 4           # #UD -> invalid
        movw    $0, IVT + 6 * 4 + 2
        mov     $0xff, %cx
        popcnt  %cx, %ax
        mov     $ran, %si
        call    print
        add     $'0', %al
        out     %al, $0xf1
        mov     $'\n', %al
        out     %al, $0xf1
        mov     $0x12, %al
        jmp     leave

invalid:
        mov     $ud, %si
        call    print
        mov     $0x14, %al
leave:
        mov     $0x501, %dx
        out     %al, %dx
halt:
        hlt
        jmp     halt

print:  push    %ax
1:      lodsb
        test    %al, %al
        jz      2f
        out     %al, $0xf1
        jmp     1b
2:      pop     %ax
        ret

idtr:   .word   0x3ff
        .long   IVT
ran:    .asciz  "popcnt "
ud:     .asciz  "popcnt #UD\n"
