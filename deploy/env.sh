#!/usr/bin/env bash
# Connection settings for the services started by deploy/up.
#
#   source deploy/env.sh          # export them into this shell (quietly)
#   eval "$(deploy/env.sh)"       # same, from any POSIX shell
#   deploy/env.sh                 # print them as export lines
#
# Ports follow PRM_PG_PORT / PRM_KAFKA_PORT when those are set, as in deploy/up.
# No "set -e" here: this file may be sourced into an interactive shell.

_prm_deploy_dir="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
_prm_home="${PRM_HOME:-$(dirname "$_prm_deploy_dir")/.prm}"
_prm_pg="127.0.0.1:${PRM_PG_PORT:-54329}"

export PRM_HOME="$_prm_home"
export PRM_DATABASE_URL="postgresql://prm@${_prm_pg}/prm"
export PRM_TEST_DATABASE_URL="postgresql://prm@${_prm_pg}/prm_test"
export PRM_KAFKA_BOOTSTRAP="127.0.0.1:${PRM_KAFKA_PORT:-19092}"

if [[ "${BASH_SOURCE[0]:-$0}" == "$0" ]]; then
  # executed, not sourced: print
  for _prm_var in PRM_HOME PRM_DATABASE_URL PRM_TEST_DATABASE_URL PRM_KAFKA_BOOTSTRAP; do
    printf "export %s='%s'\n" "$_prm_var" "${!_prm_var}"
  done
  unset _prm_var
fi
unset _prm_deploy_dir _prm_home _prm_pg
