/*
 * PostgreSQL v3 protocol: message constants, frame and startup-packet
 * readers, and builders for the messages the proxy itself sends.
 */
#ifndef PGC_PROTO_MSG_H
#define PGC_PROTO_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/pkt.h"

#define PROTO_V3             196608 /* 3.0 */
#define PROTO_CANCEL_REQUEST 80877102
#define PROTO_SSL_REQUEST    80877103
#define PROTO_GSSENC_REQUEST 80877104

#define PROTO_HDR_LEN 5 /* type byte + int32 length */
/* A startup packet is small; PostgreSQL itself caps it at 10000 bytes. */
#define PROTO_MAX_STARTUP_LEN    10000
#define PROTO_MAX_STARTUP_PARAMS 64

/* Authentication request codes ('R' messages). */
enum {
    AUTH_REQ_OK = 0,
    AUTH_REQ_PASSWORD = 3,
    AUTH_REQ_MD5 = 5,
    AUTH_REQ_SASL = 10,
    AUTH_REQ_SASL_CONTINUE = 11,
    AUTH_REQ_SASL_FINAL = 12,
};

/* Bounds-checked reader over one message body. Any overrun sets bad and
 * makes every later read return zero/NULL. */
typedef struct MsgReader {
    const uint8_t *p;
    size_t len;
    size_t pos;
    bool bad;
} MsgReader;

void mr_init(MsgReader *r, const uint8_t *p, size_t len);
uint8_t mr_u8(MsgReader *r);
int16_t mr_i16(MsgReader *r);
int32_t mr_i32(MsgReader *r);
/* NUL-terminated string inside the body; NULL (and bad) if unterminated. */
const char *mr_str(MsgReader *r);
/* n raw bytes; NULL (and bad) if fewer remain. */
const uint8_t *mr_bytes(MsgReader *r, size_t n);
size_t mr_remaining(const MsgReader *r);

typedef enum {
    FRAME_OK,  /* type and body_len filled in */
    FRAME_BAD, /* length word below 4 or body above max_len: close the peer */
} FrameResult;

/*
 * Decode a typed message header (type byte, int32 length that counts
 * itself). body_len is the length of what follows the header.
 */
FrameResult proto_frame_header(const uint8_t hdr[PROTO_HDR_LEN], uint32_t max_len, char *type,
                               uint32_t *body_len);

typedef struct StartupParam {
    const char *name;
    const char *value;
} StartupParam;

/* A decoded untyped first packet; string pointers point into the body. */
typedef struct StartupPacket {
    int32_t code; /* protocol version, or one of the request codes */
    int nparams;
    StartupParam params[PROTO_MAX_STARTUP_PARAMS];
    const char *user;     /* "user" parameter, or NULL */
    const char *database; /* "database" parameter, or user when absent */
    int32_t cancel_pid;   /* CancelRequest only */
    int32_t cancel_key;
} StartupPacket;

/*
 * Parse the body (what follows the length word) of a startup-phase packet.
 * Returns NULL on success or a message fit for an ErrorResponse (valid until
 * the next call in the same thread).
 */
const char *proto_parse_startup(const uint8_t *body, size_t len, StartupPacket *out);
/* The error proto_parse_startup returns for a missing or empty user (PostgreSQL answers it
 * with SQLSTATE 28000, not 08P01). */
extern const char PROTO_ERR_NO_USER[];

/*
 * The first byte of s that does not start a well-formed UTF-8 sequence
 * (overlong forms, surrogates and code points above U+10FFFF are not), or
 * NULL when all of s is valid.
 */
const char *proto_utf8_error(const char *s);

/* Fields of an ErrorResponse/NoticeResponse worth keeping; pointers into body. */
typedef struct ProtoError {
    const char *severity;
    const char *sqlstate;
    const char *message;
    const char *detail;
    const char *hint;
} ProtoError;

/* False unless well-formed and S (or V, preferred), C and M are present. */
bool proto_parse_error(const uint8_t *body, size_t len, ProtoError *out);

/* Builders: each appends one complete message to b. */
void pkt_error(PktBuf *b, const char *severity, const char *sqlstate, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void pkt_error_hint(PktBuf *b, const char *severity, const char *sqlstate, const char *hint,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void pkt_notice(PktBuf *b, const char *sqlstate, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void pkt_ready(PktBuf *b, char status);
void pkt_auth_ok(PktBuf *b);
void pkt_auth_md5(PktBuf *b, const uint8_t salt[4]);
void pkt_auth_sasl(PktBuf *b, const char *mechanism);
void pkt_auth_sasl_continue(PktBuf *b, const void *data, size_t len);
void pkt_auth_sasl_final(PktBuf *b, const void *data, size_t len);
void pkt_param_status(PktBuf *b, const char *name, const char *value);
void pkt_backend_key(PktBuf *b, int32_t pid, int32_t key);
void pkt_command_complete(PktBuf *b, const char *tag);
void pkt_empty_query(PktBuf *b);
/* RowDescription of text columns; type_oids may be NULL (all text, OID 25). */
void pkt_row_description(PktBuf *b, int ncols, const char *const *names, const uint32_t *type_oids);
/* DataRow of text values; a NULL pointer is SQL NULL. */
void pkt_data_row(PktBuf *b, int ncols, const char *const *values);
void pkt_query(PktBuf *b, const char *sql);
void pkt_sync(PktBuf *b);
void pkt_terminate(PktBuf *b);
/* StartupMessage v3 from name/value pairs terminated by a NULL name. */
void pkt_startup(PktBuf *b, const char *const *kv);
void pkt_cancel_request(PktBuf *b, int32_t pid, int32_t key);
void pkt_ssl_request(PktBuf *b);
void pkt_password(PktBuf *b, const char *password);
void pkt_sasl_initial(PktBuf *b, const char *mechanism, const void *data, size_t len);
void pkt_sasl_response(PktBuf *b, const void *data, size_t len);

/* True if the message type is one a frontend may send after startup. */
bool proto_frontend_type_known(char type);

#endif
