#!/bin/sh
# Makes the secrets compose.yaml mounts, once: a database password, the token hash key and the
# audit signing key (Ed25519, PKCS#8 PEM). Existing files are kept: replacing the token hash key
# would invalidate every token, replacing the signing key starts a new key (docs/audit.md).
set -eu
cd "$(dirname "$0")"
umask 077
mkdir -p secrets
[ -s secrets/postgres-password ] || openssl rand -hex 24 > secrets/postgres-password
[ -s secrets/token-hash-key ] || openssl rand -base64 48 | tr -d '\n' > secrets/token-hash-key
[ -s secrets/audit-signing-key.pem ] || \
  openssl genpkey -algorithm ed25519 -out secrets/audit-signing-key.pem
# The containers run as uid 10001; compose mounts these files as they are.
chmod 0444 secrets/*
echo "secrets in $(pwd)/secrets"
