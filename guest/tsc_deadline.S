# vmcore-build: mode=long base=0x1000
#
# tsc_deadline: the local APIC timer's TSC-deadline mode (SDM 11.5.4.1), in 64-bit mode
# (machines/tsc-deadline.yaml: a lapic device, irqchip userspace, +tsc-deadline).
# Interrupts stay off: each timer interrupt is seen as its vector's bit in IRR, with a
# different vector per check. Prints one line:
#   C  CPUID.1:ECX.TSC_DEADLINE (bit 24) is set
#   M  the LVT timer takes mode 10b (TSC-deadline) and reads it back
#   R  IA32_TSC_DEADLINE (MSR 0x6E0) reads back the deadline written (TSC + 2^40)
#   T  the interrupt comes (IRR bit of vector 0x40) once the TSC passes a deadline 2M ahead
#   Z  and IA32_TSC_DEADLINE reads 0 after it fired
#   P  a deadline already past fires at once (vector 0x41)
#   D  writing 0 disarms a deadline 20M ahead: no interrupt (vector 0x42) in the next 40M
#   O  leaving TSC-deadline mode disarms too (vector 0x43): IA32_TSC_DEADLINE reads 0
#   I  in one-shot mode a write to IA32_TSC_DEADLINE is ignored: it reads 0, nothing fires
# each letter replaced by '-' where that is not so; then debug-exit 0x23 (status 71).

        .code64
        .text
        .globl  _start

        .set    APIC, 0xfee00000                # in %r12: above 2 GiB, not a 64-bit displacement
        .set    LVT_TIMER, 0x320
        .set    IRR_64, 0x220                   # IRR bits for vectors 0x40-0x5F
        .set    DEADLINE_MODE, 2 << 17

_start:
        cli
        mov     $APIC, %r12d
        mov     $1, %eax
        cpuid
        bt      $24, %ecx
        setc    %dl
        test    %dl, %dl
        mov     $'C', %al
        call    say

        orl     $0x100, 0xf0(%r12)              # SVR: software-enable the APIC
        movl    $DEADLINE_MODE | 0x40, LVT_TIMER(%r12)
        mov     LVT_TIMER(%r12), %eax
        and     $3 << 17, %eax
        cmp     $DEADLINE_MODE, %eax
        sete    %dl
        test    %dl, %dl
        mov     $'M', %al
        call    say

        # R: a deadline far ahead (2^40 ticks) reads back; then T, Z: one 2M ticks ahead.
        rdtsc
        shl     $32, %rdx
        or      %rax, %rdx
        mov     $1 << 40, %rsi
        add     %rdx, %rsi                      # the far deadline
        mov     %rsi, %rax
        mov     %rsi, %rdx
        shr     $32, %rdx
        mov     $0x6e0, %ecx
        wrmsr
        rdmsr
        shl     $32, %rdx
        or      %rdx, %rax
        cmp     %rsi, %rax
        sete    %dl
        test    %dl, %dl
        mov     $'R', %al
        call    say
        mov     $2000000, %esi
        call    arm_ahead
        mov     $1 << 0, %edi                   # vector 0x40
        mov     $1 << 31, %r9d                  # a long wait: a busy host may be slow to fire it
        call    wait_irr
        mov     $'T', %al
        call    say
        mov     $0x6e0, %ecx
        rdmsr
        or      %edx, %eax
        sete    %dl
        test    %dl, %dl
        mov     $'Z', %al
        call    say

        # P: a deadline in the past (1).
        movl    $DEADLINE_MODE | 0x41, LVT_TIMER(%r12)
        mov     $0x6e0, %ecx
        mov     $1, %eax
        xor     %edx, %edx
        wrmsr
        mov     $1 << 1, %edi
        mov     $1 << 31, %r9d
        call    wait_irr
        mov     $'P', %al
        call    say

        # D: armed, then disarmed by writing 0.
        movl    $DEADLINE_MODE | 0x42, LVT_TIMER(%r12)
        mov     $20000000, %esi
        call    arm_ahead
        mov     $0x6e0, %ecx
        xor     %eax, %eax
        xor     %edx, %edx
        wrmsr
        mov     $1 << 2, %edi
        mov     $40000000, %r9d                 # twice the armed delay: a timer left armed fires in it
        call    wait_irr                        # times out: ZF set
        setz    %dl
        test    %dl, %dl
        mov     $'D', %al
        call    say

        # O: armed, then the LVT leaves TSC-deadline mode (one-shot, count 0: stopped).
        movl    $DEADLINE_MODE | 0x43, LVT_TIMER(%r12)
        mov     $20000000, %esi
        call    arm_ahead
        movl    $0x43, LVT_TIMER(%r12)
        mov     $0x6e0, %ecx
        rdmsr
        or      %edx, %eax
        sete    %dl
        mov     %dl, %bl
        mov     $1 << 3, %edi
        mov     $40000000, %r9d                 # twice the armed delay: a timer left armed fires in it
        call    wait_irr
        setz    %dl
        and     %bl, %dl
        test    %dl, %dl
        mov     $'O', %al
        call    say

        # I: one-shot mode ignores IA32_TSC_DEADLINE writes.
        movl    $0x44, LVT_TIMER(%r12)
        mov     $20000000, %esi
        call    arm_ahead
        mov     $0x6e0, %ecx
        rdmsr
        or      %edx, %eax
        sete    %dl
        mov     %dl, %bl
        mov     $1 << 4, %edi
        mov     $40000000, %r9d                 # twice the armed delay: a timer left armed fires in it
        call    wait_irr
        setz    %dl
        and     %bl, %dl
        test    %dl, %dl
        mov     $'I', %al
        call    say

        mov     $'\n', %al
        out     %al, $0xf1
        mov     $0x501, %dx
        mov     $0x23, %al
        out     %al, %dx
halt:
        hlt
        jmp     halt

# Write IA32_TSC_DEADLINE = TSC + %rsi.
arm_ahead:
        rdtsc
        shl     $32, %rdx
        or      %rax, %rdx
        add     %rsi, %rdx
        mov     %edx, %eax
        shr     $32, %rdx
        mov     $0x6e0, %ecx
        wrmsr
        ret

# Wait until IRR_64 has a bit of %edi (ZF clear), or the TSC is %r9 past the start (ZF set).
wait_irr:
        rdtsc
        shl     $32, %rdx
        or      %rax, %rdx
        lea     (%rdx,%r9), %r8
1:      test    %edi, IRR_64(%r12)
        jnz     2f
        pause
        rdtsc
        shl     $32, %rdx
        or      %rax, %rdx
        cmp     %r8, %rdx
        jb      1b
        xor     %eax, %eax                      # timed out: ZF set
2:      ret

# Print %al if ZF is clear, else '-'.
say:
        jnz     1f
        mov     $'-', %al
1:      out     %al, $0xf1
        ret
