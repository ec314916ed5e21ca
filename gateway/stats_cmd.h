/*
 * `tandem stats`: asks the running gateway for its statistics through the
 * control socket (control.h) and prints them; `tandem devices` the same for
 * the connected devices.
 */
#ifndef TANDEM_STATS_CMD_H
#define TANDEM_STATS_CMD_H

/* Where `tandem stats` looks without -c. */
#define GW_DEFAULT_CONFIG "/etc/tandem/tandem.conf"

/* argv[0] is "stats". Returns an exit status (tandem(8)). */
int gw_stats_cmd(int argc, char **argv);

/* `tandem devices [-c FILE] [--json]`: the connected devices; argv[0] is "devices". */
int gw_devices_cmd(int argc, char **argv);

#endif
