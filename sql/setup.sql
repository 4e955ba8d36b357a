-- Server settings that make pgtag's tags useful.  Run as a superuser:
--
--   psql -X -v ON_ERROR_STOP=1 -f sql/setup.sql
--
-- then restart the server (shared_preload_libraries and
-- track_activity_query_size need it), create the extension in each
-- database you watch:
--
--   psql -X -v ON_ERROR_STOP=1 -c 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements'
--
-- and run sql/pgtag.sql there.  Works on a server that has never loaded
-- pg_stat_statements, and again on one that has (tests/setup_sql.sh).

-- Before PostgreSQL 17, ALTER SYSTEM rejects a setting the server does not
-- know, and pg_stat_statements' settings are unknown until the restart
-- loads the module.  A placeholder set in this session makes them known;
-- once the module is loaded there is nothing to do (and pg_stat_statements.max
-- could not be set in a session anyway).
DO $$
BEGIN
  IF current_setting('pg_stat_statements.max', true) IS NULL THEN
    PERFORM set_config('pg_stat_statements.max', '10000', false);
    PERFORM set_config('pg_stat_statements.track_utility', 'off', false);
  END IF;
END
$$;

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
