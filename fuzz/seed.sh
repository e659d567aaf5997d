#!/bin/sh
# Seeds the parse_message corpus with the RFC 4475 / RFC 5118 torture
# messages (and any regression inputs kept beside them).
#   fuzz/seed.sh && cargo fuzz run parse_message -s none -- -max_total_time=600
# (stable works with -s none; on nightly drop it for AddressSanitizer)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
corpus="$here/corpus/parse_message"
mkdir -p "$corpus"
cp "$here"/../tests/fixtures/torture/*.sip "$corpus"/
if [ -d "$here/regressions/parse_message" ]; then
    cp "$here"/regressions/parse_message/* "$corpus"/ 2>/dev/null || true
fi
echo "seeded $(ls "$corpus" | wc -l) inputs into $corpus"
