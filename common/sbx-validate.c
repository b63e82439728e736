/* SPDX-License-Identifier: MIT
 *
 * sbx-validate: input validation shared by the scheduler (host, before any VM
 * is touched) and the guest agent (defence in depth). Pure functions over
 * strings; no I/O. Error codes are SBX_VALIDATE_ERROR_* and the messages name
 * the field, the offending value (shortened) and the limit.
 */
#include "common/sbx-validate.h"

#include <string.h>

G_DEFINE_QUARK(sbx-validate-error-quark, sbx_validate_error)

static const char *const language_names[SBX_N_LANGUAGES] = {
    [SBX_LANGUAGE_PYTHON] = "python",
    [SBX_LANGUAGE_JAVASCRIPT] = "javascript",
    [SBX_LANGUAGE_RAW] = "raw",
};

/* Names that change how the dynamic loader, libc, the interpreters or the
 * shell behave, or that the agent sets itself. Compared case-insensitively. */
static const char *const refused_names[] = {
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "PWD", "OLDPWD", "TMPDIR",
    "IFS", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "CDPATH", "PS4", "PROMPT_COMMAND",
    "GLIBC_TUNABLES", "GCONV_PATH", "HOSTALIASES", "LOCPATH", "NLSPATH", "RES_OPTIONS",
    "RESOLV_HOST_CONF", "LOCALDOMAIN", "TZDIR",
    "NODE_OPTIONS", "NODE_PATH", "NODE_REPL_HISTORY", "NODE_REPL_EXTERNAL_MODULE",
    "NODE_EXTRA_CA_CERTS", "UV_THREADPOOL_SIZE",
};

static const char *const refused_prefixes[] = {
    "LD_", "MALLOC_", "PYTHON", "BASH_FUNC_",
};

const char *
sbx_language_to_string(SbxLanguage language)
{
    g_return_val_if_fail((guint)language < SBX_N_LANGUAGES, "invalid");
    return language_names[language];
}

/* A printable, shortened copy of user input for error messages. */
static char *
shorten(const char *s, gsize len)
{
    gsize n = MIN(len, 40);
    g_autofree char *valid = g_utf8_make_valid(s, (gssize)n);
    g_autofree char *esc = g_strescape(valid, NULL);
    return len > 40 ? g_strconcat(esc, "...", NULL) : g_steal_pointer(&esc);
}

gboolean
sbx_validate_language(const char *name, SbxLanguage *out_language, GError **error)
{
    for (guint i = 0; name && i < SBX_N_LANGUAGES; i++) {
        if (strcmp(name, language_names[i]) == 0) {
            if (out_language)
                *out_language = (SbxLanguage)i;
            return TRUE;
        }
    }
    g_autofree char *shown = name ? shorten(name, strlen(name)) : g_strdup("(none)");
    g_set_error(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_LANGUAGE,
                "unknown language \"%s\": use python, javascript or raw", shown);
    return FALSE;
}

gboolean
sbx_validate_code(const void *code, gsize len, GError **error)
{
    const char *s = code;
    gboolean blank = TRUE;

    if (len == 0 || !code) {
        g_set_error_literal(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_CODE, "code is empty");
        return FALSE;
    }
    if (len > SBX_MAX_CODE_BYTES) {
        g_set_error(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_CODE,
                    "code is %" G_GSIZE_FORMAT " bytes; the limit is %d bytes (1 MiB)", len,
                    SBX_MAX_CODE_BYTES);
        return FALSE;
    }
    if (memchr(s, '\0', len)) {
        g_set_error(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_CODE,
                    "code contains a NUL byte at offset %" G_GSIZE_FORMAT,
                    (gsize)((const char *)memchr(s, '\0', len) - s));
        return FALSE;
    }
    if (!g_utf8_validate(s, (gssize)len, NULL)) {
        g_set_error_literal(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_CODE,
                            "code is not valid UTF-8");
        return FALSE;
    }
    for (gsize i = 0; i < len && blank; i++)
        blank = g_ascii_isspace(s[i]);
    if (blank) {
        g_set_error_literal(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_CODE,
                            "code contains only whitespace");
        return FALSE;
    }
    return TRUE;
}

gboolean
sbx_validate_timeout(gint64 timeout_s, GError **error)
{
    if (timeout_s < SBX_MIN_TIMEOUT_S || timeout_s > SBX_MAX_TIMEOUT_S) {
        g_set_error(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_TIMEOUT,
                    "timeout of %" G_GINT64_FORMAT " s is out of range: use %d..%d seconds",
                    timeout_s, SBX_MIN_TIMEOUT_S, SBX_MAX_TIMEOUT_S);
        return FALSE;
    }
    return TRUE;
}

gboolean
sbx_validate_env_name_refused(const char *name)
{
    for (gsize i = 0; i < G_N_ELEMENTS(refused_names); i++)
        if (g_ascii_strcasecmp(name, refused_names[i]) == 0)
            return TRUE;
    for (gsize i = 0; i < G_N_ELEMENTS(refused_prefixes); i++)
        if (g_ascii_strncasecmp(name, refused_prefixes[i], strlen(refused_prefixes[i])) == 0)
            return TRUE;
    return FALSE;
}

