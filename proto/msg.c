/*
 * PostgreSQL v3 wire messages: bounds-checked readers for what peers send
 * and builders for what the proxy says itself. Bytes only, no sockets.
 */
#include "proto/msg.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEXT_OID 25

/* ---- MsgReader ---------------------------------------------------------- */

void mr_init(MsgReader *r, const uint8_t *p, size_t len)
{
    r->p = p;
    r->len = p ? len : 0;
    r->pos = 0;
    r->bad = false;
}

size_t mr_remaining(const MsgReader *r)
{
    return r->bad ? 0 : r->len - r->pos;
}

/* Pointer to the next n bytes, consumed; NULL and bad when fewer remain. */
static const uint8_t *mr_take(MsgReader *r, size_t n)
{
    const uint8_t *at;

    if (r->bad || n > r->len - r->pos) {
        r->bad = true;
        return NULL;
    }
    at = r->p ? r->p + r->pos : NULL;
    r->pos += n;
    return at;
}

uint8_t mr_u8(MsgReader *r)
{
    const uint8_t *p = mr_take(r, 1);

    return p ? p[0] : 0;
}

int16_t mr_i16(MsgReader *r)
{
    const uint8_t *p = mr_take(r, 2);

    return p ? (int16_t)(uint16_t)((p[0] << 8) | p[1]) : 0;
}

int32_t mr_i32(MsgReader *r)
{
    const uint8_t *p = mr_take(r, 4);

    if (!p)
        return 0;
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
                     (uint32_t)p[3]);
}

const char *mr_str(MsgReader *r)
{
    const uint8_t *nul;

    if (r->bad || r->pos >= r->len) {
        r->bad = true;
        return NULL;
    }
    nul = memchr(r->p + r->pos, 0, r->len - r->pos);
    if (!nul) {
        r->bad = true;
        return NULL;
    }
    return (const char *)mr_take(r, (size_t)(nul - (r->p + r->pos)) + 1);
}

const uint8_t *mr_bytes(MsgReader *r, size_t n)
{
    return mr_take(r, n);
}

/* ---- Readers ------------------------------------------------------------ */

FrameResult proto_frame_header(const uint8_t hdr[PROTO_HDR_LEN], uint32_t max_len, char *type,
                               uint32_t *body_len)
{
    uint32_t len = ((uint32_t)hdr[1] << 24) | ((uint32_t)hdr[2] << 16) | ((uint32_t)hdr[3] << 8) |
                   (uint32_t)hdr[4];

    /* The length word is a signed int32 on the wire: >= 2^31 is negative. */
    if (len < 4 || len > INT32_MAX || len - 4 > max_len)
        return FRAME_BAD;
    *type = (char)hdr[0];
    *body_len = len - 4;
    return FRAME_OK;
}

/* Room for the version message; valid until the next call in this thread. */
static _Thread_local char startup_errbuf[96];

/* Check the version of a StartupMessage; NULL if we speak it. */
static const char *startup_check_version(int32_t code)
{
    uint32_t major = (uint32_t)code >> 16, minor = (uint32_t)code & 0xffff;

    if (major == 3)
        return NULL;
    snprintf(startup_errbuf, sizeof(startup_errbuf),
             "unsupported frontend protocol %u.%u: server supports 3.0", major, minor);
    return startup_errbuf;
}

/* Read the name/value pairs of a v3 StartupMessage after the version. */
static const char *startup_read_params(MsgReader *r, StartupPacket *out)
{
    for (;;) {
        const char *name = mr_str(r), *value;

        if (!name)
            return "invalid startup packet: parameter list lacks its final terminator";
        if (name[0] == '\0')
            break;
        value = mr_str(r);
        if (!value)
            return "invalid startup packet: unterminated parameter value";
        if (out->nparams >= PROTO_MAX_STARTUP_PARAMS)
            return "invalid startup packet: too many parameters";
        /* A duplicate could make us and the server see different users. */
        for (int i = 0; i < out->nparams; i++)
            if (strcmp(out->params[i].name, name) == 0)
                return "invalid startup packet: duplicate parameter";
        out->params[out->nparams].name = name;
        out->params[out->nparams].value = value;
        out->nparams++;
        if (strcmp(name, "user") == 0)
            out->user = value;
        else if (strcmp(name, "database") == 0)
            out->database = value;
    }
    if (mr_remaining(r) != 0)
        return "invalid startup packet: data after the parameter list terminator";
    return NULL;
}

const char PROTO_ERR_NO_USER[] = "no PostgreSQL user name specified in startup packet";

const char *proto_parse_startup(const uint8_t *body, size_t len, StartupPacket *out)
{
    MsgReader r;
    const char *err;

    memset(out, 0, sizeof(*out));
    if (len < 4 || len > PROTO_MAX_STARTUP_LEN - 4)
        return "invalid startup packet length";
    mr_init(&r, body, len);
    out->code = mr_i32(&r);

    switch (out->code) {
    case PROTO_CANCEL_REQUEST:
        if (len != 12)
            return "invalid cancel request: wrong length";
        out->cancel_pid = mr_i32(&r);
        out->cancel_key = mr_i32(&r);
        return NULL;
    case PROTO_SSL_REQUEST:
    case PROTO_GSSENC_REQUEST:
        if (len != 4)
            return "invalid encryption request: wrong length";
        return NULL;
    }

    err = startup_check_version(out->code);
    if (!err)
        err = startup_read_params(&r, out);
    if (err)
        return err;
    if (!out->user || out->user[0] == '\0')
        return PROTO_ERR_NO_USER;
    if (!out->database || out->database[0] == '\0')
        out->database = out->user;
    return NULL;
}

/*
 * Only well-formed bodies whose S (or V), C and M fields are present, the
 * three the protocol says are always sent, are accepted. V is preferred to
 * S because it is never localized.
 */
bool proto_parse_error(const uint8_t *body, size_t len, ProtoError *out)
{
    MsgReader r;
    const char *severity_v = NULL;

    memset(out, 0, sizeof(*out));
    mr_init(&r, body, len);
    for (;;) {
        uint8_t field = mr_u8(&r);
        const char *s;

        if (r.bad)
            return false;
        if (field == 0)
            break;
        s = mr_str(&r);
        if (!s)
            return false;
        switch (field) {
        case 'S':
            out->severity = s;
            break;
        case 'V':
            severity_v = s;
            break;
        case 'C':
            out->sqlstate = s;
            break;
        case 'M':
            out->message = s;
            break;
        case 'D':
            out->detail = s;
            break;
        case 'H':
            out->hint = s;
            break;
        }
    }
    if (severity_v)
        out->severity = severity_v;
    return mr_remaining(&r) == 0 && out->severity && out->sqlstate && out->message;
}

const char *proto_utf8_error(const char *s)
{
    const uint8_t *p = (const uint8_t *)s;

    while (*p) {
        uint32_t cp;
        int n;

        if (p[0] < 0x80) {
            p++;
            continue;
        }
        if (p[0] >= 0xc2 && p[0] <= 0xdf) {
            n = 1;
            cp = p[0] & 0x1f;
        } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
            n = 2;
            cp = p[0] & 0x0f;
        } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
            n = 3;
            cp = p[0] & 0x07;
        } else {
            return (const char *)p; /* a continuation byte, 0xc0, 0xc1 or above 0xf4 */
        }
        for (int i = 1; i <= n; i++) {
            if ((p[i] & 0xc0) != 0x80) /* also stops at the NUL */
                return (const char *)p;
            cp = (cp << 6) | (p[i] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return (const char *)p;
        p += n + 1;
    }
    return NULL;
}

bool proto_frontend_type_known(char type)
{
    switch (type) {
    case 'Q': /* Query */
    case 'P': /* Parse */
    case 'B': /* Bind */
    case 'E': /* Execute */
    case 'D': /* Describe */
    case 'C': /* Close */
    case 'S': /* Sync */
    case 'H': /* Flush */
    case 'X': /* Terminate */
    case 'F': /* FunctionCall */
    case 'd': /* CopyData */
    case 'c': /* CopyDone */
    case 'f': /* CopyFail */
    case 'p': /* password / SASL responses */
        return true;
    default:
        return false;
    }
}

