#include "common/auth.h"

#include <errno.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "common/status.h"

/* A file's bytes, NUL-terminated; files over 1 MiB are refused (no key or PEM bundle is that
 * large, and a device like /dev/zero must not hang us). */
static int read_small_file(const char *what, const char *path, char **out, size_t *len)
{
    enum { MAX = 1 << 20 };
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return tsr_errorf(TSR_EINVAL, "%s %s: %s", what, path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) || !S_ISREG(st.st_mode)) {
        fclose(f);
        return tsr_errorf(TSR_EINVAL, "%s %s: not a regular file", what, path);
    }
    char *buf = malloc(MAX + 1);
    if (!buf) {
        fclose(f);
        return tsr_errorf(TSR_ENOMEM, "out of memory");
    }
    size_t n = fread(buf, 1, MAX + 1, f);
    int err = ferror(f);
    fclose(f);
    if (err || n > MAX) {
        free(buf);
        return tsr_errorf(TSR_EINVAL, "%s %s: %s", what, path,
                          err ? "read error" : "larger than 1 MiB");
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

static int check_key(const char *source, const char *k, size_t n)
{
    if (n == 0) return tsr_errorf(TSR_EINVAL, "%s: the API key is empty", source);
    if (n > TSR_AUTH_KEY_MAX)
        return tsr_errorf(TSR_EINVAL, "%s: the API key is over %d bytes", source, TSR_AUTH_KEY_MAX);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)k[i] <= ' ' || k[i] == 0x7f)
            return tsr_errorf(TSR_EINVAL,
                              "%s: the API key holds a space or a control character (byte %zu)",
                              source, i + 1);
    return 0;
}

int tsr_auth_key_load(const char *key_file, const char *key, char **out)
{
    *out = NULL;
    if (key_file) {
        char *buf;
        size_t n;
        int rc = read_small_file("--api-key-file", key_file, &buf, &n);
        if (rc) return rc;
        /* the first line, without the whitespace around it (a trailing newline is usual) */
        char *s = buf, *e;
        while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') s++;
        for (e = s; *e && *e != '\n' && *e != '\r'; e++) {
        }
        while (e > s && (e[-1] == ' ' || e[-1] == '\t')) e--;
        char source[4200];
        snprintf(source, sizeof source, "--api-key-file %s", key_file);
        rc = check_key(source, s, (size_t)(e - s));
        if (!rc) {
            *out = strndup(s, (size_t)(e - s));
            if (!*out) rc = tsr_errorf(TSR_ENOMEM, "out of memory");
        }
        memset(buf, 0, n); /* no copy of the key left behind in freed memory */
        free(buf);
        return rc;
    }
    const char *source = "--api-key";
    if (!key) {
        key = getenv("TESSERA_API_KEY");
        source = "$TESSERA_API_KEY";
    }
    if (!key) return 0;
    int rc = check_key(source, key, strlen(key));
    if (rc) return rc;
    *out = strdup(key);
    return *out ? 0 : tsr_errorf(TSR_ENOMEM, "out of memory");
}

int tsr_auth_bearer_ok(const char *key, const char *header, size_t len)
{
    if (!key) return 1;
    if (!header || len < 7 || strncasecmp(header, "Bearer ", 7)) return 0;
    header += 7;
    len -= 7;
    while (len && *header == ' ') header++, len--;
    /* Every byte of the key is looked at whatever the header holds: the time tells the key's
     * length at most, and keys are long random strings. */
    size_t n = strlen(key);
    unsigned char diff = (unsigned char)(len != n);
    for (size_t i = 0; i < n; i++) diff |= (unsigned char)(key[i] ^ (i < len ? header[i] : 0));
    return diff == 0;
}

int tsr_tls_read_certs(const char *what, const char *path, char **out)
{
    size_t n;
    int rc = read_small_file(what, path, out, &n);
    if (rc) return rc;
    BIO *b = BIO_new_mem_buf(*out, (int)n);
    X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    ERR_clear_error();
    if (!x) {
        free(*out);
        *out = NULL;
        return tsr_errorf(TSR_EINVAL, "%s %s: no PEM certificate in it", what, path);
    }
    X509_free(x);
    return 0;
}

void tsr_tls_files_free(struct tsr_tls_files *t)
{
    if (!t) return;
    free(t->cert_pem);
    if (t->key_pem) {
        memset(t->key_pem, 0, strlen(t->key_pem));
        free(t->key_pem);
    }
    free(t->client_ca_pem);
    memset(t, 0, sizeof *t);
}

int tsr_tls_files_load(const char *cert, const char *key, const char *client_ca,
                       struct tsr_tls_files *t)
{
    memset(t, 0, sizeof *t);
    if (!cert != !key)
        return tsr_errorf(TSR_EINVAL, "%s needs %s too", cert ? "--tls-cert" : "--tls-key",
                          cert ? "--tls-key" : "--tls-cert");
    if (client_ca && !cert)
        return tsr_errorf(TSR_EINVAL, "--tls-client-ca needs --tls-cert and --tls-key");
    if (!cert) return 0;
    int rc;
    size_t n;
    if ((rc = tsr_tls_read_certs("--tls-cert", cert, &t->cert_pem))) goto fail;
    if ((rc = read_small_file("--tls-key", key, &t->key_pem, &n))) goto fail;
    BIO *b = BIO_new_mem_buf(t->key_pem, (int)n);
    EVP_PKEY *pk = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    b = BIO_new_mem_buf(t->cert_pem, -1);
    X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    int match = pk && x && X509_check_private_key(x, pk) == 1;
    EVP_PKEY_free(pk);
    X509_free(x);
    ERR_clear_error();
    if (!pk) {
        rc = tsr_errorf(TSR_EINVAL, "--tls-key %s: no PEM private key in it (or it is encrypted)",
                        key);
        goto fail;
    }
    if (!match) {
        rc = tsr_errorf(TSR_EINVAL, "--tls-key %s is not the key of --tls-cert %s", key, cert);
        goto fail;
    }
    if (client_ca && (rc = tsr_tls_read_certs("--tls-client-ca", client_ca, &t->client_ca_pem)))
        goto fail;
    return 0;
fail:
    tsr_tls_files_free(t);
    return rc;
}
