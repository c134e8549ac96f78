# vmcore-build: mode=long base=0x1000
#
# x2apic: the local APIC in x2APIC mode, in 64-bit mode (machines/x2apic.yaml: a lapic
# device, irqchip userspace, CPUID with x2APIC). Prints one line:
#   X  IA32_APIC_BASE takes EXTD (x2APIC mode on)
#   V  the version register is MSR 0x803: 0x50014
#   I  the ID register is MSR 0x802: the 32-bit x2APIC ID, 0
#   F  the xAPIC page is not decoded: 0xFEE00030 reads all ones
#   8  TPR written as MSR 0x808 (0x50) reads back through CR8 (5)
#   S  a SELF IPI (MSR 0x83F, vector 0x40, interrupts off) sets IRR bit 64 (MSR 0x822 bit 0)
# each letter replaced by '-' where that is not so; then debug-exit 0x22 (status 69).

        .code64
        .text
        .globl  _start

        .set    APIC, 0xfee00000

_start:
        cli
        mov     $0x1b, %ecx
        rdmsr
        or      $0x400, %eax                    # EXTD
        wrmsr
        rdmsr
        test    $0x400, %eax
        mov     $'X', %al
        call    say
        mov     $0x803, %ecx
        rdmsr
        cmp     $0x50014, %eax
        sete    %dl
        test    %dl, %dl
        mov     $'V', %al
        call    say
        mov     $0x802, %ecx
        rdmsr
        test    %eax, %eax
        sete    %dl
        test    %dl, %dl
        mov     $'I', %al
        call    say
        mov     $APIC + 0x30, %ebx
        cmpl    $0xffffffff, (%rbx)
        sete    %dl
        test    %dl, %dl
        mov     $'F', %al
        call    say
        mov     $0x808, %ecx
        mov     $0x50, %eax
        xor     %edx, %edx
        wrmsr
        mov     %cr8, %rax
        cmp     $5, %rax
        sete    %dl
        test    %dl, %dl
        mov     $'8', %al
        call    say
        mov     $0x83f, %ecx
        mov     $0x40, %eax
        xor     %edx, %edx
        wrmsr
        mov     $0x822, %ecx
        rdmsr
        test    $1, %eax
        mov     $'S', %al
        call    say
        mov     $'\n', %al
        out     %al, $0xf1
        mov     $0x501, %dx
        mov     $0x22, %al
        out     %al, %dx
halt:
        hlt
        jmp     halt

# Print %al if ZF is clear, else '-'.
say:
        jnz     1f
        mov     $'-', %al
1:      out     %al, $0xf1
        ret
