/* SPDX-License-Identifier: MIT
 *
 * gvp-policy: modes, domain validation and matching, port specs, the guest's
 * addressing option, and the DNS / TLS ClientHello / HTTP Host parsers used by
 * the egress filter in gvp-network.c. Pure functions over bytes and strings;
 * every input is untrusted (guest packets), so every read is bounds-checked.
 */
#define G_LOG_DOMAIN "gvp-policy"

#include "gvproxy-glue/gvp-policy.h"

#include <string.h>

G_DEFINE_QUARK(gvp-error-quark, gvp_error)

static const char *const mode_names[] = {"none", "expose", "allow", "full"};

gboolean
gvp_mode_from_string(const char *s, GvpMode *out_mode, GError **error)
{
    for (guint i = 0; i < G_N_ELEMENTS(mode_names); i++) {
        if (g_strcmp0(s, mode_names[i]) == 0) {
            *out_mode = (GvpMode)i;
            return TRUE;
        }
    }
    g_set_error(error, GVP_ERROR, GVP_ERROR_INVALID,
                "network mode '%s' is not one of none, expose, allow, full", s ? s : "");
    return FALSE;
}

const char *
gvp_mode_to_string(GvpMode mode)
{
    return (guint)mode < G_N_ELEMENTS(mode_names) ? mode_names[mode] : "none";
}

gboolean
gvp_domain_normalize(const char *in, char **out_domain, GError **error)
{
    gsize len = in ? strlen(in) : 0;
    if (len > 0 && in[len - 1] == '.')
        len--;
    if (len == 0 || len > GVP_MAX_DOMAIN_LEN) {
        g_set_error(error, GVP_ERROR, GVP_ERROR_INVALID,
                    "allowed domain '%s': length must be 1..%d", in ? in : "", GVP_MAX_DOMAIN_LEN);
        return FALSE;
    }
    g_autofree char *d = g_ascii_strdown(in, (gssize)len);
    guint labels = 0;
    const char *label = d;
    for (const char *p = d;; p++) {
        if (*p == '.' || *p == '\0') {
            gsize ll = (gsize)(p - label);
            if (ll == 0 || ll > 63 || label[0] == '-' || label[ll - 1] == '-') {
                g_set_error(error, GVP_ERROR, GVP_ERROR_INVALID,
                            "allowed domain '%s': every label must be 1..63 characters and must "
                            "not start or end with '-'",
                            in);
                return FALSE;
            }
            labels++;
            if (*p == '\0')
                break;
            label = p + 1;
            continue;
        }
        if (!g_ascii_isalnum(*p) && *p != '-') {
            g_set_error(error, GVP_ERROR, GVP_ERROR_INVALID,
                        "allowed domain '%s': only letters, digits, '-' and '.' are allowed "
                        "(no wildcards: a domain always covers its subdomains)",
                        in);
            return FALSE;
        }
    }
    for (const char *p = label; *p; p++) {
        if (!g_ascii_isalpha(*p)) {
            g_set_error(error, GVP_ERROR, GVP_ERROR_INVALID,
                        "allowed domain '%s': the top-level label must be alphabetic", in);
            return FALSE;
        }
    }
    if (labels < 2) {
        g_set_error(error, GVP_ERROR, GVP_ERROR_INVALID,
                    "allowed domain '%s': needs at least two labels (a bare top-level domain "
                    "would allow a whole registry)",
                    in);
        return FALSE;
    }
    *out_domain = g_steal_pointer(&d);
    return TRUE;
}

gboolean
gvp_domain_allowed(const char *const *allow, const char *name)
{
    if (allow == NULL || name == NULL)
        return FALSE;
    gsize len = strlen(name);
    if (len > 0 && name[len - 1] == '.')
        len--;
    if (len == 0 || len > GVP_MAX_DOMAIN_LEN)
        return FALSE;
    g_autofree char *n = g_ascii_strdown(name, (gssize)len);
    for (guint i = 0; allow[i]; i++) {
        gsize al = strlen(allow[i]);
        if (len == al && memcmp(n, allow[i], al) == 0)
            return TRUE;
        if (len > al && n[len - al - 1] == '.' && memcmp(n + len - al, allow[i], al) == 0)
            return TRUE;
    }
    return FALSE;
}

