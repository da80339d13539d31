/* Who may talk to tessera's public ports: the API key (one shared secret, sent as
 * "authorization: Bearer KEY" in gRPC metadata or the HTTP header of the same name) and the TLS
 * files (PEM) of a listener, loaded and checked once, before anything starts, for the gRPC service
 * and the HTTP API alike.
 *
 * Keys are compared in constant time (the time does not depend on where the first differing
 * byte is, nor on the key's length beyond a bound), so a caller cannot find the key byte by byte
 * from response times. */
#ifndef TSR_COMMON_AUTH_H
#define TSR_COMMON_AUTH_H

#include <stddef.h>

enum { TSR_AUTH_KEY_MAX = 1024 };

/* The API key, from the first of: key_file (its first line; surrounding whitespace dropped), key
 * (a flag's value), $TESSERA_API_KEY. *out is malloc'ed (caller frees), or NULL when none of them
 * is set (no key: the ports are open). A file that cannot be read, or an empty key, or one with
 * spaces or control characters, or over TSR_AUTH_KEY_MAX bytes, is TSR_EINVAL with a message
 * that names the source but never the key. */
int tsr_auth_key_load(const char *key_file, const char *key, char **out);

/* 1 when header (len bytes, not NUL-terminated; may be NULL) is "Bearer <key>" (the scheme in any
 * case, as RFC 7235 says), else 0. key NULL: no key is set, always 1. Constant time in the key. */
int tsr_auth_bearer_ok(const char *key, const char *header, size_t len);

/* A listener's TLS files, read into memory: cert (chain) and key (PEM) and, for mutual TLS, the
 * CA that client certificates must chain to. Every field NULL when TLS is off. */
struct tsr_tls_files {
    char *cert_pem, *key_pem, *client_ca_pem;
};

/* Reads and checks the files of --tls-cert, --tls-key and --tls-client-ca (any may be NULL): both
 * cert and key or neither (client_ca needs them); each one readable, non-empty PEM; the key the
 * cert's. TSR_EINVAL with a message naming the flag and the file. On failure *t holds nothing. */
int tsr_tls_files_load(const char *cert, const char *key, const char *client_ca,
                       struct tsr_tls_files *t);
void tsr_tls_files_free(struct tsr_tls_files *t);

/* The whole of a PEM file (CA bundle, certificate), checked to hold at least one certificate.
 * what names it in errors ("--tls-ca"). malloc'ed (caller frees). */
int tsr_tls_read_certs(const char *what, const char *path, char **out);

#endif
