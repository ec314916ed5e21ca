/*
 * `tandem pki init|device|psk` (tandem(8), pki): credentials in one command.
 */
#ifndef TANDEM_PKI_CMD_H
#define TANDEM_PKI_CMD_H

/* argv[0] is "pki". Exit status: 0, 1 on any error (with a one-line reason), 2 for usage. */
int gw_pki_cmd(int argc, char **argv);

#endif
