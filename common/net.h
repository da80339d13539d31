/* Addresses of this host (DESIGN §1: every listener has a bind address and an advertised address;
 * nothing assumes loopback). A process binds --host (default 127.0.0.1) and tells others
 * --advertise-address, which must be one of this host's own addresses; unset, it is the bind
 * address, or, for a wildcard bind (0.0.0.0, ::), a routable address of this host. */
#ifndef TSR_COMMON_NET_H
#define TSR_COMMON_NET_H

#include <stddef.h>

enum { TSR_HOST_MAX = 256 };

/* Splits "host:port" or "[v6]:port" (port 0..65535). TSR_EINVAL naming s when it is neither. */
int tsr_net_split(const char *s, char *host, size_t cap, int *port);

/* "host:port", bracketing an IPv6 host. */
void tsr_net_join(const char *host, int port, char *out, size_t cap);

/* 1 if host (a name or a numeric address) resolves to an address of one of this host's
 * interfaces, or is a wildcard; 0 otherwise. */
int tsr_net_is_local(const char *host);

/* The address to tell others for a listener bound to bind_host, given the --advertise-address
 * (NULL or "": none). Out: the advertised host. TSR_EINVAL with a message naming the flag when
 * advertise is not this host's, when advertise is a wildcard, or when a wildcard bind finds no
 * routable address (the host has only loopback: pass --advertise-address). */
int tsr_net_advertise(const char *bind_host, const char *advertise, char *out, size_t cap);

#endif
