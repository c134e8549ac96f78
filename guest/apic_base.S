# vmcore-build: mode=long base=0x1000
#
# apic_base: the local APIC as the CPU reaches it, in 64-bit mode (machines/apic-base.yaml:
# a lapic device, irqchip userspace, identity paging of the first 4 GiB). Prints one line:
#   E  IA32_APIC_BASE (MSR 0x1B) has EN set
#   5  after mov $5, %cr8 the APIC's TPR (0xFEE00080) reads 0x50
#   c  after clearing EN, CPUID leaf 1 shows no APIC (EDX bit 9 clear)
#   F  ... and the register page reads all ones
#   V  after setting EN again, the version register (0xFEE00030) reads 0x50014
#   0  ... and CR8 reads 0 (the APIC came back at power-up)
# each letter replaced by '-' where that is not so; then debug-exit 0x21 (status 67).

        .code64
        .text
        .globl  _start

        .set    APIC, 0xfee00000

_start:
        mov     $0x1b, %ecx
        rdmsr
        mov     %eax, %r12d                     # the APIC_BASE low half, to write back later
        test    $0x800, %eax
        mov     $'E', %al
        call    say                             # ZF clear: EN set
        mov     $5, %eax
        mov     %rax, %cr8
        mov     $APIC + 0x80, %ebx
        cmpl    $0x50, (%rbx)
        sete    %dl
        test    %dl, %dl
        mov     $'5', %al
        call    say
        mov     %r12d, %eax
        and     $~0x800, %eax
        xor     %edx, %edx
        mov     $0x1b, %ecx
        wrmsr                                   # EN clear: globally disabled
        mov     $1, %eax
        cpuid
        not     %edx
        test    $0x200, %edx
        mov     $'c', %al
        call    say
        mov     $APIC + 0x30, %ebx
        cmpl    $0xffffffff, (%rbx)
        sete    %dl
        test    %dl, %dl
        mov     $'F', %al
        call    say
        mov     %r12d, %eax
        xor     %edx, %edx
        mov     $0x1b, %ecx
        wrmsr                                   # EN set again
        mov     $APIC + 0x30, %ebx
        cmpl    $0x50014, (%rbx)
        sete    %dl
        test    %dl, %dl
        mov     $'V', %al
        call    say
        mov     %cr8, %rax
        test    %rax, %rax
        sete    %dl
        test    %dl, %dl
        mov     $'0', %al
        call    say
        mov     $'\n', %al
        out     %al, $0xf1
        mov     $0x501, %dx
        mov     $0x21, %al
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
