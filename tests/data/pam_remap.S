# Real-mode guest for tests/test_memory_remap.py: flips the i440fx's PAM0 (the 0xF0000
# segment) through config mechanism #1 and reports, on the console at 0xF1, what it reads
# and runs at F000:0000 and F000:0100 under each setting. Built at test time (as, ld).
.code16
.globl _start
_start:
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x8000, %sp
    mov $0xF000, %ax
    mov %ax, %es
    movb %es:0, %al            # ROM alias
    out %al, $0xF1
    mov $0x80000058, %eax
    mov $0xCF8, %dx
    out %eax, %dx
    mov $0xCFD, %dx
    mov $0x30, %al             # PAM0: F segment DRAM read/write
    out %al, %dx
    movb %es:0, %al            # DRAM: zero
    out %al, $0xF1
    movb $0x5A, %es:0
    movb %es:0, %al
    out %al, $0xF1
    movl $0xCB9042B0, %es:0x100   # mov al,0x42; nop; retf
    lcall $0xF000, $0x100      # code fetched from DRAM
    out %al, $0xF1
    mov $0x10, %al             # read-only DRAM
    out %al, %dx
    movb $0x77, %es:0          # dropped
    movb %es:0, %al
    out %al, $0xF1
    xor %al, %al               # back to the ROM
    out %al, %dx
    movb %es:0, %al
    out %al, $0xF1
    lcall $0xF000, $0x100      # the ROM's code at the same address
    out %al, $0xF1
    mov $0x501, %dx
    mov $0x21, %al
    out %al, %dx
    hlt
