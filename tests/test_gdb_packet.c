/*
 * tests/test_gdb_packet.c - the GDB remote protocol codec (lib/core/gdb_packet.c):
 * framing, checksums, escapes, hex and bad input, byte for byte.
 */
#include <stdint.h>
#include <string.h>

#include "core/gdb_packet.h"
#include "testutil.h"

/* Feed @s; return the last event that was not NONE (NONE if there was none). */
static enum pvm_gdb_rx_event feed(struct pvm_gdb_rx *rx, const char *s, size_t n)
{
    enum pvm_gdb_rx_event last = PVM_GDB_RX_NONE;
    for (size_t i = 0; i < n; i++) {
        enum pvm_gdb_rx_event e = pvm_gdb_rx_byte(rx, (uint8_t)s[i]);
        if (e != PVM_GDB_RX_NONE)
            last = e;
    }
    return last;
}
#define FEED(rx, lit) feed(rx, lit, sizeof(lit) - 1)

START_TEST(frame_exact_bytes)
{
    char out[64];
    size_t n = pvm_gdb_frame(out, sizeof(out), "OK", 2);
    ck_assert_uint_eq(n, 6);
    ck_assert_int_eq(memcmp(out, "$OK#9a", 6), 0);
    n = pvm_gdb_frame(out, sizeof(out), "", 0);
    ck_assert_int_eq(memcmp(out, "$#00", 4), 0);
    ck_assert_uint_eq(n, 4);
    /* '$' '#' '}' '*' escaped as '}' c^0x20; the checksum covers the bytes as sent. */
    n = pvm_gdb_frame(out, sizeof(out), "a$#}*", 5);
    ck_assert_uint_eq(n, 1 + 9 + 3);
    ck_assert_int_eq(memcmp(out, "$a}\x04}\x03}]}\x0a#", 11), 0);
    uint8_t sum = 0;
    for (size_t i = 1; i < 10; i++)
        sum = (uint8_t)(sum + (uint8_t)out[i]);
    char want[3];
    pvm_gdb_hex_encode(want, &sum, 1);
    ck_assert_int_eq(memcmp(out + 11, want, 2), 0);
    ck_assert_int_eq(memcmp(out + 11, "c3", 2), 0);
    /* Too small a buffer: nothing. */
    ck_assert_uint_eq(pvm_gdb_frame(out, 5, "OK", 2), 0);
    ck_assert_uint_eq(pvm_gdb_frame(out, 6, "OK", 2), 6);
    ck_assert_uint_eq(pvm_gdb_frame(out, 6, "}K", 2), 0);
}
END_TEST

START_TEST(rx_packets_and_controls)
{
    static struct pvm_gdb_rx rx;
    memset(&rx, 0, sizeof(rx));
    ck_assert_int_eq(FEED(&rx, "$OK#9a"), PVM_GDB_RX_PACKET);
    ck_assert_uint_eq(rx.len, 2);
    ck_assert_str_eq(rx.buf, "OK");
    ck_assert_int_eq(FEED(&rx, "$OK#9A"), PVM_GDB_RX_PACKET); /* upper-case digits too */
    ck_assert_int_eq(FEED(&rx, "+"), PVM_GDB_RX_ACK);
    ck_assert_int_eq(FEED(&rx, "-"), PVM_GDB_RX_NAK);
    ck_assert_int_eq(FEED(&rx, "\x03"), PVM_GDB_RX_INTERRUPT);
    ck_assert_int_eq(FEED(&rx, "garbage"), PVM_GDB_RX_NONE);
    /* 0x03 inside a packet is data. */
    ck_assert_int_eq(FEED(&rx, "$\x03#03"), PVM_GDB_RX_PACKET);
    ck_assert_uint_eq(rx.len, 1);
    ck_assert_int_eq(rx.buf[0], 3);
    /* A '$' inside a body restarts the packet. */
    ck_assert_int_eq(FEED(&rx, "$xy$OK#9a"), PVM_GDB_RX_PACKET);
    ck_assert_str_eq(rx.buf, "OK");
    /* Bodies stay escaped: the checksum is over the bytes as sent. */
    ck_assert_int_eq(FEED(&rx, "$X}\x03#d8"), PVM_GDB_RX_PACKET);
    ck_assert_uint_eq(rx.len, 3);
    ck_assert_uint_eq(pvm_gdb_unescape(rx.buf, rx.len), 2);
    ck_assert_int_eq(memcmp(rx.buf, "X#", 2), 0);
}
END_TEST