/* ---- Builders ----------------------------------------------------------- */

/* Append a printf-formatted string and its NUL. */
static void pkt_put_vfmt(PktBuf *b, const char *fmt, va_list ap)
{
    char small[256], *buf = small;
    va_list ap2;
    int n;

    va_copy(ap2, ap);
    n = vsnprintf(small, sizeof(small), fmt, ap);
    if (n < 0) {
        b->failed = true;
        goto out;
    }
    if ((size_t)n >= sizeof(small)) {
        buf = malloc((size_t)n + 1);
        if (!buf) {
            b->failed = true;
            goto out;
        }
        vsnprintf(buf, (size_t)n + 1, fmt, ap2);
    }
    pkt_put_bytes(b, buf, (size_t)n + 1);
    if (buf != small)
        free(buf);
out:
    va_end(ap2);
}

/* ErrorResponse/NoticeResponse with S, V, C, M and (when given) H. */
static void pkt_report(PktBuf *b, char type, const char *severity, const char *sqlstate,
                       const char *hint, const char *fmt, va_list ap)
{
    pkt_begin(b, type);
    pkt_put_u8(b, 'S');
    pkt_put_str(b, severity);
    pkt_put_u8(b, 'V');
    pkt_put_str(b, severity);
    pkt_put_u8(b, 'C');
    pkt_put_str(b, sqlstate);
    pkt_put_u8(b, 'M');
    pkt_put_vfmt(b, fmt, ap);
    if (hint) {
        pkt_put_u8(b, 'H');
        pkt_put_str(b, hint);
    }
    pkt_put_u8(b, 0);
    pkt_end(b);
}

void pkt_error(PktBuf *b, const char *severity, const char *sqlstate, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    pkt_report(b, 'E', severity, sqlstate, NULL, fmt, ap);
    va_end(ap);
}

void pkt_error_hint(PktBuf *b, const char *severity, const char *sqlstate, const char *hint,
                    const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    pkt_report(b, 'E', severity, sqlstate, hint, fmt, ap);
    va_end(ap);
}

void pkt_notice(PktBuf *b, const char *sqlstate, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    pkt_report(b, 'N', "NOTICE", sqlstate, NULL, fmt, ap);
    va_end(ap);
}

void pkt_ready(PktBuf *b, char status)
{
    pkt_begin(b, 'Z');
    pkt_put_u8(b, (uint8_t)status);
    pkt_end(b);
}

/* An 'R' message: request code and optional payload. */
static void pkt_auth(PktBuf *b, int32_t code, const void *data, size_t len)
{
    pkt_begin(b, 'R');
    pkt_put_i32(b, code);
    pkt_put_bytes(b, data, len);
    pkt_end(b);
}

void pkt_auth_ok(PktBuf *b)
{
    pkt_auth(b, AUTH_REQ_OK, NULL, 0);
}

void pkt_auth_md5(PktBuf *b, const uint8_t salt[4])
{
    pkt_auth(b, AUTH_REQ_MD5, salt, 4);
}

/* One mechanism, then the empty string that ends the list. */
void pkt_auth_sasl(PktBuf *b, const char *mechanism)
{
    pkt_begin(b, 'R');
    pkt_put_i32(b, AUTH_REQ_SASL);
    pkt_put_str(b, mechanism);
    pkt_put_u8(b, 0);
    pkt_end(b);
}

void pkt_auth_sasl_continue(PktBuf *b, const void *data, size_t len)
{
    pkt_auth(b, AUTH_REQ_SASL_CONTINUE, data, len);
}

void pkt_auth_sasl_final(PktBuf *b, const void *data, size_t len)
{
    pkt_auth(b, AUTH_REQ_SASL_FINAL, data, len);
}

void pkt_param_status(PktBuf *b, const char *name, const char *value)
{
    pkt_begin(b, 'S');
    pkt_put_str(b, name);
    pkt_put_str(b, value);
    pkt_end(b);
}

void pkt_backend_key(PktBuf *b, int32_t pid, int32_t key)
{
    pkt_begin(b, 'K');
    pkt_put_i32(b, pid);
    pkt_put_i32(b, key);
    pkt_end(b);
}

