#include "model/files.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/status.h"

static const char *file_kind(mode_t m)
{
    if (S_ISDIR(m)) return "a directory";
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISSOCK(m)) return "a socket";
    return "something else";
}

int tsr_file_open(const char *path, const char *what, uint64_t max_bytes, int *fd, size_t *size)
{
    *fd = -1;
    *size = 0;
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. */
    int f = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (f < 0)
        return tsr_errorf(errno == ENOENT ? TSR_ENOTFOUND : TSR_EIO, "%s: cannot open %s: %s", path,
                          what, strerror(errno));
    struct stat st;
    if (fstat(f, &st) != 0) {
        int e = errno;
        close(f);
        return tsr_errorf(TSR_EIO, "%s: cannot stat %s: %s", path, what, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(f);
        return tsr_errorf(TSR_EIO, "%s: the %s is not a readable regular file: it is %s", path,
                          what, file_kind(st.st_mode));
    }
    if (max_bytes && (uint64_t)st.st_size > max_bytes) {
        close(f);
        return tsr_errorf(TSR_EINVAL, "%s: %s is %lld bytes, over the limit of %" PRIu64, path,
                          what, (long long)st.st_size, max_bytes);
    }
    /* Reads of a regular file never block; clear the flag so later reads behave as usual. */
    int fl = fcntl(f, F_GETFL);
    if (fl >= 0) (void)fcntl(f, F_SETFL, fl & ~O_NONBLOCK);
    *fd = f;
    *size = (size_t)st.st_size;
    return 0;
}

int tsr_json_load(const char *path, const char *what, uint64_t max_bytes, size_t flags,
                  json_t **out)
{
    int fd;
    size_t n;
    *out = NULL;
    int rc = tsr_file_open(path, what, max_bytes, &fd, &n);
    if (rc) return rc;
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        return tsr_errorf(TSR_ENOMEM, "%s: out of memory", path);
    }
    json_error_t err;
    *out = json_loadf(f, flags, &err);
    fclose(f);
    if (!*out)
        return tsr_errorf(TSR_EFORMAT, "%s: not valid JSON: %s (line %d, column %d)", path,
                          err.text, err.line, err.column);
    return 0;
}
