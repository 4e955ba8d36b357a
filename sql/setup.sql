-- Server settings that make pgtag's tags useful.  Run as a superuser:
--
--   psql -X -v ON_ERROR_STOP=1 -f sql/setup.sql
--
-- then restart the server (shared_preload_libraries needs it; the others
-- take effect on reload), and run sql/pgtag.sql in each database you watch.

-- pg_stat_statements: per-statement totals, with one sample request ID each.
ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements';
ALTER SYSTEM SET compute_query_id = 'on';  -- query_id in pg_stat_activity and the log
-- PostgreSQL 15 keys utility statements (BEGIN, COMMIT, SET) by their text,
-- tag included: tracked, every request would add entries of its own.
ALTER SYSTEM SET pg_stat_statements.track_utility = 'off';
ALTER SYSTEM SET pg_stat_statements.max = 10000;

-- The server log: every statement slower than 250 ms, with its tag (the
-- statement text carries it), the backend pid and the query_id.
ALTER SYSTEM SET log_min_duration_statement = 250;
ALTER SYSTEM SET log_line_prefix = '%m [%p] %q%u@%d app=%a qid=%Q ';
ALTER SYSTEM SET log_lock_waits = 'on';  -- a lock wait past deadlock_timeout, with both queries

-- Enough room for the tag in pg_stat_activity.query (1024 by default; a
-- request ID and a few tags take 100 to 300 bytes).  Needs a restart.
ALTER SYSTEM SET track_activity_query_size = 4096;

SELECT pg_reload_conf();
