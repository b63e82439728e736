/* SPDX-License-Identifier: MIT
 *
 * Input validators shared by the host (before any VM is touched) and the
 * guest agent (which trusts nothing it receives). Every failure is an
 * SBX_VALIDATE_ERROR with a code the scheduler maps to "InvalidInput" and a
 * message a person can act on (it names the field and the limit).
 * Limits are the defaults of the user contract (design.md "What the user sees").
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define SBX_MAX_CODE_BYTES (1024 * 1024)
#define SBX_MIN_TIMEOUT_S 1
#define SBX_MAX_TIMEOUT_S 300
#define SBX_MAX_ENV_VARS 100
#define SBX_MAX_ENV_NAME_BYTES 256
#define SBX_MAX_ENV_VALUE_BYTES 4096
#define SBX_MAX_PATH_BYTES 4096
#define SBX_MAX_PATH_COMPONENT_BYTES 255
#define SBX_MAX_FILE_BYTES (500ULL * 1024 * 1024)
#define SBX_MAX_STDOUT_BYTES (1024 * 1024)
#define SBX_MAX_STDERR_BYTES (100 * 1024)

#define SBX_VALIDATE_ERROR (sbx_validate_error_quark())
GQuark sbx_validate_error_quark(void);

typedef enum {
    SBX_VALIDATE_ERROR_CODE,      /* code empty, blank, too large, contains NUL / bad UTF-8 */
    SBX_VALIDATE_ERROR_LANGUAGE,  /* unknown language */
    SBX_VALIDATE_ERROR_TIMEOUT,   /* timeout outside 1..300 s */
    SBX_VALIDATE_ERROR_ENV,       /* too many vars, bad name, refused name, bad value */
    SBX_VALIDATE_ERROR_PATH,      /* absolute, "..", too long, NUL, empty component */
} SbxValidateError;

typedef enum {
    SBX_LANGUAGE_PYTHON,
    SBX_LANGUAGE_JAVASCRIPT,
    SBX_LANGUAGE_RAW,
} SbxLanguage;

#define SBX_N_LANGUAGES 3

/* "python" | "javascript" | "raw" -> enum. */
gboolean sbx_validate_language(const char *name, SbxLanguage *out_language, GError **error);
const char *sbx_language_to_string(SbxLanguage language);

/* Code: non-empty, not only whitespace, <= 1 MiB, no NUL byte, valid UTF-8. */
gboolean sbx_validate_code(const void *code, gsize len, GError **error);

/* Timeout in seconds: 1..300. */
gboolean sbx_validate_timeout(gint64 timeout_s, GError **error);

/* One variable. Name [A-Za-z_][A-Za-z0-9_]* (<= 256 bytes) not on the refused
 * list (sbx_validate_env_name_refused); value <= 4096 bytes, valid UTF-8, no
 * NUL or control characters other than TAB. */
gboolean sbx_validate_env_var(const char *name, const char *value, gsize value_len, GError **error);
/* Whole set (char* -> char*, may be NULL): count <= 100 plus every variable. */
gboolean sbx_validate_env(GHashTable *env, GError **error);
/* TRUE when @name is refused because it changes how the interpreter, the
 * loader or the shell behave (list in docs/guest-protocol.md). */
gboolean sbx_validate_env_name_refused(const char *name);

/* Guest file path relative to /home/user: non-empty, <= 4096 bytes, no
 * leading '/', no NUL, no "." or ".." component, components 1..255 bytes,
 * valid UTF-8. A trailing '/' is refused. For list_files, "" and "." mean
 * the home directory itself (@allow_root). */
gboolean sbx_validate_path(const char *path, gsize len, gboolean allow_root, GError **error);

G_END_DECLS
