# vmcore-build: mode=real base=0x0
#
# rtc_kick (hostile): a device timer re-armed again and again.  Real mode,
# loaded at 0, 4 KiB of RAM (machines/hostile/rtc-kick.yaml: cmos-rtc at 0x70,
# i8254).  Starts PIT channel 0 (mode 2, count 65536: a tick every 55 ms) so that
# a live timer always comes first in the clock's queue, with nothing to pop
# ahead of it.  Enables the RTC's update-ended interrupt (register B: UIE,
# 24-hour), so the RTC keeps a timer for the next second boundary, then writes
# register A (its power-on value 0x26) again and again: each write cancels that
# timer and schedules a new one up to a second away.  A clock that keeps
# cancelled timers queued until their deadline holds every one of them.
# The write count is the little-endian dword at offset 2 of the binary (skipped
# by the first jmp); 0 writes for ever.  After the count: HLT.

        .code16
        .text
        .globl  _start

        .set    RTC_INDEX, 0x70
        .set    RTC_DATA, 0x71

_start:
        jmp     1f
count:  .long   0                       # offset 2: writes, 0 = endless
1:
        xor     %ax, %ax
        mov     %ax, %ds
        mov     count, %ebp
        xor     %ebx, %ebx
        mov     $0x34, %al              # PIT channel 0, lobyte/hibyte, mode 2
        out     %al, $0x43
        xor     %al, %al                # count 0: 65536
        out     %al, $0x40
        out     %al, $0x40
        mov     $0x0b, %al              # register B
        out     %al, $RTC_INDEX
        mov     $0x12, %al              # UIE | 24-hour
        out     %al, $RTC_DATA
        mov     $0x0a, %al              # register A, for every write that follows
        out     %al, $RTC_INDEX
        mov     $0x26, %al              # 32.768 kHz time base, 1024 Hz rate: the power-on value
again:
        out     %al, $RTC_DATA
        inc     %ebx
        test    %ebp, %ebp
        jz      again
        cmp     %ebp, %ebx
        jb      again
halt:
        hlt
        jmp     halt
