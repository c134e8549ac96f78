# vmcore-build: mode=protected base=0x1000
#
# smc: self-modifying code, which a CPU must run as written: a store into code
# that already ran (and that an emulator has translated) takes effect before that
# code runs again. Started in 32-bit flat protected mode (machines/smc.yaml: RAM
# 0..64 KiB, image at 0x1000, GDT at 0x9000, ESP = 0x8000). Prints one letter per
# check on the debug console (port 0xF1), then "\n", and halts:
#
#   a b  a routine run, its immediate rewritten, run again (same page as the store)
#   d    the instruction right after a store rewritten by that store (SDM 11.6)
#   x y  with (PAE) paging: a routine in page 0xC000 rewritten through a second virtual
#        mapping of the same page (0xD000), written once before the routine ever
#        ran, so a write path kept from before the page held code must not be used
#
# Expected output: "abdxy\n". A CPU that runs stale code prints "aa", "c" or "xx".

        .code32
        .text
        .globl  _start
_start:
        # a, b: run, rewrite the immediate, run again.
        call    routine
        out     %al, $0xf1
        movb    $'b', routine + 1
        call    routine
        out     %al, $0xf1

        # d: the store rewrites the very next instruction.
        movb    $'d', 1f + 1
1:      mov     $'c', %al
        out     %al, $0xf1

        # PAE paging (as every 64-bit capable CPU and KVM run it): PDPT at 0xA000,
        # one page directory at 0xB000, one page table at 0xE000 mapping 0..2 MiB
        # identically, except virtual 0xD000 -> physical 0xC000.
        mov     $0xA000, %edi
        xor     %eax, %eax
        mov     $3 * 1024, %ecx         # PDPT and PD pages: zero
        rep stosl
        mov     $0xE000, %edi
        mov     $0x003, %eax            # present, writable
        mov     $512, %ecx
2:      mov     %eax, (%edi)
        movl    $0, 4(%edi)
        add     $8, %edi
        add     $0x1000, %eax
        loop    2b
        movl    $0xC003, 0xE000 + 0xD * 8
        movl    $0xE003, 0xB000
        movl    $0xB001, 0xA000         # a PDPT entry has no writable bit
        mov     %cr4, %eax
        or      $0x20, %eax             # PAE
        mov     %eax, %cr4
        mov     $0xA000, %eax
        mov     %eax, %cr3
        mov     %cr0, %eax
        or      $0x80000000, %eax       # PG
        mov     %eax, %cr0
        jmp     3f
3:
        # x, y: copy the routine to the page through the alias, run it at 0xC000,
        # rewrite it through the alias, run it again.
        mov     $routine2, %esi
        mov     $0xD000, %edi
        mov     $routine2_end - routine2, %ecx
        rep movsb
        mov     $0xC000, %ebx
        call    *%ebx
        out     %al, $0xf1
        movb    $'y', 0xD000 + 1
        call    *%ebx
        out     %al, $0xf1

        mov     $'\n', %al
        out     %al, $0xf1
halt:
        hlt
        jmp     halt

routine:
        mov     $'a', %al
        ret

routine2:
        mov     $'x', %al
        ret
routine2_end:
