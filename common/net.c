#include "common/net.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/status.h"

int tsr_net_split(const char *s, char *host, size_t cap, int *port)
{
    const char *colon, *h = s;
    size_t hn;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') goto bad;
        h = s + 1;
        hn = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || memchr(s, ':', (size_t)(colon - s))) goto bad; /* v6 needs brackets */
        hn = (size_t)(colon - s);
    }
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || p < 0 || p > 65535 || hn == 0 || hn >= cap) goto bad;
    memcpy(host, h, hn);
    host[hn] = 0;
    *port = (int)p;
    return 0;
bad:
    return tsr_errorf(TSR_EINVAL,
                      "'%s' is not HOST:PORT (an IPv6 host goes in brackets: [::1]:50051)", s);
}

void tsr_net_join(const char *host, int port, char *out, size_t cap)
{
    snprintf(out, cap, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
}

static int is_wildcard(const char *host)
{
    return !host[0] || !strcmp(host, "0.0.0.0") || !strcmp(host, "::") || !strcmp(host, "[::]");
}

/* 1 if the socket addresses hold the same IP (port ignored). */
static int same_ip(const struct sockaddr *a, const struct sockaddr *b)
{
    if (a->sa_family != b->sa_family) return 0;
    if (a->sa_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    if (a->sa_family == AF_INET6)
        return !memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                       &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr));
    return 0;
}

int tsr_net_is_local(const char *host)
{
    if (is_wildcard(host)) return 1;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    if (getaddrinfo(host, NULL, &hints, &res)) return 0;
    struct ifaddrs *ifs;
    int local = 0;
    if (!getifaddrs(&ifs)) {
        for (struct addrinfo *a = res; a && !local; a = a->ai_next)
            for (struct ifaddrs *i = ifs; i && !local; i = i->ifa_next)
                local = i->ifa_addr && same_ip(a->ai_addr, i->ifa_addr);
        freeifaddrs(ifs);
    }
    freeaddrinfo(res);
    return local;
}

/* The first IPv4 address of an interface that is up and not loopback, in interface order. */
static int routable_address(char *out, size_t cap)
{
    struct ifaddrs *ifs;
    if (getifaddrs(&ifs)) return TSR_EIO;
    int rc = TSR_ENOTFOUND;
    for (struct ifaddrs *i = ifs; i && rc; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || !(i->ifa_flags & IFF_UP) ||
            (i->ifa_flags & IFF_LOOPBACK))
            continue;
        if (inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, out, (socklen_t)cap))
            rc = 0;
    }
    freeifaddrs(ifs);
    return rc;
}

int tsr_net_advertise(const char *bind_host, const char *advertise, char *out, size_t cap)
{
    if (advertise && advertise[0]) {
        if (is_wildcard(advertise))
            return tsr_errorf(TSR_EINVAL,
                              "--advertise-address %s is a wildcard: others cannot reach it; give "
                              "an address of this host",
                              advertise);
        if (!tsr_net_is_local(advertise))
            return tsr_errorf(TSR_EINVAL,
                              "--advertise-address %s is not an address of this host (see `ip "
                              "addr`)",
                              advertise);
        if (strlen(advertise) >= cap)
            return tsr_errorf(TSR_EINVAL, "--advertise-address %s is too long", advertise);
        snprintf(out, cap, "%s", advertise);
        return 0;
    }
    if (!is_wildcard(bind_host)) {
        if (strlen(bind_host) >= cap)
            return tsr_errorf(TSR_EINVAL, "--host %s is too long", bind_host);
        snprintf(out, cap, "%s", bind_host);
        return 0;
    }
    if (routable_address(out, cap))
        return tsr_errorf(TSR_EINVAL,
                          "--host %s listens on every interface, but this host has no address "
                          "other than loopback to advertise: pass --advertise-address",
                          bind_host);
    return 0;
}
