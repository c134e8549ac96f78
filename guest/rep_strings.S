# vmcore-build: mode=protected base=0x1000
#
# rep_strings: rep movs and rep stos as the SDM defines them, iteration by iteration,
# whatever an emulator does in bulk: each result is compared with the same work done
# by a plain loop. Started in 32-bit flat protected mode (machines/rep-strings.yaml: RAM
# 0..1 MiB, image at 0x1000, GDT at 0x9000, ESP = 0x8000). Prints one letter per check
# on the debug console (port 0xF1), "!" for a check that failed, then "\n", and halts:
#
#   a  rep movsb across pages, unaligned; ESI, EDI and ECX after it
#   b  rep movsb onto itself one byte ahead (each byte is the one just stored)
#   c  rep movsl six bytes ahead (elements overlap the ones before)
#   d  rep movsw one byte ahead (an element overlaps itself: loaded whole, then stored)
#   e  rep stosl, stosw and stosb, unaligned, across pages; EDI and ECX after them
#   f  rep movsb with the direction flag set (backwards)
#   g  a 16-bit address size (addr16): DI and CX wrap at 64 KiB, the upper halves kept
#   h  rep movsb over code that already ran: the code runs as copied
#
# Expected output: "abcdefgh\n".

        .code32
        .text
        .globl  _start

        .set    SRC, 0x10000            # the pattern, 0x4000 bytes
        .set    A, 0x20000              # what the rep instruction made
        .set    B, 0x40000              # what the plain loop made
        .set    SIZE, 0x10000           # bytes of A and B compared
        .set    CODE, 0x6000            # a page for h's routine

# expect / expectl: count a difference in EBP (cmp's operands: the expected value first).
.macro expect want, have
        cmp     \want, \have
        je      99f
        inc     %ebp
99:
.endm
.macro expectl want, have
        cmpl    \want, \have
        je      99f
        inc     %ebp
99:
.endm

# overlap: rep \insn of \count elements (\size bytes, \reg holds one) from A + \from to
# A + \to, the same element by element from B + \from to B + \to; then report \letter.
.macro overlap letter, from, to, count, insn, reg, size
        call    fill
        mov     $A+\from, %esi
        mov     $A+\to, %edi
        mov     $\count, %ecx
        rep \insn
        mov     $B+\from, %esi
        mov     $B+\to, %edi
        mov     $\count, %ecx
98:     mov     (%esi), \reg
        mov     \reg, (%edi)
        add     $\size, %esi
        add     $\size, %edi
        loop    98b
        xor     %ebp, %ebp
        mov     $\letter, %al
        call    report
.endm

_start:
        cld
        # The pattern: byte i = i * 7 + 3.
        mov     $SRC, %edi
        xor     %ecx, %ecx
1:      lea     3(%ecx, %ecx, 2), %eax
        lea     (%eax, %ecx, 4), %eax
        mov     %al, (%edi, %ecx)
        inc     %ecx
        cmp     $0x4000, %ecx
        jne     1b

        # a: rep movsb, 0x2345 bytes from SRC + 5 to A + 0xff9.
        call    clear
        mov     $SRC + 5, %esi
        mov     $A + 0xff9, %edi
        mov     $0x2345, %ecx
        rep movsb
        xor     %ebp, %ebp              # 0: registers as expected
        expect $SRC+5+0x2345, %esi
        expect $A+0xff9+0x2345, %edi
        expect $0, %ecx
        mov     $SRC + 5, %esi
        mov     $B + 0xff9, %edi
        mov     $0x2345, %ecx
        call    copy_bytes
        mov     $'a', %al
        call    report

        # b, c, d: copies onto themselves, the destination ahead of the source.
        overlap 'b', 0x100, 0x101, 0x2000, movsb, %al, 1       # a run of one byte
        overlap 'c', 0x10, 0x16, 0x900, movsl, %eax, 4         # dwords over the ones before
        overlap 'd', 0x3, 0x4, 0x1800, movsw, %ax, 2           # each word over itself

        # e: rep stosl at A + 0x7ff3 (0x1234 dwords), stosw at A + 0x1001 (0x901 words),
        # stosb at A + 0xc005 (0x2001 bytes).
        call    clear
        xor     %ebp, %ebp
        mov     $0xa1b2c3d4, %eax
        mov     $A + 0x7ff3, %edi
        mov     $0x1234, %ecx
        rep stosl
        expect $A+0x7ff3+4*0x1234, %edi
        mov     $A + 0x1001, %edi
        mov     $0x901, %ecx
        rep stosw
        mov     $A + 0xc005, %edi
        mov     $0x2001, %ecx
        rep stosb
        expect $0, %ecx
        mov     $B + 0x7ff3, %edi
        mov     $0x1234, %ecx
