#include "pgtag.h"

const char *pgtag_strerror(pgtag_errcode code) {
  switch (code) {
  case PGTAG_OK:
    return "success";
  case PGTAG_EINVAL:
    return "invalid argument";
  case PGTAG_ESERVER:
    return "server error";
  case PGTAG_ECONN:
    return "connection failed or lost";
  case PGTAG_ETIMEDOUT:
    return "timed out";
  case PGTAG_ECANCELED:
    return "canceled";
  case PGTAG_ECLOSED:
    return "pool closed";
  case PGTAG_EQUEUEFULL:
    return "too many waiting operations";
  case PGTAG_ERECLAIMED:
    return "connection reclaimed by the pool";
  case PGTAG_ENOMEM:
    return "out of memory";
  }
  return "unknown error";
}