static gboolean
parse_port(const char *s, gsize n, guint64 *out)
{
    if (n == 0 || n > 5)
        return FALSE;
    for (gsize i = 0; i < n; i++)
        if (!g_ascii_isdigit(s[i]))
            return FALSE;
    g_autofree char *tmp = g_strndup(s, n);
    *out = g_ascii_strtoull(tmp, NULL, 10);
    return *out <= 65535;
}

gboolean
gvp_port_parse(const char *spec, GvpPort *out_port, GError **error)
{
    const char *colon = spec ? strchr(spec, ':') : NULL;
    guint64 in = 0, ex = 0;
    gsize n = spec ? (colon ? (gsize)(colon - spec) : strlen(spec)) : 0;
    if (!parse_port(spec, n, &in) || in == 0 ||
        (colon && !parse_port(colon + 1, strlen(colon + 1), &ex))) {
        g_set_error(error, GVP_ERROR, GVP_ERROR_INVALID,
                    "exposed port '%s': expected INTERNAL[:EXTERNAL] with ports 1..65535 "
                    "(EXTERNAL 0 or absent: any free port)",
                    spec ? spec : "");
        return FALSE;
    }
    out_port->internal = (guint16)in;
    out_port->external = (guint16)ex;
    return TRUE;
}

gboolean
gvp_ports_validate(const GvpPort *ports, guint n_ports, GError **error)
{
    if (n_ports > GVP_MAX_PORTS) {
        g_set_error(error, GVP_ERROR, GVP_ERROR_INVALID, "%u exposed ports: at most %d", n_ports,
                    GVP_MAX_PORTS);
        return FALSE;
    }
    for (guint i = 0; i < n_ports; i++) {
        if (ports[i].internal == 0) {
            g_set_error(error, GVP_ERROR, GVP_ERROR_INVALID, "exposed port 0 is not a port");
            return FALSE;
        }
        for (guint j = 0; j < i; j++) {
            if (ports[i].internal == ports[j].internal ||
                (ports[i].external && ports[i].external == ports[j].external)) {
                g_set_error(error, GVP_ERROR, GVP_ERROR_INVALID,
                            "exposed ports %u:%u and %u:%u overlap", ports[j].internal,
                            ports[j].external, ports[i].internal, ports[i].external);
                return FALSE;
            }
        }
    }
    return TRUE;
}

gboolean
gvp_request_validate(GvpMode mode, const char *const *domains, const GvpPort *ports, guint n_ports,
                     GError **error)
{
    guint nd = domains ? g_strv_length((char **)domains) : 0;
    if (!gvp_ports_validate(ports, n_ports, error))
        return FALSE;
    if (mode == GVP_MODE_ALLOW && nd == 0) {
        g_set_error_literal(error, GVP_ERROR, GVP_ERROR_INVALID,
                            "network 'allow' needs at least one allowed domain");
        return FALSE;
    }
    if (mode != GVP_MODE_ALLOW && nd > 0) {
        g_set_error(error, GVP_ERROR, GVP_ERROR_INVALID,
                    "allowed domains are only meaningful with network 'allow' (not '%s')",
                    gvp_mode_to_string(mode));
        return FALSE;
    }
    if (nd > GVP_MAX_DOMAINS) {
        g_set_error(error, GVP_ERROR, GVP_ERROR_INVALID, "%u allowed domains: at most %d", nd,
                    GVP_MAX_DOMAINS);
        return FALSE;
    }
    if (mode == GVP_MODE_NONE && n_ports > 0) {
        g_set_error_literal(error, GVP_ERROR, GVP_ERROR_INVALID,
                            "network 'none' has no NIC: exposed ports need 'expose', 'allow' or "
                            "'full'");
        return FALSE;
    }
    if (mode == GVP_MODE_EXPOSE && n_ports == 0) {
        g_set_error_literal(error, GVP_ERROR, GVP_ERROR_INVALID,
                            "network 'expose' needs at least one exposed port");
        return FALSE;
    }
    for (guint i = 0; i < nd; i++) {
        g_autofree char *norm = NULL;
        if (!gvp_domain_normalize(domains[i], &norm, error))
            return FALSE;
    }
    return TRUE;
}

char *
gvp_guest_cmdline(GvpMode mode)
{
    switch (mode) {
    case GVP_MODE_NONE:
        return g_strdup("");
    case GVP_MODE_EXPOSE: /* no resolver: nothing to resolve */
        return g_strdup_printf("sbx.net=%s/%d,%s", GVP_GUEST_ADDR, GVP_PREFIX_LEN, GVP_GATEWAY_ADDR);
    case GVP_MODE_ALLOW:
    case GVP_MODE_FULL:
        break;
    }
    return g_strdup_printf("sbx.net=%s/%d,%s,%s", GVP_GUEST_ADDR, GVP_PREFIX_LEN, GVP_GATEWAY_ADDR,
                           GVP_GATEWAY_ADDR);
}

