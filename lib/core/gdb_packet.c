/*
 * lib/core/gdb_packet.c - GDB remote protocol framing, escapes and hex
 * (gdb_packet.h).  Framing per the GDB manual, "Overview" of Appendix E:
 * $body#cc with cc the modulo-256 sum of the body bytes as sent.
 */
#include <string.h>

#include "gdb_packet.h"

enum { RX_IDLE = 0, RX_BODY, RX_SUM1, RX_SUM2 };

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

enum pvm_gdb_rx_event pvm_gdb_rx_byte(struct pvm_gdb_rx *rx, uint8_t c)
{
    switch (rx->state) {
    case RX_IDLE:
        if (c == '$') {
            rx->state = RX_BODY;
            rx->len = 0;
            rx->sum = 0;
            rx->overflow = false;
            return PVM_GDB_RX_NONE;
        }
        if (c == '+')
            return PVM_GDB_RX_ACK;
        if (c == '-')
            return PVM_GDB_RX_NAK;
        if (c == 0x03)
            return PVM_GDB_RX_INTERRUPT;
        return PVM_GDB_RX_NONE;
    case RX_BODY:
        if (c == '#') {
            rx->state = RX_SUM1;
            return PVM_GDB_RX_NONE;
        }
        if (c == '$') { /* a new packet restarts: the client gave up on the last one */
            rx->len = 0;
            rx->sum = 0;
            rx->overflow = false;
            return PVM_GDB_RX_NONE;
        }
        rx->sum = (uint8_t)(rx->sum + c);
        if (rx->len < PVM_GDB_PACKET_MAX)
            rx->buf[rx->len++] = (char)c;
        else
            rx->overflow = true;
        return PVM_GDB_RX_NONE;
    case RX_SUM1: {
        int v = hexval(c);
        rx->state = RX_SUM2;
        rx->want = (uint8_t)(v < 0 ? 0 : v << 4);
        if (v < 0)
            rx->overflow = true; /* a bad digit makes the packet bad */
        return PVM_GDB_RX_NONE;
    }
    case RX_SUM2:
    default: {
        int v = hexval(c);
        rx->state = RX_IDLE;
        if (v < 0 || rx->overflow || (uint8_t)(rx->want | v) != rx->sum)
            return PVM_GDB_RX_BAD;
        rx->buf[rx->len] = '\0';
        return PVM_GDB_RX_PACKET;
    }
    }
}

static bool must_escape(uint8_t c)
{
    return c == '$' || c == '#' || c == '}' || c == '*';
}

size_t pvm_gdb_frame(char *out, size_t cap, const void *body, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const uint8_t *b = body;
    size_t n = 0;
    uint8_t sum = 0;
    if (cap < 4)
        return 0;
    out[n++] = '$';
    for (size_t i = 0; i < len; i++) {
        uint8_t c = b[i];
        if (must_escape(c)) {
            if (n + 2 > cap - 3)
                return 0;
            out[n++] = '}';
            c ^= 0x20;
            sum = (uint8_t)(sum + '}');
        } else if (n + 1 > cap - 3) {
            return 0;
        }
        out[n++] = (char)c;
        sum = (uint8_t)(sum + c);
    }
    out[n++] = '#';
    out[n++] = hex[sum >> 4];
    out[n++] = hex[sum & 15];
    return n;
}

size_t pvm_gdb_unescape(char *buf, size_t len)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (buf[i] == '}') {
            if (++i == len)
                return SIZE_MAX;
            buf[o++] = (char)(buf[i] ^ 0x20);
        } else {
            buf[o++] = buf[i];
        }
    }
    return o;
}

void pvm_gdb_hex_encode(char *out, const void *in, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const uint8_t *b = in;
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[b[i] >> 4];
        out[2 * i + 1] = hex[b[i] & 15];
    }
}

bool pvm_gdb_hex_decode(const char *s, void *out, size_t n)
{
    uint8_t *o = out;
    for (size_t i = 0; i < n; i++) {
        int hi = hexval((uint8_t)s[2 * i]), lo = hi < 0 ? -1 : hexval((uint8_t)s[2 * i + 1]);
        if (lo < 0)
            return false;
        o[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

bool pvm_gdb_parse_hex(const char **p, const char *end, uint64_t *v)
{
    const char *s = *p;
    uint64_t x = 0;
    unsigned n = 0;
    for (; s < end; s++, n++) {
        int d = hexval((uint8_t)*s);
        if (d < 0)
            break;
        if (n == 16)
            return false;
        x = x << 4 | (uint64_t)d;
    }
    if (!n)
        return false;
    *p = s;
    *v = x;
    return true;
}
