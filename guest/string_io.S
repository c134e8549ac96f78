# vmcore-build: mode=real base=0x0
#
# string_io: string port I/O.  Real mode, loaded at 0, entry 0, 4 KiB of RAM
# at 0 (stack at the top of it).
#   1. one `rep outsb` of "rep outsb works\n" (16 bytes) to debugcon 0xF1;
#   2. one `rep insb` of 8 bytes from 0xF1 into a zeroed buffer: debugcon
#      reads as 0xE9, so every byte must come back 0xE9;
#   3. one `rep outsb` of "insb ok\n" (or "insb BAD\n"), then halt.
# Expected output: "rep outsb works\ninsb ok\n", then a HLT exit.

        .code16
        .text
        .globl  _start
_start:
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %es                # rep insb stores through ES:DI
        mov     %ax, %ss
        mov     $0x1000, %sp            # top of the 4 KiB of RAM
        cld
        mov     $0xf1, %dx

        mov     $works, %si
        mov     $works_len, %cx
        rep outsb

        mov     $buf, %di
        mov     $8, %cx
        rep insb

        mov     $buf, %si
        mov     $8, %cx
check:
        lodsb
        cmp     $0xe9, %al
        jne     bad
        loop    check

        mov     $ok, %si
        mov     $ok_len, %cx
        jmp     report
bad:
        mov     $notok, %si
        mov     $notok_len, %cx
report:
        rep outsb
halt:
        hlt
        jmp     halt

works:  .ascii  "rep outsb works\n"
        .set    works_len, . - works
ok:     .ascii  "insb ok\n"
        .set    ok_len, . - ok
notok:  .ascii  "insb BAD\n"
        .set    notok_len, . - notok
buf:    .fill   8, 1, 0                 # zero, so an insb that stores nothing fails
