# vmcore-build: mode=real base=0x0
#
# hello: the seed program.  Real mode, loaded at guest-physical 0, entry 0.
# Needs 4 KiB of RAM at 0 and no stack.  Relies on the VMM's real-mode start
# state (DS = 0); everything else it uses it sets itself.
# Prints "Hello\n" on debugcon (port 0xF1), one `out` per byte, then halts.

        .code16
        .text
        .globl  _start
_start:
        cld                             # lodsb must walk forwards
        mov     $msg, %si
next:
        lodsb
        test    %al, %al
        jz      done
        out     %al, $0xf1
        jmp     next
done:
        hlt
        jmp     done                    # if anything wakes us, halt again

msg:
        .asciz  "Hello\n"