gboolean
sbx_validate_env_var(const char *name, const char *value, gsize value_len, GError **error)
{
    gsize nlen = name ? strlen(name) : 0;

    if (nlen == 0) {
        g_set_error_literal(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_ENV,
                            "environment variable name is empty");
        return FALSE;
    }
    if (nlen > SBX_MAX_ENV_NAME_BYTES) {
        g_autofree char *shown = shorten(name, nlen);
        g_set_error(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_ENV,
                    "environment variable name \"%s\" is %" G_GSIZE_FORMAT
                    " bytes; the limit is %d", shown, nlen, SBX_MAX_ENV_NAME_BYTES);
        return FALSE;
    }
    for (gsize i = 0; i < nlen; i++) {
        char c = name[i];
        gboolean ok = g_ascii_isalpha(c) || c == '_' || (i > 0 && g_ascii_isdigit(c));
        if (!ok) {
            g_autofree char *shown = shorten(name, nlen);
            g_set_error(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_ENV,
                        "environment variable name \"%s\" is invalid: use letters, digits and "
                        "'_', not starting with a digit", shown);
            return FALSE;
        }
    }
    if (sbx_validate_env_name_refused(name)) {
        g_set_error(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_ENV,
                    "environment variable %s is not allowed: it changes how the loader, the "
                    "interpreter or the shell behaves (see docs/guest-protocol.md)", name);
        return FALSE;
    }
    if (!value) {
        g_set_error(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_ENV,
                    "environment variable %s has no value", name);
        return FALSE;
    }
    if (value_len > SBX_MAX_ENV_VALUE_BYTES) {
        g_set_error(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_ENV,
                    "value of environment variable %s is %" G_GSIZE_FORMAT
                    " bytes; the limit is %d", name, value_len, SBX_MAX_ENV_VALUE_BYTES);
        return FALSE;
    }
    for (gsize i = 0; i < value_len; i++) {
        guchar c = (guchar)value[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            g_set_error(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_ENV,
                        "value of environment variable %s contains control character 0x%02x at "
                        "offset %" G_GSIZE_FORMAT " (only TAB is allowed)", name, c, i);
            return FALSE;
        }
    }
    if (!g_utf8_validate(value, (gssize)value_len, NULL)) {
        g_set_error(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_ENV,
                    "value of environment variable %s is not valid UTF-8", name);
        return FALSE;
    }
    return TRUE;
}

gboolean
sbx_validate_env(GHashTable *env, GError **error)
{
    GHashTableIter it;
    gpointer k, v;

    if (!env)
        return TRUE;
    if (g_hash_table_size(env) > SBX_MAX_ENV_VARS) {
        g_set_error(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_ENV,
                    "%u environment variables given; the limit is %d",
                    g_hash_table_size(env), SBX_MAX_ENV_VARS);
        return FALSE;
    }
    g_hash_table_iter_init(&it, env);
    while (g_hash_table_iter_next(&it, &k, &v))
        if (!sbx_validate_env_var(k, v, v ? strlen(v) : 0, error))
            return FALSE;
    return TRUE;
}

gboolean
sbx_validate_path(const char *path, gsize len, gboolean allow_root, GError **error)
{
    gsize start = 0;

    if (!path || len == 0 || (len == 1 && path[0] == '.')) {
        if (allow_root)
            return TRUE;
        g_set_error_literal(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_PATH,
                            "path is empty: give a file path relative to /home/user");
        return FALSE;
    }
    if (len > SBX_MAX_PATH_BYTES) {
        g_set_error(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_PATH,
                    "path is %" G_GSIZE_FORMAT " bytes; the limit is %d", len, SBX_MAX_PATH_BYTES);
        return FALSE;
    }
    if (memchr(path, '\0', len)) {
        g_set_error_literal(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_PATH,
                            "path contains a NUL byte");
        return FALSE;
    }
    if (!g_utf8_validate(path, (gssize)len, NULL)) {
        g_set_error_literal(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_PATH,
                            "path is not valid UTF-8");
        return FALSE;
    }
    g_autofree char *shown = shorten(path, len);
    if (path[0] == '/') {
        g_set_error(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_PATH,
                    "path \"%s\" is absolute: give it relative to /home/user", shown);
        return FALSE;
    }
    for (gsize i = 0; i <= len; i++) {
        if (i < len && path[i] != '/')
            continue;
        gsize clen = i - start;
        if (clen == 0) {
            g_set_error(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_PATH,
                        "path \"%s\" has an empty component (\"//\" or a trailing '/')", shown);
            return FALSE;
        }
        if (clen > SBX_MAX_PATH_COMPONENT_BYTES) {
            g_set_error(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_PATH,
                        "path \"%s\" has a component of %" G_GSIZE_FORMAT
                        " bytes; the limit is %d", shown, clen, SBX_MAX_PATH_COMPONENT_BYTES);
            return FALSE;
        }
        if ((clen == 1 && path[start] == '.') ||
            (clen == 2 && path[start] == '.' && path[start + 1] == '.')) {
            g_set_error(error, SBX_VALIDATE_ERROR, SBX_VALIDATE_ERROR_PATH,
                        "path \"%s\" contains a \".\" or \"..\" component: paths must stay "
                        "inside /home/user", shown);
            return FALSE;
        }
        start = i + 1;
    }
    return TRUE;
}
