#include "error.h"

#include <string.h>

const char *gw_strerror(int rc)
{
    switch (rc) {
    case GW_ECONFIG:
        return "invalid configuration";
    case GW_ECRED:
        return "unusable credentials";
    case GW_EBROKER:
        return "refused by the broker";
    default:
        return strerror(rc < 0 ? -rc : rc);
    }
}
