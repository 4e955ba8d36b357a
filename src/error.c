/* The error codes' messages and names, generated from PGTAG_ERRNO_MAP. */
#include "pgtag.h"

/* The enum and the count come from the same list, but errors_by_code is
 * sized by PGTAG_ERRCODES_MAX, fixed for the 0.x series: a code added past
 * it would make pgtag_pool_stats write past a caller's struct. */
_Static_assert(PGTAG_NERRCODES <= PGTAG_ERRCODES_MAX,
               "no room for another error code in pgtag_stats.errors_by_code");

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
