/* A pool's configuration: its defaults, what a usable one is, and what the
 * pool derives from it. */
#ifndef PGTAG_CONFIG_H
#define PGTAG_CONFIG_H

#include "internal.h"

/* NULL when cfg is usable; else what is wrong with it, one phrase. */
const char *pgtag__config_problem(const pgtag_pool_config *cfg);

/* Fields left zero that mean "the default" (the reconnect delays) get it. */
void pgtag__config_fill(pgtag_pool_config *cfg);

/* The pool's PQconnectStartParams arguments: keepalive defaults for TCP
 * (libpq ignores them on unix sockets) placed before the conninfo, so
 * that its settings win. */
void pgtag__config_connect_params(pgtag_pool *pool);

/* How often the pool looks for connections idle or old enough to close. */
uint64_t pgtag__config_maint_period(const pgtag_pool_config *cfg);

#endif
