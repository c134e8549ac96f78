# vmcore-build: mode=real base=0x0
#
# mode_switch: real -> protected -> long mode and back to real mode, as an OS
# loader (or kvm-unit-tests' realmode test) does.  Real mode, loaded at 0, entry
# 0, 64 KiB of RAM at 0.  Each mode prints a letter on the debug console:
#   R  real mode;
#   P  32-bit protected mode, after `lgdt` and CR0.PE (own GDT below);
#   L  64-bit long mode, after PAE page tables (one 2 MiB page, identity) at
#      0x3000..0x5fff, EFER.LME and CR0.PG, and a far jump to a 64-bit code
#      segment; RAX, R8 and R15 get 64-bit values;
#   C  32-bit compatibility mode, after a far return to the 32-bit segment;
#      paging off leaves long mode (EFER.LMA clears), then EFER.LME is cleared;
#   B  back in real mode, after a far jump through a 16-bit protected-mode
#      segment and CR0.PE cleared;
# then "\n" and HLT with IF clear.  The halt report shows what the CPU keeps
# across the trip: R8 = 0x8877665544332211 and R15 = 0x0123456789abcdef (the
# 64-bit registers keep their values outside 64-bit mode), CR0.PE = 0, EFER = 0.
# Expected output: "RPLCB\n", then a HLT exit.

        .set    PML4, 0x3000
        .set    PDPT, 0x4000
        .set    PD, 0x5000
        .set    EFER, 0xc0000080

        .code16
        .text
        .globl  _start
_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %ss
        mov     $0xf000, %sp
        mov     $'R', %al
        out     %al, $0xf1
        lgdtl   gdt_desc
        mov     %cr0, %eax
        or      $1, %eax
        mov     %eax, %cr0
        ljmpl   $0x08, $pm32

        .code32
pm32:
        mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $'P', %al
        out     %al, $0xf1
        # Page tables: PML4[0] -> PDPT, PDPT[0] -> PD, PD[0] = 2 MiB page at 0.
        mov     $PML4, %edi
        xor     %eax, %eax
        mov     $(3 * 4096 / 4), %ecx
        rep stosl
        movl    $(PDPT | 3), PML4
        movl    $(PD | 3), PDPT
        movl    $0x83, PD                 # present, writable, 2 MiB
        mov     $PML4, %eax
        mov     %eax, %cr3
        mov     %cr4, %eax
        or      $0x20, %eax               # PAE
        mov     %eax, %cr4
        mov     $EFER, %ecx
        rdmsr
        or      $0x100, %eax              # LME
        wrmsr
        mov     %cr0, %eax
        or      $0x80000000, %eax         # PG: long mode is active from here
        mov     %eax, %cr0
        ljmp    $0x18, $lm64

        .code64
lm64:
        mov     $'L', %al
        out     %al, $0xf1
        movabs  $0x1122334455667788, %rax
        movabs  $0x8877665544332211, %r8
        movabs  $0x0123456789abcdef, %r15
        # Back to the 32-bit segment: a far return pops RIP, then CS.
        pushq   $0x08
        pushq   $(compat32 - _start)      # base 0: the offset is the address
        lretq

        .code32
compat32:
        mov     $'C', %al
        out     %al, $0xf1
        mov     %cr0, %eax
        and     $0x7fffffff, %eax         # PG off: long mode ends (EFER.LMA clears)
        mov     %eax, %cr0
        mov     $EFER, %ecx
        rdmsr
        and     $~0x100, %eax             # LME off
        wrmsr
        ljmp    $0x20, $pm16

        .code16
pm16:
        mov     $0x28, %ax                # 16-bit data segments before real mode
        mov     %ax, %ds
        mov     %ax, %ss
        mov     %cr0, %eax
        and     $~1, %eax
        mov     %eax, %cr0
        ljmp    $0, $rm_back

rm_back:
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %ss
        mov     $'B', %al
        out     %al, $0xf1
        mov     $'\n', %al
        out     %al, $0xf1
halt:
        hlt
        jmp     halt

        .p2align 3
gdt:
        .quad   0                         # null
        .quad   0x00cf9b000000ffff        # 0x08: 32-bit code, flat
        .quad   0x00cf93000000ffff        # 0x10: 32-bit data, flat
        .quad   0x00af9b000000ffff        # 0x18: 64-bit code
        .quad   0x00009b000000ffff        # 0x20: 16-bit code, base 0, 64 KiB
        .quad   0x000093000000ffff        # 0x28: 16-bit data, base 0, 64 KiB
gdt_end:
gdt_desc:
        .word   gdt_end - gdt - 1
        .long   gdt
