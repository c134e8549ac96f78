# vmcore-build: mode=long base=0x1000
#
# long64: started by the VMM in 64-bit long mode (cpu.mode: long), identity
# paging.  Image at guest-physical 0x1000, entry 0x1000; RAM 0..2 MiB,
# RSP = 0x8000 from the profile.
# Prints "long mode\n", then "64\n" taken from the top three bytes of a 64-bit
# immediate: `movabs` and a 64-bit shift only exist in 64-bit mode (in 32-bit
# code the REX.W prefix decodes as `dec %eax` and the rest goes astray).
# Expected output: "long mode\n64\n", then a HLT exit.

        .code64
        .text
        .globl  _start
_start:
        cld
        lea     msg(%rip), %rsi
print:
        lodsb
        test    %al, %al
        jz      wide
        out     %al, $0xf1
        jmp     print
wide:
        movabs  $0x0a34360000000000, %rbx   # '6' '4' '\n' in bytes 5, 6, 7
        shr     $40, %rbx               # a 64-bit shift: byte 5 to bits 0..7
        mov     $3, %ecx
byte:
        mov     %bl, %al
        out     %al, $0xf1
        shr     $8, %rbx
        loop    byte
halt:
        hlt
        jmp     halt

msg:    .asciz  "long mode\n"
