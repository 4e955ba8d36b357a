/* The error codes' messages and names, generated from PGTAG_ERRNO_MAP. */
#include "pgtag.h"

const char *pgtag_strerror(pgtag_errcode code) {
  switch (code) {
#define PGTAG_MESSAGE_(name, value, message, label) \
  case PGTAG_##name:                                \
    return message;
    PGTAG_ERRNO_MAP(PGTAG_MESSAGE_)
#undef PGTAG_MESSAGE_
  }
  return "unknown error";
}

const char *pgtag_err_name(pgtag_errcode code) {
  switch (code) {
#define PGTAG_NAME_(name, value, message, label) \
  case PGTAG_##name:                             \
    return "PGTAG_" #name;
    PGTAG_ERRNO_MAP(PGTAG_NAME_)
#undef PGTAG_NAME_
  }
  return "PGTAG_UNKNOWN";
}
