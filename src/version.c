#include "pgtag.h"

const char *pgtag_version(void) { return PGTAG_VERSION_STRING; }
