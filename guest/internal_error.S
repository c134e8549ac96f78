# vmcore-build: mode=real base=0x0
#
# internal_error: makes KVM give up with KVM_EXIT_INTERNAL_ERROR (suberror 1,
# KVM_INTERNAL_ERROR_EMULATION).  Real mode, loaded at 0, entry 0, 4 KiB of
# RAM at 0; guest-physical 0x100000 (1 MiB) must lie outside every memory
# slot, as it does in the 4 KiB profile.
# Prints "ie\n" on debugcon 0xF1, then:
#   1. Portable trick: far-jump to 1 MiB, where no memory slot is.  The fetch
#      faults (an EPT violation on VT-x) on an address KVM can only treat as
#      MMIO; KVM's emulator cannot fetch instruction bytes from MMIO, so the
#      emulation fails.  Before jumping it stores a `ljmp` back to `fallback`
#      at 1 MiB: if RAM is there after all, that store sticks and brings us
#      back; if not, it is an MMIO write the VMM drops.
#   2. Fallback: `fld1`, which KVM's instruction emulator does not implement.
#      It only fails where KVM emulates real mode (PVM does); on hardware that
#      runs real mode natively (VT-x unrestricted guest) it just executes.
#   3. Neither worked: prints "ie not triggered\n" and halts.

        .code16
        .text
        .globl  _start

        .set    NOWHERE_SEG, 0xffff     # 0xFFFF:0x0010 = 0x100000 (KVM has no A20 gate)
        .set    NOWHERE_OFF, 0x0010

_start:
        cld
        mov     $msg, %si
1:      lodsb
        test    %al, %al
        jz      2f
        out     %al, $0xf1
        jmp     1b
2:
        mov     $NOWHERE_SEG, %ax
        mov     %ax, %es
        # Byte stores: an unaligned word store reaches MMIO as one access on KVM but
        # as two bytes under TCG; bytes keep the two accelerators' traces identical.
        movb    $0xea, %es:NOWHERE_OFF          # ljmp $0, $fallback
        movb    $(fallback - _start) & 0xff, %es:NOWHERE_OFF + 1   # loaded at 0: offset = address
        movb    $(fallback - _start) >> 8, %es:NOWHERE_OFF + 2
        movb    $0, %es:NOWHERE_OFF + 3
        movb    $0, %es:NOWHERE_OFF + 4
        ljmp    $NOWHERE_SEG, $NOWHERE_OFF

fallback:
        fld1
        mov     $nomsg, %si
3:      lodsb
        test    %al, %al
        jz      halt
        out     %al, $0xf1
        jmp     3b
halt:
        hlt
        jmp     halt

msg:    .asciz  "ie\n"
nomsg:  .asciz  "ie not triggered\n"
