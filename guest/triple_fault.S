# vmcore-build: mode=real base=0x0
#
# triple_fault: ends the run with a triple fault (KVM_EXIT_SHUTDOWN).  Real
# mode, loaded at 0, entry 0, 4 KiB of RAM, no stack needed.
# Prints "fault\n" on debugcon 0xF1, loads an IDT of limit 0 and divides by
# zero.  Delivering #DE (vector 0) needs IDT bytes 0..3, but a limit of 0
# covers only byte 0, so the CPU raises #GP; #GP's entry (bytes 52..55) is
# past the limit too, which makes a double fault; #DF cannot be delivered
# either, and a fault while delivering #DF is a triple fault: shutdown
# (Intel SDM vol. 3, 6.15 "Interrupt 8 - Double Fault").
# A CPU exception, not `int $n`: KVM's instruction emulator (which runs real
# mode on some hosts, e.g. PVM) delivers software interrupts through the IVT
# without checking the IDT limit, so `int3` would jump through garbage there.

        .code16
        .text
        .globl  _start
_start:
        cld
        mov     $msg, %si
next:
        lodsb
        test    %al, %al
        jz      boom
        out     %al, $0xf1
        jmp     next
boom:
        lidt    null_idt
        xor     %ax, %ax
        div     %al                     # AX / 0: #DE
        hlt                             # never reached
        jmp     boom

null_idt:
        .word   0                       # limit
        .long   0                       # base
msg:
        .asciz  "fault\n"
