/* Start-up code shared by the C guests: the multiboot v1 header, a stack, our own
 * GDT, and one interrupt stub per vector for the IDT that runtime.c builds.
 *
 * Multiboot spec 0.6.96 section 3.2 (machine state): EAX = 0x2BADB002, EBX = the
 * physical address of the multiboot information, flat 32-bit segments, paging
 * off, IF clear; ESP and GDTR are undefined, so we set up both before anything
 * can push or load a segment (an interrupt loads CS through the GDT). */

#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003 /* bit 0: page-align modules, bit 1: memory information */

#define CODE_SEL 0x08
#define DATA_SEL 0x10

        .section .multiboot, "a"
        .align 4
        .long MB_MAGIC
        .long MB_FLAGS
        .long -(MB_MAGIC + MB_FLAGS)

        .section .text.start, "ax"
        .globl _start
_start:
        cli
        cld
        movl %eax, %esi                 /* magic, kept across the .bss clear */
        movl %ebx, %ebp                 /* multiboot information */
        lgdt gdt_pointer
        ljmp $CODE_SEL, $1f
1:      movw $DATA_SEL, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %fs
        movw %ax, %gs
        movw %ax, %ss
        movl $stack_top, %esp
        /* A loader zero-fills .bss from the program headers; clearing it again
         * costs nothing and keeps an a.out-style loader honest. */
        movl $__bss_start, %edi
        movl $__bss_end, %ecx
        subl %edi, %ecx
        xorl %eax, %eax
        rep stosb
        pushl %ebp
        pushl %esi
        call kmain                      /* int kmain(u32 magic, u32 info) */
        pushl %eax
        call exit                       /* does not return */
2:      cli
        hlt
        jmp 2b

/* Stub per vector: push a dummy error code where the CPU pushes none (Intel SDM
 * vol. 3 table 6-1: vectors 8, 10-14, 17 and 21 push one), then the vector. */
        .text
.macro STUB vec
isr_\vec:
        .if (\vec == 8) || (\vec >= 10 && \vec <= 14) || (\vec == 17) || (\vec == 21)
        .else
        pushl $0
        .endif
        pushl $\vec
        jmp isr_common
.endm

        .altmacro
.set vec, 0
.rept 48
        STUB %vec
.set vec, vec + 1
.endr

isr_common:
        pushal
        pushl %esp                      /* struct frame * */
        call isr_dispatch
        addl $4, %esp
        popal
        addl $8, %esp                   /* vector, error code */
        iret

.macro STUB_ADDRESS vec
        .long isr_\vec
.endm

        .section .rodata
        .globl isr_stubs
        .align 4
isr_stubs:
.set vec, 0
.rept 48
        STUB_ADDRESS %vec
.set vec, vec + 1
.endr

        .align 8
gdt:
        .quad 0                         /* null */
        .quad 0x00CF9A000000FFFF        /* 0x08: code, base 0, limit 4 GiB, 32-bit */
        .quad 0x00CF92000000FFFF        /* 0x10: data, base 0, limit 4 GiB */
gdt_end:
        .align 4
        .word 0
gdt_pointer:
        .word gdt_end - gdt - 1
        .long gdt

        .bss
        .align 16
stack_bottom:
        .skip 16384
stack_top:

        /* No executable stack (GNU ld warns about objects without this note). */
        .section .note.GNU-stack, "", @progbits
