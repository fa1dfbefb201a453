/* TLS contexts for both sides, built from the config with OpenSSL. */
#include "daemon/log.h"
#include "daemon/worker.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>

static void tls_error(char *err, size_t len, const char *what, const char *file)
{
    char ossl[256] = "";
    unsigned long e = ERR_get_error();

    if (e)
        ERR_error_string_n(e, ossl, sizeof(ossl));
    snprintf(err, len, "%s \"%s\": %s", what, file, ossl[0] ? ossl : "failed");
    ERR_clear_error();
}

static int tls_version(TlsVersion v)
{
    return v == TLS_V1_3 ? TLS1_3_VERSION : TLS1_2_VERSION;
}

static SSL_CTX *tls_client_side(const Config *cfg, char *err, size_t len)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    if (!ctx) {
        snprintf(err, len, "could not create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, tls_version(cfg->client_tls_min_version));
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->client_tls_cert_file) != 1) {
        tls_error(err, len, "client_tls_cert_file", cfg->client_tls_cert_file);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->client_tls_key_file, SSL_FILETYPE_PEM) != 1) {
        tls_error(err, len, "client_tls_key_file", cfg->client_tls_key_file);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        tls_error(err, len, "client_tls_key_file does not match client_tls_cert_file",
                  cfg->client_tls_key_file);
        goto fail;
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

static SSL_CTX *tls_server_side(const Config *cfg, char *err, size_t len)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    if (!ctx) {
        snprintf(err, len, "could not create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, tls_version(cfg->server_tls_min_version));
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    if (cfg->server_tls_ca_file[0] &&
        SSL_CTX_load_verify_locations(ctx, cfg->server_tls_ca_file, NULL) != 1) {
        tls_error(err, len, "server_tls_ca_file", cfg->server_tls_ca_file);
        goto fail;
    }
    if (cfg->server_tls_cert_file[0]) {
        if (SSL_CTX_use_certificate_chain_file(ctx, cfg->server_tls_cert_file) != 1) {
            tls_error(err, len, "server_tls_cert_file", cfg->server_tls_cert_file);
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, cfg->server_tls_key_file, SSL_FILETYPE_PEM) != 1) {
            tls_error(err, len, "server_tls_key_file", cfg->server_tls_key_file);
            goto fail;
        }
    }
    SSL_CTX_set_verify(
        ctx, cfg->server_tls_sslmode >= SERVER_TLS_VERIFY_CA ? SSL_VERIFY_PEER : SSL_VERIFY_NONE,
        NULL);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

bool worker_load_tls(Worker *w, const Config *cfg, char *err, size_t len)
{
    SSL_CTX *cl = NULL, *sv = NULL;

    if (cfg->client_tls_sslmode != CLIENT_TLS_DISABLE) {
        cl = tls_client_side(cfg, err, len);
        if (!cl)
            return false;
    }
    if (cfg->server_tls_sslmode != SERVER_TLS_DISABLE) {
        sv = tls_server_side(cfg, err, len);
        if (!sv) {
            SSL_CTX_free(cl);
            return false;
        }
    }
    /* Connections already using the old contexts keep them (SSL objects hold
     * a reference), so replacing them on reload is safe. */
    SSL_CTX_free(w->client_tls);
    SSL_CTX_free(w->server_tls);
    w->client_tls = cl;
    w->server_tls = sv;
    return true;
}

void worker_free_tls(Worker *w)
{
    SSL_CTX_free(w->client_tls);
    SSL_CTX_free(w->server_tls);
    w->client_tls = w->server_tls = NULL;
}

SSL *tls_new_server_conn(Worker *w, const char *host, ServerTlsMode mode)
{
    SSL *ssl = SSL_new(w->server_tls);
    struct in6_addr a6;
    struct in_addr a4;
    bool is_ip = inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1;

    if (!ssl)
        return NULL;
    if (!is_ip && host[0] != '/')
        SSL_set_tlsext_host_name(ssl, host);
    if (mode == SERVER_TLS_VERIFY_FULL) {
        X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
        int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, host)
                       : X509_VERIFY_PARAM_set1_host(param, host, 0);
        if (ok != 1) {
            SSL_free(ssl);
            return NULL;
        }
    }
    return ssl;
}

SSL *tls_new_client_conn(Worker *w)
{
    return SSL_new(w->client_tls);
}
