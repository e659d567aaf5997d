#!/usr/bin/env bash
# benches/e2e/certs.sh DIR: a throw-away CA and two server certificates for
# 127.0.0.1 signed by it (ECDSA P-256: ec.crt/ec.key; RSA-2048: rsa.crt/rsa.key),
# for the TLS benches. ca.crt is what a client trusts (--ca). Idempotent.
set -euo pipefail
DIR="${1:?usage: certs.sh DIR}"
mkdir -p "$DIR"
cd "$DIR"
[[ -s ca.crt && -s ec.crt && -s rsa.crt ]] && exit 0
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt \
	-days 30 -subj /CN=sipedge-bench-ca -addext basicConstraints=critical,CA:TRUE 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext.cnf
for k in ec rsa; do
	case $k in
	ec) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $k.key 2>/dev/null ;;
	rsa) openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out $k.key 2>/dev/null ;;
	esac
	openssl req -new -key $k.key -subj /CN=127.0.0.1 -out $k.csr 2>/dev/null
	openssl x509 -req -in $k.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile ext.cnf -out $k.crt 2>/dev/null
done
