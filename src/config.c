/* A pool's configuration: its defaults, what a usable one is, and what the
 * pool derives from it. */
#include "config.h"

#include "context.h"

#include <stdio.h>
#include <string.h>

/* reconnect_waiting_max_ms's default: the README ("Running at scale")
 * has the measurements behind it. */
#define RECONNECT_WAITING_MAX_MS 500

/* ------------------------------------------------------------------------
 * Life cycle
 * ------------------------------------------------------------------------ */

void pgtag_pool_config_init(pgtag_pool_config *cfg) {
  if (cfg == NULL)
    return;
  memset(cfg, 0, sizeof *cfg);
  cfg->name = "pgtag";
  cfg->max_conns = 10;
  cfg->acquire_timeout_ms = 10000;
  cfg->max_waiting = 10000;
  cfg->connect_timeout_ms = 5000;
  cfg->reconnect_base_ms = 100;
  cfg->reconnect_max_ms = 5000;
  cfg->reconnect_waiting_max_ms = RECONNECT_WAITING_MAX_MS;
  cfg->tcp_keepalive_s = 60;
  cfg->pipeline_depth = 8;
  cfg->pipeline_fast_ms = 5;
  cfg->statement_cache = 256;
  cfg->idle_timeout_ms = 30000;
  cfg->tag_style = PGTAG_TAG_PREFIX;
  cfg->tag_key = "requestId";
  cfg->log_level = PGTAG_LOG_WARN;
}

void pgtag__config_fill(pgtag_pool_config *cfg) {
  if (cfg->reconnect_base_ms == 0)
    cfg->reconnect_base_ms = 100;
  if (cfg->reconnect_max_ms == 0)
    cfg->reconnect_max_ms = cfg->reconnect_base_ms > 5000 ? cfg->reconnect_base_ms : 5000;
  if (cfg->reconnect_waiting_max_ms == 0)
    cfg->reconnect_waiting_max_ms = RECONNECT_WAITING_MAX_MS;
}

const char *pgtag__config_problem(const pgtag_pool_config *cfg) {
  if (cfg->conninfo == NULL)
    return "conninfo is required";
  if (cfg->max_conns < 1)
    return "max_conns must be at least 1";
  if (cfg->min_conns < 0 || cfg->min_conns > cfg->max_conns)
    return "min_conns must be between 0 and max_conns";
  if (cfg->acquire_timeout_ms < 0 || cfg->max_waiting < 0 || cfg->connect_timeout_ms < 0 ||
      cfg->idle_timeout_ms < 0 || cfg->max_lifetime_ms < 0)
    return "timeouts and limits must not be negative";
  if (cfg->tag_style != PGTAG_TAG_PREFIX && cfg->tag_style != PGTAG_TAG_SQLCOMMENTER &&
      cfg->tag_style != PGTAG_TAG_NONE)
    return "unknown tag_style";
  if (cfg->tag_key != NULL && !pgtag__ctx_key_valid(cfg->tag_key))
    return "tag_key must be 1 to 32 characters from [A-Za-z0-9_.-]";
  if (cfg->log_level < PGTAG_LOG_DEBUG || cfg->log_level > PGTAG_LOG_ERROR)
    return "unknown log_level";
  if (cfg->pipeline_depth < 0 || cfg->pipeline_depth > 1024)
    return "pipeline_depth must be between 1 and 1024";
  if (cfg->pipeline_depth > 1 && (cfg->pipeline_fast_ms < 1 || cfg->pipeline_fast_ms > 3600000))
    return "pipeline_fast_ms must be between 1 and 3600000";
  if (cfg->statement_cache < 0 || cfg->statement_cache > 100000)
    return "statement_cache must be between 0 and 100000";
  if (cfg->reconnect_base_ms < 0 || cfg->reconnect_max_ms < 0 ||
      cfg->reconnect_waiting_max_ms < 0 || cfg->statement_timeout_ms < 0 ||
      cfg->tcp_keepalive_s < 0)
    return "timeouts and limits must not be negative";
  if (cfg->reconnect_base_ms > 0 && cfg->reconnect_max_ms > 0 &&
      cfg->reconnect_max_ms < cfg->reconnect_base_ms)
    return "reconnect_max_ms must not be below reconnect_base_ms";
  if (cfg->leak_threshold_ms < 0)
    return "leak_threshold_ms must not be negative";
  if (cfg->leak_policy != PGTAG_LEAK_REPORT && cfg->leak_policy != PGTAG_LEAK_RECLAIM)
    return "unknown leak_policy";
  return NULL;
}

void pgtag__config_connect_params(pgtag_pool *pool) {
  int n = 0, s = pool->cfg.tcp_keepalive_s;
  if (s > 0) {
    int interval = s / 6 > 0 ? s / 6 : 1;
    long long user_timeout = ((long long)s + 3LL * interval) * 1000;
    char(*t)[16] = pool->keepalive_text;
    snprintf(t[0], sizeof t[0], "%d", s);
    snprintf(t[1], sizeof t[1], "%d", interval);
    snprintf(t[2], sizeof t[2], "%lld", user_timeout > 2147483647 ? 2147483647 : user_timeout);
    pool->conn_keys[n] = "keepalives", pool->conn_values[n++] = "1";
    pool->conn_keys[n] = "keepalives_idle", pool->conn_values[n++] = t[0];
    pool->conn_keys[n] = "keepalives_interval", pool->conn_values[n++] = t[1];
    pool->conn_keys[n] = "keepalives_count", pool->conn_values[n++] = "3";
    pool->conn_keys[n] = "tcp_user_timeout", pool->conn_values[n++] = t[2];
  }
  pool->conn_keys[n] = "dbname", pool->conn_values[n++] = pool->conninfo;
  pool->conn_keys[n] = NULL, pool->conn_values[n] = NULL;
}

uint64_t pgtag__config_maint_period(const pgtag_pool_config *cfg) {
  int shortest = 0;
  if (cfg->idle_timeout_ms > 0)
    shortest = cfg->idle_timeout_ms;
  if (cfg->max_lifetime_ms > 0 && (shortest == 0 || cfg->max_lifetime_ms < shortest))
    shortest = cfg->max_lifetime_ms;
  uint64_t period = (uint64_t)shortest / 4;
  return period < 10 ? 10 : period > 1000 ? 1000 : period;
}