START_TEST(rx_bad_packets)
{
    static struct pvm_gdb_rx rx;
    memset(&rx, 0, sizeof(rx));
    ck_assert_int_eq(FEED(&rx, "$OK#9b"), PVM_GDB_RX_BAD);   /* wrong sum */
    ck_assert_int_eq(FEED(&rx, "$OK#g0"), PVM_GDB_RX_BAD);   /* not hex */
    ck_assert_int_eq(FEED(&rx, "$OK#9z"), PVM_GDB_RX_BAD);
    /* Good again right after. */
    ck_assert_int_eq(FEED(&rx, "$OK#9a"), PVM_GDB_RX_PACKET);
    /* One byte over PVM_GDB_PACKET_MAX: bad, whatever the sum says. */
    ck_assert_int_eq(pvm_gdb_rx_byte(&rx, '$'), PVM_GDB_RX_NONE);
    uint8_t sum = 0;
    for (int i = 0; i < PVM_GDB_PACKET_MAX + 1; i++) {
        ck_assert_int_eq(pvm_gdb_rx_byte(&rx, 'a'), PVM_GDB_RX_NONE);
        sum = (uint8_t)(sum + 'a');
    }
    char cs[3] = "#";
    pvm_gdb_rx_byte(&rx, '#');
    pvm_gdb_hex_encode(cs, &sum, 1);
    ck_assert_int_eq(pvm_gdb_rx_byte(&rx, (uint8_t)cs[0]), PVM_GDB_RX_NONE);
    ck_assert_int_eq(pvm_gdb_rx_byte(&rx, (uint8_t)cs[1]), PVM_GDB_RX_BAD);
    ck_assert_uint_eq(rx.len, PVM_GDB_PACKET_MAX);
    /* Exactly PVM_GDB_PACKET_MAX is fine. */
    pvm_gdb_rx_byte(&rx, '$');
    sum = 0;
    for (int i = 0; i < PVM_GDB_PACKET_MAX; i++) {
        pvm_gdb_rx_byte(&rx, 'b');
        sum = (uint8_t)(sum + 'b');
    }
    pvm_gdb_rx_byte(&rx, '#');
    pvm_gdb_hex_encode(cs, &sum, 1);
    pvm_gdb_rx_byte(&rx, (uint8_t)cs[0]);
    ck_assert_int_eq(pvm_gdb_rx_byte(&rx, (uint8_t)cs[1]), PVM_GDB_RX_PACKET);
    ck_assert_uint_eq(rx.len, PVM_GDB_PACKET_MAX);
    /* A lone trailing escape. */
    char b[] = "ab}";
    ck_assert_uint_eq(pvm_gdb_unescape(b, 3), SIZE_MAX);
}
END_TEST

START_TEST(hex_codec)
{
    char out[8];
    const uint8_t in[] = { 0x00, 0xab, 0x7f, 0xff };
    pvm_gdb_hex_encode(out, in, 4);
    ck_assert_int_eq(memcmp(out, "00ab7fff", 8), 0);
    uint8_t b[4];
    ck_assert(pvm_gdb_hex_decode("00AB7fff", b, 4));
    ck_assert_int_eq(memcmp(b, in, 4), 0);
    ck_assert(!pvm_gdb_hex_decode("0g", b, 1));
    ck_assert(!pvm_gdb_hex_decode("0", b, 1));

    const char *s = "1f,20";
    uint64_t v;
    ck_assert(pvm_gdb_parse_hex(&s, s + 5, &v));
    ck_assert_uint_eq(v, 0x1f);
    ck_assert_int_eq(*s, ',');
    s = "ffffffffffffffff:";
    ck_assert(pvm_gdb_parse_hex(&s, s + 17, &v));
    ck_assert_uint_eq(v, UINT64_MAX);
    s = "10000000000000000";  /* 17 digits */
    ck_assert(!pvm_gdb_parse_hex(&s, s + 17, &v));
    s = ",1";
    ck_assert(!pvm_gdb_parse_hex(&s, s + 2, &v));
    s = "12";
    ck_assert(pvm_gdb_parse_hex(&s, s + 1, &v)); /* stops at @end */
    ck_assert_uint_eq(v, 1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gdb_packet");
    TCase *tc = tcase_create("codec");
    tcase_add_test(tc, frame_exact_bytes);
    tcase_add_test(tc, rx_packets_and_controls);
    tcase_add_test(tc, rx_bad_packets);
    tcase_add_test(tc, hex_codec);
    suite_add_tcase(s, tc);
    return pvm_test_run_suite(s);
}