void pkt_command_complete(PktBuf *b, const char *tag)
{
    pkt_begin(b, 'C');
    pkt_put_str(b, tag);
    pkt_end(b);
}

void pkt_empty_query(PktBuf *b)
{
    pkt_begin(b, 'I');
    pkt_end(b);
}

/* A NULL name is sent as "". */
void pkt_row_description(PktBuf *b, int ncols, const char *const *names, const uint32_t *type_oids)
{
    if (ncols < 0 || ncols > INT16_MAX) {
        b->failed = true;
        return;
    }
    pkt_begin(b, 'T');
    pkt_put_i16(b, (int16_t)ncols);
    for (int i = 0; i < ncols; i++) {
        pkt_put_str(b, names[i] ? names[i] : "");
        pkt_put_i32(b, 0); /* table OID */
        pkt_put_i16(b, 0); /* attribute number */
        pkt_put_i32(b, (int32_t)(type_oids ? type_oids[i] : TEXT_OID));
        pkt_put_i16(b, -1); /* typlen */
        pkt_put_i32(b, -1); /* typmod */
        pkt_put_i16(b, 0);  /* text format */
    }
    pkt_end(b);
}

void pkt_data_row(PktBuf *b, int ncols, const char *const *values)
{
    if (ncols < 0 || ncols > INT16_MAX) {
        b->failed = true;
        return;
    }
    pkt_begin(b, 'D');
    pkt_put_i16(b, (int16_t)ncols);
    for (int i = 0; i < ncols; i++) {
        size_t n;

        if (!values[i]) {
            pkt_put_i32(b, -1);
            continue;
        }
        n = strlen(values[i]);
        if (n > INT32_MAX) {
            b->failed = true;
            return;
        }
        pkt_put_i32(b, (int32_t)n);
        pkt_put_bytes(b, values[i], n);
    }
    pkt_end(b);
}

void pkt_query(PktBuf *b, const char *sql)
{
    pkt_begin(b, 'Q');
    pkt_put_str(b, sql);
    pkt_end(b);
}

void pkt_sync(PktBuf *b)
{
    pkt_begin(b, 'S');
    pkt_end(b);
}

void pkt_terminate(PktBuf *b)
{
    pkt_begin(b, 'X');
    pkt_end(b);
}

/* A pair whose value is NULL is left out, so optional settings can be listed. */
void pkt_startup(PktBuf *b, const char *const *kv)
{
    pkt_begin(b, 0);
    pkt_put_i32(b, PROTO_V3);
    for (; kv[0]; kv += 2) {
        if (!kv[1])
            continue;
        pkt_put_str(b, kv[0]);
        pkt_put_str(b, kv[1]);
    }
    pkt_put_u8(b, 0);
    pkt_end(b);
}

void pkt_cancel_request(PktBuf *b, int32_t pid, int32_t key)
{
    pkt_begin(b, 0);
    pkt_put_i32(b, PROTO_CANCEL_REQUEST);
    pkt_put_i32(b, pid);
    pkt_put_i32(b, key);
    pkt_end(b);
}

void pkt_ssl_request(PktBuf *b)
{
    pkt_begin(b, 0);
    pkt_put_i32(b, PROTO_SSL_REQUEST);
    pkt_end(b);
}

void pkt_password(PktBuf *b, const char *password)
{
    pkt_begin(b, 'p');
    pkt_put_str(b, password);
    pkt_end(b);
}

/* data NULL means "no initial response" (length -1 on the wire). */
void pkt_sasl_initial(PktBuf *b, const char *mechanism, const void *data, size_t len)
{
    if (data && len > INT32_MAX) {
        b->failed = true;
        return;
    }
    pkt_begin(b, 'p');
    pkt_put_str(b, mechanism);
    pkt_put_i32(b, data ? (int32_t)len : -1);
    if (data)
        pkt_put_bytes(b, data, len);
    pkt_end(b);
}

void pkt_sasl_response(PktBuf *b, const void *data, size_t len)
{
    pkt_begin(b, 'p');
    pkt_put_bytes(b, data, len);
    pkt_end(b);
}
