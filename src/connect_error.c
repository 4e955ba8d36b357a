/* Reading libpq's connection errors.  See connect_error.h.
 *
 * Nothing here depends on the words of a message, which libpq and the
 * server may translate: only on its punctuation (pqBuildErrorMessage3
 * writes "%s:  " for the severity, then "%s: " for the SQLSTATE) and on
 * SQLSTATEs, which are never translated. */
#include "connect_error.h"

#include "log.h"

#include <stdlib.h>
#include <string.h>

int pgtag__connect_error_permanent(const char *sqlstate) {
  /* Two characters: the whole class. */
  static const char *const refusals[] = {
      "28",    /* role does not exist, no pg_hba.conf entry, bad password */
      "3D",    /* the database does not exist */
      "42",    /* no CONNECT privilege; an unknown setting in options */
      "22",    /* a bad value for a setting in options */
      "0A",    /* an unsupported protocol or feature */
      "55000", /* the database does not accept connections (datallowconn) */
  };
  if (sqlstate == NULL || strlen(sqlstate) != 5)
    return 0;
  for (size_t i = 0; i < sizeof refusals / sizeof refusals[0]; i++)
    if (strncmp(sqlstate, refusals[i], strlen(refusals[i])) == 0)
      return 1;
  return 0;
}

static int state_char(char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z'); }

/* At p, within len bytes: a SQLSTATE and ": ", as VERBOSE writes it after
 * the severity's ":  ". */
static int sqlstate_at(const char *p, size_t len) {
  if (len < 7)
    return 0;
  for (int i = 0; i < 5; i++)
    if (!state_char(p[i]))
      return 0;
  return p[5] == ':' && p[6] == ' ';
}

/* "WORD:  ..." at the start of a line: a field of a server message
 * (DETAIL, HINT, LOCATION, whatever the language), or a severity without
 * libpq's "connection to server ... failed: " in front. */
static int field_line(const char *line, size_t len) {
  for (size_t i = 0; i + 2 < len; i++) {
    if (line[i] == ' ' || line[i] == '\t')
      return 0;
    if (line[i] == ':' && line[i + 1] == ' ' && line[i + 2] == ' ')
      return i > 0;
  }
  return 0;
}

/* VERBOSE's LOCATION line, "WORD:  function, file.c:123": where in the
 * server's source the error was raised, of no use to a reader here. */
static int location_line(const char *line, size_t len) {
  size_t i = len;
  while (i > 0 && line[i - 1] >= '0' && line[i - 1] <= '9')
    i--;
  return i < len && i >= 3 && line[i - 1] == ':' && line[i - 2] == 'c' && line[i - 3] == '.' &&
         field_line(line, len);
}

void pgtag__connect_error_parse(connect_error *out, const char *pqmsg, int needs_password) {
  size_t n = strlen(pqmsg), w = 0;
  int attempts = 0, refusals = 0, all_permanent = 1;
  char *kept = malloc(n + 2); /* a newline may be added after the last line */
  memset(out, 0, sizeof *out);
  for (const char *line = pqmsg; *line != '\0';) {
    const char *nl = strchr(line, '\n');
    size_t len = nl != NULL ? (size_t)(nl - line) : strlen(line);
    if (!location_line(line, len)) {
      /* Each host tried begins a line of its own; its details follow,
       * indented or as "WORD:  " fields. */
      if (line[0] != ' ' && line[0] != '\t' && !field_line(line, len))
        attempts++;
      for (size_t i = 0; i < len; i++) {
        if (kept != NULL)
          kept[w++] = line[i];
        if (i >= 2 && line[i] == ' ' && line[i - 1] == ' ' && line[i - 2] == ':' &&
            sqlstate_at(line + i + 1, len - i - 1)) {
          memcpy(out->sqlstate, line + i + 1, 5);
          refusals++;
          all_permanent &= pgtag__connect_error_permanent(out->sqlstate);
          i += 7; /* the SQLSTATE is reported on its own */
        }
      }
      if (kept != NULL)
        kept[w++] = '\n';
    }
    line += len;
    if (*line == '\n')
      line++;
  }
  /* A refusal from every host tried, none of which waiting will cure; a
   * host that did not answer, or answered "too many clients", may yet. */
  out->refused = needs_password || (refusals > 0 && all_permanent && refusals >= attempts);
  if (kept == NULL)
    return;
  kept[w] = '\0';
  out->message = malloc(w + 1);
  if (out->message != NULL)
    pgtag__text_line(out->message, w + 1, kept);
  free(kept);
}

void pgtag__connect_error_note(connect_error *last, const char *pqmsg, int needs_password) {
  connect_error e;
  pgtag__connect_error_parse(&e, pqmsg, needs_password);
  free(last->message);
  *last = e;
}

void pgtag__connect_error_clear(connect_error *last) {
  free(last->message);
  memset(last, 0, sizeof *last);
}
