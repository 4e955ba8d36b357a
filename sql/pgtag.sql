-- pgtag's database side: find the request behind any query.
--
--   psql -X -v ON_ERROR_STOP=1 -f sql/pgtag.sql
--
-- Idempotent: run it again after an upgrade.  Everything lives in the
-- schema pgtag.  It reads the tags pgtag writes in both styles:
--
--   /* requestId=3f2a... route=GET%20%2Forders */ SELECT ...        (prefix)
--   SELECT ... /*requestId='3f2a...',route='GET%20%2Forders'*/      (sqlcommenter)
--
-- Values are percent-decoded.  pgtag.statements exists only where the
-- pg_stat_statements extension is installed (run the script again after
-- installing it).  Needs PostgreSQL 14 or later (pg_locks.waitstart).

BEGIN;

CREATE SCHEMA IF NOT EXISTS pgtag;

-- Percent-decoding.  A value whose bytes are not valid UTF-8 once decoded
-- (a request ID may hold any bytes) is returned still encoded, rather than
-- raising an error in the middle of a monitoring query.
CREATE OR REPLACE FUNCTION pgtag.percent_decode(value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
  IF position('%' IN value) = 0 THEN
    RETURN value;
  END IF;
  RETURN convert_from(
    (SELECT coalesce(string_agg(
              CASE WHEN m[1] IS NOT NULL THEN decode(substr(m[1], 2), 'hex')
                   ELSE convert_to(m[2], 'UTF8') END,
              ''::bytea ORDER BY n), ''::bytea)
       FROM regexp_matches(value, '(%[0-9A-Fa-f]{2})|([^%]+|%)', 'g')
            WITH ORDINALITY AS t(m, n)),
    'UTF8');
EXCEPTION WHEN character_not_in_repertoire OR untranslatable_character THEN
  RETURN value;
END
$$;

-- Every tag of a query as a jsonb object ('{}' when it carries none).
CREATE OR REPLACE FUNCTION pgtag.tags(query text) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  WITH body AS (
    SELECT coalesce(
             -- prefix style: the comment the query starts with
             (regexp_match(query, '^\s*/\*\s([^*]*)\s\*/'))[1],
             '') AS prefix,
           coalesce(
             -- sqlcommenter: the comment at the end, before an optional ';'
             (regexp_match(query, '/\*([^*]*)\*/\s*;?\s*$'))[1],
             '') AS commenter
  ), pairs AS (
    SELECT m[1] AS key, m[2] AS value, 1 AS style
      FROM body, regexp_matches(prefix, '([A-Za-z0-9_.-]+)=([^ ]*)', 'g') AS m
    UNION ALL
    SELECT m[1], m[2], 2
      FROM body, regexp_matches(commenter, '([A-Za-z0-9_.-]+)=''([^'']*)''', 'g') AS m
      WHERE body.prefix = ''
  )
  SELECT coalesce(jsonb_object_agg(key, pgtag.percent_decode(value)), '{}'::jsonb)
    FROM pairs
$$;

-- The request ID of a query, or NULL.  key: the pool's tag_key.
CREATE OR REPLACE FUNCTION pgtag.request_id(query text, key text DEFAULT 'requestId')
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT pgtag.tags(query) ->> key
$$;

-- The query without pgtag's comment.
CREATE OR REPLACE FUNCTION pgtag.strip(query text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT regexp_replace(
           regexp_replace(query, '^\s*/\*\s[^*]*\s\*/\s', ''),
           '\s/\*[A-Za-z0-9_.-]+=''[^*]*''\*/(\s*;?\s*)$', '\1')
$$;

-- Views are dropped and created again, so that a newer script can change
-- their columns.
DROP VIEW IF EXISTS pgtag.activity, pgtag.blocking, pgtag.statements;

-- What every backend runs, with the request behind it.  An idle backend
-- (a pool's connection between requests) serves no request: its
-- request_id is NULL, its tags '{}' and its query_age NULL, while
-- last_request_id still names the request of its last query and idle_for
-- says since when; otherwise the last request's ID and a growing age would
-- read like a stuck request.  "WHERE request_id IS NOT NULL" keeps the
-- requests at work (idle in transaction included: that one holds a
-- transaction open).  Ages use clock_timestamp(): now() is this query's
-- own start, which can be earlier than a query_start read from the
-- statistics snapshot a moment later.
CREATE VIEW pgtag.activity AS
SELECT a.pid,
       CASE WHEN a.state <> 'idle' THEN pgtag.request_id(a.query) END AS request_id,
       CASE WHEN a.state <> 'idle' THEN pgtag.tags(a.query) ELSE '{}'::jsonb END AS tags,
       a.state,
       a.wait_event_type,
       a.wait_event,
       CASE WHEN a.state <> 'idle' THEN clock_timestamp() - a.query_start END AS query_age,
       CASE WHEN a.state = 'idle' THEN clock_timestamp() - a.state_change END AS idle_for,
       pgtag.request_id(a.query) AS last_request_id,
       clock_timestamp() - a.xact_start AS xact_age,
       a.query_id,
       a.usename,
       a.datname,
       a.application_name,
       a.client_addr,
       pgtag.strip(a.query) AS query
  FROM pg_stat_activity a
 WHERE a.backend_type = 'client backend';

-- For each backend waiting on a lock, each backend it waits for, with both
-- requests.
CREATE VIEW pgtag.blocking AS
SELECT w.pid AS blocked_pid,
       pgtag.request_id(w.query) AS blocked_request_id,
       b.pid AS blocking_pid,
       pgtag.request_id(b.query) AS blocking_request_id,
       (SELECT clock_timestamp() - min(l.waitstart) FROM pg_locks l
         WHERE l.pid = w.pid AND NOT l.granted) AS lock_wait,
       w.wait_event_type || ':' || w.wait_event AS waiting_for,
       b.state AS blocking_state,
       clock_timestamp() - b.xact_start AS blocking_xact_age,
       pgtag.strip(w.query) AS blocked_query,
       pgtag.strip(b.query) AS blocking_query
  FROM pg_stat_activity w
  CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS blocker(pid)
  JOIN pg_stat_activity b ON b.pid = blocker.pid;

-- pg_stat_statements with the request ID of its one sample text.  PostgreSQL
-- keeps one text per normalized statement (the first it saw), so the
-- request ID here is a sample, not every request that ran it.
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements') THEN
    EXECUTE format($v$
      CREATE VIEW pgtag.statements AS
      SELECT s.queryid,
             pgtag.request_id(s.query) AS sample_request_id,
             pgtag.tags(s.query) AS sample_tags,
             s.calls,
             s.total_exec_time,
             s.mean_exec_time,
             s.rows,
             pgtag.strip(s.query) AS query
        FROM %I.pg_stat_statements s$v$,
      (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
        WHERE e.extname = 'pg_stat_statements'));
  END IF;
END
$$;

COMMIT;
