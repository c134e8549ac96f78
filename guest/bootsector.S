# vmcore-build: mode=real base=0x0
#
# bootsector: a two-sector disk image booted by a PC BIOS (SeaBIOS), not by the
# VMM directly.  The BIOS loads sector 1 (LBA 0) at physical 0x7C00 and jumps
# there with DL = the boot drive; sector 2 (LBA 1) is data read through the BIOS.
# Linked at 0 and run with CS = DS = 0x07C0 (segment base 0x7C00), so offsets
# equal image offsets and the build's real-mode base stays 0.
#   1. prints "vmcore boot sector: hello from int 10h\r\n" (int 10h AH=0Eh);
#   2. reads sector 2 (CHS 0/0/2) into 0000:8000 with int 13h AH=02h; on CF=1
#      resets the disk (AH=00h) and retries, at most 3 times;
#   3. prints the NUL-terminated text it read, waits for one BIOS timer tick
#      (so the BIOS's serial console flushes), then writes 0x2A to debug-exit
#      (port 0x501): status (0x2A << 1) | 1 = 85;
#      if every read failed: "disk read failed: error 0xNN\r\n" (NN = the last
#      AH), then 0x15: status 43.
# Runs on QEMU (-drive file=guest/bootsector.bin,format=raw,if=ide with
# isa-debug-exit at 0x501); tests/data/seabios-qemu/ holds a reference run.

        .code16
        .text
        .globl  _start

        .set    BUF_SEG, 0x0800         # 0000:8000 as segment:0, to print from
        .set    BUF_OFF, 0x8000         # read target, ES = 0
        .set    RETRIES, 3
        .set    EXIT_PORT, 0x501
        .set    EXIT_OK, 0x2A
        .set    EXIT_READ_FAILED, 0x15

_start:
        # Some BIOSes enter at 07C0:0000 rather than 0000:7C00; the far jump
        # makes CS the same either way.
        ljmp    $0x07C0, $start
start:
        mov     %cs, %ax
        mov     %ax, %ds
        xor     %ax, %ax
        mov     %ax, %ss                # blocks interrupts for the next mov
        mov     $0x7C00, %sp            # grows down, below the loaded sector
        cld
        sti
        mov     %dl, boot_drive         # the BIOS calls may clobber DL

        mov     $hello, %si
        call    puts

        mov     $RETRIES, %di
read:
        xor     %ax, %ax
        mov     %ax, %es
        mov     $BUF_OFF, %bx
        mov     $0x0201, %ax            # AH=02h read, AL=1 sector
        mov     $0x0002, %cx            # CH=cylinder 0, CL=sector 2 (sectors count from 1)
        xor     %dh, %dh                # head 0
        mov     boot_drive, %dl
        int     $0x13
        jnc     read_ok
        mov     %ah, error              # the read's status, not the reset's
        test    %di, %di
        jz      read_failed
        dec     %di
        xor     %ah, %ah                # AH=00h reset: recalibrates after a failed read
        mov     boot_drive, %dl
        int     $0x13
        jmp     read

read_ok:
        push    %ds
        mov     $BUF_SEG, %ax
        mov     %ax, %ds
        movb    $0, 0x200               # the byte past the sector: stops a text with no NUL
        xor     %si, %si
        call    puts
        pop     %ds
        mov     $EXIT_OK, %al
        jmp     leave

read_failed:
        mov     $failed, %si
        call    puts
        mov     error, %al
        call    put_hex8
        mov     $crlf, %si
        call    puts
        mov     $EXIT_READ_FAILED, %al

leave:
        # SeaBIOS's serial console holds back the last character and cursor
        # move until its next timer tick (IRQ 0, 18.2 Hz): exiting at once
        # would cut off the end of the text.  Wait for the BIOS tick count
        # (0040:006C) to move; a halt is woken by that IRQ.
        push    %ax
        push    %ds
        mov     $0x40, %ax
        mov     %ax, %ds
        sti                             # BIOS calls return with the caller's IF; be sure
        mov     0x6C, %ax
1:      hlt
        cmp     0x6C, %ax
        je      1b
        pop     %ds
        pop     %ax

        mov     $EXIT_PORT, %dx         # above 0xFF: no immediate-port form
        out     %al, %dx
halt:
        cli                             # not reached under debug-exit
        hlt
        jmp     halt

# puts: print the NUL-terminated string at DS:SI through int 10h.
puts:
        lodsb
        test    %al, %al
        jz      1f
        call    putc
        jmp     puts
1:      ret

# put_hex8: print AL as two lowercase hex digits.
put_hex8:
        push    %ax
        shr     $4, %al
        call    put_nibble
        pop     %ax
put_nibble:
        and     $0x0F, %al
        add     $'0', %al
        cmp     $'9', %al
        jbe     putc
        add     $('a' - '0' - 10), %al
# putc: teletype output of AL on page 0 (BL is the colour, used in graphics modes only).
putc:
        push    %si                     # some BIOSes' int 10h does not preserve SI/BP
        push    %bp
        mov     $0x0E, %ah
        mov     $0x0007, %bx
        int     $0x10
        pop     %bp
        pop     %si
        ret

hello:  .asciz  "vmcore boot sector: hello from int 10h\r\n"
failed: .asciz  "disk read failed: error 0x"
crlf:   .asciz  "\r\n"
boot_drive:
        .byte   0
error:  .byte   0

        # Bytes 446-509 stay zero: an empty MBR partition table, so nothing
        # (QEMU's geometry guess, a BIOS) takes the code for partitions.
        .org    446
        .org    510
        .byte   0x55, 0xAA              # boot signature: the BIOS boots the sector only with it

# Sector 2 (LBA 1): the text step 2 reads.
        .asciz  "sector 2 says: read through int 13h\r\n"
        .org    1024
