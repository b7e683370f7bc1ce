/*
 * lib/core/gdb_packet.h - the GDB remote serial protocol's byte level: packet
 * framing and checksums, binary escapes and hex, as pure functions over
 * buffers (no I/O), so that every rule is testable byte by byte.  The client
 * is untrusted: every length is bounded and every hex digit checked.
 */
#ifndef PVM_GDB_PACKET_H
#define PVM_GDB_PACKET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Largest packet body we accept or send (advertised as PacketSize, hex). */
#define PVM_GDB_PACKET_MAX 0x4000

/* What one received byte completed. */
enum pvm_gdb_rx_event {
    PVM_GDB_RX_NONE = 0,    /* nothing yet */
    PVM_GDB_RX_PACKET,      /* a packet with a good checksum: rx->buf[0..len) (raw, still escaped) */
    PVM_GDB_RX_BAD,         /* bad checksum, bad checksum digits or too long: answer '-' */
    PVM_GDB_RX_INTERRUPT,   /* 0x03 outside a packet: Ctrl-C */
    PVM_GDB_RX_ACK,         /* '+' */
    PVM_GDB_RX_NAK,         /* '-': resend the last packet */
};

/* Receiver state: zero-initialise. */
struct pvm_gdb_rx {
    int state;              /* internal */
    uint8_t sum;            /* running checksum of the body */
    uint8_t want;           /* checksum digits received so far */
    bool overflow;          /* the body exceeded PVM_GDB_PACKET_MAX */
    size_t len;
    char buf[PVM_GDB_PACKET_MAX + 1]; /* NUL-terminated when a packet completes */
};

/* Feed one byte; bytes outside a packet other than '+', '-', 0x03 are ignored. */
enum pvm_gdb_rx_event pvm_gdb_rx_byte(struct pvm_gdb_rx *rx, uint8_t c);

/*
 * Frame @len bytes of @body as "$body#cc" into @out (binary-safe: '$', '#',
 * '}' and '*' are escaped as '}' c^0x20).  Returns the frame length, or 0 if
 * @cap (at most 2 * len + 4 is needed) is too small.  No run-length encoding.
 */
size_t pvm_gdb_frame(char *out, size_t cap, const void *body, size_t len);

/* Undo binary escapes in place; returns the new length, or SIZE_MAX for a trailing lone '}'. */
size_t pvm_gdb_unescape(char *buf, size_t len);

/* Lower-case hex of @n bytes into @out (2n chars, no NUL). */
void pvm_gdb_hex_encode(char *out, const void *in, size_t n);
/* Exactly 2n hex digits at @s into @out; false on any non-hex digit. */
bool pvm_gdb_hex_decode(const char *s, void *out, size_t n);
/*
 * Parse a hex number at *@p (before @end): at least one and at most 16
 * digits; *@p moves past them.  False if there are none or too many.
 */
bool pvm_gdb_parse_hex(const char **p, const char *end, uint64_t *v);

#endif /* PVM_GDB_PACKET_H */
