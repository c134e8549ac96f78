# vmcore-build: mode=real base=0x0
#
# rom_write: writes to ROM are dropped.  Real mode, loaded at 0, entry 0, into
# a read-only (KVM_MEM_READONLY) 4 KiB slot at 0, with a separate 4 KiB RAM
# slot at 0x1000 holding the stack.  KVM turns the guest's store into the ROM
# into an MMIO write exit, which the VMM drops; the read back must still see
# the original byte.
# Prints "rom ok\n" if `target` still holds 0x5A after the store of 0xA5, else
# "rom BAD\n"; then halts.

        .code16
        .text
        .globl  _start
_start:
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %ss
        mov     $0x2000, %sp            # top of the RAM slot at 0x1000
        cld
        movb    $0xa5, target
        mov     target, %al
        cmp     $0x5a, %al
        jne     bad
        mov     $okmsg, %si
        jmp     print
bad:
        mov     $badmsg, %si
print:
        lodsb
        test    %al, %al
        jz      halt
        out     %al, $0xf1
        jmp     print
halt:
        hlt
        jmp     halt

target: .byte   0x5a
okmsg:  .asciz  "rom ok\n"
badmsg: .asciz  "rom BAD\n"