/* ---- DNS ---------------------------------------------------------------- */

static guint16
rd16(const guint8 *p)
{
    return (guint16)((p[0] << 8) | p[1]);
}

gboolean
gvp_dns_parse_query(const guint8 *msg, gsize len, GvpDnsQuery *q)
{
    if (len < 12)
        return FALSE;
    guint16 flags = rd16(msg + 2);
    if ((flags & 0x8000) != 0 || ((flags >> 11) & 0xf) != 0) /* a response, or not QUERY */
        return FALSE;
    if (rd16(msg + 4) != 1 || rd16(msg + 6) != 0 || rd16(msg + 8) != 0)
        return FALSE;
    gsize off = 12, n = 0;
    for (;;) {
        if (off >= len)
            return FALSE;
        guint l = msg[off++];
        if (l == 0)
            break;
        if (l > 63 || off + l > len) /* compression pointers are not allowed here */
            return FALSE;
        if (n + l + 1 > GVP_MAX_DOMAIN_LEN + 1)
            return FALSE;
        if (n)
            q->name[n++] = '.';
        for (guint i = 0; i < l; i++) {
            char c = (char)msg[off + i];
            if (!g_ascii_isalnum(c) && c != '-' && c != '_')
                return FALSE;
            q->name[n++] = g_ascii_tolower(c);
        }
        off += l;
    }
    q->name[n] = '\0';
    if (off + 4 > len)
        return FALSE;
    q->id = rd16(msg);
    q->qtype = rd16(msg + off);
    q->qclass = rd16(msg + off + 2);
    q->question_end = off + 4;
    return TRUE;
}

gsize
gvp_dns_build_reply(const guint8 *msg, const GvpDnsQuery *q, guint rcode, const guint8 a_addr[4],
                    guint8 *out, gsize out_len)
{
    gsize need = q->question_end + (a_addr ? 16 : 0);
    if (out_len < need || q->question_end < 12)
        return 0;
    memcpy(out, msg, q->question_end);
    guint16 rd = rd16(msg + 2) & 0x0100;              /* copy RD */
    guint16 flags = 0x8000 | 0x0400 | rd | 0x0080 | (rcode & 0xf); /* QR AA RD RA rcode */
    out[2] = (guint8)(flags >> 8);
    out[3] = (guint8)flags;
    out[6] = 0;
    out[7] = a_addr ? 1 : 0; /* ANCOUNT */
    memset(out + 8, 0, 4);   /* NSCOUNT, ARCOUNT */
    if (a_addr) {
        guint8 *p = out + q->question_end;
        static const guint8 rr[] = {0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4};
        memcpy(p, rr, sizeof rr);
        memcpy(p + sizeof rr, a_addr, 4);
    }
    return need;
}

/* ---- TLS ClientHello ---------------------------------------------------- */

static gboolean
valid_hostname_bytes(const guint8 *p, gsize n)
{
    if (n == 0 || n > GVP_MAX_DOMAIN_LEN + 1)
        return FALSE;
    for (gsize i = 0; i < n; i++)
        if (!g_ascii_isalnum(p[i]) && p[i] != '-' && p[i] != '.' && p[i] != '_')
            return FALSE;
    return TRUE;
}

