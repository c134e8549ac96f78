# vmcore-build: mode=protected base=0x1000
#
# mmio_sweep (hostile guest): touches many distinct MMIO pages.  32-bit flat
# protected mode (cpu.mode: protected), image at 0x1000, entry 0x1000.  The
# profile's cpu.registers say what to sweep:
#   ESI  the first page (page aligned)
#   ECX  how many consecutive pages (at least 1)
#   EBX  how many passes; 0 sweeps for ever (a soak)
#   EDI  a 4-byte read/write device register to check; 0: none
# Each pass, for every page P: a dword write of A = P + 0x800 to A, then a
# dword read of A, which must give all ones (nothing there) or A (memory
# there).  The offset keeps off a device's registers at the start of its page,
# so a device's own page is swept too.  Around the sweep, with EDI set: write
# 0x5A5A0001 to the register before it, read it back after it (a write meant
# for another page must not have reached the device), then write 0x5A5A0002
# and read that back (nor may the device's accesses now go elsewhere).
# Prints "sweep ok\n" after the last pass, or "sweep BAD\n" at the first
# wrong value; then halts.

        .code32
        .text
        .globl  _start

        .set    OFFSET, 0x800
        .set    BEFORE, 0x5A5A0001
        .set    AFTER, 0x5A5A0002

_start:
        cld
        mov     %ecx, %ebp              # pages per pass; ECX counts down
pass:
        test    %edi, %edi
        jz      sweep
        movl    $BEFORE, (%edi)
sweep:
        lea     OFFSET(%esi), %edx
        mov     %ebp, %ecx
page:
        mov     %edx, (%edx)
        mov     (%edx), %eax
        cmp     $0xffffffff, %eax
        je      next
        cmp     %edx, %eax
        jne     bad
next:
        add     $0x1000, %edx
        dec     %ecx
        jnz     page
        test    %edi, %edi
        jz      passes
        cmpl    $BEFORE, (%edi)
        jne     bad
        movl    $AFTER, (%edi)
        cmpl    $AFTER, (%edi)
        jne     bad
passes:
        test    %ebx, %ebx
        jz      pass                    # 0: for ever
        dec     %ebx
        jnz     pass
        mov     $okmsg, %esi
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

okmsg:  .asciz  "sweep ok\n"
badmsg: .asciz  "sweep BAD\n"
