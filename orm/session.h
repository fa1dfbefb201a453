/*
 * Session state a transaction-mode client would leave behind for the next
 * client of its backend (see session.c).
 */
#ifndef PGC_ORM_SESSION_H
#define PGC_ORM_SESSION_H

#include <stddef.h>

/*
 * What in sql[0..n) leaves state in the backend's session that the proxy
 * does not follow per client ("SET ROLE", "a temporary object", ...), or
 * NULL when nothing does. Errs on the side of yes.
 */
const char *session_state_sql(const char *sql, size_t n);

#endif
