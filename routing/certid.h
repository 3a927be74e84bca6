/*
 * certid: the identity a client certificate carries, as the URI in its subjectAltName.
 *
 *   production  -> "pglane:{app}/production"
 *   preview     -> "pglane:{app}/preview"
 *   branch B    -> "pglane:{app}/branch/{B percent-encoded}"
 *
 * The branch keeps RFC 3986's unreserved characters (letters, digits, "-", ".", "_", "~") and every other
 * byte becomes %XX, so "feature/login" is "feature%2Flogin" and the URI has exactly one reading.  The
 * certificate's subject CN must be the app id (certs_client_uri() checks that); this module only turns a URI
 * into an identity and back.  Pure functions over bytes: no sockets, no logging.
 */
#ifndef PGLANE_CERTID_H
#define PGLANE_CERTID_H

#include <stdbool.h>
#include <stddef.h>

#include "routing/timeline.h"

#define IDENTITY_URI_SCHEME "pglane:"
/* The longest URI identity_format_uri() writes, with its terminating NUL. */
#define IDENTITY_URI_MAX                                                                                     \
	(sizeof(IDENTITY_URI_SCHEME) - 1 + APP_ID_MAX + sizeof("/branch/") - 1 + 3 * TIMELINE_BRANCH_MAX + 1)

/* The URI of id into out; returns false if it does not fit (IDENTITY_URI_MAX always does). */
bool identity_format_uri(const struct identity *id, char *out, size_t outlen);

/*
 * Parses a certificate's URI into an identity.  Returns false (err names what is wrong, out zeroed) for
 * anything but the three forms above with a valid app id and branch name.  The scheme is matched without
 * regard to case, as RFC 3986 says; "%xx" may use either case.  Like identity_parse_user(), it does not apply
 * production_branch: callers do (timeline_set) once they know the app.
 */
bool identity_parse_uri(const char *uri, struct identity *out, char *err, size_t errlen);

#endif
