# vmcore-build: mode=real base=0x0
#
# int_ivt: real-mode interrupts through the interrupt vector table.  Real
# mode, loaded at 0, entry 0, 4 KiB of RAM at 0 (stack at its top).
# The image itself starts at 0, where the IVT normally lives, so the program
# builds its table at 0x800 (RAM past the image) and points IDTR there with
# `lidt`: in real mode IDTR.base/limit locate the IVT (Intel SDM vol. 3, 20.1.4
# "Interrupt and Exception Handling").  Entries are offset:segment pairs.
#   1. `int $0x21`: the handler prints "int21\n" and returns with `iret`;
#   2. `div %bl` with BL = 0: #DE (vector 0) is a fault, so the saved IP is
#      the `div` itself; the handler prints "de\n", adds 2 (the length of
#      `div %bl`, F6 F3) to the saved IP and returns with `iret`;
#   3. prints "ivt ok\n" and halts.
# Expected output: "int21\nde\nivt ok\n", then a HLT exit.  A #DE that is not
# delivered ends the run (triple fault); a handler that did not skip the
# `div` would fault again for ever (timeout).

        .code16
        .text
        .globl  _start

        .set    IVT, 0x800
        .set    DE_VECTOR, 0
        .set    DOS_VECTOR, 0x21

_start:
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %ss
        mov     $0x1000, %sp            # top of the 4 KiB of RAM
        cld
        movw    $de_handler, IVT + DE_VECTOR * 4        # offset (loaded at 0: offset = address)
        movw    $0, IVT + DE_VECTOR * 4 + 2             # segment
        movw    $int21_handler, IVT + DOS_VECTOR * 4
        movw    $0, IVT + DOS_VECTOR * 4 + 2
        lidt    ivt_desc

        int     $DOS_VECTOR

        xor     %ax, %ax
        xor     %bl, %bl
        div     %bl                     # AX / 0: #DE, resumed after it by the handler

        mov     $okmsg, %si
        call    print
halt:
        hlt
        jmp     halt

int21_handler:
        push    %si
        mov     $int21msg, %si
        call    print
        pop     %si
        iret

de_handler:
        push    %bp
        mov     %sp, %bp
        addw    $2, 2(%bp)              # the saved IP (above the saved BP): skip `div %bl`
        pop     %bp
        push    %si
        mov     $demsg, %si
        call    print
        pop     %si
        iret

print:                                  # DS:SI -> NUL-terminated string, to debugcon
        push    %ax
1:      lodsb
        test    %al, %al
        jz      2f
        out     %al, $0xf1
        jmp     1b
2:      pop     %ax
        ret

ivt_desc:
        .word   0x3ff                   # limit: 256 vectors
        .long   IVT                     # base
int21msg: .asciz "int21\n"
demsg:  .asciz  "de\n"
okmsg:  .asciz  "ivt ok\n"
