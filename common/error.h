/*
 * Errors: functions that can fail return 0 or a negative errno-style code
 * (-EINVAL, -ENOMEM, ...), or one of Tandem's own codes below; pointer
 * returns are NULL. Library error codes stop at the module that wraps the
 * library.
 */
#ifndef TANDEM_ERROR_H
#define TANDEM_ERROR_H

/* Tandem's own codes, below every errno value. */
enum {
    GW_EBASE = -4096,
    GW_ECONFIG = GW_EBASE, /* an invalid setting */
    GW_ECRED,              /* a certificate, key or PSK that cannot be used */
    GW_EBROKER,            /* the broker refused */
    GW_ELAST,
};

/* Text for rc (negative, or a positive errno value). */
const char *gw_strerror(int rc);

#endif
