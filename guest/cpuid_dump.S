# vmcore-build: mode=real base=0x0
#
# cpuid_dump: prints the CPUID leaves a CPU model defines, one line each, on
# debugcon 0xF1: "leaf: eax ebx ecx edx" in hex (leaves 0, 1, 7, 0xD, 0x80000000
# to 0x80000004, subleaf 0), then exits through debug-exit with 0x11 (status
# 35). Real mode, loaded at 0, 4 KiB of RAM at 0 (machines/cpuid-dump.yaml).
# The leaves the accelerator fills in (caches, address sizes) are left out: with
# the same cpu.model and features the two accelerators print the same lines.

        .code16
        .text
        .globl  _start
_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %ss
        mov     $0xff0, %sp
        cld
        mov     $leaves, %si
next:
        lodsl                                   # eax = the next leaf; 0xffffffff ends the list
        cmp     $0xffffffff, %eax
        je      done
        push    %si
        mov     %eax, %ebp
        call    hex32
        mov     $':', %al
        out     %al, $0xf1
        mov     %ebp, %eax
        xor     %ecx, %ecx
        cpuid
        mov     %edx, %edi                      # hex32 keeps edi, esi's low half is the list pointer
        push    %ecx
        push    %ebx
        call    space_hex32                     # eax
        pop     %eax
        call    space_hex32                     # ebx
        pop     %eax
        call    space_hex32                     # ecx
        mov     %edi, %eax
        call    space_hex32                     # edx
        mov     $'\n', %al
        out     %al, $0xf1
        pop     %si
        jmp     next
done:
        mov     $0x501, %dx
        mov     $0x11, %al
        out     %al, %dx
halt:
        hlt
        jmp     halt

# Print " " then eax as 8 hex digits.
space_hex32:
        push    %eax
        mov     $' ', %al
        out     %al, $0xf1
        pop     %eax
# Print eax as 8 hex digits (clobbers eax, ebx, ecx).
hex32:
        mov     %eax, %ebx
        mov     $8, %cx
1:      rol     $4, %ebx
        mov     %bl, %al
        and     $0xf, %al
        add     $'0', %al
        cmp     $'9', %al
        jbe     2f
        add     $('a' - '0' - 10), %al
2:      out     %al, $0xf1
        loop    1b
        ret

        .p2align 2
leaves: .long   0, 1, 7, 0xd, 0x80000000, 0x80000001, 0x80000002, 0x80000003, 0x80000004, 0xffffffff
