#!/bin/sh
# The pgbench tables the example service's routes use, and
# pg_stat_statements for the pgtag.statements view.
set -e
pgbench -i -s 1 -q -U "$POSTGRES_USER" "${POSTGRES_DB:-$POSTGRES_USER}"
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "${POSTGRES_DB:-$POSTGRES_USER}" \
  -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"
