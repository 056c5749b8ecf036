#!/usr/bin/env bash
# Start a throwaway PostgreSQL server for the storage tests (Debian's postgresql package)
# and print the environment the tests read. Usage: eval "$(bash .ci/postgres.sh)"
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        echo "echo 'postgresql is not installed (apt-get install postgresql)' >&2; false"
        exit 0
    fi
fi
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
DIR=$(mktemp -d /tmp/vlsweep-pg.XXXXXX)
chmod 755 "$DIR"
cd "$DIR"  # the server user may not be allowed into the caller's directory
# A free port unless one is given (a developer's own test server may hold 55432).
PORT=${VLSWEEP_PG_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
PASSWORD=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
RUN=()
echo "$PASSWORD" > "$DIR/pw"
if [ "$(id -u)" = 0 ]; then chown -R postgres "$DIR"; RUN=(runuser -u postgres --); fi
"${RUN[@]}" "$BIN/initdb" -D "$DIR/data" -U vlsweep --auth=scram-sha-256 --pwfile="$DIR/pw" >/dev/null
rm -f "$DIR/pw"
"${RUN[@]}" "$BIN/pg_ctl" -D "$DIR/data" -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1" -l "$DIR/log" -w start >/dev/null
PGPASSWORD=$PASSWORD "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U vlsweep -d postgres -qc "CREATE DATABASE vlsweep_test" >/dev/null
# The URL carries no password: libpq reads PGPASSWORD (as vlsweep documents for users).
echo "export VLSWEEP_TEST_PG_URL=postgresql+psycopg2://vlsweep@127.0.0.1:$PORT/vlsweep_test"
echo "export PGPASSWORD=$PASSWORD"
echo "export VLSWEEP_TEST_PG_STOP='${RUN[*]} $BIN/pg_ctl -D $DIR/data stop -m fast'"
# The fault tests take the server down mid-sweep and bring it back.
echo "export VLSWEEP_TEST_PG_START='${RUN[*]} $BIN/pg_ctl -D $DIR/data -o \"-p $PORT -k $DIR -c listen_addresses=127.0.0.1\" -l $DIR/log -w start'"