GvpParseResult
gvp_tls_parse_sni(const guint8 *buf, gsize len, char **out_name)
{
    /* record header: type 22 (handshake), version 3.x, length */
    if (len >= 1 && buf[0] != 22)
        return GVP_PARSE_INVALID;
    if (len >= 2 && buf[1] != 3)
        return GVP_PARSE_INVALID;
    if (len < 5)
        return GVP_PARSE_NEED_MORE;
    gsize rec_len = rd16(buf + 3);
    if (rec_len < 4 || rec_len > 16384)
        return GVP_PARSE_INVALID;
    if (len >= 6 && buf[5] != 1) /* ClientHello */
        return GVP_PARSE_INVALID;
    if (len < 5 + rec_len)
        return GVP_PARSE_NEED_MORE;
    const guint8 *p = buf + 5, *end = buf + 5 + rec_len;
    gsize hs_len = ((gsize)p[1] << 16) | ((gsize)p[2] << 8) | p[3];
    p += 4;
    if (hs_len > (gsize)(end - p))
        return GVP_PARSE_INVALID; /* the hello spans records: no client does that */
    end = p + hs_len;
#define NEED(n)                                                                                    \
    do {                                                                                           \
        if ((gsize)(end - p) < (gsize)(n))                                                         \
            return GVP_PARSE_INVALID;                                                              \
    } while (0)
    NEED(2 + 32 + 1);
    p += 2 + 32; /* version, random */
    gsize sid = *p++;
    NEED(sid + 2);
    p += sid;
    gsize cs = rd16(p);
    p += 2;
    NEED(cs + 1);
    p += cs;
    gsize comp = *p++;
    NEED(comp);
    p += comp;
    if (p == end)
        return GVP_PARSE_NONE; /* no extensions */
    NEED(2);
    gsize ext_total = rd16(p);
    p += 2;
    NEED(ext_total);
    const guint8 *ext_end = p + ext_total;
    while ((gsize)(ext_end - p) >= 4) {
        guint16 type = rd16(p);
        gsize elen = rd16(p + 2);
        p += 4;
        if ((gsize)(ext_end - p) < elen)
            return GVP_PARSE_INVALID;
        if (type == 0) { /* server_name */
            const guint8 *q = p, *qend = p + elen;
            if (elen < 2 || rd16(q) != elen - 2)
                return GVP_PARSE_INVALID;
            q += 2;
            while ((gsize)(qend - q) >= 3) {
                guint8 nt = q[0];
                gsize nl = rd16(q + 1);
                q += 3;
                if ((gsize)(qend - q) < nl)
                    return GVP_PARSE_INVALID;
                if (nt == 0) {
                    if (!valid_hostname_bytes(q, nl))
                        return GVP_PARSE_INVALID;
                    *out_name = g_ascii_strdown((const char *)q, (gssize)nl);
                    return GVP_PARSE_OK;
                }
                q += nl;
            }
            return GVP_PARSE_INVALID;
        }
        p += elen;
    }
#undef NEED
    return GVP_PARSE_NONE;
}

/* ---- HTTP Host ---------------------------------------------------------- */

GvpParseResult
gvp_http_parse_host(const guint8 *buf, gsize len, char **out_host)
{
    /* request line: a token method of upper-case letters, then a space */
    gsize i = 0;
    while (i < len && i < 16 && buf[i] >= 'A' && buf[i] <= 'Z')
        i++;
    if (i < len && (i == 0 || i == 16 || buf[i] != ' '))
        return GVP_PARSE_INVALID;
    const guint8 *head_end = NULL;
    for (gsize k = 0; k + 3 < len; k++) {
        if (buf[k] == '\r' && buf[k + 1] == '\n' && buf[k + 2] == '\r' && buf[k + 3] == '\n') {
            head_end = buf + k + 2;
            break;
        }
    }
    if (head_end == NULL)
        return GVP_PARSE_NEED_MORE;
    const guint8 *line = memchr(buf, '\n', (gsize)(head_end - buf));
    if (line == NULL)
        return GVP_PARSE_INVALID;
    line++;
    char *found = NULL;
    while (line < head_end) {
        const guint8 *eol = memchr(line, '\n', (gsize)(head_end - line));
        if (eol == NULL)
            break;
        gsize ll = (gsize)(eol - line);
        if (ll > 0 && line[ll - 1] == '\r')
            ll--;
        if (ll > 5 && g_ascii_strncasecmp((const char *)line, "host:", 5) == 0) {
            if (found) { /* two Host headers: ambiguous, refuse */
                g_free(found);
                return GVP_PARSE_INVALID;
            }
            const guint8 *v = line + 5, *ve = line + ll;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            const guint8 *colon = memchr(v, ':', (gsize)(ve - v));
            if (colon) {
                for (const guint8 *d = colon + 1; d < ve; d++)
                    if (!g_ascii_isdigit(*d))
                        return GVP_PARSE_INVALID;
                ve = colon;
            }
            if (!valid_hostname_bytes(v, (gsize)(ve - v)))
                return GVP_PARSE_INVALID;
            found = g_ascii_strdown((const char *)v, (gssize)(ve - v));
        }
        line = eol + 1;
    }
    if (found == NULL)
        return GVP_PARSE_NONE;
    *out_host = found;
    return GVP_PARSE_OK;
}