4:      mov     %eax, (%edi)
        add     $4, %edi
        loop    4b
        mov     $B + 0x1001, %edi
        mov     $0x901, %ecx
5:      mov     %ax, (%edi)
        add     $2, %edi
        loop    5b
        mov     $B + 0xc005, %edi
        mov     $0x2001, %ecx
6:      mov     %al, (%edi)
        inc     %edi
        loop    6b
        mov     $'e', %al
        call    report

        # f: backwards, from SRC + 0x1fff down to A + 0x2fff, 0x1800 bytes.
        call    clear
        std
        mov     $SRC + 0x1fff, %esi
        mov     $A + 0x2fff, %edi
        mov     $0x1800, %ecx
        rep movsb
        cld
        xor     %ebp, %ebp
        expect $A+0x2fff-0x1800, %edi
        mov     $SRC + 0x1fff, %esi
        mov     $B + 0x2fff, %edi
        mov     $0x1800, %ecx
7:      mov     (%esi), %al
        mov     %al, (%edi)
        dec     %esi
        dec     %edi
        loop    7b
        mov     $'f', %al
        call    report

        # g: addr16 rep stosb with DI = 0xfff8 and CX = 0x10: 0xfff8..0xffff, then 0..7.
        movl    $0, 0xfff0
        movl    $0, 0xfff4
        movl    $0, 0xfff8
        movl    $0, 0xfffc
        movl    $0, 0x0
        movl    $0, 0x4
        movl    $0, 0x8
        mov     $0x5a, %al
        mov     $0x1234fff8, %edi
        mov     $0xabcd0010, %ecx
        addr16 rep stosb
        xor     %ebp, %ebp
        expect $0x12340008, %edi
        expect $0xabcd0000, %ecx
        expectl $0, 0xfff4
        expectl $0x5a5a5a5a, 0xfff8
        expectl $0x5a5a5a5a, 0xfffc
        expectl $0x5a5a5a5a, 0x0
        expectl $0x5a5a5a5a, 0x4
        expectl $0, 0x8
        mov     $'g', %al
        test    %ebp, %ebp
        jz      8f
        mov     $'!', %al
8:      out     %al, $0xf1

        # h: copy a routine to CODE, run it, copy another over it, run that.
        mov     $routine_x, %esi
        mov     $CODE, %edi
        mov     $routine_h - routine_x, %ecx
        rep movsb
        mov     $CODE, %ebx
        call    *%ebx
        mov     %al, %dl
        mov     $routine_h, %esi
        mov     $CODE, %edi
        mov     $routine_end - routine_h, %ecx
        rep movsb
        call    *%ebx
        cmp     $'x', %dl
        je      9f
        mov     $'!', %al
9:      out     %al, $0xf1

        mov     $'\n', %al
        out     %al, $0xf1
halt:
        hlt
        jmp     halt

# report: print AL where A and B hold the same SIZE bytes and EBP is 0, else "!".
report:
        push    %eax
        mov     $A, %esi
        mov     $B, %edi
        mov     $SIZE, %ecx
1:      mov     (%esi), %bl
        cmp     (%edi), %bl
        jne     2f
        inc     %esi
        inc     %edi
        loop    1b
        pop     %eax
        test    %ebp, %ebp
        jz      3f
        mov     $'!', %al
3:      out     %al, $0xf1
        ret
2:      pop     %eax
        mov     $'!', %al
        out     %al, $0xf1
        ret

# copy_bytes: ECX bytes from ESI to EDI, one by one, forwards.
copy_bytes:
        mov     (%esi), %al
        mov     %al, (%edi)
        inc     %esi
        inc     %edi
        loop    copy_bytes
        ret

# clear: A and B all zeros.
clear:
        xor     %ecx, %ecx
1:      movl    $0, A(%ecx)
        movl    $0, B(%ecx)
        add     $4, %ecx
        cmp     $SIZE, %ecx
        jne     1b
        ret

# fill: A and B both the pattern (its first 0x4000 bytes, then zeros).
fill:
        call    clear
        xor     %ecx, %ecx
1:      mov     SRC(%ecx), %al
        mov     %al, A(%ecx)
        mov     %al, B(%ecx)
        inc     %ecx
        cmp     $0x4000, %ecx
        jne     1b
        ret

# Two routines of the same length (padded, so a copy is long enough to go in bulk).
routine_x:
        mov     $'x', %al
        ret
        .fill   61, 1, 0x90
routine_h:
        mov     $'h', %al
        ret
        .fill   61, 1, 0x90
routine_end:
