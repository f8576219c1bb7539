#!/bin/sh
# Writes what docker-compose.yml reads from deploy/secrets/: a random token in
# gradfleet.env and a self-signed certificate for the host name "coordinator", which the
# workers put in --coordinator. Existing files are kept, so running it again is safe.
set -eu
cd "$(dirname "$0")/../secrets"
umask 077

if [ ! -f gradfleet.env ]; then
  printf 'GRADFLEET_TOKEN=%s\n' "$(openssl rand -hex 32)" > gradfleet.env
  echo "wrote secrets/gradfleet.env"
fi

if [ ! -f coordinator-key.pem ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
    -subj /CN=gradfleet-coordinator -addext subjectAltName=DNS:coordinator \
    -keyout coordinator-key.pem -out coordinator-cert.pem 2>/dev/null
  echo "wrote secrets/coordinator-cert.pem and secrets/coordinator-key.pem"
fi

# Compose bind-mounts these files into the containers, where gradfleet runs as uid 1000,
# so they must be readable by it. The folder stays 0700 to keep other host users out.
chmod 0700 .
chmod 0644 gradfleet.env coordinator-cert.pem coordinator-key.pem
