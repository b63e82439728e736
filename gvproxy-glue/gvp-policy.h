/* SPDX-License-Identifier: MIT
 *
 * gvp-policy: the pure part of the network contract — modes, domain-name
 * validation and allow-list matching, exposed-port specs, the guest's
 * addressing — plus the two wire parsers the egress filter needs (DNS
 * questions and answers, the TLS ClientHello's server_name and the HTTP Host
 * header). No sockets, no processes: everything here is unit-tested
 * (tests/unit/test-gvp-policy.c) and shared by sbx-run (request validation)
 * and gvp-network (enforcement).
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define GVP_ERROR (gvp_error_quark())
GQuark gvp_error_quark(void);

typedef enum {
    GVP_ERROR_INVALID,      /* a bad mode, domain or port (the request is refused) */
    GVP_ERROR_UNSUPPORTED,  /* the host cannot provide the mode (no helper, no netns) */
    GVP_ERROR_HELPER,       /* the helper could not start */
    GVP_ERROR_HELPER_DIED,  /* the helper exited while its VM was running */
} GvpError;

typedef enum {
    GVP_MODE_NONE,   /* no NIC at all */
    GVP_MODE_EXPOSE, /* host -> guest TCP forwards only; the guest cannot connect out */
    GVP_MODE_ALLOW,  /* egress only to allow-listed names (TLS SNI / HTTP Host), our DNS */
    GVP_MODE_FULL,   /* unfiltered egress (except the host's loopback) */
} GvpMode;

#define GVP_MAX_PORTS 10
#define GVP_MAX_DOMAINS 64
#define GVP_MAX_DOMAIN_LEN 253

/* Guest addressing (RFC 5737 TEST-NET-1, as passt's examples). */
#define GVP_GUEST_ADDR "192.0.2.2"
#define GVP_GATEWAY_ADDR "192.0.2.1"
#define GVP_PREFIX_LEN 24

typedef struct {
    guint16 internal; /* guest port, 1..65535 */
    guint16 external; /* host port on 127.0.0.1; 0: OS-assigned (filled in once bound) */
} GvpPort;

gboolean gvp_mode_from_string(const char *s, GvpMode *out_mode, GError **error);
const char *gvp_mode_to_string(GvpMode mode);

/* Validate and normalise a domain for the allow-list: lower-cased, one
 * trailing dot dropped, <= 253 bytes, 2+ labels of 1..63 [a-z0-9-] that
 * neither start nor end with '-', an alphabetic top-level label. No
 * wildcards: a listed domain always covers its subdomains. */
gboolean gvp_domain_normalize(const char *in, char **out_domain, GError **error);

/* TRUE when @name (any case, optional trailing dot) equals a listed domain or
 * is a subdomain of one. @allow holds normalised domains. */
gboolean gvp_domain_allowed(const char *const *allow, const char *name);

/* "INTERNAL[:EXTERNAL]" (decimal; EXTERNAL 0 or absent: OS-assigned). */
gboolean gvp_port_parse(const char *spec, GvpPort *out_port, GError **error);
/* <= GVP_MAX_PORTS, internal ports non-zero and distinct, non-zero external
 * ports distinct. */
gboolean gvp_ports_validate(const GvpPort *ports, guint n_ports, GError **error);

/* A whole network request: mode vs. domains vs. ports consistency. */
gboolean gvp_request_validate(GvpMode mode, const char *const *domains, const GvpPort *ports,
                              guint n_ports, GError **error);

/* The guest's kernel command-line option for @mode ("" for NONE): read by
 * the guest's init (guest/init/sbx-init.c), "sbx.net=ADDR/PREFIX,GATEWAY[,DNS]". */
char *gvp_guest_cmdline(GvpMode mode);

/* ---- DNS (RFC 1035) ----------------------------------------------------- */

#define GVP_DNS_TYPE_A 1
#define GVP_DNS_TYPE_AAAA 28
#define GVP_DNS_RCODE_NOERROR 0
#define GVP_DNS_RCODE_FORMERR 1
#define GVP_DNS_RCODE_NXDOMAIN 3
#define GVP_DNS_RCODE_NOTIMP 4
#define GVP_DNS_RCODE_REFUSED 5

typedef struct {
    guint16 id;
    guint16 qtype;
    guint16 qclass;
    char name[GVP_MAX_DOMAIN_LEN + 2]; /* lower-cased, no trailing dot */
    gsize question_end;                /* offset just past the question */
} GvpDnsQuery;

/* One standard query with exactly one question (no compression in it). */
gboolean gvp_dns_parse_query(const guint8 *msg, gsize len, GvpDnsQuery *out_query);
/* A reply to @q (whose bytes are @msg): header + the question + one A record
 * (TTL 60) when @a_addr is non-NULL. Returns the length written to @out, 0 if
 * @out_len is too small. */
gsize gvp_dns_build_reply(const guint8 *msg, const GvpDnsQuery *q, guint rcode,
                          const guint8 a_addr[4], guint8 *out, gsize out_len);

/* ---- TLS ClientHello / HTTP Host ---------------------------------------- */

typedef enum {
    GVP_PARSE_OK,
    GVP_PARSE_NEED_MORE, /* a prefix of something valid: read more */
    GVP_PARSE_NONE,      /* well-formed but without a name */
    GVP_PARSE_INVALID,   /* not TLS / not HTTP */
} GvpParseResult;

/* The server_name (host_name type) of a TLS ClientHello at the start of
 * @buf, which may span several TLS records' worth of handshake bytes only if
 * it fits the first record (as every client sends it). */
GvpParseResult gvp_tls_parse_sni(const guint8 *buf, gsize len, char **out_name);
/* The Host header of an HTTP/1.x request head (port stripped, lower-cased). */
GvpParseResult gvp_http_parse_host(const guint8 *buf, gsize len, char **out_host);

G_END_DECLS
