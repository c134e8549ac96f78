/* cmos_clock: read the MC146818 RTC and print the date and time.
 *
 * Waits for the update-in-progress flag to clear, reads seconds..year and the
 * century (register 0x32) until two reads agree, converts from BCD and 12-hour
 * form as register B says, and prints "YYYY-MM-DD HH:MM:SS\n" on debugcon, then
 * leaves through debug-exit with 0x12 (exit status 37). */
#include "runtime.h"

#define CMOS_INDEX 0x70
#define CMOS_DATA 0x71

/* MC146818A datasheet, "Address Map". */
#define RTC_SECONDS 0x00
#define RTC_MINUTES 0x02
#define RTC_HOURS 0x04
#define RTC_DAY 0x07
#define RTC_MONTH 0x08
#define RTC_YEAR 0x09
#define RTC_REG_A 0x0A
#define RTC_REG_B 0x0B
#define RTC_CENTURY 0x32 /* not in the MC146818 itself: the PC/AT CMOS layout */

#define REG_A_UIP 0x80
#define REG_B_24H 0x02
#define REG_B_BINARY 0x04
#define HOURS_PM 0x80

struct rtc_time {
    u8 second, minute, hour, day, month, year, century;
};

static u8 cmos_read(u8 reg)
{
    outb(CMOS_INDEX, reg); /* bit 7 clear: NMI stays enabled */
    return inb(CMOS_DATA);
}

static void read_raw(struct rtc_time *t)
{
    /* While UIP is clear an update will not start for at least 244 us, enough
     * for these reads (datasheet, "Update Cycle"). */
    while (cmos_read(RTC_REG_A) & REG_A_UIP)
        ;
    t->second = cmos_read(RTC_SECONDS);
    t->minute = cmos_read(RTC_MINUTES);
    t->hour = cmos_read(RTC_HOURS);
    t->day = cmos_read(RTC_DAY);
    t->month = cmos_read(RTC_MONTH);
    t->year = cmos_read(RTC_YEAR);
    t->century = cmos_read(RTC_CENTURY);
}

static u8 from_bcd(u8 v) { return (u8)((v >> 4) * 10 + (v & 0xF)); }

int kmain(u32 magic, u32 info)
{
    struct rtc_time t, again;
    (void)magic;
    (void)info;

    read_raw(&t);
    for (;;) {
        read_raw(&again);
        if (!memcmp(&t, &again, sizeof t))
            break;
        t = again;
    }

    u8 reg_b = cmos_read(RTC_REG_B);
    u8 pm = t.hour & HOURS_PM;
    t.hour &= (u8)~HOURS_PM;
    if (!(reg_b & REG_B_BINARY)) {
        t.second = from_bcd(t.second);
        t.minute = from_bcd(t.minute);
        t.hour = from_bcd(t.hour);
        t.day = from_bcd(t.day);
        t.month = from_bcd(t.month);
        t.year = from_bcd(t.year);
        t.century = from_bcd(t.century);
    }
    if (!(reg_b & REG_B_24H))
        t.hour = (u8)(t.hour % 12 + (pm ? 12 : 0)); /* 12 AM is 0, 12 PM is 12 */
    u32 century = t.century ? t.century : 20;

    put_dec(debugcon_putc, century * 100 + t.year);
    debugcon_putc('-');
    put_dec2(debugcon_putc, t.month);
    debugcon_putc('-');
    put_dec2(debugcon_putc, t.day);
    debugcon_putc(' ');
    put_dec2(debugcon_putc, t.hour);
    debugcon_putc(':');
    put_dec2(debugcon_putc, t.minute);
    debugcon_putc(':');
    put_dec2(debugcon_putc, t.second);
    debugcon_putc('\n');
    return 0x12;
}
