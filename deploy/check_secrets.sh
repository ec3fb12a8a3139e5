#!/bin/sh
# Refuses to start the team stack on placeholder or weak secrets: compose's ${VAR:?} only checks that a value is
# set, and deploy/team.env.example's `change-me` values are set. Run by compose's `secrets-check` service, which
# every other service waits for, so nothing starts (nor initialises a database with that password) on them.
#
#   sh deploy/check_secrets.sh NAME...     # each NAME an environment variable holding a secret
#
# Exits 1, naming every variable that is unset, a placeholder, or shorter than 16 characters.
MIN_LENGTH=16
refused=0
for name in "$@"; do
  case "$name" in *[!A-Za-z0-9_]* | "" | [0-9]*) echo "check_secrets.sh: not a variable name: $name" >&2; exit 2 ;; esac
  eval "value=\${$name-}"
  lowered=$(printf '%s' "$value" | tr '[:upper:]' '[:lower:]')
  case "$lowered" in
    "")
      reason="is not set" ;;
    *change-me* | *changeme* | *change_me* | *replace-me* | *placeholder* | *example* | *password* | *secret*)
      reason="is a placeholder (as in deploy/team.env.example)" ;;
    *)
      if [ "${#value}" -lt "$MIN_LENGTH" ]; then reason="is shorter than $MIN_LENGTH characters"; else reason=""; fi ;;
  esac
  if [ -n "$reason" ]; then
    echo "refused: $name $reason; set a random value in deploy/.env, e.g. \`openssl rand -base64 24\`" >&2
    refused=1
  fi
done
[ "$refused" -eq 0 ] && echo "secrets checked: $*"
exit "$refused"
