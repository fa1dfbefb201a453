/*
 * Fuzz target: what the proxy reads from auth_file secrets and MD5 logins:
 * scram_parse_secret / scram_is_secret, md5_is_hash, md5_salted_response
 * and md5_verify.
 *
 * Input: stored secret FUZZ_SEP user FUZZ_SEP a client's MD5 response.
 * Checks: a parsed SCRAM secret is within its bounds; md5_verify accepts
 * the response a client knowing the password (or holding the md5 hash)
 * computes, refuses it for a SCRAM secret, and refuses the fuzzed response
 * unless it is that one.
 */
#include "tests/fuzz/fuzz.h"

#include "proto/auth.h"

static const uint8_t salt[4] = {0x93, 0x1f, 0x00, 0x7e};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FuzzPart p[3] = {{NULL, 0}, {NULL, 0}, {NULL, 0}};
    char *stored, *user, *response;
    char hash[MD5_PASSWD_LEN + 1], right[MD5_PASSWD_LEN + 1];
    ScramSecret sec;
    bool is_scram;

    fuzz_split(data, size, p, 3);
    stored = fuzz_str(p[0].p, p[0].n);
    user = fuzz_str(p[1].p, p[1].n);
    response = fuzz_str(p[2].p, p[2].n);

    is_scram = scram_parse_secret(stored, &sec);
    FUZZ_CHECK(is_scram == scram_is_secret(stored));
    if (is_scram)
        FUZZ_CHECK(sec.iterations >= 1 && sec.salt_len >= 1 && sec.salt_len <= SCRAM_MAX_SALT);

    /* what a client that knows the password (or the hash) answers */
    if (md5_is_hash(stored))
        memcpy(hash, stored, sizeof(hash));
    else
        md5_password_hash(stored, user, hash);
    FUZZ_CHECK(md5_is_hash(hash));
    md5_salted_response(hash, salt, right);
    FUZZ_CHECK(md5_is_hash(right));
    FUZZ_CHECK(md5_verify(stored, user, salt, right) == !is_scram);
    FUZZ_CHECK(md5_verify(stored, user, salt, response) ==
               (!is_scram && strcmp(response, right) == 0));

    free(stored);
    free(user);
    free(response);
    return 0;
}
