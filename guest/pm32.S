# vmcore-build: mode=protected base=0x1000
#
# pm32: started by the VMM in 32-bit flat protected mode (cpu.mode: protected),
# paging off.  Image at guest-physical 0x1000, entry 0x1000; RAM 0..64 KiB,
# ESP = 0x8000 from the profile.
# Checks that it really runs there: CR0.PE is set, and a `push` moves ESP by 4
# (the default operand size of a 32-bit code segment; it would be 2 in 16-bit
# code).  Prints "protected mode\n" if both hold, else "pm BAD\n"; then halts.

        .code32
        .text
        .globl  _start
_start:
        cld
        mov     %cr0, %eax
        test    $1, %al                 # CR0.PE
        jz      bad
        mov     %esp, %edx
        push    %eax
        sub     %esp, %edx
        pop     %eax
        cmp     $4, %edx
        jne     bad
        mov     $msg, %esi
        jmp     print
bad:
        mov     $badmsg, %esi
print:
        lodsb
        test    %al, %al
        jz      halt
        out     %al, $0xf1
        jmp     print
halt:
        hlt
        jmp     halt

msg:    .asciz  "protected mode\n"
badmsg: .asciz  "pm BAD\n"
