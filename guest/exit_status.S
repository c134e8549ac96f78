# vmcore-build: mode=real base=0x0
#
# exit_status: ends the run through debug-exit.  Real mode, loaded at 0,
# entry 0, 4 KiB of RAM, no stack.
# Prints "bye\n" on debugcon 0xF1, then writes 42 to port 0x501 (isa-debug-exit:
# status = (42 << 1) | 1 = 85).  The `hlt` after it must never be reached: a
# run that stops there exits 0, so a test can tell the two apart.

        .code16
        .text
        .globl  _start
_start:
        cld
        mov     $msg, %si
next:
        lodsb
        test    %al, %al
        jz      leave
        out     %al, $0xf1
        jmp     next
leave:
        mov     $42, %al
        mov     $0x501, %dx             # above 0xFF: no immediate-port form
        out     %al, %dx
halt:
        hlt                             # not reached under debug-exit
        jmp     halt

msg:
        .asciz  "bye\n"
